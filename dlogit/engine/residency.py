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

Pure: the chunk sources come from :func:`dlogit.io.stream.stream_sources`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dlogit.config  # noqa: F401  (registers the dlogit.* defaults this module reads)
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
    import dask

    return parse_cache_bytes(dask.config.get("dlogit.engine.cache-bytes", "50%"))


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
