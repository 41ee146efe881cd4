"""The reader registry and the scan: ``plan`` (one look, on one worker), ``survey`` (a pass over the
chunks, in parallel), ``finish`` (merge, on the client); then ``read_unit`` per read task.

Each format module provides ``plan(source, kind, encoder) -> DatasetInfo`` and
``read_unit(info, u) -> list[Piece]``, and, when its scan needs a pass over the data,
``survey(info, unit) -> Survey`` and ``finish(info, surveys) -> DatasetInfo``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dlogit.errors import DataError
from dlogit.io import csv, libsvm, npy, parquet, zarr
from dlogit.io import fs as fsio
from dlogit.io.encode import Encoder
from dlogit.io.source import FORMATS, DatasetInfo, Piece, Source, Survey, kind_of_name, unknown_format

_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")


@dataclass(frozen=True)
class Reader:
    """One format's functions (see the module docstring)."""

    plan: Callable[[Source, str, Encoder | None], DatasetInfo]
    read_unit: Callable[[DatasetInfo, int], list[Piece]]
    survey: Callable[[DatasetInfo, Any], Survey] | None = None
    finish: Callable[[DatasetInfo, list[Survey]], DatasetInfo] | None = None
    tables: bool = False  # has named columns: takes one_hot / hash_features / an encoder
    # the pass and the read in one, for a source read whole here: (finished info, every chunk), or None
    scan_read: Callable[[DatasetInfo], tuple[DatasetInfo, list[Piece]] | None] | None = None


_CSV = Reader(csv.plan, csv.read_unit, csv.survey, csv.finish, tables=True, scan_read=csv.scan_read)
READERS: dict[str, Reader] = {
    "csv": _CSV,
    "tsv": _CSV,
    "parquet": Reader(parquet.plan, parquet.read_unit, parquet.survey, parquet.finish, tables=True),
    "npy": Reader(npy.plan, npy.read_unit),
    "libsvm": Reader(libsvm.plan, libsvm.read_unit, libsvm.survey, libsvm.finish),
    "zarr": Reader(zarr.plan, zarr.read_unit),
}
assert set(READERS) == set(FORMATS)


def detect(source: Source) -> str:
    """The format of ``source``: ``source.format``, else from the name (a directory: from its files)."""
    if source.format is not None:
        return source.format
    path = source.path
    kind = kind_of_name(path)
    if kind is None and not any(c in path for c in "*?["):
        fs, p = fsio.filesystem(path)
        try:
            if fs.isdir(p):
                if any(fs.exists(posixpath.join(p, m)) for m in _ZARR_MARKERS):
                    return "zarr"
                # the parts' extension decides (a README.txt beside them is no data); several formats
                # in one directory are an error naming them, not a read of one of them
                files = fsio.expand(path)
                kinds = {f: kind_of_name(f) for f in files}
                data_kinds = {k for k in kinds.values() if k not in (None, "txt")}
                if len(data_kinds) > 1:
                    first = {}
                    for f, k in kinds.items():
                        if k in data_kinds:
                            first.setdefault(k, posixpath.basename(f))
                    shown = ", ".join(f"{first[k]} ({k})" for k in sorted(first))
                    raise DataError(f"{path} holds files of several formats: {shown}; read one format at "
                                    "a time (a glob such as DIR/*.csv) or convert the parts")
                kind = data_kinds.pop() if data_kinds else ("txt" if "txt" in kinds.values() else None)
            elif not fs.exists(p):
                raise FileNotFoundError(path)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise fsio.read_error(path, exc) from None
    if kind == "txt":
        if source.sep is None:
            raise DataError(f"cannot tell the format of {path!r}: give its separator with --sep, or use "
                            f"--format {'|'.join(FORMATS)}")
        return "csv"
    if kind is None:
        raise unknown_format(path)
    return kind


