"""One namespace for NumPy and CuPy arrays.

The math in :mod:`dlogit.loss` is written against the namespace returned by :func:`get_xp`, so the same
code runs on host and device chunks. CuPy is imported lazily: importing dlogit never needs a GPU.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np


def is_cupy(x: Any) -> bool:
    """True when ``x`` is a CuPy array (checked without importing CuPy)."""
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


def get_xp(x: Any) -> ModuleType:
    """Return the array module (``numpy`` or ``cupy``) that owns ``x``."""
    if is_cupy(x):
        return sys.modules["cupy"]
    return np


def to_numpy(x: Any) -> np.ndarray:
    """Copy ``x`` to host memory as a NumPy array (no copy when it already is one)."""
    if is_cupy(x):
        return x.get()
    return np.asarray(x)


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any failure means "no usable GPU"
        return False

