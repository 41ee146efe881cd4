"""The step transport of distributed mode, over Dask's own comms: no port, token or listener of dlogit's.

:class:`EnginePlugin` (a :class:`distributed.WorkerPlugin`, registered by the fit's driver, idempotent,
installed on workers that join later too) adds two handlers to each worker's existing listener --
tcp, tls or ucxx, with the cluster's own security -- as distributed's P2P shuffle does:

``dlogit_link``
    A persistent link from a parent in the tree of workers (the driver's process is the root). The
    opening message names the fit (run and epoch), the shards this worker evaluates, its subtree and
    the fit's heartbeat; the worker opens links to its own children, answers ``{"ready": True}`` and
    serves steps until the parent closes the link. A step ``{"o": op, "a": arrays}`` is forwarded to
    the children, evaluated on the worker's shards (``op`` from :data:`~dlogit.engine.shard.STEP_OPS`)
    and answered with ``{"v": [rows, seconds]}``: one row per *target* of the subtree -- the tree
    nodes lying wholly inside its chunks, completed on the way up by
    :func:`~dlogit.objective.complete_nodes`, so an answer holds a few rows whatever the
    subtree's size and the root's sum has the bits of the fixed chunk tree -- and each subtree
    worker's seconds of evaluation, in the subtree's pre-order.
``dlogit_control``
    Request/reply operations of a fit (:data:`CONTROL`): ``begin`` (the highest epoch seen and the
    in-memory checkpoint), ``fence`` (drop the shards of older epochs), ``prepare`` (build the
    evaluators from the plan), ``checkpoint`` (keep a copy of the driver's state; sent without a
    reply), ``drop`` (forget the fit: shards, checkpoint, thread).

Arrays travel as raw frames (the ``dlogit`` serialization family: dtypes, shapes and the buffers --
no msgpack of array data, no per-array dispatch), or inline when a message's arrays are small
(:data:`INLINE_BYTES`). A worker evaluates on its event loop when its last evaluation took under
:data:`INLINE_SECONDS` (no thread hop), else on one thread of the fit's own.
While a step is pending a worker sends ``{"k": 1, "p": progress}`` up every :func:`keepalive_interval`
seconds (``p``: its subtree's chunk evaluations so far), so a parent tells a slow step from a frozen
process or a wedged compute thread: a child silent for the fit's heartbeat, or whose ``p`` has not
moved for it, is reported lost (``{"lost": address}``), by its parent or, at the root, as
:class:`WorkerLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol import Serialized, ToPickle
from distributed.protocol.serialize import register_serialization_family

from dlogit.engine.shard import STEP_OPS, Shard
from dlogit.errors import ClusterError
from dlogit.objective import Node, complete_nodes

PLUGIN_NAME = "dlogit-engine"
#: a worker evaluates on its event loop when its previous evaluation took less than this (seconds)
INLINE_SECONDS = 0.005
_FAMILY = "dlogit"


# --------------------------------------------------------------------------------------------------
# arrays on the wire

#: arrays of a message up to this many bytes in all ride in its msgpack header (one copy, no frame
#: bookkeeping: a few microseconds less per message); larger ones travel as raw frames (no copy)
INLINE_BYTES = 64 * 1024


def _dumps(xs: Sequence[np.ndarray]) -> tuple[dict[str, Any], list[memoryview]]:
    header = {"dtypes": [x.dtype.str for x in xs], "shapes": [list(x.shape) for x in xs]}
    return header, [memoryview(x).cast("B") for x in xs]


def _loads(header: dict[str, Any], frames: Sequence[Any]) -> list[np.ndarray]:
    return [np.frombuffer(f, dtype=np.dtype(t)).reshape(shape)
            for f, t, shape in zip(frames, header["dtypes"], header["shapes"])]


register_serialization_family(_FAMILY, _dumps, _loads)


def pack(arrays: Sequence[np.ndarray]) -> Any:
    """NumPy arrays as one field of a Dask message: inline bytes when small (:data:`INLINE_BYTES`),
    else raw frames (the ``dlogit`` serialization family: dtypes, shapes and the buffers; no msgpack
    of array data, no per-array serializer dispatch)."""
    xs = [np.ascontiguousarray(x) for x in arrays]
    if sum(x.nbytes for x in xs) <= INLINE_BYTES:
        return {"i": [[x.dtype.str, list(x.shape), x.tobytes()] for x in xs]}
    header, frames = _dumps(xs)
    header["serializer"] = _FAMILY
    return Serialized(header, frames)


def unpack(field: Any) -> list[np.ndarray]:
    """The arrays of a :func:`pack`-ed field (read-only views of the received buffers)."""
    if isinstance(field, dict):
        return [np.frombuffer(b, dtype=np.dtype(t)).reshape(shape) for t, shape, b in field["i"]]
    return list(field)


#: a child whose keep-alives show no progress for this many times its slowest answered step (and at
#: least the heartbeat) is judged wedged and dropped from the fit
WEDGE_FACTOR = 20.0


def wedge_limit(heartbeat: float, longest: float) -> float:
    """Seconds without progress after which a link whose slowest step took ``longest`` is wedged."""
    return max(heartbeat, WEDGE_FACTOR * longest)


def keepalive_interval(heartbeat: float) -> float:
    """Seconds between keep-alive messages of a pending step, for a fit's heartbeat."""
    return max(0.05, min(1.0, heartbeat / 4.0))


