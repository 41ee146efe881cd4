"""Per-chunk loss and gradient sums for logistic regression — pure and array-agnostic.

Everything here takes NumPy or CuPy arrays and returns arrays of the same namespace; nothing here knows
about Dask. A chunk's contribution is returned as **sums** (never means) so that chunks combine exactly:

``chunk_sums(X, y, theta)`` returns one float64 vector ``s`` of length ``d + 3``::

    s[0]       = sum_i log(1 + exp(z_i)) - y_i z_i        (cross-entropy summed over the chunk's rows)
    s[1:d+1]   = X.T @ (sigmoid(z) - y)                   (gradient of s[0] with respect to w)
    s[d+1]     = sum_i (sigmoid(z_i) - y_i)               (gradient with respect to b; 0 without intercept)
    s[d+2]     = number of rows

with ``z = X @ w + b`` and ``theta = [w_1 .. w_d, b]``. The penalty is added once, after the reduction
(:mod:`dlogit.objective`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlogit._xp import get_xp, is_cupy

#: bytes of X per cache block on the CPU path: X is read from memory once, each block re-read from cache
CPU_BLOCK_BYTES = 4 << 20


def log1pexp(z: Any) -> Any:
    """``log(1 + exp(z))`` without overflow or loss of precision (finite and exact at ``|z| = 1000``)."""
    xp = get_xp(z)
    return xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z)))


def log_sigmoid(z: Any) -> Any:
    """``log(sigmoid(z)) = -log1pexp(-z)``, stable for any finite ``z``."""
    return -log1pexp(-z)


def sigmoid(z: Any) -> Any:
    """``1 / (1 + exp(-z))`` evaluated without overflow for large ``|z|``."""
    xp = get_xp(z)
    e = xp.exp(-xp.abs(z))
    inv = 1.0 / (1.0 + e)
    return xp.where(z >= 0, inv, e * inv)


def _block_terms(z: Any, y: Any) -> tuple[Any, Any]:
    """Loss sum (float64 scalar) and residual ``sigmoid(z) - y`` for one block of margins."""
    xp = get_xp(z)
    if z.dtype != xp.float64:
        z = z.astype(xp.float64)
    e = xp.abs(z)
    xp.negative(e, out=e)
    xp.exp(e, out=e)  # e = exp(-|z|) in (0, 1]: never overflows
    loss = xp.sum(xp.maximum(z, 0)) + xp.sum(xp.log1p(e)) - xp.dot(y.astype(xp.float64, copy=False), z)
    inv = e + 1.0
    xp.reciprocal(inv, out=inv)
    r = xp.where(z >= 0, inv, e * inv)
    r -= y
    return loss, r


def split_theta(theta: Any, dtype: Any) -> tuple[Any, float]:
    """Split ``theta = [w, b]`` into ``w`` (cast to the data's dtype) and the float ``b``."""
    return theta[:-1].astype(dtype, copy=False), float(theta[-1])


def chunk_sums(X: Any, y: Any, theta: Any, fit_intercept: bool = True) -> Any:
    """Loss/gradient sums of one chunk, as described in the module docstring.

    Parameters
    ----------
    X : (n, d) NumPy or CuPy array, float32 or float64
    y : (n,) array of 0/1 labels in the same namespace
    theta : (d + 1,) array ``[w, b]`` in the same namespace (float64 advised)
    fit_intercept : whether ``b`` is a free parameter (its gradient entry is 0 otherwise)

    Returns
    -------
    (d + 3,) float64 array in the namespace of ``X``.
    """
    n, d = X.shape
    xp = get_xp(X)
    if is_cupy(X):
        return _cupy_sums(X, y, theta, fit_intercept)
    out = np.zeros(d + 3)
    w, b = split_theta(theta, X.dtype)
    if not fit_intercept:
        b = 0.0
    rows = max(64, CPU_BLOCK_BYTES // max(1, d * X.dtype.itemsize))
    grad = out[1 : d + 1]
    for start in range(0, n, rows):
        Xb = X[start : start + rows] if n > rows else X
        yb = y[start : start + rows] if n > rows else y
        z = Xb @ w
        if b:
            z = z + b
        loss, r = _block_terms(z, yb)
        out[0] += loss
        # X-transpose product while the block is still in cache: one pass over X from memory
        grad += Xb.T @ r.astype(X.dtype, copy=False)
        if fit_intercept:
            out[d + 1] += r.sum()
    out[d + 2] = n
    return xp.asarray(out)


def _cupy_sums(X: Any, y: Any, theta: Any, fit_intercept: bool) -> Any:
    import cupy as cp

    n, d = X.shape
    w, b = split_theta(theta, X.dtype)
    if not fit_intercept:
        b = 0.0
    from dlogit.kernels import cuda as kernels

    fused_ok = X.flags.c_contiguous and X.dtype in (cp.float32, cp.float64) and y.dtype == X.dtype
    if fused_ok:
        loss, gw, gb = kernels.fused_chunk_sums(X, y, w, b, fit_intercept)
    else:
        loss, gw, gb = kernels.reference_chunk_sums(X, y, w, b, fit_intercept)
    out = cp.empty(d + 3, dtype=cp.float64)
    out[0] = loss
    out[1 : d + 1] = gw
    out[d + 1] = gb if fit_intercept else 0.0
    out[d + 2] = n
    return out


def decision(X: Any, coef: Any, intercept: float) -> Any:
    """Margins ``X @ coef + intercept`` in the namespace of ``X`` (float64 result)."""
    xp = get_xp(X)
    return (X @ xp.asarray(coef, dtype=X.dtype)).astype(xp.float64) + intercept
