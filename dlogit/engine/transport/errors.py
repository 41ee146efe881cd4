"""The transport's failures: a worker lost (or holding no shards), a step failed, stopped or late."""

from __future__ import annotations

from dlogit.errors import ClusterError


class WorkerLost(Exception):
    """A worker of the tree did not answer (connection closed, or silent for the heartbeat)."""

    def __init__(self, worker: str, why: str, silent: bool = False, wedged: bool = False) -> None:
        super().__init__(f"{worker}: {why}")
        self.worker = worker
        self.why = why
        #: it stopped answering (frozen?) or stopped making progress, rather than closing its link: the
        #: only cases that get a listed worker removed from the cluster (when opted in)
        self.silent = silent
        #: it answers (keep-alives) but its evaluation does not progress: its data can still be fetched
        self.wedged = wedged


class ShardsMissing(WorkerLost):
    """A worker that answers but no longer holds the fit's shards (restarted under the same address)."""


class StepFailed(ClusterError):
    """A worker raised while evaluating a step (the message names it)."""


class StepStopped(Exception):
    """The fit was asked to stop (Ctrl-C, a cancelled task) while a step was pending: the step is
    abandoned (its links closed), the fit stops from its last completed step."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StepTimeout(ClusterError):
    """A step ran past ``dlogit.engine.step-timeout``."""