# --------------------------------------------------------------------------------------------------
# errors


class WorkerLost(Exception):
    """A worker of the tree did not answer (connection closed, or silent for the heartbeat)."""

    def __init__(self, worker: str, why: str, silent: bool = False, wedged: bool = False) -> None:
        super().__init__(f"{worker}: {why}")
        self.worker = worker
        self.why = why
        #: it stopped answering (frozen?) or stopped making progress, rather than closing its link: the
        #: only cases that get a listed worker removed from the cluster (when opted in)
        self.silent = silent
        #: it answers (keep-alives) but its evaluation does not progress: its data can still be fetched
        self.wedged = wedged


class ShardsMissing(WorkerLost):
    """A worker that answers but no longer holds the fit's shards (restarted under the same address)."""


class StepFailed(ClusterError):
    """A worker raised while evaluating a step (the message names it)."""


class StepStopped(Exception):
    """The fit was asked to stop (Ctrl-C, a cancelled task) while a step was pending: the step is
    abandoned (its links closed), the fit stops from its last completed step."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StepTimeout(ClusterError):
    """A step ran past ``dlogit.engine.step-timeout``."""


if sys.version_info >= (3, 11):
    async def _read(comm: Any, seconds: float) -> Any:
        async with asyncio.timeout(seconds):
            return await comm.read()
else:  # pragma: no cover - Python 3.10
    async def _read(comm: Any, seconds: float) -> Any:
        return await asyncio.wait_for(comm.read(), seconds)


# --------------------------------------------------------------------------------------------------
# the tree: one process's place in it, and its links to its children

@dataclass
class _Child:
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


def _quiet(comm: Any) -> Any:
    # our messages are a few raw frames: never worth sizing (a recursive sizeof per message) to
    # decide whether to (de)serialize them on another thread
    comm.allow_offload = False
    return comm


async def _open_child(address: str, opening: dict[str, Any], heartbeat: float,
                      connection_args: dict[str, Any]) -> _Child:
    """Open a link to ``address`` and wait until its whole subtree is linked."""
    from distributed.comm import connect

    try:
        comm = _quiet(await connect(address, timeout=heartbeat, **connection_args))
    except (OSError, asyncio.TimeoutError, TimeoutError) as exc:
        raise WorkerLost(address, f"cannot connect ({type(exc).__name__}: {exc})") from None
    tree = opening["tree"]
    child = _Child(address, comm, [tuple(t) for t in tree["targets"]], _subtree_workers(tree))
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


async def _read_reply(child: _Child, heartbeat: float, expect: str = "step") -> dict[str, Any]:
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
            msg = await _read(child.comm, heartbeat)
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

    def __init__(self, address: str, shards: list[Shard], children: list[_Child], targets: list[Node],
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


# --------------------------------------------------------------------------------------------------
# the worker side


class _KeepAlive:
    """While started, sends ``{"k": 1, "p": progress}`` on a link every ``every`` seconds (a step still
    pending; ``p`` the subtree's chunk evaluations so far, so the parent tells slow from wedged)."""

    def __init__(self, comm: Any, every: float, progress: Callable[[], int]) -> None:
        self.comm = comm
        self.every = every
        self.progress = progress
        self.lock = asyncio.Lock()  # one writer at a time on the link: a beat, or the answer
        self.loop = asyncio.get_running_loop()
        self.handle: asyncio.TimerHandle | None = None
        self.beats: set[asyncio.Future[Any]] = set()

    def start(self) -> None:
        self.handle = self.loop.call_later(self.every, self._tick)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _tick(self) -> None:
        task = asyncio.ensure_future(self._beat())
        self.beats.add(task)
        task.add_done_callback(self.beats.discard)
        self.handle = self.loop.call_later(self.every, self._tick)

    async def _beat(self) -> None:
        async with self.lock:
            with contextlib.suppress(OSError):
                await self.comm.write({"k": 1, "p": self.progress()})


@dataclass
class RunState:
    """What one fit keeps in one worker process."""

    epoch: int = 0
    shards: dict[str, tuple[int, Shard]] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None
    executor: ThreadPoolExecutor | None = None
    links: dict[Any, int] = field(default_factory=dict)  # serving comm -> its driver's epoch

    def thread(self, run: str) -> ThreadPoolExecutor:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"dlogit-step-{run[-6:]}")
        return self.executor

    def idle(self) -> None:
        """No shard and no link left (their driver went away): the thread goes; the epoch and the
        state copy stay for a driver that takes over."""
        if not self.shards and not self.links and self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None

    def release(self) -> None:
        self.shards.clear()
        self.checkpoint = None
        for comm in list(self.links):
            comm.abort()
        self.links.clear()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


