"""Distributed mode on a simulated multi-host cluster: 4 "hosts" (network namespaces with their own
addresses) of 2 workers each, 0.5 ms per hop between hosts (``tests/_netns.py``: a delaying router, as
``tc netem`` would be), the scheduler and this client on a fifth address.

The fit across hosts has the bits of the same fit on a plain LocalCluster; a whole host killed mid-fit
(the driver's, or another) leaves the bits of the undisturbed fit, the driver's restart continuing from
a copy of its state on another host. Every namespace, device and process made here is removed, the
failing cases too. Skipped unless root with network namespaces and TUN devices.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _netns

import dlogit
from dlogit.data import synthetic_numpy

WHY_NOT = _netns.unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))]

HOSTS, PER_HOST, DELAY = 4, 2, 0.0005
STEPS = 1200  # gd steps: long enough to kill a host mid-fit on a loaded box
GD = {"solver": "gd", "lr": 0.5, "l2": 1e-3, "tol": 0.0, "init": "zeros", "progress_period": 25,
      "max_iter": STEPS}
#: the state copies every 0.05 s (default 1 s), the binomial tree (the driver has 3 children of 8)
SETTINGS = {"dlogit.engine.replica-every": "0.05s", "dlogit.engine.tree-radix": 2}


def _data():
    Xn, yn = synthetic_numpy(16000, 30, seed=11)
    return da.from_array(Xn, chunks=(1000, 30)), da.from_array(yn, chunks=1000)  # 16 chunks, 2 per worker


def _vector(m) -> np.ndarray:
    return np.r_[np.ravel(m.coef_), np.ravel(m.intercept_)]


class _Fit(threading.Thread):
    """A distributed fit in a thread, its events kept (the test watches its progress meanwhile)."""

    def __init__(self, client, X, y, **settings) -> None:
        super().__init__(daemon=True)
        self.events: list[dict] = []
        self.model = dlogit.LogisticRegression(mode="distributed", **GD)
        self.args = (client, X, y)
        self.settings = {**SETTINGS, **settings}
        self.error: BaseException | None = None

    def run(self) -> None:
        client, X, y = self.args
        try:
            with dask.config.set(self.settings):
                self.model.fit(X, y, client=client, callback=self.events.append)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def of(self, kind: str) -> list[dict]:
        return [e for e in list(self.events) if e["type"] == kind]

    def last_step(self) -> int:
        return max((s for e in self.of("progress") for s in e["step"]), default=-1)

    def wait_for_step(self, step: int, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while self.last_step() < step:
            assert self.is_alive() and time.monotonic() < deadline, (self.last_step(), repr(self.error))
            time.sleep(0.01)


@pytest.fixture(scope="module")
def sim():
    # bounded: at most 1 GiB between hosts (the fits here move a few MB) and 20 minutes
    cluster = _netns.SimCluster(hosts=HOSTS, workers_per_host=PER_HOST, delay=DELAY, max_bytes=1 << 30,
                                max_seconds=1200)
    with cluster:
        yield cluster
    # SimCluster.close checked that no namespace, device or process of it is left
    assert cluster.router_report is not None and cluster.router_report["dropped"] == 0, cluster.router_report


@pytest.fixture(scope="module")
def client(sim):
    from distributed import Client

    with Client(sim.address, set_as_default=False, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference():
    """The same fit on a plain LocalCluster (loopback, one host), distributed mode forced."""
    from distributed import Client, LocalCluster

    X, y = _data()
    with LocalCluster(n_workers=4, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster, set_as_default=False) as c, dask.config.set(SETTINGS):
        m = dlogit.LogisticRegression(mode="distributed", **GD).fit(X, y, client=c)
    return _vector(m)


def _full(sim, client) -> None:
    """Every host's workers are up (a test before may have killed one)."""
    want = HOSTS * PER_HOST
    for k in range(1, HOSTS + 1):
        if not sim.procs[k]:
            sim.start_host(k)
    client.wait_for_workers(want, timeout=300)
    deadline = time.monotonic() + 60
    while len(client.scheduler_info(n_workers=-1)["workers"]) != want:  # the dead ones gone too
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _copies(client, run: str) -> set[str]:
    """The workers holding a copy of the fit's driver state."""
    from dlogit.engine.transport import engine_state

    try:
        states = client.run(engine_state)
    except OSError:
        return set()
    return {w for w, st in states.items() if st["runs"].get(run, {}).get("checkpoint")}


def test_every_server_binds_its_hosts_address(sim, client):
    """The scheduler's and every worker's listeners (the HTTP servers too) bind their host's own
    address, never 0.0.0.0: the cluster is reachable only through the simulated network."""
    _full(sim, client)
    listening = sim.listeners()
    assert len({pid for pid, _ in listening}) == 1 + HOSTS * PER_HOST, listening
    for pid, address in listening:
        host = next(k for k, ps in sim.procs.items() if any(p.pid == pid for p in ps))
        assert address.rsplit(":", 1)[0] == sim.ip(host), (pid, address)


