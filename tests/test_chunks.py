"""Chunk evaluators (dlogit.chunks): sums and H.v of every family, kernel and array kind against float64
references the tests compute, finite differences, and awkward memory layouts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import approx_fprime

from dlogit._xp import to_numpy
from dlogit.chunks import Blocks, DenseBinomialCPU, LinearChunk, chunk_sums, prepare_chunk
from dlogit.family import Binomial, Multinomial, ParamLayout
from dlogit.kernels import cpu
from dlogit.objective import Objective

BIN, MULTI = Binomial(), Multinomial()


# -- references (float64, straightforward) ----------------------------------------------------------

def ref_binomial(X, codes, theta, sw=None):
    X = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
    d = X.shape[1]
    sw = np.ones(len(codes)) if sw is None else sw
    z = X @ theta[:d] + theta[d]
    p = 1 / (1 + np.exp(-z))
    r = (p - codes) * sw
    return np.concatenate([[np.sum(sw * (np.logaddexp(0, z) - codes * z))], X.T @ r, [r.sum()]])


def ref_multinomial(X, codes, theta, K, sw=None):
    X = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
    n, d = X.shape
    sw = np.ones(n) if sw is None else sw
    W, b = theta[: K * d].reshape(K, d), theta[K * d:]
    Z = X @ W.T + b
    lse = np.logaddexp.reduce(Z, axis=1)
    loss = np.sum(sw * (lse - Z[np.arange(n), codes]))
    P = np.exp(Z - lse[:, None])
    R = (P - np.eye(K)[codes]) * sw[:, None]
    return np.concatenate([[loss], (R.T @ X).ravel(), R.sum(axis=0)])


def _problem(rng, n=303, d=17, K=2, weighted=False):
    X = rng.standard_normal((n, d))
    codes = rng.integers(0, K, n)
    sw = rng.random(n) * 3 if weighted else None
    layout = ParamLayout(d, 1 if K == 2 else K)
    theta = rng.standard_normal(layout.size) * 0.3
    return X, codes, sw, layout, theta


@pytest.fixture(params=["blas", "fused", "linear"])
def binomial_path(request):
    return request.param


def _binomial(X, codes, sw, layout, path, curvature=False):
    if path == "linear":
        return LinearChunk(X, codes, sw, layout, BIN, curvature=curvature)
    return DenseBinomialCPU(X, codes, sw, layout, kernel=path, curvature=curvature)


# -- binomial ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True])
def test_binomial_sums_match_reference(rng, binomial_path, weighted):
    X, codes, sw, layout, theta = _problem(rng, weighted=weighted)
    got = _binomial(X, codes, sw, layout, binomial_path).sums(theta)
    np.testing.assert_allclose(got, ref_binomial(X, codes, theta, sw), rtol=1e-12, atol=1e-10)


def test_binomial_sums_on_cupy_match_reference(rng):
    cp = pytest.importorskip("cupy")
    from dlogit._xp import cupy_available

    if not cupy_available():
        pytest.skip("needs a CUDA GPU")
    X, codes, sw, layout, theta = _problem(rng, weighted=True)
    got = to_numpy(prepare_chunk(cp.asarray(X), codes, cp.asarray(sw), layout, BIN).sums(cp.asarray(theta)))
    np.testing.assert_allclose(got, ref_binomial(X, codes, theta, sw), rtol=1e-10, atol=1e-10)


test_binomial_sums_on_cupy_match_reference = pytest.mark.gpu(test_binomial_sums_on_cupy_match_reference)


def test_sums_at_huge_margins_stay_finite(binomial_path):
    X = np.array([[1000.0], [-1000.0], [1000.0], [-1000.0], [1000.0]])
    codes = np.array([0, 1, 1, 0, 0])
    s = _binomial(X, codes, None, ParamLayout(1, 1), binomial_path).sums(np.array([1.0, 0.0]))
    # rows 1, 2 and 5 are wrong by a margin of 1000 (loss 1000, residual +-1); rows 3 and 4 are right
    np.testing.assert_array_equal(s, [3000.0, 3000.0, 1.0])
    Z = LinearChunk(np.array([[1000.0], [-1000.0]]), np.array([1, 2]), None, ParamLayout(1, 3), MULTI)
    m = Z.sums(np.array([1.0, 0.0, -1.0, 0.0, 0.0, 0.0]))
    assert np.all(np.isfinite(m)) and m[0] == 1000.0  # row 1 wrong by 1000, row 2 right


def test_residual_keeps_relative_precision_for_well_classified_rows(binomial_path):
    """sigma * sigmoid(s) instead of sigmoid(z) - y: at z = 40, y = 1 the residual is -exp(-40), not 0."""
    X = np.array([[40.0], [-40.0]])
    s = _binomial(X, np.array([1, 0]), None, ParamLayout(1, 1), binomial_path).sums(np.array([1.0, 0.0]))
    assert s[1] == pytest.approx(-2 * 40.0 * np.exp(-40.0), rel=1e-12, abs=0)
    assert s[2] == pytest.approx(0.0, abs=1e-30)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(400, 784), (1, 3), (4, 64), (1001, 65), (0, 5)])
def test_fused_kernel_matches_the_blas_path(rng, dtype, shape):
    """The fused kernel (groups of four rows and a remainder) gives the BLAS path's sums: to rounding in
    float64, to float32 precision on float32 chunks (it keeps w in float64, BLAS rounds it)."""
    n, d = shape
    X = rng.standard_normal((n, d)).astype(dtype)
    codes = rng.integers(0, 2, n)
    layout = ParamLayout(d, 1)
    theta = np.r_[rng.standard_normal(d) * 0.1, 0.3]
    fused = DenseBinomialCPU(X, codes, None, layout, kernel="fused")
    assert fused.kernel == "fused"
    got = fused.sums(theta)
    want = DenseBinomialCPU(X, codes, None, layout, kernel="blas").sums(theta)
    ref = ref_binomial(X, codes, theta)
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)  # float64 math on float32 data
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for k in range(3):  # repeated evaluation: nothing of one call leaks into the next
        theta = rng.standard_normal(d + 1) * (k + 1)
        np.testing.assert_array_equal(fused.sums(theta),
                                      DenseBinomialCPU(X, codes, None, layout, kernel="fused").sums(theta))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blocked_path_reuses_buffers_without_leaking_state(rng, monkeypatch, dtype):
    """One chunk evaluated at many thetas (several cache blocks, a short last block) equals a fresh
    evaluation each time, and the blocked sums equal the one-block sums."""
    from dlogit import chunks

    X = rng.standard_normal((1050, 12)).astype(dtype)
    codes = rng.integers(0, 2, 1050)
    layout = ParamLayout(12, 1)
    thetas = [rng.standard_normal(13) * (k + 1) for k in range(4)]
    one = [DenseBinomialCPU(X, codes, None, layout, kernel="blas").sums(t) for t in thetas]
    monkeypatch.setattr(chunks.blocks, "CPU_BLOCK_BYTES", 100 * 12 * np.dtype(dtype).itemsize)  # 100-row blocks
    chunk = DenseBinomialCPU(X, codes, None, layout, kernel="blas")
    assert len(chunk.blocks.ranges) == 11
    for t, whole in zip(thetas, one):
        got = chunk.sums(t)
        np.testing.assert_array_equal(got, DenseBinomialCPU(X, codes, None, layout, kernel="blas").sums(t))
        np.testing.assert_allclose(got, whole, rtol=1e-12 if dtype == np.float64 else 1e-5, atol=1e-9)


def _awkward(X, how):
    if how == "unaligned":
        buf = np.empty(X.nbytes + 1, dtype=np.uint8)
        out = np.frombuffer(buf.data, dtype=X.dtype, count=X.size, offset=1).reshape(X.shape)
        out[...] = X
        assert not out.flags.aligned
        return out
    if how == "fortran":
        return np.asfortranarray(X)
    if how == "read-only":
        out = X.copy()
        out.setflags(write=False)
        return out
    if how == "strided":
        wide = np.zeros((X.shape[0], 2 * X.shape[1]), X.dtype)
        wide[:, ::2] = X
        return wide[:, ::2]
    raise ValueError(how)


@pytest.mark.parametrize("kernel", ["blas", "fused"])
@pytest.mark.parametrize("how", ["unaligned", "fortran", "read-only", "strided"])
def test_awkward_layouts_give_identical_sums_without_copying_the_chunk(rng, monkeypatch, kernel, how):
    from dlogit import chunks

    monkeypatch.setattr(chunks.blocks, "CPU_BLOCK_BYTES", 64 * 200 * 8)  # several blocks
    X = rng.standard_normal((500, 200))
    codes = rng.integers(0, 2, 500)
    layout = ParamLayout(200, 1)
    theta = rng.standard_normal(201) * 0.1
    want = DenseBinomialCPU(X, codes, None, layout, kernel=kernel).sums(theta)
    odd = _awkward(X, how)
    chunk = DenseBinomialCPU(odd, codes, None, layout, kernel=kernel)
    assert chunk.blocks.X is odd  # the chunk itself is kept, never copied whole
    if how != "read-only":
        assert not chunk.blocks.direct and chunk.blocks._scratch.shape[0] <= 64
    np.testing.assert_allclose(chunk.sums(theta), want, rtol=1e-13, atol=1e-13)


def test_memory_mapped_and_converted_dtypes(rng, tmp_path):
    X = rng.standard_normal((300, 40))
    codes = rng.integers(0, 2, 300)
    layout = ParamLayout(40, 1)
    theta = rng.standard_normal(41) * 0.1
    np.save(tmp_path / "x.npy", X)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_array_equal(DenseBinomialCPU(mm, codes, None, layout).sums(theta),
                                  DenseBinomialCPU(X, codes, None, layout).sums(theta))
    Xi = (X * 10).astype(np.int32)  # converted per block, in float64
    blocks = Blocks(Xi)
    assert blocks.dtype == np.float64 and not blocks.direct
    np.testing.assert_allclose(DenseBinomialCPU(Xi, codes, None, layout).sums(theta),
                               ref_binomial(Xi.astype(float), codes, theta), rtol=1e-12)
    X16 = X[:, :8].astype(np.float16)  # held as float32 (exact)
    assert Blocks(X16).dtype == np.float32


# -- multinomial and sparse --------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", ["dense", "csr-numba", "csr-scipy"])
def test_multinomial_sums_match_reference(rng, weighted, kind):
    X, codes, sw, layout, theta = _problem(rng, n=257, d=9, K=4, weighted=weighted)
    if kind.startswith("csr"):
        X = sp.csr_matrix(np.where(rng.random(X.shape) < 0.3, X, 0.0))
    chunk = prepare_chunk(X, codes, sw, layout, MULTI, kernel="blas" if kind == "csr-scipy" else "auto")
    assert chunk.kernel == {"dense": "blas", "csr-numba": "csr", "csr-scipy": "scipy"}[kind]
    np.testing.assert_allclose(chunk.sums(theta), ref_multinomial(X, codes, theta, 4, sw), rtol=1e-12,
                               atol=1e-10)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kernel", ["auto", "blas"])
def test_csr_binomial_equals_dense(rng, weighted, kernel):
    X, codes, sw, layout, theta = _problem(rng, n=400, d=30, weighted=weighted)
    X[rng.random(X.shape) < 0.8] = 0.0
    dense = prepare_chunk(X, codes, sw, layout, BIN).sums(theta)
    for fmt in ("csr", "csc", "coo"):
        chunk = prepare_chunk(sp.csr_matrix(X).asformat(fmt), codes, sw, layout, BIN, kernel=kernel)
        assert chunk.kernel == ("csr" if kernel == "auto" else "scipy")
        np.testing.assert_allclose(chunk.sums(theta), dense, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not cpu.available(), reason="numba not installed")
def test_wide_csr_chunks_take_the_scipy_products(rng):
    """Each one-pass CSR kernel owns its width limit (no table keyed by the family's name)."""
    from dlogit import chunks

    for fam, kern, K in ((BIN, chunks.CSRBinomialCPU, 2), (MULTI, chunks.CSRMultinomialCPU, 3)):
        for d, expect in ((kern.max_features, "csr"), (kern.max_features + 1, "scipy")):
            X = sp.random(50, d, density=1e-3, format="csr", random_state=0)
            layout = ParamLayout(d, 1 if K == 2 else K)
            assert prepare_chunk(X, rng.integers(0, K, 50), None, layout, fam).kernel == expect, (fam, d)
    assert chunks.CSRMultinomialCPU.max_features < chunks.CSRBinomialCPU.max_features


def test_integer_weights_equal_duplicated_rows(rng):
    for K in (2, 3):
        X, codes, _, layout, theta = _problem(rng, n=120, d=6, K=K)
        sw = rng.integers(0, 4, 120).astype(float)
        fam = BIN if K == 2 else MULTI
        dup = np.repeat(np.arange(120), sw.astype(int))
        a = prepare_chunk(X, codes, sw, layout, fam).sums(theta)
        b = prepare_chunk(X[dup], codes[dup], None, layout, fam).sums(theta)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# -- the objective: gradients and H.v against finite differences ----------------------------------

@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("case", ["binomial-blas", "binomial-fused", "binomial-csr", "binomial-scipy",
                                  "multinomial", "multinomial-csr", "multinomial-scipy"])
def test_objective_gradient_and_hvp_match_finite_differences(rng, case, weighted, fit_intercept):
    K = 3 if case.startswith("multinomial") else 2
    X, codes, sw, layout, theta = _problem(rng, n=150, d=5, K=K, weighted=weighted)
    if case.endswith(("csr", "scipy")):
        X[rng.random(X.shape) < 0.5] = 0.0
        X = sp.csr_matrix(X)
    fam = BIN if K == 2 else MULTI
    kernel = {"binomial-blas": "blas", "binomial-fused": "fused", "binomial-scipy": "blas",
              "multinomial-scipy": "blas"}.get(case, "auto")
    chunk = prepare_chunk(X, codes, sw, layout, fam, kernel=kernel, curvature=True)
    obj = Objective(layout, float(sw.sum()) if weighted else 150.0, l2=0.05, fit_intercept=fit_intercept)
    if not fit_intercept:
        layout.intercept(theta)[:] = 0.0

    def f(t):
        return obj.finalize(chunk.sums(t), t)[0]

    def g(t):
        return obj.finalize(chunk.sums(t), t)[1]

    grad = g(theta)
    fd = approx_fprime(theta, f, 1e-7)
    if not fit_intercept:
        fd[layout.n_outputs * layout.n_features:] = 0.0
        assert np.all(grad[layout.n_outputs * layout.n_features:] == 0.0)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)
    v = rng.standard_normal(layout.size)
    hv = obj.hvp_finalize(chunk.hvp(chunk.sums(theta, keep_curvature=True), v), v)
    eps = 1e-6
    fd_hv = (g(theta + eps * v) - g(theta - eps * v)) / (2 * eps)
    if not fit_intercept:
        fd_hv[layout.n_outputs * layout.n_features:] = 0.0
    np.testing.assert_allclose(hv, fd_hv, rtol=1e-5, atol=1e-7)


