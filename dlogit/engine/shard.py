"""Chunks held by one process: validated, summarized, prepared, evaluated along the fixed tree. Pure.

A :class:`Shard` holds some of a fit's chunks (by their global index in the fit's chunking). Its life:

1. ``Shard(chunks, n_chunks)`` with the raw ``(X, labels, row weights)`` of each chunk;
2. :meth:`Shard.stats` validates every chunk (one read) and returns the summaries
   (:class:`~dlogit.stats.ChunkStats`) of the tree nodes it owns;
3. :meth:`Shard.prepare` -- once the driver has merged all summaries into a
   :class:`~dlogit.spec.FitPlan` -- maps labels to class codes, applies class weights and builds one
   evaluator per chunk (:func:`dlogit.chunks.prepare_chunk`); the raw labels are dropped;
4. :meth:`Shard.node_sums` / :meth:`Shard.node_hvp` evaluate at ``theta``: one row per owned node.

A chunk may also arrive as its source range (a :class:`~dlogit.io.stream.ChunkSource`: anything with
``read(expect) -> (piece, signatures)``): the shard reads it itself in the validation pass, keeps it in
memory while its cache budget (``budget`` bytes of X, in chunk order) allows, and otherwise keeps only
its label codes and row weights and reads it again at every evaluation, the next one read ahead on a
thread (:mod:`dlogit.engine.residency`). The evaluator of a streamed chunk is built from the fresh read
exactly as the cached one was, so the bits are the same.

Nothing here knows about Dask: the in-process path, the worker-local task and the distributed shards
all use it. :data:`STEP_OPS` names what a step can ask of a shard (arrays in, one row per owned node
out); :func:`covering_nodes` and :func:`dlogit.objective.complete_nodes` merge node values on their way up the tree of
workers with the additions of the fixed chunk tree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable
from typing import Any

import numpy as np

from dlogit._xp import get_xp, to_numpy
from dlogit.chunks import prepare_chunk
from dlogit.events import StreamCounters, register_stream, unregister_stream
from dlogit.objective import Node, complete_tree, node_sum, owned_nodes
from dlogit.spec import FitPlan, FitSpec
from dlogit.stats import ChunkStats, chunk_stats, merge_stats

Raw = tuple[Any, Any, Any]  # (X, labels, row weights or None)


class Shard:
    """Chunks of one fit held in this process (see the module docstring)."""

    def __init__(self, chunks: dict[int, Raw | Any], n_chunks: int, where: str = "",
                 budget: int | None = None, signatures: dict[int, Any] | None = None) -> None:
        #: chunks given as source ranges (read by the shard itself), and what their files looked like at
        #: the fit's first read of them (``signatures``: given for chunks moved after a loss)
        self.sources: dict[int, Any] = {i: c for i, c in chunks.items() if not isinstance(c, tuple)}
        self.signatures: dict[int, Any] = dict(signatures or {})
        self.budget = budget
        #: chunks read again at every evaluation (their label codes and weights stay: ``_streamed_rows``)
        self.streamed: list[int] = []
        self._streamed_rows: dict[int, tuple[Any, Any, Any]] = {}
        self._chunk_bytes: dict[int, int] = {}
        #: source bytes read since the validation pass, and streamed chunks read (monotone)
        self.bytes_read = 0
        self.chunks_read = 0
        #: the evaluations' reads, cache hits and read-ahead waits (progress events' ``stream`` field)
        self.counters = StreamCounters()
        self._wait = 0.0
        self.raw: dict[int, Raw] = {i: c for i, c in chunks.items() if isinstance(c, tuple)}
        self.raw.update({i: (None, None, None) for i in self.sources})
        self._stats: dict[int, ChunkStats] = {}  # streamed chunks' summaries, from their first read
        self.summaries: dict[int, ChunkStats] = {}  # every chunk's, after :meth:`stats`
        self.n_chunks = int(n_chunks)
        self.nodes: list[Node] = owned_nodes(self.raw, self.n_chunks)
        self.where = where
        self.evaluators: dict[int, Any] = {}
        self.fold_chunks: dict[int, Any] = {}  # a cross-validated path's chunks (plan.folds)
        self.kernel = ""
        #: chunk evaluations done so far (monotone; read from another thread: a step's progress)
        self.done = 0
        #: threads evaluating chunks at once (in-process fits set ``dlogit.threads``; Dask workers keep 1)
        self.threads = 1
        self._pool: Any = None
        self.curvature = False  # Newton: every sums keeps the chunks' curvature handles for the H.v
        self._handles: tuple[np.ndarray, dict[int, Any]] | None = None  # (theta, chunk -> handle)
        first = next(iter(self.raw.values()), None)
        self.on_gpu = first is not None and type(first[0]).__module__.startswith("cupy")
        self.raw = dict(sorted(self.raw.items()))

    # -- validation pass ---------------------------------------------------------------------------
    def stats(self, known: dict[int, ChunkStats] | None = None) -> list[tuple[Node, ChunkStats]]:
        """Validate every chunk; the merged summaries of the owned tree nodes. Chunks given as sources
        are read here (in chunk order): kept while the budget allows, else dropped after their summary.
        ``known``: summaries of some chunks from an earlier pass over the very same X and row weights
        (their X is not read again: :func:`~dlogit.stats.chunk_stats`'s ``known``); every chunk's summary
        is in :attr:`summaries` afterwards."""
        self.load()
        raw = self.raw
        per = self._stats
        known = known or {}
        per.update(self._map(lambda i: chunk_stats(*raw[i], index=i, where=self.where, known=known.get(i)),
                             [i for i in raw if i not in per]))
        self._stats = {}
        self.summaries = per
        return [((lo, hi), node_sum(per.__getitem__, lo, hi, merge_stats)) for lo, hi in self.nodes]

    def load(self) -> None:
        """Read the chunks given as sources (those not read yet): validate them, and keep X in memory
        in chunk order while ``budget`` allows (``None``: all); the others keep only their labels and
        weights (their summaries are kept for :meth:`stats`)."""
        from dlogit.io.stream import nbytes, release_units

        streamed = set(self.streamed)
        used = sum(b for i, b in self._chunk_bytes.items() if i not in streamed)
        try:
            for i in sorted(self.sources):
                if i in self._chunk_bytes:  # read already
                    continue
                piece, sig = self.sources[i].read(self.signatures.get(i))
                self.signatures.setdefault(i, sig)
                X, y, w = piece.as_tuple()
                size = nbytes(X)
                self._chunk_bytes[i] = size
                if self.budget is None or used + size <= self.budget:
                    self.raw[i] = (X, y, w)
                    used += size
                elif not getattr(self.sources[i], "rereadable", True) and not self._spill(i, X):
                    self.raw[i] = (X, y, w)  # cannot be spilled as it is: kept
                    used += size
                else:
                    self._stats[i] = chunk_stats(X, y, w, index=i, where=self.where)
                    self.raw[i] = (_Rows(int(X.shape[0]), X), y, w)
                    self.streamed.append(i)
                del piece, X
        finally:  # a failed read (a source changed, bad data) leaves no decompressed file behind either
            release_units()

    def _spill(self, i: int, X: Any) -> bool:
        """Chunk ``i`` of a unit that is not range-readable (a compressed file), to be streamed: written
        raw to a file in the worker's local directory, its source from now on (removed with the shard)."""
        from dlogit.engine.residency import spill_directory
        from dlogit.io.stream import spill

        spilled = spill(self.sources[i], X, spill_directory())
        if spilled is not None:
            self.sources[i] = spilled
        return spilled is not None

    @property
    def residency(self) -> dict[str, Any]:
        """What this shard keeps in memory and what it reads at every evaluation (see
        :func:`dlogit.engine.residency.describe_cache`)."""
        streamed = set(self.streamed)
        return {"cached_chunks": len(self.sources) - len(streamed),
                "streamed_chunks": len(streamed),
                "cached_bytes": sum(b for i, b in self._chunk_bytes.items() if i not in streamed),
                "bytes_per_eval": sum(self._chunk_bytes[i] for i in streamed),
                "budget": -1 if self.budget is None else int(self.budget)}

    # -- preparation -------------------------------------------------------------------------------
    def row_counts(self) -> dict[int, int]:
        """Rows of each held chunk (before :meth:`prepare`)."""
        self.load()
        return {i: int(X.shape[0]) for i, (X, _, _) in self.raw.items()}

    def prepare(self, spec: FitSpec, plan: FitPlan, curvature: bool) -> str:
        """Build the evaluators (and, for a cross-validated path, each chunk's
        :class:`~dlogit.folds.FoldChunk`); return the kernel names used (``+``-joined when they differ)."""
        folds: dict[int, Any] = {}

        self.load()  # chunks moved after a loss are read here
        self._stats = {}
        streamed = set(self.streamed)

        def one(i: int) -> Any:
            X, y, w = self.raw[i]
            codes = plan.classes.encode(y, what=f"labels of chunk {i}")
            wf = None if w is None else to_numpy(w).astype(np.float64)
            weights = plan.row_weights(codes, wf)
            if i in streamed:  # read again at every evaluation: keep what the chunk's evaluator needs
                self._streamed_rows[i] = (codes, weights, wf)
                return None
            return self._build(i, X, codes, weights, wf, spec, plan, curvature, folds)

        built = self._map(one, list(self.raw))
        self.evaluators = {i: e for i, e in built.items() if e is not None}
        self.curvature = curvature
        self.fold_chunks = {i: folds[i] for i in sorted(folds)}
        self._prepared = (spec, plan, curvature)
        self.raw = {}
        kernels = {e.kernel for e in self.evaluators.values()}
        self._fold_m = next((f.m for f in self.fold_chunks.values()), None)
        if self.streamed:  # the kernel a streamed chunk takes: from one read of the first of them
            i = self.streamed[0]
            ev, fold = self._streamed_evaluator(i, self._read(i))
            kernels.add(ev.kernel)
            if fold is not None:
                self._fold_m = fold.m
            del ev, fold
            self.bytes_read = self.chunks_read = 0  # count the evaluations' reads only
        if self.sources:
            register_stream(spec.run, self)
        self.kernel = "+".join(sorted(kernels))
        return self.kernel

    def _build(self, i: int, X: Any, codes: Any, weights: Any, wf: Any, spec: FitSpec, plan: FitPlan,
               curvature: bool, folds: dict[int, Any] | None) -> Any:
        """Chunk ``i``'s evaluator (and, for a cross-validated path, its FoldChunk into ``folds``)."""
        if plan.folds is not None and folds is not None:
            from dlogit.folds import FoldChunk

            folds[i] = FoldChunk(X, codes, None if wf is None else wf.copy(),  # its own, as the evaluator's
                                 plan.folds.folds_of(i, int(X.shape[0]), codes),
                                 plan.folds.n_folds, plan.layout, plan.family)
        if weights is not None and type(X).__module__.startswith("cupy"):
            weights = get_xp(X.data if hasattr(X, "nnz") else X).asarray(weights)
        return prepare_chunk(X, codes, weights, plan.layout, plan.family, kernel=spec.cpu_kernel,
                             curvature=curvature)

    # -- streamed chunks ---------------------------------------------------------------------------
    def _read(self, i: int, slot: int = -1) -> Any:
        """Chunk ``i``'s X read again from its source (files checked against the first read), owning
        its memory (a memory map is copied here: this runs on the read-ahead thread); into read buffer
        ``slot`` (0 or 1) where the source reads straight into one."""
        from dlogit.io.stream import nbytes

        X = self.sources[i].read_x(self.signatures.get(i) or {}, self._buffer(slot))
        self.bytes_read += nbytes(X)
        self.chunks_read += 1
        return X

    def _buffer(self, slot: int) -> Any:
        """Read buffer ``slot``: two, each the size of the largest streamed chunk read straight into one
        (made at the first streamed evaluation; reused so that no fresh pages fault in each time)."""
        if slot < 0:
            return None
        if not hasattr(self, "_buffers"):
            shapes = [s for s in (self.sources[i].direct() for i in self.streamed) if s is not None]
            size = max((r * d for r, d, _ in shapes), default=0)
            self._buffers = [np.empty(size, dtype=shapes[0][2]) for _ in range(2)] if shapes else None
        return None if self._buffers is None else self._buffers[slot]

    def _streamed_evaluator(self, i: int, X: Any) -> tuple[Any, Any]:
        spec, plan, curvature = self._prepared
        codes, weights, wf = self._streamed_rows[i]
        folds: dict[int, Any] = {}
        ev = self._build(i, X, codes, weights, wf, spec, plan, curvature, folds)
        return ev, folds.get(i)

    def _stream(self, order: list[int]) -> Generator[int, None, None]:
        """Yield each streamed chunk of ``order`` with its evaluator (and FoldChunk) installed, reading
        the next one ahead on a thread meanwhile; at most two streamed chunks are in memory at once."""
        from concurrent.futures import Future, ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="dlogit-read-ahead") as pool:
            # chunk k is read into buffer k % 2 while chunk k - 1 (the other buffer) is evaluated; its
            # evaluator is dropped before chunk k + 1 is read into its buffer
            ahead: Future[Any] | None = pool.submit(self._read, order[0], 0)
            yield -1  # the first read has started: the caller evaluates its cached chunks meanwhile
            for k, i in enumerate(order):
                assert ahead is not None
                t0 = time.perf_counter()
                X = ahead.result()
                self._wait += time.perf_counter() - t0  # the evaluation waited for the read-ahead
                ahead = pool.submit(self._read, order[k + 1], (k + 1) % 2) if k + 1 < len(order) else None
                ev, fold = self._streamed_evaluator(i, X)
                del X
                self.evaluators[i] = ev
                if fold is not None:
                    self.fold_chunks[i] = fold
                try:
                    yield i
                finally:
                    self.evaluators.pop(i, None)
                    self.fold_chunks.pop(i, None)
                    del ev, fold

    # -- evaluation (each chunk evaluated counts in ``done``) ----------------------------------------
    def leaves(self, fn: Callable[[int], Any]) -> dict[int, Any]:
        """``fn(i)`` of every held chunk ``i``. With ``threads > 1`` (CPU chunks) the chunks go to a pool in
        chunk order and each free thread takes the next one (a descheduled thread takes fewer); callers
        combine the values along the fixed tree afterwards, so the bits never depend on the schedule."""
        order = [i for lo, hi in self.nodes for i in range(lo, hi)]
        if not self.streamed:
            t0 = time.perf_counter()
            values = self._map(fn, order)
            self.done += len(values)
            if self.sources:  # chunks read from their sources, all cached: hits, no reads
                self._count(time.perf_counter() - t0, 0.0, sum(i in self.sources for i in order), 0, 0)
            return values
        streamed = set(self.streamed)
        todo = [i for i in order if i in streamed]
        t0 = time.perf_counter()
        bytes0, reads0, self._wait = self.bytes_read, self.chunks_read, 0.0
        stream = self._stream(todo)
        try:
            next(stream)  # the first streamed chunk is read while the cached ones are evaluated
            values = self._map(fn, [i for i in order if i not in streamed])
            self.done += len(values)
            for i in stream:
                values[i] = fn(i)
                self.done += 1
        finally:
            stream.close()
        wait = self._wait
        self._count(time.perf_counter() - t0 - wait, wait, sum(i in self.sources for i in order) - len(todo),
                    self.bytes_read - bytes0, self.chunks_read - reads0)
        return values

    def _count(self, compute: float, wait: float, hits: int, nbytes: int, reads: int) -> None:
        """Add one evaluation to :attr:`counters` (a new snapshot: read from other threads)."""
        self.counters = self.counters + StreamCounters(1, nbytes, reads, hits, wait, compute)

    def _map(self, fn: Callable[[int], Any], items: list[int]) -> dict[int, Any]:
        """``{i: fn(i)}``, on the pool when there is one to use; an error is the first item's in order."""
        if self.threads <= 1 or len(items) <= 1 or self.on_gpu:
            return {i: fn(i) for i in items}
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="dlogit-chunk")
        futures = [(i, self._pool.submit(fn, i)) for i in items]
        return {i: f.result() for i, f in futures}

    def close(self, wait: bool = True) -> None:
        """Stop the evaluation threads (if any; ``wait=False``: without waiting for them, as on a worker's
        event loop when the shard's task is released) and remove the spilled chunks' files."""
        unregister_stream(self)
        for src in self.sources.values():  # spilled chunks' files
            getattr(src, "remove", lambda: None)()
        if self._pool is not None:
            self._pool.shutdown(wait=wait)
            self._pool = None

    def _nodes(self, fn: Callable[[int], Any]) -> np.ndarray:
        values = self.leaves(fn)
        return np.stack([to_numpy(node_sum(values.__getitem__, lo, hi)) for lo, hi in self.nodes])

    def chunk_sums(self, theta: np.ndarray) -> dict[int, Any]:
        """Every held chunk's sums at ``theta``; a shard prepared for Newton keeps their curvature
        handles (:mod:`dlogit.chunks.handle`) for the H.v products at that ``theta``."""
        ev = self.evaluators
        th = self._theta(theta)
        if not self.curvature:
            return self.leaves(lambda i: ev[i].sums(th))
        handles = self.leaves(lambda i: ev[i].sums(th, keep_curvature=True))
        sums = {i: h.sums for i, h in handles.items()}
        for i in self.streamed:  # its evaluator (and the chunk it holds) goes with this read: keep no handle
            handles.pop(i, None)
        self._handles = (np.array(theta, dtype=np.float64, copy=True), handles)
        return sums

    def node_sums(self, theta: np.ndarray) -> np.ndarray:
        """Sums of every owned tree node at ``theta``, one row per node, float64 on the host."""
        values = self.chunk_sums(theta)
        return np.stack([to_numpy(node_sum(values.__getitem__, lo, hi)) for lo, hi in self.nodes])

    def node_hvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        """H.v of every owned node at ``theta``: from the handles of the last sums when they were taken
        there (a step's H.v follow its sums), else from new ones (a shard that joined a fit since)."""
        if self._handles is None or not np.array_equal(self._handles[0], theta):
            self.chunk_sums(theta)
        assert self._handles is not None
        ev, handles = self.evaluators, self._handles[1]
        vv = self._theta(v)
        th = self._theta(theta)

        def one(i: int) -> Any:  # a streamed chunk's evaluator is this read's: its handle from this read
            handle = handles[i] if i in handles else ev[i].sums(th, keep_curvature=True)
            return ev[i].hvp(handle, vv)

        return self._nodes(one)

    # -- a cross-validated path: every fold model of a penalty in one pass (dlogit.folds) ------------
    def _fold_nodes(self, fn: Callable[[Any], Any]) -> np.ndarray:
        fc = self.fold_chunks
        return self._nodes(lambda i: fn(fc[i]))

    def _counted(self, value: Any) -> Any:
        self.done += 1
        return value

    def node_fold_sums(self, thetas: np.ndarray, models: np.ndarray, mult: np.ndarray) -> np.ndarray:
        """(nodes, q, 1 + P): training sums of the fold models ``models`` (float ids) at ``thetas``
        (q, P); ``mult`` (m, K) the folds' class multipliers or empty."""
        sel, m = self._models(models), (mult if mult.size else None)
        return self._fold_nodes(lambda c: c.sums(thetas, m, sel))

    def node_fold_hvp(self, thetas: np.ndarray, vs: np.ndarray, models: np.ndarray,
                      mult: np.ndarray) -> np.ndarray:
        sel, m = self._models(models), (mult if mult.size else None)
        return self._fold_nodes(lambda c: c.hvp(thetas, vs, m, sel))

    def node_fold_scores(self, thetas: np.ndarray) -> np.ndarray:
        return self._fold_nodes(lambda c: c.scores(thetas))

    def node_fold_class_sums(self, n_classes: np.ndarray) -> np.ndarray:
        k = int(np.asarray(n_classes).reshape(-1)[0])
        return self._fold_nodes(lambda c: c.class_weight_sums(k))

    def _models(self, models: np.ndarray) -> list[int] | None:
        m = getattr(self, "_fold_m", None)
        ids = [int(v) for v in np.asarray(models).reshape(-1)]
        return None if m is None or len(ids) == m else ids

    def _theta(self, theta: np.ndarray) -> Any:
        if self.on_gpu:
            import cupy

            return cupy.asarray(theta)
        return theta


