#!/usr/bin/env python3
"""dlogit's benchmark: every comparison of issue #3 in one run, ratios against baselines measured here.

    .venv/bin/python scripts/bench.py [--quick] [--json bench.json] [--lbfgs-rows 2000000]

Sections (each prints absolute figures and the ratio to its baseline):
  coordination  per-step overhead on local clusters of 2, 4 and 8 workers (the driver's wall time of a
                step minus the slowest worker's compute); on 4 workers also a client that reaches only
                the scheduler over +10 ms each way vs one beside the cluster, and a dask.array graph
                per step and one client.submit per shard
  textbook      400x784, 10 001 GD steps through dlogit (worker-local mode, cluster start-up excluded)
                vs the plain in-process NumPy loop; also dlogit with the BLAS kernel forced
  kernel        one chunk evaluation, fused one-pass CPU kernel vs the BLAS path, over chunk shapes
                (the crossover behind dlogit.cpu-kernel=auto)
  lbfgs         time to ||grad|| <= 1e-6 on ROWSx100 float64 (2 workers) vs scikit-learn's lbfgs
                and dask-ml's lbfgs on the same objective
  memory        peak RSS growth per worker vs the bytes of its shard
  gpu           the fused CUDA kernel vs the HBM floor and cuBLAS (skipped without a GPU)
  dense multinomial enet path sparse layouts
                the models, penalties and data benchmarks of scripts/bench_models.py (its docstring
                says what each compares), run from here too
  first         issue 23's first-contact figures (cold start, --version, a small file, a fresh
                cluster's first fit, a busy core, in-process sparse, CSV reading): scripts/bench_first.py
  scale         issue 21's simulated multi-host cluster (root only): coordination per step vs 2-16
                workers on 4 network-namespace hosts, the tree's radix, with and without 0.5 ms per
                hop, and a host lost mid-fit: scripts/bench_scale.py
The data is generated here (or on the workers); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _cluster(n: int):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=logging.CRITICAL)
    return cluster, Client(cluster, set_as_default=False)


def _median(xs):
    return float(np.median(np.asarray(xs)))


# ------------------------------------------------------------------------------------------------
class _DelayRelay:
    """A TCP relay on 127.0.0.1 that holds every chunk of bytes ``delay`` seconds in each direction
    (order kept): a client behind it reaches only the scheduler, over a link of 2 x ``delay`` RTT."""

    def __init__(self, target: str, delay: float) -> None:
        import asyncio
        import threading

        host, port = target.rsplit("/", 1)[-1].rsplit(":", 1)
        self.loop = asyncio.new_event_loop()

        async def pipe(reader, writer) -> None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(OSError):
                while data := await reader.read(1 << 16):
                    loop.call_later(delay, writer.write, data)
            loop.call_later(delay, writer.close)

        async def handle(reader, writer) -> None:
            r2, w2 = await asyncio.open_connection(host, int(port))
            with contextlib.suppress(asyncio.CancelledError):  # close() ends every connection
                await asyncio.gather(pipe(reader, w2), pipe(r2, writer))

        self.server = self.loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        import asyncio

        async def stop() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _coordination_fit(client, X, y, steps: int) -> tuple[object, float]:
    """A distributed gd fit of ``steps`` steps through the engine; the result and its wall time."""
    import dask.config

    from dlogit.engine import fit_dask
    from dlogit.events import new_run_id
    from dlogit.spec import FitSpec

    spec = FitSpec(run=new_run_id(), solver="gd", max_iter=steps, tol=0.0, lr=0.1,
                   max_classes=int(dask.config.get("dlogit.max-classes")))
    t0 = time.perf_counter()
    result = fit_dask(client, X, y, None, spec, mode="distributed")
    return result, time.perf_counter() - t0


def _naive_steps(client, X, y) -> tuple[float, float]:
    """Median seconds of one gradient step done naively: a dask.array graph per step, and one
    client.submit per worker-pinned chunk with the sums gathered."""
    import dask.array as da

    from dlogit.chunks import chunk_sums

    Xp, yp = client.persist([X, y])
    theta = np.zeros(X.shape[1] + 1)

    def graph_step():
        parts = da.map_blocks(lambda xb, yb: chunk_sums(xb, yb[:, 0], theta)[None, :], Xp, yp[:, None],
                              dtype=float, chunks=((1,) * Xp.numblocks[0], (X.shape[1] + 3,)))
        return client.compute(parts.sum(axis=0)).result()

    graph = []
    for _ in range(20):
        t0 = time.perf_counter()
        graph_step()
        graph.append(time.perf_counter() - t0)
    xs = client.compute(list(Xp.to_delayed().ravel()))
    ys = client.compute(list(yp.to_delayed().ravel()))
    subm = []
    for _ in range(20):
        t0 = time.perf_counter()
        futs = [client.submit(chunk_sums, a, b, theta, pure=False) for a, b in zip(xs, ys)]
        sum(client.gather(futs))
        subm.append(time.perf_counter() - t0)
    return _median(graph[2:]), _median(subm[2:])


def bench_coordination(steps: int) -> dict:
    """Per step: the driver's wall time of a reduction minus the slowest worker's evaluation (the
    coordination), on 2, 4 and 8 local workers (one 100 x 784 chunk each); on 4 workers also a client
    that reaches only the scheduler through a relay adding 10 ms each way, against one beside the
    cluster, and the two naive baselines (a dask.array graph per step, one submit per shard)."""
    import dask
    from distributed import Client

    from dlogit.data import synthetic

    out: dict = {"data": "100x784 float64 per worker (one chunk each), gd", "steps": steps, "by_workers": {},
                 "goal_overhead_ms": 1.0, "goal_wan_ms": 1.0}
    for n in (2, 4, 8):
        cluster, client = _cluster(n)
        try:
            X, y = synthetic(100 * n, 784, seed=0, chunk_rows=100)
            _coordination_fit(client, X, y, 50)  # links, kernels and imports warm
            near, near_s = _coordination_fit(client, X, y, steps)
            t = near.extra["reduce_seconds"][10:]
            row = {"step_ms": _median(t[:, 0]) * 1e3, "overhead_ms": _median(t[:, 0] - t[:, 1]) * 1e3,
                   "slowest_worker_ms": _median(t[:, 1]) * 1e3, "tree_radix": dask.config.get(
                       "dlogit.engine.tree-radix"), "overhead_ms_by_radix": {}}
            for radix in (2, 4, n):  # the same cluster, one after the other: the binomial tree, the default, a star
                with dask.config.set({"dlogit.engine.tree-radix": radix}):
                    r, _ = _coordination_fit(client, X, y, steps)
                tr = r.extra["reduce_seconds"][10:]
                row["overhead_ms_by_radix"][radix] = _median(tr[:, 0] - tr[:, 1]) * 1e3
            out["by_workers"][n] = row
            others = ", ".join(f"radix {k}: {v:.3f} ms" for k, v in row["overhead_ms_by_radix"].items())
            print(f"coordination, {n} workers: step {row['step_ms']:.3f} ms, overhead over the slowest "
                  f"worker {row['overhead_ms']:.3f} ms (tree radix {row['tree_radix']}; {others})", flush=True)
            if n != 4:
                continue
            out.update(dlogit_step_ms=row["step_ms"], dlogit_overhead_ms=row["overhead_ms"],
                       goal_met=row["overhead_ms"] <= 1.0)
            relay = _DelayRelay(cluster.scheduler_address, 0.010)
            near_steps, far_steps, near_fits, far_fits = [], [], [], []
            try:
                with Client(relay.address, set_as_default=False, timeout=60) as far_client:
                    _coordination_fit(far_client, X, y, 50)
                    for _ in range(3):  # interleaved: a burst of load on the machine hits both alike
                        for who, steps_, fits in ((client, near_steps, near_fits), (far_client, far_steps, far_fits)):
                            r, wall = _coordination_fit(who, X, y, steps)
                            steps_.append(_median(r.history_step_seconds[10:]) * 1e3)
                            fits.append(wall)
            finally:
                relay.close()
            near_step, far_step = _median(near_steps), _median(far_steps)
            near_s, far_s = _median(near_fits), _median(far_fits)
            out["wan"] = {"link": "client <-> scheduler relay, +10 ms each way", "near_step_ms": near_step,
                          "far_step_ms": far_step, "step_difference_ms": far_step - near_step,
                          "near_fit_s": near_s, "far_fit_s": far_s,
                          "fit_difference_per_step_ms": (far_s - near_s) / steps * 1e3,
                          "near_step_ms_all": near_steps, "far_step_ms_all": far_steps}
            out["wan_goal_met"] = abs(far_step - near_step) <= 1.0
            print(f"coordination, 4 workers, client behind +10 ms each way: step {far_step:.3f} ms vs "
                  f"{near_step:.3f} ms beside the cluster ({far_step - near_step:+.3f} ms; whole fit "
                  f"{far_s:.2f} s vs {near_s:.2f} s, {(far_s - near_s) / steps * 1e3:+.3f} ms per step)",
                  flush=True)
            graph, subm = _naive_steps(client, X, y)
            ours = row["step_ms"] / 1e3
            out.update(dask_array_graph_step_ms=graph * 1e3, submit_per_shard_step_ms=subm * 1e3,
                       speedup_vs_graph=graph / ours, speedup_vs_submit=subm / ours)
        finally:
            client.close()
            cluster.close()
    return out


# ------------------------------------------------------------------------------------------------
def plain_numpy_textbook(X, y, w0, steps=10001, lr=0.1, l2=0.01, with_cost=True):
    """The textbook loop as written there: it evaluates the cost at every step (the tutorial's
    train function returns it), then takes the gradient step. ``with_cost=False`` drops the cost."""
    w, b = w0.copy(), 0.0
    n = X.shape[0]
    cost = 0.0
    for _ in range(steps):
        z = X @ w + b
        p = 1.0 / (1.0 + np.exp(-z))
        if with_cost:  # the textbook's naive form: it overflows to inf/nan early on, as there
            with np.errstate(divide="ignore", invalid="ignore"):
                xent = -y * np.log(p) - (1 - y) * np.log(1 - p)
            cost = xent.mean() + l2 * (w ** 2).sum()
        r = p - y
        w -= lr * (X.T @ r / n + 2 * l2 * w)
        b -= lr * (r.sum() / n)
    return w, b, cost


def bench_textbook(quick: bool = False) -> dict:
    from dlogit.data import synthetic_numpy

    X, y = synthetic_numpy(400, 784, seed=0)
    w0 = np.random.default_rng(0).standard_normal(784)
    plain, bare, runs, blas = [], [], [], []
    cmd = [sys.executable, "-m", "dlogit", "train", "--workers", "2", "--json"]
    blas_env = {**os.environ, "DASK_DLOGIT__CPU_KERNEL": "blas"}
    for _ in range(2 if quick else 5):  # interleaved, best of each: a burst of load on the machine hits all alike
        t0 = time.perf_counter()
        plain_numpy_textbook(X, y, w0)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain_numpy_textbook(X, y, w0, with_cost=False)
        bare.append(time.perf_counter() - t0)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=blas_env)
        blas.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    best_blas = min(blas, key=lambda r: r["seconds"])
    return {"command": "dlogit train --workers 2 --json", "kernel": best["kernel"], "mode": best["mode"],
            "dlogit_blas_kernel_fit_s": best_blas["seconds"], "blas_kernel": best_blas["kernel"],
            "dlogit_blas_kernel_all_s": [r["seconds"] for r in blas],
            "ratio_blas_kernel": best_blas["seconds"] / min(plain),
            "plain_numpy_s": min(plain),
            "bare_gradient_loop_s": min(bare), "ratio_vs_bare": best["seconds"] / min(bare),
            "dlogit_fit_s": best["seconds"], "cluster_startup_s": best["startup_seconds"],
            "data_load_s": best["load_seconds"], "plain_numpy_all_s": plain,
            "dlogit_fit_all_s": [r["seconds"] for r in runs],
            "accuracy": best["accuracy"], "ratio": best["seconds"] / min(plain), "goal_ratio": 1.0,
            "goal_met": best["seconds"] <= min(plain)}


def bench_kernel(quick: bool = False) -> dict:
    """One chunk evaluation (chunks.DenseBinomialCPU.sums) with each CPU kernel, in this process, on one thread
    (as on a worker), over a grid of feature counts and chunk sizes."""
    from threadpoolctl import threadpool_limits

    from dlogit.chunks import DenseBinomialCPU
    from dlogit.family import ParamLayout
    from dlogit.kernels.policy import choose_cpu_kernel

    rng = np.random.default_rng(0)
    sizes = (0.5, 2, 8) if quick else (0.5, 2, 8, 32, 128)
    rows = []
    with threadpool_limits(1):
        for d in (16, 100, 784) if quick else (16, 32, 64, 100, 128, 256, 784, 2000):
            for mib in sizes:
                n = max(4, int(mib * 2**20 / (8 * d)))
                X = rng.standard_normal((n, d))
                y = (rng.random(n) < 0.5).astype(float)
                theta = np.r_[rng.standard_normal(d) * 0.05, 0.1]
                reps = max(3, int((1e7 if quick else 1e8) / X.nbytes))
                us = {}
                for kernel in ("fused", "blas"):
                    chunk = DenseBinomialCPU(X, y, None, ParamLayout(d, 1), kernel=kernel)
                    chunk.sums(theta)
                    best = float("inf")
                    for _ in range(4):
                        t0 = time.perf_counter()
                        for _ in range(reps):
                            chunk.sums(theta)
                        best = min(best, (time.perf_counter() - t0) / reps)
                    us[kernel] = best * 1e6
                rows.append({"features": d, "rows": n, "mib": mib, "fused_us": us["fused"],
                             "blas_us": us["blas"], "ratio": us["fused"] / us["blas"],
                             "auto": choose_cpu_kernel("auto", n, d, X.dtype, threads=1)})
    return {"dtype": "float64", "threads": 1, "sizes_mib": list(sizes), "grid": rows}


# ------------------------------------------------------------------------------------------------
def _peak_rss():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss():
    import psutil

    return psutil.Process().memory_info().rss


def _signal_chunk(i: int, rows: int, d: int):
    """One chunk of X ~ N(0, 1) and y ~ Bernoulli(sigmoid(X w_true)), made in one task so that X and
    y land on the same worker (no copies between workers)."""
    rng = np.random.default_rng([7, i])
    X = rng.standard_normal((rows, d))
    w_true = np.random.default_rng(1).standard_normal(d) * 3 / np.sqrt(d)
    y = (rng.random(rows) < 1 / (1 + np.exp(-(X @ w_true)))).astype(np.float64)
    return X, y


def _signal_data(rows: int, d: int, chunks: int):
    import dask
    import dask.array as da

    xs, ys = [], []
    for i in range(chunks):
        n = rows // chunks + (1 if i < rows % chunks else 0)
        part = dask.delayed(_signal_chunk, pure=True)(i, n, d)
        xs.append(da.from_delayed(part[0], shape=(n, d), dtype=np.float64))
        ys.append(da.from_delayed(part[1], shape=(n,), dtype=np.float64))
    return da.concatenate(xs), da.concatenate(ys)


def _warm_imports() -> None:
    """Import, on a worker, what either contender's first fit would import there."""
    import importlib

    for name in ("dask.array", "dlogit.worker", "dask_ml.linear_model", "dask_glm.algorithms"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def bench_lbfgs(rows: int, with_dask_ml: bool) -> tuple[dict, dict]:

    import dlogit

    d, l2, tol = 100, 0.01, 1e-6
    out: dict = {"data": f"{rows}x{d} float64", "tol": tol, "l2": l2}
    mem: dict = {}
    cluster, client = _cluster(2)
    try:
        client.run(_warm_imports)  # neither contender pays for first imports on the workers
        base = client.run(_rss)  # after the imports: growth is the data and the fit's work
        X, y = _signal_data(rows, d, chunks=16)
        X, y = client.persist([X, y])
        from distributed import wait

        with client.as_current():
            wait([X, y])
        m = dlogit.LogisticRegression(solver="lbfgs", tol=tol, l2=l2, mode="distributed")
        t0 = time.perf_counter()
        m.fit(X, y, client=client)
        out["dlogit_s"] = time.perf_counter() - t0
        out["dlogit_iter"] = m.n_iter_
        out["dlogit_grad_norm"] = m.grad_norm_
        peak = client.run(_peak_rss)
        shard = rows * (d + 1) * 8 / 2
        mem = {"shard_bytes_per_worker": shard,
               "peak_rss_growth_over_shard": max((peak[w] - base[w]) / shard for w in peak),
               "peak_rss_over_shard": max(peak[w] / shard for w in peak), "goal": 1.3}
        mem["goal_met"] = mem["peak_rss_growth_over_shard"] <= 1.3
        Xd, yd = X, y  # for dask-ml below, the same persisted data
        if with_dask_ml:
            try:
                from dask_ml.linear_model import LogisticRegression as DML

                t0 = time.perf_counter()
                with client.as_current():
                    # dask-ml: sum loss + (lamduh/2)||w||^2 -> lamduh = 2 n l2 is the same optimum
                    DML(solver="lbfgs", penalty="l2", C=1.0 / (2 * rows * l2), tol=tol,
                        max_iter=1000).fit(Xd, yd)
                out["dask_ml_s"] = time.perf_counter() - t0
            except Exception as exc:  # noqa: BLE001
                out["dask_ml_error"] = f"{type(exc).__name__}: {exc}"[:200]
        # a fair baseline: arrays that come back from Dask can be unaligned, and NumPy/BLAS then run
        # several times slower (dask/distributed#8985) -- scikit-learn gets aligned C-contiguous copies
        Xn = np.array(client.compute(Xd).result(), order="C", copy=True)
        yn = np.array(client.compute(yd).result(), order="C", copy=True)
        assert Xn.flags.aligned and Xn.flags.c_contiguous and yn.flags.aligned
        out["sklearn_input"] = "aligned C-contiguous float64 copy (asserted)"
        del Xd, yd
    finally:
        client.close()
        cluster.close()
    from sklearn.linear_model import LogisticRegression as SK

    t0 = time.perf_counter()
    sk = SK(C=1.0 / (2 * rows * l2), tol=tol, solver="lbfgs", max_iter=1000).fit(Xn, yn)
    out["sklearn_s"] = time.perf_counter() - t0
    out["sklearn_iter"] = int(sk.n_iter_[0])
    ref = np.r_[sk.coef_[0], sk.intercept_]
    ours = np.r_[m.coef_[0], m.intercept_]
    out["coef_rel_diff_vs_sklearn"] = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
    out["ratio_vs_sklearn"] = out["dlogit_s"] / out["sklearn_s"]
    if "dask_ml_s" in out:
        out["ratio_vs_dask_ml"] = out["dlogit_s"] / out["dask_ml_s"]
    out["goal"] = "<= 0.5x sklearn, <= 0.1x dask-ml"
    return out, mem


GPU_PARTS = ("kernel", "textbook", "lbfgs")


def bench_gpu(parts=None, scale: float = 1.0, lbfgs_rows: int = 16_777_216, sklearn_rows=None,
              progress=None) -> dict:
    """The GPU comparisons (``scripts/gpu-check`` runs each part as its own bounded stage).

    ``kernel``    HBM copy rate, the one-pass floor, the fused kernel (also with row weights) vs cuBLAS
                  at 16.7M x 256, 4.2M x 784 and 67M x 32 float32 (``scale`` multiplies the rows)
    ``textbook``  the textbook run through ``dlogit train --gpus all`` and in-process on CuPy arrays
                  vs the plain loop on CuPy arrays
    ``lbfgs``     L-BFGS to ||grad|| <= 1e-6 on ``lbfgs_rows`` x 256 float32 on the GPU vs
                  scikit-learn on the CPU cores (on ``sklearn_rows``, default 1/8 of the rows) and vs
                  cuML's LogisticRegression when it imports

    ``progress(**results)`` is called as results come in (gpu-check keeps them if a part is killed).
    """
    from dlogit._xp import cupy_available

    if not cupy_available():
        return {"skipped": "no GPU: CuPy or a CUDA device is missing"}
    parts = tuple(parts or GPU_PARTS)
    unknown = set(parts) - set(GPU_PARTS)
    if unknown:
        raise ValueError(f"unknown GPU bench part(s) {sorted(unknown)}; parts: {GPU_PARTS}")
    res: dict = {}
    if "kernel" in parts:
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        import bench_gpu_kernel

        res["kernel"] = bench_gpu_kernel.run(scale=scale)
    if "textbook" in parts:
        res["textbook"] = bench_gpu_textbook()
    if "lbfgs" in parts:
        res["lbfgs"] = bench_gpu_lbfgs(lbfgs_rows, sklearn_rows=sklearn_rows, progress=progress)
    return res


def _gpu_sync() -> None:
    import cupy

    cupy.cuda.get_current_stream().synchronize()


def plain_cupy_textbook(X, y, w0, steps=10001, with_cost=True):
    """:func:`plain_numpy_textbook` on CuPy arrays (NumPy's functions dispatch to CuPy), synchronized."""
    out = plain_numpy_textbook(X, y, w0, steps=steps, with_cost=with_cost)
    _gpu_sync()
    return out


def bench_gpu_textbook(repeats: int = 3) -> dict:
    """The textbook run (400x784 float64, 10 001 gd steps) on the GPU: ``dlogit train --gpus all``
    (fit time; cluster start-up and data load reported apart), dlogit in-process on CuPy arrays, and
    the plain loop on CuPy arrays (with and without the per-step cost); best of ``repeats``."""
    import cupy

    import dlogit
    from dlogit.data import synthetic_numpy

    Xn, yn = synthetic_numpy(400, 784, seed=0)
    w0n = np.random.default_rng(0).standard_normal(784)
    X, y, w0 = cupy.asarray(Xn), cupy.asarray(yn), cupy.asarray(w0n)
    plain_cupy_textbook(X, y, w0, steps=20)  # compile CuPy's kernels outside the timing
    plain, bare, inproc, runs = [], [], [], []
    cmd = [sys.executable, "-m", "dlogit", "train", "--gpus", "all", "--json"]
    m = dlogit.LogisticRegression(solver="gd", lr=0.1, l2=0.01, max_iter=10001, tol=0.0, init="normal",
                                  random_state=0)
    m.fit(X[:64], y[:64])  # NVRTC compiles the fused kernel outside the timing
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain_cupy_textbook(X, y, w0)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain_cupy_textbook(X, y, w0, with_cost=False)
        bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m.fit(X, y)
        _gpu_sync()
        inproc.append(time.perf_counter() - t0)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    return {"command": " ".join(cmd[2:]), "data": "400x784 float64", "steps": 10001,
            "kernel": best.get("kernel"), "mode": best.get("mode"), "cluster": best.get("cluster"),
            "dlogit_fit_s": best["seconds"], "dlogit_fit_all_s": [r["seconds"] for r in runs],
            "cluster_startup_s": best.get("startup_seconds"), "data_load_s": best.get("load_seconds"),
            "dlogit_inprocess_s": min(inproc), "dlogit_inprocess_all_s": inproc,
            "inprocess_kernel": getattr(m, "kernel_", None), "accuracy": best.get("accuracy"),
            "plain_cupy_s": min(plain), "plain_cupy_all_s": plain, "bare_cupy_s": min(bare),
            "ratio": best["seconds"] / min(plain), "ratio_vs_bare": best["seconds"] / min(bare),
            "ratio_inprocess": min(inproc) / min(plain), "goal_ratio": 1.0,
            "goal_met": best["seconds"] <= min(plain)}


def _gpu_signal_data(rows: int, d: int, seed: int = 7):
    """X ~ N(0, 1) float32 and y ~ Bernoulli(sigmoid(X w_true)) made on the GPU (the same for a seed)."""
    import cupy

    rs = cupy.random.RandomState(seed)
    X = rs.standard_normal((rows, d), dtype=cupy.float32)
    w_true = rs.standard_normal(d, dtype=cupy.float32) * np.float32(3 / np.sqrt(d))
    p = 1 / (1 + cupy.exp(-(X @ w_true)))
    y = (rs.random_sample(rows, dtype=cupy.float32) < p).astype(cupy.float32)
    return X, y


def bench_gpu_lbfgs(rows: int = 16_777_216, d: int = 256, sklearn_rows=None, l2: float = 0.01,
                    tol: float = 1e-6, progress=None) -> dict:
    """L-BFGS to ||grad|| <= tol on the GPU (dlogit in-process on CuPy arrays, float32 X) vs scikit-learn
    on the CPU cores and cuML.

    scikit-learn fits the first ``sklearn_rows`` rows (default ``rows // 8``) in float64 on the host (its
    time at the full size would be about ``rows / sklearn_rows`` times that; the estimate is reported
    as such, not measured); dlogit fits the same subset too, so its coefficients and time compare on the
    same problem.
    """
    import cupy

    import dlogit

    def note(**kv) -> None:
        out.update(kv)
        if progress is not None:
            progress(**out)

    sk_rows = int(sklearn_rows or max(1, rows // 8))
    out: dict = {"data": f"{rows}x{d} float32 (GPU)", "tol": tol, "l2": l2, "sklearn_rows": sk_rows}
    X, y = _gpu_signal_data(rows, d)
    _gpu_sync()
    kw = {"solver": "lbfgs", "tol": tol, "l2": l2, "max_iter": 1000}
    dlogit.LogisticRegression(**kw).fit(X[:4096], y[:4096])  # compile the kernels outside the timing
    m = dlogit.LogisticRegression(**kw)
    t0 = time.perf_counter()
    m.fit(X, y)
    _gpu_sync()
    note(dlogit_s=time.perf_counter() - t0, dlogit_iter=int(m.n_iter_), dlogit_grad_norm=float(m.grad_norm_),
         dlogit_status=m.status_, dlogit_kernel=getattr(m, "kernel_", None))
    Xs, ys = X[:sk_rows], y[:sk_rows]
    ms = dlogit.LogisticRegression(**kw)
    t0 = time.perf_counter()
    ms.fit(Xs, ys)
    _gpu_sync()
    note(dlogit_subset_s=time.perf_counter() - t0, dlogit_subset_iter=int(ms.n_iter_))
    try:
        import cuml

        t0 = time.perf_counter()
        cm = cuml.LogisticRegression(C=1.0 / (2 * rows * l2), tol=tol, max_iter=1000).fit(X, y)
        _gpu_sync()
        note(cuml_s=time.perf_counter() - t0, cuml_version=cuml.__version__,
             cuml_coef_rel_diff=float(np.linalg.norm(cupy.asnumpy(cm.coef_).ravel() - m.coef_.ravel())
                                      / np.linalg.norm(m.coef_)))
    except ImportError as exc:
        note(cuml_error=f"not importable ({exc})")
    except Exception as exc:  # noqa: BLE001 - report cuML's own failure, keep the rest
        note(cuml_error=f"{type(exc).__name__}: {exc}"[:200])
    Xh = cupy.asnumpy(Xs).astype(np.float64)
    yh = cupy.asnumpy(ys).astype(np.float64)
    del X, y, Xs, ys
    cupy.get_default_memory_pool().free_all_blocks()
    from sklearn.linear_model import LogisticRegression as SK

    t0 = time.perf_counter()
    sk = SK(C=1.0 / (2 * sk_rows * l2), tol=tol, solver="lbfgs", max_iter=1000).fit(Xh, yh)
    sk_s = time.perf_counter() - t0
    ref = np.r_[sk.coef_[0], sk.intercept_]
    ours = np.r_[ms.coef_[0], ms.intercept_]
    note(sklearn_s=sk_s, sklearn_iter=int(sk.n_iter_[0]), sklearn_threads=os.cpu_count(),
         sklearn_full_size_estimate_s=sk_s * rows / sk_rows,
         coef_rel_diff_vs_sklearn=float(np.linalg.norm(ours - ref) / np.linalg.norm(ref)),
         ratio_vs_sklearn_same_rows=out["dlogit_subset_s"] / sk_s,
         ratio_vs_sklearn_estimate=out["dlogit_s"] / (sk_s * rows / sk_rows),
         goal="<= 0.5x sklearn")
    return out


# ------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not for BENCHMARKS.md)")
    ap.add_argument("--lbfgs-rows", type=int, default=2_000_000)
    ap.add_argument("--no-dask-ml", action="store_true")
    ap.add_argument("--json", default="bench-results/bench.json")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_models

    sections = ["coordination", "textbook", "kernel", "lbfgs", "gpu", *bench_models.SECTIONS, "first", "scale"]
    ap.add_argument("--only", nargs="*", default=None, choices=sections)
    args = ap.parse_args()
    rows = 100_000 if args.quick else args.lbfgs_rows
    want = set(args.only or sections)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(),
                 "cpus": os.cpu_count(), "python": platform.python_version()}
    if "coordination" in want:
        res["coordination"] = bench_coordination(300 if args.quick else 2000)
        c = res["coordination"]
        print(f"coordination (4 workers, 400x784): dlogit step {c['dlogit_step_ms']:.3f} ms, overhead "
              f"over slowest worker {c['dlogit_overhead_ms']:.3f} ms (goal <= 1 ms); dask.array graph "
              f"{c['dask_array_graph_step_ms']:.1f} ms ({c['speedup_vs_graph']:.0f}x slower); submit per "
              f"shard {c['submit_per_shard_step_ms']:.1f} ms ({c['speedup_vs_submit']:.0f}x slower)", flush=True)
    if "textbook" in want:
        res["textbook"] = t = bench_textbook(args.quick)
        print(f"textbook (10 001 GD steps): plain NumPy textbook loop {t['plain_numpy_s']:.3f} s (without "
              f"the per-step cost {t['bare_gradient_loop_s']:.3f} s), dlogit train "
              f"{t['dlogit_fit_s']:.3f} s with the {t['kernel']} kernel (ratio {t['ratio']:.2f}, goal <= 1.0; "
              f"cluster start-up {t['cluster_startup_s']:.2f} s and data load {t['data_load_s']:.2f} s "
              f"reported separately), accuracy {t['accuracy']}; with the BLAS kernel forced "
              f"{t['dlogit_blas_kernel_fit_s']:.3f} s (ratio {t['ratio_blas_kernel']:.2f})", flush=True)
    if "kernel" in want:
        res["kernel"] = k = bench_kernel(args.quick)
        print("kernel (one chunk evaluation, float64, 1 thread): fused time / BLAS time, by features "
              f"(rows) and chunk MiB {k['sizes_mib']}; auto picks", flush=True)
        for d in sorted({r["features"] for r in k["grid"]}):
            line = [r for r in k["grid"] if r["features"] == d]
            print(f"  d={d:<5} " + " ".join(f"{r['ratio']:5.2f}" for r in line) + f"   {line[0]['auto']}",
                  flush=True)
    if "lbfgs" in want:
        res["lbfgs"], res["memory"] = bench_lbfgs(rows, not args.no_dask_ml)
        lb, mem = res["lbfgs"], res["memory"]
        dml = (f", dask-ml {lb['dask_ml_s']:.2f} s (ratio {lb['ratio_vs_dask_ml']:.3f}, goal <= 0.1)"
               if "dask_ml_s" in lb else f", dask-ml: {lb.get('dask_ml_error', 'not run')}")
        print(f"lbfgs ({lb['data']}, tol 1e-6): dlogit {lb['dlogit_s']:.2f} s ({lb['dlogit_iter']} it), "
              f"sklearn {lb['sklearn_s']:.2f} s ({lb['sklearn_iter']} it) -> ratio "
              f"{lb['ratio_vs_sklearn']:.2f} (goal <= 0.5){dml}; coef rel diff vs sklearn "
              f"{lb['coef_rel_diff_vs_sklearn']:.1e}", flush=True)
        print(f"memory: peak RSS growth per worker / shard = {mem['peak_rss_growth_over_shard']:.2f} "
              f"(goal <= 1.3); peak RSS / shard = {mem['peak_rss_over_shard']:.2f}", flush=True)
    if "gpu" in want:
        res["gpu"] = bench_gpu()
        print(f"gpu: {res['gpu'].get('skipped', 'see JSON')}", flush=True)
    for name, section in bench_models.SECTIONS.items():
        if name in want:
            res[name] = section(args.quick)
            print(f"{name}: {json.dumps(res[name], default=float)}", flush=True)
    if "first" in want:  # issue 23's first-contact figures, fresh processes (scripts/bench_first.py)
        import bench_first

        res["first"] = bench_first.main(["--quick"] if args.quick else [])
    if "scale" in want:  # issue 21's simulated multi-host cluster (scripts/bench_scale.py; needs root)
        import bench_scale

        res["scale"] = bench_scale.main(["--quick"] if args.quick else [])
    from _benchio import write_json  # scripts/, beside this file

    write_json(args.json, res)


if __name__ == "__main__":
    main()
