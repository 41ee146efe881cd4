"""The penalty ``P(theta) = l2 sum_j f_j (theta_j / s_j)^2 + l1 sum_j f_j |theta_j| / s_j`` (one home).

``l1`` and ``l2`` are the strengths (elastic net when both are set), ``f_j >= 0`` per-coordinate
penalty factors (0 leaves a coordinate unpenalized, e.g. the intercepts; glmnet's
``penalty.factor``), and ``s_j > 0`` the scale of the coordinates the penalty is written in: ``1`` in
the model's own coordinates, the preconditioner's column scales in the solvers' coordinates
``theta'_j = s_j theta_j`` (:meth:`Penalty.rescaled`). All of these are data: no caller branches on
which penalty it has.

A fit splits its penalty (:meth:`Penalty.split`): the smooth part (L2) is added to the loss where the
objective is evaluated (:class:`dlogit.objective.Objective`, model coordinates), the nonsmooth part
(L1) goes to the solver (its value, proximal map and minimum-norm subgradient, in the solver's
coordinates) and to the stopping rule (model coordinates). The operations follow the array's own
namespace (NumPy or CuPy, float64) and never modify their inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dlogit._xp import get_xp
from dlogit.errors import ConfigError

Array = Any
"""A float64 NumPy or CuPy vector of the penalty's length."""


def _vector(values: Any, n: int, what: str) -> np.ndarray:
    out = np.array(values, dtype=np.float64, copy=True)
    if out.shape != (n,):
        raise ConfigError(f"{what} must have shape ({n},), got {out.shape}")
    if not bool(np.all(np.isfinite(out))):
        raise ConfigError(f"{what} must be finite")
    out.flags.writeable = False
    return out


