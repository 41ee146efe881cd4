"""The solver contract: problems, options, resumable state, and the helpers every solver shares.

A solver is an ``init`` / ``step`` pair over a :class:`SolverState` value (optax's pattern): ``init``
evaluates the starting point, every ``step`` runs exactly one iteration and returns a new state, and
the state alone (with the same :class:`Problem` and :class:`SolverOptions`) determines the rest of the
run. So a checkpoint is ``np.savez(path, **state_to_arrays(state))`` and a resume is
``state_from_arrays(np.load(path, allow_pickle=False))``: the remaining iterates are bit-identical.

The objective is ``F(theta) = f(theta) + P(theta)`` with ``f`` smooth (supplied as
``fun(theta) -> (f, grad f)``) and ``P`` a :class:`~dlogit.penalty.Penalty` the solver handles
itself (per-coordinate L1 weights ``l1_j >= 0``). Everything here is plain NumPy float64 on the
driver; nothing knows about Dask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np

from dlogit.errors import ConfigError, ModelError
from dlogit.penalty import Penalty

Fun = Callable[[np.ndarray], tuple[float, np.ndarray]]
"""Smooth part ``f(theta) -> (value, gradient)``, float64."""

Hvp = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(theta, v) -> hessian(f)(theta) @ v``."""

STATUSES = ("converged", "max_iter", "stalled", "diverged")

#: smallest positive gap that float64 resolves relative to 1
EPS = float(np.finfo(np.float64).eps)

_FORMAT = "dlogit-solver-state"
_VERSION = 1


# --------------------------------------------------------------------------------------------------
# the contract


@dataclass(frozen=True, eq=False)
class Problem:
    """What to minimize: ``F(theta) = f(theta) + P(theta)``, ``P`` the nonsmooth penalty.

    Parameters
    ----------
    fun : Fun
        ``fun(theta) -> (f, grad)`` of the smooth part (loss + L2), float64. The returned gradient may
        be a buffer the caller reuses on the next call: solvers copy what they keep.
    n_params : int
        Length of ``theta``.
    penalty : Penalty or None
        The penalty ``P`` (:class:`~dlogit.penalty.Penalty`, in the solver's coordinates). Its smooth
        part (L2), if any, is added to ``fun`` and ``hvp`` here; the solvers handle the nonsmooth part
        (L1: value, proximal map, minimum-norm subgradient), which ``problem.penalty`` then holds. A fit
        passes only the L1 part (its objective already holds the L2 term). None: no penalty.
    hvp : Hvp or None
        ``hvp(theta, v) -> hessian(f)(theta) @ v``; needed by ``"newton"`` only.
    optimality : callable or None
        ``optimality(theta, grad) -> float``, the measure reported as ``state.grad_norm`` and compared
        with ``tol`` (``grad`` is ``grad f(theta)``). None: the norm of the minimum-norm subgradient of
        ``F`` (``||grad||_2`` without L1). A caller that solves in rescaled coordinates passes the
        measure in its own coordinates; the solvers' internal decisions never use it.
    """

    fun: Fun
    n_params: int
    penalty: Penalty | None = None
    hvp: Hvp | None = None
    optimality: Callable[[np.ndarray, np.ndarray], float] | None = None

    def __post_init__(self) -> None:
        if int(self.n_params) < 1:
            raise ConfigError(f"n_params must be at least 1, got {self.n_params}")
        object.__setattr__(self, "n_params", int(self.n_params))
        penalty = self.penalty if self.penalty is not None else Penalty(self.n_params)
        if penalty.n_params != self.n_params:
            raise ConfigError(f"the penalty has {penalty.n_params} coordinates, the problem {self.n_params}")
        if penalty.has_l2:
            smooth, penalty = penalty.split()
            object.__setattr__(self, "fun", _SmoothPlus(self.fun, smooth).fun)
            if self.hvp is not None:
                object.__setattr__(self, "hvp", _SmoothPlus(self.hvp, smooth).hvp)
        object.__setattr__(self, "penalty", penalty)

    @property
    def nonsmooth(self) -> Penalty:
        """The penalty the solver handles (a zero one when none was given)."""
        assert self.penalty is not None
        return self.penalty

    @property
    def has_l1(self) -> bool:
        """Whether the penalty has a nonzero L1 weight (the problem is then nonsmooth)."""
        return self.nonsmooth.has_l1


