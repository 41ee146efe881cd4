"""Progress events reaching a client: one subscription per client, routed to each fit by run id.

distributed keeps a single handler per topic and client (``Client.subscribe_topic`` replaces any
earlier one), and users subscribe to the same ``"dlogit"`` topic (README, "Watching a fit"). So the
router never takes the topic from them: a handler the user set first is kept and called with every
event (before dlogit's fits see it), and a handler the user sets later -- which replaces the router --
is found again at the next fit's start and chained the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from dlogit.events import TOPIC


def registered_handler(client: Any, topic: str = TOPIC) -> Callable[[Any], Any] | None:
    """The handler ``client`` calls for ``topic`` now, or None.

    The one place that reads distributed's private ``Client._event_handlers`` (a dict topic ->
    handler, written by ``subscribe_topic``); ``tests/test_monitor.py`` fails when that changes.
    """
    handlers = getattr(client, "_event_handlers", None)
    return handlers.get(topic) if isinstance(handlers, dict) else None


class _EventRouter:
    """A client's one subscription to the dlogit event topic, shared by all of its fits.

    Fits running at once from one client share it; it is made once and kept, so that a fit's own
    message to the scheduler is not held back behind a subscribe message (a client sends its messages
    in batches at most every 10 ms). ``chained`` is the user's own handler of the topic, if any.
    """

    def __init__(self, client: Any) -> None:
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.chained: Callable[[Any], Any] | None = None
        self.client = client
        self._lock = threading.Lock()
        self.ensure()

    def ensure(self) -> None:
        """Be the client's handler of the topic, keeping whichever handler the user set meanwhile."""
        with self._lock:
            current = registered_handler(self.client)
            if current == self._handle:
                return
            if current is not None:
                self.chained = current
            self.client.subscribe_topic(TOPIC, self._handle)

    def _handle(self, event: Any) -> Any:
        msg = event[1] if isinstance(event, tuple) else event
        if isinstance(msg, dict):
            run = str(msg.get("run"))
            # the points of a path are runs "<fit>/p<k>" and the path "<fit>/path": routed to the fit
            handler = self.handlers.get(run) or self.handlers.get(run.split("/", 1)[0])
            if handler is not None:
                handler(msg)
        chained = self.chained
        if chained is not None:
            return chained(event)  # an awaitable (a coroutine handler) is awaited by distributed
        return None


_listen_lock = threading.Lock()


def listen(client: Any) -> _EventRouter:
    """Subscribe ``client`` to dlogit's progress events (once; later calls return the same router,
    re-subscribed -- keeping the user's handler -- if the user subscribed to the topic meanwhile).

    The CLI calls this while it connects, so that the first fit does not pay for it.
    """
    with _listen_lock:
        router: _EventRouter | None = getattr(client, "_dlogit_events", None)
        if router is None:
            router = _EventRouter(client)
            client._dlogit_events = router
            return router
    router.ensure()
    return router
