"""Categorical columns as sparse features: one-hot with a vocabulary, or hashed into buckets.

An :class:`Encoder` is made once per data set (the vocabulary of each one-hot column is the sorted set
of its distinct values, found in one pass over the chunks), stored with the model as plain JSON
(:meth:`Encoder.to_json`), and applied to every chunk, at training and at prediction time alike
(:meth:`Encoder.transform`). Encoded X is a CSR matrix: the numeric columns (an entry only where the
value is nonzero) followed by one indicator column per (column, value), or by ``n_buckets`` hash
columns. Values a vocabulary does not hold encode as zeros and are counted; missing values (empty
cells, nulls) encode as zeros and are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlogit.errors import DataError

#: seed of the stable feature hash (``sklearn.utils.murmurhash3_32`` of ``"column=value"``)
HASH_SEED = 0
_JSON_TYPE = "dlogit-encoder"


def text_values(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(strings of the present values, missing mask)`` of one column (any array-like)."""
    import pandas as pd

    s = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=object))
    missing = s.isna().to_numpy()
    present = s[~missing]
    if present.dtype.kind not in "OUS" or not all(isinstance(v, str) for v in present.head(64)):
        present = present.astype(str)
    return present.to_numpy(dtype=object), missing


def distinct(values: Any) -> list[str]:
    """The sorted distinct present values of one column, as strings."""
    import pandas as pd

    vals, _ = text_values(values)
    return sorted(pd.unique(vals).tolist())


def merge_distinct(parts: Iterable[Sequence[str]]) -> tuple[str, ...]:
    """The sorted union of several :func:`distinct` lists."""
    out: set[str] = set()
    for p in parts:
        out.update(p)
    return tuple(sorted(out))


#: more distinct values than this, all numbers and not all whole: a continuous column, not a category
CONTINUOUS_DISTINCT = 100


def continuous(values: Sequence[str]) -> bool:
    """Whether a one-hot vocabulary looks like a continuous numeric column (many distinct numbers, some
    with a fractional part): one indicator per value would be a feature per row, not a category."""
    if len(values) <= CONTINUOUS_DISTINCT:
        return False
    try:
        nums = np.asarray([float(v) for v in values])
    except ValueError:
        return False
    finite = nums[np.isfinite(nums)]
    return bool(finite.size and np.any(finite != np.round(finite)))


def continuous_notices(encoder: Encoder) -> list[str]:
    """A notice for each one-hot column whose vocabulary looks continuous (see :func:`continuous`)."""
    if encoder.vocabulary is None:
        return []
    return [f"--one-hot column {c!r} holds {len(v)} distinct non-integer numbers: it looks continuous, not "
            f"categorical ({len(v)} indicator columns); drop it from --one-hot to use it as one number"
            for c, v in zip(encoder.categorical, encoder.vocabulary) if continuous(v)]


def bucket_of(column: str, value: str, n_buckets: int) -> int:
    """The hash bucket of ``column=value`` (stable across processes, platforms and versions)."""
    from sklearn.utils import murmurhash3_32

    return int(murmurhash3_32(f"{column}={value}", seed=HASH_SEED, positive=True)) % n_buckets


