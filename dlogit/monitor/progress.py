"""Terminal progress for a fit or a regularization path: a callable consuming dlogit event dicts."""

from __future__ import annotations

import math
import sys
from collections import deque
from typing import IO, Any

from dlogit.events import StreamStep
from dlogit.monitor.state import ETA_WINDOW, eta_seconds, stream_text


def format_dashboard_url(dashboard_link: str) -> str:
    """The ``/dlogit`` panel URL for a Dask dashboard link.

    ``http://host:8787/status`` -> ``http://host:8787/dlogit``; a link with a
    prefix (``http://host/dask/status``) keeps it.
    """
    base = (dashboard_link or "").strip().split("?", 1)[0].rstrip("/")
    return base.removesuffix("/status") + "/dlogit"


def _num(x: Any, spec: str) -> str:
    """``format(float(x), spec)``, or ``str(x)`` for what is not a number (never raises)."""
    try:
        return format(float(x), spec)
    except (TypeError, ValueError):
        return str(x)


#: statuses after which the bar is drawn full (the fit reached its end)
_COMPLETE = ("converged", "max_iter", "stalled", "diverged")


def _eta_text(seconds: float) -> str:
    if seconds is None or math.isnan(seconds) or math.isinf(seconds):
        return "-:--:--"
    s = round(max(seconds, 0.0))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}"



