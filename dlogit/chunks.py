"""Chunk evaluators: one chunk's float64 sums (and Hessian-vector products) for a model family.

A chunk is a block of rows ``(X, class codes, row weights)``. It is *prepared* once
(:func:`prepare_chunk`) and then evaluated at many ``theta``:

* ``sums(theta)`` -> ``[loss sum, gradient sums]`` in the :class:`~dlogit.family.SumsLayout` of the fit
  (weighted sums, never means; float64 whatever X's dtype);
* ``hvp(theta, v)`` -> the Hessian of the loss sum times ``v`` (for Newton). The per-row curvature is
  kept from the last ``sums`` call at the same ``theta`` (prepared with ``curvature=True``), so an
  H.v costs one more read of X.

The evaluator is chosen by ``(array kind, family)`` from :data:`EVALUATORS` (see :func:`array_kind`),
with :class:`LinearChunk` -- plain ``X @ M`` / ``X.T @ R`` products that NumPy, CuPy, SciPy sparse and
cupyx sparse all provide -- for any pair without a specialised kernel.

Every chunk, however it arrived (unaligned after Dask deserialization, read-only, Fortran-ordered, a
memory map, a strided view, an integer or half dtype), is evaluated at full speed without copying the
whole chunk: dense CPU chunks that are not aligned, C-contiguous float32/float64 stream through a
block-sized scratch buffer (see :class:`DenseBinomialCPU`), so the shard's memory is never doubled.
(Sparse and CuPy chunks of an integer or half dtype are the exception: they are cast once, at
preparation, to the float type they are evaluated in.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dlogit._xp import get_xp
from dlogit.family import Binomial, Family, Multinomial, ParamLayout, SumsLayout
from dlogit.kernels.policy import CPU_BLOCK_BYTES, choose_cpu_kernel

_sum = np.add.reduce  # ndarray.sum without its Python wrapper (the same pairwise summation)


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


def _direct(X: np.ndarray) -> bool:
    """True when BLAS/Numba can read X as it is (no per-block copy needed)."""
    return (X.dtype in (np.float32, np.float64) and X.flags.c_contiguous and X.flags.aligned)


class _Blocks:
    """Row blocks of a dense CPU chunk of about ``CPU_BLOCK_BYTES`` (or ``rows`` rows), read in place or
    via scratch."""

    def __init__(self, X: np.ndarray, rows: int | None = None) -> None:
        self.X = X
        self.n, self.d = (int(v) for v in X.shape)
        self.dtype = compute_dtype(X.dtype)
        self.direct = _direct(X)
        if rows is None:
            rows = max(64, CPU_BLOCK_BYTES // max(1, self.d * self.dtype.itemsize))
        self.ranges = [(lo, min(lo + rows, self.n)) for lo in range(0, self.n, rows)]
        self.rows = min(rows, self.n)
        self._scratch = None if self.direct else np.empty((self.rows, self.d), self.dtype)

    def get(self, lo: int, hi: int) -> np.ndarray:
        if self.direct:
            return self.X if (lo == 0 and hi == self.n) else self.X[lo:hi]
        out = self._scratch[: hi - lo]
        np.copyto(out, self.X[lo:hi], casting="unsafe")
        return out


# --------------------------------------------------------------------------------------------------
# binomial, dense, CPU: the fused one-pass Numba kernel or the cache-blocked BLAS path


class DenseBinomialCPU:
    """Binomial sums of a dense NumPy chunk (the inner loop of every CPU fit).

    With label signs ``sigma = 1 - 2y`` and the signed margin ``s = sigma * z``, every row's terms come
    from one stable expression: ``l = log1pexp(s)``, residual ``sigma * exp(s - l)`` (``= sigmoid(z) -
    y``, with full relative precision for well-classified rows), curvature ``exp(s - 2 l)``. Two paths
    (``kernel``, see :func:`dlogit.kernels.policy.choose_cpu_kernel`):

    * ``"blas"``: per cache block, ``X_b @ w`` then ``X_b.T @ r_b`` while the block is in cache;
    * ``"fused"``: :func:`dlogit.kernels.cpu.dense_binomial_sums`, every row read once.

    Not thread-safe (work buffers are shared between calls); one owner evaluates it at a time.
    """

    def __init__(self, X: np.ndarray, codes: np.ndarray, sample_weight: np.ndarray | None,
                 layout: ParamLayout, *, kernel: str = "auto", curvature: bool = False) -> None:
        self.blocks = b = _Blocks(X)
        self.n, self.d = b.n, b.d
        self.layout = layout
        self.sign = 1.0 - 2.0 * np.asarray(codes, dtype=np.float64)
        self.sw = None if sample_weight is None else np.ascontiguousarray(sample_weight, dtype=np.float64)
        self.curvature = np.empty(self.n) if curvature else None
        self._curv_theta: np.ndarray | None = None
        self.kernel = choose_cpu_kernel(kernel, self.n, self.d, b.dtype)
        self._w = np.empty(self.d)
        self._g = np.empty(self.d, b.dtype)
        m = b.rows
        self._s, self._l, self._e = np.empty(m), np.empty(m), np.empty(m)
        self._narrow = b.dtype != np.float64
        self._z = np.empty(m, b.dtype) if self._narrow else None
        self._r = np.empty(m, b.dtype) if self._narrow else None
        self._u = np.empty(m)
        if self.kernel == "fused":
            from dlogit.kernels import cpu

            self._fused = cpu.dense_binomial_sums
            self._gw = np.empty(self.d)
            self._none = np.empty(0)

    # -- sums -------------------------------------------------------------------------------------
    def sums(self, theta: Any) -> np.ndarray:
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
        if self.curvature is not None:
            self._curv_theta = np.array(theta, dtype=np.float64, copy=True)
        return out

    def _sums_fused(self, theta: Any, grad: np.ndarray, b: float) -> tuple[float, float]:
        w = self._w
        np.copyto(w, theta[: self.d])
        sw = self._none if self.sw is None else self.sw
        dbuf = self._none if self.curvature is None else self.curvature
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
            np.multiply(s, sg, out=s)  # signed margin
            np.abs(s, out=e)
            np.negative(e, out=e)
            np.exp(e, out=e)  # exp(-|s|) in (0, 1]: never overflows
            np.log1p(e, out=l)
            np.maximum(s, 0.0, out=e)
            np.add(l, e, out=l)  # log1pexp(s)
            if self.curvature is not None:  # exp(s - 2 l) = sigmoid(s) sigmoid(-s)
                c = self.curvature[lo:hi]
                np.multiply(l, -2.0, out=c)
                np.add(c, s, out=c)
                np.exp(c, out=c)
            if self.sw is not None:
                swb = self.sw[lo:hi]
                loss += float(np.dot(l, swb))
                if self.curvature is not None:
                    np.multiply(c, swb, out=c)
            else:
                loss += float(_sum(l))
            np.subtract(s, l, out=s)
            np.exp(s, out=s)  # sigmoid(s)
            np.multiply(s, sg, out=s)  # residual sigmoid(z) - y
            if self.sw is not None:
                np.multiply(s, self.sw[lo:hi], out=s)
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
    def hvp(self, theta: Any, v: Any) -> np.ndarray:
        if self.curvature is None:
            raise RuntimeError("this chunk was prepared without curvature (curvature=True for Newton)")
        if self._curv_theta is None or not np.array_equal(self._curv_theta, theta):
            self.sums(theta)
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
            np.multiply(u, self.curvature[lo:hi], out=u)
            tb += float(_sum(u))
            acc += (u.astype(self.blocks.dtype, copy=False) @ Xb)
        out[d] = tb
        return out


# --------------------------------------------------------------------------------------------------
# any kind (NumPy, CuPy, SciPy / cupyx CSR): products through the array's own ``@``


def _row_blocks(X: Any, n_outputs: int) -> list[tuple[int, int]]:
    n = int(X.shape[0])
    kind = array_kind(X)
    if kind in ("cupy", "cupyx-csr"):
        return [(0, n)] if n else []
    d = int(X.shape[1])
    per_row = (d * np.dtype(X.dtype).itemsize) if kind == "numpy" else 8 * max(1, n_outputs) * 4
    rows = max(64, CPU_BLOCK_BYTES // max(1, per_row))
    return [(lo, min(lo + rows, n)) for lo in range(0, n, rows)]


class LinearChunk:
    """Sums of any family on any array kind, from ``X_b @ M`` and ``X_b.T @ R`` per row block.

    Dense NumPy chunks go through cache blocks (X read from memory once); CuPy chunks are one block
    (cuBLAS / cuSPARSE). The family's row terms (:func:`binomial_terms`, :func:`multinomial_terms`) are
    array-agnostic.
    """

    def __init__(self, X: Any, codes: Any, sample_weight: Any, layout: ParamLayout, family: Family, *,
                 kernel: str = "auto", curvature: bool = False) -> None:
        kind = array_kind(X)
        if kind.endswith("csr"):
            X = X.tocsr() if X.format != "csr" else X
        elif kind == "numpy" and not _direct(X):
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
        self.curv: list[Any] = []
        self._curv_theta: Any = None
        self.kernel = {"numpy": "blas", "cupy": "cublas", "scipy-csr": "scipy",
                       "cupyx-csr": "cusparse"}[kind]
        if family.name == "binomial":
            self.sign = 1.0 - 2.0 * self.codes.astype(xp.float64)

    def _x(self, lo: int, hi: int) -> Any:
        if self._sliced:
            return self._sliced[(lo, hi)]
        return self.X if (lo == 0 and hi == self.n) else self.X[lo:hi]

    def _xt_dot(self, Xb: Any, R: Any) -> Any:
        """``X_b.T @ R`` in float64 (R (n,) or (n, K))."""
        xp = self.xp
        out = Xb.T @ R.astype(self.dtype, copy=False)
        out = out.toarray() if hasattr(out, "toarray") else out
        return xp.asarray(out).astype(xp.float64, copy=False)

    def _x_dot(self, Xb: Any, M: Any) -> Any:
        xp = self.xp
        out = Xb @ M.astype(self.dtype, copy=False)
        out = out.toarray() if hasattr(out, "toarray") else out
        return xp.asarray(out).astype(xp.float64, copy=False)

    def sums(self, theta: Any) -> Any:
        xp = self.xp
        L = self.layout
        th = xp.asarray(theta, dtype=xp.float64)
        W = L.coef(th)
        b = L.intercept(th)
        out = xp.zeros(1 + L.size, dtype=xp.float64)
        G = L.coef(out[1:])
        gb = L.intercept(out[1:])
        if self.keep:
            self.curv = []
        for lo, hi in self.blocks:
            Xb = self._x(lo, hi)
            sw = None if self.sw is None else self.sw[lo:hi]
            if self.family.name == "binomial":
                z = self._x_dot(Xb, W[0]) + b[0]
                loss, r, curv = binomial_terms(z, self.sign[lo:hi], sw, self.keep)
                out[0] += loss
                G[0] += self._xt_dot(Xb, r)
                gb[0] += r.sum()
            else:
                Z = self._x_dot(Xb, W.T) + b[None, :]
                loss, R, curv = multinomial_terms(Z, self.codes[lo:hi], sw, self.keep)
                out[0] += loss
                G += self._xt_dot(Xb, R).T
                gb += R.sum(axis=0)
            if self.keep:
                self.curv.append(curv)
        if self.keep:
            self._curv_theta = th.copy()
        return out

    def hvp(self, theta: Any, v: Any) -> Any:
        if not self.keep:
            raise RuntimeError("this chunk was prepared without curvature (curvature=True for Newton)")
        xp = self.xp
        th = xp.asarray(theta, dtype=xp.float64)
        if self._curv_theta is None or not bool(xp.array_equal(self._curv_theta, th)):
            self.sums(th)
        L = self.layout
        v = xp.asarray(v, dtype=xp.float64)
        V = L.coef(v)
        vb = L.intercept(v)
        out = xp.zeros(L.size, dtype=xp.float64)
        O = L.coef(out)
        ob = L.intercept(out)
        for (lo, hi), curv in zip(self.blocks, self.curv):
            Xb = self._x(lo, hi)
            if self.family.name == "binomial":
                t = (self._x_dot(Xb, V[0]) + vb[0]) * curv
                O[0] += self._xt_dot(Xb, t)
                ob[0] += t.sum()
            else:
                P, sw = curv
                U = self._x_dot(Xb, V.T) + vb[None, :]
                PU = P * U
                T = PU - P * PU.sum(axis=1, keepdims=True)
                if sw is not None:
                    T *= sw[:, None]
                O += self._xt_dot(Xb, T).T
                ob += T.sum(axis=0)
        return out


def binomial_terms(z: Any, sign: Any, sw: Any, curvature: bool) -> tuple[Any, Any, Any]:
    """Weighted loss sum, residuals ``s_i (sigmoid(z_i) - y_i)`` and curvature ``s_i p_i (1 - p_i)``."""
    xp = get_xp(z)
    s = sign * z
    e = xp.exp(-xp.abs(s))
    l = xp.maximum(s, 0.0) + xp.log1p(e)
    r = sign * xp.exp(s - l)
    curv = xp.exp(s - 2.0 * l) if curvature else None
    if sw is not None:
        loss = (l * sw).sum()
        r = r * sw
        if curv is not None:
            curv = curv * sw
    else:
        loss = l.sum()
    return loss, r, curv


def multinomial_terms(Z: Any, codes: Any, sw: Any, curvature: bool) -> tuple[Any, Any, Any]:
    """Weighted loss sum, residuals ``s_i (softmax(z_i) - onehot(c_i))`` and (softmax, weights)."""
    xp = get_xp(Z)
    n = Z.shape[0]
    m = Z.max(axis=1, keepdims=True)
    E = xp.exp(Z - m)
    S = E.sum(axis=1, keepdims=True)
    rows = xp.arange(n)
    lse = (m + xp.log(S)).reshape(-1)
    terms = lse - Z[rows, codes]
    P = E / S
    R = P.copy() if curvature else P
    R[rows, codes] -= 1.0
    if sw is not None:
        loss = (terms * sw).sum()
        R *= sw[:, None]
    else:
        loss = terms.sum()
    return loss, R, ((P, sw) if curvature else None)


# --------------------------------------------------------------------------------------------------
# specialised evaluators


class CudaBinomial(LinearChunk):
    """Binomial CuPy chunk: the fused one-pass CUDA kernel for the sums (cuBLAS for H.v)."""

    def __init__(self, X: Any, codes: Any, sample_weight: Any, layout: ParamLayout, family: Family, *,
                 kernel: str = "auto", curvature: bool = False) -> None:
        super().__init__(X, codes, sample_weight, layout, family, kernel=kernel, curvature=curvature)
        xp = self.xp
        self.X = xp.ascontiguousarray(self.X)
        self.y = self.codes.astype(self.X.dtype)
        self.kernel = "cuda"

    def sums(self, theta: Any) -> Any:
        if self.keep:  # Newton: the curvature comes from the two-pass path
            return super().sums(theta)
        from dlogit.kernels import cuda as kernels

        xp = self.xp
        d = self.d
        th = xp.asarray(theta, dtype=xp.float64)
        w = th[:d].astype(self.X.dtype)
        b = float(theta[d]) if not hasattr(theta, "get") else float(theta[d].get())
        loss, gw, gb = _cuda_sums(kernels, self.X, self.y, w, b, self.sw)
        out = xp.empty(d + 2, dtype=xp.float64)
        out[0] = loss
        out[1: d + 1] = gw
        out[d + 1] = gb
        return out


def _cuda_sums(kernels: Any, X: Any, y: Any, w: Any, b: float, sw: Any) -> tuple[Any, Any, Any]:
    if sw is None:
        return kernels.fused_chunk_sums(X, y, w, b, True)
    return kernels.fused_chunk_sums(X, y, w, b, True, sample_weight=sw)


# --------------------------------------------------------------------------------------------------
# multinomial, dense, CPU: two GEMMs per cache block, classes along the rows of Z


class DenseMultinomialCPU:
    """Multinomial sums of a dense NumPy chunk: per cache block ``Z = W @ X_b.T`` (K x rows: the
    per-row max, log-sum-exp and normalization reduce over a short leading axis, which NumPy vectorizes
    along the rows), the residuals in place, then ``G += R @ X_b`` while the block is in cache. Blocks
    that are not aligned, C-contiguous float32/float64 stream through a scratch buffer; work buffers
    are made once."""

    def __init__(self, X: np.ndarray, codes: Any, sample_weight: Any, layout: ParamLayout, family: Family,
                 *, kernel: str = "auto", curvature: bool = False) -> None:
        self.blocks = b = _Blocks(X)
        self.n, self.d = b.n, b.d
        self.layout = layout
        self.K = K = layout.n_outputs
        self.codes = np.ascontiguousarray(codes, dtype=np.int64)
        self.sw = None if sample_weight is None else np.ascontiguousarray(sample_weight, dtype=np.float64)
        m = b.rows
        self._z = np.empty(K * m)
        self._zn = np.empty(K * m, b.dtype) if b.dtype != np.float64 else None
        self._mx, self._s = np.empty(m), np.empty(m)
        self._gb = np.empty((K, self.d), b.dtype)
        # flat index of each row's own class in its block's (K, rows) Z
        self._own = [self.codes[lo:hi] * (hi - lo) + np.arange(hi - lo) for lo, hi in b.ranges]
        self.keep = curvature
        self._p = [np.empty((K, hi - lo)) for lo, hi in b.ranges] if curvature else []
        self._curv_theta: np.ndarray | None = None
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

    def sums(self, theta: Any) -> np.ndarray:
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
            mx, S = self._mx[:k], self._s[:k]
            np.max(Z, axis=0, out=mx)
            own = self._own[j]
            zc = Z.ravel()[own]
            Z -= mx
            np.exp(Z, out=Z)
            np.sum(Z, axis=0, out=S)
            terms = mx + np.log(S) - zc  # logsumexp - z_own
            Z /= S
            if self.keep:
                np.copyto(self._p[j], Z)
            Z.ravel()[own] -= 1.0
            if self.sw is not None:
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
        if self.keep:
            self._curv_theta = np.array(th, copy=True)
        return out

    def hvp(self, theta: Any, v: Any) -> np.ndarray:
        if not self.keep:
            raise RuntimeError("this chunk was prepared without curvature (curvature=True for Newton)")
        th = np.asarray(theta, dtype=np.float64)
        if self._curv_theta is None or not np.array_equal(self._curv_theta, th):
            self.sums(th)
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
            P = self._p[j]
            U *= P  # P * U
            T = U - P * U.sum(axis=0)
            if self.sw is not None:
                T *= self.sw[lo:hi]
            ob += T.sum(axis=1)
            Tb = T if dt == np.float64 else T.astype(dt)
            np.dot(Tb, Xb, out=self._gb)
            O += self._gb
        return out


# --------------------------------------------------------------------------------------------------
# SciPy CSR chunks on the CPU: one-pass Numba kernels (dlogit.kernels.sparse)

#: CSR chunks with at most this many features use the one-pass Numba kernels; wider ones the two SciPy
#: products (X @ w, X.T @ r). Measured on one thread (BENCHMARKS.md, "Sparse kernels"), 10^5 rows of 50
#: values: binomial 0.63-0.74x SciPy's time up to d = 10^4, 1.15x at 10^5, 2x at 10^6 (the one pass needs
#: both w and the gradient in cache); multinomial (K = 5) 0.91x at d = 10^3, slower from 10^4.
CSR_FUSED_MAX_FEATURES = {"binomial": 30_000, "multinomial": 2_000}

_EMPTY = np.empty(0)


class _CSRChunk:
    def __init__(self, X: Any, codes: Any, sample_weight: Any, layout: ParamLayout, curvature: bool) -> None:
        from dlogit.kernels import sparse

        self._k = sparse
        csr = sparse.canonical_csr(X.tocsr() if X.format != "csr" else X)
        self.data, self.indices, self.indptr = csr.data, csr.indices, csr.indptr
        self.n, self.d = csr.shape
        self.layout = layout
        self.sw = _EMPTY if sample_weight is None else np.ascontiguousarray(sample_weight, dtype=np.float64)
        self.keep = curvature
        self._curv_theta: np.ndarray | None = None
        self.kernel = "csr"

    def _at(self, theta: Any) -> None:
        if self._curv_theta is None or not np.array_equal(self._curv_theta, theta):
            self.sums(theta)

    def _mark(self, theta: Any) -> None:
        if self.keep:
            self._curv_theta = np.array(theta, dtype=np.float64, copy=True)


class CSRBinomialCPU(_CSRChunk):
    """Binomial sums of a SciPy CSR chunk: margins, residuals and the gradient's scatter-add in one pass."""

    def __init__(self, X: Any, codes: Any, sample_weight: Any, layout: ParamLayout, family: Family, *,
                 kernel: str = "auto", curvature: bool = False) -> None:
        super().__init__(X, codes, sample_weight, layout, curvature)
        self.sign = 1.0 - 2.0 * np.asarray(codes, dtype=np.float64)
        self.curv = np.empty(self.n) if curvature else _EMPTY

    def sums(self, theta: Any) -> np.ndarray:
        d = self.d
        out = np.empty(d + 2)
        w = np.ascontiguousarray(theta[:d], dtype=np.float64)
        out[0], out[d + 1] = self._k.csr_binomial_sums(self.data, self.indices, self.indptr, self.sign,
                                                       self.sw, w, float(theta[d]), out[1: d + 1], self.curv)
        self._mark(theta)
        return out

    def hvp(self, theta: Any, v: Any) -> np.ndarray:
        if not self.keep:
            raise RuntimeError("this chunk was prepared without curvature (curvature=True for Newton)")
        self._at(theta)
        d = self.d
        out = np.empty(d + 1)
        vw = np.ascontiguousarray(v[:d], dtype=np.float64)
        out[d] = self._k.csr_binomial_hvp(self.data, self.indices, self.indptr, self.curv, vw, float(v[d]),
                                          out[:d])
        return out


