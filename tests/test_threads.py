"""In-process fits evaluate chunks on a thread pool (``dlogit.threads``) with a fixed reduction order."""

from __future__ import annotations

import threading
import time

import dask
import numpy as np
import pytest
import scipy.sparse as sp

import dlogit
from dlogit.engine.shard import Shard


def _data(rng, n=3000, d=12, K=2):
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((d, K))
    y = np.argmax(X @ W + rng.gumbel(size=(n, K)), axis=1)
    return X, y


def _fit(threads, X, y, **kw):
    with dask.config.set({"dlogit.threads": threads}):
        return dlogit.LogisticRegression(**kw).fit(X, y, **kw.pop("fit", {}))


CASES = {
    "binomial": {"K": 2, "kw": {}},
    "multinomial": {"K": 4, "kw": {}},
    "weights": {"K": 3, "kw": {"class_weight": "balanced"}},
    "newton": {"K": 2, "kw": {"solver": "newton"}},
    "newton-multinomial": {"K": 3, "kw": {"solver": "newton"}},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_in_process_bits_do_not_depend_on_the_thread_count(rng, case):
    c = CASES[case]
    X, y = _data(rng, K=c["K"])
    fits = [_fit(t, X, y, chunk_rows=370, tol=1e-10, **c["kw"]) for t in (1, 2, 3)]
    for m in fits[1:]:
        np.testing.assert_array_equal(m.coef_, fits[0].coef_)
        np.testing.assert_array_equal(m.intercept_, fits[0].intercept_)


def test_row_weights_and_csr_bits_do_not_depend_on_the_thread_count(rng):
    X, y = _data(rng, n=2000, d=40)
    X[rng.random(X.shape) < 0.8] = 0.0
    Xs = sp.csr_matrix(X)
    sw = rng.random(len(y)) * 3
    fits = []
    for t in (1, 2, 3):
        with dask.config.set({"dlogit.threads": t}):
            fits.append((dlogit.LogisticRegression(chunk_rows=301, tol=1e-10)
                         .fit(X, y, sample_weight=sw),
                         dlogit.LogisticRegression(chunk_rows=301, tol=1e-10).fit(Xs, y)))
    for dense, csr in fits[1:]:
        np.testing.assert_array_equal(dense.coef_, fits[0][0].coef_)
        np.testing.assert_array_equal(csr.coef_, fits[0][1].coef_)


class _SlowFirst:
    """An evaluator whose sums are a chunk's index; chunk 0 answers last."""

    def __init__(self, i, calls):
        self.i = i
        self.calls = calls
        self.kernel = "test"

    def sums(self, theta):
        if self.i == 0:
            time.sleep(0.2)
        self.calls.append((self.i, threading.current_thread().name))
        return np.array([0.1 * (self.i + 1), 1e16 if self.i == 1 else 1.0])


def test_the_reduction_order_is_the_tree_not_the_schedule():
    # chunk 0 finishes last: a reduction in completion order would add (1e16 + 1 + 1 ...) differently
    n = 5
    calls: list = []
    shard = Shard({}, n)
    shard.nodes = [(0, n)]
    shard.evaluators = {i: _SlowFirst(i, calls) for i in range(n)}
    shard.threads = 3
    try:
        got = shard.node_sums(np.zeros(1))
    finally:
        shard.close()
    shard.threads = 1
    want = shard.node_sums(np.zeros(1))
    np.testing.assert_array_equal(got, want)
    assert calls[n - 1][0] == 0  # chunk 0 really finished last (the threads did run at once)
    assert any(name.startswith("dlogit-chunk") for _, name in calls)
    assert shard.done == 2 * n


def test_threads_setting_is_checked(rng):
    X, y = _data(rng, n=200, d=3)
    with pytest.raises(Exception, match="dlogit.threads"):
        _fit(0, X, y)


def _blocks_of(monkeypatch, nbytes):
    """Cache blocks of ``nbytes`` (many blocks per chunk on small data)."""
    from dlogit.chunks import blocks

    monkeypatch.setattr(blocks, "CPU_BLOCK_BYTES", nbytes)


@pytest.mark.parametrize("kernel", ["blas", "fused"])
def test_dense_blocks_run_on_several_threads_with_the_bits_of_one(rng, monkeypatch, kernel):
    """A dense binomial chunk's cache blocks go to the block threads (dlogit-block); the sums are added
    in block order, so 1, 2 and 3 threads give the same bits (float64 in place, float32, and a Fortran
    chunk read through per-thread scratch; weights; Newton keeps the curvature)."""
    from dlogit.engine import local
    from dlogit.kernels import cpu

    if kernel == "fused" and not cpu.available():
        pytest.skip("numba not installed")
    _blocks_of(monkeypatch, 2048)
    seen: set[str] = set()
    run = local.BlockThreads.__call__

    def spy(self, fn, n):
        def named(j):
            seen.add(threading.current_thread().name)
            fn(j)
        return run(self, named, n)

    monkeypatch.setattr(local.BlockThreads, "__call__", spy)
    X, y = _data(rng, n=4000, d=12)
    sw = rng.random(len(y)) * 3
    inputs = {"f64": X, "f32": X.astype(np.float32), "fortran": np.asfortranarray(X)}
    with dask.config.set({"dlogit.cpu-kernel": kernel}):
        for name, A in inputs.items():
            for solver, w in (("lbfgs", None), ("newton", sw)):
                fits = []
                for t in (1, 2, 3):
                    with dask.config.set({"dlogit.threads": t}):
                        tol = 1e-4 if A.dtype == np.float32 else 1e-8
                        fits.append(dlogit.LogisticRegression(solver=solver, chunk_rows=1500, tol=tol)
                                    .fit(A, y, sample_weight=w))
                for m in fits[1:]:
                    np.testing.assert_array_equal(m.coef_, fits[0].coef_, err_msg=name)
                    np.testing.assert_array_equal(m.intercept_, fits[0].intercept_, err_msg=name)
    assert any(s.startswith("dlogit-block") for s in seen), seen


def test_block_sums_are_added_in_block_order_whatever_ran_first(rng, monkeypatch):
    """Blocks evaluated last to first (``begin``'s parts) give the bits of the serial pass."""
    from dlogit.chunks import DenseBinomialCPU
    from dlogit.family import ParamLayout

    _blocks_of(monkeypatch, 1024)
    X, y = _data(rng, n=900, d=8)
    X[::7] *= 1e6  # large and small block sums: an order change would show in the bits
    theta = rng.standard_normal(9)
    serial = DenseBinomialCPU(X, y, None, ParamLayout(8, 1), kernel="blas")
    assert len(serial.blocks.ranges) > 10
    backwards = DenseBinomialCPU(X, y, None, ParamLayout(8, 1), kernel="blas")
    n, block, finish = backwards.begin(theta)
    for j in reversed(range(n)):
        block(j)
    np.testing.assert_array_equal(finish(), serial.sums(theta))


def test_a_fit_restores_the_callers_blas_threads(rng):
    """In-process fits run BLAS on one thread per block thread; the caller's own setting comes back."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    X, y = _data(rng, n=2000, d=10)

    def blas():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas()
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        _fit(2, X, y, chunk_rows=300)
        assert blas() == [2] * len(before)
    assert blas() == before


def test_a_busy_core_changes_no_bits(rng, monkeypatch):
    """With another process spinning on one core, a fit on 2 threads gives the bits of a quiet one (the
    schedule changes, the reduction order does not). Not a timing test."""
    import os
    import shutil
    import subprocess
    import sys

    if len(os.sched_getaffinity(0)) < 2 or shutil.which("taskset") is None:
        pytest.skip("needs taskset and 2 CPUs")
    _blocks_of(monkeypatch, 4096)
    X, y = _data(rng, n=20_000, d=16)
    quiet = _fit(2, X, y, chunk_rows=5000, tol=1e-10)
    core = min(os.sched_getaffinity(0))
    hog = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", "while True: pass"])
    try:
        busy = _fit(2, X, y, chunk_rows=5000, tol=1e-10)
    finally:
        hog.kill()
        hog.wait()
    np.testing.assert_array_equal(busy.coef_, quiet.coef_)
    np.testing.assert_array_equal(busy.intercept_, quiet.intercept_)
