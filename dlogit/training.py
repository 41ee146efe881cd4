"""The fit loop shared by every execution mode: objective + solver + events + checkpoints. Pure.

:func:`run_fit` is given an :class:`Evaluator` -- ``sums(theta)`` returns the reduced chunk sums and
``hvp(theta, v)`` the reduced Hessian-vector sums, however the engine computes them (in this process,
on one worker, or across workers) -- and runs the solver step by step:

* the solver moves in preconditioned coordinates (:class:`~dlogit.objective.Reparam`) while the
  objective and everything reported are in the model's own coordinates; the stopping rule is the
  gradient's norm (with L1 the minimum-norm subgradient's), for preconditioned solvers measured in
  standardized coordinates (columns centred and divided by their standard deviation);
* between two steps it checks ``stop()`` (a signal, a cancelled fit), records the history, sends
  progress events and writes a checkpoint every ``checkpoint.every`` seconds;
* when stopped it writes a checkpoint of the last completed step and raises
  :class:`~dlogit.errors.Interrupted`; a resumed fit continues from the checkpoint's state and gives
  the same iterates as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from dlogit.errors import Interrupted
from dlogit.events import ProgressEmitter, Send
from dlogit.family import describe_classes, n_nonzero
from dlogit.objective import Objective, fit_penalty
from dlogit.penalty import Penalty
from dlogit.solvers import Problem, reopen
from dlogit.spec import FitPlan, FitResult, FitSpec

Stop = Callable[[], "str | None"]


class Evaluator(Protocol):
    """What the engine hands the loop: reduced sums at ``theta`` (model coordinates, float64 host)."""

    kernel: str

    def sums(self, theta: np.ndarray) -> np.ndarray: ...

    def hvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray: ...


class FitProblem:
    """The solver's view: f and H.v in solver coordinates, optimality in the model's."""

    def __init__(self, evaluator: Evaluator, objective: Objective, plan: FitPlan, penalty: Penalty,
                 needs_hvp: bool) -> None:
        self.ev = evaluator
        self.obj = objective
        self.R = plan.reparam
        self.identity = plan.reparam.is_identity
        #: the penalty's nonsmooth part, which the solver handles (the objective holds the smooth part)
        self.nonsmooth = penalty.split()[1]
        self.solver_penalty = plan.reparam.penalty(self.nonsmooth)
        # preconditioned solvers stop on the scale-free measure: the (sub)gradient in standardized
        # coordinates (for a column of spread 1e4 -- an income -- the raw gradient cannot get below
        # ~1e-6 within float64, while the optimum is reached to 1e-9); gd keeps the plain gradient
        self.standardize = None if plan.reparam.is_identity else plan.standardize
        self._last_theta_s: np.ndarray | None = None
        self._last_user: tuple[np.ndarray, np.ndarray] | None = None
        self.needs_hvp = needs_hvp

    def user(self, theta_s: np.ndarray) -> np.ndarray:
        return theta_s if self.identity else self.R.to_user(theta_s)

    def fun(self, theta_s: np.ndarray) -> tuple[float, np.ndarray]:
        if self.identity:  # the hot path of gd: nothing to map or remember
            return self.obj.finalize(self.ev.sums(theta_s), theta_s)
        theta = self.R.to_user(theta_s)
        loss, grad = self.obj.finalize(self.ev.sums(theta), theta)
        self._last_theta_s = np.array(theta_s, copy=True)
        self._last_user = (theta, grad)
        return loss, self.R.grad_to_solver(grad)

    def hvp(self, theta_s: np.ndarray, v_s: np.ndarray) -> np.ndarray:
        theta = self.user(theta_s)
        v = self.user(v_s)  # the change of variables is linear
        hv = self.obj.hvp_finalize(self.ev.hvp(theta, v), v)
        return hv if self.identity else self.R.grad_to_solver(hv)

    def optimality(self, theta_s: np.ndarray, grad_s: np.ndarray) -> float:
        """The stopping measure in model coordinates (scale-free of the preconditioner): the norm of the
        minimum-norm subgradient of ``f + P``; with ``standardize``, of that subgradient mapped into
        standardized coordinates (columns centred and divided by their standard deviation:
        ``(g_W - g_b m) / s``)."""
        if self.identity:
            theta, grad = theta_s, grad_s
        elif self._last_theta_s is not None and np.array_equal(self._last_theta_s, theta_s):
            assert self._last_user is not None
            theta, grad = self._last_user
        else:
            theta, grad = self.R.to_user(theta_s), self.R.grad_to_user(grad_s)
        g = self.nonsmooth.min_norm_subgradient(theta, grad)
        if self.standardize is not None:
            g = self.standardize.grad_to_solver(g)
        return float(np.sqrt(np.dot(g, g)))


def solver_problem(p: FitProblem) -> Problem:
    """The solvers' :class:`~dlogit.solvers.Problem` of a fit (or of one fold of a path)."""
    return Problem(fun=p.fun, n_params=p.R.layout.size, penalty=p.solver_penalty,
                   hvp=p.hvp if p.needs_hvp else None, optimality=p.optimality)


