"""Monitoring: state, Prometheus metrics, /dlogit panel, terminal progress, report.

Events follow the ARCHITECTURE.md schema, including the multinomial/L1/path additions
(``start.params`` family/n_classes/classes/class_counts/l1/weighted/sparse/path/cv, the end
statuses stalled/diverged/interrupted, ``end.n_nonzero``, ``path`` events); version-2 model
files are written here with plain ``numpy.savez``.

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
from dlogit.monitor.state import (
    MAX_FOLDS,
    MAX_PATH_POINTS,
    STATUSES,
    CvPoint,
    MonitorState,
    PathPoint,
    Series,
    log_positions,
    penalty_axis,
)

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
def test_the_terminal_and_the_panel_give_one_eta():
    """One formula (monitor.state.eta_seconds): the terminal's ETA and the panel's/metrics' agree, over
    more steps than the averaging window and with changing step times."""
    import io

    from dlogit.monitor import TerminalProgress
    from dlogit.monitor.state import ETA_WINDOW, eta_seconds

    st, run = MonitorState(), new_run()
    tp = TerminalProgress(max_iter=1000, stream=io.StringIO())  # not a terminal: plain lines
    for ev in (start_event(run, max_iter=1000), progress_event(run, range(1, 81), step_seconds=0.5),
               progress_event(run, range(81, 151), step_seconds=0.25)):
        st.ingest(ev)
        tp(ev)
    recent = [0.5] * (ETA_WINDOW - 70) + [0.25] * 70
    assert st.get(run).eta_seconds() == tp._eta() == eta_seconds(1000, 150, recent)
    assert eta_seconds(1000, 150, recent) == pytest.approx(850 * sum(recent) / ETA_WINDOW)
    assert np.isnan(eta_seconds(None, 150, recent)) and np.isnan(eta_seconds(1000, 1, []))
    tp.close()


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


def multinomial_start(run: str, path: str | None = None, **over):
    params = {
        "solver": "newton", "family": "multinomial", "n_classes": 3,
        "classes": ["bird", "cat", "dog"], "class_counts": [50, 30, 20], "weighted": True,
        "l1": 0.01, "l2": 1e-3, "n_params": 18, "sparse": True, "resumed_from": 40,
        "n_features": 5,
        "cv": {"folds": 3, "index": 1, "of": 6, "l2": 1e-3, "l1": 0.01},
    }
    if path is not None:
        params["path"] = path
    params.update(over)
    return start_event(run, **params)


def path_event(path: str, points, best=None, done=False, scoring="neg_log_loss", folds=3):
    return {"type": "path", "run": path, "time": time.time(), "scoring": scoring, "folds": folds,
            "points": [dict(p) for p in points], "best": best, "done": done}


def path_point(l2: float, scores, l1: float = 0.0, n_iter: int = 12, n_nonzero=None):
    scores = [float(s) for s in scores]
    return {"l2": l2, "l1": l1, "mean": float(np.mean(scores)), "std": float(np.std(scores)),
            "fold_scores": scores, "n_iter": n_iter, "n_nonzero": n_nonzero}


@pytest.mark.parametrize("status", ["converged", "max_iter", "stalled", "diverged", "failed",
                                    "interrupted"])
def test_state_keeps_every_end_status(status):
    st = MonitorState()
    run = new_run()
    st.ingest(start_event(run, max_iter=100))
    st.ingest(progress_event(run, range(1, 11)))
    assert st.ingest(end_event(run, 10, status=status))
    rs = st.get(run)
    assert rs.status == status and rs.summary()["status"] == status
    assert rs.eta_seconds() == 0.0 and st.active_runs() == 0
    assert st.finished_total == {status: 1}


def test_state_unknown_status_is_failed_and_replayed_end_counts_once():
    st = MonitorState()
    run = new_run()
    st.ingest(start_event(run))
    assert st.ingest(end_event(run, 3, status="exploded"))
    assert st.get(run).status == "failed"
    st.ingest(end_event(run, 3, status="failed"))  # replayed
    assert st.finished_total == {"failed": 1}


def test_state_multinomial_start_params_and_n_nonzero():
    st = MonitorState()
    run, path = new_run(), "path-1"
    assert st.ingest(multinomial_start(run, path=path))
    rs = st.get(run)
    m = rs.model
    assert (m.family, m.n_classes, m.classes, m.class_counts) == (
        "multinomial", 3, ("bird", "cat", "dog"), (50, 30, 20))
    assert (m.l1, m.l2, m.weighted, m.sparse, m.solver, m.n_params, m.resumed_from) == (
        0.01, 1e-3, True, True, "newton", 18, 40)
    assert m.path == path and m.cv == CvPoint(folds=3, index=1, of=6, l2=1e-3, l1=0.01)
    assert rs.n_nonzero is None
    end = end_event(run, 7, status="converged")
    end["n_nonzero"] = 11
    st.ingest(end)
    s = rs.summary()
    assert (s["family"], s["n_classes"], s["classes"], s["class_counts"]) == (
        "multinomial", 3, ["bird", "cat", "dog"], [50, 30, 20])
    assert (s["l1"], s["l2"], s["weighted"], s["sparse"], s["n_nonzero"]) == (
        0.01, 1e-3, True, True, 11)
    assert s["path"] == path and s["resumed_from"] == 40
    assert s["cv"] == {"folds": 3, "index": 1, "of": 6, "l2": 1e-3, "l1": 0.01}

    # an event of an older dlogit: a binomial, L2-only fit
    old = new_run()
    st.ingest(start_event(old, l2=0.5))
    m = st.get(old).model
    assert (m.family, m.n_classes, m.classes, m.class_counts, m.l1, m.l2) == (
        "binomial", 2, (), (), 0.0, 0.5)
    assert (m.weighted, m.sparse, m.path, m.cv, m.resumed_from) == (False, False, None, None, None)


def test_state_top_classes_of_many():
    rng = np.random.default_rng(0)
    counts = rng.permutation(150) * 3 + 1  # distinct counts
    st = MonitorState()
    run = new_run()
    labels = [f"c{i}" for i in range(150)]
    st.ingest(start_event(run, family="multinomial", n_classes=150,
                          classes=labels[:100], class_counts=counts.tolist()))
    top = st.get(run).model.top_classes(20)
    order = np.argsort(-counts, kind="stable")[:20]
    assert top == [(labels[i] if i < 100 else f"#{i}", int(counts[i])) for i in order]

    # what dlogit sends for K > 100: the first 100 labels and their counts
    from bokeh.document import Document

    from dlogit.monitor.panel import DlogitPanel

    big = new_run()
    st.ingest(start_event(big, family="multinomial", n_classes=1000, classes=labels[:100],
                          class_counts=counts[:100].tolist()))
    panel = DlogitPanel(st, Document())
    order = np.argsort(-counts[:100], kind="stable")[:20]
    assert panel.classes.data["label"] == [labels[i] for i in order[::-1]]
    assert panel.classes_fig.title.text == (
        "Rows per class (the 20 largest of the first 100 of 1000 classes)")


def test_state_path_events_and_fits():
    st = MonitorState()
    path = "host-1-path-0"
    fits = [new_run() for _ in range(3)]
    for r in fits:
        st.ingest(multinomial_start(r, path=path))
    st.ingest(end_event(fits[0], 5, status="converged"))
    st.ingest(end_event(fits[1], 5, status="stalled"))
    p0 = path_point(1e-4, [-0.5, -0.6, -0.55])
    assert st.ingest(path_event(path, [p0]))
    assert path not in st.runs  # a path is not a run
    ps = st.get_path(path)
    assert ps.fits_started == 3 and ps.fits_finished == 2
    assert ps.fits_by_status == {"converged": 1, "stalled": 1}
    assert len(ps.points) == 1 and ps.points[0] == PathPoint(
        l2=1e-4, l1=0.0, mean=p0["mean"], std=p0["std"], fold_scores=(-0.5, -0.6, -0.55),
        n_iter=12, n_nonzero=None)
    assert ps.best_point is None and not ps.done
    p1 = path_point(1e-2, [-0.4, -0.45, -0.41], n_nonzero=9)
    assert st.ingest(path_event(path, [p0, p1], best=1, done=True))  # re-sent whole
    assert len(ps.points) == 2 and ps.best_point.l2 == 1e-2 and ps.done
    assert ps.axis() == ("l2", [1e-4, 1e-2])
    s = ps.summary()
    assert (s["n_points"], s["best"], s["best_score"], s["scoring"], s["folds"]) == (
        2, 1, p1["mean"], "neg_log_loss", 3)
    assert st.latest_path() == path and st.path_summaries()[0]["path"] == path
    # an out-of-range "best" is no chosen point
    st.ingest(path_event(path, [p0], best=5))
    assert ps.best_point is None and ps.summary()["best"] is None


@pytest.mark.parametrize("bad", [
    {"type": "path", "run": "p"},                                   # no points
    {"type": "path", "run": "p", "points": 3},
    {"type": "path", "run": "p", "points": [1, 2]},                 # a point is not a dict
    {"type": "path", "run": "p", "points": [{"l2": 1, "fold_scores": 2}]},
    {"type": "path", "run": 7, "points": []},
])
def test_state_rejects_bad_path_events(bad):
    st = MonitorState()
    assert not st.ingest(bad)
    assert st.bad_events == 1 and not st.paths and not st.runs


def test_state_bounds_paths_and_points():
    st = MonitorState(max_paths=3)
    ids = [f"path-{i}" for i in range(5)]
    st.ingest(path_event(ids[0], [path_point(1.0, [1])], done=True))
    for p in ids[1:]:
        st.ingest(path_event(p, [path_point(1.0, [1])]))
    assert len(st.paths) == 3
    assert ids[0] not in st.paths  # the finished path goes first
    assert list(st.paths) == ids[2:]  # then the oldest
    many = [{"l2": float(i), "mean": 0.0, "std": 0.0, "fold_scores": [0.0] * (MAX_FOLDS + 5)}
            for i in range(MAX_PATH_POINTS + 10)]
    st.ingest(path_event(ids[-1], many))
    ps = st.get_path(ids[-1])
    assert len(ps.points) == MAX_PATH_POINTS and len(ps.points[0].fold_scores) == MAX_FOLDS


def test_penalty_axis_and_log_positions():
    assert penalty_axis([1e-3, 1e-2], [0.0, 0.0]) == ("l2", [1e-3, 1e-2])
    assert penalty_axis([1e-3, 1e-3], [0.1, 0.2]) == ("l1", [0.1, 0.2])
    assert penalty_axis([1.0, 2.0], [0.1, 0.2]) == ("l1 + l2", [1.1, 2.2])
    assert penalty_axis([0.5], [0.0]) == ("l2", [0.5])
    assert log_positions([0.0, 1e-3, 1e-1]) == [1e-4, 1e-3, 1e-1]
    assert log_positions([0.0]) == [1e-12]


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


def test_collector_new_model_status_and_path_metrics():
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    col = DlogitCollector()
    reg.register(col)
    st = MonitorState()
    col.attach(st)
    runs = {s: new_run() for s in ("stalled", "diverged", "interrupted")}
    for status, run in runs.items():
        st.ingest(multinomial_start(run, path="p-1"))
        end = end_event(run, 4, status=status)
        end["n_nonzero"] = 13
        st.ingest(end)
    binary = new_run()
    st.ingest(start_event(binary))
    p0, p1 = path_point(1e-4, [0.81, 0.8]), path_point(1e-3, [0.9, 0.86], n_nonzero=13)
    st.ingest(path_event("p-1", [p0, p1], best=1, scoring="accuracy"))
    text = generate_latest(reg).decode()
    for status, run in runs.items():
        assert re.search(r'^dlogit_run_info\{[^}]*run="' + run + r'"[^}]*status="' + status
                         + r'"[^}]*\} 1\.0$', text, re.MULTILINE)
        assert re.search(r'^dlogit_run_info\{[^}]*family="multinomial"[^}]*run="' + run, text,
                         re.MULTILINE)
        assert _metric(text, "dlogit_n_classes", run) == 3
        assert _metric(text, "dlogit_n_nonzero", run) == 13
        assert _metric(text, f'dlogit_runs_finished_total{{status="{status}"}}') == 1
    assert _metric(text, "dlogit_n_classes", binary) == 2
    assert _metric(text, "dlogit_n_nonzero", binary) is None  # not known before the end
    assert _metric(text, 'dlogit_runs_finished_total{status="converged"}') == 0
    assert "# TYPE dlogit_runs_finished_total counter" in text

    def path_metric(name):
        m = re.search(r'^' + name + r'\{[^}]*path="p-1"[^}]*\} (\S+)$', text, re.MULTILINE)
        return float(m.group(1)) if m else None

    assert path_metric("dlogit_path_best_score") == p1["mean"]
    assert re.search(r'^dlogit_path_best_score\{[^}]*scoring="accuracy"', text, re.MULTILINE)
    assert path_metric("dlogit_path_best_l2") == 1e-3
    assert path_metric("dlogit_path_best_l1") == 0.0
    assert path_metric("dlogit_path_points") == 2
    assert path_metric("dlogit_path_done") == 0
    st.ingest(path_event("p-1", [p0, p1], best=None, done=True))
    text = generate_latest(reg).decode()
    assert path_metric("dlogit_path_best_score") is None and path_metric("dlogit_path_done") == 1


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


def test_terminal_progress_interrupted_and_path_lines():
    out = io.StringIO()
    tp = TerminalProgress(max_iter=None, period=5, stream=out)
    run = new_run()
    tp(multinomial_start(run, max_iter=100))
    tp(progress_event(run, range(8)))
    end = end_event(run, 8, status="interrupted")
    end.update(message="interrupted by SIGINT; checkpoint ck.npz", n_nonzero=11)
    tp(end)
    p0, p1 = path_point(1e-4, [-0.5, -0.7], n_nonzero=4), path_point(1e-2, [-0.4, -0.5])
    tp(path_event("p-9", [p0]))
    tp(path_event("p-9", [p0, p1], best=1, done=True))
    tp(path_event("p-9", [p0, p1], best=1, done=True))  # re-sent: nothing new
    tp.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == (f"start  run {run}  solver newton  mode distributed  family multinomial  "
                        "n_classes 3  n_rows 1000  n_features 5  n_chunks 2  l2 0.001  l1 0.01  "
                        "weighted  sparse  workers 2  resumed_from step 40  cv 2/6  folds 3")
    assert [ln.split()[1] for ln in lines[1:3]] == ["0", "5"]
    assert lines[3] == (f"end  status interrupted  n_iter 8  loss {loss_at(8):.6f}  "
                        f"grad_norm {math.exp(-8 / 50):.6g}  nonzero 11  seconds 1.500  "
                        "interrupted by SIGINT; checkpoint ck.npz")
    assert lines[4:] == [
        "path  run p-9  scoring neg_log_loss  folds 3",
        (f"path  point 0  l2 0.0001  l1 0  neg_log_loss {p0['mean']:.6g} +- {p0['std']:.3g}"
         "  n_iter 12  nonzero 4"),
        (f"path  point 1  l2 0.01  l1 0  neg_log_loss {p1['mean']:.6g} +- {p1['std']:.3g}"
         "  n_iter 12"),
        f"path done  best point 1  l2 0.01  l1 0  neg_log_loss {p1['mean']:.6g}",
    ]
    assert "Traceback" not in out.getvalue()


def test_terminal_progress_tty_interrupted_leaves_the_bar():
    tty = _Tty()
    tp = TerminalProgress(max_iter=100, stream=tty)
    run = new_run()
    tp(start_event(run, max_iter=100))
    tp(progress_event(run, range(1, 31)))
    tp(end_event(run, 30, status="interrupted"))
    tp(path_event("p-2", [path_point(1.0, [0.5, 0.5])], best=0, done=True))
    tp.close()
    tp.close()  # twice is fine
    text = tty.getvalue()
    assert "30/100" in text and "100/100" not in text  # stopped where it was
    assert "end  status interrupted  n_iter 30" in text
    assert "path  point 0  l2 1  l1 0  neg_log_loss 0.5 +- 0" in text
    assert "path done  best point 0" in text


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
    # 60 steps into 50 points: stride 2 keeps every other step, so the last stored one is 59 and the
    # newest (60) is dropped from the series -- the tail line joins them, 2 points
    assert rs.steps.tail_pending() and rs.steps.data["step"][-1] == 59
    assert list(panel.tail.data["step"]) == [59, 60]

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


def test_panel_model_classes_and_status_colours():
    from bokeh.document import Document

    from dlogit.monitor.panel import STATUS_COLORS, TOP_CLASSES, DlogitPanel

    assert set(STATUS_COLORS) == set(STATUSES)
    assert len(set(STATUS_COLORS.values())) == len(STATUSES)  # one colour each
    st = MonitorState()
    panel = DlogitPanel(st, Document())
    run = new_run()
    counts = [(7 * i) % 31 + 1 for i in range(30)]  # distinct: 7 is invertible mod 31
    labels = [f"k{i}" for i in range(30)]
    st.ingest(start_event(run, family="multinomial", n_classes=30, classes=labels,
                          class_counts=counts, l1=0.05, l2=1e-4, n_features=10))
    panel.update()
    order = sorted(range(30), key=lambda i: -counts[i])[:TOP_CLASSES]
    assert panel.classes.data["label"] == [labels[i] for i in reversed(order)]  # largest on top
    assert panel.classes.data["count"] == [counts[i] for i in reversed(order)]
    assert list(panel.classes_fig.y_range.factors) == panel.classes.data["label"]
    assert panel.classes_fig.visible
    assert panel.classes_fig.title.text == "Rows per class (the 20 largest of 30)"
    assert "multinomial, K=30" in panel.info.text and "L2 0.0001, L1 0.05" in panel.info.text
    assert 'data-status="running"' in panel.info.text
    end = end_event(run, 9, status="diverged")
    end["n_nonzero"] = 123
    st.ingest(end)
    panel.update()
    assert f'data-status="diverged" style="background:{STATUS_COLORS["diverged"]}' in panel.info.text
    assert "nonzero coefficients: 123 of 300" in panel.info.text  # K x d
    assert dict(panel.param_rows)["n_nonzero"] == "123"
    assert dict(panel.param_rows)["status"] == "diverged"
    assert dict(panel.param_rows)["params.classes"].endswith(", ... (10 more)")
    assert panel.select.options[1] == (run, f"{run} (diverged)")

    old = new_run()  # an older dlogit's events: no classes
    st.ingest(start_event(old))
    panel.update()
    assert panel.classes.data["label"] == [] and "binomial, K=2" in panel.info.text
    assert panel.classes_fig.title.text == "Rows per class (not reported)"
    assert not panel.classes_fig.visible


def test_panel_path_view():
    from bokeh.document import Document

    from dlogit.monitor.panel import LATEST, DlogitPanel

    st = MonitorState()
    panel = DlogitPanel(st, Document())
    assert not panel.path_fig.visible and "No regularization path" in panel.path_info.text
    st.ingest(start_event(new_run()))  # a plain fit: still no path
    panel.update()
    assert not panel.path_fig.visible and len(panel.path.data["x"]) == 0

    pts = [path_point(0.0, [0.7, 0.72]), path_point(1e-3, [0.8, 0.84], n_nonzero=7),
           path_point(1e-1, [0.75, 0.71])]
    st.ingest(path_event("p-a", pts[:2], scoring="accuracy"))
    panel.update()
    assert panel.path_fig.visible and panel.path_table.visible
    d = panel.path.data
    np.testing.assert_array_equal(d["x"], [1e-4, 1e-3])  # l2 = 0 a decade below the smallest
    np.testing.assert_array_equal(d["mean"], [pts[0]["mean"], pts[1]["mean"]])
    np.testing.assert_array_equal(d["upper"], [p["mean"] + p["std"] for p in pts[:2]])
    np.testing.assert_array_equal(d["lower"], [p["mean"] - p["std"] for p in pts[:2]])
    np.testing.assert_array_equal(d["n_nonzero"], [np.nan, 7.0])
    assert len(panel.path_best.data["x"]) == 0  # nothing chosen yet
    assert 'data-points="2"' in panel.path_info.text and "running" in panel.path_info.text
    assert panel.path_fig.yaxis[0].axis_label == "accuracy"
    assert panel.path_fig.xaxis[0].axis_label == "l2 (0 drawn at 1e-04)"

    st.ingest(path_event("p-a", pts, best=1, done=True, scoring="accuracy"))
    panel.update()
    assert len(panel.path.data["x"]) == 3
    assert list(panel.path_best.data["x"]) == [1e-3]
    assert list(panel.path_best.data["mean"]) == [pts[1]["mean"]]
    assert "chosen: l2 = 0.001" in panel.path_info.text
    assert "<tr class='dlogit-best'><td>1</td>" in panel.path_table.text
    assert "fits:" not in panel.path_info.text  # no fit of this path seen
    st.ingest(multinomial_start(new_run(), path="p-a"))
    panel.update()
    assert "fits: 1 started, 0 finished" in panel.path_info.text

    # a newer path is followed on "latest"; the older one can be chosen
    st.ingest(path_event("p-b", [path_point(0.5, [0.1, 0.2], l1=0.0),
                                 path_point(0.5, [0.3, 0.2], l1=0.1)]))
    panel.update()
    assert [o[0] for o in panel.path_select.options] == [LATEST, "p-b", "p-a"]
    assert panel.path_select.options[2] == ("p-a", "p-a (done)")
    np.testing.assert_array_equal(panel.path.data["x"], [1e-2, 0.1])  # the l1 axis
    assert panel.path_fig.xaxis[0].axis_label == "l1 (0 drawn at 1e-02)"
    panel.path_select.value = "p-a"
    assert len(panel.path.data["x"]) == 3 and "p-a" in panel.path_info.text
    # the chosen path leaves the kept set: back to the latest
    del st.paths["p-a"]
    panel.update()
    assert panel.path_select.value == LATEST and len(panel.path.data["x"]) == 2
    st.paths.clear()
    panel.update()
    assert not panel.path_fig.visible and len(panel.path.data["x"]) == 0


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
    """``dlogit report ARGS`` through the CLI's entry point (its error handling), in this process.

    ``main`` installs signal handlers and NumPy error settings for the process: put them back.
    """
    import signal
    import warnings

    import click
    from click.testing import CliRunner

    from dlogit.cli import main

    @click.command(context_settings={"ignore_unknown_options": True})
    @click.argument("argv", nargs=-1, type=click.UNPROCESSED)
    def entry(argv):
        main(["report", *argv])

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    errors = np.geterr()
    try:
        with warnings.catch_warnings():
            return CliRunner().invoke(entry, list(args))
    finally:
        np.seterr(**errors)
        for s, h in handlers.items():
            signal.signal(s, h)


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


def _write_v2_model(path: Path, coef, intercept, classes, family="multinomial", n=30, cv_arrays=None,
                    **meta_over) -> Path:
    """A format-version-2 model file, written with plain NumPy (as the contract describes)."""
    coef = np.asarray(coef, dtype=np.float64)
    classes = np.asarray(classes)
    kind = {"i": "int", "f": "float", "b": "bool", "U": "str"}[classes.dtype.kind]
    meta = {"format": "dlogit-model", "version": 2, "family": family,
            "n_classes": len(classes), "class_counts": [10 * (i + 1) for i in range(len(classes))],
            "classes_kind": kind, "feature_names": None,
            "n_nonzero": int(np.count_nonzero(coef)), "weighted": False,
            "params": {"solver": "lbfgs", "l1": 0.0, "l2": 1e-3, "lr": None, "max_iter": 100,
                       "tol": 1e-6, "class_weight": None, "fit_intercept": True},
            "n_iter": n, "status": "converged", "loss": 0.3, "grad_norm": 1e-7, "source": "test",
            "cv": None, "created": 1763970000.0, "dlogit_version": "0.2.0"}
    meta.update(meta_over)
    arrays = {"coef": coef, "intercept": np.asarray(intercept, dtype=np.float64),
              "classes": classes, "history_loss": np.linspace(0.9, 0.3, n),
              "history_grad_norm": np.geomspace(1, 1e-7, n),
              "history_step_seconds": np.full(n, 0.001)}
    if cv_arrays is not None:
        arrays.update(cv_arrays)
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


def _coef_section(page: str) -> str:
    return page[page.index("<h3>Coefficients</h3>"):]


def test_report_v2_multinomial_string_classes_and_cv_path(tmp_path):
    from dlogit.monitor.report import coef_table, load_model_file

    rng = np.random.default_rng(5)
    coef = rng.standard_normal((3, 6))
    coef[:, 2] = 0.0  # a feature every class dropped
    coef[1, 4] = 0.0
    names = ["age", "height", "noise", "x<3", "weight", "zip"]
    cv = {"cv_l2": np.array([1e-4, 1e-3, 1e-2]), "cv_l1": np.zeros(3),
          "cv_scores": np.array([[-0.61, -0.65, -0.6], [-0.5, -0.52, -0.55], [-0.58, -0.6, -0.7]])}
    model = _write_v2_model(tmp_path / "m.npz", coef, [0.1, -0.2, 0.1], ["bird", "cat", "dog"],
                            cv_arrays=cv, feature_names=names,
                            cv={"scoring": "neg_log_loss", "best_index": 1, "folds": 3})
    m = load_model_file(model)
    assert m.family == "multinomial" and m.version == 2 and m.class_labels() == ["bird", "cat", "dog"]
    assert m.class_counts == (10, 20, 30) and m.feature_names == tuple(names)
    np.testing.assert_array_equal(m.cv.mean, cv["cv_scores"].mean(axis=1))
    np.testing.assert_array_equal(m.cv.std, cv["cv_scores"].std(axis=1))
    assert m.cv.best == 1 and m.cv.scoring == "neg_log_loss"

    t = coef_table(m)
    order = np.argsort(-np.abs(coef).max(axis=0), kind="stable")
    assert t.features == tuple(names[i] for i in order)
    assert t.columns == ("bird", "cat", "dog")
    np.testing.assert_array_equal(t.values, coef[:, order].T)
    assert (t.n_coefficients, t.n_zero, t.n_zero_features) == (18, 4, 1)
    assert t.headline() == "4 of 18 coefficients are exactly zero (14 nonzero)"  # not an L1 model
    assert t.features[-1] == "noise"

    out = tmp_path / "r.html"
    res = _invoke([str(model), "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert not re.search(r"<script[^>]+src=", page)  # still standalone
    assert "<title>dlogit report: m.npz</title>" in page
    section = _coef_section(page)
    assert "4 of 18 coefficients are exactly zero (14 nonzero)" in section
    assert "<th>feature</th><th>bird</th><th>cat</th><th>dog</th>" in section
    assert "<th>x&lt;3</th>" in section  # names are escaped
    assert section.count("<td class='zero'>0</td>") == 4
    assert "<tr><th>noise</th><td class='zero'>0</td><td class='zero'>0</td><td class='zero'>0</td></tr>" in section
    assert "1 of 6 features have all 3 class coefficients exactly zero" in section
    assert "<tr class='intercept'><th>(intercept)</th>" in section
    # the classes and their counts
    assert "<h3>Classes (3, multinomial)</h3>" in page
    assert "<tr><th>dog</th><td>30</td><td>50.00 %</td></tr>" in page
    # the path: a plot (its data source embedded) and a table with the chosen point marked
    assert '"name":"cv_path"' in page.replace(" ", "") and '"name":"cv_best"' in page.replace(" ", "")
    assert "Chosen: point 1, l2 = 0.001 (neg_log_loss -0.523333)" in page
    assert "<tr class='best'><td>1</td><td>0.001</td>" in page


def test_report_sparse_l1_binary_counts_zeros(tmp_path):
    from dlogit.monitor.report import coef_table, load_model_file

    rng = np.random.default_rng(1)
    coef = rng.standard_normal((1, 100))
    zeros = rng.choice(100, 37, replace=False)
    coef[0, zeros] = 0.0
    coef[0, 5] = -0.0  # negative zero is a zero too
    zeros = set(zeros.tolist()) | {5}
    model = _write_v2_model(tmp_path / "l1.npz", coef, [0.25], np.array([0, 1]),
                            family="binomial", params={"solver": "lbfgs", "l1": 0.05, "l2": 0.0})
    m = load_model_file(model)
    t = coef_table(m)
    n_zero = len(zeros)
    assert t.headline() == (f"L1 model: {n_zero} of 100 coefficients are exactly zero "
                            f"({100 - n_zero} nonzero)")
    assert t.columns == ("coef (class 1)",) and len(t.features) == 100
    assert set(t.features[-n_zero:]) == {f"x{i}" for i in zeros}  # zeros sort last
    out = tmp_path / "r.html"
    assert _invoke([str(model), "--out", str(out)]).exit_code == 0
    section = _coef_section(out.read_text())
    assert section.count("<td class='zero'>0</td>") == n_zero
    assert "features with the largest" not in section  # all 100 rows shown
    assert "Cross-validation path" not in out.read_text()  # no cv arrays: no path


def test_report_coef_table_top_rows_and_v1_files(tmp_path):
    from dlogit.monitor.report import TABLE_ROWS, coef_table, load_model_file

    coef = np.arange(1, 251, dtype=np.float64)[None, :] * (-1) ** np.arange(250)
    model = _write_v2_model(tmp_path / "wide.npz", coef, [0.0], np.array([False, True]),
                            family="binomial")
    t = coef_table(load_model_file(model))
    assert len(t.features) == TABLE_ROWS == 200
    assert t.features[:3] == ("x249", "x248", "x247")
    out = tmp_path / "r.html"
    assert _invoke([str(model), "--out", str(out)]).exit_code == 0
    section = _coef_section(out.read_text())
    assert "The 200 features with the largest |coef| of 250 are shown" in section
    assert section.count("<tr><th>x") == 200
    assert "<th>coef (class True)</th>" in section

    # version 1: coef (1, d), classes [0, 1], no family
    m = load_model_file(_write_model(tmp_path / "v1.npz"))
    assert m.family == "binomial" and m.version == 1 and m.class_counts is None and m.cv is None
    assert m.feature_names == ("x0", "x1", "x2")
    assert coef_table(m).headline() == "3 of 3 coefficients are exactly zero (0 nonzero)"
    out = tmp_path / "v1.html"
    assert _invoke([str(tmp_path / "v1.npz"), "--out", str(out)]).exit_code == 0
    assert "3 of 3 coefficients are exactly zero" in out.read_text()


@pytest.mark.parametrize("case", ["shape", "family", "names", "cv_shape", "cv_missing", "intercept"])
def test_report_bad_v2_input(tmp_path, case):
    coef, intercept, classes = np.ones((3, 4)), np.zeros(3), ["a", "b", "c"]
    kw: dict = {}
    if case == "shape":
        coef = np.ones((2, 4))  # K = 3 classes but 2 coefficient rows
        intercept = np.zeros(2)
    elif case == "family":
        kw["family"] = "poisson"
    elif case == "names":
        kw["feature_names"] = ["a", "b"]
    elif case == "cv_shape":
        kw["cv_arrays"] = {"cv_l2": np.ones(3), "cv_l1": np.zeros(2), "cv_scores": np.ones((3, 2))}
    elif case == "cv_missing":
        kw["cv_arrays"] = {"cv_l2": np.ones(3)}
    else:
        intercept = np.zeros(1)
    model = _write_v2_model(tmp_path / "m.npz", coef, intercept, classes, **kw)
    out = tmp_path / "r.html"
    res = _invoke([str(model), "--out", str(out)])
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    if case == "shape":  # found by the one model-file reader, dlogit.model_io (as `predict` finds it)
        assert text == f"dlogit: error: {model} has 2 coefficient rows for 3 classes"
    else:
        assert text.startswith("dlogit: error: not a dlogit model (") and "\n" not in text
    assert not out.exists()


def test_report_png_with_path(tmp_path):
    pytest.importorskip("matplotlib")
    cv = {"cv_l2": np.array([0.0, 1e-3, 1e-1]), "cv_l1": np.zeros(3),
          "cv_scores": np.array([[0.7, 0.72], [0.8, 0.84], [0.75, 0.71]])}
    model = _write_v2_model(tmp_path / "m.npz", np.ones((3, 4)), np.zeros(3), [1, 2, 3], cv_arrays=cv,
                            cv={"scoring": "accuracy", "best_index": 1, "folds": 2})
    out = tmp_path / "r.png"
    res = _invoke([str(model), "--out", str(out)])
    assert res.exit_code == 0, res.output
    png = out.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


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


def test_path_and_model_metrics_reach_the_scheduler(preloaded):
    _, client, base = preloaded
    run, path = new_run(), f"path-{uuid.uuid4().hex[:6]}"
    client.log_event(TOPIC, multinomial_start(run, path=path))
    end = end_event(run, 12, status="interrupted")
    end["n_nonzero"] = 9
    client.log_event(TOPIC, end)
    pts = [path_point(1e-4, [0.7, 0.8]), path_point(1e-3, [0.9, 0.95])]
    client.log_event(TOPIC, path_event(path, pts, best=1, done=True, scoring="accuracy"))
    _wait_for(lambda: f'path="{path}"' in _metrics(base))
    text = _metrics(base)
    assert re.search(r'dlogit_run_info\{[^}]*run="' + run + r'"[^}]*status="interrupted"', text)
    assert _metric(text, "dlogit_n_classes", run) == 3
    assert _metric(text, "dlogit_n_nonzero", run) == 9
    m = re.search(r'^dlogit_path_best_score\{path="' + path + r'",scoring="accuracy"\} (\S+)$', text,
                  re.MULTILINE)
    assert m and float(m.group(1)) == pts[1]["mean"]
    status, _ = _get(base + "/dlogit")  # the page (its panel built on the GET) renders with a path
    assert status == 200


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
                solver="gd", lr=0.5, max_iter=max_iter, tol=0, progress_period=500, mode=mode,
            ).fit(da.from_array(X, chunks=5_000), da.from_array(y, chunks=5_000), client=client,
                  callback=progress)
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
    from dlogit.monitor.report import _meta_rows, load_model_file

    m = load_model_file(path)
    np.testing.assert_array_equal(m.loss, model.history_["loss"])
    np.testing.assert_array_equal(m.coef, model.coef_.reshape(m.coef.shape))
    rows = dict(_meta_rows(m))
    assert rows["n_iter"] == "50" and rows["status"] == model.status_
    assert rows["params.solver"] == "gd" and rows["steps recorded"] == "50"


def test_report_reads_model_files_with_the_one_reader(tmp_path):
    """``dlogit report`` reads a model through dlogit.model_io, as load_model does: a file it refuses (a
    non-finite coefficient, a newer format) is refused by the report with the same line."""
    import dlogit
    from dlogit.errors import ModelError

    coef = np.ones((3, 4))
    coef[1, 2] = np.nan
    model = _write_v2_model(tmp_path / "m.npz", coef, np.zeros(3), ["a", "b", "c"])
    with pytest.raises(ModelError) as info:
        dlogit.load_model(model)
    res = _invoke([str(model), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and res.output.strip() == f"dlogit: error: {info.value}"
    assert "no usable coefficients" in res.output
