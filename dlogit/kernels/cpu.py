"""One-pass fused CPU kernel: margins, loss terms and gradient from one read of each row (Numba).

The BLAS path in :mod:`dlogit.loss` reads X twice per evaluation (``X_b @ w``, then ``X_b.T @ r_b`` per
cache block, the second read from cache) with a dozen NumPy calls between the two products.
:func:`fused_sums` makes one pass instead: for four rows at a time it forms their margins (each row read
once), evaluates their loss and residual terms, and adds the four rows' contribution to the gradient
while they are still in L1.

The row terms are the signed-margin form of :class:`dlogit.loss.PreparedChunk` (``s = sigma * z``)::

    loss_i     = max(s, 0) + log1p(e)                 e = exp(-|s|)  in (0, 1]: never overflows
    residual_i = sigma * (1 / (1 + e)   if s >= 0  else  e / (1 + e))

Products accumulate in float64 for float32 and float64 chunks alike. ``fastmath`` is limited to
reassociation and contraction (so the dot products vectorize); no NaN/Inf assumptions. Compiled code is
cached on disk (``cache=True``), so only the first process on a machine pays the compilation (~2 s for
the four variants: float32/float64 chunks, writable or read-only); the worker preload
(:mod:`dlogit.worker`) loads it while the worker starts. Without Numba, :func:`available` is false and
``fused_sums`` is not defined: :func:`dlogit.loss.choose_cpu_kernel` never picks it then.

Where it wins is measured, not assumed (BENCHMARKS.md, "CPU kernel choice"): on one thread it takes
0.55-0.95x the BLAS path's time for d >= 256 at every chunk size tried, and is mostly slower (up to 2x)
for d <= 64, where the per-row scalar exp/log1p outweigh the saved pass. :func:`dlogit.loss.choose_cpu_kernel` holds that policy.
"""

from __future__ import annotations

import math
from typing import Any

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; this keeps dlogit usable without it
    numba = None


def available() -> bool:
    """True when Numba imports (the fused kernel can be compiled)."""
    return numba is not None


if numba is not None:
    _FLAGS: dict[str, Any] = {"fastmath": {"reassoc", "contract"}, "nogil": True, "error_model": "numpy",
                              "boundscheck": False}

    def _jit(**extra: Any) -> Any:
        def wrap(fn: Any) -> Any:
            try:
                return numba.njit(cache=True, **_FLAGS, **extra)(fn)
            except RuntimeError:  # no writable cache location: compile per process instead
                return numba.njit(**_FLAGS, **extra)(fn)
        return wrap

    @_jit(inline="always")
    def _terms(a: float, b: float, sg: float) -> tuple[float, float]:
        s = sg * (a + b)
        e = math.exp(-abs(s))
        inv = 1.0 / (1.0 + e)
        return max(s, 0.0) + math.log1p(e), sg * (inv if s >= 0.0 else e * inv)

    @_jit()
    def fused_sums(X: Any, sg: Any, w: Any, b: float, g: Any) -> tuple[float, float]:
        """``(loss sum, residual sum)`` of the rows of ``X``; writes ``X.T @ residual`` into ``g``.

        ``X`` (n, d) C-contiguous float32/float64, ``sg`` (n,) float64 label signs ``1 - 2y``, ``w`` (d,)
        float64, ``b`` the intercept, ``g`` (d,) float64 output.
        """
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
            l0, r0 = _terms(a0, b, sg[i])
            l1, r1 = _terms(a1, b, sg[i + 1])
            l2, r2 = _terms(a2, b, sg[i + 2])
            l3, r3 = _terms(a3, b, sg[i + 3])
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
            l0, r0 = _terms(a0, b, sg[i])
            loss += l0
            gb += r0
            for j in range(d):
                g[j] += r0 * x0[j]
            i += 1
        return loss, gb
