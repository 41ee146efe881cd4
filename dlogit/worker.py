"""Worker preload: ``dask worker --preload dlogit.worker`` (local clusters get it automatically).

It imports everything a fit runs on a worker (the engine, the solvers with SciPy, the chunk math) and
makes one tiny BLAS call while the worker starts, so that the first fit does not pay ~0.4 s of imports
and start-up inside its measured time. Loading dlogit lazily on a worker without this preload still
works; it is only slower the first time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import dlogit.engine  # noqa: F401  (the engine, the fit loop, the solvers with SciPy, the chunk math)
from dlogit.loss import chunk_sums


def warm_up() -> None:
    """Evaluate one tiny chunk: initializes BLAS and NumPy's ufunc loops in this process."""
    X = np.ones((4, 2))
    chunk_sums(X, np.array([0.0, 1.0, 0.0, 1.0]), np.zeros(3))


def dask_setup(worker: Any) -> None:
    warm_up()
