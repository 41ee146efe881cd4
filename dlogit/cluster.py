"""Starting a local Dask cluster or connecting to an existing one.

Local clusters bind every listener, the dashboard included, to ``127.0.0.1`` unless told otherwise.
With GPUs and CuPy present the local cluster is dask-cuda's ``LocalCUDACluster`` (one worker per GPU);
otherwise CPU worker processes (NumPy chunks).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dask

from dlogit._xp import cupy_available
from dlogit.config import LOCAL_WORKER_ENV, setting
from dlogit.errors import ClusterError

logger = logging.getLogger("dlogit.cluster")

SCHEDULER_ENV = "DLOGIT_SCHEDULER"


def is_loopback(host: str) -> bool:
    """True when ``host`` (an IP, ``localhost``, ``[::1]``, optionally ``tcp://``-prefixed, with or
    without a port) listens on loopback only."""
    host = host.strip()
    if "://" in host:
        host = host.split("://", 1)[1]
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or an interface's address: assume others can reach it


def make_security(tls_ca_file: str | None = None, tls_cert: str | None = None,
                  tls_key: str | None = None) -> Any:
    """A :class:`distributed.Security` for the given files, or ``None`` (then dask's own
    ``distributed.comm.tls.*`` config applies)."""
    given = [tls_ca_file, tls_cert, tls_key]
    if not any(given):
        return None
    if not all(given):
        raise ClusterError("TLS needs all three of --tls-ca-file, --tls-cert and --tls-key")
    for f in given:
        if not os.path.isfile(f):
            raise ClusterError(f"TLS file not found: {f}")
    from distributed import Security

    return Security(tls_ca_file=tls_ca_file, tls_client_cert=tls_cert, tls_client_key=tls_key,
                    tls_scheduler_cert=tls_cert, tls_scheduler_key=tls_key,
                    tls_worker_cert=tls_cert, tls_worker_key=tls_key, require_encryption=True)


def parse_gpus(gpus: str | None) -> list[int] | None:
    """``"0,1"`` -> ``[0, 1]``; ``"all"`` -> every visible GPU; ``None`` -> ``None``."""
    if gpus is None:
        return None
    if gpus.strip().lower() == "all":
        if not cupy_available():
            raise ClusterError("--gpus all: no CUDA GPU (or no CuPy) is available on this machine")
        import cupy

        return list(range(cupy.cuda.runtime.getDeviceCount()))
    try:
        ids = [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        raise ClusterError(f"--gpus takes a comma-separated list of GPU ids or 'all', got {gpus!r}") from None
    if not ids:
        raise ClusterError("--gpus is empty")
    return ids


def _worker_sees_gpu() -> bool:
    """Worker-side probe of :func:`workers_have_gpus`: CuPy imports here and sees a CUDA device."""
    from dlogit._xp import cupy_available

    return cupy_available()


def workers_have_gpus(client: Any) -> bool:
    """Whether every worker of ``client``'s cluster sees CuPy and at least one CUDA device.

    The probe runs on the workers (``client.run``), never on the client, which does not import CuPy:
    a CPU laptop driving GPU workers gets ``True`` (and should give them CuPy chunks).

    Parameters
    ----------
    client : distributed.Client
        A connected client.

    Returns
    -------
    bool
        False when the cluster has no workers, when any worker lacks CuPy or a device, or when a
        worker's probe fails (its error is logged).
    """
    answers = client.run(_worker_sees_gpu, on_error="return")
    if not answers:
        return False
    ok = True
    for worker, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            logger.warning("dlogit: cannot tell whether worker %s has a GPU (%s: %s); using CPU chunks",
                           worker, type(answer).__name__, answer)
            ok = False
        elif answer is not True:
            ok = False
    return ok


def worker_kind(client: Any) -> str:
    """``"gpu"`` when every worker of ``client``'s cluster sees CuPy and a CUDA device, else ``"cpu"``
    (no workers: ``"cpu"``). The probe runs on the workers (as :func:`workers_have_gpus`'s).

    Raises
    ------
    ClusterError
        The workers could not be asked (the scheduler went away), or a worker's probe failed: its chunks'
        kind cannot be told, and guessing CPU chunks for a GPU worker (or the reverse) would be wrong.
    """
    status = getattr(client, "status", "running")
    if status not in ("running", "newly-created"):
        raise ClusterError(f"cannot ask the workers whether they have a GPU: the client is {status} (the "
                           "scheduler went away?)")
    try:
        answers = client.run(_worker_sees_gpu, on_error="return")
    except (OSError, TimeoutError) as exc:  # distributed's CommClosedError is an OSError
        raise ClusterError(f"cannot ask the workers whether they have a GPU: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    for worker, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            raise ClusterError(f"cannot tell whether worker {worker} has a GPU (its probe raised "
                               f"{type(answer).__name__}: {answer})")
    return "gpu" if answers and all(answer is True for answer in answers.values()) else "cpu"


#: worker preload: imports dlogit's engine at worker start (cluster start-up) rather than in the first fit
WORKER_PRELOAD = "dlogit.worker"


def start_local_cluster(workers: int | None = None, gpus: str | list[int] | None = None,
                        host: str = "127.0.0.1", dashboard_address: str | None = None,
                        rmm_pool_size: str | None = None, security: Any = None,
                        threads_per_worker: int = 1, scheduler_port: int = 0,
                        silence_logs: int = logging.CRITICAL, memory_limit: str | None = None) -> Any:
    """Start a local cluster and return it (``cluster.kind`` is ``"gpu"`` or ``"cpu"``).

    GPUs are used when ``gpus`` is given (then they must exist) or, when it is ``None``, when CuPy
    sees at least one GPU and ``workers`` is not given. ``dashboard_address`` defaults to
    ``127.0.0.1:8787`` (another free port when that one is taken) whatever ``host`` is: the dashboard
    and its ``/metrics`` are plain HTTP without authentication (TLS covers only the scheduler and
    workers), so they leave loopback only when ``dashboard_address`` says so -- with a warning.
    ``memory_limit`` is each worker's (Dask's: a size such as ``1GiB``, a fraction of the machine's
    memory, or ``auto``, the default: the machine's memory shared by the workers).
    """
    from distributed import LocalCluster

    if not is_loopback(host) and security is None:
        warnings.warn(f"binding the cluster to {host} without TLS: anyone who can reach this "
                      "address can run code on it (use --tls-* options)", RuntimeWarning, stacklevel=2)
    gpu_ids = parse_gpus(gpus) if isinstance(gpus, str) else gpus
    if gpu_ids is not None and not cupy_available():
        raise ClusterError("GPUs were requested but no CUDA GPU (or no CuPy) is available")
    use_gpu = gpu_ids is not None or (workers is None and cupy_available())
    dashboard_address, notice = dashboard_binding(host, dashboard_address)
    if notice:
        warnings.warn(notice, RuntimeWarning, stacklevel=2)
    preload = _scheduler_preload()
    protocol = "tls://" if security is not None else None
    kwargs: dict[str, Any] = {"host": host, "dashboard_address": dashboard_address, "security": security,
                                  "scheduler_port": scheduler_port, "silence_logs": silence_logs,
                                  "scheduler_kwargs": {"preload": preload} if preload else {},
                                  "preload": [WORKER_PRELOAD], "env": {LOCAL_WORKER_ENV: "1"}}
    if protocol:
        kwargs["protocol"] = protocol
    if memory_limit is not None:
        kwargs["memory_limit"] = check_memory_limit(memory_limit)
    if use_gpu:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            if gpu_ids is not None:
                raise ClusterError("--gpus needs dask-cuda: pip install 'dlogit[cu12]' (or cu13)") from None
            logger.warning("dlogit: GPUs found but dask-cuda is not installed; using CPU workers")
            use_gpu = False
        else:
            if gpu_ids is not None:
                kwargs["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
            if rmm_pool_size:
                kwargs["rmm_pool_size"] = rmm_pool_size
            with _dashboard_fallback(kwargs):
                cluster = _start(LocalCUDACluster, threads_per_worker=threads_per_worker, **kwargs)
            cluster.kind = "gpu"
            cluster.dlogit_dashboard_host = _bind_host(kwargs["dashboard_address"])
            return cluster
    if rmm_pool_size:
        raise ClusterError("--rmm-pool-size needs GPU workers")
    n = workers if workers is not None else min(4, os.cpu_count() or 1)
    if n < 1:
        raise ClusterError(f"--workers must be at least 1, got {n}")
    with _dashboard_fallback(kwargs):
        cluster = _start(LocalCluster, n_workers=n, threads_per_worker=threads_per_worker,
                         processes=True, **kwargs)
    cluster.kind = "cpu"
    cluster.dlogit_dashboard_host = _bind_host(kwargs["dashboard_address"])
    return cluster


def check_memory_limit(value: str) -> str:
    """``value`` if Dask takes it as a worker's ``memory_limit`` (a size, a fraction in (0, 1], or
    ``auto``), else a :class:`ClusterError` in one line."""
    import dask.utils

    text = str(value).strip()
    if text.lower() == "auto":
        return "auto"
    try:
        fraction: float | None = float(text)
    except ValueError:
        fraction = None
    if fraction is not None:
        ok = 0 < fraction <= 1
    else:
        try:
            ok = int(dask.utils.parse_bytes(text)) >= 1
        except (ValueError, TypeError):
            ok = False
    if not ok:
        raise ClusterError(f"--memory-limit must be a size (e.g. 2GiB), a fraction of the machine's memory "
                           f"in (0, 1] or auto, got {value!r}")
    return text


def _bind_host(address: str) -> str:
    """The host part of a ``HOST:PORT`` / ``[V6]:PORT`` listening address."""
    address = str(address).strip()
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    return address.rsplit(":", 1)[0] if ":" in address else address


def dashboard_link(obj: Any) -> str | None:
    """The dashboard URL of a cluster (or of a client of one) where it really listens.

    Dask's own ``dashboard_link`` puts the *scheduler's* host in the URL; a local cluster of dlogit's
    keeps its dashboard on loopback when the scheduler binds beyond it, so the link names the
    dashboard's own host (a wildcard ``0.0.0.0`` keeps Dask's)."""
    from urllib.parse import urlsplit, urlunsplit

    link = getattr(obj, "dashboard_link", None)
    if not link:
        return None
    owner = getattr(obj, "cluster", None) or obj
    host = getattr(owner, "dlogit_dashboard_host", None)
    if not host or host in ("0.0.0.0", "::"):
        return link
    parts = urlsplit(link)
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def dashboard_binding(host: str, dashboard_address: str | None) -> tuple[str, str | None]:
    """Where a local cluster's dashboard listens, and the warning to give about it (or None).

    The default is loopback (``127.0.0.1:8787``, or ``[::1]:8787`` for an IPv6 loopback host) even when
    the scheduler binds beyond it: the dashboard and ``/metrics`` are plain HTTP that anyone reaching
    them can read, TLS or not. An explicit non-loopback address is kept, with a warning."""
    if dashboard_address is None or not str(dashboard_address).strip():
        address = "[::1]:8787" if host.strip("[]") == "::1" else "127.0.0.1:8787"
        if is_loopback(host):
            return address, None
        return address, (f"the dashboard stays on {address} (loopback) while the cluster binds to {host}: "
                         "it is plain HTTP without authentication; tunnel to it (ssh -L 8787:localhost:8787), "
                         "or expose it with --dashboard-address")
    address = str(dashboard_address).strip()
    if address.startswith(":") and address[1:].isdigit():  # ":8787" binds every interface (not "::1")
        address = "0.0.0.0" + address
    bind = address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
    if is_loopback(bind):
        return address, None
    return address, (f"the dashboard and /metrics at {address} are plain HTTP without authentication "
                     "(TLS covers only the scheduler and workers): anyone who can reach it sees the "
                     "cluster and its fits")


class _dashboard_fallback:
    """Use a random dashboard port when the requested one is taken."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs

    def __enter__(self) -> None:
        import socket

        addr = self.kwargs.get("dashboard_address")
        if not addr or addr.endswith(":0"):
            return
        host, _, port = addr.rpartition(":")
        with socket.socket() as s:
            try:
                s.bind((host or "127.0.0.1", int(port)))
            except OSError:
                self.kwargs["dashboard_address"] = f"{host}:0"

    def __exit__(self, *exc: object) -> None:
        return None


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc


