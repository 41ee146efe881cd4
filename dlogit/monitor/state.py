"""Per-run monitoring state built from dlogit progress events.

Pure Python (no Dask, no Bokeh): the scheduler plugin feeds events in, the
dashboard panel and the Prometheus collector read snapshots out.  Every public
method takes the lock, so a reader on another thread (e.g. a separately
started ``prometheus_client`` HTTP server) sees consistent values.

Bounds: at most ``max_runs`` runs are kept (finished runs are evicted first,
oldest first) and each run keeps at most ``max_points`` points per series;
beyond that a series halves its resolution (keeps every other point and
doubles its sampling stride), so a run of any length costs O(max_points).
"""

from __future__ import annotations

import math
import threading
import time as _time
from array import array
from collections import OrderedDict, deque
from typing import Any

TOPIC = "dlogit"
MAX_RUNS = 20
MAX_POINTS = 20_000
#: a "running" run without any event for this long is reported as "stale"
STALE_AFTER = 600.0
#: number of recent step times averaged for the ETA
ETA_WINDOW = 100

FINISHED = ("converged", "max_iter", "failed")


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


class Series:
    """Append-only float64 columns with stride-doubling downsampling.

    Columns are ``array("d")`` (8 bytes a value), so a full run of
    ``max_points`` rows costs ``32 * max_points`` bytes for four columns.

    ``generation`` changes whenever already-stored points are rewritten
    (downsampling), so a consumer that streams increments knows it must
    resend everything.  ``last`` always holds the most recent row, even when
    the stride dropped it from the stored columns.
    """

    def __init__(self, columns: tuple[str, ...], max_points: int = MAX_POINTS):
        if max_points < 2:
            raise ValueError("max_points must be >= 2")
        self.columns = columns
        self.max_points = max_points
        self.data: dict[str, array] = {c: array("d") for c in columns}
        self.stride = 1
        self.seen = 0
        self.generation = 0
        self.last: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.data[self.columns[0]])

    def append(self, row: dict[str, Any]) -> None:
        self.last = row
        keep = self.seen % self.stride == 0
        self.seen += 1
        if not keep:
            return
        for c in self.columns:
            self.data[c].append(row[c])
        if len(self) > self.max_points:
            for c in self.columns:
                self.data[c] = self.data[c][::2]
            self.stride *= 2
            self.generation += 1

    def tail_pending(self) -> bool:
        """True when ``last`` is not the last stored point."""
        return self.last is not None and (self.seen - 1) % self.stride != 0

    def snapshot(self, start: int = 0) -> dict[str, array]:
        """Copies of the columns from row ``start`` on."""
        return {c: v[start:] for c, v in self.data.items()}


