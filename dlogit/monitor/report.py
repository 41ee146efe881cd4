"""Training report from a saved dlogit model file.

``write_report(model, out)`` draws the stored history (loss, gradient norm,
step time) into a standalone HTML page with Bokeh's INLINE resources (BokehJS
embedded: the file opens offline), or into a PNG when matplotlib is installed.
Everything is validated before anything is written; failures raise
:class:`ReportError` with a one-line message.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

HISTORY_KEYS = ("history_loss", "history_grad_norm", "history_step_seconds")
REQUIRED_KEYS = ("coef", "intercept", "classes", *HISTORY_KEYS, "meta")


class ReportError(Exception):
    """Bad input for a report (missing file, not a dlogit model, bad output)."""


def load_history(path: str | os.PathLike) -> dict[str, Any]:
    """Read the history arrays and metadata of a dlogit model file."""
    p = Path(path)
    if not p.exists():
        raise ReportError(f"model file not found: {p}")
    if not p.is_file():
        raise ReportError(f"not a file: {p}")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ReportError(f"cannot read {p}: {_short(e)}") from None
    if magic != b"PK\x03\x04":
        raise ReportError(f"not a dlogit model (not an .npz archive): {p}")
    try:
        with np.load(p, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise ReportError(f"not a dlogit model (not an .npz archive): {p}")
            missing = [k for k in REQUIRED_KEYS if k not in npz.files]
            if missing:
                raise ReportError(
                    f"not a dlogit model (missing {', '.join(missing)}): {p}"
                )
            arrays = {k: np.asarray(npz[k]) for k in REQUIRED_KEYS}
    except ReportError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ReportError(f"not a dlogit model ({_short(e)}): {p}") from None
    try:
        meta = json.loads(str(arrays["meta"][()]))
    except (ValueError, TypeError, IndexError) as e:
        raise ReportError(f"not a dlogit model (bad meta: {_short(e)}): {p}") from None
    if not isinstance(meta, dict) or meta.get("format") != "dlogit-model":
        raise ReportError(f"not a dlogit model (meta format is not 'dlogit-model'): {p}")
    hist = {}
    for k in HISTORY_KEYS:
        a = arrays[k]
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.number):
            raise ReportError(f"not a dlogit model ({k} is not a 1-d numeric array): {p}")
        hist[k] = a.astype(np.float64)
    n = {len(v) for v in hist.values()}
    if len(n) != 1:
        raise ReportError(f"not a dlogit model (history arrays differ in length): {p}")
    return {
        "path": str(p),
        "meta": meta,
        "loss": hist["history_loss"],
        "grad_norm": hist["history_grad_norm"],
        "step_seconds": hist["history_step_seconds"],
        "coef": arrays["coef"],
        "intercept": arrays["intercept"],
        "classes": arrays["classes"],
    }


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _meta_rows(h: dict[str, Any]) -> list[tuple[str, str]]:
    meta = h["meta"]
    rows: list[tuple[str, str]] = [("model", h["path"])]
    for key in ("status", "n_iter", "version", "dlogit_version", "created"):
        if key in meta:
            v = meta[key]
            if key == "created" and isinstance(v, (int, float)):
                v = _dt.datetime.fromtimestamp(v, _dt.timezone.utc).isoformat(
                    timespec="seconds"
                )
            rows.append((key, str(v)))
    n = len(h["loss"])
    rows.append(("steps recorded", str(n)))
    if n:
        rows.append(("final loss", f"{h['loss'][-1]:.8g}"))
        rows.append(("final grad norm", f"{h['grad_norm'][-1]:.6g}"))
        st = h["step_seconds"]
        rows.append(("total step time", f"{float(np.nansum(st)):.3f} s"))
        rows.append(("median step time", f"{float(np.nanmedian(st)) * 1e3:.3f} ms"))
    rows.append(("n_features", str(int(np.size(h["coef"])))))
    params = meta.get("params")
    if isinstance(params, dict):
        for k, v in params.items():
            if isinstance(v, (list, tuple)):
                v = ", ".join(map(str, v))
            rows.append((f"params.{k}", str(v)))
    for k, v in meta.items():
        if k not in ("format", "params", "status", "n_iter", "version",
                     "dlogit_version", "created"):
            rows.append((k, v if isinstance(v, str) else json.dumps(v, default=str)))
    return rows


def _html_report(h: dict[str, Any]) -> str:
    from bokeh.embed import file_html
    from bokeh.layouts import column, gridplot
    from bokeh.models import ColumnDataSource, Div, HoverTool
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    n = len(h["loss"])
    steps = np.arange(n, dtype=np.float64)  # step numbers count from 0, as in the events
    src = ColumnDataSource(
        {
            "step": steps,
            "loss": h["loss"],
            "grad_norm": h["grad_norm"],
            "step_ms": h["step_seconds"] * 1e3,
        },
        name="history",
    )
    kw: dict[str, Any] = {"height": 300, "sizing_mode": "stretch_width", "x_axis_label": "step",
                          "tools": "pan,wheel_zoom,box_zoom,reset,save"}

    def curve(title: str, field: str, color: str, y_axis_type: str = "linear"):
        p = figure(title=title, y_axis_type=y_axis_type, **kw)
        p.line("step", field, source=src, line_width=2, color=color)
        p.add_tools(HoverTool(tooltips=[("step", "@step"), (field, f"@{field}")],
                              mode="vline"))
        return p

    positive_gn = bool(n) and bool(np.all(h["grad_norm"][np.isfinite(h["grad_norm"])] > 0))
    positive_loss = bool(n) and bool(np.all(h["loss"][np.isfinite(h["loss"])] > 0))
    figs = [
        curve("Loss", "loss", "#1f77b4"),
        curve("Loss (log)", "loss", "#1f77b4", "log" if positive_loss else "linear"),
        curve("Gradient norm (log)" if positive_gn else "Gradient norm", "grad_norm",
              "#d62728", "log" if positive_gn else "linear"),
        curve("Step time (ms)", "step_ms", "#2ca02c"),
    ]
    table = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td>{html.escape(v)}</td></tr>"
        for k, v in _meta_rows(h)
    )
    title = f"dlogit report: {os.path.basename(h['path'])}"
    header = Div(
        text=f"<h2>{html.escape(title)}</h2><table>{table}</table>",
        sizing_mode="stretch_width",
    )
    body: list[Any] = [header]
    if n:
        body.append(gridplot([[figs[0], figs[1]], [figs[2], figs[3]]],
                             sizing_mode="stretch_width", toolbar_location="right"))
    else:
        body.append(Div(text="<p>No steps recorded.</p>"))
    return file_html(column(*body, sizing_mode="stretch_width"), INLINE, title)


def _png_report(h: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(h["loss"])
    steps = np.arange(n)
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(steps, h["loss"], color="#1f77b4")
    axes[0].set_ylabel("loss")
    axes[1].plot(steps, h["grad_norm"], color="#d62728")
    axes[1].set_ylabel("gradient norm")
    if n and np.all(h["grad_norm"][np.isfinite(h["grad_norm"])] > 0):
        axes[1].set_yscale("log")
    axes[2].plot(steps, h["step_seconds"] * 1e3, color="#2ca02c")
    axes[2].set_ylabel("step time (ms)")
    axes[2].set_xlabel("step")
    meta = h["meta"]
    fig.suptitle(
        f"dlogit report: {os.path.basename(h['path'])} "
        f"(status {meta.get('status', '?')}, {n} steps)"
    )
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)


def _atomic_write(out: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".dlogit-report-", suffix=out.suffix,
                               dir=str(out.parent))
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_report(model: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write an HTML (``.html``/``.htm``) or PNG (``.png``) report of ``model``."""
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
    h = load_history(model)
    if suffix == ".png":
        _atomic_write(out, lambda tmp: _png_report(h, tmp))
    else:
        page = _html_report(h)
        _atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out
