"""Distributed mode on real clusters of worker processes on loopback: the driver runs on the cluster,
steps travel over Dask's own comms, and faults (a killed or frozen worker, the driver's own worker, a
client that goes away) leave the same model and nothing behind on the workers.

Every model is compared with the same fit in this process (or on the same cluster from a client
beside it): the fixed chunk tree makes them agree to the last bits whatever the placement.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cluster_helpers as H

import dlogit
from dlogit.data import synthetic_numpy
from dlogit.engine.transport import engine_state

# see tests/test_engine.py: runs agree to the last bit but for SIMD rounding of aligned temporaries
GD = {"solver": "gd", "lr": 0.5, "l2": 1e-3, "tol": 0.0, "init": "zeros", "progress_period": 25}


def _cluster(n: int, **kw):
    from distributed import LocalCluster

    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                        dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL, **kw)


def _data(rows: int = 4000, cols: int = 30, chunk: int = 500, seed: int = 3):
    Xn, yn = synthetic_numpy(rows, cols, seed=seed)
    return Xn, yn, da.from_array(Xn, chunks=(chunk, cols)), da.from_array(yn, chunks=chunk)


def _vector(m) -> np.ndarray:
    return np.r_[np.ravel(m.coef_), np.ravel(m.intercept_)]


def _reference(Xn, yn, chunk: int, **kw) -> np.ndarray:
    return _vector(dlogit.LogisticRegression(chunk_rows=chunk, **kw).fit(Xn, yn))


def _last_step(events: list[dict]) -> int:
    return max((s for e in list(events) if e.get("type") == "progress" for s in e["step"]), default=-1)


def _wait_for_step(events: list[dict], step: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _last_step(events) < step:
        assert time.monotonic() < deadline, f"no progress past step {_last_step(events)}"
        time.sleep(0.01)


def _states(client) -> dict:
    """``engine_state`` of every worker; ``{}`` while a worker is going or coming (a killed one)."""
    try:
        return client.run(engine_state)
    except OSError:  # CommClosedError: the scheduler's broadcast met a worker that just died
        return {}


def _assert_nothing_left(client, timeout: float = 15.0) -> None:
    """No fit's state (shards, checkpoint copies, links) and no dlogit thread on any worker."""
    deadline = time.monotonic() + timeout
    while True:
        states = _states(client)
        if states and all(not s["runs"] and not s["threads"] for s in states.values()):
            return
        assert time.monotonic() < deadline, states
        time.sleep(0.2)


def _pid_of(client, worker: str) -> int:
    return client.run(os.getpid, workers=[worker])[worker]


class _Fit(threading.Thread):
    """A fit running in a thread (the test watches its progress events meanwhile)."""

    def __init__(self, client, X, y, **params):
        super().__init__(daemon=True)
        self.events: list[dict] = []
        self.model = dlogit.LogisticRegression(mode="distributed", **params)
        self.args = (client, X, y)
        self.error: BaseException | None = None

    def run(self) -> None:
        client, X, y = self.args
        try:
            self.model.fit(X, y, client=client, callback=self.events.append)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def starts(self) -> list[dict]:
        return [e for e in list(self.events) if e["type"] == "start"]


# --------------------------------------------------------------------------------------------------
# a client that reaches nothing but the scheduler

