"""The engine on real Dask clusters (worker processes on loopback)."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import local_cluster

import dlogit
from dlogit.data import synthetic, synthetic_numpy

# The reduction order is fixed, so runs agree to the last bit: the same chunks, the same tree, and
# every dense chunk evaluated through aligned blocks of the same bounds wherever it landed (an
# unaligned chunk once rounded differently in NumPy/BLAS SIMD loops, 5e-14 relative; the aligned
# scratch blocks removed that). The tests compare bit for bit.


def _fit(client, X, y, mode, **kw):
    params = {"solver": "lbfgs", "tol": 1e-8, **kw}
    return dlogit.LogisticRegression(mode=mode, **params).fit(X, y, client=client)


def test_same_coefficients_on_1_2_and_4_workers():
    X, y = synthetic(4000, 30, seed=3, chunk_rows=500)  # 8 chunks, generated on the workers
    coefs = {}
    for n in (1, 2, 4):
        with local_cluster(n) as client:
            m = _fit(client, X, y, "distributed")
            coefs[n] = np.r_[m.coef_[0], m.intercept_]
            if n == 2:
                local = _fit(client, X, y, "worker-local")
                np.testing.assert_array_equal(np.r_[local.coef_[0], local.intercept_], coefs[n])
    np.testing.assert_array_equal(coefs[1], coefs[2])
    np.testing.assert_array_equal(coefs[2], coefs[4])
    Xn, yn = synthetic_numpy(4000, 30, seed=3, chunk_rows=500)
    here = dlogit.LogisticRegression(tol=1e-8, chunk_rows=500).fit(Xn, yn)
    np.testing.assert_allclose(np.r_[here.coef_[0], here.intercept_], coefs[1], rtol=1e-10)


def test_distributed_gd_equals_in_process(client2):
    Xn, yn = synthetic_numpy(1000, 20, seed=1)
    X = da.from_array(Xn, chunks=(130, 20))
    y = da.from_array(yn, chunks=130)
    kw = {"solver": "gd", "max_iter": 300, "lr": 0.5, "tol": 0.0}
    m = _fit(client2, X, y, "distributed", **kw)
    here = dlogit.LogisticRegression(chunk_rows=130, **kw).fit(Xn, yn)
    np.testing.assert_array_equal(m.coef_, here.coef_)  # the same chunks, the same tree: the same bits
    assert m.n_iter_ == 300 and len(m.history_["step_seconds"]) == 300


def test_persisted_arrays_and_current_client(client2):
    Xn, yn = synthetic_numpy(600, 5, seed=2)
    X = client2.persist(da.from_array(Xn, chunks=(100, 5)))
    y = client2.persist(da.from_array(yn, chunks=100))
    with client2.as_current():
        m = dlogit.LogisticRegression(tol=1e-8, mode="distributed").fit(X, y)
    from distributed import futures_of

    # persisted chunks are used where they are: no chunk was copied to another worker
    assert all(len(v) == 1 for v in client2.who_has(futures_of(X)).values())
    here = dlogit.LogisticRegression(tol=1e-8, chunk_rows=100).fit(Xn, yn)
    np.testing.assert_allclose(m.coef_, here.coef_, rtol=1e-10)
    proba = m.predict_proba(X)
    assert isinstance(proba, da.Array)
    np.testing.assert_allclose(client2.compute(proba).result(), here.predict_proba(Xn), rtol=1e-9)


@pytest.mark.parametrize("mode", ["worker-local", "distributed"])
def test_bad_chunk_on_a_worker_is_a_data_error(client2, mode):
    Xn, yn = synthetic_numpy(400, 4, seed=0)
    Xn[333, 2] = np.nan
    X = da.from_array(Xn, chunks=(100, 4))
    y = da.from_array(yn, chunks=100)
    with pytest.raises(dlogit.DataError, match="NaN or infinite"):
        _fit(client2, X, y, mode)
    y_bad = da.from_array(np.where(np.arange(400) == 5, np.nan, yn), chunks=100)
    with pytest.raises(dlogit.DataError, match="labels contain NaN"):
        _fit(client2, da.from_array(np.nan_to_num(Xn), chunks=(100, 4)), y_bad, mode)
    w_bad = da.from_array(np.where(np.arange(400) == 7, -1.0, 1.0), chunks=100)
    with pytest.raises(dlogit.DataError, match="negative"):
        dlogit.LogisticRegression(mode=mode).fit(da.from_array(np.nan_to_num(Xn), chunks=(100, 4)),
                                                 da.from_array(yn, chunks=100), sample_weight=w_bad,
                                                 client=client2)


def test_single_class_across_chunks_is_detected(client2):
    X = da.from_array(np.random.default_rng(0).standard_normal((300, 3)), chunks=(100, 3))
    y = da.zeros(300, chunks=100)
    with pytest.raises(dlogit.DataError, match="only one class"):
        _fit(client2, X, y, "distributed")


def test_progress_events_reach_the_callback(client2):
    X, y = synthetic(500, 10, seed=0, chunk_rows=100)
    for mode in ("worker-local", "distributed"):
        seen = []
        dlogit.LogisticRegression(solver="gd", max_iter=250, progress_period=100, mode=mode
                                  ).fit(X, y, client=client2, callback=seen.append)
        kinds = [m["type"] for m in seen]
        assert kinds[0] == "start" and kinds[-1] == "end", mode
        steps = [s for m in seen if m["type"] == "progress" for s in m["step"]]
        assert steps == list(range(250)), mode
        assert seen[0]["params"]["mode"] == mode
        assert seen[-1]["n_iter"] == 250


def test_shards_are_released_after_the_fit(client2):
    X, y = synthetic(500, 10, seed=0, chunk_rows=100)
    _fit(client2, X, y, "distributed")

    from dlogit.engine.transport import shard_count

    assert sum(client2.run(shard_count).values()) == 0


def test_two_workers_in_one_process_keep_separate_shards():
    """Both shards live in one process's shard server: each must answer for its own chunks."""
    import logging

    from distributed import Client, LocalCluster

    Xn, yn = synthetic_numpy(800, 6, seed=5)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0",
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster, set_as_default=False) as c:
        X = da.from_array(Xn, chunks=(100, 6))
        y = da.from_array(yn, chunks=100)
        m = _fit(c, X, y, "distributed")
        assert len(m_workers := c.scheduler_info()["workers"]) == 2, m_workers
    here = dlogit.LogisticRegression(tol=1e-8, chunk_rows=100).fit(Xn, yn)
    np.testing.assert_allclose(m.coef_, here.coef_, rtol=1e-10)


