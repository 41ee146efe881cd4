"""Scheduler plugin collecting dlogit progress events.

``Scheduler.log_event`` (what ``Client.log_event`` and ``Worker.log_event``
end up calling) publishes through the scheduler's event broker, which calls
``SchedulerPlugin.log_event(topic, msg)`` on every registered plugin.  The
plugin keeps only the ``"dlogit"`` topic.  On ``start`` it also replays the
events the broker still holds for that topic, so a plugin installed while a
fit is running still sees its beginning (as far as the broker's bounded log
reaches).
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from dlogit.events import TOPIC
from dlogit.monitor import PLUGIN_NAME, metrics
from dlogit.monitor.state import MAX_POINTS, MAX_RUNS, MonitorState

logger = logging.getLogger(__name__)


class MonitorPlugin(SchedulerPlugin):
    """Keeps per-run state, serves ``/dlogit`` and the ``dlogit_*`` metrics."""

    name = PLUGIN_NAME
    idempotent = True  # Client.register_plugin: keep an existing instance

    def __init__(
        self,
        max_runs: int = MAX_RUNS,
        max_points: int = MAX_POINTS,
        panel: bool = True,
        refresh_ms: int = 500,
    ):
        self.max_runs = max_runs
        self.max_points = max_points
        self.panel = panel
        self.refresh_ms = refresh_ms
        self.state = MonitorState(max_runs, max_points)
        self.scheduler: Any = None
        self.app: Any = None  # the BokehTornado serving /dlogit, if any
        self.metrics = False

    # pickled by Client.register_plugin: ship only the settings
    def __getstate__(self) -> dict[str, Any]:
        return {
            "max_runs": self.max_runs,
            "max_points": self.max_points,
            "panel": self.panel,
            "refresh_ms": self.refresh_ms,
        }

    def __setstate__(self, d: dict[str, Any]) -> None:
        type(self).__init__(self, **d)

    async def start(self, scheduler: Any) -> None:
        if self.scheduler is scheduler:
            return  # already started (preload add_plugin + start_unsafe)
        self.scheduler = scheduler
        try:
            for _, msg in scheduler.get_events(TOPIC):
                self.state.ingest(msg)
        except Exception:  # pragma: no cover - defensive
            logger.debug("dlogit: replaying old events failed", exc_info=True)
        self.metrics = metrics.attach(self.state)
        if self.panel:
            try:
                from dlogit.monitor.panel import install_panel

                self.app = install_panel(scheduler, self.state, self.refresh_ms)
            except Exception:
                logger.warning("dlogit: could not install the /dlogit panel",
                               exc_info=True)
                self.app = None

    def log_event(self, topic: str, msg: Any) -> None:
        if topic == TOPIC:
            self.state.ingest(msg)

    async def close(self) -> None:
        metrics.detach(self.state)
        if self.app is not None:
            from dlogit.monitor.panel import uninstall_panel

            uninstall_panel(self.scheduler, self.app)
            self.app = None


def get_plugin(scheduler: Any) -> MonitorPlugin | None:
    plugin = scheduler.plugins.get(PLUGIN_NAME)
    return plugin if isinstance(plugin, MonitorPlugin) else None


async def install(scheduler: Any, **kwargs: Any) -> MonitorPlugin:
    """Install (once) on a scheduler from inside its event loop."""
    existing = get_plugin(scheduler)
    if existing is not None:
        return existing
    plugin = MonitorPlugin(**kwargs)
    await scheduler.register_scheduler_plugin(plugin, PLUGIN_NAME, idempotent=True)
    return plugin
