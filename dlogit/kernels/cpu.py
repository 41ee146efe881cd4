"""One-pass fused CPU kernels for dense chunks: margins, loss terms and gradient from one read of each row.

The BLAS path in :mod:`dlogit.chunks` reads X twice per evaluation (``X_b @ w``, then ``X_b.T @ r_b`` per
cache block, the second read from cache) with a dozen NumPy calls between the two products.
The kernels here make one pass instead: for four rows at a time they form their margins (each row read
once), evaluate their loss and residual terms, and add the four rows' contribution to the gradient
while they are still in L1.

:func:`dense_binomial_sums` ``(X, sg, sw, w, b, g, dbuf)`` takes row weights ``sw`` (or none: the
unweighted loop, at no cost) and, on request, writes each row's weighted curvature to ``dbuf`` (for
Hessian-vector products). It is the ``fused`` path of :class:`dlogit.chunks.DenseBinomialCPU`.

The row terms specialize the family's reference, :meth:`dlogit.family.Binomial.row_terms` (tested against
it: ``tests/test_kernels_cpu.py``), in a scalar form for one row at a time, :func:`binomial_row`
(``s = sigma * z``)::

    loss_i      = max(s, 0) + log1p(e)                 e = exp(-|s|)  in (0, 1]: never overflows
    residual_i  = sigma * (1 / (1 + e)   if s >= 0  else  e / (1 + e))
    curvature_i = e / (1 + e)**2                        (= sigmoid(z) (1 - sigmoid(z)))

Products accumulate in float64 for float32 and float64 chunks alike. ``fastmath`` is limited to
reassociation and contraction (so the dot products vectorize); no NaN/Inf assumptions. Compiled code is
cached on disk (``cache=True``), so only the first process on a machine pays the compilation.

Importing this module is cheap: it neither imports Numba nor compiles. The kernels live in
:mod:`dlogit.kernels._cpu_jit`, imported (compiled for a fixed list of signatures, or loaded from the disk
cache) on the first access to one of their names here (``cpu.dense_binomial_sums``, ``cpu.compiled``, ...):
float32 or float64 ``X``, every input typed read-only (writable arrays convert to it at no cost), so no
call can compile a new variant. :mod:`dlogit.kernels.cache` tells, without compiling, whether the disk
cache already holds them; when it does not, ``dlogit.cpu-kernel: auto`` fits use the BLAS path while a
background process compiles them (:func:`dlogit.engine.cpu_kernel_setting`). Without Numba,
:func:`available` is false and no kernel is defined: :func:`dlogit.kernels.policy.choose_cpu_kernel` never picks
them then.

Where it wins is measured, not assumed (BENCHMARKS.md, "CPU kernel choice"): on one thread it takes
0.55-0.95x the BLAS path's time for d >= 256 at every chunk size tried, and is mostly slower (up to 2x)
for d <= 64, where the per-row scalar exp/log1p outweigh the saved pass.
:func:`dlogit.kernels.policy.choose_cpu_kernel` holds that policy.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

#: the names :mod:`dlogit.kernels._cpu_jit` defines (importing it compiles or loads the kernels)
_JIT_NAMES = frozenset({"numba", "nt", "FAST_FLAGS", "STRICT_FLAGS", "compiled", "array", "binomial_row",
                        "dense_binomial_sums"})


def available() -> bool:
    """True when Numba is installed (the fused kernels can be compiled); imports nothing."""
    return importlib.util.find_spec("numba") is not None


def __getattr__(name: str) -> Any:
    if name in _JIT_NAMES and available():
        return getattr(importlib.import_module("dlogit.kernels._cpu_jit"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
