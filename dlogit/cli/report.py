"""``dlogit report MODEL --out report.html``: training curves, classes and coefficients of a saved model."""

from __future__ import annotations

import click


@click.command("report")
@click.argument("model")
@click.option("--out", "-o", "out", default="report.html", show_default=True,
              help="Output file: .html (standalone, opens offline) or .png (needs matplotlib).")
def report(model: str, out: str) -> None:
    """Write a report of MODEL: loss, gradient norm and step time per step, the classes, and the
    coefficients (exact zeros of an L1 model shown as such)."""
    from dlogit.errors import ModelError
    from dlogit.monitor.report import ReportError, write_report
    from dlogit.outputs import check_output

    check_output(out, inputs=[model], suffixes=(".html", ".htm", ".png"), what="report")
    try:
        path = write_report(model, out)
    except ReportError as e:
        raise ModelError(str(e)) from None
    click.echo(f"wrote {path}")
