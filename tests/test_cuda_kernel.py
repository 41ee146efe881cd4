"""Tests of the fused one-pass CUDA gradient kernel (:mod:`dlogit.kernels.cuda`).

Three layers:

* ``gpu`` tests run the kernels through CuPy on a real device and compare them with a float64 NumPy
  reference; they skip cleanly without CuPy or a CUDA device.
* CPU tests of the launch planner (pure Python), of the grid sizing against a fake CuPy (the occupancy
  calculator's answer, or an error: never a silent guess), and of the kernel source
  (``dlogit/kernels/logistic.cu``) with ``nvcc`` (skipped when ``nvcc`` is not on PATH): every template
  instantiation, weighted and unweighted, compiles for sm_90 with no register spills.
* CPU emulation (skipped without ``g++``): the same CUDA source, compiled as C++ against a small
  header that maps threads onto ``std::thread`` and ``__syncthreads`` and warp shuffles onto a
  mutex/condition-variable barrier, runs the planner's launch configuration block by block. It checks
  the index arithmetic, the reductions, the tail handling and the alignment of every 16-byte load
  without a GPU (shared memory is poisoned with NaN before each block, so a read of an unwritten slot
  shows). Weighted rows are checked there too: integer weights give the sums of the data with each
  row repeated that many times, and all-ones weights give the unweighted kernel's result bit for bit.
  Set ``DLOGIT_EMU_SANITIZE=address`` or ``=thread`` to build the emulator with a sanitizer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dlogit.kernels import cuda as K

# --------------------------------------------------------------------------------------------------
# host reference


def _host_sums(X, y, w, b, fit_intercept=True, sample_weight=None):
    """float64 NumPy reference: (loss_sum, grad_w_sum, grad_b_sum), rows weighted by sample_weight."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    s = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    z = X @ w + b
    with np.errstate(over="ignore"):
        l1 = np.where(
            z <= -37, np.exp(z),
            np.where(z <= -2, np.log1p(np.exp(np.minimum(z, 18.0))),
                     np.where(z <= 18, np.log(1.0 + np.exp(np.minimum(z, 18.0))),
                              np.where(z <= 33.3, z + np.exp(-z), z))))
        e = np.exp(-np.abs(z))
        p = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    r = s * (p - y)
    loss = float(np.sum(s * (l1 - y * z)))
    gw = X.T @ r
    gb = float(r.sum()) if fit_intercept else 0.0
    return loss, gw, gb


