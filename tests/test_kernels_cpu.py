"""CPU chunk kernels: the weighted dense binomial kernel and the CSR binomial/multinomial kernels.

Every kernel is compared with a float64 NumPy/SciPy reference this file computes (on the densified
matrix for the CSR kernels), and its gradient and Hessian-vector product with central finite differences
of the kernel's own loss and gradient sums.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import expit, logsumexp, softmax

from dlogit.errors import DataError
from dlogit.kernels import cpu, sparse
from dlogit.kernels.sparse import CSR, canonical_csr, check_csr, needs_int64

needs_numba = pytest.mark.skipif(not cpu.available(), reason="numba is not installed")
EMPTY = np.empty(0)
F64_TOL = {"rtol": 1e-12, "atol": 1e-12}


# --------------------------------------------------------------------------------------------------
# references (float64, NumPy/SciPy, written from the definitions)


def fsum_cols(M: np.ndarray) -> np.ndarray:
    """Column sums, exactly rounded (math.fsum): the reference does not depend on summation order."""
    return np.array([math.fsum(M[:, j]) for j in range(M.shape[1])])


def ref_binomial(X, y, sw, w, b):
    """``(loss, g, gb, curvature)`` of the weighted binomial loss sum; sums exactly rounded.

    Each weighted term is ``s_i * term_i`` (the term rounded first), so with weights that are powers of
    two it equals the term repeated ``s_i`` times exactly.
    """
    X = np.asarray(X, dtype=np.float64)
    s = np.ones(len(y)) if sw is None else np.asarray(sw, dtype=np.float64)
    z = X @ w + b
    loss_i = np.logaddexp(0.0, z) - y * z
    r = expit(z) - y
    curv = expit(z) * expit(-z)
    G = s[:, None] * (r[:, None] * X)
    return math.fsum(s * loss_i), fsum_cols(G), math.fsum(s * r), s * curv


def ref_binomial_hvp(X, curv, v, vb):
    X = np.asarray(X, dtype=np.float64)
    t = curv * (X @ v + vb)
    return X.T @ t, t.sum()


def ref_multinomial(X, cls, sw, W, b):
    """``(loss, G, gb, P)`` of the weighted multinomial loss sum."""
    X = np.asarray(X, dtype=np.float64)
    n, K = len(cls), W.shape[0]
    s = np.ones(n) if sw is None else np.asarray(sw, dtype=np.float64)
    Z = X @ W.T + b
    loss = np.sum(s * (logsumexp(Z, axis=1) - Z[np.arange(n), cls]))
    P = softmax(Z, axis=1)
    R = s[:, None] * (P - np.eye(K)[cls])
    return loss, R.T @ X, R.sum(axis=0), P


def ref_multinomial_hvp(X, P, sw, V, vb):
    X = np.asarray(X, dtype=np.float64)
    s = np.ones(len(P)) if sw is None else np.asarray(sw, dtype=np.float64)
    U = X @ V.T + vb
    T = s[:, None] * (P * U - P * np.sum(P * U, axis=1, keepdims=True))
    return T.T @ X, T.sum(axis=0)


def near(x: float, rel: float):
    """``pytest.approx`` with a relative tolerance only (its default 1e-12 absolute one would accept
    anything for the tiny values whose relative precision these tests check)."""
    return pytest.approx(x, rel=rel, abs=0)


def central_diff(f, x, h=1e-5):
    """Central differences of ``f`` (scalar or array valued) with respect to each entry of ``x``."""
    cols = []
    for j in range(x.size):
        e = np.zeros_like(x)
        e.flat[j] = h
        cols.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h))
    return np.array(cols)


# --------------------------------------------------------------------------------------------------
# dense binomial


def dense(X, y, sw, w, b, curvature=True):
    n, d = X.shape
    g, dbuf = np.full(d, np.nan), np.full(n if curvature else 0, np.nan)
    loss, gb = cpu.dense_binomial_sums(X, 1.0 - 2.0 * y, EMPTY if sw is None else sw, w, b, g, dbuf)
    return loss, g, gb, dbuf


def weights(rng, n, kind):
    if kind == "none":
        return None
    s = rng.random(n) * 3
    if kind == "zeros":
        s[::3] = 0.0
    return s


@needs_numba
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 1001])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["none", "weights", "zeros"])
def test_dense_binomial_sums_match_reference(rng, n, dtype, kind):
    """Groups of four rows and the remainder, weighted or not: loss, gradient, intercept, curvature.
    float32 chunks multiply in float64, so they meet the float64 reference on the same values."""
    d = 9
    X = rng.standard_normal((n, d)).astype(dtype)
    y = (rng.random(n) < 0.4).astype(float)
    sw = weights(rng, n, kind)
    w, b = rng.standard_normal(d), 0.3
    loss, g, gb, curv = dense(X, y, sw, w, b)
    rl, rg, rgb, rc = ref_binomial(X, y, sw, w, b)
    np.testing.assert_allclose([loss, gb], [rl, rgb], **F64_TOL)
    np.testing.assert_allclose(g, rg, **F64_TOL)
    np.testing.assert_allclose(curv, rc, rtol=1e-13, atol=0)
    loss2, g2, gb2, none = dense(X, y, sw, w, b, curvature=False)  # skipping the curvature changes nothing
    assert (loss2, gb2) == (loss, gb) and none.shape == (0,)
    np.testing.assert_array_equal(g2, g)
    if kind == "zeros":  # a weight-0 row adds nothing, and its curvature is 0
        keep = sw != 0
        np.testing.assert_allclose(dense(X[keep], y[keep], sw[keep], w, b)[1], g, **F64_TOL)
        assert np.all(curv[~keep] == 0.0)


@needs_numba
@pytest.mark.parametrize("values", [(0.0, 1.0, 2.0, 4.0), (0.0, 1.0, 2.0, 3.0, 5.0)])
def test_dense_binomial_integer_weights_equal_duplicated_rows(rng, values):
    """Integer weights are the rows repeated that often. In the exactly summed reference this is exact
    for powers of two (``s * term`` is exact) and to the rounding of each product otherwise; the kernel
    (which sums in another order) meets the duplicated-rows reference to 1e-12."""
    n, d = 1001, 9
    X = rng.standard_normal((n, d))
    y = (rng.random(n) < 0.5).astype(float)
    sw = rng.choice(values, n)
    w, b = rng.standard_normal(d) * 0.5, -0.2
    reps = sw.astype(int)
    Xd, yd = np.repeat(X, reps, axis=0), np.repeat(y, reps)
    want = ref_binomial(X, y, sw, w, b)
    dup = ref_binomial(Xd, yd, None, w, b)
    if 3.0 in values:
        np.testing.assert_allclose(np.r_[want[0], want[1], want[2]], np.r_[dup[0], dup[1], dup[2]],
                                   rtol=1e-14, atol=1e-13)
    else:
        assert want[0] == dup[0] and want[2] == dup[2]
        np.testing.assert_array_equal(want[1], dup[1])
    loss, g, gb, _ = dense(X, y, sw, w, b)
    loss_d, g_d, gb_d, _ = dense(Xd, yd, None, w, b)
    np.testing.assert_allclose([loss, gb, loss_d, gb_d], [dup[0], dup[2]] * 2, **F64_TOL)
    np.testing.assert_allclose(g, dup[1], **F64_TOL)
    np.testing.assert_allclose(g_d, dup[1], **F64_TOL)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_all_one_weights_equal_the_unweighted_loop(rng, dtype):
    """All-one weights give the unweighted sums to rounding (the weighted loop may contract ``s * l``
    into the running sum: fastmath allows FMA there)."""
    X = rng.standard_normal((403, 130)).astype(dtype)
    sg = 1.0 - 2.0 * (rng.random(403) < 0.5)
    w = rng.standard_normal(130) * 0.1
    g_new, g_one = np.empty(130), np.empty(130)
    plain = cpu.dense_binomial_sums(X, sg, EMPTY, w, 0.1, g_new, EMPTY)
    one = cpu.dense_binomial_sums(X, sg, np.ones(403), w, 0.1, g_one, np.empty(403))
    np.testing.assert_allclose(one, plain, rtol=1e-14)
    np.testing.assert_allclose(g_one, g_new, rtol=1e-13, atol=1e-13)


@needs_numba
def test_dense_binomial_at_huge_margins_is_finite_and_exact():
    X = np.array([[1000.0], [-1000.0], [1000.0], [-1000.0], [1000.0], [40.0]])
    y = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    sw = np.array([1.0, 2.0, 0.5, 3.0, 0.0, 1.0])
    loss, g, gb, curv = dense(X, y, sw, np.array([1.0]), 0.0)
    # rows 1, 2 and 5 are wrong by 1000 (loss 1000, residual +-1; row 5 has weight 0), 3, 4 and 6 right
    assert (loss, gb, g[0]) == (1000.0 + 2 * 1000.0, 1.0 - 2 * 1.0, 1000.0 + 2 * 1000.0)
    np.testing.assert_array_equal(curv[:5], 0.0)
    assert curv[5] == near(np.exp(-40.0), 1e-12)  # relative precision of the tiny curvature
    loss, g, gb, _ = dense(X[5:], y[5:], sw[5:], np.array([1.0]), 0.0)  # the tiny loss and residual alone
    assert loss == near(np.exp(-40.0), 1e-15) and gb == near(-np.exp(-40.0), 1e-15)


@needs_numba
def test_dense_binomial_rejects_wrong_arguments(rng):
    X = rng.standard_normal((5, 3))
    sg, w, g = np.ones(5), np.zeros(3), np.empty(3)
    with pytest.raises(ValueError, match="sw and dbuf must have n entries or none"):
        cpu.dense_binomial_sums(X, sg, np.ones(4), w, 0.0, g, EMPTY)
    with pytest.raises(ValueError, match="sw and dbuf must have n entries or none"):
        cpu.dense_binomial_sums(X, sg, EMPTY, w, 0.0, g, np.empty(6))
    with pytest.raises(ValueError, match="w and g d entries"):
        cpu.dense_binomial_sums(X, sg, EMPTY, np.zeros(4), 0.0, g, EMPTY)
    with pytest.raises(TypeError):  # Fortran order: not compiled for (it would be slow), not recompiled
        cpu.dense_binomial_sums(np.asfortranarray(X), sg, EMPTY, w, 0.0, g, EMPTY)
    with pytest.raises(TypeError):  # int data is converted by the caller once, not per step
        cpu.dense_binomial_sums(X.astype(int), sg, EMPTY, w, 0.0, g, EMPTY)


# --------------------------------------------------------------------------------------------------
# CSR chunks


def random_csr(rng, n, d, dtype=np.float64, itype=np.int32, density=0.3, scale=1.0):
    """A CSR chunk with empty rows, unsorted column indices and duplicate entries."""
    M = sp.random(n, d, density=density, format="csr", rng=rng)
    M.data = rng.standard_normal(M.nnz) * scale
    if n:
        r = min(2, n - 1)  # an empty row
        M.data[M.indptr[r]: M.indptr[r + 1]] = 0.0
        M.eliminate_zeros()
    rows = np.repeat(np.arange(n), np.diff(M.indptr))
    # split every third entry into two stored duplicates, then shuffle the entries within each row
    split = np.arange(M.nnz) % 3 == 0
    data = np.concatenate([np.where(split, M.data / 2, M.data), M.data[split] / 2])
    cols = np.concatenate([M.indices, M.indices[split]])
    rows = np.concatenate([rows, rows[split]])
    order = np.lexsort((rng.random(len(rows)), rows))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    X = sp.csr_matrix((data[order], cols[order], indptr), shape=(n, d))
    X.data = X.data.astype(dtype)
    X.indices, X.indptr = X.indices.astype(itype), X.indptr.astype(itype)
    assert not X.has_sorted_indices or n == 0 or X.nnz < 2
    return X


def parts(X):
    c = canonical_csr(X)
    return c.data, c.indices, c.indptr


def dense_of(X):
    return X.toarray().astype(np.float64)  # sums duplicates, as the kernels do


def csr_binomial(X, y, sw, w, b):
    n, d = X.shape
    g, dbuf = np.full(d, np.nan), np.full(n, np.nan)
    loss, gb = sparse.csr_binomial_sums(*parts(X), 1.0 - 2.0 * y, EMPTY if sw is None else sw, w, b, g, dbuf)
    return loss, g, gb, dbuf


def csr_multinomial(X, cls, sw, W, b):
    n, d = X.shape
    K = W.shape[0]
    G, gb, P = np.full((K, d), np.nan), np.full(K, np.nan), np.full((n, K), np.nan)
    loss = sparse.csr_multinomial_sums(*parts(X), cls, EMPTY if sw is None else sw, W, b, G, gb, P)
    return loss, G, gb, P


CSR_CASES = [pytest.param(dt, it, kind, id=f"{np.dtype(dt).name}-{np.dtype(it).name}-{kind}")
             for dt, it, kind in [(np.float64, np.int32, "none"), (np.float64, np.int64, "weights"),
                                  (np.float32, np.int32, "zeros"), (np.float32, np.int64, "none"),
                                  (np.float64, np.int64, "zeros")]]


@needs_numba
@pytest.mark.parametrize(("dtype", "itype", "kind"), CSR_CASES)
def test_csr_binomial_matches_dense_reference_and_finite_differences(rng, dtype, itype, kind):
    n, d = 57, 23
    X = random_csr(rng, n, d, dtype, itype)
    y = (rng.random(n) < 0.5).astype(float)
    sw = weights(rng, n, kind)
    w, b = rng.standard_normal(d), -0.4
    loss, g, gb, curv = csr_binomial(X, y, sw, w, b)
    rl, rg, rgb, rc = ref_binomial(dense_of(X), y, sw, w, b)
    np.testing.assert_allclose([loss, gb], [rl, rgb], **F64_TOL)
    np.testing.assert_allclose(g, rg, **F64_TOL)
    np.testing.assert_allclose(curv, rc, rtol=1e-13, atol=0)
    theta = np.r_[w, b]
    fd = central_diff(lambda t: csr_binomial(X, y, sw, t[:-1], t[-1])[0], theta)
    np.testing.assert_allclose(np.r_[g, gb], fd, rtol=1e-7, atol=1e-7)

    v, vb = rng.standard_normal(d), 0.7
    out = np.full(d, np.nan)
    tb = sparse.csr_binomial_hvp(*parts(X), curv, v, vb, out)
    want, want_b = ref_binomial_hvp(dense_of(X), rc, v, vb)
    np.testing.assert_allclose(np.r_[out, tb], np.r_[want, want_b], **F64_TOL)

    def grad_at(h):
        _, g_, gb_, _ = csr_binomial(X, y, sw, w + h[0] * v, b + h[0] * vb)
        return np.r_[g_, gb_]

    np.testing.assert_allclose(np.r_[out, tb], central_diff(grad_at, np.zeros(1))[0], rtol=1e-6, atol=1e-7)


@needs_numba
@pytest.mark.parametrize(("dtype", "itype", "kind"), CSR_CASES)
def test_csr_multinomial_matches_dense_reference_and_finite_differences(rng, dtype, itype, kind):
    n, d, K = 61, 19, 4
    X = random_csr(rng, n, d, dtype, itype)
    cls = rng.integers(0, K, n)
    sw = weights(rng, n, kind)
    W, b = rng.standard_normal((K, d)), rng.standard_normal(K)
    loss, G, gb, P = csr_multinomial(X, cls, sw, W, b)
    rl, rG, rgb, rP = ref_multinomial(dense_of(X), cls, sw, W, b)
    np.testing.assert_allclose(loss, rl, **F64_TOL)
    np.testing.assert_allclose(G, rG, **F64_TOL)
    np.testing.assert_allclose(gb, rgb, **F64_TOL)
    np.testing.assert_allclose(P, rP, rtol=1e-13, atol=1e-16)
    theta = np.r_[W.ravel(), b]

    def loss_at(t):
        return csr_multinomial(X, cls, sw, t[: K * d].reshape(K, d), t[K * d:])[0]

    np.testing.assert_allclose(np.r_[G.ravel(), gb], central_diff(loss_at, theta), rtol=1e-7, atol=1e-7)

    V, vb = rng.standard_normal((K, d)), rng.standard_normal(K)
    OUT, outb = np.full((K, d), np.nan), np.full(K, np.nan)
    assert sparse.csr_multinomial_hvp(*parts(X), P, EMPTY if sw is None else sw, V, vb, OUT, outb) is None
    want, want_b = ref_multinomial_hvp(dense_of(X), rP, sw, V, vb)
    np.testing.assert_allclose(OUT, want, **F64_TOL)
    np.testing.assert_allclose(outb, want_b, **F64_TOL)

    def grad_at(h):
        _, G_, gb_, _ = csr_multinomial(X, cls, sw, W + h[0] * V, b + h[0] * vb)
        return np.r_[G_.ravel(), gb_]

    fd = central_diff(grad_at, np.zeros(1))[0]
    np.testing.assert_allclose(np.r_[OUT.ravel(), outb], fd, rtol=1e-6, atol=1e-7)


@needs_numba
def test_csr_kernels_do_not_depend_on_index_order_or_duplicates(rng):
    """The same matrix stored sorted without duplicates (canonical SciPy) and shuffled with duplicates."""
    n, d, K = 40, 15, 3
    X = random_csr(rng, n, d)
    Xc = X.copy()
    Xc.sum_duplicates()  # sorted, unique
    assert Xc.has_canonical_format and Xc.nnz < X.nnz
    y = (rng.random(n) < 0.5).astype(float)
    w, b = rng.standard_normal(d), 0.2
    for a, c in zip(csr_binomial(X, y, None, w, b), csr_binomial(Xc, y, None, w, b), strict=True):
        np.testing.assert_allclose(a, c, **F64_TOL)
    cls = rng.integers(0, K, n)
    W, bb = rng.standard_normal((K, d)), rng.standard_normal(K)
    for a, c in zip(csr_multinomial(X, cls, None, W, bb), csr_multinomial(Xc, cls, None, W, bb), strict=True):
        np.testing.assert_allclose(a, c, **F64_TOL)


@needs_numba
@pytest.mark.parametrize("itype", [np.int32, np.int64])
def test_csr_kernels_on_an_empty_chunk_zero_their_outputs(itype):
    X = sp.csr_matrix((0, 6))
    X.indices, X.indptr = X.indices.astype(itype), X.indptr.astype(itype)
    y = EMPTY
    loss, g, gb, curv = csr_binomial(X, y, None, np.ones(6), 1.0)
    assert (loss, gb) == (0.0, 0.0) and curv.shape == (0,)
    np.testing.assert_array_equal(g, 0.0)
    out = np.full(6, np.nan)
    assert sparse.csr_binomial_hvp(*parts(X), EMPTY, np.ones(6), 1.0, out) == 0.0
    np.testing.assert_array_equal(out, 0.0)
    loss, G, gb, P = csr_multinomial(X, np.empty(0, np.int64), None, np.ones((3, 6)), np.ones(3))
    assert loss == 0.0 and P.shape == (0, 3)
    np.testing.assert_array_equal(G, 0.0)
    np.testing.assert_array_equal(gb, 0.0)
    OUT, outb = np.full((3, 6), np.nan), np.full(3, np.nan)
    sparse.csr_multinomial_hvp(*parts(X), np.empty((0, 3)), EMPTY, np.ones((3, 6)), np.ones(3), OUT, outb)
    np.testing.assert_array_equal(OUT, 0.0)
    np.testing.assert_array_equal(outb, 0.0)


@needs_numba
def test_csr_kernels_at_huge_margins_are_finite_and_exact():
    X = sp.csr_matrix(np.array([[1000.0, 0.0], [0.0, -1000.0], [1000.0, 0.0], [0.0, 0.0], [0.0, 40.0]]))
    y = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    sw = np.array([2.0, 1.0, 3.0, 1.0, 1.0])
    loss, g, gb, curv = csr_binomial(X, y, sw, np.array([1.0, 1.0]), 0.0)
    # row 1 wrong by 1000 (weight 2), rows 2, 3 right by 1000, row 4 an empty row (z = 0), row 5 right by 40
    assert loss == near(2000.0 + math.log(2.0) + math.exp(-40.0), 1e-15)
    assert gb == near(2.0 - 0.5 - math.exp(-40.0), 1e-15)
    assert g[0] == 2000.0 and g[1] == near(-40.0 * math.exp(-40.0), 1e-14)
    assert curv[4] == near(math.exp(-40.0), 1e-12) and curv[0] == curv[1] == curv[2] == 0.0
    # multinomial: class margins 1000 apart
    cls = np.array([1, 0, 0, 2, 1])
    W = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    loss, G, gb, P = csr_multinomial(X, cls, sw, W, np.zeros(3))
    assert np.all(np.isfinite(G)) and np.all(np.isfinite(P))
    # row 1 (z = 1000, 0, -1000; class 1): loss 1000; row 2 (0, -1000, 1000; class 0): 1000;
    # row 3 (1000, 0, -1000; class 0): e^-1000 = 0; row 4 (0, 0, 0): log 3; row 5 (0, 40, -40; class 1): tiny
    tiny = math.log1p(math.exp(-40.0) + math.exp(-80.0))
    assert loss == near(2 * 1000.0 + 1000.0 + 0.0 + math.log(3.0) + tiny, 1e-15)
    assert gb[1] == near(2 * -1.0 + 1 / 3 - (math.exp(-40.0) + math.exp(-80.0)), 1e-15)
    assert P[4, 0] == near(math.exp(-40.0), 1e-14)  # tiny probabilities keep their precision


@needs_numba
def test_multinomial_residual_keeps_relative_precision_for_well_classified_rows():
    """At margins 40 apart the true class's residual is -(e^-40 + e^-80) / (1 + ...), not p - 1 = 0."""
    X = sp.csr_matrix(np.array([[1.0]]))
    W = np.array([[0.0], [40.0], [-40.0]])
    loss, G, gb, _ = csr_multinomial(X, np.array([1]), None, W, np.zeros(3))
    rest = math.exp(-40.0) + math.exp(-80.0)
    assert loss == near(math.log1p(rest), 1e-15)
    assert gb[1] == near(-rest / (1 + rest), 1e-15) and G[1, 0] == gb[1]


