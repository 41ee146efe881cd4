"""Worker preload: ``dask worker --preload dlogit.worker`` (local clusters get it automatically).

It imports the chunk math and the solvers, makes tiny BLAS calls, and starts loading the fused CPU
kernels from the disk cache in a background thread (never compiling them: see
:mod:`dlogit.kernels.cache`), so that neither the worker's start nor a first fit on the BLAS path waits
for Numba (~1 s, more on a busy machine); a fused fit waits only for what is left of that load. Loading dlogit lazily on a worker without this preload still
works; it is only slower the first time.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

import dlogit.engine
import dlogit.solvers  # noqa: F401  (every solver)
from dlogit.chunks import chunk_sums
from dlogit.kernels import cpu

#: the thread loading the fused kernels after :func:`dask_setup` returned (``None``: none was started)
_loader: threading.Thread | None = None


def warm_up(background: bool = False) -> threading.Thread | None:
    """Evaluate tiny chunks with every CPU kernel: initializes BLAS, NumPy's ufunc loops and every
    compiled variant a fit can meet in this process: the fused dense kernels on float64 and float32
    chunks, writable or read-only (as from a memory map), weighted or not, with or without curvature,
    and the CSR kernels (:mod:`dlogit.kernels.sparse`) on float64/float32 data with int32/int64 indices,
    writable or read-only. The fixed-signature kernels load from the disk cache when their module is
    imported; calling them here also registers the read-only conversions. When the cache is not filled
    yet (:func:`dlogit.kernels.cache.ready`), only the BLAS path is warmed: nothing compiles here (the
    fits meanwhile use BLAS/SciPy, and a background process fills the cache).

    With ``background`` the fused kernels load in a thread of their own (returned), after the BLAS path
    is warm: the worker starts without waiting ~1 s for Numba. A fit whose spec chose the fused kernels
    (``dlogit.cpu-kernel``, resolved once per fit on the client) then waits, in its first fused
    evaluation, for that thread's import of the kernel module (Python's import lock): the kernel a
    chunk uses never depends on timing; a BLAS evaluation does not wait."""
    from dlogit.kernels import cache

    fused = cpu.available() and cache.ready()  # never compile here: not ready, fits take BLAS/SciPy
    y = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    for dtype in (np.float64, np.float32):
        X = np.ones((5, 2), dtype=dtype)
        chunk_sums(X, y, np.zeros(3), kernel="blas")
    if not fused:
        return None
    if background:
        thread = threading.Thread(target=_warm_fused, name="dlogit-kernel-load", daemon=True)
        thread.start()
        return thread
    _warm_fused()
    return None


def _warm_fused() -> None:
    """Load the fused kernels (Numba, from the disk cache) and call every variant once."""
    from dlogit.kernels import sparse

    y = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    for dtype in (np.float64, np.float32):
        for writable in (True, False):
            X = np.ones((5, 2), dtype=dtype)
            X.setflags(write=writable)
            chunk_sums(X, y, np.zeros(3), kernel="fused")

    def frozen(a: np.ndarray, writable: bool) -> np.ndarray:
        a = np.array(a)
        a.setflags(write=writable)
        return a

    sg = 1.0 - 2.0 * y
    none, g, curv = np.empty(0), np.empty(2), np.empty(5)
    cls = np.array([0, 1, 2, 1, 0])
    W, b, G, gb, pbuf = np.zeros((3, 2)), np.zeros(3), np.empty((3, 2)), np.empty(3), np.empty((5, 3))
    csr = sparse.canonical_csr(sparse.CSR(np.ones(4), np.array([0, 1, 1, 0]), np.array([0, 1, 2, 2, 3, 4]),
                                          (5, 2)))
    for writable in (True, False):
        sg_, sw_, w_, cls_, W_, b_ = (frozen(a, writable) for a in (sg, y, np.zeros(2), cls, W, b))
        for dtype in (np.float64, np.float32):
            X = frozen(np.ones((5, 2), dtype=dtype), writable)
            for sw in (none, sw_):
                for dbuf in (none, curv):
                    cpu.dense_binomial_sums(X, sg_, sw, w_, 0.0, g, dbuf)
            for itype in (np.int32, np.int64):
                data, indices, indptr = (frozen(csr.data.astype(dtype), writable),
                                         frozen(csr.indices.astype(itype), writable),
                                         frozen(csr.indptr.astype(itype), writable))
                for sw in (none, sw_):
                    sparse.csr_binomial_sums(data, indices, indptr, sg_, sw, w_, 0.0, g, curv)
                    sparse.csr_binomial_hvp(data, indices, indptr, frozen(curv, writable), w_, 0.0, g)
                    sparse.csr_multinomial_sums(data, indices, indptr, cls_, sw, W_, b_, G, gb, pbuf)
                    sparse.csr_multinomial_hvp(data, indices, indptr, frozen(pbuf, writable), sw, W_, b_,
                                               G, gb)


def quiet_local_worker() -> None:
    """In a worker process of a local cluster started by dlogit: leave Ctrl-C and SIGTERM to the
    parent, and keep NumPy's floating-point warnings off the user's terminal.

    A terminal sends SIGINT to its whole foreground process group, and ``kill -TERM -PGID`` reaches
    every process of a group; the parent then stops the fit at a step boundary and closes the cluster
    in order. So the worker moves to a process group of its own (signals to the user's group no longer
    reach it; the nanny still stops it by pid) and ignores SIGINT.
    """
    import os
    import signal

    from dlogit.config import LOCAL_WORKER_ENV

    if os.environ.get(LOCAL_WORKER_ENV) != "1":
        return
    np.seterr(all="ignore")  # this thread only (NumPy 2 keeps the error state per thread and context)
    import warnings

    # the worker's task threads: a diverging fit's overflow is reported by the fit, in one line
    warnings.filterwarnings("ignore", category=RuntimeWarning, message=r".*encountered in")
    try:
        os.setpgid(0, 0)
    except OSError:  # not permitted here (e.g. already a group leader): SIGINT is still ignored
        pass
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread of the worker process
        pass
    else:  # the CLI starts local workers with SIGINT blocked (dlogit.cli.children_start_without_sigint)
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def tune_malloc() -> bool:
    """Keep freed heap blocks below 4 MiB for reuse (glibc only; ``dlogit.engine.worker-malloc``).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so that freed memory returns to
    the OS; setting it also turns off glibc's adaptive mmap threshold, so every NumPy temporary above
    128 KiB is a fresh ``mmap`` whose pages fault in on first touch, each time. Measured on a fold
    pass (5 models, 50 000 x 50): 5.1 ms with this, 9.6 ms without; the dense statistics pass 3x.
    Blocks of 4 MiB and more (a chunk, a transfer) still come and go by ``mmap``; at most 16 MiB of
    free heap is kept before trimming. Returns whether it applied."""
    import ctypes
    import sys

    from dlogit.config import get_bool

    if not sys.platform.startswith("linux"):
        return False
    if not get_bool("dlogit.engine.worker-malloc"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 4 << 20)) and bool(libc.mallopt(m_trim_threshold, 16 << 20))
    except (OSError, AttributeError):  # not glibc (musl): nothing to tune
        return False


def dask_setup(worker: Any) -> None:
    global _loader
    quiet_local_worker()
    tune_malloc()
    _loader = warm_up(background=True)
