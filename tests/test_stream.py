"""Chunk residency and streaming from storage (dlogit.engine.residency, dlogit.io.stream) on real
LocalClusters: a fit whose workers read their chunks again at every evaluation gives the same bits as
the same fit on data held in memory; a file changed during the fit is one line naming it; a worker's
memory stays within its cache budget plus two chunks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import dask
import numpy as np
import pytest
from conftest import local_cluster

from dlogit import LogisticRegression, data
from dlogit.errors import DataError

ROWS, D, CHUNK = 2000, 10, 250  # 8 chunks of 20 000 bytes of X


def _problem(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    X = rng.standard_normal((ROWS, D))
    z = X[:, 0] - 0.5 * X[:, 1] + 0.3 * rng.standard_normal(ROWS)
    w = None
    params: dict = {"max_iter": 15, "tol": 0.0}
    if kind == "multinomial":
        y = np.digitize(z, [-0.7, 0.0, 0.7]).astype(np.float64)
    else:
        y = (z > 0).astype(np.float64)
    if kind == "weights":
        w = rng.uniform(0.1, 3.0, ROWS)
    if kind == "l1":
        params.update(l1=0.02)
    if kind.startswith("newton"):  # H.v of streamed chunks: their curvature from the read of that step
        params.update(solver="newton", max_iter=6)
        if kind == "newton-weights":
            w = rng.uniform(0.1, 3.0, ROWS)
    return X, y, w, params


def _write(fmt: str, tmp, X, y, w) -> dict:
    """The data as files of ``fmt``; the read_data arguments that read them back."""
    if fmt == "npy":
        np.save(tmp / "X.npy", X)
        np.save(tmp / "y.npy", y)
        out = {"source": str(tmp / "X.npy"), "labels": str(tmp / "y.npy")}
        if w is not None:
            np.save(tmp / "w.npy", w)
            out["weights"] = str(tmp / "w.npy")
        return out
    if fmt == "zarr":
        zarr = pytest.importorskip("zarr")
        g = zarr.open_group(str(tmp / "d.zarr"), mode="w")
        for name, a in (("X", X), ("y", y), ("w", w)):
            if a is not None:  # Zarr chunks of 125 rows: two per dlogit chunk
                g.create_array(name, shape=a.shape, chunks=(CHUNK // 2,) + a.shape[1:], dtype=a.dtype)[:] = a
        return {"source": str(tmp / "d.zarr"), "label": "y", **({"weights": "w"} if w is not None else {})}
    import pandas as pd

    df = pd.DataFrame(X, columns=[f"x{j}" for j in range(D)])
    df["y"] = y
    if w is not None:
        df["w"] = w
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp / "d.parquet", row_group_size=CHUNK)
        path = tmp / "d.parquet"
    else:  # csv, tsv, and their compressed forms (csv.gz ...): one file, several chunks
        # 17 significant digits: the text reads back as the same doubles
        path = tmp / f"d.{fmt}"
        df.to_csv(path, index=False, float_format="%.17g", sep="\t" if fmt.startswith("tsv") else ",")
    return {"source": str(path), "label": "y", **({"weights": "w"} if w is not None else {})}


def _fit(client, files: dict, mode: str, cache: str | None, params: dict, persist: bool = False):
    events: list[dict] = []
    with dask.config.set({} if cache is None else {"dlogit.engine.cache-bytes": cache}):
        ds = data.read_data(files["source"], client=client, chunk_rows=CHUNK,
                            **{k: v for k, v in files.items() if k != "source"})
        X, y, w = ds.X, ds.y, ds.sample_weight
        if persist:
            X, y, w = client.persist([X, y, w]) if w is not None else (*client.persist([X, y]), None)
        model = LogisticRegression(mode=mode, **params).fit(X, y, sample_weight=w, client=client,
                                                            callback=events.append)
    start = next(e for e in events if e["type"] == "start")
    coef = np.concatenate([model.coef_.ravel(), np.ravel(model.intercept_)])
    return coef, start["params"].get("cache"), model


@pytest.mark.parametrize("fmt, kind", [
    ("npy", "binary"), ("npy", "multinomial"), ("npy", "weights"), ("npy", "l1"), ("npy", "newton"),
    ("parquet", "newton-weights"), ("parquet", "binary"), ("parquet", "multinomial"), ("parquet", "weights"), ("parquet", "l1"),
    ("csv", "binary"), ("csv", "weights"),
    ("csv.gz", "binary"), ("csv.gz", "multinomial"), ("csv.bz2", "weights"), ("csv.xz", "l1"),
    ("tsv.zst", "newton-weights"), ("zarr", "binary"), ("zarr", "weights"), ("zarr", "newton"),
])
def test_streamed_fit_gives_the_same_bits_as_in_memory(client2, tmp_path, fmt, kind):
    """Budget 0 (every chunk read again at every evaluation) and a budget holding about half of each
    worker's chunks, on one worker (worker-local) and on two (distributed), against the same data
    persisted in the workers' memory: assert_array_equal."""
    X, y, w, params = _problem(kind, np.random.default_rng(7))
    files = _write(fmt, tmp_path, X, y, w)
    chunk = CHUNK * D * 8
    for mode, held in (("worker-local", 8), ("distributed", 4)):
        ref, ref_cache, _ = _fit(client2, files, mode, None, params, persist=True)
        assert ref_cache is None  # persisted data: the classic path, every chunk in Dask's memory
        for budget, cached in ((0, 0), (held // 2 * chunk, held // 2)):
            got, cache, model = _fit(client2, files, mode, str(budget), params)
            assert model.mode_ == mode
            assert cache["cached_chunks"] == cached * (8 // held), (mode, budget, cache)
            assert cache["streamed_chunks"] == 8 - cached * (8 // held)
            assert cache["bytes_per_eval"] == cache["streamed_chunks"] * chunk
            np.testing.assert_array_equal(got, ref, err_msg=f"{mode} cache-bytes {budget}")


@pytest.mark.parametrize("mode, ext", [("worker-local", ""), ("distributed", ""), ("worker-local", ".gz"),
                                       ("distributed", ".xz")])
def test_streamed_libsvm_gives_the_same_bits(client2, tmp_path, mode, ext):
    """Sparse (CSR) chunks of an uncompressed LIBSVM file, each its byte range: streamed (budget 0,
    and about half of each worker's chunks) equals persisted."""
    import scipy.sparse as sp
    from sklearn.datasets import dump_svmlight_file

    rng = np.random.default_rng(17)
    X = sp.random(ROWS, 30, density=0.2, random_state=3, format="csr")
    y = (np.asarray(X[:, 0].todense()).ravel() + 0.1 * rng.standard_normal(ROWS) > 0.05).astype(int)
    dump_svmlight_file(X, y, str(tmp_path / "d.svm"))
    if ext:  # compressed: one unit of several chunks, the streamed ones spilled as CSR arrays
        import gzip
        import lzma

        with (gzip.open if ext == ".gz" else lzma.open)(tmp_path / f"d.svm{ext}", "wb") as fh:
            fh.write((tmp_path / "d.svm").read_bytes())
    params = {"max_iter": 15, "tol": 0.0}
    out: dict = {}
    total = 0
    for cache in ("persist", "0", "half"):
        if cache == "half":  # each worker's share is 1/workers of the bytes: cache half of it
            share = total / (1 if mode == "worker-local" else 2)
            cache = str(int(share / 2))
        with dask.config.set({} if cache == "persist" else {"dlogit.engine.cache-bytes": cache}):
            ds = data.read_data(str(tmp_path / f"d.svm{ext}"), chunk_bytes=20_000, client=client2)
            Xd, yd = client2.persist([ds.X, ds.y]) if cache == "persist" else (ds.X, ds.y)
            events: list[dict] = []
            m = LogisticRegression(mode=mode, **params).fit(Xd, yd, client=client2, callback=events.append)
        got = next(e for e in events if e["type"] == "start")["params"].get("cache")
        n = ds.X.numblocks[0]
        if cache == "0":
            total = got["bytes_per_eval"]
            assert got["streamed_chunks"] == n > 4
        elif cache != "persist":
            assert 0 < got["cached_chunks"] < n, got
        out[cache] = np.concatenate([m.coef_.ravel(), m.intercept_])
    for cache, coef in out.items():
        np.testing.assert_array_equal(coef, out["persist"], err_msg=cache)


def test_streamed_cv_path_gives_the_same_bits(client2, tmp_path):
    """A cross-validated path (every fold of a penalty in one pass, the folds from the first pass's
    labels) on streamed chunks: the same chosen penalty and model as on persisted data."""
    from dlogit.estimator_cv import LogisticRegressionCV

    X, y, _, _ = _problem("binary", np.random.default_rng(11))
    files = _write("npy", tmp_path, X, y, None)
    out = {}
    for cache in ("persist", "0", str(2 * CHUNK * D * 8)):
        with dask.config.set({} if cache == "persist" else {"dlogit.engine.cache-bytes": cache}):
            ds = data.read_data(files["source"], labels=files["labels"], chunk_rows=CHUNK, client=client2)
            Xd, yd = client2.persist([ds.X, ds.y]) if cache == "persist" else (ds.X, ds.y)
            events: list[dict] = []
            m = LogisticRegressionCV(l2=[1e-3, 1e-1], cv=3, max_iter=20).fit(Xd, yd, client=client2,
                                                                               callback=events.append)
        got = next(e for e in events if e["type"] == "start")["params"].get("cache")
        assert (got is None) == (cache == "persist")
        if cache == "0":
            assert got["streamed_chunks"] == 8
        out[cache] = np.concatenate([m.coef_.ravel(), m.intercept_, [m.l2_]])
    np.testing.assert_array_equal(out["0"], out["persist"])
    np.testing.assert_array_equal(out[str(2 * CHUNK * D * 8)], out["persist"])


def _kill(client, address: str) -> None:
    """SIGKILL a worker's process (from a thread: not on the client's own event loop)."""
    import signal

    pid = client.run(os.getpid, workers=[address])[address]
    os.kill(pid, signal.SIGKILL)


def test_a_worker_lost_mid_fit_its_streamed_chunks_are_read_by_the_survivor(tmp_path):
    """Budget 0, two workers, the worker that is not the driver's killed mid-fit: its chunks are
    attached to the survivor as source ranges (checked against their first read) and the fit ends with
    the same bits as an undisturbed one."""
    X, y, _, _ = _problem("binary", np.random.default_rng(13))
    files = _write("npy", tmp_path, X, y, None)
    params = {"solver": "gd", "lr": 0.5, "max_iter": 400, "tol": 0.0, "mode": "distributed"}
    with local_cluster(2) as client, dask.config.set({"dlogit.engine.cache-bytes": "0"}):
        ds = data.read_data(files["source"], labels=files["labels"], chunk_rows=CHUNK, client=client)
        ref = LogisticRegression(**params).fit(ds.X, ds.y, client=client)
        killed: dict = {}

        def on_event(msg):
            if msg.get("type") == "start":
                killed["driver"] = msg["params"]["driver"]
                killed["workers"] = msg["params"]["workers"]
            elif msg.get("type") == "progress" and msg["step"][-1] >= 50 and "victim" not in killed:
                killed["victim"] = next(w for w in killed["workers"] if w != killed["driver"])
                threading.Thread(target=_kill, args=(client, killed["victim"]), daemon=True).start()

        with pytest.warns(Warning, match="lost worker|failed a step"):
            got = LogisticRegression(**params, progress_period=10).fit(ds.X, ds.y, client=client,
                                                                        callback=on_event)
    assert "victim" in killed
    np.testing.assert_array_equal(got.coef_, ref.coef_)
    np.testing.assert_array_equal(got.intercept_, ref.intercept_)


def test_a_file_removed_during_a_distributed_fit_is_one_line_naming_it(client2, tmp_path):
    X, y, _, _ = _problem("binary", np.random.default_rng(3))
    files = _write("npy", tmp_path, X, y, None)
    labels = files["labels"]
    seen = threading.Event()

    def on_event(msg):
        if msg.get("type") == "progress" and not seen.is_set():
            seen.set()
            os.remove(labels)

    with dask.config.set({"dlogit.engine.cache-bytes": "0"}):
        ds = data.read_data(files["source"], client=client2, chunk_rows=CHUNK, labels=labels)
        with pytest.raises(DataError) as err:
            LogisticRegression(mode="distributed", solver="gd", max_iter=20_000, tol=0.0).fit(
                ds.X, ds.y, client=client2, callback=on_event)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{labels} was removed during the fit"), text


def test_cli_a_file_changed_between_passes_exits_2_with_one_line(tmp_path):
    """``dlogit train`` streaming a file that is rewritten mid-fit (same size, new contents): exit 2,
    one error line naming the file (no traceback, no mix of old and new rows)."""
    X, y, _, _ = _problem("binary", np.random.default_rng(5))
    files = _write("npy", tmp_path, X, y, None)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    cmd = [sys.executable, "-m", "dlogit", "train", files["source"], "--labels", files["labels"], "--workers",
           "1", "--cache-bytes", "0", "--chunk-rows", str(CHUNK), "--solver", "gd", "--max-iter", "1000000",
           "--tol", "0", "--progress", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         cwd=tmp_path)
    try:
        out = []
        deadline = time.monotonic() + 240
        for line in p.stdout:
            out.append(line)
            if line.startswith("step "):
                np.save(files["source"], X[::-1].copy())  # same shape and size, other rows
                break
            assert time.monotonic() < deadline, "".join(out)
        rest, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 2, "".join(out) + rest + err
    want = (f"dlogit: error: {files['source']} changed during the fit (size or modification time differ "
            "from the fit's first read; its chunks are read from it at every evaluation); train again on the "
            "new data")
    assert lines == [want], err
    assert any("chunks streamed from storage at every evaluation" in ln for ln in out), "".join(out)
    # the step line says what each evaluation read (8 chunks of 20 000 bytes), found cached, waited for
    step = next(ln for ln in out if ln.startswith("step "))
    assert "  read 156 kiB/eval (8 chunks)  cache hits 0  " in step, step
    assert "-bound (wait " in step and " ms, compute " in step, step


def _rss_sampler(dask_worker=None):
    """On the worker: a thread recording this process's peak RSS every 5 ms until stopped."""
    import psutil

    proc = psutil.Process()
    state = {"peak": proc.memory_info().rss, "base": proc.memory_info().rss, "stop": False}

    def run():
        while not state["stop"]:
            state["peak"] = max(state["peak"], proc.memory_info().rss)
            time.sleep(0.005)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    dask_worker._dlogit_rss = (state, t)
    return state["base"]


def _rss_stop(dask_worker=None):
    state, t = dask_worker._dlogit_rss
    state["stop"] = True
    t.join()
    return state["peak"]


def _write_big(fmt: str, tmp, rows: int, d: int, chunk_rows: int) -> dict:
    """``rows`` x ``d`` float64 features and 0/1 labels written chunk by chunk (never whole in memory)."""
    rng = np.random.default_rng(0)
    if fmt == "npy":
        X = np.lib.format.open_memmap(tmp / "X.npy", mode="w+", dtype=np.float64, shape=(rows, d))
        y = np.empty(rows)
        for s in range(0, rows, chunk_rows):
            X[s:s + chunk_rows] = rng.standard_normal((min(rows, s + chunk_rows) - s, d))
            y[s:s + chunk_rows] = X[s:s + chunk_rows, 0] > 0
        X.flush()
        del X
        np.save(tmp / "y.npy", y)
        return {"source": str(tmp / "X.npy"), "labels": str(tmp / "y.npy")}
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(f"x{j}", pa.float64()) for j in range(d)] + [("y", pa.float64())])
    with pq.ParquetWriter(tmp / "d.parquet", schema, compression="none") as wr:
        for s in range(0, rows, chunk_rows):
            x = rng.standard_normal((min(rows, s + chunk_rows) - s, d))
            cols = [pa.array(x[:, j]) for j in range(d)] + [pa.array((x[:, 0] > 0).astype(float))]
            wr.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=chunk_rows)
    return {"source": str(tmp / "d.parquet"), "label": "y"}


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_worker_memory_stays_within_the_budget_plus_two_chunks(tmp_path, fmt):
    """200 MB of data, a 50 MB budget, 10 MB chunks, one worker: its RSS (sampled every 5 ms) stays
    under its RSS before the fit + the budget + 2 chunks + the rows' labels codes and weights + 16 MiB
    (the evaluators' scratch, the allocator), + 3 chunks for Parquet's own decoding; the same data all
    cached takes over 75 MB more (so the bound means something)."""
    rows, d, chunk_rows = 500_000, 50, 25_000
    files = _write_big(fmt, tmp_path, rows, d, chunk_rows)
    chunk = chunk_rows * d * 8
    budget = 50_000_000
    with local_cluster(1) as client:
        ds = data.read_data(files["source"], chunk_rows=chunk_rows, client=client,
                            **{k: v for k, v in files.items() if k != "source"})
        peaks = {}
        for name, cache in (("streamed", str(budget)), ("in memory", "100%")):
            base = next(iter(client.run(_rss_sampler).values()))
            with dask.config.set({"dlogit.engine.cache-bytes": cache}):
                model = LogisticRegression(max_iter=3, tol=0.0).fit(ds.X, ds.y, client=client)
            peak = next(iter(client.run(_rss_stop).values()))
            peaks[name] = (base, peak)
            assert model.n_iter_ >= 1
            client.run(lambda: __import__("gc").collect())
    base, peak = peaks["streamed"]
    # Parquet: a row group's read peaks at ~2.5 chunks of its own (its Arrow buffers, then the NumPy X
    # made from them), measured, and up to ~3.5 when the read-ahead overlaps it (seen once, +130 MB);
    # NPY reads straight into one of two reused buffers
    reader = 4 * chunk if fmt == "parquet" else 0
    bound = budget + 2 * chunk + reader + rows * 16 + 16 * 2**20
    print(f"{fmt}: worker RSS over its pre-fit {base / 1e6:.0f} MB: streamed +{(peak - base) / 1e6:.1f} MB "
          f"(bound {bound / 1e6:.1f} MB), in memory +{(peaks['in memory'][1] - peaks['in memory'][0]) / 1e6:.1f} MB")
    assert peak - base <= bound, (peak - base, bound)
    assert peaks["in memory"][1] - peaks["in memory"][0] > (peak - base) + 75_000_000


# ------------------------------------------------------------------ progress: reads, cache hits, bound
def _stream_events(client, files: dict, mode: str, cache: str, params: dict) -> list[dict]:
    events: list[dict] = []
    with dask.config.set({"dlogit.engine.cache-bytes": cache, "dlogit.monitor.interval": 0.0}):
        ds = data.read_data(files["source"], client=client, chunk_rows=CHUNK,
                            **{k: v for k, v in files.items() if k != "source"})
        LogisticRegression(mode=mode, **params).fit(ds.X, ds.y, client=client, callback=events.append)
    return [e for e in events if e["type"] == "progress"]


@pytest.mark.parametrize("mode", ["worker-local", "distributed"])
def test_progress_events_report_bytes_read_cache_hits_and_the_bound(client2, tmp_path, mode):
    """Each progress event of a streamed fit carries ``stream``: the bytes read per evaluation are the
    streamed chunks' bytes, the cache hits the cached chunks (worker-local: the one worker holds all 8
    chunks, 3 cached; distributed: the driver's worker holds 4, 1 cached), and the read-ahead waits and
    compute times behind the bound; an all-cached fit reads nothing."""
    from dlogit.events import StreamStep

    X, y, _, params = _problem("binary", np.random.default_rng(3))
    files = _write("npy", tmp_path, X, y, None)
    chunk = CHUNK * D * 8
    held = 8 if mode == "worker-local" else 4
    cached = 3 if mode == "worker-local" else 1
    progress = _stream_events(client2, files, mode, str(cached * chunk), params)
    steps = [StreamStep.from_event(e.get("stream")) for e in progress]
    assert steps and all(s is not None for s in steps), progress[:2]
    for s in steps:
        assert s.evaluations >= 1
        assert s.bytes_read == (held - cached) * chunk
        assert s.chunks_read == held - cached
        assert s.cache_hits == cached
        assert s.read_wait_s >= 0 and s.compute_s > 0
        assert s.bound == ("read" if s.read_wait_s > s.compute_s else "compute")
        assert len(s.workers) == 1 and s.workers[0].startswith("tcp://127.0.0.1:")
    # every chunk cached: hits only, no read, compute-bound
    for s in (StreamStep.from_event(e.get("stream")) for e in _stream_events(client2, files, mode, "1GiB",
                                                                              params)):
        assert s is not None and s.bytes_read == 0 and s.chunks_read == 0 and s.read_wait_s == 0
        assert s.cache_hits == held and s.bound == "compute"


def test_persisted_data_has_no_stream_field(client2, tmp_path):
    X, y, _, params = _problem("binary", np.random.default_rng(3))
    events: list[dict] = []
    import dask.array as da

    Xd, yd = client2.persist([da.from_array(X, chunks=(CHUNK, D)), da.from_array(y, chunks=CHUNK)])
    LogisticRegression(mode="worker-local", **params).fit(Xd, yd, client=client2, callback=events.append)
    assert all("stream" not in e for e in events if e["type"] == "progress")


def test_the_metrics_endpoint_exposes_a_streamed_fits_reads(tmp_path):
    """A streamed fit on a LocalCluster whose scheduler runs the dlogit monitor: /metrics shows the
    bytes read and cache hits per evaluation and the read-bound flag of the run."""
    import re
    import urllib.request

    from distributed import Client, LocalCluster

    X, y, _, params = _problem("binary", np.random.default_rng(3))
    files = _write("npy", tmp_path, X, y, None)
    chunk = CHUNK * D * 8
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", scheduler_kwargs={"preload": ["dlogit.dashboard"]},
                      silence_logs=40) as cluster, Client(cluster, set_as_default=False) as client:
        base = f"http://127.0.0.1:{cluster.scheduler.http_server.port}"
        with dask.config.set({"dlogit.engine.cache-bytes": str(2 * chunk)}):
            ds = data.read_data(files["source"], client=client, chunk_rows=CHUNK, labels=files["labels"])
            LogisticRegression(**params).fit(ds.X, ds.y, client=client)
        url = base + "/metrics"
        text = ""
        for _ in range(50):  # events reach the scheduler asynchronously
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            if "dlogit_stream_bytes_read{" in text:
                break
            time.sleep(0.1)

    def metric(name: str) -> float:
        m = re.search(r"^" + name + r'\{run="([^"]+)"\} (\S+)$', text, re.MULTILINE)
        assert m, (name, text[-2000:])
        return float(m.group(2))

    assert metric("dlogit_stream_bytes_read") == 6 * chunk
    assert metric("dlogit_stream_chunks_read") == 6
    assert metric("dlogit_stream_cache_hits") == 2
    assert metric("dlogit_stream_read_bound") in (0.0, 1.0)
    assert metric("dlogit_stream_compute_seconds") > 0


