"""Fits on Dask arrays, seen from the client: ``worker-local`` (the whole fit is one task on one
worker) and ``distributed`` (each worker keeps a shard resident; the driver runs as one task on a
worker and steps the shards over Dask's own comms: :mod:`dlogit.engine.driver`).

Either way the client only submits, receives the progress events (through the scheduler) and gets
the result: a client that reaches nothing but the scheduler -- behind Dask Gateway, a ``kubectl
port-forward``, an SSH tunnel, NAT -- trains as fast as one beside the cluster. It also keeps the
chunks' futures (so Dask recomputes a lost chunk from its graph), stops the fit at a step boundary
on Ctrl-C, and moves a driver whose worker has gone silent for ``dlogit.engine.heartbeat``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import dask
import numpy as np

from dlogit.config import setting
from dlogit.engine import control
from dlogit.engine.driver import ChunkRefs, EngineSettings, drive, scheduler_functions
from dlogit.engine.local import fit_shard
from dlogit.engine.placement import assign_chunks, resolve_aliases
from dlogit.engine.routing import listen
from dlogit.engine.shard import Shard
from dlogit.engine.transport import drop_run
from dlogit.errors import ClusterError, ConfigError, DataError, Interrupted
from dlogit.events import TOPIC
from dlogit.spec import FitResult, FitSpec

logger = logging.getLogger("dlogit.engine")

Callback = Callable[[dict[str, Any]], None]


class ClusterWarning(UserWarning):
    """Something happened to the cluster during a fit that the fit survived (a worker lost or dropped
    from the fit, a driver restarted): one line, also sent as a ``warning`` progress event."""


class SchedulerLost(ClusterError):
    """The client lost its connection to the Dask scheduler during a fit."""


# --------------------------------------------------------------------------------------------------
# tasks run on the workers


def _worker_fit(spec: FitSpec, n_chunks: int, xs: list[Any], ys: list[Any], ws: list[Any] | None,
                info: dict[str, Any], stream: Any = None) -> tuple[str, Any]:
    """Worker-local mode: the whole fit as one task. Returns ``("ok", FitResult)`` or
    ``("interrupted", (message, checkpoint))`` (a task must not raise KeyboardInterrupt). With
    ``stream`` the chunks are source ranges this worker reads itself (:mod:`dlogit.engine.residency`)."""
    from distributed import get_worker

    worker = get_worker()
    where = f"worker {worker.address}"
    if stream is not None:
        from dlogit.engine.residency import worker_budget

        shard = Shard(stream.chunks(list(range(n_chunks))), n_chunks, where=where,
                      budget=worker_budget(stream.cache, worker))
        shard.load()  # reads and validates once; decides what stays in memory
        info = {**info, "cache": shard.residency}
    else:
        shard = Shard({i: (xs[i], ys[i], None if ws is None else ws[i]) for i in range(n_chunks)}, n_chunks,
                      where=where)

    def send(msg: dict[str, Any]) -> None:
        worker.log_event(TOPIC, msg)

    def hook(emitter: Any) -> None:
        emitter.local_worker = worker.address

    try:
        result = fit_shard(shard, spec, send, mode="worker-local",
                           weighted=ws is not None or (stream is not None and stream.weighted),
                           info={**info, "workers": [worker.address]}, stop=control.stop_check(spec.run),
                           emitter_hook=hook)
        return "ok", result
    except Interrupted as exc:
        return "interrupted", (exc.message, exc.checkpoint)
    finally:
        shard.close()
        control.clear(spec.run)


def _check_checkpoint(directory: str, resume: bool, client_view: dict[str, Any] | None,
                      dask_worker: Any = None) -> None:
    """On the worker that will run the fit's loop (``client.run``: at once, never queued behind other
    tasks nor moved elsewhere): :func:`dlogit.checkpoint.check_where_written`."""
    import socket

    from dlogit.checkpoint import check_where_written

    check_where_written(directory, resume, client_view,
                        f"worker {dask_worker.address} (host {socket.gethostname()})")


# --------------------------------------------------------------------------------------------------
# the client side


class DaskFit:
    """One fit on Dask arrays through a :class:`distributed.Client`."""

    def __init__(self, client: Any, X: Any, y: Any, w: Any, spec: FitSpec, callback: Callback | None,
                 mode: str = "auto", path: Any = None) -> None:
        if X.ndim != 2:
            raise DataError(f"X must be 2-D (rows x features), got {X.ndim}-D")
        if y.ndim != 1:
            raise DataError(f"labels must be 1-D, got {y.ndim}-D")
        self.stream = _stream_plan(X, y, w)
        if X.numblocks[1] != 1:
            X = X.rechunk({1: -1})
        y = _align_rows(X, y, "labels")
        w = None if w is None else _align_rows(X, w, "sample_weight")
        self.client = client
        self.X = X
        self.path = path  # a cross-validated path (dlogit.cv.PathSpec): always the on-cluster driver
        self.spec = spec
        self.callback = callback
        self.mode = mode
        self.x_del = resolve_aliases(list(X.to_delayed().ravel()))
        self.y_del = resolve_aliases(list(y.to_delayed().ravel()))
        self.w_del = None if w is None else resolve_aliases(list(w.to_delayed().ravel()))
        self.n_chunks = len(self.x_del)
        self.rows = [float(r) for r in X.chunks[0]]
        self.d = int(X.shape[1])
        self.itemsize = X.dtype.itemsize if X.dtype.kind == "f" else 8
        from dask.array.utils import meta_from_array  # here: a worker running _worker_fit loads no dask.array

        self.on_gpu = type(meta_from_array(X)).__module__.startswith("cupy")
        self.settings = EngineSettings.from_config()
        self.xs: list[Any] = []
        self.ys: list[Any] = []
        self.ws: list[Any] | None = None
        self.info = {"n_chunks": self.n_chunks, "dtype": str(X.dtype)}
        self.notices: list[str] = []  # the fit's "warning" events, warned about when it ends

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
        return sorted(info["workers"])

    def _choose_mode(self, workers: list[str]) -> str:
        if self.mode != "auto":
            return self.mode
        cfg = "dlogit.engine.worker-local-bytes-gpu" if self.on_gpu else "dlogit.engine.worker-local-bytes"
        limit = dask.utils.parse_bytes(setting(cfg))
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
        return {i: min(who[k]) for i, k in enumerate(keys) if who.get(k)}

    def _compute_on(self, assign: dict[str, list[int]]) -> None:
        n = self.n_chunks
        self.xs = [None] * n
        self.ys = [None] * n
        self.ws = None if self.w_del is None else [None] * n
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

    def _forward_events(self) -> tuple[Callable[[], object], threading.Event]:
        run = self.spec.run
        done = threading.Event()
        cb = self.callback

        path = self.path is not None

        def handler(msg: dict[str, Any]) -> None:
            if cb is not None:
                cb(msg)
            # the last event of a fit is its end; of a path, the path event of its last point (each
            # point's fits end before it)
            kind = msg.get("type")
            if kind == "warning" and msg.get("message"):
                self.notices.append(str(msg["message"]))
            if (kind == "path" and msg.get("done")) or (kind == "end" and (
                    msg.get("run") == run or (path and msg.get("status") in ("interrupted", "failed")))):
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
        if self.stream is not None and self._holders():  # persisted: the chunks stay where they are
            self.stream = None
        mode = "distributed" if self.path is not None else self._choose_mode(workers)
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
        # the chunks and the fit go to the scheduler in one message: no client round trip between
        if self.stream is not None:  # the worker reads the chunks itself (no Dask futures hold them)
            fit = dask.delayed(_worker_fit, pure=False)(self.spec, self.n_chunks, None, None, None, self.info,
                                                        self.stream, dask_key_name=f"dlogit-fit-{self.spec.run}")
            return self._run_task(fit, target)
        fit = dask.delayed(_worker_fit, pure=False)(self.spec, self.n_chunks, self.x_del, self.y_del,
                                                    self.w_del, self.info,
                                                    dask_key_name=f"dlogit-fit-{self.spec.run}")
        return self._run_task(fit, target)

    def _stop_remote(self, fut: Any, exc: KeyboardInterrupt) -> tuple[str, Any]:
        """Ctrl-C / SIGTERM here: stop the fit on its worker at a step boundary (it writes its
        checkpoint), wait briefly for it, and report it interrupted."""
        signum = getattr(exc, "signum", None)
        with contextlib.suppress(Exception):
            self.client.run(control.request_stop, self.spec.run, "interrupted", wait=True,
                            workers=self._task_workers(fut))
        # the fit stops when its current step ends: wait for that (a long step takes its time), but
        # not forever, and a second Ctrl-C gives up at once
        try:
            kind, value = fut.result(timeout=max(5.0, 2.0 * self.settings.heartbeat))
        except (Exception, KeyboardInterrupt):  # noqa: BLE001 - it did not answer in time: cancel it
            with contextlib.suppress(Exception):
                fut.cancel()
            kind, value = "interrupted", ("interrupted", None)
        if kind == "ok":
            return kind, value
        message, path = value
        raise Interrupted(message, signum, path)

    def _task_workers(self, fut: Any) -> list[str] | None:
        """The worker running the fit's task (where its stop request matters), or None for all."""
        with contextlib.suppress(Exception):
            where = self.client.run_on_scheduler(scheduler_functions()["silence"], fut.key)
            if where:
                return [where[0]]
        return None

    # -- distributed mode ------------------------------------------------------------------------
    def _run_distributed(self, workers: list[str]) -> FitResult:
        """Place the chunks, have the workers compute them there (the client keeps their futures, so
        Dask recomputes a lost one from its graph), and run the fit's driver as one task on the
        worker holding the first chunk (:func:`dlogit.engine.driver.drive`)."""
        assign = assign_chunks(self.rows, workers, self._holders())
        target = next(w for w, idx in assign.items() if 0 in idx)
        if self.stream is not None:  # source ranges: each worker reads its own chunks
            refs = ChunkRefs((), (), None, tuple(self.rows), {w: list(idx) for w, idx in assign.items()},
                             stream=self.stream)
        else:
            self._compute_on(assign)
            refs = ChunkRefs(tuple(f.key for f in self.xs), tuple(f.key for f in self.ys),
                             None if self.ws is None else tuple(f.key for f in self.ws),
                             tuple(self.rows), {w: list(idx) for w, idx in assign.items()})
        try:
            task = dask.delayed(drive, pure=False)(self.spec, refs, self.settings, self.info, self.path,
                                                   dask_key_name=f"dlogit-fit-{self.spec.run}")
            return self._run_task(task, target)
        finally:
            self.xs = self.ys = []  # the chunks are released with their futures
            self.ws = None

    def _run_task(self, task: Any, target: str) -> FitResult:
        """Submit the fit's task and wait for it: progress events flow meanwhile; Ctrl-C stops it at a
        step boundary; a driver whose worker went silent for the heartbeat is moved elsewhere."""
        self._check_checkpoint_on(target)
        unsubscribe, done = self._forward_events()
        fut = None
        finished = False
        try:
            fut = self.client.compute(task, workers=[target], allow_other_workers=True)
            try:
                kind, value = self._wait(fut)
            except KeyboardInterrupt as exc:
                kind, value = self._stop_remote(fut, exc)
            except Exception as exc:
                lost = "scheduler-connection-lost" in str(exc) or self.client.status != "running"
                if lost or _is_comm_error(exc):
                    raise SchedulerLost("lost the Dask scheduler during the fit") from None
                raise
            finished = True
            done.wait(timeout=5.0)  # let the last progress events reach the callback
            if kind == "interrupted":
                message, path = value
                raise Interrupted(message, None, path)
            result: FitResult = value
            return result
        finally:
            unsubscribe()
            for message in dict.fromkeys(self.notices):  # each once, in the order they happened
                warnings.warn(message, ClusterWarning, stacklevel=2)
            self.notices.clear()
            if fut is not None and not finished:
                with contextlib.suppress(Exception):
                    fut.cancel()
                with contextlib.suppress(Exception):  # a driver that could not clean up after itself
                    self.client.run(drop_run, self.spec.run)

    def _check_checkpoint_on(self, target: str) -> None:
        """The checkpoint directory as the worker that will write it sees it, before anything runs (the
        client checked its own view; a path that is not shared fails here, naming the worker's host)."""
        ck = self.spec.checkpoint
        if ck is None:
            return
        from dlogit.checkpoint import checkpoint_path, read_meta

        view = None
        if ck.resume:
            meta = read_meta(checkpoint_path(ck.directory))
            view = {k: meta.get(k) for k in ("run", "step", "written")}
        self.client.run(_check_checkpoint, ck.directory, ck.resume, view, workers=[target])

    def _wait(self, fut: Any) -> tuple[str, Any]:
        """``fut.result()``, checking every ``heartbeat / 3`` seconds that the scheduler still hears
        from the worker running it; a silent one (frozen) is said once, and removed (Dask then reruns the
        task) only with ``dlogit.engine.remove-silent-workers``; else Dask's own ``worker-ttl`` judges it."""
        from distributed import TimeoutError as DaskTimeout

        heartbeat = self.settings.heartbeat
        poll = max(0.2, heartbeat / 3.0)
        fns = scheduler_functions()
        warned: set[str] = set()
        while True:
            t0 = time.monotonic()
            try:
                outcome: tuple[str, Any] = fut.result(timeout=poll)
                return outcome
            except (DaskTimeout, TimeoutError):
                pass
            if time.monotonic() - t0 > 3 * poll:  # this process was suspended: judge nothing
                continue
            try:
                seen = self.client.run_on_scheduler(fns["silence"], fut.key)
            except Exception:  # noqa: BLE001 - the watchdog is best effort; the scheduler is checked below
                seen = None
            if seen is not None and seen[1] > heartbeat and seen[0] not in warned:
                warned.add(seen[0])
                if self.settings.remove_silent_workers:
                    message = (f"the worker running the fit's driver ({seen[0]}) was silent for "
                               f"{seen[1]:.0f}s "
                               "(dlogit.engine.heartbeat); removed from the cluster "
                               "(dlogit.engine.remove-silent-workers), the fit continues elsewhere")
                    with contextlib.suppress(Exception):
                        self.client.run_on_scheduler(fns["remove"], seen[0])
                else:
                    message = (f"the worker running the fit's driver ({seen[0]}) has been silent for "
                               f"{seen[1]:.0f}s (dlogit.engine.heartbeat); the fit waits for it, or for Dask "
                               "to remove it (distributed.scheduler.worker-ttl) and restart the driver")
                logger.warning("dlogit: %s", message)
                self.notices.append(message)


