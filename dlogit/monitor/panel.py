"""The ``/dlogit`` Bokeh panel served by the scheduler's dashboard HTTP server.

distributed builds its own pages as one ``BokehTornado`` application that it
adds to ``scheduler.http_application`` (a ``RoutingApplication``, which tries
its own routes first and then each added application in turn).  We do the
same with a second, small ``BokehTornado`` holding only ``/dlogit``; that works
at any time after the HTTP server started, so the panel can be installed by a
preload module or later by a scheduler plugin.
"""

from __future__ import annotations

import html
import logging
import math
import time
from typing import Any

import numpy as np

from dlogit.monitor.state import (
    MonitorState,
    PathPoint,
    PathState,
    RunState,
    format_bytes,
    log_positions,
    zero_note,
)

logger = logging.getLogger(__name__)

ROUTE = "/dlogit"
REFRESH_MS = 500
LATEST = "__latest__"
#: classes drawn in the "rows per class" chart (the largest ones)
TOP_CLASSES = 20
#: list parameters longer than this are shortened in the table
LIST_ITEMS = 20

#: one colour per run status (the status badge in the page header)
STATUS_COLORS = {
    "running": "#1f77b4",
    "stale": "#7f7f7f",
    "converged": "#2ca02c",
    "max_iter": "#ff7f0e",
    "stalled": "#9467bd",
    "diverged": "#d62728",
    "failed": "#8c1c13",
    "interrupted": "#17becf",
}

_TABLE_CSS = """
table.dlogit-params { border-collapse: collapse; width: 100%; }
table.dlogit-params th { text-align: left; font-weight: 600; padding: 2px 12px 2px 4px;
                         white-space: nowrap; vertical-align: top; }
table.dlogit-params td { padding: 2px 4px; word-break: break-all; }
table.dlogit-params tr:nth-child(even) { background: #f2f2f2; }
table.dlogit-params tr.dlogit-best { font-weight: 700; }
"""

_STEP_COLS = RunState.STEP_COLUMNS
_RATE_COLS = RunState.RATE_COLUMNS
_PATH_COLS = ("x", "mean", "lower", "upper", "std", "l2", "l1", "n_iter", "n_nonzero")


def _fmt(x: Any, spec: str = ".6g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        return format(x, spec)
    if isinstance(x, (list, tuple)):
        text = ", ".join(str(v) for v in x[:LIST_ITEMS])
        if len(x) > LIST_ITEMS:
            text += f", ... ({len(x) - LIST_ITEMS} more)"
        return text
    return str(x)


def status_badge(status: str) -> str:
    """The HTML badge of a run status, in the status's colour."""
    color = STATUS_COLORS.get(status, STATUS_COLORS["failed"])
    s = html.escape(status)
    return (
        f'<span class="dlogit-status" data-status="{s}" style="background:{color};color:#fff;'
        f'padding:0 6px;border-radius:3px">{s}</span>'
    )


def n_coefficients(summary: dict[str, Any]) -> int | None:
    """Coefficients of the run's model, intercepts excluded: d, or K x d for multinomial."""
    try:
        d = int(summary["params"].get("n_features"))
    except (TypeError, ValueError):
        return None
    return d * (summary["n_classes"] if summary["family"] == "multinomial" else 1)


def path_columns(points: tuple[PathPoint, ...], lam: list[float]) -> dict[str, np.ndarray]:
    """The path figure's columns: the penalty ``lam`` on a log axis, mean score +- std."""
    mean = np.array([p.mean for p in points], dtype=np.float64)
    std = np.array([p.std for p in points], dtype=np.float64)

    def opt(v: int | None) -> float:
        return math.nan if v is None else float(v)

    return {
        "x": np.array(log_positions(lam), dtype=np.float64),
        "mean": mean,
        "lower": mean - std,
        "upper": mean + std,
        "std": std,
        "l2": np.array([p.l2 for p in points], dtype=np.float64),
        "l1": np.array([p.l1 for p in points], dtype=np.float64),
        "n_iter": np.array([opt(p.n_iter) for p in points], dtype=np.float64),
        "n_nonzero": np.array([opt(p.n_nonzero) for p in points], dtype=np.float64),
    }


def format_seconds(s: float | None) -> str:
    if s is None or (isinstance(s, float) and (math.isnan(s) or math.isinf(s))):
        return "-"
    s = max(float(s), 0.0)
    if s == 0:
        return "0 s"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    if s < 60:
        return f"{s:.2f} s"
    m, sec = divmod(round(s), 60)
    h, m = divmod(m, 60)
    if h:
        return f"{h}h {m:02d}m {sec:02d}s"
    return f"{m}m {sec:02d}s"


def _arrays(cols: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=np.float64) for k, v in cols.items()}