def test_the_panel_and_the_terminal_show_a_progress_events_stream_field():
    """The ``stream`` field of a progress event (as a streamed fit sends it) reaches the panel's table
    and the terminal's step line; an event without it (or with nothing read) adds nothing."""
    import io

    from bokeh.document import Document

    from dlogit.events import StreamCounters, StreamStep
    from dlogit.monitor.panel import DlogitPanel
    from dlogit.monitor.progress import TerminalProgress
    from dlogit.monitor.state import MonitorState

    st = StreamStep.from_counters(StreamCounters(2, 2 * 120_000, 12, 4, 0.030, 0.010), ("tcp://127.0.0.1:9",))
    assert st.bound == "read" and st.bytes_read == 120_000 and st.chunks_read == 6 and st.cache_hits == 2
    ev = {"type": "progress", "run": "r", "time": time.time(), "step": [1], "loss": [0.5], "grad_norm": [0.1],
          "step_seconds": [0.04], "rows_per_s": 1.0, "bytes_per_s": 1.0, "worker_seconds": {},
          "stream": st.to_event()}
    state = MonitorState()
    state.ingest({"type": "start", "run": "r", "time": time.time(), "params": {"max_iter": 10}})
    state.ingest(ev)
    panel = DlogitPanel(state, Document())
    panel.update()
    rows = dict(panel.param_rows)
    assert rows["read per evaluation"] == "117 kiB (6 chunks) (tcp://127.0.0.1:9)"
    assert rows["cache hits per evaluation"] == "2 chunks"
    assert rows["bound"].startswith("read (per evaluation: waited for reads")
    out = io.StringIO()
    term = TerminalProgress(10, period=1, stream=out)
    term(ev)
    term({**ev, "step": [2], "stream": {**st.to_event(), "chunks_read": 0.0, "bytes_read": 0.0}})
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("  read 117 kiB/eval (6 chunks)  cache hits 2  read-bound (wait 15.0 ms, "
                             "compute 5.0 ms)"), lines
    assert lines[1].endswith("step_ms 40.000"), lines  # all cached: the plain line