def _stream_plan(X: Any, y: Any, w: Any) -> Any:
    """The fit's chunks as source ranges (:class:`~dlogit.engine.residency.Streamed`) when X, y and w
    come straight from :func:`dlogit.data.read_data` (see :func:`dlogit.io.stream.stream_sources`),
    else ``None``. Arrays that dlogit.data did not make cannot be: no import then."""
    import sys

    if "dlogit.data" not in sys.modules:
        return None
    from dlogit.engine.residency import Streamed, cache_setting
    from dlogit.io.stream import stream_sources

    budget = cache_setting()  # validated here, on the client, before anything starts
    sources = stream_sources(X, y, w)
    if sources is None:
        return None
    return Streamed(tuple(sources), budget, weighted=w is not None)


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


def fit_path_dask(client: Any, X: Any, y: Any, w: Any, spec: FitSpec, path: Any,
                  callback: Callback | None = None, mode: str = "auto") -> Any:
    """A cross-validated regularization path on Dask arrays (:mod:`dlogit.cv`): the on-cluster driver
    evaluates every fold of a penalty in one pass down the tree of workers."""
    from distributed import KilledWorker

    try:
        return DaskFit(client, X, y, w, spec, callback, mode=mode, path=path).run()
    except KilledWorker as exc:
        raise ClusterError(f"a worker died repeatedly while running the path: {exc}") from exc


def fit_dask(client: Any, X: Any, y: Any, w: Any, spec: FitSpec, callback: Callback | None = None,
             mode: str = "auto") -> FitResult:
    """Fit on Dask arrays through ``client`` (see the module docstring for ``mode``)."""
    from distributed import KilledWorker

    try:
        return DaskFit(client, X, y, w, spec, callback, mode=mode).run()
    except KilledWorker as exc:
        raise ClusterError(f"a worker died repeatedly while running the fit: {exc}") from exc
