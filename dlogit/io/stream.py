"""A chunk as its source range (:class:`ChunkSource`): read again on demand, checked against its files.

A fit whose chunks do not all fit in a worker's chunk cache (``dlogit.engine.cache-bytes``) reads the
others from their source at every evaluation (:mod:`dlogit.engine.residency`). The same reader reads
the same range each time, so a streamed chunk holds the same values as one read once and kept. What
could differ is the file: every read compares the size and modification time of each file the chunk
comes from (features, a separate labels or weights ``.npy``) with what the fit's first read of that
chunk saw, before and after reading it, and a change is one :class:`SourceChanged` line naming the
file -- never a silent mix of old and new data.

Streamable: every format dlogit reads. A chunk whose read unit is itself is read again from its
range: NPY (a memory map, or ``preadv`` straight into a buffer), Parquet (its row groups),
uncompressed CSV/TSV and LIBSVM (their byte ranges), Zarr (its rows' Zarr chunks). A compressed text
file is not range-readable (one unit: decompressed once, its rows split into several chunks): the
first read parses it once (:func:`read` serves the unit's other chunks from that read) and a streamed
chunk's parsed arrays are spilled, raw, to a file in the worker's local directory (:func:`spill`),
read back at every evaluation -- while the compressed file's size and modification time are still
checked at every read -- and removed when the fit's shard goes (or its process exits).
"""

from __future__ import annotations

import os
import tempfile
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlogit.errors import DataError
from dlogit.io.source import DatasetInfo, Piece

#: what a file looked like: (size, modification time) -- ns for local files, the store's own stamp else
Signature = tuple[Any, Any]


class SourceChanged(DataError):
    """A file a fit reads its chunks from changed (or went away) since the fit first read it."""


def signature(path: str, missing_ok: bool = False) -> Signature:
    """``(size, mtime)`` of ``path`` (local or URL); a missing file is :class:`SourceChanged` (with
    ``missing_ok``: ``(None, None)``, e.g. a Zarr chunk never written: its fill value)."""
    from dlogit.io import fs as fsio

    try:
        if "://" not in path or path.startswith("file://"):
            st = os.stat(path.removeprefix("file://"))
            return int(st.st_size), int(st.st_mtime_ns)
        fs, p = fsio.filesystem(path)
        meta = fs.info(p)
    except FileNotFoundError:
        if missing_ok:
            return None, None
        raise SourceChanged(f"{path} was removed during the fit (its chunks are read from it at every "
                            "evaluation); train again once the data is in place") from None
    except OSError as exc:
        raise fsio.read_error(path, exc) from None
    stamp = next((meta[k] for k in ("mtime", "LastModified", "last_modified", "updated", "ETag", "etag")
                  if meta.get(k) is not None), None)
    return meta.get("size"), str(stamp)


def changed(path: str) -> SourceChanged:
    return SourceChanged(f"{path} changed during the fit (size or modification time differ from the fit's "
                         "first read; its chunks are read from it at every evaluation); train again on "
                         "the new data")


