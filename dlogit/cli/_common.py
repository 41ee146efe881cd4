"""Helpers shared by predict and evaluate."""

from __future__ import annotations

from typing import Any

import numpy as np


def load_for_model(model_path: str, data: str, label: str | None, labels: str | None,
                   require_label: bool) -> tuple[Any, np.ndarray, np.ndarray | None]:
    """Load a model and a data file whose features match it: ``(model, X, y)``."""
    from dlogit.data import load_local
    from dlogit.errors import DataError
    from dlogit.estimator import load_model

    model = load_model(model_path)
    source = model.meta_.get("source", {}) or {}
    if label is None:
        label = source.get("label") or "label"
    X, y, info = load_local(data, label=label, labels=labels, require_label=require_label)
    want = model.n_features_in_
    if X.shape[1] != want:
        raise DataError(f"{data} has {X.shape[1]} feature columns but the model was trained on {want}")
    names = source.get("feature_names")
    if names and info.columns and list(info.columns) != list(names):
        raise DataError(f"the feature columns of {data} differ from those the model was trained on")
    return model, X, y