class CSRMultinomialCPU(_CSRChunk):
    """Multinomial sums of a SciPy CSR chunk in one pass over its rows."""

    def __init__(self, X: Any, codes: Any, sample_weight: Any, layout: ParamLayout, family: Family, *,
                 kernel: str = "auto", curvature: bool = False) -> None:
        super().__init__(X, codes, sample_weight, layout, curvature)
        self.cls = np.ascontiguousarray(codes, dtype=np.int64)
        K = layout.n_outputs
        self.pbuf = np.empty((self.n, K)) if curvature else np.empty((0, K))

    def sums(self, theta: Any) -> np.ndarray:
        L = self.layout
        out = np.empty(1 + L.size)
        th = np.ascontiguousarray(theta, dtype=np.float64)
        out[0] = self._k.csr_multinomial_sums(self.data, self.indices, self.indptr, self.cls, self.sw,
                                              L.coef(th), L.intercept(th), L.coef(out[1:]),
                                              L.intercept(out[1:]), self.pbuf)
        self._mark(theta)
        return out

    def hvp(self, theta: Any, v: Any) -> np.ndarray:
        if not self.keep:
            raise RuntimeError("this chunk was prepared without curvature (curvature=True for Newton)")
        self._at(theta)
        L = self.layout
        out = np.empty(L.size)
        vv = np.ascontiguousarray(v, dtype=np.float64)
        self._k.csr_multinomial_hvp(self.data, self.indices, self.indptr, self.pbuf, self.sw, L.coef(vv),
                                    L.intercept(vv), L.coef(out), L.intercept(out))
        return out


