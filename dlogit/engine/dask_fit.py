"""Fits on Dask arrays: ``worker-local`` (the whole fit is one task on one worker) and ``distributed``
(each worker keeps a shard resident; the driver steps them over the shard transport).

Both start with the validation pass on the workers (:meth:`dlogit.engine.shard.Shard.stats`): the
classes, the weights and the preconditioner are decided from its merged summaries
(:func:`dlogit.spec.make_plan`), then the chunks are prepared where they are and the solver runs.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import dask
import numpy as np

from dlogit.engine import control
from dlogit.engine.local import fit_shard, needs_curvature
from dlogit.engine.placement import _unalias, balanced_ranges
from dlogit.engine.routing import listen
from dlogit.engine.shard import Shard, merged_stats
from dlogit.engine.transport import OP_HVP, OP_SUMS, Link, ShardServer, WorkerLost, drop_shards
from dlogit.errors import ClusterError, ConfigError, DataError, Interrupted
from dlogit.events import TOPIC
from dlogit.objective import complete_tree
from dlogit.spec import FitPlan, FitResult, FitSpec, make_plan
from dlogit.training import run_fit

logger = logging.getLogger("dlogit.engine")

Callback = Callable[[dict[str, Any]], None]


class SchedulerLost(ClusterError):
    """The client lost its connection to the Dask scheduler during a fit."""


# --------------------------------------------------------------------------------------------------
# tasks run on the workers


def _worker_fit(spec: FitSpec, n_chunks: int, xs: list[Any], ys: list[Any], ws: list[Any] | None,
                info: dict[str, Any]) -> tuple[str, Any]:
    """Worker-local mode: the whole fit as one task. Returns ``("ok", FitResult)`` or
    ``("interrupted", (message, checkpoint))`` (a task must not raise KeyboardInterrupt)."""
    from distributed import get_worker

    worker = get_worker()
    shard = Shard({i: (xs[i], ys[i], None if ws is None else ws[i]) for i in range(n_chunks)}, n_chunks,
                  where=f"worker {worker.address}")

    def send(msg: dict[str, Any]) -> None:
        worker.log_event(TOPIC, msg)

    def hook(emitter: Any) -> None:
        emitter.local_worker = worker.address

    try:
        result = fit_shard(shard, spec, send, mode="worker-local", weighted=ws is not None,
                           info={**info, "workers": [worker.address]}, stop=control.stop_check(spec.run),
                           emitter_hook=hook)
        return "ok", result
    except Interrupted as exc:
        return "interrupted", (exc.message, exc.checkpoint)
    finally:
        control.clear(spec.run)


def _worker_ssl(worker: Any) -> ssl.SSLContext | None:
    if not worker.address.startswith("tls://"):
        return None
    return worker.security.get_listen_args("worker").get("ssl_context")


def _attach(token: bytes, indices: list[int], n_chunks: int, xs: list[Any], ys: list[Any],
            ws: list[Any] | None) -> dict[str, Any]:
    """Distributed mode: hold this worker's chunks as a shard, validate and summarize them."""
    from distributed import get_worker

    worker = get_worker()
    chunks = {i: (x, y, None if ws is None else ws[j]) for j, (i, x, y) in enumerate(zip(indices, xs, ys))}
    shard = Shard(chunks, n_chunks, where=f"worker {worker.address}")
    stats = shard.stats()
    if worker.address.startswith("inproc://"):  # workers in this process (processes=False)
        host = "127.0.0.1"
    else:
        host = worker.address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    server = ShardServer.get(host, _worker_ssl(worker))
    server.add(token, shard)
    return {"worker": worker.address, "host": server.host, "port": server.port, "nodes": shard.nodes,
            "stats": stats}


def _prepare(token: bytes, spec: FitSpec, plan: FitPlan, curvature: bool) -> str:
    """Distributed mode: build the shard's evaluators from the driver's plan; its kernel names."""
    inst = ShardServer._instance
    shard = inst.shards.get(token) if inst is not None else None
    if shard is None:
        raise LookupError("shard not on this worker")
    kernel = shard.prepare(spec, plan, curvature)
    inst.sizes[token] = plan.layout.size
    return kernel


# --------------------------------------------------------------------------------------------------
# the client side


