"""A repeated distributed fit on the same persisted chunks reuses what the workers already know of
them (issue 23: later fits on a cluster): each chunk's validation summary is kept on its worker, by the
Dask key of its X (and the digest of its row weights), for as long as that key is held there; the
labels and weights are counted anew."""

from __future__ import annotations

import logging
import time

import dask.array as da
import numpy as np
import pytest

import dlogit
from dlogit.data import synthetic_numpy
from dlogit.engine.transport import engine_state

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster, set_as_default=False) as c:
        yield c


def _summaries(client) -> dict[str, int]:
    states = client.run(engine_state).values()
    return {k: sum(s["summaries"][k] for s in states) for k in ("entries", "hits", "stored")}


def _fit(client, X, y, w=None, **kw):
    return dlogit.LogisticRegression(mode="distributed", tol=1e-8, **kw).fit(X, y, w, client=client)


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.intercept_, b.intercept_)
    assert a.n_iter_ == b.n_iter_


def test_a_repeated_fit_on_persisted_chunks_skips_their_validation_pass(client):
    Xn, yn = synthetic_numpy(4000, 30, seed=5)
    X, y = client.persist([da.from_array(Xn, chunks=(500, 30)), da.from_array(yn, chunks=500)])
    before = _summaries(client)
    first = _fit(client, X, y)
    after_first = _summaries(client)
    assert after_first["stored"] - before["stored"] == 8  # every chunk summarized once, and kept
    assert after_first["hits"] == before["hits"]
    second = _fit(client, X, y)
    after_second = _summaries(client)
    assert after_second["hits"] - after_first["hits"] == 8  # no chunk validated again
    assert after_second["stored"] == after_first["stored"]
    _same(first, second)  # the same plan, the same iterates, to the last bit
    # the same model as a fit that summarized the chunks itself (fresh keys: nothing to reuse)
    X2, y2 = client.persist([da.from_array(Xn.copy(), chunks=(500, 30), name="x-fresh"),
                             da.from_array(yn.copy(), chunks=500, name="y-fresh")])
    _same(first, _fit(client, X2, y2))
    assert _summaries(client)["hits"] == after_second["hits"]


def test_other_labels_reuse_the_moments_and_other_weights_do_not(client):
    Xn, yn = synthetic_numpy(3000, 20, seed=8)
    X = client.persist(da.from_array(Xn, chunks=(500, 20)))
    y = client.persist(da.from_array(yn, chunks=500))
    flipped = client.persist(da.from_array(1.0 - yn, chunks=500))
    wn = np.random.default_rng(0).uniform(0.5, 2.0, size=len(yn))
    w = client.persist(da.from_array(wn, chunks=500))
    a = _fit(client, X, y)
    h0 = _summaries(client)["hits"]
    b = _fit(client, X, flipped)  # the same X: its moments are reused, the labels counted anew
    assert _summaries(client)["hits"] - h0 == 6
    np.testing.assert_array_equal(b.class_counts_, a.class_counts_[::-1])
    ref_b = dlogit.LogisticRegression(tol=1e-8, chunk_rows=500).fit(Xn, 1.0 - yn)
    np.testing.assert_allclose(b.coef_, ref_b.coef_, rtol=1e-6)
    h1 = _summaries(client)["hits"]
    c = _fit(client, X, y, w)  # weighted moments: other weights, no reuse
    assert _summaries(client)["hits"] == h1
    ref_c = dlogit.LogisticRegression(tol=1e-8, chunk_rows=500).fit(Xn, yn, wn)
    np.testing.assert_allclose(c.coef_, ref_c.coef_, rtol=1e-6)
    _same(c, _fit(client, X, y, w))  # the same weights: reused, the same bits
    assert _summaries(client)["hits"] - h1 == 6
    w2 = client.persist(da.from_array(wn * 2.0, chunks=500))
    _fit(client, X, y, w2)
    assert _summaries(client)["hits"] - h1 == 6  # other weight values: summarized again


def _wait_for_entries(client, n: int) -> None:
    deadline = time.monotonic() + 10
    while _summaries(client)["entries"] != n:
        assert time.monotonic() < deadline, _summaries(client)
        time.sleep(0.1)


def test_a_released_chunk_takes_its_summary_with_it(client):
    _wait_for_entries(client, 0)  # the earlier tests' chunks are released (their summaries with them)
    Xn, yn = synthetic_numpy(2000, 10, seed=2)
    X, y = client.persist([da.from_array(Xn, chunks=(500, 10), name="x-released"),
                           da.from_array(yn, chunks=500, name="y-released")])
    _fit(client, X, y)
    assert _summaries(client)["entries"] == 4
    del X, y
    _wait_for_entries(client, 0)