def test_local_cluster_workers_preload_the_engine():
    """``start_local_cluster`` preloads ``dlogit.worker``: imports happen at start-up, not in a fit."""
    import sys

    from distributed import Client

    from dlogit.cluster import start_local_cluster

    def loaded() -> list[bool]:
        mods = [m in sys.modules for m in ("dlogit.engine", "dlogit.solvers.gd", "dlogit.chunks",
                                           "dlogit.kernels.cpu", "numba")]
        from dlogit.kernels import cpu, sparse  # compiled (or loaded from the disk cache) already

        return [*mods, len(cpu.dense_binomial_sums.signatures) == 2
                and len(sparse.csr_binomial_sums.signatures) == 4]

    with start_local_cluster(workers=1, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster, set_as_default=False) as c:
        assert list(c.run(loaded).values()) == [[True] * 6]


def test_concurrent_fits_from_one_client_get_their_own_events(client2):
    """Fits running at once from one client share its one event subscription, each its own events."""
    import threading

    X, y = synthetic(400, 8, seed=1, chunk_rows=100)
    seen: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []

    def fit(k: int) -> None:
        try:
            dlogit.LogisticRegression(solver="gd", max_iter=300 + 100 * k, progress_period=50,
                                      mode="worker-local").fit(X, y, client=client2, callback=seen[k].append)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=fit, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for k in (0, 1):
        runs = {m["run"] for m in seen[k]}
        assert len(runs) == 1, (k, runs)
        assert seen[k][0]["type"] == "start" and seen[k][-1]["type"] == "end"
        assert seen[k][-1]["n_iter"] == 300 + 100 * k