class DaskFit:
    """One fit on Dask arrays through a :class:`distributed.Client`."""

    def __init__(self, client: Any, X: Any, y: Any, w: Any, spec: FitSpec, callback: Callback | None,
                 mode: str = "auto") -> None:
        if X.ndim != 2:
            raise DataError(f"X must be 2-D (rows x features), got {X.ndim}-D")
        if y.ndim != 1:
            raise DataError(f"labels must be 1-D, got {y.ndim}-D")
        if X.numblocks[1] != 1:
            X = X.rechunk({1: -1})
        y = _align_rows(X, y, "labels")
        w = None if w is None else _align_rows(X, w, "sample_weight")
        self.client = client
        self.X = X
        self.spec = spec
        self.callback = callback
        self.mode = mode
        self.x_del = _unalias(list(X.to_delayed().ravel()))
        self.y_del = _unalias(list(y.to_delayed().ravel()))
        self.w_del = None if w is None else _unalias(list(w.to_delayed().ravel()))
        self.n_chunks = len(self.x_del)
        self.rows = [float(r) for r in X.chunks[0]]
        self.d = int(X.shape[1])
        self.itemsize = X.dtype.itemsize if X.dtype.kind == "f" else 8
        meta = getattr(X, "_meta", None)
        self.on_gpu = meta is not None and type(meta).__module__.startswith("cupy")
        self.links: list[Link] = []
        self.infos: list[dict[str, Any]] = []
        self._emitter: Any = None
        self.worker_seconds: dict[str, float] = {}
        self.excluded: set[str] = set()
        self.tokens: list[bytes] = []
        self.recoveries = 0
        self.plan: FitPlan | None = None
        self.info = {"n_chunks": self.n_chunks, "dtype": str(X.dtype)}

    # -- helpers ---------------------------------------------------------------------------------
    def _workers(self) -> list[str]:
        if self.client.status in ("closing", "closed"):
            raise SchedulerLost("lost the Dask scheduler")
        try:
            info = self.client.scheduler_info(n_workers=-1)
        except Exception as exc:  # noqa: BLE001 - the comm to the scheduler broke
            raise SchedulerLost(f"lost the Dask scheduler ({type(exc).__name__})") from None
        if "workers" not in info:
            raise SchedulerLost("lost the Dask scheduler")
        return sorted(w for w in info["workers"] if w not in self.excluded)

    def _choose_mode(self, workers: list[str]) -> str:
        if self.mode != "auto":
            return self.mode
        cfg = "dlogit.engine.worker-local-bytes-gpu" if self.on_gpu else "dlogit.engine.worker-local-bytes"
        limit = dask.utils.parse_bytes(dask.config.get(cfg))
        nbytes = sum(self.rows) * self.d * self.itemsize
        if len(workers) == 1 or self.n_chunks == 1 or (np.isfinite(nbytes) and nbytes <= limit):
            return "worker-local"
        return "distributed"

    def _holders(self) -> dict[int, str]:
        """Chunk index -> worker already holding its X chunk (persisted data)."""
        from distributed import futures_of, wait

        futures = futures_of(self.X)  # who_has takes futures, not keys
        if not futures:
            return {}
        with self.client.as_current():
            wait(futures)  # a persist still running: use the chunks where they land
        try:
            who = self.client.who_has(futures)
        except Exception:  # noqa: BLE001 - not persisted: no holders
            return {}
        keys = [d.key for d in self.x_del]
        return {i: sorted(who[k])[0] for i, k in enumerate(keys) if who.get(k)}

    def _compute_on(self, assign: dict[str, list[int]]) -> None:
        n = self.n_chunks
        self.xs: list[Any] = [None] * n
        self.ys: list[Any] = [None] * n
        self.ws: list[Any] | None = None if self.w_del is None else [None] * n
        for w, idx in assign.items():
            dels = [self.x_del[i] for i in idx] + [self.y_del[i] for i in idx]
            if self.w_del is not None:
                dels += [self.w_del[i] for i in idx]
            futs = self.client.compute(dels, workers=[w], allow_other_workers=True)
            k = len(idx)
            for j, i in enumerate(idx):
                self.xs[i], self.ys[i] = futs[j], futs[k + j]
                if self.ws is not None:
                    self.ws[i] = futs[2 * k + j]

    def _forward_events(self) -> tuple[Callable[[], None], threading.Event]:
        run = self.spec.run
        done = threading.Event()
        cb = self.callback

        def handler(msg: dict[str, Any]) -> None:
            if cb is not None:
                cb(msg)
            if msg.get("type") == "end":
                done.set()

        router = listen(self.client)
        router.handlers[run] = handler
        return (lambda: router.handlers.pop(run, None)), done

    # -- entry point -----------------------------------------------------------------------------
    def run(self) -> FitResult:
        workers = self._workers()
        if not workers:
            raise ClusterError("the Dask cluster has no workers")
        if self.n_chunks == 0:
            raise DataError("no rows to train on (the data is empty)")
        mode = self._choose_mode(workers)
        if mode == "worker-local":
            return self._run_worker_local(workers)
        if mode == "distributed":
            return self._run_distributed(workers)
        raise ConfigError(f"unknown engine mode {mode!r}")

    def _run_worker_local(self, workers: list[str]) -> FitResult:
        holders = self._holders()
        if holders:
            counts: dict[str, int] = {}
            for w in holders.values():
                counts[w] = counts.get(w, 0) + 1
            target = max(sorted(counts), key=lambda w: counts[w])
        else:
            target = workers[0]
        unsubscribe, done = self._forward_events()
        fut = None
        try:
            # the chunks and the fit go to the scheduler in one message: no client round trip between
            fit = dask.delayed(_worker_fit, pure=False)(self.spec, self.n_chunks, self.x_del, self.y_del,
                                                        self.w_del, self.info,
                                                        dask_key_name=f"dlogit-fit-{self.spec.run}")
            fut = self.client.compute(fit, workers=[target], allow_other_workers=True)
            try:
                kind, value = fut.result()
            except KeyboardInterrupt as exc:
                kind, value = self._stop_remote(fut, exc)
            except Exception as exc:
                if self.client.status in ("closing", "closed") or _is_comm_error(exc):
                    raise SchedulerLost("lost the Dask scheduler during the fit") from None
                raise
            done.wait(timeout=5.0)  # let the last progress events reach the callback
            if kind == "interrupted":
                message, path = value
                raise Interrupted(message, None, path)
            return value
        finally:
            unsubscribe()

    def _stop_remote(self, fut: Any, exc: KeyboardInterrupt) -> tuple[str, Any]:
        """Ctrl-C / SIGTERM here: stop the fit on its worker at a step boundary (it writes its
        checkpoint), wait briefly for it, and report it interrupted."""
        signum = getattr(exc, "signum", None)
        with contextlib.suppress(Exception):
            self.client.run(control.request_stop, self.spec.run, "interrupted")
        try:
            kind, value = fut.result(timeout=5.0)
        except Exception:  # noqa: BLE001 - it did not answer in time: cancel it
            with contextlib.suppress(Exception):
                fut.cancel()
            kind, value = "interrupted", ("interrupted", None)
        if kind == "ok":
            return kind, value
        message, path = value
        raise Interrupted(message, signum, path)

    # -- distributed mode ------------------------------------------------------------------------
    def _client_ssl(self) -> ssl.SSLContext | None:
        if not str(self.client.scheduler.address).startswith("tls://"):
            return None
        return self.client.security.get_connection_args("client").get("ssl_context")

    def _attach_all(self, assign: dict[str, list[int]]) -> list[dict[str, Any]]:
        futs = []
        tokens = []
        for w, idx in assign.items():
            token = secrets.token_bytes(16)  # one per shard: a shard can never stand in for another
            tokens.append(token)
            self.tokens.append(token)  # dropped on every worker at the end, even if attaching fails
            futs.append(self.client.submit(
                _attach, token, idx, self.n_chunks, [self.xs[i] for i in idx], [self.ys[i] for i in idx],
                None if self.ws is None else [self.ws[i] for i in idx], workers=[w],
                allow_other_workers=True, pure=False,
                key=f"dlogit-attach-{self.spec.run}-{secrets.token_hex(4)}"))
        infos = self._settle(futs, "load their shards")
        for info, token in zip(infos, tokens):
            info["token"] = token
        return infos

    def _settle(self, futs: list[Any], what: str) -> list[Any]:
        timeout = dask.utils.parse_timedelta(dask.config.get("dlogit.engine.attach-timeout"))
        for f in futs:  # all settle first: no shard may register after the clean-up
            with contextlib.suppress(Exception):
                f.exception(timeout=timeout)
        if not all(f.done() for f in futs):
            for f in futs:
                f.cancel()
            raise ClusterError(f"the workers did not {what} within {timeout:g}s "
                               "(dlogit.engine.attach-timeout)")
        return [f.result() for f in futs]

    def _prepare_all(self, infos: list[dict[str, Any]]) -> str:
        curvature = needs_curvature(self.spec.solver)
        futs = [self.client.submit(_prepare, info["token"], self.spec, self.plan, curvature,
                                   workers=[info["worker"]], allow_other_workers=False, pure=False,
                                   key=f"dlogit-prepare-{self.spec.run}-{secrets.token_hex(4)}")
                for info in infos]
        kernels = self._settle(futs, "prepare their shards")
        return "+".join(sorted({k for ks in kernels for k in ks.split("+") if k}))

    def _connect(self, infos: list[dict[str, Any]]) -> None:
        timeout = dask.utils.parse_timedelta(dask.config.get("dlogit.engine.heartbeat"))
        ctx = self._client_ssl()
        links = []
        try:
            for info in infos:
                links.append(Link(info, ctx, timeout))
        except OSError as exc:
            for link in links:
                link.close()
            raise ClusterError(f"cannot open the step connection to worker {info['worker']} "
                               f"({info['host']}:{info['port']}): {exc}") from None
        self.links = links
        self.infos = infos

    def _close_links(self) -> None:
        for link in self.links:
            link.close()
        self.links = []

    def _step(self, op: int, payload: bytes, width: int) -> np.ndarray:
        parts: dict[tuple[int, int], np.ndarray] = {}
        seconds: dict[str, float] = {}
        for link in self.links:
            link.request(op, payload)
        for link in self.links:
            arr = np.frombuffer(link.response(), dtype=np.float64)
            if arr.size != 1 + len(link.nodes) * width:
                raise ClusterError(f"worker {link.worker} answered {arr.size} numbers for "
                                   f"{len(link.nodes)} tree nodes")
            seconds[link.worker] = float(arr[0])
            parts.update(zip(link.nodes, arr[1:].reshape(-1, width)))
        self.worker_seconds = seconds
        if self._emitter is not None:
            self._emitter.worker_seconds = seconds
        return complete_tree(parts, self.n_chunks)

    def _retrying(self, op: int, payload: bytes, width: int) -> np.ndarray:
        while True:
            try:
                return self._step(op, payload, width)
            except WorkerLost as exc:
                self._recover(exc)

    def _recover(self, exc: WorkerLost) -> None:
        limit = int(dask.config.get("dlogit.engine.max-recoveries"))
        self.recoveries += 1
        if self.recoveries > limit:
            raise ClusterError(f"lost workers {self.recoveries} times during the fit (last: {exc}); "
                               f"giving up (dlogit.engine.max-recoveries={limit})") from exc
        self._close_links()
        alive_before = self._workers()
        if exc.worker in alive_before:  # it stopped answering but the scheduler still lists it
            logger.warning("dlogit: worker %s did not answer within dlogit.engine.heartbeat; removing it "
                           "from the cluster and moving its chunks to the others", exc.worker)
            with contextlib.suppress(Exception):
                self.client.run_on_scheduler(_remove_worker, exc.worker)
        else:
            logger.warning("dlogit: lost worker %s; moving its chunks to the others and retrying the step",
                           exc.worker)
        self.excluded.add(exc.worker)
        deadline = time.monotonic() + dask.utils.parse_timedelta(
            dask.config.get("dlogit.engine.recover-timeout"))
        while True:
            alive = self._workers()
            if alive:
                break
            if time.monotonic() > deadline:
                raise ClusterError("no Dask workers left to continue the fit") from exc
            time.sleep(0.2)
        owner = {i: w for w, idx in self.assign.items() for i in idx}
        orphans = [i for i in range(self.n_chunks) if owner.get(i) not in alive]
        keep = {w: [i for i in idx if i not in orphans] for w, idx in self.assign.items() if w in alive}
        moved = balanced_ranges([self.rows[i] for i in orphans], alive)
        for w, pos in moved.items():
            keep.setdefault(w, []).extend(orphans[p] for p in pos)
        self.assign = {w: sorted(idx) for w, idx in keep.items() if idx}
        try:
            infos = self._attach_all(self.assign)
            self._prepare_all(infos)
        except Exception as again:  # noqa: BLE001 - another loss while re-attaching: try again
            if isinstance(again, (DataError, ConfigError, SchedulerLost)):  # not a lost worker
                raise
            self._recover(WorkerLost(exc.worker, f"re-attach failed: {again}"))
            return
        self._connect(infos)

    def _run_distributed(self, workers: list[str]) -> FitResult:
        holders = self._holders()
        if len(holders) == self.n_chunks:
            assign: dict[str, list[int]] = {}
            for i, w in sorted(holders.items()):
                assign.setdefault(w, []).append(i)
        else:
            assign = balanced_ranges(self.rows, workers)
        self.assign = assign
        self._compute_on(assign)
        try:
            infos = self._attach_all(assign)
            parts = {tuple(node): st for info in infos for node, st in info["stats"]}
            stats = merged_stats(parts, self.n_chunks)
            self.plan = make_plan(self.spec, stats, weighted_input=self.w_del is not None)
            kernel = self._prepare_all(infos)
            self._connect(infos)
            evaluator = _DistributedEvaluator(self, kernel)
            cb = self.callback

            def send(msg: dict[str, Any]) -> None:
                if cb is not None:
                    cb(msg)
                with contextlib.suppress(Exception):
                    self.client.log_event(TOPIC, msg)

            def hook(emitter: Any) -> None:
                self._emitter = emitter

            info = {**self.info, "workers": sorted(assign)}
            return run_fit(evaluator, self.spec, self.plan, send, mode="distributed", info=info,
                           emitter_hook=hook)
        finally:
            self._close_links()
            if self.tokens:
                with contextlib.suppress(Exception):
                    self.client.run(drop_shards, self.tokens)
            self.xs = self.ys = []
            self.ws = None


