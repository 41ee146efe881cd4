"""The fit loop shared by every execution mode: solver + objective + progress events. Pure.

``fit_loop`` is given a ``sums(theta)`` function that returns the reduced chunk sums (however the
engine computes them: in this process, on one worker, or across workers) and runs the solver on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dlogit.events import ProgressEmitter, Send
from dlogit.objective import Objective
from dlogit.solvers import get_solver


def fit_loop(sums: Callable[[np.ndarray], np.ndarray], spec: dict[str, Any], send: Send,
             emitter_hook: Callable[[ProgressEmitter], None] | None = None) -> dict[str, Any]:
    """Run the solver named in ``spec``; return the result as a plain dict (picklable, NumPy only).

    ``spec`` keys: ``run``, ``solver``, ``lr``, ``max_iter``, ``tol``, ``l2``, ``fit_intercept``,
    ``theta0`` (float64 array), ``params`` (for the start event), ``n_rows``, ``row_bytes``,
    ``period`` and ``interval`` (progress events); optional ``cpu_kernel`` (for the engine's chunks).
    """
    solve, _, _ = get_solver(spec["solver"])
    objective = Objective(spec["l2"], spec["fit_intercept"])
    emitter = ProgressEmitter(send, spec["run"], n_rows=spec["n_rows"], row_bytes=spec["row_bytes"],
                              period=spec.get("period", 1000), interval=spec.get("interval", 0.5))
    if emitter_hook is not None:
        emitter_hook(emitter)

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        return objective.finalize(sums(theta), theta)

    emitter.start(spec["params"])
    try:
        res = solve(fun, spec["theta0"], lr=spec["lr"], max_iter=spec["max_iter"], tol=spec["tol"],
                    callback=emitter.step)
    except BaseException as exc:
        emitter.end("failed", 0, float("nan"), float("nan"), f"{type(exc).__name__}: {exc}")
        raise
    emitter.end(res.status, res.n_iter, res.loss, res.grad_norm, res.message)
    return {
        "theta": res.theta, "n_iter": res.n_iter, "status": res.status, "loss": res.loss,
        "grad_norm": res.grad_norm, "message": res.message,
        "history_loss": np.asarray(res.history_loss, dtype=np.float64),
        "history_grad_norm": np.asarray(res.history_grad_norm, dtype=np.float64),
        "history_step_seconds": np.asarray(emitter.step_seconds, dtype=np.float64),
        "mode": spec["params"].get("mode"), "kernel": spec["params"].get("kernel"),
    }