@dataclass(frozen=True)
class Encoder:
    """How the feature columns of a table become X.

    Parameters
    ----------
    numeric : tuple of str
        Numeric feature columns, in order (X's first columns).
    categorical : tuple of str
        Encoded columns, in order.
    vocabulary : tuple of tuple of str, optional
        One-hot: the sorted values of each categorical column (one indicator column each).
    n_buckets : int, optional
        Hashing: the number of hash columns shared by all categorical columns (instead of a
        vocabulary).
    """

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    vocabulary: tuple[tuple[str, ...], ...] | None = None
    n_buckets: int | None = None

    def __post_init__(self) -> None:
        if (self.vocabulary is None) == (self.n_buckets is None):
            raise ValueError("an Encoder needs exactly one of vocabulary and n_buckets")
        if self.vocabulary is not None and len(self.vocabulary) != len(self.categorical):
            raise ValueError("one vocabulary per categorical column")

    @property
    def hashed(self) -> bool:
        return self.n_buckets is not None

    @property
    def n_features(self) -> int:
        if self.n_buckets is not None:
            return len(self.numeric) + self.n_buckets
        return len(self.numeric) + sum(len(v) for v in self.vocabulary or ())

    @property
    def columns(self) -> tuple[str, ...]:
        """The table columns this encoder reads."""
        return self.numeric + self.categorical

    def feature_names(self) -> list[str]:
        """``numeric + ["country=FR", ...]`` (one-hot) or ``numeric + ["hash_0", ...]`` (hashing)."""
        names = list(self.numeric)
        if self.n_buckets is not None:
            return names + [f"hash_{k}" for k in range(self.n_buckets)]
        for col, vocab in zip(self.categorical, self.vocabulary or ()):
            names += [f"{col}={v}" for v in vocab]
        return names

    def transform(self, frame: Mapping[str, Any], dtype: str = "float64") -> tuple[Any, int]:
        """``(CSR X, unseen count)`` for a table holding :attr:`columns` (a DataFrame or a dict of arrays)."""
        import scipy.sparse as sp

        missing_cols = [c for c in self.columns if c not in frame]
        if missing_cols:
            raise DataError(f"column {missing_cols[0]!r} is missing from the data (the encoder needs it)")
        first = self.columns[0] if self.columns else None
        n = len(frame[first]) if first is not None else 0
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        if self.numeric:
            dense = np.empty((n, len(self.numeric)), dtype=np.float64)
            for j, c in enumerate(self.numeric):
                try:
                    dense[:, j] = np.asarray(frame[c], dtype=np.float64)
                except (TypeError, ValueError):
                    raise DataError(f"column {c!r} is not numeric (it holds text)") from None
            r, k = np.nonzero(dense)  # NaN is nonzero: it stays, for validation to report
            rows.append(r)
            cols.append(k)
            vals.append(dense[r, k])
        offset = len(self.numeric)
        unseen = 0
        for j, c in enumerate(self.categorical):
            present, missing = text_values(frame[c])
            where = np.flatnonzero(~missing)
            if self.n_buckets is not None:
                uniq, inverse = np.unique(present.astype(str), return_inverse=True)
                table = np.array([bucket_of(c, u, self.n_buckets) for u in uniq], dtype=np.int64)
                code = table[inverse.ravel()] if uniq.size else np.zeros(0, np.int64)
                width = 0  # all columns share the buckets
            else:
                import pandas as pd

                vocab = self.vocabulary[j]  # type: ignore[index]
                code = pd.Index(vocab, dtype=object).get_indexer(present)
                unseen += int((code < 0).sum())
                width = len(vocab)
            ok = code >= 0
            rows.append(where[ok])
            cols.append(offset + code[ok])
            vals.append(np.ones(int(ok.sum())))
            offset += width
        if self.n_buckets is not None:
            offset += self.n_buckets
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        k = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        v = np.concatenate(vals) if vals else np.zeros(0)
        X = sp.coo_matrix((v, (r, k)), shape=(n, self.n_features), dtype=np.float64).tocsr()
        X.sum_duplicates()  # two hashed values in one bucket add up
        return X.astype(dtype, copy=False), unseen

    # -- JSON (plain, so that a model file stays free of pickles) -----------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": _JSON_TYPE, "version": 1, "numeric": list(self.numeric),
                               "categorical": list(self.categorical)}
        if self.n_buckets is not None:
            out.update(method="hash", n_buckets=self.n_buckets, hash="murmurhash3_32", seed=HASH_SEED)
        else:
            out.update(method="one-hot", vocabulary=[list(v) for v in self.vocabulary or ()])
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Encoder:
        try:
            if obj.get("type") != _JSON_TYPE or int(obj.get("version", 0)) != 1:
                raise ValueError
            numeric = tuple(str(c) for c in obj["numeric"])
            categorical = tuple(str(c) for c in obj["categorical"])
            if obj["method"] == "hash":
                if obj.get("hash") != "murmurhash3_32" or int(obj.get("seed", -1)) != HASH_SEED:
                    raise ValueError
                return cls(numeric, categorical, n_buckets=int(obj["n_buckets"]))
            if obj["method"] != "one-hot":
                raise ValueError
            vocab = tuple(tuple(str(v) for v in vs) for vs in obj["vocabulary"])
            return cls(numeric, categorical, vocabulary=vocab)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise DataError("not a dlogit encoder description (or one of an unknown version)") from None
