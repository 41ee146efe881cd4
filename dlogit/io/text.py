"""Line-oriented text files (CSV/TSV, LIBSVM): cutting them into chunks on line boundaries, counting rows.

An uncompressed file is cut at byte offsets moved forward to the next line start, so a chunk task
reads only its own bytes. A compressed file cannot be cut by offset: it is one read unit, decompressed
by one task, and its rows are split into chunks after parsing. Row counts come from a vectorized
pass that finds the lines holding a record (not blank, not only a comment).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from dlogit.errors import DataError
from dlogit.io import fs as fsio

_NL = 10
_QUOTE = 34


@dataclass(frozen=True)
class LineStyle:
    """Which lines are records: those holding a byte outside ``blank`` before any ``comment`` byte."""

    blank: bytes = b" \t\r\f\v"
    comment: bytes | None = None


def csv_style(sep: str) -> LineStyle:
    """pandas skips lines of whitespace only; a separator is content (``"\\t\\t"`` is a TSV row)."""
    return LineStyle(blank=bytes(c for c in b" \t\r\f\v" if chr(c) not in sep))


LIBSVM_STYLE = LineStyle(comment=b"#")


def line_starts(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)`` of the lines of a byte buffer (``ends`` excludes the newline)."""
    nl = np.flatnonzero(a == _NL)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [a.size]))
    keep = starts < a.size  # no line after a final newline
    return starts[keep], ends[keep]


def record_mask(buf: bytes, style: LineStyle) -> tuple[np.ndarray, np.ndarray]:
    """``(line starts, is-record mask)`` for the lines of ``buf``.

    A line whose first byte is content is a record at once (the common case, vectorized); only lines
    that start blank or with a comment are looked at one by one.
    """
    a = np.frombuffer(buf, np.uint8)
    starts, ends = line_starts(a)
    if starts.size == 0:
        return starts, np.zeros(0, bool)
    special = np.frombuffer(style.blank + (style.comment or b""), np.uint8)
    first = a[np.minimum(starts, a.size - 1)]
    doubt = (ends == starts) | np.isin(first, special)
    mask = ~doubt
    for k in np.flatnonzero(doubt):
        line = buf[starts[k]:ends[k]]
        if style.comment:
            line = line.split(style.comment, 1)[0]
        mask[k] = bool(line.strip(style.blank))
    return starts, mask


def count_records(buf: bytes, style: LineStyle) -> int:
    return int(record_mask(buf, style)[1].sum())


def has_open_quote(buf: bytes) -> bool:
    """Whether some line holds an odd number of ``"`` (a quoted field that spans lines)."""
    if b'"' not in buf:
        return False
    a = np.frombuffer(buf, np.uint8)
    q = np.flatnonzero(a == _QUOTE)
    nl = np.flatnonzero(a == _NL)
    per_line = np.bincount(np.searchsorted(nl, q), minlength=nl.size + 1)
    return bool((per_line % 2).any())


def header_end(path: str) -> tuple[bytes, int]:
    """The first line of an uncompressed or compressed file and its length in bytes (with newline)."""
    with fsio.open_binary(path) as f:
        try:
            line = f.readline()
        except Exception as exc:  # noqa: BLE001 - a corrupt archive
            raise fsio.read_error(path, exc) from None
    return line, len(line)


def cut_by_bytes(path: str, start: int, size: int, target: int) -> list[tuple[int, int]]:
    """``[(offset, length), ...]`` covering ``[start, size)`` in pieces of about ``target`` bytes, each
    starting at a line start."""
    target = max(1, int(target))
    cuts = [start]
    fs, p = fsio.filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            at = start + target
            while at < size:
                f.seek(at - 1)
                f.readline()  # to the end of the line holding byte at-1: the next line starts here
                pos = f.tell()
                if pos >= size:
                    break
                if pos > cuts[-1]:
                    cuts.append(pos)
                at = max(pos, cuts[-1]) + target
    except Exception as exc:  # noqa: BLE001
        raise fsio.read_error(path, exc) from None
    cuts.append(size)
    return [(a, b - a) for a, b in itertools.pairwise(cuts) if b > a]


