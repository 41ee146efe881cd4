"""The solver contract: problems, options, resumable state, and the helpers every solver shares.

A solver is an ``init`` / ``step`` pair over a :class:`SolverState` value (optax's pattern): ``init``
evaluates the starting point, every ``step`` runs exactly one iteration and returns a new state, and
the state alone (with the same :class:`Problem` and :class:`SolverOptions`) determines the rest of the
run. So a checkpoint is ``np.savez(path, **state_to_arrays(state))`` and a resume is
``state_from_arrays(np.load(path, allow_pickle=False))``: the remaining iterates are bit-identical.

The objective is ``F(theta) = f(theta) + sum_j l1_j |theta_j|`` with ``f`` smooth (supplied as
``fun(theta) -> (f, grad f)``) and per-coordinate L1 weights ``l1_j >= 0``. Everything here is plain
NumPy float64 on the driver; nothing knows about Dask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dlogit.errors import ConfigError, ModelError

Fun = Callable[[np.ndarray], tuple[float, np.ndarray]]
"""Smooth part ``f(theta) -> (value, gradient)``, float64."""

Hvp = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(theta, v) -> hessian(f)(theta) @ v``."""

"""``callback(step, loss, grad_norm)`` of the legacy ``solve`` functions."""

STATUSES = ("converged", "max_iter", "stalled", "diverged")

#: smallest positive gap that float64 resolves relative to 1
EPS = float(np.finfo(np.float64).eps)

_FORMAT = "dlogit-solver-state"
_VERSION = 1


# --------------------------------------------------------------------------------------------------
# the contract


@dataclass(frozen=True, eq=False)
class Problem:
    """What to minimize: ``F(theta) = f(theta) + sum_j l1[j] * |theta[j]|``.

    Parameters
    ----------
    fun : Fun
        ``fun(theta) -> (f, grad)`` of the smooth part (loss + L2), float64. The returned gradient may
        be a buffer the caller reuses on the next call: solvers copy what they keep.
    n_params : int
        Length of ``theta``.
    l1 : numpy.ndarray or None
        ``(n_params,)`` L1 weights ``>= 0`` (0 for unpenalized coordinates such as the intercept), or
        None for a smooth problem. Stored as a read-only float64 copy.
    hvp : Hvp or None
        ``hvp(theta, v) -> hessian(f)(theta) @ v``; needed by ``"newton"`` only.
    optimality : callable or None
        ``optimality(theta, grad) -> float``, the measure reported as ``state.grad_norm`` and compared
        with ``tol`` (``grad`` is ``grad f(theta)``). None: ``||grad||_2``, or the norm of the
        minimum-norm subgradient of ``F`` with L1. A caller that solves in rescaled coordinates passes
        the measure in its own coordinates; the solvers' internal decisions never use it.
    """

    fun: Fun
    n_params: int
    l1: np.ndarray | None = None
    hvp: Hvp | None = None
    optimality: Callable[[np.ndarray, np.ndarray], float] | None = None

    def __post_init__(self) -> None:
        if int(self.n_params) < 1:
            raise ConfigError(f"n_params must be at least 1, got {self.n_params}")
        object.__setattr__(self, "n_params", int(self.n_params))
        if self.l1 is not None:
            l1 = np.array(self.l1, dtype=np.float64, copy=True)
            if l1.shape != (self.n_params,):
                raise ConfigError(f"l1 must have shape ({self.n_params},), got {l1.shape}")
            if not (np.all(np.isfinite(l1)) and np.all(l1 >= 0)):
                raise ConfigError("l1 weights must be finite and >= 0")
            l1.flags.writeable = False
            object.__setattr__(self, "l1", l1)
        object.__setattr__(self, "_has_l1", self.l1 is not None and bool(np.any(self.l1 > 0)))

    @property
    def has_l1(self) -> bool:
        """Whether any L1 weight is nonzero (the problem is then nonsmooth)."""
        return bool(self._has_l1)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SolverOptions:
    """Options shared by the solvers (each uses the ones that concern it).

    Parameters
    ----------
    max_iter : int
        Iterations (``step`` calls) at most; ``state.n_iter`` counts them.
    tol : float
        Stop ("converged") when the optimality measure (``state.grad_norm``) is ``<= tol``.
    lr : float
        Step size of ``"gd"`` (plain and proximal); checked (``> 0``) by ``"gd"`` only.
    memory : int
        Correction pairs kept by L-BFGS / OWL-QN.
    max_linesearch : int
        Objective evaluations one L-BFGS / OWL-QN line search may spend.
    max_cg : int or None
        Conjugate-gradient iterations per Newton step; None means 250 (more than ``n_params`` can be
        needed: in float64, CG on a condition number of 1e8 takes several times ``n`` iterations).
    trust_radius : float or None
        Initial Newton trust radius; None means ``||grad f(theta0)||`` (as LIBLINEAR's TRON).
    divergence_window : int
        Recent ``"gd"`` steps examined for persistent rises (see :mod:`dlogit.solvers.gd`).
    l2 : float
        The L2 strength inside ``f`` (``l2 * ||W||^2``), used only to word a diverged ``"gd"`` run's
        advice (:func:`divergence_advice`: the penalty alone needs ``lr < 1 / l2``).
    precision : str
        What the evaluations are computed from (``"float32"`` for float32 data), named in the message of
        a run that stalls at the limit of that precision.
    """

    max_iter: int
    tol: float
    lr: float = 0.1
    memory: int = 10
    max_linesearch: int = 20
    max_cg: int | None = None
    trust_radius: float | None = None
    divergence_window: int = 500
    l2: float = 0.0
    precision: str = "float64"

    def __post_init__(self) -> None:
        if int(self.max_iter) < 0:
            raise ConfigError(f"max_iter must be >= 0, got {self.max_iter}")
        if not float(self.tol) >= 0:
            raise ConfigError(f"tol must be >= 0, got {self.tol}")
        if int(self.memory) < 1:
            raise ConfigError(f"memory must be at least 1, got {self.memory}")
        if int(self.max_linesearch) < 2:
            raise ConfigError(f"max_linesearch must be at least 2, got {self.max_linesearch}")
        if self.max_cg is not None and int(self.max_cg) < 1:
            raise ConfigError(f"max_cg must be at least 1, got {self.max_cg}")
        if self.trust_radius is not None and not (
                math.isfinite(float(self.trust_radius)) and float(self.trust_radius) > 0):
            raise ConfigError(f"trust_radius must be > 0, got {self.trust_radius}")
        if int(self.divergence_window) < 8:
            raise ConfigError(f"divergence_window must be at least 8, got {self.divergence_window}")