def _support(mask: np.ndarray) -> slice | np.ndarray:
    """The coordinates where ``mask`` holds: a slice when they are one run (a view, no gather)."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return slice(0, 0)
    if int(idx[-1]) - int(idx[0]) + 1 == idx.size:
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


@dataclass(frozen=True, eq=False)
class Penalty:
    """``l2 sum_j f_j (theta_j / s_j)^2 + l1 sum_j f_j |theta_j| / s_j`` over ``n_params`` coordinates.

    Parameters
    ----------
    n_params : int
        Length of ``theta``.
    l1, l2 : float
        Strengths ``>= 0`` of the L1 and L2 terms (both: elastic net).
    factors : array-like or None
        ``(n_params,)`` penalty factors ``f_j >= 0`` (0: unpenalized); None means 1 everywhere.
    scale : array-like or None
        ``(n_params,)`` coordinate scales ``s_j > 0`` (see the module docstring); None means 1.

    Attributes
    ----------
    l1_weights : numpy.ndarray
        ``l1 f_j / s_j``, the per-coordinate weights of the L1 term (read-only).
    """

    n_params: int
    l1: float = 0.0
    l2: float = 0.0
    factors: np.ndarray | None = None
    scale: np.ndarray | None = None
    l1_weights: np.ndarray = field(init=False, repr=False)
    _l2_support: slice | np.ndarray = field(init=False, repr=False)
    _l2_factors: np.ndarray = field(init=False, repr=False)
    _l2_scale: np.ndarray = field(init=False, repr=False)
    _has_l1: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = int(self.n_params)
        if n < 1:
            raise ConfigError(f"n_params must be at least 1, got {self.n_params}")
        for name in ("l1", "l2"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be finite and >= 0, got {getattr(self, name)}")
            object.__setattr__(self, name, v)
        f = _vector(np.ones(n) if self.factors is None else self.factors, n, "penalty factors")
        if not bool(np.all(f >= 0)):
            raise ConfigError("penalty factors must be finite and >= 0")
        s = _vector(np.ones(n) if self.scale is None else self.scale, n, "penalty scales")
        if not bool(np.all(s > 0)):
            raise ConfigError("penalty scales must be finite and > 0")
        w1 = (self.l1 * f) / s
        w1.flags.writeable = False
        sup = _support((f > 0) & (self.l2 > 0))
        object.__setattr__(self, "n_params", n)
        object.__setattr__(self, "factors", f)
        object.__setattr__(self, "scale", s)
        object.__setattr__(self, "l1_weights", w1)
        object.__setattr__(self, "_l2_support", sup)
        object.__setattr__(self, "_l2_factors", f[sup])
        object.__setattr__(self, "_l2_scale", s[sup])
        object.__setattr__(self, "_has_l1", bool(np.any(w1 > 0)))

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def weighted_l1(cls, weights: Any) -> Penalty:
        """``sum_j w_j |theta_j|`` with the given per-coordinate weights ``w_j >= 0``."""
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or w.size < 1:
            raise ConfigError(f"l1 weights must be a nonempty vector, got shape {w.shape}")
        if not bool(np.all(np.isfinite(w)) and np.all(w >= 0)):
            raise ConfigError("l1 weights must be finite and >= 0")
        return cls(int(w.size), l1=1.0, factors=w)

    def rescaled(self, scale: Any) -> Penalty:
        """The same penalty in coordinates ``theta'_j = scale_j theta_j`` (the preconditioned form)."""
        assert self.scale is not None
        s = np.asarray(scale, dtype=np.float64)
        return Penalty(self.n_params, self.l1, self.l2, self.factors, self.scale * s)

    def split(self) -> tuple[Penalty, Penalty]:
        """``(smooth, nonsmooth)``: the L2 part and the L1 part, as two penalties."""
        return (Penalty(self.n_params, 0.0, self.l2, self.factors, self.scale),
                Penalty(self.n_params, self.l1, 0.0, self.factors, self.scale))

    # -- what it is ----------------------------------------------------------------------------------
    @property
    def has_l1(self) -> bool:
        """Whether any L1 weight is nonzero (the penalty is then nonsmooth)."""
        return self._has_l1

    @property
    def has_l2(self) -> bool:
        """Whether the L2 term penalizes any coordinate."""
        return self._l2_factors.size > 0

    @property
    def l1_penalized(self) -> np.ndarray:
        """Boolean mask of the coordinates with a nonzero L1 weight."""
        return self.l1_weights > 0

    # -- the math ------------------------------------------------------------------------------------
    def _l2_terms(self, theta: Array) -> tuple[Array, Array]:
        """``u = theta / s`` and ``f u`` on the L2 support (``theta``'s own values when ``s = f = 1``)."""
        xp = get_xp(theta)
        u = theta[self._l2_support] / xp.asarray(self._l2_scale)
        return u, u * xp.asarray(self._l2_factors)

    def value(self, theta: Array) -> float:
        """``P(theta)``."""
        total = 0.0
        if self.has_l2:
            u, fu = self._l2_terms(theta)
            total += self.l2 * float(get_xp(theta).dot(u, fu))
        if self.has_l1:
            xp = get_xp(theta)
            total += float(xp.dot(xp.asarray(self.l1_weights), xp.abs(theta)))
        return total

    def add_gradient(self, theta: Array, grad: Array) -> None:
        """``grad += grad P_smooth(theta)`` in place (the L2 term's gradient; L1 has none)."""
        if self.has_l2:
            _, fu = self._l2_terms(theta)
            grad[self._l2_support] += ((2.0 * self.l2) * fu) / get_xp(theta).asarray(self._l2_scale)

    def gradient(self, theta: Array) -> Array:
        """The gradient of the smooth (L2) term (a new array; zeros without L2)."""
        out = get_xp(theta).zeros_like(theta, dtype=np.float64)
        self.add_gradient(theta, out)
        return out

    def curvature(self) -> np.ndarray:
        """The diagonal of the smooth term's Hessian, ``2 l2 f_j / s_j^2`` (L1 contributes none)."""
        out = np.zeros(self.n_params)
        out[self._l2_support] = (2.0 * self.l2 * self._l2_factors) / (self._l2_scale * self._l2_scale)
        return out

    def add_hvp(self, v: Array, out: Array) -> None:
        """``out += hessian(P_smooth) @ v`` in place."""
        if self.has_l2:
            xp = get_xp(v)
            curv = xp.asarray((2.0 * self.l2 * self._l2_factors) / (self._l2_scale * self._l2_scale))
            out[self._l2_support] += curv * v[self._l2_support]

    def prox(self, x: Array, t: float) -> Array:
        """``argmin_z ||z - x||^2 / 2 + t P(z)``: soft-thresholding by ``t l1_j``, then the L2 shrink
        ``1 / (1 + 2 t l2 f_j / s_j^2)`` (exact zeros; ``x`` itself when the penalty is zero)."""
        xp = get_xp(x)
        z = x
        if self.has_l1:
            z = soft_threshold(x, t * xp.asarray(self.l1_weights))
        if self.has_l2:
            z = xp.array(z, dtype=np.float64, copy=True)
            shrink = 1.0 + t * xp.asarray(self.curvature()[self._l2_support])
            z[self._l2_support] = z[self._l2_support] / shrink
        return z

    def min_norm_subgradient(self, theta: Array, grad: Array) -> Array:
        """The minimum-norm element of the subdifferential of ``f + P`` at ``theta``, given ``grad``
        ``= grad f(theta)`` (OWL-QN's pseudo-gradient; ``grad`` itself without L1).

        With ``g = grad + grad P_smooth``: ``g_j + w_j sign(theta_j)`` where ``theta_j != 0``; where
        ``theta_j == 0`` the subdifferential is ``[g_j - w_j, g_j + w_j]`` and its point nearest 0 is
        ``g_j`` soft-thresholded by ``w_j`` (0 when ``|g_j| <= w_j``); ``w = l1_weights``.
        """
        g = grad
        if self.has_l2:
            g = get_xp(grad).array(grad, dtype=np.float64, copy=True)
            self.add_gradient(theta, g)
        if not self.has_l1:
            return g
        xp = get_xp(theta)
        w = xp.asarray(self.l1_weights)
        return xp.where(theta == 0, soft_threshold(g, w), g + w * xp.sign(theta))

    def optimality(self, theta: Array, grad: Array) -> float:
        """``||min_norm_subgradient(theta, grad)||_2`` (0 exactly at a minimizer of ``f + P``)."""
        g = self.min_norm_subgradient(theta, grad)
        return math.sqrt(float(get_xp(g).dot(g, g)))


def soft_threshold(x: Array, t: Array) -> Array:
    """``sign(x) * max(|x| - t, 0)``: the proximal map of ``sum_j t_j |x_j|`` (exact zeros)."""
    xp = get_xp(x)
    return xp.sign(x) * xp.maximum(xp.abs(x) - t, 0.0)


__all__ = ["Penalty", "soft_threshold"]
