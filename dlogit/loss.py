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

import os
from typing import Any

import numpy as np

from dlogit._xp import get_xp, is_cupy
from dlogit.errors import ConfigError

_sum = np.add.reduce  # ndarray.sum without its Python wrapper (the same pairwise summation)

#: bytes of X per cache block on the CPU path: X is read from memory once, each block re-read from cache
CPU_BLOCK_BYTES = 4 << 20

#: ``kernel="auto"`` uses the fused one-pass CPU kernel for chunks with at least this many features.
#: Measured on one thread (BENCHMARKS.md, "CPU kernel choice"): fused/BLAS time 0.55-0.95 for d >= 256 at
#: every chunk size from 0.5 to 128 MiB, mixed around d = 100, and mostly slower (up to 2x) for d <= 64,
#: where the per-row scalar exp/log1p cost more than the second (cached) pass over X that fusion saves.
FUSED_MIN_FEATURES = 128
#: The fused kernel runs on one thread. Where BLAS has several (in-process fits; Dask workers set one),
#: ``auto`` leaves chunks larger than this to multithreaded BLAS.
FUSED_MAX_BYTES_THREADED_BLAS = 4 << 20

CPU_KERNELS = ("auto", "fused", "blas")


def blas_threads() -> int:
    """Threads BLAS will use in this process, from the variables OpenBLAS/MKL/OpenMP read at start-up
    (Dask worker processes get ``OPENBLAS_NUM_THREADS=1``), else the CPUs this process may run on."""
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_cpu_kernel(kernel: str, n: int, d: int, dtype: Any, threads: int | None = None) -> str:
    """Which CPU path evaluates an ``(n, d)`` chunk of ``dtype``: ``"fused"`` (one pass, Numba) or ``"blas"``.

    ``kernel`` is ``"auto"``, ``"fused"`` (always; an error without Numba) or ``"blas"`` (never). ``auto``
    picks fused when Numba is installed, ``d >= FUSED_MIN_FEATURES``, and either BLAS has one thread
    (``threads``, default :func:`blas_threads`) or the chunk is at most ``FUSED_MAX_BYTES_THREADED_BLAS``.
    The fused kernel is compiled for float32 and float64 chunks only; other float dtypes (longdouble)
    always take the BLAS path.
    """
    if kernel not in CPU_KERNELS:
        raise ValueError(f"cpu kernel must be one of {', '.join(CPU_KERNELS)}, not {kernel!r}")
    dtype = np.dtype(dtype)
    if kernel == "blas" or dtype not in (np.float32, np.float64):
        return "blas"
    from dlogit.kernels import cpu

    if kernel == "fused":
        if not cpu.available():
            raise ConfigError("dlogit.cpu-kernel is 'fused' but numba is not installed here")
        return "fused"
    if d < FUSED_MIN_FEATURES or not cpu.available():
        return "blas"
    if n * d * dtype.itemsize > FUSED_MAX_BYTES_THREADED_BLAS:
        if (blas_threads() if threads is None else threads) > 1:
            return "blas"
    return "fused"


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


def split_theta(theta: Any, dtype: Any) -> tuple[Any, float]:
    """Split ``theta = [w, b]`` into ``w`` (cast to the data's dtype) and the float ``b``."""
    return theta[:-1].astype(dtype, copy=False), float(theta[-1])