@needs_numba
def test_csr_kernels_take_a_million_features(rng):
    """g is d-sized, nothing is n x d: a 20-row chunk with 10**6 columns."""
    n, d = 20, 10**6
    X = sp.random(n, d, density=2e-4, format="csr", rng=rng)
    y = (rng.random(n) < 0.5).astype(float)
    w = rng.standard_normal(d) * 0.1
    loss, g, gb, _ = csr_binomial(X, y, None, w, 0.0)
    z = X @ w
    r = expit(z) - y
    np.testing.assert_allclose([loss, gb], [np.sum(np.logaddexp(0.0, z) - y * z), r.sum()], **F64_TOL)
    np.testing.assert_allclose(g, X.T @ r, **F64_TOL)
    assert np.count_nonzero(g) <= X.nnz


@needs_numba
def test_csr_kernels_reject_wrong_arguments(rng):
    X = random_csr(rng, 5, 4)
    data, indices, indptr = parts(X)
    g, W, G, gb = np.empty(4), np.zeros((3, 4)), np.empty((3, 4)), np.empty(3)
    with pytest.raises(ValueError, match="sg must have n"):
        sparse.csr_binomial_sums(data, indices, indptr, np.ones(4), EMPTY, np.zeros(4), 0.0, g, EMPTY)
    with pytest.raises(ValueError, match="sw and dbuf must have n entries or none"):
        sparse.csr_binomial_sums(data, indices, indptr, np.ones(5), np.ones(3), np.zeros(4), 0.0, g, EMPTY)
    with pytest.raises(ValueError, match="dcurv must have n"):
        sparse.csr_binomial_hvp(data, indices, indptr, np.ones(6), np.zeros(4), 0.0, g)
    with pytest.raises(ValueError, match=r"a class id is outside 0 \.\. K-1"):
        sparse.csr_multinomial_sums(data, indices, indptr, np.array([0, 1, 3, 0, 0]), EMPTY, W, np.zeros(3),
                                    G, gb, np.empty((0, 3)))
    with pytest.raises(ValueError, match="pbuf must be"):
        sparse.csr_multinomial_sums(data, indices, indptr, np.zeros(5, np.int64), EMPTY, W, np.zeros(3),
                                    G, gb, np.empty((5, 2)))
    with pytest.raises(ValueError, match="OUT must have V's shape"):
        sparse.csr_multinomial_hvp(data, indices, indptr, np.zeros((5, 3)), EMPTY, W, np.zeros(3),
                                   np.empty((3, 5)), gb)
    with pytest.raises(TypeError):  # mixed index dtypes: canonical_csr gives both the same
        sparse.csr_binomial_sums(data, indices.astype(np.int64), indptr.astype(np.int32), np.ones(5), EMPTY,
                                 np.zeros(4), 0.0, g, EMPTY)


