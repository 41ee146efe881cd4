"""``dlogit report MODEL --out report.html``: training curves of a saved model."""

from __future__ import annotations

import click


class ReportFailed(click.ClickException):
    """Bad input: one line on stderr, exit code 2, nothing written."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"dlogit: error: {self.format_message()}", err=True, file=file)


@click.command("report")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--out", "-o", "out", default="report.html", show_default=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="Output file: .html (standalone, opens offline) or .png (needs matplotlib).",
)
def report(model: str, out: str) -> None:
    """Write a report of MODEL: loss, gradient norm and step time per step."""
    from dlogit.monitor.report import ReportError, write_report

    try:
        path = write_report(model, out)
    except ReportError as e:
        raise ReportFailed(str(e)) from None
    click.echo(f"wrote {path}")
