"""Data sources as lazy Dask arrays whose chunks are read (or generated) by the workers themselves.

``synthetic(rows, cols, seed)`` — the textbook data: X ~ N(0, 1), y ~ uniform {0, 1}.
``read_data(path, label=..., labels=...)`` — CSV or Parquet (labels in column ``label``) or NPY (labels
in the NPY file ``labels``). The file is inspected once (by a worker when a client is given, so the
path only has to exist where the workers run) and each chunk task reads its own rows: nothing is
shipped through the client.

Chunking depends only on the data (``chunk_rows`` or ``dlogit.chunk-bytes``), never on the number of
workers, so a fit gives the same coefficients on 1, 2 or 4 workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np

from dlogit.errors import DataError
from dlogit.files import atomic_write

FORMATS = (".csv", ".parquet", ".pq", ".npy")


def chunk_rows_for(n_features: int, itemsize: int, chunk_rows: int | None = None) -> int:
    """Rows per chunk: ``chunk_rows`` when given, else about ``dlogit.chunk-bytes`` of X per chunk."""
    if chunk_rows is not None:
        if int(chunk_rows) < 1:
            raise DataError(f"chunk rows must be at least 1, got {chunk_rows}")
        return int(chunk_rows)
    target = dask.utils.parse_bytes(dask.config.get("dlogit.chunk-bytes"))
    return max(1, target // max(1, n_features * itemsize))


def row_ranges(n_rows: int, rows_per_chunk: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``n_rows`` rows."""
    return [(s, min(n_rows, s + rows_per_chunk)) for s in range(0, n_rows, rows_per_chunk)]


def split_array(a: Any, rows_per_chunk: int) -> list[Any]:
    """Row chunks (views) of an in-memory array."""
    return [a[s:e] for s, e in row_ranges(a.shape[0], rows_per_chunk)] or [a[:0]]


def parse_shape(text: str) -> tuple[int, int]:
    """``"400x784"`` -> ``(400, 784)``."""
    try:
        r, c = text.lower().split("x")
        rows, cols = int(r), int(c)
    except ValueError:
        raise DataError(f"shape must look like ROWSxCOLS (e.g. 400x784), got {text!r}") from None
    if rows < 1 or cols < 1:
        raise DataError(f"shape must have at least one row and one column, got {text!r}")
    return rows, cols


# --------------------------------------------------------------------------------------------------
# synthetic data


def _rng(seed: int, chunk: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, chunk, stream])


def synthetic_x(seed: int, chunk: int, rows: int, cols: int, dtype: str, gpu: bool = False) -> Any:
    x = _rng(seed, chunk, 0).standard_normal((rows, cols), dtype=np.dtype(dtype))
    return _to_device(x, gpu)


def synthetic_y(seed: int, chunk: int, rows: int, dtype: str, gpu: bool = False) -> Any:
    y = _rng(seed, chunk, 1).integers(0, 2, rows).astype(dtype)
    return _to_device(y, gpu)


def synthetic_xy(seed: int, chunk: int, rows: int, cols: int, dtype: str, gpu: bool = False) -> tuple[Any, Any]:
    """One chunk's X and y, made by one task so that both land on the same worker."""
    return synthetic_x(seed, chunk, rows, cols, dtype, gpu), synthetic_y(seed, chunk, rows, dtype, gpu)


def _to_device(a: np.ndarray, gpu: bool) -> Any:
    if not gpu:
        return a
    import cupy

    return cupy.asarray(a)


def _meta(dtype: Any, ndim: int, gpu: bool) -> Any:
    if gpu:
        import cupy

        return cupy.empty((0,) * ndim, dtype=dtype)
    return np.empty((0,) * ndim, dtype=dtype)