@dataclass(frozen=True)
class _SmoothPlus:
    """``fun`` or ``hvp`` with a penalty's smooth part added."""

    base: Callable[..., Any]
    smooth: Penalty

    def fun(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = self.base(theta)
        grad = np.array(grad, dtype=np.float64, copy=True)
        self.smooth.add_gradient(theta, grad)
        return float(value) + self.smooth.value(theta), grad

    def hvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = np.array(self.base(theta, v), dtype=np.float64, copy=True)
        self.smooth.add_hvp(v, out)
        return out


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


@dataclass(frozen=True, eq=False, kw_only=True)
class SolverState:
    """Everything a solver needs to continue a run: a frozen value that :func:`state_to_arrays` saves.

    Each solver has its own subclass (``GDState``, ``LBFGSState``, ``NewtonState``) adding the fields it
    needs; a step returns a new state and never changes the one it was given. Fields whose metadata
    says ``saved=False`` are hints about the running process (e.g. "the last ``fun`` call was at
    ``theta``") and are not saved: a resumed run starts without them.

    Attributes
    ----------
    theta : numpy.ndarray
        The current iterate (for ``"gd"``: the next point to evaluate; see :mod:`dlogit.solvers.gd`).
    n_iter : int
        Iterations completed.
    n_evals : int
        Calls of ``problem.fun`` so far.
    loss : float
        ``F = f + P`` at the reported point.
    grad_norm : float
        Optimality at the reported point: the norm of the minimum-norm subgradient of ``F``
        (``||grad f||_2`` for smooth problems; 0 exactly at a KKT point).
    status : str or None
        None while running, else one of ``"converged"``, ``"max_iter"``, ``"stalled"``, ``"diverged"``.
    message : str
        One line for the user when ``status`` is not ``"converged"``.
    """

    solver: ClassVar[str] = ""

    theta: np.ndarray
    n_iter: int
    n_evals: int
    loss: float
    grad_norm: float
    status: str | None = None
    message: str = ""


#: solver name -> its state class (filled by :func:`state_type`)
STATE_TYPES: dict[str, type[SolverState]] = {}

_BASE_FIELDS = frozenset(f.name for f in fields(SolverState))

S = TypeVar("S", bound=SolverState)


def state_type(cls: type[S]) -> type[S]:
    """Register a solver's state class (a decorator), so that :func:`state_from_arrays` restores it."""
    STATE_TYPES[cls.solver] = cls
    _DEFAULTS[cls] = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
    _NAMES[cls] = frozenset(f.name for f in fields(cls))
    return cls


_DEFAULTS: dict[type[SolverState], dict[str, Any]] = {}
_NAMES: dict[type[SolverState], frozenset[str]] = {}


def make_state(cls: type[S], values: dict[str, Any]) -> S:
    """``cls(**values)`` for a registered state class, built without the frozen ``__init__``'s
    ``object.__setattr__`` per field (several microseconds: the ``"gd"`` step, whose other
    bookkeeping costs about as much, builds one state per step). Fields left out get their defaults."""
    assert _NAMES[cls].issuperset(values) and _NAMES[cls].issubset({*values, *_DEFAULTS[cls]}), \
        sorted(_NAMES[cls].symmetric_difference(values))
    out = object.__new__(cls)
    out.__dict__.update(_DEFAULTS[cls])
    out.__dict__.update(values)
    return out


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
# saving and restoring a state: the arrays are derived from the state's fields


def state_to_arrays(state: SolverState, *, structured: bool = True) -> dict[str, np.ndarray]:
    """The state as NumPy arrays only (``np.savez(..., **arrays)``; loads with ``allow_pickle=False``).

    Parameters
    ----------
    state : SolverState
        Any solver's state; fields with ``saved=False`` metadata (process hints) are left out.
    structured : bool
        False leaves out the structured fields (the L-BFGS memory): for a copy that sends them apart.

    Returns
    -------
    dict of str to numpy.ndarray
        ``theta``, 0-d arrays for the common scalar fields, and for the solver's own fields
        ``extra.<name>`` (arrays; the L-BFGS memory as ``extra.S`` and ``extra.Y``, oldest pair first)
        or ``extra_scalar.<name>`` (scalars, restored as Python scalars; ``extra_scalar.solver`` names
        the solver).
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
        "extra_scalar.solver": np.array(state.solver),
    }
    for f in fields(state):
        if f.name in _BASE_FIELDS or not f.metadata.get("saved", True):
            continue
        value = getattr(state, f.name)
        to_arrays = getattr(value, "to_arrays", None)
        if to_arrays is not None:  # a structured field (the L-BFGS memory) saves itself
            if not structured:
                continue
            names = f.metadata["arrays"]
            for key, arr in zip(names, to_arrays(), strict=True):
                out[f"extra.{key}"] = arr
        elif isinstance(value, np.ndarray):
            out[f"extra.{f.name}"] = np.array(value, copy=True)
        elif isinstance(value, (bool, int, float, str, np.generic)):
            out[f"extra_scalar.{f.name}"] = np.array(value)
        else:
            raise TypeError(f"{type(state).__name__}.{f.name} is a {type(value).__name__}; only arrays, "
                            "scalars and the L-BFGS memory are saved")
    return out


def state_from_arrays(arrays: Mapping[str, np.ndarray]) -> SolverState:
    """The inverse of :func:`state_to_arrays` (e.g. on ``np.load(path, allow_pickle=False)``).

    Raises
    ------
    dlogit.errors.ModelError
        When ``arrays`` is not a saved solver state (missing keys, another format or version, an
        unknown solver, a field missing).
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
    solver = str(np.asarray(arrays["extra_scalar.solver"])[()]) if "extra_scalar.solver" in keys else ""
    cls = STATE_TYPES.get(solver)
    if cls is None:
        raise ModelError(f"solver state of an unknown solver {solver!r}")
    own: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in _BASE_FIELDS or not f.metadata.get("saved", True):
            continue
        codec = f.metadata.get("codec")
        if codec is not None:  # fresh, aligned, writable copies: the file's buffers are not kept
            names = f.metadata["arrays"]
            missing = [n for n in names if f"extra.{n}" not in keys]
            if missing:
                raise ModelError(f"{solver} solver state lacks {', '.join(missing)}")
            own[f.name] = codec(*(np.asarray(arrays[f"extra.{n}"], dtype=np.float64) for n in names))
        elif f"extra.{f.name}" in keys:
            own[f.name] = np.array(arrays[f"extra.{f.name}"], copy=True)
        elif f"extra_scalar.{f.name}" in keys:
            own[f.name] = np.asarray(arrays[f"extra_scalar.{f.name}"])[()].item()
        elif f.default is MISSING:
            raise ModelError(f"{solver} solver state lacks {f.name!r}")
    return cls(
        theta=np.array(arrays["theta"], dtype=np.float64, copy=True),
        n_iter=int(np.asarray(arrays["n_iter"])[()]),
        n_evals=int(np.asarray(arrays["n_evals"])[()]),
        loss=float(np.asarray(arrays["loss"])[()]),
        grad_norm=float(np.asarray(arrays["grad_norm"])[()]),
        status=status,
        message=str(np.asarray(arrays["message"])[()]),
        **own,
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


def measure(problem: Problem, theta: np.ndarray, grad: np.ndarray) -> float:
    """The optimality measure at ``theta`` given ``grad = grad f(theta)`` (``state.grad_norm``).

    ``problem.optimality(theta, grad)`` when supplied; else the norm of the minimum-norm subgradient of
    ``F`` (:meth:`Penalty.optimality`; ``||grad||_2`` for a smooth problem).
    """
    if problem.optimality is not None:
        return float(problem.optimality(theta, grad))
    return problem.nonsmooth.optimality(theta, grad)


def penalty_and_optimality(problem: Problem, theta: np.ndarray, grad: np.ndarray) -> tuple[float, float]:
    """``(P(theta), measure(problem, theta, grad))``."""
    return problem.nonsmooth.value(theta), measure(problem, theta, grad)


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


def start_state(problem: Problem, theta: np.ndarray, options: SolverOptions
                ) -> tuple[dict[str, Any], float, np.ndarray]:
    """Evaluate ``theta`` (one ``fun`` call): the common fields of a solver's initial state.

    The state is final when the start is not finite ("diverged"), already optimal ("converged",
    ``n_iter`` 0), or ``max_iter`` is 0. Returns those fields (keyword arguments of a
    :class:`SolverState` subclass), ``f(theta)`` and the (private) gradient.
    """
    f, grad = evaluate(problem, theta)
    penalty, gnorm = penalty_and_optimality(problem, theta, grad)
    loss = f + penalty
    status, message = None, ""
    if not (math.isfinite(loss) and math.isfinite(gnorm)):
        status, message = "diverged", not_finite_at_start(loss, gnorm, not np.any(theta))
    elif gnorm <= options.tol:
        status = "converged"
    elif options.max_iter == 0:
        status, message = "max_iter", max_iter_message(options, gnorm)
    common = {"theta": theta, "n_iter": 0, "n_evals": 1, "loss": loss, "grad_norm": gnorm, "status": status,
              "message": message}
    return common, f, grad


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


def check_state(state: SolverState, cls: type[SolverState]) -> None:
    """Refuse to step a finished state, or a state another solver made."""
    if not isinstance(state, cls):
        raise ConfigError(f"this solver state was made by solver {state.solver!r}, not {cls.solver!r}")
    if state.status is not None:
        raise ConfigError(f"the run is already over (status {state.status!r}); start a new one")


def finish(state: S, options: SolverOptions) -> S:
    """``state`` with ``converged`` / ``max_iter`` set when it just completed an iteration that ends
    the run (``state`` itself otherwise)."""
    if state.status is None:
        if state.grad_norm <= options.tol:
            return replace(state, status="converged")
        if state.n_iter >= options.max_iter:
            return replace(state, status="max_iter", message=max_iter_message(options, state.grad_norm))
    return state


def reopen(state: S, options: SolverOptions) -> S:
    """A resumed state under the resumed run's ``max_iter`` and ``tol``: a run that ended ``max_iter``
    or ``converged`` goes on when the new limits allow more (a larger ``max_iter``, a smaller ``tol``);
    ``stalled`` and ``diverged`` runs stay over."""
    if state.status not in ("max_iter", "converged"):
        return state
    return finish(replace(state, status=None, message=""), options)


__all__ = [
    "EPS",
    "STATE_TYPES",
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
    "make_state",
    "max_iter_message",
    "measure",
    "norm",
    "penalty_and_optimality",
    "reopen",
    "stalled_message",
    "start_state",
    "state_from_arrays",
    "state_to_arrays",
    "state_type",
    "suggested_lr",
]
