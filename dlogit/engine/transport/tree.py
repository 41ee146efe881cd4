"""The tree of workers: one process's place in it (:class:`TreeNode`), its links to its children, the
subtree descriptions sent down them, and the liveness rules of a link (keep-alives, wedged children)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlogit.engine.shard import STEP_OPS, Shard
from dlogit.engine.transport.errors import ShardsMissing, StepFailed, WorkerLost
from dlogit.engine.transport.wire import connect_comm, read_within, unpack
from dlogit.errors import ClusterError
from dlogit.objective import Node, complete_nodes

#: a worker evaluates on its event loop when its previous evaluation took less than this (seconds)
INLINE_SECONDS = 0.005

#: a child whose keep-alives show no progress for this many times its slowest answered step (and at
#: least the heartbeat) is judged wedged and dropped from the fit
WEDGE_FACTOR = 20.0


def wedge_limit(heartbeat: float, longest: float) -> float:
    """Seconds without progress after which a link whose slowest step took ``longest`` is wedged."""
    return max(heartbeat, WEDGE_FACTOR * longest)


def keepalive_interval(heartbeat: float) -> float:
    """Seconds between keep-alive messages of a pending step, for a fit's heartbeat."""
    return max(0.05, min(1.0, heartbeat / 4.0))


@dataclass
class Child:
    """A link to a child: the tree nodes its answers hold, and its subtree's workers in the order
    of its answers' seconds."""

    address: str
    comm: Any
    targets: list[Node]
    workers: list[str]
    #: the subtree's progress (chunk evaluations) its last message reported
    progress: int = -1
    #: the longest a step of this link has taken to be answered (seconds; 0 before the first answer)
    longest: float = 0.0


def _subtree_workers(tree: dict[str, Any]) -> list[str]:
    return [tree["addr"], *(w for sub in tree["children"] for w in _subtree_workers(sub))]


async def open_child(address: str, opening: dict[str, Any], heartbeat: float,
                      connection_args: dict[str, Any]) -> Child:
    """Open a link to ``address`` and wait until its whole subtree is linked."""
    try:
        comm = await connect_comm(address, heartbeat, connection_args)
    except (OSError, asyncio.TimeoutError, TimeoutError) as exc:
        raise WorkerLost(address, f"cannot connect ({type(exc).__name__}: {exc})") from None
    tree = opening["tree"]
    child = Child(address, comm, [tuple(t) for t in tree["targets"]], _subtree_workers(tree))
    try:
        await comm.write({"op": "dlogit_link", "reply": False, **opening})
        reply = await _read_reply(child, heartbeat, expect="ready")
    except BaseException:
        comm.abort()
        raise
    if "ready" not in reply:
        comm.abort()
        raise ClusterError(f"worker {address} refused the step link: {reply.get('error', reply)}")
    return child


async def _read_reply(child: Child, heartbeat: float, expect: str = "step") -> dict[str, Any]:
    """The next answer of ``child`` that is not a keep-alive; :class:`WorkerLost` on silence, or when
    its keep-alives report no progress of its subtree's evaluation for ``wedge_limit`` (a wedged
    compute thread: a deadlocked BLAS, a hung kernel). A wedged child is not silent (its loop answers:
    it is dropped from the fit, never removed from the cluster), and a link that has answered no step
    yet is never judged wedged (its first evaluations may compile kernels)."""
    retried = False
    started = moved = time.monotonic()
    while True:
        t0 = time.monotonic()
        try:
            msg = await read_within(child.comm, heartbeat)
        except (asyncio.TimeoutError, TimeoutError):
            if not retried and time.monotonic() - t0 > 2.0 * heartbeat:
                retried = True  # this process was suspended (the timer fired late): read once more
                continue
            child.comm.abort()
            raise WorkerLost(child.address, f"sent nothing for {heartbeat:g}s "
                             "(dlogit.engine.heartbeat): frozen?", silent=True) from None
        except OSError as exc:  # CommClosedError is an OSError
            raise WorkerLost(child.address, f"connection closed ({exc})") from None
        if not isinstance(msg, dict):
            raise ClusterError(f"worker {child.address} sent {type(msg).__name__} on the step link")
        if "k" in msg:
            p = int(msg.get("p", -1))
            now = time.monotonic()
            if p != child.progress:
                child.progress, moved = p, now
            elif child.longest > 0 and now - moved > wedge_limit(heartbeat, child.longest):
                child.comm.abort()
                raise WorkerLost(child.address, f"its evaluation made no progress for {now - moved:.3g}s, "
                                 f"{WEDGE_FACTOR:g}x its slowest step so far and over the heartbeat: wedged?",
                                 wedged=True) from None
            continue
        child.progress += 1  # an answer is progress too (a middle node's count stays monotone)
        child.longest = max(child.longest, time.monotonic() - started)
        if "lost" in msg:
            raise (ShardsMissing if msg.get("missing") else WorkerLost)(msg["lost"], msg.get("why", "lost"),
                                                                        bool(msg.get("silent")),
                                                                        bool(msg.get("wedged")))
        if "error" in msg:
            raise StepFailed(f"worker {child.address} failed a {expect}: {msg['error']}")
        return msg


