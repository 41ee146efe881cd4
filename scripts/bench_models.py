#!/usr/bin/env python3
"""dlogit's model benchmarks: every comparison of the models, penalties and data issues in one run.

    .venv/bin/python scripts/bench_models.py [--only SECTION ...] [--quick] [--json FILE]

Sections (each prints absolute figures and the ratio to baselines measured in the same run; every
baseline gets aligned, C-contiguous NumPy input -- asserted -- and the same cores; each contender's
objective is evaluated at its own solution with one float64 function and printed):
  dense        binary 2M x 100 float64, l2 = 1e-4, to ||grad|| <= 1e-6, 2 workers: data made on the
               workers, and the same data sent from the client (da.from_array: unaligned chunks),
               vs scikit-learn lbfgs; one gradient evaluation's read bandwidth vs a memory copy
  weighted     the same fit with random sample weights vs unweighted (goal <= 1.1x)
  multinomial  500 000 x 50, 10 classes, L-BFGS to ||grad|| <= 1e-6 on 2 workers vs scikit-learn's
               multinomial lbfgs (goal <= 0.5x); peak worker memory over the shard (goal <= 1.3)
  enet         elastic net on 2M x 100 vs scikit-learn saga (and glum when installed) on the same
               objective (goal <= 0.5x the faster)
  path         a 20-penalty x 5-fold path vs scikit-learn's LogisticRegressionCV and vs 100 separate
               dlogit fits (goal <= 0.25x the separate fits)
  sparse       1M x 100 000, 40 nonzeros per row, l2 = 1e-5, L-BFGS on 2 workers vs scikit-learn (CSR)
  layouts      one chunk evaluation on unaligned / Fortran / read-only / memory-mapped chunks vs an
               aligned C-contiguous one
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _cluster(n: int):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=logging.CRITICAL,
                           preload=["dlogit.worker"])
    return cluster, Client(cluster, set_as_default=False)


def _aligned(a: np.ndarray) -> np.ndarray:
    """A fair baseline's input: aligned and C-contiguous (arrays from Dask can be unaligned)."""
    out = np.array(a, order="C", copy=True)
    assert out.flags.aligned and out.flags.c_contiguous, "baseline input must be aligned and C-contiguous"
    return out


def _rss():
    import psutil

    return psutil.Process().memory_info().rss


