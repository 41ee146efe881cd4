"""``dlogit evaluate``: log-loss, accuracy and ROC-AUC of a model on labelled data."""

from __future__ import annotations

import click
import numpy as np

from dlogit.cli._common import load_for_model
from dlogit.cli._options import data_options


def roc_auc(pos: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve of ``score`` for the boolean labels ``pos`` (ties count half), weighted by
    ``weights`` (scikit-learn's ``roc_auc_score``); NaN when ``pos`` holds one class only (or one class
    has no weight)."""
    from sklearn.metrics import roc_auc_score

    w = np.ones(len(pos)) if weights is None else np.asarray(weights, np.float64)
    if float(w[pos].sum()) <= 0 or float(w[~pos].sum()) <= 0:
        return float("nan")
    return float(roc_auc_score(pos, score, sample_weight=w))


def metrics(model, X, y, w=None) -> dict[str, float]:
    """Weighted log-loss (no penalty), accuracy and ROC-AUC (binary) or macro one-vs-rest AUC (over the
    classes present), from ``sklearn.metrics``."""
    from sklearn.metrics import accuracy_score, log_loss

    from dlogit.family import get_family

    fam = get_family(model.family_)
    codes = _classes_of(model).encode(y, what="the labels of DATA")
    z = fam.decision(X, model.coef_, model.intercept_)
    proba = fam.proba(z)
    ww = np.ones(len(codes)) if w is None else np.asarray(w, np.float64)
    K = proba.shape[1]
    loss = float(log_loss(codes, proba, sample_weight=ww, labels=np.arange(K)))
    acc = float(accuracy_score(codes, np.argmax(proba, axis=1), sample_weight=ww))
    if K == 2:
        auc = roc_auc(codes == 1, proba[:, 1], ww)
        name = "roc_auc"
    else:
        aucs = [roc_auc(codes == k, proba[:, k], ww) for k in range(K)]
        aucs = [a for a in aucs if np.isfinite(a)]
        auc = float(np.mean(aucs)) if aucs else float("nan")
        name = "roc_auc_ovr_macro"
    return {"logloss": loss, "accuracy": acc, name: auc, "rows": len(codes),
            "weighted": w is not None, "n_classes": int(K)}


def _classes_of(model):
    from dlogit.family import Classes

    classes = np.asarray(model.classes_)
    return Classes(classes, np.zeros(len(classes), np.int64), np.zeros(len(classes)))


@click.command("evaluate")
@click.argument("model_path", metavar="MODEL")
@click.argument("data")
@data_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(model_path: str, data: str, as_json: bool, **opts) -> None:
    """Score MODEL on labelled DATA: log-loss, accuracy, ROC-AUC (weighted with --weights)."""
    model, X, y, w = load_for_model(model_path, data, opts, require_label=True, quiet=as_json)
    m = metrics(model, X, y, w)
    if as_json:
        from dlogit.cli._common import json_line

        click.echo(json_line(m))  # an undefined AUC (one class in DATA) is null
        return
    auc_name = "roc_auc" if "roc_auc" in m else "roc_auc_ovr_macro"
    click.echo(f"rows {m['rows']}  logloss {m['logloss']:.6f}  accuracy {m['accuracy']:.4f}  "
               f"{auc_name} {m[auc_name]:.4f}" + ("  (weighted)" if m["weighted"] else ""))