@dataclass(eq=False)
class SolverState:
    """Everything a solver needs to continue a run; a value that :func:`state_to_arrays` saves.

    Attributes
    ----------
    theta : numpy.ndarray
        The current iterate (for ``"gd"``: the next point to evaluate; see :mod:`dlogit.solvers.gd`).
    n_iter : int
        Iterations completed.
    n_evals : int
        Calls of ``problem.fun`` so far.
    loss : float
        ``F = f + sum_j l1_j |theta_j|`` at the reported point.
    grad_norm : float
        Optimality at the reported point: ``||grad f||_2`` for smooth problems, the norm of the
        minimum-norm subgradient of ``F`` with L1 (0 exactly at a KKT point).
    status : str or None
        None while running, else one of ``"converged"``, ``"max_iter"``, ``"stalled"``, ``"diverged"``.
    message : str
        One line for the user when ``status`` is not ``"converged"``.
    extra : dict
        Solver-specific values: NumPy arrays or Python ``bool`` / ``int`` / ``float`` / ``str``. Keys
        starting with ``"_"`` are hints about the running process (e.g. "the last ``fun`` call was at
        ``theta``") and are not saved: a resumed run starts without them.
    """

    theta: np.ndarray
    n_iter: int
    n_evals: int
    loss: float
    grad_norm: float
    status: str | None = None
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Solver(Protocol):
    """An ``init`` / ``step`` pair; see the module docstring."""

    name: str
    default_max_iter: int
    default_tol: float
    supports_l1: bool
    needs_hvp: bool

    def init(self, problem: Problem, theta0: np.ndarray, options: SolverOptions) -> SolverState:
        """Evaluate the starting point; the state is already final when ``theta0`` is optimal or bad."""
        ...

    def step(self, problem: Problem, state: SolverState, options: SolverOptions) -> SolverState:
        """Run one iteration; the returned state has ``status`` set when the run is over."""
        ...


