"""Prometheus ``dlogit_*`` metrics.

The scheduler's ``/metrics`` handler (``distributed.http.scheduler.prometheus``)
answers with ``prometheus_client.generate_latest()``, i.e. whatever is
registered on the process-wide default ``REGISTRY``.  So one custom collector,
registered there once per process, makes the dlogit metrics appear on that
endpoint next to the ``dask_*`` ones.  The collector reads every live
:class:`~dlogit.monitor.state.MonitorState` attached to it (normally exactly
one: one scheduler per process).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from dlogit.monitor.state import MonitorState

_lock = threading.Lock()
_collector: DlogitCollector | None = None


class DlogitCollector:
    """A ``prometheus_client`` custom collector over live monitor states."""

    def __init__(self) -> None:
        self._states: weakref.WeakSet[MonitorState] = weakref.WeakSet()

    def attach(self, state: MonitorState) -> None:
        self._states.add(state)

    def detach(self, state: MonitorState) -> None:
        self._states.discard(state)

    # prometheus_client calls describe() at registration time to learn names
    def describe(self) -> Iterator[Any]:
        return iter(self._families())

    def _families(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        g = GaugeMetricFamily
        return [
            g("dlogit_loss", "Objective value at the last step", labels=["run"]),
            g("dlogit_grad_norm", "Gradient norm at the last step", labels=["run"]),
            g("dlogit_step", "Last completed step", labels=["run"]),
            g("dlogit_step_seconds", "Wall time of the last step", labels=["run"]),
            g(
                "dlogit_rows_per_second",
                "Rows processed per second (last progress event)",
                labels=["run"],
            ),
            g(
                "dlogit_bytes_per_second",
                "Bytes of data read per second (last progress event)",
                labels=["run"],
            ),
            g(
                "dlogit_eta_seconds",
                "Estimated seconds left (remaining steps x recent mean step time)",
                labels=["run"],
            ),
            g(
                "dlogit_worker_step_seconds",
                "Per-worker seconds spent in the last step",
                labels=["run", "worker"],
            ),
            g(
                "dlogit_run_info",
                "Always 1; labels carry the run status and solver",
                labels=["run", "status", "solver", "mode"],
            ),
            g("dlogit_runs_active", "Runs currently running (not finished, not stale)"),
            CounterMetricFamily(
                "dlogit_steps", "Optimizer steps observed by this scheduler"
            ),
        ]

    def collect(self) -> Iterator[Any]:
        fams = {f.name: f for f in self._families()}
        now = time.time()
        seen: set[str] = set()
        active = 0
        steps_total = 0
        for state in list(self._states):
            with state.lock:
                steps_total += state.steps_total
                active += state.active_runs(now)
                for rs in state.runs.values():
                    if rs.run in seen:
                        continue
                    seen.add(rs.run)
                    lab = [rs.run]
                    if rs.last_step is not None:
                        fams["dlogit_step"].add_metric(lab, float(rs.last_step))
                    for name, value in (
                        ("dlogit_loss", rs.loss),
                        ("dlogit_grad_norm", rs.grad_norm),
                        ("dlogit_step_seconds", rs.step_seconds),
                        ("dlogit_rows_per_second", rs.rows_per_s),
                        ("dlogit_bytes_per_second", rs.bytes_per_s),
                        ("dlogit_eta_seconds", rs.eta_seconds()),
                    ):
                        if not math.isnan(value):
                            fams[name].add_metric(lab, value)
                    for worker, sec in sorted(rs.worker_seconds.items()):
                        fams["dlogit_worker_step_seconds"].add_metric(
                            [rs.run, worker], sec
                        )
                    fams["dlogit_run_info"].add_metric(
                        [
                            rs.run,
                            rs.display_status(now),
                            str(rs.params.get("solver", "")),
                            str(rs.params.get("mode", "")),
                        ],
                        1.0,
                    )
        fams["dlogit_runs_active"].add_metric([], float(active))
        fams["dlogit_steps"].add_metric([], float(steps_total))
        return iter(fams.values())


def get_collector() -> DlogitCollector:
    """The process-wide collector, registered on ``prometheus_client.REGISTRY``."""
    global _collector
    with _lock:
        if _collector is None:
            from prometheus_client import REGISTRY

            collector = DlogitCollector()
            REGISTRY.register(collector)
            _collector = collector
        return _collector


def attach(state: MonitorState) -> bool:
    """Expose ``state`` on ``/metrics``; False if prometheus_client is missing."""
    try:
        get_collector().attach(state)
    except ImportError:
        return False
    return True


def detach(state: MonitorState) -> None:
    if _collector is not None:
        _collector.detach(state)
