"""Cross-validation folds on chunks: fold assignments of rows, and the per-fold sums of one chunk. Pure.

A fold scheme assigns every row a fold ``0..m-1`` without moving data: :class:`KFoldScheme` gives the
contiguous folds of scikit-learn's ``KFold(m)`` (no shuffling) from a row's global index, so a chunk
only needs its first row's index; :class:`ExplicitFolds` carries the fold of every row (any splitter
of in-memory data, whose folds partition the rows).

:class:`FoldChunk` evaluates the ``m`` fold models of one regularization value in **one** pass over
its rows: ``Z = X @ [W_1; ...; W_m].T`` (one product, X read once), the row terms of model ``f``
weighted by ``s_i * c_f(y_i) * [fold(i) != f]`` (training rows of fold ``f``; ``c_f`` the fold's class
weights), then ``G = R.T @ X``. It returns one sums row per model (the :class:`~dlogit.family.SumsLayout`
of the fit), and :meth:`FoldChunk.scores` the held-out sums (rows of fold ``f`` at model ``f``) from
which the scores are computed: the loss sum, the number of correct predictions, the weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dlogit._xp import get_xp, to_numpy
from dlogit.family import Family, ParamLayout

#: rows per block of a fold evaluation: Z is (rows, m * K') float64
FOLD_BLOCK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class KFoldScheme:
    """scikit-learn's ``KFold(m)``: contiguous folds, the first ``n % m`` one row longer."""

    n_rows: int
    n_folds: int

    def bounds(self) -> np.ndarray:
        sizes = np.full(self.n_folds, self.n_rows // self.n_folds, dtype=np.int64)
        sizes[: self.n_rows % self.n_folds] += 1
        return np.concatenate([[0], np.cumsum(sizes)])

    def fold_of(self, start: int, stop: int) -> np.ndarray:
        """Folds of the rows ``start..stop-1`` (global indices)."""
        rows = np.arange(start, stop, dtype=np.int64)
        return (np.searchsorted(self.bounds(), rows, side="right") - 1).astype(np.int64)


@dataclass(frozen=True)
class ExplicitFolds:
    """The fold of every row, from any splitter whose test sets partition the rows."""

    folds: np.ndarray
    n_folds: int

    def fold_of(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.folds[start:stop], dtype=np.int64)

    @classmethod
    def from_splits(cls, splits: list[tuple[np.ndarray, np.ndarray]], n_rows: int) -> ExplicitFolds:
        from dlogit.errors import ConfigError

        folds = np.full(n_rows, -1, dtype=np.int64)
        for f, (train, test) in enumerate(splits):
            test = np.asarray(test)
            if np.any(folds[test] >= 0):
                raise ConfigError("the cross-validation splits' test sets overlap: each row must be held "
                                  "out by exactly one fold")
            folds[test] = f
            expect = np.setdiff1d(np.arange(n_rows), test)
            if len(train) != len(expect) or not np.array_equal(np.sort(train), expect):
                raise ConfigError("each split must train on every row it does not hold out (dlogit fits "
                                  "the folds of one penalty in one pass over the data)")
        if np.any(folds < 0):
            raise ConfigError("the cross-validation splits leave rows out of every test set")
        return cls(folds, len(splits))


class FoldChunk:
    """The fold models' sums of one chunk (see the module docstring); any array kind, any family."""

    def __init__(self, X: Any, codes: Any, sample_weight: Any, folds: np.ndarray, n_folds: int,
                 layout: ParamLayout, family: Family) -> None:
        sparse = hasattr(X, "nnz")
        if sparse:
            X = X.tocsr()
        elif not (X.dtype.kind == "f" and X.dtype.itemsize >= 4):
            X = X.astype(get_xp(X).float64)
        self.X = X
        xp = get_xp(X.data if sparse else X)
        self.xp = xp
        self.n, self.d = (int(v) for v in X.shape)
        self.m = int(n_folds)
        self.layout = layout
        self.family = family
        self.codes = xp.asarray(np.asarray(to_numpy(codes), dtype=np.int64))
        self.sw = xp.ones(self.n) if sample_weight is None else xp.asarray(sample_weight, dtype=xp.float64)
        self.folds = xp.asarray(np.asarray(folds, dtype=np.int64))
        k = layout.n_outputs
        rows = max(64, FOLD_BLOCK_ELEMENTS // max(1, self.m * k))
        self.blocks = [(lo, min(lo + rows, self.n)) for lo in range(0, self.n, rows)]
        self.dtype = X.dtype
        self.kernel = "folds"

    def _weights(self, lo: int, hi: int, mult: Any, train: bool) -> Any:
        """(rows, m) weights: training rows of each fold (times its class weights), or held-out rows."""
        xp = self.xp
        fm = self.folds[lo:hi, None] == xp.arange(self.m)[None, :]
        inside = ~fm if train else fm
        v = self.sw[lo:hi, None] * inside
        if train and mult is not None:
            v = v * xp.asarray(mult).T[self.codes[lo:hi]]
        return v

    def _margins(self, Xb: Any, thetas: Any) -> Any:
        xp = self.xp
        L = self.layout
        k, d = L.n_outputs, L.n_features
        W = thetas[:, : k * d].reshape(self.m * k, d)
        b = thetas[:, k * d:].reshape(self.m * k)
        Z = Xb @ W.T.astype(self.dtype, copy=False)
        Z = Z.toarray() if hasattr(Z, "toarray") else Z
        return (xp.asarray(Z).astype(xp.float64, copy=False) + b[None, :]).reshape(-1, self.m, k)

    def sums(self, thetas: Any, mult: Any = None) -> Any:
        """Training sums of the ``m`` fold models: (m, 1 + P) float64 (P the layout's size)."""
        xp = self.xp
        L = self.layout
        k, d = L.n_outputs, L.n_features
        th = xp.asarray(thetas, dtype=xp.float64).reshape(self.m, L.size)
        out = xp.zeros((self.m, 1 + L.size), dtype=xp.float64)
        for lo, hi in self.blocks:
            Xb = self.X[lo:hi]
            Z = self._margins(Xb, th)
            v = self._weights(lo, hi, mult, train=True)
            c = self.codes[lo:hi]
            if k == 1:
                sign = (1.0 - 2.0 * c.astype(xp.float64))[:, None]
                s = sign * Z[:, :, 0]
                l = xp.maximum(s, 0.0) + xp.log1p(xp.exp(-xp.abs(s)))
                R = (sign * xp.exp(s - l) * v)[:, :, None]
                loss = (l * v).sum(axis=0)
            else:
                mx = Z.max(axis=2, keepdims=True)
                E = xp.exp(Z - mx)
                S = E.sum(axis=2, keepdims=True)
                lse = (mx + xp.log(S))[:, :, 0]
                rows = xp.arange(hi - lo)
                loss = ((lse - Z[rows, :, c]) * v).sum(axis=0)
                R = E / S
                R[rows, :, c] -= 1.0
                R *= v[:, :, None]
            G = Xb.T @ R.reshape(hi - lo, self.m * k).astype(self.dtype, copy=False)
            G = G.toarray() if hasattr(G, "toarray") else G
            G = xp.asarray(G).astype(xp.float64, copy=False).T.reshape(self.m, k * d)
            out[:, 0] += loss
            out[:, 1: 1 + k * d] += G
            out[:, 1 + k * d:] += R.sum(axis=0)
        return out

    def scores(self, thetas: Any) -> Any:
        """Held-out sums of each fold model on its own fold: (m, 3) = (loss sum, correct, weight)."""
        xp = self.xp
        th = xp.asarray(thetas, dtype=xp.float64).reshape(self.m, self.layout.size)
        out = xp.zeros((self.m, 3), dtype=xp.float64)
        k = self.layout.n_outputs
        for lo, hi in self.blocks:
            Z = self._margins(self.X[lo:hi], th)
            u = self._weights(lo, hi, None, train=False)
            c = self.codes[lo:hi]
            if k == 1:
                z = Z[:, :, 0]
                sign = (1.0 - 2.0 * c.astype(xp.float64))[:, None]
                s = sign * z
                l = xp.maximum(s, 0.0) + xp.log1p(xp.exp(-xp.abs(s)))
                correct = (z > 0) == (c[:, None] == 1)
            else:
                mx = Z.max(axis=2, keepdims=True)
                lse = (mx + xp.log(xp.exp(Z - mx).sum(axis=2, keepdims=True)))[:, :, 0]
                rows = xp.arange(hi - lo)
                l = lse - Z[rows, :, c]
                correct = Z.argmax(axis=2) == c[:, None]
            out[:, 0] += (l * u).sum(axis=0)
            out[:, 1] += (correct * u).sum(axis=0)
            out[:, 2] += u.sum(axis=0)
        return out

    def hvp(self, thetas: Any, vs: Any, mult: Any = None) -> Any:
        """H.v of each fold model's training loss sum: (m, P), one pass (margins of theta and v together)."""
        xp = self.xp
        L = self.layout
        k, d = L.n_outputs, L.n_features
        th = xp.asarray(thetas, dtype=xp.float64).reshape(self.m, L.size)
        vv = xp.asarray(vs, dtype=xp.float64).reshape(self.m, L.size)
        out = xp.zeros((self.m, L.size), dtype=xp.float64)
        for lo, hi in self.blocks:
            Xb = self.X[lo:hi]
            Z = self._margins(Xb, th)
            U = self._margins(Xb, vv)
            v = self._weights(lo, hi, mult, train=True)
            if k == 1:
                sign = (1.0 - 2.0 * self.codes[lo:hi].astype(xp.float64))[:, None]
                s = sign * Z[:, :, 0]
                l = xp.maximum(s, 0.0) + xp.log1p(xp.exp(-xp.abs(s)))
                T = (xp.exp(s - 2.0 * l) * U[:, :, 0] * v)[:, :, None]
            else:
                mx = Z.max(axis=2, keepdims=True)
                P = xp.exp(Z - mx)
                P /= P.sum(axis=2, keepdims=True)
                PU = P * U
                T = (PU - P * PU.sum(axis=2, keepdims=True)) * v[:, :, None]
            G = Xb.T @ T.reshape(hi - lo, self.m * k).astype(self.dtype, copy=False)
            G = G.toarray() if hasattr(G, "toarray") else G
            out[:, : k * d] += xp.asarray(G).astype(xp.float64, copy=False).T.reshape(self.m, k * d)
            out[:, k * d:] += T.sum(axis=0)
        return out

    def class_weight_sums(self, n_classes: int) -> np.ndarray:
        """(m, K) weight of each class among the training rows of each fold (for per-fold class weights)."""
        xp = self.xp
        out = np.zeros((self.m, n_classes))
        for f in range(self.m):
            v = self.sw * (self.folds != f)
            out[f] = to_numpy(xp.bincount(self.codes, weights=v, minlength=n_classes))
        return out
