"""CSV / TSV: one file, a glob or a directory of parts; plain or compressed (.gz .bz2 .xz .zst).

Plan: every file's header must agree with the first file's; the first ~1 MiB of the first file tells
the column types. An uncompressed file is cut at line starts into pieces of about ``chunk_bytes`` of
X (the text size per row is measured on that sample) or of exactly ``chunk_rows`` rows; a compressed
file is one read unit whose rows are split into chunks after parsing. The scan's pass counts each
piece's rows (and collects the one-hot vocabularies), so every chunk's row count is known. A source
read whole into this process (:func:`scan_read`) counts the rows as pyarrow parses them: one pass over
the bytes, one decompression, the same chunks; a large local plain-numeric one is parsed by dlogit's
own parser instead (:func:`jit_scan_read`, :mod:`dlogit.io._csv_jit`), straight into X.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dlogit.errors import DataError
from dlogit.io import fs as fsio
from dlogit.io import table as tbl
from dlogit.io import text
from dlogit.io.encode import Encoder, continuous_notices, distinct, merge_distinct
from dlogit.io.source import (
    DatasetInfo,
    Piece,
    Source,
    Survey,
    chunk_bytes_of,
    kind_of_name,
    row_ranges,
    rows_per_chunk,
    split_compression,
)
from dlogit.io.text import TextPiece

_SAMPLE_BYTES = 1 << 20
_COUNT_BLOCK = 4 << 20  # the row count's reads: small enough to stay in cache, large enough to be cheap
_ARROW_BLOCK = 4 << 20  # pyarrow's parse block (its unit of parallel work)
#: pandas' default missing-value strings (``read_csv``'s ``na_values``): the pyarrow reader takes the
#: same fields as missing (tests/test_io.py checks the list against pandas')
NA_VALUES = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
             "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
#: the words pandas reads as booleans
_TRUE, _FALSE = ("True", "TRUE", "true"), ("False", "FALSE", "false")


@dataclass(frozen=True)
class CsvLayout:
    files: tuple[str, ...]
    compressed: tuple[bool, ...]
    header_bytes: tuple[int, ...]
    sep: str
    table: tbl.TableLayout
    read_dtypes: tuple[tuple[str, str], ...]  # columns parsed with a fixed dtype (text columns: str)
    bytes_per_row: float  # text bytes per row in the sample (for the chunk-size of compressed files)
    has_header: bool = True  # the first line of every file names the columns
    # the Arrow type of each needed column for the pyarrow reader (see _arrow_read); () where a chunk
    # is read by pandas only (encoded columns, a separator of several characters, unusual dtypes)
    arrow_types: tuple[tuple[str, str], ...] = ()


def is_csv_name(name: str) -> bool:
    return kind_of_name(name) in ("csv", "tsv", "txt")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _names(header: bytes, sep: str, path: str, has_header: bool = True) -> list[str]:
    """The column names of a file's first line (by position with ``has_header=False``).

    Names are taken as written: a name written twice is an error (pandas would rename the second
    ``y.1`` and a duplicated label would become a feature), and so is a header of numbers only (the
    first line is data: the file has no header) unless it is exactly ``0,1,...,n-1``: the names pandas
    gives unnamed columns, written by ``pd.DataFrame(X).to_csv(index=False)``."""
    import pandas as pd

    try:
        raw = pd.read_csv(io.BytesIO(header), sep=sep, header=None, nrows=1, dtype=str,
                          keep_default_na=False).iloc[0].tolist()
        cols = [str(c) for c in pd.read_csv(io.BytesIO(header), sep=sep, nrows=0).columns]
    except (pd.errors.EmptyDataError, IndexError):
        raise DataError(f"{path} is empty (no {'header ' if has_header else ''}line)") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise fsio.read_error(path, exc) from None
    if not has_header:
        return [str(k) for k in range(len(raw))]
    written = [str(c) for c in raw if str(c) != ""]
    duplicated = sorted({c for c in written if written.count(c) > 1})
    if duplicated:
        raise DataError(f"column {duplicated[0]!r} appears more than once in the header of {path}: give "
                        "every column a distinct name")
    positional = [str(k) for k in range(len(raw))]
    if raw and [str(c) for c in raw] != positional and all(_is_number(str(c)) for c in raw):
        # 0,1,2 ... in order is the header pandas writes for unnamed columns (DataFrame(X).to_csv())
        shown = sep.join(str(c) for c in raw[:6]) + (" ..." if len(raw) > 6 else "")
        raise DataError(f"the header of {path} is all numbers ({shown}): if the file has no header line, "
                        "pass --no-header (the columns are then named 0, 1, 2 ...)")
    return cols


def _sample(files: tuple[str, ...] | list[str], sep: str, names: list[str],
            has_header: bool = True) -> tuple[Any, bytes, int]:
    """``(frame, bytes parsed, file index)``: the first ~1 MiB of the first file that holds rows."""
    import pandas as pd

    frame, complete = None, b""
    for k, path in enumerate(files):
        with fsio.open_binary(path) as f:
            try:
                head = f.read(_SAMPLE_BYTES)
            except Exception as exc:  # noqa: BLE001
                raise fsio.read_error(path, exc) from None
        complete = head if len(head) < _SAMPLE_BYTES else head[:head.rfind(b"\n") + 1]
        try:
            if has_header:
                frame = pd.read_csv(io.BytesIO(complete), sep=sep, low_memory=False)
            else:
                frame = pd.read_csv(io.BytesIO(complete), sep=sep, header=None, names=names,
                                    low_memory=False)
        except pd.errors.EmptyDataError:
            frame = pd.DataFrame({c: np.zeros(0) for c in names})
            continue
        except pd.errors.ParserError as exc:
            raise _width_error(exc, lambda r, path=path: f"{path}: row {r + 1}", 1 if has_header else 0,
                               len(names), path) from None
        except ValueError as exc:
            raise fsio.read_error(path, exc) from None
        if len(frame):
            return frame, complete, k
    return frame, complete, 0


def _kind(dtype: Any) -> str:
    kind = getattr(dtype, "kind", "O")
    if kind in "fiub":
        return tbl.NUMERIC
    if kind in "OSU":
        return tbl.TEXT
    return str(dtype)


def plan(source: Source, kind: str, encoder: Encoder | None) -> DatasetInfo:
    sep = source.sep or ("\t" if kind == "tsv" else ",")
    files = fsio.expand(source.path, is_csv_name)
    if any(kind_of_name(f) != "txt" for f in files):  # .csv/.tsv parts: a .txt beside them is a note
        files = [f for f in files if kind_of_name(f) != "txt"]
    compressed = tuple(split_compression(f)[1] is not None for f in files)
    has_header = source.header
    first_lines = [text.header_end(f) for f in files]
    headers = first_lines if has_header else [(h, 0) for h, _ in first_lines]
    names = _names(first_lines[0][0], sep, files[0], has_header)
    for f, (h, _) in zip(files[1:], first_lines[1:]):
        if not has_header and not h.strip():
            continue
        other = _names(h, sep, f, has_header)
        if other != names:
            what = "header" if has_header else "number of columns"
            raise DataError(f"the {what} of {f} differs from that of {files[0]}: "
                            f"{', '.join(other[:8])} vs {', '.join(names[:8])}")
    sample, complete, sampled = _sample(files, sep, names, has_header)
    # no rows to look at (header-only files): types are checked when the chunks are read
    kinds = {c: _kind(sample[c].dtype) if len(sample) else tbl.NUMERIC for c in names}
    notices: list[str] = []
    layout = tbl.choose_columns(names, kinds, source, source.path, notices, encoder)
    read_dtypes = {c: "str" for c in layout.categorical}
    label_dtype = None
    if layout.label is not None:
        if layout.label_text:
            read_dtypes[layout.label] = "str"
            label_dtype = "object"
        else:
            label_dtype = np.dtype(sample[layout.label].dtype).name if len(sample) else "float64"
    if encoder is None and layout.categorical and source.hash_features is not None:
        encoder = Encoder(layout.numeric, layout.categorical, n_buckets=int(source.hash_features))
    dtype = source.dtype or "float64"
    itemsize = np.dtype(dtype).itemsize
    body = len(complete) - headers[sampled][1]
    rows_in_sample = len(sample)
    bytes_per_row = body / rows_in_sample if rows_in_sample else 64.0
    x_row = max(1, len(layout.numeric) + len(layout.categorical)) * itemsize
    target = chunk_bytes_of(source) * max(bytes_per_row, 1.0) / x_row
    pieces: list[TextPiece] = []
    piece_rows: list[int | None] = []
    for k, f in enumerate(files):
        if compressed[k]:
            pieces.append(TextPiece(k))
            piece_rows.append(None)
        elif source.chunk_rows is not None:
            for off, n, r in text.cut_by_rows(f, headers[k][1], int(source.chunk_rows),
                                              text.csv_style(sep), quotes=True):
                pieces.append(TextPiece(k, off, n))
                piece_rows.append(r)
        else:
            for off, n in text.cut_by_bytes(f, headers[k][1], fsio.size(f), target):
                pieces.append(TextPiece(k, off, n))
                piece_rows.append(None)
    if any(compressed):
        notices.append("compressed files are read whole, one task each (their rows are split into "
                       "chunks after reading)")
    arrow_types = _arrow_types(layout, sample, sep)
    info = DatasetInfo(source=source, kind="csv", n_features=0, feature_names=None,
                       sparse=bool(layout.categorical), dtype=dtype, pieces=pieces, piece_rows=piece_rows,
                       has_labels=layout.label is not None and source.require_label, has_weights=source.weights is not None,
                       encoder=encoder, notices=notices, label_dtype=label_dtype,
                       layout=CsvLayout(tuple(files), compressed, tuple(h[1] for h in headers), sep, layout,
                                        tuple(read_dtypes.items()), bytes_per_row, has_header,
                                        arrow_types))
    needs_vocab = bool(layout.categorical) and encoder is None
    if needs_vocab or any(r is None for r in piece_rows):
        info.surveys = list(range(len(pieces)))
    return info


def _width_error(exc: Exception, where: Callable[[int], str], skip: int, width: int, path: str) -> DataError:
    """pandas' "Expected 3 fields in line 9, saw 4" as the row it names (``where(r)``, r counted from 0
    after the ``skip`` lines before the data); any other parser error as :func:`fsio.read_error`."""
    m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
    if m is None:
        return fsio.read_error(path, exc)
    return DataError(f"{where(int(m.group(2)) - 1 - skip)} has {m.group(3)} fields, more than the {width} "
                     f"columns of the header (or of the first row)")


def _parse(data: bytes, lay: CsvLayout, columns: list[str], path: str, header: bool,
           row: Callable[[int], str] | None = None) -> Any:
    """``data`` (whole lines) as a DataFrame of ``columns``; a row with more fields than the header is a
    :class:`DataError` naming it (``row(r)`` for the r-th row of ``data``, else its place in ``data``).

    The columns are read by position, without ``names``: given the names, pandas drops a longer row's
    extra fields (or takes its first fields as the index) without a word, shifting that row's values into
    the wrong columns."""
    import pandas as pd

    names = list(lay.table.names)
    place = {c: i for i, c in enumerate(names)}
    dtypes = {place[c]: t for c, t in lay.read_dtypes if c in columns}
    skip = 1 if header else 0

    def where(r: int) -> str:
        return row(r) if row is not None else f"{path}: row {r + 1} of a chunk"

    try:
        frame = pd.read_csv(io.BytesIO(data), sep=lay.sep, header=None, skiprows=skip, dtype=dtypes or None,
                            low_memory=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame({c: np.zeros(0) for c in columns})
    except pd.errors.ParserError as exc:
        raise _width_error(exc, where, skip, len(names), path) from None
    except ValueError as exc:
        raise fsio.read_error(path, exc) from None
    if frame.shape[1] > len(names):  # the first row of data is the longer one
        extra = frame.iloc[:, len(names):].notna().any(axis=1).to_numpy()
        r = int(np.argmax(extra))
        raise DataError(f"{where(r)} has more fields than the {len(names)} columns of the header (or of "
                        f"the first row)")
    for i in range(frame.shape[1], len(names)):  # every row short: the missing fields are missing values
        frame[i] = np.nan
    frame.columns = names
    return frame[columns]


def survey(info: DatasetInfo, k: int) -> Survey:
    lay: CsvLayout = info.layout
    p: TextPiece = info.pieces[k]
    path = lay.files[p.file]
    vocab_cols = list(lay.table.categorical) if info.encoder is None else []
    style = text.csv_style(lay.sep)
    if p.whole:
        if not vocab_cols:
            rows, nbytes, open_quote = text.stream_records(fsio.iter_blocks(path), style,
                                                           skip_header=lay.has_header)
            if not open_quote:
                return Survey(rows=rows, nbytes=nbytes)
        data = fsio.read_all(path)
        frame = _parse(data, lay, vocab_cols or [lay.table.names[0]], path, header=lay.has_header)
        return Survey(rows=len(frame), nbytes=len(data), uniques={c: distinct(frame[c]) for c in vocab_cols})
    if not vocab_cols:  # counted in blocks: no copy of the whole piece
        rows, nbytes, open_quote = text.stream_records(fsio.iter_range(path, p.offset, p.length, _COUNT_BLOCK),
                                                       style, skip_header=False)
        if open_quote:
            raise text.spanning_quote_error(path)
        return Survey(rows=rows, nbytes=nbytes)
    data = fsio.read_range(path, p.offset, p.length)
    if text.has_open_quote(data):
        raise text.spanning_quote_error(path)
    frame = _parse(data, lay, vocab_cols, path, header=False)
    return Survey(rows=len(frame), nbytes=len(data), uniques={c: distinct(frame[c]) for c in vocab_cols})


def finish(info: DatasetInfo, surveys: list[Survey]) -> DatasetInfo:
    lay: CsvLayout = info.layout
    encoder = info.encoder
    notices = list(info.notices)
    if lay.table.categorical and encoder is None:
        vocab = tuple(merge_distinct(s.uniques.get(c, ()) for s in surveys) for c in lay.table.categorical)
        encoder = Encoder(lay.table.numeric, lay.table.categorical, vocabulary=vocab)
        notices += continuous_notices(encoder)
    n_features = encoder.n_features if encoder is not None else len(lay.table.numeric)
    names = encoder.feature_names() if encoder is not None else list(lay.table.numeric)
    x_row = max(1, len(lay.table.numeric) + len(lay.table.categorical)) * np.dtype(info.dtype).itemsize
    pieces: list[TextPiece] = []
    rows: list[int | None] = []
    units: list[list[int]] = []
    for k, p in enumerate(info.pieces):
        r = surveys[k].rows if surveys else info.piece_rows[k]
        if p.whole:
            per = rows_per_chunk(info.source, x_row)
            members = []
            for s, e in row_ranges(int(r or 0), per):
                members.append(len(pieces))
                pieces.append(replace(p, start=s, stop=e))
                rows.append(e - s)
            if members:
                units.append(members)
        elif r:
            units.append([len(pieces)])
            pieces.append(p)
            rows.append(r)
    if not pieces:
        raise DataError(f"{info.source.path} holds no rows")
    info = replace(info, n_features=n_features, feature_names=names, pieces=pieces, piece_rows=rows,
                   units=units, encoder=encoder, surveys=[], notices=notices)
    return info


def _arrow_types(layout: tbl.TableLayout, sample: Any, sep: str) -> tuple[tuple[str, str], ...]:
    """The Arrow type to read each needed column with, from the sample's pandas dtypes; ``()`` where
    chunks are read by pandas only."""
    if layout.categorical or len(sep) != 1 or sep in '"\r\n':
        return ()
    out = []
    for c in layout.needed:
        if c == layout.label and layout.label_text:
            out.append((c, "string"))
            continue
        dtype = sample[c].dtype if len(sample) and c in sample else np.dtype(np.float64)
        if not isinstance(dtype, np.dtype) or dtype.name not in ("float64", "int64", "bool"):
            return ()
        out.append((c, dtype.name))
    return tuple(out)


def _arrow_read(source: Any, lay: CsvLayout, header: bool, whole: bool) -> Any:
    """The needed columns of ``source`` (a pyarrow stream or buffer) as a pyarrow Table, or ``None``
    where pyarrow cannot read them as pandas would (then the caller reads them with pandas).

    pyarrow parses in parallel blocks and rounds every decimal number correctly, as pandas >= 3 does
    (tests/test_io.py checks hard cases). Each column is read with the type the sample gave it; a field
    that type cannot hold (text, a float in an integer column, a row of the wrong width, a line of
    spaces) makes pyarrow fail, and pandas reads the chunk instead, with today's types and messages.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    types = {"float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_(), "string": pa.string()}
    read = pacsv.ReadOptions(column_names=list(lay.table.names), skip_rows=1 if header else 0,
                             use_threads=True, block_size=_ARROW_BLOCK)
    parse = pacsv.ParseOptions(delimiter=lay.sep, newlines_in_values=whole)
    convert = pacsv.ConvertOptions(column_types={c: types[t] for c, t in lay.arrow_types},
                                   include_columns=[c for c, _ in lay.arrow_types],
                                   null_values=list(NA_VALUES), strings_can_be_null=True,
                                   quoted_strings_can_be_null=True,
                                   true_values=list(_TRUE), false_values=list(_FALSE))
    try:
        table = pacsv.read_csv(source, read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowException, OSError, ValueError, EOFError):
        return None  # pandas reads it again, and says what is wrong in today's words
    if any(table.column(c).null_count for c, _ in lay.arrow_types):
        return None  # a missing value: pandas' message names it (or its column becomes text)
    return table


