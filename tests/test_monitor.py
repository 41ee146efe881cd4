"""Monitoring: state, Prometheus metrics, /dlogit panel, terminal progress, report.

Cluster tests run real ``LocalCluster``s whose dashboard binds 127.0.0.1 only and
post synthetic events (the ARCHITECTURE.md schema) with ``Client.log_event``.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from dlogit.monitor import (
    PLUGIN_NAME,
    SCHEDULER_PRELOAD,
    TerminalProgress,
    ensure_installed,
    format_dashboard_url,
)
from dlogit.monitor.metrics import DlogitCollector
from dlogit.monitor.state import MonitorState, Series

pytestmark = pytest.mark.timeout(180)

TOPIC = "dlogit"


# ----------------------------------------------------------------- event makers
def start_event(run: str, max_iter: int = 1000, **params):
    p = {
        "solver": "gd", "l2": 0.0, "lr": 0.1, "max_iter": max_iter, "tol": 1e-6,
        "fit_intercept": True, "n_rows": 1000, "n_features": 5, "n_chunks": 2,
        "dtype": "float64", "workers": ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"],
        "mode": "distributed",
    }
    p.update(params)
    return {"type": "start", "run": run, "time": time.time(), "params": p}


def loss_at(step: int) -> float:
    return 0.7 * math.exp(-step / 100.0) + 0.1


def progress_event(run: str, steps, step_seconds: float = 0.01, rows_per_s=1e6,
                   bytes_per_s=4e7, worker_seconds=None):
    steps = list(steps)
    return {
        "type": "progress", "run": run, "time": time.time(),
        "step": steps,
        "loss": [loss_at(s) for s in steps],
        "grad_norm": [math.exp(-s / 50.0) for s in steps],
        "step_seconds": [step_seconds] * len(steps),
        "rows_per_s": rows_per_s, "bytes_per_s": bytes_per_s,
        "worker_seconds": worker_seconds
        if worker_seconds is not None
        else {"tcp://127.0.0.1:1": step_seconds * 0.9, "tcp://127.0.0.1:2": step_seconds},
    }


def end_event(run: str, n_iter: int, status: str = "converged"):
    return {"type": "end", "run": run, "time": time.time(), "status": status,
            "n_iter": n_iter, "loss": loss_at(n_iter), "grad_norm": math.exp(-n_iter / 50.0),
            "seconds": 1.5, "message": "done"}


def new_run() -> str:
    return f"testhost-1-0-{uuid.uuid4().hex[:6]}"


# ======================================================================= state
def test_state_start_progress_end_and_eta():
    st = MonitorState()
    run = new_run()
    assert st.ingest(start_event(run, max_iter=100))
    assert st.ingest(progress_event(run, range(1, 11), step_seconds=0.5))
    rs = st.get(run)
    assert rs.last_step == 10
    assert rs.loss == pytest.approx(loss_at(10))
    assert rs.eta_seconds() == pytest.approx(90 * 0.5)
    assert st.active_runs() == 1
    assert st.steps_total == 10
    assert rs.worker_seconds == {"tcp://127.0.0.1:1": 0.45, "tcp://127.0.0.1:2": 0.5}
    assert len(rs.rates) == 1
    assert st.ingest(end_event(run, 10))
    assert rs.status == "converged" and rs.eta_seconds() == 0.0
    assert st.active_runs() == 0
    s = rs.summary()
    assert s["n_iter"] == 10 and s["message"] == "done" and s["points"] == 10


def test_state_rejects_bad_events_and_ignores_replays():
    st = MonitorState()
    run = new_run()
    for bad in (None, 3, "x", {}, {"type": "progress"}, {"type": "nope", "run": run},
                {"type": "progress", "run": run, "step": 5, "loss": [], "grad_norm": [],
                 "step_seconds": []}):
        assert not st.ingest(bad)
    assert st.bad_events == 7
    assert st.ingest(progress_event(run, range(1, 6)))  # no start seen: still tracked
    assert st.ingest(progress_event(run, range(3, 8)))  # 3..5 replayed
    rs = st.get(run)
    assert list(rs.steps.data["step"]) == [1, 2, 3, 4, 5, 6, 7]
    assert st.steps_total == 7
    # unequal list lengths: the common prefix is used
    ev = progress_event(run, [8, 9])
    ev["loss"] = ev["loss"][:1]
    assert st.ingest(ev)
    assert rs.last_step == 8


def test_state_bounds_runs_and_points():
    st = MonitorState(max_runs=3, max_points=100)
    runs = [new_run() for _ in range(5)]
    st.ingest(start_event(runs[0]))
    st.ingest(end_event(runs[0], 5))
    for r in runs[1:]:
        st.ingest(start_event(r))
    assert len(st.runs) == 3
    assert runs[0] not in st.runs  # the finished run goes first
    assert st.run_ids()[0] == runs[-1]

    rs = st.get(runs[-1])
    st.ingest(progress_event(runs[-1], range(1, 1001)))
    assert len(rs.steps) <= 100
    assert rs.steps.generation > 0
    assert rs.last_step == 1000 and rs.steps.seen == 1000
    steps = list(rs.steps.data["step"])
    assert steps[0] == 1 and steps == sorted(steps)
    assert len(set(np.diff(steps))) == 1  # evenly spaced after downsampling


def test_series_tail_and_stride():
    s = Series(("step",), max_points=4)
    for i in range(5):
        s.append({"step": i})
    assert list(s.data["step"]) == [0, 2, 4] and s.stride == 2 and s.generation == 1
    s.append({"step": 5})
    assert s.tail_pending() and s.last == {"step": 5}
    s.append({"step": 6})
    assert not s.tail_pending() and list(s.data["step"]) == [0, 2, 4, 6]


# ===================================================================== metrics
def _metric(text: str, name: str, run: str | None = None) -> float | None:
    pat = re.escape(name) + (r'\{[^}]*run="' + re.escape(run) + r'"[^}]*\}' if run else r"(?:\{\})?")
    m = re.search(r"^" + pat + r" (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def test_collector_exposition_private_registry():
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    col = DlogitCollector()
    reg.register(col)
    st = MonitorState()
    col.attach(st)
    run = new_run()
    st.ingest(start_event(run, max_iter=50))
    st.ingest(progress_event(run, range(1, 5), step_seconds=0.25, rows_per_s=123.0))
    text = generate_latest(reg).decode()
    assert _metric(text, "dlogit_loss", run) == pytest.approx(loss_at(4))
    assert _metric(text, "dlogit_step", run) == 4
    assert _metric(text, "dlogit_step_seconds", run) == 0.25
    assert _metric(text, "dlogit_rows_per_second", run) == 123.0
    assert _metric(text, "dlogit_eta_seconds", run) == pytest.approx(46 * 0.25)
    assert _metric(text, "dlogit_runs_active") == 1
    assert _metric(text, "dlogit_steps_total") == 4
    assert "# TYPE dlogit_steps_total counter" in text
    col.detach(st)
    text = generate_latest(reg).decode()
    assert _metric(text, "dlogit_loss", run) is None
    assert _metric(text, "dlogit_runs_active") == 0


# ==================================================================== progress
class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_terminal_progress_plain_lines():
    out = io.StringIO()
    tp = TerminalProgress(max_iter=3000, period=1000, stream=out)
    run = new_run()
    tp(start_event(run, max_iter=3000))
    tp(progress_event(run, range(1, 1500)))
    tp(progress_event(run, range(1500, 2001), step_seconds=0.002))
    tp(end_event(run, 2000))
    tp.close()
    lines = out.getvalue().splitlines()
    steps = [ln for ln in lines if ln.startswith("step ")]
    assert len(steps) == 2
    assert re.fullmatch(r"step 1000  loss \S+  grad_norm \S+  step_ms 10\.000", steps[0])
    assert steps[1].startswith("step 2000  loss ") and steps[1].endswith("step_ms 2.000")
    assert float(steps[0].split()[3]) == pytest.approx(loss_at(1000), rel=1e-5)
    assert lines[0].startswith("start  run ") and lines[-1].startswith("end  status converged")


def test_terminal_progress_quiet_and_tty():
    out = io.StringIO()
    tp = TerminalProgress(max_iter=10, quiet=True, stream=out)
    run = new_run()
    for ev in (start_event(run), progress_event(run, range(1, 11)), end_event(run, 10)):
        tp(ev)
    tp.close()
    assert out.getvalue() == ""

    tty = _Tty()
    tp = TerminalProgress(max_iter=10, stream=tty)
    assert tp.tty
    tp(start_event(run, max_iter=10))
    tp(progress_event(run, range(1, 6)))
    tp(end_event(run, 5))
    tp.close()
    text = tty.getvalue()
    assert "dlogit" in text and "loss" in text and "end  status converged" in text
    assert "step 1000" not in text


def test_format_dashboard_url():
    assert format_dashboard_url("http://127.0.0.1:8787/status") == "http://127.0.0.1:8787/dlogit"
    assert format_dashboard_url("http://h:1/dask/status") == "http://h:1/dask/dlogit"
    assert format_dashboard_url("http://h:1/") == "http://h:1/dlogit"
    assert format_dashboard_url("http://h:1") == "http://h:1/dlogit"


# ======================================================== panel (no browser)
def test_panel_streams_and_resets():
    from bokeh.document import Document

    from dlogit.monitor.panel import LATEST, DlogitPanel

    st = MonitorState(max_points=50)
    panel = DlogitPanel(st, Document())
    assert len(panel.steps.data["step"]) == 0
    a, b = new_run(), new_run()
    st.ingest(start_event(a, max_iter=100))
    st.ingest(progress_event(a, range(1, 21)))
    panel.update()
    assert list(panel.steps.data["step"]) == list(range(1, 21))
    st.ingest(progress_event(a, range(21, 31)))
    panel.update()  # streamed increment
    assert list(panel.steps.data["step"]) == list(range(1, 31))
    assert 'data-points="30"' in panel.info.text
    assert dict(panel.param_rows)["status"] == "running"
    assert "<th>status</th><td>running</td>" in panel.table.text
    assert sorted(panel.workers.data["worker"]) == ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]
    assert panel.workers.data["color"][1] != panel.workers.data["color"][0]  # straggler

    st.ingest(progress_event(a, range(31, 61)))  # beyond max_points: downsampled
    panel.update()
    rs = st.get(a)
    assert rs.steps.generation == 1
    assert list(panel.steps.data["step"]) == list(rs.steps.data["step"])
    assert len(panel.tail.data["step"]) in (0, 2)

    st.ingest(start_event(b))  # newest run followed on "latest"
    st.ingest(progress_event(b, range(1, 4)))
    panel.update()
    assert list(panel.steps.data["step"]) == [1, 2, 3]
    assert [o[0] for o in panel.select.options] == [LATEST, b, a]
    panel.select.value = a  # explicit choice
    assert list(panel.steps.data["step"]) == list(rs.steps.data["step"])
    assert dict(panel.param_rows)["run"] == a and a in panel.table.text
    panel._on_logscale("active", None, [0])
    assert panel.loss_log.visible and not panel.loss_lin.visible
    assert panel.gn_lin.visible and not panel.gn_log.visible


# ===================================================================== report
def _write_model(path: Path, n: int = 50, **meta_over) -> Path:
    meta = {"format": "dlogit-model", "version": 1, "params": {"solver": "gd", "max_iter": n},
            "n_iter": n, "status": "converged", "dlogit_version": "0.1.0",
            "created": 1763970000.0}
    meta.update(meta_over)
    np.savez(path, coef=np.zeros((1, 3)), intercept=np.zeros(1), classes=np.array([0, 1]),
             history_loss=np.linspace(0.7, 0.3, n), history_grad_norm=np.geomspace(1, 1e-4, n),
             history_step_seconds=np.full(n, 0.002), meta=np.array(json.dumps(meta)))
    return path


def _invoke(args):
    from click.testing import CliRunner

    from dlogit.cli.report import report

    return CliRunner().invoke(report, args)


def test_report_html_standalone(tmp_path):
    model = _write_model(tmp_path / "m.npz", n=40)
    out = tmp_path / "r.html"
    res = _invoke([str(model), "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert "dlogit report: m.npz" in page
    assert not re.search(r"<script[^>]+src=", page)  # BokehJS inlined: no CDN
    assert "Bokeh" in page
    assert '"name":"history"' in page.replace(" ", "")  # the embedded data source


@pytest.mark.parametrize(
    "case",
    ["missing", "text", "npy", "missing_keys", "bad_format", "pickled", "suffix", "png_no_mpl"],
)
def test_report_bad_input(tmp_path, case):
    out = tmp_path / "r.html"
    if case == "missing":
        model = tmp_path / "nope.npz"
    elif case == "text":
        model = tmp_path / "m.npz"
        model.write_text("hello")
    elif case == "npy":
        model = tmp_path / "m.npy"
        np.save(model, np.zeros(3))
    elif case == "missing_keys":
        model = tmp_path / "m.npz"
        np.savez(model, coef=np.zeros((1, 3)))
    elif case == "bad_format":
        model = _write_model(tmp_path / "m.npz", format="something-else")
    elif case == "pickled":
        model = tmp_path / "m.npz"
        np.savez(model, coef=np.zeros((1, 3)), intercept=np.zeros(1), classes=np.array([0, 1]),
                 history_loss=np.array([object()], dtype=object),
                 history_grad_norm=np.zeros(1), history_step_seconds=np.zeros(1),
                 meta=np.array("{}"))
    elif case == "suffix":
        model = _write_model(tmp_path / "m.npz")
        out = tmp_path / "r.pdf"
    else:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            pass
        else:
            pytest.skip("matplotlib installed")
        model = _write_model(tmp_path / "m.npz")
        out = tmp_path / "r.png"
    res = _invoke([str(model), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    text = res.output.strip()
    assert text.startswith("dlogit: error: ") and "\n" not in text and "Traceback" not in text
    assert not out.exists()
    assert not list(tmp_path.glob(".dlogit-report-*"))


# ==================================================================== cluster
def _get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def _wait_for(pred, timeout: float = 20.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def _metrics(base: str) -> str:
    return _get(base + "/metrics")[1]


@pytest.fixture(scope="module")
def preloaded():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0",
                      scheduler_kwargs={"preload": [SCHEDULER_PRELOAD]}) as cluster, \
            Client(cluster) as client:
        base = f"http://127.0.0.1:{cluster.scheduler.http_server.port}"
        yield cluster, client, base


def test_preload_installs_plugin_panel_and_metrics(preloaded):
    cluster, client, base = preloaded
    plugin = cluster.scheduler.plugins[PLUGIN_NAME]
    assert plugin.app is not None and plugin.metrics
    status, page = _get(base + "/dlogit")
    assert status == 200
    assert "<title>dlogit</title>" in page
    assert "bokeh" in page.lower() and "embed_items" in page
    assert _get(base + "/status")[0] == 200  # distributed's own pages still served
    port = cluster.scheduler.http_server.port
    assert format_dashboard_url(client.dashboard_link).endswith(f":{port}/dlogit")


def test_metrics_follow_events(preloaded):
    _, client, base = preloaded
    run = new_run()
    client.log_event(TOPIC, start_event(run, max_iter=500))
    client.log_event(TOPIC, progress_event(run, range(1, 11), step_seconds=0.02, rows_per_s=5e5))
    _wait_for(lambda: _metric(_metrics(base), "dlogit_step", run) == 10)
    text = _metrics(base)
    assert _metric(text, "dlogit_loss", run) == pytest.approx(loss_at(10))
    assert _metric(text, "dlogit_grad_norm", run) == pytest.approx(math.exp(-10 / 50))
    assert _metric(text, "dlogit_step_seconds", run) == pytest.approx(0.02)
    assert _metric(text, "dlogit_rows_per_second", run) == 5e5
    assert _metric(text, "dlogit_runs_active") >= 1
    total0 = _metric(text, "dlogit_steps_total")
    assert re.search(r"^dask_scheduler_workers", text, re.MULTILINE)  # distributed's own metrics remain

    client.log_event(TOPIC, progress_event(run, range(11, 31), step_seconds=0.03))
    _wait_for(lambda: _metric(_metrics(base), "dlogit_step", run) == 30)
    text = _metrics(base)
    assert _metric(text, "dlogit_loss", run) == pytest.approx(loss_at(30))
    assert _metric(text, "dlogit_loss", run) < loss_at(10)
    assert _metric(text, "dlogit_step_seconds", run) == pytest.approx(0.03)
    assert _metric(text, "dlogit_steps_total") == total0 + 20
    assert _metric(text, "dlogit_eta_seconds", run) > 0

    active = _metric(text, "dlogit_runs_active")
    client.log_event(TOPIC, end_event(run, 30))
    _wait_for(lambda: _metric(_metrics(base), "dlogit_runs_active") == active - 1)
    text = _metrics(base)
    assert re.search(r'dlogit_run_info\{[^}]*run="' + run + r'"[^}]*status="converged"', text)
    assert _metric(text, "dlogit_loss", run) == pytest.approx(loss_at(30))


def test_events_from_a_worker_reach_the_monitor(preloaded):
    cluster, client, base = preloaded
    run = new_run()

    def emit(dask_worker, run=run):
        dask_worker.log_event("dlogit", start_event(run, max_iter=20, mode="worker-local"))
        dask_worker.log_event("dlogit", progress_event(run, range(1, 6)))

    client.run(emit)
    _wait_for(lambda: _metric(_metrics(base), "dlogit_step", run) == 5)
    plugin = cluster.scheduler.plugins[PLUGIN_NAME]
    assert plugin.state.get(run).params["mode"] == "worker-local"


def test_ensure_installed_on_running_scheduler():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        base = f"http://127.0.0.1:{cluster.scheduler.http_server.port}"
        with pytest.raises(urllib.error.HTTPError):
            _get(base + "/dlogit")
        run = new_run()
        client.log_event(TOPIC, start_event(run, max_iter=50))  # before installing
        client.log_event(TOPIC, progress_event(run, range(1, 4)))
        _wait_for(lambda: len(cluster.scheduler.get_events(TOPIC)) == 2)
        assert ensure_installed(client) is True
        plugin = cluster.scheduler.plugins[PLUGIN_NAME]
        assert ensure_installed(client) is True  # idempotent: same instance kept
        assert cluster.scheduler.plugins[PLUGIN_NAME] is plugin
        assert _get(base + "/dlogit")[0] == 200
        # the broker's retained events were replayed into the new plugin
        assert _metric(_metrics(base), "dlogit_step", run) == 3
        client.log_event(TOPIC, progress_event(run, range(4, 8)))
        _wait_for(lambda: _metric(_metrics(base), "dlogit_step", run) == 7)
    # scheduler closed: its state is no longer exported by this process
    from prometheus_client import REGISTRY, generate_latest

    assert f'run="{run}"' not in generate_latest(REGISTRY).decode()


def test_preload_with_worker_processes_and_ensure_installed_noop():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      scheduler_kwargs={"preload": [SCHEDULER_PRELOAD]}) as cluster, \
            Client(cluster) as client:
        base = f"http://127.0.0.1:{cluster.scheduler.http_server.port}"
        plugin = cluster.scheduler.plugins[PLUGIN_NAME]
        assert ensure_installed(client) is True
        assert cluster.scheduler.plugins[PLUGIN_NAME] is plugin
        n_apps = len(cluster.scheduler.http_application.applications)
        run = new_run()

        def emit(dask_worker, run=run):
            dask_worker.log_event("dlogit", start_event(run, max_iter=9))
            dask_worker.log_event("dlogit", progress_event(run, range(1, 10)))
            dask_worker.log_event("dlogit", end_event(run, 9, status="max_iter"))

        client.run(emit)
        _wait_for(lambda: plugin.state.get(run) is not None
                  and plugin.state.get(run).status == "max_iter")
        assert _metric(_metrics(base), "dlogit_step", run) == 9
        assert len(cluster.scheduler.http_application.applications) == n_apps


def test_dask_scheduler_cli_preload_with_prefix(tmp_path):
    """``dask scheduler --preload dlogit.dashboard`` (own process, dashboard prefix)."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from distributed import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sched_file = tmp_path / "scheduler.json"
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--dashboard-address", f"127.0.0.1:{port}",
         "--dashboard-prefix", "/dask", "--scheduler-file", str(sched_file),
         "--preload", SCHEDULER_PRELOAD],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        _wait_for(lambda: sched_file.exists() and sched_file.stat().st_size > 0
                  or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        base = f"http://127.0.0.1:{port}/dask"
        status, page = _get(base + "/dlogit")
        assert status == 200 and "/dask/static/js/bokeh" in page
        with Client(scheduler_file=str(sched_file), timeout=30) as client:
            assert ensure_installed(client) is True  # already there: kept
            run = new_run()
            client.log_event(TOPIC, start_event(run, max_iter=40))
            client.log_event(TOPIC, progress_event(run, range(1, 13)))
            _wait_for(lambda: _metric(_metrics(base), "dlogit_step", run) == 12)
            assert _metric(_metrics(base), "dlogit_loss", run) == pytest.approx(loss_at(12))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        proc.stderr.close()


@pytest.mark.parametrize("mode", ["worker-local", "distributed"])
def test_end_to_end_fit_moves_metrics_and_prints_progress(mode):
    """A real fit on a preloaded local cluster: /metrics moves while it runs.

    worker-local fits send their events from the worker, distributed fits from the client.
    """
    import threading

    estimator = pytest.importorskip("dlogit.estimator")
    da = pytest.importorskip("dask.array")
    from distributed import Client, LocalCluster

    rng = np.random.default_rng(7)
    X = rng.standard_normal((20_000, 8))
    y = (X @ rng.standard_normal(8) + rng.standard_normal(20_000) > 0).astype(np.float64)
    max_iter = 6000
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0",
                      scheduler_kwargs={"preload": [SCHEDULER_PRELOAD]}) as cluster, \
            Client(cluster, set_as_default=False) as client:
        base = f"http://127.0.0.1:{cluster.scheduler.http_server.port}"
        seen: list[tuple[str, float, float]] = []  # (run, step, loss) while fitting
        stop = threading.Event()

        def poll():
            while not stop.is_set():
                text = _metrics(base)
                steps = dict(re.findall(r'^dlogit_step\{run="([^"]+)"\} (\S+)$', text, re.MULTILINE))
                losses = dict(re.findall(r'^dlogit_loss\{run="([^"]+)"\} (\S+)$', text, re.MULTILINE))
                for run, step in steps.items():
                    if run in losses:
                        seen.append((run, float(step), float(losses[run])))
                time.sleep(0.03)

        out = io.StringIO()
        progress = TerminalProgress(max_iter, period=1000, stream=out)
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            model = estimator.LogisticRegression(
                solver="gd", lr=0.5, max_iter=max_iter, tol=0, progress_period=500,
                callback=progress, mode=mode,
            ).fit(da.from_array(X, chunks=5_000), da.from_array(y, chunks=5_000), client=client)
        finally:
            stop.set()
            poller.join(10)
            progress.close()
        run = model.run_id_
        during = [(s, loss) for r, s, loss in seen if r == run]
        assert len({s for s, _ in during}) >= 2, during  # the gauge moved during the fit
        first, last = during[0], during[-1]
        assert last[0] > first[0] and last[1] <= first[1]

        text = _metrics(base)
        assert _metric(text, "dlogit_loss", run) == pytest.approx(model.loss_, rel=1e-9)
        assert _metric(text, "dlogit_step", run) == max_iter - 1  # steps count from 0
        assert re.search(r'dlogit_run_info\{[^}]*run="' + run + r'"[^}]*status="'
                         + model.status_ + '"', text)
        state = cluster.scheduler.plugins[PLUGIN_NAME].state
        rs = state.get(run)
        assert rs.steps.seen == model.n_iter_
        np.testing.assert_allclose(rs.steps.data["loss"], model.history_["loss"])
        assert len(rs.worker_seconds) >= 1 and rs.params["n_rows"] == 20_000
        assert rs.params["mode"] == mode

        lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("step ")]
        assert [int(ln.split()[1]) for ln in lines] == list(range(0, max_iter, 1000))
        assert out.getvalue().splitlines()[-1].startswith(f"end  status {model.status_}")


def test_report_of_a_real_model(tmp_path):
    estimator = pytest.importorskip("dlogit.estimator")
    rng = np.random.default_rng(3)
    X = rng.standard_normal((500, 4))
    y = (X[:, 0] > 0).astype(np.float64)
    model = estimator.LogisticRegression(solver="gd", max_iter=50, tol=0).fit(X, y)
    path = tmp_path / "model.npz"
    model.save(str(path))
    out = tmp_path / "report.html"
    res = _invoke([str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "<title>dlogit report: model.npz</title>" in out.read_text()
    from dlogit.monitor.report import _meta_rows, load_history

    h = load_history(path)
    np.testing.assert_array_equal(h["loss"], model.history_["loss"])
    rows = dict(_meta_rows(h))
    assert rows["n_iter"] == "50" and rows["status"] == model.status_
    assert rows["params.solver"] == "gd" and rows["steps recorded"] == "50"