def test_alias_chunks_resolve_to_their_task_and_share_the_graph():
    """``from_delayed`` chunks are aliases: the engine computes the real task (one scheduler round
    trip less) and keeps the array's one graph (copying it per chunk made 3000-chunk fits 4x slower)."""
    from dlogit.engine.placement import resolve_aliases as _unalias

    X, _ = synthetic(60, 3, seed=0, chunk_rows=20)
    chunks = list(X.to_delayed().ravel())
    direct = _unalias(chunks)
    assert len(direct) == 3
    for before, after in zip(chunks, direct):
        assert after.key != before.key and "synthetic" in str(after.key)
        assert after.__dask_graph__() is before.__dask_graph__()
    np.testing.assert_array_equal(np.concatenate(dask.compute(*direct, scheduler="sync")),
                                  X.compute(scheduler="sync"))


def test_fused_and_blas_kernels_give_the_same_model(client2):
    """The textbook chunk (2.5 MB, 784 features) trains with the fused one-pass kernel by default, on a
    worker and in this process; forcing BLAS through ``dlogit.cpu-kernel`` (carried to the worker in the
    fit's spec) gives the same coefficients: float64 to 1e-10, float32 to 1e-5."""
    from dlogit.errors import ConfigError

    Xn, yn = synthetic_numpy(400, 784, seed=0)
    kw = {"solver": "gd", "max_iter": 2000, "tol": 0.0}
    for dtype, rtol in ((np.float64, 1e-10), (np.float32, 1e-5)):
        X = da.from_array(Xn.astype(dtype), chunks=(400, 784))
        y = da.from_array(yn.astype(dtype), chunks=400)
        fused = dlogit.LogisticRegression(mode="worker-local", **kw).fit(X, y, client=client2)
        assert (fused.kernel_, fused.mode_) == ("fused", "worker-local")
        with dask.config.set({"dlogit.cpu-kernel": "blas"}):
            blas = dlogit.LogisticRegression(mode="worker-local", **kw).fit(X, y, client=client2)
        assert blas.kernel_ == "blas"
        np.testing.assert_allclose(fused.coef_, blas.coef_, rtol=rtol)
        np.testing.assert_allclose(fused.intercept_, blas.intercept_, rtol=rtol, atol=rtol)
        assert abs(fused.loss_ - blas.loss_) <= rtol * blas.loss_
    here = dlogit.LogisticRegression(**kw).fit(Xn, yn)
    assert (here.kernel_, here.mode_) == ("fused", "in-process")
    # distributed: four 100-row chunks, each fused; the same model as in this process
    X = da.from_array(Xn, chunks=(100, 784))
    y = da.from_array(yn, chunks=100)
    dist = dlogit.LogisticRegression(mode="distributed", **kw).fit(X, y, client=client2)
    assert (dist.kernel_, dist.mode_) == ("fused", "distributed")
    np.testing.assert_allclose(dist.coef_, here.coef_, rtol=1e-10)
    with dask.config.set({"dlogit.cpu-kernel": "blas"}):  # the setting reaches the attached shards too
        dist_blas = dlogit.LogisticRegression(mode="distributed", **kw).fit(X, y, client=client2)
    assert dist_blas.kernel_ == "blas"
    np.testing.assert_allclose(dist_blas.coef_, dist.coef_, rtol=1e-10)
    with dask.config.set({"dlogit.cpu-kernel": "fast"}), pytest.raises(ConfigError, match="cpu-kernel"):
        dlogit.LogisticRegression(**kw).fit(Xn, yn)


# --------------------------------------------------------------------------------------------------
# the pieces of distributed mode that need no cluster

