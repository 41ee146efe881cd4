"""dlogit's defaults in ``dask.config`` (namespace ``dlogit``), loaded from ``dlogit.yaml``, and
:func:`get_bool`, the one reader of boolean settings."""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml

from dlogit.errors import ConfigError

_fn = os.path.join(os.path.dirname(__file__), "dlogit.yaml")
with open(_fn) as f:
    defaults = yaml.safe_load(f)

dask.config.update_defaults(defaults)

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
    value: Any = dask.config.get(key, None)
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