def _loss(x: float) -> str:
    """A loss for the terminal: six decimals in the usual range, six significant digits outside it
    (a diverged 4e196 is not printed with 200 digits)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "-"
    if math.isfinite(x) and 1e-4 <= abs(x) < 1e6 or x == 0.0:
        return f"{x:.6f}"
    return f"{x:.6g}"


class TerminalProgress:
    """Show fit progress: a ``rich`` bar on a TTY, plain lines otherwise.

    Use as the estimator's ``callback`` (it is called with every event dict
    of the ``dlogit`` schema).  Plain mode prints
    ``step N  loss X  grad_norm Y  step_ms Z`` for every step that is a
    multiple of ``period`` and one line at the start and at the end; a TTY
    gets the bar and the ``end`` line.  An ``end`` whose status is
    ``interrupted`` (or ``failed``) leaves the bar where the fit stopped and
    prints its ``end`` line like any other.

    ``path`` events (a regularization path) print one ``path`` line per point
    as it completes, and a ``path done`` line with the chosen point.

    Parameters
    ----------
    max_iter
        Steps of a fit (the bar's total); taken from each ``start`` event when None.
    period
        Plain mode prints every step that is a multiple of this.
    quiet
        Print nothing.
    stream
        Where to print (default ``sys.stdout``); a TTY gets the ``rich`` bar.
    """

    def __init__(
        self,
        max_iter: int | None,
        period: int = 1000,
        quiet: bool = False,
        stream: IO[str] | None = None,
    ):
        if period < 1:
            raise ValueError("period must be >= 1")
        self.max_iter = max_iter
        self._max_iter_from_events = max_iter is None
        self.period = int(period)
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stdout
        self._recent: deque[float] = deque(maxlen=ETA_WINDOW)
        self._step: int | None = None
        self._loss = math.nan
        self._progress: Any = None
        self._task: Any = None
        self._closed = False
        #: per path id: indices of the points already printed, and whether "done" was printed
        self._path_points: dict[str, set[int]] = {}
        self._path_done: set[str] = set()
        isatty = getattr(self.stream, "isatty", None)
        try:
            self.tty = bool(isatty and isatty())
        except (OSError, ValueError):
            self.tty = False

    # ------------------------------------------------------------------ api
    def __call__(self, event: dict[str, Any]) -> None:
        if self.quiet or self._closed or not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "start":
            self._on_start(event)
        elif kind == "progress":
            self._on_progress(event)
        elif kind == "end":
            self._on_end(event)
        elif kind == "path":
            self._on_path(event)

    def close(self) -> None:
        """Stop the bar (where it is) and ignore any later event; safe to call twice."""
        progress, self._progress = self._progress, None
        self._closed = True
        if progress is not None:
            progress.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- handlers
    def _eta(self) -> float:
        return eta_seconds(self.max_iter, self._step, self._recent)

    def _print(self, line: str) -> None:
        if self._progress is not None:  # above a live bar, through its console
            self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        print(line, file=self.stream, flush=True)

    def _on_start(self, ev: dict[str, Any]) -> None:
        params = ev.get("params") or {}
        if self._max_iter_from_events and params.get("max_iter") is not None:
            self.max_iter = int(params["max_iter"])
        # a new fit (e.g. the next one of a path): its own step count and ETA
        self._step, self._loss = None, math.nan
        self._recent.clear()
        if self.tty:
            self._start_rich()
            return
        parts = [f"start  run {ev.get('run', '?')}"]
        for key in ("solver", "mode", "family", "n_classes", "n_rows", "n_features", "n_chunks",
                    "l2", "l1"):
            if key in params:
                parts.append(f"{key} {params[key]}")
        if params.get("weighted"):
            parts.append("weighted")
        if params.get("sparse"):
            parts.append("sparse")
        if isinstance(params.get("workers"), (list, tuple)):
            parts.append(f"workers {len(params['workers'])}")
        if params.get("resumed_from") is not None:
            parts.append(f"resumed_from step {params['resumed_from']}")
        cv = params.get("cv")
        if isinstance(cv, dict):
            index, of = cv.get("index"), cv.get("of")
            if isinstance(index, int) and isinstance(of, int):
                parts.append(f"cv {index + 1}/{of}")
            if cv.get("folds") is not None:
                parts.append(f"folds {cv['folds']}")
        self._print("  ".join(parts))

    def _on_progress(self, ev: dict[str, Any]) -> None:
        steps = ev.get("step") or []
        losses = ev.get("loss") or []
        gnorms = ev.get("grad_norm") or []
        secs = ev.get("step_seconds") or []
        n = min(len(steps), len(losses), len(gnorms), len(secs))
        stream = StreamStep.from_event(ev.get("stream"))  # shown when chunks are read at every evaluation
        if stream is not None and not stream.chunks_read:
            stream = None
        for i in range(n):
            step, loss, gn, s = int(steps[i]), float(losses[i]), float(gnorms[i]), float(secs[i])
            self._step, self._loss = step, loss
            if not math.isnan(s):
                self._recent.append(s)
            if not self.tty and step % self.period == 0:
                self._print(
                    f"step {step}  loss {_loss(loss)}  grad_norm {gn:.6g}  step_ms {s * 1e3:.3f}"
                    + (f"  {stream_text(stream)}" if stream is not None else "")
                )
        if self.tty and n:
            self._update_rich(secs[n - 1], stream=stream)

    def _on_end(self, ev: dict[str, Any]) -> None:
        status = ev.get("status", "?")
        if self.tty and self._progress is not None:
            complete = status in _COMPLETE
            if complete and ev.get("n_iter") is not None:
                try:
                    self._step = int(ev["n_iter"])
                except (TypeError, ValueError):
                    pass
            self._update_rich(None, done=complete)
            progress, self._progress = self._progress, None
            progress.stop()
        loss = ev.get("loss")
        gn = ev.get("grad_norm")
        secs = ev.get("seconds")
        parts = [f"end  status {status}", f"n_iter {ev.get('n_iter', '?')}"]
        if loss is not None:
            parts.append(f"loss {_loss(loss)}")
        if gn is not None:
            parts.append(f"grad_norm {_num(gn, '.6g')}")
        if ev.get("n_nonzero") is not None:
            parts.append(f"nonzero {ev['n_nonzero']}")
        if secs is not None:
            parts.append(f"seconds {_num(secs, '.3f')}")
        msg = ev.get("message")
        if msg:
            parts.append(str(msg))
        self._print("  ".join(parts))

    def _on_path(self, ev: dict[str, Any]) -> None:
        path = ev.get("run")
        points = ev.get("points")
        if not isinstance(path, str) or not isinstance(points, (list, tuple)):
            return
        scoring = ev.get("scoring") or "score"
        printed = self._path_points.get(path)
        if printed is None:
            printed = self._path_points[path] = set()
            self._print(f"path  run {path}  scoring {scoring}  folds {ev.get('folds', '?')}")
        for i, p in enumerate(points):
            if i in printed or not isinstance(p, dict):
                continue
            printed.add(i)
            line = (f"path  point {i}  l2 {_num(p.get('l2', 0.0), '.6g')}"
                    f"  l1 {_num(p.get('l1', 0.0), '.6g')}"
                    f"  {scoring} {_num(p.get('mean'), '.6g')} +- {_num(p.get('std'), '.3g')}")
            if p.get("n_iter") is not None:
                line += f"  n_iter {p['n_iter']}"
            if p.get("n_nonzero") is not None:
                line += f"  nonzero {p['n_nonzero']}"
            self._print(line)
        best = ev.get("best")
        if ev.get("done") and path not in self._path_done:
            self._path_done.add(path)
            if isinstance(best, int) and 0 <= best < len(points) and isinstance(points[best], dict):
                b = points[best]
                self._print(f"path done  best point {best}  l2 {_num(b.get('l2', 0.0), '.6g')}"
                            f"  l1 {_num(b.get('l1', 0.0), '.6g')}"
                            f"  {scoring} {_num(b.get('mean'), '.6g')}")
            else:
                self._print("path done  no point chosen")

    # ----------------------------------------------------------------- rich
    def _start_rich(self) -> None:
        if self._progress is not None:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        console = Console(file=self.stream)
        self._progress = Progress(
            TextColumn("[bold]dlogit"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("step {task.fields[step_ms]} ms"),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("{task.fields[stream]}"),
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "fit", total=self.max_iter, loss="-", step_ms="-", eta="-:--:--", stream=""
        )

    def _update_rich(self, last_seconds: Any, done: bool = False, stream: StreamStep | None = None) -> None:
        if self._progress is None:
            self._start_rich()
        step_ms = "-"
        if last_seconds is not None:
            try:
                step_ms = f"{float(last_seconds) * 1e3:.2f}"
            except (TypeError, ValueError):
                pass
        fields: dict[str, Any] = {
            "completed": self._step or 0,
            "loss": "-" if math.isnan(self._loss) else _loss(self._loss),
            "eta": "0:00:00" if done else _eta_text(self._eta()),
        }
        if step_ms != "-":
            fields["step_ms"] = step_ms
        if stream is not None:
            fields["stream"] = stream_text(stream, short=True)
        if done:
            fields["total"] = self._step or 0
        self._progress.update(self._task, **fields)