def test_intercept_is_not_penalized(rng):
    X = rng.standard_normal((50, 3))
    codes = rng.integers(0, 2, 50)
    layout = ParamLayout(3, 1)
    theta = np.array([0.0, 0.0, 0.0, 5.0])
    s = chunk_sums(X, codes, theta)
    lo, go = Objective(layout, 50, 0.0).finalize(s, theta)
    lp, gp = Objective(layout, 50, 10.0).finalize(s, theta)
    assert lo == lp and go[-1] == gp[-1]


def test_fused_kernel_takes_read_only_arrays_without_recompiling(rng):
    """A distributed step hands the chunk a read-only theta (np.frombuffer), and memory-mapped chunks
    are read-only: after the worker warm-up neither may compile a new variant inside a fit."""
    from dlogit.worker import warm_up

    warm_up()
    variants = len(cpu.dense_binomial_sums.signatures)
    for dtype in (np.float64, np.float32):
        X = rng.standard_normal((41, 130)).astype(dtype)
        codes = rng.integers(0, 2, 41)
        theta = rng.standard_normal(131)
        want = chunk_sums(X, codes, theta, kernel="fused")
        X.setflags(write=False)
        ro_theta = np.frombuffer(theta.tobytes())
        assert not ro_theta.flags.writeable
        np.testing.assert_array_equal(chunk_sums(X, codes, ro_theta, kernel="fused"), want)
    assert len(cpu.dense_binomial_sums.signatures) == variants


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", ["fused", "fused-weighted", "blas", "blas-weighted", "multinomial",
                                  "multinomial-weighted"])
