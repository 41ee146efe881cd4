"""The first fit on a machine never waits for the fused kernels to compile (:mod:`dlogit.kernels.cache`).

Real processes, each with an empty ``NUMBA_CACHE_DIR`` of its own (so "not compiled yet" whatever this
machine's package cache holds): the first fit takes BLAS without importing Numba and starts the
background compile; the fit after it uses the fused kernel and gives the same model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(600)

# dlogit train in a process that then says which Numba modules it loaded
_PROBE = """
import json, sys
from dlogit.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"rc": code, "numba": "numba" in sys.modules,
                  "jit": sorted(m for m in sys.modules if m.endswith("_jit") and m.startswith("dlogit."))}))
"""


def _env(cache: str) -> dict[str, str]:
    return {**os.environ, "NUMBA_CACHE_DIR": cache}


def _stamps(cache) -> list[str]:
    return sorted(p for p in os.listdir(cache) if p.startswith("dlogit-kernels-"))


def test_warm_up_does_not_compile_when_the_cache_is_empty(tmp_path):
    code = ("import sys; import dlogit.worker as w; w.warm_up(); "
            "print('numba' in sys.modules, 'dlogit.kernels._cpu_jit' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=_env(str(tmp_path)), check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
    assert _stamps(tmp_path) == []  # the preload starts no compile either (the fit's client does)


@pytest.mark.slow
def test_first_fit_takes_blas_while_the_kernels_compile_then_fused_gives_the_same_model(tmp_path):
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 160))  # d >= 128: auto picks the fused kernel once it is compiled
    y = (X[:, :4].sum(axis=1) + rng.normal(size=300) > 0).astype(int)
    data = tmp_path / "wide.csv"
    np.savetxt(data, np.column_stack([X, y]), delimiter=",", fmt="%.8f",
               header=",".join([f"x{i}" for i in range(160)] + ["label"]), comments="")

    def train(out):
        r = subprocess.run([sys.executable, "-c", _PROBE, "train", str(data), "--out", str(out)],
                           capture_output=True, text=True, timeout=300, env=_env(str(cache)), check=False)
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines(), json.loads(r.stdout.splitlines()[-1])

    lines, probe = train(tmp_path / "before.npz")
    assert "dlogit: compiling the fused CPU kernels in the background (first run on this machine); this fit " \
           "uses the BLAS path" in lines
    assert any(line.startswith("done: converged") and "blas kernel" in line for line in lines)
    assert probe["rc"] in (0, None) and not probe["numba"] and probe["jit"] == []  # this process compiled nothing

    deadline = time.monotonic() + 480  # the background process compiles (20-70 s on a loaded machine)
    while not any(p.endswith(".ok") for p in _stamps(cache)) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert [p for p in _stamps(cache) if p.endswith(".ok")], _stamps(cache)
    assert not [p for p in _stamps(cache) if p.endswith(".lock")]

    lines, probe = train(tmp_path / "after.npz")
    assert not any("compiling the fused" in line for line in lines)
    assert any(line.startswith("done: converged") and "fused kernel" in line for line in lines)
    assert probe["numba"] and "dlogit.kernels._cpu_jit" in probe["jit"]

    before, after = np.load(tmp_path / "before.npz"), np.load(tmp_path / "after.npz")
    # two kernels summing in different orders, one optimum: equal to the solver's tolerance
    np.testing.assert_allclose(before["coef"], after["coef"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(before["intercept"], after["intercept"], rtol=1e-10, atol=1e-12)


def test_where_numba_cannot_cache_the_fit_says_so_and_starts_no_compile(tmp_path):
    """A compile that found no usable Numba cache leaves ``.nocache``: later fits take BLAS, say why (not
    "compiling in the background", which would be false), and start no background compile."""
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    code = ("import sys; from dlogit.kernels import cache; open(cache.stamp_path() + '.nocache', 'w').close(); "
            "print(cache.cannot_cache(), cache.ensure_ready())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=_env(str(cache)), check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False"]
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 130))
    data = tmp_path / "wide.csv"
    np.savetxt(data, np.column_stack([X, X[:, 0] > 0]), delimiter=",", fmt="%.6f",
               header=",".join([f"x{i}" for i in range(130)] + ["label"]), comments="")
    r = subprocess.run([sys.executable, "-c", _PROBE, "train", str(data), "--out", str(tmp_path / "m.npz")],
                       capture_output=True, text=True, timeout=300, env=_env(str(cache)), check=False)
    lines = r.stdout.splitlines()
    assert json.loads(lines[-1])["rc"] in (0, None), r.stderr
    assert any("the fused CPU kernels cannot be cached here" in line for line in lines), lines
    assert not any("compiling the fused" in line for line in lines)
    assert any(line.startswith("done: ") and "blas kernel" in line for line in lines)
    assert not [p for p in _stamps(cache) if p.endswith(".lock")]  # no background compile started