def _csr_cpu(cls: type) -> Callable[..., Any]:
    def factory(X: Any, codes: Any, sw: Any, layout: ParamLayout, family: Family, *, kernel: str = "auto",
                curvature: bool = False) -> Any:
        from dlogit.kernels import cpu

        fused = cpu.available() and kernel != "blas" and (
            kernel == "fused" or int(X.shape[1]) <= CSR_FUSED_MAX_FEATURES[family.name])
        if fused:
            return cls(X, codes, sw, layout, family, kernel=kernel, curvature=curvature)
        return LinearChunk(X, codes, sw, layout, family, kernel=kernel, curvature=curvature)
    return factory


Evaluator = Any
Factory = Callable[..., Evaluator]


def _dense_binomial_cpu(X: Any, codes: Any, sw: Any, layout: ParamLayout, family: Family, *,
                        kernel: str = "auto", curvature: bool = False) -> Evaluator:
    return DenseBinomialCPU(X, codes, sw, layout, kernel=kernel, curvature=curvature)


#: (array kind, family name) -> evaluator factory; pairs not listed use :class:`LinearChunk`
EVALUATORS: dict[tuple[str, str], Factory] = {
    ("numpy", "binomial"): _dense_binomial_cpu,
    ("numpy", "multinomial"): DenseMultinomialCPU,
    ("cupy", "binomial"): CudaBinomial,
    ("scipy-csr", "binomial"): _csr_cpu(CSRBinomialCPU),
    ("scipy-csr", "multinomial"): _csr_cpu(CSRMultinomialCPU),
}


