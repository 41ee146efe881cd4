"""``LogisticModel``: the model itself -- its parameters, fit, predictions, score and model file -- without
scikit-learn.

:class:`dlogit.LogisticRegression` is this class with scikit-learn's estimator API on top (``get_params``,
its parameter validation and input checks for every kind of input, ``NotFittedError``). The ``dlogit``
command trains a ``LogisticModel``: importing scikit-learn (and the SciPy modules it loads) takes
longer than reading and fitting a small file, and the command's inputs are arrays dlogit's own readers
made -- NumPy (or SciPy CSR) in this process, Dask arrays on a cluster -- which the fit validates itself
(:func:`dlogit.stats.chunk_stats`: shapes, finite values, labels, weights). Any other input (lists,
pandas, CuPy, ...) goes through :mod:`dlogit.inputs`, which uses scikit-learn's checks. The same fit
runs either way (the same chunks, the same spec): the same model, bit for bit.

The objective is written in :mod:`dlogit.estimator`'s docstring.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np

from dlogit import engine
from dlogit._xp import get_xp, is_cupy, to_numpy
from dlogit.config import get_bool, setting
from dlogit.errors import ConfigError, DataError, ModelError
from dlogit.events import new_run_id
from dlogit.family import Classes, get_family
from dlogit.spec import CheckpointSpec, FitResult, FitSpec

#: estimator parameters written to (and read from) the model file
PARAMS = ("solver", "l2", "l1", "lr", "max_iter", "tol", "fit_intercept", "class_weight", "init",
          "random_state", "chunk_rows", "progress_period", "mode")

#: the parameters' allowed values, checked by :meth:`LogisticModel._validate_values` (scikit-learn's
#: ``_parameter_constraints`` of :class:`dlogit.LogisticRegression` say the same): name -> (what, low,
#: low included, None allowed) for numbers, (options, None allowed) for choices
_NUMBERS = {"l2": (Real, 0, True, False), "l1": (Real, 0, True, False), "lr": (Real, 0, False, False),
            "max_iter": (Integral, 1, True, True), "tol": (Real, 0, True, True),
            "random_state": (Integral, 0, True, True), "chunk_rows": (Integral, 1, True, True),
            "progress_period": (Integral, 1, True, False)}
_CHOICES = {"solver": ({"lbfgs", "gd", "newton"}, False), "init": ({"zeros", "normal"}, False),
            "mode": ({"auto", "worker-local", "distributed"}, False)}


class LogisticModel:
    """Logistic regression (binary or multinomial): the parameters and attributes of
    :class:`dlogit.LogisticRegression` (see there), without scikit-learn."""

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

    # ---------------------------------------------------------------------------------------------
    def _validate_values(self) -> None:
        """Each parameter within its allowed values (a :class:`ConfigError` naming it otherwise)."""
        name_of = "LogisticRegression"  # the model of dlogit.LogisticRegression, named as its errors name it

        def bad(name: str, what: str) -> ConfigError:
            return ConfigError(f"The {name!r} parameter of {name_of} must be {what}. "
                               f"Got {getattr(self, name)!r} instead.")

        for name, (kind, low, closed, none_ok) in _NUMBERS.items():
            value = getattr(self, name)
            if value is None and none_ok:
                continue
            ok = isinstance(value, kind) and not isinstance(value, bool)
            if ok:
                ok = (value >= low if closed else value > low) and value < math.inf
            if not ok:
                what, shown = ("an int", low) if kind is Integral else ("a float", float(low))
                raise bad(name, f"{what} in the range {'[' if closed else '('}{shown}, inf)"
                                + (" or None" if none_ok else ""))
        for name, (options, none_ok) in _CHOICES.items():
            value = getattr(self, name)
            if not (value is None and none_ok) and value not in options:
                raise bad(name, "a str among " + "{" + ", ".join(repr(o) for o in sorted(options)) + "}")
        if not isinstance(self.fit_intercept, (bool, np.bool_)):
            raise bad("fit_intercept", "an instance of 'bool' or an instance of 'numpy.bool'")
        cw = self.class_weight
        if not (cw is None or cw == "balanced" or isinstance(cw, dict)):
            raise bad("class_weight", "an instance of 'dict', a str among {'balanced'} or None")

    def _check_params(self) -> None:
        self._validate_values()
        from dlogit.solvers import get

        for name in ("l2", "l1", "lr", "tol"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(float(value)):
                raise ConfigError(f"The {name!r} parameter of LogisticRegression must be finite, got {value!r}")
        solver = get(self.solver)
        if self.l1 > 0 and not solver.supports_l1:
            raise ConfigError(f"solver {self.solver!r} does not support l1; use 'lbfgs' (OWL-QN) or 'gd'")

    def make_spec(self, n_features: int | None = None, *, checkpoint: Any = None,
                  run: str | None = None, warm_start: np.ndarray | None = None,
                  info: dict[str, Any] | None = None) -> FitSpec:
        """The :class:`~dlogit.spec.FitSpec` of a fit with these parameters (config read here, once)."""

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
            max_classes=int(setting("dlogit.max-classes")),
            period=int(self.progress_period), interval=float(setting("dlogit.monitor.interval")),
            checkpoint=_checkpoint_spec(checkpoint), warm_start=warm_start, info=dict(info or {}))

    # ---------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, sample_weight: Any = None, *, client: Any = None, checkpoint: Any = None,
            callback: Any = None) -> LogisticModel:
        """Fit on ``X`` (n, d) and labels ``y`` (n,), optionally weighted by ``sample_weight`` (n,).

        In-memory inputs (NumPy, CuPy, SciPy sparse, lists, pandas, pyarrow) train in this process;
        Dask arrays train on ``client`` or the current Dask client (computed here when there is none).
        ``checkpoint`` (a directory or :class:`dlogit.Checkpoint`) writes the solver state every
        ``dlogit.checkpoint-every`` seconds and when interrupted; ``Checkpoint(dir, resume=True)``
        continues it. ``callback`` receives every progress event (ARCHITECTURE.md).
        """
        self._check_params()
        data = self._prepare_fit(X, y, sample_weight, client)
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

    def _prepare_fit(self, X: Any, y: Any, sample_weight: Any, client: Any) -> Any:
        """The fit's inputs as the engine takes them (:class:`dlogit.inputs.FitData`): a dense NumPy
        float32/float64 matrix with NumPy labels (and float64 weights) is cut into row chunks here, as
        :func:`dlogit.inputs.prepare_fit` cuts it, and validated by the fit; anything else goes through
        :func:`~dlogit.inputs.prepare_fit`."""
        from dlogit import inputs

        if not _plain_arrays(X, y, sample_weight):
            if inputs.is_dask_input(X, y, sample_weight):
                return inputs.prepare_fit(self, X, y, sample_weight, client)
            proxy = self._sklearn_proxy()  # scikit-learn's checks need a scikit-learn estimator
            data = inputs.prepare_fit(proxy, X, y, sample_weight, client)
            self.__dict__.pop("feature_names_in_", None)
            self.__dict__.update({k: v for k, v in vars(proxy).items() if k.endswith("_in_")})
            return data
        from dlogit.data import chunk_rows_for, row_ranges

        n, d = (int(v) for v in X.shape)
        if y.shape[0] != n:
            raise DataError(f"X has {n} rows but y has {y.shape[0]} labels")
        if sample_weight is not None and sample_weight.shape[0] != n:
            raise DataError(f"sample_weight has {sample_weight.shape[0]} values for {n} rows")
        if n == 0:
            raise DataError("no rows to train on (the data is empty)")
        self.n_features_in_ = d
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        ranges = row_ranges(n, chunk_rows_for(d, X.dtype.itemsize, self.chunk_rows))
        ws = None if sample_weight is None else [sample_weight[s:e] for s, e in ranges]
        return inputs.FitData(dask=False, n_features=d, X_chunks=[X[s:e] for s, e in ranges],
                              y_chunks=[y[s:e] for s, e in ranges], w_chunks=ws,
                              info={"n_chunks": len(ranges), "dtype": str(X.dtype)})

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
            warnings.warn(f"{self.solver} diverged: {r.message}", _convergence_warning(), stacklevel=3)
        elif self.status_ in ("max_iter", "stalled") and spec.tol > 0:
            why = r.message or ("increase max_iter" if self.status_ == "max_iter" else "loosen tol")
            warnings.warn(f"{self.solver} did not converge in {self.n_iter_} iterations: {why}",
                          _convergence_warning(), stacklevel=3)

    # ---------------------------------------------------------------------------------------------
    @property
    def _family(self) -> Any:
        return get_family("binomial" if self.coef_.shape[0] == 1 else "multinomial")

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise ModelError(f"this {type(self).__name__} is not fitted yet: call fit() or load_model()")

    def _check_X(self, X: Any) -> tuple[Any, bool]:
        """``(X, lazy)`` for prediction: a dense NumPy float matrix of the fitted width is checked here
        (finite values); anything else by :func:`dlogit.inputs.prepare_predict`."""
        self._check_fitted()
        if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype in (np.float64, np.float32):
            d = int(self.n_features_in_)
            if X.shape[1] != d:
                raise DataError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                                f"{d} features as input.")
            if X.size and not bool(np.isfinite(X).all()):
                raise DataError(f"X contains {int((~np.isfinite(X)).sum())} NaN or infinite value(s)")
            return X, False
        from dlogit import inputs

        if inputs.is_dask_input(X):
            return inputs.prepare_predict(self, X)
        proxy = self._sklearn_proxy()
        proxy.__dict__.update({k: v for k, v in vars(self).items() if k.endswith("_in_")})
        return inputs.prepare_predict(proxy, X)

    def _sklearn_proxy(self) -> Any:
        """A :class:`dlogit.LogisticRegression` of these parameters: what scikit-learn's input checks
        (:mod:`dlogit.inputs`) take, for inputs other than plain NumPy arrays."""
        from dlogit.estimator import LogisticRegression

        return LogisticRegression(**{k: getattr(self, k) for k in PARAMS})

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
        return self._accuracy(to_numpy(y), to_numpy(pred),
                              None if sample_weight is None else to_numpy(sample_weight))

    @staticmethod
    def _accuracy(y: np.ndarray, pred: np.ndarray, sample_weight: np.ndarray | None) -> float:
        """The (weighted) share of ``pred == y``, as scikit-learn's ``accuracy_score`` averages it."""
        hit = np.asarray(y).reshape(-1) == np.asarray(pred).reshape(-1)
        return float(np.average(hit, weights=sample_weight))

    def summary(self, X: Any, y: Any, sample_weight: Any = None, *, client: Any = None) -> Any:
        """Coefficient table of a binary fit (:meth:`dlogit.LogisticRegression.summary`)."""
        from dlogit.summary import model_summary

        self._check_fitted()
        return model_summary(self, X, y, sample_weight, client)

    # ---------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], **extra_meta: Any) -> None:
        """Write the model to ``path`` (.npz, see :mod:`dlogit.model_io`)."""
        from dlogit.model_io import save_arrays

        if not hasattr(self, "coef_"):
            raise ModelError(f"this {type(self).__name__} is not fitted yet: call fit() or load_model()")
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


