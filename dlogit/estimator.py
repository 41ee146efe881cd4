"""``LogisticRegression``: the scikit-learn-style estimator."""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from dlogit import engine
from dlogit._xp import get_xp, is_cupy, to_numpy
from dlogit.data import chunk_rows_for, split_array
from dlogit.errors import ConfigError, ConvergenceWarning, DataError
from dlogit.events import new_run_id
from dlogit.loss import decision, sigmoid
from dlogit.model_io import load_arrays, save_arrays
from dlogit.solvers import SOLVERS, get_solver


class LogisticRegression:
    """Binary logistic regression trained on NumPy, CuPy or Dask arrays.

    Minimizes ``(1/n) sum_i [log(1 + exp(z_i)) - y_i z_i] + l2 * ||w||^2`` with ``z = X w + b``; the
    intercept ``b`` is not penalized. This equals scikit-learn's ``LogisticRegression(C=1/(2 n l2))``.

    Parameters
    ----------
    solver : {"lbfgs", "gd"}
        ``"lbfgs"`` (default) converges in tens of iterations; ``"gd"`` is fixed-step gradient descent.
    l2 : float, default 0.01
        Penalty strength (lambda). 0 disables the penalty.
    lr : float, default 0.1
        Learning rate of ``"gd"`` (unused by ``"lbfgs"``).
    max_iter : int, optional
        Iteration cap; default 10001 for ``"gd"`` and 1000 for ``"lbfgs"``.
    tol : float, optional
        Stop when the gradient's Euclidean norm is at most ``tol``; default 0 (run every step) for
        ``"gd"`` and 1e-6 for ``"lbfgs"``.
    fit_intercept : bool, default True
    init : {"zeros", "normal"}, default "zeros"
        Starting ``w`` (``b`` starts at 0): zeros, or standard normal draws (the textbook run).
    random_state : int, optional
        Seed of ``init="normal"``.
    chunk_rows : int, optional
        Rows per chunk for in-memory arrays (default: about ``dlogit.chunk-bytes`` per chunk).
    callback : callable, optional
        Called with every progress event dict (see ARCHITECTURE.md).
    progress_period : int, default 1000
        A progress event is sent at every step that is a multiple of this.
    mode : {"auto", "worker-local", "distributed"}
        How Dask arrays are trained (see :mod:`dlogit.engine`).

    Attributes
    ----------
    coef_ : ndarray of shape (1, n_features)
    intercept_ : ndarray of shape (1,)
    classes_ : ndarray ``[0, 1]``
    n_iter_ : int
    loss_, grad_norm_ : float — objective and gradient norm at the end of the fit
    status_ : str — ``"converged"``, ``"max_iter"``, ``"stalled"`` (L-BFGS line search cannot
        progress: ``tol`` is below what float64 resolves) or ``"diverged"`` (``gd`` step too large)
    history_ : dict of ndarrays ``loss``, ``grad_norm``, ``step_seconds`` (one entry per iteration)
    fit_seconds_ : float
    mode_ : str — engine mode of the fit: ``"in-process"``, ``"worker-local"`` or ``"distributed"``
    kernel_ : str — what evaluated the chunks: ``"fused"`` or ``"blas"`` (CPU, see ``dlogit.cpu-kernel``),
        ``"cuda"`` (GPU), or a ``+``-joined mix when chunks differ
    """

    def __init__(self, solver: str = "lbfgs", l2: float = 0.01, lr: float = 0.1,
                 max_iter: int | None = None, tol: float | None = None, fit_intercept: bool = True,
                 init: str = "zeros", random_state: int | None = None, chunk_rows: int | None = None,
                 callback: Any = None, progress_period: int = 1000, mode: str = "auto") -> None:
        self.solver = solver
        self.l2 = l2
        self.lr = lr
        self.max_iter = max_iter
        self.tol = tol
        self.fit_intercept = fit_intercept
        self.init = init
        self.random_state = random_state
        self.chunk_rows = chunk_rows
        self.callback = callback
        self.progress_period = progress_period
        self.mode = mode

    # ---------------------------------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("solver", "l2", "lr", "max_iter", "tol", "fit_intercept",
                                              "init", "random_state", "chunk_rows", "callback",
                                              "progress_period", "mode")}

    def set_params(self, **params: Any) -> LogisticRegression:
        for k, v in params.items():
            if k not in self.get_params():
                raise ConfigError(f"unknown parameter {k!r}")
            setattr(self, k, v)
        return self

    def _resolved(self) -> dict[str, Any]:
        if self.solver not in SOLVERS:
            raise ConfigError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}")
        _, max_iter, tol = get_solver(self.solver)
        max_iter = max_iter if self.max_iter is None else int(self.max_iter)
        tol = tol if self.tol is None else float(self.tol)
        if max_iter < 1:
            raise ConfigError(f"max_iter must be at least 1, got {max_iter}")
        if not tol >= 0:
            raise ConfigError(f"tol must be >= 0, got {tol}")
        if not float(self.l2) >= 0:
            raise ConfigError(f"l2 must be >= 0, got {self.l2}")
        if self.solver == "gd" and not float(self.lr) > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.init not in ("zeros", "normal"):
            raise ConfigError(f"init must be 'zeros' or 'normal', got {self.init!r}")
        if self.mode not in ("auto", "worker-local", "distributed"):
            raise ConfigError(f"mode must be 'auto', 'worker-local' or 'distributed', got {self.mode!r}")
        return {"max_iter": max_iter, "tol": tol, "cpu_kernel": engine.cpu_kernel_setting()}

    def _theta0(self, d: int) -> np.ndarray:
        theta = np.zeros(d + 1)
        if self.init == "normal":
            theta[:d] = np.random.default_rng(self.random_state).standard_normal(d)
        return theta

    # ---------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, client: Any = None) -> LogisticRegression:
        """Fit on ``X`` (n, d) and 0/1 labels ``y`` (n,).

        NumPy and CuPy arrays train in this process. Dask arrays train on ``client`` or, when none is
        given, on the current Dask client; with no client at all they are computed and trained here.
        """
        opts = self._resolved()
        if getattr(X, "ndim", None) != 2:
            raise DataError(f"X must be 2-D (rows x features), got shape {getattr(X, 'shape', None)}")
        d = int(X.shape[1])
        run = new_run_id()
        params = {"solver": self.solver, "l2": float(self.l2), "lr": float(self.lr),
                  "max_iter": opts["max_iter"], "tol": opts["tol"],
                  "fit_intercept": bool(self.fit_intercept), "n_features": d,
                  "dtype": str(X.dtype), "init": self.init}
        spec = {"run": run, "solver": self.solver, "lr": float(self.lr), "l2": float(self.l2),
                "max_iter": opts["max_iter"], "tol": opts["tol"],
                "fit_intercept": bool(self.fit_intercept), "theta0": self._theta0(d),
                "period": self.progress_period, "interval": _interval(),
                "n_rows": 0, "row_bytes": d * X.dtype.itemsize, "params": params,
                "cpu_kernel": opts["cpu_kernel"]}
        t0 = time.perf_counter()
        if engine.is_dask_array(X) or engine.is_dask_array(y):
            client = client if client is not None else engine.current_client()
            if client is not None:
                import dask.array as da

                X, y = da.asarray(X), da.asarray(y)
                params["n_chunks"] = int(X.numblocks[0])
                result = engine.fit_dask(client, X, y, spec, self.callback, mode=self.mode)
            else:
                result = self._fit_arrays(np.asarray(X), np.asarray(y), spec)
        else:
            result = self._fit_arrays(X, y, spec)
        self.fit_seconds_ = time.perf_counter() - t0
        self._set_result({**result, "tol": opts["tol"]}, d, run)
        return self

    def _fit_arrays(self, X: Any, y: Any, spec: dict[str, Any]) -> dict[str, Any]:
        xp = get_xp(X)
        if is_cupy(X) != is_cupy(y):
            y = xp.asarray(to_numpy(y))
        y = xp.asarray(y)
        if y.ndim != 1:
            raise DataError(f"labels must be 1-D, got shape {tuple(y.shape)}")
        if X.shape[0] != y.shape[0]:
            raise DataError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels")
        if X.shape[0] == 0:
            raise DataError("no rows to train on (the data is empty)")
        per = chunk_rows_for(X.shape[1], X.dtype.itemsize, self.chunk_rows)
        spec["params"]["n_chunks"] = len(split_array(X, per))
        return engine.fit_arrays(split_array(X, per), split_array(y, per), spec, self.callback)

    def _set_result(self, r: dict[str, Any], d: int, run: str) -> None:
        theta = np.asarray(r["theta"], dtype=np.float64)
        self.coef_ = theta[:d].reshape(1, d).copy()
        self.intercept_ = np.array([theta[d] if self.fit_intercept else 0.0])
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = d
        self.n_iter_ = int(r["n_iter"])
        self.loss_ = float(r["loss"])
        self.grad_norm_ = float(r["grad_norm"])
        self.status_ = r["status"]
        self.run_id_ = run
        self.mode_ = r.get("mode")
        self.kernel_ = r.get("kernel")
        self.history_ = {"loss": np.asarray(r["history_loss"]),
                         "grad_norm": np.asarray(r["history_grad_norm"]),
                         "step_seconds": np.asarray(r["history_step_seconds"])}
        if self.status_ == "diverged":
            warnings.warn(f"gradient descent diverged: {r['message']}", ConvergenceWarning, stacklevel=3)
        elif self.status_ in ("max_iter", "stalled") and r["tol"] > 0:
            hint = "increase max_iter" if self.status_ == "max_iter" else "loosen tol"
            warnings.warn(f"{self.solver} did not converge in {self.n_iter_} iterations "
                          f"({r['message']}): ||grad|| = {self.grad_norm_:.3g} > tol = {r['tol']:g}; "
                          f"{hint}", ConvergenceWarning, stacklevel=3)

    # ---------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            from dlogit.errors import ModelError

            raise ModelError("this LogisticRegression is not fitted yet: call fit() or load_model()")

    def decision_function(self, X: Any) -> Any:
        """Margins ``X @ coef_.T + intercept_``, shape (n,), in X's namespace (lazy for Dask)."""
        self._check_fitted()
        if getattr(X, "ndim", None) != 2 or X.shape[1] != self.coef_.shape[1]:
            raise DataError(f"X must have {self.coef_.shape[1]} features, got shape {getattr(X, 'shape', None)}")
        coef, b = self.coef_[0], float(self.intercept_[0])
        if engine.is_dask_array(X):
            return engine.map_chunks(lambda c: decision(c, coef, b), X)
        if not is_cupy(X):
            X = np.asarray(X)
        return decision(X, coef, b)

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities, shape (n, 2): ``[P(y=0), P(y=1)]``."""
        p = sigmoid(self.decision_function(X))
        if engine.is_dask_array(p):
            import dask.array as da

            return da.stack([1 - p, p], axis=1)
        xp = get_xp(p)
        return xp.stack([1 - p, p], axis=1)

    def predict(self, X: Any) -> Any:
        """Predicted labels (0 or 1) as int64."""
        z = self.decision_function(X)
        return (z > 0).astype(np.int64)

    def score(self, X: Any, y: Any) -> float:
        """Mean accuracy."""
        pred = self.predict(X)
        if engine.is_dask_array(pred):
            pred = pred.compute()
        if engine.is_dask_array(y):
            y = y.compute()
        return float((to_numpy(pred) == to_numpy(y)).mean())

    # ---------------------------------------------------------------------------------------------
    def save(self, path: str, **extra_meta: Any) -> None:
        """Write the model to ``path`` (.npz, see :mod:`dlogit.model_io`)."""
        self._check_fitted()
        import dlogit

        meta = {"params": {k: v for k, v in self.get_params().items() if k != "callback"},
                "n_iter": self.n_iter_, "status": self.status_, "loss": self.loss_,
                "grad_norm": self.grad_norm_, "fit_seconds": getattr(self, "fit_seconds_", None),
                "n_features": self.n_features_in_, "dlogit_version": dlogit.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra_meta}
        arrays = {"coef": self.coef_, "intercept": self.intercept_, "classes": self.classes_,
                  "history_loss": self.history_["loss"], "history_grad_norm": self.history_["grad_norm"],
                  "history_step_seconds": self.history_["step_seconds"]}
        save_arrays(path, arrays, meta)


def _interval() -> float:
    import dask

    return float(dask.config.get("dlogit.monitor.interval"))


def load_model(path: str) -> LogisticRegression:
    """Load a model saved with :meth:`LogisticRegression.save` (NumPy only: no Dask, no GPU)."""
    arrays, meta = load_arrays(path)
    params = dict(meta.get("params", {}))
    known = set(LogisticRegression().get_params())
    model = LogisticRegression(**{k: v for k, v in params.items() if k in known})
    model.coef_ = np.asarray(arrays["coef"], dtype=np.float64).reshape(1, -1)
    model.intercept_ = np.asarray(arrays["intercept"], dtype=np.float64).reshape(1)
    model.classes_ = np.asarray(arrays.get("classes", np.array([0, 1])))
    model.n_features_in_ = model.coef_.shape[1]
    model.n_iter_ = int(meta.get("n_iter", 0))
    model.status_ = meta.get("status", "")
    model.loss_ = float(meta.get("loss", float("nan")))
    model.grad_norm_ = float(meta.get("grad_norm", float("nan")))
    model.history_ = {k: np.asarray(arrays.get(f"history_{k}", np.empty(0)))
                      for k in ("loss", "grad_norm", "step_seconds")}
    model.meta_ = meta
    return model