def _pump(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _relay(server: socket.socket, connect) -> None:
    """Accept on ``server`` forever; pipe each connection to a new ``connect()`` socket."""
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        try:
            other = connect()
        except OSError:
            conn.close()
            continue
        for x, y in ((conn, other), (other, conn)):
            threading.Thread(target=_pump, args=(x, y), daemon=True).start()


CLIENT_SCRIPT = r'''
import socket, subprocess, sys, threading
import numpy as np

sock_path, out, workers = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
sys.path.insert(0, sys.argv[4])
from test_engine_cluster import _relay, GD

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
for w in workers:  # this namespace cannot reach the workers
    host, port = w.rsplit("/", 1)[-1].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        sys.exit(f"worker {w} is reachable from the client's namespace")
    except OSError:
        pass
inner = socket.create_server(("127.0.0.1", 0))
def to_unix():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    return s
threading.Thread(target=_relay, args=(inner, to_unix), daemon=True).start()

import dask.array as da
from distributed import Client
import dlogit
from dlogit.data import synthetic_numpy

Xn, yn = synthetic_numpy(4000, 30, seed=3)
with Client(f"tcp://127.0.0.1:{inner.getsockname()[1]}", timeout=30) as c:
    X, y = da.from_array(Xn, chunks=(500, 30)), da.from_array(yn, chunks=500)
    events = []
    m = dlogit.LogisticRegression(mode="distributed", max_iter=300, **GD).fit(X, y, client=c,
                                                                               callback=events.append)
    steps = [s for e in events if e["type"] == "progress" for s in e["step"]]
    np.savez(out, coef=m.coef_, intercept=m.intercept_, n_iter=m.n_iter_, mode=m.mode_,
             steps=np.asarray(steps), step_seconds=m.history_["step_seconds"])
'''


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="needs root and unshare(1) for a network namespace")
def test_client_reaching_only_the_scheduler_trains_the_same_model(tmp_path):
    """The client runs in a network namespace of its own: it reaches the scheduler through a Unix
    socket relay and no worker at all (checked there). It trains the same model as a client beside
    the cluster, with every progress event."""
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    sock_path = str(tmp_path / "scheduler.sock")
    with _cluster(3) as cluster:
        from distributed import Client

        host, port = cluster.scheduler_address.rsplit("/", 1)[-1].rsplit(":", 1)
        outer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        outer.bind(sock_path)
        outer.listen(16)
        threading.Thread(target=_relay, args=(outer, lambda: socket.create_connection((host, int(port)))),
                         daemon=True).start()
        try:
            with Client(cluster, set_as_default=False) as c:
                workers = sorted(c.scheduler_info()["workers"])
                Xn, yn, X, y = _data()
                here = dlogit.LogisticRegression(mode="distributed", max_iter=300, **GD).fit(X, y, client=c)
            out = tmp_path / "model.npz"
            proc = subprocess.run(["unshare", "-n", sys.executable, str(script), sock_path, str(out),
                                   ",".join(workers), str(Path(__file__).resolve().parent)],
                                  env=H.subprocess_env(), capture_output=True, text=True, timeout=180, check=False)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        finally:
            outer.close()
    with np.load(out) as z:
        assert str(z["mode"]) == "distributed" and int(z["n_iter"]) == 300
        np.testing.assert_array_equal(np.r_[z["coef"].ravel(), z["intercept"].ravel()], _vector(here))
        assert list(z["steps"]) == list(range(300))
    np.testing.assert_allclose(_vector(here), _reference(Xn, yn, 500, max_iter=300, **GD), rtol=1e-10)


@pytest.mark.timeout(240)
@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="needs root and unshare(1) for a mount namespace")
def test_checkpoint_directory_is_checked_where_it_is_written(tmp_path):
    """The fit's worker runs in a mount namespace of its own, where the client's directory is hidden
    under a tmpfs holding an older checkpoint: a new directory fails before any step (it does not exist
    there: the final write used to fail after the fit), and ``resume`` refuses the worker's stale file
    (it used to continue from it), each naming the worker's host."""
    from distributed import Client

    from dlogit.errors import ConfigError
    from dlogit.spec import CheckpointSpec

    Xn, yn, X, y = _data(2000, 5, 500, seed=2)
    private = tmp_path / "private"
    private.mkdir()
    old = tmp_path / "old"
    dlogit.LogisticRegression(solver="gd", max_iter=3, tol=0.0).fit(Xn, yn, checkpoint=old)
    dlogit.LogisticRegression(solver="gd", max_iter=6, tol=0.0).fit(Xn, yn, checkpoint=private / "ck")
    with _cluster(0) as cluster, Client(cluster, set_as_default=False) as c:
        procs = H.ProcessSet(tmp_path / "logs")
        script = (f"mount -t tmpfs tmpfs {private} && mkdir {private}/ck && "
                  f"cp {old}/checkpoint.npz {private}/ck/ && "
                  f"exec {sys.executable} -m distributed.cli.dask_worker {cluster.scheduler_address} --nthreads 1 --no-nanny --host 127.0.0.1 --no-dashboard")
        procs.start("worker", ["unshare", "-m", "--propagation", "private", "sh", "-c", script])
        try:
            c.wait_for_workers(1, timeout=60)
            events: list[dict] = []
            model = dlogit.LogisticRegression(solver="gd", max_iter=10, tol=0.0, mode="worker-local")
            with pytest.raises(ConfigError, match=r"does not exist on worker tcp://127\.0\.0\.1:\d+ \(host "):
                model.fit(X, y, client=c, checkpoint=private / "new", callback=events.append)
            assert (private / "new").is_dir()  # the client's own check made it
            with pytest.raises(ConfigError, match=r"\(step 3, .*not the one this client sees \(step 6"):
                model.fit(X, y, client=c, checkpoint=CheckpointSpec(str(private / "ck"), resume=True),
                          callback=events.append)
            assert not events  # nothing started
        finally:
            procs.close()


# --------------------------------------------------------------------------------------------------
# TLS: the cluster's own listeners and nothing else