class _DistributedEvaluator:
    def __init__(self, fit: DaskFit, kernel: str) -> None:
        self.fit = fit
        self.kernel = kernel
        self.width_sums = fit.plan.layout.size + 1
        self.width_hvp = fit.plan.layout.size

    def sums(self, theta: np.ndarray) -> np.ndarray:
        payload = np.ascontiguousarray(theta, dtype=np.float64).tobytes()
        return self.fit._retrying(OP_SUMS, payload, self.width_sums)

    def hvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        payload = (np.ascontiguousarray(theta, dtype=np.float64).tobytes()
                   + np.ascontiguousarray(v, dtype=np.float64).tobytes())
        return self.fit._retrying(OP_HVP, payload, self.width_hvp)


async def _remove_worker(dask_scheduler: Any, address: str) -> None:
    """Run on the scheduler: treat a worker that stopped answering as dead (its keys are recomputed)."""
    await dask_scheduler.remove_worker(address=address, stimulus_id=f"dlogit-unresponsive-{time.time()}",
                                       close=True)


def _align_rows(X: Any, a: Any, what: str) -> Any:
    if a.numblocks[0] != X.numblocks[0] or (
        all(np.isfinite(X.chunks[0])) and all(np.isfinite(a.chunks[0])) and X.chunks[0] != a.chunks[0]
    ):
        if np.isfinite(X.shape[0]) and np.isfinite(a.shape[0]) and X.shape[0] != a.shape[0]:
            raise DataError(f"X has {X.shape[0]} rows but {what} has {a.shape[0]} entries")
        a = a.rechunk((X.chunks[0],))
    return a


def _is_comm_error(exc: BaseException) -> bool:
    from distributed.comm.core import CommClosedError

    return isinstance(exc, (CommClosedError, OSError)) or "CommClosed" in type(exc).__name__


def fit_dask(client: Any, X: Any, y: Any, w: Any, spec: FitSpec, callback: Callback | None = None,
             mode: str = "auto") -> FitResult:
    """Fit on Dask arrays through ``client`` (see the module docstring for ``mode``)."""
    from distributed import KilledWorker

    try:
        return DaskFit(client, X, y, w, spec, callback, mode=mode).run()
    except KilledWorker as exc:
        raise ClusterError(f"a worker died repeatedly while running the fit: {exc}") from exc
