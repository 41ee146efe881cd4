"""Data sources as lazy Dask arrays whose chunks are read (or generated) by the workers themselves.

``synthetic(rows, cols, seed)`` — the textbook data: X ~ N(0, 1), y ~ uniform {0, 1}.
``read_data(source, client=...)`` — a file, directory, glob or URL in one of the formats of
:mod:`dlogit.io` (CSV/TSV, Parquet, NPY, LIBSVM, Zarr) as a :class:`Dataset` of lazy Dask arrays. With
a client the data is scanned by the workers (so the path only has to exist where the workers run) and
each chunk task reads its own rows: nothing is shipped through the client.
``load_local(source)`` — the same data read whole into this process (``predict``, ``evaluate``).

Chunking depends only on the data (``chunk_rows`` or ``dlogit.chunk-bytes``), never on the number of
workers, so a fit gives the same coefficients on 1, 2 or 4 workers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import dask
import numpy as np

from dlogit import io as dio
from dlogit.config import setting
from dlogit.errors import DataError
from dlogit.files import atomic_write
from dlogit.io import DatasetInfo, Encoder, Piece, Source
from dlogit.io.source import row_ranges

__all__ = ["Dataset", "DatasetInfo", "Encoder", "LocalData", "Piece", "Source", "chunk_rows_for", "load_local",
           "parse_shape", "read_data", "row_ranges", "split_array", "synthetic", "synthetic_numpy",
           "write_table"]


def chunk_rows_for(n_features: int, itemsize: int, chunk_rows: int | None = None) -> int:
    """Rows per chunk: ``chunk_rows`` when given, else about ``dlogit.chunk-bytes`` of X per chunk."""
    if chunk_rows is not None:
        if int(chunk_rows) < 1:
            raise DataError(f"chunk rows must be at least 1, got {chunk_rows}")
        return int(chunk_rows)
    target = dask.utils.parse_bytes(setting("dlogit.chunk-bytes"))
    return max(1, target // max(1, n_features * itemsize))


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
    """The Dask meta of a chunk: a CuPy array when CuPy imports here, else NumPy (a CPU client driving
    GPU workers: the chunks are still made on the workers' GPUs)."""
    if gpu:
        try:
            import cupy

            return cupy.empty((0,) * ndim, dtype=dtype)
        except Exception:  # noqa: BLE001, S110 - no CuPy (or no device) on the client: NumPy meta is fine
            pass
    return np.empty((0,) * ndim, dtype=dtype)


def to_device(block: Any) -> Any:
    """Move one chunk to the GPU of the worker computing it (dense -> CuPy, sparse -> cupyx CSR).

    Runs on the workers (``X.map_blocks(to_device)``): the client needs no CuPy."""
    import cupy

    if hasattr(block, "nnz"):
        import cupyx.scipy.sparse as cps

        return cps.csr_matrix(block)
    return cupy.asarray(block)


def on_device(a: Any) -> Any:
    """A Dask array whose chunks are moved to the workers' GPUs where they are computed."""
    sparse = hasattr(getattr(a, "_meta", None), "nnz")
    meta = _meta(a.dtype, a.ndim, gpu=not sparse)
    if sparse:
        meta = a._meta
    return a.map_blocks(to_device, dtype=a.dtype, meta=meta)


def synthetic(rows: int, cols: int, seed: int = 0, dtype: str = "float64", chunk_rows: int | None = None,
              gpu: bool = False) -> tuple[Any, Any]:
    """The textbook data as lazy Dask arrays, each chunk generated where it is computed."""
    import dask.array as da  # here: a worker generating or reading chunks loads no dask.array

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
class Dataset:
    """Lazy Dask arrays of a data source; chunks are read by whoever computes them.

    ``y`` holds the raw labels (numeric as stored, or strings); ``sample_weight`` float64 weights. Both
    are chunked exactly like the rows of ``X``; a chunk's X, y and weights come from one read. For the
    callers of dlogit 0.1 a Dataset unpacks as ``X, y, info = read_data(...)``.
    """

    X: Any
    y: Any | None
    sample_weight: Any | None
    info: DatasetInfo

    def __iter__(self) -> Iterator[Any]:
        return iter((self.X, self.y, self.info))


@dataclass
class LocalData:
    """A data source read whole into this process (:func:`load_local`).

    Unpacks as ``X, y, info`` (as dlogit 0.1's ``load_local`` returned).
    """

    X: Any
    y: np.ndarray | None
    sample_weight: np.ndarray | None
    info: DatasetInfo
    n_unseen: int = 0  # categorical values outside the encoder's vocabulary (encoded as zeros)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.X, self.y, self.info))


def _as_source(source: Source | str, fields: dict[str, Any]) -> Source:
    if isinstance(source, Source):
        return replace(source, **fields) if fields else source
    return Source(path=source, **fields)


def _read_unit(info: DatasetInfo, u: int) -> tuple[tuple[Any, Any, Any], ...]:
    return tuple(p.as_tuple() for p in dio.read_unit(info, u))


def _pick(parts: tuple[tuple[Any, Any, Any], ...], j: int, k: int) -> Any:
    return parts[j][k]


def _x_meta(info: DatasetInfo) -> Any:
    if info.sparse:
        import scipy.sparse as sp

        return sp.csr_matrix((0, info.n_features), dtype=info.dtype)
    return np.empty((0, info.n_features), dtype=info.dtype)


def dataset(info: DatasetInfo) -> Dataset:
    """The lazy Dask arrays of a scanned source: one read task per unit, then cheap picks per chunk."""
    import dask.array as da

    info_d = dask.delayed(info, name="dlogit-info-" + dask.base.tokenize(info), traverse=False)
    xmeta = _x_meta(info)
    ydtype = np.dtype(info.label_dtype or "float64")
    xs, ys, ws = [], [], []
    for u, members in enumerate(info.units):
        part = dask.delayed(_read_unit, pure=True)(info_d, u)
        for j, i in enumerate(members):
            rows = info.piece_rows[i]
            n = float("nan") if rows is None else int(rows)
            xs.append(da.from_delayed(dask.delayed(_pick, pure=True)(part, j, 0), shape=(n, info.n_features),
                                      dtype=info.dtype, meta=xmeta))
            if info.has_labels:
                ys.append(da.from_delayed(dask.delayed(_pick, pure=True)(part, j, 1), shape=(n,),
                                          dtype=ydtype, meta=np.empty(0, dtype=ydtype)))
            if info.has_weights:
                ws.append(da.from_delayed(dask.delayed(_pick, pure=True)(part, j, 2), shape=(n,),
                                          dtype=np.float64, meta=np.empty(0, dtype=np.float64)))
    if not xs:
        raise DataError(f"{info.source.path} holds no rows")
    return Dataset(da.concatenate(xs), da.concatenate(ys) if ys else None,
                   da.concatenate(ws) if ws else None, info)


def scan_on(client: Any, source: Source) -> DatasetInfo:
    """Scan ``source`` on the workers of ``client``: the plan on one worker, the pass on all of them.

    Relative paths are made absolute here first (the workers may run elsewhere).
    """
    source = source.absolute()
    if source.chunk_bytes is None and source.chunk_rows is None:
        # the client's dlogit.chunk-bytes, not the workers': the same chunks with or without a client
        from dataclasses import replace

        from dlogit.io.source import chunk_bytes_of

        source = replace(source, chunk_bytes=chunk_bytes_of(source))
    planned = client.submit(dio.on_workers, dio.plan, source, pure=False)
    info = planned.result()
    n = len(info.surveys)
    results = []
    if n:
        futures = client.map(dio.on_workers, [dio.survey] * n, [planned] * n, range(n), pure=False)
        results = client.gather(futures)
    return dio.finish(info, results)


def read_data(source: Source | str, *, client: Any = None, **source_fields: Any) -> Dataset:
    """A :class:`Dataset` of lazy Dask arrays for ``source`` (a :class:`Source`, or a path plus its
    fields: ``read_data("d.csv", label="y", one_hot=("country",))``).

    With ``client`` the scan (and the one-hot vocabulary pass) runs on the workers, so the path must
    be readable there, not necessarily here. Raises :class:`DataError` (one line) on bad input.
    """
    src = _as_source(source, source_fields)
    info = scan_on(client, src) if client is not None else dio.scan(src)
    return dataset(info)


def _stacked(parts: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate(parts)``, without the copy where the parts are consecutive rows of one
    C-contiguous buffer (a reader's chunks of one parse: dlogit.io.csv's parser)."""
    first = parts[0]
    if len(parts) > 1 and first.base is not None and all(
            p.base is first.base and p.dtype == first.dtype and p.shape[1:] == first.shape[1:]
            and p.flags.c_contiguous for p in parts) and all(
            q.__array_interface__["data"][0] == p.__array_interface__["data"][0] + p.nbytes
            for p, q in itertools.pairwise(parts)):
        shape = (sum(len(p) for p in parts), *first.shape[1:])
        return np.lib.stride_tricks.as_strided(first, shape=shape, strides=first.strides)
    return np.concatenate(parts) if len(parts) > 1 else first


def load_local(source: Source | str, *, encoder: Encoder | dict[str, Any] | None = None,
               **source_fields: Any) -> LocalData:
    """Read a whole data source into this process.

    ``encoder`` (an :class:`Encoder` or its JSON, e.g. from a saved model) encodes the categorical
    columns with THAT vocabulary, as the model was trained; values it does not know count in
    ``n_unseen`` (and a notice).
    """
    from dlogit.io.scan import scan_read

    src = _as_source(source, source_fields)
    info, pieces = scan_read(src, encoder=encoder)  # CSV: its rows counted as it is parsed, one pass
    if not pieces:
        raise DataError(f"{src.path} holds no rows")
    if info.sparse:
        import scipy.sparse as sp

        X = sp.vstack([p.X for p in pieces], format="csr") if len(pieces) > 1 else pieces[0].X.tocsr()
    else:
        X = _stacked([p.X for p in pieces])
    y = np.concatenate([p.y for p in pieces]) if info.has_labels else None
    w = np.concatenate([p.sample_weight for p in pieces]) if info.has_weights else None
    unseen = sum(p.n_unseen for p in pieces)
    if unseen:
        info.notices.append(f"{unseen} categorical value(s) not seen in training encoded as zeros")
    return LocalData(X, y, w, info, unseen)


# --------------------------------------------------------------------------------------------------
# writing tables (atomically: see dlogit.files)


def _write_kind(path: str) -> str:
    lower = path.lower()
    for ext, kind in ((".csv", "csv"), (".tsv", "tsv"), (".parquet", "parquet"), (".pq", "parquet"),
                      (".npy", "npy")):
        if lower.endswith(ext):
            return kind
    raise DataError(f"cannot tell the format of {path!r}: write a .csv, .tsv, .parquet or .npy file")


def write_table(path: str, columns: dict[str, np.ndarray]) -> None:
    """Write named columns to ``path`` (.csv, .tsv, .parquet or .npy: a 2-D array of the columns in order)."""
    kind = _write_kind(path)

    def write(tmp: str) -> None:
        if kind == "npy":
            with open(tmp, "wb") as f:
                np.save(f, np.column_stack(list(columns.values())))
            return
        import pandas as pd

        df = pd.DataFrame(columns)
        if kind in ("csv", "tsv"):
            df.to_csv(tmp, index=False, sep="," if kind == "csv" else "\t")
        else:
            df.to_parquet(tmp, index=False)

    atomic_write(path, write)
