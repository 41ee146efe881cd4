"""Parquet: a file, a dataset directory (hive partitions allowed) or a glob, through ``pyarrow.dataset``.

The scan reads only the files' footers: column types from the dataset schema, row counts of every row
group. Row groups are grouped (in file order; one row group is never split, a chunk may span files)
into chunks of about ``chunk_bytes`` of X or at least ``chunk_rows`` rows. A chunk read opens just its
files and reads just the columns it needs; hive partition values become constant columns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dlogit.errors import DataError
from dlogit.io import fs as fsio
from dlogit.io import table as tbl
from dlogit.io.encode import Encoder, continuous_notices, distinct, merge_distinct
from dlogit.io.source import DatasetInfo, Piece, Source, Survey, kind_of_name, rows_per_chunk


@dataclass(frozen=True)
class ParquetPart:
    """Row groups ``row_groups`` of file ``path``, with the hive partition values of that file."""

    path: str
    row_groups: tuple[int, ...]
    partition: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class ParquetLayout:
    table: tbl.TableLayout
    partition_types: tuple[tuple[str, str], ...]  # hive partition column -> arrow type (as text)


def is_parquet_name(name: str) -> bool:
    return kind_of_name(name) == "parquet"


def _kind(t: Any) -> str:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
        return tbl.NUMERIC
    if pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view",
                                                                       lambda _: False)(t):
        return tbl.TEXT
    return str(t)


def _arrow_fs(fs: Any) -> Any:
    if fsio.is_local(fs):
        return None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(fs))


def _dataset(path: str) -> tuple[Any, Any]:
    """``(pyarrow dataset, fsspec filesystem)`` for a file, a directory or a glob."""
    import pyarrow.dataset as ds

    fs, p = fsio.filesystem(path)
    files = fsio.expand(path, is_parquet_name)
    strip = [fsio.filesystem(f)[1] for f in files]
    if fs.isdir(p):
        return ds.dataset(strip, filesystem=_arrow_fs(fs), format="parquet",
                          partitioning=ds.partitioning(flavor="hive"), partition_base_dir=p), fs
    return ds.dataset(strip, filesystem=_arrow_fs(fs), format="parquet"), fs


def index_columns(schema: Any) -> list[str]:
    """The columns a pandas (or Dask) writer stored as the frame's index (``__index_level_0__``, a named
    index), from the ``b"pandas"`` schema metadata; a RangeIndex is stored as metadata only."""
    import json

    raw = (schema.metadata or {}).get(b"pandas")
    if not raw:
        return []
    try:
        cols = json.loads(raw).get("index_columns", [])
    except (ValueError, AttributeError):
        return []
    return [c for c in cols if isinstance(c, str) and c in schema.names]


def plan(source: Source, kind: str, encoder: Encoder | None) -> DatasetInfo:
    import pyarrow.dataset as ds

    dataset, fs = _dataset(source.path)
    schema = dataset.schema
    names = list(schema.names)
    kinds = {n: _kind(schema.field(n).type) for n in names}
    notices: list[str] = []
    layout = tbl.choose_columns(names, kinds, source, source.path, notices, encoder,
                                index=index_columns(schema))
    fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)
    partition_names: set[str] = set()
    parts: list[tuple[ParquetPart, int]] = []  # one per row group, with its rows
    needed = layout.needed
    for frag in fragments:
        keys = ds.get_partition_keys(frag.partition_expression) or {}
        partition_names.update(keys)
        have = set(frag.physical_schema.names) | set(keys)
        lacking = [c for c in needed if c not in have]
        name = fsio.display(fs, frag.path)
        if lacking:
            raise DataError(f"{name} lacks column {lacking[0]!r} (the first file has it)")
        physical = frag.physical_schema
        differ = [f"{c!r} is {physical.field(c).type} there, {schema.field(c).type} in the first file"
                  for c in needed
                  if c in physical.names and not physical.field(c).type.equals(schema.field(c).type)]
        if differ:
            raise DataError(f"the columns of {name} differ in type from those of "
                            f"{fsio.display(fs, fragments[0].path)}: {'; '.join(differ[:5])}"
                            + (f" (and {len(differ) - 5} more)" if len(differ) > 5 else ""))
        md = frag.metadata
        part = tuple(sorted(keys.items()))
        for g in range(md.num_row_groups):
            parts.append((ParquetPart(name, (g,), part), md.row_group(g).num_rows))
    ptypes = tuple((n, str(schema.field(n).type)) for n in sorted(partition_names))
    types = {str(schema.field(c).type) for c in layout.numeric}
    dtype = source.dtype or ("float32" if types == {"float"} else "float64")
    if encoder is None and layout.categorical and source.hash_features is not None:
        encoder = Encoder(layout.numeric, layout.categorical, n_buckets=int(source.hash_features))
    width = max(1, len(layout.numeric) + len(layout.categorical))
    per = rows_per_chunk(source, width * np.dtype(dtype).itemsize)
    pieces: list[list[ParquetPart]] = []
    piece_rows: list[int | None] = []
    acc: list[ParquetPart] = []
    acc_rows = 0
    for part, n in parts:
        if n == 0:
            continue
        if acc and acc[-1].path == part.path:
            acc[-1] = replace(acc[-1], row_groups=acc[-1].row_groups + part.row_groups)
        else:
            acc.append(part)
        acc_rows += n
        if acc_rows >= per:
            pieces.append(acc)
            piece_rows.append(acc_rows)
            acc, acc_rows = [], 0
    if acc:
        pieces.append(acc)
        piece_rows.append(acc_rows)
    if not pieces:
        raise DataError(f"{source.path} holds no rows")
    label_dtype = None
    if layout.label is not None:
        t = schema.field(layout.label).type
        label_dtype = "object" if layout.label_text else np.dtype(_numpy_type(t)).name
    info = DatasetInfo(source=source, kind="parquet", n_features=0, feature_names=None,
                       sparse=bool(layout.categorical), dtype=dtype, pieces=pieces, piece_rows=piece_rows,
                       has_labels=layout.label is not None and source.require_label, has_weights=source.weights is not None,
                       encoder=encoder, notices=notices, label_dtype=label_dtype,
                       layout=ParquetLayout(layout, ptypes))
    if layout.categorical and encoder is None:
        info.surveys = list(range(len(pieces)))
    return info


def _numpy_type(t: Any) -> Any:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_decimal(t):
        return np.float64
    return t.to_pandas_dtype()


def _read(info: DatasetInfo, k: int, columns: list[str],
          segments: list[tuple[str, int, int]] | None = None) -> dict[str, Any]:
    """The columns of chunk ``k`` as NumPy arrays (text columns as object arrays, nulls as None).

    ``segments`` (when given) receives ``(file, first row in that file, rows)`` for each part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lay: ParquetLayout = info.layout
    ptypes = dict(lay.partition_types)
    tables = []
    for part in info.pieces[k]:
        fs, p = fsio.filesystem(part.path)
        keys = dict(part.partition)
        file_cols = [c for c in columns if c not in ptypes]
        try:
            with fs.open(p, "rb") as f:
                pf = pq.ParquetFile(f)
                t = pf.read_row_groups(list(part.row_groups), columns=file_cols)
                if segments is not None:
                    before = sum(pf.metadata.row_group(g).num_rows for g in range(part.row_groups[0]))
                    segments.append((part.path, before, t.num_rows))
        except Exception as exc:  # noqa: BLE001
            raise fsio.read_error(part.path, exc) from None
        for c in columns:
            if c in ptypes:
                typ = pa.type_for_alias(ptypes[c])
                t = t.append_column(c, pa.array([keys.get(c)] * t.num_rows, type=typ))
        tables.append(t.select(columns))
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    out: dict[str, Any] = {}
    for c in columns:
        col = table.column(c)
        if _kind(col.type) == tbl.TEXT:
            out[c] = col.to_pandas()
        else:
            if pa.types.is_decimal(col.type):
                col = col.cast(pa.float64())
            out[c] = col.to_numpy()
    return out


