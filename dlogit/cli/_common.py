"""Helpers shared by the commands: a model and a data file whose features match it; JSON output."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def json_value(x: Any) -> Any:
    """``x`` as JSON can hold it: NumPy scalars as Python numbers and booleans (a class label 2 stays
    the number 2), non-finite floats as ``None`` (``null``: ``NaN`` is not JSON), containers
    converted item by item; anything else as text."""
    if isinstance(x, dict):
        return {str(k): json_value(v) for k, v in x.items()}
    if isinstance(x, np.ndarray) and x.ndim == 0:  # np.array(1.5): a scalar, not a sequence
        x = x.item()
    if isinstance(x, (list, tuple, np.ndarray)):
        return [json_value(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return str(x)


def json_line(obj: Any) -> str:
    """One line of strict JSON (no ``NaN``/``Infinity``) for a command's ``--json``."""
    return json.dumps(json_value(obj), allow_nan=False)


def load_for_model(model_path: str, data: str, opts: dict[str, Any], require_label: bool,
                   quiet: bool = False) -> tuple[Any, Any, np.ndarray | None, np.ndarray | None]:
    """``(model, X, y, w)`` for DATA read the way the model's training data was read (the same label
    column, separator, index column, feature columns by name, categorical encoding and LIBSVM index
    base and width, unless the options say otherwise; row weights only with ``--weights``);
    non-finite features and a feature mismatch are one-line :class:`DataError`s."""
    from dataclasses import replace

    from dlogit.cli._options import check_label_option, source_from_options
    from dlogit.data import load_local
    from dlogit.errors import DataError
    from dlogit.estimator import load_model
    from dlogit.stats import chunk_stats

    model = load_model(model_path)
    if model.status_ == "diverged":
        from dlogit.errors import ModelError

        raise ModelError(f"{model_path} holds a fit that diverged (kept with --keep-diverged): its "
                         "predictions would be meaningless; train again (see the advice it printed)")
    trained = model.meta_.get("source", {}) or {}
    opts = _check_encoding_options(dict(opts), trained, quiet)
    label_given = opts.get("label")
    for key in ("label", "sep", "no_header", "index_col", "n_features"):  # read DATA as training did
        if opts.get(key) in (None, False) and trained.get(key) is not None:
            opts[key] = trained[key]
    source = source_from_options(data, opts, require_label=require_label)
    if trained.get("format") == "libsvm":  # the base and width training found, never guessed again
        if source.zero_based is None and trained.get("zero_based") is not None:
            source = replace(source, zero_based=bool(trained["zero_based"]))
        if source.n_features is None:
            source = replace(source, n_features=int(model.n_features_in_))
    encoder = trained.get("encoder")
    names = trained.get("feature_names") or model.meta_.get("feature_names")
    if encoder is None and names and trained.get("format") in ("csv", "tsv", "parquet"):
        source = replace(source, features=tuple(names))  # the model's columns, by name
    local = load_local(source, encoder=encoder)
    check_label_option(label_given, local.info.kind)
    for notice in () if quiet else local.info.notices:  # on stdout like train's; none with --json
        import click

        click.echo(f"dlogit: {notice}")
    X, y, w, info = local.X, local.y, local.sample_weight, local.info
    want = model.n_features_in_
    if X.shape[1] != want:
        raise DataError(f"{data} has {X.shape[1]} feature columns but the model was trained on {want}")
    if names and info.feature_names and list(info.feature_names) != list(names):
        raise DataError(f"the feature columns of {data} differ from those the model was trained on")
    _check_finite(X, data)
    chunk_stats(X, y if require_label else None, w, require_labels=require_label)  # NaN/inf, shapes, weights
    return model, X, y, w


def _check_encoding_options(opts: dict[str, Any], trained: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """``opts`` without ``--one-hot``/``--hash-features``/``--dtype``: the model holds the encoding and
    the precision does not change a prediction, so the options training took may be given again (the
    same ``$OPTS`` for train and predict) but not other values: a :class:`ConfigError` names those."""
    from dlogit.errors import ConfigError
    from dlogit.io.encode import Encoder

    one_hot, buckets, dtype = tuple(opts.get("one_hot") or ()), opts.get("hash_features"), opts.get("dtype")
    if one_hot or buckets is not None:
        enc = Encoder.from_json(trained["encoder"]) if trained.get("encoder") else None
        model_cols = tuple(enc.categorical) if enc is not None else ()
        model_buckets = enc.n_buckets if enc is not None else None
        differ = []
        if set(one_hot) != set(model_cols):
            differ.append(f"--one-hot {','.join(one_hot)}" if one_hot else "no --one-hot")
        if buckets != model_buckets:
            differ.append(f"--hash-features {buckets}" if buckets is not None else "no --hash-features")
        if differ:
            if enc is None:
                has = "encodes no columns"
            else:
                has = (f"encodes {', '.join(repr(c) for c in model_cols)} "
                       + (f"hashed into {model_buckets} buckets" if model_buckets is not None else "one-hot"))
            raise ConfigError(f"{', '.join(differ)}: DATA is read with the model's encoding (the model "
                              f"{has}); drop the option or give the values training took")
    if dtype is not None and dtype != "float64" and dtype != trained.get("dtype") and not quiet:
        import click

        click.echo(f"dlogit: --dtype {dtype} has no effect here: the model's coefficients are float64 and "
                   "predictions are computed in float64")
    opts.update(one_hot=(), hash_features=None, dtype=None)
    return opts


def _check_finite(X: Any, data: str) -> None:
    """A :class:`DataError` naming the first row of DATA with a NaN or infinite feature (a missing cell
    reads as NaN): a prediction for such a row would be meaningless."""
    from dlogit.errors import DataError

    values = X.data if hasattr(X, "indptr") else np.asarray(X)
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    n = int(bad.sum())
    if hasattr(X, "indptr"):
        row = int(np.searchsorted(X.indptr, int(np.argmax(bad)), side="right")) - 1
    else:
        row = int(np.argmax(bad.any(axis=1)))
    raise DataError(f"{data}: row {row + 1} has a missing, NaN or infinite feature value ({n} such value(s) "
                    "in all); fill or drop those rows first")
