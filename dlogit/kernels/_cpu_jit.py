"""The Numba half of :mod:`dlogit.kernels.cpu`: importing this module compiles (or loads from the on-disk
cache) the fused dense kernel for its fixed signatures. Nothing imports it until a fit or a warm-up uses a
fused kernel: :mod:`dlogit.kernels.cpu` hands its names out on first access, and
:mod:`dlogit.kernels.cache` says (without importing Numba) whether the on-disk cache already holds them.
See :mod:`dlogit.kernels.cpu` for the kernel's contract.
"""

from __future__ import annotations

import math
from typing import Any

import numba
from numba import types as nt

#: flags of the dense kernels: reassociation/contraction let the dot products vectorize
FAST_FLAGS: dict[str, Any] = {"fastmath": {"reassoc", "contract"}, "nogil": True, "error_model": "numpy",
                              "boundscheck": False}
#: flags of kernels that must round the same way on every x86-64 machine (IEEE order, no FMA)
STRICT_FLAGS: dict[str, Any] = {"fastmath": False, "nogil": True, "error_model": "numpy",
                                "boundscheck": False}


def compiled(sigs: list[Any] | None = None, flags: dict[str, Any] | None = None, **extra: Any) -> Any:
    """``numba.njit`` with the on-disk cache (compiled once per machine).

    Parameters
    ----------
    sigs : signatures to compile now; the dispatcher then compiles nothing else (a call with other
        types raises ``TypeError``). ``None`` compiles lazily, one variant per argument types met.
    flags : Numba options, :data:`FAST_FLAGS` by default.
    **extra : further ``numba.njit`` options (``inline="always"``).
    """
    opts = {**(FAST_FLAGS if flags is None else flags), **extra}
    args = () if sigs is None else (sigs,)

    def wrap(fn: Any) -> Any:
        try:
            return numba.njit(*args, cache=True, **opts)(fn)
        except RuntimeError:  # no writable cache location: compile per process instead
            return numba.njit(*args, **opts)(fn)
    return wrap


def array(dtype: Any, ndim: int = 1, readonly: bool = True) -> Any:
    """Numba type of a C-contiguous array; read-only types also accept writable arrays."""
    return nt.Array(dtype, ndim, "C", readonly=readonly)


@compiled(inline="always")
def binomial_row(a: float, b: float, sg: float) -> tuple[float, float, float]:
    """``(loss, residual, curvature)`` of one row with margin ``z = a + b`` and label sign ``sg``: the scalar
    specialization of :meth:`dlogit.family.Binomial.row_terms` the fused kernels inline."""
    s = sg * (a + b)
    e = math.exp(-abs(s))
    inv = 1.0 / (1.0 + e)
    return max(s, 0.0) + math.log1p(e), sg * (inv if s >= 0.0 else e * inv), e * inv * inv


