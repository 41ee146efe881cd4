#!/usr/bin/env python
"""Data larger than the workers' memory (issue 21), end to end: ``dlogit train DIR --label y
--cache-bytes ...`` against a cluster whose workers' combined ``memory_limit`` is a third of the data.

    .venv/bin/python scripts/bench_larger.py                       # 6 GB of Parquet, 2 workers at 1 GiB
    .venv/bin/python scripts/bench_larger.py --gb 1 --memory-limit 200MiB --cache-bytes 64MiB  # a quick look

What it does, in one run:

1. writes ``--gb`` GB of float64 features (d = 100) with labels drawn from a logistic model, as a Parquet
   dataset directory (``--files`` files, row groups of ``--chunk-mb``), or reuses ``--dir`` if it holds one;
2. **streamed**: a LocalCluster of ``--workers`` processes (one thread each, 127.0.0.1) with
   ``memory_limit=--memory-limit``; ``scripts/dlogit train DIR --label y --scheduler ADDR --cache-bytes C
   --out streamed.npz --json`` (L-BFGS to its tolerance) while a thread samples every worker's RSS
   (psutil, every 50 ms); then 6 gd steps through the Python API (one evaluation per step) for the
   time per evaluation (median of steps 2..6);
3. **reader alone**: every chunk's X read once with the same reader (``ChunkSource.read_x``), one thread,
   divided by the worker count (the workers read in parallel, one core each);
4. **in memory**: the same on a cluster with the default memory_limit and every chunk cached: the same
   L-BFGS command (its model must equal the streamed one, ``np.array_equal``) and the same gd timing.

Prints peak worker RSS against budget + 2 chunks, the per-evaluation times and the issue's ratio
``streamed / max(read, in-memory)`` (goal <= 1.2). The files are in the page cache once written (this
script does not drop caches): "read" is the reader's own cost, not the disk's. Compare one run's figures.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
D = 100


def write(path: str, gb: float, files: int, chunk_rows: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = int(gb * 1e9 / (D * 8))
    rows_per_file = -(-rows // files)
    rng = np.random.default_rng(0)
    w = rng.standard_normal(D) / np.sqrt(D)
    schema = pa.schema([(f"x{j}", pa.float64()) for j in range(D)] + [("y", pa.int8())])
    os.makedirs(path, exist_ok=True)
    done = 0
    for f in range(files):
        n_file = min(rows_per_file, rows - done)
        with pq.ParquetWriter(os.path.join(path, f"part-{f:03d}.parquet"), schema, compression="none") as wr:
            for s in range(0, n_file, chunk_rows):
                n = min(n_file, s + chunk_rows) - s
                x = rng.standard_normal((n, D))
                y = (rng.random(n) < 1 / (1 + np.exp(-(x @ w)))).astype(np.int8)
                cols = [pa.array(x[:, j]) for j in range(D)] + [pa.array(y)]
                wr.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=chunk_rows)
        done += n_file
    return rows


class RSS:
    """Peak RSS of each worker process, sampled on a thread."""

    def __init__(self, pids: list[int]):
        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.peak = [0] * len(pids)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for i, p in enumerate(self.procs):
                with contextlib.suppress(psutil.Error):  # a worker restarting: its next sample counts
                    self.peak[i] = max(self.peak[i], p.memory_info().rss)
            self._stop.wait(0.05)

    def stop(self) -> list[int]:
        self._stop.set()
        self._t.join()
        return self.peak


def run_case(name: str, data: str, workers: int, memory_limit: str | None, cache: str, out: str,
             chunk_bytes: int) -> dict:
    from distributed import Client, LocalCluster

    import dlogit

    kw = {} if memory_limit is None else {"memory_limit": memory_limit}
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=logging.CRITICAL, **kw)
    client = Client(cluster)
    res: dict = {"case": name, "memory_limit": memory_limit, "cache_bytes": cache}
    try:
        pids = list(client.run(os.getpid).values())
        limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
        res["worker_memory_limit_bytes"] = int(limits[0])
        rss0 = RSS(pids)
        time.sleep(0.3)
        res["idle_rss_bytes"] = rss0.stop()
        rss = RSS(pids)
        cmd = [os.path.join(HERE, "dlogit"), "train", os.path.join(data, "*.parquet"), "--label", "y",
               "--scheduler", cluster.scheduler_address, "--cache-bytes", cache, "--chunk-bytes",
               str(chunk_bytes), "--out", out, "--json", "--quiet"]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT)
        res["train_wall_s"] = time.perf_counter() - t0
        res["peak_rss_bytes"] = rss.stop()
        if p.returncode != 0:
            raise RuntimeError(f"{name}: dlogit train exited {p.returncode}: {p.stderr[-2000:]}")
        res["train"] = json.loads(p.stdout.strip().splitlines()[-1])
        # time per evaluation: gd does one evaluation per step
        ds = dlogit.read_data(os.path.join(data, "*.parquet"), label="y", client=client,
                              chunk_bytes=chunk_bytes)
        with __import__("dask").config.set({"dlogit.engine.cache-bytes": cache}):
            m = dlogit.LogisticRegression(solver="gd", max_iter=6, tol=0.0).fit(ds.X, ds.y, client=client)
        steps = np.asarray(m.history_["step_seconds"], dtype=float)
        res["gd_step_s"] = steps.tolist()
        res["eval_s"] = float(np.median(steps[1:])) if steps.size > 1 else float(steps[0])
    finally:
        client.close()
        cluster.close()
    return res


def read_alone(data: str, chunk_bytes: int, workers: int) -> dict:
    from dlogit import io as dio
    from dlogit.io.source import Source
    from dlogit.io.stream import ChunkSource

    info = dio.scan(Source(path=os.path.join(data, "*.parquet"), label="y", chunk_bytes=chunk_bytes))
    n = len(info.pieces)
    best = np.inf
    for _ in range(2):
        t0 = time.perf_counter()
        for i in range(n):
            ChunkSource(info, i).read_x({}, None)
        best = min(best, time.perf_counter() - t0)
    return {"chunks": n, "read_all_s": best, "read_per_worker_s": best / workers}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=6.0, help="GB of X (float64, d = 100)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="1GiB", help="each worker's memory_limit (streamed case)")
    ap.add_argument("--cache-bytes", default="512MiB", help="--cache-bytes of the streamed case")
    ap.add_argument("--chunk-mb", type=float, default=32.0, help="MB of X per row group and chunk")
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--dir", help="the dataset directory (kept; written if it holds no Parquet)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    chunk_rows = int(args.chunk_mb * 1e6 / (D * 8))
    chunk_bytes = chunk_rows * D * 8
    tmp = tempfile.mkdtemp(prefix="dlogit-bench-larger-")
    data = args.dir or os.path.join(tmp, "events")
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg(), "gb": args.gb,
                 "workers": args.workers, "chunk_bytes": chunk_bytes}
    try:
        if not glob.glob(os.path.join(data, "*.parquet")):
            t0 = time.perf_counter()
            out["rows"] = write(data, args.gb, args.files, chunk_rows)
            print(f"wrote {args.gb:g} GB ({out['rows']} rows x {D}) to {data} in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        on_disk = sum(os.path.getsize(f) for f in glob.glob(os.path.join(data, "*.parquet")))
        out["bytes_on_disk"] = on_disk
        s = run_case("streamed", data, args.workers, args.memory_limit, args.cache_bytes,
                     os.path.join(tmp, "streamed.npz"), chunk_bytes)
        lim = s["worker_memory_limit_bytes"]
        print(f"streamed: {args.workers} workers x memory_limit {lim / 2**30:.2f} GiB (data {on_disk / 1e9:.2f} GB "
              f"= {on_disk / (args.workers * lim):.1f}x their combined memory_limit), cache-bytes "
              f"{args.cache_bytes}: L-BFGS {s['train']['n_iter']} it. {s['train']['status']} in "
              f"{s['train']['seconds']:.1f} s (wall {s['train_wall_s']:.1f} s), loss {s['train']['loss']:.10f}; "
              f"peak worker RSS {[round(b / 2**20) for b in s['peak_rss_bytes']]} MiB (idle "
              f"{[round(b / 2**20) for b in s['idle_rss_bytes']]}); per evaluation {s['eval_s']:.3f} s",
              flush=True)
        out["streamed"] = s
        r = read_alone(data, chunk_bytes, args.workers)
        out["read"] = r
        print(f"reader alone: {r['chunks']} chunks in {r['read_all_s']:.2f} s on one thread, "
              f"{r['read_per_worker_s']:.2f} s per worker's share", flush=True)
        m = run_case("memory", data, args.workers, None, "100%", os.path.join(tmp, "memory.npz"), chunk_bytes)
        out["memory"] = m
        print(f"in memory: L-BFGS {m['train']['n_iter']} it. in {m['train']['seconds']:.1f} s, loss "
              f"{m['train']['loss']:.10f}; per evaluation {m['eval_s']:.3f} s", flush=True)
        a, b = np.load(os.path.join(tmp, "streamed.npz")), np.load(os.path.join(tmp, "memory.npz"))
        same = all(np.array_equal(a[k], b[k]) for k in ("coef", "intercept") if k in a.files)
        out["models_identical"] = bool(same)
        ratio = s["eval_s"] / max(r["read_per_worker_s"], m["eval_s"])
        out["ratio_streamed_over_max"] = ratio
        print(f"streamed model == in-memory model: {same}; per evaluation streamed {s['eval_s']:.3f} s / "
              f"max(read {r['read_per_worker_s']:.3f} s, in memory {m['eval_s']:.3f} s) = {ratio:.2f} "
              f"(goal <= 1.2)", flush=True)
    finally:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1, default=float)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
