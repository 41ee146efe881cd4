"""Per-run and per-path monitoring state built from dlogit progress events.

Pure Python (no Dask, no Bokeh): the scheduler plugin feeds events in, the
dashboard panel and the Prometheus collector read snapshots out.  Every public
method takes the lock, so a reader on another thread (e.g. a separately
started ``prometheus_client`` HTTP server) sees consistent values.

Bounds: at most ``max_runs`` runs are kept (finished runs are evicted first,
oldest first) and each run keeps at most ``max_points`` points per series;
beyond that a series halves its resolution (keeps every other point and
doubles its sampling stride), so a run of any length costs O(max_points).
At most ``max_paths`` regularization paths are kept (finished paths are
evicted first, oldest first), each with at most :data:`MAX_PATH_POINTS`
points of at most :data:`MAX_FOLDS` fold scores.
"""

from __future__ import annotations

import math
import threading
import time as _time
from array import array
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dlogit.events import StreamStep

MAX_RUNS = 20
MAX_POINTS = 20_000
#: regularization paths kept (finished ones are evicted first)
MAX_PATHS = 20
#: points kept per path, and fold scores kept per point
MAX_PATH_POINTS = 1_000
MAX_FOLDS = 100
#: class labels / per-class counts kept per run (the events send at most 100 labels)
MAX_CLASSES = 100
MAX_CLASS_COUNTS = 100_000
#: a "running" run without any event for this long is reported as "stale"
STALE_AFTER = 600.0
#: number of recent step times averaged for the ETA
ETA_WINDOW = 100

#: every status an ``end`` event may carry; each is kept as sent (anything else is "failed")
FINISHED = ("converged", "max_iter", "stalled", "diverged", "failed", "interrupted")
#: every status a run can be shown with
STATUSES = ("running", "stale", *FINISHED)


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _int_or_none(x: Any) -> int | None:
    """``int(x)`` for ints and integral floats; None for None, bools and anything else."""
    if x is None or isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f) or f != int(f):
        return None
    return int(f)


def _bool(x: Any) -> bool:
    """True for ``True`` and 1 (NumPy booleans too); False for anything else."""
    if x is True:
        return True
    if isinstance(x, str):
        return False
    try:
        return bool(x == 1)
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class CvPoint:
    """``start.params["cv"]``: the run is one fit of a regularization path.

    ``index`` and ``of`` are passed through as sent (``index`` counts from 0).
    """

    folds: int | None
    index: int | None
    of: int | None
    l2: float
    l1: float

    @classmethod
    def from_event(cls, cv: Any) -> CvPoint | None:
        if not isinstance(cv, dict):
            return None
        return cls(
            folds=_int_or_none(cv.get("folds")),
            index=_int_or_none(cv.get("index")),
            of=_int_or_none(cv.get("of")),
            l2=_float(cv.get("l2", 0.0)),
            l1=_float(cv.get("l1", 0.0)),
        )


