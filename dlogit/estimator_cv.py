"""``LogisticRegressionCV``: a regularization path with cross-validation, then a refit on all the data.

Every ``LogisticRegression`` parameter applies (solver, tol, max_iter, class_weight, ...); ``l2`` or
``l1`` may be a list of values or an ``int`` (a log grid from the largest useful penalty). The folds
of one penalty are fitted together, one pass over the data per step (:mod:`dlogit.cv`).
"""

from __future__ import annotations

import time
import warnings
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np

from dlogit.cv import CV_SPLITS, SCORINGS, PathResult, PathSpec, is_grid, worst_status
from dlogit.engine.local import path_on_chunks
from dlogit.errors import ConfigError, ConvergenceWarning
from dlogit.estimator import Interval, InvalidParameterError, LogisticRegression, ParameterError, StrOptions

_GRID = [Interval(Real, 0, None, closed="left"), Interval(Integral, 1, None, closed="left"), "array-like"]


class LogisticRegressionCV(LogisticRegression):
    """Logistic regression with its penalty chosen by K-fold cross-validation along a path.

    Parameters
    ----------
    l2 : float, list of floats, or int, default 10
        L2 penalties to try (an ``int``: that many log-spaced values from ``50 * lambda_max`` down
        to ``1e-4`` times that, ``lambda_max`` being the largest coefficient gradient of the mean loss
        at the intercept-only model).
    l1 : float, list of floats, or int, default 0.0
        L1 penalties to try (an ``int``: log-spaced from ``lambda_max``, where every coefficient is
        zero, down to ``1e-3 * lambda_max``). When both are lists every combination is tried.
    cv : int, "contiguous", a splitter, or an iterable of (train, test) splits, default 5
        An ``int`` K gives K folds split as ``cv_split`` says: by default **stratified**, exactly the
        folds of scikit-learn's ``StratifiedKFold(K)`` (no shuffling: each class's rows, in order, dealt
        to the folds in contiguous runs), computed chunk by chunk without moving data (Dask data too).
        ``"contiguous"`` is ``cv=5, cv_split="contiguous"``; ``None`` is ``cv=5``. Any scikit-learn splitter, or a list of
        ``(train, test)`` index pairs, works for in-memory data when its test sets partition the rows
        and each split trains on all the other rows. A fold whose training part would lack a class, or
        whose held-out part would have no rows, is refused (:class:`~dlogit.DataError`); a class with
        fewer rows than folds is a warning (some held-out folds have none of it), as in scikit-learn.
    cv_split : {"stratified", "contiguous"}, default "stratified"
        How an ``int`` ``cv`` splits the rows: ``"stratified"`` as ``StratifiedKFold(K)``,
        ``"contiguous"`` as ``KFold(K)`` (K runs of consecutive rows, the first ``n % K`` one row longer;
        on rows sorted by label these hold out whole classes, which is refused). A splitter ``cv``
        splits itself: ``cv_split="contiguous"`` with one is an error.
    scoring : {"neg_log_loss", "accuracy"}, default "neg_log_loss"
        Held-out score, higher is better (weighted by ``sample_weight``).
    refit : bool, default True
        Refit on all the data at the best penalty (warm-started from the folds' mean solution).
    Every other parameter is :class:`LogisticRegression`'s.

    Attributes
    ----------
    l2_, l1_ : the chosen penalties; ``best_index_``, ``best_score_``
    cv_results_ : dict like ``GridSearchCV.cv_results_`` (``params``, ``param_l2``, ``param_l1``,
        ``mean_test_score``, ``std_test_score``, ``split{k}_test_score``, ``rank_test_score``,
        ``n_iter``)
    path_ : :class:`dlogit.cv.PathResult` -- every point's fold models
    and, after ``refit``, every attribute of :class:`LogisticRegression`.
    """

    _parameter_constraints: ClassVar[dict] = {
        **LogisticRegression._parameter_constraints,
        "l2": _GRID,
        "l1": _GRID,
        "cv": [Interval(Integral, 2, None, closed="left"), StrOptions({"contiguous"}), "cv_object"],
        "cv_split": [StrOptions(set(CV_SPLITS))],
        "scoring": [StrOptions(set(SCORINGS))],
        "refit": ["boolean"],
    }

    def __init__(self, l2: Any = 10, l1: Any = 0.0, cv: Any = 5, cv_split: str = "stratified",
                 scoring: str = "neg_log_loss", refit: bool = True, solver: str = "lbfgs", lr: float = 0.1,
                 max_iter: int | None = None,
                 tol: float | None = None, fit_intercept: bool = True, class_weight: Any = None,
                 init: str = "zeros", random_state: int | None = None, chunk_rows: int | None = None,
                 progress_period: int = 1000, mode: str = "auto") -> None:
        super().__init__(solver=solver, l2=l2, l1=l1, lr=lr, max_iter=max_iter, tol=tol,
                         fit_intercept=fit_intercept, class_weight=class_weight, init=init,
                         random_state=random_state, chunk_rows=chunk_rows, progress_period=progress_period,
                         mode=mode)
        self.cv = cv
        self.cv_split = cv_split
        self.scoring = scoring
        self.refit = refit

    def _scalar(self, name: str) -> float:
        v = getattr(self, name)
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            return float(v)
        return 0.0

    def make_spec(self, n_features: int | None = None, **kw: Any) -> Any:
        """The spec of one fit (the path sets the penalties of each point)."""
        params = self.get_params()
        base = LogisticRegression(**{k: v for k, v in params.items() if k in LogisticRegression().get_params()})
        base.l2 = self._scalar("l2") if not is_grid(self.l2) else 0.0
        base.l1 = self._scalar("l1") if not is_grid(self.l1) else 0.0
        if is_grid(self.l1) or self.l1:
            from dlogit.solvers import get

            if not get(self.solver).supports_l1:
                raise ParameterError(f"solver {self.solver!r} does not support l1; use 'lbfgs' or 'gd'")
        return base.make_spec(n_features, **kw)

    def _check_params(self) -> None:
        try:
            self._validate_params()
        except InvalidParameterError as exc:
            raise ParameterError(str(exc)) from None

    def fit(self, X: Any, y: Any, sample_weight: Any = None, *, client: Any = None, checkpoint: Any = None,
            callback: Any = None) -> LogisticRegressionCV:
        """Fit the path with cross-validation, choose the penalty, and refit (see the class docstring)."""
        from dlogit import engine, inputs

        self._check_params()
        if checkpoint is not None:
            raise ConfigError("checkpoints are not written for cross-validation paths (each point is short)")
        data = inputs.prepare_fit(self, X, y, sample_weight, client)
        self._check_target(data)
        spec = self.make_spec(data.n_features, info=data.info)
        t0 = time.perf_counter()
        folds, split = self._folds(data)
        path = PathSpec(self.l2, self.l1, folds, self.scoring, split)
        if data.dask:
            result = engine.fit_path_dask(data.client, data.X, data.y, data.w, spec, path, callback,
                                          mode=self.mode)
        else:
            ws = data.w_chunks if data.w_chunks is not None else [None] * len(data.X_chunks)
            result = path_on_chunks(list(zip(data.X_chunks, data.y_chunks, ws)), spec, path,
                                    callback or (lambda m: None), mode="in-process",
                                    weighted=data.w_chunks is not None)
        for note in result.extra.get("notes", ()):
            warnings.warn(note, UserWarning, stacklevel=2)
        self._set_path(result)
        if self.refit:
            best = result.points[result.best]
            params = {k: v for k, v in self.get_params().items() if k in LogisticRegression().get_params()}
            params.update(l2=best.l2, l1=best.l1)
            final = LogisticRegression(**params)
            fspec = final.make_spec(data.n_features, warm_start=best.thetas.mean(axis=0), info=data.info)
            if data.dask:
                r = engine.fit_dask(data.client, data.X, data.y, data.w, fspec, callback, mode=self.mode)
            else:
                r = engine.fit_arrays(data.X_chunks, data.y_chunks, data.w_chunks, fspec, callback)
            self._set_result(r, fspec)
            self._extra_arrays = self._path_arrays()
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _folds(self, data: Any) -> tuple[Any, str]:
        """The path's folds: ``(K, split)`` for ``cv=K`` / ``"contiguous"``, or the explicit folds of a
        splitter or of an iterable of splits (in-memory data)."""
        from dlogit.folds import ExplicitFolds

        if isinstance(self.cv, str):  # "contiguous" (the constraint allows nothing else)
            return 5, "contiguous"
        if self.cv is None or isinstance(self.cv, (int, np.integer)):  # None: 5, as scikit-learn's check_cv
            return 5 if self.cv is None else int(self.cv), self.cv_split
        if self.cv_split != "stratified":
            raise ConfigError(f"cv_split={self.cv_split!r} applies to cv=K; a splitter splits the rows "
                              "itself")
        if data.dask:
            raise ConfigError("a cross-validation splitter needs in-memory data; on Dask data give "
                              "cv=K (stratified folds) or cv='contiguous'")
        n = sum(int(x.shape[0]) for x in data.X_chunks)
        if hasattr(self.cv, "split"):
            yall = np.concatenate([np.asarray(c) for c in data.y_chunks])
            splits = list(self.cv.split(np.empty((n, 0)), yall))
        else:
            splits = list(self.cv)
        return ExplicitFolds.from_splits(splits, n), "explicit"

    def _set_path(self, result: PathResult) -> None:
        pts = result.points
        scores = np.array([p.fold_scores for p in pts])
        means = scores.mean(axis=1)
        # GridSearchCV's ranks: ties share the best rank of the tie (rankdata's "min")
        rank = 1 + (means[None, :] > means[:, None]).sum(axis=1).astype(np.int64)
        res: dict[str, Any] = {
            "params": [{"l2": p.l2, "l1": p.l1} for p in pts],
            "param_l2": np.array([p.l2 for p in pts]), "param_l1": np.array([p.l1 for p in pts]),
            "mean_test_score": means, "std_test_score": scores.std(axis=1), "rank_test_score": rank,
            "n_iter": np.array([int(p.n_iter.max()) for p in pts]),
            "status": np.array([worst_status(list(p.status)) for p in pts]),
        }
        for k in range(scores.shape[1]):
            res[f"split{k}_test_score"] = scores[:, k]
        self.cv_results_ = res
        self.best_index_ = result.best
        self.best_score_ = float(means[result.best])
        self.l2_ = pts[result.best].l2
        self.l1_ = pts[result.best].l1
        self.path_ = result
        fits = [st for p in pts for st in p.status]
        bad = [st for st in fits if st != "converged"]
        if bad:
            kinds = ", ".join(f"{bad.count(k)} {k}" for k in ("diverged", "stalled", "max_iter") if k in bad)
            warnings.warn(f"{len(bad)} of {len(fits)} fold fits did not converge ({kinds}): their scores "
                          "may not be those of the optimum (raise max_iter, or tol for 'stalled')",
                          ConvergenceWarning, stacklevel=3)

    def _path_arrays(self) -> dict[str, np.ndarray]:
        pts = self.path_.points
        return {"cv_l2": np.array([p.l2 for p in pts]), "cv_l1": np.array([p.l1 for p in pts]),
                "cv_scores": np.array([p.fold_scores for p in pts])}

    def _saved_params(self) -> dict[str, Any]:
        """The refit model's parameters (the chosen penalties; a loaded model is a LogisticRegression)."""
        return {**super()._saved_params(), "l2": float(self.l2_), "l1": float(self.l1_)}

    def save(self, path: Any, **extra_meta: Any) -> None:
        split = self.cv_split if self.cv is None or isinstance(self.cv, (int, np.integer)) else (
            "contiguous" if isinstance(self.cv, str) else "explicit")
        cv = {"scoring": self.scoring, "best_index": int(self.best_index_), "split": split,
              "folds": int(self.path_.points[0].fold_scores.size), "l2": self.l2_, "l1": self.l1_,
              "l2_grid": [p.l2 for p in self.path_.points], "l1_grid": [p.l1 for p in self.path_.points]}
        super().save(path, cv=cv, **extra_meta)

