// dlogit: fused one-pass logistic-regression chunk sums.  See dlogit/kernels/cuda.py and
// docs/gpu-kernel.md.  Block size is fixed at DL_BLOCK threads; all sums are float64 and combined
// in a fixed order (no atomics), so results are reproducible bit for bit.
//
// Read at import by dlogit/kernels/cuda.py (KERNEL_SOURCE) and compiled by NVRTC through CuPy, one
// template instantiation at a time; the tests also compile it with nvcc and, as plain C++ against a
// thread/barrier emulation of the CUDA execution model, with g++ (tests/test_cuda_kernel.py).
//
// Per-row weights: every kernel takes a template flag SW and a pointer sw to n float64 weights s_i.
// With SW = 1 a row contributes s_i * loss_i, s_i * r_i and s_i * r_i * x_i; with SW = 0 the pointer
// is never read (the host passes any valid pointer) and the compiled code is the unweighted kernel.
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

template <typename T, int V, int NC, int SW>
__global__ void __launch_bounds__(DL_BLOCK, NC >= 16 ? 1 : DL_TILE_MIN_BLOCKS)
dlogit_tile_kernel(const T* __restrict__ X, const T* __restrict__ y, const double* __restrict__ sw,
                   const T* __restrict__ w, const double b, const dl_i64 n, const int d, const int R,
                   const int stride, const dl_i64 ntiles, double* __restrict__ partial) {
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
        const double sv = (SW && tid < rows) ? __ldg(sw + row0 + tid) : 1.0;

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
            if (SW) {
                l *= sv;
                r *= sv;
            }
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
template <typename T, int V, int TPR, int KR, int SW>
__device__ __forceinline__ void dl_load_batch(const T* __restrict__ X, const T* __restrict__ y,
                                              const double* __restrict__ sw, const dl_i64 n, const int d,
                                              const dl_i64 bi, const int g, const int tl, const bool cact,
                                              const int kk, T (&buf)[KR][V], double& yv, double& sv) {
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
    if (SW) sv = yrow < n ? __ldg(sw + yrow) : 0.0;
}

template <typename T, int V, int TPR, int KR, int SW>
__global__ void __launch_bounds__(DL_BLOCK, DL_NARROW_MIN_BLOCKS)
dlogit_narrow_kernel(const T* __restrict__ X, const T* __restrict__ y, const double* __restrict__ sw,
                     const T* __restrict__ w, const double b, const dl_i64 n, const int d,
                     const dl_i64 nbatches, double* __restrict__ partial) {
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
    double ynxt = 0.0, snxt = 1.0;
    if (bi < nbatches) dl_load_batch<T, V, TPR, KR, SW>(X, y, sw, n, d, bi, g, tl, cact, kk, nxt, ynxt, snxt);
    for (; bi < nbatches; bi += NW) {
        // widen once: the same registers feed the dot product and the gradient
        double xc[KR][V];
#pragma unroll
        for (int k = 0; k < KR; ++k) {
#pragma unroll
            for (int u = 0; u < V; ++u) xc[k][u] = (double)nxt[k][u];
        }
        const double yv = ynxt;
        const double sv = snxt;
        if (bi + NW < nbatches)
            dl_load_batch<T, V, TPR, KR, SW>(X, y, sw, n, d, bi + NW, g, tl, cact, kk, nxt, ynxt, snxt);

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
            if (SW) {
                l *= sv;
                r *= sv;  // the weighted residual also feeds the gradient below
            }
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
