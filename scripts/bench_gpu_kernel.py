#!/usr/bin/env python
"""Benchmark of the fused one-pass GPU gradient kernel against the memory floor and cuBLAS.

For each shape it reports, in milliseconds (median of CUDA-event-timed repeats):

* ``floor``   bytes of X / device copy rate: the time one read of X takes at the rate a large
  device-to-device copy reaches (bytes read + bytes written over its time);
* ``cublas``  :func:`dlogit.kernels.cuda.reference_chunk_sums` (X @ w, then X.T @ r: two reads of X);
* ``fused``   :func:`dlogit.kernels.cuda.fused_chunk_sums` (one read of X);
* ``fused_weighted`` the same with per-row float64 weights (one read of X plus 8 bytes a row);

with each time's ratio to the floor, and the persistent grid each kernel got (SMs x resident blocks
from the CUDA occupancy calculator). Shapes (float32): 16.7M x 256, 4.2M x 784, 67M x 32; ``--scale``
multiplies the row counts. Without CuPy or a CUDA device it prints ``no GPU: skipped`` and exits 0.

    python scripts/bench_gpu_kernel.py [--scale 0.1] [--repeats 20] [--json out.json]

``run(scale=1.0) -> dict`` is the entry point for ``scripts/bench.py``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = [  # (rows, columns, dtype) at scale 1
    (16_777_216, 256, "float32"),
    (4_194_304, 784, "float32"),
    (67_108_864, 32, "float32"),
]
COPY_BYTES = 4 << 30  # device-to-device copy used to measure the achievable bandwidth


def _gpu() -> Any:
    """CuPy, or None when CuPy or a CUDA device is missing."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device
        return None


