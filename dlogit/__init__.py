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

# Everything else loads on first use (PEP 562): ``import dlogit`` and ``dlogit --version`` stay cheap,
# and a Dask worker that imports one engine module does not pull scikit-learn, pandas or dask.array.
# dlogit's dask.config defaults are registered by dlogit.config, which every reader of a ``dlogit.*``
# setting imports.
_LAZY = {
    "Checkpoint": ("dlogit.spec", "CheckpointSpec"),
    "ClusterError": ("dlogit.errors", "ClusterError"),
    "ConfigError": ("dlogit.errors", "ConfigError"),
    "ConvergenceWarning": ("dlogit.errors", "ConvergenceWarning"),
    "DataError": ("dlogit.errors", "DataError"),
    "DlogitError": ("dlogit.errors", "DlogitError"),
    "Interrupted": ("dlogit.errors", "Interrupted"),
    "LogisticRegression": ("dlogit.estimator", "LogisticRegression"),
    "LogisticRegressionCV": ("dlogit.estimator_cv", "LogisticRegressionCV"),
    "ModelError": ("dlogit.errors", "ModelError"),
    "OutputError": ("dlogit.errors", "OutputError"),
    "load_model": ("dlogit.estimator", "load_model"),
    "read_data": ("dlogit.data", "read_data"),
    "synthetic": ("dlogit.data", "synthetic"),
}

__all__ = [
    "Checkpoint", "ClusterError", "ConfigError", "ConvergenceWarning", "DataError", "DlogitError",
    "Interrupted", "LogisticRegression", "LogisticRegressionCV", "ModelError", "OutputError", "__version__",
    "load_model", "read_data", "synthetic",
]
assert set(__all__) == {*_LAZY, "__version__"}


def __getattr__(name: str) -> object:
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if not name.startswith("__"):  # a submodule: ``dlogit.monitor.TerminalProgress`` after ``import dlogit``
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
