"""The L-BFGS memory (correction pairs) and the two-loop recursion, shared by L-BFGS and OWL-QN.

The memory is two float64 arrays ``S`` and ``Y`` of shape ``(k, n)``, ``k <= memory``, oldest pair
first; they live in the solver state and are never modified in place (a new pair makes new arrays),
so a saved state stays valid.
"""

from __future__ import annotations

import numpy as np

from dlogit.solvers._base import EPS, norm


def empty_memory(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(S, Y)`` holding no pair."""
    return np.empty((0, n)), np.empty((0, n))


def push_pair(S: np.ndarray, Y: np.ndarray, s: np.ndarray, y: np.ndarray,
              memory: int) -> tuple[np.ndarray, np.ndarray]:
    """``(S, Y)`` with ``(s, y)`` appended (the oldest dropped beyond ``memory`` pairs).

    The pair is skipped when ``s . y <= eps * ||s|| * ||y||``: without positive curvature along ``s``
    the inverse-Hessian update would not stay positive definite.
    """
    sy = float(np.dot(s, y))
    if not (np.isfinite(sy) and sy > EPS * norm(s) * norm(y)):
        return S, Y
    keep = max(0, S.shape[0] - memory + 1)
    return np.concatenate([S[keep:], s[None, :]]), np.concatenate([Y[keep:], y[None, :]])


def two_loop(S: np.ndarray, Y: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``H q`` for the L-BFGS inverse-Hessian approximation ``H`` (a new array).

    ``H_0 = gamma * I`` with ``gamma = s.y / y.y`` of the newest pair (``I`` without pairs).
    """
    k = S.shape[0]
    r = np.array(q, dtype=np.float64, copy=True)
    if k == 0:
        return r
    rho = np.array([1.0 / float(np.dot(S[i], Y[i])) for i in range(k)])
    alpha = np.empty(k)
    for i in range(k - 1, -1, -1):
        alpha[i] = rho[i] * float(np.dot(S[i], r))
        r -= alpha[i] * Y[i]
    r *= float(np.dot(S[-1], Y[-1])) / float(np.dot(Y[-1], Y[-1]))
    for i in range(k):
        beta = rho[i] * float(np.dot(Y[i], r))
        r += (alpha[i] - beta) * S[i]
    return r
