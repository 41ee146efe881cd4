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

The package, by concern: :mod:`~dlogit.engine.transport.wire` (arrays on the wire),
:mod:`~dlogit.engine.transport.errors` (lost workers, failed, stopped or late steps),
:mod:`~dlogit.engine.transport.tree` (a process's place in the tree, links to its children, liveness),
:mod:`~dlogit.engine.transport.plugin` (the worker side) and :mod:`~dlogit.engine.transport.links` (the
driver side). Every name below is importable from here too.
"""

from __future__ import annotations

from dlogit.engine.transport.errors import ShardsMissing, StepFailed, StepStopped, StepTimeout, WorkerLost
from dlogit.engine.transport.links import OWN_LOOP_SCHEMES, DriverLinks
from dlogit.engine.transport.plugin import (
    CONTROL,
    PLUGIN_NAME,
    EnginePlugin,
    RunState,
    drop_run,
    engine_state,
    local_plugin,
    shard_count,
)
from dlogit.engine.transport.tree import (
    INLINE_SECONDS,
    WEDGE_FACTOR,
    TreeNode,
    keepalive_interval,
    subtree_spec,
    wedge_limit,
)
from dlogit.engine.transport.wire import INLINE_BYTES, dump_field, load_field, pack, unpack

__all__ = [
    "CONTROL",
    "INLINE_BYTES",
    "INLINE_SECONDS",
    "OWN_LOOP_SCHEMES",
    "PLUGIN_NAME",
    "WEDGE_FACTOR",
    "DriverLinks",
    "EnginePlugin",
    "RunState",
    "ShardsMissing",
    "StepFailed",
    "StepStopped",
    "StepTimeout",
    "TreeNode",
    "WorkerLost",
    "drop_run",
    "dump_field",
    "engine_state",
    "keepalive_interval",
    "load_field",
    "local_plugin",
    "pack",
    "shard_count",
    "subtree_spec",
    "unpack",
    "wedge_limit",
]