def _relerr(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(float(np.linalg.norm(b)), 1e-300)
    return float(np.linalg.norm(a - b)) / scale


def _abs_err_ok(a, b, rtol, atol_scale):
    """|a - b| <= rtol * max(|b|, atol_scale) (for scalars that may be near zero, e.g. grad_b)."""
    return abs(float(a) - float(b)) <= rtol * max(abs(float(b)), atol_scale)


def _make_case(n, d, dtype, seed=0, b=0.3, zscale=1.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    w = (rng.standard_normal(d) * zscale / np.sqrt(d)).astype(dtype)
    y = (rng.random(n) < 0.5).astype(dtype)
    return X, y, w, b


def _check(res, ref, dtype, n, label=""):
    loss, gw, gb = (np.asarray(v, dtype=np.float64) for v in res)
    rloss, rgw, rgb = ref
    tol = 1e-12 if np.dtype(dtype) == np.float64 else 1e-5
    assert abs(float(loss) - rloss) <= tol * abs(rloss), (label, float(loss), rloss)
    assert _relerr(gw, rgw) <= tol, (label, _relerr(gw, rgw))
    # grad_b is a sum of n residuals that may nearly cancel: compare against the size of its terms
    assert _abs_err_ok(gb, rgb, tol, np.sqrt(n)), (label, float(gb), rgb)


def _weights(n, seed, kind="float"):
    """Per-row weights: positive floats, or small integers including 0 (``kind="int"``)."""
    rng = np.random.default_rng(seed)
    if kind == "int":
        return rng.integers(0, 4, n).astype(np.float64)
    return rng.uniform(0.1, 3.0, n)


SHAPES = [(1, 1), (7, 3), (1000, 32), (4097, 784), (3000, 257)]

# --------------------------------------------------------------------------------------------------
# GPU tests


@pytest.fixture(scope="module")
def cp():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as exc:  # noqa: BLE001 - no driver, no device, ...
        pytest.skip(f"no CUDA device ({exc})")
    return cupy


def _to_dev(cp, X, y, w):
    return cp.asarray(X), cp.asarray(y), cp.asarray(w)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fn", ["fused", "reference"])
def test_matches_host_reference(cp, shape, dtype, fn):
    n, d = shape
    X, y, w, b = _make_case(n, d, dtype, seed=n + d)
    f = K.fused_chunk_sums if fn == "fused" else K.reference_chunk_sums
    res = f(*_to_dev(cp, X, y, w), b, True)
    loss, gw, gb = res
    assert isinstance(loss, cp.ndarray) and loss.shape == () and loss.dtype == cp.float64
    assert isinstance(gb, cp.ndarray) and gb.shape == () and gb.dtype == cp.float64
    assert gw.shape == (d,) and gw.dtype == cp.float64
    _check([v.get() for v in res], _host_sums(X, y, w, b), dtype, n, f"{fn} {shape}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["narrow", "tile"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (33, 8), (1000, 32), (513, 64), (300, 30)])
def test_each_variant(cp, shape, dtype, variant):
    n, d = shape
    X, y, w, b = _make_case(n, d, dtype, seed=3)
    res = K.fused_chunk_sums(*_to_dev(cp, X, y, w), b, True, variant=variant)
    _check([v.get() for v in res], _host_sums(X, y, w, b), dtype, n, f"{variant} {shape}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [4, 32, 257, 784])
def test_misaligned_rows_use_scalar_loads(cp, dtype, d):
    n = 301
    X, y, w, b = _make_case(n, d, dtype, seed=5)
    buf = cp.empty(n * d + 1, dtype=dtype)
    Xd = buf[1:].reshape(n, d)  # base address 4 or 8 bytes past a 16-byte boundary
    Xd[...] = cp.asarray(X)
    assert Xd.flags.c_contiguous and Xd.data.ptr % 16 != 0
    res = K.fused_chunk_sums(Xd, cp.asarray(y), cp.asarray(w), b, True)
    _check([v.get() for v in res], _host_sums(X, y, w, b), dtype, n, f"misaligned d={d}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [3, 32, 256])
def test_large_margins_are_finite(cp, dtype, d):
    n = 2000
    rng = np.random.default_rng(7)
    X = np.ones((n, d), dtype=dtype)
    X[1::2] = -1.0  # z = +-1000 + b on alternate rows
    w = np.full(d, 1000.0 / d, dtype=dtype)
    y = (rng.random(n) < 0.5).astype(dtype)
    b = 0.5
    loss, gw, gb = (v.get() for v in K.fused_chunk_sums(*_to_dev(cp, X, y, w), b, True))
    assert np.isfinite(loss) and np.all(np.isfinite(gw)) and np.isfinite(gb)
    z = X.astype(np.float64) @ w.astype(np.float64) + b
    assert np.all(np.abs(z) > 900)
    # the loss of a row is |z| when misclassified and ~exp(-|z|) = 0 otherwise
    expect = float(np.sum(np.where((z > 0) != (y > 0.5), np.abs(z), 0.0)))
    assert abs(float(loss) - expect) <= 1e-9 * expect
    rloss, rgw, rgb = _host_sums(X, y, w, b)
    assert abs(float(loss) - rloss) <= 1e-12 * abs(rloss)
    assert _relerr(gw, rgw) <= 1e-12
    assert abs(float(gb) - rgb) <= 1e-9


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(100_003, 32), (20_011, 784), (30_000, 257), (50_000, 3)])
def test_bitwise_reproducible(cp, shape, dtype):
    X, y, w, b = _make_case(*shape, dtype, seed=11)
    args = (*_to_dev(cp, X, y, w), b, True)
    first = [v.get() for v in K.fused_chunk_sums(*args)]
    second = [v.get() for v in K.fused_chunk_sums(*args)]
    for a, c in zip(first, second):
        assert np.asarray(a).tobytes() == np.asarray(c).tobytes()


@pytest.mark.gpu
@pytest.mark.parametrize("fn", ["fused", "reference"])
@pytest.mark.parametrize("shape", [(7, 3), (1000, 32), (3000, 257)])
def test_no_intercept_gives_zero_grad_b(cp, shape, fn):
    X, y, w, b = _make_case(*shape, np.float64, seed=13)
    f = K.fused_chunk_sums if fn == "fused" else K.reference_chunk_sums
    loss, gw, gb = f(*_to_dev(cp, X, y, w), b, False)
    assert float(gb.get()) == 0.0
    rloss, rgw, _ = _host_sums(X, y, w, b, fit_intercept=False)
    assert abs(float(loss.get()) - rloss) <= 1e-12 * abs(rloss)
    assert _relerr(gw.get(), rgw) <= 1e-12


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["auto", "narrow", "tile", "reference"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (1000, 32), (333, 64), (3000, 257), (129, 784)])
def test_weighted_rows_match_host_reference(cp, shape, dtype, variant):
    n, d = shape
    if variant == "narrow" and d > K.NARROW_MAX_D:
        pytest.skip("the narrow kernel takes d <= 64")
    X, y, w, b = _make_case(n, d, dtype, seed=23 + n)
    s = _weights(n, seed=n)
    if variant == "reference":
        res = K.reference_chunk_sums(*_to_dev(cp, X, y, w), b, True, sample_weight=cp.asarray(s))
    else:
        res = K.fused_chunk_sums(*_to_dev(cp, X, y, w), b, True, sample_weight=cp.asarray(s), variant=variant)
    _check([v.get() for v in res], _host_sums(X, y, w, b, True, s), dtype, n, f"weighted {variant} {shape}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1000, 32), (513, 64), (300, 30), (3000, 257)])
def test_integer_weights_equal_repeated_rows_on_gpu(cp, shape, dtype):
    n, d = shape
    X, y, w, b = _make_case(n, d, dtype, seed=29)
    s = _weights(n, seed=31, kind="int")
    rep = s.astype(int)
    dup = [np.repeat(a, rep, axis=0) for a in (X, y)]
    weighted = [v.get() for v in K.fused_chunk_sums(*_to_dev(cp, X, y, w), b, True, sample_weight=cp.asarray(s))]
    repeated = [v.get() for v in K.fused_chunk_sums(*_to_dev(cp, dup[0], dup[1], w), b, True)]
    _check(weighted, [float(repeated[0]), repeated[1], float(repeated[2])], np.float64, n, f"int weights {shape}")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1000, 32), (3000, 257), (300, 30)])
def test_unit_weights_are_bitwise_the_unweighted_kernel(cp, shape):
    X, y, w, b = _make_case(*shape, np.float32, seed=37)
    args = (*_to_dev(cp, X, y, w), b, True)
    plain = [v.get() for v in K.fused_chunk_sums(*args)]
    ones = [v.get() for v in K.fused_chunk_sums(*args, sample_weight=cp.ones(shape[0]))]
    for a, c in zip(plain, ones):
        assert np.asarray(a).tobytes() == np.asarray(c).tobytes()


@pytest.mark.gpu
def test_sample_weight_shape_is_checked(cp):
    X, y, w, b = _make_case(10, 4, np.float64, seed=1)
    with pytest.raises(ValueError, match="sample_weight"):
        K.fused_chunk_sums(*_to_dev(cp, X, y, w), b, True, sample_weight=cp.ones(9))


