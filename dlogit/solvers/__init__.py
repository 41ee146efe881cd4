"""Solvers as resumable state machines; they take ``fun(theta) -> (f, grad)`` and know nothing of Dask.

A solver is looked up by name in :data:`SOLVERS` (a registry, not an if/elif chain) and driven by::

    solver = get(name)
    state = solver.init(problem, theta0, options)
    while state.status is None:
        state = solver.step(problem, state, options)    # one iteration; checkpoint between steps

Each solver's state is a frozen dataclass of its own (:class:`GDState`, :class:`LBFGSState`,
:class:`NewtonState`); ``step`` returns a new one. A checkpoint is ``np.savez(path,
**state_to_arrays(state))`` (arrays derived from the state's fields); ``state_from_arrays(np.load(path,
allow_pickle=False))`` resumes the same iterates. :func:`minimize` is that loop. The penalty is a
:class:`~dlogit.penalty.Penalty` in ``Problem(penalty=...)``.

========  ====================================================  ==========  ==========
name      method                                                max_iter    tol
========  ====================================================  ==========  ==========
gd        fixed-step gradient descent (proximal with L1)        10001       0
lbfgs     L-BFGS, strong-Wolfe line search (OWL-QN with L1)     1000        1e-6
newton    trust-region Newton-CG (needs ``problem.hvp``)         100         1e-6
========  ====================================================  ==========  ==========
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dlogit.errors import ConfigError
from dlogit.solvers._base import (
    STATE_TYPES,
    Fun,
    Hvp,
    Problem,
    Solver,
    SolverOptions,
    SolverState,
    divergence_advice,
    fmt,
    reopen,
    state_from_arrays,
    state_to_arrays,
    suggested_lr,
)
from dlogit.solvers._memory import Pairs
from dlogit.solvers.gd import GDState, GradientDescent
from dlogit.solvers.lbfgs import LBFGS, LBFGSState
from dlogit.solvers.newton import NewtonCG, NewtonState

#: name -> solver
SOLVERS: dict[str, Solver] = {s.name: s for s in (GradientDescent(), LBFGS(), NewtonCG())}


def get(name: str) -> Solver:
    """The solver registered as ``name``.

    Raises
    ------
    dlogit.errors.ConfigError
        For an unknown name (the message lists the choices).
    """
    try:
        return SOLVERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}") from None


def minimize(problem: Problem, theta0: np.ndarray, options: SolverOptions, solver: str | Solver,
             callback: Callable[[SolverState], None] | None = None) -> SolverState:
    """Run ``solver`` from ``theta0`` until it sets a status; ``callback(state)`` after every step.

    Parameters
    ----------
    problem : Problem
        The objective.
    theta0 : numpy.ndarray
        Starting point (not modified).
    options : SolverOptions
        Iteration cap, tolerance and solver settings.
    solver : str or Solver
        A registered name or a solver object.
    callback : callable, optional
        Called with the new state after each step.

    Returns
    -------
    SolverState
        The final state (``status`` set).
    """
    impl = get(solver) if isinstance(solver, str) else solver
    state = impl.init(problem, theta0, options)
    while state.status is None:
        state = impl.step(problem, state, options)
        if callback is not None:
            callback(state)
    return state


__all__ = [
    "LBFGS",
    "SOLVERS",
    "STATE_TYPES",
    "Fun",
    "GDState",
    "GradientDescent",
    "Hvp",
    "LBFGSState",
    "NewtonCG",
    "NewtonState",
    "Pairs",
    "Problem",
    "Solver",
    "SolverOptions",
    "SolverState",
    "divergence_advice",
    "fmt",
    "get",
    "minimize",
    "reopen",
    "state_from_arrays",
    "state_to_arrays",
    "suggested_lr",
]
