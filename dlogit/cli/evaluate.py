"""``dlogit evaluate``: log-loss, accuracy and ROC-AUC of a model on labelled data."""

from __future__ import annotations

import json

import click
import numpy as np

from dlogit.cli._common import load_for_model


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged)."""
    from scipy.stats import rankdata

    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def metrics(y: np.ndarray, z: np.ndarray) -> dict[str, float]:
    """Log-loss (mean cross-entropy, no penalty), accuracy and ROC-AUC from margins ``z``."""
    from dlogit.loss import log1pexp

    return {"logloss": float(np.mean(log1pexp(z) - y * z)),
            "accuracy": float(np.mean((z > 0) == (y == 1))),
            "roc_auc": roc_auc(y, z), "rows": int(y.shape[0])}


@click.command("evaluate")
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("--label", default=None, help="Label column of CSV/Parquet DATA [default: the model's].")
@click.option("--labels", type=click.Path(), default=None, help="Labels of NPY DATA.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(model_path: str, data: str, label: str | None, labels: str | None, as_json: bool) -> None:
    """Score MODEL on labelled DATA: logloss, accuracy, ROC-AUC."""
    from dlogit.validation import check_chunk

    model, X, y = load_for_model(model_path, data, label, labels, require_label=True)
    check_chunk(X, y)
    m = metrics(y, np.asarray(model.decision_function(X)))
    if as_json:
        click.echo(json.dumps(m))
    else:
        click.echo(f"rows {m['rows']}  logloss {m['logloss']:.6f}  accuracy {m['accuracy']:.4f}  "
                   f"roc_auc {m['roc_auc']:.4f}")