def _local_directory(dask_worker=None):
    return dask_worker.local_directory


def _spill_files(dirs: dict) -> list[str]:
    return sorted(f for d in dirs.values() for f in os.listdir(d) if f.startswith("dlogit-chunk"))


@pytest.mark.parametrize("mode", ["worker-local", "distributed"])
def test_a_compressed_files_spilled_chunks_are_removed_after_the_fit(client2, tmp_path, mode):
    """The streamed chunks of a .csv.gz are spilled to the workers' local directories during the fit
    (seen from a progress event) and gone once it ends."""
    X, y, _, params = _problem("binary", np.random.default_rng(11))
    files = _write("csv.gz", tmp_path, X, y, None)
    during: list[list[str]] = []
    dirs = client2.run(_local_directory)  # the workers run on this machine

    def on_event(msg):
        if msg.get("type") == "progress" and not during:
            during.append(_spill_files(dirs))

    with dask.config.set({"dlogit.engine.cache-bytes": "0"}):
        ds = data.read_data(files["source"], client=client2, chunk_rows=CHUNK, label="y")
        LogisticRegression(mode=mode, **params).fit(ds.X, ds.y, client=client2, callback=on_event)
    assert len(during[0]) == 8, during  # every chunk streamed, each spilled once
    deadline = time.monotonic() + 10
    while _spill_files(dirs):
        assert time.monotonic() < deadline, _spill_files(dirs)
        time.sleep(0.1)


