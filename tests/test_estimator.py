"""The estimator against scikit-learn, the textbook run, persistence, and bad input through the API."""

from __future__ import annotations

import numpy as np
import pytest

import dlogit
from dlogit.data import synthetic_numpy


@pytest.fixture(scope="module")
def cancer():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    return X, y.astype(float)


def _sk_reference(X, y, l2):
    from sklearn.linear_model import LogisticRegression as SK

    C = 1.0 / (2 * len(y) * l2)
    return SK(C=C, tol=1e-14, max_iter=100000, solver="lbfgs").fit(X, y)


@pytest.mark.parametrize("l2", [0.01, 0.001])
def test_lbfgs_matches_scikit_learn(cancer, l2):
    X, y = cancer
    ours = dlogit.LogisticRegression(solver="lbfgs", l2=l2, tol=1e-8, max_iter=5000).fit(X, y)
    sk = _sk_reference(X, y, l2)
    rel = np.linalg.norm(np.r_[ours.coef_[0] - sk.coef_[0], ours.intercept_ - sk.intercept_]) / \
        np.linalg.norm(np.r_[sk.coef_[0], sk.intercept_])
    assert rel <= 1e-6
    assert ours.status_ == "converged" and ours.grad_norm_ <= 1e-8
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(X), atol=1e-6)


def test_gd_reaches_the_same_optimum(cancer):
    X, y = cancer
    gd = dlogit.LogisticRegression(solver="gd", lr=0.5, tol=1e-8, max_iter=200000).fit(X, y)
    lb = dlogit.LogisticRegression(solver="lbfgs", tol=1e-9).fit(X, y)
    assert gd.status_ == "converged"
    np.testing.assert_allclose(gd.coef_, lb.coef_, rtol=1e-5, atol=1e-7)


def test_textbook_run_reaches_perfect_accuracy():
    X, y = synthetic_numpy(400, 784, seed=0)
    m = dlogit.LogisticRegression(solver="gd", lr=0.1, l2=0.01, max_iter=10001, init="normal",
                                  random_state=0).fit(X, y)
    assert m.n_iter_ == 10001 and len(m.history_["loss"]) == 10001
    loss = m.history_["loss"]
    assert loss[0] > 10 * loss[-1]
    assert np.all(np.diff(loss[:5000]) <= 1e-12)  # falls monotonically
    assert abs(loss[5000] - loss[-1]) < 1e-6  # plateau by ~5000 steps
    assert m.score(X, y) == 1.0


def test_attributes_and_predictions(cancer):
    X, y = cancer
    m = dlogit.LogisticRegression().fit(X, y)
    assert m.coef_.shape == (1, X.shape[1]) and m.intercept_.shape == (1,)
    assert m.n_iter_ > 0 and list(m.classes_) == [0, 1]
    p = m.predict_proba(X)
    assert p.shape == (len(y), 2)
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_array_equal(m.predict(X), (m.decision_function(X) > 0).astype(int))
    assert m.score(X, y) > 0.95


def test_no_intercept(cancer):
    X, y = cancer
    m = dlogit.LogisticRegression(fit_intercept=False, tol=1e-9).fit(X, y)
    assert m.intercept_[0] == 0.0
    sk = _sk_reference(X, y, 0.01).set_params(fit_intercept=False).fit(X, y)
    np.testing.assert_allclose(m.coef_, sk.coef_, rtol=1e-5, atol=1e-7)


def test_save_and_load_roundtrip_with_plain_numpy(cancer, tmp_path):
    X, y = cancer
    m = dlogit.LogisticRegression().fit(X, y)
    path = tmp_path / "m.npz"
    m.save(str(path))
    z = np.load(path, allow_pickle=False)  # plain NumPy reads it
    manual = 1 / (1 + np.exp(-(X @ z["coef"][0] + z["intercept"][0])))
    np.testing.assert_allclose(manual, m.predict_proba(X)[:, 1], rtol=1e-12)
    back = dlogit.load_model(str(path))
    np.testing.assert_array_equal(back.coef_, m.coef_)
    np.testing.assert_array_equal(back.history_["loss"], m.history_["loss"])
    assert back.n_iter_ == m.n_iter_


def test_lbfgs_warns_when_not_converged(cancer):
    X, y = cancer
    with pytest.warns(dlogit.ConvergenceWarning, match="did not converge"):
        m = dlogit.LogisticRegression(max_iter=3).fit(X, y)
    assert m.status_ == "max_iter" and m.n_iter_ == 3


@pytest.mark.parametrize("X, y, match", [
    (np.array([[1.0, np.nan], [0.0, 1.0]]), np.array([0.0, 1.0]), "NaN or infinite"),
    (np.array([[1.0, np.inf], [0.0, 1.0]]), np.array([0.0, 1.0]), "NaN or infinite"),
    (np.ones((3, 2)), np.array([0.0, 1.0, 2.0]), "labels must be 0 or 1"),
    (np.ones((3, 2)), np.array([1.0, 1.0, 1.0]), "only one class"),
    (np.ones((0, 2)), np.array([]), "no rows"),
    (np.ones((3, 2)), np.array([0.0, 1.0]), "3 rows but y has 2"),
    (np.array([["a", "b"], ["c", "d"]]), np.array([0.0, 1.0]), "numeric"),
])
def test_bad_input_raises_data_error(X, y, match):
    with pytest.raises(dlogit.DataError, match=match):
        dlogit.LogisticRegression().fit(X, y)


@pytest.mark.parametrize("params, match", [
    ({"solver": "newton"}, "unknown solver"), ({"l2": -1}, "l2"), ({"max_iter": 0}, "max_iter"),
    ({"solver": "gd", "lr": 0}, "lr"), ({"tol": -1}, "tol"),
])
def test_bad_parameters_raise_config_error(params, match):
    with pytest.raises(dlogit.ConfigError, match=match):
        dlogit.LogisticRegression(**params).fit(np.eye(2), np.array([0.0, 1.0]))


@pytest.mark.gpu
def test_cupy_arrays_train_in_process_like_numpy(cancer):
    cp = pytest.importorskip("cupy")
    X, y = cancer
    a = dlogit.LogisticRegression(tol=1e-9).fit(X, y)
    b = dlogit.LogisticRegression(tol=1e-9).fit(cp.asarray(X), cp.asarray(y))
    np.testing.assert_allclose(b.coef_, a.coef_, rtol=1e-8)
    assert isinstance(b.predict_proba(cp.asarray(X)), cp.ndarray)