@dataclass(frozen=True)
class ChunkSource:
    """Chunk ``index`` of a scanned source, read by :meth:`read` (picklable: it travels to workers)."""

    info: DatasetInfo
    index: int

    def files(self) -> tuple[str, ...]:
        """The files this chunk is read from."""
        info, piece = self.info, self.info.pieces[self.index]
        lay = info.layout
        if info.kind == "npy":
            out = [lay.X.path] + ([lay.labels.path] if lay.labels is not None else [])
        elif info.kind == "parquet":
            out = [p.path for p in piece]
        elif info.kind in ("csv", "tsv", "libsvm"):
            out = [lay.files[piece.file]]
        elif info.kind == "zarr":
            from dlogit.io.zarr import chunk_files

            s, e = piece
            out = [f for a in (lay.X, lay.labels, lay.weights) if a is not None for f in chunk_files(a, s, e)]
        else:  # not streamable (see streamable())
            out = []
        if info.source.weights_path is not None:
            out.append(info.source.weights_path)
        return tuple(dict.fromkeys(out))

    def signatures(self) -> dict[str, Signature]:
        zarr = self.info.kind == "zarr"  # a Zarr chunk file may be absent (never written: fill value)
        return {f: signature(f, missing_ok=zarr and not f.endswith((".zarray", "zarr.json", ".npy")))
                for f in self.files()}

    @property
    def rereadable(self) -> bool:
        """Whether this chunk's read unit is the chunk alone (else :func:`spill` it to stream it)."""
        u, _ = self.info.unit_of(self.index)
        return len(self.info.units[u]) == 1

    def read(self, expect: dict[str, Signature] | None = None) -> tuple[Piece, dict[str, Signature]]:
        """The chunk, and the signatures of its files; ``expect`` (those of the first read): a file
        that differs, before or after this read, is :class:`SourceChanged`. A chunk of a unit of several
        chunks (a compressed file) reads the whole unit once: its other chunks are served from that read
        (one unit kept per process, until :func:`release_units`), checked against the files again."""
        from dlogit import io as dio

        before = self.signatures()
        if expect is not None:
            for f, sig in before.items():
                if expect.get(f, sig) != sig:
                    raise changed(f)
        u, j = self.info.unit_of(self.index)
        members = self.info.units[u]
        if len(members) > 1:
            with _units_lock:
                held = _units.get((id(self.info), u))
                piece = held[1].pop(self.index, None) if held is not None and held[0] is self.info else None
                sigs = held[2] if held is not None else {}
            if piece is not None:
                for f, sig in before.items():
                    if sigs.get(f) != sig:
                        raise changed(f)
                return piece, sigs
        pieces = dio.read_unit(self.info, u)
        after = self.signatures()
        for f, sig in after.items():
            if before.get(f) != sig:
                raise changed(f)
        if len(members) > 1:
            with _units_lock:
                _units.clear()
                _units[(id(self.info), u)] = (self.info, {i: p for i, p in zip(members, pieces)
                                                          if i != self.index}, before)
        return pieces[j], before


    def direct(self) -> tuple[int, int, str] | None:
        """``(rows, features, dtype)`` when :meth:`read_x` reads this chunk straight into a buffer (a
        local NPY file stored as it is read: same dtype, C order), else ``None``."""
        info = self.info
        lay = info.layout
        if (info.kind == "npy" and "://" not in lay.X.path and not lay.X.fortran
                and np.dtype(lay.X.dtype) == np.dtype(info.dtype)):
            s, e = info.pieces[self.index]
            return e - s, int(lay.X.shape[1]), np.dtype(info.dtype).str
        return None

    def read_x(self, expect: dict[str, Signature], out: np.ndarray | None = None) -> Any:
        """The chunk's X again (checked against ``expect``, the signatures of the first read), owning its
        memory. A chunk :meth:`direct` reads is read with ``preadv`` into ``out`` (a 1-D buffer of at
        least its size: the caller reuses two, so no page of a fresh array faults in at every
        evaluation) or a fresh array: the same bytes, without mapping the file (a memory map's pages
        would count in the worker's memory beside the copy); anything else through its reader."""
        info = self.info
        lay = info.layout
        shape = self.direct()
        if shape is not None:
            for f, sig in self.signatures().items():
                if expect.get(f, sig) != sig:
                    raise changed(f)
            s, e = info.pieces[self.index]
            d = shape[1]
            dtype = np.dtype(shape[2])
            if out is not None and out.dtype == dtype and out.size >= (e - s) * d:
                X = out[:(e - s) * d].reshape(e - s, d)
            else:
                X = np.empty((e - s, d), dtype=dtype)
            row = d * X.dtype.itemsize
            pread_into(lay.X.path, lay.X.offset + s * row, X.reshape(-1).view(np.uint8).data, lay.X.path)
            for f, sig in self.signatures().items():
                if expect.get(f, sig) != sig:
                    raise changed(f)
            return X
        piece, _ = self.read(expect)
        return owned_copy(piece.X)


def pread_into(path: str, offset: int, view: memoryview, name: str) -> None:
    """Fill ``view`` with the bytes of ``path`` from ``offset`` (a short file: ``name`` changed)."""
    with open(path, "rb") as fh:
        at, want = 0, len(view)
        while at < want:
            got = os.preadv(fh.fileno(), [view[at:]], offset + at)
            if got <= 0:
                raise changed(name)
            at += got


