"""LIBSVM / svmlight: ``label idx:val idx:val ... [# comment]`` lines (``qid:N`` ignored).

Files (a glob or a directory of parts, plain or compressed) are cut at line starts into pieces of about
``chunk_bytes`` of text, or of exactly ``chunk_rows`` rows. The scan's pass over the pieces counts their
rows and finds the smallest and largest feature index (a vectorized scan of the bytes, no float
parsing); from those it tells 1-based from 0-based indices (any index 0 means 0-based, unless
``zero_based`` says) and the number of features (the largest index, or ``n_features``). A chunk is
parsed by :func:`sklearn.datasets.load_svmlight_file` and comes out as CSR with raw float64 labels.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dlogit.errors import DataError
from dlogit.io import fs as fsio
from dlogit.io import text
from dlogit.io.source import (
    DatasetInfo,
    Piece,
    Source,
    Survey,
    check_finite,
    chunk_bytes_of,
    kind_of_name,
    row_ranges,
    split_compression,
)
from dlogit.io.text import LIBSVM_STYLE, TextPiece

_COMMENT = re.compile(rb"#[^\n]*")
_MAX_DIGITS = 18


@dataclass(frozen=True)
class LibsvmLayout:
    files: tuple[str, ...]
    zero_based: bool = False


def is_libsvm_name(name: str) -> bool:
    return kind_of_name(name) == "libsvm"


def index_range(buf: bytes) -> tuple[int | None, int | None]:
    """The smallest and largest feature index written in ``buf`` (``None`` when it has none).

    Vectorized over the ``:`` bytes: the index is the run of digits just before each one, read
    backwards (``qid:`` has none and is skipped); comments are removed first.
    """
    if b"#" in buf:
        buf = _COMMENT.sub(b"", buf)
    a = np.frombuffer(buf, np.uint8)
    colon = np.flatnonzero(a == 58)
    if colon.size == 0:
        return None, None
    value = np.zeros(colon.size, np.int64)
    scale = np.ones(colon.size, np.int64)
    digits = np.zeros(colon.size, np.int64)
    alive = np.ones(colon.size, bool)
    for j in range(1, _MAX_DIGITS + 2):
        pos = colon - j
        c = a[np.maximum(pos, 0)].astype(np.int64)
        alive &= (pos >= 0) & (c >= 48) & (c <= 57)
        if not alive.any():
            break
        if j > _MAX_DIGITS:
            raise DataError("a LIBSVM feature index has more than 18 digits")
        value += np.where(alive, (c - 48) * scale, 0)
        scale = np.where(alive, scale * 10, scale)
        digits += alive
    value = value[digits > 0]
    if value.size == 0:
        return None, None
    return int(value.min()), int(value.max())


def integer_labels(buf: bytes) -> bool:
    """Whether every record's label (its first field) is written as an integer (``1``, ``-1``, ``+1``):
    vectorized, no float parsing. A label written ``1.0`` (or a line starting blank) says float."""
    a = np.frombuffer(buf, np.uint8)
    starts, mask = text.record_mask(buf, LIBSVM_STYLE)
    s = starts[mask]
    if s.size == 0:
        return True
    stops = np.flatnonzero((a == 32) | (a == 9) | (a == 10) | (a == 13) | (a == 35))
    stops = np.append(stops, a.size)
    e = stops[np.searchsorted(stops, s)]
    digit = (a >= 48) & (a <= 57)
    other = ~(digit | (a == 43) | (a == 45))  # not a digit, '+' or '-'
    cum = np.concatenate(([0], np.cumsum(other)))
    return bool(np.all(e > s) and np.all(cum[e] == cum[s]))


def _survey_bytes(data: bytes, path: str) -> Survey:
    try:
        lo, hi = index_range(data)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return Survey(rows=text.count_records(data, LIBSVM_STYLE), nbytes=len(data), min_index=lo, max_index=hi,
                  integer_labels=integer_labels(data))


def plan(source: Source, kind: str, encoder: Any) -> DatasetInfo:
    if source.weights is not None and source.weights_path is None:
        raise DataError(f"the weights of a LIBSVM file must be a 1-D .npy, got {source.weights!r}")
    files = fsio.expand(source.path, is_libsvm_name)
    target = chunk_bytes_of(source)
    pieces: list[TextPiece] = []
    rows: list[int | None] = []
    notices: list[str] = []
    for k, f in enumerate(files):
        if split_compression(f)[1] is not None:
            pieces.append(TextPiece(k))
            rows.append(None)
        elif source.chunk_rows is not None:
            for off, n, r in text.cut_by_rows(f, 0, int(source.chunk_rows), LIBSVM_STYLE):
                pieces.append(TextPiece(k, off, n))
                rows.append(r)
        else:
            for off, n in text.cut_by_bytes(f, 0, fsio.size(f), target):
                pieces.append(TextPiece(k, off, n))
                rows.append(None)
    if any(p.whole for p in pieces):
        notices.append("compressed files are read whole, one task each (their rows are split into "
                       "chunks after reading)")
    dtype = source.dtype or "float64"
    return DatasetInfo(source=source, kind="libsvm", n_features=0, feature_names=None, sparse=True,
                       dtype=dtype, pieces=pieces, piece_rows=rows, has_labels=True,
                       has_weights=source.weights is not None, notices=notices, label_dtype="float64",
                       surveys=list(range(len(pieces))), layout=LibsvmLayout(tuple(files)))


def survey(info: DatasetInfo, k: int) -> Survey:
    p: TextPiece = info.pieces[k]
    path = info.layout.files[p.file]
    if not p.whole:
        return _survey_bytes(fsio.read_range(path, p.offset, p.length), path)
    total = Survey()
    for body in text.bodies(fsio.iter_blocks(path)):
        s = _survey_bytes(body, path)
        total.rows += s.rows
        total.nbytes += s.nbytes
        total.integer_labels = total.integer_labels and s.integer_labels
        if s.min_index is not None:
            total.min_index = s.min_index if total.min_index is None else min(total.min_index, s.min_index)
            total.max_index = s.max_index if total.max_index is None else max(total.max_index, s.max_index)
    return total


def finish(info: DatasetInfo, surveys: list[Survey]) -> DatasetInfo:
    src = info.source
    lows = [s.min_index for s in surveys if s.min_index is not None]
    highs = [s.max_index for s in surveys if s.max_index is not None]
    lo = min(lows) if lows else None
    hi = max(highs) if highs else None
    zero_based = src.zero_based if src.zero_based is not None else lo == 0
    if lo == 0 and not zero_based:
        raise DataError(f"{src.path} holds feature index 0, but the indices were said to be 1-based")
    found = 0 if hi is None else hi + (1 if zero_based else 0)
    if src.n_features is not None:
        if found > src.n_features:
            raise DataError(f"{src.path} holds feature index {hi}, beyond --n-features {src.n_features}")
        n_features = int(src.n_features)
    else:
        n_features = found
    pieces: list[TextPiece] = []
    rows: list[int | None] = []
    units: list[list[int]] = []
    for p, s in zip(info.pieces, surveys):
        if p.whole:
            per = int(src.chunk_rows) if src.chunk_rows is not None else max(
                1, int(s.rows * chunk_bytes_of(src) // max(1, s.nbytes)))
            members = []
            for a, b in row_ranges(s.rows, per):
                members.append(len(pieces))
                pieces.append(replace(p, start=a, stop=b))
                rows.append(b - a)
            if members:
                units.append(members)
        elif s.rows:
            units.append([len(pieces)])
            pieces.append(p)
            rows.append(s.rows)
    if not pieces:
        raise DataError(f"{src.path} holds no rows")
    notices = list(info.notices)
    if src.zero_based is None:
        notices.append(f"LIBSVM feature indices are {'0' if zero_based else '1'}-based "
                       f"({n_features} features)")
    # labels written as integers (0/1, -1/+1, class numbers) stay integers: predictions print "-1", not "-1.0"
    label_dtype = "int64" if all(s.integer_labels for s in surveys) else "float64"
    return replace(info, n_features=n_features, pieces=pieces, piece_rows=rows, units=units, surveys=[],
                   notices=notices, label_dtype=label_dtype,
                   layout=replace(info.layout, zero_based=zero_based))


def _parse(data: bytes, info: DatasetInfo, path: str) -> tuple[Any, np.ndarray]:
    import scipy.sparse as sp
    from sklearn.datasets import load_svmlight_file

    try:
        X0, y = load_svmlight_file(io.BytesIO(data), zero_based=True, dtype=np.dtype(info.dtype))
    except ValueError as exc:
        raise fsio.read_error(path, exc) from None
    shift = 0 if info.layout.zero_based else 1
    indices = X0.indices - shift if shift else X0.indices
    d = info.n_features
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= d):
        raise DataError(f"{path} changed since it was scanned: feature index out of range")
    X = sp.csr_matrix((X0.data, indices, X0.indptr), shape=(X0.shape[0], d))
    y = np.asarray(y, dtype=np.float64)
    if info.label_dtype == "int64":
        out = y.astype(np.int64)
        if not np.array_equal(out, y):
            raise DataError(f"{path} changed since it was scanned: a label is no longer an integer")
        return X, out
    return X, y


def read_unit(info: DatasetInfo, u: int) -> list[Piece]:
    from dlogit.io.npy import weights_slice

    members = info.units[u]
    first: TextPiece = info.pieces[members[0]]
    path = info.layout.files[first.file]
    if first.whole:
        X, y = _parse(fsio.read_all(path), info, path)
        expect = info.pieces[members[-1]].stop
    else:
        X, y = _parse(fsio.read_range(path, first.offset, first.length), info, path)
        expect = info.piece_rows[members[0]]
    if X.shape[0] != expect:
        raise DataError(f"{path} changed since it was scanned: read {X.shape[0]} rows where the scan "
                        f"counted {expect}")
    starts = info.row_starts() if info.source.weights_path else None
    base = sum(int(info.piece_rows[j] or 0) for j in range(members[0])
               if info.pieces[j].file == first.file) if not first.whole else 0
    shift = 0 if info.layout.zero_based else 1
    out = []
    for i in members:
        p: TextPiece = info.pieces[i]
        if p.whole:
            Xi, yi = X[p.start:p.stop], y[p.start:p.stop]
        else:
            Xi, yi = X, y
        at = base + (p.start if p.whole else 0)
        check_finite(Xi, lambda r, at=at: f"{path}: row {at + r + 1}", lambda j: f"feature index {j + shift}")
        w = weights_slice(info, starts[i], Xi.shape[0]) if starts is not None else None
        out.append(Piece(Xi, yi, w))
    return out