def _empty(columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {c: np.zeros(0, dtype=np.float64) for c in columns}


# ------------------------------------------------------------- figure builders
#: what every time-series figure of the panel shares
_FIG_KW: dict[str, Any] = {
    "height": 260, "sizing_mode": "stretch_width", "toolbar_location": "above",
    "tools": "pan,wheel_zoom,box_zoom,reset,save", "output_backend": "canvas",
}


def _curve(title: str, field: str, y_axis_type: str, color: str, name: str, steps: Any, tail: Any) -> Any:
    """A per-step line of ``field``: the stored points (``steps``) and the newest, not yet stored one
    joined to them (``tail``)."""
    from bokeh.models import HoverTool
    from bokeh.plotting import figure

    p = figure(title=title, y_axis_type=y_axis_type, x_axis_label="step",
               name=name, **_FIG_KW)
    p.line("step", field, source=steps, line_width=2, color=color)
    p.line("step", field, source=tail, line_width=2, color=color)
    p.add_tools(HoverTool(tooltips=[("step", "@step"), (field, f"@{field}")],
                          mode="vline"))
    return p


def _throughput_figure(rates: Any) -> Any:
    """Rows/s (left axis) and GB/s (right axis) per step."""
    from bokeh.models import DataRange1d, HoverTool, LinearAxis, NumeralTickFormatter
    from bokeh.plotting import figure

    tp = figure(title="Throughput", x_axis_label="step", name="dlogit-throughput",
                **_FIG_KW)
    r_rows = tp.line("step", "rows_per_s", source=rates, line_width=2,
                     color="#9467bd", legend_label="rows/s")
    tp.y_range = DataRange1d(renderers=[r_rows])
    tp.yaxis[0].axis_label = "rows/s"
    tp.yaxis[0].formatter = NumeralTickFormatter(format="0.[00]a")
    tp.extra_y_ranges = {"gb": DataRange1d()}
    r_gb = tp.line("step", "gb_per_s", source=rates, line_width=2,
                   color="#ff7f0e", y_range_name="gb", legend_label="GB/s")
    tp.extra_y_ranges["gb"].renderers = [r_gb]
    tp.add_layout(LinearAxis(y_range_name="gb", axis_label="GB/s"), "right")
    tp.legend.location = "top_left"
    tp.legend.background_fill_alpha = 0.6
    tp.add_tools(HoverTool(tooltips=[("step", "@step"), ("rows/s", "@rows_per_s{0.00a}"),
                                     ("GB/s", "@gb_per_s{0.000}")]))
    return tp


def _workers_figure(workers: Any) -> Any:
    """The last step's time per worker (bars)."""
    from bokeh.models import FactorRange, HoverTool
    from bokeh.plotting import figure

    wf = figure(title="Last step time per worker (ms)", y_range=FactorRange(),
                name="dlogit-workers-fig", height=260, sizing_mode="stretch_width",
                toolbar_location=None, tools="")
    wf.hbar(y="worker", right="ms", height=0.8, color="color", source=workers)
    wf.x_range.start = 0
    wf.add_tools(HoverTool(tooltips=[("worker", "@worker"), ("ms", "@ms{0.0}")]))
    return wf


def _classes_figure(classes: Any) -> Any:
    """Rows per class (bars), hidden until a run reports its class counts."""
    from bokeh.models import FactorRange, HoverTool, NumeralTickFormatter
    from bokeh.plotting import figure

    cf = figure(title="Rows per class", y_range=FactorRange(), name="dlogit-classes-fig",
                height=260, sizing_mode="stretch_width", toolbar_location=None, tools="")
    cf.hbar(y="label", right="count", height=0.8, color="#1f77b4", source=classes)
    cf.x_range.start = 0
    cf.xaxis[0].formatter = NumeralTickFormatter(format="0.[00]a")
    cf.add_tools(HoverTool(tooltips=[("class", "@label"), ("rows", "@count")]))
    cf.visible = False  # until a run reports its class counts
    return cf


def _path_figure(path: Any, path_best: Any) -> Any:
    """A regularization path's cross-validated score (mean, +-std whiskers, the best point starred),
    hidden until a path is shown."""
    from bokeh.plotting import figure

    pf = figure(title="Cross-validated score", x_axis_type="log", x_axis_label="l2",
                y_axis_label="score", name="dlogit-path-fig", **_FIG_KW)
    score_glyphs(pf, path, path_best, (("n_iter", "@n_iter"), ("nonzero", "@n_nonzero")))
    pf.visible = False
    return pf


def score_glyphs(fig: Any, source: Any, best: Any, tooltips: tuple[tuple[str, str], ...] = ()) -> None:
    """The cross-validated score's glyphs on ``fig`` (the panel's path figure and the report's): the mean
    line and dots, +-std whiskers, the ``best`` point starred (``None``: no star), a hover naming the
    point (``tooltips`` added). ``source`` has columns x, mean, lower, upper, std, l2, l1."""
    from bokeh.models import HoverTool, Whisker

    fig.line("x", "mean", source=source, line_width=2, color="#1f77b4")
    dots = fig.scatter("x", "mean", source=source, size=7, color="#1f77b4")
    fig.add_layout(Whisker(source=source, base="x", upper="upper", lower="lower", line_color="#1f77b4"))
    for end in ("upper", "lower"):  # invisible: the y range then includes the whiskers
        fig.scatter("x", end, source=source, size=1, alpha=0)
    if best is not None:
        fig.scatter("x", "mean", source=best, marker="star", size=18, color="#d62728")
    fig.add_tools(HoverTool(renderers=[dots], tooltips=[
        ("l2", "@l2"), ("l1", "@l1"), ("score", "@mean"), ("std", "@std"), *tooltips]))


def _table_div(name: str) -> Any:
    """A scrolling HTML table (the run's parameters, a path's points)."""
    from bokeh.models import Div

    return Div(
        text="", name=name, sizing_mode="stretch_width", height=260,
        styles={"overflow-y": "auto", "font-size": "13px"}, stylesheets=[_TABLE_CSS],
    )


class DlogitPanel:
    """One browser session's view of the monitor state."""

    def __init__(self, state: MonitorState, doc: Any):
        from bokeh.models import CheckboxGroup, ColumnDataSource, Div, Select

        self.state = state
        self.doc = doc
        # what this session has already sent to the browser
        self._run: RunState | None = None
        self._run_id: str | None = None
        self._gen = (-1, -1)
        self._sent_steps = 0
        self._sent_rates = 0
        self._version = -1
        self._options: list = []
        self._classes: list[tuple[str, int]] | None = None
        self._path: PathState | None = None
        self._path_version = -1
        self._path_options: list = []

        self.steps = ColumnDataSource(_empty(_STEP_COLS), name="dlogit-steps")
        self.tail = ColumnDataSource(_empty(_STEP_COLS), name="dlogit-tail")
        self.rates = ColumnDataSource(_empty(_RATE_COLS), name="dlogit-rates")
        self.workers = ColumnDataSource(
            {"worker": [], "ms": [], "color": []}, name="dlogit-workers"
        )
        self.param_rows: list[tuple[str, str]] = []
        self.classes = ColumnDataSource({"label": [], "count": []}, name="dlogit-classes")
        self.path = ColumnDataSource(_empty(_PATH_COLS), name="dlogit-path")
        self.path_best = ColumnDataSource(_empty(_PATH_COLS), name="dlogit-path-best")

        self.select = Select(
            title="Run", options=[(LATEST, "latest run")], value=LATEST,
            width=420, name="dlogit-run-select",
        )
        self.select.on_change("value", self._on_select)
        self.logscale = CheckboxGroup(
            labels=["log-scale loss", "log-scale gradient norm"], active=[1],
            inline=True, name="dlogit-logscale",
        )
        self.logscale.on_change("active", self._on_logscale)
        self.info = Div(text="<b>No dlogit run seen yet.</b>", name="dlogit-info",
                        sizing_mode="stretch_width")

        steps, tail = self.steps, self.tail
        self.loss_lin = _curve("Loss", "loss", "linear", "#1f77b4", "dlogit-loss", steps, tail)
        self.loss_log = _curve("Loss (log)", "loss", "log", "#1f77b4", "dlogit-loss-log", steps, tail)
        self.gn_lin = _curve("Gradient norm", "grad_norm", "linear", "#d62728", "dlogit-grad-norm",
                             steps, tail)
        self.gn_log = _curve("Gradient norm (log)", "grad_norm", "log", "#d62728", "dlogit-grad-norm-log",
                             steps, tail)
        self._on_logscale("active", None, self.logscale.active)
        self.step_fig = _curve("Step time (ms)", "step_ms", "linear", "#2ca02c", "dlogit-step-time",
                               steps, tail)
        self.throughput = _throughput_figure(self.rates)
        self.worker_fig = _workers_figure(self.workers)
        self.classes_fig = _classes_figure(self.classes)

        self.path_select = Select(
            title="Regularization path", options=[(LATEST, "latest path")], value=LATEST,
            width=420, name="dlogit-path-select",
        )
        self.path_select.on_change("value", self._on_path_select)
        self.path_info = Div(text="No regularization path seen yet.", name="dlogit-path-info",
                             sizing_mode="stretch_width")
        self.path_fig = _path_figure(self.path, self.path_best)
        self.path_table = _table_div("dlogit-path-table")
        self.path_table.visible = False
        # a plain HTML table: Bokeh 3.9's DataTable does not redraw when its
        # source is replaced by data of the same length (bokeh/bokeh#15328)
        self.table = _table_div("dlogit-params-table")
        self.root = self._layout()
        self.update()

    def _layout(self) -> Any:
        from bokeh.layouts import column, row

        return column(
            row(self.select, self.logscale, sizing_mode="stretch_width"),
            self.info,
            row(column(self.loss_lin, self.loss_log, sizing_mode="stretch_width"),
                column(self.gn_lin, self.gn_log, sizing_mode="stretch_width"),
                sizing_mode="stretch_width"),
            row(self.step_fig, self.throughput, sizing_mode="stretch_width"),
            row(self.worker_fig, self.table, sizing_mode="stretch_width"),
            row(self.classes_fig, sizing_mode="stretch_width"),
            row(self.path_select, self.path_info, sizing_mode="stretch_width"),
            row(self.path_fig, self.path_table, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    # ------------------------------------------------------------- callbacks
    def _on_select(self, attr: str, old: Any, new: Any) -> None:
        self.update()

    def _on_path_select(self, attr: str, old: Any, new: Any) -> None:
        self._update_path()

    def _on_logscale(self, attr: str, old: Any, new: list[int]) -> None:
        self.loss_lin.visible = 0 not in new
        self.loss_log.visible = 0 in new
        self.gn_lin.visible = 1 not in new
        self.gn_log.visible = 1 in new

    # ---------------------------------------------------------------- update
    def _reset(self) -> None:
        self.steps.data = _empty(_STEP_COLS)
        self.tail.data = _empty(_STEP_COLS)
        self.rates.data = _empty(_RATE_COLS)
        self.workers.data = {"worker": [], "ms": [], "color": []}
        self._update_classes([], 0, 0)
        self.param_rows = []
        self.table.text = ""
        self._run = None
        self._run_id = None
        self._sent_steps = self._sent_rates = 0
        self._gen = (-1, -1)
        self._version = -1

    def update(self) -> None:
        """Bring the page up to date with the state (the periodic callback)."""
        self._update_run()
        self._update_path()

    def _update_run(self) -> None:
        state = self.state
        now = time.time()
        with state.lock:
            ids = state.run_ids()
            options = [(LATEST, "latest run")] + [
                (r, f"{r} ({state.runs[r].display_status(now)})") for r in ids
            ]
            choice = self.select.value
            run_id = ids[0] if choice == LATEST and ids else choice
            rs = state.get(run_id) if run_id else None
            if rs is None:
                snap: dict[str, Any] | None = None
            else:
                fresh = rs is not self._run or (rs.steps.generation,
                                                 rs.rates.generation) != self._gen
                start_s = 0 if fresh else self._sent_steps
                start_r = 0 if fresh else self._sent_rates
                changed = fresh or rs.version != self._version
                snap = {
                    "fresh": fresh,
                    "changed": changed,
                    "gen": (rs.steps.generation, rs.rates.generation),
                    "steps": rs.steps.snapshot(start_s) if changed else None,
                    "n_steps": len(rs.steps),
                    "rates": rs.rates.snapshot(start_r) if changed else None,
                    "n_rates": len(rs.rates),
                    "tail": (
                        [
                            {c: rs.steps.data[c][-1] for c in _STEP_COLS},
                            rs.steps.last,
                        ]
                        if rs.steps.tail_pending() and len(rs.steps)
                        else None
                    ),
                    "summary": rs.summary(now),
                    "top_classes": rs.model.top_classes(TOP_CLASSES),
                    "n_class_counts": len(rs.model.class_counts),
                    "n_classes": rs.model.n_classes,
                    "version": rs.version,
                }

        if options != self._options:
            self._options = options
            self.select.options = options
        if choice not in (LATEST, *ids):
            # the chosen run was evicted
            self.select.value = LATEST
            return
        if snap is None:
            if self._run is not None or self._run_id is not None:
                self._reset()
            return

        if snap["changed"]:
            if snap["fresh"]:
                self.steps.data = _arrays(snap["steps"])
                self.rates.data = _arrays(snap["rates"])
            else:
                if len(snap["steps"]["step"]):
                    self.steps.stream(_arrays(snap["steps"]))
                if len(snap["rates"]["step"]):
                    self.rates.stream(_arrays(snap["rates"]))
            tail = snap["tail"]
            self.tail.data = (
                _arrays({c: [tail[0][c], tail[1][c]] for c in _STEP_COLS})
                if tail else _empty(_STEP_COLS)
            )
            self._sent_steps = snap["n_steps"]
            self._sent_rates = snap["n_rates"]
            self._gen = snap["gen"]
            self._run = rs
            self._run_id = run_id
            self._version = snap["version"]
            self._update_workers(snap["summary"]["worker_seconds"])
            self._update_classes(snap["top_classes"], snap["n_class_counts"], snap["n_classes"])
        self._update_text(snap["summary"], snap["n_steps"] + (2 if snap["tail"] else 0))

    def _update_workers(self, ws: dict[str, float]) -> None:
        names = sorted(ws)
        ms = [ws[n] * 1e3 for n in names]
        slowest = max(range(len(ms)), key=ms.__getitem__) if ms else -1
        colors = ["#d62728" if i == slowest and len(ms) > 1 else "#1f77b4"
                  for i in range(len(ms))]
        if list(self.worker_fig.y_range.factors) != names:
            self.worker_fig.y_range.factors = names
        self.workers.data = {"worker": names, "ms": ms, "color": colors}

    def _update_classes(self, top: list[tuple[str, int]], n_counts: int, k: int) -> None:
        """Draw the ``top`` classes of the ``n_counts`` whose counts were sent (of ``k``)."""
        if top == self._classes:
            return
        self._classes = top
        labels = [label for label, _ in reversed(top)]  # the largest class on top
        counts = [count for _, count in reversed(top)]
        if len(set(labels)) != len(labels):  # factors must be unique
            labels = [f"{label} [{i}]" for i, label in enumerate(labels)]
        self.classes_fig.y_range.factors = labels
        self.classes.data = {"label": labels, "count": counts}
        self.classes_fig.visible = bool(top)
        if not top:
            self.classes_fig.title.text = "Rows per class (not reported)"
        elif n_counts < k:  # the event carries the first classes only
            self.classes_fig.title.text = (
                f"Rows per class (the {len(top)} largest of the first {n_counts} of {k} classes)")
        elif k > len(top):
            self.classes_fig.title.text = f"Rows per class (the {len(top)} largest of {k})"
        else:
            self.classes_fig.title.text = "Rows per class"

    def _update_text(self, s: dict[str, Any], n_points: int) -> None:
        step = s["step"]
        max_iter = s["max_iter"]
        progress = f"{_fmt(step)} / {_fmt(max_iter)}"
        model = (
            f"{html.escape(s['family'])}, K={s['n_classes']}"
            f" &mdash; L2 {_fmt(s['l2'])}, L1 {_fmt(s['l1'])}"
        )
        nonzero = ""
        if s["n_nonzero"] is not None:
            total = n_coefficients(s)
            of = f" of {total}" if total is not None else ""
            nonzero = (f" &mdash; <span class=\"dlogit-nonzero\">nonzero coefficients: "
                       f"{s['n_nonzero']}{of}</span>")
        text = (
            f"<b>{html.escape(s['run'])}</b> &mdash; status {status_badge(s['status'])}"
            f" &mdash; {model}"
            f" &mdash; step {progress} &mdash; loss {_fmt(s['loss'])}"
            f" &mdash; ETA {format_seconds(s['eta_seconds'])}"
            f" &mdash; <span class=\"dlogit-points\" data-points=\"{n_points}\">"
            f"points: {n_points}</span> of {s['steps_seen']} steps{nonzero}"
        )
        if text != self.info.text:
            self.info.text = text
        rows = [
            ("run", s["run"]),
            ("status", s["status"]),
            ("step", progress),
            ("loss", _fmt(s["loss"])),
            ("grad_norm", _fmt(s["grad_norm"])),
            ("last step", format_seconds(s["step_seconds"])),
            ("mean step", format_seconds(s["mean_step_seconds"])),
            ("rows/s", _fmt(s["rows_per_s"], ".4g")),
            ("GB/s", _fmt(s["bytes_per_s"] / 1e9 if s["bytes_per_s"] == s["bytes_per_s"]
                          else math.nan, ".4g")),
            ("elapsed", format_seconds(s["elapsed_seconds"])),
            ("ETA", format_seconds(s["eta_seconds"])),
        ]
        if s["stream"] is not None:
            rows.extend(stream_rows(s["stream"]))
        if s["n_iter"] is not None:
            rows.append(("n_iter", str(s["n_iter"])))
        if s["n_nonzero"] is not None:
            rows.append(("n_nonzero", str(s["n_nonzero"])))
        if s["message"]:
            rows.append(("message", s["message"]))
        for k, v in s["params"].items():
            rows.append((f"params.{k}", _fmt(v)))
        rows = [(k, str(v)) for k, v in rows]
        if rows != self.param_rows:
            self.param_rows = rows
            self.table.text = "<table class='dlogit-params'>" + "".join(
                f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                for k, v in rows
            ) + "</table>"

    def _update_path(self) -> None:
        state = self.state
        with state.lock:
            ids = state.path_ids()
            options = [(LATEST, "latest path")] + [
                (p, f"{p} ({'done' if state.paths[p].done else 'running'})") for p in ids
            ]
            choice = self.path_select.value
            path_id = ids[0] if choice == LATEST and ids else choice
            ps = state.get_path(path_id) if path_id else None
            changed = ps is not self._path or (ps is not None and ps.version != self._path_version)
            snap = None
            if ps is not None and changed:
                snap = (ps.version, ps.summary(), ps.points, ps.axis())
        if options != self._path_options:
            self._path_options = options
            self.path_select.options = options
        if choice not in (LATEST, *ids):  # the chosen path was evicted
            self.path_select.value = LATEST
            return
        if not changed:
            return
        self._path = ps
        if snap is None:
            self._path_version = -1
            self.path.data = _empty(_PATH_COLS)
            self.path_best.data = _empty(_PATH_COLS)
            self.path_info.text = "No regularization path seen yet."
            self.path_table.text = ""
            self.path_fig.visible = self.path_table.visible = False
            return
        version, summary, points, (axis, lam) = snap
        self._path_version = version
        cols = path_columns(points, lam)
        self.path.data = cols
        best = summary["best"]
        self.path_best.data = (
            {k: v[best:best + 1] for k, v in cols.items()} if best is not None
            else _empty(_PATH_COLS)
        )
        self.path_fig.xaxis[0].axis_label = axis + zero_note(lam)
        scoring = summary["scoring"] or "score"
        self.path_fig.yaxis[0].axis_label = scoring
        self.path_fig.title.text = f"Cross-validated {scoring}: mean ± std over folds, ★ chosen"
        self.path_fig.visible = self.path_table.visible = True
        self.path_info.text = self._path_text(summary, points, axis, lam)
        self.path_table.text = self._path_table(points, best)

    @staticmethod
    def _path_text(s: dict[str, Any], points: tuple[PathPoint, ...], axis: str,
                   lam: list[float]) -> str:
        state = "done" if s["done"] else "running"
        fits = (f" &mdash; fits: {s['fits_started']} started, {s['fits_finished']} finished"
                if s["fits_started"] else "")
        text = (
            f"<b>{html.escape(s['path'])}</b> &mdash; {state} &mdash; "
            f"{html.escape(s['scoring'] or '?')}, {_fmt(s['folds'])} folds &mdash; "
            f"<span class=\"dlogit-path-points\" data-points=\"{len(points)}\">"
            f"points: {len(points)}</span>{fits}"
        )
        best = s["best"]
        if best is not None:
            text += (
                f" &mdash; <span class=\"dlogit-path-best\">chosen: {html.escape(axis)} = "
                f"{_fmt(lam[best])}, score {_fmt(points[best].mean)}</span>"
            )
        return text

    @staticmethod
    def _path_table(points: tuple[PathPoint, ...], best: int | None) -> str:
        head = "".join(f"<th>{h}</th>" for h in
                       ("#", "l2", "l1", "mean", "std", "folds", "n_iter", "nonzero"))
        body = []
        for i, p in enumerate(points):
            cls = " class='dlogit-best'" if i == best else ""
            cells = (str(i), _fmt(p.l2), _fmt(p.l1), _fmt(p.mean), _fmt(p.std),
                     str(len(p.fold_scores)), _fmt(p.n_iter), _fmt(p.n_nonzero))
            body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                        + "</tr>")
        return f"<table class='dlogit-params'><tr>{head}</tr>{''.join(body)}</table>"


def make_document(state: MonitorState, refresh_ms: int = REFRESH_MS):
    """A Bokeh ``FunctionHandler`` callback building the panel for ``state``."""

    def modify_doc(doc: Any) -> None:
        panel = DlogitPanel(state, doc)
        doc.title = "dlogit"
        doc.add_root(panel.root)
        doc.add_periodic_callback(panel.update, refresh_ms)

    return modify_doc


def _dashboard_prefix(scheduler: Any) -> str:
    """The prefix distributed's own Bokeh app was mounted under ("/" by default)."""
    from bokeh.server.tornado import BokehTornado

    for app in getattr(scheduler.http_application, "applications", []):
        if isinstance(app, BokehTornado):
            return app.prefix or "/"
    return "/"


def install_panel(scheduler: Any, state: MonitorState, refresh_ms: int = REFRESH_MS):
    """Mount ``/dlogit`` on ``scheduler``'s dashboard; returns the app or None.

    Returns None (and logs why) when the scheduler has no HTTP server or
    Bokeh is unusable; metrics and state keep working in that case.
    """
    http_app = getattr(scheduler, "http_application", None)
    http_server = getattr(scheduler, "http_server", None)
    if http_app is None or http_server is None or not hasattr(http_app, "add_application"):
        logger.info("dlogit: scheduler has no dashboard HTTP server; no /dlogit panel")
        return None
    try:
        import dask.config
        from bokeh.application import Application
        from bokeh.application.handlers.function import FunctionHandler
        from bokeh.server.tornado import BokehTornado
        from bokeh.server.util import create_hosts_allowlist
        from tornado.ioloop import IOLoop
    except ImportError as e:  # pragma: no cover - bokeh is a hard dependency
        logger.warning("dlogit: Bokeh unavailable (%s); no /dlogit panel", e)
        return None

    prefix = _dashboard_prefix(scheduler)
    kwargs = dict(
        dask.config.get("distributed.scheduler.dashboard.bokeh-application", {}) or {}
    )
    origins = kwargs.pop("allow_websocket_origin", ["*"])
    extra_origins = create_hosts_allowlist(origins, http_server.port)
    app = BokehTornado(
        {ROUTE: Application(FunctionHandler(make_document(state, refresh_ms)))},
        prefix=prefix,
        use_index=False,
        redirect_root=False,
        extra_websocket_origins=extra_origins,
        absolute_url="",
        **kwargs,
    )
    http_app.add_application(app)
    app.initialize(IOLoop.current())
    app.start()
    return app


def uninstall_panel(scheduler: Any, app: Any) -> None:
    if app is None:
        return
    try:
        app.stop(wait=False)
    except Exception:  # pragma: no cover
        logger.debug("dlogit: stopping panel app failed", exc_info=True)
    apps = getattr(getattr(scheduler, "http_application", None), "applications", None)
    if apps is not None and app in apps:
        apps.remove(app)


def stream_rows(st: Any) -> list[tuple[str, str]]:
    """The panel's rows for a fit reading its chunks from their sources (a
    :class:`~dlogit.events.StreamStep`): bytes read and cache hits per evaluation, read- or compute-bound."""
    where = f" ({', '.join(st.workers)})" if st.workers else ""
    return [
        ("read per evaluation", f"{format_bytes(st.bytes_read)} ({st.chunks_read:g} chunks){where}"),
        ("cache hits per evaluation", f"{st.cache_hits:g} chunks"),
        ("bound", (f"{st.bound} (per evaluation: waited for reads {format_seconds(st.read_wait_s)}, "
                   f"computed {format_seconds(st.compute_s)})")),
    ]