# --------------------------------------------------------------------------------------------------
# check_csr, needs_int64, canonical_csr


def bad(X, match, **kw):
    with pytest.raises(DataError, match=match) as info:
        check_csr(X, **kw)
    assert "\n" not in str(info.value)


def raw(data, indices, indptr, shape):
    return CSR(np.asarray(data), np.asarray(indices), np.asarray(indptr), shape)


def test_check_csr_accepts_valid_chunks_in_any_index_order(rng):
    check_csr(random_csr(rng, 30, 7))  # unsorted, duplicates, an empty row
    check_csr(sp.csr_array(np.eye(3)))
    check_csr(sp.csr_matrix((0, 5)))
    check_csr(raw([1.0, 2.0], [4, 4], [0, 2, 2], (2, 5)))
    check_csr(raw(np.array([1, 2], np.int8), np.array([1, 0], np.uint16), np.array([0, 1, 2], np.uint8),
                  (2, 2)))
    check_csr(raw([1.0, 2.0, 9.0], [0, 1, 7], [0, 1, 2], (2, 2)))  # values past indptr[-1] are unused


def test_check_csr_messages():
    bad(sp.coo_matrix(np.eye(2)), r"expected a CSR matrix, got coo_matrix in 'coo' format \(convert it with "
                                  r"\.tocsr\(\)\)")
    bad(np.eye(2), "expected a CSR matrix, got ndarray")
    bad(raw([1.0, np.nan, np.inf, 2.0], [0, 1, 2, 0], [0, 2, 4], (2, 3)),
        r"^X contains 2 NaN or infinite stored value\(s\)$")
    bad(raw([1.0, 2.0, 3.0], [0, 3, -1], [0, 2, 3], (2, 3)),
        r"^CSR column indices out of range: 2 outside \[0, 3\), e\.g\. 3$")
    bad(raw([1.0, 2.0], [0, 1], [0, 1, 2], (3, 3)),
        r"^CSR indptr has 3 entries; 3 rows need n_rows \+ 1 = 4$")
    bad(raw([1.0, 2.0], [0, 1], [0, 2, 1, 2], (3, 3)),
        r"^CSR indptr decreases at 1 row\(s\), first at row 1 \(2 -> 1\)$")
    bad(raw([1.0, 2.0], [0, 1], [1, 1, 2], (2, 3)), "^CSR indptr must start at 0, starts at 1$")
    bad(raw([1.0, 2.0], [0, 1], [0, 1, 3], (2, 3)), "^CSR indptr ends at 3 but only 2 values are stored$")
    bad(raw([1.0, 2.0], [0], [0, 1, 1], (2, 3)), r"^CSR data and indices differ in length \(2 vs 1\)$")
    bad(raw([1.0], [0.0], [0, 1], (1, 3)), "^CSR indices must be a 1-D integer array, got 1-D dtype float64$")
    bad(raw([1j], [0], [0, 1], (1, 3)), "X must hold real numbers")
    bad(raw([1.0, np.nan], [0, 1], [0, 1, 2], (2, 3)), r"stored value\(s\) \(chunk 4, part-3\.npz\)$",
        index=4, where="part-3.npz")


