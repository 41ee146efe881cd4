"""SciPy CSR chunks on the CPU: the one-pass Numba kernels (:mod:`dlogit.kernels.sparse`), or the SciPy
products of :class:`~dlogit.chunks.generic.LinearChunk` for wide chunks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dlogit.chunks.generic import LinearChunk
from dlogit.chunks.handle import Curvature, KeepsCurvature
from dlogit.family import Family, ParamLayout

_EMPTY = np.empty(0)


class _CSRChunk(KeepsCurvature):
    #: ``kernel="auto"`` uses this one-pass kernel for chunks of at most this many features, wider ones the
    #: SciPy products (X @ w, X.T @ r); each kernel sets its own (see the subclasses).
    max_features: int = 0

    def __init__(self, X: Any, codes: Any, sample_weight: Any, layout: ParamLayout, curvature: bool) -> None:
        from dlogit.kernels import sparse

        self._k = sparse
        csr = sparse.canonical_csr(X.tocsr() if X.format != "csr" else X)
        self.data, self.indices, self.indptr = csr.data, csr.indices, csr.indptr
        self.n, self.d = csr.shape
        self.layout = layout
        self.sw = _EMPTY if sample_weight is None else np.ascontiguousarray(sample_weight, dtype=np.float64)
        self.keep = curvature
        self.kernel = "csr"

    def sums(self, theta: Any, keep_curvature: bool = False) -> Any:
        if keep_curvature and not self.keep:
            self._check(None, False)
        out = self._sums(theta, keep_curvature)
        return self._keep(out) if keep_curvature else out

    def _sums(self, theta: Any, keep: bool) -> np.ndarray:
        raise NotImplementedError


class CSRBinomialCPU(_CSRChunk):
    """Binomial sums of a SciPy CSR chunk: margins, residuals and the gradient's scatter-add in one pass."""

    #: measured on one thread (BENCHMARKS.md, "Sparse kernels"), 10^5 rows of 50 values: 0.63-0.74x SciPy's
    #: time up to d = 10^4, 1.15x at 10^5, 2x at 10^6 (the one pass needs both w and the gradient in cache)
    max_features = 30_000

    def __init__(self, X: Any, codes: Any, sample_weight: Any, layout: ParamLayout, family: Family, *,
                 kernel: str = "auto", curvature: bool = False) -> None:
        super().__init__(X, codes, sample_weight, layout, curvature)
        self.sign = family.target(codes)
        self.curv = np.empty(self.n) if curvature else _EMPTY

    def _sums(self, theta: Any, keep: bool) -> np.ndarray:
        d = self.d
        out = np.empty(d + 2)
        w = np.ascontiguousarray(theta[:d], dtype=np.float64)
        out[0], out[d + 1] = self._k.csr_binomial_sums(self.data, self.indices, self.indptr, self.sign,
                                                       self.sw, w, float(theta[d]), out[1: d + 1],
                                                       self.curv if keep else _EMPTY)
        return out

    def hvp(self, handle: Curvature, v: Any) -> np.ndarray:
        self._check(handle, self.keep)
        d = self.d
        out = np.empty(d + 1)
        vw = np.ascontiguousarray(v[:d], dtype=np.float64)
        out[d] = self._k.csr_binomial_hvp(self.data, self.indices, self.indptr, self.curv, vw, float(v[d]),
                                          out[:d])
        return out


class CSRMultinomialCPU(_CSRChunk):
    """Multinomial sums of a SciPy CSR chunk in one pass over its rows."""

    #: measured as for the binomial kernel (K = 5): 0.91x SciPy's time at d = 10^3, slower from 10^4
    max_features = 2_000

    def __init__(self, X: Any, codes: Any, sample_weight: Any, layout: ParamLayout, family: Family, *,
                 kernel: str = "auto", curvature: bool = False) -> None:
        super().__init__(X, codes, sample_weight, layout, curvature)
        self.cls = np.ascontiguousarray(codes, dtype=np.int64)
        K = layout.n_outputs
        self.pbuf = np.empty((self.n, K)) if curvature else np.empty((0, K))
        self._nobuf = np.empty((0, K))

    def _sums(self, theta: Any, keep: bool) -> np.ndarray:
        L = self.layout
        out = np.empty(1 + L.size)
        th = np.ascontiguousarray(theta, dtype=np.float64)
        out[0] = self._k.csr_multinomial_sums(self.data, self.indices, self.indptr, self.cls, self.sw,
                                              L.coef(th), L.intercept(th), L.coef(out[1:]),
                                              L.intercept(out[1:]), self.pbuf if keep else self._nobuf)
        return out

    def hvp(self, handle: Curvature, v: Any) -> np.ndarray:
        self._check(handle, self.keep)
        L = self.layout
        out = np.empty(L.size)
        vv = np.ascontiguousarray(v, dtype=np.float64)
        self._k.csr_multinomial_hvp(self.data, self.indices, self.indptr, self.pbuf, self.sw, L.coef(vv),
                                    L.intercept(vv), L.coef(out), L.intercept(out))
        return out


def csr_cpu(cls: type[CSRBinomialCPU | CSRMultinomialCPU]) -> Callable[..., Any]:
    """The evaluator factory of a one-pass CSR kernel: ``cls`` up to its ``max_features`` (or with
    ``kernel="fused"``), else the SciPy products."""
    def factory(X: Any, codes: Any, sw: Any, layout: ParamLayout, family: Family, *, kernel: str = "auto",
                curvature: bool = False) -> Any:
        from dlogit.kernels import cpu

        fused = cpu.available() and kernel != "blas" and (
            kernel == "fused" or int(X.shape[1]) <= cls.max_features)
        if fused:
            return cls(X, codes, sw, layout, family, kernel=kernel, curvature=curvature)
        return LinearChunk(X, codes, sw, layout, family, kernel=kernel, curvature=curvature)
    return factory

