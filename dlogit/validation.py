"""Checks on training data, run where the data lives (client, worker or GPU). Pure."""

from __future__ import annotations

from typing import Any

from dlogit._xp import get_xp
from dlogit.errors import DataError


def check_chunk(X: Any, y: Any, index: int = 0, where: str = "") -> tuple[int, int]:
    """Validate one chunk; return ``(rows, positives)``.

    Raises :class:`DataError` naming the problem for: a non-2-D ``X``, non-numeric values, NaN or
    infinity, ``X``/``y`` row-count mismatch, labels other than 0 and 1.
    """
    at = f" (chunk {index}{', ' + where if where else ''})" if index or where else ""
    xp = get_xp(X)
    if X.ndim != 2:
        raise DataError(f"X must be 2-D (rows x features), got {X.ndim}-D{at}")
    if y.ndim != 1:
        raise DataError(f"labels must be 1-D, got shape {tuple(y.shape)}{at}")
    if X.dtype.kind not in "fiub":
        raise DataError(f"X must be numeric, got dtype {X.dtype}{at}")
    if y.dtype.kind not in "fiub":
        raise DataError(f"labels must be numeric 0/1, got dtype {y.dtype}{at}")
    if X.shape[0] != y.shape[0]:
        raise DataError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels{at}")
    if X.dtype.kind == "f" and not bool(xp.isfinite(X).all()):
        bad = int((~xp.isfinite(X)).sum())
        raise DataError(f"X contains {bad} NaN or infinite value(s){at}")
    if y.dtype.kind == "f" and not bool(xp.isfinite(y).all()):
        raise DataError(f"labels contain NaN or infinite values{at}")
    ok = (y == 0) | (y == 1)
    if not bool(ok.all()):
        bad = xp.unique(y[~ok])[:5]
        raise DataError(f"labels must be 0 or 1; found {', '.join(str(v) for v in bad.tolist())}{at}")
    return int(X.shape[0]), int(y.sum())


def check_totals(rows: int, positives: int, n_features: int) -> None:
    """Whole-dataset checks once per-chunk counts are summed."""
    if rows == 0:
        raise DataError("no rows to train on (the data is empty)")
    if n_features == 0:
        raise DataError("no feature columns to train on")
    if positives == 0 or positives == rows:
        label = 1 if positives else 0
        raise DataError(f"labels hold a single class (all {label}): need both 0 and 1 to fit")