def _arrow_piece(table: Any, info: DatasetInfo, path: str, w: np.ndarray | None, where: Any) -> Piece | None:
    """One chunk from the Arrow columns, or ``None`` where a value is not finite (pandas then reads
    the chunk, so that "nan"-like words pandas takes for text still say so)."""
    lay: CsvLayout = info.layout
    names = lay.table.numeric
    n = table.num_rows
    # X from Arrow's memory pool, which keeps the pages the parse used and freed (NumPy's large
    # arrays are fresh pages each time: page faults cost as much as the parse on some machines)
    import pyarrow as pa

    itemsize = np.dtype(info.dtype).itemsize
    X = np.frombuffer(pa.allocate_buffer(n * len(names) * itemsize), dtype=info.dtype).reshape(n, len(names))
    index = [table.schema.get_field_index(c) for c in names]
    at = 0
    for batch in table.to_batches():  # a block of rows at a time: its part of X stays in cache
        m = batch.num_rows
        for j, k in enumerate(index):
            X[at:at + m, j] = batch.column(k).to_numpy(zero_copy_only=False)
        at += m
    if X.dtype.kind == "f" and X.size:
        with np.errstate(over="ignore", invalid="ignore"):
            if not bool(np.isfinite(np.add.reduce(X, axis=0)).all()) and not bool(np.isfinite(X).all()):
                return None
    frame = {}
    for c in (lay.table.label, lay.table.weights):
        if c is not None:
            v = table.column(c).to_numpy()
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                return None
            frame[c] = v
    return tbl.table_piece(frame, info, path, w, where, X=X)


