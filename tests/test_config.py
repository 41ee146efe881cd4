"""``dlogit.config.get_bool``: one reader for every boolean setting, from YAML or environment."""

from __future__ import annotations

import os
import subprocess
import sys

import dask
import pytest

from dlogit.config import get_bool
from dlogit.errors import ConfigError


@pytest.mark.parametrize("text, want", [("false", False), ("FALSE", False), ("no", False), ("0", False),
                                        ("Off", False), ("true", True), ("Yes", True), ("1", True),
                                        ("ON", True), (True, True), (False, False)])
def test_get_bool_reads_every_spelling(text, want):
    with dask.config.set({"dlogit.precondition": text}):
        assert get_bool("dlogit.precondition") is want


@pytest.mark.parametrize("bad", ["maybe", "", "2", 2, 0.5, "truee"])
def test_get_bool_refuses_anything_else_naming_the_key(bad):
    with dask.config.set({"dlogit.engine.worker-malloc": bad}), \
            pytest.raises(ConfigError, match=r"dlogit\.engine\.worker-malloc"):
        get_bool("dlogit.engine.worker-malloc")


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc tuning is glibc only")
def test_worker_malloc_false_in_the_environment_turns_the_tuning_off():
    """``DASK_DLOGIT__ENGINE__WORKER_MALLOC=false`` reaches dask.config as the *string* "false"."""
    code = "import dlogit.worker as w; print(w.tune_malloc())"
    assert _python(code, DASK_DLOGIT__ENGINE__WORKER_MALLOC="false").stdout.strip() == "False"
    assert _python(code, DASK_DLOGIT__ENGINE__WORKER_MALLOC="off").stdout.strip() == "False"
    assert _python(code).stdout.strip() == "True"


def test_the_cli_check_accepts_what_the_estimator_accepts():
    """The CLI's config check refused 'no' / 'off' (only true/false/1/0) while the estimator took them."""
    check = "from dlogit.cli._options import check_config; check_config(); print('ok')"
    for text in ("no", "off", "yes", "on"):
        out = _python(check, DASK_DLOGIT__PRECONDITION=text)
        assert out.stdout.strip() == "ok", out.stderr


def test_cli_exits_2_on_a_bad_boolean_setting(tmp_path):
    """A worker-malloc value the preload cannot read is one line naming the key, exit 2, before any work."""
    out = subprocess.run([sys.executable, "-m", "dlogit", "train", "--synthetic", "100x3", "--workers", "1",
                          "--out", str(tmp_path / "m.npz")],
                         env={**os.environ, "DASK_DLOGIT__ENGINE__WORKER_MALLOC": "nah"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "dlogit.engine.worker-malloc" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("text, want", [("off", False), ("no", False), ("on", True)])
def test_remove_silent_workers_reads_the_spellings_of_get_bool(text, want):
    """``bool("off")`` is True: the engine setting must go through get_bool like every other."""
    import dask

    from dlogit.engine.driver import EngineSettings

    with dask.config.set({"dlogit.engine.remove-silent-workers": text}):
        assert EngineSettings.from_config().remove_silent_workers is want


@pytest.mark.parametrize("value, seconds, factor", [(None, None, None), ("Off", None, None), ("None", None, None),
                                                    ("10m", 600.0, None), ("10x", None, 10.0), (90, 90.0, None)])
def test_step_timeout_reads_durations_multiples_and_off(value, seconds, factor):
    import dask

    from dlogit.engine.driver import EngineSettings

    with dask.config.set({"dlogit.engine.step-timeout": value}):
        s = EngineSettings.from_config()
    assert (s.step_timeout, s.step_timeout_factor) == (seconds, factor)


@pytest.mark.parametrize("bad", [0, "0s", "infx", "1x", "-5s", "soon"])
def test_step_timeout_refuses_what_cannot_be_a_deadline(bad):
    import dask

    from dlogit.engine.driver import EngineSettings

    with dask.config.set({"dlogit.engine.step-timeout": bad}), pytest.raises(ConfigError, match="step-timeout"):
        EngineSettings.from_config()


def test_max_classes_default_lives_in_dlogit_yaml_only(monkeypatch):
    """The estimator reads dlogit.max-classes from the config (dlogit.yaml's 1000 unless set): no default
    restated in the estimator or the fit spec."""
    import dask
    import numpy as np
    import yaml

    import dlogit
    import dlogit.config
    from dlogit.errors import DataError
    from dlogit.spec import FitSpec

    with open(dlogit.config.__file__.replace("config.py", "dlogit.yaml")) as f:
        assert yaml.safe_load(f)["dlogit"]["max-classes"] == dask.config.get("dlogit.max-classes")
    with pytest.raises(TypeError, match="max_classes"):
        FitSpec(run="r", solver="gd", max_iter=1, tol=0.0)
    X, y = np.arange(8.0).reshape(4, 2), np.array([0, 1, 2, 3])
    with dask.config.set({"dlogit.max-classes": 3}), \
            pytest.raises(DataError, match=r"4 distinct classes, more than dlogit.max-classes = 3"):
        dlogit.LogisticRegression(max_iter=2).fit(X, y)
    assert dlogit.LogisticRegression(max_iter=2).make_spec(2).max_classes == 1000


def test_defaults_survive_a_config_set_block_that_first_imported_dlogit():
    """``dask.config.set`` puts back the namespace it found: dlogit imported inside the block (its
    defaults registered there) must not leave a later fit without them."""
    code = """
import dask
with dask.config.set({"dlogit.threads": 1}):
    import numpy as np
    import dlogit
    from dlogit.data import synthetic_numpy
    X, y = synthetic_numpy(300, 4, seed=0)
    dlogit.LogisticRegression().fit(X, y)
m = dlogit.LogisticRegression().fit(X, y)  # reads dlogit.precondition, chunk-bytes, max-classes ...
print(m.status_, dask.config.get("dlogit.threads"))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["converged", "None"]
