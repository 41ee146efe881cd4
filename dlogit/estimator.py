"""``LogisticRegression``: the scikit-learn estimator over every input dlogit trains on.

Binary and multinomial logistic regression over any labels, with sample and class weights and L2 / L1
penalties, minimizing (rows with weights ``s_i``, classes in sorted label order)::

    K = 2:  f = sum_i s_i [log(1 + e^{z_i}) - y_i z_i] / sum_i s_i + l2 ||w||^2 + l1 ||w||_1,
            z = x.w + b,  y_i = 1 for classes_[1]
    K > 2:  f = sum_i s_i [logsumexp_k z_ik - z_{i,y_i}] / sum_i s_i + l2 ||W||_F^2 + l1 ||W||_1,
            z_i = W x_i + b

Intercepts are never penalized. With ``l1 = 0`` this is scikit-learn's
``LogisticRegression(C=1 / (2 * l2 * sum_i s_i))``.
"""

from __future__ import annotations

import os
import time
import warnings
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from dlogit import engine
from dlogit._xp import get_xp, is_cupy, to_numpy
from dlogit.config import get_bool
from dlogit.errors import ConfigError, ConvergenceWarning, ModelError
from dlogit.events import new_run_id
from dlogit.family import Classes, get_family
from dlogit.spec import CheckpointSpec, FitResult, FitSpec

#: estimator parameters written to (and read from) the model file
PARAMS = ("solver", "l2", "l1", "lr", "max_iter", "tol", "fit_intercept", "class_weight", "init",
          "random_state", "chunk_rows", "progress_period", "mode")


def _sklearn_validation() -> tuple[Any, Any, Any]:
    """scikit-learn's parameter constraints (``Interval``, ``StrOptions``) and their error: what every
    scikit-learn estimator's ``_parameter_constraints`` uses, yet private in name (no public import
    exists) -- the one place dlogit imports them (tests/test_private_apis.py pins what they do)."""
    from sklearn.utils import _param_validation

    return _param_validation.Interval, _param_validation.StrOptions, _param_validation.InvalidParameterError


Interval, StrOptions, InvalidParameterError = _sklearn_validation()


class ParameterError(ConfigError, InvalidParameterError):  # type: ignore[misc, valid-type]  # (a name bound by _sklearn_validation)
    """A parameter outside its allowed values (a :class:`ConfigError` and scikit-learn's error)."""