class EnginePlugin(WorkerPlugin):
    """dlogit's step handlers on a worker's own listener, and the fits' state in that worker."""

    name = PLUGIN_NAME
    idempotent = True

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.runs: dict[str, RunState] = {}
        self.ended: deque[str] = deque(maxlen=4096)  # fits dropped here: a late attach must not revive one
        self.keys: dict[Any, tuple[str, str]] = {}  # attaching task's key -> (run, shard id)
        self.lock = threading.Lock()
        worker.handlers["dlogit_link"] = self.link
        worker.handlers["dlogit_control"] = self.control

    def teardown(self, worker: Any) -> None:
        with self.lock:
            runs, self.runs = self.runs, {}
        for state in runs.values():
            state.release()
        for op in ("dlogit_link", "dlogit_control"):
            worker.handlers.pop(op, None)

    # -- the registry (tasks and handlers) --------------------------------------------------------
    def add_shard(self, run: str, epoch: int, shard_id: str, shard: Shard, key: Any = None) -> None:
        """Keep ``shard`` for the fit (refused when a newer driver of the fit has fenced this one).

        ``key`` is the attaching task's: when Dask releases it here (its driver's client -- the
        driver's worker -- went away, or the driver released it) the shard goes too."""
        with self.lock:
            if run in self.ended:
                raise ClusterError(f"fit {run} has ended")
            state = self.runs.setdefault(run, RunState(epoch=epoch))
            if epoch < state.epoch:
                raise ClusterError(f"fit {run}: a newer driver (epoch {state.epoch}) took over")
            if shard_id in state.shards:
                raise ClusterError(f"fit {run}: shard {shard_id} is already held here")
            state.shards[shard_id] = (epoch, shard)
            if key is not None:
                self.keys[key] = (run, shard_id)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        """A shard lives as long as its attaching task's result: Dask's own lifetime for it."""
        if finish in ("released", "forgotten") and key in self.keys:
            with self.lock:
                run, sid = self.keys.pop(key, (None, None))
                state = self.runs.get(run) if run is not None else None
                if state is not None:
                    state.shards.pop(sid, None)
                    state.idle()

    def shards_of(self, run: str, epoch: int, shard_ids: Iterable[str]) -> list[Shard]:
        state = self.runs.get(run)
        if state is not None and state.epoch > epoch:
            raise ClusterError(f"fit {run}: a newer driver (epoch {state.epoch}) took over from epoch {epoch}")
        ids = list(shard_ids)
        if state is None:
            if ids:
                raise ShardsMissing(self.worker.address, f"holds nothing of fit {run}")
            return []
        try:
            return [state.shards[sid][1] for sid in ids]
        except KeyError as exc:
            raise ShardsMissing(self.worker.address, f"holds no shard {exc.args[0]} of fit {run}") from None

    def drop(self, run: str) -> bool:
        with self.lock:
            state = self.runs.pop(run, None)
            if state is not None:  # only a fit this worker took part in can have a late attach
                self.ended.append(run)
            for key in [k for k, (r, _) in self.keys.items() if r == run]:
                del self.keys[key]
        if state is not None:
            state.release()
        from dlogit.engine import control

        control.clear(run)
        return state is not None

    # -- dlogit_link --------------------------------------------------------------------------------
    async def link(self, comm: Any, run: str, epoch: int, tree: dict[str, Any], heartbeat: float) -> None:
        """Serve one parent's steps for one topology of one fit (see the module docstring)."""
        node: TreeNode | None = None
        state = self.runs.get(run)
        _quiet(comm)
        try:
            try:
                shards = self.shards_of(run, epoch, tree["shards"])
                opening = {"run": run, "epoch": epoch, "heartbeat": heartbeat}
                children = await asyncio.gather(
                    *(_open_child(sub["addr"], {**opening, "tree": sub}, heartbeat,
                                  self.worker.connection_args) for sub in tree["children"]),
                    return_exceptions=True)
                errors = [c for c in children if isinstance(c, BaseException)]
                opened = [c for c in children if isinstance(c, _Child)]
                node = TreeNode(self.worker.address, shards, opened, [tuple(t) for t in tree["targets"]],
                                heartbeat)
                if errors:
                    raise errors[0]
            except WorkerLost as exc:
                await comm.write({"lost": exc.worker, "why": exc.why, "missing": isinstance(exc, ShardsMissing),
                                  "silent": exc.silent, "wedged": exc.wedged})
                return
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
                await comm.write({"error": f"{type(exc).__name__}: {exc}"})
                return
            state = self.runs.get(run)
            if state is None:
                await comm.write({"lost": self.worker.address, "why": "the fit was dropped here",
                                  "missing": True})
                return
            state.links[comm] = epoch
            await comm.write({"ready": True})
            await self._serve(comm, run, state, node)
        finally:
            if node is not None:
                node.close()
            if state is not None:
                state.links.pop(comm, None)
                state.idle()
            comm.abort()  # never back to the generic handler loop with a half-read link

    async def _serve(self, comm: Any, run: str, state: RunState, node: TreeNode) -> None:
        loop = asyncio.get_running_loop()
        beat = _KeepAlive(comm, keepalive_interval(node.heartbeat), node.progress)
        while True:
            try:
                msg = await comm.read()
            except OSError:  # the parent closed the link (the step ended, or the topology changed)
                return
            op, arrays = msg["o"], unpack(msg["a"])
            beat.start()
            try:
                if node.children:
                    await node.send({"o": op, "a": pack(arrays)})
                if node.last_compute.get(op, math.inf) < INLINE_SECONDS:
                    parts, dt = node.own(op, arrays)
                else:
                    parts, dt = await loop.run_in_executor(state.thread(run), node.own, op, arrays)
                seconds = {self.worker.address: dt}
                values = await node.gather(parts, seconds)
                rows = values[0][None] if len(values) == 1 else np.stack(values)
                reply: dict[str, Any] = {"v": pack([rows, np.array([seconds[w] for w in node.order])])}
            except WorkerLost as exc:
                reply = {"lost": exc.worker, "why": exc.why, "missing": isinstance(exc, ShardsMissing),
                         "silent": exc.silent, "wedged": exc.wedged}
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                beat.stop()
            async with beat.lock:
                await comm.write(reply)
            if "v" not in reply:
                return  # the driver rebuilds the tree after a loss or a failure

    # -- dlogit_control -----------------------------------------------------------------------------
    async def control(self, run: str, action: str, **kw: Any) -> Any:
        fn = CONTROL.get(action)
        if fn is None:
            return {"error": f"unknown dlogit control action {action!r}"}
        try:
            return await fn(self, run, **kw)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which raises it
            return {"error": f"{type(exc).__name__}: {exc}"}


