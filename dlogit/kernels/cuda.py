"""Fused one-pass logistic-regression chunk sums on a CUDA GPU (CuPy RawKernel).

For one chunk ``X`` (n, d), labels ``y`` (n,), weights ``w`` (d,) and intercept ``b`` this module
computes, with ``z = X @ w + b`` and ``p = sigmoid(z)``::

    loss_sum   = sum_i log1pexp(z_i) - y_i z_i
    grad_w_sum = X.T @ (p - y)
    grad_b_sum = sum_i (p_i - y_i)          (0 when fit_intercept is False)

reading ``X`` from device memory **once** (the two-pass cuBLAS form, ``X @ w`` then ``X.T @ r``, reads
it twice). All arithmetic after the load is float64: each element of ``X`` is widened exactly, ``z``,
the loss terms, the residuals and every partial sum are float64. Each thread block writes one partial
row ``[loss, grad_b, grad_w[0..d-1]]`` into a ``(n_blocks, d + 2)`` float64 buffer and a second kernel
sums the rows in a fixed order, so results are bitwise reproducible from run to run on a given device
(no atomics anywhere; the grid size depends only on ``n``, ``d``, the dtype and the device model).

Two kernel families, chosen by ``d`` (see ``docs/gpu-kernel.md``):

``narrow`` (d <= 64 when rows are 16-byte aligned, d <= 32 otherwise)
    A team of ``TPR`` lanes per row (one 16-byte vector each), several rows per warp instruction, the
    batch of rows kept in registers; the per-row dot products are reduced across the team by recursive
    halving so that each lane ends up owning (about) one row, the non-linearity is evaluated once per
    row, and the residuals are shuffled back to the lanes that hold the row. No shared-memory tile.
``tile`` (any other d up to 8192 float32 / 4096 float64)
    A persistent block streams tiles of ``R`` contiguous rows (<= 32 KiB): 16-byte loads of the flat
    tile into registers, the next tile prefetched while the current one is processed, the tile stored
    to shared memory with a padded row stride (bank-conflict free in both phases), ``z`` per row from
    shared memory, the residuals in shared memory, then the ``X.T r`` product over the tile while it
    is still on chip.

Wider rows fall back to :func:`reference_chunk_sums` (cuBLAS, two passes).

Importing this module does not import CuPy; only calling the functions does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BLOCK",
    "KERNEL_SOURCE",
    "LaunchPlan",
    "all_kernel_names",
    "explicit_instantiations",
    "fused_chunk_sums",
    "plan_launch",
    "reference_chunk_sums",
]

#: threads per block of the main kernels (the CUDA source assumes exactly this)
BLOCK = 256
#: V-vectors per thread in the tile kernel's prefetch registers (``DL_VPT`` in the source): a tile holds
#: at most ``TILE_VPT * BLOCK * V`` elements, 32 KiB with 16-byte vectors (8 KiB / 16 KiB scalar)
TILE_VPT = 8
#: widest row (in elements) handled by the ``narrow`` kernel with 16-byte vectors
NARROW_MAX_D = 64
#: widest row handled by the ``narrow`` kernel with scalar loads (unaligned rows)
NARROW_MAX_D_SCALAR = 32
#: load instructions per row batch in the narrow kernel, by itemsize (register budget: see the docs)
NARROW_MAX_KR = {4: 4, 8: 8}
#: dynamic shared memory available without opting in
_DEFAULT_SMEM_LIMIT = 48 * 1024

KERNEL_SOURCE = r"""
// dlogit: fused one-pass logistic-regression chunk sums.  See dlogit/kernels/cuda.py and
// docs/gpu-kernel.md.  Block size is fixed at DL_BLOCK threads; all sums are float64 and combined
// in a fixed order (no atomics), so results are reproducible bit for bit.
#define DL_BLOCK 256
#define DL_WARPS 8
#define DL_FULL 0xffffffffu
// V-vectors per thread in the tile kernel's prefetch buffer: a tile holds at most DL_VPT * DL_BLOCK * V
// elements (32 KiB with 16-byte vectors).
#define DL_VPT 8
// minimum resident blocks per SM the compiler must allow (register cap 65536 / (256 * this)); the tile
// kernel's NC >= 16 variants (d > 2048 float32 / 1024 float64) keep 32+ accumulators and take 1
#ifndef DL_TILE_MIN_BLOCKS
#define DL_TILE_MIN_BLOCKS 2
#endif
#ifndef DL_NARROW_MIN_BLOCKS
#define DL_NARROW_MIN_BLOCKS 2
#endif

typedef long long dl_i64;

#ifndef DL_SMEM_DECLARED
extern __shared__ __align__(16) unsigned char dl_smem[];
#endif

