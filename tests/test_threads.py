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
