"""Types shared by the solvers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Fun = Callable[[np.ndarray], tuple[float, np.ndarray]]
StepCallback = Callable[[int, float, float], None]


@dataclass
class SolverResult:
    """What a solver returns.

    ``status`` is ``"converged"`` (gradient norm reached ``tol``) or ``"max_iter"`` (or ``"diverged"``
    for gradient descent with too large a step); ``loss`` and ``grad_norm`` are those of the last
    objective evaluation.
    """

    theta: np.ndarray
    n_iter: int
    status: str
    loss: float
    grad_norm: float
    message: str = ""
    history_loss: list[float] = field(default_factory=list)
    history_grad_norm: list[float] = field(default_factory=list)
