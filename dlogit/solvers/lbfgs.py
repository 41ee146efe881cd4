"""L-BFGS with a strong-Wolfe line search; OWL-QN when the problem has L1 weights.

One :meth:`LBFGS.step` is one iteration: a two-loop direction from the memory pairs, a line search
(several ``fun`` calls), a new memory pair. The whole state (iterate, smooth value and gradient, the
pairs) is in :class:`~dlogit.solvers._base.SolverState`, so a run resumes bit-identically.

Smooth problems: direction ``-H g`` with ``H_0 = (s.y / y.y) I`` from the newest pair; the first step
(and any step after the memory is reset) has unit length (``alpha = 1 / ||g||``), later ones start at
``alpha = 1``; pairs with ``s.y <= eps ||s|| ||y||`` are skipped. Stops "converged" when
``||grad f||_2 <= tol``, "stalled" when the line search cannot decrease ``f`` even along ``-g`` with an
empty memory (``tol`` is then below what float64 resolves for the problem). Near the optimum, where
``f`` no longer resolves a step's decrease, the line search accepts steps on their directional
derivative (:mod:`dlogit.solvers.linesearch`, the end game), so the gradient keeps shrinking.

With L1 (any ``problem.l1 > 0``) each step is an OWL-QN step (:mod:`dlogit.solvers.owlqn`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from dlogit.errors import ConfigError
from dlogit.solvers._base import (
    Problem,
    SolverOptions,
    SolverState,
    check_state,
    check_theta0,
    finish,
    measure,
    norm,
    stalled_message,
    start_state,
    state_type,
)
from dlogit.solvers._memory import Pairs, two_loop
from dlogit.solvers.linesearch import strong_wolfe
from dlogit.solvers.owlqn import owlqn_step


@state_type
@dataclass(frozen=True, eq=False, kw_only=True)
class LBFGSState(SolverState):
    """An ``"lbfgs"`` run between steps.

    Attributes
    ----------
    mode : str
        ``"lbfgs"``, or ``"owlqn"`` for a problem with L1 weights (a state resumes only on its kind).
    f, grad : float, numpy.ndarray
        The smooth part's value and gradient at ``theta``.
    memory : Pairs
        The correction pairs (a ring; saved as ``S`` and ``Y``, oldest pair first).
    """

    solver: ClassVar[str] = "lbfgs"

    mode: str
    f: float
    grad: np.ndarray
    memory: Pairs = field(metadata={"codec": Pairs.from_arrays, "arrays": ("S", "Y")})


class LBFGS:
    """Limited-memory BFGS (OWL-QN with L1 weights)."""

    name: str = "lbfgs"
    default_max_iter: int = 1000
    default_tol: float = 1e-6
    supports_l1: bool = True
    needs_hvp: bool = False

    def init(self, problem: Problem, theta0: np.ndarray, options: SolverOptions) -> LBFGSState:
        """Evaluate ``theta0`` and start with an empty memory."""
        theta = check_theta0(problem, theta0)
        common, f, grad = start_state(problem, theta, options)
        return LBFGSState(**common, mode="owlqn" if problem.has_l1 else "lbfgs", f=f, grad=grad,
                          memory=Pairs.empty(problem.n_params, options.memory))

    def step(self, problem: Problem, state: SolverState, options: SolverOptions) -> LBFGSState:
        """One L-BFGS (or OWL-QN) iteration."""
        check_state(state, LBFGSState)
        assert isinstance(state, LBFGSState)
        mode = "owlqn" if problem.has_l1 else "lbfgs"
        if state.mode != mode:
            raise ConfigError(f"this lbfgs state was made for a problem {'with' if mode == 'lbfgs' else 'without'}"
                              " L1 weights; resume it with the same problem")
        if mode == "owlqn":
            return finish(owlqn_step(problem, state, options), options)
        return finish(_lbfgs_step(problem, state, options), options)


def _lbfgs_step(problem: Problem, state: LBFGSState, options: SolverOptions) -> LBFGSState:
    theta, f, g = state.theta, float(state.f), state.grad
    memory = state.memory
    n_evals = state.n_evals
    d = -two_loop(memory, g)
    if not float(np.dot(g, d)) < 0:  # not a descent direction (rounding): start the memory afresh
        memory = memory.reset()
        d = -g
    while True:
        fresh = memory.count == 0
        alpha0 = 1.0 / norm(d) if fresh else 1.0
        res = strong_wolfe(problem, theta, f, g, d, alpha0, max_evals=options.max_linesearch)
        n_evals += res.n_evals
        if res.ok or fresh:
            break
        memory = memory.reset()  # retry along -g before giving up
        d = -g
    if not res.ok or not (res.f < f or res.flat):
        return replace(state, n_iter=state.n_iter + 1, n_evals=n_evals, status="stalled",
                       message=stalled_message(state.grad_norm, options))
    memory = memory.push(res.theta - theta, res.grad - g, options.memory)
    return replace(state, theta=res.theta, n_iter=state.n_iter + 1, n_evals=n_evals, loss=res.f,
                   grad_norm=measure(problem, res.theta, res.grad), f=res.f, grad=res.grad, memory=memory)
