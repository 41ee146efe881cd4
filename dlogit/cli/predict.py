"""``dlogit predict``: labels and class probabilities for a data file (NumPy only, no cluster)."""

from __future__ import annotations

import click

from dlogit.cli._options import data_options


def proba_columns(classes: list[str]) -> list[str]:
    """``proba_<class>`` column names (made unique if two classes print alike)."""
    names, seen = [], set()
    for c in classes:
        name = f"proba_{c}"
        while name in seen:
            name += "_"
        seen.add(name)
        names.append(name)
    return names


@click.command("predict")
@click.argument("model_path", metavar="MODEL")
@click.argument("data")
@click.option("--out", "out", required=True,
              help="Where to write the predicted label and one probability column per class "
                   "(.csv, .tsv, .parquet or .npy; '-': CSV on stdout, and nothing else there).")
@data_options
def predict(model_path: str, data: str, out: str, **opts) -> None:
    """Write the predicted label and P(class) for every row of DATA.

    Columns: ``label`` (the original labels: numbers, booleans or strings) and ``proba_<class>`` for
    each class, in the order of the model's classes.
    """
    import numpy as np

    from dlogit.cli._common import load_for_model
    from dlogit.data import write_table
    from dlogit.outputs import check_output

    to_stdout = out == "-"
    if not to_stdout:
        check_output(out, inputs=[data, model_path, opts.get("labels"), opts.get("weights")],
                     suffixes=(".csv", ".tsv", ".parquet", ".pq", ".npy"), what="predictions")
    from dlogit.family import get_family

    model, X, _, _ = load_for_model(model_path, data, opts, require_label=False, quiet=to_stdout)
    fam = get_family(model.family_)  # the columns were matched by name already
    z = fam.decision(X, model.coef_, model.intercept_)
    proba = np.asarray(fam.proba(z))
    labels = np.asarray(model.classes_)[np.asarray(fam.predict_codes(z))]
    cols = {"label": labels}
    if not to_stdout and out.lower().endswith(".npy") and labels.dtype.kind not in "biuf":
        from dlogit.errors import DataError

        raise DataError("labels are not numeric: write the predictions to .csv or .parquet, not .npy")
    for name, j in zip(proba_columns([str(c) for c in model.classes_]), range(proba.shape[1])):
        cols[name] = proba[:, j]
    if to_stdout:
        import sys

        import pandas as pd

        pd.DataFrame(cols).to_csv(sys.stdout, index=False)
        sys.stdout.flush()
        return
    write_table(out, cols)
    click.echo(f"wrote {len(labels)} predictions to {out}")
