"""The L-BFGS memory (correction pairs) and the two-loop recursion, shared by L-BFGS and OWL-QN.

:class:`Pairs` is a fixed-size ring of ``capacity`` slots: a new pair takes the slot after the newest
and, once the ring is full, replaces the oldest pair. It is a value: every slot is a read-only
``(n,)`` array of its own, and :meth:`Pairs.push` returns a new ring (a new tuple of slot
references) that shares the unchanged slots with the old one -- no pair is copied, nothing is
concatenated, and every earlier state keeps its own memory. ``s.y`` and ``y.y`` of each pair are
kept with it (the two-loop recursion needs them; they are computed once, when the pair arrives).

Saved (:meth:`Pairs.to_arrays`) the memory is two ``(k, n)`` arrays ``S`` and ``Y``, oldest pair
first -- the layout a state had before the ring, so checkpoints of either kind load.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlogit.solvers._base import EPS, norm


@dataclass(frozen=True, eq=False)
class Pairs:
    """Up to ``capacity`` pairs ``(s, y)`` of ``(n,)`` vectors in a ring (see the module docstring).

    Attributes
    ----------
    n : int
        Length of the vectors.
    capacity : int
        Slots in the ring (the ``memory`` option).
    s, y : tuple of numpy.ndarray or None
        The slots (``None`` where empty); read-only arrays.
    sy, yy : tuple of float
        ``s.y`` and ``y.y`` of each slot's pair.
    newest : int
        Slot of the newest pair (meaningless when ``count`` is 0).
    count : int
        Pairs held (``<= capacity``).
    pushed : int
        Pairs added since the memory was created, resets included: the pairs held are numbered
        ``pushed - count + 1 .. pushed`` (:meth:`numbers`), so a copy that holds pairs up to ``j``
        lacks only ``j + 1 .. pushed`` (the driver's copies to its replicas send just those).
    """

    n: int
    capacity: int
    s: tuple[np.ndarray | None, ...]
    y: tuple[np.ndarray | None, ...]
    sy: tuple[float, ...]
    yy: tuple[float, ...]
    newest: int = -1
    count: int = 0
    pushed: int = 0

    @classmethod
    def empty(cls, n: int, capacity: int) -> Pairs:
        """A ring of ``capacity`` empty slots for vectors of length ``n``."""
        c = max(1, int(capacity))
        return cls(int(n), c, (None,) * c, (None,) * c, (0.0,) * c, (0.0,) * c)

    def reset(self) -> Pairs:
        """An empty memory of the same size (the pairs' numbering goes on)."""
        out = Pairs.empty(self.n, self.capacity)
        return Pairs(out.n, out.capacity, out.s, out.y, out.sy, out.yy, out.newest, 0, self.pushed)

    def numbers(self) -> tuple[int, int]:
        """``(first, last)``: the numbers of the oldest and newest pairs held (``first > last`` when
        empty)."""
        return self.pushed - self.count + 1, self.pushed

    def slots(self) -> list[int]:
        """The occupied slots, oldest pair first."""
        c, k = self.capacity, self.count
        return [(self.newest - k + 1 + i) % c for i in range(k)]

    def pairs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The pairs, oldest first."""
        out = []
        for i in self.slots():
            s, y = self.s[i], self.y[i]
            assert s is not None and y is not None
            out.append((s, y))
        return out

    def push(self, s: np.ndarray, y: np.ndarray, memory: int) -> Pairs:
        """The memory with ``(s, y)`` added as the newest pair (the oldest dropped beyond ``memory``).

        The pair is skipped (the same memory is returned) when ``s . y <= eps * ||s|| * ||y||``:
        without positive curvature along ``s`` the inverse-Hessian update would not stay positive
        definite. ``s`` and ``y`` are kept (made read-only), not copied: pass arrays of your own.
        """
        sy = float(np.dot(s, y))
        if not (np.isfinite(sy) and sy > EPS * norm(s) * norm(y)):
            return self
        ring = self if int(memory) == self.capacity else self._resized(int(memory))
        return ring._with(s, y, sy)

    def _with(self, s: np.ndarray, y: np.ndarray, sy: float) -> Pairs:
        s.flags.writeable = False
        y.flags.writeable = False
        c = self.capacity
        i = (self.newest + 1) % c
        S, Y, SY, YY = list(self.s), list(self.y), list(self.sy), list(self.yy)
        S[i], Y[i], SY[i], YY[i] = s, y, sy, float(np.dot(y, y))
        return Pairs(self.n, c, tuple(S), tuple(Y), tuple(SY), tuple(YY), i, min(self.count + 1, c),
                     self.pushed + 1)

    def _resized(self, capacity: int) -> Pairs:
        """The newest ``capacity - 1`` pairs in a ring of ``capacity`` slots (room for one more)."""
        out = Pairs.empty(self.n, capacity)
        keep = self.slots()[max(0, self.count - capacity + 1):]
        for i in keep:
            s, y = self.s[i], self.y[i]
            assert s is not None and y is not None
            out = out._with(s, y, self.sy[i])
        return Pairs(out.n, out.capacity, out.s, out.y, out.sy, out.yy, out.newest, out.count, self.pushed)

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(S, Y)``: ``(k, n)`` arrays, oldest pair first (new arrays)."""
        pairs = self.pairs()
        if not pairs:
            return np.empty((0, self.n)), np.empty((0, self.n))
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    @classmethod
    def from_arrays(cls, S: np.ndarray, Y: np.ndarray, pushed: int | None = None) -> Pairs:
        """The memory holding the rows of ``S`` and ``Y`` (oldest first), in a ring just big enough
        (:meth:`push` grows or shrinks it to the ``memory`` option); ``pushed`` defaults to the rows."""
        k, n = S.shape
        out = Pairs.empty(n, max(k, 1))
        for j in range(k):
            s, y = np.array(S[j], dtype=np.float64, copy=True), np.array(Y[j], dtype=np.float64, copy=True)
            out = out._with(s, y, float(np.dot(s, y)))
        if pushed is not None:
            out = Pairs(out.n, out.capacity, out.s, out.y, out.sy, out.yy, out.newest, out.count, int(pushed))
        return out


def two_loop(memory: Pairs, q: np.ndarray) -> np.ndarray:
    """``H q`` for the L-BFGS inverse-Hessian approximation ``H`` (a new array).

    ``H_0 = gamma * I`` with ``gamma = s.y / y.y`` of the newest pair (``I`` without pairs).
    """
    r = np.array(q, dtype=np.float64, copy=True)
    slots = memory.slots()
    if not slots:
        return r
    S, Y = memory.s, memory.y
    rho = [1.0 / memory.sy[i] for i in slots]
    alpha = [0.0] * len(slots)
    for j in range(len(slots) - 1, -1, -1):
        s, y = S[slots[j]], Y[slots[j]]
        assert s is not None and y is not None
        alpha[j] = rho[j] * float(np.dot(s, r))
        r -= alpha[j] * y
    r *= memory.sy[memory.newest] / memory.yy[memory.newest]
    for j, i in enumerate(slots):
        s, y = S[i], Y[i]
        assert s is not None and y is not None
        beta = rho[j] * float(np.dot(y, r))
        r += (alpha[j] - beta) * s
    return r
