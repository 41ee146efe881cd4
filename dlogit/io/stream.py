"""A chunk as its source range (:class:`ChunkSource`): read again on demand, checked against its files.

A fit whose chunks do not all fit in a worker's chunk cache (``dlogit.engine.cache-bytes``) reads the
others from their source at every evaluation (:mod:`dlogit.engine.residency`). The same reader reads
the same range each time, so a streamed chunk holds the same values as one read once and kept. What
could differ is the file: every read compares the size and modification time of each file the chunk
comes from (features, a separate labels or weights ``.npy``) with what the fit's first read of that
chunk saw, before and after reading it, and a change is one :class:`SourceChanged` line naming the
file -- never a silent mix of old and new data.

Streamable: every format whose read unit is one chunk -- NPY (a memory map; a streamed chunk is
copied out of it in the read-ahead thread), Parquet (its row groups), uncompressed CSV/TSV and LIBSVM
(their byte ranges). Chunks of a compressed text file (one unit: the file is decompressed once) and
of Zarr stay in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlogit.errors import DataError
from dlogit.io.source import DatasetInfo, Piece

#: what a file looked like: (size, modification time) -- ns for local files, the store's own stamp else
Signature = tuple[Any, Any]


class SourceChanged(DataError):
    """A file a fit reads its chunks from changed (or went away) since the fit first read it."""


def signature(path: str) -> Signature:
    """``(size, mtime)`` of ``path`` (local or URL); a missing file is :class:`SourceChanged`."""
    from dlogit.io import fs as fsio

    try:
        if "://" not in path or path.startswith("file://"):
            st = os.stat(path.removeprefix("file://"))
            return int(st.st_size), int(st.st_mtime_ns)
        fs, p = fsio.filesystem(path)
        meta = fs.info(p)
    except FileNotFoundError:
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
        else:  # not streamable (see streamable())
            out = []
        if info.source.weights_path is not None:
            out.append(info.source.weights_path)
        return tuple(dict.fromkeys(out))

    def signatures(self) -> dict[str, Signature]:
        return {f: signature(f) for f in self.files()}

    def read(self, expect: dict[str, Signature] | None = None) -> tuple[Piece, dict[str, Signature]]:
        """The chunk, and the signatures of its files; ``expect`` (those of the first read): a file
        that differs, before or after this read, is :class:`SourceChanged`."""
        from dlogit import io as dio

        before = self.signatures()
        if expect is not None:
            for f, sig in before.items():
                if expect.get(f, sig) != sig:
                    raise changed(f)
        u, j = self.info.unit_of(self.index)
        piece = dio.read_unit(self.info, u)[j]
        after = self.signatures()
        for f, sig in after.items():
            if before.get(f) != sig:
                raise changed(f)
        return piece, before


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
            view = X.reshape(-1).view(np.uint8).data
            with open(lay.X.path, "rb") as fh:
                at, want = 0, len(view)
                while at < want:
                    got = os.preadv(fh.fileno(), [view[at:]], lay.X.offset + s * row + at)
                    if got <= 0:
                        raise changed(lay.X.path)
                    at += got
            for f, sig in self.signatures().items():
                if expect.get(f, sig) != sig:
                    raise changed(f)
            return X
        piece, _ = self.read(expect)
        return owned_copy(piece.X)


def streamable(info: DatasetInfo, index: int) -> bool:
    """Whether chunk ``index`` can be read again alone (its read unit is this one chunk)."""
    if info.kind not in ("npy", "parquet", "csv", "tsv", "libsvm"):
        return False
    u, _ = info.unit_of(index)
    return len(info.units[u]) == 1


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
