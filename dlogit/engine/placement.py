"""Where things go: chunks to workers (contiguous runs of about equal rows, persisted chunks stay put,
a lost worker's chunks spread over the survivors), the tree of workers a step travels along, and
the copies of the driver's state (other hosts first).

Pure except :func:`resolve_aliases`, which reads a Dask graph (no cluster).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def balanced_ranges(rows: Sequence[float], workers: Sequence[str]) -> dict[str, list[int]]:
    """Split chunk indices into contiguous runs of about equal rows, one per worker (in order).

    Parameters
    ----------
    rows : sequence of float
        Rows of each chunk (``nan`` when unknown: counted as one row).
    workers : sequence of str
        Worker addresses, in the order the runs are given out.

    Returns
    -------
    dict of str to list of int
        The chunk indices of each worker that gets any (at most ``len(rows)`` workers).
    """
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


def assign_chunks(rows: Sequence[float], workers: Sequence[str],
                  holders: Mapping[int, str]) -> dict[str, list[int]]:
    """Chunk indices per worker: where they already are when every chunk is held (persisted data),
    else :func:`balanced_ranges` over ``workers``."""
    if holders and len(holders) == len(rows):
        out: dict[str, list[int]] = {}
        for i, w in sorted(holders.items()):
            out.setdefault(w, []).append(i)
        return out
    return balanced_ranges(rows, workers)


def spread_orphans(assign: Mapping[str, Sequence[int]], rows: Sequence[float],
                   alive: Sequence[str]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """After a loss: ``(kept, moved)``, the chunks still on a live worker and the lost workers' chunks
    spread over the live ones in contiguous runs (:func:`balanced_ranges` over the orphans)."""
    live = set(alive)
    kept = {w: sorted(idx) for w, idx in assign.items() if w in live and idx}
    orphans = sorted(i for w, idx in assign.items() if w not in live for i in idx)
    moved_pos = balanced_ranges([rows[i] for i in orphans], list(alive)) if orphans else {}
    moved = {w: [orphans[p] for p in pos] for w, pos in moved_pos.items()}
    return kept, moved


def knomial_children(i: int, n: int, radix: int = 2) -> list[int]:
    """Children of position ``i`` in the ``radix``-nomial tree over positions ``0..n-1`` rooted at 0.

    With radix 2 this is the binomial tree of MPI's reduce: position ``i`` gathers the subtree
    ``[i, i + lowbit(i))``, so every subtree is a contiguous run of positions and the tree is
    ``ceil(log2 n)`` hops deep; a radix of ``n`` or more is a star. Children come largest subtree
    first (the deepest path starts first).
    """
    if radix < 2:
        raise ValueError(f"tree radix must be at least 2, got {radix}")
    span = n if i == 0 else 1
    if i:
        while i % (span * radix) == 0:
            span *= radix
    out: list[int] = []
    step = 1
    while step < span and i + step < n:
        for j in range(1, radix):
            c = i + j * step
            if c < n and j * step < span:
                out.append(c)
        step *= radix
    return sorted(out, key=lambda c: -_subtree_size(c, n, radix))


def _subtree_size(i: int, n: int, radix: int) -> int:
    span = 1
    while i % (span * radix) == 0 and span < n:
        span *= radix
    return min(span, n - i)


def worker_tree(order: Sequence[str], radix: int = 2) -> dict[str, list[str]]:
    """The reduction tree over workers: ``order[0]`` is the root (the driver's process); each worker
    maps to its children (see :func:`knomial_children`)."""
    n = len(order)
    return {order[i]: [order[c] for c in knomial_children(i, n, radix)] for i in range(n)}


def host_of(address: str) -> str:
    """The host part of a worker's address (``tcp://10.0.0.5:4321`` -> ``10.0.0.5``; IPv6 unbracketed)."""
    rest = address.split("://", 1)[-1]
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host.strip("[]")


def replica_targets(root: str, workers: Sequence[str], k: int) -> list[str]:
    """Up to ``k`` workers to hold copies of the driver's state: other hosts than the root's first (a
    lost node must not take every copy with the driver), one per host in turn, then the root's host.

    Parameters
    ----------
    root : str
        The driver's address.
    workers : sequence of str
        The candidates (the fit's other workers), in order of preference.
    k : int
        How many copies.
    """
    mine = host_of(root)
    by_host: dict[str, list[str]] = {}
    for w in workers:
        if w != root:
            by_host.setdefault(host_of(w), []).append(w)
    local = by_host.pop(mine, [])
    out: list[str] = []
    queues = list(by_host.values())
    while len(out) < k and any(queues):
        for q in queues:
            if q and len(out) < k:
                out.append(q.pop(0))
    return out + local[:max(0, k - len(out))]


def resolve_aliases(chunks: list[Any]) -> list[Any]:
    """Each chunk's own task where its key is only an alias of another (``from_delayed`` and
    ``concatenate`` chunks are): a computed alias is one more scheduler round trip (~5 ms) before the
    fit can start, and a persisted chunk is found under its real key.

    The one graph all chunks share is kept (never copied per chunk).
    """
    # dask documents its task spec (Alias, Task, DataNode) only in dask._task_spec: no public check
    from dask._task_spec import Alias
    from dask.delayed import Delayed

    out = []
    for chunk in chunks:
        graph = chunk.__dask_graph__()
        layer = chunk.__dask_layers__()[0]
        tasks = getattr(graph, "layers", {}).get(layer, graph)  # the chunk's own layer: a dict lookup
        key = chunk.key
        for _ in range(64):  # aliases of aliases, never a cycle
            task = tasks.get(key)
            if not isinstance(task, Alias) or task.target == key or task.target not in tasks:
                break
            key = task.target
        out.append(chunk if key == chunk.key else Delayed(key, graph, layer=layer))
    return out
