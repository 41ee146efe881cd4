"""The model file: a NumPy ``.npz`` any NumPy can read (no pickles, no Dask, no GPU).

Keys (see ARCHITECTURE.md): ``coef`` (1, d), ``intercept`` (1,), ``classes`` (2,),
``history_loss``, ``history_grad_norm``, ``history_step_seconds`` (n_iter,), and ``meta``, a 0-d string
holding JSON (``format``: ``"dlogit-model"``, ``version``: 1, the fit's parameters and outcome).
Reading it by hand::

    m = numpy.load("model.npz")
    proba = 1 / (1 + numpy.exp(-(X @ m["coef"][0] + m["intercept"][0])))
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from dlogit.errors import ModelError

FORMAT = "dlogit-model"
VERSION = 1
ARRAYS = ("coef", "intercept", "classes", "history_loss", "history_grad_norm", "history_step_seconds")


def save_arrays(path: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write the model atomically (a temporary file renamed into place)."""
    from dlogit.files import atomic_write

    if not path.endswith(".npz"):
        raise ModelError(f"model files end in .npz (NumPy archive), got {path!r}")
    meta = {"format": FORMAT, "version": VERSION, **meta}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

    atomic_write(path, write)


def load_arrays(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and check a model file; return ``(arrays, meta)``."""
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path} is not a dlogit model (cannot read it as .npz: {exc})") from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (KeyError, ValueError):
        raise ModelError(f"{path} is not a dlogit model (no metadata)") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path} is not a dlogit model")
    if meta.get("version", 0) > VERSION:
        raise ModelError(f"{path} was written by a newer dlogit (format version {meta['version']})")
    missing = [k for k in ("coef", "intercept") if k not in arrays]
    if missing:
        raise ModelError(f"{path} is missing {', '.join(missing)}")
    return arrays, meta
