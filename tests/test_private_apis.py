"""The private third-party names dlogit uses, each through its one function (tests/test_layering.py checks
that nothing else imports them): what dlogit relies on, so that a release that changes them fails here
first. ``dask._task_spec.Alias`` (``engine.placement.resolve_aliases``) is pinned by
tests/test_engine.py::test_alias_chunks_resolve_to_their_task_and_share_the_graph."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pytest

import dlogit
from dlogit.errors import ConfigError
from dlogit.estimator import ParameterError, _sklearn_validation
from dlogit.inputs import checked_sample_weight


def test_sklearn_parameter_constraints_behave_as_dlogit_uses_them():
    Interval, StrOptions, InvalidParameterError = _sklearn_validation()
    nonneg = Interval(Real, 0, None, closed="left")
    assert nonneg.is_satisfied_by(0.0) and nonneg.is_satisfied_by(3) and not nonneg.is_satisfied_by(-1e-300)
    positive = Interval(Integral, 1, None, closed="left")
    assert positive.is_satisfied_by(1) and not positive.is_satisfied_by(0) and not positive.is_satisfied_by(1.5)
    assert StrOptions({"lbfgs", "gd"}).is_satisfied_by("gd") and not StrOptions({"gd"}).is_satisfied_by("x")
    assert issubclass(InvalidParameterError, ValueError) and issubclass(InvalidParameterError, TypeError)
    assert issubclass(ParameterError, ConfigError) and issubclass(ParameterError, InvalidParameterError)
    # sklearn's _validate_params raises it, naming the parameter; dlogit re-raises it as ParameterError
    with pytest.raises(ParameterError, match=r"'l2' parameter of LogisticRegression must be"):
        dlogit.LogisticRegression(l2=-1.0).fit(np.zeros((4, 2)), np.array([0, 1, 0, 1]))
    with pytest.raises(ParameterError, match=r"'scoring' parameter of LogisticRegressionCV"):
        dlogit.LogisticRegressionCV(scoring="nope").fit(np.zeros((4, 2)), np.array([0, 1, 0, 1]))


def test_sklearn_sample_weight_check_behaves_as_dlogit_uses_it():
    X = np.zeros((3, 2))
    got = checked_sample_weight([1, 2, 0], X)
    assert got.dtype == np.float64 and got.tolist() == [1.0, 2.0, 0.0]
    assert checked_sample_weight(2.0, X).tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="Negative values in data passed to `sample_weight`"):
        checked_sample_weight([1, -1, 0], X)
    with pytest.raises(ValueError, match=r"sample_weight.shape == \(2,\), expected \(3,\)"):
        checked_sample_weight([1, 1], X)

