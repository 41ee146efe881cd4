"""Scheduler preload: ``dask scheduler --preload dlogit.dashboard``.

Installs the dlogit monitor (per-run state from the ``"dlogit"`` event topic,
the ``/dlogit`` dashboard panel, the ``dlogit_*`` Prometheus metrics) on the
scheduler being started.  Local clusters get it through
``LocalCluster(scheduler_kwargs={"preload": ["dlogit.dashboard"]})``.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


async def dask_setup(server: Any) -> None:
    if not hasattr(server, "register_scheduler_plugin"):
        logger.warning(
            "dlogit.dashboard is a scheduler preload; ignoring it on %s",
            type(server).__name__,
        )
        return
    from dlogit.monitor.plugin import install

    await install(server)
