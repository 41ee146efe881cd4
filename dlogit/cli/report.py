"""``dlogit report MODEL --out report.html``: training curves of a saved model."""

from __future__ import annotations

import click


class _ReportFailed(click.ClickException):
    exit_code = 2


@click.command("report")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--out", "-o", "out", default="report.html", show_default=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="Output file: .html (standalone, works offline) or .png (needs matplotlib).",
)
def report(model: str, out: str) -> None:
    """Write a report (loss, gradient norm, step time per step) of MODEL."""
    from dlogit.monitor.report import ReportError, write_report

    try:
        path = write_report(model, out)
    except ReportError as e:
        raise _ReportFailed(str(e)) from None
    click.echo(f"wrote {path}")