@pytest.mark.gpu
def test_grid_comes_from_the_occupancy_calculator(cp):
    X, y, w, b = _make_case(100_000, 256, np.float32, seed=2)
    K.fused_chunk_sums(*_to_dev(cp, X, y, w), b, True)
    plan = K.plan_launch(100_000, 256, 4)
    kern = K._get_kernel(cp, plan.name)
    per_sm = cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(kern.kernel.ptr, K.BLOCK, plan.smem)
    n_sm = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["multiProcessorCount"]
    assert per_sm >= 1
    assert K.max_resident_blocks(cp, kern, plan.name, plan.smem) == n_sm * per_sm


@pytest.mark.gpu
@pytest.mark.parametrize("shape,dtype", [((200, 4096), np.float32), ((101, 3000), np.float64)])
def test_wide_tiles_above_48k_shared_memory(cp, shape, dtype):
    n, d = shape
    plan = K.plan_launch(n, d, np.dtype(dtype).itemsize)
    assert plan.kind == "tile" and plan.smem > 48 * 1024  # exercises the dynamic shared-memory opt-in
    X, y, w, b = _make_case(n, d, dtype, seed=19)
    res = K.fused_chunk_sums(*_to_dev(cp, X, y, w), b, True)
    _check([v.get() for v in res], _host_sums(X, y, w, b), dtype, n, f"wide tile {shape}")


@pytest.mark.gpu
def test_wide_rows_fall_back_to_reference(cp):
    X, y, w, b = _make_case(50, 9000, np.float32, seed=17)
    assert K.plan_launch(50, 9000, 4).kind == "reference"
    res = K.fused_chunk_sums(*_to_dev(cp, X, y, w), b, True)
    _check([v.get() for v in res], _host_sums(X, y, w, b), np.float32, 50, "wide")


@pytest.mark.gpu
def test_empty_chunk(cp):
    X = cp.zeros((0, 5), dtype=cp.float32)
    loss, gw, gb = K.fused_chunk_sums(X, cp.zeros(0, cp.float32), cp.ones(5, cp.float32), 0.0)
    assert float(loss.get()) == 0.0 and float(gb.get()) == 0.0 and gw.shape == (5,)


# --------------------------------------------------------------------------------------------------
# CPU: the launch planner


@pytest.mark.parametrize("itemsize", [4, 8])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("d", [1, 2, 3, 4, 8, 31, 32, 33, 63, 64, 65, 100, 128, 255, 256, 257, 511, 784,
                               1024, 1500, 2048, 4096, 8192, 9000])