def _arrow_source(path: str, first: TextPiece, stack: contextlib.ExitStack) -> Any:
    """What pyarrow reads for a unit, as a stream in pyarrow's blocks (never a copy of the whole unit):
    a byte range of an uncompressed file; a compressed file, decompressed by Arrow where it can (a local
    .gz, .bz2, .zst), by Python otherwise (.xz, URLs)."""
    import pyarrow as pa

    fs, p = fsio.filesystem(path)
    if not first.whole:
        return pa.PythonFile(stack.enter_context(fsio.open_range(path, first.offset, first.length)), mode="r")
    compression = fsio.split_compression(p)[1]
    if fsio.is_local(fs) and compression in ("gzip", "bz2", "zstd") and pa.Codec.is_available(compression):
        return stack.enter_context(pa.input_stream(p, compression=compression))
    return pa.PythonFile(stack.enter_context(fsio.open_binary(path)), mode="r")


def read_unit(info: DatasetInfo, u: int) -> list[Piece]:
    from dlogit.io.npy import weights_slice

    lay: CsvLayout = info.layout
    members = info.units[u]
    first: TextPiece = info.pieces[members[0]]
    path = lay.files[first.file]
    columns = lay.table.needed
    expect = info.pieces[members[-1]].stop if first.whole else info.piece_rows[members[0]]
    starts = info.row_starts() if info.source.weights_path else None
    # the first data row of this unit in its file (the pieces before it in the same file)
    base = sum(int(info.piece_rows[j] or 0) for j in range(members[0])
               if info.pieces[j].file == first.file) if not first.whole else 0
    table = None
    if lay.arrow_types:
        with contextlib.ExitStack() as stack:
            try:
                source = _arrow_source(path, first, stack)
            except DataError:
                raise
            except Exception:  # noqa: BLE001 - pandas' read below says what is wrong, in today's words
                source = None
            if source is not None:
                table = _arrow_read(source, lay, header=first.whole and lay.has_header, whole=first.whole)
        if table is not None and table.num_rows != expect:
            table = None  # rows pandas would skip or split otherwise: it reads them (or says what changed)
    if table is not None:
        out = []
        for i in members:
            p: TextPiece = info.pieces[i]
            part = table.slice(p.start, p.stop - p.start) if p.whole else table
            w = weights_slice(info, starts[i], part.num_rows) if starts is not None else None
            at = base + (p.start if p.whole else 0)
            piece = _arrow_piece(part, info, path, w, lambda r, at=at: f"{path}: row {at + r + 1}")
            if piece is None:
                break
            out.append(piece)
        else:
            return out
        del table, out
    def row(r: int) -> str:
        return f"{path}: row {base + r + 1}"

    if first.whole:
        frame = _parse(fsio.read_all(path), lay, columns, path, header=lay.has_header, row=row)
    else:
        frame = _parse(fsio.read_range(path, first.offset, first.length), lay, columns, path, header=False,
                       row=row)
    if len(frame) != expect:
        raise DataError(f"{path} changed since it was scanned: read {len(frame)} rows where the scan "
                        f"counted {expect}")
    out = []
    for i in members:
        p = info.pieces[i]
        part = frame.iloc[p.start:p.stop] if p.whole else frame
        w = weights_slice(info, starts[i], len(part)) if starts is not None else None
        at = base + (p.start if p.whole else 0)
        out.append(tbl.table_piece(part, info, path, w,
                                   lambda r, at=at: f"{path}: row {at + r + 1}"))
    return out


