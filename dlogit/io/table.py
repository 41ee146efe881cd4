"""Tables (CSV/TSV, Parquet): which columns are features, label, weights, index; one chunk's arrays.

Shared by :mod:`dlogit.io.csv` and :mod:`dlogit.io.parquet`, which differ only in how they find the
column types and read the columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlogit.errors import DataError
from dlogit.io.encode import Encoder
from dlogit.io.source import DatasetInfo, Piece, Source

#: kind of a column as the scan sees it
NUMERIC, TEXT = "numeric", "text"
#: index columns written by pandas: an empty CSV header name, a Parquet index
_PANDAS_INDEX = ("Unnamed: 0", "__index_level_0__")


@dataclass(frozen=True)
class TableLayout:
    """The roles of a table's columns, decided once by the scan."""

    names: tuple[str, ...]  # every column of the file, in order
    numeric: tuple[str, ...]  # numeric feature columns, in order
    categorical: tuple[str, ...]  # encoded columns (one-hot or hashed)
    label: str | None
    weights: str | None  # a weights column (not a .npy)
    label_text: bool  # the labels are text (read as strings)

    @property
    def needed(self) -> list[str]:
        """The columns a chunk read needs."""
        extra = [c for c in (self.label, self.weights) if c is not None]
        return list(self.numeric) + list(self.categorical) + extra


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")


def not_numeric(column: str, path: str, kind: str = TEXT) -> DataError:
    if kind == TEXT:
        return DataError(f"column {column!r} in {path} is not numeric (it holds text); encode it with "
                         f"--one-hot {column} (or --hash-features N for many distinct values)")
    return DataError(f"column {column!r} in {path} is not numeric (it holds {kind})")


def choose_columns(names: Sequence[str], kinds: dict[str, str], source: Source, path: str,
                   notices: list[str], encoder: Encoder | None = None,
                   index: Sequence[str] = ()) -> TableLayout:
    """Decide each column's role; raise :class:`DataError` naming the first problem.

    ``kinds`` maps a column to :data:`NUMERIC`, :data:`TEXT` or a type name (a timestamp ...);
    ``index`` lists the columns the writer marked as the frame's index (pandas' Parquet metadata).
    """
    names = list(names)
    duplicated = sorted({c for c in names if names.count(c) > 1})
    if duplicated:
        raise DataError(f"column {duplicated[0]!r} appears more than once in {path}: give every column "
                        "a distinct name")
    label = source.label
    if label is not None and label not in names:
        if source.require_label:
            raise DataError(f"label column {label!r} not found in {path}; columns are: {_shown(names)}")
        label = None
    elif label is None and source.require_label:
        raise DataError(f"{path} is a table: name its label column with --label")
    weights = source.weights if source.weights_path is None else None
    if weights is not None:
        if weights not in names:
            raise DataError(f"weights column {weights!r} not found in {path}; columns are: {_shown(names)}")
        if kinds[weights] != NUMERIC:
            raise DataError(f"weights column {weights!r} in {path} is not numeric")
    if weights is not None and weights == label:
        raise DataError(f"column {label!r} cannot be both the label and the weights")
    dropped: set[str] = set()
    if source.index_col is not None:
        if source.index_col in names:
            dropped.add(source.index_col)
        elif encoder is None and source.features is None:  # columns taken by name need no index
            raise DataError(f"index column {source.index_col!r} not found in {path}; "
                            f"columns are: {_shown(names)}")
    else:
        marked = [c for c in index if c in names and c not in (label, weights)]
        if not marked and names and names[0] in _PANDAS_INDEX and names[0] not in (label, weights):
            marked = [names[0]]
        for c in marked:
            dropped.add(c)
            notices.append(f"dropped column {c!r} (a pandas index); use --index-col to choose another")
    taken = {label, weights} | dropped
    if encoder is not None:
        for c in encoder.columns:
            if c not in names:
                raise DataError(f"column {c!r} the model was trained on is missing from {path}")
            if c in taken:
                raise DataError(f"column {c!r} is a feature of the model but the label/weights/index here")
        for c in encoder.numeric:
            if kinds[c] != NUMERIC:
                raise not_numeric(c, path, kinds[c])
        return TableLayout(tuple(names), encoder.numeric, encoder.categorical, label, weights,
                           label is not None and kinds[label] == TEXT)
    if source.features is not None:
        missing = [c for c in source.features if c not in names]
        if missing:
            raise DataError(f"column {missing[0]!r} the model was trained on is missing from {path}")
        for c in source.features:
            if c in (label, weights):
                raise DataError(f"column {c!r} is a feature of the model but the label/weights here")
            if kinds[c] != NUMERIC:
                raise not_numeric(c, path, kinds[c])
        return TableLayout(tuple(names), tuple(source.features), (), label, weights,
                           label is not None and kinds[label] == TEXT)
    categorical = list(source.one_hot)
    for c in categorical:
        if c not in names:
            raise DataError(f"--one-hot column {c!r} not found in {path}; columns are: {_shown(names)}")
        if c in taken:
            raise DataError(f"--one-hot column {c!r} is the label, the weights or the index")
    if len(set(categorical)) != len(categorical):
        raise DataError("a column is named twice in --one-hot")
    rest = [c for c in names if c not in taken and c not in categorical]
    if source.hash_features is not None and not categorical:
        categorical = [c for c in rest if kinds[c] == TEXT]
        rest = [c for c in rest if c not in categorical]
        if categorical:
            notices.append(f"hashing the text column(s) {_shown(categorical)} into "
                           f"{source.hash_features} buckets")
    for c in rest:
        if kinds[c] != NUMERIC:
            raise not_numeric(c, path, kinds[c])
    return TableLayout(tuple(names), tuple(rest), tuple(categorical), label, weights,
                       label is not None and kinds[label] == TEXT)


