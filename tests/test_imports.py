"""What each entry point imports (issue 23): ``dlogit --version`` and usage errors load neither Dask nor
scikit-learn; ``import dlogit`` is light and its names load on first use; a Dask worker that evaluates a
distributed fit never imports scikit-learn, pandas or scipy.stats."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

HEAVY = ("dask", "distributed", "sklearn", "pandas", "scipy.stats", "pyarrow")


def _modules_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; the HEAVY modules it left in sys.modules (and its stdout)."""
    probe = (
        "import io, json, sys, contextlib\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):\n"
        "    try:\n" + "".join(f"        {line}\n" for line in code.splitlines()) +
        "    except SystemExit as e:\n"
        "        code = e.code\n"
        f"print(json.dumps({{'loaded': [m for m in {HEAVY!r} if m in sys.modules], 'out': out.getvalue()}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_dlogit_loads_no_heavy_library():
    assert _modules_after("import dlogit")["loaded"] == []


@pytest.mark.parametrize("argv", [["--version"], ["train", "--bogus"], ["nosuchcommand"]])
def test_version_and_usage_errors_load_neither_dask_nor_sklearn(argv):
    got = _modules_after(f"import sys\nsys.argv = ['dlogit', *{argv!r}]\nfrom dlogit.cli import main\nmain()")
    assert got["loaded"] == []
    if argv == ["--version"]:
        assert "version" in got["out"]


def test_public_names_and_subpackages_load_on_first_use():
    code = ("import dlogit\n"
            "names = [dlogit.monitor.TerminalProgress.__name__, dlogit.cluster.connect.__name__,\n"
            "         dlogit.LogisticRegression.__name__, dlogit.Checkpoint.__name__]\n"
            "import sklearn.exceptions as sk\n"
            "C = dlogit.ConvergenceWarning\n"
            "assert C is dlogit.errors.ConvergenceWarning and issubclass(C, sk.ConvergenceWarning)\n"
            "import pickle\n"
            "assert pickle.loads(pickle.dumps(C)) is C\n"
            "assert set(dlogit.__all__) <= set(dir(dlogit))\n"
            "print(names)")
    got = _modules_after(code)
    assert "['TerminalProgress', 'connect', 'LogisticRegression', 'CheckpointSpec']" in got["out"]


def test_config_defaults_registered_wherever_read():
    import dask

    import dlogit.config  # noqa: F401

    got = _modules_after("import dlogit.io.source\nimport dask\nprint(dask.config.get('dlogit.chunk-bytes'))")
    assert got["out"].strip() == str(dask.config.get("dlogit.chunk-bytes"))


def test_workers_of_a_distributed_fit_import_no_sklearn_pandas_or_scipy_stats():
    import dask.array as da
    from distributed import Client, LocalCluster

    import dlogit

    rng = np.random.default_rng(0)
    X = rng.standard_normal((4000, 5))
    y = (X[:, 0] + 0.3 * rng.standard_normal(4000) > 0).astype(float)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        Xd = da.from_array(X, chunks=(1000, 5))
        yd = da.from_array(y, chunks=1000)
        m = dlogit.LogisticRegression(mode="distributed", tol=1e-8).fit(Xd, yd)
        assert m.n_iter_ > 0
        loaded = client.run(lambda: [name for name in ("sklearn", "pandas", "scipy.stats") if name in sys.modules])
        evaluated = client.run(lambda: "dlogit.engine.shard" in sys.modules)
    assert all(evaluated.values()), evaluated  # every worker held chunks of the fit
    assert loaded and all(v == [] for v in loaded.values()), loaded
