"""Full-batch gradient descent with a fixed step (the textbook solver), proximal with L1.

Semantics (the textbook output depends on them): step ``k`` (0-based) *reports* the objective at
``theta_k`` (``state.loss``, ``state.grad_norm``) and then, unless the run stops there, moves to

    theta_{k+1} = theta_k - lr * grad f(theta_k)                                   (smooth)
    theta_{k+1} = soft_threshold(theta_k - lr * grad f(theta_k), lr * l1)         (with L1)

so ``state.theta`` after step ``k`` is ``theta_{k+1}``. ``init`` evaluates ``theta_0`` and every step
but the last evaluates the point it moves to (kept in ``state.extra`` for the next step's report):
``max_iter`` steps make ``max_iter`` evaluations and ``max_iter`` updates, and the reported loss is
that of the last evaluated point. When the optimality measure at ``theta_k`` is ``<= tol`` the run
stops "converged" with ``state.theta = theta_k``.

Divergence detection
--------------------
A fixed step that is too large for the data (typically unscaled columns) makes the loss oscillate
and grow instead of decreasing. The criteria rest on the descent lemma: for a convex ``L``-smooth
``f`` and ``lr < 2 / L`` each (proximal) gradient step satisfies
``F(theta_{k+1}) <= F(theta_k) - (1/lr - L/2) ||theta_{k+1} - theta_k||^2``, so a stable run's loss
never rises except by rounding. A rise therefore means that ``lr`` exceeds ``2 / L`` where the
iterate is; a few rises can be a transient (the curvature of the logistic loss is largest near the
start), persistent ones are not. Step ``k`` is "diverged" when

1. ``F_k`` or the optimality measure is not finite (overflow); or
2. ``F_k - F_0 > 10 * |F_0|``: a stable run never exceeds ``F_0``, and a tenfold excess is far past any
   transient (the unscaled-column case jumps from ~4e3 to ~1e8 in one or two steps); or
3. over the last ``W = options.divergence_window`` steps (500 by default) the loss rose in at least
   ``W / 4`` of them by more than ``1e-6`` relative, *and* the newer half of the window brought no
   progress: its lowest loss is no lower than the lowest of the older half. A run that oscillates
   without improving (a period-2 cycle: iris with ``lr = 0.46``) or keeps rising (a quadratic with
   ``lr = 2.02 / L`` started 1e-6 from its optimum: flagged at step ~650) is flagged; transients that
   recover are not, because their troughs fall again: unscaled wine data with ``lr = 2e-5 .. 5e-5``
   oscillates, rising in half of its first ~230 steps without a lower trough, and then converges (a
   100-step window flagged it). The ``1e-6`` relative threshold is far above the rounding noise of the
   loss: float64 sums of ``n`` terms err by ``~sqrt(n) * 1e-16`` relative, and the losses of
   consecutive iterates, sums of nearly equal terms in the same order, differ by much less (float32
   data: ~1e-8). So a run converged onto its rounding floor, whose loss wobbles by an ulp in half of
   its steps, is never flagged.

Criterion 2 flags some runs that would still end well below ``F_0`` (unscaled breast-cancer data
with ``lr = 5e-5`` jumps to 15 ``F_0`` and then wanders back down while rising in 7% of its steps):
the advice (lower ``lr`` or standardize) is right for them too.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from dlogit.errors import ConfigError
from dlogit.solvers._base import (
    Problem,
    SolverOptions,
    SolverState,
    check_state,
    check_theta0,
    divergence_advice,
    evaluate,
    fmt,
    make_state,
    max_iter_message,
    penalty_and_optimality,
    start_state,
    state_type,
)

#: relative rise of the loss that counts as a rise (far above rounding, see the module docstring)
RISE_RTOL = 1e-6
#: the loss may not exceed F_0 + GROWTH * |F_0|
GROWTH = 10.0


@state_type
@dataclass(frozen=True, eq=False, kw_only=True)
class GDState(SolverState):
    """A ``"gd"`` run between steps.

    Attributes
    ----------
    f, grad : float, numpy.ndarray
        The smooth part's value and gradient at ``theta`` (the point the next step reports); when
        ``pending``, those of the previous point.
    loss0 : float
        ``F`` at the start (divergence criterion 2).
    window : numpy.ndarray
        The last ``divergence_window + 1`` reported losses, oldest first.
    rises : int
        How many steps of ``window`` rose.
    pending : bool
        ``theta`` moved on the last step of a ``max_iter`` run and is not evaluated yet (a resumed run
        with a larger ``max_iter`` evaluates it first).
    """

    solver: ClassVar[str] = "gd"

    f: float
    grad: np.ndarray
    loss0: float
    window: np.ndarray
    rises: int
    pending: bool = False


class GradientDescent:
    """Fixed-step gradient descent; proximal gradient descent when the problem has L1 weights."""

    name: str = "gd"
    default_max_iter: int = 10001
    default_tol: float = 0.0
    supports_l1: bool = True
    needs_hvp: bool = False

    def init(self, problem: Problem, theta0: np.ndarray, options: SolverOptions) -> GDState:
        """Evaluate ``theta0``; the returned state's ``theta`` is the first point step 0 reports.

        Raises
        ------
        dlogit.errors.ConfigError
            When ``options.lr`` is not a positive finite number or ``theta0`` has the wrong shape.
        """
        if not (math.isfinite(float(options.lr)) and float(options.lr) > 0):
            raise ConfigError(f"lr must be > 0, got {options.lr}")
        theta = check_theta0(problem, theta0)
        common, f, grad = start_state(problem, theta, options)
        return GDState(**common, f=f, grad=grad, loss0=common["loss"], window=np.empty(0), rises=0)

    def step(self, problem: Problem, state: SolverState, options: SolverOptions) -> GDState:
        """Report ``theta_k`` and move to ``theta_{k+1}`` (one evaluation, except on the last step)."""
        check_state(state, GDState)
        assert isinstance(state, GDState)
        f, grad, n_evals = state.f, state.grad, state.n_evals
        if state.pending:  # a max_iter run resumed with a larger max_iter: evaluate its point
            f, grad = evaluate(problem, state.theta)
            n_evals += 1
        theta = state.theta
        penalty, measure = penalty_and_optimality(problem, theta, grad)
        loss = float(f) + penalty
        k = state.n_iter
        w = options.divergence_window
        window, rises = _slide(state.window, int(state.rises), loss, w)
        # one new state per step (make_state: dataclasses.replace or GDState(...) cost as much as the
        # step's own bookkeeping on small problems)
        new: dict[str, Any] = {"theta": theta, "n_iter": k + 1, "n_evals": n_evals, "loss": loss,
                               "grad_norm": measure, "f": f, "grad": grad, "loss0": state.loss0,
                               "window": window, "rises": rises}
        why = _divergence(loss, measure, float(state.loss0), window, rises, w)
        if why is not None:
            new.update(status="diverged", message=f"gradient descent diverged at step {k} ({why}): "
                                                  f"{divergence_advice(options.lr, options.l2)}")
        elif measure <= options.tol:
            new["status"] = "converged"
        else:
            new["theta"] = problem.nonsmooth.prox(theta - options.lr * grad, options.lr)
            if k + 1 >= options.max_iter:  # moved, not yet evaluated (f, grad are the last point's)
                new.update(status="max_iter", message=max_iter_message(options, measure), pending=True)
            else:
                new["f"], new["grad"] = evaluate(problem, new["theta"])
                new["n_evals"] = n_evals + 1
        return make_state(GDState, new)


def _rose(before: float, after: float) -> bool:
    """Whether the loss rose from ``before`` to ``after`` by clearly more than rounding."""
    return after - before > RISE_RTOL * max(abs(before), abs(after))


def _slide(window: np.ndarray, rises: int, loss: float, w: int) -> tuple[np.ndarray, int]:
    """The last ``w + 1`` losses with ``loss`` appended, and how many of their steps rose (a new array)."""
    n = window.size
    if n > w + 1:  # a state saved with a longer window: recount
        window = window[n - w - 1:]
        rises = sum(_rose(float(a), float(b)) for a, b in itertools.pairwise(window))
        n = w + 1
    if n:
        rises += _rose(float(window[-1]), loss)
    keep = 1 if n == w + 1 else 0
    if keep:
        rises -= _rose(float(window[0]), float(window[1]))
    out = np.empty(n + 1 - keep)
    out[:-1] = window[keep:]
    out[-1] = loss
    return out, rises


def _divergence(loss: float, measure: float, loss0: float, window: np.ndarray, rises: int,
                w: int) -> str | None:
    """Why the run counts as diverged at this report (``None`` when it does not); see the module doc."""
    if not (math.isfinite(loss) and math.isfinite(measure)):
        return f"loss became {fmt(loss)}, ||grad|| {fmt(measure)}"
    if loss - loss0 > GROWTH * abs(loss0):
        return f"loss rose from {fmt(loss0)} to {fmt(loss)}"
    if window.size < w + 1 or 4 * rises < w:
        return None
    half = window.size // 2
    best_older, best_newer = float(window[:half].min()), float(window[half:].min())
    if best_newer >= best_older - RISE_RTOL * float(np.max(np.abs(window))):
        return (f"loss rose in {rises} of the last {w} steps and has not gone below {fmt(best_older)} in the "
                f"last {window.size - half} steps; it is now {fmt(loss)}")
    return None
