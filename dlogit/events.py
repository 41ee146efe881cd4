"""Progress events (see ARCHITECTURE.md, "Progress events"): building and rate-limiting them.

Pure: the emitter is given a ``send(msg)`` function; the engine decides whether that writes to a Dask
event topic, to a local callback, or both.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

TOPIC = "dlogit"
_counter = itertools.count()

Send = Callable[[dict[str, Any]], None]


def new_run_id() -> str:
    """A run id unique across hosts and processes."""
    return f"{socket.gethostname()}-{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class StreamCounters:
    """What a process's chunk evaluations of a fit read and found in memory so far (monotone; a shard
    replaces its snapshot whole after each evaluation, so a reader on another thread sees a consistent
    one). ``read_wait_s``: time an evaluation waited for its next streamed chunk's read-ahead;
    ``compute_s``: the rest of the evaluation's time (chunks evaluated)."""

    evaluations: int = 0
    bytes_read: int = 0
    chunks_read: int = 0
    cache_hits: int = 0
    read_wait_s: float = 0.0
    compute_s: float = 0.0

    def __add__(self, other: StreamCounters) -> StreamCounters:
        return StreamCounters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: StreamCounters) -> StreamCounters:
        return StreamCounters(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class StreamStep:
    """The ``stream`` field of a ``progress`` event (fits whose chunks are read by the workers
    themselves: :mod:`dlogit.engine.residency`): per chunk evaluation (a pass over every chunk: a sums
    or an H.v) since the previous progress event, on the processes counted (``workers``).

    ``bound`` is ``"read"`` when the evaluations waited for the read-ahead longer than they computed,
    else ``"compute"`` (an all-cached fit is compute-bound and reads nothing)."""

    evaluations: int
    bytes_read: float  # per evaluation
    chunks_read: float  # streamed chunks read per evaluation
    cache_hits: float  # cached chunks evaluated per evaluation
    read_wait_s: float  # per evaluation
    compute_s: float  # per evaluation
    bound: str  # "read" | "compute"
    workers: tuple[str, ...] = ()

    @classmethod
    def from_counters(cls, d: StreamCounters, workers: tuple[str, ...] = ()) -> StreamStep:
        n = max(d.evaluations, 1)
        return cls(d.evaluations, d.bytes_read / n, d.chunks_read / n, d.cache_hits / n, d.read_wait_s / n,
                   d.compute_s / n, "read" if d.read_wait_s > d.compute_s else "compute", tuple(workers))

    def to_event(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["workers"] = list(self.workers)
        return out

    @classmethod
    def from_event(cls, msg: Any) -> StreamStep | None:
        """The field as sent (``None`` when absent or malformed)."""
        if not isinstance(msg, dict):
            return None
        try:
            return cls(int(msg["evaluations"]), float(msg["bytes_read"]), float(msg["chunks_read"]),
                       float(msg["cache_hits"]), float(msg["read_wait_s"]), float(msg["compute_s"]),
                       "read" if msg["bound"] == "read" else "compute",
                       tuple(str(w) for w in msg.get("workers") or ()))
        except (KeyError, TypeError, ValueError):
            return None


#: run -> the shards of this process evaluating its chunks from their sources (weakly held)
_streams: dict[str, weakref.WeakSet[Any]] = {}
_streams_lock = threading.Lock()


def register_stream(run: str, holder: Any) -> None:
    """Count ``holder.counters`` (a :class:`StreamCounters`) in ``run``'s progress events sent from
    this process (a shard whose chunks are read from their sources registers itself when prepared)."""
    with _streams_lock:
        _streams.setdefault(run, weakref.WeakSet()).add(holder)


def unregister_stream(holder: Any) -> None:
    with _streams_lock:
        for run in [r for r, s in _streams.items() if holder in s]:
            _streams[run].discard(holder)
            if not _streams[run]:
                del _streams[run]


def stream_counters(run: str) -> tuple[StreamCounters, tuple[str, ...]] | None:
    """The sum of the counters registered for ``run`` in this process and the holders' places (their
    ``where``, e.g. ``worker tcp://...``, without the ``worker `` prefix); ``None``: none."""
    with _streams_lock:
        holders = list(_streams.get(run, ()))
    if not holders:
        return None
    total = StreamCounters()
    for h in holders:
        total = total + h.counters
    # each holder evaluates its chunks once per evaluation of the fit: the fit's evaluations are theirs
    total = replace(total, evaluations=max(h.counters.evaluations for h in holders))
    places = sorted({str(getattr(h, "where", "")).removeprefix("worker ") for h in holders} - {""})
    return total, tuple(places)


class ProgressEmitter:
    """Collects per-step figures and sends ``progress`` events at most every ``interval`` seconds.

    It also sends one at every step that is a multiple of ``period`` so that a terminal printing every
    ``period`` steps sees each of those steps, and at :meth:`end`. Step times are measured here as the
    wall time between consecutive :meth:`step` calls (the first from :meth:`start`).
    """

    def __init__(self, send: Send, run: str, *, n_rows: int, row_bytes: int, period: int = 1000,
                 interval: float = 0.5) -> None:
        self.send = send
        self.run = run
        self.n_rows = n_rows
        self.row_bytes = row_bytes
        self.period = max(1, int(period))
        self.interval = interval
        self.step_seconds: list[float] = []
        self._buf: dict[str, list[float]] = {"step": [], "loss": [], "grad_norm": [], "step_seconds": []}
        self._t_last_step = time.perf_counter()
        self._t_last_send = 0.0
        self._t0 = time.perf_counter()
        self.worker_seconds: dict[str, float] = {}
        #: set when the whole fit runs on one worker: its step time is the worker's compute time
        self.local_worker: str | None = None
        self._stream_last: StreamCounters | None = None

    def start(self, params: dict[str, Any]) -> None:
        self._t0 = self._t_last_step = time.perf_counter()
        self.send({"type": "start", "run": self.run, "time": time.time(), "params": params})

    def step(self, step: int, loss: float, grad_norm: float) -> None:
        now = time.perf_counter()
        dt = now - self._t_last_step
        self._t_last_step = now
        self.step_seconds.append(dt)
        b = self._buf
        b["step"].append(step)
        b["loss"].append(loss)
        b["grad_norm"].append(grad_norm)
        b["step_seconds"].append(dt)
        if step % self.period == 0 or now - self._t_last_send >= self.interval:
            self.flush()

    def flush(self) -> None:
        b = self._buf
        if not b["step"]:
            return
        if self.local_worker is not None:
            self.worker_seconds = {self.local_worker: b["step_seconds"][-1]}
        recent = b["step_seconds"][-50:]
        mean = sum(recent) / len(recent) if recent else 0.0
        msg = {"type": "progress", "run": self.run, "time": time.time(), **{k: list(v) for k, v in b.items()},
               "rows_per_s": self.n_rows / mean if mean > 0 else 0.0,
               "bytes_per_s": self.n_rows * self.row_bytes / mean if mean > 0 else 0.0,
               "worker_seconds": dict(self.worker_seconds)}
        stream = self._stream_step()
        if stream is not None:
            msg["stream"] = stream.to_event()
        for v in b.values():
            v.clear()
        self._t_last_send = time.perf_counter()
        self.send(msg)

    def _stream_step(self) -> StreamStep | None:
        """The evaluations' reads since the previous progress event (fits with streamed sources)."""
        got = stream_counters(self.run)
        if got is None:
            return None
        now, places = got
        last, self._stream_last = self._stream_last, now
        delta = now - last if last is not None else now
        if delta.evaluations <= 0 or min(delta.bytes_read, delta.cache_hits, delta.chunks_read) < 0:
            return None  # no evaluation since the last event (or a holder went away: a new baseline)
        return StreamStep.from_counters(delta, places)

    def end(self, status: str, n_iter: int, loss: float, grad_norm: float, message: str = "",
            **extra: Any) -> None:
        self.flush()
        self.send({"type": "end", "run": self.run, "time": time.time(), "status": status,
                   "n_iter": n_iter, "loss": loss, "grad_norm": grad_norm,
                   "seconds": time.perf_counter() - self._t0, "message": message, **extra})
