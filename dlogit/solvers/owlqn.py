"""OWL-QN (Andrew & Gao, 2007): L-BFGS for ``f(theta) + sum_j l1_j |theta_j|``.

One step, at ``theta`` with smooth gradient ``g``:

1. the pseudo-gradient ``pg`` (the minimum-norm subgradient of ``F``, :func:`pseudo_gradient`);
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

import numpy as np

from dlogit.solvers._base import (
    Problem,
    SolverOptions,
    SolverState,
    l1_value,
    measure,
    norm,
    pseudo_gradient,
    stalled_message,
)
from dlogit.solvers._memory import empty_memory, push_pair, two_loop
from dlogit.solvers.linesearch import projected_backtracking


def owlqn_step(problem: Problem, state: SolverState, options: SolverOptions) -> SolverState:
    """One OWL-QN iteration from ``state`` (made by the ``lbfgs`` solver); returns a new state."""
    assert problem.l1 is not None
    l1 = problem.l1
    penalized = l1 > 0
    theta, g = state.theta, state.extra["grad"]
    S, Y = state.extra["S"], state.extra["Y"]
    new = SolverState(theta=theta, n_iter=state.n_iter + 1, n_evals=state.n_evals, loss=state.loss,
                      grad_norm=state.grad_norm, extra=dict(state.extra))
    pg = pseudo_gradient(theta, g, l1)
    orthant = np.where(theta != 0, np.sign(theta), np.sign(-pg))

    def project(x: np.ndarray) -> np.ndarray:
        return np.where(penalized & (np.sign(x) != orthant), 0.0, x)

    def penalty(x: np.ndarray) -> float:
        return l1_value(x, l1)

    d = -two_loop(S, Y, pg)
    d = np.where(penalized & (d * pg >= 0), 0.0, d)
    if not float(np.dot(pg, d)) < 0:
        S, Y = empty_memory(theta.size)
        d = -pg
    while True:
        fresh = S.shape[0] == 0
        alpha0 = 1.0 / norm(d) if fresh else 1.0
        res = projected_backtracking(problem, theta, state.loss, pg, d, alpha0, project, penalty,
                                     max_evals=options.max_linesearch)
        new.n_evals += res.n_evals
        if res.ok or fresh:
            break
        S, Y = empty_memory(theta.size)
        d = -pg
    if res.ok:
        loss = res.f + penalty(res.theta)
    if not res.ok or not loss < state.loss:
        new.status, new.message = "stalled", stalled_message(state.grad_norm, options)
        return new
    S, Y = push_pair(S, Y, res.theta - theta, res.grad - g, options.memory)
    new.theta, new.loss = res.theta, loss
    new.grad_norm = measure(problem, res.theta, res.grad)
    new.extra.update(f=res.f, grad=res.grad, S=S, Y=Y)
    return new
