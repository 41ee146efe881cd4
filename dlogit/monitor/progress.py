"""Terminal progress for a fit: a callable consuming dlogit event dicts."""

from __future__ import annotations

import math
import sys
from collections import deque
from typing import IO, Any

from dlogit.monitor.state import ETA_WINDOW


def format_dashboard_url(dashboard_link: str) -> str:
    """The ``/dlogit`` panel URL for a Dask dashboard link.

    ``http://host:8787/status`` -> ``http://host:8787/dlogit``; a link with a
    prefix (``http://host/dask/status``) keeps it.
    """
    base = (dashboard_link or "").strip().split("?", 1)[0].rstrip("/")
    return base.removesuffix("/status") + "/dlogit"


def _eta_text(seconds: float) -> str:
    if seconds is None or math.isnan(seconds) or math.isinf(seconds):
        return "-:--:--"
    s = round(max(seconds, 0.0))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}"


class TerminalProgress:
    """Show fit progress: a ``rich`` bar on a TTY, plain lines otherwise.

    Use as the estimator's ``callback`` (it is called with every event dict
    of the ``dlogit`` schema).  Plain mode prints
    ``step N  loss X  grad_norm Y  step_ms Z`` for every step that is a
    multiple of ``period`` and one line at the start and at the end.
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
        self.period = int(period)
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stdout
        self._recent: deque[float] = deque(maxlen=ETA_WINDOW)
        self._step: int | None = None
        self._loss = math.nan
        self._progress: Any = None
        self._task: Any = None
        self._closed = False
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

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- handlers
    def _eta(self) -> float:
        if self.max_iter is None or not self._recent:
            return math.nan
        done = self._step if self._step is not None else 0
        return max(self.max_iter - done, 0) * (sum(self._recent) / len(self._recent))

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _on_start(self, ev: dict[str, Any]) -> None:
        params = ev.get("params") or {}
        if self.max_iter is None and params.get("max_iter") is not None:
            self.max_iter = int(params["max_iter"])
        if self.tty:
            self._start_rich()
            return
        parts = [f"start  run {ev.get('run', '?')}"]
        for key in ("solver", "mode", "n_rows", "n_features", "n_chunks"):
            if key in params:
                parts.append(f"{key} {params[key]}")
        if isinstance(params.get("workers"), (list, tuple)):
            parts.append(f"workers {len(params['workers'])}")
        self._print("  ".join(parts))

    def _on_progress(self, ev: dict[str, Any]) -> None:
        steps = ev.get("step") or []
        losses = ev.get("loss") or []
        gnorms = ev.get("grad_norm") or []
        secs = ev.get("step_seconds") or []
        n = min(len(steps), len(losses), len(gnorms), len(secs))
        for i in range(n):
            step, loss, gn, s = int(steps[i]), float(losses[i]), float(gnorms[i]), float(secs[i])
            self._step, self._loss = step, loss
            if not math.isnan(s):
                self._recent.append(s)
            if not self.tty and step % self.period == 0:
                self._print(
                    f"step {step}  loss {loss:.6f}  grad_norm {gn:.6g}  step_ms {s * 1e3:.3f}"
                )
        if self.tty and n:
            self._update_rich(secs[n - 1])

    def _on_end(self, ev: dict[str, Any]) -> None:
        if self.tty and self._progress is not None:
            if ev.get("n_iter") is not None:
                self._step = int(ev["n_iter"])
            self._update_rich(None, done=True)
            self._progress.stop()
            self._progress = None
        loss = ev.get("loss")
        gn = ev.get("grad_norm")
        secs = ev.get("seconds")
        parts = [f"end  status {ev.get('status', '?')}", f"n_iter {ev.get('n_iter', '?')}"]
        if loss is not None:
            parts.append(f"loss {float(loss):.6f}")
        if gn is not None:
            parts.append(f"grad_norm {float(gn):.6g}")
        if secs is not None:
            parts.append(f"seconds {float(secs):.3f}")
        msg = ev.get("message")
        if msg:
            parts.append(str(msg))
        self._print("  ".join(parts))

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
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "fit", total=self.max_iter, loss="-", step_ms="-", eta="-:--:--"
        )

    def _update_rich(self, last_seconds: Any, done: bool = False) -> None:
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
            "loss": "-" if math.isnan(self._loss) else f"{self._loss:.6f}",
            "eta": "0:00:00" if done else _eta_text(self._eta()),
        }
        if step_ms != "-":
            fields["step_ms"] = step_ms
        if done:
            fields["total"] = self._step or 0
        self._progress.update(self._task, **fields)
