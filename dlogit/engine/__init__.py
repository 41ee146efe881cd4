"""The engine: runs :func:`dlogit.training.run_fit` in one of three modes; the only layer of dlogit
that imports ``distributed``. It opens no port of its own.

``in-process``
    NumPy / CuPy / SciPy-sparse arrays in this process (:mod:`dlogit.engine.local`).
``worker-local``
    Dask arrays small enough for one worker (``dlogit.engine.worker-local-bytes``) or a cluster of one
    worker: the chunks are gathered on one worker and the whole fit runs there as one task
    (:mod:`dlogit.engine.dask_fit`). Stopped by the client at a step boundary when it is interrupted;
    stops by itself when its client goes away.
``distributed``
    Every worker holds a shard (:mod:`dlogit.engine.shard`) resident in its process; the driver runs as
    one task on a worker (:mod:`dlogit.engine.driver`) and sends each step down a tree of workers over
    Dask's own comms (:mod:`dlogit.engine.transport`); each worker reduces its chunks and its
    children's answers following the fixed chunk tree, so the root's sums do not depend on the
    placement. A lost worker's chunks are re-assigned to the survivors (Dask recomputes them) and the
    step is retried; a lost driver is restarted by Dask on another worker from its in-memory
    checkpoint (a cross-validated path's driver restarts the path from its first penalty: a path's
    state is not replicated). A cross-validated path on Dask data always runs in this mode.

Modules: ``shard`` (chunks of one process: validate, prepare, evaluate, merge node sums), ``local``
(in-process), ``dask_fit`` (the client side of the two Dask modes), ``driver`` (the on-cluster driver
of distributed mode), ``transport`` (step links and control over Dask comms), ``placement`` (which
worker gets which chunks; the tree of workers), ``control`` (stopping fits on workers), ``routing``
(progress events to clients).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dlogit.config import setting
from dlogit.errors import ConfigError
from dlogit.kernels.policy import CPU_KERNELS

#: the client-side entry points, imported on first use: a worker importing the transport or a shard
#: loads neither dask.array nor the client side of the Dask modes
_LAZY = {"ClusterWarning": "dask_fit", "SchedulerLost": "dask_fit", "fit_dask": "dask_fit",
         "fit_path_dask": "dask_fit", "fit_arrays": "local", "listen": "routing",
         "parse_cache_bytes": "residency", "describe_cache": "residency", "budget_for": "residency"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["ClusterWarning", "SchedulerLost", "budget_for", "cpu_kernel_notice", "cpu_kernel_setting", "current_client",
           "describe_cache", "fit_arrays", "fit_dask", "fit_path_dask", "is_dask_array", "listen", "map_chunks",
           "parse_cache_bytes"]


def cpu_kernel_notice(resolved: str) -> str | None:
    """What to tell the user when ``dlogit.cpu-kernel: auto`` resolved to ``resolved`` = ``blas`` because
    the fused kernels are not in the disk cache (:mod:`dlogit.kernels.cache`); None otherwise."""
    if resolved != "blas" or str(setting("dlogit.cpu-kernel")).strip().lower() != "auto":
        return None
    from dlogit.kernels import cache

    if cache.cannot_cache():
        return ("the fused CPU kernels cannot be cached here (Numba found no writable cache directory; set "
                "NUMBA_CACHE_DIR): this fit uses the BLAS path")
    return ("compiling the fused CPU kernels in the background (first run on this machine); this fit uses the "
            "BLAS path")


def cpu_kernel_setting() -> str:
    """The CPU kernel choice from ``dlogit.cpu-kernel`` (``auto``, ``fused`` or ``blas``), validated;
    ``auto`` is ``blas`` while the fused kernels are not in the disk cache (:mod:`dlogit.kernels.cache`
    starts compiling them in the background), so no chunk of the fit waits for a compile."""
    value = str(setting("dlogit.cpu-kernel")).strip().lower()
    if value not in CPU_KERNELS:
        raise ConfigError(f"dlogit.cpu-kernel must be one of {', '.join(CPU_KERNELS)}, got {value!r}")
    if value == "fused":
        from dlogit.kernels import cpu

        if not cpu.available():
            raise ConfigError("dlogit.cpu-kernel is 'fused' but numba is not installed")
    if value == "auto":  # not compiled yet here: the whole fit takes BLAS/SciPy while they compile
        from dlogit.kernels import cache, cpu

        if cpu.available() and not cache.ensure_ready():
            return "blas"
    return value


def current_client() -> Any | None:
    """The Dask client of this context (``with Client(...)`` or the default), or ``None``."""
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def is_dask_array(x: Any) -> bool:
    import sys

    da = sys.modules.get("dask.array")  # not imported: x cannot be one
    return da is not None and isinstance(x, da.Array)


def map_chunks(fn: Callable[[Any], Any], X: Any, dtype: Any = np.float64, new_axis: int | None = None,
               n_out: int | None = None) -> Any:
    """Apply a row-wise ``fn`` (chunk of X -> 1-D or (rows, n_out) result) lazily over X's row chunks."""
    if X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    if n_out is None:
        return X.map_blocks(fn, drop_axis=1, dtype=dtype)
    return X.map_blocks(fn, chunks=(X.chunks[0], (n_out,)), dtype=dtype)
