"""Typed contracts of a fit: what is asked (:class:`FitSpec`), what the data pass found (:class:`FitPlan`),
and what comes back (:class:`FitResult`). Pure; everything here pickles and travels to the workers.

Configuration (``dask.config`` ``dlogit.*``) is read once, on the client, into the spec; workers never
read their own config for a fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dlogit.family import Classes, Family, ParamLayout, class_multipliers, family_for
from dlogit.objective import Reparam, column_spread, preconditioner
from dlogit.stats import ChunkStats


@dataclass(frozen=True)
class CheckpointSpec:
    """Where and how often the driver writes the solver's whole state (see :mod:`dlogit.checkpoint`)."""

    directory: str
    every: float = 30.0
    resume: bool = False
    #: file mode of the checkpoints (default: the client's umask applied to 0o666, wherever they are
    #: written -- a worker's own umask may differ)
    mode: int | None = None


@dataclass(frozen=True)
class FitSpec:
    """Everything a fit needs besides the data; resolved and validated on the client."""

    run: str
    solver: str
    max_iter: int
    tol: float
    lr: float = 0.1
    l2: float = 0.01
    l1: float = 0.0
    fit_intercept: bool = True
    class_weight: Any = None  # None, "balanced" or a tuple of (label, weight) pairs
    init: str = "zeros"
    random_state: int | None = None
    memory: int = 10
    cpu_kernel: str = "auto"
    precondition: bool = True
    max_classes: int = field(kw_only=True)  # dlogit.max-classes, read by the client (no default here)
    period: int = 1000
    interval: float = 0.5
    checkpoint: CheckpointSpec | None = None
    #: a starting point in the model's coordinates (warm starts along a regularization path)
    warm_start: np.ndarray | None = field(default=None, compare=False, repr=False)
    #: extra fields for the start event (data shape, dtype, source, path membership ...)
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def with_(self, **changes: Any) -> FitSpec:
        return replace(self, **changes)

    def trajectory(self) -> dict[str, Any]:
        """The parameters that determine the sequence of iterates (a resumed checkpoint must match)."""
        cw = self.class_weight
        return {"solver": self.solver, "lr": float(self.lr), "l2": float(self.l2), "l1": float(self.l1),
                "fit_intercept": bool(self.fit_intercept),
                "class_weight": cw if cw is None or isinstance(cw, str) else [[str(k), float(v)] for k, v in cw],
                "init": self.init, "random_state": self.random_state, "memory": int(self.memory),
                "precondition": bool(self.precondition), "warm_start": self.warm_start is not None}


@dataclass(frozen=True)
class FitPlan:
    """What the validation pass decided: classes, family, layout, weights, preconditioner, start."""

    classes: Classes
    family: Family
    layout: ParamLayout
    multipliers: np.ndarray | None  # per-class weight multipliers (class_weight), or None
    weighted: bool
    weight_sum: float
    n_rows: int
    n_features: int
    reparam: Reparam
    theta0: np.ndarray
    data_fingerprint: str
    sparse: bool = False
    stats: ChunkStats | None = field(default=None, repr=False, compare=False)
    #: the standardized coordinates (each column centred when there is an intercept, and divided by
    #: its standard deviation) in which the preconditioned solvers measure their (sub)gradient: the
    #: scale-free stopping rule
    standardize: Reparam | None = field(default=None, repr=False, compare=False)
    #: the folds of a cross-validated path (:class:`dlogit.folds.FoldPlan`), or None for one fit
    folds: Any = field(default=None, repr=False, compare=False)

    def row_weights(self, codes: np.ndarray, sample_weight: Any) -> Any:
        """A chunk's effective row weights (sample weights times class multipliers), or None."""
        if self.multipliers is None:
            return sample_weight
        mult = self.multipliers[np.asarray(codes)]
        if sample_weight is None:
            return mult
        from dlogit._xp import get_xp

        xp = get_xp(sample_weight)
        return sample_weight * xp.asarray(mult)


