"""The CPU kernel policy: which CPU path evaluates a dense binomial chunk (``choose_cpu_kernel``), and the
BLAS threads that decision reads (``blas_threads``, ``single_threaded_blas``, ``cpu_threads``).

The kernels are :mod:`dlogit.kernels.cpu` (fused, Numba) and the BLAS path of the chunk evaluators; the
numbers behind the thresholds are in BENCHMARKS.md ("CPU kernel choice").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from dlogit.errors import ConfigError

#: bytes of X per cache block on the CPU path: X is read from memory once, each block re-read from cache
CPU_BLOCK_BYTES = 4 << 20

#: ``kernel="auto"`` uses the fused one-pass CPU kernel for chunks with at least this many features.
#: Measured on one thread (BENCHMARKS.md, "CPU kernel choice"): fused/BLAS time 0.55-0.95 for d >= 256 at
#: every chunk size from 0.5 to 128 MiB, mixed around d = 100, and mostly slower (up to 2x) for d <= 64,
#: where the per-row scalar exp/log1p cost more than the second (cached) pass over X that fusion saves.
FUSED_MIN_FEATURES = 128
#: The fused kernel runs on one thread. Where BLAS has several (a process that set none; Dask workers and
#: in-process fits, see :func:`single_threaded_blas`, run one per thread), ``auto`` leaves chunks larger
#: than this to multithreaded BLAS.
FUSED_MAX_BYTES_THREADED_BLAS = 4 << 20

CPU_KERNELS = ("auto", "fused", "blas")


_BLAS_LIMITED = [0]  # fits inside single_threaded_blas() now


def cpu_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS (OpenBLAS, MKL, OpenMP) on one thread for the duration (process-wide, via threadpoolctl):
    an in-process fit runs one BLAS call per pool thread instead of threads that wait for each other at
    every small call. :func:`blas_threads` reads 1 meanwhile."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        limits: Any = contextlib.nullcontext()
    else:
        limits = threadpool_limits(1)
    with limits:
        _BLAS_LIMITED[0] += 1
        try:
            yield
        finally:
            _BLAS_LIMITED[0] -= 1


def blas_threads() -> int:
    """Threads BLAS will use in this process: 1 inside :func:`single_threaded_blas`, else from the
    variables OpenBLAS/MKL/OpenMP read at start-up (Dask worker processes get ``OPENBLAS_NUM_THREADS=1``),
    else the CPUs this process may run on."""
    if _BLAS_LIMITED[0]:
        return 1
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return cpu_threads()


def choose_cpu_kernel(kernel: str, n: int, d: int, dtype: Any, threads: int | None = None) -> str:
    """Which CPU path evaluates an ``(n, d)`` chunk of ``dtype``: ``"fused"`` (one pass, Numba) or ``"blas"``.

    ``kernel`` is ``"auto"``, ``"fused"`` (always; an error without Numba) or ``"blas"`` (never). ``auto``
    picks fused when Numba is installed, ``d >= FUSED_MIN_FEATURES``, and either BLAS has one thread
    (``threads``, default :func:`blas_threads`) or the chunk is at most ``FUSED_MAX_BYTES_THREADED_BLAS``.
    The fused kernel is compiled for float32 and float64 chunks only; other float dtypes (longdouble)
    always take the BLAS path.
    """
    if kernel not in CPU_KERNELS:
        raise ValueError(f"cpu kernel must be one of {', '.join(CPU_KERNELS)}, not {kernel!r}")
    dtype = np.dtype(dtype)
    if kernel == "blas" or dtype not in (np.float32, np.float64):
        return "blas"
    from dlogit.kernels import cpu

    if kernel == "fused":
        if not cpu.available():
            raise ConfigError("dlogit.cpu-kernel is 'fused' but numba is not installed here")
        return "fused"
    if d < FUSED_MIN_FEATURES or not cpu.available():
        return "blas"
    if n * d * dtype.itemsize > FUSED_MAX_BYTES_THREADED_BLAS and (
            blas_threads() if threads is None else threads) > 1:
        return "blas"
    return "fused"