@pytest.mark.parametrize("how", ["unaligned", "fortran"])
def test_a_chunk_gives_the_same_bits_wherever_it_lands(rng, case, dtype, how):
    """An aligned chunk and an unaligned (or Fortran-ordered) copy of it -- what ``da.from_array`` and
    Dask's deserialization hand a worker -- give bit-identical sums and H.v at the default block size
    (several cache blocks, a short last one), for every dense CPU path."""
    n, d = 6001, 200
    X = rng.standard_normal((n, d)).astype(dtype)
    multinomial = case.startswith("multinomial")
    K = 3 if multinomial else 2
    codes = rng.integers(0, K, n)
    sw = rng.uniform(0.1, 3.0, n) if case.endswith("weighted") else None
    layout = ParamLayout(d, K if multinomial else 1)
    family = Multinomial() if multinomial else Binomial()
    kernel = "blas" if multinomial else case.split("-")[0]
    if kernel == "fused" and not cpu.available():
        pytest.skip("numba is not installed")
    theta = rng.standard_normal(layout.size) * 0.05
    v = rng.standard_normal(layout.size)
    odd = _awkward(X, how)
    chunks = [prepare_chunk(A, codes, sw, layout, family, kernel=kernel, curvature=True) for A in (X, odd)]
    assert chunks[0].blocks.direct and not chunks[1].blocks.direct
    assert len(chunks[0].blocks.ranges) > 1
    if not multinomial:
        assert chunks[0].kernel == chunks[1].kernel == kernel
    np.testing.assert_array_equal(chunks[1].sums(theta), chunks[0].sums(theta))
    h0, h1 = (c.sums(theta, keep_curvature=True) for c in chunks)
    np.testing.assert_array_equal(h1.sums, h0.sums)
    np.testing.assert_array_equal(chunks[1].hvp(h1, v), chunks[0].hvp(h0, v))


