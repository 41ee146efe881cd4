"""``dlogit evaluate``: log-loss, accuracy and ROC-AUC of a model on labelled data."""

from __future__ import annotations

import click
import numpy as np

from dlogit.cli._common import load_for_model
from dlogit.cli._options import data_options


def roc_auc(pos: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve of ``score`` for the boolean labels ``pos`` (ties count half),
    weighted by ``weights``: the weighted Mann-Whitney statistic."""
    w = np.ones(len(pos)) if weights is None else np.asarray(weights, np.float64)
    wp, wn = float(w[pos].sum()), float(w[~pos].sum())
    if wp <= 0 or wn <= 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s, p, ww = score[order], pos[order], w[order]
    # group ties: each positive beats the negative weight below its group plus half of its own group's
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    neg_w = np.where(~p, ww, 0.0)
    pos_w = np.where(p, ww, 0.0)
    group_neg = np.add.reduceat(neg_w, starts)
    group_pos = np.add.reduceat(pos_w, starts)
    below = np.cumsum(group_neg) - group_neg
    return float(np.sum(group_pos * (below + 0.5 * group_neg)) / (wp * wn))


def metrics(model, X, y, w=None) -> dict[str, float]:
    """Weighted log-loss (no penalty), accuracy and ROC-AUC (binary) or macro one-vs-rest AUC."""
    from dlogit.family import get_family

    fam = get_family(model.family_)
    codes = _classes_of(model).encode(y, what="the labels of DATA")
    z = fam.decision(X, model.coef_, model.intercept_)
    proba = fam.proba(z)
    ww = np.ones(len(codes)) if w is None else np.asarray(w, np.float64)
    total = float(ww.sum())
    loss = float(np.dot(fam.row_loss(z, codes), ww) / total)
    acc = float(np.dot((np.argmax(proba, axis=1) == codes).astype(float), ww) / total)
    K = proba.shape[1]
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
