"""Stable scalar math for logistic models — pure and array-agnostic.

``log1pexp``, ``log_sigmoid`` and ``sigmoid`` take NumPy or CuPy arrays and never overflow (exact at
``|z| = 1000``). The chunk evaluators live in :mod:`dlogit.chunks`; which CPU kernel evaluates a chunk is
:mod:`dlogit.kernels.policy`'s decision.
"""

from __future__ import annotations

from typing import Any

from dlogit._xp import get_xp


def log1pexp(z: Any) -> Any:
    """``log(1 + exp(z))`` without overflow or loss of precision (finite and exact at ``|z| = 1000``)."""
    xp = get_xp(z)
    return xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z)))


def log_sigmoid(z: Any) -> Any:
    """``log(sigmoid(z)) = -log1pexp(-z)``, stable for any finite ``z``."""
    return -log1pexp(-z)


def sigmoid(z: Any) -> Any:
    """``1 / (1 + exp(-z))`` evaluated without overflow for large ``|z|``."""
    xp = get_xp(z)
    e = xp.exp(-xp.abs(z))
    inv = 1.0 / (1.0 + e)
    return xp.where(z >= 0, inv, e * inv)