def prepare_chunk(X: Any, codes: Any, sample_weight: Any, layout: ParamLayout, family: Family, *,
                  kernel: str = "auto", curvature: bool = False) -> Evaluator:
    """An evaluator for one chunk (see the module docstring)."""
    factory = EVALUATORS.get((array_kind(X), family.name), LinearChunk)
    return factory(X, codes, sample_weight, layout, family, kernel=kernel, curvature=curvature)


def chunk_sums(X: Any, y: Any, theta: Any, sample_weight: Any = None, kernel: str = "auto") -> Any:
    """One-off binomial sums of a chunk with 0/1 labels ``y`` (``[loss, grad_w, grad_b]``)."""
    d = int(X.shape[1])
    layout = ParamLayout(d, 1)
    return prepare_chunk(X, y, sample_weight, layout, Binomial(), kernel=kernel).sums(theta)


__all__ = [
    "EVALUATORS",
    "DenseBinomialCPU",
    "LinearChunk",
    "Multinomial",
    "SumsLayout",
    "array_kind",
    "binomial_terms",
    "chunk_sums",
    "multinomial_terms",
    "prepare_chunk",
]


def binomial_hessian(X: Any, codes: Any, sample_weight: Any, coef: Any, intercept: float,
                     fit_intercept: bool = True) -> np.ndarray:
    """``[X 1]^T diag(s p (1 - p)) [X 1]`` of one chunk ((d + 1) x (d + 1) float64 on the host; without
    intercept the last row and column are 0): the Hessian of its weighted loss sum, for standard errors."""
    from dlogit._xp import to_numpy

    sparse = hasattr(X, "nnz")
    xp = get_xp(X.data if sparse else X)
    n, d = (int(v) for v in X.shape)
    out = np.zeros((d + 1, d + 1))
    w = xp.asarray(np.asarray(coef, dtype=np.float64).reshape(-1))
    sign = 1.0 - 2.0 * xp.asarray(np.asarray(to_numpy(codes), dtype=np.float64))
    sw = None if sample_weight is None else xp.asarray(sample_weight, dtype=xp.float64)
    rows = max(64, CPU_BLOCK_BYTES // max(1, 8 * d)) if xp is np else max(n, 1)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        Xb = X[lo:hi]
        if not sparse and Xb.dtype != np.float64:
            Xb = Xb.astype(xp.float64)
        z = Xb @ w
        z = xp.asarray(z.toarray() if hasattr(z, "toarray") else z).reshape(-1) + float(intercept)
        _, _, D = binomial_terms(z, sign[lo:hi], None if sw is None else sw[lo:hi], True)
        if sparse:
            XD = Xb.multiply(D.reshape(-1, 1)).tocsr()
            H = (Xb.T @ XD).toarray()
            col = to_numpy(XD.sum(axis=0)).reshape(-1)
        else:
            XD = Xb * D[:, None]
            H = to_numpy(Xb.T @ XD)
            col = to_numpy(XD.sum(axis=0))
        out[:d, :d] += H
        if fit_intercept:
            out[:d, d] += col
            out[d, :d] += col
            out[d, d] += float(D.sum())
    return out