def _time_ms(cp: Any, fn: Any, repeats: int, warmup: int = 2) -> list[float]:
    """CUDA-event times (ms) of ``fn()`` on the current stream, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    cp.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return times


def copy_bandwidth(cp: Any, nbytes: int = COPY_BYTES, repeats: int = 20) -> float:
    """Device copy rate in bytes/s: (bytes read + bytes written) / median time of a D2D copy."""
    free = cp.cuda.runtime.memGetInfo()[0]
    nbytes = int(min(nbytes, free // 3)) // 256 * 256
    src = cp.empty(nbytes, dtype=cp.uint8)
    dst = cp.empty_like(src)
    src.fill(1)
    stream = cp.cuda.get_current_stream()

    def copy() -> None:
        cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes, cp.cuda.runtime.memcpyDeviceToDevice,
                                    stream.ptr)

    ms = statistics.median(_time_ms(cp, copy, repeats))
    return 2 * nbytes / (ms * 1e-3)


def _bench_shape(cp: Any, n: int, d: int, dtype: str, rate: float, repeats: int) -> dict:
    import numpy as np

    from dlogit.kernels import cuda as K

    rs = cp.random.RandomState(0)
    X = rs.standard_normal((n, d), dtype=dtype)
    w = (rs.standard_normal(d, dtype=dtype) / np.sqrt(d)).astype(dtype)
    y = (rs.random_sample(n, dtype=dtype) < 0.5).astype(dtype)
    sw = rs.uniform(0.5, 2.0, n, dtype=cp.float64)
    b = 0.1
    nbytes = X.nbytes
    floor_ms = nbytes / rate * 1e3
    plan = K.plan_launch(n, d, X.dtype.itemsize, X.data.ptr % 16 == 0)

    t_ref = _time_ms(cp, lambda: K.reference_chunk_sums(X, y, w, b, True), repeats)
    t_fused = _time_ms(cp, lambda: K.fused_chunk_sums(X, y, w, b, True), repeats)
    t_weighted = _time_ms(cp, lambda: K.fused_chunk_sums(X, y, w, b, True, sample_weight=sw), repeats)

    # agreement (float64 accumulation in both; the reference's GEMVs run in the input dtype)
    lf, gf, bf = (v.get() for v in K.fused_chunk_sums(X, y, w, b, True))
    lr, gr, _ = (v.get() for v in K.reference_chunk_sums(X, y, w, b, True))
    again = [v.get() for v in K.fused_chunk_sums(X, y, w, b, True)]
    reproducible = all(np.asarray(a).tobytes() == np.asarray(c).tobytes() for a, c in zip((lf, gf, bf), again))
    rel_loss = abs(float(lf) - float(lr)) / max(abs(float(lr)), 1e-300)
    rel_grad = float(np.linalg.norm(gf - gr) / max(np.linalg.norm(gr), 1e-300))
    _, gwf, _ = (v.get() for v in K.fused_chunk_sums(X, y, w, b, True, sample_weight=sw))
    _, gwr, _ = (v.get() for v in K.reference_chunk_sums(X, y, w, b, True, sample_weight=sw))
    rel_grad_weighted = float(np.linalg.norm(gwf - gwr) / max(np.linalg.norm(gwr), 1e-300))
    weighted_ms = statistics.median(t_weighted)

    ref_ms = statistics.median(t_ref)
    fused_ms = statistics.median(t_fused)
    return {
        "rows": n, "cols": d, "dtype": dtype, "bytes": nbytes,
        "kernel": plan.name or plan.kind,
        "floor_ms": floor_ms,
        "cublas_ms": ref_ms, "cublas_ratio": ref_ms / floor_ms,
        "fused_ms": fused_ms, "fused_ratio": fused_ms / floor_ms,
        "fused_min_ms": min(t_fused), "cublas_min_ms": min(t_ref),
        "fused_GBps": nbytes / (fused_ms * 1e-3) / 1e9,
        "fused_weighted_ms": weighted_ms, "fused_weighted_ratio": weighted_ms / floor_ms,
        "rel_diff_loss": rel_loss, "rel_diff_grad": rel_grad, "rel_diff_grad_weighted": rel_grad_weighted,
        "bitwise_reproducible": reproducible,
        "repeats": repeats,
    }


def run(scale: float = 1.0, repeats: int = 20) -> dict:
    """Run the benchmark; returns a JSON-ready dict (``{"skipped": "no GPU"}`` without a GPU)."""
    cp = _gpu()
    if cp is None:
        return {"skipped": "no GPU"}
    from dlogit.kernels import cuda as K

    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    pool = cp.get_default_memory_pool()
    rate = copy_bandwidth(cp, repeats=repeats)
    pool.free_all_blocks()
    results = []
    for n, d, dtype in SHAPES:
        rows = max(1, round(n * scale))
        results.append(_bench_shape(cp, rows, d, dtype, rate, repeats))
        pool.free_all_blocks()  # the shape's arrays are gone with the call's frame
    return {
        "benchmark": "dlogit fused GPU gradient kernel",
        "device": name,
        "cupy": cp.__version__,
        "host": platform.node(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "scale": scale,
        "copy_GBps": rate / 1e9,
        "shapes": results,
        "grids": K.resident_blocks_seen(),
    }


def format_table(res: dict) -> str:
    if "skipped" in res:
        return f"{res['skipped']}: skipped"
    header = (
        f"{'X':>26} {'GB':>6} {'floor ms':>9} {'cuBLAS ms':>10} {'x floor':>8} {'fused ms':>9} {'x floor':>8}"
        f" {'fused GB/s':>10} {'weighted ms':>11}  kernel"
    )
    lines = [
        f"device: {res['device']}   copy rate (read + write): {res['copy_GBps']:.0f} GB/s   scale {res['scale']}",
        header,
    ]
    for r in res["shapes"]:
        shape = f"{r['rows']:,} x {r['cols']} {r['dtype']}"
        lines.append(
            f"{shape:>26} {r['bytes'] / 1e9:6.2f} {r['floor_ms']:9.2f} {r['cublas_ms']:10.2f} {r['cublas_ratio']:7.2f}x"
            f" {r['fused_ms']:9.2f} {r['fused_ratio']:7.2f}x {r['fused_GBps']:10.0f} {r['fused_weighted_ms']:11.2f}"
            f"  {r['kernel']}"
        )
    lines.append("fused vs cuBLAS rel. diff (loss, grad): " + ", ".join(
        f"{r['cols']}: {r['rel_diff_loss']:.1e}, {r['rel_diff_grad']:.1e}" for r in res["shapes"]))
    lines.append("fused bitwise reproducible: " + ", ".join(
        f"{r['cols']}: {r['bitwise_reproducible']}" for r in res["shapes"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the row counts (e.g. 0.1)")
    ap.add_argument("--repeats", type=int, default=20, help="timed repeats per measurement")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    res = run(scale=args.scale, repeats=args.repeats)
    if "skipped" in res:
        print("no GPU: skipped")
    else:
        print(format_table(res))
    if args.json:
        from _benchio import write_json  # scripts/, beside this file

        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
