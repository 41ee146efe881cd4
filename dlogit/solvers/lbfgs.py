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
)
from dlogit.solvers._memory import empty_memory, push_pair, two_loop
from dlogit.solvers.linesearch import strong_wolfe
from dlogit.solvers.owlqn import owlqn_step


class LBFGS:
    """Limited-memory BFGS (OWL-QN with L1 weights)."""

    name: str = "lbfgs"
    default_max_iter: int = 1000
    default_tol: float = 1e-6
    supports_l1: bool = True
    needs_hvp: bool = False

    def init(self, problem: Problem, theta0: np.ndarray, options: SolverOptions) -> SolverState:
        """Evaluate ``theta0`` and start with an empty memory."""
        theta = check_theta0(problem, theta0)
        state, f, grad = start_state(problem, theta, options, name=self.name)
        S, Y = empty_memory(problem.n_params)
        state.extra.update(mode="owlqn" if problem.has_l1 else "lbfgs", f=f, grad=grad, S=S, Y=Y)
        return state

    def step(self, problem: Problem, state: SolverState, options: SolverOptions) -> SolverState:
        """One L-BFGS (or OWL-QN) iteration."""
        check_state(state, self.name)
        mode = "owlqn" if problem.has_l1 else "lbfgs"
        if state.extra["mode"] != mode:
            raise ConfigError(f"this lbfgs state was made for a problem {'with' if mode == 'lbfgs' else 'without'}"
                              " L1 weights; resume it with the same problem")
        if mode == "owlqn":
            return finish(owlqn_step(problem, state, options), options)
        return finish(_lbfgs_step(problem, state, options), options)


def _lbfgs_step(problem: Problem, state: SolverState, options: SolverOptions) -> SolverState:
    theta, f, g = state.theta, float(state.extra["f"]), state.extra["grad"]
    S, Y = state.extra["S"], state.extra["Y"]
    new = SolverState(theta=theta, n_iter=state.n_iter + 1, n_evals=state.n_evals, loss=state.loss,
                      grad_norm=state.grad_norm, extra=dict(state.extra))
    d = -two_loop(S, Y, g)
    if not float(np.dot(g, d)) < 0:  # not a descent direction (rounding): start the memory afresh
        S, Y = empty_memory(theta.size)
        d = -g
    while True:
        fresh = S.shape[0] == 0
        alpha0 = 1.0 / norm(d) if fresh else 1.0
        res = strong_wolfe(problem, theta, f, g, d, alpha0, max_evals=options.max_linesearch)
        new.n_evals += res.n_evals
        if res.ok or fresh:
            break
        S, Y = empty_memory(theta.size)  # retry along -g before giving up
        d = -g
    if not res.ok or not (res.f < f or res.flat):
        new.status, new.message = "stalled", stalled_message(state.grad_norm, options)
        return new
    S, Y = push_pair(S, Y, res.theta - theta, res.grad - g, options.memory)
    new.theta, new.loss, new.grad_norm = res.theta, res.f, measure(problem, res.theta, res.grad)
    new.extra.update(f=res.f, grad=res.grad, S=S, Y=Y)
    return new
