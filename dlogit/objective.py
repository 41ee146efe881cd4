"""From reduced chunk sums to the objective; the preconditioning change of variables; the fixed tree.

The objective (rows with weights ``s_i``, see :mod:`dlogit.family`)::

    f(theta) = sum_i s_i l_i / sum_i s_i  +  l2 ||W||^2  [ + l1 ||W||_1, handled by the solver ]

:class:`Objective` turns the root sums (:class:`~dlogit.family.SumsLayout`) into the smooth part's
``(loss, grad)``, the penalty's smooth part included (:class:`~dlogit.penalty.Penalty`; the fit's is
:func:`fit_penalty`). :class:`Reparam` is the affine change of variables ``theta = A theta'`` the solvers
work in when preconditioning is on (L-BFGS, Newton): coefficients divided by each column's scale and
the intercept absorbing the column means (``W = W' / s``, ``b = b' - W m``). The objective is
unchanged -- only the coordinates the solver moves in are -- so the optimum is the optimum of the
stated objective, on unscaled data too (Spark trains in standardized coordinates for the same reason).

Chunks are combined by a **segment tree over chunk indices**: node ``[lo, hi)`` is the combination of
nodes ``[lo, mid)`` and ``[mid, hi)`` with ``mid = (lo + hi) // 2``. Whoever holds a set of chunks
reduces the largest tree nodes it owns entirely (:func:`owned_nodes`); the rest of the tree is completed
by the driver (:func:`complete_tree`). Every internal node is therefore computed by the same additions
in the same order however chunks are spread over workers: 1, 2 or 4 workers give bit-identical sums.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlogit.family import ParamLayout
from dlogit.penalty import Penalty

Node = tuple[int, int]
Combine = Callable[[Any, Any], Any]


def _mid(lo: int, hi: int) -> int:
    return (lo + hi) // 2


def owned_nodes(owned: Iterable[int], n_chunks: int) -> list[Node]:
    """The maximal tree nodes whose chunks all lie in ``owned``, in left-to-right order."""
    own = set(owned)
    out: list[Node] = []

    def visit(lo: int, hi: int) -> None:
        inside = len(own.intersection(range(lo, hi)))
        if inside == hi - lo:
            out.append((lo, hi))
        elif inside:
            m = _mid(lo, hi)
            visit(lo, m)
            visit(m, hi)

    if n_chunks > 0:
        visit(0, n_chunks)
    return out


def node_sum(leaf: Callable[[int], Any], lo: int, hi: int, combine: Combine = operator.add) -> Any:
    """Combination of chunks ``lo..hi-1`` following the tree; ``leaf(i)`` gives chunk ``i``'s value."""
    if hi - lo == 1:
        return leaf(lo)
    m = _mid(lo, hi)
    return combine(node_sum(leaf, lo, m, combine), node_sum(leaf, m, hi, combine))


def complete_nodes(parts: Mapping[Node, Any], targets: Iterable[Node], combine: Combine = operator.add
                   ) -> list[Any]:
    """The value of each target node from node values tiling it, by the fixed tree's additions: node
    ``[lo, hi)`` is ``combine([lo, mid), [mid, hi))``, so a node completed on a worker holds the same
    bits as one completed anywhere else."""

    def visit(lo: int, hi: int) -> Any:
        got = parts.get((lo, hi))
        if got is not None:
            return got
        if hi - lo == 1:
            raise KeyError(f"chunk {lo} is missing from the reduction")
        m = _mid(lo, hi)
        return combine(visit(lo, m), visit(m, hi))

    return [visit(lo, hi) for lo, hi in targets]


def complete_tree(parts: Mapping[Node, Any], n_chunks: int, combine: Combine = operator.add) -> Any:
    """Root value from the node values in ``parts`` (which must tile ``[0, n_chunks)`` exactly)."""
    return complete_nodes(parts, [(0, n_chunks)], combine)[0]


