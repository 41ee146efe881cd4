"""dlogit: distributed logistic regression on Dask arrays of NumPy or CuPy chunks."""

from __future__ import annotations

__version__ = "0.1.0"


def _cli_early_signals() -> None:
    """When this process is the ``dlogit`` command (``dlogit ...`` or ``python -m dlogit ...``): Ctrl-C
    or SIGTERM during the imports below (seconds: Dask, NumPy, scikit-learn) exits 130 / 143 with one
    line, nothing having started yet, instead of a ``KeyboardInterrupt`` traceback. The command's own
    handlers (:func:`dlogit.cli.install_signal_handlers`) replace these as it starts. A program that
    merely imports dlogit, and the command's own worker processes (spawned with its ``sys.argv``), are
    left alone."""
    import os
    import signal
    import sys

    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    as_module = "-m" in argv[1:] and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["dlogit"]
    if not (as_module or os.path.basename(sys.argv[0] if sys.argv else "") == "dlogit"):
        return
    import multiprocessing

    if multiprocessing.parent_process() is not None:  # a worker process spawned by the command
        return

    def leave(signum: int, frame: object) -> None:
        os.write(2, b"dlogit: terminated\n" if signum == signal.SIGTERM else b"dlogit: interrupted\n")
        os._exit(143 if signum == signal.SIGTERM else 130)

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, leave)
    except ValueError:  # not the main thread
        pass


_cli_early_signals()

from dlogit import config as _config  # noqa: F401  (registers dask.config defaults)
from dlogit.data import read_data, synthetic
from dlogit.errors import (
    ClusterError,
    ConfigError,
    ConvergenceWarning,
    DataError,
    DlogitError,
    Interrupted,
    ModelError,
    OutputError,
)
from dlogit.estimator import LogisticRegression, load_model
from dlogit.estimator_cv import LogisticRegressionCV
from dlogit.spec import CheckpointSpec as Checkpoint

__all__ = [
    "Checkpoint", "ClusterError", "ConfigError", "ConvergenceWarning", "DataError", "DlogitError",
    "Interrupted", "LogisticRegression", "LogisticRegressionCV", "ModelError", "OutputError", "__version__", "load_model",
    "read_data", "synthetic",
]