def make_plan(spec: FitSpec, stats: ChunkStats, weighted_input: bool) -> FitPlan:
    """Decide the fit from the merged statistics of the whole data set (pure, deterministic)."""
    from dlogit.errors import DataError

    if stats.rows == 0:
        raise DataError("no rows to train on (the data is empty)")
    if stats.n_features == 0:
        raise DataError("no feature columns to train on")
    values, counts, sums = stats.labels
    classes = Classes.from_counts(values, counts, sums, max_classes=spec.max_classes)
    if weighted_input:
        check_class_weights(classes)
    family = family_for(classes.n)
    layout = ParamLayout(stats.n_features, family.n_outputs(classes.n))
    mult = class_multipliers(classes, spec.class_weight)
    weight_sum = float(stats.weight_sum if mult is None else np.dot(mult, classes.weight_sums))
    if not weight_sum > 0:
        raise DataError("the row weights sum to 0: nothing to fit")
    reparam = make_reparam(spec, layout, stats, spec.l2)
    theta0 = initial_theta(spec, layout)
    # the column moments are weighted: their total weight is the weight sum (the row count unweighted)
    std = column_spread(stats.col_max, stats.col_sum, stats.col_sq, stats.weight_sum)
    mean = stats.col_max * stats.col_sum / stats.weight_sum if spec.fit_intercept else np.zeros_like(std)
    standardize = Reparam(layout, std, np.where(np.isfinite(mean), mean, 0.0))
    return FitPlan(classes, family, layout, mult, bool(weighted_input or mult is not None), weight_sum,
                   stats.rows, stats.n_features, reparam, theta0, stats.fingerprint(),
                   sparse=stats.nnz < stats.rows * stats.n_features, stats=stats, standardize=standardize)


def check_class_weights(classes: Classes) -> None:
    """Every class needs positive total row weight: a class whose rows all weigh 0 is absent from the
    loss, and the fit would 'converge' to a model that can never predict it (or to one class)."""
    from dlogit.errors import DataError

    zero = np.flatnonzero(~(classes.weight_sums > 0))
    if zero.size:
        k = int(zero[0])
        label = classes.display(k + 1)[k]
        rows = int(classes.counts[k])
        more = f" (and {zero.size - 1} more class(es))" if zero.size > 1 else ""
        raise DataError(f"class {label} has zero total sample weight{more}: all its {rows} row(s) weigh 0, "
                        "so the fit cannot learn it; give them positive weights or drop them")


def make_reparam(spec: FitSpec, layout: ParamLayout, stats: ChunkStats, l2: float) -> Reparam:
    """The solver's coordinates: preconditioned (L-BFGS, Newton) unless turned off or ``gd``."""
    if spec.precondition and spec.solver != "gd":
        scale, shift = preconditioner(stats.col_max, stats.col_sum, stats.col_sq, stats.weight_sum,
                                      center=spec.fit_intercept, l2=l2)
        return Reparam(layout, scale, shift)
    return Reparam.identity(layout)


def initial_theta(spec: FitSpec, layout: ParamLayout) -> np.ndarray:
    """The starting point: a warm start, zeros, or standard normal coefficients (intercepts 0)."""
    if spec.warm_start is not None:
        theta = np.asarray(spec.warm_start, dtype=np.float64)
        if theta.shape != (layout.size,):
            from dlogit.errors import ConfigError

            raise ConfigError(f"warm start has {theta.size} parameters, the model {layout.size}")
        return theta.copy()
    theta = np.zeros(layout.size)
    if spec.init == "normal":
        k = layout.n_outputs * layout.n_features
        theta[:k] = np.random.default_rng(spec.random_state).standard_normal(k)
    return theta


@dataclass
class FitResult:
    """A finished (or interrupted) fit; NumPy only, picklable."""

    theta: np.ndarray
    n_iter: int
    status: str
    loss: float
    grad_norm: float
    message: str
    history_loss: np.ndarray
    history_grad_norm: np.ndarray
    history_step_seconds: np.ndarray
    classes: Classes
    family: str
    n_features: int
    n_rows: int
    weight_sum: float
    weighted: bool
    mode: str = ""
    kernel: str = ""
    resumed_from: int | None = None
    n_nonzero: int = 0
    sparse: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> ParamLayout:
        return ParamLayout(self.n_features, 1 if self.family == "binomial" else self.classes.n)
