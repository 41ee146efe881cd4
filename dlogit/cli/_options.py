"""Options shared by several commands (cluster selection, TLS, data sources) and their parsers.

Importing this module loads click only: a usage error (click's parsing) fails before Dask or NumPy are
imported. The functions that read ``dlogit.*`` settings import :mod:`dlogit.config` themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

FORMAT_CHOICES = ["csv", "tsv", "parquet", "npy", "libsvm", "zarr"]


class FiniteFloat(click.ParamType):
    """A finite float, at least ``min`` (``positive``: strictly above it): ``inf``/``nan`` are usage errors."""

    name = "float"

    def __init__(self, min: float = 0.0, positive: bool = False) -> None:
        self.min, self.positive = float(min), positive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        import math

        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"must be a finite number, got {value!r}", param, ctx)
        if x < self.min or (self.positive and x == self.min):
            bound = f"> {self.min:g}" if self.positive else f">= {self.min:g}"
            self.fail(f"must be {bound}, got {value!r}", param, ctx)
        return x


class PenaltyValues(FiniteFloat):
    """One penalty (``0.01``) or a comma-separated list of them (``1e-4,1e-3,1e-2``: a path)."""

    name = "float[,float...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (float, int, tuple)):
            return value
        parts = [p for p in str(value).split(",") if p.strip()]
        if not parts:
            self.fail(f"{value!r} is not a number", param, ctx)
        vals = tuple(super(PenaltyValues, self).convert(p.strip(), param, ctx) for p in parts)
        return vals[0] if len(vals) == 1 else vals


def duration(ctx: click.Context | None, param: click.Parameter | None, value: Any) -> float | None:
    """A click callback: ``30``, ``2.5s``, ``5min`` -> seconds (a bad value is one usage line)."""
    if value is None:
        return None
    import dask

    try:
        seconds = float(dask.utils.parse_timedelta(value, default="seconds"))
    except (ValueError, TypeError, KeyError):
        raise click.BadParameter(f"{value!r} is not a duration (e.g. 30, 10s, 5min)") from None
    if not seconds > 0:
        raise click.BadParameter(f"must be positive, got {value!r}")
    return seconds


_CONFIG_DURATIONS = ("connect-timeout", "checkpoint-every", "engine.heartbeat", "engine.replica-every",
                     "engine.attach-timeout", "engine.recover-timeout", "monitor.interval")
_CONFIG_BYTES = ("chunk-bytes", "engine.worker-local-bytes", "engine.worker-local-bytes-gpu",
                 "cli.in-process-bytes")
_CONFIG_INTS = ("max-classes", "engine.max-recoveries", "engine.tree-radix")
_CONFIG_BOOLS = ("precondition", "engine.worker-malloc", "engine.remove-silent-workers")


def config_duration(key: str) -> float:
    """``dlogit.<key>`` in seconds; a bad value is a one-line :class:`~dlogit.errors.ConfigError`."""
    import dask

    from dlogit.config import setting
    from dlogit.errors import ConfigError

    value = setting(f"dlogit.{key}")
    try:
        seconds = float(dask.utils.parse_timedelta(value, default="seconds"))
    except (ValueError, TypeError, KeyError):
        raise ConfigError(f"dlogit.{key} must be a duration (e.g. 30s, 5min), got {value!r}") from None
    if not seconds > 0:
        raise ConfigError(f"dlogit.{key} must be positive, got {value!r}")
    return seconds


def check_config() -> None:
    """Check the ``dlogit.*`` settings a command may read (YAML, ``DASK_DLOGIT__*``) before any work,
    so that a bad value is one line naming the key, not a traceback from deep inside a fit."""
    import dask

    from dlogit.config import get_bool, setting
    from dlogit.errors import ConfigError

    def present(key: str) -> bool:
        return setting(f"dlogit.{key}") is not None

    for key in _CONFIG_DURATIONS:
        if present(key):
            config_duration(key)
    for key in _CONFIG_BYTES:
        if present(key):
            value = setting(f"dlogit.{key}")
            try:
                ok = int(dask.utils.parse_bytes(value)) >= 1
            except (ValueError, TypeError, KeyError):
                ok = False
            if not ok:
                raise ConfigError(f"dlogit.{key} must be a size (e.g. 128MiB), got {value!r}")
    for key in _CONFIG_INTS:
        if present(key):
            value = setting(f"dlogit.{key}")
            try:
                ok = int(value) == float(value) and int(value) >= 1
            except (ValueError, TypeError):
                ok = False
            if not ok:
                raise ConfigError(f"dlogit.{key} must be a positive integer, got {value!r}")
    for key in _CONFIG_BOOLS:
        get_bool(f"dlogit.{key}")


def byte_size(ctx: click.Context | None, param: click.Parameter | None, value: Any) -> int | None:
    """A click callback: ``128MiB``, ``1e6`` -> bytes."""
    if value is None:
        return None
    import dask

    try:
        n = int(dask.utils.parse_bytes(value))
    except (ValueError, TypeError):
        raise click.BadParameter(f"{value!r} is not a size (e.g. 64MiB, 1GB)") from None
    if n < 1:
        raise click.BadParameter(f"must be at least 1 byte, got {value!r}")
    return n


def _cache_bytes(ctx: click.Context | None, param: click.Parameter | None, value: Any) -> str | None:
    """A click callback for ``--cache-bytes``: a size (``1GiB``, ``0``) or a percentage (``50%``)."""
    if value is None:
        return None
    from dlogit.engine import parse_cache_bytes
    from dlogit.errors import ConfigError

    try:
        parse_cache_bytes(value)
    except ConfigError:
        raise click.BadParameter(f"{value!r} is not a size (e.g. 1GiB, 0) or a percentage of the workers' "
                                 "memory_limit (e.g. 50%)") from None
    return str(value)


#: ``dlogit train --cache-bytes``: the chunk cache of each worker (``dlogit.engine.cache-bytes``)
cache_bytes_option = click.option(
    "--cache-bytes", "cache_bytes", default=None, callback=_cache_bytes, metavar="SIZE|N%",
    help="Data chunks each worker keeps in memory, e.g. 1GiB, 0 or 50% of its memory_limit; the others "
         "are read again from DATA at every evaluation [dlogit.engine.cache-bytes: 50%].")


def _columns(ctx: click.Context | None, param: click.Parameter | None, value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    out: list[str] = []
    for v in value:
        out.extend(c.strip() for c in str(v).split(",") if c.strip())
    return tuple(out)


def _memory_limit(ctx: click.Context | None, param: click.Parameter | None, value: Any) -> str | None:
    """A click callback for ``--memory-limit``: checked before anything starts."""
    if value is None:
        return None
    from dlogit.cluster import check_memory_limit
    from dlogit.errors import ClusterError

    try:
        return check_memory_limit(value)
    except ClusterError as exc:
        raise click.BadParameter(str(exc).removeprefix("--memory-limit ")) from None


def cluster_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Where to run: a local cluster (workers, GPUs, host) or an existing scheduler (+ TLS)."""
    opts = [
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Local CPU worker processes (default: min(4, cores)); ignored with --gpus; "
                          "a local cluster only (a warning with --scheduler)."),
        click.option("--gpus", default=None,
                     help="Local GPU workers: comma-separated ids or 'all' (dask-cuda, one worker per GPU)."),
        click.option("--rmm-pool-size", default=None, help="RMM pool per GPU worker, e.g. 8GB."),
        click.option("--memory-limit", default=None, callback=_memory_limit, metavar="SIZE|FRACTION",
                     help="Memory limit of each local worker, e.g. 1GiB or 0.25 of the machine's memory "
                          "[default: auto, the machine's memory shared by the workers]; --cache-bytes N% "
                          "is N% of it."),
        click.option("--host", default="127.0.0.1", show_default=True,
                     help="Interface the local cluster's scheduler and workers bind (the dashboard stays "
                          "on loopback unless --dashboard-address)."),
        click.option("--dashboard-address", default=None,
                     help="Dashboard address of the local cluster (plain HTTP, with /metrics) "
                          "[default: 127.0.0.1:8787, or a free port]."),
        click.option("--scheduler", default=None,  # DLOGIT_SCHEDULER: read by resolve_scheduler, below
                     help="Existing scheduler address, e.g. tcp://10.0.0.5:8786 [env DLOGIT_SCHEDULER]."),
        click.option("--scheduler-file", type=click.Path(), default=None,
                     help="Scheduler file written by `dask scheduler --scheduler-file`."),
        click.option("--connect-timeout", default=None, callback=duration,
                     help="Give up reaching the scheduler after this long (e.g. 10s) [dlogit.connect-timeout]."),
        click.option("--tls-ca-file", type=click.Path(), default=None, help="TLS CA certificate."),
        click.option("--tls-cert", type=click.Path(), default=None, help="TLS certificate."),
        click.option("--tls-key", type=click.Path(), default=None, help="TLS private key."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def data_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """How to read DATA: format, columns, labels, weights, categoricals, chunking, precision."""
    opts = [
        click.option("--label", default=None,
                     help="Label column of CSV/TSV/Parquet DATA (any labels: numbers, booleans, strings) "
                          "[default: 'label'; predict/evaluate: the model's]."),
        click.option("--labels", default=None, metavar="FILE",
                     help="Labels of NPY/Zarr DATA (a 1-D .npy, or a Zarr array)."),
        click.option("--weights", default=None, metavar="COLUMN|FILE.npy",
                     help="Row weights: a column of DATA (excluded from the features) or a 1-D .npy."),
        click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), default=None,
                     help="Format of DATA [default: from its name]."),
        click.option("--sep", default=None,
                     help="CSV field separator, one character ('\\t': tab) [default: ',' (tab for .tsv)]."),
        click.option("--no-header", "no_header", is_flag=True, default=None,
                     help="CSV/TSV DATA has no header line: columns are named by position (--label 0 ...) "
                          "[predict/evaluate: as the model was trained]."),
        click.option("--index-col", default=None, metavar="COLUMN",
                     help="A column to drop as a row index (pandas' unnamed index column is dropped anyway)."),
        click.option("--n-features", type=click.IntRange(min=1), default=None,
                     help="LIBSVM: number of features when the file does not reach the last one."),
        click.option("--one-hot", "one_hot", multiple=True, callback=_columns, metavar="COL,...",
                     help="Encode these categorical columns one-hot (sparse; the vocabulary is kept in the model)."),
        click.option("--hash-features", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Hash the --one-hot columns into N buckets instead (many distinct values)."),
        click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None,
                     help="Precision of X on the workers [default: the data's, float64 for synthetic]."),
        click.option("--chunk-rows", type=click.IntRange(min=1), default=None,
                     help="Rows per chunk [default: ~128 MiB of X per chunk]."),
        click.option("--chunk-bytes", default=None, callback=byte_size, metavar="SIZE",
                     help="Target size of a chunk, e.g. 64MiB [dlogit.chunk-bytes: 128MiB]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


DATA_KEYS = ("label", "labels", "weights", "fmt", "sep", "no_header", "index_col", "n_features", "one_hot",
             "hash_features", "dtype", "chunk_rows", "chunk_bytes")


def source_from_options(path: str, opts: dict[str, Any], require_label: bool = True) -> Any:
    """The :class:`dlogit.io.Source` the data options describe (relative paths made absolute)."""
    from dlogit.io import Source

    if opts.get("hash_features") and not opts.get("one_hot"):
        raise click.BadParameter("--hash-features needs --one-hot COLUMNS (the columns to hash)",
                                 param_hint="'--hash-features'")
    src = Source(path=path, format=opts.get("fmt"), label=opts.get("label") or "label", labels=opts.get("labels"),
                 weights=opts.get("weights"), sep=opts.get("sep"), header=not opts.get("no_header"),
                 index_col=opts.get("index_col"),
                 n_features=opts.get("n_features"), one_hot=tuple(opts.get("one_hot") or ()),
                 hash_features=opts.get("hash_features"), chunk_rows=opts.get("chunk_rows"),
                 chunk_bytes=opts.get("chunk_bytes"), dtype=opts.get("dtype"), require_label=require_label)
    return src.absolute() if hasattr(src, "absolute") else src


def check_label_option(label: str | None, kind: str) -> None:
    """``--label`` names a table column or a Zarr array: with NPY or LIBSVM DATA it would be ignored."""
    if label is None or kind not in ("npy", "libsvm"):
        return
    from dlogit.errors import ConfigError

    where = "--labels FILE.npy" if kind == "npy" else "the first field of each line"
    raise ConfigError(f"--label {label} names a column of CSV/TSV/Parquet DATA (or an array of a Zarr "
                      f"group), but DATA is {kind}: its labels come from {where}")