class LogisticRegression(ClassifierMixin, BaseEstimator):
    """Logistic regression (binary or multinomial) on NumPy, CuPy, SciPy-sparse or Dask data.

    The objective is written in the module docstring. In-memory data (NumPy, CuPy, SciPy sparse,
    lists, pandas) trains in this process; Dask arrays train on the given or current Dask client.

    Parameters
    ----------
    solver : {"lbfgs", "gd", "newton"}, default "lbfgs"
        ``"lbfgs"`` (OWL-QN when ``l1 > 0``), ``"gd"`` (fixed-step gradient descent; proximal with L1),
        ``"newton"`` (trust-region Newton-CG with distributed Hessian-vector products; no L1).
    l2 : float, default 0.01
        L2 strength (``l2 * ||W||^2``). 0 disables it.
    l1 : float, default 0.0
        L1 strength (``l1 * ||W||_1``): sparse coefficients with exact zeros.
    lr : float, default 0.1
        Learning rate of ``"gd"``.
    max_iter : int, optional
        Iteration cap; default 10001 for ``"gd"``, 1000 for ``"lbfgs"``, 100 for ``"newton"``.
    tol : float, optional
        Stop when the gradient's norm (with L1: the minimum-norm subgradient's) is at most ``tol``;
        for ``"lbfgs"`` and ``"newton"`` measured in standardized coordinates (each column centred
        and divided by its standard deviation), so the rule does not depend on the columns' units;
        default 0 (run every step) for ``"gd"`` and 1e-6 otherwise.
    fit_intercept : bool, default True
    class_weight : dict, "balanced" or None
        Multiplies each row's weight by its class's weight; ``"balanced"`` uses ``S / (K S_k)``
        (``S_k`` the weight of class k, ``S`` the total), scikit-learn's definition.
    init : {"zeros", "normal"}, default "zeros"
        Starting coefficients (intercepts start at 0): zeros, or standard normal draws (the textbook).
    random_state : int, optional
        Seed of ``init="normal"``.
    chunk_rows : int, optional
        Rows per chunk for in-memory arrays (default: about ``dlogit.chunk-bytes`` per chunk).
    progress_period : int, default 1000
        A progress event is sent at every step that is a multiple of this.
    mode : {"auto", "worker-local", "distributed"}
        How Dask arrays are trained (see :mod:`dlogit.engine`). Data that trains in this process
        (in-memory input, or Dask input with no client) has no mode: anything but ``"auto"`` warns.

    Attributes
    ----------
    coef_ : ndarray (1, n_features) binary, (K, n_features) multinomial
    intercept_ : ndarray (1,) or (K,) -- multinomial intercepts are centred (mean 0)
    classes_ : ndarray (K,) of the original labels, sorted
    n_features_in_, feature_names_in_ (when fitted on a DataFrame)
    n_iter_, loss_, grad_norm_, status_ ("converged", "max_iter", "stalled", "diverged")
    n_nonzero_ : int -- nonzero coefficients (intercepts excluded)
    history_ : dict of ndarrays ``loss``, ``grad_norm``, ``step_seconds``
    fit_seconds_, mode_, kernel_, run_id_, class_counts_
    """

    _parameter_constraints: ClassVar[dict] = {
        "solver": [StrOptions({"lbfgs", "gd", "newton"})],
        "l2": [Interval(Real, 0, None, closed="left")],
        "l1": [Interval(Real, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left"), None],
        "tol": [Interval(Real, 0, None, closed="left"), None],
        "fit_intercept": ["boolean"],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "init": [StrOptions({"zeros", "normal"})],
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
        "chunk_rows": [Interval(Integral, 1, None, closed="left"), None],
        "progress_period": [Interval(Integral, 1, None, closed="left")],
        "mode": [StrOptions({"auto", "worker-local", "distributed"})],
    }

    def __init__(self, solver: str = "lbfgs", l2: float = 0.01, l1: float = 0.0, lr: float = 0.1,
                 max_iter: int | None = None, tol: float | None = None, fit_intercept: bool = True,
                 class_weight: Any = None, init: str = "zeros", random_state: int | None = None,
                 chunk_rows: int | None = None, progress_period: int = 1000, mode: str = "auto") -> None:
        self.solver = solver
        self.l2 = l2
        self.l1 = l1
        self.lr = lr
        self.max_iter = max_iter
        self.tol = tol
        self.fit_intercept = fit_intercept
        self.class_weight = class_weight
        self.init = init
        self.random_state = random_state
        self.chunk_rows = chunk_rows
        self.progress_period = progress_period
        self.mode = mode

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = False
        tags.classifier_tags.multi_class = True
        tags.target_tags.required = True
        return tags

    # ---------------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        try:
            self._validate_params()
        except InvalidParameterError as exc:
            raise ParameterError(str(exc)) from None
        import math

        from dlogit.solvers import get

        for name in ("l2", "l1", "lr", "tol"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(float(value)):
                raise ParameterError(f"The {name!r} parameter of LogisticRegression must be finite, got {value!r}")
        solver = get(self.solver)
        if self.l1 > 0 and not solver.supports_l1:
            raise ParameterError(f"solver {self.solver!r} does not support l1; use 'lbfgs' (OWL-QN) or 'gd'")

    def make_spec(self, n_features: int | None = None, *, checkpoint: Any = None,
                  run: str | None = None, warm_start: np.ndarray | None = None,
                  info: dict[str, Any] | None = None) -> FitSpec:
        """The :class:`~dlogit.spec.FitSpec` of a fit with these parameters (config read here, once)."""
        import dask

        from dlogit.solvers import get

        self._check_params()
        solver = get(self.solver)
        max_iter = solver.default_max_iter if self.max_iter is None else int(self.max_iter)
        tol = solver.default_tol if self.tol is None else float(self.tol)
        cw = self.class_weight
        if isinstance(cw, dict):
            cw = tuple(sorted(((k, float(v)) for k, v in cw.items()), key=lambda kv: str(kv[0])))
        return FitSpec(
            run=run or new_run_id(), solver=self.solver, max_iter=max_iter, tol=tol, lr=float(self.lr),
            l2=float(self.l2), l1=float(self.l1), fit_intercept=bool(self.fit_intercept), class_weight=cw,
            init=self.init, random_state=self.random_state, cpu_kernel=engine.cpu_kernel_setting(),
            precondition=get_bool("dlogit.precondition"),
            max_classes=int(dask.config.get("dlogit.max-classes")),
            period=int(self.progress_period), interval=float(dask.config.get("dlogit.monitor.interval")),
            checkpoint=_checkpoint_spec(checkpoint), warm_start=warm_start, info=dict(info or {}))

    # ---------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, sample_weight: Any = None, *, client: Any = None, checkpoint: Any = None,
            callback: Any = None) -> LogisticRegression:
        """Fit on ``X`` (n, d) and labels ``y`` (n,), optionally weighted by ``sample_weight`` (n,).

        In-memory inputs (NumPy, CuPy, SciPy sparse, lists, pandas, pyarrow) train in this process;
        Dask arrays train on ``client`` or the current Dask client (computed here when there is none).
        ``checkpoint`` (a directory or :class:`dlogit.Checkpoint`) writes the solver state every
        ``dlogit.checkpoint-every`` seconds and when interrupted; ``Checkpoint(dir, resume=True)``
        continues it. ``callback`` receives every progress event (ARCHITECTURE.md).
        """
        from dlogit import inputs

        self._check_params()
        data = inputs.prepare_fit(self, X, y, sample_weight, client)
        self._check_target(data)
        spec = self.make_spec(data.n_features, checkpoint=checkpoint, info=data.info)
        t0 = time.perf_counter()
        if data.dask:
            result = engine.fit_dask(data.client, data.X, data.y, data.w, spec, callback, mode=self.mode)
        else:
            result = engine.fit_arrays(data.X_chunks, data.y_chunks, data.w_chunks, spec, callback)
        self.fit_seconds_ = time.perf_counter() - t0
        self._set_result(result, spec)
        return self

    def _check_target(self, data: Any) -> None:
        """Before a fit: the workers of a Dask fit's client run this dlogit, dask and distributed
        (:func:`dlogit.cluster.check_versions_once`: a :class:`~dlogit.errors.ClusterError` naming the
        worker and package otherwise, as the CLI says it; once per client); a ``mode`` that cannot
        apply (the data trains in this process) is a warning, not silently ignored."""
        if data.dask:
            from dlogit.cluster import check_versions_once

            check_versions_once(data.client)
        elif self.mode != "auto":
            warnings.warn(f"mode={self.mode!r} is ignored: this data trains in this process (mode applies "
                          "to Dask arrays on a Dask client: pass client= or use dask.array input on a "
                          "running cluster)", UserWarning, stacklevel=3)

    def _set_result(self, r: FitResult, spec: FitSpec) -> None:
        layout = r.layout
        theta = np.asarray(r.theta, dtype=np.float64)
        coef = np.array(layout.coef(theta), copy=True)
        intercept = np.array(layout.intercept(theta), copy=True)
        if not self.fit_intercept:
            intercept[:] = 0.0
        elif r.family == "multinomial":
            intercept -= intercept.mean()
        self.coef_ = coef
        self.intercept_ = intercept
        self.classes_ = r.classes.values
        self.class_counts_ = r.classes.counts
        self.n_features_in_ = r.n_features
        self.n_iter_ = int(r.n_iter)
        self.loss_ = float(r.loss)
        self.grad_norm_ = float(r.grad_norm)
        self.status_ = r.status
        self.message_ = r.message
        self.n_nonzero_ = int(r.n_nonzero)
        self.run_id_ = spec.run
        self.mode_ = r.mode
        self.kernel_ = r.kernel
        self.family_ = r.family
        self.weighted_ = bool(r.weighted)
        self.resumed_from_ = r.resumed_from
        self.history_ = {"loss": r.history_loss, "grad_norm": r.history_grad_norm,
                         "step_seconds": r.history_step_seconds}
        if self.status_ == "diverged":
            warnings.warn(f"{self.solver} diverged: {r.message}", ConvergenceWarning, stacklevel=3)
        elif self.status_ in ("max_iter", "stalled") and spec.tol > 0:
            why = r.message or ("increase max_iter" if self.status_ == "max_iter" else "loosen tol")
            warnings.warn(f"{self.solver} did not converge in {self.n_iter_} iterations: {why}",
                          ConvergenceWarning, stacklevel=3)

    # ---------------------------------------------------------------------------------------------
    @property
    def _family(self) -> Any:
        return get_family("binomial" if self.coef_.shape[0] == 1 else "multinomial")

    def _check_X(self, X: Any) -> tuple[Any, bool]:
        from dlogit import inputs

        check_is_fitted(self, "coef_")
        return inputs.prepare_predict(self, X)

    def decision_function(self, X: Any) -> Any:
        """Margins: (n,) for a binary model, (n, K) multinomial; in X's namespace (lazy for Dask)."""
        X, lazy = self._check_X(X)
        fam, coef, b = self._family, self.coef_, self.intercept_
        if lazy:
            k = coef.shape[0]
            return engine.map_chunks(lambda c: fam.decision(c, coef, b), X,
                                     n_out=None if k == 1 else k)
        return fam.decision(X, coef, b)

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities (n, K), columns in ``classes_`` order."""
        X, lazy = self._check_X(X)
        fam, coef, b = self._family, self.coef_, self.intercept_
        K = len(self.classes_)
        if lazy:
            return engine.map_chunks(lambda c: fam.proba(fam.decision(c, coef, b)), X, n_out=K)
        return fam.proba(fam.decision(X, coef, b))

    def predict_log_proba(self, X: Any) -> Any:
        """Log of :meth:`predict_proba`."""
        p = self.predict_proba(X)
        if engine.is_dask_array(p):
            import dask.array as da

            return da.log(p)
        return get_xp(p).log(p)

    def predict(self, X: Any) -> Any:
        """Predicted labels (values of ``classes_``)."""
        X, lazy = self._check_X(X)
        fam, coef, b, classes = self._family, self.coef_, self.intercept_, self.classes_
        if lazy:
            return engine.map_chunks(lambda c: classes[to_numpy(fam.predict_codes(fam.decision(c, coef, b)))],
                                     X, dtype=classes.dtype)
        codes = fam.predict_codes(fam.decision(X, coef, b))
        if is_cupy(codes) and classes.dtype.kind in "biuf":
            return get_xp(codes).asarray(classes)[codes]
        return classes[to_numpy(codes)]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy (weighted by ``sample_weight``); computed on the workers for Dask input."""
        pred = self.predict(X)
        if engine.is_dask_array(pred) or engine.is_dask_array(y):
            import dask.array as da

            from dlogit import inputs

            yy = inputs.as_dask_labels(y, pred)
            hit = (pred == yy).astype(np.float64)
            if sample_weight is not None:
                sw = da.asarray(sample_weight).rechunk(hit.chunks)
                return float(((hit * sw).sum() / sw.sum()).compute())
            return float(hit.mean().compute())
        from sklearn.metrics import accuracy_score

        return float(accuracy_score(to_numpy(y), to_numpy(pred),
                                    sample_weight=None if sample_weight is None else to_numpy(sample_weight)))

    def summary(self, X: Any, y: Any, sample_weight: Any = None, *, client: Any = None) -> Any:
        """Coefficient table of a binary fit: coefficient, standard error, z, p-value, 95 % interval.

        The standard errors come from the Hessian at the fitted coefficients on ``(X, y)`` (the data of
        the fit), reduced over its chunks (on the workers for Dask data). Unpenalized fits give the usual
        maximum-likelihood standard errors; L2-penalized ones those of the penalized estimator
        (:mod:`dlogit.summary`). ``print(model.summary(X, y))`` prints the table; ``.frame`` is a
        pandas DataFrame.
        """
        from dlogit.summary import model_summary

        check_is_fitted(self, "coef_")
        return model_summary(self, X, y, sample_weight, client)

    # ---------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], **extra_meta: Any) -> None:
        """Write the model to ``path`` (.npz, see :mod:`dlogit.model_io`)."""
        from dlogit.model_io import save_arrays

        if not hasattr(self, "coef_"):
            raise ModelError("this LogisticRegression is not fitted yet: call fit() or load_model()")
        import dlogit

        classes = np.asarray(self.classes_)
        names = getattr(self, "feature_names_in_", None)
        params = self._saved_params()
        meta = {"params": params, "family": self._family.name, "n_classes": len(classes),
                "class_counts": [int(c) for c in getattr(self, "class_counts_", [])],
                "classes_kind": Classes(classes, np.zeros(len(classes), np.int64), np.zeros(len(classes))).kind,
                "feature_names": None if names is None else [str(n) for n in names],
                "n_nonzero": int(np.count_nonzero(self.coef_)), "weighted": bool(getattr(self, "weighted_", False)),
                "n_iter": self.n_iter_, "status": self.status_, "loss": self.loss_,
                "grad_norm": self.grad_norm_, "fit_seconds": getattr(self, "fit_seconds_", None),
                "n_features": self.n_features_in_, "dlogit_version": dlogit.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra_meta}
        hist = getattr(self, "history_", {})
        arrays = {"coef": self.coef_, "intercept": self.intercept_, "classes": classes,
                  **{f"history_{k}": np.asarray(hist.get(k, np.empty(0)), np.float64)
                     for k in ("loss", "grad_norm", "step_seconds")}}
        arrays.update(getattr(self, "_extra_arrays", {}))
        save_arrays(path, arrays, meta)


    def _saved_params(self) -> dict[str, Any]:
        """The parameters written to the model file (JSON)."""
        params = {k: getattr(self, k) for k in PARAMS}
        if isinstance(params["class_weight"], dict):
            params["class_weight"] = {str(k): float(v) for k, v in params["class_weight"].items()}
        return params


def _checkpoint_spec(checkpoint: Any) -> CheckpointSpec | None:
    if checkpoint is None:
        return None
    import dask

    if isinstance(checkpoint, CheckpointSpec):
        spec = checkpoint
    else:
        every = dask.utils.parse_timedelta(dask.config.get("dlogit.checkpoint-every", "30s"))
        spec = CheckpointSpec(os.fspath(checkpoint), every=float(every), resume=False)
    from dlogit.checkpoint import check_directory
    from dlogit.files import current_umask

    mode = spec.mode if spec.mode is not None else 0o666 & ~current_umask()  # the client's umask
    spec = CheckpointSpec(os.path.abspath(spec.directory), spec.every, spec.resume, mode)
    check_directory(spec.directory, spec.resume)
    return spec


def load_model(path: str | os.PathLike[str]) -> LogisticRegression:
    """Load a model saved with :meth:`LogisticRegression.save` (NumPy only: no Dask, no GPU)."""
    from dlogit.model_io import load_arrays

    arrays, meta = load_arrays(path)
    params = dict(meta.get("params", {}))
    known = set(PARAMS)
    kwargs = {k: v for k, v in params.items() if k in known}
    model = LogisticRegression(**kwargs)
    model.coef_ = np.asarray(arrays["coef"], dtype=np.float64)
    model.intercept_ = np.asarray(arrays["intercept"], dtype=np.float64).reshape(-1)
    model.classes_ = np.asarray(arrays["classes"])
    model.class_counts_ = np.asarray(meta.get("class_counts", []), dtype=np.int64)
    model.n_features_in_ = model.coef_.shape[1]
    names = meta.get("feature_names") or (meta.get("source") or {}).get("feature_names")
    if names and len(names) == model.n_features_in_:
        model.feature_names_in_ = np.asarray(names, dtype=object)
    model.n_iter_ = int(meta.get("n_iter", 0))
    model.status_ = meta.get("status", "")
    model.loss_ = float(meta.get("loss", float("nan")))
    model.grad_norm_ = float(meta.get("grad_norm", float("nan")))
    model.n_nonzero_ = int(np.count_nonzero(model.coef_))
    model.family_ = "binomial" if model.coef_.shape[0] == 1 else "multinomial"
    model.weighted_ = bool(meta.get("weighted", False))
    model.history_ = {k: np.asarray(arrays.get(f"history_{k}", np.empty(0)))
                      for k in ("loss", "grad_norm", "step_seconds")}
    model.meta_ = meta
    return model


__all__ = ["LogisticRegression", "ParameterError", "load_model"]