@dataclass(frozen=True)
class ModelInfo:
    """What a run's ``start`` event says about the model being fitted.

    Parsed leniently from ``start.params`` (a field that is missing or of the
    wrong type takes its default): events of older dlogit versions carry none
    of the multinomial/L1 keys and describe a binomial, L2-only fit.
    """

    family: str = "binomial"
    #: K, the number of classes (2 for a binomial fit that does not say)
    n_classes: int = 2
    #: the class labels as text (at most :data:`MAX_CLASSES`)
    classes: tuple[str, ...] = ()
    #: rows per class, unweighted, in the order of ``classes``
    class_counts: tuple[int, ...] = ()
    l1: float = 0.0
    l2: float = math.nan
    weighted: bool = False
    sparse: bool = False
    solver: str = ""
    n_params: int | None = None
    resumed_from: int | None = None
    #: id of the regularization path this run belongs to (``params["path"]``)
    path: str | None = None
    cv: CvPoint | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ModelInfo:
        family = params.get("family")
        family = family if isinstance(family, str) and family else "binomial"
        k = _int_or_none(params.get("n_classes"))
        classes = params.get("classes")
        classes = (
            tuple(str(c) for c in classes[:MAX_CLASSES])
            if isinstance(classes, (list, tuple)) else ()
        )
        counts = params.get("class_counts")
        counts = (
            tuple(c if c is not None else 0
                  for c in (_int_or_none(v) for v in counts[:MAX_CLASS_COUNTS]))
            if isinstance(counts, (list, tuple)) else ()
        )
        if k is None or k < 1:
            k = len(counts) if family == "multinomial" and counts else 2
        path = params.get("path")
        solver = params.get("solver")
        return cls(
            family=family,
            n_classes=k,
            classes=classes,
            class_counts=counts,
            l1=_float(params.get("l1", 0.0)),
            l2=_float(params.get("l2")),
            weighted=_bool(params.get("weighted", False)),
            sparse=_bool(params.get("sparse", False)),
            solver=solver if isinstance(solver, str) else "",
            n_params=_int_or_none(params.get("n_params")),
            resumed_from=_int_or_none(params.get("resumed_from")),
            path=path if isinstance(path, str) and path else None,
            cv=CvPoint.from_event(params.get("cv")),
        )

    def class_label(self, i: int) -> str:
        """The label of class ``i`` (``#i`` past the labels the event carried)."""
        return self.classes[i] if i < len(self.classes) else f"#{i}"

    def top_classes(self, n: int = 20) -> list[tuple[str, int]]:
        """The ``n`` classes with the most rows, most first (ties: the earlier class first)."""
        order = sorted(range(len(self.class_counts)), key=lambda i: (-self.class_counts[i], i))
        return [(self.class_label(i), self.class_counts[i]) for i in order[:n]]


@dataclass(frozen=True)
class PathPoint:
    """One point of a regularization path: a penalty and its cross-validated score."""

    l2: float
    l1: float
    mean: float
    std: float
    fold_scores: tuple[float, ...] = ()
    n_iter: int | None = None
    n_nonzero: int | None = None

    @classmethod
    def from_event(cls, p: Any) -> PathPoint:
        if not isinstance(p, dict):
            raise TypeError("a path point is not a dict")
        scores = p.get("fold_scores") or []
        if not isinstance(scores, (list, tuple)):
            raise TypeError("fold_scores is not a list")
        return cls(
            l2=_float(p.get("l2", 0.0)),
            l1=_float(p.get("l1", 0.0)),
            mean=_float(p.get("mean")),
            std=_float(p.get("std")),
            fold_scores=tuple(_float(v) for v in scores[:MAX_FOLDS]),
            n_iter=_int_or_none(p.get("n_iter")),
            n_nonzero=_int_or_none(p.get("n_nonzero")),
        )


def penalty_axis(l2: Sequence[float], l1: Sequence[float]) -> tuple[str, list[float]]:
    """Which penalty a path varies, and its value per point.

    ``("l2", l2)`` when the L2 strengths differ (or neither does), ``("l1", l1)``
    when only the L1 strengths differ, ``("l1 + l2", l1 + l2)`` when both do.
    """
    l2 = [float(v) for v in l2]
    l1 = [float(v) for v in l1]
    vary2 = len(set(l2)) > 1
    vary1 = len(set(l1)) > 1
    if vary1 and vary2:
        return "l1 + l2", [a + b for a, b in zip(l1, l2)]
    if vary1:
        return "l1", l1
    return "l2", l2


def log_positions(values: Sequence[float]) -> list[float]:
    """Positions for ``values`` on a log axis: a value <= 0 (or nan) goes a decade below the
    smallest positive one (1e-12 when there is none), so an unregularized point is drawn too."""
    pos = [v for v in values if v > 0 and math.isfinite(v)]
    floor = min(pos) / 10 if pos else 1e-12
    return [v if v > 0 and math.isfinite(v) else floor for v in values]


def zero_note(values: Sequence[float]) -> str:
    """The axis-label note for :func:`log_positions`: where a penalty of 0 was drawn ("" if none)."""
    if all(v > 0 and math.isfinite(v) for v in values):
        return ""
    return f" (0 drawn at {log_positions([0.0, *values])[0]:.0e})"