def _check_port_free(host: str, port: int) -> None:
    import socket

    if not port:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host.strip("[]"), int(port)))
        except OSError as exc:
            raise ClusterError(f"cannot start the scheduler on {host}:{port}: {exc.strerror or exc} "
                               "(another scheduler running? choose another --scheduler-port, or 0 "
                               "for a free one)") from None


def _start(factory: Any, **kwargs: Any) -> Any:
    _check_port_free(kwargs.get("host") or "127.0.0.1", kwargs.get("scheduler_port") or 0)
    try:
        with warnings.catch_warnings():  # a taken dashboard port falls back to a free one: fine
            warnings.filterwarnings("ignore", message="Port .* is already in use")
            return factory(**kwargs)
    except Exception as exc:
        root = _root_cause(exc)
        detail = f"{type(root).__name__}: {root}" if root is not exc else str(exc)
        raise ClusterError(f"could not start a local cluster: {detail.splitlines()[0]}") from exc


def _scheduler_preload() -> list[str]:
    try:
        from dlogit.monitor import SCHEDULER_PRELOAD
    except Exception:  # noqa: BLE001 - monitoring is optional (needs bokeh)
        return []
    return [SCHEDULER_PRELOAD]


def resolve_scheduler(scheduler: str | None = None, scheduler_file: str | None = None) -> dict[str, str]:
    """Where to connect: explicit options, then ``DLOGIT_SCHEDULER``, then ``dlogit.scheduler``.

    Returns ``{}`` (start a local cluster), ``{"address": ...}`` or ``{"scheduler_file": ...}``.
    A value naming an existing file is taken as a scheduler file.
    """
    if scheduler and scheduler_file:
        raise ClusterError("give either --scheduler or --scheduler-file, not both")
    if scheduler_file:
        return {"scheduler_file": scheduler_file}
    value = scheduler or os.environ.get(SCHEDULER_ENV) or setting("dlogit.scheduler")
    if not value:
        return {}
    if "://" not in value and os.path.isfile(value):
        return {"scheduler_file": value}
    return {"address": value}