# --------------------------------------------------------------------------------------------------
# the scan and the read in one pass (a whole source read into this process: dlogit.data.load_local)


class _Counter:
    """The records and whether a line holds an open quote (:func:`dlogit.io.text.stream_records`'
    answer) of a stream fed block by block, as pyarrow reads it: each block's whole lines are counted
    by ``stream_records`` itself, the line crossing two blocks on its own."""

    def __init__(self, style: text.LineStyle, skip_header: bool) -> None:
        self.style = style
        self.records = self.nbytes = 0
        self.open_quote = False
        self.skip = skip_header
        self.pending = b""

    def _count(self, lines: bytes) -> None:
        records, _, open_quote = text.stream_records([lines], self.style, skip_header=self.skip)
        self.skip = False
        self.records += records
        self.open_quote = self.open_quote or open_quote

    def feed(self, block: bytes) -> None:
        self.nbytes += len(block)
        first = block.find(b"\n")
        if first < 0:
            self.pending += block
            return
        last = block.rfind(b"\n")
        self._count(self.pending + block[:first + 1])  # the line that ends here
        if last > first:
            self._count(block[first + 1:last + 1])
        self.pending = block[last + 1:]

    def finish(self) -> Survey:
        if self.pending:
            self._count(self.pending)
            self.pending = b""
        return Survey(rows=self.records, nbytes=self.nbytes)


