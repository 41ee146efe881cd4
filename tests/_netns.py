"""A simulated multi-host Dask cluster on one Linux box: network namespaces as hosts, a delaying router.

Used by ``tests/test_netns_cluster.py`` and ``scripts/bench_scale.py`` (no pytest here: plain code).
Needs root, ``ip`` (iproute2) and ``/dev/net/tun``; :func:`unavailable` says why not, else None.

The layout (``H`` hosts of ``W`` workers each)::

    this process (root namespace): the client and the scheduler, on 10.R.0.1 (tun "<tag>h0")
    namespace <tag>-h1: W workers on 10.R.1.1 (tun "<tag>h1")     ...     namespace <tag>-hH: 10.R.H.1

Every host has one TUN device (a point-to-point layer-3 interface with its host's address and the
route to 10.R.0.0/16). A router process (this file run as a script) holds the other end of every TUN
device: it reads each IPv4 packet a host sends, and writes it to the destination host's device
``delay`` seconds later (order kept) -- what ``tc netem delay`` does on a link, done in user space
because this box's kernel has no ``sch_netem``. A round trip between two hosts is ``2 * delay`` plus
the router's own time; traffic inside a host (one namespace, its own address) stays on its loopback.

Bounded: the router forwards at most ``max_bytes`` (then drops, and says so on exit) and exits after
``max_seconds`` or as soon as its parent closes its stdin (a killed test too: the TUN devices are not
persistent, they vanish with the router's file descriptors). Every server binds its host's address
(``--host 10.R.k.1``, no dashboard, no nanny); :meth:`SimCluster.close` kills every process it started,
deletes the namespaces and checks that none of them, no device and no process is left.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000
MTU = 65000


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why a simulated cluster cannot be built here (None when it can)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    probe = f"dlprobe-{os.getpid()}"
    try:
        _run("ip", "netns", "add", probe)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"cannot create a network namespace: {getattr(exc, 'stderr', '') or exc}".strip()
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


# --------------------------------------------------------------------------------------------------
# the router (this file run as a script, in the root namespace)

def _open_tun(name: str) -> int:
    import fcntl

    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


def _realtime() -> None:
    """A network is not one more process competing for the box's cores: the router's delays should not
    be the scheduling latency of a loaded box. It blocks in ``select`` between packets and uses little
    CPU, so it runs SCHED_FIFO when allowed -- with RLIMIT_RTTIME as a guard (a router that ran 1 s
    without blocking would be killed by SIGXCPU, never starving the box), else at the default priority."""
    import resource

    with contextlib.suppress(OSError, ValueError, AttributeError):
        resource.setrlimit(resource.RLIMIT_RTTIME, (1_000_000, 2_000_000))  # microseconds
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))


def router_main(argv: list[str]) -> None:
    """``_netns.py router DELAY MAX_BYTES MAX_SECONDS NAME...``: device k is host k (10.R.k.*)."""
    delay, max_bytes, max_seconds = float(argv[0]), int(argv[1]), float(argv[2])
    fds = [_open_tun(n) for n in argv[3:]]
    _realtime()
    print("ready", flush=True)
    os.set_blocking(0, False)
    end = time.monotonic() + max_seconds
    queue: list[tuple[float, int, int, bytes]] = []  # (due, seq, host, packet)
    seq = 0
    sent = dropped = packets = 0
    watch = [*fds, 0]
    while True:
        now = time.monotonic()
        if now > end:
            break
        while queue and queue[0][0] <= now:
            _, _, host, pkt = heapq.heappop(queue)
            with contextlib.suppress(OSError):  # a device whose host is going (or full): the packet is lost
                os.write(fds[host], pkt)
        timeout = max(0.0, queue[0][0] - now) if queue else 0.5
        readable, _, _ = select.select(watch, [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            if fd == 0:
                try:
                    data = os.read(0, 4096)
                except BlockingIOError:
                    continue
                if not data:  # the parent went away (or closed us): stop at once
                    return _router_exit(sent, dropped, packets)
                for line in data.decode().splitlines():  # "delay SECONDS": from the next packet on
                    if line.startswith("delay "):
                        delay = float(line.split()[1])
                continue
            for _ in range(64):  # a burst, without starving the other devices
                try:
                    pkt = os.read(fd, MTU + 64)
                except BlockingIOError:
                    break
                except OSError:  # the device went (its namespace was deleted): stop watching it
                    watch.remove(fd)
                    break
                if len(pkt) < 20 or pkt[0] >> 4 != 4:
                    continue  # IPv6 (router solicitations) and runts: not ours
                host = pkt[18]  # the destination's third octet: 10.R.<host>.x
                if host >= len(fds) or sent + len(pkt) > max_bytes:
                    dropped += 1
                    continue
                sent += len(pkt)
                packets += 1
                seq += 1
                heapq.heappush(queue, (now + delay, seq, host, pkt))
    _router_exit(sent, dropped, packets)


def _router_exit(sent: int, dropped: int, packets: int) -> None:
    print(json.dumps({"bytes": sent, "packets": packets, "dropped": dropped}), flush=True)


# --------------------------------------------------------------------------------------------------
# the cluster

def _free_subnet() -> int:
    """A second octet R with nothing of 10.R.0.0/16 in this box's addresses or routes."""
    used = _run("ip", "-4", "addr").stdout + _run("ip", "-4", "route").stdout
    start = 200 + os.getpid() % 50
    for r in [*range(start, 251), *range(200, start)]:
        if f"10.{r}." not in used:
            return r
    raise RuntimeError("no free 10.R.0.0/16 subnet for the simulated cluster")


