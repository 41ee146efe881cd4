"""The model file: a NumPy ``.npz`` any NumPy can read (no pickles, no Dask, no GPU).

Format version 2 (ARCHITECTURE.md, "Model file"): arrays ``coef`` float64 (K', d) -- K' = 1 for a
binary model, K for a multinomial one --, ``intercept`` (K',), ``classes`` (K,) (int64, float64, bool
or unicode), ``history_loss``, ``history_grad_norm``, ``history_step_seconds`` (n_iter,), optional
``cv_l2``, ``cv_l1`` (m,) and ``cv_scores`` (m, folds) for a model chosen by cross-validation; ``meta``
is a 0-d string holding JSON (``format``: ``"dlogit-model"``, ``version``: 2, ``family``,
``n_classes``, ``class_counts``, ``classes_kind``, ``feature_names``, ``n_nonzero``, ``weighted``,
``params``, the fit's outcome, ``source``, ``encoder``, ``cv``). Version-1 files (binary, classes
[0, 1]) still load. Reading a binary model by hand::

    m = numpy.load("model.npz")
    proba = 1 / (1 + numpy.exp(-(X @ m["coef"][0] + m["intercept"][0])))   # P(y = classes[1])
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from dlogit.errors import ModelError

FORMAT = "dlogit-model"
VERSION = 2
ARRAYS = ("coef", "intercept", "classes", "history_loss", "history_grad_norm", "history_step_seconds")


def save_arrays(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write the model atomically (a temporary file renamed into place)."""
    from dlogit.files import atomic_write

    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ModelError(f"model files end in .npz (NumPy archive), got {path!r}")
    meta = {"format": FORMAT, "version": VERSION, **meta}
    classes = np.asarray(arrays["classes"])
    if classes.dtype.kind == "O":
        arrays = {**arrays, "classes": classes.astype(str)}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            payload: dict[str, Any] = {"meta": np.array(json.dumps(meta, default=_json_default)), **arrays}
            np.savez(f, **payload)

    atomic_write(path, write)


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def load_arrays(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and check a model file; return ``(arrays, meta)`` (version 1 normalized to version 2)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception:  # noqa: BLE001 - not an npz, truncated, or holds pickled objects
        raise ModelError(f"{path} is not a dlogit model file (not a readable .npz archive)") from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (KeyError, ValueError):
        raise ModelError(f"{path} is not a dlogit model (no metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{path} is not a dlogit model")
    if meta.get("version", 0) > VERSION:
        raise ModelError(f"{path} was written by a newer dlogit (format version {meta['version']})")
    missing = [k for k in ("coef", "intercept") if k not in arrays]
    if missing:
        raise ModelError(f"{path} is missing {', '.join(missing)}")
    coef = np.asarray(arrays["coef"], dtype=np.float64)
    if coef.ndim != 2 or not np.all(np.isfinite(coef)) or not np.all(np.isfinite(arrays["intercept"])):
        raise ModelError(f"{path} holds no usable coefficients (non-finite or misshapen)")
    if meta.get("version", 1) < 2:
        meta = {**meta, "family": "binomial", "n_classes": 2}
        arrays.setdefault("classes", np.array([0, 1]))
    arrays.setdefault("classes", np.array([0, 1]))
    k = coef.shape[0]
    n_classes = len(arrays["classes"])
    if not ((k == 1 and n_classes == 2) or (k == n_classes and k >= 3)):
        raise ModelError(f"{path} has {k} coefficient rows for {n_classes} classes")
    return arrays, meta
