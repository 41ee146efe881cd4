"""Worker preload: ``dask worker --preload dlogit.worker`` (local clusters get it automatically).

It imports everything a fit runs on a worker (the engine, the solvers with SciPy, the chunk math), makes
one tiny BLAS call and loads (or, the first time on a machine, compiles) the fused CPU kernel while the
worker starts, so that the first fit does not pay ~0.4 s of imports and ~0.3 s of kernel loading inside
its measured time. Loading dlogit lazily on a worker without this preload still
works; it is only slower the first time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import dlogit.engine  # noqa: F401  (the engine, the fit loop, the solvers with SciPy, the chunk math)
from dlogit.kernels import cpu
from dlogit.loss import chunk_sums


def warm_up() -> None:
    """Evaluate tiny chunks with both CPU kernels: initializes BLAS, NumPy's ufunc loops and the
    compiled fused kernel (float64 and float32) in this process."""
    y = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    for dtype in (np.float64, np.float32):
        X = np.ones((5, 2), dtype=dtype)
        chunk_sums(X, y, np.zeros(3), kernel="blas")
        if cpu.available():
            chunk_sums(X, y, np.zeros(3), kernel="fused")


def dask_setup(worker: Any) -> None:
    warm_up()
