"""Trust-region Newton-CG (Steihaug-Toint), as LIBLINEAR's TRON and SciPy's ``trust-ncg``.

One step at ``theta_k`` (value ``f``, gradient ``g``, radius ``Delta``):

1. conjugate gradients on the model ``m(z) = g.z + z.H z / 2`` (``H z`` by ``problem.hvp``) until the
   residual is below ``eta ||g||`` with the forcing term ``eta = min(0.5, sqrt(||g||))`` (superlinear
   convergence), ``max_cg`` iterations, negative curvature, or the trust-region boundary;
2. ``fun(theta_k + z)`` and the ratio ``rho`` of actual to predicted reduction: accepted when
   ``rho > 1e-4``; the radius shrinks to ``min(Delta, ||z||) / 4`` when ``rho < 1/4`` and doubles when
   ``rho > 3/4`` on the boundary. When the predicted reduction is below what float64 resolves in
   ``f``, the ratio is meaningless and the step is accepted if it lowers ``||g||``.

"stalled" when the radius falls below float64 resolution of ``theta`` (no step helps any more).
The radius, value and gradient are in the state (:class:`NewtonState`), all of it saved. ``hvp`` needs
no ``fun`` before it: the engine's shards take the curvature handles of their last sums when those were
at ``theta_k`` (after an accepted step) and new ones otherwise (after a rejected step, or on resume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from dlogit.errors import ConfigError
from dlogit.solvers._base import (
    EPS,
    Problem,
    SolverOptions,
    SolverState,
    check_state,
    check_theta0,
    evaluate,
    finish,
    measure,
    norm,
    stalled_message,
    start_state,
    state_type,
)

#: CG iterations per step unless options.max_cg says otherwise
DEFAULT_MAX_CG = 250
#: accept a step whose actual reduction is at least this fraction of the predicted one
ACCEPT = 1e-4
#: predicted reductions below RESOLUTION * |f| are not resolved by float64 values of f
RESOLUTION = 64 * EPS


@state_type
@dataclass(frozen=True, eq=False, kw_only=True)
class NewtonState(SolverState):
    """A ``"newton"`` run between steps.

    Attributes
    ----------
    f, grad : float, numpy.ndarray
        The smooth part's value and gradient at ``theta``.
    radius : float
        The trust radius.
    """

    solver: ClassVar[str] = "newton"

    f: float
    grad: np.ndarray
    radius: float


class NewtonCG:
    """Trust-region Newton with Steihaug-Toint conjugate gradients; needs ``problem.hvp``."""

    name: str = "newton"
    default_max_iter: int = 100
    default_tol: float = 1e-6
    supports_l1: bool = False
    needs_hvp: bool = True

    @staticmethod
    def _check(problem: Problem) -> None:
        if problem.has_l1:
            raise ConfigError("newton does not support l1; use solver='lbfgs' (OWL-QN) or 'gd'")
        if problem.hvp is None:
            raise ConfigError("newton needs Hessian-vector products (problem.hvp is None); "
                              "use solver='lbfgs' or supply hvp")

    def init(self, problem: Problem, theta0: np.ndarray, options: SolverOptions) -> NewtonState:
        """Evaluate ``theta0``; the initial radius is ``options.trust_radius`` or ``||g0||``."""
        self._check(problem)
        theta = check_theta0(problem, theta0)
        common, f, grad = start_state(problem, theta, options)
        radius = options.trust_radius if options.trust_radius is not None else norm(grad)
        return NewtonState(**common, f=f, grad=grad, radius=float(radius))

    def step(self, problem: Problem, state: SolverState, options: SolverOptions) -> NewtonState:
        """One trust-region iteration (one accepted or rejected trial point)."""
        self._check(problem)
        check_state(state, NewtonState)
        assert isinstance(state, NewtonState) and problem.hvp is not None
        theta, f, g = state.theta, float(state.f), state.grad
        radius = float(state.radius)
        n_evals = state.n_evals + 1
        max_cg = options.max_cg if options.max_cg is not None else DEFAULT_MAX_CG
        gnorm = norm(g)
        z, Hz, boundary = _steihaug(problem, theta, g, gnorm, radius, max_cg)
        predicted = -(float(np.dot(g, z)) + 0.5 * float(np.dot(z, Hz)))
        trial = theta + z
        f_t, g_t = evaluate(problem, trial)
        gnorm_t = norm(g_t)
        if not (math.isfinite(f_t) and math.isfinite(gnorm_t) and math.isfinite(predicted)):
            rho = -math.inf
        elif predicted <= RESOLUTION * max(abs(f), abs(f_t)):
            rho = 0.5 if (f_t <= f and gnorm_t < gnorm) else 0.0
        else:
            rho = (f - f_t) / predicted
        znorm = norm(z)
        if rho < 0.25:
            radius = 0.25 * min(radius, znorm)
        elif rho > 0.75 and boundary:
            radius = 2.0 * radius
        new = replace(state, n_iter=state.n_iter + 1, n_evals=n_evals, radius=radius)
        if rho > ACCEPT:
            new = replace(new, theta=trial, loss=f_t, grad_norm=measure(problem, trial, g_t), f=f_t, grad=g_t)
        elif radius <= EPS * max(norm(theta), 1.0):
            new = replace(new, status="stalled", message=stalled_message(state.grad_norm, options))
        return finish(new, options)


def _steihaug(problem: Problem, theta: np.ndarray, g: np.ndarray, gnorm: float, radius: float,
              max_cg: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Approximately minimize ``g.z + z.H z / 2`` over ``||z|| <= radius``.

    Returns ``z``, ``H z`` (accumulated from the CG products, no extra ``hvp``) and whether ``z`` is on
    the boundary (negative curvature or the radius reached).
    """
    assert problem.hvp is not None
    tol = min(0.5, math.sqrt(gnorm)) * gnorm
    z = np.zeros_like(g)
    Hz = np.zeros_like(g)
    r = g.copy()
    p = -r
    rr = float(np.dot(r, r))
    for _ in range(max_cg):
        Hp = np.array(problem.hvp(theta, p), dtype=np.float64, copy=True)
        pHp = float(np.dot(p, Hp))
        if not (math.isfinite(pHp) and pHp > 0):
            tau = _to_boundary(z, p, radius)
            return z + tau * p, Hz + tau * Hp, True
        alpha = rr / pHp
        z_next = z + alpha * p
        if norm(z_next) >= radius:
            tau = _to_boundary(z, p, radius)
            return z + tau * p, Hz + tau * Hp, True
        z, Hz = z_next, Hz + alpha * Hp
        r = r + alpha * Hp
        rr_next = float(np.dot(r, r))
        if math.sqrt(rr_next) <= tol:
            break
        p = -r + (rr_next / rr) * p
        rr = rr_next
    return z, Hz, False


def _to_boundary(z: np.ndarray, p: np.ndarray, radius: float) -> float:
    """The ``tau >= 0`` with ``||z + tau p|| = radius`` (``||z|| < radius``)."""
    a = float(np.dot(p, p))
    b = 2.0 * float(np.dot(z, p))
    c = float(np.dot(z, z)) - radius * radius
    root = math.sqrt(max(b * b - 4.0 * a * c, 0.0))
    return -2.0 * c / (b + root) if b > 0 else (-b + root) / (2.0 * a)
