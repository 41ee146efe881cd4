"""What each entry point imports: ``import dlogit`` and ``dlogit --version`` load no Dask, scikit-learn or
pandas; a Dask worker that evaluates a distributed fit loads no scikit-learn, pandas or scipy.stats; the
lazy names of the top level (submodules, ``ConvergenceWarning``) behave like ordinary attributes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

HEAVY = ("dask", "distributed", "sklearn", "pandas")


def _loaded(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; it leaves ``loaded`` (a list of module names) behind."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_dlogit_is_light():
    assert _loaded("import dlogit; dlogit.__version__") == []


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["nosuchcmd"]])
def test_cli_version_help_and_usage_errors_are_light(argv):
    code = ("import runpy, sys\n"
            f"sys.argv = ['dlogit', *{argv!r}]\n"
            "try:\n    runpy.run_module('dlogit', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code in (0, 2), e.code\n")
    assert _loaded(code) == []


# dlogit modules a command's usage error may load: the CLI's frame, the command's module, its options
_CLI_LIGHT = {"dlogit", "dlogit.__main__", "dlogit.errors", "dlogit.cli", "dlogit.cli._options"}


@pytest.mark.parametrize("argv", [["train", "--bogus"], ["train", "--l2", "abc"], ["train", "--solver", "sgd"],
                                  ["cluster", "up", "--bogus"], ["predict", "--bogus"],
                                  ["generate", "--rows", "0"], ["report"]])
def test_a_commands_usage_error_loads_no_dask_numpy_or_library(argv):
    """click's parsing fails before any heavy import: no Dask, distributed, scikit-learn, pandas, NumPy,
    and no dlogit module beyond the CLI's own; exit code 2 and one line on stderr."""
    code = ("import json, runpy, sys\n"
            f"sys.argv = ['dlogit', *{argv!r}]\n"
            "try:\n    runpy.run_module('dlogit', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print(json.dumps([code, sorted(m for m in sys.modules if m.split('.')[0] in "
            "('dlogit', 'dask', 'distributed', 'sklearn', 'pandas', 'numpy', 'scipy'))]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    code, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert code == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlogit: error: "), out.stderr
    command = "dlogit.cli." + {"cluster": "cluster_cmd"}.get(argv[0], argv[0])
    assert set(loaded) <= _CLI_LIGHT | {command}, loaded
    assert command in loaded  # the command's own parsing ran (not the group's)


def test_group_help_lists_each_commands_own_summary():
    import click

    from dlogit import cli

    ctx = click.Context(cli.cli)
    for name, (_, summary) in cli._COMMANDS.items():
        command = cli.cli.get_command(ctx, name)
        assert command is not None, name
        assert command.get_short_help_str(limit=10**6) == summary, name


def test_lazy_submodules_and_names():
    code = ("import dlogit\n"
            "assert dlogit.monitor.TerminalProgress is not None\n"
            "assert callable(dlogit.cluster.connect)\n"
            "assert set(dlogit.__all__) <= set(dir(dlogit))\n"
            "for name in dlogit.__all__:\n    getattr(dlogit, name)\n"
            "import sklearn.exceptions\n"
            "w = dlogit.ConvergenceWarning\n"
            "assert issubclass(w, sklearn.exceptions.ConvergenceWarning)\n"
            "import dlogit.errors\n"
            "from dlogit.errors import ConvergenceWarning\n"
            "assert w is dlogit.ConvergenceWarning is dlogit.errors.ConvergenceWarning is ConvergenceWarning\n"
            "try:\n    dlogit.nosuchthing\nexcept AttributeError:\n    pass\nelse:\n    raise AssertionError\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_errors_module_is_light():
    assert "sklearn" not in _loaded("import dlogit.errors; dlogit.errors.DataError")


def _worker_modules() -> list[str]:
    return sorted(m for m in ("sklearn", "pandas", "scipy.stats", "dask.array") if m in sys.modules)


_BLOCKED_KERNELS = r"""
import sys, threading
release = threading.Event()

class Hold:  # the fused kernels' module cannot load until `release` is set
    def find_spec(self, name, path=None, target=None):
        if name == "dlogit.kernels._cpu_jit":
            release.wait()
        return None

sys.meta_path.insert(0, Hold())
import dlogit.worker
from dlogit.kernels import cache
assert cache.ready()  # conftest filled the cache: the preload would load the fused kernels
dlogit.worker.dask_setup(None)  # must return while the kernels' module is held
loader = dlogit.worker._loader
assert loader is not None and loader.is_alive()
assert "dlogit.kernels._cpu_jit" not in sys.modules
release.set()
loader.join(300)
assert not loader.is_alive() and "dlogit.kernels._cpu_jit" in sys.modules and "numba" in sys.modules
print("ok")
"""


def test_worker_preload_returns_before_the_fused_kernels_load():
    """The preload leaves the fused kernels (Numba, ~1 s or more on a busy machine) to a thread: with
    their module held, ``dask_setup`` returns (it would wait forever if it loaded them itself), and the
    thread loads them once released."""
    out = subprocess.run([sys.executable, "-c", _BLOCKED_KERNELS], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_distributed_worker_imports_no_sklearn_pandas_scipy_stats():
    """A fresh cluster (no other test's tasks ran there) after distributed fits: the workers have not
    loaded scikit-learn, pandas or scipy.stats (the driver here has: this test imports them), nor
    dask.array for data made on the workers (a ``da.from_array`` graph's own tasks need it there)."""
    import dask.array as da
    from conftest import local_cluster

    import dlogit

    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 5))
    y = (X @ rng.standard_normal(5) + rng.standard_normal(400) > 0).astype(float)
    with local_cluster(2) as client:
        # the workers' own state before the fit: a spawned worker re-runs this process's __main__
        # (pytest's), which must not be what loads them either
        assert all(v == [] for v in client.run(_worker_modules).values())
        Xs, ys = dlogit.synthetic(400, 130, chunk_rows=100)  # made on the workers; fused-kernel wide
        fits = [dlogit.LogisticRegression(mode="distributed", max_iter=50).fit(Xs, ys, client=client)
                for _ in range(2)]
        on_workers = client.run(_worker_modules)
        model = dlogit.LogisticRegression(mode="distributed", max_iter=50).fit(
            da.from_array(X, chunks=100), da.from_array(y, chunks=100), client=client)
        assert model.coef_.shape[-1] == 5
        assert "sklearn" in sys.modules and "dask.array" in sys.modules  # the checks below are not vacuous
        loaded = client.run(_worker_modules)
    assert len(loaded) == 2 == len(on_workers)
    assert all(v == [] for v in on_workers.values()), on_workers
    assert all(set(v) <= {"dask.array"} for v in loaded.values()), loaded
    # the first fit on fresh workers (the kernels perhaps still loading there) is the one with them loaded
    assert fits[0].kernel_ == fits[1].kernel_ == "fused"
    np.testing.assert_array_equal(fits[0].coef_, fits[1].coef_)
    np.testing.assert_array_equal(fits[0].intercept_, fits[1].intercept_)
