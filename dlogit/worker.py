"""Worker preload: ``dask worker --preload dlogit.worker`` (local clusters get it automatically).

It imports everything a fit runs on a worker (the engine, the solvers with SciPy, the chunk math), makes
one tiny BLAS call and loads (or, the first time on a machine, compiles: ~2 s) the fused CPU kernel while
the worker starts, so that the first fit does not pay ~0.4 s of imports and ~0.15 s of kernel loading
inside its measured time. Loading dlogit lazily on a worker without this preload still
works; it is only slower the first time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import dlogit.engine  # noqa: F401  (the engine, the fit loop, the solvers with SciPy, the chunk math)
from dlogit.kernels import cpu
from dlogit.loss import chunk_sums


def warm_up() -> None:
    """Evaluate tiny chunks with both CPU kernels: initializes BLAS, NumPy's ufunc loops and every
    compiled variant of the fused kernel a fit can meet (float64 and float32 chunks, writable or
    read-only as from a memory map) in this process."""
    y = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    for dtype in (np.float64, np.float32):
        for writable in (True, False):
            X = np.ones((5, 2), dtype=dtype)
            X.setflags(write=writable)
            if writable:
                chunk_sums(X, y, np.zeros(3), kernel="blas")
            if cpu.available():
                chunk_sums(X, y, np.zeros(3), kernel="fused")


def dask_setup(worker: Any) -> None:
    warm_up()