def test_plan_invariants(d, itemsize, aligned):
    n = 10_000
    plan = K.plan_launch(n, d, itemsize, aligned)
    if plan.kind == "reference":
        assert d > K.TILE_VPT * K.BLOCK  # only rows too wide for the scalar tile fall back
        return
    assert plan.name in K.all_kernel_names(itemsize)
    if plan.vec > 1:
        assert aligned
    if plan.kind == "narrow":
        assert d <= K.NARROW_MAX_D
        assert d % plan.vec == 0 and d // plan.vec <= plan.tpr <= 32
        assert plan.kr <= plan.tpr and plan.tpr % plan.kr == 0
        rows_per_batch = (32 // plan.tpr) * plan.kr
        assert plan.units * rows_per_batch >= n
    else:
        R = plan.rows_per_tile
        assert R & (R - 1) == 0 and 1 <= R <= K.BLOCK
        assert R * d <= K.TILE_VPT * K.BLOCK * plan.vec  # the tile fits the prefetch registers
        assert (R * d) % plan.vec == 0  # every tile start is 16-byte aligned when vectorized
        assert plan.stride >= d
        assert plan.units * R >= n
        assert plan.nc * K.BLOCK >= d
        assert plan.smem <= 227 * 1024


@pytest.mark.parametrize("itemsize", [4, 8])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("d", [1, 3, 32, 64, 100, 257, 784, 4096, 9000])
def test_weighted_plan_differs_only_in_the_instantiation(d, itemsize, aligned):
    import dataclasses

    plain = K.plan_launch(10_000, d, itemsize, aligned)
    weighted = K.plan_launch(10_000, d, itemsize, aligned, weighted=True)
    assert weighted.weighted and not plain.weighted
    same = {f.name for f in dataclasses.fields(K.LaunchPlan)} - {"name", "weighted"}
    assert all(getattr(plain, f) == getattr(weighted, f) for f in same)
    if plain.kind != "reference":
        assert plain.name.endswith(", 0>") and weighted.name == plain.name[:-4] + ", 1>"
        assert weighted.name in K.all_kernel_names(itemsize, weighted=True)
        assert weighted.name not in K.all_kernel_names(itemsize, weighted=False)
    assert sorted(K.all_kernel_names(itemsize)) == sorted(
        K.all_kernel_names(itemsize, weighted=False) + K.all_kernel_names(itemsize, weighted=True))


def _dot_phase_bank_conflicts(d, R, stride, itemsize):
    """Worst bank-conflict degree of the tile kernel's dot-phase shared-memory reads."""
    S = K.BLOCK // R
    slots = 32 if itemsize == 4 else 16  # a 64-bit access is served per half warp
    worst = 1
    for warp in range(K.BLOCK // 32):
        for k in range(-(-d // S)):
            for half in range(32 // slots):
                banks = {}
                for lane in range(half * slots, (half + 1) * slots):
                    tid = warp * 32 + lane
                    row, s = tid % R, tid // R
                    j = s + S * k
                    if j >= d:
                        continue
                    addr = row * stride + j
                    banks.setdefault(addr % slots, set()).add(addr)
                if banks:
                    worst = max(worst, max(len(v) for v in banks.values()))
    return worst


@pytest.mark.parametrize("itemsize", [4, 8])
@pytest.mark.parametrize("d", [33, 65, 100, 256, 257, 784, 1000, 2048])
def test_tile_stride_is_bank_conflict_free(d, itemsize):
    plan = K.plan_launch(10_000, d, itemsize, True, variant="tile")
    assert _dot_phase_bank_conflicts(d, plan.rows_per_tile, plan.stride, itemsize) == 1


def test_module_imports_without_cupy():
    import sys

    assert "KERNEL_SOURCE" in dir(K)
    if "cupy" not in sys.modules:
        with pytest.raises(RuntimeError, match="CuPy"):
            K.fused_chunk_sums(np.zeros((2, 2)), np.zeros(2), np.zeros(2), 0.0)


def test_kernel_source_is_the_cu_file_shipped_as_package_data():
    tomllib = pytest.importorskip("tomllib")

    assert K.KERNEL_PATH.name == "logistic.cu" and K.KERNEL_PATH.is_file()
    assert K.KERNEL_SOURCE == K.KERNEL_PATH.read_text(encoding="utf-8")
    for name in ("dlogit_tile_kernel", "dlogit_narrow_kernel", "dlogit_finalize", "int SW"):
        assert name in K.KERNEL_SOURCE
    # no copy of the CUDA source left in the Python module
    assert "__syncthreads" not in Path(K.__file__).read_text(encoding="utf-8")
    root = Path(K.__file__).resolve().parents[2]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["dlogit"]
    rel = K.KERNEL_PATH.relative_to(root / "dlogit").as_posix()
    assert any(Path(rel).match(pat) for pat in patterns), patterns


# --------------------------------------------------------------------------------------------------
# CPU: the persistent grid is sized by the occupancy calculator, or the call fails loudly


class _FakeCudaError(Exception):
    pass


class _FakeCupy:
    """Just enough of CuPy's ``cuda`` namespace for :func:`dlogit.kernels.cuda.max_resident_blocks`."""

    def __init__(self, n_sm=132, per_sm=2, props=True, occupancy=True, error=None, device=0):
        calls = self.calls = []

        class Runtime:
            CUDARuntimeError = _FakeCudaError

            @staticmethod
            def getDeviceProperties(dev):
                return {"multiProcessorCount": n_sm, "name": b"Fake GPU"} if props else {"name": b"Fake GPU"}

        class Driver:
            class CUDADriverError(Exception):
                pass

        if occupancy:
            def occ(ptr, block, smem):
                calls.append((ptr, block, smem))
                if error is not None:
                    raise error
                return per_sm

            Driver.occupancyMaxActiveBlocksPerMultiprocessor = staticmethod(occ)

        class Device:
            def __init__(self):
                self.id = device

        class Cuda:
            runtime = Runtime
            driver = Driver

        Cuda.Device = Device
        self.cuda = Cuda
        self.__version__ = "fake"


class _FakeKernel:
    class kernel:  # mirrors RawKernel.kernel.ptr
        ptr = 1234


@pytest.fixture
def fresh_grid_cache(monkeypatch):
    monkeypatch.setattr(K, "_resident", {})


def test_grid_is_sms_times_occupancy_and_cached(fresh_grid_cache):
    fake = _FakeCupy(n_sm=132, per_sm=2)
    assert K.max_resident_blocks(fake, _FakeKernel, "k<float, 4, 1, 0>", 40_000) == 264
    assert fake.calls == [(1234, K.BLOCK, 40_000)]
    assert K.max_resident_blocks(fake, _FakeKernel, "k<float, 4, 1, 0>", 40_000) == 264
    assert len(fake.calls) == 1  # asked once per (device, kernel, shared memory)
    assert K.resident_blocks_seen() == {"0/k<float, 4, 1, 0>/40000": 264}
    assert K.plan_launch(16_777_216, 256, 4).grid(264) == 264  # a full wave of resident blocks
    small = K.plan_launch(100, 256, 4)  # 32-row tiles: 4 work units, 4 blocks
    assert small.units == 4 and small.grid(264) == 4


@pytest.mark.parametrize("fake,match", [
    ({"occupancy": False}, "occupancy calculator"),          # a CuPy without the calculator
    ({"props": False}, "multiprocessor count"),              # a device property missing
    ({"per_sm": 0}, "allows 0 block"),                       # the kernel cannot be resident at all
    ({"error": _FakeCudaError("cudaErrorInvalidValue")}, "cudaErrorInvalidValue"),  # a CUDA error
])
def test_grid_sizing_never_guesses(fresh_grid_cache, fake, match):
    """The old code fell back to 2 blocks per SM on any exception, silently changing the grid and with
    it the order of the additions; now each failure says what happened and nothing is cached."""
    with pytest.raises(RuntimeError, match=match):
        K.max_resident_blocks(_FakeCupy(**fake), _FakeKernel, "k<double, 2, 1, 1>", 1024)
    assert K._resident == {}


def test_grid_sizing_does_not_swallow_other_errors(fresh_grid_cache):
    with pytest.raises(ZeroDivisionError):
        K.max_resident_blocks(_FakeCupy(error=ZeroDivisionError()), _FakeKernel, "k", 0)


# --------------------------------------------------------------------------------------------------
# CPU: nvcc compiles every instantiation for sm_90 without spills


@pytest.mark.parametrize("itemsize", [4, 8])
def test_kernel_source_compiles_with_nvcc(tmp_path, itemsize):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH")
    names = K.all_kernel_names(itemsize)  # weighted and unweighted
    assert any(n.endswith(", 1>") for n in names) and any(n.endswith(", 0>") for n in names)
    src = tmp_path / "dlogit_kernels.cu"
    src.write_text(f'#include "{K.KERNEL_PATH}"\n' + K.explicit_instantiations(names))
    proc = subprocess.run(
        [nvcc, "-arch=sm_90", "-cubin", "-std=c++17", "--resource-usage", "-o", str(tmp_path / "k.cubin"),
         str(src)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = proc.stdout + proc.stderr
    n_entries = report.count("Compiling entry function")
    assert n_entries == len(names) + 1, report[-4000:]  # + dlogit_finalize
    for line in report.splitlines():
        if "spill stores" in line:
            assert "0 bytes spill stores, 0 bytes spill loads" in line, line


def _find_nvrtc():
    """libnvrtc: $DLOGIT_NVRTC_LIB, the NVIDIA pip package CuPy uses, or the system's (None if absent)."""
    import ctypes.util
    import glob
    import importlib.util

    if os.environ.get("DLOGIT_NVRTC_LIB"):
        return os.environ["DLOGIT_NVRTC_LIB"]
    for pkg in ("nvidia.cu13", "nvidia.cuda_nvrtc"):
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            hits = sorted(glob.glob(os.path.join(folder, "lib", "libnvrtc.so*")))
            if hits:
                return hits[0]
    return ctypes.util.find_library("nvrtc")


@pytest.mark.slow
def test_kernel_source_compiles_with_nvrtc():
    """NVRTC (what CuPy compiles with) takes the .cu file and lowers every name expression
    :func:`plan_launch` can produce, weighted and unweighted (CuPy compiles one at a time)."""
    import ctypes

    path = _find_nvrtc()
    if not path:
        pytest.skip("no libnvrtc (set DLOGIT_NVRTC_LIB, or pip install nvidia-cuda-nvrtc)")
    lib = ctypes.CDLL(path)
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), K.KERNEL_SOURCE.encode(), b"logistic.cu", 0, None, None) == 0
    names = K.all_kernel_names(4) + K.all_kernel_names(8)
    for name in names:
        assert lib.nvrtcAddNameExpression(prog, name.encode()) == 0
    opts = (ctypes.c_char_p * 2)(b"-std=c++17", b"-arch=sm_90")
    rc = lib.nvrtcCompileProgram(prog, 2, opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    assert rc == 0, log.value.decode(errors="replace")[-4000:]
    lowered = ctypes.c_char_p()
    for name in names:
        assert lib.nvrtcGetLoweredName(prog, name.encode(), ctypes.byref(lowered)) == 0, name
        assert lowered.value.startswith(b"_Z"), (name, lowered.value)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))


# --------------------------------------------------------------------------------------------------
# CPU: emulation of the kernels with std::thread and a condition-variable barrier

EMU_HEADER = r"""
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define DL_SMEM_DECLARED 1

struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
struct emu_uint3 { unsigned x, y, z; };
thread_local emu_uint3 threadIdx;
thread_local emu_uint3 blockIdx;
emu_uint3 blockDim, gridDim;
unsigned char* dl_smem;

// a plain generation-counting barrier: simple, and sanitizers understand it (a std::barrier build of
// this harness hung once under libstdc++ 12)
struct EmuBarrier {
    explicit EmuBarrier(int n) : n_(n) {}
    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(m_);
        const unsigned long gen = gen_;
        if (++count_ == n_) {
            count_ = 0;
            ++gen_;
            cv_.notify_all();
        } else {
            cv_.wait(lock, [&] { return gen_ != gen; });
        }
    }
    std::mutex m_;
    std::condition_variable cv_;
    const int n_;
    int count_ = 0;
    unsigned long gen_ = 0;
};
struct EmuWarp {
    EmuBarrier bar{32};
    alignas(16) unsigned char buf[32][16];
};
EmuBarrier* emu_block_bar;
EmuWarp* emu_warps;

inline void __syncthreads() { emu_block_bar->arrive_and_wait(); }
template <class T> T emu_shfl(T v, int src) {
    const int lane = threadIdx.x & 31;
    EmuWarp& W = emu_warps[threadIdx.x >> 5];
    std::memcpy(W.buf[lane], &v, sizeof(T));
    W.bar.arrive_and_wait();
    T r;
    std::memcpy(&r, W.buf[src & 31], sizeof(T));
    W.bar.arrive_and_wait();
    return r;
}
template <class T> T __shfl_xor_sync(unsigned, T v, int o) { return emu_shfl(v, (int)(threadIdx.x & 31) ^ o); }
template <class T> T __shfl_sync(unsigned, T v, int src) { return emu_shfl(v, src); }
template <class T> T __ldg(const T* p) { return *p; }
inline float __ldcs(const float* p) { return *p; }
inline double __ldcs(const double* p) { return *p; }
inline float4 __ldcs(const float4* p) {
    if (reinterpret_cast<std::uintptr_t>(p) % 16) { std::fprintf(stderr, "misaligned float4 load\n"); std::abort(); }
    return *p;
}
inline double2 __ldcs(const double2* p) {
    if (reinterpret_cast<std::uintptr_t>(p) % 16) { std::fprintf(stderr, "misaligned double2 load\n"); std::abort(); }
    return *p;
}

// Blocks run one after another on the same `block` OS threads (made once per launch: a launch of
// 129 blocks used to create 33 000 threads); each block starts on shared memory poisoned afresh.
template <class F> void emu_launch(unsigned grid, unsigned block, std::size_t smem, F f) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    std::vector<unsigned char> sm(smem ? smem : 1);
    dl_smem = sm.data();
    EmuBarrier bar((int)block);
    emu_block_bar = &bar;
    std::unique_ptr<EmuWarp[]> warps(new EmuWarp[block / 32]);
    emu_warps = warps.get();
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < block; ++t)
        ts.emplace_back([=, &bar, &sm] {
            threadIdx = {t, 0, 0};
            for (unsigned b = 0; b < grid; ++b) {
                // NaN everywhere: unwritten slots poison the result
                if (t == 0) std::memset(sm.data(), 0xff, sm.size());
                bar.arrive_and_wait();  // the poison is in place before any thread of block b starts
                blockIdx = {b, 0, 0};
                f();
                bar.arrive_and_wait();  // all of block b is done before the next poison
            }
        });
    for (auto& th : ts) th.join();
}
"""

EMU_MAIN = r"""
static std::vector<unsigned char> read_file(const char* path) {
    FILE* f = std::fopen(path, "rb");
    if (!f) { std::perror(path); std::exit(2); }
    std::fseek(f, 0, SEEK_END);
    long size = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    std::vector<unsigned char> v(size);
    if (size && std::fread(v.data(), 1, size, f) != (size_t)size) { std::exit(3); }
    std::fclose(f);
    return v;
}

int main(int argc, char** argv) {
    // argv: idx itemsize n d b fit grid smem R stride units offset weighted infile outfile
    if (argc != 16) { std::fprintf(stderr, "bad args\n"); return 2; }
    const int idx = std::atoi(argv[1]);
    const int itemsize = std::atoi(argv[2]);
    const long long n = std::atoll(argv[3]);
    const int d = std::atoi(argv[4]);
    const double b = std::strtod(argv[5], nullptr);
    const int fit = std::atoi(argv[6]);
    const unsigned grid = (unsigned)std::atoi(argv[7]);
    const std::size_t smem = (std::size_t)std::atoll(argv[8]);
    const int R = std::atoi(argv[9]);
    const int stride = std::atoi(argv[10]);
    const long long units = std::atoll(argv[11]);
    const long long offset = std::atoll(argv[12]);  // X starts this many elements into its buffer
    const int weighted = std::atoi(argv[13]);
    std::vector<unsigned char> in = read_file(argv[14]);
    // exact-size heap copies so that AddressSanitizer sees any out-of-bounds read
    const std::size_t xbytes = (std::size_t)(n * d + offset) * itemsize;
    unsigned char* xb = static_cast<unsigned char*>(std::malloc(xbytes ? xbytes : 1));  // 16-aligned (glibc)
    if (reinterpret_cast<std::uintptr_t>(xb) % 16) { std::fprintf(stderr, "malloc not 16-aligned\n"); return 2; }
    std::memcpy(xb, in.data(), xbytes);
    std::vector<unsigned char> yb(in.begin() + xbytes, in.begin() + xbytes + n * itemsize);
    std::vector<unsigned char> wb(in.begin() + xbytes + n * itemsize, in.begin() + xbytes + (n + d) * itemsize);
    // row weights (float64, exact size) or, unweighted, a null pointer: the SW = 0 kernels never read it
    const std::size_t sbeg = xbytes + (n + d) * itemsize;
    std::unique_ptr<double[]> sb(weighted ? new double[n ? n : 1] : nullptr);
    if (weighted) std::memcpy(sb.get(), in.data() + sbeg, (std::size_t)n * sizeof(double));
    const void* X = xb + offset * itemsize;
    const void* Y = yb.data();
    const void* W = wb.data();
    const double* S = sb.get();
    std::vector<double> partial((std::size_t)grid * (d + 2), std::nan(""));
    double* P = partial.data();
    (void)R; (void)stride; (void)units; (void)b; (void)S;
    switch (idx) {
__CASES__
        default: std::fprintf(stderr, "unknown kernel %d\n", idx); return 2;
    }
    std::vector<double> out(d + 2, std::nan(""));
    double* O = out.data();
    const unsigned fgrid = (unsigned)((d + 2 + 31) / 32);
    emu_launch(fgrid, 256, 2048, [=] { dlogit_finalize(P, (int)grid, d + 2, fit, O); });
    FILE* f = std::fopen(argv[15], "wb");
    std::fwrite(out.data(), sizeof(double), out.size(), f);
    std::fwrite(partial.data(), sizeof(double), partial.size(), f);
    std::fclose(f);
    std::free(xb);
    return 0;
}
"""


def _emu_case_code(i, name):
    ctype = "double" if "<double" in name else "float"
    cast = f"(const {ctype}*)"
    if name.startswith("dlogit_tile_kernel"):
        call = f"{name}({cast}X, {cast}Y, S, {cast}W, b, n, d, R, stride, units, P)"
    else:
        call = f"{name}({cast}X, {cast}Y, S, {cast}W, b, n, d, units, P)"
    return f"        case {i}: emu_launch(grid, 256, smem, [=] {{ {call}; }}); break;"


class Emulator:
    """Builds one emulator binary for a set of kernel instantiations and runs launch plans on it."""

    def __init__(self, workdir: Path, names: list[str], sanitize: str | None = None):
        self.names = list(names)
        self.workdir = workdir
        cases = "\n".join(_emu_case_code(i, nm) for i, nm in enumerate(self.names))
        # the real .cu file, included (compile errors point at its lines)
        src = EMU_HEADER + f'#include "{K.KERNEL_PATH}"\n' + EMU_MAIN.replace("__CASES__", cases)
        path = workdir / "emu.cpp"
        path.write_text(src)
        self.exe = workdir / "emu"
        flags = ["-O1", "-g", f"-fsanitize={sanitize}"] if sanitize else ["-O2"]
        cmd = ["g++", "-std=c++20", *flags, "-pthread", "-w", "-o", str(self.exe), str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-4000:])

    def run(self, X, y, w, b, fit_intercept, plan, max_resident_blocks, misalign=0, sample_weight=None):
        n, d = X.shape
        assert plan.weighted == (sample_weight is not None)
        itemsize = X.dtype.itemsize
        grid = plan.grid(max_resident_blocks)
        inp = self.workdir / "in.bin"
        out = self.workdir / "out.bin"
        with open(inp, "wb") as fh:
            fh.write(np.zeros(misalign, dtype=X.dtype).tobytes())
            fh.write(np.ascontiguousarray(X).tobytes())
            fh.write(np.ascontiguousarray(y).tobytes())
            fh.write(np.ascontiguousarray(w).tobytes())
            if sample_weight is not None:
                fh.write(np.ascontiguousarray(sample_weight, dtype=np.float64).tobytes())
        args = [str(self.exe), str(self.names.index(plan.name)), str(itemsize), str(n), str(d), repr(float(b)),
                str(int(fit_intercept)), str(grid), str(plan.smem), str(plan.rows_per_tile), str(plan.stride),
                str(plan.units), str(misalign), str(int(plan.weighted)), str(inp), str(out)]
        env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1", ASAN_OPTIONS="detect_leaks=0")
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, check=False)
        assert proc.returncode == 0, proc.stderr[-4000:]
        raw = np.fromfile(out, dtype=np.float64)
        res = raw[: d + 2]
        return (res[0], res[2:], res[1]), raw.tobytes()


EMU_CASES = [
    # (n, d, dtype, variant, misalign, max_resident_blocks)
    (1, 1, np.float32, "auto", 0, 4),
    (7, 3, np.float32, "auto", 0, 4),
    (7, 3, np.float64, "auto", 0, 4),
    (1, 1, np.float64, "tile", 0, 4),
    (7, 3, np.float32, "tile", 0, 4),
    (1000, 32, np.float32, "auto", 0, 3),
    (1000, 32, np.float64, "auto", 0, 3),
    (1000, 32, np.float32, "tile", 0, 3),
    (333, 64, np.float32, "auto", 0, 2),
    (333, 64, np.float64, "auto", 0, 2),
    (301, 12, np.float32, "auto", 1, 2),    # misaligned base: scalar narrow path
    (129, 40, np.float64, "auto", 1, 2),    # d > 32 misaligned: tile kernel, scalar loads
    (301, 257, np.float32, "auto", 0, 3),
    (301, 257, np.float64, "auto", 0, 3),
    (301, 257, np.float32, "auto", 1, 3),
    (133, 784, np.float32, "auto", 0, 5),
    (67, 784, np.float64, "auto", 0, 5),
    (50, 100, np.float32, "auto", 0, 3),    # Q = 2 row groups in the gradient phase
    (21, 2500, np.float32, "auto", 0, 2),   # NC = 16, R = 2
    (5, 4096, np.float64, "auto", 0, 2),    # R = 1, NC = 16
]


#: the cases also run with weights (every family, both dtypes, vector and scalar loads, Q > 1, NC = 16)
EMU_WEIGHTED_CASES = [EMU_CASES[i] for i in (1, 2, 4, 5, 6, 7, 8, 10, 11, 13, 14, 17, 19)]
#: the ones that take over 5 s each in the emulator (run with ``-m slow``)
EMU_WEIGHTED_SLOW = [EMU_CASES[i] for i in (13, 14, 19)]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not on PATH")
    sanitize = os.environ.get("DLOGIT_EMU_SANITIZE") or None
    names = sorted({
        K.plan_launch(n, d, np.dtype(dt).itemsize, not mis, variant).name
        for n, d, dt, variant, mis, _ in EMU_CASES
    } | {
        K.plan_launch(n, d, np.dtype(dt).itemsize, not mis, variant, weighted=True).name
        for n, d, dt, variant, mis, _ in EMU_WEIGHTED_CASES
    })
    try:
        return Emulator(tmp_path_factory.mktemp("emu"), names, sanitize)
    except RuntimeError as exc:  # e.g. a g++ too old for -std=c++20
        pytest.skip(f"cannot build the emulator: {exc}")


@pytest.mark.parametrize("case", EMU_CASES, ids=lambda c: f"{c[0]}x{c[1]}-{np.dtype(c[2]).name}-{c[3]}-mis{c[4]}")
def test_emulated_kernel_matches_host(emulator, case):
    n, d, dtype, variant, misalign, resident = case
    X, y, w, b = _make_case(n, d, dtype, seed=n * 7 + d)
    plan = K.plan_launch(n, d, np.dtype(dtype).itemsize, misalign == 0, variant)
    assert plan.kind == (variant if variant != "auto" else plan.kind)
    res, raw = emulator.run(X, y, w, b, True, plan, resident, misalign)
    _check(res, _host_sums(X, y, w, b), dtype, n, f"emu {case}")
    if dtype == np.float32:
        # the kernel widens float32 exactly and works in float64: much better than the 1e-5 contract
        assert _relerr(res[1], _host_sums(X, y, w, b)[1]) <= 1e-12
    # same launch twice: bit for bit
    _, raw2 = emulator.run(X, y, w, b, True, plan, resident, misalign)
    assert raw == raw2
    # no intercept: grad_b is 0 (b still enters z)
    res3, _ = emulator.run(X, y, w, b, False, plan, resident, misalign)
    assert float(res3[2]) == 0.0
    assert float(res3[0]) == float(res[0])


@pytest.mark.parametrize("variant,d", [("auto", 3), ("auto", 32), ("auto", 256), ("tile", 32), ("tile", 3)])
def test_emulated_large_margins(emulator, variant, d):
    n = 97
    rng = np.random.default_rng(1)
    X = np.ones((n, d), dtype=np.float64)
    X[1::2] = -1.0
    w = np.full(d, 1000.0 / d)
    y = (rng.random(n) < 0.5).astype(np.float64)
    b = 0.25
    plan = K.plan_launch(n, d, 8, True, variant)
    if plan.name not in emulator.names:
        pytest.skip(f"{plan.name} not built into this emulator")
    (loss, gw, gb), _ = emulator.run(X, y, w, b, True, plan, 3)
    z = X @ w + b
    expect = float(np.sum(np.where((z > 0) != (y > 0.5), np.abs(z), 0.0)))
    assert np.isfinite(loss) and abs(loss - expect) <= 1e-12 * expect
    _, rgw, rgb = _host_sums(X, y, w, b)
    assert _relerr(gw, rgw) <= 1e-12 and abs(gb - rgb) <= 1e-12 * n


def _case_id(c):
    return f"{c[0]}x{c[1]}-{np.dtype(c[2]).name}-{c[3]}-mis{c[4]}"


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.slow) if c in EMU_WEIGHTED_SLOW else c for c in EMU_WEIGHTED_CASES
], ids=_case_id)
def test_emulated_weighted_kernel(emulator, case):
    n, d, dtype, variant, misalign, resident = case
    X, y, w, b = _make_case(n, d, dtype, seed=n * 5 + d)
    item = np.dtype(dtype).itemsize
    plan = K.plan_launch(n, d, item, misalign == 0, variant)
    wplan = K.plan_launch(n, d, item, misalign == 0, variant, weighted=True)
    # fractional weights against the float64 host reference (float32 X too: the kernel works in float64)
    s = _weights(n, seed=d)
    res, _ = emulator.run(X, y, w, b, True, wplan, resident, misalign, sample_weight=s)
    _check(res, _host_sums(X, y, w, b, True, s), np.float64, n, f"emu weighted {case}")
    # integer weights (0 drops a row) == each row repeated that many times; no intercept: grad_b is 0
    k = _weights(n, seed=d + 1, kind="int")
    rep = k.astype(int)
    Xd, yd = np.repeat(X, rep, axis=0), np.repeat(y, rep)
    res_k, _ = emulator.run(X, y, w, b, False, wplan, resident, misalign, sample_weight=k)
    rloss, rgw, _ = _host_sums(Xd, yd, w, b, False)
    assert abs(float(res_k[0]) - rloss) <= 1e-12 * max(abs(rloss), 1.0), (float(res_k[0]), rloss)
    assert _relerr(res_k[1], rgw) <= 1e-12 and float(res_k[2]) == 0.0
    # all-ones weights: the weighted kernel multiplies by exactly 1.0, so it is the unweighted one bit for bit
    _, raw_1 = emulator.run(X, y, w, b, True, wplan, resident, misalign, sample_weight=np.ones(n))
    _, raw_0 = emulator.run(X, y, w, b, True, plan, resident, misalign)
    assert raw_1 == raw_0


