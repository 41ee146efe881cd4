"""The curvature handle: what an evaluator's ``hvp`` needs from the ``sums`` at one ``theta``.

``evaluator.sums(theta, keep_curvature=True)`` returns a :class:`Curvature` (its ``sums`` are the usual
sums); ``evaluator.hvp(handle, v)`` is the Hessian of the loss sum at that ``theta`` times ``v``. The
handle is explicit: no evaluator remembers the ``theta`` of its last call. Evaluators that keep the
per-row curvature in work buffers made once (Newton's steps evaluate the same chunk many times) number
each keep-curvature call; a handle older than the buffers' contents is refused, never silently used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, eq=False)
class Curvature:
    """Sums at one ``theta`` and the per-row curvature there (``rows``: the evaluator's own form)."""

    sums: Any
    rows: Any
    owner: Any
    generation: int


class KeepsCurvature:
    """Mixin: hands out :class:`Curvature` handles and checks them (see the module docstring)."""

    _generation: int = 0

    def _keep(self, sums: Any, rows: Any = None) -> Curvature:
        self._generation += 1
        return Curvature(sums, rows, self, self._generation)

    def _check(self, handle: Any, prepared: bool) -> Curvature:
        if not prepared:
            raise RuntimeError("this chunk was prepared without curvature (curvature=True for Newton)")
        if not isinstance(handle, Curvature) or handle.owner is not self:
            raise TypeError("hvp takes the handle of this chunk's sums(theta, keep_curvature=True)")
        if handle.generation != self._generation:
            raise RuntimeError("stale curvature handle: a later sums(keep_curvature=True) reused its buffers")
        return handle
