"""dlogit: distributed logistic regression on Dask arrays of NumPy or CuPy chunks."""

from __future__ import annotations

__version__ = "0.1.0"

from dlogit import config as _config  # noqa: E402,F401  (registers dask.config defaults)
from dlogit.data import read_data, synthetic  # noqa: E402
from dlogit.errors import (  # noqa: E402
    ClusterError,
    ConfigError,
    ConvergenceWarning,
    DataError,
    DlogitError,
    Interrupted,
    ModelError,
    OutputError,
)
from dlogit.estimator import LogisticRegression, load_model  # noqa: E402
from dlogit.estimator_cv import LogisticRegressionCV  # noqa: E402
from dlogit.spec import CheckpointSpec as Checkpoint  # noqa: E402

__all__ = [
    "Checkpoint", "ClusterError", "ConfigError", "ConvergenceWarning", "DataError", "DlogitError",
    "Interrupted", "LogisticRegression", "LogisticRegressionCV", "ModelError", "OutputError", "__version__", "load_model",
    "read_data", "synthetic",
]
