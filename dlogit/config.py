"""dlogit's defaults in ``dask.config`` (namespace ``dlogit``), loaded from ``dlogit.yaml``, and
:func:`setting` and :func:`get_bool`, the readers of a setting (its default from the YAML, never the caller)."""

from __future__ import annotations

import copy
import os
from typing import Any

import dask.config
import yaml

from dlogit.errors import ConfigError

_fn = os.path.join(os.path.dirname(__file__), "dlogit.yaml")
with open(_fn) as f:
    defaults = yaml.safe_load(f)

dask.config.update_defaults(defaults)


def setting(key: str) -> Any:
    """The setting ``key`` (``"dlogit.chunk-bytes"``), whose default is in ``dlogit.yaml`` and nowhere else.

    ``dask.config.set`` puts back on exit the namespace it found on entry: when this module was first
    imported inside such a block, the ``dlogit`` defaults registered then leave with it. They are merged
    in again here (below anything the user set), so a setting never silently loses its default. A key
    ``dlogit.yaml`` does not have raises ``KeyError`` (a bug, not a setting)."""
    try:
        return dask.config.get(key)
    except KeyError:
        dask.config.update(dask.config.config, copy.deepcopy(defaults), priority="old")
        return dask.config.get(key)


#: set to "1" in the environment of the workers of dlogit's own local clusters (dlogit.cluster starts them,
#: dlogit.worker's preload reads it)
LOCAL_WORKER_ENV = "DLOGIT_LOCAL_WORKER"

_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})


def get_bool(key: str) -> bool:
    """The boolean setting ``key`` (``"dlogit.precondition"``): YAML booleans, or the strings that
    ``DASK_DLOGIT__*`` environment variables and YAML quoting give -- true/false, yes/no, 1/0, on/off,
    in any case. Anything else (or a missing key) raises :class:`~dlogit.errors.ConfigError` naming the
    key; the default comes from ``dlogit.yaml``, never from the caller."""
    try:
        value: Any = setting(key)
    except KeyError:
        value = None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):  # DASK_* env values are parsed as Python literals
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigError(f"{key} must be true or false (yes/no, 1/0, on/off), got {value!r}")
