"""The step transport of distributed mode: a per-worker-process shard server and the driver's links.

Each worker process runs at most one :class:`ShardServer` (a thread accepting on an ephemeral port of
the worker's own interface; TLS with the worker's certificate on ``tls://`` clusters). It holds shards
by a 16-byte token (one per shard, so a shard can never stand in for another) and answers:

``OP_SUMS``  payload theta -> ``[seconds, node sums ...]``
``OP_HVP``   payload theta || v -> ``[seconds, node H.v sums ...]``
``OP_CLOSE`` drop the shard

While a request is being computed for longer than :data:`KEEPALIVE` seconds the server sends a
keep-alive frame (status 2) every :data:`KEEPALIVE` seconds, so the driver can tell a slow step from a
frozen worker: a link that receives nothing for ``dlogit.engine.heartbeat`` seconds is a lost worker.

A driver that goes away takes its shards with it (they are dropped when its connection closes).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from typing import Any

import numpy as np

from dlogit.engine.shard import Shard
from dlogit.errors import ClusterError

_MAGIC = b"DLG2"
_REQ = struct.Struct("<4sB3xQ16s")  # magic, op, payload bytes, shard token
_RESP = struct.Struct("<4sB3xQ")  # magic, status (0 ok, 1 error), payload bytes
OP_SUMS, OP_HVP, OP_CLOSE = 1, 3, 2
ST_OK, ST_ERROR, ST_ALIVE = 0, 1, 2
#: seconds between keep-alive frames while a step computes
KEEPALIVE = 1.0


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


class ShardServer:
    """Per-worker-process server holding shards (token -> :class:`Shard`) and answering steps."""

    _instance: ShardServer | None = None
    _lock = threading.Lock()

    def __init__(self, host: str, ssl_context: ssl.SSLContext | None) -> None:
        self.shards: dict[bytes, Shard] = {}
        self.sizes: dict[bytes, int] = {}
        self.ssl_context = ssl_context
        self.sock = socket.create_server((host, 0))
        self.host, self.port = host, self.sock.getsockname()[1]
        self._busy: dict[int, tuple[float, socket.socket, threading.Lock]] = {}
        threading.Thread(target=self._accept, name="dlogit-shard-accept", daemon=True).start()
        threading.Thread(target=self._keepalive, name="dlogit-shard-keepalive", daemon=True).start()

    def _keepalive(self) -> None:
        frame = _RESP.pack(_MAGIC, ST_ALIVE, 0)
        while True:
            time.sleep(KEEPALIVE)
            now = time.monotonic()
            for key, entry in list(self._busy.items()):
                since, conn, lock = entry
                if now - since >= KEEPALIVE:
                    # only while that request is still computing: the serving thread clears its entry
                    # under the same lock before it replies and reads again (no send during a read)
                    with lock, contextlib.suppress(OSError):
                        if self._busy.get(key) is entry:
                            conn.sendall(frame)

    @classmethod
    def get(cls, host: str, ssl_context: ssl.SSLContext | None) -> ShardServer:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls(host, ssl_context)
            return cls._instance

    def add(self, token: bytes, shard: Shard) -> None:
        if token in self.shards:  # never let one shard replace another
            raise RuntimeError("a shard with this token is already registered here")
        self.shards[token] = shard

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
        lock = threading.Lock()
        me = threading.get_ident()
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
                p = self.sizes.get(token, 0)
                if shard is None or n not in (0, 8 * p, 16 * p):
                    return  # unknown token or a malformed request: drop the connection unread
                payload = _recv_exact(conn, n) if n else b""
                if payload is None:
                    return
                used.add(token)
                if op == OP_CLOSE:
                    self.shards.pop(token, None)
                    self._reply(conn, lock, ST_OK, b"")
                    continue
                self._busy[me] = (time.monotonic(), conn, lock)
                try:
                    t0 = time.perf_counter()
                    arr = np.frombuffer(payload, dtype=np.float64)
                    if op == OP_HVP:
                        out = shard.node_hvp(arr[:p], arr[p:])
                    else:
                        out = shard.node_sums(arr)
                    dt = time.perf_counter() - t0
                except Exception as exc:  # noqa: BLE001 - reported to the driver, which raises it
                    self._reply(conn, lock, ST_ERROR, f"{type(exc).__name__}: {exc}".encode(), me)
                    continue
                self._reply(conn, lock, ST_OK, np.concatenate([[dt], out.ravel()]).tobytes(), me)
        except (OSError, ssl.SSLError):
            return
        finally:
            self._busy.pop(me, None)
            for t in used:  # a driver that goes away takes its shards with it
                self.shards.pop(t, None)
                self.sizes.pop(t, None)
            with contextlib.suppress(OSError):
                conn.close()

    def _reply(self, conn: socket.socket, lock: threading.Lock, status: int, body: bytes,
               me: int | None = None) -> None:
        with lock:
            if me is not None:
                self._busy.pop(me, None)
            conn.sendall(_RESP.pack(_MAGIC, status, len(body)) + body)


def drop_shards(tokens: list[bytes]) -> None:
    """Task/run target: forget these shards in this process."""
    inst = ShardServer._instance
    if inst is not None:
        for token in tokens:
            inst.shards.pop(token, None)
            inst.sizes.pop(token, None)


def shard_count() -> int:
    inst = ShardServer._instance
    return 0 if inst is None else len(inst.shards)


class WorkerLost(Exception):
    def __init__(self, worker: str, why: str) -> None:
        super().__init__(f"{worker}: {why}")
        self.worker = worker


class Link:
    """The driver's connection to one worker's shard."""

    def __init__(self, info: dict[str, Any], ssl_context: ssl.SSLContext | None, timeout: float) -> None:
        self.worker = info["worker"]
        self.nodes = [tuple(n) for n in info["nodes"]]
        self.token = info["token"]
        sock = socket.create_connection((info["host"], info["port"]), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=info["host"])
        self.sock = sock

    def request(self, op: int, payload: bytes) -> None:
        try:
            self.sock.sendall(_REQ.pack(_MAGIC, op, len(payload), self.token) + payload)
        except OSError as exc:
            raise WorkerLost(self.worker, str(exc)) from exc

    def response(self) -> bytes:
        try:
            while True:
                hdr = _recv_exact(self.sock, _RESP.size)
                if hdr is None:
                    raise WorkerLost(self.worker, "connection closed")
                _, status, n = _RESP.unpack(hdr)
                if status != ST_ALIVE:
                    break
            body = _recv_exact(self.sock, n) if n else b""
        except socket.timeout as exc:
            raise WorkerLost(self.worker, "no answer within dlogit.engine.heartbeat (frozen?)") from exc
        except OSError as exc:
            raise WorkerLost(self.worker, str(exc)) from exc
        if body is None:
            raise WorkerLost(self.worker, "connection closed")
        if status != 0:
            raise ClusterError(f"worker {self.worker} failed a step: {body.decode(errors='replace')}")
        return body

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.request(OP_CLOSE, b"")
            self.response()
        with contextlib.suppress(OSError):
            self.sock.close()
