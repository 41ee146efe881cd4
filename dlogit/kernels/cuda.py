"""Fused one-pass logistic-regression chunk sums on a CUDA GPU (CuPy RawKernel).

For one chunk ``X`` (n, d), labels ``y`` (n,), weights ``w`` (d,), intercept ``b`` and optional
per-row weights ``s`` (n,) (all ones when not given) this module computes, with ``z = X @ w + b``
and ``p = sigmoid(z)``::

    loss_sum   = sum_i s_i (log1pexp(z_i) - y_i z_i)
    grad_w_sum = X.T @ (s * (p - y))
    grad_b_sum = sum_i s_i (p_i - y_i)          (0 when fit_intercept is False)

reading ``X`` from device memory **once** (the two-pass cuBLAS form, ``X @ w`` then ``X.T @ r``, reads
it twice). All arithmetic after the load is float64: each element of ``X`` is widened exactly, ``z``,
the loss terms, the residuals, the row weights and every partial sum are float64. Each thread block
writes one partial row ``[loss, grad_b, grad_w[0..d-1]]`` into a ``(n_blocks, d + 2)`` float64 buffer
and a second kernel sums the rows in a fixed order, so results are bitwise reproducible from run to
run on a given device (no atomics anywhere; the grid size depends only on ``n``, ``d``, the dtype, the
device model and the compiled kernel's resource use, see :func:`max_resident_blocks`).

The CUDA C++ source is ``logistic.cu`` next to this module (package data), read at import into
:data:`KERNEL_SOURCE`. Two kernel families, chosen by ``d`` (see ``docs/gpu-kernel.md``):

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

Each family is a template with a flag ``SW``: the weighted instantiation (``SW = 1``) reads one
float64 weight per row; the unweighted one (``SW = 0``) is compiled without that load or the
multiplications, so rows without weights cost nothing extra. Wider rows fall back to
:func:`reference_chunk_sums` (cuBLAS, two passes).

Importing this module does not import CuPy; only calling the functions does.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "BLOCK",
    "KERNEL_PATH",
    "KERNEL_SOURCE",
    "LaunchPlan",
    "all_kernel_names",
    "explicit_instantiations",
    "fused_chunk_sums",
    "max_resident_blocks",
    "plan_launch",
    "reference_chunk_sums",
]

logger = logging.getLogger("dlogit.kernels.cuda")

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

#: the CUDA C++ source file (shipped as package data; nvcc and the CPU emulator tests compile it too)
KERNEL_PATH = Path(__file__).with_name("logistic.cu")
#: its text, read once at import
KERNEL_SOURCE = resources.files(__package__).joinpath("logistic.cu").read_text(encoding="utf-8")

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
    ``weighted`` selects the instantiation that reads per-row weights (template flag ``SW``).
    """

    kind: str
    name: str = ""
    itemsize: int = 4
    vec: int = 1
    smem: int = 0
    units: int = 0
    units_per_block: int = 1
    weighted: bool = False
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


def _tile_name(ctype: str, vec: int, nc: int, weighted: bool) -> str:
    return f"dlogit_tile_kernel<{ctype}, {vec}, {nc}, {int(weighted)}>"


def _narrow_name(ctype: str, vec: int, tpr: int, kr: int, weighted: bool) -> str:
    return f"dlogit_narrow_kernel<{ctype}, {vec}, {tpr}, {kr}, {int(weighted)}>"


