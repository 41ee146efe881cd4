"""Standard errors of a binary model's coefficients from the Hessian at its optimum (``summary()``).

For the objective ``f = sum_i s_i l_i / S + l2 ||w||^2`` the Hessian of ``S f`` (the weighted
log-likelihood's negative, plus the penalty) at the optimum is ``I + 2 S l2 P`` with
``I = [X 1]^T diag(s p (1 - p)) [X 1]`` (the observed Fisher information, reduced over chunks along the
fixed tree) and ``P`` the identity on the coefficients (not the intercept). The covariance is its
inverse: for an unpenalized fit these are the usual maximum-likelihood standard errors (statsmodels'
``Logit``; integer sample weights count as repeated rows); for an L2-penalized fit they are those of
the penalized estimator (the inverse of the penalized Hessian, which does not account for the
penalty's bias -- read them as approximate). Fits with L1, multinomial models and more than
:data:`MAX_FEATURES` features are refused with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dlogit.errors import ConfigError

MAX_FEATURES = 5000
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Summary:
    """Coefficient table of a binary model (rows: features, then the intercept)."""

    names: list[str]
    coef: np.ndarray
    std_err: np.ndarray
    penalized: bool
    n_rows: int

    @property
    def z(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.coef / self.std_err

    @property
    def p_value(self) -> np.ndarray:
        from scipy.stats import norm

        return 2.0 * norm.sf(np.abs(self.z))

    @property
    def ci_low(self) -> np.ndarray:
        return self.coef - Z95 * self.std_err

    @property
    def ci_high(self) -> np.ndarray:
        return self.coef + Z95 * self.std_err

    @property
    def frame(self) -> Any:
        """A pandas DataFrame: coef, std_err, z, p_value, ci_low, ci_high."""
        import pandas as pd

        return pd.DataFrame({"coef": self.coef, "std_err": self.std_err, "z": self.z, "p_value": self.p_value,
                             "ci_low": self.ci_low, "ci_high": self.ci_high}, index=self.names)

    def __str__(self) -> str:
        width = max([9] + [len(n) for n in self.names])
        head = (f"{'':<{width}}  {'coef':>11} {'std err':>11} {'z':>8} {'P>|z|':>8} "
                f"{'[0.025':>11} {'0.975]':>11}")
        lines = [head, "-" * len(head)]
        for i, name in enumerate(self.names):
            lines.append(f"{name:<{width}}  {self.coef[i]:>11.4g} {self.std_err[i]:>11.4g} {self.z[i]:>8.3f} "
                         f"{self.p_value[i]:>8.3g} {self.ci_low[i]:>11.4g} {self.ci_high[i]:>11.4g}")
        note = ("standard errors of the L2-penalized estimator (inverse penalized Hessian)" if self.penalized
                else "maximum-likelihood standard errors (inverse observed Fisher information)")
        lines.append(f"{self.n_rows} rows; {note}")
        return "\n".join(lines)


def _penalty(model: Any, name: str) -> float:
    """The penalty the model was fitted with: ``l2_`` / ``l1_`` where a CV model chose one from a grid."""
    value = getattr(model, name + "_", None)
    if value is None:
        value = getattr(model, name, 0.0)
    return float(value or 0.0)


def check_summary_allowed(model: Any) -> None:
    if model.coef_.shape[0] != 1:
        raise ConfigError("summary() is for binary models (this one has "
                          f"{model.coef_.shape[0]} coefficient rows)")
    if _penalty(model, "l1") > 0:
        raise ConfigError("summary() needs an unpenalized or L2-penalized fit: an L1 fit's standard errors "
                          "are not given by its Hessian")
    d = model.coef_.shape[1]
    if d > MAX_FEATURES:
        raise ConfigError(f"summary() needs a {d} x {d} Hessian: refused above {MAX_FEATURES} features")


def summarize(model: Any, hessian_sum: np.ndarray, weight_sum: float, n_rows: int) -> Summary:
    """The table from the reduced ``(d + 1)^2`` Fisher information of the data at the model."""
    d = model.coef_.shape[1]
    H = np.array(hessian_sum, dtype=np.float64)
    l2 = _penalty(model, "l2")
    if l2:
        H[:d, :d] += 2.0 * weight_sum * l2 * np.eye(d)
    keep = d + 1 if model.fit_intercept else d
    try:
        cov = np.linalg.inv(H[:keep, :keep])
    except np.linalg.LinAlgError:
        raise ConfigError("the Hessian at the optimum is singular (collinear columns?): no standard "
                          "errors") from None
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    names = [str(n) for n in getattr(model, "feature_names_in_", [f"x{j}" for j in range(d)])]
    coef = model.coef_[0]
    if model.fit_intercept:
        names, coef = names + ["intercept"], np.r_[coef, model.intercept_[0]]
    return Summary(names, np.asarray(coef, np.float64), se, penalized=bool(l2), n_rows=int(n_rows))



def binomial_hessian(X: Any, codes: Any, sample_weight: Any, coef: Any, intercept: float,
                     fit_intercept: bool = True) -> np.ndarray:
    """``[X 1]^T diag(s p (1 - p)) [X 1]`` of one chunk ((d + 1) x (d + 1) float64 on the host; without
    intercept the last row and column are 0): the Hessian of its weighted loss sum, for standard errors."""
    from dlogit._xp import get_xp, to_numpy
    from dlogit.family import Binomial
    from dlogit.kernels.policy import CPU_BLOCK_BYTES

    sparse = hasattr(X, "nnz")
    xp = get_xp(X.data if sparse else X)
    n, d = (int(v) for v in X.shape)
    out = np.zeros((d + 1, d + 1))
    w = xp.asarray(np.asarray(coef, dtype=np.float64).reshape(-1))
    fam = Binomial()
    sign = fam.target(np.asarray(to_numpy(codes)), xp)
    sw = None if sample_weight is None else xp.asarray(sample_weight, dtype=xp.float64)
    rows = max(64, CPU_BLOCK_BYTES // max(1, 8 * d)) if xp is np else max(n, 1)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        Xb = X[lo:hi]
        if not sparse and Xb.dtype != np.float64:
            Xb = Xb.astype(xp.float64)
        z = Xb @ w
        z = xp.asarray(z.toarray() if hasattr(z, "toarray") else z).reshape(-1) + float(intercept)
        _, _, D = fam.terms(z, sign[lo:hi], None if sw is None else sw[lo:hi], True, class_axis=None)
        if sparse:
            XD = Xb.multiply(D.reshape(-1, 1)).tocsr()
            H = (Xb.T @ XD).toarray()
            col = to_numpy(XD.sum(axis=0)).reshape(-1)
        else:
            XD = Xb * D[:, None]
            H = to_numpy(Xb.T @ XD)
            col = to_numpy(XD.sum(axis=0))
        out[:d, :d] += H
        if fit_intercept:
            out[:d, d] += col
            out[d, :d] += col
            out[d, d] += float(D.sum())
    return out


def _chunk_hessian(X: Any, y: Any, w: Any, classes: np.ndarray, mult: Any, coef: np.ndarray, b: float,
                   fit_intercept: bool) -> tuple[np.ndarray, float, int]:
    from dlogit._xp import to_numpy
    from dlogit.family import Classes

    cls = Classes(classes, np.zeros(len(classes), np.int64), np.zeros(len(classes)))
    codes = cls.encode(y)
    sw = None if w is None else np.asarray(to_numpy(w), dtype=np.float64)
    if mult is not None:
        sw = mult[codes] if sw is None else sw * mult[codes]
    total = float(len(codes)) if sw is None else float(sw.sum())
    return binomial_hessian(X, codes, sw, coef, b, fit_intercept), total, len(codes)


def _add(a: tuple[np.ndarray, float, int], b: tuple[np.ndarray, float, int]) -> tuple[np.ndarray, float, int]:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def model_summary(model: Any, X: Any, y: Any, sample_weight: Any = None, client: Any = None) -> Summary:
    """``model.summary(X, y)``: the Hessian reduced over the data's chunks (on the workers for Dask data,
    along the fixed tree), then the table."""
    import dask

    from dlogit import engine, inputs
    from dlogit.family import Classes, class_multipliers, label_counts
    from dlogit.objective import node_sum

    check_summary_allowed(model)
    coef, b = model.coef_[0], float(model.intercept_[0])
    classes = np.asarray(model.classes_)
    lazy = inputs.is_dask_input(X, y, sample_weight)
    if lazy:
        import dask.array as da

        client = client if client is not None else engine.current_client()
        X, _ = inputs.prepare_predict(model, X)
        if X.numblocks[1] > 1:
            X = X.rechunk({1: -1})  # one block of whole rows per chunk: each chunk's Hessian needs them
        y = inputs.as_dask_labels(y, X[:, 0])
        w = None if sample_weight is None else inputs.as_dask_labels(sample_weight, X[:, 0])
        xs, ys = X.to_delayed().ravel(), y.to_delayed().ravel()
        ws = [None] * len(xs) if w is None else list(w.to_delayed().ravel())
        counts = [dask.delayed(label_counts)(yy, ww) for yy, ww in zip(ys, ws)]
        from dlogit.family import merge_label_counts

        merged = dask.delayed(merge_label_counts)(counts)
        merged = client.compute(merged).result() if client is not None else merged.compute()
        del da
    else:
        X, _ = inputs.prepare_predict(model, X)
        y = np.asarray(y)
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        merged = label_counts(y, w)
    mult = None
    if getattr(model, "class_weight", None) is not None:
        mult = class_multipliers(Classes.from_counts(*merged), model.class_weight)
    args = (classes, mult, coef, b, bool(model.fit_intercept))
    if lazy:
        parts = [dask.delayed(_chunk_hessian)(xx, yy, ww, *args) for xx, yy, ww in zip(xs, ys, ws)]
        root = node_sum(parts.__getitem__, 0, len(parts), lambda p, q: dask.delayed(_add)(p, q))
        H, total, n = client.compute(root).result() if client is not None else root.compute()
    else:
        from dlogit.data import chunk_rows_for, row_ranges

        per = chunk_rows_for(X.shape[1], 8, None)
        ranges = row_ranges(X.shape[0], per)
        H, total, n = node_sum(lambda i: _chunk_hessian(X[ranges[i][0]:ranges[i][1]],
                                                        y[ranges[i][0]:ranges[i][1]],
                                                        None if w is None else w[ranges[i][0]:ranges[i][1]],
                                                        *args), 0, len(ranges), _add)
    return summarize(model, H, total, n)
