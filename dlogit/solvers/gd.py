"""Full-batch gradient descent with a fixed learning rate (the textbook solver)."""

from __future__ import annotations

import math

import numpy as np

from dlogit.solvers._base import Fun, SolverResult, StepCallback


def gradient_descent(
    fun: Fun,
    theta0: np.ndarray,
    *,
    lr: float,
    max_iter: int,
    tol: float,
    callback: StepCallback | None = None,
) -> SolverResult:
    """Run ``theta <- theta - lr * grad`` for ``max_iter`` steps, or until ``||grad|| <= tol``.

    Step ``k`` (0-based) evaluates the objective at the current ``theta`` and then updates it, so
    ``max_iter`` steps make ``max_iter`` evaluations and ``max_iter`` updates. The returned loss and
    gradient norm are those of the last evaluation.
    """
    theta = np.array(theta0, dtype=np.float64, copy=True)
    hist_loss: list[float] = []
    hist_gn: list[float] = []
    loss, gnorm = float("nan"), float("nan")
    for step in range(max_iter):
        loss, grad = fun(theta)
        gnorm = math.sqrt(float(np.dot(grad, grad)))
        hist_loss.append(loss)
        hist_gn.append(gnorm)
        if callback is not None:
            callback(step, loss, gnorm)
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            return SolverResult(theta, step + 1, "diverged", loss, gnorm,
                                f"loss became {loss} at step {step}: lower the learning rate",
                                hist_loss, hist_gn)
        if gnorm <= tol:
            return SolverResult(theta, step + 1, "converged", loss, gnorm, "", hist_loss, hist_gn)
        grad *= lr
        theta -= grad
    return SolverResult(theta, max_iter, "max_iter", loss, gnorm, "", hist_loss, hist_gn)