def survey(info: DatasetInfo, k: int) -> Survey:
    cols = list(info.layout.table.categorical)
    data = _read(info, k, cols)
    return Survey(rows=int(info.piece_rows[k] or 0), uniques={c: distinct(data[c]) for c in cols})


def finish(info: DatasetInfo, surveys: list[Survey]) -> DatasetInfo:
    lay: tbl.TableLayout = info.layout.table
    encoder = info.encoder
    notices = list(info.notices)
    if lay.categorical and encoder is None:
        vocab = tuple(merge_distinct(s.uniques.get(c, ()) for s in surveys) for c in lay.categorical)
        encoder = Encoder(lay.numeric, lay.categorical, vocabulary=vocab)
        notices += continuous_notices(encoder)
    n_features = encoder.n_features if encoder is not None else len(lay.numeric)
    names = encoder.feature_names() if encoder is not None else list(lay.numeric)
    return replace(info, n_features=n_features, feature_names=names, encoder=encoder, surveys=[],
                   notices=notices)


def read_unit(info: DatasetInfo, u: int) -> list[Piece]:
    from dlogit.io.npy import weights_slice

    out = []
    starts = info.row_starts() if info.source.weights_path else None
    for k in info.units[u]:
        segments: list[tuple[str, int, int]] = []
        data = _read(info, k, info.layout.table.needed, segments)
        w = weights_slice(info, starts[k], int(info.piece_rows[k] or 0)) if starts is not None else None
        out.append(tbl.table_piece(data, info, info.source.path, w, _locator(segments)))
    return out


def _locator(segments: list[tuple[str, int, int]]) -> Any:
    """Local row of a chunk -> ``"FILE: row N"`` (1-based within that file)."""
    def where(i: int) -> str:
        at = 0
        for path, first, n in segments:
            if i < at + n:
                return f"{path}: row {first + i - at + 1}"
            at += n
        return f"row {i + 1} of a chunk"
    return where
