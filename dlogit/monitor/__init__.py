"""Monitoring for dlogit fits.

- :class:`TerminalProgress`: a ``callback`` printing progress in the terminal.
- :func:`ensure_installed`: put the scheduler-side monitor (``/dlogit`` panel,
  ``dlogit_*`` Prometheus metrics) on an already running scheduler.
- :data:`SCHEDULER_PRELOAD`: the preload module doing the same at scheduler
  start (``dask scheduler --preload dlogit.dashboard``).

Importing this package is cheap: Bokeh and distributed are imported only by
the functions that need them.
"""

from __future__ import annotations

import logging
from typing import Any

from dlogit.events import TOPIC
from dlogit.monitor.progress import TerminalProgress, format_dashboard_url
from dlogit.monitor.state import MonitorState

logger = logging.getLogger(__name__)

#: module to pass as ``preload`` to a scheduler (see ``dlogit/dashboard.py``)
SCHEDULER_PRELOAD = "dlogit.dashboard"
PLUGIN_NAME = "dlogit-monitor"
DASHBOARD_ROUTE = "/dlogit"

__all__ = [
    "DASHBOARD_ROUTE",
    "PLUGIN_NAME",
    "SCHEDULER_PRELOAD",
    "TOPIC",
    "MonitorState",
    "TerminalProgress",
    "ensure_installed",
    "format_dashboard_url",
]


def ensure_installed(client: Any, panel: bool = True) -> Any:
    """Install the dlogit monitor on the scheduler of ``client`` if missing.

    Registers :class:`~dlogit.monitor.plugin.MonitorPlugin` (idempotent: an
    instance already installed by the preload is kept).  Its ``start`` mounts
    ``/dlogit`` on the running dashboard server and adds the Prometheus
    collector, so this works after the scheduler started.  The scheduler
    must be able to import ``dlogit`` (the plugin is sent pickled by
    reference) and must accept pickled plugins (``distributed.scheduler.pickle``).

    Returns True when the monitor is (now) installed, False when it could not
    be (the reason is logged; fitting is unaffected).  With an asynchronous
    client, returns an awaitable giving the same.
    """
    from dlogit.monitor.plugin import MonitorPlugin

    plugin = MonitorPlugin(panel=panel)
    if getattr(client, "asynchronous", False):

        async def _install() -> bool:
            try:
                await client.register_plugin(plugin, name=PLUGIN_NAME)
            except Exception as e:  # noqa: BLE001 - any failure: monitoring is optional
                logger.warning("dlogit: could not install the monitor: %s", e)
                return False
            return True

        return _install()
    try:
        client.register_plugin(plugin, name=PLUGIN_NAME)
    except Exception as e:  # noqa: BLE001 - any failure: monitoring is optional
        logger.warning("dlogit: could not install the monitor: %s", e)
        return False
    return True