class RunState:
    STEP_COLUMNS = ("step", "loss", "grad_norm", "step_ms")
    RATE_COLUMNS = ("step", "time", "rows_per_s", "gb_per_s")

    def __init__(self, run: str, now: float, max_points: int = MAX_POINTS):
        self.run = run
        self.params: dict[str, Any] = {}
        self.status = "running"
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.last_update = now
        self.received = now  # local clock of the last event, for staleness
        self.steps = Series(self.STEP_COLUMNS, max_points)
        self.rates = Series(self.RATE_COLUMNS, max_points)
        self.last_step: int | None = None
        self.loss = math.nan
        self.grad_norm = math.nan
        self.step_seconds = math.nan
        self.rows_per_s = math.nan
        self.bytes_per_s = math.nan
        self.worker_seconds: dict[str, float] = {}
        self.recent = deque(maxlen=ETA_WINDOW)
        self.n_iter: int | None = None
        self.seconds: float | None = None
        self.message = ""
        self.version = 0  # bumped on every change; cheap "did anything move" test

    # ------------------------------------------------------------------ derived
    @property
    def max_iter(self) -> int | None:
        m = self.params.get("max_iter")
        try:
            return int(m) if m is not None else None
        except (TypeError, ValueError):
            return None

    def mean_step_seconds(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else math.nan

    def eta_seconds(self) -> float:
        """Remaining steps x recent mean step time (0 once finished, nan if unknown)."""
        if self.status in FINISHED:
            return 0.0
        m = self.max_iter
        mean = self.mean_step_seconds()
        if m is None or math.isnan(mean):
            return math.nan
        done = self.last_step if self.last_step is not None else 0
        return max(m - done, 0) * mean

    def display_status(self, now: float | None = None) -> str:
        now = _time.time() if now is None else now
        if self.status == "running" and now - self.received > STALE_AFTER:
            return "stale"
        return self.status

    def summary(self, now: float | None = None) -> dict[str, Any]:
        now = _time.time() if now is None else now
        if self.end_time is not None and self.start_time is not None:
            elapsed = self.end_time - self.start_time
        elif self.start_time is not None:
            elapsed = max(self.last_update - self.start_time, 0.0)
        else:
            elapsed = math.nan
        return {
            "run": self.run,
            "status": self.display_status(now),
            "step": self.last_step,
            "max_iter": self.max_iter,
            "loss": self.loss,
            "grad_norm": self.grad_norm,
            "step_seconds": self.step_seconds,
            "mean_step_seconds": self.mean_step_seconds(),
            "rows_per_s": self.rows_per_s,
            "bytes_per_s": self.bytes_per_s,
            "eta_seconds": self.eta_seconds(),
            "elapsed_seconds": elapsed,
            "n_iter": self.n_iter,
            "message": self.message,
            "worker_seconds": dict(self.worker_seconds),
            "params": dict(self.params),
            "points": len(self.steps),
            "steps_seen": self.steps.seen,
        }


class MonitorState:
    """All runs seen by one scheduler."""

    def __init__(self, max_runs: int = MAX_RUNS, max_points: int = MAX_POINTS):
        self.max_runs = max_runs
        self.max_points = max_points
        self.runs: OrderedDict[str, RunState] = OrderedDict()
        self.steps_total = 0  # monotonic over the scheduler's lifetime
        self.events_total = 0
        self.bad_events = 0
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ ingest
    def ingest(self, msg: Any, now: float | None = None) -> bool:
        """Apply one event; returns False (and counts it) if it is malformed.

        Never raises: a bad event from one client must not break the monitor.
        """
        now = _time.time() if now is None else now
        with self.lock:
            try:
                ok = self._ingest(msg, now)
            except Exception:  # noqa: BLE001 - a malformed event must never raise
                ok = False
            self.events_total += 1
            if not ok:
                self.bad_events += 1
            return ok

    def _run(self, run: str, now: float) -> RunState:
        rs = self.runs.get(run)
        if rs is None:
            rs = RunState(run, now, self.max_points)
            self.runs[run] = rs
            self._evict()
        return rs

    def _evict(self) -> None:
        while len(self.runs) > self.max_runs:
            victim = next(
                (k for k, r in self.runs.items() if r.status in FINISHED),
                next(iter(self.runs)),
            )
            del self.runs[victim]

    def _ingest(self, msg: Any, now: float) -> bool:
        if not isinstance(msg, dict):
            return False
        kind = msg.get("type")
        run = msg.get("run")
        if kind not in ("start", "progress", "end") or not isinstance(run, str):
            return False
        t = _float(msg.get("time", now))
        if math.isnan(t):
            t = now
        rs = self._run(run, now)
        rs.received = now
        rs.last_update = t
        rs.version += 1
        if kind == "start":
            params = msg.get("params")
            rs.params = dict(params) if isinstance(params, dict) else {}
            rs.start_time = t
            rs.status = "running"
            return True
        if kind == "end":
            status = msg.get("status")
            rs.status = status if status in FINISHED else "failed"
            rs.end_time = t
            if "n_iter" in msg:
                try:
                    rs.n_iter = int(msg["n_iter"])
                except (TypeError, ValueError):
                    pass
            if "loss" in msg:
                rs.loss = _float(msg["loss"])
            if "grad_norm" in msg:
                rs.grad_norm = _float(msg["grad_norm"])
            if "seconds" in msg:
                rs.seconds = _float(msg["seconds"])
            rs.message = str(msg.get("message", ""))
            return True
        # progress
        steps = msg.get("step") or []
        losses = msg.get("loss") or []
        gnorms = msg.get("grad_norm") or []
        secs = msg.get("step_seconds") or []
        if not all(isinstance(v, (list, tuple)) for v in (steps, losses, gnorms, secs)):
            return False
        n = min(len(steps), len(losses), len(gnorms), len(secs))
        new = 0
        for i in range(n):
            step = int(steps[i])
            if rs.last_step is not None and step <= rs.last_step:
                continue  # replayed / duplicate step
            loss, gn, s = _float(losses[i]), _float(gnorms[i]), _float(secs[i])
            rs.steps.append(
                {"step": step, "loss": loss, "grad_norm": gn, "step_ms": s * 1e3}
            )
            rs.last_step = step
            rs.loss, rs.grad_norm, rs.step_seconds = loss, gn, s
            if not math.isnan(s):
                rs.recent.append(s)
            new += 1
        self.steps_total += new
        if "rows_per_s" in msg:
            rs.rows_per_s = _float(msg["rows_per_s"])
        if "bytes_per_s" in msg:
            rs.bytes_per_s = _float(msg["bytes_per_s"])
        if new and ("rows_per_s" in msg or "bytes_per_s" in msg):
            rs.rates.append(
                {
                    "step": rs.last_step,
                    "time": t,
                    "rows_per_s": rs.rows_per_s,
                    "gb_per_s": rs.bytes_per_s / 1e9,
                }
            )
        ws = msg.get("worker_seconds")
        if isinstance(ws, dict) and ws:
            rs.worker_seconds = {str(k): _float(v) for k, v in ws.items()}
        return True

    # ------------------------------------------------------------------ read
    def run_ids(self) -> list[str]:
        """Run ids, most recently updated first."""
        with self.lock:
            return [
                r.run
                for r in sorted(
                    self.runs.values(), key=lambda r: r.received, reverse=True
                )
            ]

    def latest(self) -> str | None:
        ids = self.run_ids()
        return ids[0] if ids else None

    def get(self, run: str) -> RunState | None:
        return self.runs.get(run)

    def active_runs(self, now: float | None = None) -> int:
        now = _time.time() if now is None else now
        with self.lock:
            return sum(1 for r in self.runs.values() if r.display_status(now) == "running")

    def summaries(self, now: float | None = None) -> list[dict[str, Any]]:
        now = _time.time() if now is None else now
        with self.lock:
            return [r.summary(now) for r in self.runs.values()]