@compiled(inline="always")
def _dense_binomial(X: Any, sg: Any, sw: Any, w: Any, b: float, g: Any, dbuf: Any,
                    weighted: bool, curvature: bool) -> tuple[float, float]:
    # inlined with constant flags: LLVM drops the weight/curvature code of the variants without them
    n, d = X.shape
    for j in range(d):
        g[j] = 0.0
    loss = 0.0
    gb = 0.0
    i = 0
    while i + 4 <= n:
        x0 = X[i]
        x1 = X[i + 1]
        x2 = X[i + 2]
        x3 = X[i + 3]
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        for j in range(d):
            wj = w[j]
            a0 += x0[j] * wj
            a1 += x1[j] * wj
            a2 += x2[j] * wj
            a3 += x3[j] * wj
        l0, r0, c0 = binomial_row(a0, b, sg[i])
        l1, r1, c1 = binomial_row(a1, b, sg[i + 1])
        l2, r2, c2 = binomial_row(a2, b, sg[i + 2])
        l3, r3, c3 = binomial_row(a3, b, sg[i + 3])
        if weighted:
            s0 = sw[i]
            s1 = sw[i + 1]
            s2 = sw[i + 2]
            s3 = sw[i + 3]
            l0 *= s0
            l1 *= s1
            l2 *= s2
            l3 *= s3
            r0 *= s0
            r1 *= s1
            r2 *= s2
            r3 *= s3
            c0 *= s0
            c1 *= s1
            c2 *= s2
            c3 *= s3
        if curvature:
            dbuf[i] = c0
            dbuf[i + 1] = c1
            dbuf[i + 2] = c2
            dbuf[i + 3] = c3
        loss += (l0 + l1) + (l2 + l3)
        gb += (r0 + r1) + (r2 + r3)
        for j in range(d):  # the four rows are still in L1
            g[j] += r0 * x0[j] + r1 * x1[j] + r2 * x2[j] + r3 * x3[j]
        i += 4
    while i < n:
        x0 = X[i]
        a0 = 0.0
        for j in range(d):
            a0 += x0[j] * w[j]
        l0, r0, c0 = binomial_row(a0, b, sg[i])
        if weighted:
            s0 = sw[i]
            l0 *= s0
            r0 *= s0
            c0 *= s0
        if curvature:
            dbuf[i] = c0
        loss += l0
        gb += r0
        for j in range(d):
            g[j] += r0 * x0[j]
        i += 1
    return loss, gb


_F8 = nt.float64
_DENSE_BINOMIAL_SIGS = [nt.UniTuple(_F8, 2)(array(dt, 2), array(_F8), array(_F8), array(_F8), _F8,
                                            array(_F8, readonly=False), array(_F8, readonly=False))
                        for dt in (nt.float64, nt.float32)]


@compiled(_DENSE_BINOMIAL_SIGS)
def dense_binomial_sums(X: Any, sg: Any, sw: Any, w: Any, b: float, g: Any,
                        dbuf: Any) -> tuple[float, float]:
    """Weighted loss and gradient sums of a dense binomial chunk, in one pass over its rows.

    Parameters
    ----------
    X : (n, d) C-contiguous float32 or float64 (read-only is fine: a memory map)
    sg : (n,) float64 label signs ``1 - 2 y`` (+1 for y = 0, -1 for y = 1)
    sw : (n,) float64 row weights ``s_i >= 0``, or (0,) for all ones (the unweighted loop, no cost)
    w : (d,) float64 coefficients
    b : intercept
    g : (d,) float64 output, overwritten with ``sum_i s_i r_i x_i``
    dbuf : (n,) float64 output, overwritten with the weighted curvatures ``s_i sigmoid(z_i)
        (1 - sigmoid(z_i))`` (what a Hessian-vector product needs), or (0,) to skip them

    Returns
    -------
    ``(sum_i s_i loss_i, sum_i s_i r_i)``: the loss sum and the intercept's gradient, float64.
    Products and sums are float64 for either ``X`` dtype. Arrays must be C-contiguous and of the
    dtypes above (anything else raises ``TypeError``; wrong lengths raise ``ValueError``).
    """
    n, d = X.shape
    if sg.shape[0] != n or w.shape[0] != d or g.shape[0] != d:
        raise ValueError("dense_binomial_sums: sg must have n entries, w and g d entries")
    if (sw.shape[0] != 0 and sw.shape[0] != n) or (dbuf.shape[0] != 0 and dbuf.shape[0] != n):
        raise ValueError("dense_binomial_sums: sw and dbuf must have n entries or none")
    if sw.shape[0] != 0:
        if dbuf.shape[0] != 0:
            return _dense_binomial(X, sg, sw, w, b, g, dbuf, True, True)
        return _dense_binomial(X, sg, sw, w, b, g, dbuf, True, False)
    if dbuf.shape[0] != 0:
        return _dense_binomial(X, sg, sw, w, b, g, dbuf, False, True)
    return _dense_binomial(X, sg, sw, w, b, g, dbuf, False, False)
