"""The Penalty object (dlogit/penalty.py) and the frozen solver states: exact references computed here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.optimize import approx_fprime, minimize_scalar

from dlogit.errors import ConfigError
from dlogit.penalty import Penalty
from dlogit.solvers import GDState, LBFGSState, NewtonState, Pairs, Problem, SolverOptions, get, minimize


def _penalty(n: int = 6) -> Penalty:
    """Elastic net with per-coordinate factors (one unpenalized coordinate, one doubled) and scales."""
    factors = np.array([1.0, 0.0, 2.0, 1.0, 0.5, 1.0])[:n]
    scale = np.array([1.0, 3.0, 0.5, 2.0, 1.0, 10.0])[:n]
    return Penalty(n, l1=0.3, l2=0.2, factors=factors, scale=scale)


def _reference_value(P: Penalty, theta: np.ndarray) -> float:
    assert P.factors is not None and P.scale is not None
    f, s = P.factors, P.scale
    return float(sum(P.l2 * f[j] * (theta[j] / s[j]) ** 2 + P.l1 * f[j] * abs(theta[j]) / s[j]
                     for j in range(theta.size)))


def test_value_gradient_and_curvature_are_the_stated_formula():
    P = _penalty()
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(6)
    assert P.value(theta) == pytest.approx(_reference_value(P, theta), rel=1e-14)
    smooth, nonsmooth = P.split()
    assert smooth.value(theta) + nonsmooth.value(theta) == pytest.approx(P.value(theta), rel=1e-14)
    assert_allclose(P.gradient(theta), approx_fprime(theta, smooth.value, 1e-7), rtol=1e-5, atol=1e-7)
    factors, scale = np.array([1, 0, 2, 1, 0.5, 1]), np.array([1, 3, 0.5, 2, 1, 10])
    assert_allclose(P.curvature(), 2 * 0.2 * factors / scale**2, rtol=1e-15)
    out = np.ones(6)
    P.add_hvp(theta, out)
    assert_allclose(out, 1.0 + P.curvature() * theta, rtol=1e-15)
    assert P.value(np.zeros(6)) == 0.0 and not np.any(P.gradient(np.zeros(6)))


def test_prox_is_the_coordinatewise_argmin():
    P = _penalty()
    rng = np.random.default_rng(1)
    for t in (0.1, 1.0, 7.0):
        x = rng.standard_normal(6) * 2
        z = P.prox(x, t)
        for j in range(6):
            one = Penalty(1, l1=P.l1, l2=P.l2, factors=P.factors[j:j + 1], scale=P.scale[j:j + 1])  # type: ignore[index]

            def objective(v, xj=x[j], t=t, one=one):
                return 0.5 * (v - xj) ** 2 + t * one.value(np.array([v]))

            ref = minimize_scalar(objective, bounds=(-10, 10), method="bounded", options={"xatol": 1e-12}).x
            assert z[j] == pytest.approx(ref, abs=1e-8), (t, j)
        threshold = t * P.l1_weights
        assert_array_equal(z[np.abs(x) <= threshold], 0.0)  # exact zeros, not tiny numbers
    assert P.prox(x, 1.0) is not x  # never in place
    zero = Penalty(6)
    assert zero.prox(x, 1.0) is x  # the zero penalty's prox is the identity


def test_min_norm_subgradient_is_the_nearest_point_of_the_subdifferential():
    P = _penalty()
    theta = np.array([0.0, 0.0, 1.5, -2.0, 0.0, 0.0])
    grad = np.array([0.1, -4.0, 0.2, 0.3, -5.0, 0.01])
    got = P.min_norm_subgradient(theta, grad)
    g = grad + P.gradient(theta)
    w = P.l1_weights
    for j in range(6):
        if theta[j] != 0:
            assert got[j] == g[j] + w[j] * np.sign(theta[j])
        else:  # the subdifferential is [g - w, g + w]: its point nearest 0
            lo, hi = g[j] - w[j], g[j] + w[j]
            assert got[j] == pytest.approx(0.0 if lo <= 0 <= hi else (lo if lo > 0 else hi), abs=1e-15)
    assert got[1] == -4.0  # the unpenalized coordinate keeps its gradient
    assert P.optimality(theta, grad) == pytest.approx(np.linalg.norm(got), rel=1e-15)


def test_rescaled_is_the_same_penalty_in_the_new_coordinates():
    P = Penalty(4, l1=0.5, l2=0.25, factors=[1, 1, 0, 2])
    s = np.array([2.0, 0.1, 5.0, 3.0])
    Ps = P.rescaled(s)
    theta = np.array([0.7, -0.2, 3.0, 0.0])
    assert Ps.value(s * theta) == pytest.approx(P.value(theta), rel=1e-14)
    assert_allclose(Ps.l1_weights, 0.5 * np.array([1, 1, 0, 2]) / s, rtol=1e-15)
    # gradients transform with A^T: d/dtheta' = (1/s) d/dtheta
    assert_allclose(Ps.gradient(s * theta), P.gradient(theta) / s, rtol=1e-14)


def test_bad_penalties_are_config_errors():
    with pytest.raises(ConfigError):
        Penalty(3, l1=-1.0)
    with pytest.raises(ConfigError):
        Penalty(3, l2=float("nan"))
    with pytest.raises(ConfigError):
        Penalty(3, factors=[1.0, -1.0, 0.0])
    with pytest.raises(ConfigError):
        Penalty(3, factors=[1.0, 1.0])
    with pytest.raises(ConfigError):
        Penalty(3, scale=[1.0, 0.0, 1.0])
    with pytest.raises(ConfigError):
        Problem(lambda t: (0.0, t), 4, penalty=Penalty(3))


def _logistic(seed: int = 0, n: int = 300, d: int = 8):
    rng = np.random.default_rng(seed)
    X = np.c_[rng.standard_normal((n, d)), np.ones(n)]
    y = (X[:, 0] - X[:, 1] + rng.standard_normal(n) > 0).astype(float)

    def fun(theta):
        z = X @ theta
        r = 1 / (1 + np.exp(-z)) - y
        return float(np.mean(np.logaddexp(0, z) - y * z)), X.T @ r / n

    def hvp(theta, v):
        p = 1 / (1 + np.exp(-(X @ theta)))
        return X.T @ (p * (1 - p) * (X @ v)) / n

    return fun, hvp, d + 1


@pytest.mark.parametrize("solver", ["gd", "lbfgs"])
def test_every_solver_takes_elastic_net_with_factors_as_data(solver):
    """l1 + l2 with an unpenalized intercept and a doubled coefficient: the solution satisfies the
    KKT conditions of f + P (the minimum-norm subgradient vanishes), with exact zeros."""
    fun, hvp, n = _logistic()
    factors = np.r_[np.ones(n - 2), 2.0, 0.0]
    P = Penalty(n, l1=0.02, l2=0.05, factors=factors)
    o = SolverOptions(max_iter=20000, tol=1e-9, lr=1.0)
    state = minimize(Problem(fun, n, penalty=P, hvp=hvp), np.zeros(n), o, solver)
    assert state.status == "converged", state.message
    assert P.optimality(state.theta, fun(state.theta)[1]) <= 1e-8
    assert np.any(state.theta == 0.0) and state.theta[-1] != 0.0  # sparse, the intercept free
    assert state.loss == pytest.approx(fun(state.theta)[0] + P.value(state.theta), rel=1e-14)
    # the same problem with the L2 part written into fun: the same solution
    smooth, l1 = P.split()

    def fun_l2(theta):
        f, g = fun(theta)
        return f + smooth.value(theta), g + smooth.gradient(theta)

    other = minimize(Problem(fun_l2, n, penalty=l1), np.zeros(n), o, solver)
    assert_allclose(other.theta, state.theta, rtol=1e-6, atol=1e-8)


def test_newton_takes_a_smooth_penalty():
    fun, hvp, n = _logistic(1)
    P = Penalty(n, l2=0.1, factors=np.r_[np.ones(n - 1), 0.0])
    state = minimize(Problem(fun, n, penalty=P, hvp=hvp), np.zeros(n), SolverOptions(max_iter=50, tol=1e-10),
                     "newton")
    assert state.status == "converged"
    assert np.linalg.norm(fun(state.theta)[1] + P.gradient(state.theta)) <= 1e-10


@pytest.mark.parametrize("solver,cls", [("gd", GDState), ("lbfgs", LBFGSState), ("newton", NewtonState)])
def test_states_are_frozen_values_that_steps_never_change(solver, cls):
    fun, hvp, n = _logistic(2)
    problem = Problem(fun, n, penalty=Penalty(n, l2=0.01), hvp=hvp)
    o = SolverOptions(max_iter=30, tol=0.0, lr=0.5, memory=3)
    impl = get(solver)
    states = [impl.init(problem, np.zeros(n), o)]
    for _ in range(6):
        states.append(impl.step(problem, states[-1], o))
    assert all(type(s) is cls for s in states)
    with pytest.raises(dataclasses.FrozenInstanceError):
        states[0].theta = np.ones(n)  # type: ignore[misc]
    # re-stepping an old state gives the very state that followed it: nothing it holds was changed
    for k in (0, 2, 4):
        again = impl.step(problem, states[k], o)
        assert_array_equal(again.theta, states[k + 1].theta)
        assert again.loss == states[k + 1].loss and again.grad_norm == states[k + 1].grad_norm


def test_the_lbfgs_memory_is_a_fixed_ring_that_copies_no_pair():
    rng = np.random.default_rng(3)
    ring = Pairs.empty(5, 3)
    history = []
    for _ in range(7):
        s, y = rng.standard_normal(5), rng.standard_normal(5)
        y = y if float(s @ y) > 0 else -y
        new = ring.push(s, y, 3)
        assert new is not ring and len(new.s) == 3  # a new ring of the same fixed size
        assert new.s[new.newest] is s and new.y[new.newest] is y  # the pair is kept, not copied
        assert not s.flags.writeable
        history.append((s, y))
        ring = new
        S, Y = ring.to_arrays()
        keep = history[-3:]
        assert_array_equal(S, np.stack([p[0] for p in keep]))  # oldest first, the newest 3
        assert_array_equal(Y, np.stack([p[1] for p in keep]))
    assert ring.count == 3 and ring.pushed == 7
    # a pair without positive curvature is skipped; a smaller memory keeps the newest pairs
    assert ring.push(np.ones(5), -np.ones(5), 3) is ring
    s, y = rng.standard_normal(5), np.zeros(5)
    s = np.abs(s)
    y[:] = s
    small = ring.push(s, y, 2)
    (a, _), (b, _) = small.pairs()
    assert small.capacity == 2 and a is history[-1][0] and b is s