def precision_name(dtype: Any) -> str:
    """The float type a fit's chunks are evaluated in, for messages (``"float32"`` for float32 and
    float16 data; ``"float64"`` otherwise, integer data included)."""
    try:
        dt = np.dtype(dtype) if dtype is not None else np.dtype(np.float64)
    except TypeError:
        return "float64"
    return "float32" if dt.kind == "f" and dt.itemsize < 8 else "float64"


def start_params(spec: FitSpec, plan: FitPlan, mode: str, kernel: str, resumed_from: int | None,
                 info: dict[str, Any]) -> dict[str, Any]:
    """The ``params`` of the start event (ARCHITECTURE.md, "Progress events")."""
    return {"solver": spec.solver, "l2": float(spec.l2), "l1": float(spec.l1), "lr": float(spec.lr),
            "max_iter": spec.max_iter, "tol": spec.tol, "fit_intercept": spec.fit_intercept,
            "n_rows": plan.n_rows, "n_features": plan.n_features, "family": plan.family.name,
            **describe_classes(plan.classes), "weighted": plan.weighted, "n_params": plan.layout.size,
            "sparse": plan.sparse, "mode": mode, "kernel": kernel, "resumed_from": resumed_from,
            "init": spec.init, **spec.info, **info}


def run_fit(evaluator: Evaluator, spec: FitSpec, plan: FitPlan, send: Send, *, mode: str,
            info: dict[str, Any] | None = None, stop: Stop | None = None,
            emitter_hook: Callable[[ProgressEmitter], None] | None = None,
            start: tuple[Any, dict[str, list[float]]] | None = None,
            on_step: Callable[[Any, dict[str, list[float]]], None] | None = None,
            epoch: int = 0) -> FitResult:
    """Run the solver named in ``spec`` on ``evaluator``; return the :class:`FitResult`.

    ``stop()`` is polled between steps; a non-``None`` answer (the reason) stops the fit: a checkpoint
    is written when checkpointing is on, the end event says "interrupted", and
    :class:`~dlogit.errors.Interrupted` is raised. A ``KeyboardInterrupt`` raised inside a step (Ctrl-C
    in this process) is handled the same way, from the last completed step.

    ``start`` is an in-memory checkpoint ``(solver state, history)`` to continue from (the on-cluster
    driver restarted on another worker); it takes precedence over ``spec.checkpoint.resume``.
    ``on_step(state, history)`` is called after every completed step (the driver copies its in-memory
    checkpoint to other workers from there); it must copy what it keeps. ``epoch`` (the driver's
    incarnation) fences the checkpoint file: no write replaces one of a newer epoch of the same run.
    """
    from dlogit import checkpoint as ckpt
    from dlogit.solvers import SolverOptions, get

    solver = get(spec.solver)
    info = dict(info or {})
    penalty = fit_penalty(plan.layout, l1=spec.l1, l2=spec.l2)
    objective = Objective(plan.layout, plan.weight_sum, fit_intercept=spec.fit_intercept, penalty=penalty)
    problem = FitProblem(evaluator, objective, plan, penalty, solver.needs_hvp)
    sp = solver_problem(problem)
    opts = SolverOptions(max_iter=spec.max_iter, tol=spec.tol, lr=spec.lr, memory=spec.memory, l2=spec.l2,
                         precision=precision_name({**spec.info, **(info or {})}.get("dtype")))
    row_bytes = plan.n_features * 8
    emitter = ProgressEmitter(send, spec.run, n_rows=plan.n_rows, row_bytes=row_bytes,
                              period=spec.period, interval=spec.interval)
    if emitter_hook is not None:
        emitter_hook(emitter)

    expect = {"run": spec.run, "solver": spec.solver, "params": spec.trajectory(),
              "data": plan.data_fingerprint, "shape": [plan.layout.n_outputs, plan.layout.n_features],
              "classes": plan.classes.display(20)}
    writer = None
    history: dict[str, list[float]] = {"loss": [], "grad_norm": [], "step_seconds": []}
    resumed_from = None
    state = None
    if spec.checkpoint is not None:
        writer = ckpt.Checkpointer(spec.checkpoint.directory, spec.checkpoint.every, expect,
                                   mode=spec.checkpoint.mode, epoch=epoch)
        if spec.checkpoint.resume and start is None:
            loaded = ckpt.load(spec.checkpoint.directory, expect)
            state = reopen(loaded.state, opts)  # a finished run goes on under a larger max_iter / smaller tol
            history = {k: [float(x) for x in loaded.history.get(k, [])] for k in history}
            resumed_from = int(state.n_iter)
    if start is not None:
        state = start[0]
        history = {k: [float(x) for x in start[1].get(k, [])] for k in history}
        resumed_from = int(state.n_iter)

    emitter.start(start_params(spec, plan, mode, evaluator.kernel, resumed_from, info))
    t_last = time.perf_counter()

    def finish_interrupted(reason: str, signum: int | None, st: Any) -> Interrupted:
        """Checkpoint the last completed step (its history only) and say the fit was interrupted."""
        path = None
        if st is not None:
            for v in history.values():  # a signal may land between a step and its history entry
                del v[int(st.n_iter):]  # one entry per completed step, resumed ones included
        if writer is not None and st is not None and writer.write(st, history):
            path = writer.path
        n = st.n_iter if st is not None else 0
        loss = st.loss if st is not None else math.nan
        gn = st.grad_norm if st is not None else math.nan
        emitter.end("interrupted", n, loss, gn, reason)
        return Interrupted(reason, signum, path)

    committed = state
    try:
        try:
            if state is None:
                theta0 = plan.theta0 if plan.reparam.is_identity else plan.reparam.to_solver(plan.theta0)
                state = solver.init(sp, theta0, opts)
            committed = state
            while state.status is None:
                reason = stop() if stop is not None else None
                if reason is not None:
                    raise finish_interrupted(reason, None, committed)
                state = solver.step(sp, state, opts)
                now = time.perf_counter()
                history["loss"].append(float(state.loss))
                history["grad_norm"].append(float(state.grad_norm))
                history["step_seconds"].append(now - t_last)
                t_last = now
                committed = state
                if on_step is not None:
                    on_step(state, history)
                emitter.step(state.n_iter - 1, float(state.loss), float(state.grad_norm))
                if writer is not None and writer.due():
                    writer.write(state, history)
        except Interrupted:
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C here, or a signal turned into one: stop cleanly
            reason = getattr(exc, "message", None) or "interrupted"
            raise finish_interrupted(reason, getattr(exc, "signum", None), committed) from None
    except Interrupted:
        raise
    except BaseException as exc:
        emitter.end("failed", committed.n_iter if committed is not None else 0, math.nan, math.nan,
                    f"{type(exc).__name__}: {exc}")
        raise
    theta = problem.user(np.asarray(state.theta, dtype=np.float64))
    status, message = state.status, state.message
    if not np.all(np.isfinite(theta)) and status != "diverged":
        status, message = "diverged", "the coefficients became non-finite"
    if writer is not None:
        writer.write(state, history)
    nnz = n_nonzero(plan.layout.coef(theta))
    emitter.end(status, state.n_iter, float(state.loss), float(state.grad_norm), message, n_nonzero=nnz)
    return FitResult(
        theta=theta, n_iter=int(state.n_iter), status=status, loss=float(state.loss),
        grad_norm=float(state.grad_norm), message=message,
        history_loss=np.asarray(history["loss"], np.float64),
        history_grad_norm=np.asarray(history["grad_norm"], np.float64),
        history_step_seconds=np.asarray(history["step_seconds"], np.float64), classes=plan.classes,
        family=plan.family.name, n_features=plan.n_features, n_rows=plan.n_rows,
        weight_sum=plan.weight_sum, weighted=plan.weighted, mode=mode, kernel=evaluator.kernel,
        resumed_from=resumed_from, n_nonzero=nnz, sparse=plan.sparse)