# --------------------------------------------------------------------------------------------------
# saving and restoring a state


def state_to_arrays(state: SolverState) -> dict[str, np.ndarray]:
    """The state as NumPy arrays only (``np.savez(..., **arrays)``; loads with ``allow_pickle=False``).

    Parameters
    ----------
    state : SolverState
        Any state; ``extra`` keys starting with ``"_"`` (process hints) are left out.

    Returns
    -------
    dict of str to numpy.ndarray
        ``theta``, 0-d arrays for the scalar fields, ``extra.<key>`` for array extras and
        ``extra_scalar.<key>`` for scalar extras (restored as Python scalars).
    """
    out: dict[str, np.ndarray] = {
        "format": np.array(_FORMAT),
        "version": np.array(_VERSION, dtype=np.int64),
        "theta": np.array(state.theta, dtype=np.float64, copy=True),
        "n_iter": np.array(int(state.n_iter), dtype=np.int64),
        "n_evals": np.array(int(state.n_evals), dtype=np.int64),
        "loss": np.array(float(state.loss), dtype=np.float64),
        "grad_norm": np.array(float(state.grad_norm), dtype=np.float64),
        "status": np.array("" if state.status is None else str(state.status)),
        "message": np.array(str(state.message)),
    }
    for key, value in state.extra.items():
        if key.startswith("_"):
            continue
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise TypeError(f"extra[{key!r}] holds Python objects and cannot be saved")
            out[f"extra.{key}"] = value.copy()
        elif isinstance(value, (bool, int, float, str, np.generic)):
            out[f"extra_scalar.{key}"] = np.array(value)
        else:
            raise TypeError(f"extra[{key!r}] is a {type(value).__name__}; only arrays and scalars are saved")
    return out


def state_from_arrays(arrays: Mapping[str, np.ndarray]) -> SolverState:
    """The inverse of :func:`state_to_arrays` (e.g. on ``np.load(path, allow_pickle=False)``).

    Raises
    ------
    dlogit.errors.ModelError
        When ``arrays`` is not a saved solver state (missing keys, another format or version).
    """
    keys = set(arrays.keys())
    required = {"format", "version", "theta", "n_iter", "n_evals", "loss", "grad_norm", "status", "message"}
    if not required <= keys or str(np.asarray(arrays["format"])[()]) != _FORMAT:
        raise ModelError("not a dlogit solver state (checkpoint): keys "
                         f"{', '.join(sorted(required - keys)) or 'format'} missing or wrong")
    version = int(np.asarray(arrays["version"])[()])
    if version != _VERSION:
        raise ModelError(f"solver state version {version} is not supported (this dlogit reads {_VERSION})")
    status = str(np.asarray(arrays["status"])[()]) or None
    if status is not None and status not in STATUSES:
        raise ModelError(f"solver state has an unknown status {status!r}")
    extra: dict[str, Any] = {}
    for key in sorted(keys):  # fresh, aligned, writable copies: the file's buffers are not kept
        if key.startswith("extra."):
            extra[key[len("extra."):]] = np.array(arrays[key], copy=True)
        elif key.startswith("extra_scalar."):
            extra[key[len("extra_scalar."):]] = np.asarray(arrays[key])[()].item()
    return SolverState(
        theta=np.array(arrays["theta"], dtype=np.float64, copy=True),
        n_iter=int(np.asarray(arrays["n_iter"])[()]),
        n_evals=int(np.asarray(arrays["n_evals"])[()]),
        loss=float(np.asarray(arrays["loss"])[()]),
        grad_norm=float(np.asarray(arrays["grad_norm"])[()]),
        status=status,
        message=str(np.asarray(arrays["message"])[()]),
        extra=extra,
    )


# --------------------------------------------------------------------------------------------------
# helpers shared by the solvers


def fmt(x: float) -> str:
    """A number for a message: 4 significant digits."""
    return f"{x:.4g}"


def evaluate(problem: Problem, theta: np.ndarray) -> tuple[float, np.ndarray]:
    """``(f, grad)`` at ``theta`` as a Python float and a private float64 copy of the gradient."""
    value, grad = problem.fun(theta)
    grad = np.array(grad, dtype=np.float64, copy=True)
    if grad.shape != (problem.n_params,):
        raise ValueError(f"fun returned a gradient of shape {grad.shape}, expected ({problem.n_params},)")
    return float(value), grad


