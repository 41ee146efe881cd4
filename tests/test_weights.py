"""Row weights that cannot define a fit are errors in every mode (in-process, worker-local,
distributed, the CLI): a class whose rows all weigh 0, a negative, NaN or infinite weight."""

from __future__ import annotations

import os
import subprocess
import sys

import dask.array as da
import numpy as np
import pytest

import dlogit


def _data(n=400, K=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3)), rng.integers(0, K, n)


@pytest.mark.parametrize("K", [2, 3])
def test_a_class_with_zero_total_weight_is_an_error(K):
    """The fit 'converged' (loss 1.5e-9) to a model that never predicts the weightless class."""
    X, y = _data(K=K)
    w = np.where(y == 1, 0.0, 1.0)
    with pytest.raises(dlogit.DataError, match=r"^class 1 has zero total sample weight: all its \d+ row"):
        dlogit.LogisticRegression().fit(X, y, sample_weight=w)
    w[np.flatnonzero(y == 1)[0]] = 1e-3  # one row of weight is enough
    assert dlogit.LogisticRegression().fit(X, y, sample_weight=w).status_ == "converged"


@pytest.mark.parametrize("mode", ["worker-local", "distributed"])
def test_bad_weights_are_errors_on_a_cluster(client2, mode):
    X, y = _data()
    Xd, yd = da.from_array(X, chunks=(100, 3)), da.from_array(y, chunks=100)
    zero = da.from_array(np.where(y == 1, 0.0, 1.0), chunks=100)
    with pytest.raises(dlogit.DataError, match="class 1 has zero total sample weight"):
        dlogit.LogisticRegression(mode=mode).fit(Xd, yd, sample_weight=zero, client=client2)
    for bad in (-2.0, np.nan, np.inf):
        w = np.ones(len(y))
        w[123] = bad
        want = rf"sample_weight of row 23 of chunk 1 .* is {bad} \((negative|NaN|infinite)\): row weights must"
        with pytest.raises(dlogit.DataError, match=want):
            dlogit.LogisticRegression(mode=mode).fit(Xd, yd, sample_weight=da.from_array(w, chunks=100),
                                                     client=client2)


def test_cli_refuses_weights_that_leave_a_class_empty(tmp_path):
    X, y = _data()
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "w.npy", np.where(y == 1, 0.0, 1.0))
    out = subprocess.run([sys.executable, "-m", "dlogit", "train", str(tmp_path / "X.npy"), "--labels",
                          str(tmp_path / "y.npy"), "--weights", str(tmp_path / "w.npy"), "--workers", "1",
                          "--quiet", "--out", str(tmp_path / "m.npz")],
                         env=os.environ.copy(), capture_output=True, text=True, timeout=180)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "class 1 has zero total sample weight" in lines[0], out.stderr
    assert not (tmp_path / "m.npz").exists()


def test_weighted_column_moments_equal_repeated_rows_dense_and_sparse():
    """The validation pass's column moments (the preconditioner's input) treat an integer weight as
    repeated rows, for dense and CSR chunks alike."""
    import scipy.sparse as sps

    from dlogit.stats import chunk_stats

    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 5)) * [1, 10, 1e-3, 1e3, 1]
    X[rng.random(X.shape) < 0.3] = 0.0
    y = rng.integers(0, 2, 300)
    sw = rng.integers(0, 4, 300)
    dup = np.repeat(np.arange(300), sw)
    rep = chunk_stats(X[dup], y[dup])
    for A in (X, sps.csr_matrix(X)):
        st = chunk_stats(A, y, sw.astype(float))
        assert st.weight_sum == rep.rows
        for got, want in ((st.col_sum * st.col_max, rep.col_sum * rep.col_max),
                          (st.col_sq * st.col_max**2, rep.col_sq * rep.col_max**2)):
            np.testing.assert_allclose(got, want, rtol=1e-12)