def test_check_csr_counts_across_blocks(monkeypatch):
    """Counts and the first bad row are found over every block, with temporaries of CHECK_BLOCK entries."""
    monkeypatch.setattr(sparse, "CHECK_BLOCK", 3)
    data = np.ones(10)
    data[[1, 5, 9]] = np.nan
    bad(raw(data, np.zeros(10, int), [0, 2, 4, 6, 8, 10], (5, 1)), r"X contains 3 NaN")
    bad(raw(np.ones(10), [0, 9, 0, 0, 0, 0, 0, 7, 0, 5], [0, 2, 4, 6, 8, 10], (5, 5)),
        r"3 outside \[0, 5\), e\.g\. 9$")
    bad(raw(np.ones(10), np.zeros(10, int), [0, 2, 4, 6, 5, 7, 6, 10], (7, 1)),
        r"decreases at 2 row\(s\), first at row 3 \(6 -> 5\)")


def test_needs_int64_at_the_int32_limit():
    assert not needs_int64(2**31 - 1, 2**31 - 1)
    assert needs_int64(2**31, 10) and needs_int64(10, 2**31)
    assert not needs_int64(0, 0)


def test_canonical_csr_copies_only_what_must_change(rng):
    X = random_csr(rng, 20, 6, np.float32, np.int64)
    for a in (X.data, X.indices, X.indptr):
        a.setflags(write=False)  # as from a memory map
    c = canonical_csr(X)
    assert (c.shape, c.n_rows, c.n_cols, c.nnz) == ((20, 6), 20, 6, X.nnz)
    assert c.data.dtype == np.float32 and c.indices.dtype == c.indptr.dtype == np.int64
    for got, src in ((c.data, X.data), (c.indices, X.indices), (c.indptr, X.indptr)):
        assert np.shares_memory(got, src) and not got.flags.writeable
    again = canonical_csr(c)
    assert again.data is not None and np.shares_memory(again.data, c.data)

    mixed = raw(np.array([1, 2, 3], np.int16), np.array([0, 2, 1], np.uint16), np.array([0, 2, 3], np.int64),
                (2, 3))
    m = canonical_csr(mixed)
    assert m.data.dtype == np.float64 and m.indices.dtype == m.indptr.dtype == np.int64
    np.testing.assert_array_equal(m.indices, [0, 2, 1])
    half = canonical_csr(raw(np.array([0.5, 2.0, 7.0], np.float16), np.array([1, 0, 5], np.uint8),
                             np.array([0, 1, 2], np.int32), (2, 2)))
    assert half.data.dtype == np.float32 and half.indices.dtype == np.int32
    assert half.nnz == 2  # cut at indptr[-1]
    np.testing.assert_array_equal(half.data, [0.5, 2.0])
    strided = raw(np.arange(6.0)[::2], np.array([0, 1, 0], np.int64), np.array([0, 2, 3], np.int32), (2, 2))
    s = canonical_csr(strided)  # one index array int64: both int64 (the shorter indptr is the one copied)
    assert s.data.flags.c_contiguous and s.indices.dtype == s.indptr.dtype == np.int64
    assert np.shares_memory(s.indices, strided.indices)


