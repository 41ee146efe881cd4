"""The L2 penalty ``l2 * ||w||^2``; the intercept is never penalized."""

from __future__ import annotations

import numpy as np


def l2_value(theta: np.ndarray, l2: float) -> float:
    """Penalty value for ``theta = [w, b]`` (``b`` excluded)."""
    w = theta[:-1]
    return float(l2 * np.dot(w, w))


def l2_grad(theta: np.ndarray, l2: float) -> np.ndarray:
    """Penalty gradient, same shape as ``theta``, with 0 in the intercept slot."""
    g = 2.0 * l2 * theta
    g[-1] = 0.0
    return g
