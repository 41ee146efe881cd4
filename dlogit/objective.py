"""From reduced chunk sums to the objective, and the fixed-order reduction tree.

The objective (``n`` rows, ``d`` features, ``theta = [w, b]``)::

    f(w, b) = (1/n) * sum_i [log(1 + exp(z_i)) - y_i z_i]  +  l2 * ||w||^2,     z_i = x_i . w + b

Chunks are combined by a **segment tree over chunk indices**: node ``[lo, hi)`` is the sum of nodes
``[lo, mid)`` and ``[mid, hi)`` with ``mid = (lo + hi) // 2``. Whoever holds a set of chunks reduces the
largest tree nodes it owns entirely (:func:`owned_nodes`); the rest of the tree is completed by the
driver (:func:`complete_tree`). Every internal node is therefore computed by the same additions in the
same order however chunks are spread over workers: 1, 2 or 4 workers give bit-identical sums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from dlogit.penalty import add_l2_grad, l2_value

Node = tuple[int, int]


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


def node_sum(leaf: Callable[[int], Any], lo: int, hi: int) -> Any:
    """Sum of chunks ``lo..hi-1`` following the tree; ``leaf(i)`` gives chunk ``i``'s sums."""
    if hi - lo == 1:
        return leaf(lo)
    m = _mid(lo, hi)
    return node_sum(leaf, lo, m) + node_sum(leaf, m, hi)


def complete_tree(parts: Mapping[Node, Any], n_chunks: int) -> Any:
    """Root sum from the node sums in ``parts`` (which must tile ``[0, n_chunks)`` exactly)."""

    def visit(lo: int, hi: int) -> Any:
        got = parts.get((lo, hi))
        if got is not None:
            return got
        if hi - lo == 1:
            raise KeyError(f"chunk {lo} is missing from the reduction")
        m = _mid(lo, hi)
        return visit(lo, m) + visit(m, hi)

    return visit(0, n_chunks)


class Objective:
    """Turns reduced sums into ``(loss, grad)`` for the regularized mean cross-entropy.

    Parameters
    ----------
    l2 : float
        Penalty strength ``lambda`` in ``lambda * ||w||^2``.
    fit_intercept : bool
        When false the intercept stays at 0 (its gradient is forced to 0).
    """

    def __init__(self, l2: float, fit_intercept: bool = True) -> None:
        self.l2 = float(l2)
        self.fit_intercept = bool(fit_intercept)

    def finalize(self, sums: np.ndarray, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """``(loss, grad)`` from the root sums (see :func:`dlogit.loss.chunk_sums`) at ``theta``."""
        d = theta.shape[0] - 1
        n = sums[d + 2]
        grad = sums[1 : d + 2] / n
        if not self.fit_intercept:
            grad[d] = 0.0
        add_l2_grad(grad, theta, self.l2)
        return float(sums[0] / n) + l2_value(theta, self.l2), grad