def sweep_stale() -> list[str]:
    """Delete the namespaces of simulated clusters whose creating process is gone (killed before its
    clean-up ran), with whatever still runs in them; their devices went with their router."""
    import re

    gone = []
    for ns in _run("ip", "netns", "list", check=False).stdout.split():
        m = re.fullmatch(r"dl(\d+)x\d+-h\d+", ns)
        if m is None or os.path.exists(f"/proc/{m.group(1)}"):
            continue
        for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        _run("ip", "netns", "del", ns, check=False)
        gone.append(ns)
    return gone


def worker_env() -> dict[str, str]:
    """The environment of a simulated host's processes: this checkout importable, one BLAS thread (as
    Dask's nanny gives a LocalCluster's workers), quiet logs."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env.pop("DLOGIT_SCHEDULER", None)
    env["DASK_DISTRIBUTED__LOGGING__DISTRIBUTED"] = "error"
    env["PYTHONUNBUFFERED"] = "1"
    return env


_ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while d := c.recv(64):
    c.sendall(d)
"""
_ECHO_CLIENT = """
import socket, sys, time
s = socket.socket(); s.bind((sys.argv[1], 0)); s.connect((sys.argv[2], int(sys.argv[3])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
ts = []
for _ in range(int(sys.argv[4])):
    t = time.perf_counter(); s.sendall(b"x" * 64); n = 0
    while n < 64:
        n += len(s.recv(64 - n))
    ts.append(time.perf_counter() - t)
ts.sort(); print(ts[len(ts) // 2], ts[len(ts) // 10], file=sys.stderr); print(ts[len(ts) // 2])
"""