class Objective:
    """``(loss, grad)`` of the smooth part (weighted mean loss + the penalty's smooth part) from the root
    chunk sums.

    Parameters
    ----------
    layout : ParamLayout
        The layout of ``theta``.
    weight_sum : float
        ``sum_i s_i`` over the data (the row count when unweighted).
    l2 : float
        Without ``penalty``: the strength in ``l2 * ||W||_F^2`` (intercepts excluded, :func:`fit_penalty`).
    fit_intercept : bool
        When false the intercepts stay at 0 (their gradient is forced to 0).
    penalty : Penalty or None
        The fit's penalty (model coordinates; its smooth part is used here) instead of ``l2``.
    """

    def __init__(self, layout: ParamLayout, weight_sum: float, l2: float = 0.0, fit_intercept: bool = True,
                 *, penalty: Penalty | None = None) -> None:
        self.layout = layout
        self.weight_sum = float(weight_sum)
        if penalty is not None and l2:
            raise ValueError("give the L2 strength in the penalty or as l2, not both")
        full = penalty if penalty is not None else fit_penalty(layout, l2=float(l2))
        self.penalty = full.split()[0]
        self.fit_intercept = bool(fit_intercept)
        self._k = layout.n_outputs * layout.n_features
        self._inv = 1.0 / self.weight_sum

    def finalize(self, sums: np.ndarray, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """``(loss, grad)`` at ``theta`` from its root sums ``[loss sum, gradient sums]``."""
        inv = self._inv
        grad = np.multiply(sums[1:], inv)
        k = self._k
        if not self.fit_intercept:
            grad[k:] = 0.0
        loss = float(sums[0]) * inv
        if self.penalty.has_l2:
            loss += self.penalty.value(theta)
            self.penalty.add_gradient(theta, grad)
        return loss, grad

    def hvp_finalize(self, hv_sums: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``H v`` of the objective from the root sums of the chunks' H.v of the loss sum."""
        out = np.asarray(hv_sums, dtype=np.float64) / self.weight_sum
        k = self._k
        if not self.fit_intercept:
            out[k:] = 0.0
        self.penalty.add_hvp(v, out)
        return out


@dataclass(frozen=True)
class Reparam:
    """``theta = A theta'``: per column scale ``s`` and shift ``m`` (``W = W'/s``, ``b = b' - W m``).

    ``to_user`` maps solver coordinates to the model's, ``to_solver`` back, ``grad_to_solver`` applies
    ``A^T`` (gradients and H.v products), ``grad_to_user`` applies ``A^{-T}``.
    """

    layout: ParamLayout
    scale: np.ndarray
    shift: np.ndarray

    @classmethod
    def identity(cls, layout: ParamLayout) -> Reparam:
        return cls(layout, np.ones(layout.n_features), np.zeros(layout.n_features))

    @property
    def is_identity(self) -> bool:
        return bool(np.all(self.scale == 1.0) and np.all(self.shift == 0.0))

    def _split(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.layout.coef(theta), self.layout.intercept(theta)

    def to_user(self, theta_s: np.ndarray) -> np.ndarray:
        out = np.array(theta_s, dtype=np.float64, copy=True)
        W, b = self._split(out)
        W /= self.scale
        b -= W @ self.shift
        return out

    def to_solver(self, theta: np.ndarray) -> np.ndarray:
        out = np.array(theta, dtype=np.float64, copy=True)
        W, b = self._split(out)
        b += W @ self.shift
        W *= self.scale
        return out

    def grad_to_solver(self, g: np.ndarray) -> np.ndarray:
        out = np.array(g, dtype=np.float64, copy=True)
        GW, gb = self._split(out)
        GW -= np.outer(gb, self.shift)
        GW /= self.scale
        return out

    def grad_to_user(self, g_s: np.ndarray) -> np.ndarray:
        out = np.array(g_s, dtype=np.float64, copy=True)
        GW, gb = self._split(out)
        GW *= self.scale
        GW += np.outer(gb, self.shift)
        return out

    def param_scale(self) -> np.ndarray:
        """Each coordinate's scale ``theta'_j = s_j theta_j`` for a penalty, which reads only the
        coefficients (``s`` of their column; 1 on the intercepts, which no penalty touches)."""
        out = np.ones(self.layout.size)
        K, d = self.layout.n_outputs, self.layout.n_features
        out[: K * d] = np.tile(self.scale, K)
        return out

    def penalty(self, penalty: Penalty) -> Penalty:
        """``penalty`` (model coordinates) written in solver coordinates (L1 weights ``l1 f_j / s_j``)."""
        return penalty if self.is_identity else penalty.rescaled(self.param_scale())


def fit_penalty(layout: ParamLayout, l1: float = 0.0, l2: float = 0.0) -> Penalty:
    """A fit's penalty in model coordinates: ``l2 ||W||_F^2 + l1 ||W||_1``, the intercepts unpenalized
    (penalty factor 0)."""
    return Penalty(layout.size, l1=l1, l2=l2, factors=layout.penalized())


def column_spread(col_max: np.ndarray, col_sum: np.ndarray, col_sq: np.ndarray, n_rows: float) -> np.ndarray:
    """Each column's standard deviation from the scaled moments (1 where a column has no spread);
    ``n_rows`` is the moments' total weight (the row count, or the weight sum for weighted moments)."""
    n = float(n_rows) if n_rows > 0 else 1.0
    mean_s = col_sum / n
    std = col_max * np.sqrt(np.maximum(col_sq / n - mean_s * mean_s, 0.0))
    ok = np.isfinite(std) & (std > 1e-12 * col_max) & (std > 0)
    return np.where(ok, std, 1.0)


def preconditioner(col_max: np.ndarray, col_sum: np.ndarray, col_sq: np.ndarray, n_rows: float,
                   center: bool, l2: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Column scales and shifts from scaled moments (see :class:`dlogit.stats.ChunkStats`).

    The scale is a Jacobi estimate of the objective's curvature along the column: the loss contributes
    at most ``var_j / 4`` (``p (1 - p) <= 1/4``; the mean is absorbed by the intercept's shift when
    ``center``) and the penalty ``2 l2``, so ``s_j = hypot(std_j / 2, sqrt(2 l2))`` makes every
    coordinate's curvature at most about 1 -- scaling by ``std_j`` alone would give a column of tiny
    spread a penalty curvature ``2 l2 / std_j^2`` that ruins the conditioning. ``mean_j = M_j S_j / n``
    and ``std_j = M_j sqrt(Q_j / n - (S_j / n)^2)`` with ``M_j`` the column's largest magnitude, so
    nothing is squared at the data's own scale (finite for values near 1e300). A column with neither
    spread nor penalty keeps scale ``max|x|`` (or 1) and no shift.
    """
    n = float(n_rows) if n_rows > 0 else 1.0  # the moments' total weight (row count or weight sum)
    mean_s = col_sum / n
    var_s = np.maximum(col_sq / n - mean_s * mean_s, 0.0)
    std = col_max * np.sqrt(var_s)
    spread = std > 1e-12 * col_max
    curv = np.hypot(np.where(spread, std, 0.0) / 2.0, np.sqrt(2.0 * max(float(l2), 0.0)))
    scale = np.where(curv > 0, curv, np.where(col_max > 0, col_max, 1.0))
    shift = np.where(spread & center, col_max * mean_s, 0.0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    return scale, shift
