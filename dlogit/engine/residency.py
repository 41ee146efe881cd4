"""Chunk residency: which chunks a worker keeps in memory, which it streams from their source.

A fit on data read by dlogit's own readers (:func:`dlogit.data.read_data`, not persisted) gives each
worker the chunks it holds as source ranges (:class:`~dlogit.io.stream.ChunkSource`) instead of Dask
futures. The worker reads each chunk once for the validation pass and keeps in memory as many of them
as its budget allows (in chunk order): ``dlogit.engine.cache-bytes``, a size (``1GiB``) or a percentage
of the worker's ``memory_limit`` (default ``50%``; of the machine's memory when the worker has no
limit). The others are read again from their source at every evaluation, the next one read ahead on a
thread while the current one is evaluated (:meth:`dlogit.engine.shard.Shard.leaves`): a worker holds
its cached chunks, the rows' label codes and weights, and at most two streamed chunks at a time.

The per-chunk math and the fixed reduction tree are the same, so a streamed fit gives the same bits
as the same fit with every chunk in memory.

GPU workers (:class:`DevicePlan`, :func:`overlap_schedule`, :class:`StagedChunks`): the chunks beyond
a device budget stay in pinned host memory and are copied at every evaluation into one of two device
buffers on a second CUDA stream, the copy of chunk i + 1 overlapping the evaluation of chunk i; the
plan and the schedule are array-agnostic (tested on CPU with :class:`NumpyStaging` standing in for
:class:`CupyStaging`). Not wired into :class:`~dlogit.engine.shard.Shard` yet.

Pure: the chunk sources come from :func:`dlogit.io.stream.stream_sources`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dlogit.config import setting
from dlogit.errors import ConfigError


def parse_cache_bytes(value: Any) -> tuple[str, float]:
    """``("bytes", n)`` or ``("fraction", f)`` from a setting: ``1GiB``, ``123456``, ``50%``, ``0``."""
    import dask.utils

    text = str(value).strip()
    try:
        if text.endswith("%"):
            f = float(text[:-1]) / 100.0
            if not 0.0 <= f <= 1.0:
                raise ValueError(text)
            return "fraction", f
        n = float(dask.utils.parse_bytes(text))
        if n < 0:
            raise ValueError(text)
        return "bytes", n
    except (TypeError, ValueError):
        raise ConfigError(f"dlogit.engine.cache-bytes must be a size (e.g. 1GiB, 0) or a percentage of the "
                          f"worker's memory_limit (e.g. 50%), got {value!r}") from None


def cache_setting() -> tuple[str, float]:
    """``dlogit.engine.cache-bytes`` (read once, on the client), validated."""

    return parse_cache_bytes(setting("dlogit.engine.cache-bytes"))


def budget_for(setting: tuple[str, float], memory_limit: float | None) -> int:
    """A worker's chunk-cache budget in bytes."""
    kind, value = setting
    if kind == "bytes":
        return int(value)
    if not memory_limit:
        from distributed.system import MEMORY_LIMIT

        memory_limit = MEMORY_LIMIT
    return int(value * float(memory_limit))


def spill_directory() -> str:
    """Where a worker spills the streamed chunks of a compressed file (:func:`dlogit.io.stream.spill`):
    its Dask ``local_directory`` (removed when the worker closes), else the temporary directory."""
    import tempfile

    try:
        from distributed import get_worker

        return str(get_worker().local_directory)
    except (ImportError, ValueError, AttributeError):
        return tempfile.gettempdir()


def worker_budget(setting: tuple[str, float], worker: Any) -> int:
    """:func:`budget_for` the worker running this code (its ``memory_limit``)."""
    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    return budget_for(setting, limit)


@dataclass(frozen=True)
class Streamed:
    """A fit's chunks as source ranges, and the cache setting the workers apply."""

    sources: tuple[Any, ...]  # ChunkSource per chunk (they share one DatasetInfo: pickled once)
    cache: tuple[str, float]
    weighted: bool

    @property
    def n_chunks(self) -> int:
        return len(self.sources)

    def chunks(self, indices: list[int]) -> dict[int, Any]:
        return {i: self.sources[i] for i in indices}