class _Tee(io.RawIOBase):
    """A stream over ``blocks`` that feeds each block to ``counter`` as it is read (pyarrow reads it)."""

    def __init__(self, blocks: Any, counter: _Counter) -> None:
        self.blocks, self.counter = iter(blocks), counter
        self.block, self.at = b"", 0

    def readable(self) -> bool:
        return True

    def _next(self) -> bool:
        block = next(self.blocks, None)
        if block is None:
            return False
        self.counter.feed(block)
        self.block, self.at = block, 0
        return True

    def read(self, size: int = -1) -> bytes:
        if self.at >= len(self.block) and not self._next():
            return b""
        if self.at == 0 and (size < 0 or size >= len(self.block)):
            self.at = len(self.block)
            return self.block  # the whole block, no copy
        end = len(self.block) if size < 0 else min(len(self.block), self.at + size)
        out = self.block[self.at:end]
        self.at = end
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self._next():
            pass


def _counted_read(info: DatasetInfo, k: int) -> tuple[Any, Survey]:
    """Planned piece ``k`` read by pyarrow while its records are counted, in one pass over its bytes
    (a compressed file decompressed once, as the scan's count decompresses it); ``(None, survey)`` where
    the two-pass path must decide (pyarrow failed, the counts differ, a quote spans lines)."""
    lay: CsvLayout = info.layout
    p: TextPiece = info.pieces[k]
    path = lay.files[p.file]
    header = p.whole and lay.has_header
    counter = _Counter(text.csv_style(lay.sep), skip_header=header)
    blocks = fsio.iter_blocks(path) if p.whole else fsio.iter_range(path, p.offset, p.length, _COUNT_BLOCK)
    import pyarrow as pa

    tee = _Tee(blocks, counter)
    table = _arrow_read(pa.PythonFile(tee, mode="r"), lay, header=header, whole=p.whole)
    if table is None:
        return None, counter.finish()
    tee.drain()
    survey = counter.finish()
    if counter.open_quote or table.num_rows != survey.rows:
        return None, survey
    return table, survey


