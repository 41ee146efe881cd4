"""The solvers as state machines: optima against exact references, L1 (KKT, support, exact zeros),
checkpoint/resume (bit-identical), statuses, divergence detection.

Pure NumPy: the objectives are written here; references are scikit-learn's LogisticRegression at the
equivalent C (``C = 1 / (2 n l2)`` for ``mean loss + l2 ||w||^2``), SciPy's L-BFGS-B / trust-ncg run to
tight tolerances, and a bound-constrained L-BFGS-B on the split ``theta = u - v`` for L1.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import warnings
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.optimize import minimize as scipy_minimize

from dlogit.errors import ConfigError, ModelError
from dlogit.penalty import Penalty
from dlogit.solvers import (
    SOLVERS,
    LBFGSState,
    Pairs,
    Problem,
    Solver,
    SolverOptions,
    SolverState,
    get,
    minimize,
    state_from_arrays,
    state_to_arrays,
)

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.linear_model import LogisticRegression

# --------------------------------------------------------------------------------------------------
# objectives


def log1pexp(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class Logistic:
    """``mean(log(1 + e^z) - y z) + l2 ||w||^2``, ``z = X w + b``; ``theta = [w, b]``."""

    def __init__(self, X: np.ndarray, y: np.ndarray, l2: float) -> None:
        self.X, self.y, self.l2 = X, y.astype(np.float64), l2
        self.n, self.d = X.shape

    def fun(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        z = self.X @ w + b
        r = (sigmoid(z) - self.y) / self.n
        g = np.empty(self.d + 1)
        g[:-1] = self.X.T @ r + 2 * self.l2 * w
        g[-1] = r.sum()
        return float(np.mean(log1pexp(z) - self.y * z) + self.l2 * np.dot(w, w)), g

    def hvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        s = sigmoid(self.X @ theta[:-1] + theta[-1])
        u = s * (1 - s) / self.n * (self.X @ v[:-1] + v[-1])
        out = np.empty(self.d + 1)
        out[:-1] = self.X.T @ u + 2 * self.l2 * v[:-1]
        out[-1] = u.sum()
        return out

    def problem(self, l1: np.ndarray | None = None, hvp: bool = True) -> Problem:
        return Problem(self.fun, self.d + 1, penalty=None if l1 is None else Penalty.weighted_l1(l1),
                       hvp=self.hvp if hvp else None)


class Softmax:
    """Multinomial ``mean(-log softmax_y(W x + b)) + l2 ||W||^2``; ``theta`` = (K, d + 1) flattened."""

    def __init__(self, X: np.ndarray, labels: np.ndarray, l2: float) -> None:
        self.n, self.d = X.shape
        self.Xt = np.hstack([X, np.ones((self.n, 1))])
        self.K = int(labels.max()) + 1
        self.Y = np.eye(self.K)[labels]
        self.l2 = l2
        self.mask = np.ones((self.K, self.d + 1))
        self.mask[:, -1] = 0.0  # intercepts unpenalized

    def _probs(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Z = self.Xt @ theta.reshape(self.K, self.d + 1).T
        Z = Z - Z.max(axis=1, keepdims=True)
        P = np.exp(Z)
        P /= P.sum(axis=1, keepdims=True)
        return Z, P

    def fun(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        Z, P = self._probs(theta)
        W = theta.reshape(self.K, self.d + 1) * self.mask
        lse = np.log(np.exp(Z).sum(axis=1))
        loss = float(np.mean(lse - (Z * self.Y).sum(axis=1)) + self.l2 * np.sum(W * W))
        G = (P - self.Y).T @ self.Xt / self.n + 2 * self.l2 * W
        return loss, G.ravel()

    def hvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        _, P = self._probs(theta)
        V = v.reshape(self.K, self.d + 1)
        U = self.Xt @ V.T
        R = P * U - P * (P * U).sum(axis=1, keepdims=True)
        return (R.T @ self.Xt / self.n + 2 * self.l2 * V * self.mask).ravel()

    @property
    def n_params(self) -> int:
        return self.K * (self.d + 1)


def quadratic(A: np.ndarray, b: np.ndarray) -> tuple[Callable, Callable]:
    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        return float(0.5 * x @ A @ x - b @ x), A @ x - b

    def hvp(x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return A @ v

    return fun, hvp


def standardize(X: np.ndarray) -> np.ndarray:
    return (X - X.mean(axis=0)) / X.std(axis=0)


@cache
def breast_cancer(std: bool = True) -> tuple[np.ndarray, np.ndarray]:
    X, y = load_breast_cancer(return_X_y=True)
    return (standardize(X) if std else X), y.astype(np.float64)


def textbook() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dlogit's textbook data (one chunk of ``dlogit.data.synthetic_numpy(400, 784, seed=0)``) and theta0."""
    X = np.random.default_rng([0, 0, 0]).standard_normal((400, 784))
    y = np.random.default_rng([0, 0, 1]).integers(0, 2, 400).astype(np.float64)
    theta0 = np.zeros(785)
    theta0[:784] = np.random.default_rng(0).standard_normal(784)
    return X, y, theta0