// ---------------------------------------------------------------------------------------------
// 16-byte (or scalar) streaming loads of X; X is read exactly once, so evict-first (__ldcs).
template <typename T, int V> struct DlVec;
template <> struct DlVec<float, 4> {
    static __device__ __forceinline__ void load(const float* p, float* o) {
        const float4 v = __ldcs(reinterpret_cast<const float4*>(p));
        o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w;
    }
};
template <> struct DlVec<double, 2> {
    static __device__ __forceinline__ void load(const double* p, double* o) {
        const double2 v = __ldcs(reinterpret_cast<const double2*>(p));
        o[0] = v.x; o[1] = v.y;
    }
};
template <> struct DlVec<float, 1> {
    static __device__ __forceinline__ void load(const float* p, float* o) { o[0] = __ldcs(p); }
};
template <> struct DlVec<double, 1> {
    static __device__ __forceinline__ void load(const double* p, double* o) { o[0] = __ldcs(p); }
};

template <int X> struct DlLog2 { static const int value = 1 + DlLog2<X / 2>::value; };
template <> struct DlLog2<1> { static const int value = 0; };

// ---------------------------------------------------------------------------------------------
// Per-row loss term log1pexp(z) - y z and residual sigmoid(z) - y, in float64.
// log1pexp uses scikit-learn's cut-offs (-37, 18, 33.3; log1p serves both (-37, -2] and (-2, 18]),
// one exp per row shared with the sigmoid: e = exp(z) for z <= 18, exp(-z) above.
__device__ __forceinline__ void dl_logistic(const double z, const double yv, double& loss, double& resid) {
    const bool low = z <= 18.0;
    const double e = exp(low ? z : -z);
    double l;
    if (z <= -37.0) {
        l = e;
    } else if (low) {
        l = log1p(e);
    } else if (z <= 33.3) {
        l = z + e;
    } else {
        l = z;
    }
    loss = l - yv * z;
    const double p = low ? e / (1.0 + e) : 1.0 / (1.0 + e);
    resid = p - yv;
}