def scan_read(info: DatasetInfo) -> tuple[DatasetInfo, list[Piece]] | None:
    """The scan's pass and the read in one (:func:`dlogit.io.scan.scan_read`): each planned piece is
    read once, its rows counted as pyarrow parses it, and cut into the chunks the scan would have made
    (:func:`finish`'s). ``None`` where the two passes are needed: a one-hot vocabulary to find first,
    chunks pyarrow does not read, or any piece that pyarrow cannot read as pandas would, or that fails
    (the two-pass read then gives its own result or error, word for word)."""
    from dlogit.io.npy import weights_slice

    lay: CsvLayout = info.layout
    if not lay.arrow_types or not info.surveys or (lay.table.categorical and info.encoder is None):
        return None
    fast = jit_scan_read(info)
    if fast is not None:
        return fast
    x_row = max(1, len(lay.table.numeric) + len(lay.table.categorical)) * np.dtype(info.dtype).itemsize
    per = rows_per_chunk(info.source, x_row)
    surveys: list[Survey] = []
    pieces: list[Piece] = []
    start = 0  # the first row of the piece in the whole source (for a weights .npy)
    in_file: dict[int, int] = {}  # rows read so far in each file
    try:
        for k, p in enumerate(info.pieces):
            table, survey = _counted_read(info, k)
            if table is None:
                return None
            surveys.append(survey)
            path = lay.files[p.file]
            base = 0 if p.whole else in_file.get(p.file, 0)
            spans = row_ranges(survey.rows, per) if p.whole else ([(0, survey.rows)] if survey.rows else [])
            for s, e in spans:
                part = table.slice(s, e - s) if p.whole else table
                w = weights_slice(info, start, e - s) if info.source.weights_path else None
                piece = _arrow_piece(part, info, path, w,
                                     lambda r, at=base + s, path=path: f"{path}: row {at + r + 1}")
                if piece is None:
                    return None
                pieces.append(piece)
                start += e - s
            in_file[p.file] = base + survey.rows
            del table
        final = finish(info, surveys)
    except Exception:  # noqa: BLE001 - the two-pass read gives the result or says what is wrong
        return None
    if len(final.pieces) != len(pieces):  # pragma: no cover - the chunks are finish()'s by construction
        return None
    return final, pieces


# --------------------------------------------------------------------------------------------------
# the same read by dlogit's own parser (dlogit.io._csv_jit): plain numeric CSV straight into X

#: sources of less text than this are read by pyarrow (the parser's first use in a process imports Numba
#: and loads the compiled parser from Numba's cache: about as long as pyarrow takes for 100 MB)
JIT_MIN_BYTES = 128 << 20
_JIT_PART = 8 << 20  # the parser's unit of parallel work (a range of whole lines)


def _jit_roles(info: DatasetInfo) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """The parser's column roles and integer columns (``parse_rows``' ``role``, ``is_int``) and whether
    the label is an integer, or ``None``
    where the parser does not read this layout (text, bool or encoded columns, float32 X ...)."""
    from dlogit.io import _csv_jit as jit

    lay: CsvLayout = info.layout
    t = lay.table
    types = dict(lay.arrow_types)
    if (not types or jit.numba is None or info.dtype != "float64" or t.categorical or len(lay.sep) != 1
            or not lay.sep.isascii() or lay.sep in '"\r\n.+-0123456789eE'):
        return None
    if any(types.get(c) not in ("float64", "int64") for c in t.needed):
        return None
    if t.weights is not None and types[t.weights] != "float64":
        return None
    numeric = {c: j for j, c in enumerate(t.numeric)}
    role = np.full(len(t.names), jit.SKIP, np.int64)
    for k, c in enumerate(t.names):
        if c in numeric:
            role[k] = numeric[c]
        elif c == t.label and info.source.require_label:
            role[k] = jit.LABEL
        elif c == t.weights:
            role[k] = jit.WEIGHTS
    is_int = np.array([types.get(c) == "int64" for c in t.names], np.bool_)
    int_label = t.label is not None and types.get(t.label) == "int64"
    return role, is_int, int_label