class PathState:
    """One regularization path: its points as last sent, and the fits that belong to it."""

    def __init__(self, path: str, now: float):
        self.path = path
        self.scoring = ""
        self.folds: int | None = None
        self.points: tuple[PathPoint, ...] = ()
        self.best: int | None = None
        self.done = False
        self.first_seen = now
        self.last_update = now
        self.received = now
        self.fits_started = 0
        self.fits_by_status: Counter[str] = Counter()
        self.version = 0

    @property
    def fits_finished(self) -> int:
        return sum(self.fits_by_status.values())

    @property
    def best_point(self) -> PathPoint | None:
        b = self.best
        return self.points[b] if b is not None and 0 <= b < len(self.points) else None

    def axis(self) -> tuple[str, list[float]]:
        """See :func:`penalty_axis`."""
        return penalty_axis([p.l2 for p in self.points], [p.l1 for p in self.points])

    def summary(self) -> dict[str, Any]:
        best = self.best_point
        return {
            "path": self.path,
            "scoring": self.scoring,
            "folds": self.folds,
            "n_points": len(self.points),
            "best": self.best if best is not None else None,
            "best_score": best.mean if best is not None else math.nan,
            "best_l2": best.l2 if best is not None else math.nan,
            "best_l1": best.l1 if best is not None else math.nan,
            "done": self.done,
            "fits_started": self.fits_started,
            "fits_finished": self.fits_finished,
            "fits_by_status": dict(self.fits_by_status),
        }


def eta_seconds(max_iter: int | None, done: int | None, recent: Sequence[float]) -> float:
    """The ETA of a fit (the one formula the panel, the metrics and the terminal use): the steps left to
    ``max_iter`` after step ``done`` times the mean of the ``recent`` step times (nan when unknown)."""
    if max_iter is None or not recent:
        return math.nan
    return max(max_iter - (done if done is not None else 0), 0) * (sum(recent) / len(recent))


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
    """One fit: its parameters, per-step series, last figures and outcome."""

    STEP_COLUMNS = ("step", "loss", "grad_norm", "step_ms")
    RATE_COLUMNS = ("step", "time", "rows_per_s", "gb_per_s")

    def __init__(self, run: str, now: float, max_points: int = MAX_POINTS):
        self.run = run
        self.params: dict[str, Any] = {}
        self.model = ModelInfo()
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
        #: a fit reading its chunks from their sources: the last progress event's reads per evaluation
        self.stream: StreamStep | None = None
        self.recent: deque[float] = deque(maxlen=ETA_WINDOW)
        self.n_iter: int | None = None
        self.seconds: float | None = None
        self.message = ""
        #: nonzero coefficients (intercepts excluded), from the ``end`` event
        self.n_nonzero: int | None = None
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
        return eta_seconds(self.max_iter, self.last_step, self.recent)

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
        m = self.model
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
            "stream": self.stream,
            "params": dict(self.params),
            "points": len(self.steps),
            "steps_seen": self.steps.seen,
            "family": m.family,
            "n_classes": m.n_classes,
            "classes": list(m.classes),
            "class_counts": list(m.class_counts),
            "l1": m.l1,
            "l2": m.l2,
            "weighted": m.weighted,
            "sparse": m.sparse,
            "n_params": m.n_params,
            "resumed_from": m.resumed_from,
            "path": m.path,
            "cv": asdict(m.cv) if m.cv is not None else None,
            "n_nonzero": self.n_nonzero,
        }


