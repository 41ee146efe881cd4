"""Training report from a saved dlogit model file.

``write_report(model, out)`` reads a model file (format version 1 or 2, see
ARCHITECTURE.md) and writes a standalone HTML page with Bokeh's INLINE
resources (BokehJS embedded: the file opens offline), or a PNG when
matplotlib is installed.  The page holds the model's metadata, the stored
history (loss, gradient norm, step time per step), the classes and their row
counts, the cross-validation path (score vs penalty, when the model came from
a path) and the coefficient table (largest coefficients first, with how many
are exactly zero).  Everything is validated before anything is written;
failures raise :class:`ReportError` with a one-line message.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlogit.files import atomic_write
from dlogit.monitor.state import log_positions, penalty_axis, zero_note

HISTORY_KEYS = ("history_loss", "history_grad_norm", "history_step_seconds")
REQUIRED_KEYS = ("coef", "intercept", "classes", *HISTORY_KEYS, "meta")
CV_KEYS = ("cv_l2", "cv_l1", "cv_scores")
#: rows of the coefficient and class tables (the largest first)
TABLE_ROWS = 200
#: class columns of a multinomial coefficient table
TABLE_CLASSES = 100
#: meta keys shown in their own section, not in the metadata table
_OWN_SECTION = ("format", "params", "feature_names", "class_counts", "cv")
_HEAD_KEYS = ("status", "n_iter", "version", "family", "n_classes", "classes_kind",
              "n_nonzero", "weighted", "dlogit_version", "created")


class ReportError(Exception):
    """Bad input for a report (missing file, not a dlogit model, bad output)."""


@dataclass(frozen=True)
class CvPath:
    """The regularization path stored with a model chosen by cross-validation.

    ``scores`` is (m, folds); the mean and standard deviation (``ddof=0``)
    over folds ignore NaN fold scores.
    """

    l2: np.ndarray
    l1: np.ndarray
    scores: np.ndarray
    scoring: str
    best: int | None

    @property
    def mean(self) -> np.ndarray:
        return _nan_reduce(np.nanmean, self.scores)

    @property
    def std(self) -> np.ndarray:
        return _nan_reduce(np.nanstd, self.scores)

    def axis(self) -> tuple[str, list[float]]:
        """The penalty the path varies and its value per point (see ``penalty_axis``)."""
        return penalty_axis(self.l2.tolist(), self.l1.tolist())


def _nan_reduce(f: Callable[..., np.ndarray], a: np.ndarray) -> np.ndarray:
    out = np.full(a.shape[0], np.nan)
    ok = ~np.all(np.isnan(a), axis=1) if a.shape[1] else np.zeros(a.shape[0], dtype=bool)
    if ok.any():
        out[ok] = f(a[ok], axis=1)
    return out


@dataclass(frozen=True)
class ModelFile:
    """What a report shows of one model file (versions 1 and 2)."""

    path: str
    meta: dict[str, Any]
    version: int
    #: "binomial" or "multinomial" (version 1 files are binomial)
    family: str
    loss: np.ndarray
    grad_norm: np.ndarray
    step_seconds: np.ndarray
    #: (K', d): K' = 1 for binomial, K for multinomial
    coef: np.ndarray
    intercept: np.ndarray
    #: (K,) the labels (ints, floats, bools or strings)
    classes: np.ndarray
    #: d names (``x0``, ``x1``, ... when the file has none)
    feature_names: tuple[str, ...]
    #: rows per class, in the order of ``classes``, when the file says
    class_counts: tuple[int, ...] | None
    cv: CvPath | None

    @property
    def n_features(self) -> int:
        return int(self.coef.shape[1])

    @property
    def l1(self) -> float:
        params = self.meta.get("params")
        try:
            return float(params.get("l1", 0.0) or 0.0) if isinstance(params, dict) else 0.0
        except (TypeError, ValueError):
            return 0.0

    def class_labels(self) -> list[str]:
        return [str(c) for c in self.classes.tolist()]


@dataclass(frozen=True)
class CoefTable:
    """The coefficient table: rows sorted by largest |coef| (over classes), first ``limit``.

    ``values[i, j]`` is the coefficient of feature ``features[i]`` for column
    ``columns[j]`` (one column per class for multinomial, one for binomial).
    Counts cover every coefficient of the model, intercepts excluded.
    """

    features: tuple[str, ...]
    columns: tuple[str, ...]
    values: np.ndarray
    n_features: int
    n_classes_total: int
    n_coefficients: int
    n_zero: int
    n_zero_features: int
    l1: float

    @property
    def n_nonzero(self) -> int:
        return self.n_coefficients - self.n_zero

    def headline(self) -> str:
        """E.g. ``L1 model: 37 of 100 coefficients are exactly zero (63 nonzero)``."""
        prefix = "L1 model: " if self.l1 > 0 else ""
        return (f"{prefix}{self.n_zero} of {self.n_coefficients} coefficients are exactly zero "
                f"({self.n_nonzero} nonzero)")


def coef_table(model: ModelFile, limit: int = TABLE_ROWS,
               max_columns: int = TABLE_CLASSES) -> CoefTable:
    """The rows of ``model``'s coefficient table.

    Features are ordered by their largest absolute coefficient over all
    classes, largest first (ties: the lower feature index first); the first
    ``limit`` are kept, with the first ``max_columns`` class columns.
    """
    coef = model.coef
    size = np.max(np.abs(coef), axis=0) if coef.shape[0] else np.zeros(coef.shape[1])
    order = np.argsort(-size, kind="stable")[:limit]
    if model.family == "multinomial":
        columns = tuple(model.class_labels()[:max_columns])
    else:
        labels = model.class_labels()
        columns = (f"coef (class {labels[-1]})" if labels else "coef",)
    zero = coef == 0
    return CoefTable(
        features=tuple(model.feature_names[i] for i in order),
        columns=columns,
        values=coef[: len(columns), order].T.copy(),
        n_features=model.n_features,
        n_classes_total=int(coef.shape[0]),
        n_coefficients=int(coef.size),
        n_zero=int(zero.sum()),
        n_zero_features=int(np.all(zero, axis=0).sum()) if coef.shape[0] else model.n_features,
        l1=model.l1,
    )


# ----------------------------------------------------------------- reading
def _bad(p: Path, why: str) -> ReportError:
    return ReportError(f"not a dlogit model ({why}): {p}")


def load_model_file(path: str | os.PathLike) -> ModelFile:
    """Read and check a dlogit model file (format version 1 or 2)."""
    from dlogit.errors import ModelError
    from dlogit.model_io import load_arrays

    p = Path(path)
    try:  # the one reader of model files (and its messages)
        arrays, meta = load_arrays(p)
    except ModelError as e:
        raise ReportError(str(e)) from None
    missing = [k for k in REQUIRED_KEYS if k != "meta" and k not in arrays]
    if missing:
        raise _bad(p, f"missing {', '.join(missing)}")
    hist = {}
    for k in HISTORY_KEYS:
        a = arrays[k]
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.number):
            raise _bad(p, f"{k} is not a 1-d numeric array")
        hist[k] = a.astype(np.float64)
    if len({len(v) for v in hist.values()}) != 1:
        raise _bad(p, "history arrays differ in length")

    coef, intercept, classes = arrays["coef"], arrays["intercept"], arrays["classes"]
    if coef.ndim != 2 or not np.issubdtype(coef.dtype, np.number):
        raise _bad(p, f"coef is not a 2-d numeric array (shape {coef.shape})")
    if intercept.ndim != 1 or intercept.shape[0] != coef.shape[0] \
            or not np.issubdtype(intercept.dtype, np.number):
        raise _bad(p, f"intercept shape {intercept.shape} does not match coef {coef.shape}")
    if classes.ndim != 1 or classes.dtype.kind not in "biufU":
        raise _bad(p, "classes is not a 1-d array of numbers, booleans or strings")
    family = meta.get("family", "binomial")
    if family not in ("binomial", "multinomial"):
        raise _bad(p, f"unknown family {family!r}")
    k_rows = 1 if family == "binomial" else len(classes)
    if coef.shape[0] != k_rows:
        raise _bad(p, f"a {family} model with {len(classes)} classes has coef of shape "
                      f"{coef.shape}")

    d = coef.shape[1]
    names = meta.get("feature_names")
    if names is None:
        feature_names = tuple(f"x{i}" for i in range(d))
    elif isinstance(names, list) and len(names) == d:
        feature_names = tuple(str(n) for n in names)
    else:
        n = len(names) if isinstance(names, list) else type(names).__name__
        raise _bad(p, f"feature_names has {n} names for {d} features")
    counts = meta.get("class_counts")
    class_counts = None
    if isinstance(counts, list) and len(counts) == len(classes):
        try:
            class_counts = tuple(int(c) for c in counts)
        except (TypeError, ValueError):
            class_counts = None
    version = meta.get("version", 1)
    return ModelFile(
        path=str(p), meta=meta, version=version if isinstance(version, int) else 1,
        family=family,
        loss=hist["history_loss"], grad_norm=hist["history_grad_norm"],
        step_seconds=hist["history_step_seconds"],
        coef=coef.astype(np.float64), intercept=intercept.astype(np.float64), classes=classes,
        feature_names=feature_names, class_counts=class_counts, cv=_load_cv(p, arrays, meta),
    )


def _load_cv(p: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> CvPath | None:
    if not any(k in arrays for k in CV_KEYS):
        return None
    if "cv_scores" not in arrays:
        raise _bad(p, "cv_l2/cv_l1 without cv_scores")
    scores = arrays["cv_scores"]
    if scores.ndim != 2 or not np.issubdtype(scores.dtype, np.number):
        raise _bad(p, f"cv_scores is not a 2-d numeric array (shape {scores.shape})")
    m = scores.shape[0]
    lam = {}
    for k in ("cv_l2", "cv_l1"):
        a = arrays.get(k, np.zeros(m))
        if a.shape != (m,) or not np.issubdtype(a.dtype, np.number):
            raise _bad(p, f"{k} has shape {a.shape}, cv_scores has {m} points")
        lam[k] = a.astype(np.float64)
    cv: dict[str, Any] = meta["cv"] if isinstance(meta.get("cv"), dict) else {}
    best = cv.get("best_index")
    best = best if isinstance(best, int) and not isinstance(best, bool) and 0 <= best < m else None
    scoring = cv.get("scoring")
    return CvPath(l2=lam["cv_l2"], l1=lam["cv_l1"], scores=scores.astype(np.float64),
                  scoring=scoring if isinstance(scoring, str) else "score", best=best)


# ------------------------------------------------------------------ content
def _text(v: Any, items: int = 20) -> str:
    """A metadata value as table text: lists shortened to ``items``, dicts as JSON."""
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        text = ", ".join(map(str, v[:items]))
        return text + (f", ... ({len(v) - items} more)" if len(v) > items else "")
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return str(v)


def _meta_rows(m: ModelFile) -> list[tuple[str, str]]:
    meta = m.meta
    rows: list[tuple[str, str]] = [("model", m.path)]
    for key in _HEAD_KEYS:
        if key in meta:
            v = meta[key]
            if key == "created" and isinstance(v, (int, float)):
                v = _dt.datetime.fromtimestamp(v, _dt.timezone.utc).isoformat(timespec="seconds")
            rows.append((key, _text(v)))
    if "family" not in meta:
        rows.append(("family", m.family))
    n = len(m.loss)
    rows.append(("steps recorded", str(n)))
    if n:
        rows.append(("final loss", f"{m.loss[-1]:.8g}"))
        rows.append(("final grad norm", f"{m.grad_norm[-1]:.6g}"))
        rows.append(("total step time", f"{float(np.nansum(m.step_seconds)):.3f} s"))
        rows.append(("median step time", f"{float(np.nanmedian(m.step_seconds)) * 1e3:.3f} ms"))
    rows.append(("n_features", str(m.n_features)))
    rows.append(("classes", _text(m.class_labels())))
    params = meta.get("params")
    if isinstance(params, dict):
        for k, v in params.items():
            rows.append((f"params.{k}", _text(v)))
    for k, v in meta.items():
        if k not in (*_OWN_SECTION, *_HEAD_KEYS):
            rows.append((k, _text(v)))
    return rows


def _table(head: list[str], rows: list[str], cls: str) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table class='{cls}'><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _num_cell(v: float) -> str:
    if v == 0:
        return "<td class='zero'>0</td>"
    return f"<td>{html.escape(format(float(v), '.6g'))}</td>"


def coef_table_html(t: CoefTable, intercept: np.ndarray | None = None) -> str:
    """The coefficient section: headline, optional intercept row, the rows, a note when cut."""
    parts = [f"<h3>Coefficients</h3><p class='headline'>{html.escape(t.headline())}</p>"]
    if t.n_classes_total > 1:
        parts.append(f"<p>{t.n_zero_features} of {t.n_features} features have all "
                     f"{t.n_classes_total} class coefficients exactly zero.</p>")
    rows = []
    if intercept is not None:
        cells = "".join(_num_cell(v) for v in intercept[: len(t.columns)])
        rows.append(f"<tr class='intercept'><th>(intercept)</th>{cells}</tr>")
    for name, vals in zip(t.features, t.values):
        cells = "".join(_num_cell(v) for v in vals)
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    parts.append(_table(["feature", *t.columns], rows, "coef"))
    notes = []
    if t.n_features > len(t.features):
        notes.append(f"the {len(t.features)} features with the largest |coef| of {t.n_features} "
                     "are shown")
    if t.n_classes_total > len(t.columns):
        notes.append(f"the first {len(t.columns)} of {t.n_classes_total} classes are shown")
    notes.append("sorted by the largest |coef| over classes; exact zeros are greyed; "
                 "the intercept is not counted")
    text = "; ".join(notes)
    parts.append(f"<p class='note'>{html.escape(text[0].upper() + text[1:])}.</p>")
    return "".join(parts)


def classes_html(m: ModelFile, limit: int = TABLE_ROWS) -> str:
    """The classes with their row counts (when the file has them); the largest ``limit`` when more."""
    labels = m.class_labels()
    counts = m.class_counts
    idx = list(range(len(labels)))
    note = ""
    if len(idx) > limit:
        if counts is not None:
            idx = sorted(idx, key=lambda i: (-counts[i], i))
        idx = idx[:limit]
        note = (f"<p class='note'>{len(idx)} of {len(labels)} classes shown"
                f"{' (the largest)' if counts is not None else ''}.</p>")
    total = sum(counts) if counts else 0
    rows = []
    for i in idx:
        if counts is not None:
            share = f"{100 * counts[i] / total:.2f} %" if total else "-"
            rows.append(f"<tr><th>{html.escape(labels[i])}</th><td>{counts[i]}</td>"
                        f"<td>{share}</td></tr>")
        else:
            rows.append(f"<tr><th>{html.escape(labels[i])}</th><td>-</td><td>-</td></tr>")
    head = f"<h3>Classes ({len(labels)}, {html.escape(m.family)})</h3>"
    return head + _table(["class", "rows", "share"], rows, "classes") + note


def path_html(cv: CvPath) -> str:
    """The table of the cross-validation path: one row per point, the chosen one marked."""
    axis, lam = cv.axis()
    mean, std = cv.mean, cv.std
    rows = []
    for i in range(len(lam)):
        cls = " class='best'" if i == cv.best else ""
        folds = ", ".join(format(float(s), ".4g") for s in cv.scores[i])
        rows.append(
            f"<tr{cls}><td>{i}</td><td>{cv.l2[i]:.6g}</td><td>{cv.l1[i]:.6g}</td>"
            f"<td>{mean[i]:.6g}</td><td>{std[i]:.3g}</td><td>{html.escape(folds)}</td></tr>"
        )
    chosen = ""
    if cv.best is not None:
        chosen = (f" Chosen: point {cv.best}, {html.escape(axis)} = {lam[cv.best]:.6g} "
                  f"({html.escape(cv.scoring)} {mean[cv.best]:.6g}).")
    head = (f"<h3>Cross-validation path</h3><p>{len(lam)} points, {cv.scores.shape[1]} folds, "
            f"scoring {html.escape(cv.scoring)}; mean and standard deviation over folds.{chosen}</p>")
    return head + _table(["#", "l2", "l1", "mean", "std", "fold scores"], rows, "path")


_CSS = """
body { padding: 8px 16px; font-family: sans-serif; font-size: 14px; }
table { border-collapse: collapse; margin: 4px 0 12px 0; }
th, td { padding: 2px 10px 2px 4px; text-align: left; vertical-align: top; }
table.coef td, table.classes td, table.path td { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #f4f4f4; }
td.zero { color: #b0b0b0; }
tr.intercept th { font-style: italic; }
tr.best { font-weight: 700; }
p.headline { font-weight: 600; }
p.note { color: #666; }
"""

_TEMPLATE = """
{% block postamble %}<style>{{ report_css }}</style>{% endblock %}
{% block contents %}
{% for kind, value in sections %}{% if kind == "html" %}{{ value }}{% else %}\
{{ embed(roots[value]) }}{% endif %}{% endfor %}
{% endblock %}
"""


def _html_report(m: ModelFile) -> str:
    from bokeh.embed import file_html
    from bokeh.layouts import gridplot
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    from dlogit.monitor.panel import score_glyphs

    n = len(m.loss)
    steps = np.arange(n, dtype=np.float64)  # step numbers count from 0, as in the events
    src = ColumnDataSource(
        {"step": steps, "loss": m.loss, "grad_norm": m.grad_norm,
         "step_ms": m.step_seconds * 1e3},
        name="history",
    )
    kw: dict[str, Any] = {"height": 300, "sizing_mode": "stretch_width", "x_axis_label": "step",
                          "tools": "pan,wheel_zoom,box_zoom,reset,save"}

    def curve(title: str, field: str, color: str, y_axis_type: str = "linear"):
        p = figure(title=title, y_axis_type=y_axis_type, **kw)
        p.line("step", field, source=src, line_width=2, color=color)
        p.add_tools(HoverTool(tooltips=[("step", "@step"), (field, f"@{field}")], mode="vline"))
        return p

    positive_gn = bool(n) and bool(np.all(m.grad_norm[np.isfinite(m.grad_norm)] > 0))
    positive_loss = bool(n) and bool(np.all(m.loss[np.isfinite(m.loss)] > 0))
    title = f"dlogit report: {os.path.basename(m.path)}"
    meta_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                        for k, v in _meta_rows(m))
    sections: list[tuple[str, str]] = [
        ("html", f"<h2>{html.escape(title)}</h2><table class='meta'>{meta_rows}</table>"),
        ("html", "<h3>Training history</h3>"),
    ]
    roots: list[Any] = []
    if n:
        grid = gridplot(
            [[curve("Loss", "loss", "#1f77b4"),
              curve("Loss (log)", "loss", "#1f77b4", "log" if positive_loss else "linear")],
             [curve("Gradient norm (log)" if positive_gn else "Gradient norm", "grad_norm",
                    "#d62728", "log" if positive_gn else "linear"),
              curve("Step time (ms)", "step_ms", "#2ca02c")]],
            sizing_mode="stretch_width", toolbar_location="right",
        )
        grid.name = "history_plots"
        roots.append(grid)
        sections.append(("root", "history_plots"))
    else:
        sections.append(("html", "<p>No steps recorded.</p>"))
    sections.append(("html", classes_html(m)))
    if m.cv is not None:
        cv = m.cv
        axis, lam = cv.axis()
        x = np.array(log_positions(lam), dtype=np.float64)
        mean, std = cv.mean, cv.std
        psrc = ColumnDataSource({"x": x, "mean": mean, "lower": mean - std, "upper": mean + std,
                                 "std": std, "l2": cv.l2, "l1": cv.l1}, name="cv_path")
        chosen = ", ★ chosen" if cv.best is not None else ""
        pf = figure(title=f"Cross-validated {cv.scoring}: mean ± std over folds{chosen}",
                    x_axis_type="log", x_axis_label=axis + zero_note(lam), y_axis_label=cv.scoring,
                    name="cv_path_plot", height=340, sizing_mode="stretch_width",
                    tools="pan,wheel_zoom,box_zoom,reset,save")
        b = cv.best
        best = None if b is None else ColumnDataSource({"x": x[b:b + 1], "mean": mean[b:b + 1]}, name="cv_best")
        score_glyphs(pf, psrc, best)
        roots.append(pf)
        sections.append(("root", "cv_path_plot"))
        sections.append(("html", path_html(cv)))
    sections.append(("html", coef_table_html(coef_table(m), m.intercept)))
    return file_html(roots, INLINE, title, template=_TEMPLATE,
                     template_variables={"sections": sections, "report_css": _CSS})


def _png_report(m: ModelFile, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(m.loss)
    steps = np.arange(n)
    rows = 4 if m.cv is not None else 3
    fig, axes = plt.subplots(rows, 1, figsize=(9, 3.3 * rows + 0.6))
    axes[0].plot(steps, m.loss, color="#1f77b4")
    axes[0].set_ylabel("loss")
    axes[1].plot(steps, m.grad_norm, color="#d62728")
    axes[1].set_ylabel("gradient norm")
    if n and np.all(m.grad_norm[np.isfinite(m.grad_norm)] > 0):
        axes[1].set_yscale("log")
    axes[2].plot(steps, m.step_seconds * 1e3, color="#2ca02c")
    axes[2].set_ylabel("step time (ms)")
    axes[2].set_xlabel("step")
    axes[1].sharex(axes[0])
    axes[2].sharex(axes[0])
    if m.cv is not None:
        cv = m.cv
        axis, lam = cv.axis()
        x = np.array(log_positions(lam), dtype=np.float64)
        ax = axes[3]
        ax.errorbar(x, cv.mean, yerr=cv.std, color="#1f77b4", marker="o", capsize=3)
        if cv.best is not None:
            ax.plot(x[cv.best], cv.mean[cv.best], marker="*", markersize=16, color="#d62728",
                    linestyle="none", label="chosen")
            ax.legend(loc="best")
        ax.set_xscale("log")
        ax.set_xlabel(axis + zero_note(lam))
        ax.set_ylabel(cv.scoring)
        ax.set_title("cross-validation path (mean ± std over folds)")
    meta = m.meta
    fig.suptitle(
        f"dlogit report: {os.path.basename(m.path)} "
        f"(status {meta.get('status', '?')}, {n} steps)\n{coef_table(m).headline()}"
    )
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)


def write_report(model: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write an HTML (``.html``/``.htm``) or PNG (``.png``) report of ``model``.

    Parameters
    ----------
    model
        A dlogit model file (``.npz``, format version 1 or 2).
    out
        The report to write; its suffix chooses the format.

    Returns
    -------
    Path
        ``out``, written atomically (a temporary file renamed into place).

    Raises
    ------
    ReportError
        Bad input or output (nothing is written).
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".png"):
        raise ReportError(f"unsupported report format {suffix or '(none)'!r}: use .html or .png")
    if out.exists() and out.is_dir():
        raise ReportError(f"output is a directory: {out}")
    if suffix == ".png":
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ReportError("PNG reports need matplotlib (not installed); use --out report.html") from None
    if not out.parent.exists():
        raise ReportError(f"output directory does not exist: {out.parent}")
    m = load_model_file(model)
    if suffix == ".png":
        atomic_write(out, lambda tmp: _png_report(m, Path(tmp)))
    else:
        page = _html_report(m)

        def write(tmp: str) -> None:
            Path(tmp).write_text(page, encoding="utf-8")

        atomic_write(out, write)
    return out


__all__ = [
    "CoefTable", "CvPath", "ModelFile", "ReportError", "coef_table", "load_model_file",
    "write_report",
]