def read_scheduler_file(path: str) -> str:
    """The scheduler address in a scheduler file (``dask scheduler --scheduler-file``, ``dlogit cluster
    up --scheduler-file``); a :class:`ClusterError` naming the file when it has none."""
    try:
        with open(path) as f:
            info = json.load(f)
    except OSError as exc:
        raise ClusterError(f"cannot read scheduler file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ClusterError(f"scheduler file {path} is not JSON: {exc}") from None
    address = info.get("address") if isinstance(info, dict) else None
    if not isinstance(address, str) or not address.strip():
        raise ClusterError(f"scheduler file {path} has no scheduler address (no \"address\" entry): is it a "
                           "file written by `dask scheduler --scheduler-file` or `dlogit cluster up`?")
    return address.strip()


def connect(scheduler: str | None = None, scheduler_file: str | None = None,
            timeout: float | str | None = None, security: Any = None) -> Any:
    """Connect a :class:`distributed.Client` to an existing scheduler, failing within ``timeout``."""
    from distributed import Client

    target = resolve_scheduler(scheduler, scheduler_file)
    if not target:
        raise ClusterError("no scheduler given (use --scheduler, --scheduler-file or DLOGIT_SCHEDULER)")
    t = dask.utils.parse_timedelta(timeout if timeout is not None else setting("dlogit.connect-timeout"))
    if "scheduler_file" in target:
        path = target["scheduler_file"]
        address = read_scheduler_file(path)
    else:
        address = target["address"]
    if address.startswith("tls://") and security is None:
        from distributed import Security

        security = Security()  # dask's distributed.comm.tls.* config
        if not security.tls_ca_file:
            raise ClusterError(f"{address} uses TLS: give --tls-ca-file, --tls-cert and --tls-key")
    _probe(address, t, security)
    try:
        with dask.config.set({"distributed.comm.timeouts.connect": t}):
            client = Client(address, timeout=t, security=security, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address} within {t:g}s: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001
        raise ClusterError(f"cannot connect to the Dask scheduler at {address}: {exc}") from None
    try:
        check_versions_once(client)
    except ClusterError:
        client.close()
        raise
    return client


def _probe(address: str, timeout: float, security: Any) -> None:
    """Ask the scheduler for its identity within ``timeout`` (``Client`` alone can wait forever on a
    port that accepts connections but never answers)."""
    import asyncio

    from distributed.core import rpc

    async def ask() -> None:
        args = security.get_connection_args("client") if security is not None else {}
        r = rpc(address, connection_args=args, timeout=timeout)
        try:
            await r.identity()
        finally:
            await r.close_rpc()

    try:
        asyncio.run(asyncio.wait_for(ask(), timeout))
    except (asyncio.TimeoutError, TimeoutError):
        raise ClusterError(f"cannot reach the Dask scheduler at {address} within {timeout:g}s "
                           "(no answer)") from None
    except Exception as exc:  # noqa: BLE001
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClusterError(f"cannot reach the Dask scheduler at {address} within {timeout:g}s: "
                           f"{first}") from None


def check_versions_once(client: Any) -> None:
    """:func:`check_versions` the first time a client is seen (the estimator calls this at every fit
    on a client; one round trip to the workers per client, then nothing). A client whose check failed
    is checked again next time."""
    if getattr(client, "_dlogit_versions_checked", False):
        return
    check_versions(client)
    try:
        client._dlogit_versions_checked = True
    except AttributeError:  # pragma: no cover - a client that takes no attributes: check every time
        pass


def check_versions(client: Any) -> None:
    """Raise :class:`ClusterError` when workers run another dlogit, dask or distributed than here."""
    from dlogit import __version__

    def versions() -> dict[str, str]:
        import dask as _dask
        import distributed as _distributed

        import dlogit as _dlogit

        return {"dlogit": _dlogit.__version__, "dask": _dask.__version__,
                "distributed": _distributed.__version__}

    import distributed

    here = {"dlogit": __version__, "dask": dask.__version__, "distributed": distributed.__version__}
    try:
        there = client.run(versions)
    except Exception as exc:  # noqa: BLE001 - e.g. dlogit missing on the workers
        raise ClusterError(f"cannot check the workers' versions (is dlogit installed there?): "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    for worker, vers in sorted(there.items()):
        for pkg, v in here.items():
            if vers.get(pkg) != v:
                raise ClusterError(f"version mismatch: worker {worker} has {pkg} {vers.get(pkg)}, "
                                   f"this client has {pkg} {v}; install the same versions everywhere")


@dataclass(frozen=True)
class Session:
    """A client ready for dlogit's fits (:func:`open_cluster`): ``kind`` is the workers' chunk kind
    (``"gpu"`` or ``"cpu"``); ``cluster`` the local cluster started for it (``None`` on an existing
    scheduler)."""

    client: Any
    kind: str
    cluster: Any = None

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1).get("workers", {}))


