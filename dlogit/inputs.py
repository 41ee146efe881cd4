"""Every input a scikit-learn user hands the estimator, turned into what the engine trains on.

In memory -- NumPy, CuPy, SciPy sparse (any format; CSR is kept), Python lists, pandas
DataFrame/Series, pyarrow Tables, polars DataFrames (through their NumPy/Arrow conversion, no hard
dependency) -- they are validated here (scikit-learn's ``validate_data``: ``n_features_in_``,
``feature_names_in_``) and cut into row chunks. Dask arrays (known or unknown chunk sizes) and Dask
DataFrames/Series stay lazy: their partitions become row chunks without a client round trip per
partition, and the workers validate them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dlogit._xp import is_cupy, to_numpy
from dlogit.config import setting
from dlogit.errors import DataError


@dataclass
class FitData:
    dask: bool
    n_features: int
    client: Any = None
    X: Any = None
    y: Any = None
    w: Any = None
    X_chunks: list[Any] = field(default_factory=list)
    y_chunks: list[Any] = field(default_factory=list)
    w_chunks: list[Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _is_dask_collection(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith(("dask.", "dask_expr"))


def _is_dask_frame(x: Any) -> bool:
    return _is_dask_collection(x) and hasattr(x, "to_dask_array") and hasattr(x, "npartitions")


def _numeric_dtype(t: Any) -> bool:
    """Whether a (pandas, NumPy or extension) column dtype holds numbers or booleans; a category
    counts when its categories do."""
    import pandas as pd

    if isinstance(t, pd.CategoricalDtype):
        return _numeric_dtype(t.categories.dtype)
    return bool(pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t))


def check_frame_columns(dtypes: Any, what: str) -> None:
    """A :class:`DataError` naming the columns of a DataFrame (pandas or Dask) that are not numeric:
    estimator inputs are numbers (text and categories are encoded by the caller)."""
    bad = [(str(c), str(t)) for c, t in dtypes.items() if not _numeric_dtype(t)]
    if not bad:
        return
    shown = ", ".join(f"{c!r} ({t})" for c, t in bad[:5])
    shown += f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise DataError(f"column{'s' if len(bad) > 1 else ''} {shown} of {what} "
                    f"{'are' if len(bad) > 1 else 'is'} not numeric: one-hot encode "
                    f"{'them' if len(bad) > 1 else 'it'} (e.g. pandas.get_dummies) or drop "
                    f"{'them' if len(bad) > 1 else 'it'}")


def _frame_to_dask_array(df: Any, what: str) -> tuple[Any, list[str] | None]:
    """A Dask DataFrame/Series as a Dask array (partitions -> row chunks of unknown size)."""
    if getattr(df, "ndim", 1) == 2:
        check_frame_columns(df.dtypes, what)
        return df.to_dask_array(lengths=None), [str(c) for c in df.columns]
    return df.to_dask_array(lengths=None), None


def _arrow_like(x: Any) -> Any:
    """pyarrow Tables and polars DataFrames become pandas (feature names kept)."""
    mod = type(x).__module__
    if mod.startswith("pyarrow") and hasattr(x, "to_pandas"):
        return x.to_pandas()
    if mod.startswith("polars") and hasattr(x, "to_pandas"):
        return x.to_pandas()
    return x


def _wrap_value_error(exc: ValueError) -> DataError:
    """scikit-learn's validation errors as :class:`DataError` (the CLI prints the first line)."""
    return exc if isinstance(exc, DataError) else DataError(str(exc).strip() or "bad input")


def is_dask_input(*arrays: Any) -> bool:
    """True when any of ``arrays`` is a Dask collection."""
    return any(_is_dask_collection(a) for a in arrays if a is not None)


def prepare_fit(est: Any, X: Any, y: Any, sample_weight: Any, client: Any) -> FitData:
    """Validate and shape the fit's inputs (sets ``n_features_in_`` / ``feature_names_in_`` on est)."""
    from dlogit import engine

    if y is None:
        raise DataError("LogisticRegression requires y to be passed, but the target y is None")
    if any(_is_dask_collection(a) for a in (X, y, sample_weight) if a is not None):
        client = client if client is not None else engine.current_client()
        if client is None:  # no cluster: compute and train here
            import dask

            X, y, sample_weight = dask.compute(X, y, sample_weight)
        else:
            return _prepare_dask(est, X, y, sample_weight, client)
    return _prepare_memory(est, X, y, sample_weight)


def _prepare_dask(est: Any, X: Any, y: Any, sample_weight: Any, client: Any) -> FitData:
    import dask.array as da

    names = None
    if _is_dask_frame(X):
        X, names = _frame_to_dask_array(X, "X")
    X = da.asarray(X) if not isinstance(X, da.Array) else X
    if X.ndim != 2:
        raise DataError(f"X must be 2-D (rows x features), got {X.ndim}-D")
    if _is_dask_frame(y):
        y, _ = _frame_to_dask_array(y, "y")
    elif not isinstance(y, da.Array):
        y = da.from_array(np.asarray(y), chunks=(X.chunks[0],)) if all(np.isfinite(X.chunks[0])) \
            else da.from_array(np.asarray(y))
    w = sample_weight
    if w is not None:
        if _is_dask_frame(w):
            w, _ = _frame_to_dask_array(w, "sample_weight")
        elif not isinstance(w, da.Array):
            w = np.asarray(w, dtype=np.float64)
            if w.ndim != 1:
                raise DataError(f"sample_weight must be 1-D, got shape {w.shape}")
            w = da.from_array(w, chunks=(X.chunks[0],)) if all(np.isfinite(X.chunks[0])) else da.from_array(w)
    d = int(X.shape[1])
    est.n_features_in_ = d
    if names is not None:
        est.feature_names_in_ = np.asarray(names, dtype=object)
    elif hasattr(est, "feature_names_in_"):
        del est.feature_names_in_
    return FitData(dask=True, n_features=d, client=client, X=X, y=y, w=w,
                   info={"n_chunks": int(X.numblocks[0]), "dtype": str(X.dtype)})


