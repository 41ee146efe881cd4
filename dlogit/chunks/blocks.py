"""Array kinds, compute dtypes and the cache blocks dense CPU chunks are read in (in place or via scratch).

:class:`Blocks` is shared by every dense CPU pass over a chunk: the evaluators
(:mod:`dlogit.chunks.dense`), the folds' evaluator (:class:`dlogit.folds.FoldChunk`) and the validation
pass (:mod:`dlogit.stats`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlogit.kernels.policy import CPU_BLOCK_BYTES


def array_kind(X: Any) -> str:
    """``"numpy"``, ``"cupy"``, ``"scipy-csr"`` or ``"cupyx-csr"`` (other sparse formats become CSR)."""
    mod = type(X).__module__
    sparse = hasattr(X, "tocsr") and hasattr(X, "nnz")
    if mod.startswith("cupy"):
        return "cupyx-csr" if sparse else "cupy"
    return "scipy-csr" if sparse else "numpy"


def compute_dtype(dtype: Any) -> np.dtype:
    """The float type a chunk is evaluated in: float32/float64 kept, float16 -> float32, else float64."""
    dt = np.dtype(dtype)
    if dt.kind == "f" and dt.itemsize >= 8:
        return np.dtype(np.float64) if dt.itemsize == 8 else dt
    if dt.kind == "f" and dt.itemsize >= 2:
        return np.dtype(np.float32) if dt.itemsize <= 4 else np.dtype(np.float64)
    return np.dtype(np.float64)


def direct(X: np.ndarray) -> bool:
    """True when BLAS/Numba can read X as it is (no per-block copy needed)."""
    return (X.dtype in (np.float32, np.float64) and X.flags.c_contiguous and X.flags.aligned)


class Blocks:
    """Row blocks of a dense CPU chunk of about ``CPU_BLOCK_BYTES`` (or ``rows`` rows), read in place or
    via scratch."""

    def __init__(self, X: np.ndarray, rows: int | None = None) -> None:
        self.X = X
        self.n, self.d = (int(v) for v in X.shape)
        self.dtype = compute_dtype(X.dtype)
        self.direct = direct(X)
        if rows is None:
            rows = max(64, CPU_BLOCK_BYTES // max(1, self.d * self.dtype.itemsize))
        self.ranges = [(lo, min(lo + rows, self.n)) for lo in range(0, self.n, rows)]
        self.rows = min(rows, self.n)
        self._scratch = None if self.direct else np.empty((self.rows, self.d), self.dtype)

    def new_scratch(self) -> np.ndarray | None:
        """Another scratch buffer for :meth:`get` (a second thread reading blocks of the same chunk)."""
        return None if self.direct else np.empty((self.rows, self.d), self.dtype)

    def get(self, lo: int, hi: int, scratch: np.ndarray | None = None) -> np.ndarray:
        """Rows ``lo:hi``: a view of X when it is read in place, else a copy in ``scratch`` (default this
        chunk's own buffer)."""
        if self.direct:
            return self.X if (lo == 0 and hi == self.n) else self.X[lo:hi]
        if scratch is None:
            scratch = self._scratch
        assert scratch is not None
        out = scratch[: hi - lo]
        np.copyto(out, self.X[lo:hi], casting="unsafe")
        return out