def _listening(pids: list[int]) -> set[tuple[int, int]]:
    import psutil

    return {(pid, c.laddr.port) for pid in pids
            for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


@pytest.mark.timeout(180)
def test_tls_cluster_steps_over_its_own_listeners(tmp_path):
    """On a TLS cluster a distributed fit opens no listening socket in any worker process, and every
    connection of a worker process during the fit has one end at a Dask (TLS) listener."""
    import psutil
    from distributed import Client

    from dlogit.cluster import make_security

    ca, cert, key = H.make_tls_files(tmp_path / "tls")
    sec = make_security(ca, cert, key)
    Xn, yn, X, y = _data()
    with _cluster(3, protocol="tls://", security=sec) as cluster, \
            Client(cluster, security=sec, set_as_default=False) as c:
        assert cluster.scheduler_address.startswith("tls://")
        pids = list(c.run(os.getpid).values())
        dask_ports = {int(a.rsplit(":", 1)[1]) for a in [cluster.scheduler_address, *c.scheduler_info()["workers"]]}
        parents = {psutil.Process(p).ppid() for p in pids}  # this process: the nannies and the scheduler
        before = _listening(pids)
        seen: dict[str, object] = {}

        def callback(msg: dict) -> None:
            if msg["type"] == "progress" and "during" not in seen and max(msg["step"]) >= 100:
                seen["during"] = _listening(pids)
                seen["conns"] = [(c.laddr.port, c.raddr.port) for p in pids
                                 for c in psutil.Process(p).net_connections(kind="inet")
                                 if c.status == psutil.CONN_ESTABLISHED]
                seen["parent_ports"] = {c.laddr.port for p in parents
                                       for c in psutil.Process(p).net_connections(kind="inet")
                                       if c.status == psutil.CONN_LISTEN}

        m = dlogit.LogisticRegression(mode="distributed", max_iter=400, **GD).fit(X, y, client=c,
                                                                                   callback=callback)
        assert m.mode_ == "distributed"
        assert seen.get("during") == before, (before, seen.get("during"))
        listeners = dask_ports | seen["parent_ports"]
        assert seen["conns"] and all(a in listeners or b in listeners for a, b in seen["conns"]), seen["conns"]
        assert _listening(pids) == before
        _assert_nothing_left(c)
    np.testing.assert_allclose(_vector(m), _reference(Xn, yn, 500, max_iter=400, **GD), rtol=1e-10)


# --------------------------------------------------------------------------------------------------
# faults

LONG = 1500  # gd steps: long enough to stop a worker mid-fit, even on a fast machine


@pytest.mark.timeout(240)
def test_driver_worker_killed_mid_fit_continues_from_its_checkpoint():
    """SIGKILL the process running the fit's driver: Dask reruns the driver on another worker, which
    continues from the in-memory checkpoint the workers hold and ends with the same model."""
    from distributed import Client

    Xn, yn, X, y = _data(16000, 40, 2000, seed=11)
    ref = _reference(Xn, yn, 2000, max_iter=LONG, **GD)
    with dask.config.set({"dlogit.engine.replica-every": "0.05s"}), _cluster(3) as cluster, \
            Client(cluster, set_as_default=False) as c:
        fit = _Fit(c, X, y, max_iter=LONG, **GD)
        fit.start()
        _wait_for_step(fit.events, 300)
        driver = fit.starts()[0]["params"]["driver"]
        pid = _pid_of(c, driver)
        step = _last_step(fit.events)
        os.kill(pid, signal.SIGKILL)
        fit.join(180)
        assert not fit.is_alive() and fit.error is None, repr(fit.error)
        starts = fit.starts()
        assert len(starts) == 2, [s["params"].get("driver") for s in starts]
        assert starts[1]["params"]["driver"] != driver
        # not from scratch: from a copy at most ~0.05 s (replica-every) older than the events seen
        assert step - 200 <= starts[1]["params"]["resumed_from"] <= LONG
        assert fit.model.n_iter_ == LONG and fit.model.resumed_from_ is None
        assert len(fit.model.history_["loss"]) == LONG
        _assert_nothing_left(c)
    np.testing.assert_allclose(_vector(fit.model), ref, rtol=1e-10)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("who", ["shard", pytest.param("grandchild", marks=pytest.mark.slow),
                                 pytest.param("driver", marks=pytest.mark.slow)])
def test_frozen_worker_is_caught_by_the_heartbeat(who):
    """SIGSTOP a worker mid-fit with ``dlogit.engine.heartbeat`` at 3 s: a frozen shard worker is
    caught by its parent in the tree -- the driver, or a worker in the middle of the (binomial) tree
    that keeps its own link alive meanwhile and names the frozen one --, the frozen driver's worker
    by the client's watchdog; either way the fit goes on within the heartbeat bound with the same
    model, and says so in one warning. A frozen shard worker is only dropped from the fit (a
    GIL-holding task of another user must not cost the cluster a worker and its data); the frozen
    driver's worker is removed because the test opts in (``dlogit.engine.remove-silent-workers``)."""
    from distributed import Client

    heartbeat = 3.0
    Xn, yn, X, y = _data(16000, 40, 2000, seed=11)
    ref = _reference(Xn, yn, 2000, max_iter=LONG, **GD)
    settings = {"dlogit.engine.heartbeat": f"{heartbeat}s", "dlogit.engine.replica-every": "0.05s",
                "dlogit.engine.tree-radix": 2, "dlogit.engine.remove-silent-workers": who == "driver"}
    with dask.config.set(settings), _cluster(4 if who == "grandchild" else 3) as cluster, \
            Client(cluster, set_as_default=False) as c:
        fit = _Fit(c, X, y, max_iter=LONG, **GD)
        fit.start()
        _wait_for_step(fit.events, 200)
        params = fit.starts()[0]["params"]
        driver = params["driver"]
        others = [w for w in params["workers"] if w != driver]
        if who == "grandchild":  # binomial tree over 4: driver -> {2, 1}, 2 -> {3}; 3 holds the last chunk
            held = {w: s["runs"][fit.starts()[0]["run"]]["chunks"] for w, s in c.run(engine_state).items()}
            victim = next(w for w in others if 7 in held[w])
        else:
            victim = driver if who == "driver" else others[0]
        pid = _pid_of(c, victim)
        step = _last_step(fit.events)
        os.kill(pid, signal.SIGSTOP)
        t_stop = time.monotonic()
        try:
            deadline = t_stop + heartbeat + 30
            while _last_step(fit.events) <= step + 50 and time.monotonic() < deadline:
                time.sleep(0.02)
            resumed = time.monotonic() - t_stop
            fit.join(180)
            # who is in the cluster once the fit ended, before this test's SIGKILL removes the victim
            alive = c.scheduler_info()["workers"]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not fit.is_alive() and fit.error is None, repr(fit.error)
        # the heartbeat, the watchdog's period (heartbeat / 3) and a restart on a loaded 2-core box
        print(f"frozen {who}: the fit went on {resumed:.1f}s after SIGSTOP (heartbeat {heartbeat:g}s)",
              file=sys.stderr)
        assert resumed < heartbeat + 8, resumed
        assert all(w in alive for w in params["workers"] if w != victim)
        assert (victim in alive) == (who != "driver"), (victim, sorted(alive))
        notes = [e["message"] for e in fit.events if e["type"] == "warning"]
        if who == "driver":  # the client's watchdog removed it (it warns in the client); the new driver says
            assert any("driver was lost" in n and "continues" in n for n in notes), notes
        else:
            assert notes and victim in notes[0] and "dropped from this fit" in notes[0], notes
        assert fit.model.n_iter_ == LONG
        if who == "driver":
            assert len(fit.starts()) == 2 and fit.starts()[1]["params"]["resumed_from"] >= step - 200
        _assert_nothing_left(c)
    np.testing.assert_allclose(_vector(fit.model), ref, rtol=1e-10)


def test_a_frozen_driver_that_wakes_up_changes_nothing():
    """SIGSTOP the driver's worker: the client's watchdog removes it and Dask restarts the driver
    elsewhere; when the old one wakes up (SIGCONT) its timers fire at once -- it must see it was
    replaced, and remove no one (it used to blame its healthy children, one after the other)."""
    from distributed import Client

    _Xn, _yn, X, y = _data(16000, 40, 2000, seed=11)
    # the watchdog removes a frozen driver's worker only when asked to (by default Dask's worker-ttl does)
    settings = {"dlogit.engine.heartbeat": "3s", "dlogit.engine.replica-every": "0.05s",
                "dlogit.engine.remove-silent-workers": True}
    with dask.config.set(settings), _cluster(3) as cluster, Client(cluster, set_as_default=False) as c:
        fit = _Fit(c, X, y, max_iter=LONG * 2, **GD)
        fit.start()
        _wait_for_step(fit.events, 100)
        params = fit.starts()[0]["params"]
        driver = params["driver"]
        pid = _pid_of(c, driver)
        os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 60
            while len(fit.starts()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(fit.starts()) == 2, "the driver was not restarted"
            time.sleep(1.0)
            os.kill(pid, signal.SIGCONT)
            fit.join(180)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not fit.is_alive() and fit.error is None, repr(fit.error)
        alive = c.scheduler_info()["workers"]
        assert all(w in alive for w in params["workers"] if w != driver), (alive, params["workers"])
        assert fit.model.n_iter_ == LONG * 2


@pytest.mark.timeout(180)
def test_state_copies_go_to_other_hosts_first():
    """Three workers on the driver's host (127.0.0.1) and one on another (127.0.0.2): the copies of the
    driver's state go to the other host first (they went to the root's children, all on the driver's
    own host here: losing that node lost every copy), and only then to the driver's host."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    from dlogit.engine.placement import host_of

    _Xn, _yn, X, y = _data(16000, 40, 2000, seed=11)
    quiet = {"nthreads": 1, "silence_logs": logging.CRITICAL}
    workers = {f"w{i}": {"cls": Nanny, "options": {"host": "127.0.0.1" if i < 3 else "127.0.0.2", **quiet}}
               for i in range(4)}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}
    settings = {"dlogit.engine.tree-radix": 2, "dlogit.engine.replica-every": "0.05s"}
    with dask.config.set(settings), SpecCluster(workers=workers, scheduler=scheduler, asynchronous=False,
                                                silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster, set_as_default=False) as c:
        c.wait_for_workers(4, timeout=60)
        fit = _Fit(c, X, y, max_iter=LONG, **GD)
        fit.start()
        _wait_for_step(fit.events, 100)
        run, driver = fit.starts()[0]["run"], fit.starts()[0]["params"]["driver"]
        copies: set[str] = set()
        deadline = time.monotonic() + 30
        while len(copies) < 2 and time.monotonic() < deadline:
            copies = {w for w, st in _states(c).items() if st["runs"].get(run, {}).get("checkpoint")}
            time.sleep(0.05)
        fit.join(120)
        assert fit.error is None, repr(fit.error)
    assert host_of(driver) == "127.0.0.1"
    assert len(copies) == 2 and driver not in copies, copies
    assert sorted(host_of(w) for w in copies) == ["127.0.0.1", "127.0.0.2"], copies


def _slow_sums_when_flagged(flag: str, dask_worker=None) -> None:
    """On a worker: every "sums" op sleeps 10 s while ``flag`` exists (a long step)."""
    from dlogit.engine import shard

    plain = shard.STEP_OPS["sums"]

    def slow(s, *args):
        if os.path.exists(flag):
            time.sleep(10.0)
        time.sleep(0.01)  # every step slow enough to run on the fit's thread, not the worker's loop
        return plain(s, *args)

    shard.STEP_OPS["sums"] = slow


def _ctrl_c_inside_a_flagged_step(events: list[dict], flag: str) -> list[float]:
    """Once the fit has made progress: create ``flag`` (the workers' steps then slow down or block),
    wait 1 s -- inside such a step -- and send this process a Ctrl-C; the list gets its time."""
    sent: list[float] = []

    def interrupt() -> None:
        while not any(e.get("type") == "progress" for e in events):
            time.sleep(0.05)
        open(flag, "w").close()
        time.sleep(1.0)
        sent.append(time.monotonic())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    return sent


def test_ctrl_c_during_a_long_step_stops_at_its_end_and_removes_no_worker(tmp_path):
    """Ctrl-C while every worker is inside a 10 s step: the fit stops when the step ends (its end
    event says interrupted), and the cluster keeps all its workers (an early drop of the fit used to
    break the step links and get a healthy worker removed)."""
    from distributed import Client

    flag = str(tmp_path / "slow")
    _Xn, _yn, X, y = _data(3000, 10, 500, seed=1)
    with _cluster(3) as cluster, Client(cluster, set_as_default=False) as c:
        c.run(_slow_sums_when_flagged, flag)
        before = sorted(c.scheduler_info()["workers"])
        events: list[dict] = []
        sent = _ctrl_c_inside_a_flagged_step(events, flag)
        t0 = time.monotonic()
        with pytest.raises(dlogit.Interrupted):
            dlogit.LogisticRegression(mode="distributed", solver="gd", max_iter=10**6, tol=0.0,
                                      progress_period=1).fit(X, y, client=c, callback=events.append)
        took = time.monotonic() - t0
        os.unlink(flag)
        ends = [e for e in events if e.get("type") == "end"]
        assert [e["status"] for e in ends] == ["interrupted"], ends
        time.sleep(max(0.0, sent[0] + 13.0 - time.monotonic()))  # the step is over: a removal shows
        assert sorted(c.scheduler_info()["workers"]) == before
        assert took < 60, took


def _block_sums_while_flagged(flag: str, dask_worker=None) -> None:
    """On a worker: every "sums" op blocks (GIL released, as a wedged BLAS or CUDA call would leave the
    event loop running) for as long as ``flag`` exists, at most 120 s."""
    from dlogit.engine import shard

    plain = shard.STEP_OPS["sums"]

    def blocked(s, *args):
        t0 = time.monotonic()
        while os.path.exists(flag) and time.monotonic() - t0 < 120:
            time.sleep(0.02)
        time.sleep(0.01)  # every step slow enough to run on a thread, not on a loop
        return plain(s, *args)

    shard.STEP_OPS["sums"] = blocked


def _first_sums_slow(seconds: float, dask_worker=None) -> None:
    """On a worker: its first "sums" op takes ``seconds`` (GIL released, keep-alives go on, no chunk
    finishes meanwhile: a first kernel compile, a huge chunk), later ones are quick."""
    from dlogit.engine import shard

    plain = shard.STEP_OPS["sums"]
    first = [True]

    def slow(s, *args):
        if first[0]:
            first[0] = False
            time.sleep(seconds)
        return plain(s, *args)

    shard.STEP_OPS["sums"] = slow


@pytest.mark.timeout(240)
def test_a_slow_first_evaluation_is_not_taken_for_a_wedge():
    """A worker whose first evaluation makes no visible progress for longer than the heartbeat (its
    keep-alives still come) is slow, not wedged: the fit keeps it, says nothing, and ends where an
    undisturbed fit ends, bit for bit."""
    from distributed import Client

    Xn, yn, X, y = _data(3000, 10, 500, seed=1)
    want = _reference(Xn, yn, 500, max_iter=30, **GD)
    with dask.config.set({"dlogit.engine.heartbeat": "1s"}), _cluster(2) as cluster, \
            Client(cluster, set_as_default=False) as c:
        c.run(_first_sums_slow, 3.0)
        events: list[dict] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = dlogit.LogisticRegression(mode="distributed", max_iter=30, chunk_rows=500, **GD).fit(
                X, y, client=c, callback=events.append)
    assert [e["message"] for e in events if e.get("type") == "warning"] == []
    assert not [w for w in caught if "dropped" in str(w.message) or "lost" in str(w.message)], caught
    assert len(events[0]["params"]["workers"]) == 2
    np.testing.assert_array_equal(_vector(m), want)


@pytest.mark.timeout(240)
def test_a_step_past_the_step_timeout_fails_the_fit_naming_the_setting(tmp_path):
    """dlogit.engine.step-timeout bounds a step that never ends (a wedged evaluation whose loop still
    sends keep-alives): the fit fails in one clear error instead of waiting forever."""
    from distributed import Client

    flag = str(tmp_path / "blocked")
    _Xn, _yn, X, y = _data(3000, 10, 500, seed=1)
    with dask.config.set({"dlogit.engine.step-timeout": "3s"}), _cluster(2) as cluster, \
            Client(cluster, set_as_default=False) as c:
        c.run(_block_sums_while_flagged, flag)
        events: list[dict] = []

        def block() -> None:
            while not any(e.get("type") == "progress" for e in events):
                time.sleep(0.05)
            open(flag, "w").close()

        threading.Thread(target=block, daemon=True).start()
        t0 = time.monotonic()
        try:
            with pytest.raises(dlogit.ClusterError, match="step-timeout"):
                dlogit.LogisticRegression(mode="distributed", solver="gd", max_iter=10**6, tol=0.0,
                                          progress_period=1).fit(X, y, client=c, callback=events.append)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(flag)
        assert time.monotonic() - t0 < 100  # the blocked step alone would have held it for 120 s


@pytest.mark.timeout(240)
def test_ctrl_c_while_a_step_is_blocked_stops_at_once_and_leaves_nothing(tmp_path):
    """Ctrl-C while every worker's evaluation blocks (a wedged compute thread): the fit stops without
    waiting for the step (it waited for it, however long), says interrupted, and once the stop has
    returned the workers hold nothing of the fit -- no shard, no link, no driver task; the blocked
    threads go as soon as their call returns -- and the cluster keeps all its workers."""
    from distributed import Client

    flag = str(tmp_path / "blocked")
    _Xn, _yn, X, y = _data(3000, 10, 500, seed=1)
    with _cluster(3) as cluster, Client(cluster, set_as_default=False) as c:
        c.run(_block_sums_while_flagged, flag)
        before = sorted(c.scheduler_info()["workers"])
        events: list[dict] = []
        sent = _ctrl_c_inside_a_flagged_step(events, flag)
        try:
            with pytest.raises(dlogit.Interrupted):
                dlogit.LogisticRegression(mode="distributed", solver="gd", max_iter=10**6, tol=0.0,
                                          progress_period=1).fit(X, y, client=c, callback=events.append)
            took = time.monotonic() - sent[0]
            print(f"Ctrl-C during a blocked step: stopped in {took:.2f}s", file=sys.stderr)
            run = events[0]["run"]
            states = _states(c)
            assert all(run not in st["runs"] for st in states.values()), states
            tasks = c.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks])
            assert not [k for k in tasks if run in k], tasks
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(flag)
        ends = [e for e in events if e.get("type") == "end"]
        assert [e["status"] for e in ends] == ["interrupted"], ends
        assert took < 20, took  # the blocked step would have held it for 120 s
        _assert_nothing_left(c)
        assert sorted(c.scheduler_info()["workers"]) == before


# --------------------------------------------------------------------------------------------------
# several fits, and fits that are stopped

@pytest.fixture(scope="module")
def client4():
    """Four workers: with the binomial tree (``dlogit.engine.tree-radix`` 2) the driver's process has
    two children and one of them a child of its own, so steps are forwarded and node sums merged on
    the way up; with the default radix (4) it is a star."""
    from distributed import Client

    with _cluster(4) as cluster, Client(cluster, set_as_default=False) as c:
        yield c


@pytest.mark.timeout(180)
def test_large_parameter_vectors_travel_as_frames_through_the_tree(client4):
    """A multinomial model with 20 classes x 600 features: theta and every node sum exceed the inline
    limit, so they travel as raw frames, forwarded and merged by a worker in the middle of the tree;
    the model equals the in-process fit."""
    from dlogit.engine.transport import INLINE_BYTES

    rng = np.random.default_rng(0)
    Xn = rng.standard_normal((1600, 600))
    yn = rng.integers(0, 20, 1600)
    assert (20 * 600 + 20) * 8 > INLINE_BYTES
    X, y = da.from_array(Xn, chunks=(200, 600)), da.from_array(yn, chunks=200)
    kw = {"solver": "gd", "lr": 0.5, "max_iter": 30, "tol": 0.0}
    events: list[dict] = []
    with dask.config.set({"dlogit.engine.tree-radix": 2}):
        m = dlogit.LogisticRegression(mode="distributed", **kw).fit(X, y, client=client4,
                                                                     callback=events.append)
    start = next(e for e in events if e["type"] == "start")
    assert len(start["params"]["workers"]) == 4
    here = dlogit.LogisticRegression(chunk_rows=200, **kw).fit(Xn, yn)
    np.testing.assert_allclose(m.coef_, here.coef_, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(m.intercept_, here.intercept_, rtol=1e-10, atol=1e-14)


def _driver_on_the_worker_loop(on: bool, dask_worker=None) -> None:
    from dlogit.engine.transport import links

    links.OWN_LOOP_SCHEMES = () if on else ("tcp", "tls", "inproc")


@pytest.mark.timeout(120)
def test_driver_comms_on_the_worker_loop_give_the_same_model(client4):
    """For comm schemes other than tcp/tls/inproc (ucx, ucxx, ws) the driver's comms live on the
    worker's own event loop; forced here on tcp, that path trains the same model."""
    Xn, yn, X, y = _data(3000, 12, 300, seed=5)
    client4.run(_driver_on_the_worker_loop, True)
    try:
        m = dlogit.LogisticRegression(mode="distributed", max_iter=200, **GD).fit(X, y, client=client4)
    finally:
        client4.run(_driver_on_the_worker_loop, False)
    np.testing.assert_allclose(_vector(m), _reference(Xn, yn, 300, max_iter=200, **GD), rtol=1e-10)
    _assert_nothing_left(client4)


@pytest.mark.timeout(120)
def test_newton_steps_use_the_hessian_products_of_the_tree(client4):
    """Newton asks the shards for H.v (two arrays per step): the same iterates as in this process."""
    Xn, yn, X, y = _data(3000, 12, 300, seed=5)
    kw = {"solver": "newton", "tol": 1e-10}
    with dask.config.set({"dlogit.engine.tree-radix": 2}):
        m = dlogit.LogisticRegression(mode="distributed", **kw).fit(X, y, client=client4)
    here = dlogit.LogisticRegression(chunk_rows=300, **kw).fit(Xn, yn)
    assert m.n_iter_ == here.n_iter_
    np.testing.assert_allclose(_vector(m), _vector(here), rtol=1e-10)


@pytest.mark.timeout(180)
def test_concurrent_fits_on_one_cluster_leave_nothing_behind(client4):
    Xn, yn, X, y = _data()
    Xn2, yn2, X2, y2 = _data(3000, 12, 300, seed=5)
    fits = [_Fit(client4, X, y, max_iter=400, **GD), _Fit(client4, X2, y2, max_iter=500, **GD)]
    for f in fits:
        f.start()
    for f in fits:
        f.join(150)
        assert not f.is_alive() and f.error is None, repr(f.error)
    assert {e["run"] for e in fits[0].events}.isdisjoint({e["run"] for e in fits[1].events})
    np.testing.assert_allclose(_vector(fits[0].model), _reference(Xn, yn, 500, max_iter=400, **GD), rtol=1e-10)
    np.testing.assert_allclose(_vector(fits[1].model), _reference(Xn2, yn2, 300, max_iter=500, **GD),
                               rtol=1e-10)
    _assert_nothing_left(client4)


@pytest.mark.timeout(120)
def test_ctrl_c_stops_the_fit_at_a_step_boundary(client4):
    """KeyboardInterrupt in the client while it waits: the driver stops at a step boundary (every step
    it began is reported, the end names the last), the client raises Interrupted promptly, and the
    workers hold nothing of the fit. "Promptly" is measured on this cluster under its current load: no
    longer than this fit took to start and take its first step, plus 50 of its steps (not stopping
    would take the other ~99,900 steps)."""
    _, _, X, y = _data(16000, 40, 2000, seed=11)
    events: list[dict] = []
    hit: dict[str, float] = {}

    def on_event(e: dict) -> None:
        if e.get("type") == "progress" and "first" not in hit:
            hit["first"] = time.monotonic()
        events.append(e)

    def interrupt() -> None:
        _wait_for_step(events, 100)
        hit["step"] = _last_step(events)
        hit["t"] = time.monotonic()
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # Ctrl-C

    threading.Thread(target=interrupt, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(dlogit.errors.Interrupted):
        dlogit.LogisticRegression(mode="distributed", max_iter=100_000, **GD).fit(
            X, y, client=client4, callback=on_event)
    took = time.monotonic() - hit["t"]
    end = [e for e in events if e["type"] == "end"]
    assert end and end[-1]["status"] == "interrupted", end
    steps = [s for e in events if e["type"] == "progress" for s in e["step"]]
    assert steps == list(range(steps[0], steps[0] + len(steps))), steps  # none skipped or cut short
    n_iter = end[-1]["n_iter"]
    assert hit["step"] <= steps[-1] and n_iter in (steps[-1], steps[-1] + 1), (n_iter, steps[-1])
    step_s = float(np.median([d for e in events if e["type"] == "progress" for d in e["step_seconds"]]))
    start_s = hit["first"] - t0
    print(f"Ctrl-C at step {hit['step']:.0f}: stopped after step {n_iter} in {took:.2f}s (start and first "
          f"step {start_s:.2f}s, median step {step_s * 1e3:.1f}ms)", file=sys.stderr)
    assert took < start_s + 50 * step_s, (took, start_s, step_s)
    _assert_nothing_left(client4)


CANCEL_SCRIPT = r'''
import sys
import dask.array as da
from distributed import Client
import dlogit
from dlogit.data import synthetic_numpy

Xn, yn = synthetic_numpy(16000, 40, seed=11)
with Client(sys.argv[1], timeout=30) as c:
    dlogit.LogisticRegression(mode="distributed", solver="gd", max_iter=10**6, tol=0.0).fit(
        da.from_array(Xn, chunks=(2000, 40)), da.from_array(yn, chunks=2000), client=c)
'''


@pytest.mark.timeout(150)
def test_client_killed_mid_fit_leaves_nothing_on_the_workers(client4, tmp_path):
    """A client process killed (SIGKILL) in the middle of a fit: the scheduler releases the fit's
    task, the driver notices at a step boundary and drops the shards, links and threads everywhere."""
    from distributed import Client

    from dlogit.events import TOPIC

    script = tmp_path / "client.py"
    script.write_text(CANCEL_SCRIPT)
    events: list[dict] = []
    address = client4.scheduler.address
    with Client(address, set_as_default=False) as watcher:  # another client sees the fit's events
        watcher.subscribe_topic(TOPIC, lambda ev: events.append(ev[1] if isinstance(ev, tuple) else ev))
        proc = subprocess.Popen([sys.executable, str(script), address], env=H.subprocess_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            _wait_for_step(events, 100, timeout=90)
            assert any(r["runs"] for r in client4.run(engine_state).values())
        finally:
            proc.kill()
            proc.wait(30)
        _assert_nothing_left(client4, timeout=30)
        deadline = time.monotonic() + 10
        while not [e for e in events if e.get("type") == "end"] and time.monotonic() < deadline:
            time.sleep(0.1)
        ends = [e for e in events if e.get("type") == "end"]
        assert ends and ends[-1]["status"] == "interrupted", ends


@pytest.mark.timeout(150)
def test_client_and_driver_worker_killed_together_free_the_shards(client4, tmp_path):
    """The client process and the driver's worker killed at once: nobody is left to drop the fit,
    but the shards live as long as the tasks that attached them, whose keys Dask releases with the
    driver's worker: every worker frees its shards, links and thread (only the small copy of the
    solver state stays, for a driver that could take over)."""
    from distributed import Client

    from dlogit.events import TOPIC

    script = tmp_path / "client.py"
    script.write_text(CANCEL_SCRIPT)
    events: list[dict] = []
    address = client4.scheduler.address
    with Client(address, set_as_default=False) as watcher:
        watcher.subscribe_topic(TOPIC, lambda ev: events.append(ev[1] if isinstance(ev, tuple) else ev))
        proc = subprocess.Popen([sys.executable, str(script), address], env=H.subprocess_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            _wait_for_step(events, 100, timeout=90)
            start = next(e for e in events if e.get("type") == "start")
            run, driver = start["run"], start["params"]["driver"]
            pid = _pid_of(client4, driver)
            assert any(s["runs"].get(run, {}).get("shards") for s in client4.run(engine_state).values())
        finally:
            proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        proc.wait(30)
    deadline = time.monotonic() + 30
    while True:
        states = _states(client4)
        left = {w: s for w, s in states.items()
                if s["threads"] or any(r["shards"] or r["links"] or r["thread"] for r in s["runs"].values())}
        if states and not left:
            break
        assert time.monotonic() < deadline, left
        time.sleep(0.2)
    from dlogit.engine.transport import drop_run

    client4.run(drop_run, run)  # the state copies: what a client's clean-up drops
    _assert_nothing_left(client4)
