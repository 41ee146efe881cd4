"""CPU kernels for sparse (CSR) chunks, binomial and multinomial, and the checks their input must pass.

A chunk is a CSR block of rows ``(data, indices, indptr)`` with ``n`` rows and ``d`` columns. Every kernel
makes one pass over the rows and, for each row, reads its stored values once to form the margin(s) and
then scatter-adds the row's gradient contribution while the row is still in cache. Products and sums are
float64 whether ``data`` is float32 or float64; every sum is weighted by the row weights ``sw`` (a
length-0 ``sw`` means all ones).

binomial (labels as signs ``sg = 1 - 2 y``; :func:`dlogit.kernels.cpu.binomial_terms`)
    :func:`csr_binomial_sums` loss, gradient, intercept gradient and (optionally) the weighted
    curvatures ``s_i sigmoid(z_i) (1 - sigmoid(z_i))``; :func:`csr_binomial_hvp` the Hessian-vector
    product from those curvatures.
multinomial (``K`` classes, class ids ``cls``; ``W`` is ``(K, d)``)
    :func:`csr_multinomial_sums` loss, gradient ``G[k, j] = sum_i s_i R_ik x_ij``, intercept gradient
    and (optionally) the probabilities; :func:`csr_multinomial_hvp` the Hessian-vector product from them.

The kernels are single-threaded, release the GIL, allocate nothing that grows with the chunk (outputs are
passed in and overwritten; the multinomial kernels take one ``K``-sized scratch per call) and are compiled
without ``fastmath``: each sum is taken in the order the code states (four interleaved partial sums per
row, combined as ``(a0 + a1) + (a2 + a3)``; no FMA contraction), so a chunk's sums do not depend on the
CPU's vector width or FMA support. Indices need not be sorted, and duplicates add up (as SciPy's
``toarray()`` does them). Positions and column indices are read as unsigned, which spares the
negative-index test on every access (measured 1.3-2x faster gathers).

Measured on one thread (2-core AMD EPYC, shared), n = 100 000 rows of 50 values, against SciPy's two
passes (``X @ w``, then ``X.T @ r`` with NumPy's element-wise terms between): the binomial sums take
0.75x its time at d = 10^3, 0.63x at 10^4, 1.15x at 10^5 and ~2x at 10^6, where ``w`` and ``g`` (16 MB)
no longer share the cache as each pass alone does; the multinomial sums (K = 5) 0.9x, 1.3x, 1.5x, 1.9x.
``W`` and ``G`` are ``(K, d)``, the parameter vector's layout; a ``(d, K)`` layout (a feature's K values
in one cache line) measured 1.6x faster than this one at d = 10^6, K = 5, and 3-4x at d = 10^5, K = 20.

Signatures are fixed when this module is imported (``float32``/``float64`` data x ``int32``/``int64``
indices; ``indices`` and ``indptr`` share one dtype, see :func:`canonical_csr`; every input is typed
read-only, which writable arrays also satisfy, so a memory-mapped chunk compiles nothing). The kernels do
not check that column indices are in range or that ``indptr`` is monotone (that would cost a pass over
the chunk per step): :func:`check_csr` does it once, when the chunk is loaded. Without Numba
(:func:`dlogit.kernels.cpu.available` false) only the pure-NumPy helpers are defined.

The binomial row terms are :func:`dlogit.kernels.cpu.binomial_terms`, inlined here. Numba's disk cache
keys a kernel on its own file only: after editing that function, touch this file (or delete
``dlogit/kernels/__pycache__``) so that these kernels are recompiled with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlogit.errors import DataError
from dlogit.kernels import cpu

#: the largest value an int32 index or index pointer can hold
INT32_MAX = 2**31 - 1
#: elements per block in :func:`check_csr` (bounded temporaries for chunks of any size)
CHECK_BLOCK = 1 << 22


@dataclass(frozen=True, eq=False)
class CSR:
    """A CSR chunk with the dtypes the kernels take (see :func:`canonical_csr`).

    Attributes
    ----------
    data : (nnz,) float32 or float64, C-contiguous
    indices : (nnz,) int32 or int64 column indices, the dtype of ``indptr``
    indptr : (n_rows + 1,) int32 or int64, ``indptr[0] == 0``
    shape : ``(n_rows, n_cols)``
    """

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def n_cols(self) -> int:
        return self.shape[1]

    @property
    def nnz(self) -> int:
        return int(self.data.shape[0])


def needs_int64(nnz: int, n_cols: int) -> bool:
    """True when a CSR with ``nnz`` stored values and ``n_cols`` columns needs int64 index arrays:
    ``nnz >= 2**31`` (``indptr`` holds ``nnz``) or ``n_cols >= 2**31``."""
    return nnz > INT32_MAX or n_cols > INT32_MAX


def _parts(X: Any) -> tuple[Any, Any, Any, tuple[int, ...]]:
    fmt = getattr(X, "format", "csr")
    if fmt != "csr" or not all(hasattr(X, a) for a in ("data", "indices", "indptr", "shape")):
        raise DataError(f"expected a CSR matrix, got {type(X).__name__}"
                        f"{f' in {fmt!r} format' if isinstance(fmt, str) and fmt != 'csr' else ''}"
                        f"{' (convert it with .tocsr())' if hasattr(X, 'tocsr') else ''}")
    return np.asarray(X.data), np.asarray(X.indices), np.asarray(X.indptr), tuple(int(s) for s in X.shape)


def _blocks(length: int) -> range:
    return range(0, length, CHECK_BLOCK)


def check_csr(X: Any, index: int = 0, where: str = "") -> None:
    """Validate a CSR chunk without densifying it; raise :class:`~dlogit.errors.DataError` if unusable.

    Parameters
    ----------
    X : a SciPy CSR matrix or array (``csr_matrix``, ``csr_array``) or a :class:`CSR`
    index, where : the chunk's number and location, named in the message (as
        :func:`dlogit.validation.check_chunk` does)

    Raises
    ------
    DataError
        with one line naming the problem: not CSR, non-numeric values, index arrays that are not
        integers, ``indptr`` of the wrong length, not starting at 0, decreasing (the first offending row
        and how many), or pointing past the stored values, ``data``/``indices`` of different lengths,
        column indices outside ``[0, n_cols)`` (how many, and one of them), NaN or infinite stored values
        (how many). Unsorted and duplicate column indices are valid (the kernels need neither sorted nor
        unique indices; duplicates add up). Temporaries are at most :data:`CHECK_BLOCK` elements.
    """
    at = f" (chunk {index}{', ' + where if where else ''})" if index or where else ""
    data, indices, indptr, shape = _parts(X)
    if len(shape) != 2:
        raise DataError(f"X must be 2-D (rows x features), got {len(shape)}-D{at}")
    n_rows, n_cols = shape
    if data.dtype.kind not in "fiub" or data.ndim != 1:
        raise DataError(f"X must hold real numbers in a 1-D data array, got {data.ndim}-D dtype "
                        f"{data.dtype}{at}")
    for name, arr in (("indices", indices), ("indptr", indptr)):
        if arr.dtype.kind not in "iu" or arr.ndim != 1:
            raise DataError(f"CSR {name} must be a 1-D integer array, got {arr.ndim}-D dtype {arr.dtype}{at}")
    if indptr.shape[0] != n_rows + 1:
        raise DataError(f"CSR indptr has {indptr.shape[0]} entries; {n_rows} rows need n_rows + 1 = "
                        f"{n_rows + 1}{at}")
    if data.shape[0] != indices.shape[0]:
        raise DataError(f"CSR data and indices differ in length ({data.shape[0]} vs {indices.shape[0]}){at}")
    if int(indptr[0]) != 0:
        raise DataError(f"CSR indptr must start at 0, starts at {int(indptr[0])}{at}")
    drops, first = 0, -1
    for lo in _blocks(n_rows):
        hi = min(lo + CHECK_BLOCK, n_rows)
        down = indptr[lo + 1: hi + 1] < indptr[lo:hi]
        count = int(np.count_nonzero(down))
        if count and first < 0:
            first = lo + int(np.argmax(down))
        drops += count
    if drops:
        raise DataError(f"CSR indptr decreases at {drops} row(s), first at row {first} "
                        f"({int(indptr[first])} -> {int(indptr[first + 1])}){at}")
    nnz = int(indptr[-1])
    if nnz > data.shape[0]:
        raise DataError(f"CSR indptr ends at {nnz} but only {data.shape[0]} values are stored{at}")
    bad, example = 0, 0
    for lo in _blocks(nnz):
        blk = indices[lo: min(lo + CHECK_BLOCK, nnz)]
        out = blk >= n_cols
        if blk.dtype.kind == "i":
            out |= blk < 0
        count = int(np.count_nonzero(out))
        if count and not bad:
            example = int(blk[int(np.argmax(out))])
        bad += count
    if bad:
        raise DataError(f"CSR column indices out of range: {bad} outside [0, {n_cols}), e.g. {example}{at}")
    if data.dtype.kind == "f":
        bad = 0
        for lo in _blocks(nnz):
            bad += int(np.count_nonzero(~np.isfinite(data[lo: min(lo + CHECK_BLOCK, nnz)])))
        if bad:
            raise DataError(f"X contains {bad} NaN or infinite stored value(s){at}")


def canonical_csr(X: Any) -> CSR:
    """``X`` as a :class:`CSR` with the dtypes the kernels are compiled for, copying only what must change.

    ``data`` becomes float32 (float16 and float32 input) or float64 (anything else), C-contiguous;
    ``indices`` and ``indptr`` share one dtype: int32, or int64 when either already is int64 or
    :func:`needs_int64` says so. Arrays already canonical are used as they are (views, no copy; read-only
    arrays such as memory maps stay read-only), cut to the ``indptr[-1]`` values in use. Validate first
    with :func:`check_csr`: this only converts.
    """
    data, indices, indptr, shape = _parts(X)
    n_rows, n_cols = shape
    nnz = int(indptr[-1]) if indptr.shape[0] else 0
    ftype = np.float32 if data.dtype in (np.float16, np.float32) else np.float64
    itype = np.int64 if (needs_int64(nnz, n_cols) or np.int64 in (indices.dtype, indptr.dtype)) else np.int32
    return CSR(data=np.ascontiguousarray(data[:nnz], dtype=ftype),
               indices=np.ascontiguousarray(indices[:nnz], dtype=itype),
               indptr=np.ascontiguousarray(indptr, dtype=itype), shape=(n_rows, n_cols))


if cpu.available():
    from numba import types as nt

    compiled, array = cpu.compiled, cpu.array
    _F8, _I8 = nt.float64, nt.int64
    _RW1, _RW2 = array(_F8, readonly=False), array(_F8, 2, readonly=False)
    _VARIANTS = [(array(dt), array(it), array(it))
                 for dt in (nt.float64, nt.float32) for it in (nt.int32, nt.int64)]

    def _sigs(ret: Any, *rest: Any) -> list[Any]:
        return [ret(*csr, *rest) for csr in _VARIANTS]

    _U = np.uint64  # positions and column indices as unsigned: no negative-index wraparound per access

    @compiled(flags=cpu.STRICT_FLAGS, inline="always")
    def _row(indptr: Any, i: int) -> tuple[Any, Any]:
        return _U(indptr[i]), _U(indptr[i + 1])

    @compiled(flags=cpu.STRICT_FLAGS, inline="always")
    def _row_dot(data: Any, indices: Any, lo: Any, hi: Any, v: Any) -> float:
        # sum_k data[k] * v[indices[k]] over one row: four partial sums in a fixed order
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        k = lo
        while k + _U(4) <= hi:
            a0 += np.float64(data[k]) * v[_U(indices[k])]
            a1 += np.float64(data[k + _U(1)]) * v[_U(indices[k + _U(1)])]
            a2 += np.float64(data[k + _U(2)]) * v[_U(indices[k + _U(2)])]
            a3 += np.float64(data[k + _U(3)]) * v[_U(indices[k + _U(3)])]
            k += _U(4)
        while k < hi:
            a0 += np.float64(data[k]) * v[_U(indices[k])]
            k += _U(1)
        return (a0 + a1) + (a2 + a3)

    @compiled(flags=cpu.STRICT_FLAGS, inline="always")
    def _row_axpy(data: Any, indices: Any, lo: Any, hi: Any, alpha: float, out: Any) -> None:
        # out[indices[k]] += alpha * data[k] over one row (duplicates add up)
        for k in range(lo, hi):
            out[_U(indices[k])] += alpha * np.float64(data[k])

    @compiled(_sigs(nt.UniTuple(_F8, 2), array(_F8), array(_F8), array(_F8), _F8, _RW1, _RW1),
              flags=cpu.STRICT_FLAGS)
    def csr_binomial_sums(data: Any, indices: Any, indptr: Any, sg: Any, sw: Any, w: Any, b: float,
                          g: Any, dbuf: Any) -> tuple[float, float]:
        """Weighted binomial loss and gradient sums of a CSR chunk, in one pass over its rows.

        Parameters
        ----------
        data, indices, indptr : the chunk (:func:`canonical_csr`, validated by :func:`check_csr`)
        sg : (n,) float64 label signs ``1 - 2 y``
        sw : (n,) float64 row weights, or (0,) for all ones
        w : (d,) float64 coefficients
        b : intercept
        g : (d,) float64 output, overwritten with ``sum_i s_i r_i x_i``
        dbuf : (n,) float64 output, overwritten with ``s_i sigmoid(z_i) (1 - sigmoid(z_i))`` (the input
            of :func:`csr_binomial_hvp`), or (0,) to skip

        Returns
        -------
        ``(sum_i s_i loss_i, sum_i s_i r_i)``. Rows with weight 0 add nothing (their scatter is skipped).
        """
        n = indptr.shape[0] - 1
        if n < 0 or sg.shape[0] != n or w.shape[0] != g.shape[0]:
            raise ValueError("csr_binomial_sums: sg must have n = len(indptr) - 1 entries, w and g d entries")
        if (sw.shape[0] != 0 and sw.shape[0] != n) or (dbuf.shape[0] != 0 and dbuf.shape[0] != n):
            raise ValueError("csr_binomial_sums: sw and dbuf must have n entries or none")
        weighted = sw.shape[0] != 0
        curvature = dbuf.shape[0] != 0
        g[:] = 0.0
        loss = 0.0
        gb = 0.0
        for i in range(n):
            lo, hi = _row(indptr, i)
            li, ri, ci = cpu.binomial_terms(_row_dot(data, indices, lo, hi, w), b, sg[i])
            if weighted:
                s = sw[i]
                li *= s
                ri *= s
                ci *= s
            if curvature:
                dbuf[i] = ci
            loss += li
            gb += ri
            if ri != 0.0:
                _row_axpy(data, indices, lo, hi, ri, g)
        return loss, gb

    @compiled(_sigs(_F8, array(_F8), array(_F8), _F8, _RW1), flags=cpu.STRICT_FLAGS)
    def csr_binomial_hvp(data: Any, indices: Any, indptr: Any, dcurv: Any, v: Any, vb: float,
                         out: Any) -> float:
        """Hessian-vector product of the weighted binomial loss sum of a CSR chunk.

        With ``u_i = x_i . v + vb``: ``out`` (d,) float64 is overwritten with ``sum_i dcurv_i u_i x_i``, and
        ``sum_i dcurv_i u_i`` (the intercept entry) is returned. ``dcurv`` (n,) is the ``dbuf`` the last
        :func:`csr_binomial_sums` at the same coefficients filled (weights included); ``v`` (d,) and ``vb``
        are the direction's coefficient and intercept parts.
        """
        n = indptr.shape[0] - 1
        if n < 0 or dcurv.shape[0] != n or v.shape[0] != out.shape[0]:
            raise ValueError("csr_binomial_hvp: dcurv must have n = len(indptr) - 1 entries, v and out d")
        out[:] = 0.0
        tb = 0.0
        for i in range(n):
            lo, hi = _row(indptr, i)
            t = dcurv[i] * (_row_dot(data, indices, lo, hi, v) + vb)
            tb += t
            if t != 0.0:
                _row_axpy(data, indices, lo, hi, t, out)
        return tb

    @compiled(_sigs(_F8, array(_I8), array(_F8), array(_F8, 2), array(_F8), _RW2, _RW1, _RW2),
              flags=cpu.STRICT_FLAGS)
    def csr_multinomial_sums(data: Any, indices: Any, indptr: Any, cls: Any, sw: Any, W: Any, b: Any,
                             G: Any, gb: Any, pbuf: Any) -> float:
        """Weighted multinomial loss and gradient sums of a CSR chunk, in one pass over its rows.

        For row ``i`` with margins ``z_i = W x_i + b`` and class ``c_i``: ``loss_i = logsumexp(z_i) -
        z_{i c_i}``, ``p_i = softmax(z_i)``, residual ``R_ik = p_ik - [k = c_i]``. Evaluated from the row
        maximum ``m``: with ``e_k = exp(z_ik - m)`` and ``rest`` the sum of ``e_k`` over the classes but
        the (first) largest, ``loss_i = (m - z_{i c_i}) + log1p(rest)`` and, when ``c_i`` is the largest,
        ``R_{i c_i} = -rest / (1 + rest)``: finite at any margin, and a well-classified row keeps the
        relative precision of its tiny loss and residual.

        Parameters
        ----------
        data, indices, indptr : the chunk (:func:`canonical_csr`, validated by :func:`check_csr`)
        cls : (n,) int64 class ids in ``0 .. K-1`` (others raise ``ValueError``)
        sw : (n,) float64 row weights, or (0,) for all ones
        W : (K, d) float64 coefficients, C order; ``b`` (K,) float64 intercepts
        G : (K, d) float64 output, overwritten with ``sum_i s_i R_ik x_ij``
        gb : (K,) float64 output, overwritten with ``sum_i s_i R_ik``
        pbuf : (n, K) float64 output, overwritten with ``p_i`` (unweighted; the input of
            :func:`csr_multinomial_hvp`), or with 0 rows to skip

        Returns
        -------
        ``sum_i s_i loss_i``.
        """
        n = indptr.shape[0] - 1
        K, d = W.shape
        if n < 0 or cls.shape[0] != n or (sw.shape[0] != 0 and sw.shape[0] != n):
            raise ValueError("csr_multinomial_sums: cls must have n = len(indptr) - 1 entries, sw n or none")
        if G.shape[0] != K or G.shape[1] != d or b.shape[0] != K or gb.shape[0] != K:
            raise ValueError("csr_multinomial_sums: G must have W's shape (K, d), b and gb K entries")
        if pbuf.shape[0] != 0 and (pbuf.shape[0] != n or pbuf.shape[1] != K):
            raise ValueError("csr_multinomial_sums: pbuf must be (n, K) or have 0 rows")
        weighted = sw.shape[0] != 0
        probs = pbuf.shape[0] != 0
        z = np.empty(K)
        G[:] = 0.0
        gb[:] = 0.0
        loss = 0.0
        for i in range(n):
            c = cls[i]
            if c < 0 or c >= K:
                raise ValueError("csr_multinomial_sums: a class id is outside 0 .. K-1")
            lo, hi = _row(indptr, i)
            top = 0
            for k in range(K):
                z[k] = b[k] + _row_dot(data, indices, lo, hi, W[k])
                if z[k] > z[top]:
                    top = k
            m = z[top]
            zc = z[c]
            rest = 0.0
            for k in range(K):
                if k != top:
                    z[k] = math.exp(z[k] - m)
                    rest += z[k]
            z[top] = 1.0
            inv = 1.0 / (1.0 + rest)
            s = sw[i] if weighted else 1.0
            loss += s * ((m - zc) + math.log1p(rest))
            for k in range(K):  # z holds exp(z_k - m); make it p_k, then s * R_k
                z[k] *= inv
                if probs:
                    pbuf[i, k] = z[k]
            z[c] = -rest * inv if c == top else z[c] - 1.0
            if s == 0.0:
                continue
            for k in range(K):
                r = s * z[k]
                gb[k] += r
                _row_axpy(data, indices, lo, hi, r, G[k])
        return loss

    @compiled(_sigs(nt.none, array(_F8, 2), array(_F8), array(_F8, 2), array(_F8), _RW2, _RW1),
              flags=cpu.STRICT_FLAGS)
    def csr_multinomial_hvp(data: Any, indices: Any, indptr: Any, pbuf: Any, sw: Any, V: Any, vb: Any,
                            OUT: Any, outb: Any) -> None:
        """Hessian-vector product of the weighted multinomial loss sum of a CSR chunk.

        For each row, ``u_i = V x_i + vb`` (K,) and ``t_i = p_i * u_i - p_i (p_i . u_i)``; ``OUT`` (K, d)
        is overwritten with ``sum_i s_i t_i x_i^T`` and ``outb`` (K,) with ``sum_i s_i t_i``. ``pbuf``
        (n, K) holds the probabilities the last :func:`csr_multinomial_sums` at the same coefficients
        wrote; ``sw`` the row weights (or (0,)); ``V`` (K, d) and ``vb`` (K,) the direction.
        """
        n = indptr.shape[0] - 1
        K, d = V.shape
        if n < 0 or pbuf.shape[0] != n or pbuf.shape[1] != K or (sw.shape[0] != 0 and sw.shape[0] != n):
            raise ValueError("csr_multinomial_hvp: pbuf must be (n, K), n = len(indptr) - 1; sw n or none")
        if OUT.shape[0] != K or OUT.shape[1] != d or vb.shape[0] != K or outb.shape[0] != K:
            raise ValueError("csr_multinomial_hvp: OUT must have V's shape (K, d), vb and outb K entries")
        weighted = sw.shape[0] != 0
        u = np.empty(K)
        OUT[:] = 0.0
        outb[:] = 0.0
        for i in range(n):
            s = sw[i] if weighted else 1.0
            if s == 0.0:
                continue
            lo, hi = _row(indptr, i)
            pu = 0.0
            for k in range(K):
                u[k] = vb[k] + _row_dot(data, indices, lo, hi, V[k])
                pu += pbuf[i, k] * u[k]
            for k in range(K):
                t = s * (pbuf[i, k] * (u[k] - pu))
                outb[k] += t
                _row_axpy(data, indices, lo, hi, t, OUT[k])