@pytest.mark.parametrize("fmt", ["csv.gz", "zarr"])
def test_a_compressed_or_zarr_source_changed_during_the_fit_is_one_line_naming_it(client2, tmp_path, fmt):
    """A .csv.gz rewritten (other rows) or a Zarr chunk rewritten mid-fit: one DataError line naming the
    file the chunk is read from (the compressed file is still checked at every read of its spilled
    chunks)."""
    X, y, _, _ = _problem("binary", np.random.default_rng(13))
    files = _write(fmt, tmp_path, X, y, None)
    seen = threading.Event()

    def on_event(msg):
        if msg.get("type") == "progress" and not seen.is_set():
            seen.set()
            time.sleep(0.05)  # a new modification time even on a coarse clock
            if fmt == "zarr":
                import zarr

                zarr.open_group(files["source"], mode="r+")["X"][:CHUNK // 2] = X[CHUNK // 2:CHUNK][::-1]
            else:
                _write(fmt, tmp_path, X[::-1].copy(), y[::-1].copy(), None)

    with dask.config.set({"dlogit.engine.cache-bytes": "0"}):
        ds = data.read_data(files["source"], client=client2, chunk_rows=CHUNK, label="y")
        with pytest.raises(DataError) as err:
            LogisticRegression(mode="worker-local", solver="gd", max_iter=20_000, tol=0.0).fit(
                ds.X, ds.y, client=client2, callback=on_event)
    text = str(err.value)
    assert "\n" not in text
    named = files["source"] if fmt != "zarr" else os.path.join(files["source"], "X", "c", "0", "0")
    assert text.startswith(f"{named} changed during the fit"), text


# ------------------------------------------------------------------ GPU staging (plan, schedule, bits)
def test_device_plan_keeps_chunks_in_order_within_the_budget_and_stages_the_rest():
    from dlogit.engine.residency import device_plan

    sizes = {0: 100, 1: 100, 2: 150, 3: 100, 4: 120}
    p = device_plan(sizes, 250)
    assert p.resident == (0, 1) and p.staged == (2, 3, 4)  # chunk order, as the CPU cache
    assert p.slot_bytes == 150 and p.resident_bytes == 200
    assert p.device_bytes == 200 + 2 * 150 <= 250 + 2 * max(sizes.values())  # budget + 2 chunks
    assert device_plan(sizes, None).staged == () and device_plan(sizes, None).device_bytes == 570
    assert device_plan(sizes, 0).resident == () and device_plan(sizes, 0).device_bytes == 300


def test_overlap_schedule_copies_the_next_chunk_before_evaluating_this_one():
    """Double buffering: copy k + 1 is issued before eval k (they overlap); copy k + 2 goes into the
    buffer of chunk k and waits for eval k; every eval waits for its own copy."""
    from dlogit.engine.residency import overlap_schedule

    sched = overlap_schedule([5, 6, 7, 8])
    assert sched == [("copy", 5, 0, None), ("copy", 6, 1, None), ("eval", 5, 0, 5), ("copy", 7, 0, 5),
                     ("eval", 6, 1, 6), ("copy", 8, 1, 6), ("eval", 7, 0, 7), ("eval", 8, 1, 8)]
    assert overlap_schedule([3]) == [("copy", 3, 0, None), ("eval", 3, 0, 3)]
    assert overlap_schedule([]) == []
    for chunks in ([1, 2, 3], list(range(9))):  # no buffer is overwritten before its chunk is evaluated
        sched, in_slot, evaluated = overlap_schedule(chunks), {}, set()
        for op, i, slot, dep in sched:
            if op == "copy":
                assert in_slot.get(slot) is None or in_slot[slot] in evaluated
                assert dep == in_slot.get(slot)
                in_slot[slot] = i
            else:
                assert in_slot[slot] == i
                evaluated.add(i)
        assert evaluated == set(chunks)


def _staged_vs_resident(xp, staging):
    from dlogit.chunks import prepare_chunk
    from dlogit.engine.residency import StagedChunks, device_plan
    from dlogit.family import Binomial

    rng = np.random.default_rng(21)
    chunks = {i: rng.standard_normal((200 + 10 * i, 12)) for i in range(6)}
    y = {i: (chunks[i][:, 0] > 0).astype(np.int64) for i in chunks}
    fam = Binomial()
    from dlogit.family import ParamLayout

    layout = ParamLayout(12, 1)
    theta = rng.standard_normal(layout.size) * 0.1
    th = xp.asarray(theta)
    plan = device_plan({i: X.nbytes for i, X in chunks.items()}, chunks[0].nbytes + chunks[1].nbytes)
    ref = {i: xp.asarray(prepare_chunk(xp.asarray(chunks[i]), xp.asarray(y[i]), None, layout, fam).sums(th))
           for i in chunks}
    staged = StagedChunks({i: chunks[i] for i in plan.staged}, staging)
    got = staged.evaluate(lambda i, X: prepare_chunk(X, xp.asarray(y[i]), None, layout, fam).sums(th))
    assert sorted(got) == list(plan.staged) == [2, 3, 4, 5]
    for i in plan.staged:
        np.testing.assert_array_equal(np.asarray(got[i].get() if hasattr(got[i], "get") else got[i]),
                                      np.asarray(ref[i].get() if hasattr(ref[i], "get") else ref[i]))
    return staged


def test_staged_chunks_give_the_same_bits_as_resident_ones_numpy_standing_in_for_cupy():
    from dlogit.engine.residency import NumpyStaging, overlap_schedule

    staged = _staged_vs_resident(np, NumpyStaging())
    assert staged.staging.log == [(op, i, s) for op, i, s, _ in overlap_schedule([2, 3, 4, 5])]
    assert len(staged.slots) == 2 and staged.slots[0].nbytes == 250 * 12 * 8  # the largest staged chunk


@pytest.mark.gpu
def test_staged_chunks_on_a_gpu_give_the_same_bits_as_resident_ones():
    """Pinned host memory, copies on a second CUDA stream ordered by events."""
    cupy = pytest.importorskip("cupy")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - no usable GPU
        pytest.skip("no GPU")
    from dlogit.engine.residency import CupyStaging

    _staged_vs_resident(cupy, CupyStaging())
