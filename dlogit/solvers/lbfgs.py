"""L-BFGS (SciPy's L-BFGS-B, unbounded), stopped on the Euclidean norm of the gradient."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from dlogit.solvers._base import Fun, SolverResult, StepCallback


def lbfgs(
    fun: Fun,
    theta0: np.ndarray,
    *,
    lr: float = 0.0,
    max_iter: int,
    tol: float,
    callback: StepCallback | None = None,
    memory: int = 10,
) -> SolverResult:
    """Minimize ``fun`` with L-BFGS until ``||grad||_2 <= tol`` or ``max_iter`` iterations.

    ``lr`` is accepted for a uniform solver signature and unused (the line search picks the step).
    One iteration may evaluate ``fun`` more than once (line search); ``callback`` runs once per
    accepted iterate with that iterate's loss and gradient norm.
    """

    last: dict[str, object] = {}
    hist_loss: list[float] = []
    hist_gn: list[float] = []

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        if "x" in last and np.array_equal(last["x"], theta):  # scipy re-evaluates x0: one pass saved
            return last["loss"], last["grad"]
        loss, grad = fun(theta)
        last["x"], last["loss"], last["grad"] = theta.copy(), loss, grad
        return loss, grad

    def on_iterate(intermediate_result) -> None:  # noqa: ANN001 - scipy's OptimizeResult
        x = intermediate_result.x
        if "x" in last and np.array_equal(last["x"], x):
            loss, grad = last["loss"], last["grad"]
        else:  # the accepted iterate was not the last evaluated point
            loss, grad = f(x)
        gnorm = float(np.linalg.norm(grad))
        hist_loss.append(float(loss))
        hist_gn.append(gnorm)
        if callback is not None:
            callback(len(hist_loss) - 1, float(loss), gnorm)
        if gnorm <= tol:
            raise StopIteration

    theta0 = np.asarray(theta0, dtype=np.float64)
    loss0, grad0 = f(theta0)
    g0 = float(np.linalg.norm(grad0))
    if g0 <= tol:
        return SolverResult(theta0.copy(), 0, "converged", loss0, g0, "", [], [])
    res = minimize(
        f,
        theta0,
        jac=True,
        method="L-BFGS-B",
        callback=on_iterate,
        options={"maxiter": max_iter, "maxcor": memory, "gtol": 0.0, "ftol": 0.0,
                 "maxfun": max(15000, 20 * max_iter), "maxls": 50},
    )
    theta = np.asarray(res.x, dtype=np.float64)
    if "x" in last and np.array_equal(last["x"], theta):
        loss, grad = float(last["loss"]), last["grad"]
    else:
        loss, grad = f(theta)
    gnorm = float(np.linalg.norm(grad))
    if gnorm <= tol:
        status, message = "converged", ""
    elif len(hist_loss) >= max_iter:
        status, message = "max_iter", f"reached max_iter={max_iter}"
    else:  # the line search cannot make progress: tol is below what float64 can resolve here
        status, message = "stalled", f"line search stalled ({res.message})"

    return SolverResult(theta, len(hist_loss), status, float(loss), gnorm, message, hist_loss, hist_gn)
