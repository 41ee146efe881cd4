"""Arrays on the wire: the ``dlogit`` serialization family (raw frames) or inline bytes, and the comm
helpers every link uses (a read with a deadline, no offloading of our small messages)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from distributed.protocol import Serialized
from distributed.protocol.serialize import register_serialization_family

_FAMILY = "dlogit"

#: arrays of a message up to this many bytes in all ride in its msgpack header (one copy, no frame
#: bookkeeping: a few microseconds less per message); larger ones travel as raw frames (no copy)
INLINE_BYTES = 64 * 1024


def dump_field(xs: Sequence[np.ndarray]) -> tuple[dict[str, Any], list[memoryview]]:
    header = {"dtypes": [x.dtype.str for x in xs], "shapes": [list(x.shape) for x in xs]}
    return header, [memoryview(x).cast("B") for x in xs]


def load_field(header: dict[str, Any], frames: Sequence[Any]) -> list[np.ndarray]:
    return [np.frombuffer(f, dtype=np.dtype(t)).reshape(shape)
            for f, t, shape in zip(frames, header["dtypes"], header["shapes"])]


register_serialization_family(_FAMILY, dump_field, load_field)


def pack(arrays: Sequence[np.ndarray]) -> Any:
    """NumPy arrays as one field of a Dask message: inline bytes when small (:data:`INLINE_BYTES`),
    else raw frames (the ``dlogit`` serialization family: dtypes, shapes and the buffers; no msgpack
    of array data, no per-array serializer dispatch)."""
    xs = [np.ascontiguousarray(x) for x in arrays]
    if sum(x.nbytes for x in xs) <= INLINE_BYTES:
        return {"i": [[x.dtype.str, list(x.shape), x.tobytes()] for x in xs]}
    header, frames = dump_field(xs)
    header["serializer"] = _FAMILY
    return Serialized(header, frames)


def unpack(field: Any) -> list[np.ndarray]:
    """The arrays of a :func:`pack`-ed field (read-only views of the received buffers)."""
    if isinstance(field, dict):
        return [np.frombuffer(b, dtype=np.dtype(t)).reshape(shape) for t, shape, b in field["i"]]
    return list(field)


if sys.version_info >= (3, 11):
    async def read_within(comm: Any, seconds: float) -> Any:
        async with asyncio.timeout(seconds):
            return await comm.read()
else:  # pragma: no cover - Python 3.10
    async def read_within(comm: Any, seconds: float) -> Any:
        return await asyncio.wait_for(comm.read(), seconds)


def quieted(comm: Any) -> Any:
    # our messages are a few raw frames: never worth sizing (a recursive sizeof per message) to
    # decide whether to (de)serialize them on another thread
    comm.allow_offload = False
    return comm


#: a first connection attempt gives up after this many seconds (at most the caller's timeout): then a
#: listener that refuses (a dead worker process on a live host) is told from a slow one at once
FIRST_CONNECT_SECONDS = 0.5


async def connect_comm(address: str, timeout: float, connection_args: dict[str, Any]) -> Any:
    """A Dask comm to ``address`` (quiet: see :func:`quieted`), failing fast where nobody listens.

    Dask's ``connect`` retries a refused connection until its timeout -- the fit's heartbeat, 30 s by
    default -- so a step link or a control message to a worker whose process died (its host still up:
    the kernel refuses) would wait that long. A first attempt of :data:`FIRST_CONNECT_SECONDS`; if it
    fails, one plain TCP connection (tcp and tls addresses) tells a refusing address
    (``ConnectionRefusedError``, an ``OSError``, at once) from a slow listener (the full ``timeout``).
    """
    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    first = min(timeout, FIRST_CONNECT_SECONDS)
    try:
        return quieted(await connect(address, timeout=first, **connection_args))
    except (OSError, asyncio.TimeoutError, TimeoutError):
        if first >= timeout:
            raise
    scheme, loc = parse_address(address)
    if scheme in ("tcp", "tls"):
        host, port = parse_host_port(loc)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), first)
            writer.close()
        except ConnectionRefusedError:
            raise ConnectionRefusedError(f"{address} refused the connection: nothing listens there") from None
        except (OSError, asyncio.TimeoutError, TimeoutError):
            pass  # unreachable or slow: Dask's connect decides, within the full timeout
    return quieted(await connect(address, timeout=timeout, **connection_args))
