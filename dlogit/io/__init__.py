"""dlogit's data readers: CSV/TSV (globs, compressed), Parquet datasets, NPY, LIBSVM, Zarr, fsspec URLs.

:class:`Source` says what to read; :func:`scan` inspects it and plans the chunks
(:class:`DatasetInfo`); :func:`read_piece` / :func:`read_unit` read chunks (:class:`Piece`). A
distributed scan splits :func:`scan` into :func:`plan` (one worker), :func:`survey` (every worker, a
pass over the chunks) and :func:`finish` (the client); :mod:`dlogit.data` builds the Dask arrays.
Categorical columns are encoded by an :class:`Encoder`.

Module per format: :mod:`~dlogit.io.csv`, :mod:`~dlogit.io.parquet`, :mod:`~dlogit.io.npy`,
:mod:`~dlogit.io.libsvm`, :mod:`~dlogit.io.zarr`; shared: :mod:`~dlogit.io.source` (contracts),
:mod:`~dlogit.io.fs` (fsspec, compression, error lines), :mod:`~dlogit.io.text` (cutting text files),
:mod:`~dlogit.io.table` (column roles), :mod:`~dlogit.io.encode` (categoricals).
"""

from __future__ import annotations

from dlogit.io.encode import Encoder
from dlogit.io.fs import on_workers
from dlogit.io.scan import READERS, detect, finish, plan, read_piece, read_unit, scan, survey
from dlogit.io.source import FORMATS, DatasetInfo, Piece, Source, Survey

__all__ = ["FORMATS", "READERS", "DatasetInfo", "Encoder", "Piece", "Source", "Survey", "detect", "finish",
           "on_workers", "plan", "read_piece", "read_unit", "scan", "survey"]
