"""A regularization path with cross-validation: every fold of a penalty fitted in one pass per step.

For each penalty of the path (the largest first), the ``m`` fold models are trained *together*: each
fold has its own solver (the same solver, tolerances and warm start a separate fit would use), running
in its own thread, and every objective evaluation a solver asks for is batched with those of the other
folds into one pass over the data (:class:`dlogit.folds.FoldChunk`: one read of X serves all ``m``
fold gradients). Each fold's iterates are those of a separate fit on its training rows up to the
rounding of the sums (the fold's rows are summed inside each chunk's block rather than alone), so the
scores equal scikit-learn's ``GridSearchCV`` over the same folds to the solvers' tolerance. The next penalty starts every fold
from its solution at the previous one (warm start down the path). Held-out scores come from one more
pass per penalty. Nothing here knows where the chunks live: a :class:`FoldSource` evaluates them.

Scores (higher is better, like scikit-learn's scorers): ``neg_log_loss`` (the held-out mean
cross-entropy, negated, weighted by the sample weights) and ``accuracy``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from dlogit.errors import ConfigError, DataError, Interrupted
from dlogit.events import ProgressEmitter, Send
from dlogit.family import class_multipliers
from dlogit.objective import Objective
from dlogit.spec import FitPlan, FitSpec, make_reparam

SCORINGS = ("neg_log_loss", "accuracy")


class FoldSource(Protocol):
    """All chunks of the data, evaluated per fold (the sum over chunks along the fixed tree)."""

    n_folds: int

    def fold_sums(self, thetas: np.ndarray, mult: np.ndarray | None, models: list[int]) -> np.ndarray: ...

    def fold_hvp(self, thetas: np.ndarray, vs: np.ndarray, mult: np.ndarray | None,
                 models: list[int]) -> np.ndarray: ...

    def fold_scores(self, thetas: np.ndarray) -> np.ndarray: ...

    def class_weight_sums(self, n_classes: int) -> np.ndarray: ...


@dataclass
class PathPoint:
    l2: float
    l1: float
    fold_scores: np.ndarray
    n_iter: np.ndarray
    status: list[str]
    thetas: np.ndarray  # (m, P) the fold models, model coordinates

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_scores))

    @property
    def std(self) -> float:
        return float(np.std(self.fold_scores))


@dataclass
class PathResult:
    points: list[PathPoint]
    scoring: str
    best: int
    path_id: str
    extra: dict[str, Any] = field(default_factory=dict)


def score_from_sums(scoring: str, sums: np.ndarray) -> np.ndarray:
    """Fold scores from held-out sums (loss sum, correct count, weight) per fold."""
    weight = np.where(sums[:, 2] > 0, sums[:, 2], np.nan)
    if scoring == "neg_log_loss":
        return -sums[:, 0] / weight
    if scoring == "accuracy":
        return sums[:, 1] / weight
    raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")


def penalty_grid(values: Any, kind: str, lam_max: float, n_default: int = 10) -> list[float]:
    """The penalties of a path, largest first: given values, or ``int`` (>= 2) log-spaced ones from ``lam_max``
    (the smallest L1 penalty that zeroes every coefficient; for L2, 50 times that gradient scale) down
    a ratio of 1e-4 (L2) or 1e-3 (L1)."""
    if is_count(values):
        n = int(values)
        top = lam_max * (50.0 if kind == "l2" else 1.0)
        ratio = 1e-4 if kind == "l2" else 1e-3
        if not top > 0:
            raise ConfigError(f"cannot build a {kind} path: the gradient at the intercept-only model is 0")
        return [float(v) for v in np.geomspace(top, top * ratio, n)] if n > 1 else [float(top)]
    vals = [float(v) for v in np.atleast_1d(values)]
    if not vals or any(not (math.isfinite(v) and v >= 0) for v in vals):
        raise ConfigError(f"{kind} values must be finite and >= 0, got {values!r}")
    return sorted(vals, reverse=True)


class _Batcher:
    """Collects one request per live fold thread, evaluates them together, hands the answers back."""

    def __init__(self, m: int) -> None:
        self.cond = threading.Condition()
        self.live = set(range(m))
        self.pending: dict[int, tuple[str, np.ndarray, np.ndarray | None]] = {}
        self.answers: dict[int, Any] = {}
        self.abort: BaseException | None = None

    def request(self, f: int, kind: str, theta: np.ndarray, v: np.ndarray | None = None) -> Any:
        with self.cond:
            if self.abort is not None:
                raise _Aborted()
            self.pending[f] = (kind, np.array(theta, copy=True), None if v is None else np.array(v, copy=True))
            self.cond.notify_all()
            while f not in self.answers:
                if self.abort is not None:
                    raise _Aborted()
                self.cond.wait()
            return self.answers.pop(f)

    def done(self, f: int) -> None:
        with self.cond:
            self.live.discard(f)
            self.cond.notify_all()

    def next_batch(self) -> dict[int, tuple[str, np.ndarray, np.ndarray | None]] | None:
        with self.cond:
            while self.live and not all(f in self.pending for f in self.live):
                self.cond.wait(0.5)
            if not self.live:
                return None
            batch, self.pending = self.pending, {}
            return batch

    def answer(self, answers: dict[int, Any]) -> None:
        with self.cond:
            self.answers.update(answers)
            self.cond.notify_all()

    def stop(self, exc: BaseException) -> None:
        with self.cond:
            self.abort = exc
            self.cond.notify_all()


class _Aborted(Exception):
    pass


class _FoldEvaluator:
    """One fold's view for :class:`dlogit.training.FitProblem`: sums / H.v answered by the batcher."""

    kernel = "folds"

    def __init__(self, batcher: _Batcher, f: int) -> None:
        self.batcher, self.f = batcher, f

    def sums(self, theta: np.ndarray) -> np.ndarray:
        return self.batcher.request(self.f, "sums", theta)

    def hvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.batcher.request(self.f, "hvp", theta, v)