#: the last read unit of several chunks, per process: (id(info), unit) -> (info, chunk -> piece not yet
#: served, the files' signatures at that read)
_units: dict[tuple[int, int], tuple[DatasetInfo, dict[int, Piece], dict[str, Signature]]] = {}
_units_lock = threading.Lock()


def release_units() -> None:
    """Drop the pieces :meth:`ChunkSource.read` keeps from the last unit of several chunks it read."""
    with _units_lock:
        _units.clear()


class Spilled:
    """A streamed chunk of a unit that is not range-readable (a compressed file): its X as written raw
    to a worker-local file by :func:`spill`, read back at every evaluation (``read_x``), the original
    files checked against their first read's signatures before and after every read. The file goes
    with this object (or at process exit, or :meth:`remove`)."""

    def __init__(self, source: ChunkSource, X: Any, directory: str) -> None:
        self.source = source
        self.index = source.index
        fd, self.path = tempfile.mkstemp(prefix=f"dlogit-chunk{source.index}-", suffix=".raw", dir=directory)
        self._finalizer = weakref.finalize(self, _remove, self.path)
        self.sparse = hasattr(X, "indptr")
        self.shape = tuple(int(n) for n in X.shape)
        try:
            with os.fdopen(fd, "wb") as fh:
                if self.sparse:
                    self.kind = type(X)
                    self.parts = [(a.dtype.str, int(a.size)) for a in (X.data, X.indices, X.indptr)]
                    for a in (X.data, X.indices, X.indptr):
                        np.ascontiguousarray(a).tofile(fh)
                else:  # C order as it is, an F-ordered chunk as its C-ordered transpose
                    self.fortran = bool(X.flags.f_contiguous and not X.flags.c_contiguous)
                    self.dtype = X.dtype.str
                    (X.T if self.fortran else X).tofile(fh)
        except BaseException:
            self.remove()
            raise

    def files(self) -> tuple[str, ...]:
        return self.source.files()

    def signatures(self) -> dict[str, Signature]:
        return self.source.signatures()

    def read(self, expect: dict[str, Signature] | None = None) -> tuple[Piece, dict[str, Signature]]:
        return self.source.read(expect)

    def direct(self) -> tuple[int, int, str] | None:
        """``(rows, features, dtype)``: a C-ordered dense chunk is read straight into a buffer."""
        if self.sparse or self.fortran:
            return None
        return self.shape[0], self.shape[1], self.dtype

    def read_x(self, expect: dict[str, Signature], out: np.ndarray | None = None) -> Any:
        """X again from the spill file (the same bytes), into ``out`` where :meth:`direct` says so."""
        self._check(expect)
        if self.sparse:
            arrays, at = [], 0
            for dt, n in self.parts:
                a = np.empty(n, dtype=dt)
                pread_into(self.path, at, a.view(np.uint8).data, self.source.files()[0])
                at += a.nbytes
                arrays.append(a)
            X = self.kind((arrays[0], arrays[1], arrays[2]), shape=self.shape)
        else:
            rows, d = self.shape
            shape = (d, rows) if self.fortran else (rows, d)
            dtype = np.dtype(self.dtype)
            if out is not None and not self.fortran and out.dtype == dtype and out.size >= rows * d:
                X = out[:rows * d].reshape(shape)
            else:
                X = np.empty(shape, dtype=dtype)
            pread_into(self.path, 0, X.reshape(-1).view(np.uint8).data, self.source.files()[0])
            X = X.T if self.fortran else X
        self._check(expect)
        return X

    def _check(self, expect: dict[str, Signature]) -> None:
        for f, sig in self.signatures().items():
            if expect.get(f, sig) != sig:
                raise changed(f)

    def remove(self) -> None:
        """Remove the spill file now."""
        self._finalizer()


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def spill(source: ChunkSource, X: Any, directory: str | None = None) -> Spilled | None:
    """``source``'s chunk ``X`` (as first read) spilled to ``directory`` to be streamed from there;
    ``None`` for an X a raw file cannot give back as it is (a NumPy array neither C- nor F-ordered,
    anything but NumPy / SciPy CSR): the caller keeps it in memory."""
    if hasattr(X, "indptr"):
        if type(X).__module__.split(".")[0] != "scipy":
            return None
    elif not (isinstance(X, np.ndarray) and (X.flags.c_contiguous or X.flags.f_contiguous)):
        return None
    return Spilled(source, X, directory or tempfile.gettempdir())