# --------------------------------------------------------------------------------------------------
# worker warm-up: nothing compiles inside a fit


def all_kernels():
    return [cpu.dense_binomial_sums, sparse.csr_binomial_sums, sparse.csr_binomial_hvp,
            sparse.csr_multinomial_sums, sparse.csr_multinomial_hvp]


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("itype", [np.int32, np.int64])
def test_read_only_memory_maps_compile_nothing_after_warm_up(rng, tmp_path, dtype, itype):
    """Chunks memory-mapped from disk (read-only arrays) and read-only weights, as a worker gets them,
    run on the variants the worker preload loaded: no signature is added, and the sums equal those of
    writable copies."""
    from dlogit.worker import warm_up

    warm_up()
    before = [len(k.signatures) for k in all_kernels()]
    n, d, K = 33, 140, 3
    X = random_csr(rng, n, d, dtype, itype)
    Xd = rng.standard_normal((n, d)).astype(dtype)
    sw = rng.random(n)
    for name, a in (("data", X.data), ("indices", X.indices), ("indptr", X.indptr), ("Xd", Xd), ("sw", sw)):
        np.save(tmp_path / f"{name}.npy", a)
    mm = {name: np.load(tmp_path / f"{name}.npy", mmap_mode="r")
          for name in ("data", "indices", "indptr", "Xd", "sw")}
    assert not any(a.flags.writeable for a in mm.values())
    ro = CSR(mm["data"], mm["indices"], mm["indptr"], (n, d))

    y = (rng.random(n) < 0.5).astype(float)
    w = rng.standard_normal(d) * 0.1
    sg = 1.0 - 2.0 * y
    for ws in (sw, mm["sw"]):
        np.testing.assert_array_equal(dense(mm["Xd"], y, ws, w, 0.1)[1], dense(Xd, y, sw, w, 0.1)[1])
        for a, c in zip(csr_binomial(ro, y, ws, w, 0.1), csr_binomial(X, y, sw, w, 0.1), strict=True):
            np.testing.assert_array_equal(a, c)
        cls = rng.integers(0, K, n)
        W, b = rng.standard_normal((K, d)) * 0.1, np.zeros(K)
        got, want = csr_multinomial(ro, cls, ws, W, b), csr_multinomial(X, cls, sw, W, b)
        for a, c in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, c)
        OUT, outb = np.empty((K, d)), np.empty(K)
        sparse.csr_multinomial_hvp(*parts(ro), got[3], ws, W, b, OUT, outb)
        sparse.csr_binomial_hvp(*parts(ro), ws, w, 0.0, np.empty(d))
    cpu.dense_binomial_sums(mm["Xd"], sg, EMPTY, w, 0.1, np.empty(d), EMPTY)
    assert [len(k.signatures) for k in all_kernels()] == before
    assert before == [2, 4, 4, 4, 4]  # the fixed-signature kernels: dtype x index dtype


