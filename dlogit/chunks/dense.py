"""Dense NumPy chunks on the CPU: binomial (the fused one-pass Numba kernel or the cache-blocked BLAS
path) and multinomial (two GEMMs per cache block)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dlogit.chunks.blocks import Blocks
from dlogit.chunks.handle import Curvature, KeepsCurvature
from dlogit.family import Binomial, Family, ParamLayout, own_positions
from dlogit.kernels.policy import choose_cpu_kernel

_sum = np.add.reduce  # ndarray.sum without its Python wrapper (the same pairwise summation)


class DenseBinomialCPU(KeepsCurvature):
    """Binomial sums of a dense NumPy chunk (the inner loop of every CPU fit).

    Two paths (``kernel``, see :func:`dlogit.kernels.policy.choose_cpu_kernel`):

    * ``"blas"``: per cache block, ``X_b @ w``, the family's row terms
      (:meth:`dlogit.family.Binomial.row_terms`, in this chunk's work buffers), then ``X_b.T @ r_b``
      while the block is in cache; the weighted loss sum is one BLAS dot;
    * ``"fused"``: :func:`dlogit.kernels.cpu.dense_binomial_sums`, every row read once (a specialization
      of the same terms, tested against them).

    Not thread-safe (work buffers are shared between calls); one owner evaluates it at a time.
    """

    def __init__(self, X: np.ndarray, codes: np.ndarray, sample_weight: np.ndarray | None,
                 layout: ParamLayout, *, kernel: str = "auto", curvature: bool = False,
                 family: Family | None = None) -> None:
        self.blocks = b = Blocks(X)
        self.n, self.d = b.n, b.d
        self.layout = layout
        self.family = Binomial() if family is None else family
        self.sign = self.family.target(codes)
        self.sw = None if sample_weight is None else np.ascontiguousarray(sample_weight, dtype=np.float64)
        self.curvature = np.empty(self.n) if curvature else None
        self.kernel = choose_cpu_kernel(kernel, self.n, self.d, b.dtype)
        self._w = np.empty(self.d)
        self._g = np.empty(self.d, b.dtype)
        m = b.rows
        self._s, self._l, self._e = np.empty(m), np.empty(m), np.empty(m)
        self._narrow = b.dtype != np.float64
        self._z = np.empty(m if self._narrow else 0, b.dtype)  # float32 chunks: margins, residuals
        self._r = np.empty(m if self._narrow else 0, b.dtype)
        self._u = np.empty(m)
        if self.kernel == "fused":
            from dlogit.kernels import cpu

            self._fused = cpu.dense_binomial_sums
            self._gw = np.empty(self.d)
            self._none = np.empty(0)

    # -- sums -------------------------------------------------------------------------------------
    def sums(self, theta: Any, keep_curvature: bool = False) -> Any:
        """The sums at ``theta``; with ``keep_curvature`` a :class:`~dlogit.chunks.handle.Curvature`
        handle holding them (for :meth:`hvp`)."""
        if keep_curvature and self.curvature is None:
            self._check(None, False)
        self._keeping = keep_curvature
        d = self.d
        out = np.empty(d + 2)
        grad = out[1: d + 1]
        b = float(theta[d])
        if self.kernel == "fused":
            loss, gb = self._sums_fused(theta, grad, b)
        else:
            loss, gb = self._sums_blas(theta, grad, b)
        out[0] = loss
        out[d + 1] = gb
        return self._keep(out) if keep_curvature else out

    def _sums_fused(self, theta: Any, grad: np.ndarray, b: float) -> tuple[float, float]:
        w = self._w
        np.copyto(w, theta[: self.d])
        sw = self._none if self.sw is None else self.sw
        dbuf = self.curvature if self._keeping and self.curvature is not None else self._none
        blocks = self.blocks
        # the same blocks, in the same order, whether the chunk is read in place or through scratch: the
        # sums do not depend on where a chunk landed (aligned or not, C or Fortran order)
        loss = gb = 0.0
        grad[...] = 0.0
        for lo, hi in blocks.ranges:
            l_, g_ = self._fused(blocks.get(lo, hi), self.sign[lo:hi], sw[lo:hi] if sw.size else sw, w, b,
                                 self._gw, dbuf[lo:hi] if dbuf.size else dbuf)
            loss += l_
            gb += g_
            grad += self._gw
        return loss, gb

    def _sums_blas(self, theta: Any, grad: np.ndarray, b: float) -> tuple[float, float]:
        w = theta[: self.d].astype(self.blocks.dtype, copy=False)
        loss = gb = 0.0
        first = True
        for lo, hi in self.blocks.ranges:
            Xb = self.blocks.get(lo, hi)
            k = hi - lo
            sg = self.sign[lo:hi]
            s, l, e = self._s[:k], self._l[:k], self._e[:k]
            if self._narrow:
                z = self._z[:k]
                np.dot(Xb, w, out=z)
                np.copyto(s, z)
            else:
                np.dot(Xb, w, out=s)
            if b:
                np.add(s, b, out=s)
            c = self.curvature[lo:hi] if self._keeping and self.curvature is not None else None
            l, s, c = self.family.row_terms(s, sg, c is not None, class_axis=None, buffers=(l, e, c))
            if self.sw is not None:  # the weighted loss sum by BLAS dot (one pass; the reference's bits)
                swb = self.sw[lo:hi]
                loss += float(np.dot(l, swb))
                if c is not None:
                    np.multiply(c, swb, out=c)
                np.multiply(s, swb, out=s)
            else:
                loss += float(_sum(l))
            gb += float(_sum(s))
            if self._narrow:
                r = self._r[:k]
                np.copyto(r, s, casting="same_kind")
            else:
                r = s
            if first and not self._narrow:
                np.dot(r, Xb, out=grad)  # X_b.T @ r_b while X_b is still in cache
            else:
                np.dot(r, Xb, out=self._g)
                if first:
                    grad[...] = self._g
                else:
                    np.add(grad, self._g, out=grad)
            first = False
        if first:  # no rows
            grad[...] = 0.0
        return loss, gb

    # -- Hessian-vector product --------------------------------------------------------------------
    def hvp(self, handle: Curvature, v: Any) -> np.ndarray:
        """The Hessian of the loss sum at the handle's ``theta`` times ``v``."""
        self._check(handle, self.curvature is not None)
        assert self.curvature is not None
        d = self.d
        out = np.empty(d + 1)
        vw = np.asarray(v[:d], dtype=self.blocks.dtype)
        vb = float(v[d])
        acc = out[:d]
        acc[...] = 0.0
        tb = 0.0
        for lo, hi in self.blocks.ranges:
            Xb = self.blocks.get(lo, hi)
            u = self._u[: hi - lo]
            if self._narrow:
                u[...] = Xb @ vw
            else:
                np.dot(Xb, vw, out=u)
            if vb:
                np.add(u, vb, out=u)
            u = self.family.hvp_terms(self.curvature[lo:hi], u, class_axis=None)
            tb += float(_sum(u))
            acc += (u.astype(self.blocks.dtype, copy=False) @ Xb)
        out[d] = tb
        return out



class DenseMultinomialCPU(KeepsCurvature):
    """Multinomial sums of a dense NumPy chunk: per cache block ``Z = W @ X_b.T`` (K x rows: the
    per-row max, log-sum-exp and normalization reduce over a short leading axis, which NumPy vectorizes
    along the rows), the residuals in place, then ``G += R @ X_b`` while the block is in cache. Blocks
    that are not aligned, C-contiguous float32/float64 stream through a scratch buffer; work buffers
    are made once."""

    def __init__(self, X: np.ndarray, codes: Any, sample_weight: Any, layout: ParamLayout, family: Family,
                 *, kernel: str = "auto", curvature: bool = False) -> None:
        self.blocks = b = Blocks(X)
        self.n, self.d = b.n, b.d
        self.layout = layout
        self.K = K = layout.n_outputs
        self.codes = np.ascontiguousarray(codes, dtype=np.int64)
        self.sw = None if sample_weight is None else np.ascontiguousarray(sample_weight, dtype=np.float64)
        m = b.rows
        self._z = np.empty(K * m)
        self._zn = np.empty(K * m, b.dtype) if b.dtype != np.float64 else None
        self._gb = np.empty((K, self.d), b.dtype)
        self.family = family
        # flat index of each row's own class in its block's (K, rows) Z (the family's terms take it)
        self._own = [own_positions(self.codes[lo:hi], 1, K)[0] for lo, hi in b.ranges]
        self.keep = curvature
        self._p = [np.empty((K, hi - lo)) for lo, hi in b.ranges] if curvature else []
        self.kernel = "blas"

    def _zview(self, k: int) -> np.ndarray:
        return self._z[: self.K * k].reshape(self.K, k)

    def _product(self, M: np.ndarray, Xb: np.ndarray, k: int) -> np.ndarray:
        """``M @ X_b.T`` (K x k) in float64."""
        Z = self._zview(k)
        if self._zn is None:
            np.dot(M, Xb.T, out=Z)
        else:
            Zn = self._zn[: self.K * k].reshape(self.K, k)
            np.dot(M, Xb.T, out=Zn)
            np.copyto(Z, Zn)
        return Z

    def sums(self, theta: Any, keep_curvature: bool = False) -> Any:
        keep = keep_curvature
        if keep and not self.keep:
            self._check(None, False)
        L = self.layout
        dt = self.blocks.dtype
        th = np.asarray(theta, dtype=np.float64)
        W = L.coef(th).astype(dt, copy=False)
        b = L.intercept(th)
        out = np.zeros(1 + L.size)
        G = L.coef(out[1:])
        gb = L.intercept(out[1:])
        loss = 0.0
        for j, (lo, hi) in enumerate(self.blocks.ranges):
            k = hi - lo
            Xb = self.blocks.get(lo, hi)
            Z = self._product(W, Xb, k)
            Z += b[:, None]
            terms, Z, _ = self.family.row_terms(Z, self.codes[lo:hi], keep, class_axis=-2,
                                                buffers=(self._p[j],) if keep else None, own=self._own[j])
            if self.sw is not None:  # the weighted loss sum by BLAS dot (one pass; the reference's bits)
                swb = self.sw[lo:hi]
                loss += float(np.dot(terms, swb))
                Z *= swb
            else:
                loss += float(_sum(terms))
            gb += Z.sum(axis=1)
            Rb = Z if dt == np.float64 else Z.astype(dt)
            np.dot(Rb, Xb, out=self._gb)
            G += self._gb
        out[0] = loss
        return self._keep(out) if keep else out

    def hvp(self, handle: Curvature, v: Any) -> np.ndarray:
        self._check(handle, self.keep)
        L = self.layout
        dt = self.blocks.dtype
        vv = np.asarray(v, dtype=np.float64)
        V = L.coef(vv).astype(dt, copy=False)
        vb = L.intercept(vv)
        out = np.zeros(L.size)
        O = L.coef(out)
        ob = L.intercept(out)
        for j, (lo, hi) in enumerate(self.blocks.ranges):
            k = hi - lo
            Xb = self.blocks.get(lo, hi)
            U = self._product(V, Xb, k)
            U += vb[:, None]
            sw = None if self.sw is None else self.sw[lo:hi]
            T = self.family.hvp_terms(self.family.curvature(self._p[j], sw, -2), U, class_axis=-2)
            ob += T.sum(axis=1)
            Tb = T if dt == np.float64 else T.astype(dt)
            np.dot(Tb, Xb, out=self._gb)
            O += self._gb
        return out

