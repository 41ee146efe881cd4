"""Issue 19, "Correct under real conditions": the CLI and the estimator's client path.

Real ``dlogit`` processes where pipes, signals and listeners are the point; the CLI in this process
(``dlogit.cli.main``, through test_cli's runner) against one shared cluster of worker processes
elsewhere; a real Dask client for the event topic and the version check.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _cluster_helpers import make_tls_files
from test_cli import DLOGIT, cli

pytestmark = pytest.mark.timeout(300)


def strict_json(line: str) -> dict:
    """JSON as the standard has it: ``NaN`` / ``Infinity`` are errors (Python's json accepts them)."""
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=50) as lc:
        yield lc.scheduler_address


@pytest.fixture()
def client(scheduler):
    from distributed import Client

    with Client(scheduler, set_as_default=False, timeout=30) as c:
        yield c


def _csv(path: Path, labels: list[int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(len(labels), 3))
    lines = ["a,b,c,label"] + [f"{x[0]:.6f},{x[1]:.6f},{x[2]:.6f},{lab}" for x, lab in zip(X, labels)]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# 1. --json: progress lines reach a pipe as they are printed, the JSON object comes last

def test_json_progress_lines_reach_a_pipe_while_the_fit_runs():
    """--json: stdout is the one JSON object alone (``json.loads(stdout)`` works); the progress lines go
    to stderr as they are printed, so a log being tailed shows them while the fit runs."""
    p = subprocess.Popen([*DLOGIT, "train", "--workers", "1", "--json", "--progress", "1000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        seen = []
        for line in p.stderr:  # blocks until a line arrives (or the process ends)
            seen.append(line)
            if line.startswith("start  run "):
                break
        running = p.poll() is None
        out, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert seen and seen[-1].startswith("start  run ") and running, seen
    assert any(line.startswith("step 1000 ") for line in err.splitlines()), err
    summary = json.loads(out)  # nothing else on stdout
    assert summary["status"] == "max_iter" and summary["n_iter"] == 10001


# --------------------------------------------------------------------------------------------------
# 2. outputs are checked against each other

def test_model_cannot_overwrite_the_checkpoint(capfd, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()  # an existing checkpoint directory (a fit to resume)
    (tmp_path / "link").symlink_to(ck)
    for out in (ck / "checkpoint.npz", tmp_path / "ck" / ".." / "ck" / "checkpoint.npz",
                tmp_path / "link" / "checkpoint.npz"):
        r = cli(capfd, "train", "--synthetic", "50x3", "--checkpoint", ck, "--out", out,
                "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "2s")
        assert r.rc == 2 and len(r.err_lines) == 1, r.err
        assert "name the same file" in r.err, r.err
    assert not list(ck.iterdir())


# --------------------------------------------------------------------------------------------------
# 3. the user's own handler of the "dlogit" topic and dlogit's routing live together

def test_registered_handler_reads_distributeds_handler_table(client):
    """routing.registered_handler is the one reader of distributed's private handler table: this
    fails when distributed changes how Client.subscribe_topic stores a handler."""
    from dlogit.engine.routing import registered_handler

    def mine(event):
        return None

    assert registered_handler(client, "dlogit-test-topic") is None
    client.subscribe_topic("dlogit-test-topic", mine)
    try:
        assert registered_handler(client, "dlogit-test-topic") is mine
    finally:
        client.unsubscribe_topic("dlogit-test-topic")


def _fit_events(client):
    import dask.array as da

    import dlogit

    rng = np.random.default_rng(0)
    X = da.from_array(rng.normal(size=(400, 4)), chunks=100)
    y = da.from_array((rng.random(400) < 0.5).astype(float), chunks=100)
    seen: list[dict] = []
    model = dlogit.LogisticRegression(solver="gd", max_iter=50, tol=0.0)
    model.fit(X, y, client=client, callback=seen.append)
    return model, seen


def _wait_for(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not pred():
        time.sleep(0.05)
    return pred()


@pytest.mark.parametrize("when", ["before", "after"])
def test_user_topic_handler_and_dlogit_fits_share_the_topic(client, when):
    from dlogit.engine import listen

    theirs: list[dict] = []

    def handler(event):
        theirs.append(event[1])

    if when == "after":  # dlogit subscribed first (as the CLI does), the user replaces its handler
        listen(client)
    client.subscribe_topic("dlogit", handler)
    for _ in range(2):  # the second fit reuses the client's router
        model, seen = _fit_events(client)
        types = [ev["type"] for ev in seen]
        assert types[0] == "start" and types[-1] == "end", types  # dlogit's callback got its events
        assert seen[-1]["status"] == "max_iter"
        def same(run=model.run_id_, mine=seen):
            return [ev for ev in theirs if ev.get("run") == run] == mine

        assert _wait_for(same), ([ev["type"] for ev in theirs if ev.get("run") == model.run_id_], types)


# --------------------------------------------------------------------------------------------------
# 4. the estimator checks the workers' versions too

def test_estimator_fit_on_a_client_reports_a_version_mismatch(client, monkeypatch):
    import dask.array as da

    import dlogit
    from dlogit.errors import ClusterError

    X = da.from_array(np.random.default_rng(1).normal(size=(100, 2)), chunks=50)
    y = da.from_array(np.arange(100) % 2, chunks=50)
    real = dlogit.__version__
    monkeypatch.setattr(dlogit, "__version__", "0.0.0+other")
    with pytest.raises(ClusterError, match=r"version mismatch: worker .* has dlogit " + real.replace(".", r"\.")):
        dlogit.LogisticRegression(max_iter=5).fit(X, y, client=client)
    monkeypatch.setattr(dlogit, "__version__", real)
    dlogit.LogisticRegression(max_iter=5).fit(X, y, client=client)
    # checked once per client: a later fit does not ask the workers again
    monkeypatch.setattr(dlogit, "__version__", "0.0.0+other")
    dlogit.LogisticRegression(max_iter=5).fit(X, y, client=client)


# --------------------------------------------------------------------------------------------------
# 5. beyond loopback with TLS, the dashboard (plain HTTP) stays on loopback; cluster up prints /dlogit

def test_cluster_up_on_all_interfaces_keeps_the_dashboard_on_loopback(tmp_path):
    ca, cert, key = make_tls_files(tmp_path / "tls")
    p = subprocess.Popen([*DLOGIT, "cluster", "up", "--workers", "1", "--host", "0.0.0.0", "--scheduler-port",
                          "0", "--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                         start_new_session=True)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("press Ctrl-C"):
                break
        dash = next(line for line in lines if line.startswith("dashboard: "))
        port = int(dash.rsplit(":", 1)[1].split("/", 1)[0])
        import psutil  # where the dashboard really listens (the scheduler runs in the cluster up process)

        listening = {c.laddr.ip for c in psutil.Process(p.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            import os

            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, (lines, err)
    assert listening == {"127.0.0.1"}, listening
    assert dash.startswith("dashboard: http://127.0.0.1:") and dash.endswith("/dlogit"), dash
    assert "dashboard stays on 127.0.0.1" in err and "plain HTTP" in err, err


def test_dashboard_binding_rules():
    from dlogit.cluster import dashboard_binding

    assert dashboard_binding("127.0.0.1", None) == ("127.0.0.1:8787", None)
    addr, note = dashboard_binding("0.0.0.0", None)
    assert addr == "127.0.0.1:8787" and "--dashboard-address" in note
    addr, note = dashboard_binding("0.0.0.0", "0.0.0.0:9000")
    assert addr == "0.0.0.0:9000" and "plain HTTP" in note
    assert dashboard_binding("0.0.0.0", "127.0.0.1:0") == ("127.0.0.1:0", None)
    assert dashboard_binding("127.0.0.1", "::1") == ("::1", None)  # not "0.0.0.0::1"
    addr, note = dashboard_binding("127.0.0.1", ":9000")
    assert addr == "0.0.0.0:9000" and "plain HTTP" in note


# --------------------------------------------------------------------------------------------------
# 6. options that cannot apply say so

def test_local_cluster_options_with_a_scheduler_warn(capfd, scheduler):
    r = cli(capfd, "train", "--synthetic", "60x3", "--workers", "3", "--max-iter", "5", "--json", "--quiet",
            "--scheduler", scheduler)
    assert r.rc == 0, r.err
    assert r.err_lines == [("dlogit: warning: --workers is ignored: training on the existing scheduler at "
                            f"{scheduler}, not on a local cluster")], r.err
    r = cli(capfd, "train", "--synthetic", "60x3", "--gpus", "0", "--max-iter", "5", "--json", "--quiet",
            env={"DLOGIT_SCHEDULER": scheduler})
    assert r.rc == 0, r.err
    assert len(r.err_lines) == 1 and "--gpus is ignored" in r.err and "DLOGIT_SCHEDULER" in r.err, r.err


def test_lr_with_a_solver_that_does_not_use_it_warns(capfd, scheduler):
    for solver in ("lbfgs", "newton"):
        r = cli(capfd, "train", "--synthetic", "60x3", "--solver", solver, "--lr", "0.5", "--json", "--quiet",
                "--scheduler", scheduler)
        assert r.rc == 0, r.err
        assert r.err_lines == [(f"dlogit: warning: --lr is ignored by --solver {solver} (it chooses its own "
                                "steps; --lr is for gd)")], r.err
    r = cli(capfd, "train", "--synthetic", "60x3", "--solver", "lbfgs", "--json", "--quiet", "--scheduler", scheduler)
    assert r.rc == 0 and r.err_lines == [], r.err  # the default --lr says nothing


def test_api_mode_without_a_client_warns():
    import dlogit

    X = np.random.default_rng(0).normal(size=(50, 2))
    y = np.arange(50) % 2
    with pytest.warns(UserWarning, match="mode='distributed' is ignored"):
        dlogit.LogisticRegression(mode="distributed", solver="gd", max_iter=5, tol=0.0).fit(X, y)


# --------------------------------------------------------------------------------------------------
# 7. Ctrl-C while the command imports

def test_ctrl_c_during_the_imports_exits_130_in_one_line():
    # -X importtime reports each import on stderr as it completes: the signal arrives mid-import,
    # just after dask's config module (imported by dlogit's own first import)
    p = subprocess.Popen([sys.executable, "-X", "importtime", *DLOGIT[1:], "train"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        for line in p.stderr:
            if line.split("|")[-1].strip() == "dask.config":
                break
        else:
            pytest.fail("no import of dask.config reported")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    err_lines = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert p.returncode == 130, (p.returncode, err_lines[-5:])
    assert err_lines == ["dlogit: interrupted"] and out == "", err_lines[-5:]


def test_importing_dlogit_leaves_signals_alone_outside_the_command(tmp_path):
    """Only the ``dlogit`` command itself gets the early handler: not a program whose own arguments
    happen to read ``-m dlogit``, nor a process that multiprocessing spawns from a script named
    ``dlogit`` (a Dask worker re-runs its parent's main as ``__mp_main__``)."""
    root = str(Path(__file__).resolve().parents[1])
    probe = tmp_path / "probe.py"
    probe.write_text("import signal, dlogit\nprint(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n")
    out = subprocess.run([sys.executable, str(probe), "-m", "dlogit"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": root})
    assert out.stdout.strip() == "True", out.stderr[-2000:]
    script = tmp_path / "dlogit"
    script.write_text(
        "import multiprocessing as mp, signal, sys\n"
        f"sys.path.insert(0, {root!r})\n"
        "import dlogit\n"
        "def child(q):\n"
        "    q.put(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n"
        "if __name__ == '__main__':\n"
        "    print('parent', signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)\n"
        "    ctx = mp.get_context('spawn')\n"
        "    q = ctx.Queue()\n"
        "    p = ctx.Process(target=child, args=(q,))\n"
        "    p.start()\n"
        "    print('child', q.get(timeout=100))\n"
        "    p.join()\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.stdout.split() == ["parent", "True", "child", "True"], out.stdout + out.stderr[-2000:]


# --------------------------------------------------------------------------------------------------
# 8. JSON that is JSON

def test_json_outputs_are_strict_and_typed(capfd, tmp_path, scheduler):
    train = _csv(tmp_path / "t.csv", [0, 2] * 30)
    model = tmp_path / "m.npz"
    r = cli(capfd, "train", train, "--scheduler", scheduler, "--json", "--out", model)
    assert r.rc == 0, r.err
    s = strict_json(r.out.splitlines()[-1])
    assert s["classes"] == [0, 2]
    one_class = _csv(tmp_path / "one.csv", [2] * 10, seed=1)
    r = cli(capfd, "evaluate", model, one_class, "--json")
    assert r.rc == 0, r.err
    m = strict_json(r.out)
    assert m["roc_auc"] is None and m["rows"] == 10


def test_diverged_train_json_prints_its_status(capfd, scheduler):
    r = cli(capfd, "train", "--synthetic", "300x5", "--solver", "gd", "--l2", "100", "--json",
            "--scheduler", scheduler)
    dlogit_lines = [line for line in r.err_lines if line.startswith("dlogit:")]  # progress is on stderr too
    assert r.rc == 3 and len(dlogit_lines) == 1 and "diverged" in dlogit_lines[0], r.err
    assert r.err_lines[-1] == dlogit_lines[0], r.err
    s = strict_json(r.out)  # stdout: the JSON object alone
    assert s["status"] == "diverged" and s["model"] is None


# --------------------------------------------------------------------------------------------------
# 9. cluster up checks its scheduler file first; predict writes to stdout

def test_cluster_up_checks_the_scheduler_file_before_starting(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    t0 = time.monotonic()
    r = subprocess.run([*DLOGIT, "cluster", "up", "--workers", "1", "--scheduler-port", "0",
                        "--scheduler-file", str(blocker / "scheduler.json")],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, (r.stdout, r.stderr)
    assert "scheduler file" in r.stderr and "cannot be made" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 60


def test_predict_to_stdout(capfd, tmp_path, scheduler):
    import pandas as pd

    train = _csv(tmp_path / "t.csv", [0, 1] * 30)
    model = tmp_path / "m.npz"
    assert cli(capfd, "train", train, "--scheduler", scheduler, "--out", model).rc == 0
    r = cli(capfd, "predict", model, train, "--out", tmp_path / "p.csv")
    assert r.rc == 0, r.err
    r2 = cli(capfd, "predict", model, train, "--out", "-")
    assert r2.rc == 0 and r2.err == "", r2.err
    (tmp_path / "stdout.csv").write_text(r2.out)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "stdout.csv"), pd.read_csv(tmp_path / "p.csv"))


# --------------------------------------------------------------------------------------------------
# 10. messages

@pytest.mark.parametrize("content", ["{}", "[]", '{"address": ""}'])
def test_scheduler_file_without_an_address_says_so(capfd, tmp_path, content):
    f = tmp_path / "s.json"
    f.write_text(content)
    r = cli(capfd, "train", "--synthetic", "50x3", "--scheduler-file", f)
    assert r.rc == 2 and len(r.err_lines) == 1, r.err
    assert f"scheduler file {f} has no scheduler address" in r.err, r.err


def test_help_percent_is_not_doubled(capfd):
    r = cli(capfd, "train", "--help")
    assert r.rc == 0
    assert "95% interval" in r.out and "%%" not in r.out
