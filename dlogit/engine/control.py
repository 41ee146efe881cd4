"""Stopping fits that run on a worker: a per-process stop registry, and noticing a cancelled task.

A client that is interrupted (Ctrl-C, SIGTERM) calls :func:`request_stop` on the workers (through the
scheduler: ``client.run``); only the process running that fit's loop records it. A client that
disappears, or cancels the fit, has its fit's task released by the scheduler, which the worker marks
cancelled. The loop polls :func:`stop_check` between steps (at most every ``period`` seconds, so a
step costs nothing extra) and stops at a step boundary.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

_lock = threading.Lock()
_stops: dict[str, str] = {}
_active: set[str] = set()


def request_stop(run: str, reason: str = "interrupted by the client") -> bool:
    """Ask the fit ``run`` to stop if its loop runs in this process (run by ``client.run``); whether
    it does."""
    with _lock:
        if run not in _active:
            return False
        _stops[run] = reason
    return True


def clear(run: str) -> None:
    """The fit ``run`` ended in this process: forget it."""
    with _lock:
        _stops.pop(run, None)
        _active.discard(run)


def stop_check(run: str, period: float = 0.2) -> Callable[[], str | None]:
    """A ``stop()`` for :func:`dlogit.training.run_fit` in a task on a worker (call it in the task's
    thread: it remembers the task's key)."""
    from distributed import get_worker

    worker = get_worker()
    try:
        key = worker.get_current_task()
    except KeyError:  # not in a task's thread
        key = None
    last = [0.0]
    with _lock:
        _active.add(run)

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