class _Parsed:
    """The arrays one parse fills: X and, where read, labels and weights."""

    def __init__(self, n: int, d: int, int_label: bool, has_label: bool, has_weights: bool) -> None:
        import pyarrow as pa

        # X from Arrow's memory pool (see _arrow_piece): its pages are reused from read to read
        self.X = np.frombuffer(pa.allocate_buffer(n * d * 8), np.float64).reshape(n, d) if n * d \
            else np.empty((n, d))
        self.y_i = np.empty(n if has_label and int_label else 0, np.int64)
        self.y_f = np.empty(n if has_label and not int_label else 0, np.float64)
        self.w = np.empty(n if has_weights else 0, np.float64)

    def y(self, int_label: bool) -> np.ndarray:
        return self.y_i if int_label else self.y_f


def _line_cuts(buf: Any, start: int, stop: int, part: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cut after newlines into ranges of about ``part`` bytes."""
    cuts = [start]
    at = start + part
    while at < stop:
        nl = buf.find(b"\n", at - 1, stop)
        if nl < 0 or nl + 1 >= stop:
            break
        cuts.append(nl + 1)
        at = nl + 1 + part
    cuts.append(stop)
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _threads() -> int:
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _jit_ranges(buf: Any, ranges: list[tuple[int, int]], role: tuple[np.ndarray, np.ndarray], sep: int,
                int_label: bool, has_label: bool, has_weights: bool, d: int,
                pool: Any) -> tuple[_Parsed, list[int]] | None:
    """Whole-line ranges of one buffer parsed in parallel into one set of arrays; ``(arrays, rows of
    each range)``, or ``None`` where a field needs the slower reader."""
    from dlogit.io import _csv_jit as jit

    arr = np.frombuffer(buf, np.uint8)
    threads = _threads()  # a block of a stream: a part per thread
    parts = [p for a, b in ranges for p in _line_cuts(buf, a, b, min(_JIT_PART, (b - a) // threads + 1))]
    counts = list(pool.map(lambda p: jit.count_rows(arr, p[0], p[1]), parts))
    out = _Parsed(sum(counts), d, int_label, has_label, has_weights)
    starts = np.concatenate(([0], np.cumsum(counts)))

    def parse(k: int) -> bool:
        a, b = parts[k]
        status, rows = jit.parse_rows(arr, a, b, sep, role[0], role[1], out.X, int(starts[k]), out.y_f,
                                      out.y_i, out.w, jit._HI, jit._LO, jit._E5)
        return status == jit.OK and rows == counts[k]

    done = list(pool.map(parse, range(len(parts))))  # every part parsed: no task holds the buffer after
    if not all(done):
        return None
    per_range, k = [], 0
    for a, b in ranges:
        n = 0
        while k < len(parts) and parts[k][0] < b:
            n += counts[k]
            k += 1
        per_range.append(n)
    return out, per_range


def _jit_stream(path: str, header: bool, role: tuple[np.ndarray, np.ndarray], sep: int, int_label: bool,
                has_label: bool, has_weights: bool, d: int, pool: Any) -> tuple[_Parsed, int] | None:
    """A compressed file, decompressed by one thread while the parser reads the blocks already
    decompressed (the two overlap: zlib, bz2 and lzma release the GIL); ``(arrays, text bytes)``."""
    import queue
    import threading

    blocks: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()

    def produce() -> None:
        try:
            for block in fsio.iter_blocks(path):
                while not stop.is_set():
                    try:
                        blocks.put(block, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            blocks.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which gives up
            blocks.put(exc)

    thread = threading.Thread(target=produce, name="dlogit-csv-decompress", daemon=True)
    thread.start()
    parsed: list[_Parsed] = []
    pending = b""
    nbytes = 0
    skip = header  # the first line is the header
    try:
        while True:
            block = blocks.get()
            if isinstance(block, BaseException):
                return None
            if block is None:
                if pending and not skip:  # a last line without a newline
                    got = _jit_ranges(pending, [(0, len(pending))], role, sep, int_label, has_label,
                                      has_weights, d, pool)
                    if got is None:
                        return None
                    parsed.append(got[0])
                break
            nbytes += len(block)
            first = block.find(b"\n")
            if first < 0:
                pending += block
                continue
            last = block.rfind(b"\n")
            # the line crossing into this block on its own; the block's whole lines in place (no copy)
            for buf, a, b in ((pending + block[:first + 1], 0, len(pending) + first + 1),
                              (block, first + 1, last + 1)):
                if skip:  # the header: the first line of the stream
                    skip = False
                    continue
                if b > a:
                    got = _jit_ranges(buf, [(a, b)], role, sep, int_label, has_label, has_weights, d, pool)
                    if got is None:
                        return None
                    parsed.append(got[0])
            pending = block[last + 1:]
    finally:
        stop.set()  # the producer sees it within 0.1 s, even while it waits on a full queue
        thread.join()
    if not parsed:
        return _Parsed(0, d, int_label, has_label, has_weights), nbytes
    if len(parsed) == 1:
        return parsed[0], nbytes
    out = _Parsed(sum(len(p.X) for p in parsed), d, int_label, has_label, has_weights)
    np.concatenate([p.X for p in parsed], out=out.X)
    for name in ("y_i", "y_f", "w"):
        if getattr(out, name).size:
            np.concatenate([getattr(p, name) for p in parsed], out=getattr(out, name))
    return out, nbytes


def jit_scan_read(info: DatasetInfo, min_bytes: int | None = None) -> tuple[DatasetInfo, list[Piece]] | None:
    """:func:`scan_read` by dlogit's own parser (:mod:`dlogit.io._csv_jit`): local plain-numeric CSV of
    at least ``min_bytes`` (:data:`JIT_MIN_BYTES`) of text, each uncompressed file parsed by several
    threads straight into X, a compressed one as it is decompressed. ``None`` where it does not apply
    or a field needs another reader (that reader then gives the values, or the error, word for word)."""
    import mmap
    from concurrent.futures import ThreadPoolExecutor

    from dlogit.io.npy import weights_slice

    lay: CsvLayout = info.layout
    if not all(fsio.is_local(fsio.filesystem(f)[0]) for f in lay.files):
        return None
    text_bytes = sum(p.length if not p.whole else 3 * fsio.size(lay.files[p.file]) for p in info.pieces)
    if text_bytes < (JIT_MIN_BYTES if min_bytes is None else min_bytes):
        return None
    roles = _jit_roles(info)
    if roles is None:
        return None
    from dlogit.io import _csv_jit as jit

    if not jit.ready():  # compiled in a process of its own, at low priority: this read is pyarrow's
        jit.compile_in_background()
        return None
    role, is_int, int_label = roles
    cols = (role, is_int)
    t = lay.table
    has_label = t.label is not None and info.source.require_label
    has_weights = t.weights is not None
    d, sep = len(t.numeric), ord(lay.sep)
    x_row = max(1, d) * 8
    per = rows_per_chunk(info.source, x_row)
    surveys: list[Survey] = []
    pieces: list[Piece] = []
    start = 0  # the first row of a chunk in the whole source (for a weights .npy)

    def chunks(parsed: _Parsed, spans: list[tuple[int, int]], at: int) -> None:
        nonlocal start
        for s, e in spans:
            w = parsed.w[s - at:e - at] if has_weights else None
            if info.source.weights_path:
                w = weights_slice(info, start, e - s)
            y = parsed.y(int_label)[s - at:e - at] if has_label else None
            pieces.append(Piece(parsed.X[s - at:e - at], y, w))
            start += e - s

    with ThreadPoolExecutor(_threads(), thread_name_prefix="dlogit-csv") as pool:
        k = 0
        try:
            while k < len(info.pieces):
                p: TextPiece = info.pieces[k]
                path = lay.files[p.file]
                if p.whole:
                    got = _jit_stream(path, lay.has_header, cols, sep, int_label, has_label, has_weights, d,
                                      pool)
                    if got is None:
                        return None
                    parsed, nbytes = got
                    rows = len(parsed.X)
                    surveys.append(Survey(rows=rows, nbytes=nbytes))
                    chunks(parsed, row_ranges(rows, per), 0)
                    k += 1
                    continue
                group = [k]  # the byte ranges of this file that follow: one map, one set of arrays
                while group[-1] + 1 < len(info.pieces) and not info.pieces[group[-1] + 1].whole \
                        and info.pieces[group[-1] + 1].file == p.file:
                    group.append(group[-1] + 1)
                with open(fsio.filesystem(path)[1], "rb") as f, \
                        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    ranges = [(info.pieces[j].offset, info.pieces[j].offset + info.pieces[j].length)
                              for j in group]
                    got2 = _jit_ranges(mm, ranges, cols, sep, int_label, has_label, has_weights, d, pool)
                if got2 is None:
                    return None
                parsed, counts = got2
                at = 0
                for j, n in zip(group, counts):
                    surveys.append(Survey(rows=n, nbytes=info.pieces[j].length))
                    if n:
                        chunks(parsed, [(at, at + n)], 0)
                    at += n
                k = group[-1] + 1
        except Exception:  # noqa: BLE001 - the other reader reads it, or says what is wrong
            return None
    final = finish(info, surveys)
    if len(final.pieces) != len(pieces):  # pragma: no cover - the chunks are finish()'s by construction
        return None
    return final, pieces