async def _begin(plugin: EnginePlugin, run: str) -> dict[str, Any]:
    state = plugin.runs.get(run)
    if state is None:
        return {"epoch": 0, "checkpoint": None}
    ck = state.checkpoint
    return {"epoch": state.epoch, "checkpoint": None if ck is None else ToPickle(ck)}


async def _fence(plugin: EnginePlugin, run: str, epoch: int) -> dict[str, Any]:
    """A new driver of the fit took over: older drivers' shards go, and so do their links."""
    with plugin.lock:
        if run in plugin.ended:
            return {"dropped": 0}
        state = plugin.runs.setdefault(run, RunState(epoch=epoch))
        state.epoch = max(state.epoch, epoch)
        stale = [sid for sid, (e, _) in state.shards.items() if e < state.epoch]
        for sid in stale:
            del state.shards[sid]
        old = [comm for comm, e in state.links.items() if e < state.epoch]
    for comm in old:
        comm.abort()
    return {"dropped": len(stale)}


async def _prepare(plugin: EnginePlugin, run: str, epoch: int, shards: list[str], spec: Any, plan: Any,
                   curvature: bool) -> dict[str, Any]:
    held = plugin.shards_of(run, epoch, shards)
    state = plugin.runs[run]
    loop = asyncio.get_running_loop()

    def prepare() -> list[str]:
        return [s.prepare(spec, plan, curvature) for s in held]

    kernels = await loop.run_in_executor(state.thread(run), prepare)
    return {"kernels": kernels}