def checked_sample_weight(sample_weight: Any, X: Any) -> np.ndarray:
    """``sample_weight`` as float64, one per row of ``X``, finite and >= 0 (else scikit-learn's
    ``ValueError``, its message) -- scikit-learn's own check, private in name (no public one exists):
    the one place dlogit calls it (tests/test_private_apis.py pins what it does)."""
    from sklearn.utils.validation import _check_sample_weight

    return _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)


def _prepare_memory(est: Any, X: Any, y: Any, sample_weight: Any) -> FitData:
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import validate_data

    from dlogit.data import chunk_rows_for, row_ranges

    if is_cupy(X):
        if X.ndim != 2:
            raise DataError(f"X must be 2-D (rows x features), got shape {tuple(X.shape)}")
        est.n_features_in_ = int(X.shape[1])
        if hasattr(est, "feature_names_in_"):
            del est.feature_names_in_
        y = y if is_cupy(y) else np.asarray(y)
        if y.ndim != 1:
            raise DataError(f"labels must be 1-D, got shape {tuple(y.shape)}")
        if y.shape[0] != X.shape[0]:
            raise DataError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels")
        if sample_weight is not None:
            import cupy

            sample_weight = cupy.asarray(sample_weight, dtype=cupy.float64)
    else:
        X = _arrow_like(X)
        y = _arrow_like(y)
        if getattr(X, "ndim", 0) == 2 and hasattr(X, "dtypes") and hasattr(X, "columns"):
            check_frame_columns(X.dtypes, "X")
        try:
            X, y = validate_data(est, X, y, accept_sparse=["csr"], dtype=[np.float64, np.float32],
                                 y_numeric=False, multi_output=False)
            check_classification_targets(y)
            if sample_weight is not None:
                sample_weight = checked_sample_weight(sample_weight, X)
        except ValueError as exc:
            raise _wrap_value_error(exc) from None
    n, d = (int(v) for v in X.shape)
    if n == 0:
        raise DataError("no rows to train on (the data is empty)")
    sparse = hasattr(X, "nnz")
    if sparse:
        per_row = max(1.0, X.nnz / max(1, n)) * (X.dtype.itemsize + 4)
        import dask

        target = dask.utils.parse_bytes(setting("dlogit.chunk-bytes"))
        per = int(est.chunk_rows) if est.chunk_rows else max(1, int(target // per_row))
    else:
        per = chunk_rows_for(d, X.dtype.itemsize, est.chunk_rows)
    ranges = row_ranges(n, per)
    xs = [X[s:e] for s, e in ranges]
    ys = [y[s:e] for s, e in ranges]
    ws = None if sample_weight is None else [sample_weight[s:e] for s, e in ranges]
    return FitData(dask=False, n_features=d, X_chunks=xs, y_chunks=ys, w_chunks=ws,
                   info={"n_chunks": len(xs), "dtype": str(X.dtype)})


def _finite_chunk(c: Any) -> Any:
    from dlogit._xp import get_xp

    data = c.data if hasattr(c, "nnz") else c
    xp = get_xp(data)
    if data.dtype.kind == "f" and data.size and not bool(xp.isfinite(data).all()):
        raise DataError(f"X contains {int((~xp.isfinite(data)).sum())} NaN or infinite value(s)")
    return c


def prepare_predict(est: Any, X: Any) -> tuple[Any, bool]:
    """``(X, lazy)`` for prediction: checked against the fitted features (names too)."""
    d = int(est.n_features_in_)
    if _is_dask_collection(X):
        import dask.array as da

        names = None
        if _is_dask_frame(X):
            X, names = _frame_to_dask_array(X, "X")
        X = da.asarray(X) if not isinstance(X, da.Array) else X
        fitted = getattr(est, "feature_names_in_", None)
        if names is not None and fitted is not None and list(names) != [str(n) for n in fitted]:
            raise DataError("the feature names of X differ from those seen in fit")
        if X.ndim != 2 or X.shape[1] != d:
            raise DataError(f"X has {X.shape[1] if X.ndim == 2 else '?'} features, but the model "
                            f"expects {d}")
        return X.map_blocks(_finite_chunk, dtype=X.dtype), True
    if is_cupy(X):
        if X.ndim != 2 or X.shape[1] != d:
            raise DataError(f"X has {X.shape[1] if X.ndim == 2 else '?'} features, but the model expects {d}")
        _finite_chunk(X)
        return X, False
    X = _arrow_like(X)
    if getattr(X, "ndim", 0) == 2 and hasattr(X, "dtypes") and hasattr(X, "columns"):
        check_frame_columns(X.dtypes, "X")
    from sklearn.utils.validation import validate_data  # here: Dask and CuPy input need no scikit-learn

    try:
        X = validate_data(est, X, reset=False, accept_sparse=["csr"], dtype=[np.float64, np.float32])
    except ValueError as exc:
        raise _wrap_value_error(exc) from None
    return X, False


def as_dask_labels(y: Any, like: Any) -> Any:
    """Labels aligned with the row chunks of a lazy prediction."""
    import dask.array as da

    if _is_dask_frame(y):
        y, _ = _frame_to_dask_array(y, "y")
    if isinstance(y, da.Array):
        return y.rechunk(like.chunks) if all(np.isfinite(like.chunks[0])) else y
    y = np.asarray(to_numpy(y))
    return da.from_array(y, chunks=like.chunks) if all(np.isfinite(like.chunks[0])) else da.from_array(y)
