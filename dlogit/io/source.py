"""What to read (:class:`Source`), what a scan found (:class:`DatasetInfo`), one chunk (:class:`Piece`).

These are the typed contracts between the readers (one module per format in :mod:`dlogit.io`), the
façade :mod:`dlogit.data` and its callers. All of them are picklable: a :class:`DatasetInfo` travels to
the workers inside every chunk-reading task.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dlogit.config import setting
from dlogit.errors import DataError

if TYPE_CHECKING:
    import scipy.sparse

    from dlogit.io.encode import Encoder

#: the formats ``Source.format`` accepts
FORMATS = ("csv", "tsv", "parquet", "npy", "libsvm", "zarr")
#: compression suffixes of text files (CSV/TSV/LIBSVM), by extension
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "txt", ".parquet": "parquet",
               ".pq": "parquet", ".npy": "npy", ".svm": "libsvm", ".libsvm": "libsvm",
               ".svmlight": "libsvm", ".zarr": "zarr"}


@dataclass(frozen=True)
class Source:
    """What to read. Picklable; travels to the workers.

    Parameters
    ----------
    path : str
        A file, a directory (a Parquet dataset, a Zarr group, or a folder of CSV/LIBSVM parts), a glob
        (``data/part-*.csv.gz``) or an fsspec URL (``s3://``, ``gs://``, ``memory://``, ``file://`` ...).
    format : str, optional
        ``"csv"``, ``"tsv"``, ``"parquet"``, ``"npy"``, ``"libsvm"`` or ``"zarr"``; by default told from
        the name (compression suffixes ``.gz``, ``.bz2``, ``.xz``, ``.zst`` are looked through).
    label : str or None, default "label"
        The label column (CSV/TSV/Parquet), or the label array of a Zarr group.
    labels : str, optional
        A separate labels file (a 1-D ``.npy``, or a Zarr array) for NPY/Zarr features.
    weights : str, optional
        Row weights: a column of the CSV/Parquet file (excluded from the features), the name of an
        array in a Zarr group, or a path to a 1-D ``.npy``.
    sep : str, optional
        CSV separator, one character (default ``,``; TSV: tab; ``\\t`` is read as a tab). A ``.txt``
        file needs it (or ``format``).
    header : bool, default True
        CSV/TSV: the first line names the columns. ``False``: every line is data and the columns are
        named by position (``"0"``, ``"1"``, ...), so ``label="0"`` names the first one.
    index_col : str, optional
        A column to drop as a row index (replaces the automatic drop of a leading unnamed column).
    n_features : int, optional
        LIBSVM: the number of features when the file does not reach the last column.
    zero_based : bool, optional
        LIBSVM indices; ``None`` detects them (0-based when any index 0 is seen).
    one_hot : tuple of str
        Categorical columns to one-hot encode (X becomes a CSR matrix).
    hash_features : int, optional
        Hash the ``one_hot`` columns (or, with no ``one_hot``, every text column) into this many
        buckets instead of a vocabulary.
    chunk_rows : int, optional
        Rows per chunk (row groups and Zarr chunks are never split: whole ones are grouped).
    chunk_bytes : int or str, optional
        Target bytes of X per chunk (default ``dlogit.chunk-bytes``).
    dtype : {"float32", "float64"}, optional
        Float type of X (default: the data's float type, else float64).
    require_label : bool, default True
        A missing label column is an error (else the data is read without labels).
    """

    path: str
    format: str | None = None
    label: str | None = "label"
    labels: str | None = None
    weights: str | None = None
    sep: str | None = None
    header: bool = True
    index_col: str | None = None
    n_features: int | None = None
    zero_based: bool | None = None
    one_hot: tuple[str, ...] = ()
    hash_features: int | None = None
    chunk_rows: int | None = None
    chunk_bytes: int | str | None = None
    dtype: str | None = None
    require_label: bool = True
    #: exactly these feature columns, in this order (tables); others are ignored. Predict and
    #: evaluate read new data with the model's feature names so extra columns (ids, weights) are fine.
    features: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            object.__setattr__(self, "path", os.fspath(self.path))
        if self.features is not None:
            object.__setattr__(self, "features", tuple(str(c) for c in self.features))
        if isinstance(self.one_hot, str):
            object.__setattr__(self, "one_hot", (self.one_hot,))
        else:
            object.__setattr__(self, "one_hot", tuple(self.one_hot))
        if self.sep == "\\t":  # typed as backslash-t in a shell
            object.__setattr__(self, "sep", "\t")
        if self.sep is not None and len(self.sep) != 1:
            raise DataError(f"--sep must be one character, got {self.sep!r}")
        if self.format is not None and self.format not in FORMATS:
            raise DataError(f"unknown format {self.format!r}: use --format {'|'.join(FORMATS)}")
        if self.dtype is not None and self.dtype not in ("float32", "float64"):
            raise DataError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.chunk_rows is not None and int(self.chunk_rows) < 1:
            raise DataError(f"chunk rows must be at least 1, got {self.chunk_rows}")
        if self.hash_features is not None and int(self.hash_features) < 1:
            raise DataError(f"--hash-features must be at least 1, got {self.hash_features}")
        if self.n_features is not None and int(self.n_features) < 1:
            raise DataError(f"--n-features must be at least 1, got {self.n_features}")

    @property
    def weights_path(self) -> str | None:
        """``weights`` when it names a ``.npy`` file (else ``None``: it is a column or array name)."""
        if self.weights is not None and self.weights.lower().endswith(".npy"):
            return self.weights
        return None

    def absolute(self) -> Source:
        """This source with its local paths made absolute (URLs are left as they are)."""
        from dataclasses import replace

        def fix(p: str | None) -> str | None:
            return p if p is None or is_url(p) else os.path.abspath(os.path.expanduser(p))

        changes: dict[str, Any] = {"path": fix(self.path)}
        if self.labels is not None:
            changes["labels"] = fix(self.labels)
        if self.weights_path is not None:
            changes["weights"] = fix(self.weights)
        return replace(self, **changes)


@dataclass
class Survey:
    """What one pass over one survey unit (a chunk, or a whole compressed file) found."""

    rows: int = 0
    nbytes: int = 0  # text bytes (decompressed) seen
    min_index: int | None = None  # LIBSVM feature indices as written
    max_index: int | None = None
    uniques: dict[str, list[str]] = field(default_factory=dict)  # one-hot columns' distinct values
    integer_labels: bool = True  # LIBSVM: every label is written as an integer (``-1``, ``+1``, ``3``)


@dataclass
class DatasetInfo:
    """What a scan found; picklable (it travels inside every chunk-reading task).

    ``pieces[i]`` describes chunk ``i`` in the reader's own terms; ``units`` lists the chunks read by one
    task (a compressed file is decompressed once and its rows split into several chunks); ``surveys``
    holds the per-unit work of the scan's pass (row counts, LIBSVM index range, one-hot vocabularies)
    until :func:`dlogit.io.finish` folds the results in.
    """

    source: Source
    kind: str
    n_features: int
    feature_names: list[str] | None
    sparse: bool
    dtype: str
    pieces: list[Any]
    piece_rows: list[int | None]
    has_labels: bool
    has_weights: bool
    encoder: Encoder | None = None
    notices: list[str] = field(default_factory=list)
    units: list[list[int]] = field(default_factory=list)
    label_dtype: str | None = None
    surveys: list[Any] = field(default_factory=list)
    layout: Any = None  # format-specific plan (files, columns, separator ...)
    weights_rows: int | None = None  # length of the weights .npy (checked against the rows by finish)

    def __post_init__(self) -> None:
        if not self.units:
            self.units = [[i] for i in range(len(self.pieces))]

    @property
    def n_rows(self) -> int | None:
        """Total rows, when every chunk's row count is known."""
        if any(r is None for r in self.piece_rows):
            return None
        return int(sum(self.piece_rows))  # type: ignore[arg-type]

    def row_starts(self) -> list[int]:
        """The first global row of every chunk (needs known row counts)."""
        starts, at = [], 0
        for r in self.piece_rows:
            if r is None:
                raise DataError("the row counts of the chunks are not known")
            starts.append(at)
            at += r
        return starts

    def unit_of(self, i: int) -> tuple[int, int]:
        """``(unit, position in unit)`` of chunk ``i``."""
        for u, members in enumerate(self.units):
            if i in members:
                return u, members.index(i)
        raise IndexError(f"chunk {i} out of range ({len(self.pieces)} chunks)")

    # -- names the CLI of dlogit 0.1 reads (``info.label``, ``info.labels_path``, ``info.columns``) --
    @property
    def label(self) -> str | None:
        """The label column when the labels come from one (CSV/TSV/Parquet), else ``None``."""
        return self.source.label if self.has_labels and self.kind in ("csv", "tsv", "parquet") else None

    @property
    def labels_path(self) -> str | None:
        """The separate labels file, when there is one."""
        return self.source.labels if self.has_labels else None

    @property
    def columns(self) -> list[str]:
        """Feature names (empty when the format has none)."""
        return list(self.feature_names or [])


@dataclass
class Piece:
    """One chunk as read: ``X`` (dense C-contiguous float or CSR), raw labels, float64 weights."""

    X: np.ndarray | scipy.sparse.csr_matrix
    y: np.ndarray | None
    sample_weight: np.ndarray | None
    n_unseen: int = 0  # categorical values outside the encoder's vocabulary (encoded as zeros)

    def as_tuple(self) -> tuple[Any, Any, Any]:
        return self.X, self.y, self.sample_weight


# --------------------------------------------------------------------------------------------------
# telling formats from names


def is_url(path: str) -> bool:
    """Whether ``path`` is an fsspec URL (``proto://...``)."""
    return "://" in path


def split_compression(name: str) -> tuple[str, str | None]:
    """``"a.csv.gz"`` -> ``("a.csv", "gzip")``; names without a known suffix -> ``(name, None)``."""
    base, ext = posixpath.splitext(name)
    comp = COMPRESSIONS.get(ext.lower())
    return (base, comp) if comp else (name, None)


def kind_of_name(name: str) -> str | None:
    """The format a file name suggests (``"txt"`` for ``.txt``), or ``None``."""
    base, _ = split_compression(name.rstrip("/"))
    return _EXTENSIONS.get(posixpath.splitext(base)[1].lower())


def chunk_bytes_of(source: Source) -> int:
    """Target bytes of X per chunk: ``source.chunk_bytes``, else ``dlogit.chunk-bytes``."""
    import dask

    value = source.chunk_bytes if source.chunk_bytes is not None else setting("dlogit.chunk-bytes")
    return max(1, int(dask.utils.parse_bytes(value)))


def rows_per_chunk(source: Source, row_bytes: int) -> int:
    """``source.chunk_rows``, else about :func:`chunk_bytes_of` bytes of X per chunk."""
    if source.chunk_rows is not None:
        return int(source.chunk_rows)
    return max(1, chunk_bytes_of(source) // max(1, int(row_bytes)))


def row_ranges(n_rows: int, rows_per_chunk: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``n_rows`` rows."""
    return [(s, min(n_rows, s + rows_per_chunk)) for s in range(0, n_rows, rows_per_chunk)]


def unknown_format(path: str) -> DataError:
    return DataError(f"cannot tell the format of {path!r}: use --format {'|'.join(FORMATS)}")


def check_finite(X: Any, where: Any, column: Any) -> None:
    """A :class:`DataError` naming the first missing, NaN or infinite feature value of a chunk as read:
    ``where(i)`` says where local row ``i`` lies (``"f.csv: row 17"``), ``column(j)`` names column ``j``
    (``"column 'age'"``).

    Checked on the reader's side so the message names the file, row and column (the validation pass
    only knows a chunk and a worker). A cheap column-sum check first; the search only on failure.
    """
    sparse = hasattr(X, "indptr")
    values = X.data if sparse else X
    if values.dtype.kind != "f" or values.size == 0:
        return
    if sparse:
        bad = ~np.isfinite(values)
        if not bad.any():
            return
        k = int(np.argmax(bad))
        i = int(np.searchsorted(X.indptr, k, side="right")) - 1
        j = int(X.indices[k])
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            if bool(np.isfinite(np.add.reduce(values, axis=0)).all()):
                return
        bad = ~np.isfinite(values)
        if not bad.any():  # the sums overflowed: every value is finite
            return
        i = int(np.argmax(bad.any(axis=1)))
        j = int(np.argmax(bad[i]))
    n = int(bad.sum())
    raise DataError(f"{where(i)}, {column(j)} holds a missing, NaN or infinite value ({n} such "
                    "value(s) in this chunk); fill or drop those rows first")
