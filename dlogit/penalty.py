"""The L2 penalty ``l2 * ||w||^2``; the intercept is never penalized."""

from __future__ import annotations

import numpy as np


def l2_value(theta: np.ndarray, l2: float) -> float:
    """Penalty value for ``theta = [w, b]`` (``b`` excluded)."""
    if not l2:
        return 0.0
    w = theta[:-1]
    return l2 * float(np.dot(w, w))


def add_l2_grad(grad: np.ndarray, theta: np.ndarray, l2: float) -> None:
    """Add the penalty gradient ``2 l2 w`` to ``grad`` in place (the intercept slot is left alone)."""
    if l2:
        g = grad[:-1]
        g += (2.0 * l2) * theta[:-1]
