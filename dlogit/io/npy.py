"""NPY: a 2-D ``.npy`` of features (memory-mapped), labels and weights from their own 1-D ``.npy``.

A chunk's X is a slice of the memory map: no copy unless the file's type is not the chunk type (or the
array is stored in Fortran order), which the scan reports in its notices. Over a URL the rows of a
chunk are read as one byte range.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlogit.errors import DataError
from dlogit.io import fs as fsio
from dlogit.io.source import DatasetInfo, Piece, Source, check_finite, row_ranges, rows_per_chunk


@dataclass(frozen=True)
class NpyArray:
    """Where an array lies inside a ``.npy`` file."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    fortran: bool
    offset: int  # bytes before the data


@dataclass(frozen=True)
class NpyLayout:
    X: NpyArray
    labels: NpyArray | None


def open_npy(path: str) -> NpyArray:
    """Read the header of a ``.npy`` file (local or URL). Object arrays (pickles) are refused."""
    fs, p = fsio.filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except Exception as exc:  # noqa: BLE001 - not an .npy, missing, unreadable
        raise fsio.read_error(path, exc) from None
    if dtype.hasobject:
        raise DataError(f"{path} holds Python objects (a pickle): save it as a numeric or string array")
    return NpyArray(path, tuple(int(s) for s in shape), dtype.str, bool(fortran), int(offset))


def rows_of(a: NpyArray, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of an array: a view of the memory map for a local file."""
    fs, p = fsio.filesystem(a.path)
    try:
        if fsio.is_local(fs):
            return np.asarray(np.load(p, mmap_mode="r", allow_pickle=False)[start:stop])
        dtype = np.dtype(a.dtype)
        if a.fortran and len(a.shape) > 1:
            whole = np.load(io.BytesIO(fsio.read_all(a.path)), allow_pickle=False)
            return whole[start:stop]
        row = int(np.prod(a.shape[1:], dtype=np.int64)) * dtype.itemsize
        data = fsio.read_range(a.path, a.offset + start * row, (stop - start) * row)
        return np.frombuffer(data, dtype=dtype).reshape((stop - start,) + a.shape[1:])
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise fsio.read_error(a.path, exc) from None


def open_vector(path: str, what: str, n_rows: int | None) -> NpyArray:
    """A 1-D ``.npy`` of labels or weights, checked against the row count (when known)."""
    if not path.lower().endswith(".npy"):
        raise DataError(f"{what} must be a 1-D .npy file, got {path!r}")
    a = open_npy(path)
    if len(a.shape) != 1:
        raise DataError(f"{what} in {path} must be 1-D, got shape {a.shape}")
    if n_rows is not None and a.shape[0] != n_rows:
        raise DataError(f"the data has {n_rows} rows but {path} has {a.shape[0]} {what}")
    return a


def open_weights(path: str) -> NpyArray:
    """A 1-D numeric ``.npy`` of weights."""
    a = open_vector(path, "weights", None)
    if np.dtype(a.dtype).kind not in "fiub":
        raise DataError(f"weights in {path} are not numeric (dtype {np.dtype(a.dtype)})")
    return a


def weights_slice(info: DatasetInfo, start: int, n: int) -> np.ndarray:
    """Weights of rows ``[start, start + n)`` from the source's weights ``.npy`` as float64."""
    path = info.source.weights_path
    assert path is not None
    a = open_npy(path)
    return np.asarray(rows_of(a, start, start + n), dtype=np.float64)


def plan(source: Source, kind: str, encoder: Any) -> DatasetInfo:
    X = open_npy(source.path)
    if len(X.shape) != 2:
        raise DataError(f"{source.path} must hold a 2-D array (rows x features), got shape {X.shape}")
    xdtype = np.dtype(X.dtype)
    if xdtype.kind not in "fiub":
        raise DataError(f"{source.path} must hold numbers, got dtype {xdtype}")
    n, d = X.shape
    if source.labels is None and source.require_label:
        raise DataError(f"{source.path} is an NPY file: give its labels with --labels FILE.npy")
    labels = open_vector(source.labels, "labels", n) if source.labels is not None else None
    if source.weights is not None and source.weights_path is None:
        raise DataError(f"the weights of an NPY file must be a 1-D .npy, got {source.weights!r}")
    dtype = source.dtype or (xdtype.name if xdtype.kind == "f" else "float64")
    notices = []
    if np.dtype(dtype) != xdtype:
        notices.append(f"{source.path} holds {xdtype.name}: each chunk is converted to {dtype} on read "
                       "(a copy)")
    elif X.fortran:
        notices.append(f"{source.path} is stored in Fortran order: each chunk is copied to C order on read")
    per = rows_per_chunk(source, d * np.dtype(dtype).itemsize)
    ranges = row_ranges(n, per)
    return DatasetInfo(source=source, kind="npy", n_features=d, feature_names=None, sparse=False,
                       dtype=dtype, pieces=ranges, piece_rows=[e - s for s, e in ranges],
                       has_labels=labels is not None, has_weights=source.weights is not None,
                       notices=notices, label_dtype=np.dtype(labels.dtype).str if labels else None,
                       layout=NpyLayout(X, labels))


def read_unit(info: DatasetInfo, u: int) -> list[Piece]:
    lay: NpyLayout = info.layout
    out = []
    for i in info.units[u]:
        s, e = info.pieces[i]
        X = np.ascontiguousarray(rows_of(lay.X, s, e), dtype=info.dtype)
        check_finite(X, lambda r, s=s: f"{lay.X.path}: row {s + r + 1}", lambda j: f"column {j} (0-based)")
        y = rows_of(lay.labels, s, e) if lay.labels is not None else None
        w = weights_slice(info, s, e - s) if info.source.weights_path else None
        out.append(Piece(X, y, w))
    return out