@pytest.mark.parametrize("case", ["dense-blas", "dense-fused", "dense-multi", "linear", "linear-multi", "csr",
                                  "csr-multi"])
def test_curvature_is_an_explicit_handle(rng, case):
    """``sums(theta, keep_curvature=True)`` returns a handle with the same sums; ``hvp(handle, v)`` is the
    H.v at that theta whatever was evaluated since; a handle whose buffers a later keep-curvature call
    reused, another chunk's handle, or a chunk prepared without curvature are refused."""
    multi = case.endswith("multi")
    K = 3 if multi else 2
    fam = MULTI if multi else BIN
    X, codes, sw, layout, theta = _problem(rng, n=300, d=7, K=K, weighted=True)
    if case.startswith("csr"):
        X = sp.csr_matrix(np.where(rng.random(X.shape) < 0.4, X, 0.0))
    if case == "dense-fused" and not cpu.available():
        pytest.skip("numba is not installed")

    def make(curvature=True):
        if case.startswith("linear"):
            return LinearChunk(X, codes, sw, layout, fam, curvature=curvature)
        kernel = {"dense-blas": "blas", "dense-fused": "fused"}.get(case, "auto")
        return prepare_chunk(X, codes, sw, layout, fam, kernel=kernel, curvature=curvature)

    chunk, other = make(), make()
    v = rng.standard_normal(layout.size)
    h = chunk.sums(theta, keep_curvature=True)
    np.testing.assert_array_equal(h.sums, chunk.sums(theta))
    want = chunk.hvp(h, v)
    chunk.sums(theta + 1.0)  # a plain evaluation elsewhere keeps the handle valid
    np.testing.assert_array_equal(chunk.hvp(h, v), want)
    h2 = chunk.sums(theta + 1.0, keep_curvature=True)
    assert not np.array_equal(chunk.hvp(h2, v), want)
    with pytest.raises(RuntimeError, match="stale curvature handle"):
        chunk.hvp(h, v)
    with pytest.raises(TypeError, match="handle of this chunk"):
        other.hvp(h2, v)
    with pytest.raises(TypeError, match="handle of this chunk"):
        chunk.hvp(theta, v)
    plain = make(curvature=False)
    for call in (lambda: plain.sums(theta, keep_curvature=True), lambda: plain.hvp(h2, v)):
        with pytest.raises(RuntimeError, match="prepared without curvature"):
            call()
