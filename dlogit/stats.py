"""The validation pass: one read of every chunk checks it and summarizes it. Pure, array-agnostic.

:func:`chunk_stats` checks a chunk (2-D numeric X without NaN/infinity -- on the stored values of a
sparse X, never densified --, labels of the right length, finite non-negative weights) and returns
its :class:`ChunkStats`: rows, weight sum, the labels' distinct values with counts and weight sums
(classes are found here), and scaled column moments for the preconditioner (weighted by the row
weights, so that weights and repeated rows summarize alike). :func:`merge_stats`
combines two; the engine combines them along the fixed chunk tree, so the result (and with it the
preconditioner and the fit) is the same on any number of workers.

Column moments are kept *scaled* so that nothing overflows for values near 1e300: per column the
largest magnitude ``M``, ``S = sum x / M`` and ``Q = sum (x / M)^2``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlogit._xp import get_xp, to_numpy
from dlogit.errors import DataError
from dlogit.family import check_sample_weight, label_counts, merge_label_counts


@dataclass
class ChunkStats:
    """Summary of one chunk, or of a tree node of chunks."""

    rows: int
    weight_sum: float
    labels: tuple[np.ndarray, np.ndarray, np.ndarray]  # values, row counts, weight sums
    col_max: np.ndarray
    col_sum: np.ndarray
    col_sq: np.ndarray
    n_features: int
    nnz: int = 0

    def fingerprint(self) -> str:
        """A digest of everything here (a checkpoint is only resumed on data with the same one)."""
        h = hashlib.sha256()
        h.update(np.asarray([self.rows, self.n_features, self.nnz], np.int64).tobytes())
        h.update(np.float64(self.weight_sum).tobytes())
        values, counts, sums = self.labels
        h.update(np.asarray(values).astype(str).tobytes())
        h.update(counts.astype(np.int64).tobytes())
        for a in (sums, self.col_max, self.col_sum, self.col_sq):
            h.update(np.ascontiguousarray(a, np.float64).tobytes())
        return h.hexdigest()[:32]


def _where(index: int | None, where: str) -> str:
    if index is None and not where:
        return ""
    parts = ([f"chunk {index}"] if index is not None else []) + ([where] if where else [])
    return f" ({', '.join(parts)})"


def chunk_stats(X: Any, y: Any, sample_weight: Any = None, index: int | None = None,
                where: str = "", require_labels: bool = True, known: ChunkStats | None = None) -> ChunkStats:
    """Validate one chunk and summarize it (see the module docstring). ``known``: this chunk's summary
    from an earlier pass over the very same X and row weights; its column moments are taken from there
    (X is not read again; the labels and weights are checked and counted anew)."""
    at = _where(index, where)
    sparse = hasattr(X, "tocsr") and hasattr(X, "nnz")
    if getattr(X, "ndim", 2) != 2 or len(X.shape) != 2:
        raise DataError(f"X must be 2-D (rows x features), got {len(X.shape)}-D{at}")
    n, d = (int(v) for v in X.shape)
    dtype = np.dtype(X.dtype)
    if dtype.kind not in "fiub":
        raise DataError(f"X must be numeric, got dtype {dtype}{at}")
    if y is not None and require_labels:
        if y.ndim != 1:
            raise DataError(f"labels must be 1-D, got shape {tuple(y.shape)}{at}")
        if y.shape[0] != n:
            raise DataError(f"X has {n} rows but y has {y.shape[0]} labels{at}")
    if sample_weight is not None:
        _check_weight_values(sample_weight, index, where)
        check_sample_weight(sample_weight, n, where=at.strip(" ()"))
    if known is not None:
        if (known.rows, known.n_features) != (n, d):
            raise ValueError(f"a kept summary of {known.rows}x{known.n_features} for a {n}x{d} chunk")
        col_max, col_sum, col_sq, nnz = known.col_max, known.col_sum, known.col_sq, known.nnz
    elif sparse:
        X = X.tocsr()
        if not type(X).__module__.startswith("cupy"):
            from dlogit.kernels.sparse import check_csr

            check_csr(X, index or 0, where)  # indices in range, indptr monotone, finite values
        data = X.data
        xp = get_xp(data)
        if dtype.kind == "f" and data.size and not bool(xp.isfinite(data).all()):
            bad = int((~xp.isfinite(data)).sum())
            raise DataError(f"X contains {bad} NaN or infinite value(s){at}")
        col_max, col_sum, col_sq = _sparse_moments(X, d, sample_weight)
        nnz = int(X.nnz)
    else:
        col_max, col_sum, col_sq = _dense_moments(X, at, sample_weight)
        nnz = n * d
    labels = label_counts(y, sample_weight) if y is not None and require_labels else (
        np.zeros(0), np.zeros(0, np.int64), np.zeros(0))
    wsum = float(to_numpy(sample_weight).astype(np.float64).sum()) if sample_weight is not None else float(n)
    return ChunkStats(n, wsum, labels, col_max, col_sum, col_sq, d, nnz)


def _check_weight_values(w: Any, index: int | None, where: str) -> None:
    """A negative, NaN or infinite row weight is an error naming its row (counted within its chunk)."""
    if getattr(w, "ndim", 0) != 1 or w.dtype.kind not in "fiub" or not w.size:
        return  # shapes and dtypes: check_sample_weight's messages
    xp = get_xp(w)
    bad = ~(xp.isfinite(w) & (w >= 0)) if w.dtype.kind == "f" else (w < 0)
    if bool(bad.any()):
        i = int(xp.argmax(bad))
        value = float(to_numpy(w[i : i + 1])[0])
        row = f"row {i}" + (f" of chunk {index}" if index is not None else "")
        row += f" ({where})" if where else ""
        kind = "NaN" if math.isnan(value) else ("infinite" if abs(value) == float("inf") else "negative")
        raise DataError(f"sample_weight of {row} is {value} ({kind}): row weights must be finite and >= 0")


def _dense_moments(X: Any, at: str, sw: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # with row weights the sums are weighted (S = sum w x / M, Q = sum w (x / M)^2), so that weights
    # and repeated rows give the same preconditioner and standardized coordinates (the same fit)
    xp = get_xp(X)
    n, d = X.shape
    if n == 0:
        z = np.zeros(d)
        return z, z.copy(), z.copy()
    if xp is np:
        from dlogit.chunks.blocks import Blocks

        # two passes over cache-sized blocks through one scratch buffer: no temporary per block
        # (on a Dask worker, whose nanny sets MALLOC_TRIM_THRESHOLD_, every freed temporary above
        # 128 KiB goes back to the OS and the next one page-faults in again: 3x slower)
        blocks = Blocks(X)
        tmp = np.empty((blocks.rows, d), dtype=np.float64)
        col_max = np.zeros(d)
        part = np.empty(d)
        for lo, hi in blocks.ranges:
            t = tmp[: hi - lo]
            np.abs(blocks.get(lo, hi), out=t, casting="unsafe")
            t.max(axis=0, out=part)  # NaN propagates; inf stays: checked once below
            np.maximum(col_max, part, out=col_max)
        if X.dtype.kind == "f" and not bool(np.isfinite(col_max).all()):
            bad = sum(int((~np.isfinite(blocks.get(lo, hi))).sum()) for lo, hi in blocks.ranges)
            raise DataError(f"X contains {bad} NaN or infinite value(s){at}")
        inv = np.where(col_max > 0, 1.0 / np.where(col_max > 0, col_max, 1.0), 0.0)
        col_sum = np.zeros(d)
        col_sq = np.zeros(d)
        swf = None if sw is None else np.asarray(sw, dtype=np.float64)
        root = None if swf is None else np.sqrt(swf)[:, None]
        for lo, hi in blocks.ranges:
            t = tmp[: hi - lo]
            np.multiply(blocks.get(lo, hi), inv, out=t, casting="unsafe")
            if swf is None:
                col_sum += t.sum(axis=0)
            else:
                col_sum += swf[lo:hi] @ t
                np.multiply(t, root[lo:hi], out=t)  # sum w x^2 = sum (sqrt(w) x)^2: no temporary
            col_sq += np.einsum("ij,ij->j", t, t)
        return col_max, col_sum, col_sq
    Xf = X.astype(xp.float64) if X.dtype.kind != "f" else X
    if not bool(xp.isfinite(Xf).all()):
        bad = int((~xp.isfinite(Xf)).sum())
        raise DataError(f"X contains {bad} NaN or infinite value(s){at}")
    col_max = xp.abs(Xf).max(axis=0).astype(xp.float64)
    inv = xp.where(col_max > 0, 1.0 / xp.where(col_max > 0, col_max, 1.0), 0.0)
    Xs = Xf * inv
    Xw = Xs if sw is None else Xs * xp.asarray(sw, dtype=xp.float64)[:, None]
    return to_numpy(col_max), to_numpy(Xw.sum(axis=0)), to_numpy((Xw * Xs).sum(axis=0))


def _sparse_moments(X: Any, d: int, sw: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = to_numpy(X.data).astype(np.float64, copy=False)
    idx = to_numpy(X.indices)
    col_max = np.zeros(d)
    if data.size:
        np.maximum.at(col_max, idx, np.abs(data))
    inv = np.where(col_max > 0, 1.0 / np.where(col_max > 0, col_max, 1.0), 0.0)
    xs = data * inv[idx]
    xw = xs
    if sw is not None:  # each stored value times its row's weight
        counts = np.diff(to_numpy(X.indptr))
        xw = xs * np.repeat(to_numpy(sw).astype(np.float64), counts)
    col_sum = np.bincount(idx, weights=xw, minlength=d)
    col_sq = np.bincount(idx, weights=xw * xs, minlength=d)
    return col_max, col_sum, col_sq


def merge_stats(a: ChunkStats, b: ChunkStats) -> ChunkStats:
    """Combine two summaries (associative up to rounding; the engine fixes the order)."""
    if a.n_features != b.n_features:
        raise DataError(f"chunks have {a.n_features} and {b.n_features} feature columns")
    m = np.maximum(a.col_max, b.col_max)
    safe = np.where(m > 0, m, 1.0)
    ra = np.where(m > 0, a.col_max / safe, 0.0)
    rb = np.where(m > 0, b.col_max / safe, 0.0)
    return ChunkStats(
        a.rows + b.rows, a.weight_sum + b.weight_sum, merge_label_counts([a.labels, b.labels]), m,
        a.col_sum * ra + b.col_sum * rb, a.col_sq * ra * ra + b.col_sq * rb * rb, a.n_features,
        a.nnz + b.nnz)
