"""CuPy chunks: the fused one-pass CUDA kernel for binomial sums."""

from __future__ import annotations

from typing import Any

from dlogit.chunks.generic import LinearChunk
from dlogit.family import Family, ParamLayout


class CudaBinomial(LinearChunk):
    """Binomial CuPy chunk: the fused one-pass CUDA kernel for the sums (cuBLAS for H.v)."""

    def __init__(self, X: Any, codes: Any, sample_weight: Any, layout: ParamLayout, family: Family, *,
                 kernel: str = "auto", curvature: bool = False) -> None:
        super().__init__(X, codes, sample_weight, layout, family, kernel=kernel, curvature=curvature)
        xp = self.xp
        self.X = xp.ascontiguousarray(self.X)
        self.y = self.codes.astype(self.X.dtype)
        self.kernel = "cuda"

    def sums(self, theta: Any, keep_curvature: bool = False) -> Any:
        if keep_curvature:  # Newton: the curvature comes from the two-pass path
            return super().sums(theta, keep_curvature)
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
    out: tuple[Any, Any, Any] = (kernels.fused_chunk_sums(X, y, w, b, True) if sw is None else
                                 kernels.fused_chunk_sums(X, y, w, b, True, sample_weight=sw))
    return out