def test_a_fit_across_hosts_has_the_bits_of_a_local_cluster(sim, client, reference):
    _full(sim, client)
    X, y = _data()
    fit = _Fit(client, X, y)
    fit.run()
    assert fit.error is None, repr(fit.error)
    params = fit.of("start")[0]["params"]
    assert len(params["workers"]) == HOSTS * PER_HOST
    assert {sim.host_of_ip(w) for w in params["workers"]} == set(range(1, HOSTS + 1))
    np.testing.assert_array_equal(_vector(fit.model), reference)


def test_losing_the_drivers_host_resumes_from_a_copy_on_another_host(sim, client, reference):
    """SIGKILL both workers of the driver's host mid-fit: Dask runs the driver again on another host,
    which continues from the newest copy of the state (held on other hosts: the driver's host took its
    own with it) to the bits of the undisturbed fit."""
    _full(sim, client)
    X, y = _data()
    fit = _Fit(client, X, y)
    fit.start()
    fit.wait_for_step(200)
    start = fit.of("start")[0]
    run, driver = start["run"], start["params"]["driver"]
    home = sim.host_of_ip(driver)
    deadline = time.monotonic() + 30
    while not (copies := _copies(client, run)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert copies and all(sim.host_of_ip(w) != home for w in copies), (driver, copies)
    step = fit.last_step()
    sim.kill_host(home)
    fit.join(300)
    assert not fit.is_alive() and fit.error is None, repr(fit.error)
    starts = fit.of("start")
    assert len(starts) == 2, [s["params"]["driver"] for s in starts]
    assert sim.host_of_ip(starts[1]["params"]["driver"]) != home
    # from a copy taken at most ~0.05 s (replica-every) before the events seen, not from scratch
    assert step - 200 <= starts[1]["params"]["resumed_from"] < STEPS, (step, starts[1]["params"])
    assert fit.model.n_iter_ == STEPS and len(fit.model.history_["loss"]) == STEPS
    np.testing.assert_array_equal(_vector(fit.model), reference)


def test_losing_another_host_mid_fit_keeps_the_driver_and_the_bits(sim, client, reference):
    """SIGKILL both workers of a host that is not the driver's: the driver moves their chunks to the
    survivors, links the tree again and retries the step; one start, the undisturbed fit's bits. The
    worker that went with the one the driver noticed is out of the fit too: the fit's end does not
    wait the heartbeat (here 300 s) on connecting to it to drop its state (it did: a lost host cost
    the heartbeat, 30 s by default, on top of the fit)."""
    _full(sim, client)
    X, y = _data()
    fit = _Fit(client, X, y, **{"dlogit.engine.heartbeat": "300s"})
    fit.start()
    fit.wait_for_step(200)
    driver = fit.of("start")[0]["params"]["driver"]
    victim = next(k for k in range(1, HOSTS + 1) if k != sim.host_of_ip(driver))
    killed = time.monotonic()
    sim.kill_host(victim)
    fit.join(300)
    assert not fit.is_alive(), "the fit waited the heartbeat on a worker of the lost host"
    assert fit.error is None, repr(fit.error)
    assert time.monotonic() - killed < 300
    assert len(fit.of("start")) == 1
    notes = [e["message"] for e in fit.of("warning")]
    assert any("lost worker" in n or "failed a step" in n for n in notes), notes
    np.testing.assert_array_equal(_vector(fit.model), reference)


def test_the_simulated_cluster_leaves_nothing_even_when_its_user_fails():
    """An error inside the ``with`` block: every namespace, device and process is gone afterwards; and
    the namespaces of a cluster whose process was killed before its clean-up go at the next start."""
    stale = "dl99999999x0-h1"  # no such process: pids stay below /proc/sys/kernel/pid_max (<= 2**22)
    _netns._run("ip", "netns", "add", stale)
    try:
        cluster = _netns.SimCluster(hosts=2, workers_per_host=1, delay=DELAY, preload=False)
        with pytest.raises(RuntimeError, match="inside"), cluster:
            assert cluster.pids(1) and cluster.pids(2)
            assert cluster.leftovers()  # namespaces, devices and processes while it is up
            raise RuntimeError("inside")
        assert cluster.leftovers() == []
        assert stale not in _netns._run("ip", "netns", "list").stdout
        assert not [ns for ns in _netns._run("ip", "netns", "list").stdout.split() if ns.startswith(cluster.tag)]
    finally:
        _netns._run("ip", "netns", "del", stale, check=False)