def norm(v: np.ndarray) -> float:
    """Euclidean norm as a Python float (``sqrt(v . v)``, the same rounding everywhere)."""
    return math.sqrt(float(np.dot(v, v)))


def l1_value(theta: np.ndarray, l1: np.ndarray | None) -> float:
    """``sum_j l1_j |theta_j|`` (0.0 without weights)."""
    if l1 is None:
        return 0.0
    return float(np.dot(l1, np.abs(theta)))


def pseudo_gradient(theta: np.ndarray, grad: np.ndarray, l1: np.ndarray) -> np.ndarray:
    """The minimum-norm subgradient of ``f + sum_j l1_j |theta_j|`` (OWL-QN's pseudo-gradient).

    ``grad_j + l1_j sign(theta_j)`` where ``theta_j != 0``; where ``theta_j == 0`` the subdifferential
    is ``[grad_j - l1_j, grad_j + l1_j]`` and its point nearest 0 is ``grad_j`` soft-thresholded by
    ``l1_j`` (0 when ``|grad_j| <= l1_j``).
    """
    at_zero = theta == 0
    shrunk = np.sign(grad) * np.maximum(np.abs(grad) - l1, 0.0)
    return np.where(at_zero, shrunk, grad + l1 * np.sign(theta))


def soft_threshold(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``sign(x) * max(|x| - t, 0)``: the proximal map of ``sum_j t_j |x_j|`` (exact zeros)."""
    return np.sign(x) * np.maximum(np.abs(x) - t, 0.0)


def measure(problem: Problem, theta: np.ndarray, grad: np.ndarray) -> float:
    """The optimality measure at ``theta`` given ``grad = grad f(theta)`` (``state.grad_norm``).

    ``problem.optimality(theta, grad)`` when supplied; else ``||grad||_2`` for a smooth problem and the
    norm of :func:`pseudo_gradient` (the minimum-norm subgradient of ``F``) with L1.
    """
    if problem.optimality is not None:
        return float(problem.optimality(theta, grad))
    if problem.has_l1:
        assert problem.l1 is not None
        return norm(pseudo_gradient(theta, grad, problem.l1))
    return norm(grad)


def penalty_and_optimality(problem: Problem, theta: np.ndarray, grad: np.ndarray) -> tuple[float, float]:
    """``(sum_j l1_j |theta_j|, measure(problem, theta, grad))``."""
    return l1_value(theta, problem.l1 if problem.has_l1 else None), measure(problem, theta, grad)


def check_theta0(problem: Problem, theta0: np.ndarray) -> np.ndarray:
    """A private float64 copy of ``theta0`` after checking its shape."""
    theta = np.array(theta0, dtype=np.float64, copy=True)
    if theta.shape != (problem.n_params,):
        raise ConfigError(f"theta0 must have shape ({problem.n_params},), got {theta.shape}")
    return theta


def not_finite_at_start(loss: float, gnorm: float, zero_start: bool = False) -> str:
    """The message of a run whose starting point has a non-finite objective or gradient: from zero
    coefficients only the feature values can be the cause (too large to compute with), otherwise the
    starting coefficients are the likelier one."""
    what = f"the objective is not finite at the starting point (loss {fmt(loss)}, ||grad|| {fmt(gnorm)}): "
    if zero_start:
        return what + ("the feature values are too large to compute with (or hold NaN or infinite values): "
                       "rescale (standardize) the columns")
    return what + "start from smaller coefficients (e.g. init='zeros'), or rescale (standardize) the columns"


def divergence_advice(lr: float, l2: float) -> str:
    """The one suggestion for a ``"gd"`` run that diverged at step size ``lr`` with L2 strength ``l2``.

    Gradient descent needs ``lr < 2 / L``; the penalty ``l2 * ||W||^2`` alone has curvature ``2 l2``, so
    ``lr >= 1 / l2`` diverges on any data, scaled or not: then the advice is a step below ``1 / l2``
    (``0.5 / l2``) and standardizing is not offered. Otherwise the data's curvature is the cause: a
    tenth of ``lr``, or standardized columns."""
    if l2 > 0 and lr * l2 >= 1.0:
        return (f"lower lr below 1/l2 = {fmt(1.0 / l2)} (e.g. {fmt(0.5 / l2)}): the penalty alone makes "
                f"steps of lr={fmt(lr)} unstable")
    return f"lower lr (e.g. {fmt(suggested_lr(lr, l2))}) or standardize the columns"


def suggested_lr(lr: float, l2: float) -> float:
    """The step size :func:`divergence_advice` suggests."""
    return 0.5 / l2 if l2 > 0 and lr * l2 >= 1.0 else lr / 10


def start_state(problem: Problem, theta: np.ndarray, options: SolverOptions, *,
                name: str) -> tuple[SolverState, float, np.ndarray]:
    """Evaluate ``theta`` (one ``fun`` call) and build the initial state of solver ``name``.

    The state is final when the start is not finite ("diverged"), already optimal ("converged",
    ``n_iter`` 0), or ``max_iter`` is 0. Returns the state, ``f(theta)`` and the (private) gradient.
    """
    f, grad = evaluate(problem, theta)
    penalty, gnorm = penalty_and_optimality(problem, theta, grad)
    loss = f + penalty
    state = SolverState(theta=theta, n_iter=0, n_evals=1, loss=loss, grad_norm=gnorm,
                        extra={"solver": name})
    if not (math.isfinite(loss) and math.isfinite(gnorm)):
        state.status, state.message = "diverged", not_finite_at_start(loss, gnorm, not np.any(theta))
    elif gnorm <= options.tol:
        state.status = "converged"
    elif options.max_iter == 0:
        state.status, state.message = "max_iter", max_iter_message(options, gnorm)
    return state, f, grad


def max_iter_message(options: SolverOptions, gnorm: float) -> str:
    """The message of a run stopped by ``max_iter``."""
    if not options.tol > 0:  # no stopping rule asked for: every step was meant to run
        return f"ran all max_iter={options.max_iter} steps (tol=0); optimality {fmt(gnorm)}"
    return (f"reached max_iter={options.max_iter} with optimality {fmt(gnorm)} > tol={fmt(options.tol)}: "
            "increase max_iter")


def stalled_message(measure: float, options: SolverOptions) -> str:
    """Why a run stopped because no step decreases the objective any more."""
    return (f"no step decreases the objective any more at optimality {fmt(measure)} > tol={fmt(options.tol)}:"
            f" tol is likely below what {options.precision} resolves for this problem; use a tol of at least "
            f"{fmt(measure)}")


def check_state(state: SolverState, name: str) -> None:
    """Refuse to step a finished state, or a state another solver made."""
    owner = state.extra.get("solver")
    if owner != name:
        raise ConfigError(f"this solver state was made by solver {owner!r}, not {name!r}")
    if state.status is not None:
        raise ConfigError(f"the run is already over (status {state.status!r}); start a new one")


def finish(state: SolverState, options: SolverOptions) -> SolverState:
    """Set ``converged`` / ``max_iter`` on a state that just completed an iteration (if it applies)."""
    if state.status is None:
        if state.grad_norm <= options.tol:
            state.status = "converged"
        elif state.n_iter >= options.max_iter:
            state.status, state.message = "max_iter", max_iter_message(options, state.grad_norm)
    return state


def reopen(state: SolverState, options: SolverOptions) -> SolverState:
    """A resumed state under the resumed run's ``max_iter`` and ``tol``: a run that ended ``max_iter``
    or ``converged`` goes on when the new limits allow more (a larger ``max_iter``, a smaller ``tol``);
    ``stalled`` and ``diverged`` runs stay over."""
    if state.status not in ("max_iter", "converged"):
        return state
    out = SolverState(theta=state.theta, n_iter=state.n_iter, n_evals=state.n_evals, loss=state.loss,
                      grad_norm=state.grad_norm, extra=dict(state.extra))
    return finish(out, options)


__all__ = [
    "EPS",
    "STATUSES",
    "Fun",
    "Hvp",
    "Problem",
    "Solver",
    "SolverOptions",
    "SolverState",
    "check_state",
    "check_theta0",
    "divergence_advice",
    "evaluate",
    "finish",
    "fmt",
    "l1_value",
    "max_iter_message",
    "measure",
    "norm",
    "penalty_and_optimality",
    "pseudo_gradient",
    "reopen",
    "soft_threshold",
    "stalled_message",
    "start_state",
    "state_from_arrays",
    "state_to_arrays",
    "suggested_lr",
]
