"""Options shared by several commands (cluster selection, TLS)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def cluster_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Where to run: a local cluster (workers, GPUs, host) or an existing scheduler (+ TLS)."""
    opts = [
        click.option("--workers", type=int, default=None,
                     help="Local CPU worker processes (default: min(4, cores)); ignored with --gpus."),
        click.option("--gpus", default=None,
                     help="Local GPU workers: comma-separated ids or 'all' (dask-cuda, one worker per GPU)."),
        click.option("--rmm-pool-size", default=None, help="RMM pool per GPU worker, e.g. 8GB."),
        click.option("--host", default="127.0.0.1", show_default=True,
                     help="Interface the local cluster binds (dashboard included)."),
        click.option("--dashboard-address", default=None,
                     help="Dashboard address of the local cluster [default: HOST:8787, or a free port]."),
        click.option("--scheduler", envvar="DLOGIT_SCHEDULER", default=None,
                     help="Existing scheduler address, e.g. tcp://10.0.0.5:8786 [env DLOGIT_SCHEDULER]."),
        click.option("--scheduler-file", type=click.Path(), default=None,
                     help="Scheduler file written by `dask scheduler --scheduler-file`."),
        click.option("--connect-timeout", default=None,
                     help="Give up reaching the scheduler after this long (e.g. 10s) [dlogit.connect-timeout]."),
        click.option("--tls-ca-file", type=click.Path(), default=None, help="TLS CA certificate."),
        click.option("--tls-cert", type=click.Path(), default=None, help="TLS certificate."),
        click.option("--tls-key", type=click.Path(), default=None, help="TLS private key."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f