// Sum of one double per thread over the block; every thread gets the same value.
// Fixed butterfly + fixed-order sum of the warp totals: deterministic.  All threads must call it.
__device__ __forceinline__ double dl_block_sum(double v, double* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(DL_FULL, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    double s = 0.0;
#pragma unroll
    for (int i = 0; i < DL_WARPS; ++i) s += red[i];
    return s;
}

// The block's totals of the loss and intercept-gradient accumulators, written by thread 0 to the
// first two slots of this block's partial row (d + 2 doubles), which it returns.  All threads must call it.
__device__ __forceinline__ double* dl_block_scalars(double loss_acc, double gb_acc, double* red,
                                                   double* partial, int d, int tid) {
    const double loss_b = dl_block_sum(loss_acc, red);
    const double gb_b = dl_block_sum(gb_acc, red);
    double* out = partial + (dl_i64)blockIdx.x * (d + 2);
    if (tid == 0) {
        out[0] = loss_b;
        out[1] = gb_b;
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// tile kernel: any d with d <= DL_VPT * DL_BLOCK * V.
// A tile is R consecutive rows (R a power of two, R * d <= DL_VPT * DL_BLOCK * V), i.e. one
// contiguous span of X, loaded as a flat array of V-wide vectors (the host checks that every tile
// start is 16-byte aligned when V > 1).  Shared memory layout (bytes, 16-aligned pieces):
//   ws[d2] double (w widened) | zp[256] double | rs[256] double | red[8] double | xs[R * stride] T
// Only whole V-vectors go through the prefetch registers; the < V trailing elements of the chunk's
// last tile (when rows * d is not a multiple of V) are copied by thread 0 at store time.
template <typename T, int V, int VPT>
__device__ __forceinline__ void dl_load_tile(const T* __restrict__ X, const dl_i64 n, const int d,
                                             const int R, const dl_i64 t, T (&buf)[VPT][V]) {
    const dl_i64 row0 = t * R;
    const dl_i64 rem = n - row0;
    const int rows = rem < R ? (int)rem : R;
    const int nv = rows * d / V;
    const T* Xt = X + row0 * d;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
        const int v = (int)threadIdx.x + k * DL_BLOCK;
        if (v < nv) DlVec<T, V>::load(Xt + (dl_i64)v * V, buf[k]);
    }
}

template <typename T, int V, int NC>
__global__ void __launch_bounds__(DL_BLOCK, NC >= 16 ? 1 : DL_TILE_MIN_BLOCKS)
dlogit_tile_kernel(const T* __restrict__ X, const T* __restrict__ y, const T* __restrict__ w,
                   const double b, const dl_i64 n, const int d, const int R, const int stride,
                   const dl_i64 ntiles, double* __restrict__ partial) {
    constexpr int VPT = DL_VPT;
    const int tid = threadIdx.x;
    const int d2 = (d + 1) & ~1;
    double* ws = reinterpret_cast<double*>(dl_smem);
    double* zp = ws + d2;
    double* rs = zp + DL_BLOCK;
    double* red = rs + DL_BLOCK;
    T* xs = reinterpret_cast<T*>(red + DL_WARPS);

    for (int j = tid; j < d; j += DL_BLOCK) ws[j] = (double)__ldg(w + j);

    // dot phase: thread = (row drow, column slice dslice); columns dslice, dslice + S, ...
    const int S = DL_BLOCK / R;
    const int drow = tid & (R - 1);
    const int dslice = tid / R;
    const int Rw = R > 32 ? R : 32;                 // after the in-warp reduction: groups of Rw threads
    const int NG = DL_BLOCK / Rw;
    const bool zwriter = (tid & (Rw - 1)) < R;
    const int zslot = (tid / Rw) * R + drow;
    // gradient phase: thread = (row group gq, column gj [+ c * DL_BLOCK]); rows gq, gq + Q, ...
    const int Q = d >= DL_BLOCK ? 1 : DL_BLOCK / d;
    const int gq = tid / d;
    const int gj = tid - gq * d;
    const bool gactive = gq < Q;
    // flat element index -> (row, column) for the shared-memory store; exact for e < 2^22
    const float inv_d = 1.0f / (float)d;

    double gacc[NC];
#pragma unroll
    for (int c = 0; c < NC; ++c) gacc[c] = 0.0;
    double loss_acc = 0.0, gb_acc = 0.0;

    T buf[VPT][V];
    dl_i64 t = blockIdx.x;
    if (t < ntiles) dl_load_tile<T, V, VPT>(X, n, d, R, t, buf);
    for (; t < ntiles; t += gridDim.x) {
        const dl_i64 row0 = t * R;
        const dl_i64 rem = n - row0;
        const int rows = rem < R ? (int)rem : R;
        const int E = rows * d;
        const double yv = tid < rows ? (double)__ldg(y + row0 + tid) : 0.0;

        __syncthreads();  // (A) the previous tile's readers of xs / rs are done
        const int nv = E / V;
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            const int v = (int)threadIdx.x + k * DL_BLOCK;
            if (v < nv) {
                const int e0 = v * V;
                int r = (int)(((float)e0 + 0.5f) * inv_d);
                int c = e0 - r * d;
#pragma unroll
                for (int u = 0; u < V; ++u) {
                    xs[r * stride + c] = buf[k][u];
                    if (++c == d) { c = 0; ++r; }
                }
            }
        }
        if (V > 1 && tid == 0) {
            const T* Xt = X + row0 * d;
            for (int e = nv * V; e < E; ++e) {
                const int r = e / d;
                xs[r * stride + (e - r * d)] = Xt[e];
            }
        }
        const dl_i64 tn = t + gridDim.x;
        if (tn < ntiles) dl_load_tile<T, V, VPT>(X, n, d, R, tn, buf);  // in flight during the math
        __syncthreads();  // (B) the tile is in shared memory

        double acc = 0.0;
        if (drow < rows) {
            const T* xr = xs + drow * stride;
#pragma unroll 4
            for (int j = dslice; j < d; j += S) acc = fma((double)xr[j], ws[j], acc);
        }
        for (int o = R; o < 32; o <<= 1) acc += __shfl_xor_sync(DL_FULL, acc, o);
        if (zwriter) zp[zslot] = acc;
        __syncthreads();  // (C) partial dot products are in zp

        if (tid < rows) {
            double dot = 0.0;
            for (int g = 0; g < NG; ++g) dot += zp[g * R + tid];
            double l, r;
            dl_logistic(dot + b, yv, l, r);
            loss_acc += l;
            gb_acc += r;
            rs[tid] = r;
        }
        __syncthreads();  // (D) residuals are in rs

        if (gactive) {
            for (int i = gq; i < rows; i += Q) {
                const double r = rs[i];
                const T* xr = xs + i * stride;
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    const int j = gj + c * DL_BLOCK;
                    if (j < d) gacc[c] = fma(r, (double)xr[j], gacc[c]);
                }
            }
        }
    }

    double* out = dl_block_scalars(loss_acc, gb_acc, red, partial, d, tid);
    if (Q == 1) {
        if (gactive) {
#pragma unroll
            for (int c = 0; c < NC; ++c) {
                const int j = gj + c * DL_BLOCK;
                if (j < d) out[2 + j] = gacc[c];
            }
        }
    } else {
        // Q * d <= DL_BLOCK: the row groups' sums go through zp (free after dl_block_sum's barriers)
        if (gactive) zp[gq * d + gj] = gacc[0];
        __syncthreads();
        for (int j = tid; j < d; j += DL_BLOCK) {
            double s = 0.0;
            for (int q = 0; q < Q; ++q) s += zp[q * d + j];
            out[2 + j] = s;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// narrow kernel: d = C * V with C <= TPR <= 32 (TPR a power of two).  A team of TPR lanes holds one
// row (lane tl holds columns tl*V .. tl*V+V-1), G = 32 / TPR teams per warp, and a warp processes a
// batch of BR = G * KR consecutive rows (KR load instructions, all in flight together).  The KR
// partial dot products per lane are reduced over the team by recursive halving: after log2(KR)
// halving steps lane tl owns row kk = tl / (TPR / KR) of its team, the remaining butterfly steps
// finish the sum, so each row's non-linearity is evaluated by TPR / KR lanes (1 when KR == TPR).
template <typename T, int V, int TPR, int KR>
__device__ __forceinline__ void dl_load_batch(const T* __restrict__ X, const T* __restrict__ y,
                                              const dl_i64 n, const int d, const dl_i64 bi,
                                              const int g, const int tl, const bool cact, const int kk,
                                              T (&buf)[KR][V], double& yv) {
    constexpr int G = 32 / TPR;
    constexpr int BR = G * KR;
    const dl_i64 base = bi * BR + g;
#pragma unroll
    for (int k = 0; k < KR; ++k) {
        const dl_i64 row = base + k * G;
        if (cact && row < n) {
            DlVec<T, V>::load(X + row * d + tl * V, buf[k]);
        } else {
#pragma unroll
            for (int u = 0; u < V; ++u) buf[k][u] = T(0);
        }
    }
    const dl_i64 yrow = base + kk * G;
    yv = yrow < n ? (double)__ldg(y + yrow) : 0.0;
}

template <typename T, int V, int TPR, int KR>
__global__ void __launch_bounds__(DL_BLOCK, DL_NARROW_MIN_BLOCKS)
dlogit_narrow_kernel(const T* __restrict__ X, const T* __restrict__ y, const T* __restrict__ w,
                     const double b, const dl_i64 n, const int d, const dl_i64 nbatches,
                     double* __restrict__ partial) {
    constexpr int G = 32 / TPR;
    constexpr int BR = G * KR;
    constexpr int SPREAD = TPR / KR;
    constexpr int LOG_T = DlLog2<TPR>::value;
    constexpr int LOG_K = DlLog2<KR>::value;
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int g = lane / TPR;
    const int tl = lane % TPR;
    const int C = d / V;
    const bool cact = tl < C;
    const int kk = tl / SPREAD;
    const bool owner = (tl % SPREAD) == 0;

    double wd[V];
#pragma unroll
    for (int u = 0; u < V; ++u) wd[u] = cact ? (double)__ldg(w + tl * V + u) : 0.0;
    double acc[V];
#pragma unroll
    for (int u = 0; u < V; ++u) acc[u] = 0.0;
    double loss_acc = 0.0, gb_acc = 0.0;

    const dl_i64 NW = (dl_i64)gridDim.x * DL_WARPS;
    dl_i64 bi = (dl_i64)blockIdx.x * DL_WARPS + warp;
    T nxt[KR][V];
    double ynxt = 0.0;
    if (bi < nbatches) dl_load_batch<T, V, TPR, KR>(X, y, n, d, bi, g, tl, cact, kk, nxt, ynxt);
    for (; bi < nbatches; bi += NW) {
        // widen once: the same registers feed the dot product and the gradient
        double xc[KR][V];
#pragma unroll
        for (int k = 0; k < KR; ++k) {
#pragma unroll
            for (int u = 0; u < V; ++u) xc[k][u] = (double)nxt[k][u];
        }
        const double yv = ynxt;
        if (bi + NW < nbatches) dl_load_batch<T, V, TPR, KR>(X, y, n, d, bi + NW, g, tl, cact, kk, nxt, ynxt);

        double p[KR];
#pragma unroll
        for (int k = 0; k < KR; ++k) {
            double s = 0.0;
#pragma unroll
            for (int u = 0; u < V; ++u) s = fma(xc[k][u], wd[u], s);
            p[k] = s;
        }
#pragma unroll
        for (int step = 0; step < LOG_T; ++step) {
            const int o = TPR >> (step + 1);
            if (step < LOG_K) {
                const int half = KR >> (step + 1);
                const bool upper = (tl & o) != 0;
#pragma unroll
                for (int i = 0; i < half; ++i) {
                    const double send = upper ? p[i] : p[i + half];
                    const double keep = upper ? p[i + half] : p[i];
                    p[i] = keep + __shfl_xor_sync(DL_FULL, send, o);
                }
            } else {
                p[0] += __shfl_xor_sync(DL_FULL, p[0], o);
            }
        }

        const dl_i64 rz = bi * BR + kk * G + g;
        double r = 0.0;
        if (rz < n) {
            double l;
            dl_logistic(p[0] + b, yv, l, r);
            if (owner) {
                loss_acc += l;
                gb_acc += r;
            }
        }
#pragma unroll
        for (int k = 0; k < KR; ++k) {
            const double rk = __shfl_sync(DL_FULL, r, g * TPR + k * SPREAD);
#pragma unroll
            for (int u = 0; u < V; ++u) acc[u] = fma(rk, xc[k][u], acc[u]);
        }
    }

    // teams -> warp (fixed butterfly), warps -> block (fixed order through shared memory)
#pragma unroll
    for (int o = TPR; o < 32; o <<= 1) {
#pragma unroll
        for (int u = 0; u < V; ++u) acc[u] += __shfl_xor_sync(DL_FULL, acc[u], o);
    }
    double* wsum = reinterpret_cast<double*>(dl_smem);  // [DL_WARPS][TPR * V]
    double* red = wsum + DL_WARPS * TPR * V;
    if (g == 0) {
#pragma unroll
        for (int u = 0; u < V; ++u) wsum[warp * (TPR * V) + tl * V + u] = acc[u];
    }
    double* out = dl_block_scalars(loss_acc, gb_acc, red, partial, d, tid);
    for (int j = tid; j < d; j += DL_BLOCK) {
        double s = 0.0;
        for (int wi = 0; wi < DL_WARPS; ++wi) s += wsum[wi * (TPR * V) + j];
        out[2 + j] = s;
    }
}

// ---------------------------------------------------------------------------------------------
// Column sums of the (nblocks, width) partial buffer in a fixed order; 32 columns per block, the 8
// warps take every 8th row, then warp sums are added in order.  out[1] = 0 without an intercept.
extern "C" __global__ void __launch_bounds__(DL_BLOCK)
dlogit_finalize(const double* __restrict__ partial, const int nblocks, const int width,
                const int fit_intercept, double* __restrict__ out) {
    const int tx = threadIdx.x & 31;
    const int ty = threadIdx.x >> 5;
    const int col = blockIdx.x * 32 + tx;
    double* sm = reinterpret_cast<double*>(dl_smem);
    double s = 0.0;
    if (col < width) {
        for (int r = ty; r < nblocks; r += DL_WARPS) s += partial[(dl_i64)r * width + col];
    }
    sm[ty * 32 + tx] = s;
    __syncthreads();
    if (ty == 0 && col < width) {
        double t = 0.0;
        for (int k = 0; k < DL_WARPS; ++k) t += sm[k * 32 + tx];
        if (col == 1 && !fit_intercept) t = 0.0;
        out[col] = t;
    }
}
"""

FINALIZE_NAME = "dlogit_finalize"
FINALIZE_SMEM = 8 * 32 * 8


def _ctype(itemsize: int) -> str:
    return "float" if itemsize == 4 else "double"


def _pow2_ceil(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _pow2_floor(x: int) -> int:
    return 1 << (int(x).bit_length() - 1)


@dataclass(frozen=True)
class LaunchPlan:
    """How one call is run: which kernel, its template arguments, shared memory, and work units.

    ``kind`` is ``"narrow"``, ``"tile"`` or ``"reference"`` (rows too wide for the fused kernels).
    ``units`` is the number of work items the persistent grid loops over (row batches of a warp for
    ``narrow``, tiles for ``tile``); ``units_per_block`` how many of them one block takes per sweep.
    """

    kind: str
    name: str = ""
    itemsize: int = 4
    vec: int = 1
    smem: int = 0
    units: int = 0
    units_per_block: int = 1
    # tile kernel
    rows_per_tile: int = 0
    stride: int = 0
    nc: int = 0
    # narrow kernel
    tpr: int = 0
    kr: int = 0

    def grid(self, max_resident_blocks: int) -> int:
        """Blocks to launch: enough for all work units, at most one full wave of resident blocks."""
        need = -(-self.units // self.units_per_block)
        return max(1, min(need, int(max_resident_blocks)))


def _tile_stride(d: int, rows: int, itemsize: int) -> int:
    """Padded shared-memory row stride (elements) that makes both tile phases bank-conflict free.

    In the dot phase lane ``(r, s)`` of a wavefront reads element ``r * stride + s + S * k``.  A
    wavefront covers ``B`` distinct 4-byte (float) or 8-byte (double, half warp) slots; with
    ``g = max(1, B / R)`` slices per wavefront, ``stride = g * odd`` sends the ``R`` rows to distinct
    multiples of ``g`` and the ``g`` slices to the offsets between them.
    """
    slots = 32 if itemsize == 4 else 16
    g = max(1, slots // rows)
    m = -(-d // g)
    if m % 2 == 0:
        m += 1
    return g * m


def plan_launch(n: int, d: int, itemsize: int, aligned16: bool = True, variant: str = "auto") -> LaunchPlan:
    """Choose the kernel and its parameters for an ``(n, d)`` chunk (pure Python, no GPU needed).

    Parameters
    ----------
    n, d : chunk shape (n >= 1, d >= 1)
    itemsize : 4 (float32) or 8 (float64)
    aligned16 : whether ``X``'s base address is a multiple of 16 bytes
    variant : ``"auto"``, or force ``"narrow"`` / ``"tile"`` / ``"reference"`` (tests, benchmarks);
        a forced variant that cannot handle the shape raises ``ValueError``.
    """
    if itemsize not in (4, 8):
        raise ValueError(f"itemsize must be 4 or 8, got {itemsize}")
    if n < 1 or d < 1:
        raise ValueError(f"plan_launch needs n >= 1 and d >= 1, got n={n}, d={d}")
    if variant not in ("auto", "narrow", "tile", "reference"):
        raise ValueError(f"unknown variant {variant!r}")
    ctype = _ctype(itemsize)
    vmax = 16 // itemsize

    narrow_vec = aligned16 and d % vmax == 0 and d <= NARROW_MAX_D
    narrow_scalar = d <= NARROW_MAX_D_SCALAR
    if variant == "narrow" or (variant == "auto" and (narrow_vec or narrow_scalar)):
        if not (narrow_vec or narrow_scalar):
            raise ValueError(f"the narrow kernel cannot take d={d} (itemsize {itemsize}, aligned={aligned16})")
        vec = vmax if narrow_vec else 1
        tpr = _pow2_ceil(d // vec)
        kr = min(tpr, NARROW_MAX_KR[itemsize])
        rows_per_batch = (32 // tpr) * kr
        units = -(-n // rows_per_batch)
        smem = (8 * tpr * vec + 8) * 8
        return LaunchPlan(
            kind="narrow", name=f"dlogit_narrow_kernel<{ctype}, {vec}, {tpr}, {kr}>", itemsize=itemsize,
            vec=vec, smem=smem, units=units, units_per_block=8, tpr=tpr, kr=kr,
        )

    vec = 0
    if variant != "reference":
        for v in (vmax, 1):
            cap = TILE_VPT * BLOCK * v  # elements per tile
            if d > cap:
                continue
            rows = min(BLOCK, _pow2_floor(cap // d))
            # with vectors, every tile start (a multiple of rows * d elements) must be 16-byte aligned
            if v == 1 or (aligned16 and (rows * d) % v == 0):
                vec = v
                break
    if vec == 0:
        if variant == "tile":
            raise ValueError(f"d={d} (itemsize {itemsize}, aligned={aligned16}) is too wide for the tile kernel")
        return LaunchPlan(kind="reference", itemsize=itemsize)

    stride = _tile_stride(d, rows, itemsize)
    nc = _pow2_ceil(-(-d // BLOCK))
    d2 = d + (d & 1)
    smem = 8 * (d2 + 2 * BLOCK + 8) + rows * stride * itemsize
    smem = -(-smem // 16) * 16
    units = -(-n // rows)
    return LaunchPlan(
        kind="tile", name=f"dlogit_tile_kernel<{ctype}, {vec}, {nc}>", itemsize=itemsize, vec=vec,
        smem=smem, units=units, units_per_block=1, rows_per_tile=rows, stride=stride, nc=nc,
    )


def all_kernel_names(itemsize: int) -> list[str]:
    """Every template instantiation :func:`plan_launch` can ask for (for ahead-of-time compile checks)."""
    ctype = _ctype(itemsize)
    vmax = 16 // itemsize
    names = []
    for vec in (vmax, 1):
        nc = 1
        while nc <= _pow2_ceil(-(-(TILE_VPT * BLOCK * vec) // BLOCK)):
            names.append(f"dlogit_tile_kernel<{ctype}, {vec}, {nc}>")
            nc *= 2
    for vec, dmax in ((vmax, NARROW_MAX_D), (1, NARROW_MAX_D_SCALAR)):
        tpr = 1
        while tpr <= _pow2_ceil(dmax // vec):
            names.append(f"dlogit_narrow_kernel<{ctype}, {vec}, {tpr}, {min(tpr, NARROW_MAX_KR[itemsize])}>")
            tpr *= 2
    return names


def explicit_instantiations(names: list[str]) -> str:
    """CUDA C++ lines that instantiate the given kernels (for compiling ``KERNEL_SOURCE`` with nvcc)."""
    lines = []
    for name in names:
        ctype = "double" if "<double" in name else "float"
        ptrs = f"const {ctype}*, const {ctype}*, const {ctype}*, double, long long, int"
        if name.startswith("dlogit_tile_kernel"):
            sig = f"{ptrs}, int, int, long long, double*"
        elif name.startswith("dlogit_narrow_kernel"):
            sig = f"{ptrs}, long long, double*"
        else:
            raise ValueError(f"not a template kernel: {name}")
        lines.append(f"template __global__ void {name}({sig});")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# CuPy side (imported lazily)

_lock = threading.Lock()
_kernels: dict[tuple[int, str], Any] = {}
_resident: dict[tuple[int, str, int], int] = {}
_smem_raised: dict[tuple[int, str], int] = {}
_logistic_ew: dict[int, Any] = {}


def _cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - exercised only without CuPy
        raise RuntimeError("dlogit.kernels.cuda needs CuPy (pip install 'dlogit[cu12]' or '[cu13]')") from exc
    return cupy


def _get_kernel(cp: Any, name: str) -> Any:
    """The compiled kernel ``name`` for the current device (NVRTC, cached per process and on disk)."""
    key = (cp.cuda.Device().id, name)
    kern = _kernels.get(key)
    if kern is None:
        with _lock:
            kern = _kernels.get(key)
            if kern is None:
                if name == FINALIZE_NAME:
                    module = cp.RawModule(code=KERNEL_SOURCE, options=("-std=c++17",))
                else:
                    module = cp.RawModule(code=KERNEL_SOURCE, options=("-std=c++17",), name_expressions=(name,))
                kern = module.get_function(name)
                _kernels[key] = kern
    return kern


def _max_resident_blocks(cp: Any, kern: Any, name: str, smem: int) -> int:
    """Blocks of ``BLOCK`` threads that fit on the device at once (the persistent grid's size).

    Computed once per (device, kernel, shared memory) from the kernel's register count and the
    device's limits; the grid, and with it the fixed summation order, depends only on these.
    """
    dev = cp.cuda.Device()
    key = (dev.id, name, smem)
    cached = _resident.get(key)
    if cached is not None:
        return cached
    try:
        attrs = dev.attributes
        n_sm = int(attrs["MultiProcessorCount"])
    except Exception:  # noqa: BLE001 - attribute names differ across CuPy versions
        attrs = {}
        n_sm = int(cp.cuda.runtime.getDeviceProperties(dev.id)["multiProcessorCount"])
    try:
        regs = max(1, int(kern.num_regs))
        regs_sm = int(attrs.get("MaxRegistersPerMultiprocessor", 65536))
        smem_sm = int(attrs.get("MaxSharedMemoryPerMultiprocessor", 228 * 1024))
        threads_sm = int(attrs.get("MaxThreadsPerMultiProcessor", 2048))
        static = int(getattr(kern, "shared_size_bytes", 0))
        warp_regs = -(-regs * 32 // 256) * 256  # registers are allocated per warp in units of 256
        by_regs = regs_sm // (warp_regs * (BLOCK // 32))
        by_smem = smem_sm // (smem + static + 1024)  # 1 KiB per block is reserved by the system
        by_threads = threads_sm // BLOCK
        per_sm = max(1, min(by_regs, by_smem, by_threads))
    except Exception:  # noqa: BLE001
        per_sm = 2
    _resident[key] = n_sm * per_sm
    return n_sm * per_sm


def _prepare(cp: Any, X: Any, y: Any, w: Any) -> tuple[Any, Any, Any]:
    X = cp.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    if X.dtype not in (cp.float32, cp.float64):
        raise TypeError(f"X must be float32 or float64, got {X.dtype}")
    X = cp.ascontiguousarray(X)
    n, d = X.shape
    y = cp.ascontiguousarray(cp.asarray(y).reshape(-1).astype(X.dtype, copy=False))
    w = cp.ascontiguousarray(cp.asarray(w).reshape(-1).astype(X.dtype, copy=False))
    if y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} entries for {n} rows")
    if w.shape[0] != d:
        raise ValueError(f"w has {w.shape[0]} entries for {d} columns")
    return X, y, w


def _as_float(b: Any) -> float:
    return float(b)  # a CuPy 0-d b costs one device sync here; pass a Python float to avoid it


def fused_chunk_sums(
    X: Any, y: Any, w: Any, b: float, fit_intercept: bool = True, *, variant: str = "auto"
) -> tuple[Any, Any, Any]:
    """Loss and gradient sums of one chunk, reading ``X`` from device memory once.

    ``X``: CuPy (n, d) C-contiguous float32 or float64; ``y``: CuPy (n,) of 0/1 in the same dtype;
    ``w``: CuPy (d,) in the dtype of ``X``; ``b``: Python float.

    Returns ``(loss_sum, grad_w_sum, grad_b_sum)`` where, with ``z = X @ w + b``, ``p = sigmoid(z)``:

    - ``loss_sum = sum_i log1pexp(z_i) - y_i * z_i`` (stable for any finite ``z``)
    - ``grad_w_sum = X.T @ (p - y)``, shape ``(d,)``, CuPy float64
    - ``grad_b_sum = sum(p - y)`` (0 when ``fit_intercept`` is False; ``b`` still enters ``z``)

    ``loss_sum`` and ``grad_b_sum`` are CuPy 0-d float64 arrays; nothing here synchronizes with the host.
    All three are views of one fresh ``(d + 2,)`` buffer. ``variant`` forces a kernel family
    (``"narrow"``, ``"tile"``, ``"reference"``); the default picks by ``d``. Rows wider than 32 KiB use
    the two-pass :func:`reference_chunk_sums`.
    """
    import numpy as np

    cp = _cupy()
    X, y, w = _prepare(cp, X, y, w)
    b = _as_float(b)
    n, d = X.shape
    if n == 0 or d == 0:
        return reference_chunk_sums(X, y, w, b, fit_intercept)
    plan = plan_launch(n, d, X.dtype.itemsize, X.data.ptr % 16 == 0, variant)
    if plan.kind == "reference":
        return reference_chunk_sums(X, y, w, b, fit_intercept)

    kern = _get_kernel(cp, plan.name)
    if plan.smem > _DEFAULT_SMEM_LIMIT:
        key = (cp.cuda.Device().id, plan.name)
        if _smem_raised.get(key, 0) < plan.smem:
            kern.max_dynamic_shared_size_bytes = plan.smem  # opt in above 48 KiB (wide rows only)
            _smem_raised[key] = plan.smem
    grid = plan.grid(_max_resident_blocks(cp, kern, plan.name, plan.smem))
    partial = cp.empty((grid, d + 2), dtype=cp.float64)
    if plan.kind == "tile":
        args = (X, y, w, np.float64(b), np.int64(n), np.int32(d), np.int32(plan.rows_per_tile),
                np.int32(plan.stride), np.int64(plan.units), partial)
    else:
        args = (X, y, w, np.float64(b), np.int64(n), np.int32(d), np.int64(plan.units), partial)
    kern((grid,), (BLOCK,), args, shared_mem=plan.smem)

    out = cp.empty(d + 2, dtype=cp.float64)
    fin = _get_kernel(cp, FINALIZE_NAME)
    fin_args = (partial, np.int32(grid), np.int32(d + 2), np.int32(bool(fit_intercept)), out)
    fin((-(-(d + 2) // 32),), (BLOCK,), fin_args, shared_mem=FINALIZE_SMEM)
    return out[0], out[2:], out[1]


_LOGISTIC_EW_BODY = r"""
    const double zz = (double)z + b;
    const bool low = zz <= 18.0;
    const double e = exp(low ? zz : -zz);
    double l;
    if (zz <= -37.0) l = e;
    else if (zz <= -2.0) l = log1p(e);
    else if (low) l = log(1.0 + e);
    else if (zz <= 33.3) l = zz + e;
    else l = zz;
    const double yy = (double)yv;
    loss = l - yy * zz;
    r = (low ? e / (1.0 + e) : 1.0 / (1.0 + e)) - yy;
"""


def _logistic_terms(cp: Any) -> Any:
    dev = cp.cuda.Device().id
    ew = _logistic_ew.get(dev)
    if ew is None:
        ew = cp.ElementwiseKernel(
            "T z, T yv, float64 b", "float64 loss, float64 r", _LOGISTIC_EW_BODY, "dlogit_logistic_terms"
        )
        _logistic_ew[dev] = ew
    return ew


def reference_chunk_sums(X: Any, y: Any, w: Any, b: float, fit_intercept: bool = True) -> tuple[Any, Any, Any]:
    """Same contract as :func:`fused_chunk_sums`, computed with cuBLAS in two passes over ``X``.

    ``z = X @ w`` and ``X.T @ r`` run in the input dtype (cuBLAS GEMV); ``z`` is widened to float64
    before the intercept is added, the loss terms and residuals are float64, and the results are
    returned as float64. Used for comparison, as the fallback for rows wider than the fused kernels
    take, and for empty chunks.
    """
    cp = _cupy()
    X, y, w = _prepare(cp, X, y, w)
    b = _as_float(b)
    n, d = X.shape
    if n == 0:
        zero = cp.zeros((), dtype=cp.float64)
        return zero, cp.zeros(d, dtype=cp.float64), zero.copy()
    z = X @ w if d else cp.zeros(n, dtype=X.dtype)
    loss_terms, r = _logistic_terms(cp)(z, y, b)
    loss = loss_terms.sum()
    grad_w = (X.T @ r.astype(X.dtype)).astype(cp.float64) if d else cp.zeros(0, dtype=cp.float64)
    grad_b = r.sum() if fit_intercept else cp.zeros((), dtype=cp.float64)
    return loss, grad_w, grad_b


def _self_check() -> None:  # pragma: no cover - manual helper
    """Print the plans for the benchmark shapes (no GPU needed)."""
    for n, d in ((16_777_216, 256), (4_194_304, 784), (67_108_864, 32), (3000, 257), (7, 3)):
        for itemsize in (4, 8):
            print(n, d, itemsize, plan_launch(n, d, itemsize))


if __name__ == "__main__":  # pragma: no cover
    _self_check()
