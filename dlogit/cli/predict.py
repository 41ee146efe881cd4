"""``dlogit predict``: probabilities and labels for a data file (NumPy only, no cluster)."""

from __future__ import annotations


import click

from dlogit.cli._common import load_for_model


@click.command("predict")
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("--out", "out", type=click.Path(), required=True,
              help="Where to write columns proba and label (.csv, .parquet or .npy).")
@click.option("--label", default=None, help="Label column to leave out of the features [default: the model's].")
def predict(model_path: str, data: str, out: str, label: str | None) -> None:
    """Write P(y=1) and the predicted label for every row of DATA."""
    from dlogit.data import write_table

    model, X, _ = load_for_model(model_path, data, label, None, require_label=False)
    proba = model.predict_proba(X)[:, 1]
    write_table(out, {"proba": proba, "label": (proba > 0.5).astype("int64")})
    click.echo(f"wrote {len(proba)} predictions to {out}")


