"""Zarr (optional ``zarr`` package): a group holding the features, labels and weights as arrays.

Layout: ``data.zarr`` is a group with a 2-D array ``X`` (rows x features), the labels in the 1-D array
named by ``label`` (default ``label``) and, when ``weights`` names one, the weights in another 1-D
array. ``path`` may instead name a 2-D array itself (``data.zarr/X``); its labels are then ``labels``
(another Zarr array, or a ``.npy``). Chunks of X along the rows map to dlogit chunks: whole Zarr
chunks are grouped into chunks of about ``chunk_bytes`` (at least ``chunk_rows`` rows).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlogit.errors import DataError
from dlogit.io import fs as fsio
from dlogit.io.source import DatasetInfo, Piece, Source, check_finite, rows_per_chunk

X_NAME = "X"


@dataclass(frozen=True)
class ZarrLayout:
    X: str  # path of the features array
    labels: str | None  # path of a Zarr labels array, or of a .npy
    weights: str | None  # path of a Zarr weights array (a .npy goes through source.weights_path)


def _zarr() -> Any:
    try:
        import zarr
    except ImportError:
        raise DataError("reading Zarr data needs the zarr package (pip install zarr)") from None
    return zarr


#: codecs that decode a v2 object-dtype array without pickle: strings, bytes, JSON (zarr 3 writes
#: ``dtype=str`` as ``"|O"`` with ``vlen-utf8``)
_SAFE_OBJECT_CODECS = frozenset({"vlen-utf8", "vlen-bytes", "json2"})


def _codecs_and_objects(meta: Any, ids: set[str]) -> bool:
    """Collect the codec/filter ids of Zarr array metadata into ``ids``; whether a dtype is ``object``."""
    objects = False
    if isinstance(meta, dict):
        for key, value in meta.items():
            if key == "attributes":  # the user's own attributes say nothing about decoding
                continue
            if key in ("id", "name") and isinstance(value, str):
                ids.add(value.lower())
            if key in ("dtype", "data_type") and _object_dtype(value):
                objects = True
            objects = _codecs_and_objects(value, ids) or objects
    elif isinstance(meta, list):
        for v in meta:
            objects = _codecs_and_objects(v, ids) or objects
    return objects


def _pickled(meta: Any) -> bool:
    """Whether Zarr array metadata (v2 ``.zarray`` or v3 ``zarr.json``) describes Python objects
    decoded by pickle: a pickle codec or filter, or an object dtype with no codec that decodes it
    otherwise (vlen-utf8, vlen-bytes, json2): decoding such an array runs code the file chose."""
    ids: set[str] = set()
    objects = _codecs_and_objects(meta, ids)
    if any("pickle" in i for i in ids):
        return True
    return objects and not ids & _SAFE_OBJECT_CODECS


def _object_dtype(spec: Any) -> bool:
    if isinstance(spec, str):
        return spec.lstrip("|<>=").upper().startswith("O") or spec.lower() == "object"
    if isinstance(spec, list):  # a v2 structured dtype: [[name, typestr], ...]
        return any(_object_dtype(f[1]) for f in spec if isinstance(f, list) and len(f) > 1)
    return False


def refuse_objects(path: str) -> None:
    """Refuse an array holding Python objects from its metadata alone, before zarr reads (and would
    unpickle) any of its chunks -- as an ``.npy`` of objects is refused."""
    import json

    fs, p = fsio.filesystem(path)
    for name in (".zarray", "zarr.json"):
        meta_path = f"{p.rstrip('/')}/{name}"
        try:
            if not fs.exists(meta_path):
                continue
            meta = json.loads(fs.cat_file(meta_path))
        except Exception as exc:  # noqa: BLE001 - unreadable metadata: say so
            raise fsio.read_error(path, exc) from None
        if isinstance(meta, dict) and meta.get("node_type", "array") == "array" and _pickled(meta):
            raise DataError(f"{path} holds Python objects (a pickle): dlogit does not decode them; "
                            "store it as a numeric or string array")


def _open(path: str) -> Any:
    zarr = _zarr()
    try:
        return zarr.open(path, mode="r")
    except Exception as exc:  # noqa: BLE001 - missing store, not a Zarr store
        raise fsio.read_error(path, exc) from None


def _join(group: str, name: str) -> str:
    return f"{group.rstrip('/')}/{name}"


def _vector(path: str, what: str, n: int) -> Any:
    if path.lower().endswith(".npy"):
        from dlogit.io.npy import open_vector

        return open_vector(path, what, n)
    refuse_objects(path)  # a pickle codec: refused from the metadata; strings (vlen-utf8 ...) pass
    a = _open(path)
    if not hasattr(a, "shape") or len(a.shape) != 1:
        raise DataError(f"{what} in {path} must be a 1-D array")
    if a.shape[0] != n:
        raise DataError(f"the data has {n} rows but {path} has {a.shape[0]} {what}")
    return a


def plan(source: Source, kind: str, encoder: Any) -> DatasetInfo:
    # every array dlogit may read, checked from its metadata before zarr opens the store
    for name in ("", X_NAME, source.label, None if source.weights_path else source.weights):
        if name is not None:
            refuse_objects(_join(source.path, name) if name else source.path)
    node = _open(source.path)
    labels_path = source.labels
    weights_path = None
    if hasattr(node, "array_keys"):  # a group
        arrays = sorted(node.array_keys())
        if X_NAME not in arrays:
            raise DataError(f"the Zarr group {source.path} has no array {X_NAME!r} (arrays: "
                            f"{', '.join(arrays) or 'none'})")
        x_path = _join(source.path, X_NAME)
        refuse_objects(x_path)
        X = node[X_NAME]
        if labels_path is None and source.label is not None:
            if source.label in arrays:
                labels_path = _join(source.path, source.label)
            elif source.require_label:
                raise DataError(f"the Zarr group {source.path} has no label array {source.label!r} (arrays: "
                                f"{', '.join(arrays)}): name it with --label, or give --labels")
        if source.weights is not None and source.weights_path is None:
            if source.weights not in arrays:
                raise DataError(f"the Zarr group {source.path} has no weights array {source.weights!r}")
            weights_path = _join(source.path, source.weights)
    else:
        refuse_objects(source.path)
        x_path, X = source.path, node
        if source.weights is not None and source.weights_path is None:
            raise DataError(f"{source.path} is one Zarr array: give the weights as a .npy file")
    if len(X.shape) != 2:
        raise DataError(f"{x_path} must be a 2-D array (rows x features), got shape {tuple(X.shape)}")
    xdtype = np.dtype(X.dtype)
    if xdtype.kind not in "fiub":
        raise DataError(f"{x_path} must hold numbers, got dtype {xdtype}")
    n, d = (int(s) for s in X.shape)
    if labels_path is None and source.require_label:
        raise DataError(f"{source.path} is a Zarr array: give its labels with --labels")
    labels = _vector(labels_path, "labels", n) if labels_path is not None else None
    if weights_path is not None:
        w = _vector(weights_path, "weights", n)
        if np.dtype(w.dtype).kind not in "fiub":
            raise DataError(f"weights in {weights_path} are not numeric")
    dtype = source.dtype or (xdtype.name if xdtype.kind == "f" else "float64")
    per = rows_per_chunk(source, d * np.dtype(dtype).itemsize)
    step = int(X.chunks[0])
    groups = max(1, -(-per // step))  # whole Zarr chunks per dlogit chunk
    ranges = [(s, min(n, s + groups * step)) for s in range(0, n, groups * step)]
    notices = []
    if np.dtype(dtype) != xdtype:
        notices.append(f"{x_path} holds {xdtype.name}: each chunk is converted to {dtype} on read")
    return DatasetInfo(source=source, kind="zarr", n_features=d, feature_names=None, sparse=False, dtype=dtype,
                       pieces=ranges, piece_rows=[e - s for s, e in ranges], has_labels=labels is not None,
                       has_weights=source.weights is not None, notices=notices,
                       label_dtype=_label_dtype(labels) if labels is not None else None,
                       layout=ZarrLayout(x_path, labels_path, weights_path))


def _label_dtype(labels: Any) -> str:
    """``"object"`` for string labels (as CSV/Parquet text labels), else the array's dtype."""
    dtype = np.dtype(labels.dtype)
    return "object" if dtype.kind in "OTUS" else dtype.str