def fold_plans(spec: FitSpec, plan: FitPlan, source: FoldSource) -> tuple[np.ndarray | None, np.ndarray]:
    """Per-fold class multipliers (``class_weight`` computed on each training fold, as a separate fit
    would) and per-fold weight sums (the objectives' denominators). A fold whose training part has no
    weight of a class the data has is refused (its model could never predict that class)."""
    K = plan.classes.n
    sums = source.class_weight_sums(K)  # (m, K)
    total = np.asarray(plan.classes.weight_sums, np.float64)
    lacking = np.argwhere((sums <= 0) & (total[None, :] > 0))
    if len(lacking):
        f, k = (int(v) for v in lacking[0])
        name = plan.classes.display(K)[k]
        rows = int(plan.classes.counts[k])
        zero = " (or only rows of weight 0)" if plan.weighted else ""
        hint = ""
        if plan.folds is not None and type(plan.folds.scheme).__name__ == "KFoldScheme":
            hint = ("; contiguous folds of rows sorted by label hold out whole classes: use stratified "
                    "folds (the default)")
        raise DataError(f"fold {f}'s training part has no rows of class {name}{zero}: all {rows} of its "
                        f"rows are held out by that fold{hint}")
    mults = []
    for f in range(source.n_folds):
        cls = replace(plan.classes, weight_sums=sums[f])
        m = class_multipliers(cls, spec.class_weight)
        mults.append(np.ones(K) if m is None else m)
    mult = np.asarray(mults)
    weight_sums = (mult * sums).sum(axis=1)
    if np.any(weight_sums <= 0):
        raise DataError(f"fold {int(np.argmin(weight_sums))}'s training part has no weight: use fewer folds")
    return (None if spec.class_weight is None else mult), weight_sums


class _Seen:
    """How far the fold fits of one penalty got: rounds of evaluation, their mean loss and largest
    gradient norm (what an interrupted point reports)."""

    def __init__(self) -> None:
        self.rounds, self.loss, self.grad_norm = 0, math.nan, math.nan


