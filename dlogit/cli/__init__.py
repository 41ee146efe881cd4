"""The ``dlogit`` command line: a thin layer over the library, one module per command.

Exit codes (README, "Exit codes"): 0 success; 2 bad input, options or environment (one line on
stderr, nothing half-written); 3 the fit did not produce a usable model (diverged, non-finite
coefficients); 130 interrupted (SIGINT, Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from dlogit.errors import DlogitError, Interrupted

EXIT_BAD_INPUT = 2
EXIT_NOT_CONVERGED = 3


class NotConverged(DlogitError):
    """The fit ended without a usable model (exit code 3)."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dlogit")
def cli() -> None:
    """Distributed logistic regression on Dask clusters of NumPy or CuPy chunks."""


def _register() -> None:
    from dlogit.cli.evaluate import evaluate
    from dlogit.cli.generate import generate
    from dlogit.cli.predict import predict
    from dlogit.cli.train import train

    for cmd in (train, predict, evaluate, generate):
        cli.add_command(cmd)
    for mod, name in (("dlogit.cli.report", "report"), ("dlogit.cli.cluster_cmd", "cluster")):
        try:
            module = __import__(mod, fromlist=[name])
        except ImportError:
            continue
        cli.add_command(getattr(module, name))


_register()


def say(message: str) -> None:
    """One line on stderr, prefixed ``dlogit: ``."""
    click.echo(f"dlogit: {message}", err=True)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print one line to stderr and exit with ``code`` (2 by default)."""
    say(f"error: {message}")
    sys.exit(code)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


def ignore_signals() -> None:
    """While shutting down after an interruption: a second Ctrl-C must not leave orphans behind."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except ValueError:
            pass


def _usage_line(exc: click.exceptions.UsageError) -> str:
    msg = exc.format_message()
    ctx = exc.ctx
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"{msg}{hint}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    import warnings

    import numpy as np

    np.seterr(all="ignore")  # dlogit says what went wrong itself (non-finite loss -> diverged)
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"numpy(\.|$)")
    install_signal_handlers()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        # not cli.main(): it turns KeyboardInterrupt (our Interrupted) into a bare "Aborted!"
        with cli.make_context("dlogit", args) as ctx:
            rc = cli.invoke(ctx)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        say("aborted")
        sys.exit(130)
    except click.exceptions.UsageError as exc:
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
        say(f"{exc.message}{where}")
        sys.exit(code)
    except KeyboardInterrupt:
        ignore_signals()
        say("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)