def _text_labels(y: np.ndarray, path: str) -> np.ndarray:
    """String labels as an object array of ``str``; bytes or other objects are an error."""
    if y.dtype.kind == "S":
        raise DataError(f"labels in {path} are bytes: store them as strings or numbers")
    out = y.astype(object)
    if y.dtype.kind == "O" and not all(isinstance(v, str) for v in out):
        raise DataError(f"labels in {path} hold bytes or other objects: of the Zarr v2 object arrays only "
                        "strings (vlen-utf8) are supported as labels; store them as strings or numbers")
    return out


def _rows(path: str, s: int, e: int) -> np.ndarray:
    if path.lower().endswith(".npy"):
        from dlogit.io.npy import open_npy, rows_of

        return rows_of(open_npy(path), s, e)
    try:
        return np.asarray(_open(path)[s:e])
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise fsio.read_error(path, exc) from None


@functools.lru_cache(maxsize=4096)
def chunk_files(path: str, s: int, e: int) -> tuple[str, ...]:
    """The files rows ``s:e`` of the array at ``path`` are read from: its metadata file and the files of
    the Zarr chunks (or shards) holding those rows (some may not exist: never written, fill value); a
    ``.npy`` itself. What a streamed chunk checks at every read (:mod:`dlogit.io.stream`)."""
    if path.lower().endswith(".npy"):
        return (path,)
    a = _open(path)
    meta = a.metadata
    grid = tuple(int(c) for c in (getattr(a, "shards", None) or a.chunks))
    shape = tuple(int(n) for n in a.shape)
    rows = range(s // grid[0], -(-e // grid[0]))
    rest = itertools.product(*(range(-(-n // c)) for n, c in zip(shape[1:], grid[1:])))
    keys = [meta.encode_chunk_key((r, *c)) for c in list(rest) for r in rows]
    name = ".zarray" if int(getattr(meta, "zarr_format", 3)) == 2 else "zarr.json"
    return (_join(path, name), *sorted(_join(path, k) for k in keys))


def read_unit(info: DatasetInfo, u: int) -> list[Piece]:
    from dlogit.io.npy import weights_slice

    lay: ZarrLayout = info.layout
    out = []
    for i in info.units[u]:
        s, e = info.pieces[i]
        X = np.ascontiguousarray(_rows(lay.X, s, e), dtype=info.dtype)
        check_finite(X, lambda r, s=s: f"{lay.X}: row {s + r + 1}", lambda j: f"column {j} (0-based)")
        y = _rows(lay.labels, s, e) if lay.labels is not None else None
        if y is not None and info.label_dtype == "object":
            y = _text_labels(y, lay.labels)
        if lay.weights is not None:
            w = np.asarray(_rows(lay.weights, s, e), dtype=np.float64)
        elif info.source.weights_path is not None:
            w = weights_slice(info, s, e - s)
        else:
            w = None
        out.append(Piece(X, y, w))
    return out
