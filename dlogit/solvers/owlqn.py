"""OWL-QN (Andrew & Gao, 2007): L-BFGS for ``f(theta) + sum_j l1_j |theta_j|``.

One step, at ``theta`` with smooth gradient ``g``:

1. the pseudo-gradient ``pg`` (the minimum-norm subgradient of ``F``,
   :meth:`~dlogit.penalty.Penalty.min_norm_subgradient`);
2. the two-loop direction ``d = -H pg`` from pairs of *smooth* gradient differences;
3. on penalized coordinates (``l1_j > 0``), components of ``d`` whose sign disagrees with ``-pg`` are
   set to 0 (only terms with ``d_j pg_j > 0`` are dropped, so ``pg . d`` stays negative);
4. the orthant ``xi_j = sign(theta_j)``, or ``sign(-pg_j)`` where ``theta_j == 0``;
5. backtracking on ``F`` along ``project(theta + alpha d)``, where the projection sets penalized
   coordinates that leave the orthant to exactly 0 (that is where the exact zeros come from), with
   Andrew & Gao's sufficient decrease ``F(x) <= F(theta) + c1 pg . (x - theta)``;
6. the pair ``(x - theta, g(x) - g)``.

Unpenalized coordinates (``l1_j == 0``, e.g. the intercept) are smooth: they are neither aligned
nor projected. Optimality is ``||pg||_2``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from dlogit.solvers._base import Problem, SolverOptions, measure, norm, stalled_message
from dlogit.solvers._memory import two_loop
from dlogit.solvers.linesearch import projected_backtracking

if TYPE_CHECKING:
    from dlogit.solvers.lbfgs import LBFGSState


def owlqn_step(problem: Problem, state: LBFGSState, options: SolverOptions) -> LBFGSState:
    """One OWL-QN iteration from ``state`` (made by the ``lbfgs`` solver); returns a new state."""
    P = problem.nonsmooth
    penalized = P.l1_penalized
    theta, g = state.theta, state.grad
    memory = state.memory
    n_evals = state.n_evals
    pg = P.min_norm_subgradient(theta, g)
    orthant = np.where(theta != 0, np.sign(theta), np.sign(-pg))

    def project(x: np.ndarray) -> np.ndarray:
        return np.where(penalized & (np.sign(x) != orthant), 0.0, x)

    d = -two_loop(memory, pg)
    d = np.where(penalized & (d * pg >= 0), 0.0, d)
    if not float(np.dot(pg, d)) < 0:
        memory = memory.reset()
        d = -pg
    while True:
        fresh = memory.count == 0
        alpha0 = 1.0 / norm(d) if fresh else 1.0
        res = projected_backtracking(problem, theta, state.loss, pg, d, alpha0, project, P.value,
                                     max_evals=options.max_linesearch)
        n_evals += res.n_evals
        if res.ok or fresh:
            break
        memory = memory.reset()
        d = -pg
    if res.ok:
        loss = res.f + P.value(res.theta)
    if not res.ok or not loss < state.loss:
        return replace(state, n_iter=state.n_iter + 1, n_evals=n_evals, status="stalled",
                       message=stalled_message(state.grad_norm, options))
    memory = memory.push(res.theta - theta, res.grad - g, options.memory)
    return replace(state, theta=res.theta, n_iter=state.n_iter + 1, n_evals=n_evals, loss=loss,
                   grad_norm=measure(problem, res.theta, res.grad), f=res.f, grad=res.grad, memory=memory)
