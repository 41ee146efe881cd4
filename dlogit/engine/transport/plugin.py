"""The worker side: :class:`EnginePlugin`'s ``dlogit_link`` and ``dlogit_control`` handlers on the
worker's own listener, the fits' state in that worker, and the ``client.run`` helpers that read it."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol import ToPickle

from dlogit.engine.shard import Shard
from dlogit.engine.transport.errors import ShardsMissing, WorkerLost
from dlogit.engine.transport.tree import INLINE_SECONDS, Child, TreeNode, keepalive_interval, open_child
from dlogit.engine.transport.wire import pack, quieted, unpack
from dlogit.errors import ClusterError

PLUGIN_NAME = "dlogit-engine"

#: bytes of column moments the validation summaries kept per worker may hold (:class:`SummaryCache`)
SUMMARY_CACHE_BYTES = 64 << 20


class SummaryCache:
    """Each chunk's validation summary (:class:`~dlogit.stats.ChunkStats`) by the Dask key of its X,
    kept while that key is in this worker's memory: a later fit on the same persisted chunk does not
    read its X again to validate and summarize it (a key names one value for as long as Dask holds it;
    the entry goes when the key is released here). The column moments depend on the row weights too:
    an entry serves only weights of the same digest (the labels and weights are always counted anew:
    they are small). At most ``SUMMARY_CACHE_BYTES`` of moments, the oldest entries dropped first."""

    def __init__(self, limit: int = SUMMARY_CACHE_BYTES) -> None:
        self.limit = limit
        self.entries: dict[Any, tuple[str | None, Any]] = {}  # X key -> (weights' digest, summary)
        self.nbytes = 0
        #: summaries served from here, and computed and kept (monotone; tests and diagnostics)
        self.hits = 0
        self.stored = 0
        self.lock = threading.Lock()

    @staticmethod
    def _size(stats: Any) -> int:
        return int(sum(a.nbytes for a in (stats.col_max, stats.col_sum, stats.col_sq)))

    def get(self, key: Any, weights: Any) -> Any:
        """The kept summary of X ``key`` taken with these ``weights``, or None."""
        with self.lock:
            entry = self.entries.get(key)
        if entry is None or entry[0] != weights_digest(weights):
            return None
        with self.lock:
            self.hits += 1
        return entry[1]

    def put(self, key: Any, weights: Any, stats: Any, held: Callable[[Any], bool]) -> None:
        """Keep ``stats`` of X ``key`` when the key is ``held`` here now (its release is then seen)."""
        size = self._size(stats)
        if size > self.limit or not held(key):
            return
        digest = weights_digest(weights)
        with self.lock:
            self.release(key, locked=True)
            self.entries[key] = (digest, stats)
            self.nbytes += size
            self.stored += 1
            while self.nbytes > self.limit:
                self.release(next(iter(self.entries)), locked=True)

    def release(self, key: Any, locked: bool = False) -> None:
        """``key`` left this worker's memory: forget its summary."""
        if key not in self.entries:
            return
        with contextlib.nullcontext() if locked else self.lock:
            entry = self.entries.pop(key, None)
            if entry is not None:
                self.nbytes -= self._size(entry[1])


def weights_digest(weights: Any) -> str | None:
    """A digest of a chunk's row weights (dtype, shape, bytes), or None without weights."""
    if weights is None:
        return None
    import hashlib

    from dlogit._xp import to_numpy

    a = np.ascontiguousarray(to_numpy(weights))
    h = hashlib.blake2b(f"{a.dtype.str}{a.shape}".encode(), digest_size=16)
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


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
        for _, shard in self.shards.values():  # spill files and threads now, not at a garbage collection
            shard.close(wait=False)
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
        self.summaries = SummaryCache()
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
        """A shard lives as long as its attaching task's result: Dask's own lifetime for it (and a chunk's
        kept summary as long as its keys)."""
        if finish in ("released", "forgotten"):
            self.summaries.release(key)
        if finish in ("released", "forgotten") and key in self.keys:
            with self.lock:
                run, sid = self.keys.pop(key, (None, None))
                state = self.runs.get(run) if run is not None else None
                if state is not None:
                    held = state.shards.pop(sid, None)
                    if held is not None:
                        held[1].close(wait=False)
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
        quieted(comm)
        try:
            try:
                shards = self.shards_of(run, epoch, tree["shards"])
                opening = {"run": run, "epoch": epoch, "heartbeat": heartbeat}
                children = await asyncio.gather(
                    *(open_child(sub["addr"], {**opening, "tree": sub}, heartbeat,
                                  self.worker.connection_args) for sub in tree["children"]),
                    return_exceptions=True)
                errors = [c for c in children if isinstance(c, BaseException)]
                opened = [c for c in children if isinstance(c, Child)]
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
    cache = None if plugin is None else plugin.summaries
    summaries = {"entries": 0, "hits": 0, "stored": 0} if cache is None else {
        "entries": len(cache.entries), "hits": cache.hits, "stored": cache.stored}
    return {"runs": runs, "threads": threads, "summaries": summaries}


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

