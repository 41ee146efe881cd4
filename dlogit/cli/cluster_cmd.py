"""``dlogit cluster up``: run a local Dask scheduler and workers in the foreground.

Other shells (or other machines, when bound beyond loopback with TLS) then train on it
with ``dlogit train --scheduler ADDRESS`` or ``--scheduler-file FILE``.  Runs until
Ctrl-C or SIGTERM, then closes the workers and the scheduler and removes the scheduler
file it wrote.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import sys
import threading
import warnings

import click

logger = logging.getLogger("dlogit.cli.cluster")

DEFAULT_SCHEDULER_PORT = 8786
DEFAULT_DASHBOARD_PORT = 8787


def exposure_warning(host: str, tls: bool) -> str | None:
    """The warning to print when the scheduler would be reachable beyond loopback without TLS."""
    from dlogit.cluster import is_loopback

    if tls or is_loopback(host):
        return None
    return (
        f"dlogit: warning: binding the scheduler to {host} without TLS: anyone who can reach this "
        "address can run arbitrary code on the workers; use --tls-ca-file/--tls-cert/--tls-key "
        "or keep --host 127.0.0.1 and tunnel (ssh -L)"
    )


def write_scheduler_file(path: str, info: dict) -> None:
    """Write ``info`` as JSON atomically, so a reader polling for the file never sees half of it."""
    from dlogit.files import atomic_write

    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(info, f, indent=2, default=str)

    atomic_write(path, write)


def _scheduler_identity(cluster) -> dict:
    """What ``dask scheduler --scheduler-file`` writes; ``Client(scheduler_file=...)`` reads ``address``."""
    scheduler = getattr(cluster, "scheduler", None)
    if scheduler is not None and hasattr(scheduler, "identity"):
        try:
            ident = dict(scheduler.identity())
            ident.pop("workers", None)  # a snapshot of workers would only go stale
            ident["address"] = cluster.scheduler_address
            return ident
        except (AttributeError, KeyError, TypeError):  # pragma: no cover - identity() differs
            logger.debug("scheduler.identity() failed; writing the address only", exc_info=True)
    return {"type": "Scheduler", "address": cluster.scheduler_address}


def _start_kwargs(start, **wanted) -> dict:
    """Pass each keyword only if ``start`` accepts it; fail loudly for a non-default one it does not."""
    params = inspect.signature(start).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out = {}
    for name, (value, default) in wanted.items():
        if takes_any or name in params:
            out[name] = value
        elif value != default:
            raise click.UsageError(
                f"this dlogit's start_local_cluster() has no {name!r} parameter; "
                f"cannot honour --{name.replace('_', '-')}"
            )
    return out


@click.group("cluster")
def cluster() -> None:
    """Run a Dask cluster for dlogit."""


@cluster.command("up")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="CPU worker processes [default: min(4, cores); one per GPU with GPUs].")
@click.option("--gpus", default=None, metavar="IDS",
              help="GPU ids, e.g. 0,1: one worker per GPU (needs dask-cuda).")
@click.option("--rmm-pool-size", default=None, metavar="SIZE",
              help="RMM pool per GPU worker, e.g. 1GB.")
@click.option("--memory-limit", default=None, metavar="SIZE|FRACTION",
              help="Memory limit of each worker, e.g. 4GiB [default: auto, the machine's memory shared].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the scheduler and workers bind to.")
@click.option("--scheduler-port", type=click.IntRange(min=0, max=65535),
              default=DEFAULT_SCHEDULER_PORT, show_default=True, help="0 picks a free port.")
@click.option("--dashboard-address", default=None, metavar="ADDR",
              help="Dashboard address (plain HTTP, with /metrics) [default: 127.0.0.1:8787 whatever --host "
                   "is, another port if taken].")
@click.option("--scheduler-file", type=click.Path(dir_okay=False), default=None,
              help="Write the scheduler's address here for `dlogit train --scheduler-file`.")
@click.option("--tls-ca-file", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None)
def up(workers, gpus, rmm_pool_size, memory_limit, host, scheduler_port, dashboard_address, scheduler_file,
       tls_ca_file, tls_cert, tls_key) -> None:
    """Start a scheduler and workers here and keep them running until Ctrl-C / SIGTERM."""
    from dlogit import cluster as dcluster
    from dlogit.errors import DlogitError

    try:
        security = dcluster.make_security(tls_ca_file, tls_cert, tls_key)
        if memory_limit is not None:
            memory_limit = dcluster.check_memory_limit(memory_limit)
    except (DlogitError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    if scheduler_file:  # before anything starts, as every output is (its directory made if missing)
        _check_scheduler_file(scheduler_file)
    warning = exposure_warning(host, tls=security is not None)
    if warning:
        click.echo(warning, err=True)

    kwargs = {"workers": workers, "gpus": gpus, "host": host, "dashboard_address": dashboard_address,
              "rmm_pool_size": rmm_pool_size, "security": security, "memory_limit": memory_limit}
    kwargs.update(_start_kwargs(dcluster.start_local_cluster,
                                scheduler_port=(scheduler_port, 0)))

    stop = threading.Event()
    def _on_signal(signum, frame):
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    lc = None
    wrote_file = False
    try:
        lc = _start(dcluster, kwargs)
        if scheduler_file:
            write_scheduler_file(scheduler_file, _scheduler_identity(lc))
            wrote_file = True
        _say_started(dcluster, lc, scheduler_file)
        _wait(lc, stop)
    finally:
        # a second Ctrl-C while closing must not leave orphans behind: ignore it
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        _stop(lc, scheduler_file if wrote_file else None)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("stopped")


def _check_scheduler_file(scheduler_file: str) -> None:
    """``--scheduler-file`` can be written (its directory made if missing), or an :class:`OutputError`."""
    from dlogit.errors import OutputError
    from dlogit.outputs import check_output

    directory = os.path.dirname(os.path.abspath(scheduler_file))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write the scheduler file to {scheduler_file}: directory {directory} "
                          f"does not exist and cannot be made ({exc.strerror or exc})") from None
    check_output(scheduler_file, what="scheduler file")


def _start(dcluster, kwargs: dict):
    """The local cluster (its workers spawned with SIGINT blocked); a failure is one ClusterError line."""
    from dlogit.cli import children_start_without_sigint
    from dlogit.errors import ClusterError, DlogitError

    try:
        with warnings.catch_warnings():
            # already said above, once, in this command's words
            warnings.filterwarnings("ignore", message=r"binding the cluster to .* without TLS",
                                    category=RuntimeWarning)
            with children_start_without_sigint():  # a Ctrl-C while the workers import is ours alone
                return dcluster.start_local_cluster(**kwargs)
    except (DlogitError, OSError, ValueError, ImportError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"cannot start the cluster: {text}") from None


def _say_started(dcluster, lc, scheduler_file: str | None) -> None:
    from dlogit.monitor.progress import format_dashboard_url

    address = lc.scheduler_address
    n_workers = len(getattr(lc, "workers", {}) or {})
    click.echo(f"dlogit cluster up: {n_workers} worker(s)")
    click.echo(f"scheduler: {address}")
    link = dcluster.dashboard_link(lc)
    click.echo(f"dashboard: {format_dashboard_url(link) if link else 'off'}")
    if scheduler_file:
        click.echo(f"scheduler file: {os.path.abspath(scheduler_file)}")
        click.echo(f"train with: dlogit train DATA --scheduler-file {scheduler_file}")
    else:
        click.echo(f"train with: dlogit train DATA --scheduler {address}")
    click.echo("press Ctrl-C to stop")
    sys.stdout.flush()


def _wait(lc, stop: threading.Event) -> None:
    """Until ``stop`` is set (a signal) or the scheduler stopped (a ClusterError)."""
    from dlogit.errors import ClusterError

    while not stop.wait(0.5):
        status = getattr(getattr(lc, "scheduler", None), "status", None)
        if status is not None and getattr(status, "name", str(status)) in ("closed", "failed"):
            raise ClusterError("the scheduler stopped")


def _stop(lc, written_file: str | None) -> None:
    """Close the cluster (when it started) and remove the scheduler file this command wrote."""
    if lc is not None:
        click.echo("stopping...")
        try:
            lc.close(timeout=30)
        except Exception as exc:  # noqa: BLE001 - still remove the file and exit cleanly
            click.echo(f"dlogit: warning: closing the cluster: {str(exc).strip()[:200]}", err=True)
    if written_file:
        try:
            os.unlink(written_file)
        except OSError:
            pass