async def _checkpoint(plugin: EnginePlugin, run: str, epoch: int, n_iter: int, payload: Any) -> None:
    with plugin.lock:
        if run in plugin.ended:
            return
        state = plugin.runs.setdefault(run, RunState(epoch=epoch))
        if epoch < state.epoch:  # a superseded driver's copy: never resumed from
            return
        old = state.checkpoint
        if old is None or (epoch, n_iter) >= (old["epoch"], old["n_iter"]):
            from dlogit.checkpoint import merge_copy  # an L-BFGS copy may carry only its newest pairs

            state.checkpoint = merge_copy(old, {"epoch": epoch, "n_iter": n_iter, **payload})


async def _drop(plugin: EnginePlugin, run: str, epoch: int) -> dict[str, Any]:
    """The driver of ``epoch`` is done with the fit (a driver superseded by a newer one drops nothing)."""
    state = plugin.runs.get(run)
    if state is not None and state.epoch > epoch:
        return {"dropped": False}
    return {"dropped": plugin.drop(run)}


#: the control actions a worker answers: name -> coroutine(plugin, run, **arguments)
CONTROL: dict[str, Callable[..., Any]] = {"begin": _begin, "fence": _fence, "prepare": _prepare,
                                          "checkpoint": _checkpoint, "drop": _drop}


def local_plugin(worker: Any) -> EnginePlugin:
    """This worker's :class:`EnginePlugin` (installed by the driver before any shard is attached)."""
    plugin = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, EnginePlugin):
        raise ClusterError(f"dlogit's engine plugin is not installed on worker {worker.address}")
    return plugin