class PreparedChunk:
    """One chunk made ready for repeated evaluation: the inner loop of every solver.

    On the CPU it keeps the label signs ``sigma = 1 - 2 y`` (+1 for ``y = 0``, -1 for ``y = 1``) and
    work buffers for one cache block, so that a step makes no temporaries the size of the chunk.
    With the signed margin ``s = sigma * z`` every row's terms come from one stable expression::

        loss_i     = log1pexp(s_i)                    (= log(1 + exp(z_i)) - y_i z_i)
        residual_i = sigma_i * exp(s_i - loss_i)      (= sigma_i * sigmoid(s_i) = sigmoid(z_i) - y_i)

    which never overflows and, unlike ``sigmoid(z) - y``, keeps full relative precision in the
    residual of a well-classified row. Two CPU paths (``kernel``, see :func:`choose_cpu_kernel`):

    * ``"blas"``: X is read from memory once per step: each cache block's ``X_b @ w`` and then
      ``X_b.T @ r_b`` run while the block is still in cache (two BLAS passes, the second from cache);
    * ``"fused"``: one pass of :func:`dlogit.kernels.cpu.fused_sums` (rows read once, from memory or cache).

    CuPy chunks go to the fused CUDA kernel.

    Not thread-safe (the buffers are shared between calls); one owner evaluates it at a time.
    """

    def __init__(self, X: Any, y: Any, fit_intercept: bool = True, kernel: str = "auto") -> None:
        xp = get_xp(X)
        if X.dtype.kind != "f":
            X = X.astype(xp.float64)
        elif X.dtype.itemsize < 4:  # float16: float32 holds it exactly, and BLAS has no half products
            X = X.astype(xp.float32)
        if not X.flags.c_contiguous:
            X = xp.ascontiguousarray(X)
        y = y.astype(X.dtype, copy=False)
        self.X = X
        self.y = y if is_cupy(X) else None  # the CPU path keeps only the label signs
        self.n, self.d = (int(v) for v in X.shape)
        self.fit_intercept = bool(fit_intercept)
        self.gpu = is_cupy(X)
        if self.gpu:
            self.kernel = "cuda"
            return
        self.kernel = choose_cpu_kernel(kernel, self.n, self.d, X.dtype)
        self.sign = 1.0 - 2.0 * np.asarray(y, dtype=np.float64)
        if self.kernel == "fused":
            from dlogit.kernels.cpu import fused_sums

            self._fused = fused_sums
            self._w = np.empty(self.d)  # theta's weights copied here: writable float64, one compiled variant
            return
        rows = max(64, CPU_BLOCK_BYTES // max(1, self.d * X.dtype.itemsize))
        blocks = [(lo, min(lo + rows, self.n)) for lo in range(0, self.n, rows)]
        m = min(rows, self.n)
        s, l, e = np.empty(m), np.empty(m), np.empty(m)
        self._narrow = X.dtype != np.float64  # float32 data: BLAS in float32, the rest in float64
        z = r = None
        if self._narrow:
            z, r = np.empty(m, X.dtype), np.empty(m, X.dtype)
        self._g = np.empty(self.d, X.dtype)
        whole = len(blocks) == 1
        # per block, made once: (X rows, label signs, margin/residual, loss terms, scratch, z, r)
        self._plan = [
            (X if whole else X[lo:hi], self.sign if whole else self.sign[lo:hi], s[: hi - lo],
             l[: hi - lo], e[: hi - lo], None if z is None else z[: hi - lo],
             None if r is None else r[: hi - lo])
            for lo, hi in blocks
        ]

    def sums(self, theta: Any) -> Any:
        """The chunk's ``(d + 3,)`` float64 sums at ``theta`` (see the module docstring)."""
        if self.gpu:
            return _cupy_sums(self.X, self.y, theta, self.fit_intercept)
        d = self.d
        out = np.empty(d + 3)
        grad = out[1 : d + 1]
        b = float(theta[d]) if self.fit_intercept else 0.0
        if self.kernel == "fused":
            w = self._w
            np.copyto(w, theta[:d])
            out[0], gb = self._fused(self.X, self.sign, w, b, grad)
            out[d + 1] = gb if self.fit_intercept else 0.0
            out[d + 2] = self.n
            return out
        w = theta[:d].astype(self.X.dtype, copy=False)
        loss = gb = 0.0
        first = True
        for Xb, sg, s, l, e, z, r in self._plan:
            if z is None:
                np.dot(Xb, w, out=s)
            else:
                np.dot(Xb, w, out=z)
                np.copyto(s, z)
            if b:
                np.add(s, b, out=s)
            np.multiply(s, sg, out=s)  # signed margin
            np.abs(s, out=e)
            np.negative(e, out=e)
            np.exp(e, out=e)  # exp(-|s|) in (0, 1]: never overflows
            np.log1p(e, out=l)
            np.maximum(s, 0.0, out=e)
            np.add(l, e, out=l)  # log1pexp(s)
            loss += float(_sum(l))
            np.subtract(s, l, out=s)
            np.exp(s, out=s)  # sigmoid(s)
            np.multiply(s, sg, out=s)  # residual sigmoid(z) - y
            if self.fit_intercept:
                gb += float(_sum(s))
            if r is not None:
                np.copyto(r, s, casting="same_kind")
            else:
                r = s
            if first and z is None:
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
        out[0] = loss
        out[d + 1] = gb
        out[d + 2] = self.n
        return out


def chunk_sums(X: Any, y: Any, theta: Any, fit_intercept: bool = True, kernel: str = "auto") -> Any:
    """Loss/gradient sums of one chunk, as described in the module docstring.

    Parameters
    ----------
    X : (n, d) NumPy or CuPy array, float32 or float64
    y : (n,) array of 0/1 labels in the same namespace
    theta : (d + 1,) array ``[w, b]`` in the same namespace (float64 advised)
    fit_intercept : whether ``b`` is a free parameter (its gradient entry is 0 otherwise)
    kernel : CPU path, ``"auto"``, ``"fused"`` or ``"blas"`` (see :func:`choose_cpu_kernel`)

    Returns
    -------
    (d + 3,) float64 array in the namespace of ``X``. For repeated evaluation of the same chunk use
    :class:`PreparedChunk`, which keeps its work buffers between calls.
    """
    return PreparedChunk(X, y, fit_intercept, kernel).sums(theta)


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