@pytest.mark.parametrize("radix", [2, 3, 4, 16])
def test_worker_tree_reaches_every_worker_once_in_contiguous_subtrees(radix):
    from dlogit.engine.placement import knomial_children

    def subtree(i, n):
        return [i, *(j for c in knomial_children(i, n, radix) for j in subtree(c, n))]

    def hops(i, n):
        return max((1 + hops(c, n) for c in knomial_children(i, n, radix)), default=0)

    for n in range(1, 40):
        parent = {}
        for i in range(n):
            for c in knomial_children(i, n, radix):
                assert c not in parent and c > i
                parent[c] = i
        assert sorted(parent) == list(range(1, n))
        for i in range(n):  # a subtree is a run of positions: merged node sums stay few
            assert sorted(subtree(i, n)) == list(range(i, i + len(subtree(i, n))))
        bound = 0 if n == 1 else int(np.ceil(np.log(n) / np.log(radix) - 1e-9))
        assert hops(0, n) <= bound, (n, radix)
        if n == radix ** bound:  # log_radix(n) hops, not fewer: a tree, not a star
            assert hops(0, n) == bound
    assert knomial_children(0, 8, 8) == list(range(1, 8))  # a radix of n or more: a star


def test_merging_node_sums_on_the_way_up_gives_the_bits_of_the_fixed_tree():
    """Whatever workers hold which chunks and however the tree groups them, completing the nodes
    inside each subtree and then the root adds the same pairs in the same order as the driver
    completing everything at once."""
    from dlogit.engine.shard import covering_nodes
    from dlogit.objective import complete_nodes, complete_tree, node_sum, owned_nodes

    rng = np.random.default_rng(7)
    for n_chunks in (1, 2, 5, 13, 64):
        leaves = rng.standard_normal((n_chunks, 9)) * 10.0 ** rng.integers(-8, 8, (n_chunks, 1))
        leaf = leaves.__getitem__
        truth = node_sum(leaf, 0, n_chunks)
        for _ in range(20):
            owner = rng.integers(0, 5, n_chunks)
            parts = {}
            for w in range(5):  # each worker's own nodes, as Shard.node_sums gives them
                for lo, hi in owned_nodes(np.flatnonzero(owner == w), n_chunks):
                    parts[(lo, hi)] = node_sum(leaf, lo, hi)
            nodes = list(parts)
            rng.shuffle(nodes)
            cut = int(rng.integers(0, len(nodes) + 1))
            merged = {}
            for group in (nodes[:cut], nodes[cut:]):  # two subtrees merge what they can
                targets = covering_nodes(group, n_chunks)
                merged.update(zip(targets, complete_nodes({k: parts[k] for k in group}, targets)))
            root = complete_tree(merged, n_chunks)
            assert np.array_equal(root, truth)
            assert np.array_equal(root, complete_tree(parts, n_chunks))