def engine_state(dask_worker: Any) -> dict[str, Any]:
    """Run on a worker (``client.run``): the fits it holds state for and dlogit's threads in it."""
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    runs = {} if plugin is None else {
        r: {"shards": len(s.shards), "chunks": sorted(i for _, sh in list(s.shards.values()) for i in sh.raw or
                                                      sh.evaluators),
            "checkpoint": s.checkpoint is not None, "links": len(s.links), "thread": s.executor is not None}
        for r, s in list(plugin.runs.items())}
    threads = sorted(t.name for t in threading.enumerate() if t.name.startswith("dlogit"))
    return {"runs": runs, "threads": threads}


def shard_count(dask_worker: Any) -> int:
    """Run on a worker (``client.run``): the shards it holds, all fits together."""
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    return 0 if plugin is None else sum(len(s.shards) for s in list(plugin.runs.values()))


def drop_run(run: str, dask_worker: Any) -> bool:
    """Run on a worker (``client.run``): forget everything of the fit ``run`` in this worker."""
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if isinstance(plugin, EnginePlugin):
        return plugin.drop(run)
    return False


# --------------------------------------------------------------------------------------------------
# the driver side


#: comm schemes whose connections the driver's thread runs on an event loop of its own (no hop to
#: the worker's loop per step); for others (ucx, ucxx, ws, ...) its comms live on the worker's loop
OWN_LOOP_SCHEMES = ("tcp", "tls", "inproc")


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


