"""Model families and the layouts they own: labels -> classes, parameters, chunk sums, link.

Two families (both array-agnostic: NumPy or CuPy, dense or sparse X):

``binomial`` (K = 2 classes, ``coef_`` (1, d)): z_i = x_i . w + b and, with y_i = 1 for ``classes_[1]``,
    l_i = log(1 + e^{z_i}) - y_i z_i,     residual r_i = sigmoid(z_i) - y_i,   curvature sigmoid(1 - sigmoid)
``multinomial`` (K >= 3, ``coef_`` (K, d), all K rows like scikit-learn): z_i = W x_i + b and, for class c_i,
    l_i = logsumexp_k z_ik - z_{i c_i},   residual R_ik = softmax(z_i)_k - [k = c_i]

The objective both minimize, with row weights s_i >= 0 (sample weights times class weights)::

    f(theta) = sum_i s_i l_i / sum_i s_i  +  l2 ||W||_F^2  +  l1 ||W||_1       (intercepts never penalized)

Layouts (the only places that know offsets):

* :class:`ParamLayout` -- ``theta`` is one flat float64 vector ``[W (K' x d, row-major), b (K')]`` with
  K' = 1 (binomial) or K (multinomial); for K' = 1 that is ``[w_1..w_d, b]``.
* :class:`SumsLayout` -- what one chunk returns: ``[loss sum, gradient sums (theta's layout)]``.

Labels: :func:`label_counts` (per chunk) and :func:`merge_label_counts` find the classes in the pass
that validates the chunks; :class:`Classes` maps labels to class codes 0..K-1 in sorted label order
(scikit-learn's ``classes_``) and back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from dlogit._xp import get_xp, to_numpy
from dlogit.errors import DataError

# --------------------------------------------------------------------------------------------------
# labels and classes


def _label_kind(values: np.ndarray) -> str:
    kind = values.dtype.kind
    if kind == "b":
        return "bool"
    if kind in "iu":
        return "int"
    if kind == "f":
        return "float"
    if kind in "US":
        return "str"
    if kind == "O":
        if all(isinstance(v, str) for v in values):
            return "str"
        if all(isinstance(v, (bool, np.bool_)) for v in values):
            return "bool"
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            return "int"
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
               for v in values):
            return "float"
        types = sorted({type(v).__name__ for v in values})
        raise DataError(f"labels mix types ({', '.join(types)}): use one type of label")
    raise DataError(f"labels must be numbers, booleans or strings, got dtype {values.dtype}")


def _canonical(values: np.ndarray, kind: str) -> np.ndarray:
    if kind == "str":
        return values.astype(str)
    if kind == "bool":
        return values.astype(bool)
    if kind == "int":
        return values.astype(np.int64)
    return values.astype(np.float64)


def label_counts(y: Any, weights: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chunk's distinct labels (sorted), their row counts and weight sums (float64).

    Raises :class:`DataError` for NaN/infinite labels, mixed label types, or non-1-D labels.
    """
    y = to_numpy(y)
    if y.ndim != 1:
        raise DataError(f"labels must be 1-D, got shape {tuple(y.shape)}")
    if y.size == 0:
        return y[:0], np.zeros(0, np.int64), np.zeros(0)
    kind = _label_kind(y if y.dtype.kind != "O" else y[: min(len(y), 1_000_000)])
    if kind == "float" and not bool(np.isfinite(y.astype(np.float64)).all()):
        raise DataError("labels contain NaN or infinite values")
    y = _canonical(y, kind)
    values, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    sums: np.ndarray
    if weights is None:
        sums = counts.astype(np.float64)
    else:
        sums = np.bincount(inverse.ravel(), weights=np.asarray(to_numpy(weights), np.float64),
                           minlength=len(values))
    return values, counts.astype(np.int64), sums


