"""Chunk evaluators: one chunk's float64 sums (and Hessian-vector products) for a model family.

A chunk is a block of rows ``(X, class codes, row weights)``. It is *prepared* once
(:func:`prepare_chunk`) and then evaluated at many ``theta``:

* ``sums(theta)`` -> ``[loss sum, gradient sums]`` in the :class:`~dlogit.family.SumsLayout` of the fit
  (weighted sums, never means; float64 whatever X's dtype);
* ``sums(theta, keep_curvature=True)`` -> a :class:`~dlogit.chunks.handle.Curvature` handle (its
  ``sums`` are the same) and ``hvp(handle, v)`` -> the Hessian of the loss sum at that ``theta`` times
  ``v`` (for Newton; the chunk is prepared with ``curvature=True``): an H.v costs one more read of X.

The row terms (loss, residuals, curvature, the H.v factor) are the family's own
(:meth:`dlogit.family.Family.terms`, one array-API reference per family); the evaluators differ in how
they form the margins and reduce over rows, and the fused kernels (:mod:`dlogit.kernels`) specialize the
same terms.

The package is split by array kind: :mod:`~dlogit.chunks.blocks` (array kinds, compute dtypes, the
cache blocks of dense CPU chunks), :mod:`~dlogit.chunks.dense` (NumPy on the CPU),
:mod:`~dlogit.chunks.csr` (SciPy CSR on the CPU), :mod:`~dlogit.chunks.cupy` (CuPy) and
:mod:`~dlogit.chunks.generic` (any kind, through the array's own products).

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

from dlogit.chunks.blocks import Blocks, array_kind, compute_dtype, direct
from dlogit.chunks.csr import CSRBinomialCPU, CSRMultinomialCPU, csr_cpu
from dlogit.chunks.cupy import CudaBinomial
from dlogit.chunks.dense import DenseBinomialCPU, DenseMultinomialCPU
from dlogit.chunks.generic import LinearChunk
from dlogit.chunks.handle import Curvature
from dlogit.family import Binomial, Family, Multinomial, ParamLayout, SumsLayout

Evaluator = Any
Factory = Callable[..., Evaluator]


def _dense_binomial_cpu(X: Any, codes: Any, sw: Any, layout: ParamLayout, family: Family, *,
                        kernel: str = "auto", curvature: bool = False) -> Evaluator:
    return DenseBinomialCPU(X, codes, sw, layout, kernel=kernel, curvature=curvature, family=family)


#: (array kind, family name) -> evaluator factory; pairs not listed use :class:`LinearChunk`
EVALUATORS: dict[tuple[str, str], Factory] = {
    ("numpy", "binomial"): _dense_binomial_cpu,
    ("numpy", "multinomial"): DenseMultinomialCPU,
    ("cupy", "binomial"): CudaBinomial,
    ("scipy-csr", "binomial"): csr_cpu(CSRBinomialCPU),
    ("scipy-csr", "multinomial"): csr_cpu(CSRMultinomialCPU),
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
    "Blocks",
    "CSRBinomialCPU",
    "CSRMultinomialCPU",
    "CudaBinomial",
    "Curvature",
    "DenseBinomialCPU",
    "DenseMultinomialCPU",
    "LinearChunk",
    "Multinomial",
    "SumsLayout",
    "array_kind",
    "chunk_sums",
    "compute_dtype",
    "direct",
    "prepare_chunk",
]
