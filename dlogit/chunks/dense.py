"""Dense NumPy chunks on the CPU: binomial (the fused one-pass Numba kernel or the cache-blocked BLAS
path) and multinomial (two GEMMs per cache block)."""

from __future__ import annotations

from collections.abc import Callable
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

    One owner evaluates it at a time (its slots for the blocks' sums are shared between calls); within one
    evaluation its blocks may run on several threads (:meth:`begin`), each with its own work buffers.
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
        self._narrow = b.dtype != np.float64
        # each block's gradient part (the fused kernel's are float64): summed in block order after the
        # blocks, so the sums have the same bits whichever thread evaluated which block
        nb = len(b.ranges)
        self._parts = np.empty((nb, self.d), np.float64 if self.kernel == "fused" else b.dtype)
        self._loss, self._gb = [0.0] * nb, [0.0] * nb
        self._spare = [self._work(first=True)]  # work buffers, one set per thread evaluating a block now
        self._u = np.empty(b.rows)  # hvp (one thread)
        self._none = np.empty(0)
        if self.kernel == "fused":
            from dlogit.kernels import cpu

            self._fused = cpu.dense_binomial_sums

    def _work(self, first: bool = False) -> tuple[Any, ...]:
        """One thread's work buffers: (margins/residuals, loss terms, exp terms, float32 margins, float32
        residuals, X scratch); the ``first`` set reads through the chunk's own scratch."""
        b = self.blocks
        scratch = b._scratch if first else b.new_scratch()
        if self.kernel == "fused":
            return (None, None, None, None, None, scratch)
        m, narrow = b.rows, (b.rows if self._narrow else 0)
        return (np.empty(m), np.empty(m), np.empty(m), np.empty(narrow, b.dtype), np.empty(narrow, b.dtype),
                scratch)

    # -- sums -------------------------------------------------------------------------------------
    def sums(self, theta: Any, keep_curvature: bool = False) -> Any:
        """The sums at ``theta``; with ``keep_curvature`` a :class:`~dlogit.chunks.handle.Curvature`
        handle holding them (for :meth:`hvp`)."""
        n_blocks, block, finish = self.begin(theta, keep_curvature)
        for j in range(n_blocks):
            block(j)
        return finish()

    def begin(self, theta: Any, keep_curvature: bool = False) -> tuple[int, Callable[[int], None],
                                                                        Callable[[], Any]]:
        """:meth:`sums` in parts: ``(n_blocks, block, finish)``. ``block(j)`` for every ``j < n_blocks``
        (in any order, on any threads, each with its own work buffers; one :meth:`begin` at a time per
        chunk), then ``finish()`` is what :meth:`sums` returns. Every block's loss, intercept and gradient
        parts go to their own slots; ``finish`` adds them in block order, as one thread going through the
        blocks would, so the bits never depend on the schedule."""
        if keep_curvature and self.curvature is None:
            self._check(None, False)
        d = self.d
        b = float(theta[d])
        dbuf = self.curvature if keep_curvature and self.curvature is not None else None
        if self.kernel == "fused":
            w = np.array(theta[: d], dtype=np.float64)
            one = self._block_fused
        else:
            w = theta[: d].astype(self.blocks.dtype, copy=False)
            one = self._block_blas
        spare = self._spare

        def block(j: int) -> None:
            try:
                work = spare.pop()
            except IndexError:  # other threads hold the others
                work = self._work()
            try:
                one(j, w, b, dbuf, work)
            finally:
                spare.append(work)

        def finish() -> Any:
            n_blocks = len(self.blocks.ranges)
            out = np.empty(d + 2)
            grad = out[1: d + 1]
            loss = gb = 0.0
            for j in range(n_blocks):
                loss += self._loss[j]
                gb += self._gb[j]
            parts = self._parts
            if self.kernel == "fused":
                grad[...] = 0.0
                for j in range(n_blocks):
                    grad += parts[j]
            elif n_blocks:
                grad[...] = parts[0]
                for j in range(1, n_blocks):
                    np.add(grad, parts[j], out=grad)
            else:  # no rows
                grad[...] = 0.0
            out[0] = loss
            out[d + 1] = gb
            return self._keep(out) if keep_curvature else out

        return len(self.blocks.ranges), block, finish

    def _block_fused(self, j: int, w: np.ndarray, b: float, dbuf: np.ndarray | None,
                     work: tuple[Any, ...]) -> None:
        # the same blocks whether the chunk is read in place or through scratch: the sums do not depend on
        # where a chunk landed (aligned or not, C or Fortran order)
        lo, hi = self.blocks.ranges[j]
        sw = self._none if self.sw is None else self.sw[lo:hi]
        self._loss[j], self._gb[j] = self._fused(self.blocks.get(lo, hi, work[5]), self.sign[lo:hi], sw, w, b,
                                                 self._parts[j], self._none if dbuf is None else dbuf[lo:hi])

    def _block_blas(self, j: int, w: np.ndarray, b: float, dbuf: np.ndarray | None,
                    work: tuple[Any, ...]) -> None:
        lo, hi = self.blocks.ranges[j]
        Xb = self.blocks.get(lo, hi, work[5])
        k = hi - lo
        sg = self.sign[lo:hi]
        s, l, e = work[0][:k], work[1][:k], work[2][:k]
        if self._narrow:
            z = work[3][:k]
            np.dot(Xb, w, out=z)
            np.copyto(s, z)
        else:
            np.dot(Xb, w, out=s)
        if b:
            np.add(s, b, out=s)
        c = None if dbuf is None else dbuf[lo:hi]
        l, s, c = self.family.row_terms(s, sg, c is not None, class_axis=None, buffers=(l, e, c))
        if self.sw is not None:  # the weighted loss sum by BLAS dot (one pass; the reference's bits)
            swb = self.sw[lo:hi]
            self._loss[j] = float(np.dot(l, swb))
            if c is not None:
                np.multiply(c, swb, out=c)
            np.multiply(s, swb, out=s)
        else:
            self._loss[j] = float(_sum(l))
        self._gb[j] = float(_sum(s))
        if self._narrow:
            r = work[4][:k]
            np.copyto(r, s, casting="same_kind")
        else:
            r = s
        np.dot(r, Xb, out=self._parts[j])  # X_b.T @ r_b while X_b is still in cache

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