def fit_folds(source: FoldSource, spec: FitSpec, plan: FitPlan, mult: np.ndarray | None,
              weight_sums: np.ndarray, starts: np.ndarray, emitter: ProgressEmitter,
              stop: Callable[[], str | None] | None, seen: _Seen | None = None
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Train the ``m`` fold models of one penalty together; their solutions (model coordinates)."""
    from dlogit.objective import fit_penalty
    from dlogit.solvers import SolverOptions, get
    from dlogit.training import FitProblem, precision_name, solver_problem

    m = source.n_folds
    solver = get(spec.solver)
    opts = SolverOptions(max_iter=spec.max_iter, tol=spec.tol, lr=spec.lr, memory=spec.memory, l2=spec.l2,
                         precision=precision_name(spec.info.get("dtype")))
    batcher = _Batcher(m)
    results: list[Any] = [None] * m
    errors: list[BaseException] = []
    penalty = fit_penalty(plan.layout, l1=spec.l1, l2=spec.l2)

    def run(f: int) -> None:
        try:
            obj = Objective(plan.layout, float(weight_sums[f]), fit_intercept=spec.fit_intercept,
                            penalty=penalty)
            fplan = replace(plan, theta0=starts[f])
            problem = FitProblem(_FoldEvaluator(batcher, f), obj, fplan, penalty, solver.needs_hvp)
            sp = solver_problem(problem)
            th0 = starts[f] if plan.reparam.is_identity else plan.reparam.to_solver(starts[f])
            state = solver.init(sp, th0, opts)
            while state.status is None:
                state = solver.step(sp, state, opts)
                progress[f] = (state.n_iter, state.loss, state.grad_norm)
            results[f] = (problem.user(np.asarray(state.theta)), state)
        except _Aborted:
            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised in the driving thread
            errors.append(exc)
            batcher.stop(exc)
        finally:
            batcher.done(f)

    progress: dict[int, tuple[int, float, float]] = {}
    seen = seen if seen is not None else _Seen()
    threads = [threading.Thread(target=run, args=(f,), name=f"dlogit-fold-{f}", daemon=True) for f in range(m)]
    for t in threads:
        t.start()
    rounds = 0
    try:
        while True:
            batch = batcher.next_batch()
            if batch is None or errors:
                break
            reason = stop() if stop is not None else None
            if reason is not None:
                raise Interrupted(reason)
            answers = _evaluate_batch(source, batch, m, plan.layout.size, mult)
            batcher.answer(answers)
            if progress:
                rounds += 1
                vals = list(progress.values())
                seen.rounds, seen.loss = rounds, float(np.mean([v[1] for v in vals]))
                seen.grad_norm = float(np.max([v[2] for v in vals]))
                emitter.step(rounds - 1, seen.loss, seen.grad_norm)
    except BaseException as exc:
        batcher.stop(exc)
        for t in threads:
            t.join(timeout=5)
        raise
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    thetas = np.stack([r[0] for r in results])
    return thetas, np.array([r[1].n_iter for r in results]), [r[1].status for r in results]


def _evaluate_batch(source: FoldSource, batch: dict[int, tuple[str, np.ndarray, np.ndarray | None]], m: int,
                    P: int, mult: np.ndarray | None) -> dict[int, Any]:
    """One pass per kind of request, over only the folds that asked (in fold order: deterministic)."""
    out: dict[int, Any] = {}
    sums = sorted(f for f, (kind, _, _) in batch.items() if kind == "sums")
    if sums:
        got = source.fold_sums(np.stack([batch[f][1] for f in sums]), mult, sums)
        out.update(zip(sums, got))
    hvps = sorted(f for f, (kind, _, _) in batch.items() if kind == "hvp")
    if hvps:
        got = source.fold_hvp(np.stack([batch[f][1] for f in hvps]), np.stack([batch[f][2] for f in hvps]),
                              mult, hvps)
        out.update(zip(hvps, got))
    return out


def run_path(source: FoldSource, spec: FitSpec, plan: FitPlan, penalties: list[tuple[float, float]],
             scoring: str, send: Send, *, mode: str, info: dict[str, Any] | None = None,
             stop: Callable[[], str | None] | None = None, path_id: str | None = None) -> PathResult:
    """Fit the path (penalties largest first, warm-started) and score every fold; see the module."""
    if scoring not in SCORINGS:
        raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    path_id = path_id or f"{spec.run}/path"
    mult, weight_sums = fold_plans(spec, plan, source)
    m = source.n_folds
    starts = np.tile(plan.theta0, (m, 1))
    points: list[PathPoint] = []
    t0 = time.time()
    for k, (l2, l1) in enumerate(penalties):
        s = spec.with_(run=f"{spec.run}/p{k}", l2=float(l2), l1=float(l1))
        p = replace(plan, reparam=make_reparam(s, plan.layout, plan.stats, l2)) if plan.stats is not None else plan
        emitter = ProgressEmitter(send, s.run, n_rows=plan.n_rows, row_bytes=plan.n_features * 8,
                                  period=spec.period, interval=spec.interval)
        from dlogit.training import start_params

        cv = {"folds": m, "index": k, "of": len(penalties), "l2": float(l2), "l1": float(l1)}
        emitter.start({**start_params(s, p, mode, "folds", None, dict(info or {})), "cv": cv, "path": path_id})
        seen = _Seen()
        try:
            thetas, n_iter, status = fit_folds(source, s, p, mult, weight_sums, starts, emitter, stop, seen)
        except KeyboardInterrupt as exc:  # Ctrl-C, a stop request, or a signal turned into one
            reason = getattr(exc, "message", None) or "interrupted"
            text = interrupted_text(reason, k, len(penalties), points, scoring)
            emitter.end("interrupted", seen.rounds, seen.loss, seen.grad_norm, text)
            raise Interrupted(text, getattr(exc, "signum", None)) from None
        except BaseException as exc:
            emitter.end("failed", seen.rounds, seen.loss, seen.grad_norm, f"{type(exc).__name__}: {exc}")
            raise
        scores = score_from_sums(scoring, source.fold_scores(thetas))
        nnz = int(np.mean([np.count_nonzero(plan.layout.coef(t)) for t in thetas]))
        emitter.end(worst_status(status), int(n_iter.max()),
                    float(-scores.mean()) if scoring == "neg_log_loss" else float(scores.mean()), math.nan,
                    "", n_nonzero=nnz)
        points.append(PathPoint(float(l2), float(l1), scores, n_iter, status, thetas))
        starts = thetas
        best = _best(points)
        send({"type": "path", "run": path_id, "time": time.time(), "scoring": scoring, "folds": m,
              "points": [{"l2": q.l2, "l1": q.l1, "mean": q.mean, "std": q.std,
                          "fold_scores": [float(v) for v in q.fold_scores], "n_iter": int(q.n_iter.max()),
                          "n_nonzero": int(np.mean([np.count_nonzero(plan.layout.coef(t)) for t in q.thetas]))}
                         for q in points],
              "best": best, "done": k == len(penalties) - 1, "seconds": time.time() - t0})
    notes = list(plan.folds.notes) if plan.folds is not None else []
    return PathResult(points, scoring, _best(points), path_id, {"notes": notes})


def interrupted_text(reason: str, k: int, n_points: int, points: list[PathPoint], scoring: str) -> str:
    """What an interrupted path says: where it stopped, and the best of the points it finished."""
    text = f"{reason} during point {k + 1} of {n_points} of the cross-validation path ({k} finished"
    if points:
        b = points[_best(points)]
        text += f"; best so far l2 {b.l2:.4g}, l1 {b.l1:.4g}: {scoring} {b.mean:.6f}"
    return text + "; no penalty chosen)"


#: fold statuses from the worst: a point's status is its worst fold's
_SEVERITY = ("diverged", "stalled", "max_iter", "converged")


def worst_status(statuses: list[str]) -> str:
    """The status of a path point: its worst fold's (``converged`` only when every fold converged)."""
    return min(statuses, key=lambda st: _SEVERITY.index(st) if st in _SEVERITY else -1)


def _best(points: list[PathPoint]) -> int:
    """The point with the highest mean score (the first, i.e. the most penalized, among ties)."""
    means = np.array([p.mean for p in points])
    means = np.where(np.isfinite(means), means, -np.inf)
    return int(np.argmax(means))


def intercept_only(plan: FitPlan, fit_intercept: bool = True) -> np.ndarray:
    """The intercept-only model: coefficients 0, intercepts at the weighted class log-odds (with the
    class weights' multipliers; all 0 without an intercept)."""
    theta = np.zeros(plan.layout.size)
    if not fit_intercept:
        return theta
    S = np.asarray(plan.classes.weight_sums, dtype=np.float64)
    if plan.multipliers is not None:
        S = S * plan.multipliers
    S = np.maximum(S, 1e-300)
    plan.layout.intercept(theta)[:] = plan.family.intercept_only(S)
    return theta


def lambda_max(plan: FitPlan, sums_at: Callable[[np.ndarray], np.ndarray], fit_intercept: bool = True) -> float:
    """The largest coefficient gradient of the mean loss at the intercept-only model: the smallest L1
    penalty for which every coefficient is zero (the top of an L1 path)."""
    theta = intercept_only(plan, fit_intercept)
    s = sums_at(theta)
    g = np.asarray(s[1:], dtype=np.float64) / plan.weight_sum
    return plan.family.lambda_max(plan.layout.coef(g))


#: how ``cv=K`` splits the rows: ``stratified`` (scikit-learn's ``StratifiedKFold(K)``) or ``contiguous``
#: (``KFold(K)``)
CV_SPLITS = ("stratified", "contiguous")


@dataclass(frozen=True)
class PathSpec:
    """What a path asks: penalty values or grid sizes, the folds, the score (travels to a worker)."""

    l2: Any
    l1: Any
    folds: Any  # an int (K folds, split as ``split`` says) or an ExplicitFolds
    scoring: str = "neg_log_loss"
    split: str = "stratified"


def is_count(v: Any) -> bool:
    """An int >= 2: the number of log-spaced penalties of a grid (0 and 1 are penalties themselves)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and int(v) >= 2


def is_grid(v: Any) -> bool:
    """A list of values, or an int >= 2 (the number of log-spaced values), as opposed to one penalty."""
    if isinstance(v, (bool, np.bool_)):
        return False
    return is_count(v) or np.ndim(v) > 0


def needs_labels(path: Any) -> bool:
    """Whether the path's folds need every chunk's :func:`~dlogit.folds.chunk_labels` (stratified
    ``cv=K``)."""
    return path is not None and isinstance(path.folds, (int, np.integer)) and path.split == "stratified"


def with_folds(plan: FitPlan, path: PathSpec, chunk_rows: list[int],
               labels: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None) -> FitPlan:
    """The plan of a path: the fold scheme (``cv=K`` stratified or contiguous folds over the rows, or
    explicit ones) and every chunk's first row. Stratified folds need ``labels``, every chunk's
    :func:`~dlogit.folds.chunk_labels`, in chunk order."""
    from dlogit.folds import FoldPlan, KFoldScheme

    n = plan.n_rows
    offsets = tuple(int(v) for v in np.concatenate([[0], np.cumsum(chunk_rows)[:-1]]))
    notes: tuple[str, ...] = ()
    if isinstance(path.folds, (int, np.integer)):
        m = int(path.folds)
        if m > n:
            raise DataError(f"cv={m} folds need at least {m} rows, got {n}")
        if path.split == "contiguous":
            scheme: Any = KFoldScheme(n, m)
        elif path.split == "stratified":
            if labels is None:
                raise ValueError("stratified folds need every chunk's label summary")
            scheme, notes = stratified(plan, m, labels, offsets)
        else:
            raise ConfigError(f"cv_split must be one of {', '.join(CV_SPLITS)}, got {path.split!r}")
    else:
        scheme = path.folds
    return replace(plan, folds=FoldPlan(scheme, offsets, notes))


def stratified(plan: FitPlan, m: int, labels: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
               offsets: tuple[int, ...]) -> tuple[Any, tuple[str, ...]]:
    """``StratifiedKFold(m)``'s folds from the chunks' label summaries, checked: every training part
    has every class, every held-out part has rows; a class with fewer rows than folds is a note (as
    scikit-learn warns), every class having fewer is refused (as scikit-learn refuses)."""
    from dlogit.folds import StratifiedScheme

    K = plan.classes.n
    counts = np.zeros((len(offsets), K), np.int64)
    first = np.full(K, np.iinfo(np.int64).max, np.int64)
    for c, (values, cnt, at) in enumerate(labels):
        if len(values):
            codes = plan.classes.encode(values, what=f"labels of chunk {c}")
            np.add.at(counts[c], codes, cnt)
            np.minimum.at(first, codes, offsets[c] + at)
    total = counts.sum(axis=0)
    names = plan.classes.display(K)
    if np.all(total < m):
        k = int(np.argmax(total))
        raise DataError(f"cv={m} stratified folds need a class with at least {m} rows: the largest, class "
                        f"{names[k]}, has {int(total[k])} (use fewer folds)")
    scheme = StratifiedScheme.from_chunks(m, counts, np.argsort(first, kind="stable"))
    alloc = scheme.allocation
    empty = np.flatnonzero(alloc.sum(axis=1) == 0)
    if len(empty):
        raise DataError(f"fold {int(empty[0])} of cv={m} would hold out no rows (use fewer folds)")
    lacking = np.argwhere(alloc == total[None, :])
    if len(lacking):
        f, k = (int(v) for v in lacking[0])
        raise DataError(f"class {names[k]} has {int(total[k])} row: fold {f} holds it out and would train "
                        f"without the class (cross-validation needs at least 2 rows of every class)")
    notes = tuple(f"class {names[k]} has only {int(total[k])} rows, fewer than cv={m} folds: "
                  f"{m - int(total[k])} of the held-out folds have none of it"
                  for k in np.flatnonzero(total < m))
    return scheme, notes


def path_penalties(plan: FitPlan, path: PathSpec, sums_at: Callable[[np.ndarray], np.ndarray],
                   fit_intercept: bool = True) -> list[tuple[float, float]]:
    """The (l2, l1) points of a path, the most penalized first (lambda_max from one pass)."""
    needs = is_count(path.l2) or is_count(path.l1)
    lam = lambda_max(plan, sums_at, fit_intercept) if needs else 0.0
    l2s = penalty_grid(path.l2, "l2", lam) if is_grid(path.l2) else [float(path.l2)]
    l1s = penalty_grid(path.l1, "l1", lam) if is_grid(path.l1) else [float(path.l1)]
    return sorted({(a, b) for a in l2s for b in l1s}, key=lambda p: (-(p[0] + p[1]), -p[0]))
