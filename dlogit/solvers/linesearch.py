"""Line searches: strong Wolfe (for L-BFGS) and projected backtracking (for OWL-QN).

Both run entirely inside one solver step, so no line-search state outlives a step: a checkpoint
taken between steps holds everything.

The strong-Wolfe search is Nocedal & Wright's Algorithm 3.5 (bracketing by doubling) with
Algorithm 3.6 (zoom) choosing trial steps by safeguarded cubic interpolation of the two bracket
ends (values and slopes), falling back to bisection. Points where the objective is not finite are
treated as "too far" (the step shrinks), which makes the search robust to overflow at long steps.

The end game near an optimum: a step's decrease ``c1 alpha g.d`` (~ ||g||^2) falls below the rounding
of ``f`` itself long before ``||g||`` stops shrinking (on standardized breast-cancer data ``f`` stops
resolving decreases at ``||g|| ~ 1e-9``), so sufficient decrease judged on values fails and L-BFGS
stalled there. As in Hager & Zhang's approximate Wolfe conditions, a point whose value is within
rounding of ``f0`` (``f <= f0 + FLAT_RTOL |f0|``) is accepted on its directional derivative instead: the
curvature condition ``|g.d| <= c2 |g0.d|`` and a smaller gradient (``||g|| < ||g0||``). The test runs only
where sufficient decrease fails, so runs whose decreases are resolved take the same steps as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dlogit.solvers._base import EPS, Problem, evaluate

#: values within this relative distance of ``f0`` are rounding-level equal to it (the approximate
#: Wolfe test of the end game; ~4500 ulps: sums of many terms round by far less between nearby points)
FLAT_RTOL = 1e-12


@dataclass
class LineSearchResult:
    """The outcome of one line search.

    Attributes
    ----------
    ok : bool
        Whether an acceptable point was found (``theta``, ``f``, ``grad`` are then that point).
    theta, f, grad : numpy.ndarray, float, numpy.ndarray
        The accepted point (private arrays), or the start point when ``ok`` is false.
    n_evals : int
        ``fun`` calls made.
    wolfe : bool
        Whether the point satisfies the strong Wolfe conditions (else only sufficient decrease).
    flat : bool
        Whether it was accepted by the end game's approximate Wolfe test (its value is within rounding
        of ``f0``, possibly a few ulps above it; its gradient is smaller).
    """

    ok: bool
    theta: np.ndarray
    f: float
    grad: np.ndarray
    n_evals: int
    wolfe: bool = False
    flat: bool = False


@dataclass
class _Point:
    alpha: float
    f: float  # nan when the objective is not finite there
    slope: float
    theta: np.ndarray | None = None
    grad: np.ndarray | None = None


def _cubic_min(a: _Point, b: _Point) -> float:
    """Minimizer of the cubic matching values and slopes at ``a`` and ``b`` (nan when it has none)."""
    d1 = a.slope + b.slope - 3.0 * (a.f - b.f) / (a.alpha - b.alpha)
    disc = d1 * d1 - a.slope * b.slope
    if not (math.isfinite(disc) and disc >= 0):
        return math.nan
    d2 = math.copysign(math.sqrt(disc), b.alpha - a.alpha)
    denom = b.slope - a.slope + 2.0 * d2
    if denom == 0 or not math.isfinite(denom):
        return math.nan
    return b.alpha - (b.alpha - a.alpha) * (b.slope + d2 - d1) / denom


def strong_wolfe(problem: Problem, theta: np.ndarray, f0: float, g0: np.ndarray, d: np.ndarray,
                 alpha0: float, *, max_evals: int, c1: float = 1e-4, c2: float = 0.9) -> LineSearchResult:
    """Find ``alpha`` with ``f(theta + alpha d) <= f0 + c1 alpha g0.d`` and ``|g.d| <= c2 |g0.d|``.

    Parameters
    ----------
    problem : Problem
        Supplies ``fun``.
    theta, f0, g0 : numpy.ndarray, float, numpy.ndarray
        The start point, its value and gradient.
    d : numpy.ndarray
        A descent direction (``g0 . d < 0``).
    alpha0 : float
        The first trial step.
    max_evals : int
        ``fun`` calls allowed.
    c1, c2 : float
        Sufficient-decrease and curvature constants, ``0 < c1 < c2 < 1``.

    Returns
    -------
    LineSearchResult
        When the budget runs out before the curvature condition holds, the lowest point seen that
        satisfies sufficient decrease is returned (``wolfe`` false); ``ok`` is false when there is none.
    """
    slope0 = float(np.dot(g0, d))
    gg0 = float(np.dot(g0, g0))
    flat_tol = FLAT_RTOL * abs(f0)
    evals = 0

    def at(alpha: float) -> _Point:
        nonlocal evals
        x = theta + alpha * d
        f, g = evaluate(problem, x)
        evals += 1
        slope = float(np.dot(g, d))
        if not (math.isfinite(f) and math.isfinite(slope)):
            return _Point(alpha, math.nan, math.nan)
        return _Point(alpha, f, slope, x, g)

    def armijo(p: _Point) -> bool:
        return not math.isnan(p.f) and p.f <= f0 + c1 * p.alpha * slope0

    def curvature(p: _Point) -> bool:
        return abs(p.slope) <= -c2 * slope0

    def flat(p: _Point) -> bool:  # the end game's approximate Wolfe test (module docstring): only where
        # f(alpha) differs from f0 by rounding alone -- a resolved decrease that fails Armijo still zooms
        return (not math.isnan(p.f) and abs(p.f - f0) <= flat_tol and curvature(p) and p.grad is not None
                and float(np.dot(p.grad, p.grad)) < gg0)

    def done(p: _Point, wolfe: bool, is_flat: bool = False) -> LineSearchResult:
        assert p.theta is not None and p.grad is not None
        if not p.f < f0 and not is_flat:  # c1 alpha g0.d rounded away: no resolved decrease either
            if not flat(p):
                return LineSearchResult(False, theta, f0, g0, evals)
            is_flat = wolfe = True
        return LineSearchResult(True, p.theta, p.f, p.grad, evals, wolfe, is_flat)

    def zoom(lo: _Point, hi: _Point) -> LineSearchResult:
        while evals < max_evals:
            width = hi.alpha - lo.alpha
            if abs(width) <= EPS * max(abs(lo.alpha), abs(hi.alpha)):
                break  # the bracket is below float64 resolution
            trial = math.nan if math.isnan(hi.f) else _cubic_min(lo, hi)
            low, high = sorted((lo.alpha + 0.1 * width, hi.alpha - 0.1 * width))
            if not (math.isfinite(trial) and low <= trial <= high):
                trial = lo.alpha + 0.5 * width
            p = at(trial)
            if not armijo(p) and flat(p) and not (lo.alpha > 0 and p.f > lo.f):
                return done(p, True, True)
            if not armijo(p) or p.f >= lo.f:
                hi = p
            else:
                if curvature(p):
                    return done(p, True)
                if p.slope * (hi.alpha - lo.alpha) >= 0:
                    hi = lo
                lo = p
        if lo.alpha > 0:
            return done(lo, False)
        return LineSearchResult(False, theta, f0, g0, evals)

    prev = _Point(0.0, f0, slope0)
    alpha = float(alpha0)
    while evals < max_evals:
        p = at(alpha)
        if not armijo(p) and flat(p):
            return done(p, True, True)
        if not armijo(p) or (prev.alpha > 0 and p.f >= prev.f):
            return zoom(prev, p)
        if curvature(p):
            return done(p, True)
        if p.slope >= 0:
            return zoom(p, prev)
        prev, alpha = p, 2.0 * alpha
    if prev.alpha > 0:
        return done(prev, False)
    return LineSearchResult(False, theta, f0, g0, evals)


def projected_backtracking(problem: Problem, theta: np.ndarray, F0: float, pg: np.ndarray, d: np.ndarray,
                           alpha0: float, project: Callable[[np.ndarray], np.ndarray],
                           penalty: Callable[[np.ndarray], float], *, max_evals: int,
                           c1: float = 1e-4) -> LineSearchResult:
    """OWL-QN's line search: halve ``alpha`` until ``x = project(theta + alpha d)`` decreases ``F``.

    Sufficient decrease is Andrew & Gao's ``F(x) <= F0 + c1 * pg . (x - theta)``, with ``pg`` the
    pseudo-gradient at ``theta`` and ``F = f + penalty``. The returned ``f`` is the smooth part.
    """
    alpha = float(alpha0)
    for evals in range(1, max_evals + 1):
        x = project(theta + alpha * d)
        f, g = evaluate(problem, x)
        F = f + penalty(x)
        if math.isfinite(F) and bool(np.all(np.isfinite(g))) and \
                F <= F0 + c1 * float(np.dot(pg, x - theta)):
            return LineSearchResult(True, x, f, g, evals)
        alpha *= 0.5
    return LineSearchResult(False, theta, math.nan, pg, max_evals)
