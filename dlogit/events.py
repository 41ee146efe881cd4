"""Progress events (see ARCHITECTURE.md, "Progress events"): building and rate-limiting them.

Pure: the emitter is given a ``send(msg)`` function; the engine decides whether that writes to a Dask
event topic, to a local callback, or both.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

TOPIC = "dlogit"
_counter = itertools.count()

Send = Callable[[dict[str, Any]], None]


def new_run_id() -> str:
    """A run id unique across hosts and processes."""
    return f"{socket.gethostname()}-{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"


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
        for v in b.values():
            v.clear()
        self._t_last_send = time.perf_counter()
        self.send(msg)

    def end(self, status: str, n_iter: int, loss: float, grad_norm: float, message: str = "",
            **extra: Any) -> None:
        self.flush()
        self.send({"type": "end", "run": self.run, "time": time.time(), "status": status,
                   "n_iter": n_iter, "loss": loss, "grad_norm": grad_norm,
                   "seconds": time.perf_counter() - self._t0, "message": message, **extra})
