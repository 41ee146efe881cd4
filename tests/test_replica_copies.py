"""The in-memory copies a distributed fit's driver sends its replicas (dlogit/checkpoint.py): an L-BFGS
copy carries only the pairs pushed since the previous one, and the replica's completed copy is exactly
the state a whole copy would have given."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from dlogit.checkpoint import merge_copy, state_copy
from dlogit.engine.driver import REPLICA_WHOLE_EVERY
from dlogit.penalty import Penalty
from dlogit.solvers import Problem, SolverOptions, get, state_from_arrays, state_to_arrays


def _states(n_steps: int, memory: int = 4, l1: float = 0.0):
    rng = np.random.default_rng(5)
    n, d = 400, 300
    X = np.c_[rng.standard_normal((n, d)) * np.linspace(0.1, 10, d), np.ones(n)]
    y = (X[:, :3].sum(axis=1) + rng.standard_normal(n) > 0).astype(float)

    def fun(theta):
        z = X @ theta
        return float(np.mean(np.logaddexp(0, z) - y * z)) + 1e-4 * theta @ theta, \
            X.T @ (1 / (1 + np.exp(-z)) - y) / n + 2e-4 * theta

    penalty = Penalty.weighted_l1(np.r_[np.full(d, l1), 0.0]) if l1 else None
    problem = Problem(fun, d + 1, penalty=penalty)
    o = SolverOptions(max_iter=n_steps, tol=0.0, memory=memory)
    lbfgs = get("lbfgs")
    states = [lbfgs.init(problem, np.zeros(d + 1), o)]
    while states[-1].status is None:
        states.append(lbfgs.step(problem, states[-1], o))
    return states


def _size(copy) -> int:
    return len(pickle.dumps(copy, protocol=5))


@pytest.mark.parametrize("l1", [0.0, 0.01], ids=["lbfgs", "owlqn"])
def test_a_replica_completes_each_delta_to_the_whole_state(l1):
    states = _states(40, l1=l1)
    assert len(states) > 30
    replica = None
    mark = None
    deltas = 0
    for k, st in enumerate(states):
        whole = mark is None or k % REPLICA_WHOLE_EVERY == 0
        copy = state_copy(st, None if whole else mark)
        deltas += "delta" in copy
        if "delta" in copy and st.memory.count == st.memory.capacity:  # one new pair, not all four:
            assert _size(copy) < _size(state_copy(st)) / 2  # theta, grad, s, y, not theta, grad, 4 s, 4 y
        pairs = copy.get("pairs") or copy["delta"]["pairs"]
        mark = (st.n_iter, pairs[1])
        replica = merge_copy(replica, {"epoch": 1, "n_iter": st.n_iter, **copy})
        assert replica is not None and replica["n_iter"] == st.n_iter
        want = state_to_arrays(st)
        assert replica["state"].keys() == want.keys()
        for key in want:
            assert_array_equal(replica["state"][key], want[key], err_msg=f"step {k} {key}")
    assert deltas >= len(states) - len(states) // REPLICA_WHOLE_EVERY - 2
    # the completed copy resumes the run like the state itself
    buf = io.BytesIO()
    np.savez(buf, **replica["state"])
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        back = state_from_arrays(z)
    assert_array_equal(back.memory.to_arrays()[0], states[-1].memory.to_arrays()[0])


def test_a_replica_that_missed_a_copy_keeps_its_older_whole_copy_until_a_whole_one():
    states = _states(20)
    sent = []
    mark = None
    for k, st in enumerate(states):
        copy = state_copy(st, None if k in (0, 12) else mark)
        mark = (st.n_iter, (copy.get("pairs") or copy["delta"]["pairs"])[1])
        sent.append({"epoch": 1, "n_iter": st.n_iter, **copy})
    replica = None
    for k, msg in enumerate(sent):
        if k == 5:
            continue  # lost on the way (copies go without a reply)
        replica = merge_copy(replica, msg)
        held = replica["n_iter"]
        assert held == (4 if 5 <= k < 12 else k)  # stuck at the last copy it could complete
        for key, v in state_to_arrays(states[held]).items():
            assert_array_equal(replica["state"][key], v)
    # a delta of another driver (epoch) or against another step is never applied
    assert merge_copy(replica, {**sent[-1], "epoch": 2}) is replica
    other = dict(sent[-1])
    other["delta"] = {**other["delta"], "base": 3} if "delta" in other else {"base": 3, "pairs": (1, 1),
                                                                            "S": np.empty((0, 301)),
                                                                            "Y": np.empty((0, 301))}
    assert merge_copy(replica, other) is replica


def test_states_without_a_memory_are_always_copied_whole():
    fun = lambda t: (float(t @ t), 2 * t)
    problem = Problem(fun, 3)
    o = SolverOptions(max_iter=5, tol=0.0, lr=0.1)
    for name in ("gd", "newton"):
        p = Problem(fun, 3, hvp=lambda t, v: 2 * v) if name == "newton" else problem
        st = get(name).init(p, np.ones(3), o)
        copy = state_copy(st, (0, 0))
        assert "delta" not in copy and copy["pairs"] is None
        kept = merge_copy(None, {"epoch": 0, "n_iter": 0, **copy})
        assert kept is not None and kept["state"].keys() == state_to_arrays(st).keys()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_lbfgs_driver_killed_mid_fit_continues_from_a_completed_copy():
    """SIGKILL the driver of a distributed L-BFGS fit: the next driver continues from a replica's copy
    that the replica completed from deltas (memory pairs only), and ends with the same model, exactly."""
    import os
    import signal

    import dask
    import dask.array as da
    from distributed import Client
    from test_engine_cluster import _assert_nothing_left, _cluster, _Fit, _last_step, _pid_of, _wait_for_step

    import dlogit
    from dlogit.data import synthetic_numpy

    Xn, yn = synthetic_numpy(16000, 40, seed=11)
    Xn = Xn * np.logspace(-2, 2, 40)  # unpreconditioned: hundreds of L-BFGS steps
    X, y = da.from_array(Xn, chunks=(2000, 40)), da.from_array(yn, chunks=2000)
    params = {"solver": "lbfgs", "l2": 1e-6, "tol": 0.0, "max_iter": 300, "init": "zeros",
              "progress_period": 5}
    with dask.config.set({"dlogit.precondition": False}):
        ref = dlogit.LogisticRegression(chunk_rows=2000, **params).fit(Xn, yn)
        with dask.config.set({"dlogit.engine.replica-every": "0.02s"}), _cluster(3) as cluster, \
                Client(cluster, set_as_default=False) as c:
            fit = _Fit(c, X, y, **params)
            fit.start()
            _wait_for_step(fit.events, 120)
            driver = fit.starts()[0]["params"]["driver"]
            step = _last_step(fit.events)
            os.kill(_pid_of(c, driver), signal.SIGKILL)
            fit.join(180)
            assert not fit.is_alive() and fit.error is None, repr(fit.error)
            starts = fit.starts()
            assert len(starts) == 2 and starts[1]["params"]["driver"] != driver
            resumed = starts[1]["params"]["resumed_from"]
            assert 20 <= resumed <= 300 and step - 100 <= resumed
            assert fit.model.n_iter_ == ref.n_iter_ == 300
            _assert_nothing_left(c)
    assert_array_equal(fit.model.coef_, ref.coef_)
    assert_array_equal(fit.model.intercept_, ref.intercept_)
