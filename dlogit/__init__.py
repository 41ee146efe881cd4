"""dlogit: distributed logistic regression on Dask arrays of NumPy or CuPy chunks."""

from __future__ import annotations

__version__ = "0.1.0"

from dlogit import config as _config  # noqa: F401  (registers dask.config defaults)
from dlogit.data import read_data, synthetic
from dlogit.errors import (
    ClusterError,
    ConfigError,
    ConvergenceWarning,
    DataError,
    DlogitError,
    Interrupted,
    ModelError,
    OutputError,
)
from dlogit.estimator import LogisticRegression, load_model
from dlogit.estimator_cv import LogisticRegressionCV
from dlogit.spec import CheckpointSpec as Checkpoint

__all__ = [
    "Checkpoint", "ClusterError", "ConfigError", "ConvergenceWarning", "DataError", "DlogitError",
    "Interrupted", "LogisticRegression", "LogisticRegressionCV", "ModelError", "OutputError", "__version__", "load_model",
    "read_data", "synthetic",
]