def _convergence_warning() -> type[Warning]:
    """:class:`dlogit.ConvergenceWarning`, made on first use (it loads scikit-learn: only a fit that
    warns pays for it)."""
    from dlogit import errors

    return errors.ConvergenceWarning


def _plain_arrays(X: Any, y: Any, w: Any) -> bool:
    """Whether the inputs are what dlogit's readers make in memory: a 2-D float32/float64 NumPy X, 1-D
    NumPy labels (numbers, or text), and float64 weights or none."""
    return (type(X) is np.ndarray and X.ndim == 2 and X.dtype in (np.float64, np.float32)
            and type(y) is np.ndarray and y.ndim == 1
            and (y.dtype.kind in "biufU" or (y.dtype.kind == "O" and all(type(v) is str for v in y)))
            and (w is None or (type(w) is np.ndarray and w.ndim == 1 and w.dtype == np.float64)))


def _checkpoint_spec(checkpoint: Any) -> CheckpointSpec | None:
    if checkpoint is None:
        return None
    import dask

    if isinstance(checkpoint, CheckpointSpec):
        spec = checkpoint
    else:
        every = dask.utils.parse_timedelta(setting("dlogit.checkpoint-every"))
        spec = CheckpointSpec(os.fspath(checkpoint), every=float(every), resume=False)
    from dlogit.checkpoint import check_directory
    from dlogit.files import current_umask

    mode = spec.mode if spec.mode is not None else 0o666 & ~current_umask()  # the client's umask
    spec = CheckpointSpec(os.path.abspath(spec.directory), spec.every, spec.resume, mode)
    check_directory(spec.directory, spec.resume)
    return spec


__all__ = ["PARAMS", "LogisticModel"]