def test_emulated_zero_weights_are_dropped_rows(emulator):
    """Rows of weight 0 contribute nothing: the same sums as the chunk without them (to rounding)."""
    n, d, dtype = 1000, 32, np.float64
    X, y, w, b = _make_case(n, d, dtype, seed=41)
    keep = np.random.default_rng(2).random(n) < 0.6
    s = keep.astype(np.float64)
    plan = K.plan_launch(n, d, 8, True, weighted=True)
    res, _ = emulator.run(X, y, w, b, True, plan, 3, sample_weight=s)
    _check(res, _host_sums(X[keep], y[keep], w, b), dtype, int(keep.sum()), "zero weights")


def test_emulator_header_is_self_consistent():
    # the emulator relies on the source's opt-out of the extern __shared__ declaration
    assert "#ifndef DL_SMEM_DECLARED" in K.KERNEL_SOURCE
    assert textwrap.dedent(EMU_HEADER).count("DL_SMEM_DECLARED") == 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["none", "weights", "zeros"])
@pytest.mark.parametrize("K_", [2, 3])
def test_cupy_evaluators_specialize_the_family_reference(cp, dtype, kind, K_):
    """The CuPy evaluators against the family's reference computed on the host: the fused CUDA kernel
    (binomial sums without curvature), and the generic cuBLAS path, which runs the same reference on the
    device (with curvature: sums and H.v), for each dtype, weights and mode."""
    from dlogit.chunks import prepare_chunk
    from dlogit.family import ParamLayout, family_for

    rng = np.random.default_rng(K_ * 7 + len(kind))
    n, d = 3001, 37
    X = rng.standard_normal((n, d)).astype(dtype)
    codes = rng.integers(0, K_, n)
    sw = None if kind == "none" else rng.random(n) * 3
    if kind == "zeros":
        sw[::3] = 0.0
    fam = family_for(K_)
    L = ParamLayout(d, fam.n_outputs(K_))
    theta, v = rng.standard_normal(L.size) * 0.3, rng.standard_normal(L.size)
    Xd = X.astype(np.float64)
    Z = Xd @ L.coef(theta).astype(dtype).astype(np.float64).T + L.intercept(theta)
    loss, R, curv = fam.terms(Z, fam.target(codes), sw, True, class_axis=-1)
    U = Xd @ L.coef(v).astype(dtype).astype(np.float64).T + L.intercept(v)
    T = fam.hvp_terms(curv, U, class_axis=-1)
    want = np.r_[loss, (R.T @ Xd).ravel(), R.sum(axis=0)]
    want_hv = np.r_[(T.T @ Xd).ravel(), T.sum(axis=0)]
    tol = 1e-10 if dtype == np.float64 else 2e-4
    swd = None if sw is None else cp.asarray(sw)
    for curvature in (False, True):
        chunk = prepare_chunk(cp.asarray(X), cp.asarray(codes), swd, L, fam, curvature=curvature)
        if K_ == 2 and not curvature:
            assert chunk.kernel == "cuda"
        got = chunk.sums(cp.asarray(theta)).get()
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
        if curvature:
            handle = chunk.sums(cp.asarray(theta), keep_curvature=True)
            np.testing.assert_allclose(handle.sums.get(), want, rtol=tol, atol=tol * np.abs(want).max())
            hv = chunk.hvp(handle, cp.asarray(v)).get()
            np.testing.assert_allclose(hv, want_hv, rtol=tol, atol=tol * np.abs(want_hv).max())
