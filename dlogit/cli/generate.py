"""``dlogit generate``: write the synthetic data set to a file."""

from __future__ import annotations

import os

import click


@click.command("generate")
@click.argument("out")
@click.option("--rows", type=click.IntRange(min=1), default=400, show_default=True)
@click.option("--cols", type=click.IntRange(min=1), default=784, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float64", show_default=True)
@click.option("--chunk-rows", type=click.IntRange(min=1), default=None, help="Generate in chunks of this many rows (as train does).")
@click.option("--labels-out", type=click.Path(), default=None,
              help="For .npy OUT: where the labels go [default: OUT with .labels.npy].")
def generate(out: str, rows: int, cols: int, seed: int, dtype: str, chunk_rows: int | None,
             labels_out: str | None) -> None:
    """Write X ~ N(0,1) and y ~ uniform{0,1} to OUT (.csv / .parquet with a 'label' column, or .npy).

    The rows are the same as `dlogit train --synthetic ROWSxCOLS --seed S` trains on (same chunking).
    """
    import numpy as np

    from dlogit.data import parse_shape, synthetic_numpy, write_table
    from dlogit.files import atomic_write
    from dlogit.outputs import check_distinct, check_output

    parse_shape(f"{rows}x{cols}")
    npy = out.lower().endswith(".npy")
    if npy:
        labels_out = labels_out or os.path.splitext(out)[0] + ".labels.npy"
        check_output(labels_out, suffixes=(".npy",), what="labels")
        check_distinct({"OUT": out, "--labels-out": labels_out})
    elif labels_out is not None:
        raise click.BadParameter("only for .npy OUT (CSV and Parquet hold the labels in a column)",
                                 param_hint="'--labels-out'")
    check_output(out, suffixes=(".csv", ".tsv", ".parquet", ".pq", ".npy"), what="data")
    X, y = synthetic_numpy(rows, cols, seed=seed, dtype=dtype, chunk_rows=chunk_rows)
    if npy:

        def save(a: np.ndarray):
            return lambda tmp: np.save(tmp, a)

        atomic_write(out, save(X))
        atomic_write(labels_out, save(y))
        click.echo(f"wrote {rows}x{cols} to {out} and labels to {labels_out}")
        return
    cols_ = {f"x{j}": X[:, j] for j in range(cols)}
    cols_["label"] = y.astype("int64")
    write_table(out, cols_)
    click.echo(f"wrote {rows}x{cols} with a 'label' column to {out}")