def _reset_peak_rss() -> bool:
    """Start this process's peak-RSS count afresh (Linux: ``clear_refs`` 5 resets VmHWM). Needed: a
    worker forked from a large bench process inherits its high-water mark, and ``ru_maxrss`` reports
    the parent's memory (a constant 46.9x the shard in an earlier run)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss():
    """Peak RSS since :func:`_reset_peak_rss` (VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- data made on the workers (one task per chunk: X and y land together) -----------------------------

def _binary_chunk(i: int, rows: int, d: int, seed: int = 7):
    rng = np.random.default_rng([seed, i])
    X = rng.standard_normal((rows, d))
    w_true = np.random.default_rng(seed).standard_normal(d) * 3 / np.sqrt(d)
    y = (rng.random(rows) < 1 / (1 + np.exp(-(X @ w_true)))).astype(np.float64)
    return X, y


def _multi_chunk(i: int, rows: int, d: int, K: int, seed: int = 11):
    rng = np.random.default_rng([seed, i])
    X = rng.standard_normal((rows, d))
    W = np.random.default_rng(seed).standard_normal((K, d)) * 2 / np.sqrt(d)
    Z = X @ W.T + rng.gumbel(size=(rows, K))
    return X, Z.argmax(axis=1).astype(np.int64)


def _sparse_chunk(i: int, rows: int, d: int, nnz: int, seed: int = 13):
    import scipy.sparse as sp

    rng = np.random.default_rng([seed, i])
    idx = rng.integers(0, d, (rows, nnz))
    vals = rng.standard_normal((rows, nnz))
    w_true = np.random.default_rng(seed).standard_normal(d)
    z = (vals * w_true[idx]).sum(axis=1) / np.sqrt(nnz)
    y = (rng.random(rows) < 1 / (1 + np.exp(-z))).astype(np.float64)
    X = sp.csr_matrix((vals.ravel(), idx.ravel(), np.arange(0, rows * nnz + 1, nnz)), shape=(rows, d))
    X.sum_duplicates()
    return X, y


def _on_workers(make, rows: int, chunks: int, *args, xmeta=None, ydtype=np.float64, d: int):
    import dask
    import dask.array as da

    xs, ys = [], []
    for i in range(chunks):
        n = rows // chunks + (1 if i < rows % chunks else 0)
        part = dask.delayed(make, pure=True)(i, n, *args)
        kw = {"meta": xmeta} if xmeta is not None else {}
        xs.append(da.from_delayed(part[0], shape=(n, d), dtype=np.float64, **kw))
        ys.append(da.from_delayed(part[1], shape=(n,), dtype=ydtype))
    return da.concatenate(xs), da.concatenate(ys)


def _persist(client, *arrays):
    from distributed import wait

    out = client.persist(list(arrays))
    with client.as_current():
        wait(out)
    return out


def _gather_aligned(client, *arrays):
    return [_aligned(client.compute(a).result()) for a in arrays]


# -- a common objective to check every contender at its own solution ----------------------------------

def objective(X, y, coef, intercept, l2, l1=0.0, sw=None):
    """f = sum s l / sum s + l2 ||W||^2 + l1 ||W||_1 (binary: coef (1, d); multinomial: (K, d))."""
    coef = np.atleast_2d(coef)
    Z = X @ coef.T + np.asarray(intercept).reshape(1, -1)
    Z = np.asarray(Z)
    sw = np.ones(Z.shape[0]) if sw is None else sw
    if coef.shape[0] == 1:
        z = Z[:, 0]
        terms = np.logaddexp(0, z) - y * z
    else:
        terms = np.logaddexp.reduce(Z, axis=1) - Z[np.arange(len(y)), y.astype(int)]
    return float(np.dot(sw, terms) / sw.sum() + l2 * np.sum(coef**2) + l1 * np.sum(np.abs(coef)))


def _time(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# -- sections ------------------------------------------------------------------------------------------

def bench_dense(quick: bool, weighted: bool = True) -> dict:
    import dask.array as da

    import dlogit

    rows, d, l2, tol = (200_000 if quick else 2_000_000), 100, 1e-4, 1e-6
    out: dict = {"data": f"{rows}x{d} float64", "l2": l2, "tol": tol, "workers": 2}
    cluster, client = _cluster(2)
    try:
        X, y = _persist(client, *_on_workers(_binary_chunk, rows, 16, d, d=d))
        fit = dlogit.LogisticRegression(l2=l2, tol=tol, mode="distributed")
        fit.fit(X[:20000], y[:20000], client=client)  # warm: workers' first imports, kernels
        m, out["dlogit_workers_s"] = _time(lambda: dlogit.LogisticRegression(
            l2=l2, tol=tol, mode="distributed").fit(X, y, client=client))
        out["dlogit_iter"] = m.n_iter_
        Xn, yn = _gather_aligned(client, X, y)
        X = y = None  # free the workers' copy before the next one
        Xc = da.from_array(Xn, chunks=(rows // 16, d))  # sent from the client: unaligned chunks there
        yc = da.from_array(yn, chunks=rows // 16)
        Xc, yc = _persist(client, Xc, yc)
        _, out["dlogit_from_array_s"] = _time(lambda: dlogit.LogisticRegression(
            l2=l2, tol=tol, mode="distributed").fit(Xc, yc, client=client))
        if weighted:
            sw = np.random.default_rng(3).random(rows) * 2
            sc = _persist(client, da.from_array(sw, chunks=rows // 16))[0]
            mw, out["dlogit_weighted_s"] = _time(lambda: dlogit.LogisticRegression(
                l2=l2, tol=tol, mode="distributed").fit(Xc, yc, sample_weight=sc, client=client))
            out["weighted_iter"] = mw.n_iter_
            # the same iterations matter: compare the time per objective evaluation pass
            out["weighted_over_unweighted"] = out["dlogit_weighted_s"] / out["dlogit_from_array_s"]
        Xc = yc = None
    finally:
        client.close()
        cluster.close()
    from sklearn.linear_model import LogisticRegression as SK

    sk, out["sklearn_s"] = _time(lambda: SK(C=1 / (2 * rows * l2), tol=tol, max_iter=1000).fit(Xn, yn))
    out["sklearn_iter"] = int(sk.n_iter_[0])
    out["objective_dlogit"] = objective(Xn, yn, m.coef_, m.intercept_, l2)
    out["objective_sklearn"] = objective(Xn, yn, sk.coef_, sk.intercept_, l2)
    out["ratio_workers_vs_sklearn"] = out["dlogit_workers_s"] / out["sklearn_s"]
    out["ratio_from_array_vs_sklearn"] = out["dlogit_from_array_s"] / out["sklearn_s"]
    out["bandwidth"] = _bandwidth(Xn[: min(rows, 250_000)], yn[: min(rows, 250_000)])
    return out


def _bandwidth(X: np.ndarray, y: np.ndarray) -> dict:
    """One chunk evaluation's read rate vs the machine's copy rate (single thread, as on a worker)."""
    from threadpoolctl import threadpool_limits

    from dlogit.chunks import prepare_chunk
    from dlogit.family import Binomial, ParamLayout

    layout = ParamLayout(X.shape[1], 1)
    theta = np.zeros(X.shape[1] + 1)
    dst = np.empty_like(X)
    with threadpool_limits(1):
        best_copy = min(_time(lambda: np.copyto(dst, X))[1] for _ in range(5))
        out = {}
        for kernel in ("blas", "fused"):
            ev = prepare_chunk(X, y.astype(int), None, layout, Binomial(), kernel=kernel)
            ev.sums(theta)
            best = min(_time(lambda ev=ev: ev.sums(theta))[1] for _ in range(5))
            out[f"{kernel}_gb_s"] = X.nbytes / best / 1e9
    out["copy_read_gb_s"] = X.nbytes / best_copy / 1e9  # bytes read per second by a plain copy
    out["best_over_copy"] = max(out["blas_gb_s"], out["fused_gb_s"]) / out["copy_read_gb_s"]
    return out


def bench_multinomial(quick: bool) -> dict:
    import dlogit

    rows, d, K, l2, tol = (100_000 if quick else 500_000), 50, 10, 1e-4, 1e-6
    out: dict = {"data": f"{rows}x{d} float64, {K} classes", "l2": l2, "tol": tol, "workers": 2}
    cluster, client = _cluster(2)
    try:
        X, y = _on_workers(_multi_chunk, rows, 8, d, K, d=d, ydtype=np.int64)
        dlogit.LogisticRegression(l2=l2, tol=1e-2, mode="distributed").fit(X[:10000], y[:10000],
                                                                           client=client)  # warm
        client.run(lambda: None)
        base = client.run(_rss)
        assert all(client.run(_reset_peak_rss).values()), "cannot reset the workers' peak RSS"
        X, y = _persist(client, X, y)
        m, out["dlogit_s"] = _time(lambda: dlogit.LogisticRegression(
            l2=l2, tol=tol, mode="distributed").fit(X, y, client=client))
        out["dlogit_iter"] = m.n_iter_
        peak = client.run(_peak_rss)
        shard = rows * (d + 1) * 8 / 2
        out["peak_rss_growth_over_shard"] = max((peak[w] - base[w]) / shard for w in peak)
        Xn, yn = _gather_aligned(client, X, y)
    finally:
        client.close()
        cluster.close()
    from sklearn.linear_model import LogisticRegression as SK

    sk, out["sklearn_s"] = _time(lambda: SK(C=1 / (2 * rows * l2), tol=tol, max_iter=1000).fit(Xn, yn))
    out["sklearn_iter"] = int(np.max(sk.n_iter_))
    out["objective_dlogit"] = objective(Xn, yn, m.coef_, m.intercept_, l2)
    out["objective_sklearn"] = objective(Xn, yn, sk.coef_, sk.intercept_, l2)
    out["ratio_vs_sklearn"] = out["dlogit_s"] / out["sklearn_s"]
    return out


def bench_enet(quick: bool) -> dict:
    import dlogit

    rows, d = (200_000 if quick else 2_000_000), 100
    l1, l2, tol = 1e-3, 1e-4, 1e-6
    out: dict = {"data": f"{rows}x{d} float64", "l1": l1, "l2": l2, "tol": tol, "workers": 2}
    cluster, client = _cluster(2)
    try:
        X, y = _persist(client, *_on_workers(_binary_chunk, rows, 16, d, d=d))
        dlogit.LogisticRegression(l1=l1, l2=l2, tol=1e-2, mode="distributed").fit(X[:20000], y[:20000],
                                                                                  client=client)
        m, out["dlogit_s"] = _time(lambda: dlogit.LogisticRegression(
            l1=l1, l2=l2, tol=tol, mode="distributed").fit(X, y, client=client))
        out["dlogit_iter"], out["dlogit_nonzero"] = m.n_iter_, m.n_nonzero_
        Xn, yn = _gather_aligned(client, X, y)
    finally:
        client.close()
        cluster.close()
    from sklearn.linear_model import LogisticRegression as SK

    n = rows
    C = 1 / (n * (l1 + 2 * l2))
    ratio = l1 / (l1 + 2 * l2)  # l1 = ratio / (C n), l2 = (1 - ratio) / (2 C n)
    sk, out["saga_s"] = _time(lambda: SK(penalty="elasticnet", C=C, l1_ratio=ratio, solver="saga",
                                         tol=1e-4, max_iter=200).fit(Xn, yn))
    out["objective_dlogit"] = objective(Xn, yn, m.coef_, m.intercept_, l2, l1)
    out["objective_saga"] = objective(Xn, yn, sk.coef_, sk.intercept_, l2, l1)
    best = out["saga_s"]
    try:
        import glum

        g, out["glum_s"] = _time(lambda: glum.GeneralizedLinearRegressor(
            family="binomial", alpha=l1 + 2 * l2, l1_ratio=ratio, gradient_tol=tol).fit(Xn, yn))
        out["objective_glum"] = objective(Xn, yn, g.coef_, [g.intercept_], l2, l1)
        best = min(best, out["glum_s"])
    except ImportError:
        out["glum"] = "not installed"
    out["ratio_vs_faster"] = out["dlogit_s"] / best
    return out


def bench_path(quick: bool) -> dict:
    """In-process, the same threads for every contender; warmed (imports, compiled kernels); best of
    3 interleaved runs for dlogit's path and its separate fits, one run of scikit-learn's CV."""
    import dlogit

    rows, d = (50_000 if quick else 200_000), 50
    out: dict = {"data": f"{rows}x{d} float64", "penalties": 20, "folds": 5, "threads": "all (2)"}
    Xn, yn = (np.concatenate(p) for p in zip(*[_binary_chunk(i, rows // 4, d) for i in range(4)]))
    Xn = _aligned(Xn)
    l2s = list(np.geomspace(1e-1, 1e-6, 20))
    from sklearn.model_selection import KFold

    folds = [(_aligned(Xn[train]), yn[train]) for train, _ in KFold(5).split(Xn)]
    dlogit.LogisticRegressionCV(l2=l2s[:2], cv=5, cv_split="contiguous").fit(Xn[:5000], yn[:5000])  # warm
    dlogit.LogisticRegression(l2=l2s[0]).fit(*folds[0])

    def separate():
        return [dlogit.LogisticRegression(l2=lam).fit(Xf, yf).n_iter_ for lam in l2s for Xf, yf in folds]

    paths, seps = [], []
    for _ in range(3):
        cv, t = _time(lambda: dlogit.LogisticRegressionCV(l2=l2s, cv=5, cv_split="contiguous").fit(
            Xn, yn))  # the folds of the separate fits and of scikit-learn: KFold(5)
        paths.append(t)
        its, t = _time(separate)
        seps.append(t)
    out["dlogit_path_s"], out["dlogit_separate_fits_s"] = min(paths), min(seps)
    out["dlogit_path_runs_s"], out["dlogit_separate_runs_s"] = paths, seps
    out["path_iterations"] = int(sum(int(p.n_iter.max()) for p in cv.path_.points))
    out["separate_iterations_max_per_penalty"] = int(sum(max(its[5 * k: 5 * k + 5]) for k in range(20)))
    from sklearn.linear_model import LogisticRegressionCV as SKCV

    n_train = rows * 4 // 5
    sk, out["sklearn_cv_s"] = _time(lambda: SKCV(Cs=[1 / (2 * n_train * lam) for lam in l2s], cv=KFold(5),
                                                 scoring="neg_log_loss", tol=1e-6).fit(Xn, yn))
    out["best_l2_dlogit"] = cv.l2_
    out["best_l2_sklearn"] = float(1 / (2 * n_train * sk.C_[0]))
    out["ratio_vs_separate"] = out["dlogit_path_s"] / out["dlogit_separate_fits_s"]
    out["ratio_vs_sklearn_cv"] = out["dlogit_path_s"] / out["sklearn_cv_s"]
    return out


def bench_sparse(quick: bool) -> dict:
    import scipy.sparse as sp

    import dlogit

    rows, d, nnz, l2, tol = (200_000 if quick else 1_000_000), 100_000, 40, 1e-5, 1e-6
    out: dict = {"data": f"{rows}x{d} CSR, {nnz} nonzeros per row", "l2": l2, "tol": tol, "workers": 2}
    cluster, client = _cluster(2)
    try:
        meta = sp.csr_matrix((0, d))
        X, y = _persist(client, *_on_workers(_sparse_chunk, rows, 8, d, nnz, d=d, xmeta=meta))
        dlogit.LogisticRegression(l2=l2, tol=1e-2, mode="distributed").fit(X, y, client=client)  # warm
        m, out["dlogit_s"] = _time(lambda: dlogit.LogisticRegression(
            l2=l2, tol=tol, mode="distributed").fit(X, y, client=client))
        out["dlogit_iter"], out["kernel"] = m.n_iter_, m.kernel_
        Xn = sp.vstack(client.compute(list(X.to_delayed().ravel()), sync=True), format="csr")
        yn = client.compute(y).result()
    finally:
        client.close()
        cluster.close()
    Xn = sp.csr_matrix((_aligned(Xn.data), _aligned(Xn.indices), _aligned(Xn.indptr)), shape=Xn.shape)
    from sklearn.linear_model import LogisticRegression as SK

    sk, out["sklearn_s"] = _time(lambda: SK(C=1 / (2 * rows * l2), tol=tol, max_iter=1000).fit(Xn, yn))
    out["objective_dlogit"] = objective(Xn, yn, m.coef_, m.intercept_, l2)
    out["objective_sklearn"] = objective(Xn, yn, sk.coef_, sk.intercept_, l2)
    out["ratio_vs_sklearn"] = out["dlogit_s"] / out["sklearn_s"]
    return out


def bench_layouts(quick: bool) -> dict:
    """Chunk evaluation on awkward layouts, single thread, relative to an aligned C-contiguous chunk."""
    import tempfile

    from threadpoolctl import threadpool_limits

    from dlogit.chunks import prepare_chunk
    from dlogit.family import Binomial, ParamLayout

    rows, d = (50_000 if quick else 125_000), 100
    X, y = _binary_chunk(0, rows, d)
    codes = y.astype(int)
    layout = ParamLayout(d, 1)
    theta = np.random.default_rng(0).standard_normal(d + 1) * 0.01
    buf = np.empty(X.nbytes + 1, dtype=np.uint8)
    unaligned = np.frombuffer(buf.data, dtype=X.dtype, count=X.size, offset=1).reshape(X.shape)
    unaligned[...] = X
    ro = X.copy()
    ro.setflags(write=False)
    path = os.path.join(tempfile.mkdtemp(), "x.npy")
    np.save(path, X)
    layouts = {"aligned": X, "unaligned": unaligned, "fortran": np.asfortranarray(X), "read-only": ro,
               "memmap": np.load(path, mmap_mode="r")}
    out: dict = {"chunk": f"{rows}x{d} float64", "threads": 1}
    with threadpool_limits(1):
        for kernel in ("blas", "fused"):
            times = {}
            for name, A in layouts.items():
                ev = prepare_chunk(A, codes, None, layout, Binomial(), kernel=kernel)
                ev.sums(theta)
                times[name] = min(_time(lambda ev=ev: ev.sums(theta))[1] for _ in range(7))
            out[kernel] = {k: {"ms": v * 1e3, "over_aligned": v / times["aligned"]} for k, v in times.items()}
    return out


SECTIONS = {"dense": bench_dense, "multinomial": bench_multinomial, "enet": bench_enet, "path": bench_path,
            "sparse": bench_sparse, "layouts": bench_layouts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not for BENCHMARKS.md)")
    ap.add_argument("--only", nargs="*", choices=sorted(SECTIONS), default=None)
    ap.add_argument("--json", default="bench-results/bench-models.json")
    args = ap.parse_args()
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(),
                 "cpus": os.cpu_count(), "python": platform.python_version()}
    for name in args.only or list(SECTIONS):
        res[name] = SECTIONS[name](args.quick)
        print(f"{name}: {json.dumps(res[name], default=float)}", flush=True)
    from _benchio import write_json  # scripts/, beside this file

    write_json(args.json, res)


if __name__ == "__main__":
    main()