def synthetic(rows: int, cols: int, seed: int = 0, dtype: str = "float64", chunk_rows: int | None = None,
              gpu: bool = False) -> tuple[Any, Any]:
    """The textbook data as lazy Dask arrays, each chunk generated where it is computed."""
    dtype = np.dtype(dtype).name
    per = chunk_rows_for(cols, np.dtype(dtype).itemsize, chunk_rows)
    xs, ys = [], []
    for i, (s, e) in enumerate(row_ranges(rows, per)):
        part = dask.delayed(synthetic_xy, pure=True, nout=2)(seed, i, e - s, cols, dtype, gpu)
        xs.append(da.from_delayed(part[0], shape=(e - s, cols), dtype=dtype, meta=_meta(dtype, 2, gpu)))
        ys.append(da.from_delayed(part[1], shape=(e - s,), dtype=dtype, meta=_meta(dtype, 1, gpu)))
    return da.concatenate(xs), da.concatenate(ys)


def synthetic_numpy(rows: int, cols: int, seed: int = 0, dtype: str = "float64",
                    chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The same data as :func:`synthetic`, generated in this process."""
    per = chunk_rows_for(cols, np.dtype(dtype).itemsize, chunk_rows)
    ranges = row_ranges(rows, per)
    X = np.concatenate([synthetic_x(seed, i, e - s, cols, dtype) for i, (s, e) in enumerate(ranges)])
    y = np.concatenate([synthetic_y(seed, i, e - s, dtype) for i, (s, e) in enumerate(ranges)])
    return X, y


# --------------------------------------------------------------------------------------------------
# files


@dataclass
class FileInfo:
    """What one look at a data file tells (computed where the file is readable)."""

    path: str
    kind: str  # "csv", "parquet", "npy"
    n_rows: int
    columns: list[str] = field(default_factory=list)  # feature columns (csv/parquet)
    label: str | None = None
    n_features: int = 0
    dtype: str = "float64"
    pieces: list[Any] = field(default_factory=list)  # per chunk: (offset, nbytes, rows) or row groups
    labels_path: str | None = None
    piece_rows: list[int] = field(default_factory=list)  # rows per chunk (parquet)


def _kind(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        return "csv"
    if ext in (".parquet", ".pq"):
        return "parquet"
    if ext == ".npy":
        return "npy"
    raise DataError(f"cannot tell the format of {path!r}: use a .csv, .parquet or .npy file")


def _open_error(path: str, exc: Exception) -> DataError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
    return DataError(f"cannot read {path}: {reason}")


def _check_columns(names: list[str], dtypes: list[Any], label: str | None, path: str,
                   require_label: bool) -> tuple[list[str], str | None]:
    if label is not None and label not in names:
        shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
        if require_label:
            raise DataError(f"label column {label!r} not found in {path}; columns are: {shown}")
        label = None
    bad = [n for n, t in zip(names, dtypes) if not _numeric(t)]
    if bad:
        raise DataError(f"column {bad[0]!r} in {path} is not numeric"
                        + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    return [n for n in names if n != label], label


def _numeric(dtype: Any) -> bool:
    kind = getattr(dtype, "kind", None)
    if kind is not None:
        return kind in "fiub"
    import pyarrow as pa

    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype)


def scan_file(path: str, label: str | None = None, labels: str | None = None,
              chunk_rows: int | None = None, require_label: bool = True) -> FileInfo:
    """Inspect ``path`` (and ``labels``); plan the chunks. Raises :class:`DataError` on bad input."""
    kind = _kind(path)
    try:
        if kind == "npy":
            return _scan_npy(path, labels, chunk_rows, require_label)
        if kind == "csv":
            return _scan_csv(path, label, chunk_rows, require_label)
        return _scan_parquet(path, label, chunk_rows, require_label)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything unreadable becomes one clear line
        raise _open_error(path, exc) from None


def _scan_npy(path: str, labels: str | None, chunk_rows: int | None, require_label: bool) -> FileInfo:
    X = np.load(path, mmap_mode="r", allow_pickle=False)
    if X.ndim != 2:
        raise DataError(f"{path} must hold a 2-D array (rows x features), got shape {X.shape}")
    if X.dtype.kind not in "fiub":
        raise DataError(f"{path} must hold numbers, got dtype {X.dtype}")
    if labels is None and require_label:
        raise DataError(f"{path} is an NPY file: give its labels with --labels FILE.npy")
    if labels is not None:
        try:
            y = np.load(labels, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            raise _open_error(labels, exc) from None
        if y.ndim != 1:
            raise DataError(f"labels in {labels} must be 1-D, got shape {y.shape}")
        if y.shape[0] != X.shape[0]:
            raise DataError(f"X has {X.shape[0]} rows but {labels} has {y.shape[0]} labels")
    dtype = X.dtype.name if X.dtype.kind == "f" else "float64"
    per = chunk_rows_for(X.shape[1], np.dtype(dtype).itemsize, chunk_rows)
    return FileInfo(path, "npy", X.shape[0], n_features=X.shape[1], dtype=dtype,
                    pieces=row_ranges(X.shape[0], per), labels_path=labels)


def _scan_csv(path: str, label: str | None, chunk_rows: int | None, require_label: bool) -> FileInfo:
    import pandas as pd

    head = pd.read_csv(path, nrows=1000)
    if head.empty:
        raise DataError(f"{path} holds no rows (only a header)")
    names = [str(c) for c in head.columns]
    features, label = _check_columns(names, list(head.dtypes), label, path, require_label)
    per_rows = chunk_rows_for(len(features), 8, chunk_rows)
    pieces = []  # (offset, nbytes, rows), split on line boundaries
    with open(path, "rb") as f:
        f.readline()  # header
        start = f.tell()
        rows = 0
        offset = start
        for line in f:
            if not line.strip():
                continue
            rows += 1
            if rows == per_rows:
                pos = f.tell()
                pieces.append((offset, pos - offset, rows))
                offset, rows = pos, 0
        end = f.tell()
        if rows:
            pieces.append((offset, end - offset, rows))
    n = sum(p[2] for p in pieces)
    return FileInfo(path, "csv", n, columns=features, label=label, n_features=len(features),
                    pieces=pieces)


def _scan_parquet(path: str, label: str | None, chunk_rows: int | None, require_label: bool) -> FileInfo:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    names = list(schema.names)
    features, label = _check_columns(names, [schema.field(n).type for n in names], label, path,
                                     require_label)
    per_rows = chunk_rows_for(len(features), 8, chunk_rows)
    pieces: list[list[int]] = []
    piece_rows: list[int] = []
    acc: list[int] = []
    acc_rows = 0
    for g in range(pf.num_row_groups):
        acc.append(g)
        acc_rows += pf.metadata.row_group(g).num_rows
        if acc_rows >= per_rows:
            pieces.append(acc)
            piece_rows.append(acc_rows)
            acc, acc_rows = [], 0
    if acc:
        pieces.append(acc)
        piece_rows.append(acc_rows)
    return FileInfo(path, "parquet", pf.metadata.num_rows, columns=features, label=label,
                    n_features=len(features), pieces=pieces, piece_rows=piece_rows)


def _frame_to_arrays(df: Any, info: FileInfo) -> tuple[np.ndarray, np.ndarray]:
    for c in df.columns:
        if not _numeric(df[c].dtype):
            raise DataError(f"column {c!r} in {info.path} is not numeric")
    X = df[info.columns].to_numpy(dtype=np.float64)
    y = df[info.label].to_numpy(dtype=np.float64) if info.label else np.empty(0)
    return X, y


def read_piece(info: FileInfo, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Read chunk ``i`` of a scanned file: ``(X, y)`` (``y`` empty when the file has no labels)."""
    try:
        if info.kind == "npy":
            s, e = info.pieces[i]
            X = np.array(np.load(info.path, mmap_mode="r")[s:e], dtype=info.dtype)
            y = (np.array(np.load(info.labels_path, mmap_mode="r")[s:e], dtype=info.dtype)
                 if info.labels_path else np.empty(0))
            return X, y
        if info.kind == "csv":
            import io

            import pandas as pd

            off, nbytes, _ = info.pieces[i]
            with open(info.path, "rb") as f:
                f.seek(off)
                buf = f.read(nbytes)
            names = info.columns + ([info.label] if info.label else [])
            header = pd.read_csv(info.path, nrows=0).columns
            df = pd.read_csv(io.BytesIO(buf), header=None, names=[str(c) for c in header])
            return _frame_to_arrays(df[names], info)
        import pyarrow.parquet as pq

        cols = info.columns + ([info.label] if info.label else [])
        df = pq.ParquetFile(info.path).read_row_groups(info.pieces[i], columns=cols).to_pandas()
        return _frame_to_arrays(df, info)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _open_error(info.path, exc) from None


def _piece_rows(info: FileInfo, i: int) -> float:
    p = info.pieces[i]
    if info.kind == "npy":
        return p[1] - p[0]
    if info.kind == "csv":
        return p[2]
    return info.piece_rows[i] if i < len(info.piece_rows) else float("nan")


def _getitem(t: tuple, k: int) -> Any:
    return t[k]


def _cast(a: np.ndarray, dtype: str | None) -> np.ndarray:
    return a if dtype is None else a.astype(dtype, copy=False)


def read_data(path: str, label: str | None = "label", labels: str | None = None,
              chunk_rows: int | None = None, dtype: str | None = None, client: Any = None,
              require_label: bool = True) -> tuple[Any, Any, FileInfo]:
    """Lazy ``(X, y, info)`` for a data file; chunks are read by whoever computes them.

    With ``client`` the file is inspected by a worker (so the path must be readable on the
    workers, not necessarily here). ``dtype`` (``"float32"``/``"float64"``) converts on read.
    """
    if client is not None:
        info = client.submit(scan_file, path, label, labels, chunk_rows, require_label,
                             pure=False).result()
    else:
        info = scan_file(path, label, labels, chunk_rows, require_label)
    out_dtype = dtype or info.dtype
    xs, ys = [], []
    for i in range(len(info.pieces)):
        piece = dask.delayed(read_piece, pure=True)(info, i)
        rows = _piece_rows(info, i)
        xs.append(da.from_delayed(dask.delayed(_cast)(dask.delayed(_getitem)(piece, 0), dtype),
                                  shape=(rows, info.n_features), dtype=out_dtype))
        ys.append(da.from_delayed(dask.delayed(_cast)(dask.delayed(_getitem)(piece, 1), dtype),
                                  shape=(rows if info.label or info.labels_path else 0,),
                                  dtype=out_dtype))
    if not xs:
        raise DataError(f"{path} holds no rows")
    return da.concatenate(xs), da.concatenate(ys), info


def load_local(path: str, label: str | None = "label", labels: str | None = None,
               require_label: bool = True) -> tuple[np.ndarray, np.ndarray | None, FileInfo]:
    """Read a whole data file into this process: ``(X, y or None, info)``."""
    info = scan_file(path, label, labels, None, require_label)
    parts = [read_piece(info, i) for i in range(len(info.pieces))]
    if not parts:
        raise DataError(f"{path} holds no rows")
    X = np.concatenate([p[0] for p in parts])
    has_y = bool(info.label or info.labels_path)
    y = np.concatenate([p[1] for p in parts]) if has_y else None
    return X, y, info


# --------------------------------------------------------------------------------------------------
# writing tables (atomically: see dlogit.files)


def write_table(path: str, columns: dict[str, np.ndarray]) -> None:
    """Write named columns to ``path`` (.csv, .parquet or .npy: a 2-D array of the columns in order)."""
    kind = _kind(path)

    def write(tmp: str) -> None:
        if kind == "npy":
            with open(tmp, "wb") as f:
                np.save(f, np.column_stack(list(columns.values())))
            return
        import pandas as pd

        df = pd.DataFrame(columns)
        if kind == "csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)

    atomic_write(path, write)