def plan_launch(n: int, d: int, itemsize: int, aligned16: bool = True, variant: str = "auto",
                weighted: bool = False) -> LaunchPlan:
    """Choose the kernel and its parameters for an ``(n, d)`` chunk (pure Python, no GPU needed).

    Parameters
    ----------
    n, d : int
        Chunk shape (``n >= 1``, ``d >= 1``).
    itemsize : int
        4 (float32) or 8 (float64).
    aligned16 : bool
        Whether ``X``'s base address is a multiple of 16 bytes.
    variant : str
        ``"auto"``, or force ``"narrow"`` / ``"tile"`` / ``"reference"`` (tests, benchmarks); a forced
        variant that cannot handle the shape raises ``ValueError``.
    weighted : bool
        Whether rows carry weights (the ``SW = 1`` instantiation). The choice of family, the shared
        memory and the work units do not depend on it, so the weighted grid equals the unweighted one
        whenever both kernels have the same occupancy.

    Returns
    -------
    LaunchPlan
    """
    if itemsize not in (4, 8):
        raise ValueError(f"itemsize must be 4 or 8, got {itemsize}")
    if n < 1 or d < 1:
        raise ValueError(f"plan_launch needs n >= 1 and d >= 1, got n={n}, d={d}")
    if variant not in ("auto", "narrow", "tile", "reference"):
        raise ValueError(f"unknown variant {variant!r}")
    weighted = bool(weighted)
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
            kind="narrow", name=_narrow_name(ctype, vec, tpr, kr, weighted), itemsize=itemsize,
            vec=vec, smem=smem, units=units, units_per_block=8, weighted=weighted, tpr=tpr, kr=kr,
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
        return LaunchPlan(kind="reference", itemsize=itemsize, weighted=weighted)

    stride = _tile_stride(d, rows, itemsize)
    nc = _pow2_ceil(-(-d // BLOCK))
    d2 = d + (d & 1)
    smem = 8 * (d2 + 2 * BLOCK + 8) + rows * stride * itemsize
    smem = -(-smem // 16) * 16
    units = -(-n // rows)
    return LaunchPlan(
        kind="tile", name=_tile_name(ctype, vec, nc, weighted), itemsize=itemsize, vec=vec,
        smem=smem, units=units, units_per_block=1, weighted=weighted, rows_per_tile=rows, stride=stride,
        nc=nc,
    )


def all_kernel_names(itemsize: int, weighted: bool | None = None) -> list[str]:
    """Every template instantiation :func:`plan_launch` can ask for (for ahead-of-time compile checks).

    ``weighted`` None gives both the unweighted and the weighted instantiations; True or False one set.
    """
    flags = (False, True) if weighted is None else (bool(weighted),)
    ctype = _ctype(itemsize)
    vmax = 16 // itemsize
    names = []
    for sw in flags:
        for vec in (vmax, 1):
            nc = 1
            while nc <= _pow2_ceil(-(-(TILE_VPT * BLOCK * vec) // BLOCK)):
                names.append(_tile_name(ctype, vec, nc, sw))
                nc *= 2
        for vec, dmax in ((vmax, NARROW_MAX_D), (1, NARROW_MAX_D_SCALAR)):
            tpr = 1
            while tpr <= _pow2_ceil(dmax // vec):
                names.append(_narrow_name(ctype, vec, tpr, min(tpr, NARROW_MAX_KR[itemsize]), sw))
                tpr *= 2
    return names


def explicit_instantiations(names: list[str]) -> str:
    """CUDA C++ lines that instantiate the given kernels (for compiling ``KERNEL_SOURCE`` with nvcc)."""
    lines = []
    for name in names:
        ctype = "double" if "<double" in name else "float"
        ptrs = f"const {ctype}*, const {ctype}*, const double*, const {ctype}*, double, long long, int"
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


def max_resident_blocks(cp: Any, kern: Any, name: str, smem: int) -> int:
    """Blocks of :data:`BLOCK` threads of ``kern`` that fit on the current device at once.

    This is the persistent grid's size (at most), and with it the fixed summation order: it must be a
    pure function of the device model and the compiled kernel. It is the device's multiprocessor count
    times the CUDA occupancy calculator's answer for ``kern`` at ``BLOCK`` threads and ``smem`` bytes of
    dynamic shared memory (``cuOccupancyMaxActiveBlocksPerMultiprocessor``, which accounts for the
    kernel's registers, its static shared memory and the device's per-SM limits). Computed once per
    (device, kernel, shared memory) and cached.

    There is no fallback: a different guess would silently change the grid, hence the order of the
    additions that bitwise reproducibility relies on. If CuPy cannot answer (an attribute missing from
    its API, a CUDA error) or the answer is zero, this raises :class:`RuntimeError` naming the kernel.
    """
    dev = cp.cuda.Device()
    key = (int(dev.id), name, int(smem))
    cached = _resident.get(key)
    if cached is not None:
        return cached
    cuda_errors = (cp.cuda.runtime.CUDARuntimeError, cp.cuda.driver.CUDADriverError)
    try:
        n_sm = int(cp.cuda.runtime.getDeviceProperties(dev.id)["multiProcessorCount"])
        occupancy = cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor
        per_sm = int(occupancy(kern.kernel.ptr, BLOCK, int(smem)))
    except (AttributeError, KeyError, TypeError) as exc:
        raise RuntimeError(
            f"cannot size the grid of {name}: this CuPy ({getattr(cp, '__version__', '?')}) does not offer "
            f"the device's multiprocessor count or the CUDA occupancy calculator ({type(exc).__name__}: {exc})"
        ) from exc
    except cuda_errors as exc:
        raise RuntimeError(f"cannot size the grid of {name} ({smem} B dynamic shared memory): {exc}") from exc
    if n_sm < 1 or per_sm < 1:
        raise RuntimeError(
            f"{name} cannot run with {BLOCK} threads and {smem} B of dynamic shared memory on device "
            f"{dev.id}: the occupancy calculator allows {per_sm} block(s) per multiprocessor ({n_sm} SMs)"
        )
    total = n_sm * per_sm
    logger.debug("dlogit: %s, %d B dynamic shared memory: %d SMs x %d resident blocks", name, smem, n_sm, per_sm)
    _resident[key] = total
    return total


def resident_blocks_seen() -> dict[str, int]:
    """The grids sized so far in this process, ``"device/kernel/smem" -> blocks`` (for reports)."""
    return {f"{dev}/{name}/{smem}": v for (dev, name, smem), v in sorted(_resident.items())}


def _prepare(cp: Any, X: Any, y: Any, w: Any, sample_weight: Any = None) -> tuple[Any, Any, Any, Any]:
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
    if sample_weight is not None:
        sample_weight = cp.asarray(sample_weight)
        if sample_weight.ndim != 1 or sample_weight.shape[0] != n:
            raise ValueError(f"sample_weight must have shape ({n},), got {sample_weight.shape}")
        # float64 whatever X's dtype: weights are never rounded to float32
        sample_weight = cp.ascontiguousarray(sample_weight.astype(cp.float64, copy=False))
    return X, y, w, sample_weight


def _as_float(b: Any) -> float:
    return float(b)  # a CuPy 0-d b costs one device sync here; pass a Python float to avoid it


def fused_chunk_sums(
    X: Any, y: Any, w: Any, b: float, fit_intercept: bool = True, *, sample_weight: Any = None,
    variant: str = "auto",
) -> tuple[Any, Any, Any]:
    """Loss and gradient sums of one chunk, reading ``X`` from device memory once.

    Parameters
    ----------
    X : cupy.ndarray
        (n, d) float32 or float64 (a non-contiguous ``X`` is copied).
    y : cupy.ndarray
        (n,) labels 0/1 (cast to ``X``'s dtype).
    w : cupy.ndarray
        (d,) weights (cast to ``X``'s dtype).
    b : float
        Intercept (a Python float avoids a device sync).
    fit_intercept : bool
        When False ``grad_b_sum`` is 0 (``b`` still enters ``z``).
    sample_weight : cupy.ndarray, optional
        (n,) per-row weights ``s`` (held as float64). None means every weight is 1, at no extra cost
        (the unweighted kernel runs). Values are not checked here (no host sync): the caller validates.
    variant : str
        Force a kernel family (``"narrow"``, ``"tile"``, ``"reference"``); the default picks by ``d``.

    Returns
    -------
    loss_sum, grad_w_sum, grad_b_sum
        With ``z = X @ w + b`` and ``p = sigmoid(z)``: ``loss_sum = sum_i s_i (log1pexp(z_i) - y_i z_i)``
        (stable for any finite ``z``), ``grad_w_sum = X.T @ (s * (p - y))`` of shape ``(d,)`` and
        ``grad_b_sum = sum_i s_i (p_i - y_i)``. ``loss_sum`` and ``grad_b_sum`` are CuPy 0-d float64
        arrays and ``grad_w_sum`` a float64 vector, all three views of one fresh ``(d + 2,)`` buffer;
        nothing here synchronizes with the host. Rows wider than 32 KiB use the two-pass
        :func:`reference_chunk_sums`.
    """
    import numpy as np

    cp = _cupy()
    X, y, w, sw = _prepare(cp, X, y, w, sample_weight)
    b = _as_float(b)
    n, d = X.shape
    if n == 0 or d == 0:
        return reference_chunk_sums(X, y, w, b, fit_intercept, sample_weight=sw)
    plan = plan_launch(n, d, X.dtype.itemsize, X.data.ptr % 16 == 0, variant, weighted=sw is not None)
    if plan.kind == "reference":
        return reference_chunk_sums(X, y, w, b, fit_intercept, sample_weight=sw)

    kern = _get_kernel(cp, plan.name)
    if plan.smem > _DEFAULT_SMEM_LIMIT:
        key = (cp.cuda.Device().id, plan.name)
        if _smem_raised.get(key, 0) < plan.smem:
            kern.max_dynamic_shared_size_bytes = plan.smem  # opt in above 48 KiB (wide rows only)
            _smem_raised[key] = plan.smem
    grid = plan.grid(max_resident_blocks(cp, kern, plan.name, plan.smem))
    partial = cp.empty((grid, d + 2), dtype=cp.float64)
    # without weights the SW = 0 kernel never reads the pointer: any valid float64 pointer will do
    swp = sw if sw is not None else partial
    if plan.kind == "tile":
        args = (X, y, swp, w, np.float64(b), np.int64(n), np.int32(d), np.int32(plan.rows_per_tile),
                np.int32(plan.stride), np.int64(plan.units), partial)
    else:
        args = (X, y, swp, w, np.float64(b), np.int64(n), np.int32(d), np.int64(plan.units), partial)
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


def reference_chunk_sums(X: Any, y: Any, w: Any, b: float, fit_intercept: bool = True, *,
                         sample_weight: Any = None) -> tuple[Any, Any, Any]:
    """Same contract as :func:`fused_chunk_sums`, computed with cuBLAS in two passes over ``X``.

    ``z = X @ w`` and ``X.T @ r`` run in the input dtype (cuBLAS GEMV); ``z`` is widened to float64
    before the intercept is added, the loss terms, residuals and row weights are float64, and the
    results are returned as float64. Used for comparison, as the fallback for rows wider than the fused
    kernels take, and for empty chunks.
    """
    cp = _cupy()
    X, y, w, sw = _prepare(cp, X, y, w, sample_weight)
    b = _as_float(b)
    n, d = X.shape
    if n == 0:
        zero = cp.zeros((), dtype=cp.float64)
        return zero, cp.zeros(d, dtype=cp.float64), zero.copy()
    z = X @ w if d else cp.zeros(n, dtype=X.dtype)
    loss_terms, r = _logistic_terms(cp)(z, y, b)
    if sw is not None:
        loss_terms *= sw
        r *= sw
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
