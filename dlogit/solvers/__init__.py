"""Solvers: each takes ``fun(theta) -> (loss, grad)`` and knows nothing of Dask.

Solvers are looked up by name in :data:`SOLVERS` (a registry, not an if/elif chain). Every solver has
the signature ``solve(fun, theta0, *, lr, max_iter, tol, callback) -> SolverResult`` and calls
``callback(step, loss, grad_norm)`` once per iteration.
"""

from __future__ import annotations

from collections.abc import Callable

from dlogit.solvers._base import Fun, SolverResult, StepCallback
from dlogit.solvers.gd import gradient_descent
from dlogit.solvers.lbfgs import lbfgs

Solver = Callable[..., SolverResult]

#: name -> (solve function, default max_iter, default tol)
SOLVERS: dict[str, tuple[Solver, int, float]] = {
    "gd": (gradient_descent, 10001, 0.0),
    "lbfgs": (lbfgs, 1000, 1e-6),
}


def get_solver(name: str) -> tuple[Solver, int, float]:
    """Return ``(solve, default_max_iter, default_tol)`` for ``name``."""
    try:
        return SOLVERS[name]
    except KeyError:
        from dlogit.errors import ConfigError

        raise ConfigError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}") from None


__all__ = ["SOLVERS", "Fun", "SolverResult", "StepCallback", "get_solver"]