def streamable(info: DatasetInfo, index: int) -> bool:
    """Whether chunk ``index`` can be streamed: read again from its range, or (a chunk of a unit of
    several: a compressed file) spilled at its first read (:func:`spill`)."""
    return info.kind in ("npy", "parquet", "csv", "tsv", "libsvm", "zarr")


def owned_copy(X: Any) -> Any:
    """``X`` holding its own memory: a memory-mapped chunk is copied (the read happens here, in the
    read-ahead thread, not as page faults during the evaluation); anything else as it is."""
    if isinstance(X, np.ndarray) and not X.flags.owndata:
        base = X
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        if isinstance(base, np.memmap) or type(base).__name__ == "mmap":
            return np.array(X, order="C", copy=True)
    return X


def nbytes(X: Any) -> int:
    """Bytes a chunk's X holds (dense: its buffer; CSR: data, indices, indptr)."""
    if hasattr(X, "indptr"):
        return int(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes)
    return int(X.nbytes)


def stream_sources(X: Any, y: Any, w: Any) -> list[ChunkSource] | None:
    """The fit's chunks as :class:`~dlogit.io.stream.ChunkSource` when ``X``, ``y`` (and ``w``) are the
    arrays :func:`dlogit.data.dataset` made (each chunk a pick of one read task of one scanned source)
    and every read unit is one chunk; else ``None`` (the fit computes its chunks as Dask tasks)."""
    from dask._task_spec import Alias, DataNode, Task, TaskRef

    from dlogit import data as dmod

    def dep(graph: dict[Any, Any], arg: Any) -> Any:  # a task's reference: a TaskRef, or (dask 2025.4) an Alias
        if isinstance(arg, TaskRef):
            return graph.get(arg.key)
        if isinstance(arg, Alias):
            return graph.get(arg.target)
        return None

    def chunk_tasks(a: Any) -> list[Any] | None:
        graph = dict(a.__dask_graph__())
        out = []
        for key in a.__dask_keys__():
            key = key[0] if isinstance(key, list) else key
            task = graph.get(key)
            for _ in range(64):
                if isinstance(task, Alias) and task.target in graph:
                    task = graph[task.target]
                elif isinstance(task, (tuple, str)) and not isinstance(task, Task) and task in graph:
                    task = graph[task]
                else:
                    break
            if not isinstance(task, Task) or task.func is not dmod._pick:
                return None
            part_ref, j, field = task.args
            part = dep(graph, part_ref)
            if not isinstance(part, Task) or part.func is not dmod._read_unit:
                return None
            info_ref, u = part.args
            node = dep(graph, info_ref)
            if not isinstance(node, DataNode) or not isinstance(node.value, DatasetInfo):
                return None
            out.append((node.value, int(u), int(j), int(field)))
        return out

    try:
        xs = chunk_tasks(X)
        ys = chunk_tasks(y)
        ws = chunk_tasks(w) if w is not None else None
    except Exception:  # noqa: BLE001 - any other graph: not ours to stream
        return None
    if not xs or ys is None or len(ys) != len(xs) or (w is not None and (ws is None or len(ws) != len(xs))):
        return None
    info = xs[0][0]
    sources = []
    for i, (inf, u, j, field) in enumerate(xs):
        same = [(inf, u, j)] + [(t[0], t[1], t[2]) for t in ([ys[i]] + ([ws[i]] if ws else []))]
        if field != 0 or ys[i][3] != 1 or (ws and ws[i][3] != 2):
            return None
        if any(s[0] is not info or s[1:] != (u, j) for s in same):
            return None
        if info.units[u][j] != i or not streamable(info, i):
            return None
        sources.append(ChunkSource(info, i))
    return sources
