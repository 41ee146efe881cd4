"""Progress events reaching a client: one subscription per client, routed to each fit by run id."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from dlogit.events import TOPIC


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
            run = str(msg.get("run"))
            # the points of a path are runs "<fit>/p<k>" and the path "<fit>/path": routed to the fit
            handler = self.handlers.get(run) or self.handlers.get(run.split("/", 1)[0])
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
