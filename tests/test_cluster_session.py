"""The cluster lifecycle the CLI calls (issue 20: a thin CLI): :func:`dlogit.cluster.open_cluster`,
:func:`dlogit.cluster.persist` (the load progress) and :func:`dlogit.cluster.worker_kind` (GPU detection
that raises instead of guessing "cpu"), on real local clusters."""

from __future__ import annotations

import time

import numpy as np
import pytest


def test_worker_kind_of_cpu_workers(client2):
    from dlogit.cluster import worker_kind

    assert worker_kind(client2) == "cpu"


def test_worker_kind_raises_when_a_probe_fails(client2, monkeypatch):
    """A worker whose probe raises: a ClusterError naming it, not a silent "cpu"."""
    import dlogit.cluster as C
    from dlogit.errors import ClusterError

    def probe():
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(C, "_worker_sees_gpu", probe)
    with pytest.raises(ClusterError, match=r"cannot tell whether worker tcp://.* has a GPU .*driver exploded"):
        C.worker_kind(client2)


def test_worker_kind_raises_when_the_scheduler_is_gone():
    from distributed import Client, LocalCluster

    from dlogit.cluster import worker_kind
    from dlogit.errors import ClusterError

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
    client = Client(cluster, set_as_default=False)
    try:
        cluster.close()
        with pytest.raises(ClusterError, match="cannot ask the workers whether they have a GPU"):
            worker_kind(client)
    finally:
        client.close()


def _slow(block):
    time.sleep(0.02)
    return block


def test_persist_reports_the_chunks_of_the_first_array(client2):
    import dask.array as da

    from dlogit.cluster import persist

    X = da.from_array(np.arange(60.0).reshape(30, 2), chunks=(1, 2)).map_blocks(_slow, dtype=float)
    y = da.from_array(np.arange(30.0), chunks=1)
    seen = []
    Xp, yp = persist(client2, [X, y], lambda *r: seen.append(r), after=0.0, every=0.0)
    assert np.array_equal(client2.compute(Xp).result(), np.arange(60.0).reshape(30, 2))
    assert np.array_equal(client2.compute(yp).result(), np.arange(30.0))
    assert seen and seen[-1][:2] == (30, 30) and seen[-1][3] is True
    assert all(total == 30 and 0 <= done <= 30 and not final for done, total, _, final in seen[:-1])
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)
    seen.clear()
    persist(client2, [y + 1], lambda *r: seen.append(r))  # under a second: nothing reported
    assert seen == []


def _bad(block):
    from dlogit.errors import DataError

    raise DataError("row 3 of part-7 is not a number")


def test_persist_raises_a_chunks_error(client2):
    import dask.array as da

    from dlogit.cluster import persist
    from dlogit.errors import DataError

    X = da.from_array(np.zeros((4, 2)), chunks=(2, 2)).map_blocks(_bad, dtype=float)
    with pytest.raises(DataError, match="part-7"):
        persist(client2, [X])


def test_open_cluster_on_an_existing_scheduler_and_a_local_one(tmp_path):
    from distributed import LocalCluster

    from dlogit.cluster import open_cluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as lc:
        with open_cluster(scheduler=lc.scheduler_address, connect_timeout=30) as s:
            assert s.cluster is None and s.kind == "cpu" and s.n_workers == 1
            client = s.client
        assert client.status == "closed"
        assert lc.status.name == "running"  # an existing cluster is left running
    entered = []

    class Guard:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return None

    interrupted = []
    with pytest.raises(KeyboardInterrupt), open_cluster(workers=1, dashboard_address="127.0.0.1:0",
                                                         spawn_guard=Guard,
                                                         on_interrupt=lambda: interrupted.append(True)) as s:
        assert s.cluster is not None and s.kind == "cpu" and s.n_workers == 1
        started = s.cluster
        raise KeyboardInterrupt
    assert entered == [True] and interrupted == [True, True]  # before closing the client, the cluster
    assert started.status.name == "closed"
