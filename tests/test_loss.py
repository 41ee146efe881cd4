"""Per-chunk math: stability, gradients against finite differences, CPU blocking, NumPy vs CuPy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import approx_fprime

from dlogit._xp import to_numpy
from dlogit.errors import ConfigError
from dlogit.kernels import cpu
from dlogit.loss import PreparedChunk, choose_cpu_kernel, chunk_sums, log1pexp, log_sigmoid, sigmoid
from dlogit.objective import Objective


@pytest.fixture(params=["blas", "fused"])
def kernel(request, xp):
    """Both CPU paths: BLAS (two passes over cache blocks) and the fused one-pass Numba kernel."""
    if xp is not np and request.param == "fused":
        pytest.skip("the CPU kernel choice does not apply to CuPy chunks")
    return request.param


def reference_sums(X, y, theta, fit_intercept=True):
    X = np.asarray(X, dtype=np.float64)
    z = X @ theta[:-1] + (theta[-1] if fit_intercept else 0.0)
    p = 1 / (1 + np.exp(-z))
    loss = np.sum(np.logaddexp(0, z) - y * z)
    r = p - y
    return np.concatenate([[loss], X.T @ r, [r.sum() if fit_intercept else 0.0], [len(y)]])


def test_log1pexp_is_finite_and_exact_at_extremes(xp):
    z = xp.asarray([-1000.0, -40.0, -5.0, 0.0, 5.0, 40.0, 1000.0])
    got = to_numpy(log1pexp(z))
    assert np.all(np.isfinite(got))
    assert got[-1] == 1000.0
    assert got[0] == 0.0 and got[1] == pytest.approx(np.exp(-40.0), rel=1e-12)
    assert got[3] == pytest.approx(np.log(2.0), rel=1e-15)
    ls = to_numpy(log_sigmoid(z))
    assert ls[0] == -1000.0 and ls[-1] == 0.0
    s = to_numpy(sigmoid(z))
    assert s[0] == pytest.approx(np.exp(-1000.0)) and s[-1] == 1.0 and s[3] == 0.5


def test_chunk_sums_at_huge_margins_stay_finite(xp, kernel):
    X = xp.asarray([[1000.0], [-1000.0], [1000.0], [-1000.0], [1000.0]])
    y = xp.asarray([0.0, 1.0, 1.0, 0.0, 0.0])
    s = to_numpy(chunk_sums(X, y, xp.asarray([1.0, 0.0]), kernel=kernel))
    assert np.all(np.isfinite(s))
    # rows 1, 2 and 5 are wrong by a margin of 1000 (loss 1000, residual +-1); rows 3 and 4 are right
    np.testing.assert_array_equal(s, [3000.0, 3000.0, 1.0, 5.0])


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_chunk_sums_match_reference(xp, rng, fit_intercept, kernel):
    X = rng.standard_normal((303, 17))
    y = (rng.random(303) < 0.4).astype(float)
    theta = rng.standard_normal(18)
    got = to_numpy(chunk_sums(xp.asarray(X), xp.asarray(y), xp.asarray(theta), fit_intercept, kernel))
    np.testing.assert_allclose(got, reference_sums(X, y, theta, fit_intercept), rtol=1e-12, atol=1e-10)


def test_blocked_cpu_path_equals_one_block(rng, monkeypatch):
    import dlogit.loss as loss

    X = rng.standard_normal((5000, 40))
    y = (rng.random(5000) < 0.5).astype(float)
    theta = rng.standard_normal(41) * 0.1
    one = loss.chunk_sums(X, y, theta)
    monkeypatch.setattr(loss, "CPU_BLOCK_BYTES", 64 * 40 * 8)  # 64-row blocks: 79 blocks
    many = loss.chunk_sums(X, y, theta)
    np.testing.assert_allclose(many, one, rtol=1e-12)
    np.testing.assert_allclose(many, reference_sums(X, y, theta), rtol=1e-12)


def test_float32_chunks_accumulate_in_float64(xp, rng, kernel):
    X = rng.standard_normal((20000, 8)).astype(np.float32)
    y = (rng.random(20000) < 0.5).astype(np.float32)
    theta = rng.standard_normal(9)
    theta32 = np.concatenate([theta[:-1].astype(np.float32), theta[-1:]])
    got = to_numpy(chunk_sums(xp.asarray(X), xp.asarray(y), xp.asarray(theta), kernel=kernel))
    assert got.dtype == np.float64
    # the fused kernel multiplies by w in float64; BLAS uses w rounded to float32, as the reference
    ref_theta = theta if kernel == "fused" and xp is np else theta32.astype(np.float64)
    np.testing.assert_allclose(got, reference_sums(X, y, ref_theta), rtol=1e-5)


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("kernel", ["blas", "fused"])
def test_objective_gradient_matches_finite_differences(rng, fit_intercept, kernel):
    X = rng.standard_normal((201, 6))
    y = (rng.random(201) < 0.5).astype(float)
    obj = Objective(l2=0.05, fit_intercept=fit_intercept)

    def f(theta):
        return obj.finalize(chunk_sums(X, y, theta, fit_intercept, kernel), theta)[0]

    theta = rng.standard_normal(7)
    if not fit_intercept:
        theta[-1] = 0.0
    _, grad = obj.finalize(chunk_sums(X, y, theta, fit_intercept, kernel), theta)
    fd = approx_fprime(theta, f, 1e-7)
    if not fit_intercept:
        fd[-1] = 0.0
        assert grad[-1] == 0.0
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


def test_intercept_is_not_penalized(rng):
    X = rng.standard_normal((50, 3))
    y = (rng.random(50) < 0.5).astype(float)
    theta = np.array([0.0, 0.0, 0.0, 5.0])
    lo, go = Objective(0.0).finalize(chunk_sums(X, y, theta), theta)
    lp, gp = Objective(10.0).finalize(chunk_sums(X, y, theta), theta)
    assert lo == lp and go[-1] == gp[-1]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_prepared_chunk_reuses_buffers_without_leaking_state(rng, monkeypatch, dtype):
    """One PreparedChunk evaluated at many thetas (several cache blocks, a short last block) equals a
    fresh evaluation each time: nothing of one call survives into the next."""
    import dlogit.loss as loss

    monkeypatch.setattr(loss, "CPU_BLOCK_BYTES", 100 * 12 * np.dtype(dtype).itemsize)  # 100-row blocks
    X = rng.standard_normal((1050, 12)).astype(dtype)
    y = (rng.random(1050) < 0.3).astype(dtype)
    chunk = loss.PreparedChunk(X, y, kernel="blas")
    assert len(chunk._plan) == 11
    for k in range(4):
        theta = rng.standard_normal(13) * (k + 1)
        got = chunk.sums(theta)
        again = loss.PreparedChunk(X, y, kernel="blas").sums(theta)
        np.testing.assert_array_equal(got, again)
        ref = reference_sums(X.astype(np.float64), y, np.r_[theta[:-1].astype(dtype), theta[-1]])
        np.testing.assert_allclose(got, ref, rtol=1e-12 if dtype == np.float64 else 1e-5, atol=1e-9)


@pytest.mark.parametrize("kernel", ["blas", "fused"])
def test_residual_keeps_relative_precision_for_well_classified_rows(kernel):
    """sigma * sigmoid(s) instead of sigmoid(z) - y: at z = 40, y = 1 the residual is -exp(-40), not 0."""
    X = np.array([[40.0], [-40.0]])
    y = np.array([1.0, 0.0])
    s = chunk_sums(X, y, np.array([1.0, 0.0]), kernel=kernel)
    assert s[1] == pytest.approx(-2 * 40.0 * np.exp(-40.0), rel=1e-12)
    assert s[2] == pytest.approx(0.0, abs=1e-30)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("shape", [(400, 784), (1, 3), (4, 64), (1001, 65), (0, 5)])
def test_fused_kernel_matches_the_blas_path(rng, dtype, fit_intercept, shape):
    """The fused kernel (groups of four rows and a remainder) gives the BLAS path's sums: to rounding in
    float64, to float32 precision on float32 chunks (it keeps w in float64, BLAS rounds it)."""
    n, d = shape
    X = rng.standard_normal((n, d)).astype(dtype)
    y = (rng.random(n) < 0.5).astype(dtype)
    theta = np.r_[rng.standard_normal(d) * 0.1, 0.3]
    fused = PreparedChunk(X, y, fit_intercept, "fused")
    assert fused.kernel == "fused"
    got = fused.sums(theta)
    want = PreparedChunk(X, y, fit_intercept, "blas").sums(theta)
    ref = reference_sums(X, y, theta, fit_intercept)
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)  # float64 math on float32 data
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for k in range(3):  # repeated evaluation: nothing of one call leaks into the next
        theta = rng.standard_normal(d + 1) * (k + 1)
        np.testing.assert_array_equal(fused.sums(theta), PreparedChunk(X, y, fit_intercept, "fused").sums(theta))


def test_cpu_kernel_policy(monkeypatch):
    f8, f4 = np.float64, np.float32
    assert choose_cpu_kernel("auto", 400, 784, f8) == "fused"  # the textbook chunk
    assert choose_cpu_kernel("auto", 200_000, 784, f8, threads=1) == "fused"  # wide rows: any chunk size
    assert choose_cpu_kernel("auto", 10000, 32, f8) == "blas"  # narrow rows: per-row exp/log1p dominate
    assert choose_cpu_kernel("auto", 10000, 127, f4) == "blas" and choose_cpu_kernel("auto", 9, 128, f4) == "fused"
    assert choose_cpu_kernel("blas", 400, 784, f8) == "blas"
    assert choose_cpu_kernel("fused", 10**6, 2, f4) == "fused"
    for odd in (np.float16, np.longdouble):  # not compiled for these: BLAS, even when fused is asked for
        assert choose_cpu_kernel("auto", 400, 784, odd) == choose_cpu_kernel("fused", 400, 784, odd) == "blas"
    X16 = np.random.default_rng(0).standard_normal((8, 200)).astype(np.float16)
    y16 = np.arange(8.0) % 2
    theta = np.full(201, 0.01)
    for kernel, want in (("auto", "fused"), ("blas", "blas")):  # float16 chunks are held as float32
        half = PreparedChunk(X16, y16, kernel=kernel)
        assert half.X.dtype == np.float32 and half.kernel == want
        ref_theta = theta if want == "fused" else theta.astype(np.float32).astype(np.float64)
        np.testing.assert_allclose(half.sums(theta), reference_sums(X16, y16, ref_theta), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cpu kernel must be one of"):
        choose_cpu_kernel("fast", 4, 4, f8)
    monkeypatch.setattr(cpu, "numba", None)  # an install without Numba: auto falls back to BLAS
    assert choose_cpu_kernel("auto", 400, 784, f8) == "blas"
    assert PreparedChunk(np.ones((400, 784)), np.zeros(400)).kernel == "blas"
    with pytest.raises(ConfigError, match="numba is not installed"):
        choose_cpu_kernel("fused", 400, 784, f8)


def test_cpu_kernel_policy_leaves_big_chunks_to_threaded_blas(monkeypatch):
    """The fused kernel is one thread: where BLAS has several (an in-process fit on a many-core machine)
    chunks over FUSED_MAX_BYTES_THREADED_BLAS go to BLAS; on Dask workers (one BLAS thread) they don't."""
    from dlogit.loss import FUSED_MAX_BYTES_THREADED_BLAS, blas_threads

    big = FUSED_MAX_BYTES_THREADED_BLAS // (784 * 8) + 1
    assert choose_cpu_kernel("auto", big, 784, np.float64, threads=8) == "blas"
    assert choose_cpu_kernel("auto", big - 1, 784, np.float64, threads=8) == "fused"
    assert choose_cpu_kernel("auto", big, 784, np.float64, threads=1) == "fused"
    assert choose_cpu_kernel("fused", big, 784, np.float64, threads=8) == "fused"
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert blas_threads() == 3
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # what distributed sets in worker processes
    assert blas_threads() == 1
    assert choose_cpu_kernel("auto", big, 784, np.float64) == "fused"


def test_fused_kernel_takes_read_only_arrays_without_recompiling(rng):
    """A distributed step hands the chunk a read-only theta (np.frombuffer), and memory-mapped chunks
    are read-only: after the worker warm-up neither may compile a new variant inside a fit."""
    from dlogit.worker import warm_up

    warm_up()
    variants = len(cpu.fused_sums.signatures)
    for dtype in (np.float64, np.float32):
        X = rng.standard_normal((41, 130)).astype(dtype)
        y = (rng.random(41) < 0.5).astype(float)
        theta = rng.standard_normal(131)
        want = chunk_sums(X, y, theta, kernel="fused")
        X.setflags(write=False)
        ro_theta = np.frombuffer(theta.tobytes())
        assert not ro_theta.flags.writeable
        np.testing.assert_array_equal(PreparedChunk(X, y, kernel="fused").sums(ro_theta), want)
    assert len(cpu.fused_sums.signatures) == variants