class DriverLinks:
    """The driver's end of the transport, in the driver's thread: its links to the root's children,
    and control comms, on an event loop of its own (:data:`OWN_LOOP_SCHEMES`) or the worker's."""

    def __init__(self, worker: Any, run: str, epoch: int, heartbeat: float,
                 stop: Callable[[], str | None] | None = None) -> None:
        self.address = worker.address
        #: polled while a step is pending (a non-None answer abandons it: :class:`StepStopped`)
        self.stop = stop
        #: this process's own shards are evaluated here when a step takes long enough to poll meanwhile
        self.executor: ThreadPoolExecutor | None = None
        self.connection_args = dict(worker.connection_args)
        self.run_id = run
        self.epoch = epoch
        self.heartbeat = heartbeat
        own = worker.address.split("://", 1)[0] in OWN_LOOP_SCHEMES
        self.loop = asyncio.new_event_loop() if own else None
        self.worker_loop = worker.loop
        self.root: TreeNode | None = None
        self.controls: dict[str, Any] = {}

    def run(self, coro: Any) -> Any:
        if self.loop is not None:
            return self.loop.run_until_complete(coro)
        from distributed.utils import sync

        return sync(self.worker_loop, lambda: coro)

    # -- the tree --------------------------------------------------------------------------------
    def open(self, tree: dict[str, Any], own: list[Shard]) -> None:
        """Link the root's children (each links its own): ``tree`` from :func:`subtree_spec`."""
        self.close_tree()
        opening = {"run": self.run_id, "epoch": self.epoch, "heartbeat": self.heartbeat}

        async def open_all() -> list[Any]:
            return await asyncio.gather(
                *(_open_child(sub["addr"], {**opening, "tree": sub}, self.heartbeat, self.connection_args)
                  for sub in tree["children"]), return_exceptions=True)

        children = self.run(open_all())
        opened = [c for c in children if isinstance(c, _Child)]
        self.root = TreeNode(self.address, own, opened, [tuple(t) for t in tree["targets"]], self.heartbeat)
        for c in children:
            if isinstance(c, BaseException):
                self.close_tree()
                raise c

    def step(self, op: str, arrays: Sequence[np.ndarray], timeout: float | None = None
             ) -> tuple[list[Any], dict[str, float]]:
        """One step along the tree: the target nodes' values (the root node's) and each worker's
        seconds of evaluation. A stop request while it is pending raises :class:`StepStopped`, and a
        step longer than ``timeout`` seconds :class:`StepTimeout` (the tree is closed either way)."""
        root = self.root
        if root is None:
            raise RuntimeError("the step tree is not open")
        return self.run(self._guarded(self._step(root, op, arrays), timeout))

    async def _guarded(self, coro: Any, timeout: float | None) -> Any:
        task = asyncio.ensure_future(coro)
        t0 = time.monotonic()
        poll = 0.05
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            poll = min(0.1, poll * 2)
            reason = self.stop() if self.stop is not None else None
            late = timeout is not None and time.monotonic() - t0 > timeout
            if reason is None and not late:
                continue
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            root, self.root = self.root, None
            if root is not None:
                root.close()
            if reason is not None:
                raise StepStopped(reason)
            raise StepTimeout(f"a step took more than {timeout:.3g}s (dlogit.engine.step-timeout)")

    async def _step(self, root: TreeNode, op: str, arrays: Sequence[np.ndarray]
                    ) -> tuple[list[Any], dict[str, float]]:
        if root.children:
            await root.send({"o": op, "a": pack(arrays)})
        if not root.shards:
            parts, dt = {}, 0.0
        elif self.loop is None or root.last_compute.get(op, math.inf) >= INLINE_SECONDS:
            # off the loop (a worker's: its heartbeats go on; our own: stop requests and the step
            # deadline are watched meanwhile); a fast evaluation stays inline (no thread hop)
            if self.executor is None:
                self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"dlogit-root-{self.run_id[-6:]}")
            parts, dt = await asyncio.get_running_loop().run_in_executor(self.executor, root.own, op, arrays)
        else:
            parts, dt = root.own(op, arrays)
        seconds = {self.address: dt} if root.shards else {}
        values = await root.gather(parts, seconds)
        return values, seconds

    def close_tree(self) -> None:
        root, self.root = self.root, None
        if root is not None:
            self.run(_call(root.close))  # on the loop that owns the comms

    # -- control ---------------------------------------------------------------------------------
    def control(self, requests: dict[str, dict[str, Any]], action: str, reply: bool = True,
                missing_ok: bool = False, errors: str = "raise") -> dict[str, Any]:
        """Send ``action`` to each worker of ``requests`` (worker -> arguments) at once; their answers
        (a worker that cannot be reached answers ``None`` when ``missing_ok``; with ``errors="return"``
        a worker's error is its answer, else the first one is raised once all have answered)."""
        return self.run(self._control(requests, action, reply, missing_ok, errors))

    async def _control(self, requests: dict[str, dict[str, Any]], action: str, reply: bool,
                       missing_ok: bool, errors: str) -> dict[str, Any]:
        from distributed.comm import connect

        async def one(address: str, kw: dict[str, Any]) -> Any:
            comm = self.controls.get(address)
            try:
                if comm is None or comm.closed():
                    comm = self.controls[address] = _quiet(await connect(address, timeout=self.heartbeat,
                                                                         **self.connection_args))
                await comm.write({"op": "dlogit_control", "reply": reply, "run": self.run_id,
                                  "action": action, **kw})
                if not reply:
                    return None
                out = await _read(comm, max(self.heartbeat, 600.0) if action == "prepare" else self.heartbeat)
            except (OSError, asyncio.TimeoutError, TimeoutError) as exc:
                self.controls.pop(address, None)
                if comm is not None:
                    comm.abort()
                if missing_ok:
                    return None
                raise WorkerLost(address, f"control {action}: {type(exc).__name__}: {exc}") from None
            if isinstance(out, dict) and "error" in out:
                raise StepFailed(f"worker {address} failed to {action}: {out['error']}")
            return out

        answers = await asyncio.gather(*(one(a, kw) for a, kw in requests.items()), return_exceptions=True)
        out: dict[str, Any] = {}
        for address, answer in zip(requests, answers):
            if isinstance(answer, BaseException) and errors != "return":
                raise answer
            out[address] = answer
        return out

    def close(self) -> None:
        self.close_tree()
        controls, self.controls = list(self.controls.values()), {}

        def abort() -> None:
            for comm in controls:
                comm.abort()

        self.run(_call(abort))
        if self.executor is not None:  # a wedged evaluation keeps its thread until it returns
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None
        if self.loop is not None:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()
