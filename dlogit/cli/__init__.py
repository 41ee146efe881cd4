"""The ``dlogit`` command line: a thin layer over the library, one module per command."""

from __future__ import annotations

import sys

import click

from dlogit.errors import DlogitError


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
    for mod, name in (("dlogit.cli.report", "report"), ("dlogit.cli.cluster_cmd", "cluster"),
                      ("dlogit.cli.bench", "bench")):
        try:
            module = __import__(mod, fromlist=[name])
        except ImportError:
            continue
        cli.add_command(getattr(module, name))


_register()


def fail(message: str) -> None:
    """Print one line to stderr and exit with code 2."""
    click.echo(f"dlogit: error: {message}", err=True)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        rc = cli.main(args=argv, prog_name="dlogit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DlogitError as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
