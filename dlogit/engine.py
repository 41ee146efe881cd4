"""The engine: the only layer of dlogit that imports ``distributed``.

It runs :func:`dlogit.training.fit_loop` in one of three modes:

``in-process``
    NumPy / CuPy arrays in this process: the chunks are summed here.
``worker-local``
    Dask arrays small enough for one worker (``dlogit.engine.worker-local-bytes``) or a cluster of one
    worker: all chunks are gathered on one worker and the whole solver runs there as one task, so a
    step costs what the in-process loop costs. If that worker dies, Dask reruns the task elsewhere.
``distributed``
    Every worker holds a shard: the chunks assigned to it, kept resident in a per-process
    :class:`_ShardServer`. A step sends ``theta`` to every shard over one persistent TCP (or TLS)
    connection per worker, each worker reduces its chunks following the fixed chunk tree
    (:mod:`dlogit.objective`) and answers with its node sums, and the driver completes the tree. No
    Dask graph is built per step. If a worker dies the driver re-assigns its chunks to the survivors,
    Dask recomputes the lost chunks from their graph, and the step is retried: the result is the same
    bit for bit because the tree does not depend on the placement.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import ssl
import struct
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np

from dlogit._xp import get_xp, to_numpy
from dlogit.errors import ClusterError, ConfigError, DataError
from dlogit.events import TOPIC
from dlogit.loss import CPU_KERNELS, PreparedChunk
from dlogit.objective import complete_tree, node_sum, owned_nodes
from dlogit.training import fit_loop
from dlogit.validation import check_chunk, check_totals

logger = logging.getLogger("dlogit.engine")

Callback = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------------------------------
# chunks held in one process


class ChunkSet:
    """Chunks held in this process, keyed by their global index in a ``n_chunks`` chunking."""

    def __init__(self, X: dict[int, Any], y: dict[int, Any], n_chunks: int, fit_intercept: bool,
                 kernel: str = "auto") -> None:
        self.chunks = {i: PreparedChunk(x, y[i], fit_intercept, kernel) for i, x in X.items()}
        #: the kernels that evaluate these chunks, e.g. "fused" or "blas+fused" (reported with the fit)
        self.kernel = "+".join(sorted({c.kernel for c in self.chunks.values()}))
        self.n_chunks = n_chunks
        self.fit_intercept = fit_intercept
        self.nodes = owned_nodes(self.chunks, n_chunks)
        first = next(iter(self.chunks.values()), None)
        self.xp = get_xp(first.X) if first is not None else np
        self.n_params = (first.d + 1) if first is not None else 0

    def node_sums(self, theta: np.ndarray) -> np.ndarray:
        """Sums of every owned tree node at ``theta``, one row per node, float64 on the host."""
        th = self.xp.asarray(theta)
        chunks = self.chunks
        return np.stack([to_numpy(node_sum(lambda i: chunks[i].sums(th), lo, hi)) for lo, hi in self.nodes])

    def root_sums(self, theta: np.ndarray) -> np.ndarray:
        """Sums over all chunks (this set must hold every chunk)."""
        if len(self.nodes) == 1 and self.xp is np:  # the whole tree is one node: no bookkeeping
            chunks = self.chunks
            return node_sum(lambda i: chunks[i].sums(theta), 0, self.n_chunks)
        parts = dict(zip(self.nodes, self.node_sums(theta)))
        return complete_tree(parts, self.n_chunks)


def cpu_kernel_setting() -> str:
    """The CPU kernel choice from ``dlogit.cpu-kernel`` (``auto``, ``fused`` or ``blas``), validated."""
    value = str(dask.config.get("dlogit.cpu-kernel", "auto")).strip().lower()
    if value not in CPU_KERNELS:
        raise ConfigError(f"dlogit.cpu-kernel must be one of {', '.join(CPU_KERNELS)}, got {value!r}")
    if value == "fused":
        from dlogit.kernels import cpu

        if not cpu.available():
            raise ConfigError("dlogit.cpu-kernel is 'fused' but numba is not installed")
    return value


def validate_chunks(X: dict[int, Any], y: dict[int, Any]) -> tuple[int, int]:
    """Check every chunk; return total ``(rows, positives)``."""
    rows = pos = 0
    for i in sorted(X):
        r, p = check_chunk(X[i], y[i], i)
        rows += r
        pos += p
    return rows, pos


def fit_arrays(X_chunks: Sequence[Any], y_chunks: Sequence[Any], spec: dict[str, Any],
               callback: Callback | None) -> dict[str, Any]:
    """``in-process`` mode: fit on NumPy/CuPy chunks held by this process."""
    X = dict(enumerate(X_chunks))
    y = dict(enumerate(y_chunks))
    rows, pos = validate_chunks(X, y)
    check_totals(rows, pos, X[0].shape[1])
    cs = ChunkSet(X, y, len(X), spec["fit_intercept"], spec.get("cpu_kernel", "auto"))
    spec = {**spec, "n_rows": rows,
            "params": {**spec["params"], "n_rows": rows, "mode": "in-process", "kernel": cs.kernel}}
    return fit_loop(cs.root_sums, spec, callback or (lambda msg: None))


# --------------------------------------------------------------------------------------------------
# worker-local mode (one task runs the whole solver on one worker)


def _worker_fit(spec: dict[str, Any], n_chunks: int, xs: list[Any], ys: list[Any]) -> dict[str, Any]:
    from distributed import get_worker

    worker = get_worker()
    X = dict(enumerate(xs))
    y = dict(enumerate(ys))
    rows, pos = validate_chunks(X, y)
    check_totals(rows, pos, X[0].shape[1])
    cs = ChunkSet(X, y, n_chunks, spec["fit_intercept"], spec.get("cpu_kernel", "auto"))
    spec = {**spec, "n_rows": rows,
            "params": {**spec["params"], "n_rows": rows, "mode": "worker-local",
                       "workers": [worker.address], "kernel": cs.kernel}}

    def send(msg: dict[str, Any]) -> None:
        worker.log_event(TOPIC, msg)

    def hook(emitter: Any) -> None:
        emitter.local_worker = worker.address

    return fit_loop(cs.root_sums, spec, send, hook)


# --------------------------------------------------------------------------------------------------
# distributed mode: the shard server that lives in each worker process

_MAGIC = b"DLG1"
_REQ = struct.Struct("<4sB3xQ16s")  # magic, op, payload bytes, shard token
_RESP = struct.Struct("<4sB3xQ")  # magic, status (0 ok, 1 error), payload bytes
OP_SUMS, OP_CLOSE = 1, 2


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            return None
        got += k
    return bytes(buf)


class _ShardServer:
    """Per-worker-process server holding shards (token -> :class:`ChunkSet`) and answering steps."""

    _instance: _ShardServer | None = None
    _lock = threading.Lock()

    def __init__(self, host: str, ssl_context: ssl.SSLContext | None) -> None:
        self.shards: dict[bytes, ChunkSet] = {}
        self.ssl_context = ssl_context
        self.sock = socket.create_server((host, 0))
        self.host, self.port = host, self.sock.getsockname()[1]
        threading.Thread(target=self._accept, name="dlogit-shard-accept", daemon=True).start()

    @classmethod
    def get(cls, host: str, ssl_context: ssl.SSLContext | None) -> _ShardServer:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls(host, ssl_context)
            return cls._instance

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), name="dlogit-shard", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        used: set[bytes] = set()
        try:
            if self.ssl_context is not None:
                try:
                    conn = self.ssl_context.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    conn.close()
                    return
            while True:
                hdr = _recv_exact(conn, _REQ.size)
                if hdr is None:
                    return
                magic, op, n, token = _REQ.unpack(hdr)
                if magic != _MAGIC:
                    return
                shard = self.shards.get(token)
                if shard is None or n not in (0, 8 * shard.n_params):
                    return  # unknown token or a malformed request: drop the connection unread
                payload = _recv_exact(conn, n) if n else b""
                if payload is None:
                    return
                used.add(token)
                if op == OP_CLOSE:
                    self.shards.pop(token, None)
                    self._reply(conn, 0, b"")
                    continue
                try:
                    t0 = time.perf_counter()
                    out = shard.node_sums(np.frombuffer(payload, dtype=np.float64))
                    dt = time.perf_counter() - t0
                except Exception as exc:  # noqa: BLE001 - reported to the driver, which raises it
                    self._reply(conn, 1, f"{type(exc).__name__}: {exc}".encode())
                    continue
                body = np.concatenate([[dt], out.ravel()]).tobytes()
                self._reply(conn, 0, body)
        except (OSError, ssl.SSLError):
            return
        finally:
            for t in used:  # a driver that goes away takes its shards with it
                self.shards.pop(t, None)
            with contextlib.suppress(OSError):
                conn.close()

    @staticmethod
    def _reply(conn: socket.socket, status: int, body: bytes) -> None:
        conn.sendall(_RESP.pack(_MAGIC, status, len(body)) + body)


def _worker_ssl(worker: Any) -> ssl.SSLContext | None:
    if not worker.address.startswith("tls://"):
        return None
    return worker.security.get_listen_args("worker").get("ssl_context")


def _attach(token: bytes, indices: list[int], n_chunks: int, fit_intercept: bool, kernel: str,
            xs: list[Any], ys: list[Any]) -> dict[str, Any]:
    """Task run on a worker: validate its chunks and register them as a shard."""
    from distributed import get_worker

    worker = get_worker()
    X = dict(zip(indices, xs))
    y = dict(zip(indices, ys))
    rows, pos = validate_chunks(X, y)
    cs = ChunkSet(X, y, n_chunks, fit_intercept, kernel)
    if worker.address.startswith("inproc://"):  # workers in this process (processes=False)
        host = "127.0.0.1"
    else:
        host = worker.address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    server = _ShardServer.get(host, _worker_ssl(worker))
    if token in server.shards:  # never let one shard replace another
        raise RuntimeError("a shard with this token is already registered here")
    server.shards[token] = cs
    return {"worker": worker.address, "host": server.host, "port": server.port, "rows": rows,
            "positives": pos, "nodes": cs.nodes, "kernel": cs.kernel}


def _shard_sums(token: bytes, theta: np.ndarray) -> np.ndarray:
    """Task form of one step (the ``dask`` transport, used when sockets cannot connect)."""
    inst = _ShardServer._instance
    shard = inst.shards.get(token) if inst is not None else None
    if shard is None:
        raise LookupError("shard not on this worker")
    t0 = time.perf_counter()
    out = shard.node_sums(theta)
    return np.concatenate([[time.perf_counter() - t0], out.ravel()])


def _drop_shards(tokens: list[bytes]) -> None:
    inst = _ShardServer._instance
    if inst is not None:
        for token in tokens:
            inst.shards.pop(token, None)


class _WorkerLost(Exception):
    def __init__(self, worker: str, why: str) -> None:
        super().__init__(f"{worker}: {why}")
        self.worker = worker


class _Link:
    """The driver's connection to one worker's shard."""

    def __init__(self, info: dict[str, Any], token: bytes, ssl_context: ssl.SSLContext | None,
                 timeout: float) -> None:
        self.worker = info["worker"]
        self.nodes = [tuple(n) for n in info["nodes"]]
        self.token = token
        sock = socket.create_connection((info["host"], info["port"]), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=info["host"])
        self.sock = sock

    def request(self, op: int, payload: bytes) -> None:
        try:
            self.sock.sendall(_REQ.pack(_MAGIC, op, len(payload), self.token) + payload)
        except OSError as exc:
            raise _WorkerLost(self.worker, str(exc)) from exc

    def response(self) -> bytes:
        try:
            hdr = _recv_exact(self.sock, _RESP.size)
            if hdr is None:
                raise _WorkerLost(self.worker, "connection closed")
            _, status, n = _RESP.unpack(hdr)
            body = _recv_exact(self.sock, n) if n else b""
        except OSError as exc:
            raise _WorkerLost(self.worker, str(exc)) from exc
        if body is None:
            raise _WorkerLost(self.worker, "connection closed")
        if status != 0:
            msg = body.decode(errors="replace")
            if msg.startswith("unknown shard"):
                raise _WorkerLost(self.worker, msg)
            raise ClusterError(f"worker {self.worker} failed a step: {msg}")
        return body

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.request(OP_CLOSE, b"")
            self.response()
        with contextlib.suppress(OSError):
            self.sock.close()


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


class _EventRouter:
    """A client's one subscription to the dlogit event topic, shared by all of its fits.

    distributed keeps a single handler per topic and client, so fits running at once from one client
    must share it; it is made once and kept, so that a fit's own message to the scheduler is not held
    back behind a subscribe message (a client sends its messages in batches at most every 10 ms).
    """

    def __init__(self, client: Any) -> None:
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        client.subscribe_topic(TOPIC, self._handle)

    def _handle(self, event: Any) -> None:
        msg = event[1] if isinstance(event, tuple) else event
        if isinstance(msg, dict):
            handler = self.handlers.get(msg.get("run"))
            if handler is not None:
                handler(msg)


_listen_lock = threading.Lock()


def listen(client: Any) -> _EventRouter:
    """Subscribe ``client`` to dlogit's progress events (once; later calls return the same router).

    The CLI calls this while it connects, so that the first fit does not pay for it.
    """
    with _listen_lock:
        router = getattr(client, "_dlogit_events", None)
        if router is None:
            router = _EventRouter(client)
            client._dlogit_events = router
        return router


class DaskFit:
    """One fit on Dask arrays through a :class:`distributed.Client`."""

    def __init__(self, client: Any, X: Any, y: Any, spec: dict[str, Any], callback: Callback | None,
                 mode: str = "auto", transport: str = "auto") -> None:
        if X.ndim != 2:
            raise DataError(f"X must be 2-D (rows x features), got {X.ndim}-D")
        if y.ndim != 1:
            raise DataError(f"labels must be 1-D, got {y.ndim}-D")
        if X.numblocks[1] != 1:
            X = X.rechunk({1: -1})
        if y.numblocks[0] != X.numblocks[0] or (
            all(np.isfinite(X.chunks[0])) and all(np.isfinite(y.chunks[0])) and X.chunks[0] != y.chunks[0]
        ):
            if np.isfinite(X.shape[0]) and np.isfinite(y.shape[0]) and X.shape[0] != y.shape[0]:
                raise DataError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels")
            y = y.rechunk((X.chunks[0],))
        self.client = client
        self.X = X
        self.spec = spec
        self.callback = callback
        self.mode = mode
        self.transport = transport
        self.x_del = _unalias(list(X.to_delayed().ravel()))
        self.y_del = _unalias(list(y.to_delayed().ravel()))
        self.n_chunks = len(self.x_del)
        self.rows = [float(r) for r in X.chunks[0]]
        self.d = int(X.shape[1])
        self.itemsize = X.dtype.itemsize if X.dtype.kind == "f" else 8
        meta = getattr(X, "_meta", None)
        self.on_gpu = meta is not None and type(meta).__module__.startswith("cupy")
        self.links: list[_Link] = []
        self._emitter: Any = None
        self.worker_seconds: dict[str, float] = {}
        self.excluded: set[str] = set()
        self.tokens: list[bytes] = []
        self.recoveries = 0

    # -- helpers ---------------------------------------------------------------------------------
    def _workers(self) -> list[str]:
        info = self.client.scheduler_info(n_workers=-1)
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
        """Chunk index -> worker already holding both its X and y chunk (persisted data)."""
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

    def _compute_on(self, assign: dict[str, list[int]]) -> tuple[list[Any], list[Any]]:
        xs: list[Any] = [None] * self.n_chunks
        ys: list[Any] = [None] * self.n_chunks
        for w, idx in assign.items():
            futs = self.client.compute([self.x_del[i] for i in idx] + [self.y_del[i] for i in idx],
                                       workers=[w], allow_other_workers=True)
            for j, i in enumerate(idx):
                xs[i], ys[i] = futs[j], futs[len(idx) + j]
        return xs, ys

    # -- entry point -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        workers = self._workers()
        if not workers:
            raise ClusterError("the Dask cluster has no workers")
        if self.n_chunks == 0:
            raise DataError("no rows to train on (the data is empty)")
        mode = self._choose_mode(workers)
        self.spec["params"]["mode"] = mode
        if mode == "worker-local":
            return self._run_worker_local(workers)
        if mode == "distributed":
            return self._run_distributed(workers)
        raise ValueError(f"unknown engine mode {mode!r}")

    def _forward_events(self) -> tuple[Callable[[], None], threading.Event]:
        run = self.spec["run"]
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

    def _run_worker_local(self, workers: list[str]) -> dict[str, Any]:
        holders = self._holders()
        if holders:
            counts: dict[str, int] = {}
            for w in holders.values():
                counts[w] = counts.get(w, 0) + 1
            target = max(sorted(counts), key=lambda w: counts[w])
        else:
            target = workers[0]
        self.spec["params"]["workers"] = [target]
        unsubscribe, done = self._forward_events()
        try:
            # the chunks and the fit go to the scheduler in one message: no client round trip between
            fit = dask.delayed(_worker_fit, pure=False)(self.spec, self.n_chunks, self.x_del, self.y_del,
                                                        dask_key_name=f"dlogit-fit-{self.spec['run']}")
            fut = self.client.compute(fit, workers=[target], allow_other_workers=True)
            result = fut.result()
            done.wait(timeout=5.0)  # let the last progress events reach the callback
            return result
        finally:
            unsubscribe()

    # -- distributed mode ------------------------------------------------------------------------
    def _client_ssl(self) -> ssl.SSLContext | None:
        if not str(self.client.scheduler.address).startswith("tls://"):
            return None
        return self.client.security.get_connection_args("client").get("ssl_context")

    def _attach_all(self, assign: dict[str, list[int]], xs: list[Any], ys: list[Any]) -> list[dict]:
        futs = []
        tokens = []
        for w, idx in assign.items():
            token = secrets.token_bytes(16)  # one per shard: a shard can never stand in for another
            tokens.append(token)
            self.tokens.append(token)  # dropped on every worker at the end, even if attaching fails
            futs.append(self.client.submit(
                _attach, token, idx, self.n_chunks, self.spec["fit_intercept"],
                self.spec.get("cpu_kernel", "auto"),
                [xs[i] for i in idx], [ys[i] for i in idx], workers=[w], allow_other_workers=True,
                pure=False, key=f"dlogit-attach-{self.spec['run']}-{secrets.token_hex(4)}"))
        timeout = dask.utils.parse_timedelta(dask.config.get("dlogit.engine.attach-timeout"))
        for f in futs:  # all settle first: no shard may register after the clean-up
            with contextlib.suppress(Exception):
                f.exception(timeout=timeout)
        if not all(f.done() for f in futs):
            for f in futs:
                f.cancel()
            raise ClusterError(f"the workers did not load their shards within {timeout:g}s "
                               "(dlogit.engine.attach-timeout)")
        infos = [f.result() for f in futs]
        for info, token in zip(infos, tokens):
            info["token"] = token
        return infos

    def _connect(self, infos: list[dict]) -> None:
        timeout = dask.utils.parse_timedelta(dask.config.get("dlogit.engine.step-timeout"))
        ctx = self._client_ssl()
        links = []
        try:
            for info in infos:
                links.append(_Link(info, info["token"], ctx, timeout))
        except OSError:
            for link in links:
                link.close()
            if self.transport == "socket":
                raise
            if self.transport != "dask":
                warnings.warn("dlogit: cannot open direct connections to the workers; stepping through "
                              "Dask tasks instead (slower)", RuntimeWarning, stacklevel=2)
            self.transport = "dask"
            links = []
        self.links = links
        self.infos = infos

    def _close_links(self) -> None:
        for link in self.links:
            link.close()
        self.links = []

    def _step(self, theta: np.ndarray) -> np.ndarray:
        d3 = self.d + 3
        parts: dict[tuple[int, int], np.ndarray] = {}
        seconds: dict[str, float] = {}
        if self.transport == "dask":
            from distributed import KilledWorker

            futs = [(info, self.client.submit(_shard_sums, info["token"], theta, workers=[info["worker"]],
                                              pure=False)) for info in self.infos]
            for info, fut in futs:
                try:
                    arr = fut.result()
                except (KilledWorker, LookupError, OSError) as exc:  # the worker or its shard is gone
                    raise _WorkerLost(info["worker"], str(exc)) from exc
                except Exception as exc:  # noqa: BLE001 - a failure that a retry would repeat
                    raise ClusterError(f"worker {info['worker']} failed a step: {exc}") from exc
                seconds[info["worker"]] = float(arr[0])
                parts.update(zip([tuple(n) for n in info["nodes"]], arr[1:].reshape(-1, d3)))
        else:
            payload = np.ascontiguousarray(theta, dtype=np.float64).tobytes()
            for link in self.links:
                link.request(OP_SUMS, payload)
            for link in self.links:
                arr = np.frombuffer(link.response(), dtype=np.float64)
                if arr.size != 1 + len(link.nodes) * d3:
                    raise ClusterError(f"worker {link.worker} answered {arr.size} numbers for "
                                       f"{len(link.nodes)} tree nodes")
                seconds[link.worker] = float(arr[0])
                parts.update(zip(link.nodes, arr[1:].reshape(-1, d3)))
        self.worker_seconds = seconds
        if self._emitter is not None:
            self._emitter.worker_seconds = seconds
        return complete_tree(parts, self.n_chunks)

    def sums(self, theta: np.ndarray) -> np.ndarray:
        """Reduced chunk sums at ``theta``; recovers from lost workers and retries."""
        while True:
            try:
                return self._step(theta)
            except _WorkerLost as exc:
                self._recover(exc)

    def _recover(self, exc: _WorkerLost) -> None:
        limit = int(dask.config.get("dlogit.engine.max-recoveries"))
        self.recoveries += 1
        if self.recoveries > limit:
            raise ClusterError(f"lost workers {self.recoveries} times during the fit (last: {exc}); "
                               f"giving up (dlogit.engine.max-recoveries={limit})") from exc
        logger.warning("dlogit: lost worker %s; moving its chunks to the others and retrying the step",
                       exc.worker)
        self._close_links()
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
            infos = self._attach_all(self.assign, self.xs, self.ys)
        except Exception as again:  # noqa: BLE001 - another loss while re-attaching: try again
            if isinstance(again, (DataError, ConfigError)):  # bad data or settings, not a lost worker
                raise
            self._recover(_WorkerLost(exc.worker, f"re-attach failed: {again}"))
            return
        self._connect(infos)

    def _run_distributed(self, workers: list[str]) -> dict[str, Any]:
        holders = self._holders()
        if len(holders) == self.n_chunks:
            assign: dict[str, list[int]] = {}
            for i, w in sorted(holders.items()):
                assign.setdefault(w, []).append(i)
        else:
            assign = balanced_ranges(self.rows, workers)
        self.assign = assign
        self.xs, self.ys = self._compute_on(assign)
        try:
            infos = self._attach_all(assign, self.xs, self.ys)
            rows = sum(i["rows"] for i in infos)
            check_totals(rows, sum(i["positives"] for i in infos), self.d)
            self._connect(infos)
            self.spec["n_rows"] = rows
            kernels = {k for i in infos for k in i["kernel"].split("+") if k}
            self.spec["params"].update(n_rows=rows, workers=sorted(assign), kernel="+".join(sorted(kernels)))

            cb = self.callback

            def send(msg: dict[str, Any]) -> None:
                if cb is not None:
                    cb(msg)
                with contextlib.suppress(Exception):
                    self.client.log_event(TOPIC, msg)

            def hook(emitter: Any) -> None:
                self._emitter = emitter

            return fit_loop(self.sums, self.spec, send, hook)
        finally:
            self._close_links()
            if self.tokens:
                with contextlib.suppress(Exception):
                    self.client.run(_drop_shards, self.tokens)
            self.xs = self.ys = []


def fit_dask(client: Any, X: Any, y: Any, spec: dict[str, Any], callback: Callback | None = None,
             mode: str = "auto", transport: str = "auto") -> dict[str, Any]:
    """Fit on Dask arrays through ``client`` (see the module docstring for ``mode``)."""
    from distributed import KilledWorker

    try:
        return DaskFit(client, X, y, spec, callback, mode=mode, transport=transport).run()
    except KilledWorker as exc:
        raise ClusterError(f"a worker died repeatedly while running the fit: {exc}") from exc


def current_client() -> Any | None:
    """The Dask client of this context (``with Client(...)`` or the default), or ``None``."""
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def is_dask_array(x: Any) -> bool:
    return isinstance(x, da.Array)


def map_chunks(fn: Callable[[Any], Any], X: Any, dtype: Any = np.float64) -> Any:
    """Apply a row-wise ``fn`` (chunk of X -> 1-D result) lazily over a Dask array's row chunks."""
    if X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    return X.map_blocks(fn, drop_axis=1, dtype=dtype)

