"""The driver side: :class:`DriverLinks`, the driver thread's links to the root's children and its
control comms, on an event loop of its own (:data:`OWN_LOOP_SCHEMES`) or the worker's."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from dlogit.engine.shard import Shard
from dlogit.engine.transport.errors import StepFailed, StepStopped, StepTimeout, WorkerLost
from dlogit.engine.transport.tree import INLINE_SECONDS, Child, TreeNode, open_child
from dlogit.engine.transport.wire import connect_comm, pack, read_within

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
                *(open_child(sub["addr"], {**opening, "tree": sub}, self.heartbeat, self.connection_args)
                  for sub in tree["children"]), return_exceptions=True)

        children = self.run(open_all())
        opened = [c for c in children if isinstance(c, Child)]
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
        async def one(address: str, kw: dict[str, Any]) -> Any:
            comm = self.controls.get(address)
            try:
                if comm is None or comm.closed():
                    comm = self.controls[address] = await connect_comm(address, self.heartbeat,
                                                                       self.connection_args)
                await comm.write({"op": "dlogit_control", "reply": reply, "run": self.run_id,
                                  "action": action, **kw})
                if not reply:
                    return None
                out = await read_within(comm, max(self.heartbeat, 600.0) if action == "prepare" else self.heartbeat)
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