def merge_label_counts(parts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-chunk :func:`label_counts` (in the given order; exact for counts)."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.zeros(0), np.zeros(0, np.int64), np.zeros(0)
    kinds = {_label_kind(p[0]) for p in parts}
    if len(kinds) > 1:
        if kinds <= {"int", "float"}:
            parts = [(p[0].astype(np.float64), p[1], p[2]) for p in parts]
        else:
            raise DataError(f"labels mix types across chunks ({', '.join(sorted(kinds))})")
    values = np.unique(np.concatenate([p[0] for p in parts]))
    counts = np.zeros(len(values), np.int64)
    sums = np.zeros(len(values))
    for v, c, s in parts:
        idx = np.searchsorted(values, v)
        np.add.at(counts, idx, c)
        np.add.at(sums, idx, s)
    return values, counts, sums


@dataclass(frozen=True)
class Classes:
    """The classes of a fit: sorted distinct labels, their row counts and weight sums."""

    values: np.ndarray
    counts: np.ndarray
    weight_sums: np.ndarray

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def kind(self) -> str:
        return _label_kind(self.values) if self.n else "int"

    @classmethod
    def from_counts(cls, values: np.ndarray, counts: np.ndarray, weight_sums: np.ndarray | None = None,
                    max_classes: int | None = None) -> Classes:
        """Check the merged label counts of a whole data set and make its classes (at most
        ``max_classes``: a fit passes ``dlogit.max-classes``; None, classes already checked, no cap)."""
        weight_sums = counts.astype(np.float64) if weight_sums is None else weight_sums
        if len(values) == 0:
            raise DataError("no rows to train on (the data is empty)")
        if len(values) == 1:
            raise DataError(f"labels hold only one class (all {_show(values[0])}): need at least two "
                            "classes to fit")
        if values.dtype.kind == "f" and not bool(np.all(values == np.round(values))):
            bad = values[values != np.round(values)][0]
            raise DataError(f"labels look continuous (e.g. {_show(bad)}): logistic regression needs "
                            "class labels (integers, booleans or strings)")
        if max_classes is not None and len(values) > max_classes:
            raise DataError(f"labels hold {len(values)} distinct classes, more than dlogit.max-classes "
                            f"= {max_classes}; raise it if that is intended")
        return cls(np.asarray(values), np.asarray(counts, np.int64), np.asarray(weight_sums, np.float64))

    def encode(self, y: Any, what: str = "labels") -> np.ndarray:
        """Class codes (int64, 0..K-1) of labels ``y``; unknown labels are a :class:`DataError`."""
        y = to_numpy(y)
        if y.size == 0:
            return np.zeros(0, np.int64)
        original = y
        values = self.values
        numeric = ("int", "bool", "float")
        try:
            ykind = _label_kind(y if y.dtype.kind != "O" else y[: min(len(y), 1_000_000)])
        except DataError:
            ykind = None
        off = None  # labels that cannot be a class whatever their value (0.5 against int classes)
        if self.kind in numeric and ykind in numeric:
            # numbers against numeric classes compare as numbers (a cast to the classes' type first
            # would turn 0.5 or 2 into a class of {0, 1}); integers stay exact as int64
            if self.kind == "float":
                y, values = y.astype(np.float64), values.astype(np.float64)
            elif ykind == "float":
                yf = y.astype(np.float64)
                off = ~(np.isfinite(yf) & (yf == np.round(yf)) & (np.abs(yf) < 2.0 ** 63))
                y, values = np.where(off, 0.0, yf).astype(np.int64), values.astype(np.int64)
            else:
                y, values = y.astype(np.int64), values.astype(np.int64)
        elif self.kind == "bool":
            raise DataError(f"{what} are not of the model's label type (bool)")
        else:
            try:
                y = _canonical(y, self.kind)
            except (TypeError, ValueError):
                raise DataError(f"{what} are not of the model's label type ({self.kind})") from None
        codes = np.searchsorted(values, y)
        codes = np.minimum(codes, self.n - 1)
        bad = values[codes] != y
        shown = y
        if off is not None:
            bad |= off
            shown = original
        if bool(bad.any()):
            unknown = np.unique(shown[bad])[:5]
            raise DataError(f"{what} hold {int(bad.sum())} value(s) that are not classes of the model: "
                            f"{', '.join(_show(v) for v in unknown)}")
        return np.asarray(codes, dtype=np.int64)

    def decode(self, codes: Any) -> np.ndarray:
        """Labels of class codes."""
        return np.asarray(self.values[to_numpy(codes)])

    def display(self, limit: int = 100) -> list[str]:
        return [_show(v) for v in self.values[:limit]]


def _show(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v.item() if hasattr(v, "item") else v)


def class_multipliers(classes: Classes, class_weight: Any) -> np.ndarray | None:
    """Per-class weight multipliers for ``class_weight`` (``None``, ``"balanced"`` or a label -> weight map).

    ``"balanced"`` gives class k the multiplier ``S / (K * S_k)`` with ``S_k`` the weight sum of the class
    (its row count when rows are unweighted) and ``S`` the total -- scikit-learn's definition.
    """
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise DataError(f"class_weight must be 'balanced', a dict or None, got {class_weight!r}")
        sums = classes.weight_sums
        if bool((sums <= 0).any()):
            raise DataError("class_weight='balanced' needs a positive weight in every class")
        return np.asarray(sums.sum() / (classes.n * sums))
    items = dict(class_weight.items() if hasattr(class_weight, "items") else class_weight)
    mult = np.ones(classes.n)
    by_text = {_show(v): i for i, v in enumerate(classes.values)}
    for label, weight in items.items():
        i = by_text.get(_show(label))
        if i is None:
            raise DataError(f"class_weight names {label!r}, which is not a class of the data "
                            f"(classes: {', '.join(classes.display(10))})")
        weight = float(weight)
        if not (math.isfinite(weight) and weight >= 0):
            raise DataError(f"class_weight for {label!r} must be finite and >= 0, got {weight}")
        mult[i] = weight
    return mult


# --------------------------------------------------------------------------------------------------
# layouts


@dataclass(frozen=True)
class ParamLayout:
    """``theta = [W (n_outputs x n_features, row-major), b (n_outputs)]``, float64."""

    n_features: int
    n_outputs: int

    @property
    def size(self) -> int:
        return self.n_outputs * (self.n_features + 1)

    def coef(self, theta: Any) -> Any:
        """``W`` as an (n_outputs, n_features) view of ``theta``."""
        return theta[: self.n_outputs * self.n_features].reshape(self.n_outputs, self.n_features)

    def intercept(self, theta: Any) -> Any:
        """``b`` as an (n_outputs,) view of ``theta``."""
        return theta[self.n_outputs * self.n_features:]

    def pack(self, coef: Any, intercept: Any) -> np.ndarray:
        theta = np.empty(self.size)
        theta[: self.n_outputs * self.n_features] = np.asarray(coef, np.float64).ravel()
        theta[self.n_outputs * self.n_features:] = np.asarray(intercept, np.float64).ravel()
        return theta

    def penalized(self) -> np.ndarray:
        """Boolean mask of the penalized entries (the coefficients, never the intercepts)."""
        mask = np.zeros(self.size, dtype=bool)
        mask[: self.n_outputs * self.n_features] = True
        return mask


@dataclass(frozen=True)
class SumsLayout:
    """One chunk's sums: ``[loss sum, gradient sums in the layout of theta]`` (float64)."""

    params: ParamLayout

    @property
    def size(self) -> int:
        return 1 + self.params.size

    def loss(self, sums: Any) -> float:
        return float(sums[0])

    def grad(self, sums: Any) -> Any:
        return sums[1:]

    def empty(self, xp: Any = np) -> Any:
        return xp.empty(self.size, dtype=xp.float64)


# --------------------------------------------------------------------------------------------------
# families


class Family:
    """What a model family owns: its outputs, row terms (array-agnostic) and link.

    The row terms are the one reference every evaluator uses (scikit-learn's loss objects play the same
    part). Margins carry an **output axis** of K' entries (``class_axis``): ``(rows, K')`` when it is
    ``-1`` (rows-major, what ``X @ W.T`` gives), ``(..., K', rows)`` when it is ``-2`` (outputs-major, what
    ``W @ X.T`` gives; leading axes are stacked models), and for the binomial family also plain ``(...,
    rows)`` margins with ``class_axis=None``. ``target`` is :meth:`target` of the rows' class codes,
    ``(rows,)``; row weights ``sw`` are ``(rows,)`` or, outputs-major, ``(..., rows)``.

    * :meth:`row_terms` -- unweighted per-row loss (output axis dropped), residuals (in place of the
      margins, which it overwrites) and curvature;
    * :meth:`terms` -- the weighted loss sum (over the rows), weighted residuals and the curvature
      handle :meth:`hvp_terms` takes;
    * :meth:`hvp_terms` -- the per-row factor ``T`` of the Hessian-vector product (``H v`` of the loss
      sum is ``X^T T`` and ``sum_rows T``) from the curvature and the direction's margins ``U``.

    The fused kernels (:mod:`dlogit.kernels`) are specializations of these terms, tested against them.
    """

    name: ClassVar[str]
    #: whether :meth:`row_terms` uses ``own`` (precomputed positions of the rows' own class)
    uses_own: ClassVar[bool] = False

    def n_outputs(self, n_classes: int) -> int:
        raise NotImplementedError

    def decision(self, X: Any, coef: Any, intercept: Any) -> Any:
        """Margins: (n,) for binomial, (n, K) for multinomial, float64, in X's namespace (dense or CSR)."""
        raise NotImplementedError

    def proba(self, z: Any) -> Any:
        """Class probabilities (n, K) from :meth:`decision`'s margins, columns in ``classes_`` order."""
        raise NotImplementedError

    def predict_codes(self, z: Any, class_axis: int | None = None) -> Any:
        """Predicted class codes from margins (:meth:`decision`'s layout, or along ``class_axis``)."""
        raise NotImplementedError

    def row_loss(self, z: Any, codes: Any) -> Any:
        """Unweighted per-row loss l_i (float64) from margins and class codes (for scoring)."""
        raise NotImplementedError

    def target(self, codes: Any, xp: Any = np) -> Any:
        """The rows' labels in the form :meth:`row_terms` takes (computed once per chunk)."""
        raise NotImplementedError

    def row_terms(self, z: Any, target: Any, want_curvature: bool, *, class_axis: int | None = -1,
                  buffers: tuple[Any, ...] | None = None, own: Any = None) -> tuple[Any, Any, Any]:
        """``(l, R, C)``: per-row loss, residuals (``z`` itself, overwritten) and curvature (or None),
        all unweighted. ``buffers``: optional work arrays (see each family); ``own``: optional
        :func:`own_positions` of the rows in a C-contiguous outputs-major ``z`` (families that index the
        rows' own class use them; an evaluator meeting the same rows at every call computes them once)."""
        raise NotImplementedError

    def curvature(self, C: Any, sw: Any, class_axis: int | None) -> Any:
        """The curvature handle of :meth:`hvp_terms` from :meth:`row_terms`'s ``C`` and the row weights."""
        raise NotImplementedError

    def hvp_terms(self, curv: Any, U: Any, *, class_axis: int | None = -1) -> Any:
        """``T`` (U's shape, U may be overwritten): the Hessian of the weighted loss sum applied to the
        direction whose margins are ``U``, per row and output, from :meth:`terms`' curvature handle."""
        raise NotImplementedError

    def terms(self, z: Any, target: Any, sw: Any, want_curvature: bool, *,
              class_axis: int | None = -1, own: Any = None) -> tuple[Any, Any, Any]:
        """``(loss sum, residuals, curvature handle)`` of margins ``z`` (overwritten: they become the
        residuals), weighted by ``sw`` (None: all ones). The loss sum runs over the rows (one value per
        stacked model); residuals are ``s_i (dl_i / dz_i)``."""
        l, R, C = self.row_terms(z, target, want_curvature, class_axis=class_axis, own=own)
        if sw is None:
            loss = l.sum(axis=-1)
        else:
            loss = (l * sw).sum(axis=-1)
            R *= _along(sw, class_axis)
        return loss, R, (self.curvature(C, sw, class_axis) if want_curvature else None)

    def intercept_only(self, weight_sums: np.ndarray) -> np.ndarray:
        """Intercepts of the intercept-only model (coefficients 0) from the classes' weight sums."""
        raise NotImplementedError

    def lambda_max(self, coef_grad: np.ndarray) -> float:
        """The smallest L1 penalty zeroing every coefficient, from the mean loss's coefficient gradient
        at the intercept-only model: its largest magnitude."""
        g = np.asarray(coef_grad, dtype=np.float64)
        return float(np.max(np.abs(g))) if g.size else 0.0


def own_positions(codes: Any, n_models: int, n_outputs: int, xp: Any = np) -> Any:
    """(n_models, rows) flat positions of each row's own class in C-ordered outputs-major margins of shape
    (n_models, n_outputs, rows): what :meth:`Family.row_terms` takes as ``own``."""
    r = int(codes.shape[0])
    base = xp.arange(n_models)[:, None] * (n_outputs * r)
    return base + xp.asarray(codes, dtype=xp.int64)[None, :] * r + xp.arange(r)[None, :]


def _along(v: Any, class_axis: int | None) -> Any:
    """Per-row values ``v`` ((rows,) or (..., rows)) broadcast against margins with that output axis."""
    if class_axis is None:
        return v
    return v[:, None] if class_axis == -1 else v[..., None, :]


def _rows_index(target: Any, ndim: int, class_axis: int) -> Any:
    """Class codes (rows,) shaped for ``take_along_axis`` on margins of ``ndim`` axes."""
    if class_axis == -1:
        return target.reshape(-1, 1)
    return target.reshape((1,) * (ndim - 1) + (-1,))


def _dense_matmul(X: Any, M: Any) -> Any:
    """``X @ M`` for dense or sparse X (result dense, float64)."""
    xp = get_xp(M)
    out = X @ M
    out = out.toarray() if hasattr(out, "toarray") else out
    return xp.asarray(out).astype(xp.float64, copy=False)


class Binomial(Family):
    name = "binomial"

    def n_outputs(self, n_classes: int) -> int:
        return 1

    def decision(self, X: Any, coef: Any, intercept: Any) -> Any:
        xp = _namespace(X)
        w = xp.asarray(coef, dtype=_float_dtype(X)).reshape(-1)
        return _dense_matmul(X, w).reshape(-1) + float(to_numpy(intercept).reshape(-1)[0])

    def proba(self, z: Any) -> Any:
        from dlogit.loss import sigmoid

        xp = get_xp(z)
        p = sigmoid(z)
        return xp.stack([sigmoid(-z), p], axis=1)

    def predict_codes(self, z: Any, class_axis: int | None = None) -> Any:
        if class_axis is not None:
            z = z[:, 0] if class_axis == -1 else z[..., 0, :]
        return (z > 0).astype(np.int64)

    def row_loss(self, z: Any, codes: Any) -> Any:
        from dlogit.loss import log1pexp

        xp = get_xp(z)
        sign = 1.0 - 2.0 * xp.asarray(codes, dtype=xp.float64)
        return log1pexp(sign * z)

    def target(self, codes: Any, xp: Any = np) -> Any:
        """Label signs ``1 - 2 y`` (float64)."""
        return 1.0 - 2.0 * xp.asarray(codes, dtype=xp.float64)

    def row_terms(self, z: Any, target: Any, want_curvature: bool, *, class_axis: int | None = -1,
                  buffers: tuple[Any, ...] | None = None, own: Any = None) -> tuple[Any, Any, Any]:
        """With the signed margin ``s = sigma z`` (``sigma = 1 - 2 y``): ``l = log1pexp(s) = max(s, 0) +
        log1p(e^-|s|)`` (never overflows), residual ``sigma e^(s - l)`` (``= sigmoid(z) - y`` with full
        relative precision for well-classified rows), curvature ``e^(s - 2 l)`` (``= p (1 - p)``).
        ``buffers``: ``(l, e, c)`` float64 arrays of z's shape for the loss, a scratch and the curvature
        (each may be None)."""
        xp = get_xp(z)
        lb, eb, cb = buffers if buffers is not None else (None, None, None)
        sign = target if class_axis is None else _along(target, class_axis)
        s = z
        xp.multiply(s, sign, out=s)  # signed margin
        e = xp.abs(s, out=eb)
        xp.negative(e, out=e)
        xp.exp(e, out=e)  # exp(-|s|) in (0, 1]
        l = xp.log1p(e, out=lb)
        xp.maximum(s, 0.0, out=e)
        xp.add(l, e, out=l)  # log1pexp(s)
        c = None
        if want_curvature:  # exp(s - 2 l) = sigmoid(s) sigmoid(-s)
            c = xp.multiply(l, -2.0, out=cb)
            xp.add(c, s, out=c)
            xp.exp(c, out=c)
        xp.subtract(s, l, out=s)
        xp.exp(s, out=s)  # sigmoid(s)
        xp.multiply(s, sign, out=s)  # residual sigmoid(z) - y
        if class_axis is not None:
            l = l[:, 0] if class_axis == -1 else l[..., 0, :]
        return l, s, c

    def curvature(self, C: Any, sw: Any, class_axis: int | None) -> Any:
        """``s_i p_i (1 - p_i)``, the margins' shape."""
        return C if sw is None else C * _along(sw, class_axis)

    def hvp_terms(self, curv: Any, U: Any, *, class_axis: int | None = -1) -> Any:
        U *= curv
        return U

    def intercept_only(self, weight_sums: np.ndarray) -> np.ndarray:
        """The weighted log-odds ``log(S_1 / S_0)``."""
        S = np.asarray(weight_sums, dtype=np.float64)
        return np.array([math.log(S[1] / S[0])])


class Multinomial(Family):
    name = "multinomial"
    uses_own = True

    def n_outputs(self, n_classes: int) -> int:
        return n_classes

    def decision(self, X: Any, coef: Any, intercept: Any) -> Any:
        xp = _namespace(X)
        W = xp.asarray(coef, dtype=_float_dtype(X))
        return _dense_matmul(X, W.T) + xp.asarray(intercept, dtype=xp.float64).reshape(1, -1)

    def proba(self, z: Any) -> Any:
        xp = get_xp(z)
        m = z.max(axis=1, keepdims=True)
        e = xp.exp(z - m)
        return e / e.sum(axis=1, keepdims=True)

    def predict_codes(self, z: Any, class_axis: int | None = None) -> Any:
        return z.argmax(axis=1 if class_axis is None else class_axis).astype(np.int64)

    def row_loss(self, z: Any, codes: Any) -> Any:
        xp = get_xp(z)
        m = z.max(axis=1, keepdims=True)
        lse = (m + xp.log(xp.exp(z - m).sum(axis=1, keepdims=True))).reshape(-1)
        idx = xp.asarray(codes, dtype=xp.int64)
        return lse - z[xp.arange(z.shape[0]), idx]

    def target(self, codes: Any, xp: Any = np) -> Any:
        """Class codes (int64)."""
        return xp.asarray(codes, dtype=xp.int64)

    def row_terms(self, z: Any, target: Any, want_curvature: bool, *, class_axis: int | None = -1,
                  buffers: tuple[Any, ...] | None = None, own: Any = None) -> tuple[Any, Any, Any]:
        """From the row maximum ``m``: ``l = m + log(sum_k e^(z_k - m)) - z_c``, residuals ``softmax(z) -
        onehot(c)``, curvature the probabilities ``P``. ``buffers``: ``(P,)``, where the probabilities
        go (or None)."""
        if class_axis is None:
            raise ValueError("multinomial margins need an output axis (class_axis -1 or -2)")
        xp = get_xp(z)
        ax = class_axis
        pb = buffers[0] if buffers is not None else None
        flat = z.reshape(-1) if own is not None and ax == -2 and z.flags.c_contiguous else None
        idx = _rows_index(target, z.ndim, ax) if flat is None else None
        mx = z.max(axis=ax, keepdims=True)
        # the own class's margins, (.., 1, rows) or (rows, 1)
        zc = xp.take_along_axis(z, idx, axis=ax) if flat is None else xp.expand_dims(flat[own], ax)
        z -= mx
        xp.exp(z, out=z)
        S = z.sum(axis=ax, keepdims=True)
        l = mx + xp.log(S)
        l -= zc  # log-sum-exp - z_own
        z /= S  # softmax
        P = None
        if want_curvature:
            P = z.copy() if pb is None else pb
            if pb is not None:
                xp.copyto(pb, z)
        if flat is None:
            _subtract_own(xp, z, idx, ax)
        else:
            flat[own] -= 1.0
        l = l[:, 0] if ax == -1 else l[..., 0, :]
        return l, z, P

    def curvature(self, C: Any, sw: Any, class_axis: int | None) -> Any:
        """``(P, sw)``: the probabilities and the row weights (applied after the product)."""
        return (C, sw)

    def hvp_terms(self, curv: Any, U: Any, *, class_axis: int | None = -1) -> Any:
        """``s_i (P_i * u_i - P_i (P_i . u_i))``."""
        P, sw = curv
        ax = -1 if class_axis is None else class_axis
        U *= P  # P * U
        T = U - P * U.sum(axis=ax, keepdims=True)
        if sw is not None:
            T *= _along(sw, ax)
        return T

    def intercept_only(self, weight_sums: np.ndarray) -> np.ndarray:
        """The centered log weight sums ``log S_k - mean log S``."""
        logs = np.log(np.asarray(weight_sums, dtype=np.float64))
        return np.asarray(logs - logs.mean())


def _subtract_own(xp: Any, z: Any, idx: Any, axis: int) -> None:
    """``z[own class] -= 1`` along ``axis`` (in place)."""
    put = getattr(xp, "put_along_axis", None)
    if put is not None:
        put(z, idx, xp.take_along_axis(z, idx, axis=axis) - 1.0, axis=axis)
    else:  # a namespace without put_along_axis: subtract the one-hot rows (p - 0 is exact)
        k = z.shape[axis]
        shape = [1] * z.ndim
        shape[axis] = k
        z -= (xp.arange(k).reshape(shape) == idx)


FAMILIES: dict[str, Family] = {f.name: f for f in (Binomial(), Multinomial())}


def family_for(n_classes: int) -> Family:
    """The family fitting ``n_classes`` classes: binomial for 2, multinomial above."""
    return FAMILIES["binomial" if n_classes == 2 else "multinomial"]


def get_family(name: str) -> Family:
    return FAMILIES[name]


def _namespace(X: Any) -> Any:
    """NumPy or CuPy for a dense or sparse (SciPy / cupyx) X."""
    mod = type(X).__module__
    if mod.startswith("cupy"):
        import importlib

        return importlib.import_module("cupy")
    return np


def _float_dtype(X: Any) -> Any:
    dt = np.dtype(getattr(X, "dtype", np.float64))
    return dt if dt.kind == "f" and dt.itemsize >= 4 else np.float64


def n_nonzero(coef: np.ndarray) -> int:
    """Nonzero coefficients (intercepts excluded)."""
    return int(np.count_nonzero(np.asarray(coef)))


def check_sample_weight(w: Any, n_rows: int | None = None, where: str = "") -> None:
    """Row weights must be finite and >= 0 (all-zero is caught on the totals)."""
    xp = get_xp(w)
    at = f" ({where})" if where else ""
    if w.ndim != 1:
        raise DataError(f"sample_weight must be 1-D, got shape {tuple(w.shape)}{at}")
    if n_rows is not None and w.shape[0] != n_rows:
        raise DataError(f"sample_weight has {w.shape[0]} entries for {n_rows} rows{at}")
    if w.dtype.kind not in "fiub":
        raise DataError(f"sample_weight must be numeric, got dtype {w.dtype}{at}")
    if w.size and not bool(xp.isfinite(w).all()):
        raise DataError(f"sample_weight holds NaN or infinite values{at}")
    if w.size and bool((w < 0).any()):
        raise DataError(f"sample_weight holds negative values{at}")


def describe_classes(classes: Classes) -> dict[str, Any]:
    """The class part of a start event's params (bounded for large K)."""
    return {"n_classes": classes.n, "classes": classes.display(100),
            "class_counts": [int(c) for c in classes.counts[:100]]}