class SimCluster:
    """``hosts`` namespaces of ``workers_per_host`` Dask workers (no nanny, one thread each), a scheduler
    in this namespace, and the delaying router between them (``delay`` seconds per hop, one way).

    Use as a context manager; :attr:`address` is the scheduler's, :meth:`host_workers` the workers of a
    host (``k`` from 1), :meth:`kill_host` SIGKILLs every process of a host, :meth:`start_host` starts
    its workers again.
    """

    def __init__(self, hosts: int = 4, workers_per_host: int = 2, delay: float = 0.0005,
                 max_bytes: int = 4 << 30, max_seconds: float = 1800.0, preload: bool = True) -> None:
        self.hosts, self.per_host, self.delay = hosts, workers_per_host, delay
        self.max_bytes, self.max_seconds, self.preload = max_bytes, max_seconds, preload
        assert 1 <= hosts <= 9, "device names hold one digit of host number"
        self.tag = f"dl{os.getpid()}x{int(time.time() * 1000) % 1000}"  # + "h9": 15 characters at most
        self.namespaces = [f"{self.tag}-h{k}" for k in range(1, hosts + 1)]
        self.devices = [f"{self.tag}h{k}" for k in range(hosts + 1)]
        self.procs: dict[int, list[subprocess.Popen]] = {k: [] for k in range(hosts + 1)}
        self.router: subprocess.Popen | None = None
        self.router_report: dict | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.address = ""
        self.subnet = 0

    def ip(self, k: int) -> str:
        return f"10.{self.subnet}.{k}.1"

    # -- set-up ----------------------------------------------------------------------------------
    def __enter__(self) -> SimCluster:  # noqa: PYI034 - Python 3.10 has no typing.Self
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        sweep_stale()
        self.subnet = _free_subnet()
        self.router = subprocess.Popen(
            [sys.executable, __file__, "router", repr(self.delay), str(self.max_bytes), repr(self.max_seconds),
             *self.devices], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.router.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"the simulated cluster's router did not start ({line!r})")
        for k, dev in enumerate(self.devices):
            ns: list[str] = [] if k == 0 else ["-n", self.namespaces[k - 1]]
            if k:
                _run("ip", "netns", "add", self.namespaces[k - 1])
                _run("ip", "link", "set", dev, "netns", self.namespaces[k - 1])
                _run("ip", *ns, "link", "set", "lo", "up")
            _run("ip", *ns, "addr", "add", f"{self.ip(k)}/16", "dev", dev)
            _run("ip", *ns, "link", "set", dev, "mtu", str(MTU), "up")
        self._start_scheduler()
        for k in range(1, self.hosts + 1):
            self.start_host(k)
        if self.per_host:
            self.wait_for_workers(self.hosts * self.per_host)

    def _start_scheduler(self) -> None:
        sched_file = self.tmp / "scheduler.json"
        with self._log("scheduler") as log:  # the child holds its own copy of the descriptor
            self.procs[0].append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", self.ip(0), "--port", "0",
                 "--no-dashboard", "--dashboard-address", f"{self.ip(0)}:0",  # its HTTP server (health,
                 "--scheduler-file", str(sched_file), "--no-show", "--idle-timeout", "900"],  # metrics) too
                env=worker_env(), stdout=subprocess.DEVNULL, stderr=log, start_new_session=True))
        deadline = time.monotonic() + 120
        while not sched_file.exists():
            if self.procs[0][0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the scheduler did not start: {self._tail('scheduler')}")
            time.sleep(0.1)
        time.sleep(0.1)  # written whole
        self.address = json.loads(sched_file.read_text())["address"]

    def _log(self, name: str):
        return open(self.tmp / f"{name}.log", "ab")

    def _tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.tmp / f"{name}.log").read_text()[-2000:]
        return ""

    def start_host(self, k: int) -> None:
        """Start host ``k``'s workers (each binds the host's own address)."""
        for _ in range(self.per_host):
            self.start_worker(k)

    def start_worker(self, k: int) -> None:
        """Start one more worker on host ``k``, bound to the host's own address (no nanny, no dashboard)."""
        name = f"h{k}w{len(self.procs[k])}-{time.monotonic_ns() % 10**6}"
        argv = ["ip", "netns", "exec", self.namespaces[k - 1], sys.executable, "-m",
                "distributed.cli.dask_worker", self.address, "--host", self.ip(k), "--nthreads", "1",
                "--no-nanny", "--no-dashboard", "--dashboard-address", f"{self.ip(k)}:0",  # the HTTP server
                "--name", name, "--death-timeout", "120", "--memory-limit", "0"]
        if self.preload:
            argv += ["--preload", "dlogit.worker"]
        with self._log(name) as log:
            self.procs[k].append(subprocess.Popen(argv, env=worker_env(), stdout=subprocess.DEVNULL,
                                                  stderr=log, start_new_session=True))

    def set_delay(self, delay: float) -> None:
        """Change the delay per hop (seconds, one way) from the next packet on."""
        assert self.router is not None and self.router.stdin is not None
        self.router.stdin.write(f"delay {delay!r}\n")
        self.router.stdin.flush()
        self.delay = delay

    def wait_for_workers(self, n: int, timeout: float = 300.0) -> None:
        from distributed import Client

        with Client(self.address, set_as_default=False, timeout=60) as c:
            c.wait_for_workers(n, timeout=timeout)

    def rtt(self, a: int, b: int, n: int = 200) -> float:
        """The median round trip (seconds) of a 64-byte TCP message from host ``a`` to host ``b`` and
        back (0 is this namespace), measured by two small processes bound to the hosts' addresses."""
        def inside(k: int) -> list[str]:
            return [] if k == 0 else ["ip", "netns", "exec", self.namespaces[k - 1]]

        server = subprocess.Popen([*inside(b), sys.executable, "-c", _ECHO_SERVER, self.ip(b)],
                                  stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.procs[b].append(server)
        try:
            port = server.stdout.readline().strip()
            out = _run(*inside(a), sys.executable, "-c", _ECHO_CLIENT, self.ip(a), self.ip(b), port, str(n))
            self.last_rtt_detail = out.stderr.strip()
            return float(out.stdout.strip())
        finally:
            server.kill()
            server.wait(10)
            self.procs[b].remove(server)

    def listeners(self) -> list[tuple[int, str]]:
        """(pid, local address) of every listening TCP socket of this cluster's scheduler and workers."""
        import re

        mine = {p.pid for ps in self.procs.values() for p in ps}
        out = []
        for ns in [None, *self.namespaces]:
            cmd = ["ss", "-ltnpH"] if ns is None else ["ip", "netns", "exec", ns, "ss", "-ltnpH"]
            for line in _run(*cmd, check=False).stdout.splitlines():
                fields = line.split()
                for pid in re.findall(r"pid=(\d+)", line):
                    if int(pid) in mine:
                        out.append((int(pid), fields[3]))
        return out

    # -- faults ----------------------------------------------------------------------------------
    def host_of_ip(self, address: str) -> int:
        """The host number of a worker's address."""
        return int(address.split("://", 1)[-1].split(":")[0].split(".")[2])

    def pids(self, k: int) -> list[int]:
        """Every process in host ``k``'s namespace."""
        out = _run("ip", "netns", "pids", self.namespaces[k - 1], check=False).stdout.split()
        return [int(p) for p in out]

    def kill_host(self, k: int) -> None:
        """SIGKILL every process of host ``k`` at once (the host is gone; its namespace stays)."""
        for pid in self.pids(k):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in self.procs[k]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        self.procs[k] = [p for p in self.procs[k] if p.poll() is None]

    # -- the end ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Kill every process started here, stop the router (its devices go with it), delete the
        namespaces; then check that nothing is left (raises AssertionError naming what is)."""
        for k in sorted(self.procs, reverse=True):
            for p in self.procs[k]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
            for p in self.procs[k]:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
        if self.router is not None:
            try:
                out, _ = self.router.communicate(timeout=10)  # closes its stdin: it stops
                with contextlib.suppress(ValueError, IndexError):
                    self.router_report = json.loads(out.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                os.killpg(self.router.pid, signal.SIGKILL)
                self.router.wait(10)
        for k, ns in enumerate(self.namespaces, start=1):
            if ns in _run("ip", "netns", "list", check=False).stdout:
                for pid in self.pids(k):  # anything else that entered it
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                _run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.assert_clean()

    def leftovers(self) -> list[str]:
        """What of this cluster is still there: namespaces, devices, processes."""
        left = [ns for ns in _run("ip", "netns", "list", check=False).stdout.split() if ns.startswith(self.tag)]
        left += [d for d in self.devices if _run("ip", "link", "show", d, check=False).returncode == 0]
        procs = [p for ps in self.procs.values() for p in ps]
        if self.router is not None:
            procs.append(self.router)
        left += [f"pid {p.pid}" for p in procs if p.poll() is None]
        return left

    def assert_clean(self) -> None:
        deadline = time.monotonic() + 10
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.1)  # a device goes once its namespace's last process has
        assert not left, f"the simulated cluster left {left}"


if __name__ == "__main__":
    if sys.argv[1:2] == ["router"]:
        with contextlib.suppress(KeyboardInterrupt):
            router_main(sys.argv[2:])