def synthetic_logistic(n: int, d: int, seed: int, scales: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if scales is not None:
        X = X * scales
    w = rng.standard_normal(d) / np.sqrt(d) / (1.0 if scales is None else scales)
    y = (rng.random(n) < sigmoid(X @ w + 0.3)).astype(np.float64)
    return X, y


# --------------------------------------------------------------------------------------------------
# references and helpers


def scipy_reference(fun: Callable, x0: np.ndarray) -> np.ndarray:
    """L-BFGS-B to the float64 floor (gtol 1e-13, no f test)."""
    res = scipy_minimize(fun, x0, jac=True, method="L-BFGS-B",
                         options={"maxiter": 100000, "maxfun": 1000000, "gtol": 1e-13, "ftol": 0.0,
                                  "maxcor": 30})
    return res.x


def l1_reference(fun: Callable, l1: np.ndarray) -> np.ndarray:
    """``min f(u - v) + l1 . (u + v)`` over ``u, v >= 0`` by L-BFGS-B (a smooth bound-constrained twin)."""
    n = l1.size

    def split(uv: np.ndarray) -> tuple[float, np.ndarray]:
        theta = uv[:n] - uv[n:]
        f, g = fun(theta)
        return f + float(l1 @ (uv[:n] + uv[n:])), np.concatenate([g + l1, -g + l1])

    bounds = [(0.0, None)] * (2 * n)
    res = scipy_minimize(split, np.zeros(2 * n), jac=True, method="L-BFGS-B", bounds=bounds,
                         options={"maxiter": 100000, "maxfun": 1000000, "gtol": 1e-14, "ftol": 0.0,
                                  "maxcor": 30})
    return res.x[:n] - res.x[n:]


def check_kkt(theta: np.ndarray, grad: np.ndarray, l1: np.ndarray, tol: float) -> None:
    """``|g_j + l1_j sign(theta_j)| <= tol`` where ``theta_j != 0``; ``|g_j| <= l1_j + tol`` where 0."""
    nz = theta != 0
    assert np.all(np.abs(grad[nz] + l1[nz] * np.sign(theta[nz])) <= tol)
    assert np.all(np.abs(grad[~nz]) <= l1[~nz] + tol)


def run_all(solver: str, problem: Problem, theta0: np.ndarray, options: SolverOptions,
            state: SolverState | None = None) -> list[SolverState]:
    """Every state of a run: the initial one (or ``state``) and one per step."""
    impl = get(solver)
    states = [impl.init(problem, theta0, options) if state is None else state]
    while states[-1].status is None:
        states.append(impl.step(problem, states[-1], options))
    return states


def roundtrip(state: SolverState) -> SolverState:
    """The state through ``np.savez`` to memory and ``np.load(allow_pickle=False)``."""
    buf = io.BytesIO()
    np.savez(buf, **state_to_arrays(state))
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as data:
        return state_from_arrays(data)


class Recorder(list):
    """A callback that records its arguments."""

    def __call__(self, *args: object) -> None:
        self.append(args)


def opts(**kw) -> SolverOptions:
    kw.setdefault("max_iter", 1000)
    kw.setdefault("tol", 1e-6)
    return SolverOptions(**kw)


# --------------------------------------------------------------------------------------------------
# registry


def test_registry_names_defaults_and_unknown_name():
    assert set(SOLVERS) == {"gd", "lbfgs", "newton"}
    expect = {"gd": (10001, 0.0, True, False), "lbfgs": (1000, 1e-6, True, False),
              "newton": (100, 1e-6, False, True)}
    for name, (max_iter, tol, l1, hvp) in expect.items():
        s = get(name)
        assert isinstance(s, Solver) and s is SOLVERS[name] and s.name == name
        assert (s.default_max_iter, s.default_tol, s.supports_l1, s.needs_hvp) == (max_iter, tol, l1, hvp)
    with pytest.raises(ConfigError, match="choose one of gd, lbfgs, newton"):
        get("sgd")


# --------------------------------------------------------------------------------------------------
# smooth optima against exact references


def test_lbfgs_breast_cancer_matches_sklearn_and_scipy():
    X, y = breast_cancer()
    n = X.shape[0]
    obj = Logistic(X, y, l2=0.01)
    state = minimize(obj.problem(), np.zeros(31), opts(tol=1e-9), "lbfgs")
    assert state.status == "converged" and state.grad_norm <= 1e-9
    assert state.grad_norm == pytest.approx(np.linalg.norm(obj.fun(state.theta)[1]), rel=1e-12)
    ref = scipy_reference(obj.fun, np.zeros(31))  # itself at ||g|| ~ 1e-9 (the float64 floor of f here)
    # strong convexity 2 * l2 = 0.02: ||theta - theta*|| <= ||g|| / 0.02 for either
    assert_allclose(state.theta, ref, rtol=0, atol=1e-7)
    sk = LogisticRegression(C=1 / (2 * n * 0.01), tol=1e-10, max_iter=10000).fit(X, y)
    assert_allclose(state.theta, np.r_[sk.coef_[0], sk.intercept_], rtol=0, atol=1e-6)
    assert state.loss == pytest.approx(obj.fun(ref)[0], rel=1e-14)


def test_lbfgs_and_newton_multinomial_match_sklearn():
    l2 = 0.01
    for loader in (load_iris, load_wine):
        X, labels = loader(return_X_y=True)
        X = standardize(X)
        obj = Softmax(X, labels, l2)
        sk = LogisticRegression(C=1 / (2 * X.shape[0] * l2), tol=1e-10, max_iter=10000).fit(X, labels)
        problem = Problem(obj.fun, obj.n_params, hvp=obj.hvp)
        for solver in ("lbfgs", "newton"):
            state = minimize(problem, np.zeros(obj.n_params), opts(tol=1e-8), solver)
            assert state.status == "converged", (loader.__name__, solver, state.message)
            T = state.theta.reshape(obj.K, -1)
            # strong convexity 2 l2 in W: ours within 1e-8 / 0.02 of the optimum, sklearn (tol 1e-10) closer
            assert_allclose(T[:, :-1], sk.coef_, rtol=0, atol=2e-6)
            # the intercepts are defined up to a common shift: compare centred
            assert_allclose(T[:, -1] - T[:, -1].mean(), sk.intercept_ - sk.intercept_.mean(), atol=2e-6)


def test_lbfgs_iterations_comparable_to_scipy_on_100_features():
    X, y = synthetic_logistic(2000, 100, seed=1, scales=np.linspace(0.2, 3.0, 100))
    obj = Logistic(X, y, l2=1e-4)
    theta0 = np.zeros(101)
    state = minimize(obj.problem(), theta0, opts(tol=1e-6), "lbfgs")
    assert state.status == "converged"
    ours = state.n_iter
    its: list[float] = []  # scipy's iterations (same memory) until its iterates reach ||g|| <= 1e-6
    scipy_minimize(obj.fun, theta0, jac=True, method="L-BFGS-B",
                   callback=lambda xk: its.append(np.linalg.norm(obj.fun(xk)[1])),
                   options={"maxiter": 10000, "gtol": 0.0, "ftol": 0.0, "maxcor": 10, "maxfun": 100000})
    scipy_its = next(i + 1 for i, g in enumerate(its) if g <= 1e-6)
    assert ours <= 1.25 * scipy_its + 5, (ours, scipy_its)
    assert state.n_evals <= 1.5 * ours + 5
    # ||g|| <= 1e-6 with strong convexity 2e-4 puts theta within 5e-3 of the optimum
    assert_allclose(state.theta, scipy_reference(obj.fun, theta0), rtol=0, atol=5e-3)


def test_quadratic_solved_by_every_solver():
    rng = np.random.default_rng(3)
    Q = rng.standard_normal((20, 20))
    A = Q @ Q.T / 20 + np.diag(np.linspace(0.5, 2.0, 20))
    b = rng.standard_normal(20)
    fun, hvp = quadratic(A, b)
    exact = np.linalg.solve(A, b)
    problem = Problem(fun, 20, hvp=hvp)
    L = float(np.linalg.eigvalsh(A).max())
    mu = float(np.linalg.eigvalsh(A).min())
    # L-BFGS compares values of f (~ -7 here): it resolves ||g|| down to ~1e-7 only, as SciPy's L-BFGS-B
    for solver, o in (("gd", opts(max_iter=20000, tol=1e-10, lr=1.0 / L)), ("lbfgs", opts(tol=1e-6)),
                      ("newton", opts(tol=1e-10))):
        state = minimize(problem, np.zeros(20), o, solver)
        assert state.status == "converged", solver
        assert np.linalg.norm(state.theta - exact) <= o.tol / mu * (1 + 1e-6)


def test_newton_reaches_1e8_within_40_iterations_d50():
    X, y = synthetic_logistic(1000, 50, seed=5)
    obj = Logistic(X, y, l2=1e-3)
    state = minimize(obj.problem(), np.zeros(51), opts(tol=1e-8, max_iter=100), "newton")
    assert state.status == "converged" and state.grad_norm <= 1e-8 and state.n_iter <= 40
    ref = scipy_minimize(obj.fun, np.zeros(51), jac=True, hessp=obj.hvp, method="trust-ncg",
                         options={"gtol": 1e-13, "maxiter": 1000})
    g_ref = np.linalg.norm(obj.fun(ref.x)[1])
    assert g_ref < 1e-8
    # both within ||g|| / mu of the optimum (mu = 2 l2, the strong convexity)
    assert np.linalg.norm(state.theta - ref.x) <= (state.grad_norm + g_ref) / 2e-3


def test_newton_on_ill_conditioned_logistic():
    scales = 10.0 ** np.linspace(-2, 2, 30)  # column scales over 4 decades: condition ~1e8
    X, y = synthetic_logistic(1000, 30, seed=7, scales=scales)
    obj = Logistic(X, y, l2=1e-5)
    state = minimize(obj.problem(), np.zeros(31), opts(tol=1e-8, max_iter=100), "newton")
    assert state.status == "converged", state.message
    ref = scipy_minimize(obj.fun, np.zeros(31), jac=True, hessp=obj.hvp, method="trust-ncg",
                         options={"gtol": 1e-12, "maxiter": 10000})
    g_ref = np.linalg.norm(obj.fun(ref.x)[1])
    assert g_ref < 1e-10
    assert np.linalg.norm(state.theta - ref.x) <= (state.grad_norm + g_ref) / 2e-5  # mu = 2 l2
    assert state.loss == pytest.approx(obj.fun(ref.x)[0], rel=1e-13)
    # the same problem defeats L-BFGS within the iterations Newton needed many times over
    lb = minimize(obj.problem(), np.zeros(31), opts(tol=1e-8, max_iter=10 * state.n_iter), "lbfgs")
    assert lb.status != "converged"


def test_newton_evaluates_each_point_once_including_rejections_and_resume():
    """One ``fun`` per step (its trial point) and one at the start: after a rejected step and on resume,
    the H.v products at ``theta_k`` need no ``fun(theta_k)`` first (the engine's shards take new curvature
    handles when their last sums were elsewhere), so no evaluation is repeated and ``n_evals`` counts them."""
    X, y = breast_cancer(std=False)
    obj = Logistic(X, y, l2=1e-3)
    calls: list[np.ndarray] = []

    def fun(theta):
        calls.append(theta.copy())
        return obj.fun(theta)

    problem = Problem(fun, 31, hvp=obj.hvp)
    o = opts(tol=1e-8, max_iter=100)
    theta0 = np.full(31, 0.5)  # far out on unscaled data: several trial points are rejected
    states = run_all("newton", problem, theta0, o)
    rejected = [i for i, (a, b) in enumerate(itertools.pairwise(states)) if np.array_equal(a.theta, b.theta)]
    assert len(rejected) >= 3 and states[-1].status == "converged"
    assert len(calls) == len(states) == states[-1].n_evals
    for k in (rejected[0] + 1, 5):  # resume right after a rejection, and after an acceptance
        calls.clear()
        rest = run_all("newton", problem, theta0, o, state=roundtrip(states[k]))
        assert len(calls) == len(rest) - 1 and rest[-1].n_evals == states[-1].n_evals
        assert_array_equal(rest[-1].theta, states[-1].theta)


def test_newton_refuses_l1_and_missing_hvp():
    X, y = breast_cancer()
    obj = Logistic(X, y, 0.01)
    l1 = np.full(31, 0.01)
    with pytest.raises(ConfigError, match=r"newton does not support l1; use solver='lbfgs' \(OWL-QN\) or 'gd'"):
        get("newton").init(obj.problem(l1=l1), np.zeros(31), opts())
    with pytest.raises(ConfigError, match="hvp"):
        get("newton").init(obj.problem(hvp=False), np.zeros(31), opts())


# --------------------------------------------------------------------------------------------------
# L1


def l1_weights(d: int, base: float, seed: int) -> np.ndarray:
    """Per-coordinate weights (as in rescaled coordinates: l1 / scale_j), 0 for the intercept."""
    w = base * np.random.default_rng(seed).uniform(0.5, 2.0, d + 1)
    w[-1] = 0.0
    return w


def test_owlqn_kkt_support_and_exact_zeros():
    X, y = breast_cancer()
    obj = Logistic(X, y, l2=1e-3)
    l1 = l1_weights(30, 0.01, seed=0)
    state = minimize(obj.problem(l1=l1), np.zeros(31), opts(tol=1e-8), "lbfgs")
    assert state.status == "converged", state.message
    theta = state.theta
    f, g = obj.fun(theta)
    check_kkt(theta, g, l1, tol=1e-8)
    assert state.loss == pytest.approx(f + float(l1 @ np.abs(theta)), rel=1e-15)
    ref = l1_reference(obj.fun, l1)
    check_kkt(ref, obj.fun(ref)[1], l1, tol=1e-7)
    support = theta != 0
    assert 3 <= support[:-1].sum() <= 25  # a sparse solution, neither trivial nor dense
    assert_array_equal(support, np.abs(ref) > 1e-10)
    assert np.all(theta[~support] == 0.0)  # exact zeros
    assert theta[-1] != 0  # the intercept is not penalized
    assert_allclose(theta, ref, rtol=0, atol=1e-6)


def test_owlqn_pure_l1_matches_sklearn_saga():
    X, y = breast_cancer()
    n = X.shape[0]
    lam = 0.02
    obj = Logistic(X, y, l2=0.0)
    l1 = np.full(31, lam)
    l1[-1] = 0.0
    state = minimize(obj.problem(l1=l1), np.zeros(31), opts(tol=1e-8), "lbfgs")
    assert state.status == "converged", state.message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = LogisticRegression(l1_ratio=1.0, C=1 / (n * lam), solver="saga", tol=1e-10,
                                max_iter=100000).fit(X, y)
    sk_theta = np.r_[sk.coef_[0], sk.intercept_]
    assert_array_equal(state.theta != 0, sk_theta != 0)
    assert_allclose(state.theta, sk_theta, rtol=0, atol=1e-5)


def test_proximal_gd_matches_owlqn_support_and_kkt():
    X, y = breast_cancer()
    obj = Logistic(X, y, l2=1e-3)
    l1 = l1_weights(30, 0.01, seed=0)
    prox = minimize(obj.problem(l1=l1), np.zeros(31), opts(tol=1e-9, lr=1.0, max_iter=100000), "gd")
    assert prox.status == "converged", prox.message
    check_kkt(prox.theta, obj.fun(prox.theta)[1], l1, tol=1e-9)
    ref = l1_reference(obj.fun, l1)
    assert_array_equal(prox.theta != 0, np.abs(ref) > 1e-10)
    assert np.count_nonzero(prox.theta == 0.0) >= 5
    assert_allclose(prox.theta, ref, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# checkpoint / resume


def _resume_cases() -> list[tuple[str, str, Problem, np.ndarray, SolverOptions]]:
    X, y = breast_cancer()
    obj = Logistic(X, y, l2=1e-3)
    l1 = l1_weights(30, 0.01, seed=0)
    z = np.zeros(31)
    return [
        ("gd", "gd", obj.problem(), z, opts(max_iter=60, tol=0.0, lr=0.5)),
        ("gd-l1", "gd", obj.problem(l1=l1), z, opts(max_iter=60, tol=0.0, lr=0.5)),
        ("lbfgs", "lbfgs", obj.problem(), z, opts(tol=1e-9)),
        ("owlqn", "lbfgs", obj.problem(l1=l1), z, opts(tol=1e-8, memory=5)),
        ("newton", "newton", obj.problem(), z, opts(tol=1e-10, trust_radius=50.0)),
    ]


@pytest.mark.parametrize("case", range(5), ids=["gd", "gd-l1", "lbfgs", "owlqn", "newton"])
def test_resume_is_bit_identical(case):
    label, solver, problem, theta0, o = _resume_cases()[case]
    full = run_all(solver, problem, theta0, o)
    assert len(full) > 8, label
    for k in (0, 1, len(full) // 2, len(full) - 2):
        rest = run_all(solver, problem, theta0, o, state=roundtrip(full[k]))
        assert len(rest) == len(full) - k
        for a, b in zip(full[k:], rest):
            assert_array_equal(a.theta, b.theta)
            assert (a.n_iter, a.n_evals, a.loss, a.grad_norm, a.status, a.message) == \
                   (b.n_iter, b.n_evals, b.loss, b.grad_norm, b.status, b.message)
        final_a, final_b = state_to_arrays(full[-1]), state_to_arrays(rest[-1])
        assert final_a.keys() == final_b.keys()
        for key in final_a:  # the saved state, n_evals included (newton re-calls no fun on resume)
            assert_array_equal(final_a[key], final_b[key], err_msg=f"{label} {key}")


def test_state_arrays_are_plain_numpy_and_round_trip_exactly():
    S, Y = np.arange(6.0).reshape(2, 3) + 1.0, np.arange(6.0).reshape(2, 3) ** 2 + 0.5
    memory = Pairs.from_arrays(S, Y)
    state = LBFGSState(theta=np.array([1.0, -2.5, 0.0]), n_iter=7, n_evals=11, loss=0.1 + 0.2,
                       grad_norm=3e-9, status=None, message="", mode="lbfgs", f=1 / 3,
                       grad=np.array([0.5, 0.25, -1.0]), memory=memory)
    arrays = state_to_arrays(state)
    assert all(isinstance(v, np.ndarray) and not v.dtype.hasobject for v in arrays.values())
    back = roundtrip(state)
    assert type(back) is LBFGSState
    assert_array_equal(back.theta, state.theta)
    assert (back.n_iter, back.n_evals, back.loss, back.grad_norm, back.status, back.message) == \
           (7, 11, 0.1 + 0.2, 3e-9, None, "")
    assert back.mode == "lbfgs" and type(back.f) is float and back.f == 1 / 3
    assert_array_equal(back.grad, state.grad)
    assert_array_equal(back.memory.to_arrays()[0], S)  # oldest pair first, the layout before the ring
    assert_array_equal(back.memory.to_arrays()[1], Y)
    with pytest.raises(ModelError):
        state_from_arrays({"theta": np.zeros(3)})


def test_stepping_a_finished_or_foreign_state_is_refused():
    fun, hvp = quadratic(np.eye(3), np.ones(3))
    problem = Problem(fun, 3, hvp=hvp)
    done = minimize(problem, np.zeros(3), opts(), "lbfgs")
    assert done.status == "converged"
    with pytest.raises(ConfigError, match="already over"):
        get("lbfgs").step(problem, done, opts())
    started = get("gd").init(problem, np.zeros(3), opts())
    with pytest.raises(ConfigError, match="made by solver 'gd'"):
        get("lbfgs").step(problem, started, opts())


# --------------------------------------------------------------------------------------------------
# statuses


def test_converged_at_theta0_for_every_solver():
    fun, hvp = quadratic(np.diag([1.0, 2.0, 3.0]), np.zeros(3))
    problem = Problem(fun, 3, hvp=hvp)
    for name in SOLVERS:
        state = get(name).init(problem, np.zeros(3), opts())
        assert (state.status, state.n_iter, state.n_evals, state.grad_norm) == ("converged", 0, 1, 0.0)


def test_max_iter_status():
    X, y = breast_cancer()
    obj = Logistic(X, y, 1e-3)
    for name in SOLVERS:
        state = minimize(obj.problem(), np.zeros(31), opts(max_iter=3, tol=1e-12), name)
        assert (state.status, state.n_iter) == ("max_iter", 3), name
        assert "max_iter=3" in state.message and state.grad_norm > 1e-12


def test_stalled_on_unreachable_tol():
    X, y = breast_cancer()
    obj = Logistic(X, y, 1e-3)
    l1 = l1_weights(30, 0.01, seed=0)
    for name, problem in (("lbfgs", obj.problem()), ("lbfgs", obj.problem(l1=l1)), ("newton", obj.problem())):
        state = minimize(problem, np.zeros(31), opts(tol=1e-30, max_iter=1000), name)
        assert state.status == "stalled", (name, state.status)
        assert state.n_iter < 1000
        assert "float64" in state.message and "tol" in state.message
        assert state.grad_norm < 1e-7  # it got as far as float64 allows first


def test_diverged_when_theta0_is_not_finite():
    def fun(theta):
        return float("nan"), np.full(theta.size, np.nan)

    problem = Problem(fun, 4, hvp=lambda t, v: v)
    for name in SOLVERS:
        state = get(name).init(problem, np.zeros(4), opts())
        assert (state.status, state.n_iter) == ("diverged", 0)
        assert "not finite at the starting point" in state.message and "NaN" in state.message


def test_gd_diverged_when_loss_becomes_non_finite_mid_run():
    fun, _ = quadratic(np.eye(2), np.zeros(2))

    def blowing(theta):
        if np.abs(theta).max() < 0.5:
            return float("inf"), np.full(2, np.inf)
        return fun(theta)

    state = minimize(Problem(blowing, 2), np.array([4.0, 4.0]), opts(lr=0.5, tol=0.0), "gd")
    # theta: 4, 2, 1, 0.5, then 0.25 evaluates to inf (step 3) and is reported by step 4
    assert (state.status, state.n_iter, state.n_evals) == ("diverged", 5, 5)
    assert_array_equal(state.theta, [0.25, 0.25])
    assert "diverged at step 4 (loss became inf" in state.message


# --------------------------------------------------------------------------------------------------
# gradient descent: textbook semantics and divergence detection

def _numbers_have_at_most_4_digits(message: str) -> None:
    for num in re.findall(r"-?\d[\d.e+-]*", message):
        digits = re.sub(r"e[+-]?\d+$", "", num).replace("-", "").replace(".", "").lstrip("0")
        assert len(digits) <= 4, (num, message)


def test_textbook_run_is_never_flagged_and_reports_the_textbook_loss():
    X, y, theta0 = textbook()
    obj = Logistic(X, y, l2=0.01)
    losses: list[float] = []
    state = minimize(obj.problem(hvp=False), theta0, opts(max_iter=10001, tol=0.0, lr=0.1), "gd",
                     callback=lambda s: losses.append(s.loss))
    assert (state.status, state.n_iter, state.n_evals) == ("max_iter", 10001, 10001)
    assert round(losses[0], 6) == 19.299139 and round(state.loss, 6) == 0.123254
    assert np.all(np.diff(losses) <= 0)  # monotone
    assert state.grad_norm == pytest.approx(4.1072e-8, rel=1e-3)


def test_gd_textbook_semantics_match_the_plain_loop():
    """Step k reports f(theta_k); theta after max_iter steps is theta_max_iter; bit-identical."""
    X, y = breast_cancer()
    obj = Logistic(X, y, l2=0.01)
    theta = np.linspace(-1, 1, 31)
    start = theta.copy()
    expect_losses = []
    for _ in range(40):
        f, g = obj.fun(theta)
        expect_losses.append(f)
        theta = theta - 0.3 * g
    states = run_all("gd", obj.problem(), start, opts(max_iter=40, tol=0.0, lr=0.3))
    assert [s.loss for s in states[1:]] == expect_losses
    assert_array_equal(states[-1].theta, theta)
    assert_array_equal(start, np.linspace(-1, 1, 31))  # theta0 untouched


def test_gd_flags_an_unscaled_column_quickly_with_a_readable_message():
    X, y, theta0 = textbook()
    X = X.copy()
    X[:, 3] *= 30000.0
    obj = Logistic(X, y, l2=0.01)
    state = minimize(obj.problem(hvp=False), theta0, opts(max_iter=10001, tol=0.0, lr=0.1), "gd")
    assert state.status == "diverged" and state.n_iter <= 300
    assert re.fullmatch(r"gradient descent diverged at step \d+ \(loss rose from \S+ to \S+\): lower lr "
                        r"\(e\.g\. 0\.01\) or standardize the columns", state.message), state.message
    _numbers_have_at_most_4_digits(state.message)
    # unscaled real data too
    Xb, yb = breast_cancer(std=False)
    state = minimize(Logistic(Xb, yb, 0.01).problem(hvp=False), np.zeros(31),
                     opts(max_iter=10001, tol=0.0, lr=0.1), "gd")
    assert state.status == "diverged" and state.n_iter <= 300


def test_gd_flags_persistent_oscillation_and_slow_growth():
    X, labels = load_iris(return_X_y=True)  # unscaled: lr 0.46 settles into a period-2 cycle
    obj = Logistic(X, (labels == 2).astype(np.float64), 0.01)
    state = minimize(obj.problem(hvp=False), np.zeros(5), opts(max_iter=5000, tol=0.0, lr=0.46), "gd")
    assert state.status == "diverged" and 500 <= state.n_iter <= 600, state.message
    assert re.fullmatch(r"gradient descent diverged at step \d+ \(loss rose in \d+ of the last 500 steps and "
                        r"has not gone below \S+ in the last 251 steps; it is now \S+\): lower lr \(e\.g\. "
                        r"0\.046\) or standardize the columns", state.message), state.message
    _numbers_have_at_most_4_digits(state.message)
    window = state.window  # the running count of rises is the count over the window
    assert window.size == 501
    assert state.rises == np.count_nonzero(
        np.diff(window) > 1e-6 * np.maximum(np.abs(window[:-1]), np.abs(window[1:]))) >= 125
    # a quadratic with lr just above 2/L, started next to its optimum: the loss creeps up
    A = np.diag(np.linspace(0.1, 1.0, 20))
    fun, _ = quadratic(A, np.ones(20))
    exact = np.linalg.solve(A, np.ones(20))
    state = minimize(Problem(fun, 20), exact + 1e-6, opts(max_iter=5000, tol=0.0, lr=2.02), "gd")
    assert state.status == "diverged" and state.n_iter <= 1000


def test_gd_does_not_flag_a_transient_that_recovers():
    X, labels = load_wine(return_X_y=True)  # unscaled: rises in half of the first ~230 steps, then converges
    obj = Logistic(X, (labels == 0).astype(np.float64), 0.01)
    losses: list[float] = []
    state = minimize(obj.problem(hvp=False), np.zeros(14), opts(max_iter=3000, tol=0.0, lr=3e-5), "gd",
                     callback=lambda s: losses.append(s.loss))
    assert state.status == "max_iter"
    L = np.asarray(losses)
    assert np.count_nonzero(np.diff(L[:200]) > 0) >= 50  # the test bites: there was a transient
    assert L[-1] < 0.5 * L[0]


def test_gd_near_its_optimum_is_not_flagged_by_rounding_noise():
    X, y = breast_cancer()
    obj = Logistic(X, y, l2=0.01)
    opt = scipy_reference(obj.fun, np.zeros(31))
    k = [0]

    def jittered(theta):  # rounding-size noise on top: about 1e-13 relative, either sign
        f, g = obj.fun(theta)
        k[0] += 1
        return f * (1.0 + 1e-13 * math.sin(1e3 * k[0])), g

    for fun in (obj.fun, jittered):
        states = run_all("gd", Problem(fun, 31), opt, opts(max_iter=2000, tol=0.0, lr=1.0))
        assert states[-1].status == "max_iter", states[-1].message
        if fun is jittered:
            losses = [s.loss for s in states[1:]]
            assert np.count_nonzero(np.diff(losses) > 0) > 500  # half the steps rise by rounding


# --------------------------------------------------------------------------------------------------
# caller's arrays: never mutated; reused gradient buffers are safe


def test_reused_output_buffers_and_inputs_untouched():
    X, y = breast_cancer()
    obj = Logistic(X, y, l2=1e-3)
    l1 = l1_weights(30, 0.01, seed=0)
    gbuf, hbuf = np.empty(31), np.empty(31)

    def fun_reusing(theta):
        f, g = obj.fun(theta)
        gbuf[:] = g
        return f, gbuf

    def hvp_reusing(theta, v):
        hbuf[:] = obj.hvp(theta, v)
        return hbuf

    theta0 = np.linspace(-0.1, 0.1, 31)
    keep0, keep_l1 = theta0.copy(), l1.copy()
    for name, l1w, o in (("gd", None, opts(max_iter=50, tol=0.0, lr=0.5)), ("gd", l1, opts(max_iter=50, tol=0.0)),
                         ("lbfgs", None, opts()), ("lbfgs", l1, opts()), ("newton", None, opts())):
        pen = None if l1w is None else Penalty.weighted_l1(l1w)
        fresh = minimize(Problem(obj.fun, 31, penalty=pen, hvp=obj.hvp), theta0, o, name)
        reused = minimize(Problem(fun_reusing, 31, penalty=pen, hvp=hvp_reusing), theta0, o, name)
        assert_array_equal(fresh.theta, reused.theta)
        assert (fresh.n_iter, fresh.loss, fresh.status) == (reused.n_iter, reused.loss, reused.status)
    assert_array_equal(theta0, keep0)
    assert_array_equal(l1, keep_l1)


def test_a_supplied_optimality_measure_is_reported_and_stops_the_run():
    X, y = breast_cancer()
    obj = Logistic(X, y, l2=0.01)
    calls = Recorder()

    def doubled(theta, grad):  # e.g. the norm in the caller's coordinates, not the solver's
        calls(theta, grad)
        return 2.0 * float(np.linalg.norm(grad))

    for name in SOLVERS:
        problem = Problem(obj.fun, 31, hvp=obj.hvp, optimality=doubled)
        o = opts(tol=1e-3, lr=1.0, max_iter=5000)
        state = minimize(problem, np.zeros(31), o, name)
        assert state.status == "converged", name
        assert state.grad_norm == 2.0 * np.linalg.norm(obj.fun(state.theta)[1]) <= 1e-3
        plain = minimize(Problem(obj.fun, 31, hvp=obj.hvp), np.zeros(31), o, name)
        assert plain.n_iter <= state.n_iter  # the stricter measure needs at least as many iterations
    assert calls


def test_invalid_problem_and_options_are_config_errors():
    fun, _ = quadratic(np.eye(2), np.ones(2))
    with pytest.raises(ConfigError):
        Problem(fun, 2, penalty=Penalty.weighted_l1(np.array([0.1, -1.0])))
    with pytest.raises(ConfigError):
        Problem(fun, 2, penalty=Penalty.weighted_l1(np.array([0.1])))
    with pytest.raises(ConfigError):
        SolverOptions(max_iter=10, tol=-1.0)
    with pytest.raises(ConfigError):
        get("gd").init(Problem(fun, 2), np.zeros(2), SolverOptions(max_iter=10, tol=0.0, lr=0.0))
    with pytest.raises(ConfigError):
        get("lbfgs").init(Problem(fun, 2), np.zeros(3), opts())



def test_lbfgs_end_game_reaches_tol_below_the_resolution_of_the_loss():
    """On standardized breast-cancer data f stops resolving a step's decrease at ||g|| ~ 1e-9; a
    line search judging on values alone stalled there. Steps accepted on their directional derivative
    keep the gradient shrinking to 1e-10, the precision Newton reaches in ~10 iterations."""
    from dlogit.solvers.linesearch import strong_wolfe

    X, y = breast_cancer()
    obj = Logistic(X, y, l2=0.01)
    state = minimize(obj.problem(), np.zeros(31), opts(tol=1e-10), "lbfgs")
    assert state.status == "converged" and state.grad_norm <= 1e-10, state.message
    newton = minimize(obj.problem(), np.zeros(31), opts(tol=1e-10), "newton")
    assert_allclose(state.theta, newton.theta, rtol=0, atol=1e-8)
    # at the optimum along -g: no resolved decrease, but a smaller gradient on the derivative's word
    f0, g0 = obj.fun(state.theta)
    res = strong_wolfe(obj.problem(), state.theta, f0, g0, -g0, 1.0, max_evals=20)
    assert res.ok and res.wolfe, res
    assert np.linalg.norm(res.grad) < np.linalg.norm(g0)


def test_a_resolved_decrease_that_fails_armijo_still_zooms():
    """The end game's test applies only where f(alpha) equals f0 to rounding: a step with a clearly
    measurable (if too small) decrease is refined by the zoom, not accepted on its slope alone."""
    from dlogit.solvers.linesearch import strong_wolfe

    t = 1e-6  # a smoothed max(-a, (a - 1.5) / 2) + 1: convex, minimum 0.5 at a = 0.5

    def fun(x):
        a = float(x[0])
        u, v = -a, 0.5 * (a - 1.5)
        m = max(u, v)
        eu, ev = np.exp((u - m) / t), np.exp((v - m) / t)
        return 1.0 + m + t * np.log(eu + ev), np.array([(-eu + 0.5 * ev) / (eu + ev)])

    f0, g0 = fun(np.zeros(1))
    res = strong_wolfe(Problem(fun, 1), np.zeros(1), f0, g0, -g0, 1.4999, max_evals=20)
    assert res.ok and not res.flat
    assert res.f < 0.6, res  # the first trial (f = 1 - 5e-5) was accepted before