def _guard(path: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything unreadable becomes one clear line
        raise fsio.read_error(path, exc) from None


def plan(source: Source, encoder: Encoder | dict[str, Any] | None = None) -> DatasetInfo:
    """One look at ``source``: files, columns, chunk plan; ``info.surveys`` lists the pass still to do."""
    if isinstance(encoder, dict):
        encoder = Encoder.from_json(encoder)
    kind = detect(source)
    reader = READERS[kind]
    if not source.header and kind not in ("csv", "tsv"):
        raise DataError(f"--no-header is for CSV/TSV files, not {kind} data")
    if not reader.tables and (source.one_hot or source.hash_features is not None or encoder is not None):
        raise DataError(f"--one-hot and --hash-features encode table columns (CSV/TSV/Parquet), not {kind} data")
    with fsio.listing(source.format) as skipped:  # files of no known kind: read as a format given
        info = _guard(source.path, reader.plan, source, kind, encoder)
    if skipped:
        info = replace(info, notices=[*info.notices, *skipped])
    if source.weights_path is not None:  # opened here: a distributed plan runs where the data is
        weights = _guard(source.weights_path, npy.open_weights, source.weights_path)
        info = replace(info, weights_rows=weights.shape[0])
    return info


def survey(info: DatasetInfo, j: int) -> Survey:
    """Survey unit ``j`` of ``info.surveys`` (run on the workers, in parallel, by a distributed scan)."""
    reader = READERS[info.kind]
    assert reader.survey is not None
    return _guard(info.source.path, reader.survey, info, info.surveys[j])


def finish(info: DatasetInfo, surveys: list[Survey]) -> DatasetInfo:
    """Fold the survey results into the final chunk plan; check the weights file."""
    reader = READERS[info.kind]
    if reader.finish is not None:
        info = _guard(info.source.path, reader.finish, info, surveys)
    else:
        info = replace(info, surveys=[])
    return _checked(info)


def scan(source: Source, encoder: Encoder | dict[str, Any] | None = None) -> DatasetInfo:
    """Inspect ``source`` in this process (plan, pass, finish). Raises :class:`DataError` (one line)."""
    info = plan(source, encoder)
    return finish(info, [survey(info, j) for j in range(len(info.surveys))])


def scan_read(source: Source, encoder: Encoder | dict[str, Any] | None = None) -> tuple[DatasetInfo, list[Piece]]:
    """:func:`scan` and every chunk (:func:`read_unit` of each unit), in this process: where the format
    can (CSV/TSV through pyarrow), the pass counts the rows while the chunks are parsed -- one read of
    the bytes, one decompression --, else the scan's pass, then the reads. The same info and chunks
    either way; errors are the two-pass read's."""
    info = plan(source, encoder)
    reader = READERS[info.kind]
    fused = reader.scan_read(info) if reader.scan_read is not None and info.surveys else None
    if fused is not None:
        final, pieces = fused
        return _checked(final), pieces
    info = finish(info, [survey(info, j) for j in range(len(info.surveys))])
    return info, [p for u in range(len(info.units)) for p in read_unit(info, u)]


def _checked(info: DatasetInfo) -> DatasetInfo:
    """The checks of a finished plan (:func:`finish`'s, or a format's ``scan_read``'s)."""
    if not info.pieces or info.n_rows == 0:
        raise DataError(f"{info.source.path} holds no rows")
    if info.weights_rows is not None and info.n_rows is not None and info.weights_rows != info.n_rows:
        raise DataError(f"the data has {info.n_rows} rows but {info.source.weights_path} has "
                        f"{info.weights_rows} weights")
    return info


def read_unit(info: DatasetInfo, u: int) -> list[Piece]:
    """The chunks of read unit ``u`` (one task: a compressed file is decompressed once)."""
    return _guard(info.source.path, READERS[info.kind].read_unit, info, u)


def read_piece(info: DatasetInfo, i: int) -> Piece:
    """Chunk ``i`` (reads its whole unit)."""
    u, j = info.unit_of(i)
    return read_unit(info, u)[j]
