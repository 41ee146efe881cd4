"""Where chunks go: contiguous runs of about equal rows per worker; persisted chunks stay put."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def balanced_ranges(rows: Sequence[float], workers: Sequence[str]) -> dict[str, list[int]]:
    """Split chunk indices into contiguous runs of about equal rows, one per worker (in order)."""
    n = len(rows)
    k = min(len(workers), n)
    sizes = [r if np.isfinite(r) else 1.0 for r in rows]
    total = float(sum(sizes)) or 1.0
    out: dict[str, list[int]] = {w: [] for w in workers[:k]}
    acc = 0.0
    for i, s in enumerate(sizes):
        # the chunk goes to the worker whose share holds the chunk's midpoint
        j = min(k - 1, int((acc + s / 2) / total * k))
        out[workers[j]].append(i)
        acc += s
    return {w: idx for w, idx in out.items() if idx}


def _unalias(chunks: list[Any]) -> list[Any]:
    """Each chunk's own task where its key is only an alias of another (``from_delayed`` and
    ``concatenate`` chunks are): a computed alias is one more scheduler round trip (~5 ms) before the
    fit can start, and a persisted chunk is found under its real key."""
    from dask.delayed import Delayed

    out = []
    for chunk in chunks:
        graph = chunk.__dask_graph__()  # one graph shared by all chunks: keep it, never copy it
        layer = getattr(chunk, "_layer", None)
        tasks = getattr(graph, "layers", {}).get(layer, graph)  # the chunk's own layer: a dict lookup
        key = chunk.key
        for _ in range(64):  # aliases of aliases, never a cycle
            task = tasks.get(key)
            target = getattr(task, "target", None)
            if type(task).__name__ != "Alias" or target is None or target not in tasks:
                break
            key = target
        out.append(chunk if key == chunk.key else Delayed(key, graph, layer=layer))
    return out
