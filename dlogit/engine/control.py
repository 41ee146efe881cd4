"""Stopping fits that run on a worker: a per-process stop registry, and noticing a cancelled task.

A client that is interrupted (Ctrl-C, SIGTERM) calls :func:`request_stop` on the driver's worker
(through the scheduler: ``client.run``); a client that disappears has its fit's task released by the
scheduler, which the worker marks cancelled. The driver's loop polls :func:`stop_check` between steps
(at most every ``period`` seconds, so a step costs nothing extra) and stops at a step boundary.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

_lock = threading.Lock()
_stops: dict[str, str] = {}


def request_stop(run: str, reason: str = "interrupted by the client") -> bool:
    """Ask the fit ``run`` running in this process to stop (run by ``client.run`` on workers)."""
    with _lock:
        _stops[run] = reason
    return True


def clear(run: str) -> None:
    with _lock:
        _stops.pop(run, None)


def stop_check(run: str, period: float = 0.2) -> Callable[[], "str | None"]:
    """A ``stop()`` for :func:`dlogit.training.run_fit` in a task on a worker."""
    from distributed import get_worker
    from distributed.worker import thread_state

    worker = get_worker()
    key = getattr(thread_state, "key", None)
    last = [0.0]

    def stop() -> str | None:
        now = time.monotonic()
        if now - last[0] < period:
            return None
        last[0] = now
        reason = _stops.get(run)
        if reason is not None:
            return reason
        if key is not None:
            ts = worker.state.tasks.get(key)
            if ts is None or ts.state in ("cancelled", "released", "forgotten"):
                return "the fit's task was cancelled (its client went away)"
        return None

    return stop
