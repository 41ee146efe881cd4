"""The Numba half of :mod:`dlogit.kernels.sparse`: importing this module compiles (or loads from the on-disk
cache) the CSR kernels for their fixed signatures. :mod:`dlogit.kernels.sparse` hands these names out on
first access; see it for the kernels' contract. The binomial row terms are
:func:`dlogit.kernels._cpu_jit.binomial_row`, inlined here: Numba's disk cache keys a kernel on its own
file only, so after editing that function, touch this file (or delete ``dlogit/kernels/__pycache__``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import types as nt

from dlogit.kernels import _cpu_jit as cpu
from dlogit.kernels._cpu_jit import array, compiled

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
        li, ri, ci = cpu.binomial_row(_row_dot(data, indices, lo, hi, w), b, sg[i])
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