#: what a step can ask of a shard: name -> method taking NumPy arrays, returning one row per owned node.
#: A new operation is one method on :class:`Shard` and one entry here (the transport is generic).
STEP_OPS: dict[str, Callable[..., np.ndarray]] = {
    "sums": Shard.node_sums, "hvp": Shard.node_hvp,
    "fold_sums": Shard.node_fold_sums, "fold_hvp": Shard.node_fold_hvp,
    "fold_scores": Shard.node_fold_scores, "fold_class_sums": Shard.node_fold_class_sums,
}


class ShardFoldSource:
    """A cross-validated path's :class:`~dlogit.cv.FoldSource` over a shard holding every chunk."""

    def __init__(self, shard: Shard, n_folds: int) -> None:
        self.shard = shard
        self.n_folds = n_folds

    def _root(self, values: np.ndarray) -> np.ndarray:
        return complete_tree(dict(zip(self.shard.nodes, values)), self.shard.n_chunks)

    def fold_sums(self, thetas: np.ndarray, mult: np.ndarray | None, models: list[int]) -> np.ndarray:
        return self._root(self.shard.node_fold_sums(thetas, np.asarray(models, float), _arr(mult)))

    def fold_hvp(self, thetas: np.ndarray, vs: np.ndarray, mult: np.ndarray | None,
                 models: list[int]) -> np.ndarray:
        return self._root(self.shard.node_fold_hvp(thetas, vs, np.asarray(models, float), _arr(mult)))

    def fold_scores(self, thetas: np.ndarray) -> np.ndarray:
        return self._root(self.shard.node_fold_scores(thetas))

    def class_weight_sums(self, n_classes: int) -> np.ndarray:
        return self._root(self.shard.node_fold_class_sums(np.array([float(n_classes)])))