@contextlib.contextmanager
def open_cluster(scheduler: str | None = None, scheduler_file: str | None = None, *,
                 connect_timeout: float | None = None, tls_ca_file: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, workers: int | None = None,
                 gpus: str | None = None, rmm_pool_size: str | None = None, host: str = "127.0.0.1",
                 dashboard_address: str | None = None, memory_limit: str | None = None,
                 spawn_guard: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
                 on_interrupt: Callable[[], None] | None = None) -> Iterator[Session]:
    """A :class:`Session` on the scheduler named (:func:`resolve_scheduler`: the arguments,
    ``DLOGIT_SCHEDULER``, ``dlogit.scheduler``), else on a local cluster started for it
    (:func:`start_local_cluster`; the workers' options apply only there); closed on exit, quietly.

    The client listens to dlogit's events (:func:`dlogit.engine.listen`). ``spawn_guard()`` is entered
    around the local workers' start (the CLI blocks SIGINT in the processes spawned meanwhile);
    ``on_interrupt()`` is called before closing when a ``KeyboardInterrupt`` is leaving the block."""
    from distributed import Client

    from dlogit.engine import listen

    security = make_security(tls_ca_file, tls_cert, tls_key)
    if resolve_scheduler(scheduler, scheduler_file):
        client = connect(scheduler, scheduler_file, timeout=connect_timeout, security=security)
        try:
            listen(client)
            yield Session(client, worker_kind(client))
        finally:
            _close_quietly(client, on_interrupt)
        return
    cluster = None
    try:
        with spawn_guard() if spawn_guard is not None else contextlib.nullcontext():
            cluster = start_local_cluster(workers=workers, gpus=gpus, host=host,
                                          dashboard_address=dashboard_address, rmm_pool_size=rmm_pool_size,
                                          security=security, memory_limit=memory_limit)
        client = Client(cluster, security=security, set_as_default=False)
        client._dlogit_versions_checked = True  # type: ignore[attr-defined]  # its workers are this installation's own processes
        try:
            listen(client)
            yield Session(client, cluster.kind, cluster)
        finally:
            _close_quietly(client, on_interrupt)
    finally:
        if cluster is not None:
            _close_quietly(cluster, on_interrupt)


