"""Stable scalar math (dlogit.loss) and the CPU kernel policy (dlogit.kernels.policy)."""

from __future__ import annotations

import numpy as np
import pytest

from dlogit._xp import to_numpy
from dlogit.errors import ConfigError
from dlogit.kernels import cpu
from dlogit.kernels.policy import choose_cpu_kernel
from dlogit.loss import log1pexp, log_sigmoid, sigmoid


def test_log1pexp_is_finite_and_exact_at_extremes(xp):
    z = xp.asarray([-1000.0, -40.0, -5.0, 0.0, 5.0, 40.0, 1000.0])
    got = to_numpy(log1pexp(z))
    assert np.all(np.isfinite(got))
    assert got[-1] == 1000.0
    assert got[0] == 0.0 and got[1] == pytest.approx(np.exp(-40.0), rel=1e-12, abs=0)
    assert got[3] == pytest.approx(np.log(2.0), rel=1e-15)
    ls = to_numpy(log_sigmoid(z))
    assert ls[0] == -1000.0 and ls[-1] == 0.0
    s = to_numpy(sigmoid(z))
    assert s[0] == pytest.approx(np.exp(-1000.0), abs=1e-320) and s[-1] == 1.0 and s[3] == 0.5


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
    with pytest.raises(ValueError, match="cpu kernel must be one of"):
        choose_cpu_kernel("fast", 4, 4, f8)
    monkeypatch.setattr(cpu, "available", lambda: False)  # an install without Numba: auto falls back to BLAS
    assert choose_cpu_kernel("auto", 400, 784, f8) == "blas"
    with pytest.raises(ConfigError, match="numba is not installed"):
        choose_cpu_kernel("fused", 400, 784, f8)


def test_cpu_kernel_policy_leaves_big_chunks_to_threaded_blas(monkeypatch):
    """The fused kernel is one thread: where BLAS has several (an in-process fit on a many-core machine)
    chunks over FUSED_MAX_BYTES_THREADED_BLAS go to BLAS; on Dask workers (one BLAS thread) they don't."""
    from dlogit.kernels.policy import FUSED_MAX_BYTES_THREADED_BLAS, blas_threads

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
