"""The on-cluster driver of a distributed fit: one long-running task on a worker runs the solver loop.

Why a worker and not the scheduler: the loop does array work (the objective, the solver's vectors,
the preconditioner) that belongs next to the data, needs dlogit and its numeric stack where it runs,
and would otherwise sit on the scheduler's one event loop, which every client and worker of the
cluster shares; a worker task also gets Dask's own rescheduling when its process dies.

:func:`drive` is the task (:class:`DaskFit <dlogit.engine.dask_fit.DaskFit>` submits it; its client
then only waits, receives the progress events and gets the result). It secedes from the worker's
thread pool (so the worker's own shard tasks still run) and, through the worker's client:

1. installs :class:`~dlogit.engine.transport.EnginePlugin` (idempotent) and asks every worker for the
   highest epoch of this fit and the newest in-memory checkpoint (a driver restarted by Dask after its
   worker died continues from it), takes the next epoch and fences older drivers' shards;
2. attaches the chunks where the client placed them (tasks taking the client's chunk futures, so Dask
   recomputes lost chunks from their graph), merges the validation summaries into the
   :class:`~dlogit.spec.FitPlan` and prepares the shards;
3. links the tree of workers (:func:`~dlogit.engine.placement.worker_tree`, rooted at this process)
   and runs :func:`~dlogit.training.run_fit` on it; every ``dlogit.engine.replica-every`` seconds it
   copies the solver state and history to as many workers as the root has children, on other hosts
   than the driver's first (:func:`~dlogit.engine.placement.replica_targets`; :meth:`Driver.replicate`);
4. on a lost worker (connection closed, or silent for ``dlogit.engine.heartbeat``) it removes the
   worker from the scheduler when it is still listed (a frozen process), spreads its chunks over the
   survivors, re-attaches them and retries the step: the fixed chunk tree gives the same sums;
5. at the end, or when stopped (the client's Ctrl-C, a cancelled task), drops the fit's state on
   every worker.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dlogit.config import get_bool, setting
from dlogit.engine import control
from dlogit.engine.local import needs_curvature
from dlogit.engine.placement import balanced_ranges, replica_targets, spread_orphans, worker_tree
from dlogit.engine.shard import Shard, merged_stats
from dlogit.engine.transport import (
    DriverLinks,
    EnginePlugin,
    ShardsMissing,
    StepFailed,
    StepStopped,
    WorkerLost,
    local_plugin,
    subtree_spec,
)
from dlogit.errors import ClusterError, DataError, Interrupted
from dlogit.events import TOPIC
from dlogit.objective import Node
from dlogit.spec import FitPlan, FitResult, FitSpec, make_plan

logger = logging.getLogger("dlogit.engine")

#: every this many copies of the solver state to the replicas is whole (the others carry only the
#: L-BFGS pairs pushed since the previous copy; see :meth:`Driver.replicate`)
REPLICA_WHOLE_EVERY = 8


@dataclass(frozen=True)
class EngineSettings:
    """The ``dlogit.engine.*`` settings a distributed fit runs with (read once, on the client)."""

    heartbeat: float = 30.0
    attach_timeout: float = 600.0
    recover_timeout: float = 60.0
    max_recoveries: int = 10
    replica_every: float = 1.0
    tree_radix: int = 4
    #: a worker silent for the heartbeat is also removed from the cluster (else only from this fit)
    remove_silent_workers: bool = False
    #: a step's deadline: seconds, or ``step_timeout_factor`` x the median step (None: no deadline)
    step_timeout: float | None = None
    step_timeout_factor: float | None = None

    @classmethod
    def from_config(cls) -> EngineSettings:
        from dask.utils import parse_timedelta

        from dlogit.errors import ConfigError

        def seconds(key: str) -> float:
            return float(parse_timedelta(setting(f"dlogit.engine.{key}")))

        out = cls(heartbeat=seconds("heartbeat"), attach_timeout=seconds("attach-timeout"),
                  recover_timeout=seconds("recover-timeout"),
                  max_recoveries=int(setting("dlogit.engine.max-recoveries")),
                  replica_every=seconds("replica-every"),
                  tree_radix=int(setting("dlogit.engine.tree-radix")),
                  remove_silent_workers=get_bool("dlogit.engine.remove-silent-workers"))
        raw = setting("dlogit.engine.step-timeout")
        text = "" if raw is None or raw is False else str(raw).strip().lower()
        if text not in ("", "off", "none", "null"):
            try:
                if text.endswith("x"):
                    out = replace(out, step_timeout_factor=float(text[:-1]))
                    bad = not 1 < out.step_timeout_factor < float("inf")
                else:
                    out = replace(out, step_timeout=float(parse_timedelta(raw)))
                    bad = not 0 < out.step_timeout < float("inf")
            except (TypeError, ValueError, KeyError):  # parse_timedelta: KeyError for an unknown unit
                bad = True
            if bad:
                raise ConfigError(f"dlogit.engine.step-timeout must be a duration (e.g. 10m) or a multiple "
                                  f"of the median step above 1 (e.g. 10x), got {raw!r}")
        if not out.heartbeat > 0:
            raise ConfigError(f"dlogit.engine.heartbeat must be positive, got {out.heartbeat}")
        if out.tree_radix < 2:
            raise ConfigError(f"dlogit.engine.tree-radix must be at least 2, got {out.tree_radix}")
        return out


@dataclass(frozen=True)
class ChunkRefs:
    """The fit's chunks as the keys of futures the client holds (never dependencies of the driver's
    task: the chunks stay where they are), their rows, and where the client placed them."""

    x: tuple[Any, ...]
    y: tuple[Any, ...]
    w: tuple[Any, ...] | None
    rows: tuple[float, ...]
    assign: dict[str, list[int]]
    #: the chunks as source ranges (:class:`~dlogit.engine.residency.Streamed`; then no futures): each
    #: worker reads its own, keeps what its cache budget allows and streams the rest
    stream: Any = None

    @property
    def n_chunks(self) -> int:
        return len(self.rows)

    @property
    def weighted(self) -> bool:
        return self.w is not None or (self.stream is not None and self.stream.weighted)


@dataclass
class ShardInfo:
    """Where one attached shard lives and which tree nodes it answers for."""

    shard_id: str
    worker: str
    indices: list[int]
    nodes: list[Node]


# --------------------------------------------------------------------------------------------------
# tasks


def attach_task(run: str, epoch: int, shard_id: str, indices: list[int], n_chunks: int, xs: list[Any],
                ys: list[Any], ws: list[Any] | None, prepare: tuple[FitSpec, FitPlan, bool] | None,
                fold_labels: bool = False, stream: Any = None,
                signatures: dict[int, Any] | None = None,
                keys: list[Any] | None = None) -> dict[str, Any]:
    """On a worker: hold these chunks as a shard of the fit; validate and summarize them (the first
    attach; with ``fold_labels`` also each chunk's labels for stratified folds), or prepare them with
    the fit's plan (chunks moved after a loss). With ``stream`` the chunks are source ranges the shard
    reads itself (:mod:`dlogit.engine.residency`; ``signatures``: their files at the fit's first read).
    ``keys``: each chunk's X key: a chunk whose summary this worker kept from an earlier fit on the same
    X (and row weights) is not read again to validate it
    (:class:`~dlogit.engine.transport.plugin.SummaryCache`)."""
    from distributed import get_worker

    worker = get_worker()
    plugin = local_plugin(worker)
    if stream is not None:
        from dlogit.engine.residency import worker_budget

        # one budget per worker: chunks this worker already caches for the fit (a shard attached before a
        # loss moved more chunks here) count against it
        state = plugin.runs.get(run)
        held = sum(s.residency["cached_bytes"] for e, s in (state.shards.values() if state else ())
                   if e == epoch and s.sources)
        shard = Shard(stream.chunks(indices), n_chunks, where=f"worker {worker.address}",
                      budget=max(0, worker_budget(stream.cache, worker) - held), signatures=signatures)
    else:
        chunks = {i: (x, y, None if ws is None else ws[j]) for j, (i, x, y) in enumerate(zip(indices, xs, ys))}
        shard = Shard(chunks, n_chunks, where=f"worker {worker.address}")
    out: dict[str, Any] = {"worker": worker.address, "shard": shard_id, "nodes": shard.nodes}
    t0 = time.perf_counter()
    if prepare is None:
        cache = plugin.summaries
        weights = {i: (None if ws is None else ws[j]) for j, i in enumerate(indices)}
        known = {} if keys is None else {i: st for i, k in zip(indices, keys)
                                         if (st := cache.get(k, weights[i])) is not None}
        out["stats"] = shard.stats(known)
        out["stats_seconds"] = time.perf_counter() - t0
        out["stats_reused"] = len(known)
        if keys is not None:
            for i, k in zip(indices, keys):
                if i not in known:
                    cache.put(k, weights[i], shard.summaries[i], worker.data.__contains__)
        out["rows"] = shard.row_counts()
        if fold_labels:
            from dlogit.folds import chunk_labels

            out["labels"] = {i: chunk_labels(y) for i, (_, y, _) in shard.raw.items()}
    else:
        out["kernel"] = shard.prepare(*prepare)
    if stream is not None:
        out["signatures"] = dict(shard.signatures)
        out["residency"] = shard.residency
    plugin.add_shard(run, epoch, shard_id, shard, key=worker.get_current_task())
    return out


def drive(spec: FitSpec, refs: ChunkRefs, settings: EngineSettings, info: dict[str, Any],
          path: Any = None) -> tuple[str, Any]:
    """The distributed fit's task: ``("ok", FitResult)`` (or a :class:`~dlogit.cv.PathResult` for a
    cross-validated path) or ``("interrupted", (message, checkpoint))`` (a task must not raise
    KeyboardInterrupt)."""
    from distributed import get_worker, secede

    started = time.time()
    worker = get_worker()
    stop = control.stop_check(spec.run)
    secede()  # the worker's own shard tasks run beside this one, even on a single-threaded worker
    driver = Driver(worker, spec, refs, settings, info, stop, path)
    driver.started = started
    try:
        return "ok", driver.run()
    except Interrupted as exc:
        return "interrupted", (exc.message, exc.checkpoint)
    except KeyboardInterrupt as exc:  # a stop met outside the fit loop (set-up, a path's passes): a
        # task that raises KeyboardInterrupt takes its worker down with it
        return "interrupted", (getattr(exc, "message", None) or "interrupted", None)
    finally:
        driver.close()
        control.clear(spec.run)


# --------------------------------------------------------------------------------------------------
# the driver


class Driver:
    """One incarnation of a distributed fit's driver (see the module docstring)."""

    #: when the driver task began on its worker (``time.time()``), set by the task: the phase timings' origin
    started: float | None = None

    def __init__(self, worker: Any, spec: FitSpec, refs: ChunkRefs, settings: EngineSettings,
                 info: dict[str, Any], stop: Any, path: Any = None) -> None:
        self.worker = worker
        self.path = path  # a cross-validated path (dlogit.cv.PathSpec), or None for one fit
        self.spec = spec
        self.refs = refs
        self.settings = settings
        self.info = info
        self.stop = stop
        self.client: Any = None
        self.links: DriverLinks | None = None
        self.epoch = 0
        self.shards: dict[str, ShardInfo] = {}
        self.kernels: dict[str, str] = {}  # shard id -> its kernel names, once prepared
        #: shard id -> its attaching task's future: Dask releases the key (and the worker the shard)
        #: when this driver's worker goes away, or when the driver lets go of it
        self.attached: dict[str, Any] = {}
        self.plan: FitPlan | None = None
        self.curvature = needs_curvature(spec.solver)
        self.excluded: set[str] = set()
        self.touched: set[str] = set()
        self.recoveries = 0
        self.emitter: Any = None
        self.replica_targets: list[str] = []
        self._last_replica = time.monotonic()
        self._replica_cost = 0.0
        self._replica_copies = 0  # copies sent by this driver; every REPLICA_WHOLE_EVERY-th is whole
        self._replica_mark: tuple[tuple[str, ...], int, int] | None = None  # targets, step, newest pair
        self.resumed_from: int | None = None
        self._ids = itertools.count()
        #: streamed fits: each chunk's files at the fit's first read, and each shard's residency
        self.signatures: dict[int, Any] = {}
        self.residency: dict[str, dict[str, Any]] = {}
        #: per reduction (the last 100 000): the wall time at the driver and the slowest worker's
        #: evaluation, in seconds (their difference is the coordination)
        self.timing: deque[tuple[float, float]] = deque(maxlen=100_000)
        #: seconds of each phase of the set-up and of the loop (``FitResult.extra["phases"]``)
        self.phases: dict[str, float] = {}

    # -- set-up ----------------------------------------------------------------------------------
    def _alive(self) -> list[str]:
        return sorted(w for w in self.client.scheduler_info(n_workers=-1)["workers"] if w not in self.excluded)

    def run(self) -> FitResult:
        from distributed import get_client

        from dlogit.training import run_fit

        marks = self.phases
        t = time.perf_counter()
        self.client = get_client()
        self.client.register_plugin(EnginePlugin())
        marks["plugin"] = time.perf_counter() - t
        self.links = links = DriverLinks(self.worker, self.spec.run, 0, self.settings.heartbeat,
                                         stop=self.stop)
        alive = self._alive()
        self.touched.update(alive)
        begun = links.control({w: {} for w in alive}, "begin", missing_ok=True)
        self.epoch = 1 + max((a["epoch"] for a in begun.values() if a), default=0)
        links.epoch = self.epoch
        checkpoints = [a["checkpoint"] for a in begun.values() if a and a.get("checkpoint")]
        best = max(checkpoints, key=lambda c: (c["epoch"], c["n_iter"]), default=None)
        links.control({w: {"epoch": self.epoch} for w in alive}, "fence", missing_ok=True)

        marks["begin"] = time.perf_counter() - t - marks["plugin"]
        kept, moved = spread_orphans(self.refs.assign, self.refs.rows, alive)
        assign = {w: sorted(kept.get(w, []) + moved.get(w, [])) for w in set(kept) | set(moved)}
        t = time.perf_counter()
        infos = self._attach(assign, prepare=None)
        marks["attach"] = time.perf_counter() - t
        marks["attach_stats"] = max((i.get("stats_seconds", 0.0) for i in infos), default=0.0)
        t = time.perf_counter()
        parts = {tuple(node): st for info in infos for node, st in info["stats"]}
        stats = merged_stats(parts, self.refs.n_chunks)
        self.plan = make_plan(self.spec, stats, weighted_input=self.refs.weighted)
        marks["plan"] = time.perf_counter() - t
        if self.path is not None:
            from dlogit.cv import with_folds

            rows = {int(i): int(r) for info in infos for i, r in info["rows"].items()}
            labels = {int(i): v for info in infos for i, v in info.get("labels", {}).items()}
            self.plan = with_folds(self.plan, self.path, [rows[i] for i in range(self.refs.n_chunks)],
                                   [labels[i] for i in range(self.refs.n_chunks)] if labels else None)
        t = time.perf_counter()
        try:
            self._prepare(list(self.shards.values()))
            marks["prepare"] = time.perf_counter() - t
            self._open_tree()
        except WorkerLost as exc:  # lost before the first step: its chunks go elsewhere, prepared
            self._recover(exc)
        marks["tree"] = time.perf_counter() - t - marks.get("prepare", 0.0)
        t = time.perf_counter()
        kernel = "+".join(sorted({k for ks in self.kernels.values() for k in ks.split("+") if k}))

        start = None
        if best is not None:
            from dlogit.solvers import state_from_arrays

            start = (state_from_arrays(best["state"]), best["history"])
            self.resumed_from = best.get("resumed_from")
            self._notice(f"the fit's driver was lost; it continues on {self.worker.address} from step "
                         f"{int(best['n_iter'])}")
        info = {**self.info, "workers": sorted({s.worker for s in self.shards.values()}),
                "driver": self.worker.address}
        if self.refs.stream is not None:
            from dlogit.engine.residency import merge

            live = {s.shard_id for s in self.shards.values()}
            info["cache"] = merge([r for sid, r in self.residency.items() if sid in live])
        if self.path is not None:  # every fold of a penalty in one pass down the tree
            from dlogit.cv import path_penalties, run_path

            penalties = path_penalties(self.plan, self.path, lambda th: self.reduce("sums", th),
                                        self.spec.fit_intercept)
            return run_path(_TreeFoldSource(self, self.plan.folds.n_folds), self.spec, self.plan, penalties,
                            self.path.scoring, self._send, mode="distributed", info=info, stop=self.stop)
        result = run_fit(_TreeEvaluator(self, kernel), self.spec, self.plan, self._send, mode="distributed",
                         info=info, stop=self.stop, emitter_hook=self._hook, start=start,
                         on_step=self.replicate, epoch=self.epoch)
        if start is not None:  # the user sees their own resume (a file), not the driver's restarts
            result = replace(result, resumed_from=self.resumed_from)
        marks["loop"] = time.perf_counter() - t
        result.extra["phases"] = dict(marks)
        result.extra["driver_started"] = self.started
        result.extra["driver_ended"] = time.time()
        result.extra["driver_epoch"] = self.epoch
        result.extra["recoveries"] = self.recoveries
        result.extra["reduce_seconds"] = np.asarray(self.timing, dtype=np.float64).reshape(-1, 2)
        return result

    def _send(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "start" and self.resumed_from is None and self.epoch == 1:
            self.resumed_from = msg.get("params", {}).get("resumed_from")
        self.worker.log_event(TOPIC, msg)

    def _notice(self, message: str) -> None:
        """A one-line warning for the user (a ``warning`` event: the client warns with it) and the log."""
        logger.warning("dlogit: fit %s: %s", self.spec.run, message)
        with contextlib.suppress(Exception):
            self._send({"type": "warning", "run": self.spec.run, "time": time.time(), "message": message})

    def _hook(self, emitter: Any) -> None:
        self.emitter = emitter

    def _attach(self, assign: dict[str, list[int]], prepare: tuple[FitSpec, FitPlan, bool] | None
                ) -> list[dict[str, Any]]:
        """Attach the chunks of ``assign`` (worker -> chunk indices) as one shard per worker."""
        from distributed import Future

        refs, c = self.refs, self.client
        futures, placed = [], []
        for w, idx in sorted(assign.items()):
            if not idx:
                continue
            sid = f"{self.epoch}.{next(self._ids)}"
            if refs.stream is None:
                xs = [Future(refs.x[i], c) for i in idx]
                ys = [Future(refs.y[i], c) for i in idx]
                ws = None if refs.w is None else [Future(refs.w[i], c) for i in idx]
            else:  # source ranges: the worker reads them (a moved chunk is checked against its first read)
                xs, ys, ws = [], [], None
            sigs = {i: self.signatures[i] for i in idx if i in self.signatures} or None
            labels = prepare is None and _needs_labels(self.path)  # stratified folds: each chunk's labels
            keys = None if refs.stream is not None or prepare is not None else [refs.x[i] for i in idx]
            futures.append(c.submit(attach_task, self.spec.run, self.epoch, sid, idx, refs.n_chunks, xs, ys, ws,
                                    prepare, labels, refs.stream, sigs, keys,
                                    key=f"dlogit-attach-{self.spec.run}-{sid}", workers=[w],
                                    allow_other_workers=True, pure=False))
            placed.append(list(idx))
            self.touched.add(w)
        timeout = self.settings.attach_timeout
        try:
            deadline = time.monotonic() + timeout  # one deadline for the whole attach
            for f in futures:  # all settle first: no shard may register after the clean-up
                with contextlib.suppress(Exception):
                    f.exception(timeout=max(0.0, deadline - time.monotonic()))
            if not all(f.done() for f in futures):
                raise ClusterError(f"the workers did not load their shards within {timeout:g}s "
                                   "(dlogit.engine.attach-timeout)")
            infos, failed = [], None
            for f, idx in zip(futures, placed):
                if f.status != "finished":
                    failed = failed or f
                    continue
                info = f.result()
                infos.append(info)
                self.signatures.update(info.get("signatures", {}))
                if "residency" in info:
                    self.residency[info["shard"]] = info["residency"]
                self.attached[info["shard"]] = f  # held: the shard lives as long as this key
                self.shards[info["shard"]] = ShardInfo(info["shard"], info["worker"], idx,
                                                       [tuple(n) for n in info["nodes"]])
                if "kernel" in info:
                    self.kernels[info["shard"]] = info["kernel"]
                self.touched.add(info["worker"])
            if failed is not None:
                failed.result()  # raises the task's error (a DataError, a lost worker, ...)
        finally:
            held = {id(f) for f in self.attached.values()}
            for f in futures:
                if id(f) not in held:
                    f.release()
        return infos

    def _prepare(self, shards: list[ShardInfo]) -> None:
        """Build the shards' evaluators from the plan, where they are (their kernels in
        ``self.kernels``); a worker lost meanwhile raises :class:`WorkerLost` once the others are done."""
        from distributed.protocol import ToPickle

        assert self.links is not None
        by_worker: dict[str, list[str]] = {}
        for s in shards:
            by_worker.setdefault(s.worker, []).append(s.shard_id)
        spec, plan = ToPickle(self.spec), ToPickle(self.plan)
        answers = self.links.control({w: {"epoch": self.epoch, "shards": sids, "spec": spec, "plan": plan,
                                          "curvature": self.curvature} for w, sids in by_worker.items()},
                                     "prepare", errors="return")
        failed: list[BaseException] = []
        for w, answer in answers.items():
            if isinstance(answer, BaseException):
                failed.append(answer)
            else:
                self.kernels.update(zip(by_worker[w], answer["kernels"]))
        if failed:  # a worker's own error before a lost worker (which a recovery handles)
            raise next((e for e in failed if not isinstance(e, WorkerLost)), failed[0])

    def _open_tree(self) -> None:
        """Link the tree of the workers holding shards, rooted at this process."""
        assert self.links is not None
        me = self.worker.address
        holders: dict[str, list[str]] = {}
        first: dict[str, int] = {}
        for s in sorted(self.shards.values(), key=lambda s: min(s.indices)):
            holders.setdefault(s.worker, []).append(s.shard_id)
            first.setdefault(s.worker, min(s.indices))
        order = [me] + sorted((w for w in holders if w != me), key=first.__getitem__)
        tree = worker_tree(order, self.settings.tree_radix)
        nodes = {s.shard_id: s.nodes for s in self.shards.values()}
        spec = subtree_spec(me, tree, holders, nodes, self.refs.n_chunks)
        own = local_plugin(self.worker).shards_of(self.spec.run, self.epoch, holders.get(me, []))
        self.links.open(spec, own)
        # as many copies as the root has children, on other hosts than the driver's first
        self.replica_targets = replica_targets(me, order[1:], max(1, len(tree[me])))

    # -- steps -----------------------------------------------------------------------------------
    def reduce(self, op: str, *arrays: np.ndarray) -> np.ndarray:
        """The root sums of ``op`` at ``arrays``, surviving lost workers."""
        assert self.links is not None
        args = [np.ascontiguousarray(a, dtype=np.float64) for a in arrays]
        while True:
            t0 = time.perf_counter()
            try:
                values, seconds = self.links.step(op, args, timeout=self._step_deadline())
                break
            except WorkerLost as exc:
                self._recover(exc)
            except StepFailed as exc:  # a streamed chunk's file changed: the one line that names it
                text = str(exc)
                if "SourceChanged: " in text:
                    raise DataError(text.split("SourceChanged: ", 1)[1]) from None
                raise
            except StepStopped as exc:  # Ctrl-C (or a cancelled fit) while the step was pending
                stop = KeyboardInterrupt(exc.reason)
                stop.message = exc.reason  # type: ignore[attr-defined]
                raise stop from None  # run_fit checkpoints the last completed step and says interrupted
        self.timing.append((time.perf_counter() - t0, max(seconds.values(), default=0.0)))
        if self.emitter is not None:
            self.emitter.worker_seconds = seconds
        return np.array(values[0], dtype=np.float64)  # a fresh array: received frames are read-only

    def _step_deadline(self) -> float | None:
        """``dlogit.engine.step-timeout`` in seconds for the next step (a multiple of the median of the
        last 100 steps once there are 5), or None."""
        st = self.settings
        if st.step_timeout is not None:
            return st.step_timeout
        if st.step_timeout_factor is None or len(self.timing) < 5:
            return None
        recent = [t for t, _ in itertools.islice(reversed(self.timing), 100)]
        return st.step_timeout_factor * max(float(np.median(recent)), 1e-3)

    def replicate(self, state: Any, history: dict[str, list[float]]) -> None:
        """``run_fit``'s ``on_step``: copy the solver state and history to ``replica_targets`` (the
        in-memory checkpoint), at most every ``replica-every`` seconds and at most ~5% of the time.

        An L-BFGS copy carries only the memory pairs pushed since the previous copy (the newest pair,
        or the few since then), which each replica adds to the copy it holds
        (:func:`~dlogit.checkpoint.merge_copy`), instead of the whole memory (``memory`` x 2 vectors).
        Every ``REPLICA_WHOLE_EVERY``-th copy, the first one and the first after the targets change
        are whole: the copies go without a reply, so a replica that missed one (a dropped message, a
        new target) cannot complete the next ones and keeps its older whole copy until a whole one
        comes -- at most ``REPLICA_WHOLE_EVERY`` copies (~8 x ``replica-every``) stale."""
        now = time.monotonic()
        if not self.replica_targets or now - self._last_replica < max(self.settings.replica_every,
                                                                      20.0 * self._replica_cost):
            return
        from distributed.protocol import ToPickle

        from dlogit.checkpoint import state_copy

        assert self.links is not None
        t0 = time.perf_counter()
        targets = tuple(self.replica_targets)
        mark = self._replica_mark
        whole = mark is None or mark[0] != targets or self._replica_copies % REPLICA_WHOLE_EVERY == 0
        copy = state_copy(state, None if whole or mark is None else (mark[1], mark[2]))
        pairs = copy.get("pairs") or copy.get("delta", {}).get("pairs")
        payload = ToPickle({**copy, "history": {k: list(v) for k, v in history.items()},
                            "resumed_from": self.resumed_from})
        with contextlib.suppress(WorkerLost):  # a lost worker shows in the next step
            self.links.control({w: {"epoch": self.epoch, "n_iter": int(state.n_iter), "payload": payload}
                                for w in targets}, "checkpoint", reply=False, missing_ok=True)
        self._replica_copies += 1
        self._replica_mark = None if pairs is None else (targets, int(state.n_iter), int(pairs[1]))
        self._replica_cost = time.perf_counter() - t0
        self._last_replica = time.monotonic()

    # -- faults ----------------------------------------------------------------------------------
    def _superseded_or_stopped(self, exc: WorkerLost) -> None:
        """Before recovering from ``exc``: a fit that was asked to stop (or dropped) stops at this step
        boundary, and a driver that a newer one replaced changes nothing (it was frozen, and woke up)."""
        reason = self.stop() if self.stop is not None else None
        plugin = local_plugin(self.worker)
        if reason is not None or self.spec.run in plugin.ended:
            stop = KeyboardInterrupt(reason or "interrupted")
            stop.message = reason or "interrupted"  # type: ignore[attr-defined]
            raise stop from None  # run_fit checkpoints the last completed step and says interrupted
        state = plugin.runs.get(self.spec.run)
        listed = self.client.scheduler_info(n_workers=-1)["workers"]
        if (state is not None and state.epoch > self.epoch) or self.worker.address not in listed:
            raise ClusterError(f"this driver of fit {self.spec.run} (epoch {self.epoch}) was replaced by a "
                               f"newer one; it leaves the cluster as it is ({exc})") from None

    def _recover(self, exc: WorkerLost) -> None:
        assert self.links is not None
        self._superseded_or_stopped(exc)
        limit = self.settings.max_recoveries
        self.recoveries += 1
        if self.recoveries > limit:
            raise ClusterError(f"lost workers {self.recoveries} times during the fit (last: {exc}); "
                               f"giving up (dlogit.engine.max-recoveries={limit})") from exc
        self.links.close_tree()
        if exc.worker == self.worker.address:
            raise ClusterError(f"the driver's own worker failed a step: {exc}") from exc
        if isinstance(exc, ShardsMissing):  # up, but restarted: its chunks are attached again
            self._notice(f"worker {exc.worker} {exc.why} (restarted?); its chunks attached again")
            self._reattach([s for s in self.shards.values() if s.worker == exc.worker], self._alive())
            return
        listed = exc.worker in self._alive()
        if listed and exc.silent and self.settings.remove_silent_workers:  # opt-in: frozen, it would
            # hold every later step of every fit
            self._notice(f"worker {exc.worker} failed a step ({exc.why}); removed from the cluster "
                         "(dlogit.engine.remove-silent-workers), its chunks moved to the other workers")
            with contextlib.suppress(Exception):
                self.client.run_on_scheduler(scheduler_functions()["remove"], exc.worker)
        elif listed:  # the cluster keeps it (Dask's own worker-ttl judges it): this fit goes on without it
            if exc.silent and not exc.wedged and refs_are_futures(self.refs):  # frozen: its chunks cannot
                # be fetched from it, Dask computes them again elsewhere (a wedged worker's loop still
                # serves them; source ranges are read again by their new holder)
                refs = self.refs
                keys = [k for s in self.shards.values() if s.worker == exc.worker for i in s.indices
                        for k in (refs.x[i], refs.y[i], *(() if refs.w is None else (refs.w[i],)))]
                try:
                    self.client.run_on_scheduler(scheduler_functions()["forget"], keys, exc.worker,
                                                 sorted(self.excluded))
                except Exception as err:  # noqa: BLE001 - said, not hidden: the fit may then wait for it
                    self._notice(f"could not ask the scheduler to recompute the chunks of {exc.worker} "
                                 f"elsewhere ({type(err).__name__}: {err})")
            self._notice(f"worker {exc.worker} failed a step ({exc.why}); dropped from this fit (not from "
                         "the cluster), its chunks moved to the other workers")
        else:
            self._notice(f"lost worker {exc.worker}; its chunks moved to the other workers and the step "
                         "retried")
        self.excluded.add(exc.worker)
        deadline = time.monotonic() + self.settings.recover_timeout
        while True:
            alive = self._alive()
            if alive:
                break
            if time.monotonic() > deadline:
                raise ClusterError("no Dask workers left to continue the fit") from exc
            time.sleep(0.2)
        # the workers that went with it (a whole host) are out of the fit too: nothing (the final drop,
        # a state copy) waits a heartbeat on connecting to them
        self.excluded.update(w for w in self.touched if w not in alive)
        self._reattach([s for s in self.shards.values() if s.worker not in alive], alive)

    def _reattach(self, lost: list[ShardInfo], alive: list[str]) -> None:
        """Forget the ``lost`` shards, spread every chunk no shard holds over ``alive`` workers, attach
        and prepare them there (Dask recomputes lost chunks from their graph), link the tree again."""
        for s in lost:
            self.shards.pop(s.shard_id, None)
            self.kernels.pop(s.shard_id, None)
            fut = self.attached.pop(s.shard_id, None)
            if fut is not None:
                fut.release()
        covered = {i for s in self.shards.values() for i in s.indices}
        orphans = [i for i in range(self.refs.n_chunks) if i not in covered]
        targets = [w for w in alive if w not in {s.worker for s in lost}] or alive
        moved_pos = balanced_ranges([self.refs.rows[i] for i in orphans], targets) if orphans else {}
        moved = {w: [orphans[p] for p in pos] for w, pos in moved_pos.items()}
        try:
            self._attach(moved, prepare=(self.spec, self.plan, self.curvature))
            self._open_tree()
        except WorkerLost as again:
            self._recover(again)
        except (DataError, ClusterError):
            raise
        except Exception as again:  # noqa: BLE001 - a worker died while re-attaching: try again
            self._recover(WorkerLost(lost[0].worker if lost else "?",
                                     f"re-attach failed: {type(again).__name__}: {again}"))

    # -- the end ---------------------------------------------------------------------------------
    def close(self) -> None:
        links = self.links
        if links is None:
            return
        links.close_tree()
        with contextlib.suppress(Exception):
            alive = set(self._alive()) if self.client is not None else set()
            links.control({w: {"epoch": self.epoch} for w in sorted((self.touched | alive) - self.excluded)},
                          "drop", missing_ok=True)
        with contextlib.suppress(Exception):  # this process's own state, whatever happened above
            plugin = local_plugin(self.worker)
            state = plugin.runs.get(self.spec.run)
            if state is None or state.epoch <= self.epoch:
                plugin.drop(self.spec.run)
        for fut in self.attached.values():
            with contextlib.suppress(Exception):
                fut.release()
        self.attached.clear()
        links.close()
        self.links = None


def _needs_labels(path: Any) -> bool:
    """:func:`dlogit.cv.needs_labels`, importing dlogit.cv only for a path (a plain fit's workers load
    none of it)."""
    if path is None:
        return False
    from dlogit.cv import needs_labels

    return needs_labels(path)


def refs_are_futures(refs: ChunkRefs) -> bool:
    """Whether the fit's chunks are Dask futures (else source ranges each holder reads itself)."""
    return refs.stream is None


class _TreeEvaluator:
    """The loop's :class:`~dlogit.training.Evaluator` over the tree of workers."""

    def __init__(self, driver: Driver, kernel: str) -> None:
        self.driver = driver
        self.kernel = kernel

    def sums(self, theta: np.ndarray) -> np.ndarray:
        return self.driver.reduce("sums", theta)

    def hvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.driver.reduce("hvp", theta, v)


class _TreeFoldSource:
    """A cross-validated path's :class:`~dlogit.cv.FoldSource` over the tree of workers."""

    def __init__(self, driver: Driver, n_folds: int) -> None:
        self.driver = driver
        self.n_folds = n_folds

    @staticmethod
    def _mult(mult: np.ndarray | None) -> np.ndarray:
        return np.zeros(0) if mult is None else np.asarray(mult, dtype=np.float64)

    def fold_sums(self, thetas: np.ndarray, mult: np.ndarray | None, models: list[int]) -> np.ndarray:
        return self.driver.reduce("fold_sums", thetas, np.asarray(models, float), self._mult(mult))

    def fold_hvp(self, thetas: np.ndarray, vs: np.ndarray, mult: np.ndarray | None,
                 models: list[int]) -> np.ndarray:
        return self.driver.reduce("fold_hvp", thetas, vs, np.asarray(models, float), self._mult(mult))

    def fold_scores(self, thetas: np.ndarray) -> np.ndarray:
        return self.driver.reduce("fold_scores", thetas)

    def class_weight_sums(self, n_classes: int) -> np.ndarray:
        return self.driver.reduce("fold_class_sums", np.array([float(n_classes)]))


def scheduler_functions() -> dict[str, Any]:
    """Functions run on the scheduler (``run_on_scheduler``), defined here so that they travel by
    value: the scheduler need not have dlogit installed.

    ``remove(address)`` treats a worker that stopped answering as dead (its keys are recomputed, its
    tasks rescheduled); ``silence(key)`` is ``(worker, seconds since the scheduler last heard from
    it)`` for the worker running task ``key``, or ``None``; ``forget(keys, address)`` tells the scheduler
    that a silent worker no longer holds ``keys`` (a fit's chunks: Dask computes them again elsewhere;
    the worker stays in the cluster).
    """

    async def remove(address: str, dask_scheduler: Any = None) -> None:
        import time as _time

        await dask_scheduler.remove_worker(address=address, stimulus_id=f"dlogit-unresponsive-{_time.time()}",
                                           close=True)

    def forget(keys: list[Any], address: str, excluded: list[str] = (), dask_scheduler: Any = None) -> None:
        import time as _time

        stimulus = f"dlogit-silent-{_time.time()}"
        others = {a for a in dask_scheduler.workers if a != address and a not in excluded}
        for key in keys:  # as if the worker had released them: recomputed where no other replica is,
            ts = dask_scheduler.tasks.get(key)  # preferably on another worker of the fit
            # a chunk that cannot be recomputed (scattered: no run_spec) is never released: its only
            # copy is on the silent worker, and releasing it would lose the user's data
            if ts is None or not others or getattr(ts, "run_spec", None) is None:
                continue
            # loose: a preference, not a rule -- when these workers are gone the key still computes
            # anywhere (strict restrictions would leave the user's key unrunnable for good)
            ts.worker_restrictions = set(others)
            ts.loose_restrictions = True
            dask_scheduler.release_worker_data(key, address, stimulus)

    def silence(key: Any, dask_scheduler: Any = None) -> tuple[str, float] | None:
        import time as _time

        ts = dask_scheduler.tasks.get(key)
        ws = getattr(ts, "processing_on", None)
        if ws is None:
            return None
        return ws.address, _time.time() - ws.last_seen

    return {"remove": remove, "forget": forget, "silence": silence}
