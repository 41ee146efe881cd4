"""The ``dlogit`` command line: a thin layer over the library, one module per command.

Exit codes (README, "Exit codes"): 0 success; 2 bad input, options or environment (one line on
stderr, nothing half-written); 3 the fit did not produce a usable model (diverged, non-finite
coefficients); 130 interrupted (SIGINT, Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import click

from dlogit.errors import DlogitError, Interrupted

EXIT_BAD_INPUT = 2
EXIT_NOT_CONVERGED = 3


class NotConverged(DlogitError):
    """The fit ended without a usable model (exit code 3)."""


# name -> (module, short help shown by ``dlogit --help``). A command's module is imported only when
# that command runs (or its own --help is asked for), so ``dlogit --version`` / ``--help`` and usage
# errors stay cheap; tests/test_imports.py checks that each summary is the command's own short help.
_COMMANDS = {
    "cluster": ("dlogit.cli.cluster_cmd",
                ("Run a Dask cluster for dlogit.")),
    "evaluate": ("dlogit.cli.evaluate",
                 ("Score MODEL on labelled DATA: log-loss, accuracy, ROC-AUC (weighted with "
                 "--weights).")),
    "generate": ("dlogit.cli.generate",
                 ("Write X ~ N(0,1) and y ~ uniform{0,1} to OUT (.csv / .parquet with a 'label' "
                 "column, or .npy).")),
    "predict": ("dlogit.cli.predict",
                ("Write the predicted label and P(class) for every row of DATA.")),
    "report": ("dlogit.cli.report",
               ("Write a report of MODEL: loss, gradient norm and step time per step, the "
               "classes, and the coefficients (exact zeros of an L1 model shown as such).")),
    "train": ("dlogit.cli.train",
              ("Train a logistic regression on DATA (CSV/TSV, Parquet, NPY, LIBSVM, Zarr; files,"
              " directories, globs or URLs) or on synthetic data.")),
}


def _numpy_quiet(callback: Any) -> Any:
    """``callback`` run with NumPy's floating-point warnings off (dlogit says what went wrong itself: a
    non-finite loss is "diverged"). Set as the command starts, after click parsed its arguments: a usage
    error has imported no NumPy."""
    import functools

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        import numpy as np

        np.seterr(all="ignore")
        return callback(*args, **kwargs)

    run._dlogit_numpy_quiet = True  # type: ignore[attr-defined]
    return run


def _quiet_numpy_in(command: click.Command) -> None:
    """Wrap the callbacks of ``command`` that do the work in :func:`_numpy_quiet` (a group's own callback
    runs before its subcommand parses its arguments: a group's subcommands are wrapped instead)."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _quiet_numpy_in(sub)
    elif command.callback is not None and not getattr(command.callback, "_dlogit_numpy_quiet", False):
        command.callback = _numpy_quiet(command.callback)


class _LazyGroup(click.Group):
    """A click group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(_COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _COMMANDS:
            import importlib

            module = importlib.import_module(_COMMANDS[cmd_name][0])
            command = getattr(module, cmd_name)
            _quiet_numpy_in(command)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # as click.Group.format_commands shortens a command's help, without importing the command
        limit = formatter.width - 6 - max(len(name) for name in _COMMANDS)
        rows = [(name, click.utils.make_default_short_help(_COMMANDS[name][1], limit))
                for name in sorted(_COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dlogit")
def cli() -> None:
    """Distributed logistic regression on Dask clusters of NumPy or CuPy chunks.

    \b
    Exit codes:
      0    success
      2    bad input, options or environment (one line on stderr; nothing written)
      3    the fit did not converge to a usable model (diverged; no model unless --keep-diverged)
      130  interrupted (Ctrl-C); 143 terminated (SIGTERM) -- resume with --resume when checkpointing
    """


def one_line(text: str) -> str:
    """``text`` with control characters (a ``\\r`` or a newline inside a user's file name or argument)
    written as escapes, so that it prints as exactly one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def say(message: str) -> None:
    """One line on stderr, prefixed ``dlogit: ``."""
    click.echo(f"dlogit: {one_line(message)}", err=True)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print one line to stderr and exit with ``code`` (2 by default)."""
    say(f"error: {message}")
    sys.exit(code)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.split("\n")[0].strip() if text else type(exc).__name__


def _raise_interrupted(signum: int, frame: Any) -> None:
    name = "terminated" if signum == signal.SIGTERM else "interrupted"
    raise Interrupted(name, signum)


def install_signal_handlers() -> dict[int, Any]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (a fit stops at a step boundary)."""
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, _raise_interrupted)
        except ValueError:  # not the main thread (embedded use)
            pass
    return previous


@contextlib.contextmanager
def children_start_without_sigint(after_first: Any = None) -> Iterator[None]:
    """Worker processes started meanwhile begin with SIGINT blocked.

    A terminal's Ctrl-C goes to its whole foreground process group; a local worker process leaves
    that group in its preload (:func:`dlogit.worker.quiet_local_worker`, which also ignores SIGINT and
    then unblocks it), but a Ctrl-C during the seconds before -- while it imports -- would put a
    ``KeyboardInterrupt`` traceback into it. A signal mask survives ``fork`` and ``exec``, so the
    thread that spawns the worker (``multiprocessing``'s spawn) blocks SIGINT around the spawn; this
    process keeps handling Ctrl-C as usual (only the spawning thread's mask changes, briefly).

    ``after_first()``, when given, is called once, right after the first worker process is spawned
    (work for this process to do while its workers start)."""
    import multiprocessing.util as mp_util

    original = mp_util.spawnv_passfds
    pending = [after_first] if after_first is not None else []
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return

    def spawn_blocked(path: Any, args: Any, passfds: Any) -> int:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return original(path, args, passfds)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            # not after multiprocessing's resource tracker (spawned first, with SIGINT/SIGTERM blocked)
            if pending and not any("resource_tracker" in str(part) for part in args):
                pending.pop()()

    mp_util.spawnv_passfds = spawn_blocked
    try:
        yield
    finally:
        mp_util.spawnv_passfds = original


def ignore_signals() -> None:
    """While shutting down after an interruption: a second Ctrl-C must not leave orphans behind."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except ValueError:
            pass


def _exit_now(code: int, hard: bool) -> None:
    """Exit after an interruption. The fit is stopped, its checkpoint written and the cluster closed
    by now; in a real ``dlogit`` process (``hard``) leftover work must not hold the exit -- a local
    scheduler may still be materializing a large graph in a thread that the interpreter would join,
    for minutes -- so stop any child process still there and leave at once."""
    if not hard:
        sys.exit(code)
    import logging

    logging.disable(logging.CRITICAL)  # half-started cluster tasks complain as they are collected
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    with contextlib.suppress(Exception):  # psutil missing or /proc unreadable: exit anyway
        import psutil

        # multiprocessing's resource tracker ignores SIGTERM and SIGINT by design: waiting for it to
        # obey a SIGTERM cost 3 s of every Ctrl-C, and left alone it prints a warning about the
        # interrupted workers' semaphores as this process exits -- it is killed at once instead
        everyone = psutil.Process().children(recursive=True)
        trackers = [c for c in everyone if _is_resource_tracker(c)]
        children = [c for c in everyone if c not in trackers]
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.terminate()
        _, left = psutil.wait_procs(children, timeout=3)
        for child in left + trackers:
            with contextlib.suppress(psutil.Error):
                child.kill()
    os._exit(code)


def _is_resource_tracker(proc: Any) -> bool:
    with contextlib.suppress(Exception):
        return any("multiprocessing.resource_tracker" in part for part in proc.cmdline())
    return False


def _usage_line(exc: click.exceptions.UsageError) -> str:
    msg = exc.format_message()
    ctx = exc.ctx
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"{msg}{hint}"


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` of the CLI: ``dlogit: warning: <first line>`` on stderr; NumPy's
    floating-point warnings never (a fit that overflowed ends "diverged" and says so)."""
    if issubclass(category, RuntimeWarning) and "numpy" in (filename or ""):
        return
    lines = str(message).strip().splitlines()
    text = lines[0] if lines else category.__name__
    try:
        click.echo(f"dlogit: warning: {one_line(text)}", err=True)
    except (OSError, ValueError):  # stderr closed
        pass


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    import warnings

    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"numpy(\.|$)")
    warnings.showwarning = _one_line_warning
    install_signal_handlers()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        # not cli.main(): it turns KeyboardInterrupt (our Interrupted) into a bare "Aborted!"
        with cli.make_context("dlogit", args) as ctx:  # --version / --help / a usage error end here
            rc = cli.invoke(ctx)  # the command's own usage errors before NumPy too (_numpy_quiet)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        say("aborted")
        sys.exit(130)
    except click.exceptions.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:  # bare `dlogit`: its help
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        fail(_usage_line(exc), exc.exit_code)
    except click.exceptions.ClickException as exc:
        fail(exc.format_message(), exc.exit_code if exc.exit_code else EXIT_BAD_INPUT)
    except NotConverged as exc:
        ignore_signals()
        fail(_first_line(exc), EXIT_NOT_CONVERGED)
    except DlogitError as exc:
        ignore_signals()
        fail(_first_line(exc))
    except Interrupted as exc:
        ignore_signals()
        code = 143 if exc.signum == signal.SIGTERM else 130
        where = f"; checkpoint in {exc.checkpoint} (resume with --resume)" if exc.checkpoint else ""
        what = "terminated" if code == 143 else (exc.message or "interrupted")
        say(f"{what}{where}")
        _exit_now(code, argv is None)
    except KeyboardInterrupt:
        ignore_signals()
        say("interrupted")
        _exit_now(130, argv is None)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)
