"""Any array kind (NumPy, CuPy, SciPy / cupyx CSR): products through the array's own ``@``."""

from __future__ import annotations

from typing import Any

import numpy as np

from dlogit._xp import get_xp
from dlogit.chunks.blocks import array_kind, compute_dtype, direct
from dlogit.chunks.handle import Curvature, KeepsCurvature
from dlogit.family import Family, ParamLayout
from dlogit.kernels.policy import CPU_BLOCK_BYTES


def _row_blocks(X: Any, n_outputs: int) -> list[tuple[int, int]]:
    n = int(X.shape[0])
    kind = array_kind(X)
    if kind in ("cupy", "cupyx-csr"):
        return [(0, n)] if n else []
    d = int(X.shape[1])
    per_row = (d * np.dtype(X.dtype).itemsize) if kind == "numpy" else 8 * max(1, n_outputs) * 4
    rows = max(64, CPU_BLOCK_BYTES // max(1, per_row))
    return [(lo, min(lo + rows, n)) for lo in range(0, n, rows)]


class LinearChunk(KeepsCurvature):
    """Sums of any family on any array kind, from ``X_b @ M`` and ``X_b.T @ R`` per row block.

    Dense NumPy chunks go through cache blocks (X read from memory once); CuPy chunks are one block
    (cuBLAS / cuSPARSE). Margins are rows-major ``(rows, K')``; the row terms are the family's own
    (:meth:`~dlogit.family.Family.terms`, array-agnostic), so nothing here depends on the family.
    """

    def __init__(self, X: Any, codes: Any, sample_weight: Any, layout: ParamLayout, family: Family, *,
                 kernel: str = "auto", curvature: bool = False) -> None:
        kind = array_kind(X)
        if kind.endswith("csr"):
            X = X.tocsr() if X.format != "csr" else X
        elif kind == "numpy" and not direct(X):
            X = np.ascontiguousarray(X, dtype=compute_dtype(X.dtype))
        if kind != "numpy" and X.dtype != compute_dtype(X.dtype):
            X = X.astype(compute_dtype(X.dtype))  # integer / half chunks: cast once (cuBLAS, cuSPARSE, kernels)
        self.X = X
        self.kind = kind
        self.xp = get_xp(X.data if kind.endswith("csr") else X)
        xp = self.xp
        self.n, self.d = (int(v) for v in X.shape)
        self.layout = layout
        self.family = family
        self.dtype = compute_dtype(X.dtype)
        self.codes = xp.asarray(codes, dtype=xp.int64)
        self.sw = None if sample_weight is None else xp.asarray(sample_weight, dtype=xp.float64)
        self.blocks = _row_blocks(X, layout.n_outputs)
        # a CSR chunk's row blocks are sliced once here: slicing copies the rows out, which cost 3x the
        # products themselves when it was done at every evaluation
        self._sliced = ({(lo, hi): X[lo:hi] for lo, hi in self.blocks}
                        if kind == "scipy-csr" and len(self.blocks) > 1 else {})
        if self._sliced:
            self.X = None  # the blocks hold the rows (no second copy)
        self.keep = curvature
        self.kernel = {"numpy": "blas", "cupy": "cublas", "scipy-csr": "scipy",
                       "cupyx-csr": "cusparse"}[kind]
        self.target = family.target(self.codes, xp)

    def _x(self, lo: int, hi: int) -> Any:
        if self._sliced:
            return self._sliced[(lo, hi)]
        return self.X if (lo == 0 and hi == self.n) else self.X[lo:hi]

    def _xt_dot(self, Xb: Any, R: Any) -> Any:
        """``X_b.T @ R`` in float64 (R (n,) or (n, K))."""
        return self._product(Xb.T, R)

    def _x_dot(self, Xb: Any, M: Any) -> Any:
        return self._product(Xb, M)

    def _product(self, A: Any, M: Any) -> Any:
        """``A @ M`` in float64; one column as a matrix-vector product (gemv / SpMV, as before the family
        owned the terms: cuBLAS's gemm with one column need not give gemv's bits)."""
        xp = self.xp
        M = M.astype(self.dtype, copy=False)
        out = (A @ M[:, 0])[:, None] if M.ndim == 2 and M.shape[1] == 1 else A @ M
        out = out.toarray() if hasattr(out, "toarray") else out
        return xp.asarray(out).astype(xp.float64, copy=False)

    def sums(self, theta: Any, keep_curvature: bool = False) -> Any:
        keep = keep_curvature
        if keep and not self.keep:
            self._check(None, False)
        xp = self.xp
        L = self.layout
        th = xp.asarray(theta, dtype=xp.float64)
        W = L.coef(th)
        b = L.intercept(th)
        out = xp.zeros(1 + L.size, dtype=xp.float64)
        G = L.coef(out[1:])
        gb = L.intercept(out[1:])
        rows: list[Any] = []
        for lo, hi in self.blocks:
            Xb = self._x(lo, hi)
            sw = None if self.sw is None else self.sw[lo:hi]
            Z = self._x_dot(Xb, W.T) + b[None, :]
            loss, R, curv = self.family.terms(Z, self.target[lo:hi], sw, keep, class_axis=-1)
            out[0] += loss
            G += self._xt_dot(Xb, R).T
            gb += R.sum(axis=0)
            rows.append(curv)
        return self._keep(out, rows) if keep else out

    def hvp(self, handle: Curvature, v: Any) -> Any:
        self._check(handle, self.keep)
        xp = self.xp
        L = self.layout
        v = xp.asarray(v, dtype=xp.float64)
        V = L.coef(v)
        vb = L.intercept(v)
        out = xp.zeros(L.size, dtype=xp.float64)
        O = L.coef(out)
        ob = L.intercept(out)
        for (lo, hi), curv in zip(self.blocks, handle.rows):
            Xb = self._x(lo, hi)
            T = self.family.hvp_terms(curv, self._x_dot(Xb, V.T) + vb[None, :], class_axis=-1)
            O += self._xt_dot(Xb, T).T
            ob += T.sum(axis=0)
        return out