def test_arrays_on_the_wire_roundtrip_inline_and_as_frames():
    from distributed.protocol import Serialized

    from dlogit.engine.transport import INLINE_BYTES, load_field, pack, unpack

    small = [np.arange(5.0), np.ones((2, 3))]
    field = pack(small)
    assert isinstance(field, dict)  # inline: a few hundred bytes
    for a, b in zip(unpack(field), small):
        np.testing.assert_array_equal(a, b)
    big = [np.arange(INLINE_BYTES // 8 + 1, dtype=np.float64), np.arange(6.0).reshape(2, 3)[:, ::2]]
    field = pack(big)
    assert isinstance(field, Serialized) and len(field.frames) == 2  # raw frames, no msgpack of data
    for a, b in zip(load_field(field.header, field.frames), big):
        np.testing.assert_array_equal(a, b)


def test_a_link_to_an_address_nobody_listens_on_fails_at_once():
    """A worker process that died on a live host refuses connections: the transport says so at once
    instead of letting Dask's ``connect`` retry for the whole heartbeat (a lost host's other workers
    once held a fit for 30 s); a listening address still connects."""
    import asyncio
    import socket

    from distributed.comm import listen

    from dlogit.engine.transport.wire import connect_comm

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there now

    async def main() -> None:
        with pytest.raises(ConnectionRefusedError, match="nothing listens"):  # not a TimeoutError
            await asyncio.wait_for(connect_comm(f"tcp://127.0.0.1:{port}", 60.0, {}), 20.0)

        async def serve(comm) -> None:
            await comm.close()

        listener = listen("tcp://127.0.0.1:0", serve)
        await listener.start()
        try:
            comm = await connect_comm(listener.contact_address, 60.0, {})
            assert comm.allow_offload is False
            comm.abort()
        finally:
            listener.stop()

    asyncio.run(main())


def test_the_worker_preload_tunes_malloc_under_the_nannys_trim_threshold(client2):
    """Workers start with MALLOC_TRIM_THRESHOLD_ (Dask's nanny); the preload keeps freed blocks below
    4 MiB for reuse (glibc), so per-block temporaries do not page-fault in on every evaluation."""
    import sys

    from dlogit.worker import tune_malloc

    env = client2.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
    tuned = client2.run(tune_malloc)
    if sys.platform.startswith("linux"):
        assert all(v is not None for v in env.values()) and all(tuned.values()), (env, tuned)
    with dask.config.set({"dlogit.engine.worker-malloc": False}):
        assert tune_malloc() is False


def test_a_superseded_driver_never_overwrites_a_newer_checkpoint(tmp_path):
    """The checkpoint file is fenced by the driver's epoch as the in-memory copies are: a frozen
    driver (epoch 1) that wakes up after its replacement (epoch 2) wrote step 5 must not put its own
    later-numbered but stale state over it; another run (a --resume) still replaces the file."""
    import dataclasses
    import json

    from dlogit import checkpoint as ckpt
    from dlogit.solvers import state_from_arrays

    Xn, yn = synthetic_numpy(600, 5, seed=1)
    dlogit.LogisticRegression(solver="gd", max_iter=5, tol=0.0).fit(Xn, yn, checkpoint=tmp_path)
    path = ckpt.checkpoint_path(str(tmp_path))
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        state = state_from_arrays({k[6:]: z[k] for k in z.files if k.startswith("state.")})
    keep = {k: meta[k] for k in ("run", "solver", "params", "data", "shape", "classes")}
    history = {"loss": [0.0] * 9, "grad_norm": [0.0] * 9, "step_seconds": [0.0] * 9}

    def step_of() -> tuple[int, int]:
        m = ckpt.read_meta(path)
        return m["epoch"], m["step"]

    assert ckpt.Checkpointer(str(tmp_path), 0, keep, epoch=2).write(state, history)
    assert step_of() == (2, 5)
    stale = dataclasses.replace(state, n_iter=9)
    old = ckpt.Checkpointer(str(tmp_path), 0, keep, epoch=1)
    assert old.write(stale, history) is False and old.refused == 1
    assert step_of() == (2, 5)
    other = ckpt.Checkpointer(str(tmp_path), 0, {**keep, "run": "another-run"}, epoch=1)
    assert other.write(stale, history) and step_of() == (1, 9)


def test_a_checkpoint_lock_that_cannot_be_had_still_writes_the_checkpoint(tmp_path):
    """The fence's lock file must never cost a fit its checkpoints: where it cannot be opened or
    locked (another user's file in a shared directory, a filesystem without flock) the checkpoint is
    written anyway, with a warning; the lock file gets the checkpoint's mode."""
    import os
    import stat
    import warnings

    from dlogit import checkpoint as ckpt

    Xn, yn = synthetic_numpy(600, 5, seed=1)
    (tmp_path / ckpt.LOCKNAME).mkdir()  # cannot be opened for writing nor locked as a file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = dlogit.LogisticRegression(solver="gd", max_iter=5, tol=0.0).fit(Xn, yn, checkpoint=tmp_path)
    assert m.n_iter_ == 5 and os.path.exists(ckpt.checkpoint_path(str(tmp_path)))
    assert any("cannot lock" in str(w.message) for w in caught), [str(w.message) for w in caught]
    other = tmp_path / "other"
    other.mkdir()
    old = os.umask(0o077)
    try:
        dlogit.LogisticRegression(solver="gd", max_iter=5, tol=0.0).fit(Xn, yn, checkpoint=other)
    finally:
        os.umask(old)
    assert stat.S_IMODE((other / ckpt.LOCKNAME).stat().st_mode) == 0o600
