"""Exceptions and warnings raised by dlogit.

Every error a user can cause derives from :class:`DlogitError`; the CLI turns those into a one-line
message and exit code 2.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

_lock = threading.Lock()


class DlogitError(Exception):
    """Base class of the errors a user can cause (bad input, unreachable cluster, bad options)."""


class DataError(DlogitError, ValueError):
    """The training or prediction data is unusable (NaN, bad labels, wrong shapes, unreadable)."""


class ClusterError(DlogitError):
    """The Dask cluster cannot be started, reached, or is unfit (version mismatch, no workers)."""


class ModelError(DlogitError):
    """A model file is missing, unreadable or not a dlogit model."""


class ConfigError(DlogitError, ValueError):
    """An option has a value outside its allowed range."""


class OutputError(DlogitError):
    """An output path cannot be written (missing or read-only directory, a directory, one of the inputs)."""


class Interrupted(KeyboardInterrupt):
    """A fit was stopped at a step boundary (Ctrl-C, SIGTERM, or its client went away).

    ``signum`` is the signal that stopped it (``None`` when cancelled otherwise); ``checkpoint`` the
    file holding its last state when checkpointing was on.
    """

    def __init__(self, message: str = "interrupted", signum: int | None = None,
                 checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.signum = signum
        self.checkpoint = checkpoint


class _OneLineTaskError(logging.Filter):
    """Dask's worker logs a failed task as "Compute Failed" with the task and its traceback (five
    fields). For dlogit's own errors -- bad input the client reports as one line -- the worker logs one
    line too: the task's key and the error. The record's shape is distributed's (worker.py's
    ``logger.error("Compute Failed\\n...", key, state, run_spec, exception_text, traceback_text)``); a
    test (tests/test_worker_log.py) fails when it changes."""

    _name = re.compile(r"^(\w+)\(")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (isinstance(record.msg, str) and record.msg.startswith("Compute Failed") and isinstance(args, tuple)
                and len(args) == 5 and isinstance(args[3], str)):
            match = self._name.match(args[3])
            if match and match.group(1) in _dlogit_error_names():
                record.msg, record.args = "Compute Failed: %s: %s", (args[0], args[3])
        return True


def _dlogit_error_names() -> set[str]:
    names, todo = {Interrupted.__name__}, [DlogitError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


logging.getLogger("distributed.worker").addFilter(_OneLineTaskError())  # on workers: dlogit's tasks import this


def _convergence_warning() -> type[Warning]:
    # made on first use: importing sklearn.exceptions loads scikit-learn (seconds), which neither
    # ``import dlogit`` nor a Dask worker should pay
    from sklearn.exceptions import ConvergenceWarning as _SklearnConvergenceWarning

    class ConvergenceWarning(_SklearnConvergenceWarning):
        """A fit that stopped before reaching ``tol`` (``max_iter``, stalled, diverged).

        A subclass of scikit-learn's ``ConvergenceWarning`` (itself a ``UserWarning``), so filters
        written for scikit-learn models catch it too."""

    ConvergenceWarning.__module__ = __name__
    ConvergenceWarning.__qualname__ = "ConvergenceWarning"
    return ConvergenceWarning


def __getattr__(name: str) -> Any:
    """``ConvergenceWarning``: created once, on first access, then an ordinary module attribute."""
    if name == "ConvergenceWarning":
        with _lock:  # one class object forever, even when two threads ask first at once
            cls = globals().get("ConvergenceWarning")
            if cls is None:
                cls = globals()["ConvergenceWarning"] = _convergence_warning()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"ConvergenceWarning"})
