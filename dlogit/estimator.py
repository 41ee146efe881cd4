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
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from dlogit.errors import ConfigError
from dlogit.model import PARAMS, LogisticModel


def _sklearn_validation() -> tuple[Any, Any, Any]:
    """scikit-learn's parameter constraints (``Interval``, ``StrOptions``) and their error: what every
    scikit-learn estimator's ``_parameter_constraints`` uses, yet private in name (no public import
    exists) -- the one place dlogit imports them (tests/test_private_apis.py pins what they do)."""
    from sklearn.utils import _param_validation

    return _param_validation.Interval, _param_validation.StrOptions, _param_validation.InvalidParameterError


Interval, StrOptions, InvalidParameterError = _sklearn_validation()


class ParameterError(ConfigError, InvalidParameterError):  # type: ignore[misc, valid-type]  # (a name bound by _sklearn_validation)
    """A parameter outside its allowed values (a :class:`ConfigError` and scikit-learn's error)."""


class LogisticRegression(ClassifierMixin, LogisticModel, BaseEstimator):
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

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = False
        tags.classifier_tags.multi_class = True
        tags.target_tags.required = True
        return tags

    # ---------------------------------------------------------------------------------------------
    def _validate_values(self) -> None:
        """scikit-learn's own check of ``_parameter_constraints`` (its error, as :class:`ParameterError`)."""
        try:
            self._validate_params()
        except InvalidParameterError as exc:
            raise ParameterError(str(exc)) from None

    def _check_params(self) -> None:
        try:
            super()._check_params()
        except ParameterError:
            raise
        except ConfigError as exc:
            raise ParameterError(str(exc)) from None

    def _prepare_fit(self, X: Any, y: Any, sample_weight: Any, client: Any) -> Any:
        """Every input through scikit-learn's checks (``n_features_in_``, ``feature_names_in_``)."""
        from dlogit import inputs

        return inputs.prepare_fit(self, X, y, sample_weight, client)

    # ---------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        check_is_fitted(self, "coef_")

    def _check_X(self, X: Any) -> tuple[Any, bool]:
        from dlogit import inputs

        check_is_fitted(self, "coef_")
        return inputs.prepare_predict(self, X)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy (weighted by ``sample_weight``); computed on the workers for Dask input."""
        return LogisticModel.score(self, X, y, sample_weight)

    @staticmethod
    def _accuracy(y: np.ndarray, pred: np.ndarray, sample_weight: np.ndarray | None) -> float:
        from sklearn.metrics import accuracy_score

        return float(accuracy_score(y, pred, sample_weight=sample_weight))

    def summary(self, X: Any, y: Any, sample_weight: Any = None, *, client: Any = None) -> Any:
        """Coefficient table of a binary fit: coefficient, standard error, z, p-value, 95 % interval.

        The standard errors come from the Hessian at the fitted coefficients on ``(X, y)`` (the data of
        the fit), reduced over its chunks (on the workers for Dask data). Unpenalized fits give the usual
        maximum-likelihood standard errors; L2-penalized ones those of the penalized estimator
        (:mod:`dlogit.summary`). ``print(model.summary(X, y))`` prints the table; ``.frame`` is a
        pandas DataFrame.
        """
        return LogisticModel.summary(self, X, y, sample_weight, client=client)


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