class MonitorState:
    """All runs seen by one scheduler."""

    def __init__(self, max_runs: int = MAX_RUNS, max_points: int = MAX_POINTS,
                 max_paths: int = MAX_PATHS):
        self.max_runs = max_runs
        self.max_points = max_points
        self.max_paths = max_paths
        self.runs: OrderedDict[str, RunState] = OrderedDict()
        self.paths: OrderedDict[str, PathState] = OrderedDict()
        self.steps_total = 0  # monotonic over the scheduler's lifetime
        #: runs that ended, per status (monotonic, like ``steps_total``)
        self.finished_total: Counter[str] = Counter()
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

    def _path(self, path: str, now: float) -> PathState:
        ps = self.paths.get(path)
        if ps is None:
            ps = PathState(path, now)
            self.paths[path] = ps
            while len(self.paths) > self.max_paths:
                victim = next(
                    (k for k, p in self.paths.items() if p.done and k != path),
                    next(k for k in self.paths if k != path),
                )
                del self.paths[victim]
        return ps

    def _ingest_path(self, msg: dict[str, Any], path: str, t: float, now: float) -> bool:
        points = msg.get("points")
        if not isinstance(points, (list, tuple)):
            return False
        try:
            parsed = tuple(PathPoint.from_event(p) for p in points[:MAX_PATH_POINTS])
        except TypeError:
            return False
        ps = self._path(path, now)
        ps.points = parsed
        scoring = msg.get("scoring")
        ps.scoring = scoring if isinstance(scoring, str) else ""
        ps.folds = _int_or_none(msg.get("folds"))
        ps.best = _int_or_none(msg.get("best"))
        ps.done = _bool(msg.get("done", False))
        ps.last_update = t
        ps.received = now
        ps.version += 1
        return True

    def _ingest(self, msg: Any, now: float) -> bool:
        if not isinstance(msg, dict):
            return False
        kind = msg.get("type")
        run = msg.get("run")
        if kind not in ("start", "progress", "end", "path") or not isinstance(run, str):
            return False
        t = _float(msg.get("time", now))
        if math.isnan(t):
            t = now
        if kind == "path":
            return self._ingest_path(msg, run, t, now)
        rs = self._run(run, now)
        rs.received = now
        rs.last_update = t
        rs.version += 1
        if kind == "start":
            params = msg.get("params")
            rs.params = dict(params) if isinstance(params, dict) else {}
            first_start = rs.start_time is None
            rs.model = ModelInfo.from_params(rs.params)
            rs.start_time = t
            rs.status = "running"
            if rs.model.path is not None:
                ps = self._path(rs.model.path, now)
                ps.received = now
                ps.version += 1
                if first_start:
                    ps.fits_started += 1
            return True
        if kind == "end":
            status = msg.get("status")
            status = status if status in FINISHED else "failed"
            if rs.status not in FINISHED:  # a replayed end is not counted twice
                self.finished_total[status] += 1
                ended = self.paths.get(rs.model.path) if rs.model.path is not None else None
                if ended is not None:
                    ended.fits_by_status[status] += 1
                    ended.version += 1
            rs.status = status
            rs.end_time = t
            if "n_nonzero" in msg:
                rs.n_nonzero = _int_or_none(msg["n_nonzero"])
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
        stream = StreamStep.from_event(msg.get("stream"))
        if stream is not None:
            rs.stream = stream
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

    def path_ids(self) -> list[str]:
        """Path ids, most recently updated first."""
        with self.lock:
            return [
                p.path
                for p in sorted(self.paths.values(), key=lambda p: p.received, reverse=True)
            ]

    def latest_path(self) -> str | None:
        ids = self.path_ids()
        return ids[0] if ids else None

    def get_path(self, path: str) -> PathState | None:
        return self.paths.get(path)

    def path_summaries(self) -> list[dict[str, Any]]:
        with self.lock:
            return [p.summary() for p in self.paths.values()]


def format_bytes(n: float) -> str:
    """``n`` bytes as ``512 B``, ``40.0 kiB``, ``1.50 GiB``."""
    n = float(n)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("kiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def stream_text(st: StreamStep, short: bool = False) -> str:
    """One compact text for a :class:`~dlogit.events.StreamStep`: what an evaluation read, what it
    found cached, and whether it waited for reads more than it computed (``short``: for a bar)."""
    if short:
        return f"read {format_bytes(st.bytes_read)}/eval, {st.cache_hits:g} cached, {st.bound}-bound"
    return (f"read {format_bytes(st.bytes_read)}/eval ({st.chunks_read:g} chunks)  cache hits "
            f"{st.cache_hits:g}  {st.bound}-bound (wait {st.read_wait_s * 1e3:.1f} ms, compute "
            f"{st.compute_s * 1e3:.1f} ms)")