def describe_cache(cache: dict[str, Any]) -> str:
    """One line for ``dlogit train``: what each evaluation reads and what it finds in memory."""
    from dask.utils import format_bytes

    n = int(cache.get("streamed_chunks", 0)) + int(cache.get("cached_chunks", 0))
    budget = format_bytes(int(cache.get("budget", 0)))
    if not cache.get("streamed_chunks"):
        return (f"all {n} chunks cached in the workers' memory ({format_bytes(int(cache['cached_bytes']))}; "
                f"dlogit.engine.cache-bytes: {budget} per worker)")
    return (f"{cache['streamed_chunks']} of {n} chunks streamed from storage at every evaluation "
            f"({format_bytes(int(cache['bytes_per_eval']))} read per evaluation, next chunk read ahead), "
            f"{cache['cached_chunks']} cached in memory ({format_bytes(int(cache['cached_bytes']))}; "
            f"cache hits per evaluation: {cache['cached_chunks']}/{n}; dlogit.engine.cache-bytes: {budget} "
            "per worker)")


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The fit's residency from each shard's (:attr:`dlogit.engine.shard.Shard.residency`)."""
    out = {"cached_chunks": 0, "streamed_chunks": 0, "cached_bytes": 0, "bytes_per_eval": 0, "budget": 0}
    for p in parts:
        for k in ("cached_chunks", "streamed_chunks", "cached_bytes", "bytes_per_eval"):
            out[k] += int(p.get(k, 0))
        out["budget"] = max(out["budget"], int(p.get("budget", 0)))
    return out


# -- GPU workers: chunks beyond the device budget in pinned host memory, double-buffered copies ------
@dataclass(frozen=True)
class DevicePlan:
    """Which of a GPU worker's dense chunks stay on the device and which are staged: held in pinned host
    memory and copied to one of two device buffers (``slot_bytes`` each) at every evaluation. Device
    memory: the resident chunks (at most the budget) plus the two buffers (at most two chunks)."""

    resident: tuple[int, ...]
    staged: tuple[int, ...]
    slot_bytes: int
    resident_bytes: int

    @property
    def device_bytes(self) -> int:
        """The most device memory the chunks take (resident + the two staging buffers)."""
        return self.resident_bytes + (2 * self.slot_bytes if self.staged else 0)


def device_plan(sizes: dict[int, int], budget: int | None) -> DevicePlan:
    """The :class:`DevicePlan` for chunks of ``sizes`` (chunk -> bytes of X) under a device budget
    (``None``: all resident): resident in chunk order while the budget allows, as the CPU cache does;
    the others staged, in chunk order."""
    resident, staged, used = [], [], 0
    for i in sorted(sizes):
        if budget is None or used + sizes[i] <= budget:
            resident.append(i)
            used += sizes[i]
        else:
            staged.append(i)
    return DevicePlan(tuple(resident), tuple(staged), max((sizes[i] for i in staged), default=0), used)


def overlap_schedule(staged: list[int] | tuple[int, ...]) -> list[tuple[str, int, int, int | None]]:
    """The order a staged evaluation issues its work: ``("copy", chunk, slot, after)`` on the copy stream
    (chunk's host copy into device buffer ``slot``, once the evaluation of chunk ``after``, the buffer's
    previous occupant, is done; ``None``: the buffer is free) and ``("eval", chunk, slot, chunk)`` on the
    compute stream (once that copy is done). The copy of chunk k + 1 is issued before the evaluation of
    chunk k, so the two overlap; the copy of chunk k + 2 waits for the evaluation of chunk k."""
    out: list[tuple[str, int, int, int | None]] = []
    n = len(staged)
    for k in range(min(n, 2)):
        out.append(("copy", staged[k], k % 2, None))
    for k in range(n):
        out.append(("eval", staged[k], k % 2, staged[k]))
        if k + 2 < n:
            out.append(("copy", staged[k + 2], k % 2, staged[k]))
    return out


class NumpyStaging:
    """The staging operations on the host, in order (a stand-in for :class:`CupyStaging` on CPU: the same
    schedule, synchronous copies); ``log`` records each operation as it is issued."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int, int]] = []

    def pinned(self, X: Any) -> Any:
        import numpy as np

        return np.array(X, order="C", copy=True)

    def buffer(self, nbytes: int, dtype: Any) -> Any:
        import numpy as np

        return np.empty(nbytes // np.dtype(dtype).itemsize, dtype=dtype)

    def copy(self, chunk: int, slot: int, dst: Any, src: Any, after: Any) -> Any:
        self.log.append(("copy", chunk, slot))
        dst[...] = src
        return None

    def compute_after(self, event: Any) -> None:
        pass

    def evaluated(self, chunk: int, slot: int) -> Any:
        self.log.append(("eval", chunk, slot))
        return None


class CupyStaging:
    """The staging operations on a GPU: pinned host arrays (``cupyx.empty_pinned``), copies on a second,
    non-blocking CUDA stream, ordered against the compute stream by events (never a host sync per chunk)."""

    def __init__(self) -> None:
        import cupy

        self.cp = cupy
        self.copy_stream = cupy.cuda.Stream(non_blocking=True)
        self.log: list[tuple[str, int, int]] = []

    def pinned(self, X: Any) -> Any:
        import cupyx

        out = cupyx.empty_pinned(X.shape, dtype=X.dtype)
        out[...] = X
        return out

    def buffer(self, nbytes: int, dtype: Any) -> Any:
        return self.cp.empty(nbytes // self.cp.dtype(dtype).itemsize, dtype=dtype)

    def copy(self, chunk: int, slot: int, dst: Any, src: Any, after: Any) -> Any:
        self.log.append(("copy", chunk, slot))
        if after is not None:
            self.copy_stream.wait_event(after)  # the buffer's previous chunk has been evaluated
        dst.set(src, stream=self.copy_stream)
        return self.copy_stream.record()

    def compute_after(self, event: Any) -> None:
        if event is not None:
            self.cp.cuda.get_current_stream().wait_event(event)

    def evaluated(self, chunk: int, slot: int) -> Any:
        self.log.append(("eval", chunk, slot))
        return self.cp.cuda.get_current_stream().record()


class StagedChunks:
    """A GPU worker's staged chunks (:func:`device_plan`): their X in pinned host memory, evaluated by
    :meth:`evaluate` through two device buffers in :func:`overlap_schedule` order. ``staging`` is
    :class:`CupyStaging` on a GPU, :class:`NumpyStaging` on CPU (the same order, the same bits)."""

    def __init__(self, chunks: dict[int, Any], staging: Any) -> None:
        self.staging = staging
        self.host = {i: staging.pinned(X) for i, X in sorted(chunks.items())}
        first = next(iter(self.host.values()), None)
        self.dtype = None if first is None else first.dtype
        slot = max((X.nbytes for X in self.host.values()), default=0)
        self.slots = [staging.buffer(slot, self.dtype) for _ in range(2)] if first is not None else []

    def evaluate(self, fn: Callable[[int, Any], Any]) -> dict[int, Any]:
        """``fn(i, X_on_device)`` of every staged chunk (``fn`` builds the chunk's evaluator on the
        buffer and evaluates it, as a streamed CPU chunk's is built on its fresh read); the copy of the
        next chunk overlaps each evaluation. ``fn``'s values must not keep the buffer."""
        done: dict[int, Any] = {}  # chunk -> its evaluation's event
        copies: dict[int, Any] = {}
        values: dict[int, Any] = {}
        for op, i, slot, dep in overlap_schedule(list(self.host)):
            src = self.host[i]
            view = self.slots[slot][:src.size].reshape(src.shape)
            if op == "copy":
                copies[i] = self.staging.copy(i, slot, view, src, done.get(dep) if dep is not None else None)
            else:
                self.staging.compute_after(copies.pop(i))
                values[i] = fn(i, view)
                done[i] = self.staging.evaluated(i, slot)
        return values