# --------------------------------------------------------------------------------------------------
# every specialization against the family's own reference (dlogit.family: terms, hvp_terms)


def family_reference(K, X, codes, sw, theta, v):
    """``(sums [loss, G, gb], H.v [G, gb])`` of one chunk from the family's array reference (float64,
    rows-major margins): what every fused kernel specializes."""
    from dlogit.family import ParamLayout, family_for

    fam = family_for(K)
    L = ParamLayout(X.shape[1], fam.n_outputs(K))
    Xd = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
    Z = Xd @ L.coef(theta).T + L.intercept(theta)
    loss, R, curv = fam.terms(Z, fam.target(codes), sw, True, class_axis=-1)
    T = fam.hvp_terms(curv, Xd @ L.coef(v).T + L.intercept(v), class_axis=-1)
    return np.r_[loss, (R.T @ Xd).ravel(), R.sum(axis=0)], np.r_[(T.T @ Xd).ravel(), T.sum(axis=0)]


SPECIALIZATION_CASES = [pytest.param(dt, kind, id=f"{np.dtype(dt).name}-{kind}")
                        for dt in (np.float64, np.float32) for kind in ("none", "weights", "zeros")]


@needs_numba
@pytest.mark.parametrize(("dtype", "kind"), SPECIALIZATION_CASES)
@pytest.mark.parametrize("curvature", [False, True])
def test_fused_dense_kernel_specializes_the_family_reference(rng, dtype, kind, curvature):
    """The fused Numba dense binomial kernel (sums, curvature, the evaluator's H.v) against
    Binomial.terms for each dtype, weights and mode (with and without curvature)."""
    from dlogit.chunks import DenseBinomialCPU
    from dlogit.family import ParamLayout

    n, d = 203, 17
    X = (rng.standard_normal((n, d)) * 2).astype(dtype)
    codes = rng.integers(0, 2, n)
    sw = weights(rng, n, kind)
    theta, v = rng.standard_normal(d + 1) * 0.5, rng.standard_normal(d + 1)
    want, want_hv = family_reference(2, X, codes, sw, theta, v)
    chunk = DenseBinomialCPU(X, codes, sw, ParamLayout(d, 1), kernel="fused", curvature=curvature)
    assert chunk.kernel == "fused"
    np.testing.assert_allclose(chunk.sums(theta), want, rtol=1e-11, atol=1e-11)
    if curvature:  # the products of an H.v run in X's dtype (BLAS)
        tol = 1e-11 if dtype == np.float64 else 1e-5
        handle = chunk.sums(theta, keep_curvature=True)
        np.testing.assert_allclose(handle.sums, want, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(chunk.hvp(handle, v), want_hv, rtol=tol, atol=tol)
    loss, g, gb, dbuf = dense(X, codes.astype(float), sw, theta[:d], theta[d], curvature=curvature)
    np.testing.assert_allclose(np.r_[loss, g, gb], want, rtol=1e-11, atol=1e-11)
    assert dbuf.size == (n if curvature else 0)


CSR_SPEC_CASES = [pytest.param(dt, it, kind, id=f"{np.dtype(dt).name}-{np.dtype(it).name}-{kind}")
                  for dt in (np.float64, np.float32) for it in (np.int32, np.int64)
                  for kind in ("none", "weights", "zeros")]


@needs_numba
@pytest.mark.parametrize(("dtype", "itype", "kind"), CSR_SPEC_CASES)
@pytest.mark.parametrize("K", [2, 4])
def test_csr_kernels_specialize_the_family_reference(rng, dtype, itype, kind, K):
    """The CSR Numba kernels (binomial and multinomial; sums with and without curvature, H.v) against
    the family's terms for each data and index dtype and weights."""
    from dlogit.chunks import prepare_chunk
    from dlogit.family import ParamLayout, family_for

    n, d = 71, 13
    X = random_csr(rng, n, d, dtype, itype)
    codes = rng.integers(0, K, n)
    sw = weights(rng, n, kind)
    fam = family_for(K)
    L = ParamLayout(d, fam.n_outputs(K))
    theta, v = rng.standard_normal(L.size) * 0.5, rng.standard_normal(L.size)
    want, want_hv = family_reference(K, X, codes, sw, theta, v)
    for curvature in (False, True):
        chunk = prepare_chunk(X, codes, sw, L, fam, curvature=curvature)
        assert chunk.kernel == "csr"
        np.testing.assert_allclose(chunk.sums(theta), want, rtol=1e-11, atol=1e-11)
        if curvature:
            handle = chunk.sums(theta, keep_curvature=True)
            np.testing.assert_allclose(handle.sums, want, rtol=1e-11, atol=1e-11)
            np.testing.assert_allclose(chunk.hvp(handle, v), want_hv, rtol=1e-11, atol=1e-11)
