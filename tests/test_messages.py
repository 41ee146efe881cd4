"""A fit's status messages name the real cause: the data's precision when it stalls, the penalty or
the step size when gradient descent diverges (one suggestion, the same in the API and the CLI), the
feature values when zero coefficients already overflow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

import dlogit


def _fit(X, y, **params):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", dlogit.ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # the overflow the message is about
        return dlogit.LogisticRegression(**params).fit(X, y)


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return X, y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_stall_names_the_datas_precision(cancer, dtype):
    X, y = cancer
    X = ((X - X.mean(0)) / X.std(0)).astype(dtype)
    m = _fit(X, y, tol=1e-14)
    assert m.status_ == "stalled"
    name = np.dtype(dtype).name
    other = "float64" if name == "float32" else "float32"
    assert f"below what {name} resolves" in m.message_ and other not in m.message_, m.message_


def test_divergence_from_the_penalty_does_not_suggest_standardizing(cancer):
    """lr * l2 >= 1 diverges on any data, scaled or not: the advice is a step below 1/l2."""
    X, y = cancer
    X = (X - X.mean(0)) / X.std(0)
    m = _fit(X, y, solver="gd", lr=0.1, l2=100.0, max_iter=500)
    assert m.status_ == "diverged"
    assert m.message_.endswith("lower lr below 1/l2 = 0.01 (e.g. 0.005): the penalty alone makes steps of "
                               "lr=0.1 unstable"), m.message_
    assert "standardize" not in m.message_
    m = _fit(cancer[0], y, solver="gd", lr=0.1, l2=0.01, max_iter=3000)  # unscaled columns: the data's
    assert m.status_ == "diverged" and m.message_.endswith("lower lr (e.g. 0.01) or standardize the columns")


def test_overflow_at_zero_coefficients_blames_the_features_not_the_start(cancer):
    X, y = cancer
    m = _fit(X * 1e304, y, init="zeros")
    assert m.status_ == "diverged" and m.n_iter_ == 0
    assert "init='zeros'" not in m.message_ and "feature values are too large" in m.message_, m.message_
    m = _fit(X * 1e304, y, init="normal")
    assert m.status_ == "diverged" and "init='zeros'" in m.message_, m.message_


def test_the_cli_gives_one_suggestion_on_stdout_and_stderr():
    """The end line (stdout) carries the solver's message, the error (stderr) the CLI's advice: they
    suggested lr/10 = 0.01 and min(lr/10, 0.5/l2) = 0.005."""
    out = subprocess.run([sys.executable, "-m", "dlogit", "train", "--synthetic", "2000x20", "--solver", "gd",
                          "--lr", "0.1", "--l2", "100", "--workers", "1", "--max-iter", "500"],
                         env=os.environ.copy(), capture_output=True, text=True, timeout=180)
    assert out.returncode == 3, (out.stdout, out.stderr)
    end = [line for line in out.stdout.splitlines() if line.startswith("end ")]
    assert len(end) == 1 and "diverged" in end[0], out.stdout
    suggested = set(re.findall(r"(?:e\.g\.|--lr) (\d[\d.e+-]*)", end[0] + out.stderr))
    assert suggested == {"0.005"}, (end[0], out.stderr)
    assert "standardize" not in end[0] and "standardize" not in out.stderr
