"""Tests of ``scripts/gpu-check`` on a machine without a GPU, and of :func:`dlogit.cluster.workers_have_gpus`.

The script is run as a program (the way the GPU session runs it): every GPU stage must report
"skipped: no CUDA device", the install stage works on an empty and on a fake wheel folder, the JSON
report follows its schema, the log and the summary table are written, and the exit status follows
the documented rules. Its runner is also imported as a module and driven with plain commands standing
in for stages: a stage that hangs is killed at its bound (with the processes it started) and the next
stage runs; a failing stage does not stop the rest; the budget skips what no longer fits.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check"
GPU_STAGES = ("gpu-tests", "e2e-textbook", "e2e-2gb", "e2e-cluster", "e2e-shared-gpu", "bench-kernel",
              "bench-textbook", "bench-lbfgs")


def _load_script():
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up by name
    loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gc():
    return _load_script()


def _run(*args, env=None, timeout=300):
    e = dict(os.environ)
    e.pop("OUT", None)
    e.update(env or {})
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=ROOT, check=False)


def _no_gpu_here():
    from dlogit._xp import cupy_available

    if cupy_available():
        pytest.skip("this test is about a machine without a GPU")


def _fake_wheel(folder: Path, name: str = "dlogit_gpu_check_fake", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel holding one module ``name`` with ``__version__ = version``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f'__version__ = "{version}"\n',
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{k},,\n" for k in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return path


# --------------------------------------------------------------------------------------------------
# the whole script, run as on the GPU machine


def test_cpu_machine_run_skips_gpu_stages_and_writes_the_report(tmp_path, gc):
    _no_gpu_here()
    out = tmp_path / "out"
    empty = tmp_path / "wheels"
    empty.mkdir()
    p = _run("--out", out, "--wheels", empty, "--work", tmp_path / "work")
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads((out / "gpu-check.json").read_text())
    gc.validate_report(report)
    assert report["exit_code"] == 0 and report["gpu"]["available"] is False
    st = {s["name"]: s for s in report["stages"]}
    assert list(st) == list(gc.STAGE_NAMES)
    assert st["env"]["status"] == "passed" and st["env"]["result"]["python"]
    assert st["install"]["status"] == "passed", st["install"]
    assert "nothing installed" in st["install"]["note"]
    imports = st["install"]["result"]["imports"]
    assert Path(imports["dlogit"]["file"]).resolve().is_relative_to(ROOT)  # the checkout, not a copy
    for name in GPU_STAGES:
        assert st[name]["status"] == "skipped" and st[name]["reason"].startswith("no CUDA device"), st[name]
    assert report["summary"] == {"passed": 2, "failed": 0, "timeout": 0, "skipped": len(GPU_STAGES)}
    log = (out / "gpu-check.log").read_text()
    assert "===== env: passed" in log and "===== install: passed" in log
    # the summary table: a header and one row per stage
    table = p.stdout[p.stdout.index("stage "):]
    for name in gc.STAGE_NAMES:
        assert any(line.startswith(name + " ") for line in table.splitlines()), name
    assert sorted(os.listdir(out)) == ["gpu-check.json", "gpu-check.log"]  # the device tool returns <= 8 files


def test_out_defaults_to_the_OUT_variable(tmp_path):
    _no_gpu_here()
    p = _run("--only", "env", "--work", tmp_path / "work", env={"OUT": str(tmp_path / "from-env")})
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "from-env" / "gpu-check.json").is_file()


def test_require_gpu_exits_3_without_one_but_still_reports(tmp_path):
    _no_gpu_here()
    p = _run("--only", "env", "--out", tmp_path / "out", "--work", tmp_path / "work", "--require-gpu")
    assert p.returncode == 3
    assert json.loads((tmp_path / "out" / "gpu-check.json").read_text())["exit_code"] == 0


def test_fake_wheel_is_installed_into_the_site_folder(tmp_path):
    wheels = tmp_path / "wheels"
    _fake_wheel(wheels)
    site = tmp_path / "site"
    p = _run("--only", "install", "--out", tmp_path / "out", "--wheels", wheels, "--site", site,
             "--work", tmp_path / "work")
    assert p.returncode == 0, p.stdout + p.stderr
    st = json.loads((tmp_path / "out" / "gpu-check.json").read_text())["stages"][1]
    assert st["name"] == "install" and st["status"] == "passed", st
    assert st["result"]["wheels"] == ["dlogit_gpu_check_fake-1.0-py3-none-any.whl"]
    assert (site / "dlogit_gpu_check_fake.py").read_text() == '__version__ = "1.0"\n'
    assert "1 wheel(s)" in st["note"]


def test_two_versions_of_one_wheel_fail_the_install_stage_clearly(tmp_path):
    wheels = tmp_path / "wheels"
    _fake_wheel(wheels, version="1.0")
    _fake_wheel(wheels, version="2.0")
    p = _run("--only", "install,env", "--out", tmp_path / "out", "--wheels", wheels, "--work", tmp_path / "work")
    assert p.returncode == 1
    st = {s["name"]: s for s in json.loads((tmp_path / "out" / "gpu-check.json").read_text())["stages"]}
    assert st["install"]["status"] == "failed" and "two versions of dlogit-gpu-check-fake" in st["install"]["reason"]
    assert st["env"]["status"] == "passed"  # the stage before still counts


def test_install_runs_whenever_a_later_stage_is_selected(tmp_path):
    _no_gpu_here()
    p = _run("--only", "gpu-tests", "--out", tmp_path / "out", "--work", tmp_path / "work")
    assert p.returncode == 0, p.stdout + p.stderr
    st = {s["name"]: s for s in json.loads((tmp_path / "out" / "gpu-check.json").read_text())["stages"]}
    assert st["install"]["status"] == "passed" and st["env"]["status"] == "skipped"
    assert st["gpu-tests"]["status"] == "skipped" and st["gpu-tests"]["reason"].startswith("no CUDA device")


def test_bad_options_exit_2():
    assert _run("--only", "nosuchstage").returncode == 2
    assert _run("--timeout", "env=abc").returncode == 2
    assert _run("--timeout", "nosuch=3").returncode == 2
    assert _run("--budget", "0").returncode == 2


def test_list_names_every_stage(gc):
    p = _run("--list", "--timeout", "gpu-tests=999")
    assert p.returncode == 0
    for name in gc.STAGE_NAMES:
        assert name in p.stdout
    assert "999 s" in p.stdout


def test_help_and_docs_name_the_same_stages(gc):
    doc = (ROOT / "docs" / "gpu-check.md").read_text()
    for name in gc.STAGE_NAMES:
        assert f"`{name}`" in doc, name
        assert name in gc.__doc__


# --------------------------------------------------------------------------------------------------
# the runner, with plain commands standing in for stages


def _ctx(gc, tmp_path, **kw):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    base = {"root": str(ROOT), "out": str(tmp_path / "out"), "work": str(work), "site": str(work / "site"),
            "wheels": None, "python": sys.executable, "gpu": {"available": False, "reason": "no CUDA device: test"}}
    base.update(kw)
    return gc.Context(**base)


def _py(code):
    return (sys.executable, "-c", code)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_hanging_stage_is_killed_at_its_bound_with_its_children_and_the_next_runs(gc, tmp_path):
    pidfile = tmp_path / "child.pid"
    hang = ("import subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
            "print('hanging', flush=True)\n"
            "time.sleep(300)\n")
    stages = [gc.Stage("hang", 2.0, False, "sleeps", argv=_py(hang)),
              gc.Stage("after", 30, False, "prints", argv=_py("print('after ran')"))]
    ctx = _ctx(gc, tmp_path)
    t0 = time.monotonic()
    records, report = gc.run_all(stages, ctx, 60, {"hang", "after"}, ["test"], emit=lambda s: None)
    assert time.monotonic() - t0 < 20
    hang_rec, after = records
    assert hang_rec.status == "timeout" and "time limit (2 s)" in hang_rec.reason
    assert 1.9 <= hang_rec.seconds < 10
    assert after.status == "passed"
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild), "the hung stage's child outlived the stage"
    assert report["exit_code"] == 1
    gc.validate_report(report)
    log = (Path(ctx.out) / "gpu-check.log").read_text()
    assert "hanging" in log and "after ran" in log


def test_failing_stage_does_not_stop_the_rest(gc, tmp_path):
    stages = [gc.Stage("boom", 30, False, "fails", argv=_py("import sys; print('bad thing'); sys.exit(4)")),
              gc.Stage("ok", 30, False, "passes", argv=_py("pass"))]
    records, report = gc.run_all(stages, _ctx(gc, tmp_path), 60, {"boom", "ok"}, ["test"], emit=lambda s: None)
    assert [r.status for r in records] == ["failed", "passed"]
    assert records[0].returncode == 4 and "bad thing" in records[0].reason
    assert report["summary"] == {"passed": 1, "failed": 1, "timeout": 0, "skipped": 0}


def test_a_stage_process_reports_through_its_result_file(gc, tmp_path):
    """A stage that writes a result file is taken at its word (skipped / failed with a reason)."""
    write = ("import json, os\n"
             "json.dump({'status': %r, 'reason': %r, 'note': '', 'result': {'x': 1}},"
             " open(os.environ['DLOGIT_GPU_CHECK_RESULT'], 'w'))\n")
    stages = [gc.Stage("s", 30, False, "", argv=_py(write % ("skipped", "nothing to do"))),
              gc.Stage("f", 30, False, "", argv=_py(write % ("failed", "rel 1e-3 > 1e-10") + "raise SystemExit(1)")),
              gc.Stage("lying", 30, False, "", argv=_py(write % ("passed", "") + "raise SystemExit(2)"))]
    records, _ = gc.run_all(stages, _ctx(gc, tmp_path), 60, {"s", "f", "lying"}, ["t"], emit=lambda s: None)
    assert [(r.status, r.reason) for r in records[:2]] == [("skipped", "nothing to do"), ("failed", "rel 1e-3 > 1e-10")]
    assert records[0].result == {"x": 1}
    assert records[2].status == "failed" and "exited 2" in records[2].reason


def test_budget_bounds_stages_and_skips_what_no_longer_fits(gc, tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "MIN_STAGE_S", 1.0)
    stages = [gc.Stage("slow", 100, False, "", argv=_py("import time; time.sleep(60)")),
              gc.Stage("next", 100, False, "", argv=_py("pass"))]
    records, report = gc.run_all(stages, _ctx(gc, tmp_path), 2.5, {"slow", "next"}, ["t"], emit=lambda s: None)
    assert records[0].status == "timeout" and records[0].timeout_s <= 2.5
    assert records[1].status == "skipped" and "budget exhausted" in records[1].reason
    gc.validate_report(report)


def test_unselected_and_gpu_stages_are_skipped_with_reasons(gc, tmp_path):
    stages = [gc.Stage("a", 30, False, "", argv=_py("pass")),
              gc.Stage("g", 30, True, "", argv=_py("raise SystemExit(1)")),
              gc.Stage("c", 30, True, "", cpu_ok=True, argv=_py("pass"))]
    ctx = _ctx(gc, tmp_path)
    records, _ = gc.run_all(stages, ctx, 60, {"g", "c"}, ["t"], emit=lambda s: None)
    assert [(r.status, r.reason) for r in records] == [
        ("skipped", "not selected (--only/--skip)"), ("skipped", "no CUDA device: test"),
        ("skipped", "no CUDA device: test")]
    ctx.cpu_stand_in = True
    records, report = gc.run_all(stages, ctx, 60, {"g", "c"}, ["t"], emit=lambda s: None)
    assert [r.status for r in records] == ["skipped", "skipped", "passed"]  # only cpu_ok stages stand in
    assert report["exit_code"] == 0


def test_exit_code_rules(gc):
    R = gc.StageRecord
    assert gc.exit_code([]) == 0
    assert gc.exit_code([R("a", "passed"), R("b", "skipped", reason="x")]) == 0
    assert gc.exit_code([R("a", "passed"), R("b", "timeout", reason="x")]) == 1
    assert gc.exit_code([R("a", "failed", reason="x"), R("b", "passed")]) == 1


def test_schema_validation_catches_bad_reports(gc, tmp_path):
    _, report = gc.run_all([gc.Stage("a", 30, False, "", argv=_py("pass"))], _ctx(gc, tmp_path), 60, {"a"}, ["t"],
                           emit=lambda s: None)
    gc.validate_report(report)
    on_disk = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    gc.validate_report(on_disk)
    for breaks in (lambda r: r.pop("gpu"), lambda r: r.update(schema="other/9"),
                   lambda r: r["stages"][0].update(status="odd"),
                   lambda r: r["stages"][0].update(status="failed", reason=""),
                   lambda r: r["summary"].update(passed=7), lambda r: r["stages"][0].pop("note")):
        bad = json.loads(json.dumps(on_disk))
        breaks(bad)
        with pytest.raises(gc.SchemaError):
            gc.validate_report(bad)


def test_model_comparison_is_relative_over_coef_and_intercept(gc, tmp_path):
    import numpy as np

    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, coef=np.array([[3.0, 4.0]]), intercept=np.array([0.0]))
    np.savez(b, coef=np.array([[3.0, 4.0]]), intercept=np.array([1e-9 * 5]))
    assert gc.model_rel_diff(b, a) == pytest.approx(1e-9)
    assert gc.model_rel_diff(a, a) == 0.0


def test_summary_table_lists_reasons_for_stages_that_did_not_pass(gc):
    R = gc.StageRecord
    table = gc.summary_table([R("env", "passed", note="H200", seconds=1.5, timeout_s=60),
                              R("gpu-tests", "failed", reason="3 failed", seconds=80, timeout_s=200)])
    lines = table.splitlines()
    assert lines[0].split() == ["stage", "status", "seconds", "limit", "note"]
    assert lines[2].split()[:4] == ["env", "passed", "1.5", "60"] and lines[2].endswith("H200")
    assert lines[3].endswith("3 failed")


def test_kill_group_ignores_gone_processes(gc):
    p = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    p.wait()
    gc._kill_group(p.pid, signal.SIGKILL)  # no error for a group that is gone


# --------------------------------------------------------------------------------------------------
# the end-to-end stages with CPU workers standing in for the GPU (slow), the real wheel bundle


@pytest.mark.slow
def test_e2e_stages_with_cpu_workers_standing_in(tmp_path):
    """Exercises the end-to-end plumbing (cluster up / scheduler file / SIGTERM, JSON summaries, model
    comparison, the shared cluster's four workers in distributed mode) where no GPU is."""
    _no_gpu_here()
    p = _run("--only", "e2e-textbook,e2e-cluster,e2e-shared-gpu,e2e-2gb", "--cpu-stand-in", "--quick",
             "--out", tmp_path / "out", "--work", tmp_path / "work", timeout=900)
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    st = {s["name"]: s for s in report["stages"]}
    for name in ("e2e-textbook", "e2e-cluster", "e2e-shared-gpu", "e2e-2gb"):
        assert st[name]["status"] == "passed", (name, st[name]["reason"], p.stdout[-3000:])
    runs = st["e2e-textbook"]["result"]["runs"]
    assert runs["textbook-float64"]["rel_diff"] <= 1e-10 and runs["textbook-float32"]["rel_diff"] <= 1e-5
    shared = st["e2e-shared-gpu"]["result"]
    assert shared["workers"]["n_workers"] == 4
    assert shared["runs"]["shared-gpu-distributed"]["gpu"]["mode"] == "distributed"
    assert st["e2e-cluster"]["result"]["stopped_cleanly"] is True
    assert p.returncode == 0


def test_the_bundled_wheels_install_offline(tmp_path):
    wheels = ROOT.parent / "shared" / "gpu" / "wheels"
    if not any(wheels.glob("*.whl")):
        pytest.skip(f"no wheel bundle at {wheels}")
    p = _run("--only", "install", "--wheels", wheels, "--out", tmp_path / "out", "--work", tmp_path / "work")
    st = json.loads((tmp_path / "out" / "gpu-check.json").read_text())["stages"][1]
    assert st["status"] == "passed", st["reason"]
    imports = st["result"]["imports"]
    assert imports["dask"]["file"].startswith(str(tmp_path)) and imports["dask"]["version"] == "2026.7.1"
    assert p.returncode == 0


# --------------------------------------------------------------------------------------------------
# dlogit.cluster.workers_have_gpus: the probe runs on the workers


def test_cpu_workers_have_no_gpus(client2, monkeypatch):
    from dlogit.cluster import workers_have_gpus

    _no_gpu_here()
    monkeypatch.setitem(sys.modules, "cupy", None)  # the client cannot import CuPy: it must not try
    assert workers_have_gpus(client2) is False


def test_the_answer_comes_from_the_workers_not_the_client(client2, monkeypatch):
    """Pretend every worker has a GPU: the answer is True although this client has no CuPy at all."""
    import dlogit.cluster as C

    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(C, "_worker_sees_gpu", lambda: True)
    assert C.workers_have_gpus(client2) is True


def test_one_worker_without_a_gpu_makes_it_false(client2, monkeypatch):
    import dlogit.cluster as C

    first = min(client2.scheduler_info()["workers"])

    def probe():
        from distributed import get_worker

        return get_worker().address == first

    monkeypatch.setattr(C, "_worker_sees_gpu", probe)
    assert C.workers_have_gpus(client2) is False


def test_a_failing_probe_counts_as_no_gpu(client2, monkeypatch):
    import logging

    import dlogit.cluster as C

    def probe():
        raise RuntimeError("driver exploded")

    class Keep(logging.Handler):  # not caplog: CI runs pytest with -p no:logging
        def __init__(self):
            super().__init__(logging.WARNING)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    keep = Keep()
    log = logging.getLogger("dlogit.cluster")
    log.addHandler(keep)
    try:
        monkeypatch.setattr(C, "_worker_sees_gpu", probe)
        assert C.workers_have_gpus(client2) is False
    finally:
        log.removeHandler(keep)
    assert any("driver exploded" in line for line in keep.lines)


def test_no_workers_means_no_gpus():
    import dlogit.cluster as C

    class NoWorkers:
        def run(self, fn, on_error="raise"):
            return {}

    assert C.workers_have_gpus(NoWorkers()) is False