def _close_quietly(obj: Any, on_interrupt: Callable[[], None] | None) -> None:
    leaving = sys.exc_info()[0]
    if on_interrupt is not None and leaving is not None and issubclass(leaving, KeyboardInterrupt):
        on_interrupt()
    with contextlib.suppress(Exception):
        obj.close()


def persist(client: Any, arrays: list[Any],
            report: Callable[[int, int, float, bool], None] | None = None,
            after: float = 1.0, every: float = 5.0) -> list[Any]:
    """``client.persist(arrays)``, waiting until every chunk is in memory on the workers; the first
    array's chunks are counted for ``report(done, total, seconds, final)``: first after ``after``
    seconds, then every ``every`` seconds, and once with ``final=True`` at the end when it reported at
    all (a load under ``after`` seconds reports nothing). A chunk that failed raises its error (the
    reader's :class:`~dlogit.errors.DataError`)."""
    from distributed import futures_of

    with warnings.catch_warnings():  # dask's advice about graph size is not for a dlogit user
        warnings.filterwarnings("ignore", message="Sending large graph")
        persisted = client.persist(list(arrays))
    futs = [f for a in persisted for f in futures_of(a)]
    counted = futures_of(persisted[0])
    t0 = time.monotonic()
    next_report = t0 + after
    reported = False
    while True:
        errored = next((f for f in futs if f.status == "error"), None)
        if errored is not None:
            errored.result()  # raises the chunk's error
        if all(f.done() for f in futs):
            break
        now = time.monotonic()
        if report is not None and now >= next_report:
            report(sum(f.done() for f in counted), len(counted), now - t0, False)
            next_report = now + every
            reported = True
        time.sleep(0.05)
    if reported and report is not None:
        report(len(counted), len(counted), time.monotonic() - t0, True)
    return list(persisted)
