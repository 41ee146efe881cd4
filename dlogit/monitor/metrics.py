"""Prometheus ``dlogit_*`` metrics.

The scheduler's ``/metrics`` handler (``distributed.http.scheduler.prometheus``)
answers with ``prometheus_client.generate_latest()``, i.e. whatever is
registered on the process-wide default ``REGISTRY``.  So one custom collector,
registered there once per process, makes the dlogit metrics appear on that
endpoint next to the ``dask_*`` ones.  The collector reads every live
:class:`~dlogit.monitor.state.MonitorState` attached to it (normally exactly
one: one scheduler per process).

Run status is the ``status`` label of ``dlogit_run_info`` (one series per run,
value 1), so ``dlogit_run_info{status="diverged"}`` selects the diverged runs
that are still kept; ``dlogit_runs_finished_total{status}`` counts every run
that ended, by status, over the scheduler's lifetime (runs leave the kept set,
the counter does not forget them).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any

from dlogit.monitor.state import FINISHED, MonitorState

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
                "dlogit_stream_bytes_read",
                "Bytes read from storage per chunk evaluation (streamed chunks; last progress event)",
                labels=["run"],
            ),
            g(
                "dlogit_stream_chunks_read",
                "Streamed chunks read per chunk evaluation (last progress event)",
                labels=["run"],
            ),
            g(
                "dlogit_stream_cache_hits",
                "Chunks found in the workers' chunk cache per chunk evaluation (last progress event)",
                labels=["run"],
            ),
            g(
                "dlogit_stream_read_wait_seconds",
                "Seconds per chunk evaluation spent waiting for the read-ahead (last progress event)",
                labels=["run"],
            ),
            g(
                "dlogit_stream_compute_seconds",
                "Seconds per chunk evaluation spent computing (last progress event)",
                labels=["run"],
            ),
            g(
                "dlogit_stream_read_bound",
                "1 when the last evaluations waited for reads longer than they computed, else 0",
                labels=["run"],
            ),
            g(
                "dlogit_run_info",
                "Always 1; labels carry the run status, solver, mode and model family",
                labels=["run", "status", "solver", "mode", "family"],
            ),
            g("dlogit_n_classes", "Number of classes K of the run's model", labels=["run"]),
            g(
                "dlogit_n_nonzero",
                "Nonzero coefficients of the fitted model (intercepts excluded; from the end event)",
                labels=["run"],
            ),
            g("dlogit_runs_active", "Runs currently running (not finished, not stale)"),
            CounterMetricFamily(
                "dlogit_steps", "Optimizer steps observed by this scheduler"
            ),
            CounterMetricFamily(
                "dlogit_runs_finished",
                "Runs that ended, by final status, observed by this scheduler",
                labels=["status"],
            ),
            g(
                "dlogit_path_best_score",
                "Mean cross-validated score of the chosen point of a regularization path",
                labels=["path", "scoring"],
            ),
            g("dlogit_path_best_l2", "L2 strength of the chosen point of a path", labels=["path"]),
            g("dlogit_path_best_l1", "L1 strength of the chosen point of a path", labels=["path"]),
            g("dlogit_path_points", "Completed points of a regularization path", labels=["path"]),
            g("dlogit_path_done", "1 once the regularization path finished, else 0", labels=["path"]),
        ]

    def collect(self) -> Iterator[Any]:
        fams = {f.name: f for f in self._families()}
        now = time.time()
        seen: set[str] = set()
        seen_paths: set[str] = set()
        active = 0
        steps_total = 0
        finished: Counter[str] = Counter()
        for state in list(self._states):
            with state.lock:
                steps_total += state.steps_total
                finished.update(state.finished_total)
                active += state.active_runs(now)
                for ps in state.paths.values():
                    if ps.path in seen_paths:
                        continue
                    seen_paths.add(ps.path)
                    lab = [ps.path]
                    fams["dlogit_path_points"].add_metric(lab, float(len(ps.points)))
                    fams["dlogit_path_done"].add_metric(lab, 1.0 if ps.done else 0.0)
                    best = ps.best_point
                    if best is not None:
                        if not math.isnan(best.mean):
                            fams["dlogit_path_best_score"].add_metric([ps.path, ps.scoring],
                                                                      best.mean)
                        fams["dlogit_path_best_l2"].add_metric(lab, best.l2)
                        fams["dlogit_path_best_l1"].add_metric(lab, best.l1)
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
                    st = rs.stream
                    if st is not None:
                        for name, value in (
                            ("dlogit_stream_bytes_read", st.bytes_read),
                            ("dlogit_stream_chunks_read", st.chunks_read),
                            ("dlogit_stream_cache_hits", st.cache_hits),
                            ("dlogit_stream_read_wait_seconds", st.read_wait_s),
                            ("dlogit_stream_compute_seconds", st.compute_s),
                            ("dlogit_stream_read_bound", 1.0 if st.bound == "read" else 0.0),
                        ):
                            fams[name].add_metric(lab, float(value))
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
                            rs.model.family,
                        ],
                        1.0,
                    )
                    fams["dlogit_n_classes"].add_metric(lab, float(rs.model.n_classes))
                    if rs.n_nonzero is not None:
                        fams["dlogit_n_nonzero"].add_metric(lab, float(rs.n_nonzero))
        fams["dlogit_runs_active"].add_metric([], float(active))
        fams["dlogit_steps"].add_metric([], float(steps_total))
        for status in FINISHED:
            fams["dlogit_runs_finished"].add_metric([status], float(finished[status]))
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