def subtree_spec(root: str, tree: dict[str, list[str]], shards: dict[str, list[str]],
                 nodes: dict[str, list[Node]], n_chunks: int) -> dict[str, Any]:
    """The nested description of ``root``'s subtree sent down the links: each worker's address, the
    shard ids it evaluates, the tree nodes its subtree answers for, and its children's subtrees.

    Parameters
    ----------
    root : str
        The root's address (the driver's worker).
    tree : dict of str to list of str
        Each worker's children (:func:`dlogit.engine.placement.worker_tree`).
    shards : dict of str to list of str
        The shard ids each worker evaluates.
    nodes : dict of str to list of Node
        The tree nodes each shard owns.
    n_chunks : int
        The fit's number of chunks.
    """
    from dlogit.engine.shard import covering_nodes

    def build(w: str) -> tuple[dict[str, Any], list[Node]]:
        kids = [build(c) for c in tree.get(w, [])]
        mine = [n for sid in shards.get(w, []) for n in nodes[sid]]
        covered = mine + [n for _, ns in kids for n in ns]
        return {"addr": w, "shards": list(shards.get(w, [])), "children": [k for k, _ in kids],
                "targets": [list(n) for n in covering_nodes(covered, n_chunks)]}, covered

    return build(root)[0]


class TreeNode:
    """One process's part of a step: its own shards, the links to its children, and the tree nodes
    its subtree answers for. Used by the driver (the root) and by every worker's link handler."""

    def __init__(self, address: str, shards: list[Shard], children: list[Child], targets: list[Node],
                 heartbeat: float) -> None:
        self.address = address
        self.shards = shards
        self.children = children
        self.targets = targets
        self.heartbeat = heartbeat
        #: per op, the seconds its last evaluation here took (unknown before the first: use the thread)
        self.last_compute: dict[str, float] = {}
        self.order = [address, *(w for c in children for w in c.workers)]

    def progress(self) -> int:
        """Chunk evaluations done in this subtree so far (what its keep-alives report)."""
        return sum(s.done for s in self.shards) + sum(max(0, c.progress) for c in self.children)

    def own(self, op: str, arrays: Sequence[np.ndarray]) -> tuple[dict[Node, Any], float]:
        """Evaluate ``op`` on this process's shards: node -> row, and the seconds it took."""
        fn = STEP_OPS[op]
        t0 = time.perf_counter()
        parts: dict[Node, Any] = {}
        for shard in self.shards:
            parts.update(zip(shard.nodes, fn(shard, *arrays)))
        dt = time.perf_counter() - t0
        self.last_compute[op] = dt
        return parts, dt

    async def send(self, msg: dict[str, Any]) -> None:
        for child in self.children:  # biggest subtree first: the deepest path starts first
            try:
                await child.comm.write(msg)
            except OSError as exc:
                raise WorkerLost(child.address, f"connection closed ({exc})") from None

    async def gather(self, parts: dict[Node, Any], seconds: dict[str, float]) -> list[Any]:
        """Add the children's answers to ``parts`` and complete the target nodes."""
        for child in self.children:
            reply = await _read_reply(child, self.heartbeat)
            values, secs = unpack(reply["v"])
            for j, (lo, hi) in enumerate(child.targets):
                parts[(lo, hi)] = values[j]
            seconds.update(zip(child.workers, secs.tolist()))
        return complete_nodes(parts, self.targets)

    def close(self) -> None:
        for child in self.children:
            child.comm.abort()
        self.children = []