class _Rows:
    """Stands for the X of a streamed chunk between the validation pass and :meth:`Shard.prepare`: its
    rows and kind, no values."""

    def __init__(self, n_rows: int, X: Any) -> None:
        self.shape = (n_rows, int(X.shape[1]))
        self.sparse = hasattr(X, "indptr")


def _arr(a: np.ndarray | None) -> np.ndarray:
    return np.zeros(0) if a is None else np.asarray(a, dtype=np.float64)


class LocalEvaluator:
    """The loop's :class:`~dlogit.training.Evaluator` over a shard holding every chunk."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.kernel = shard.kernel

    def sums(self, theta: np.ndarray) -> np.ndarray:
        s = self.shard
        if len(s.nodes) == 1 and not s.on_gpu:
            values = s.chunk_sums(theta)
            return node_sum(values.__getitem__, 0, s.n_chunks)
        return complete_tree(dict(zip(s.nodes, s.node_sums(theta))), s.n_chunks)

    def hvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        s = self.shard
        return complete_tree(dict(zip(s.nodes, s.node_hvp(theta, v))), s.n_chunks)


def merged_stats(parts: dict[Node, ChunkStats], n_chunks: int) -> ChunkStats:
    """The whole data set's summary from node summaries tiling the chunks (fixed tree order)."""
    return complete_tree(parts, n_chunks, merge_stats)


def covering_nodes(nodes: Iterable[Node], n_chunks: int) -> list[Node]:
    """The maximal tree nodes lying wholly inside the union of ``nodes`` (disjoint chunk ranges)."""
    return owned_nodes((i for lo, hi in nodes for i in range(lo, hi)), n_chunks)