def cut_by_rows(path: str, start: int, rows: int, style: LineStyle,
                quotes: bool = False) -> list[tuple[int, int, int]]:
    """``[(offset, length, records), ...]``: pieces of exactly ``rows`` records (the last may hold
    fewer), read in one streaming pass over an uncompressed file from ``start``.

    With ``quotes`` (CSV), a quoted field spanning lines is an error (see :func:`spanning_quote_error`).
    """
    cuts: list[int] = [start]
    seen = 0
    base = start
    tail = b""
    fs, p = fsio.filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            f.seek(start)
            while True:
                block = f.read(16 << 20)
                data = tail + block
                if block:
                    last = data.rfind(b"\n") + 1
                    body, tail = data[:last], data[last:]
                else:
                    body, tail = data, b""
                if body:
                    if quotes and has_open_quote(body):
                        raise spanning_quote_error(path)
                    s, m = record_mask(body, style)
                    rec = s[m] + base
                    idx = np.arange(seen, seen + rec.size)
                    cuts.extend(int(o) for o in rec[(idx % rows == 0) & (idx > 0)])
                    seen += rec.size
                    base += len(body)
                if not block:
                    break
            end = base
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise fsio.read_error(path, exc) from None
    if seen == 0:
        return []
    cuts.append(end)
    counts = [rows] * (len(cuts) - 2) + [seen - rows * (len(cuts) - 2)]
    return [(a, b - a, r) for a, b, r in zip(cuts[:-1], cuts[1:], counts)]


def bodies(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """The content of a stream of blocks regrouped to end at line boundaries (the last may not)."""
    tail = b""
    for block in itertools.chain(blocks, [b""]):
        data = tail + block
        if block:
            last = data.rfind(b"\n") + 1
            body, tail = data[:last], data[last:]
        else:
            body, tail = data, b""
        if body:
            yield body


def _line_records(buf: bytes, style: LineStyle) -> tuple[int, bool]:
    """``(records, open quote)`` of a few lines (the lines that cross the blocks of a stream)."""
    return count_records(buf, style), has_open_quote(buf)


def stream_records(blocks: Iterable[bytes], style: LineStyle, skip_header: bool) -> tuple[int, int, bool]:
    """``(records, bytes, open quote seen)`` of a whole (decompressed) stream.

    One pass of vectorized newline search per block, in place: only the line crossing each block
    boundary is copied, so counting costs about a memory read of the text.
    """
    records = nbytes = 0
    open_quote = False
    first = skip_header
    pending = b""  # the start of a line that goes on in the next block
    special = np.frombuffer(style.blank + (style.comment or b""), np.uint8)
    for block in blocks:
        nbytes += len(block)
        a = np.frombuffer(block, np.uint8)
        nl = np.flatnonzero(a == _NL)
        if nl.size == 0:
            pending += block
            continue
        head = pending + block[:nl[0] + 1]  # the line that ends here
        if first:
            first = False
        else:
            r, q = _line_records(head, style)
            records += r
            open_quote = open_quote or q
        # the whole lines after it: starts[k] .. nl[k + 1]
        starts = nl[:-1] + 1
        ends = nl[1:]
        if starts.size:
            doubt = (ends == starts) | np.isin(a[starts], special)
            records += int(starts.size - doubt.sum())
            for k in np.flatnonzero(doubt):
                records += count_records(block[starts[k]:ends[k] + 1], style)
            lo, hi = int(nl[0]) + 1, int(nl[-1]) + 1
            if not open_quote and block.find(b'"', lo, hi) != -1:
                q = np.flatnonzero(a[lo:hi] == _QUOTE) + lo
                per_line = np.bincount(np.searchsorted(nl, q), minlength=nl.size + 1)
                open_quote = bool((per_line % 2).any())
        pending = block[int(nl[-1]) + 1:]
    if pending and not first:
        r, q = _line_records(pending, style)
        records += r
        open_quote = open_quote or q
    return records, nbytes, open_quote


@dataclass(frozen=True)
class TextPiece:
    """Bytes ``[offset, offset + length)`` of ``files[file]``; or (``length == -1``) rows
    ``[start, stop)`` of a file read whole (compressed)."""

    file: int
    offset: int = 0
    length: int = -1
    start: int = 0
    stop: int = -1

    @property
    def whole(self) -> bool:
        return self.length < 0


def spanning_quote_error(path: str) -> DataError:
    return DataError(f"{path} has a quoted field spanning lines: dlogit cuts uncompressed CSV files at "
                     "line ends; remove the line breaks inside quotes, or compress the file "
                     "(a compressed file is read whole)")