def labels_as(values: Any, declared: str, label: str, path: str) -> np.ndarray:
    """The labels of one chunk in the type the scan declared (checked lossless), never missing."""
    import pandas as pd

    arr = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    missing = pd.isna(arr)
    if missing.any():
        raise DataError(f"label column {label!r} in {path} has {int(missing.sum())} missing value(s)")
    if declared == "object":
        return arr.astype(object, copy=False)
    if arr.dtype == np.dtype(declared):
        return arr
    if arr.dtype.kind in "fiub":
        out = arr.astype(declared)
        if np.array_equal(out, arr):
            return out
    raise DataError(f"label column {label!r} in {path} holds {arr.dtype} values where its first rows "
                    f"hold {declared}")


def weights_as(values: Any, column: str, path: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"weights column {column!r} in {path} is not numeric") from None


def dense_features(get: Callable[[str], Any], columns: Sequence[str], n: int, dtype: str,
                   path: str) -> np.ndarray:
    """A C-contiguous ``(n, len(columns))`` array filled column by column (one copy)."""
    X = np.empty((n, len(columns)), dtype=dtype)
    for j, c in enumerate(columns):
        col = get(c)
        kind = getattr(getattr(col, "dtype", None), "kind", "O")
        if kind not in "fiub":
            raise not_numeric(c, path)
        X[:, j] = col
    return X


def table_piece(frame: Any, info: DatasetInfo, path: str, weights: np.ndarray | None,
                where: Callable[[int], str] | None = None, X: np.ndarray | None = None) -> Piece:
    """One chunk from a table's columns (a DataFrame or a dict of arrays); ``where(i)`` says where its
    local row ``i`` lies, for the message naming a NaN or infinite value. ``X``: the dense features,
    already built from the numeric columns (the CSV reader's Arrow path); ``frame`` then needs only the
    label and weights columns."""
    from dlogit.io.source import check_finite

    lay: TableLayout = info.layout.table
    unseen = 0
    if X is None and info.encoder is not None:
        X, unseen = info.encoder.transform(frame, info.dtype)
    elif X is None:
        n = len(frame[lay.needed[0]]) if lay.needed else 0
        X = dense_features(lambda c: frame[c], lay.numeric, n, info.dtype, path)
    names = info.feature_names or list(lay.numeric)
    check_finite(X, where or (lambda i: f"{path} row {i + 1} of a chunk"),
                 lambda j: f"column {names[j]!r}" if j < len(names) else f"column {j}")
    # labels only where they are needed: predict reads data whose label column may be empty
    y = labels_as(frame[lay.label], info.label_dtype or "float64", lay.label, path) \
        if lay.label is not None and info.source.require_label else None
    if lay.weights is not None:
        weights = weights_as(frame[lay.weights], lay.weights, path)
    return Piece(X, y, weights, unseen)
