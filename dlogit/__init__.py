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

    main = sys.modules.get("__main__")
    if getattr(main, "__name__", None) != "__main__":
        return  # a process spawned by multiprocessing (a Dask worker) re-running the parent's main
    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    # ``python -m dlogit``: while runpy imports the package, sys.argv[0] is still "-m"
    as_module = (bool(sys.argv) and sys.argv[0] == "-m" and "-m" in argv
                 and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["dlogit"])
    as_script = (bool(sys.argv) and os.path.basename(sys.argv[0]) == "dlogit"
                 and os.path.basename(getattr(main, "__file__", None) or "") == "dlogit")
    if not (as_module or as_script):
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
