"""The estimator against exact optima the tests compute, scikit-learn, the textbook run, labels of every
kind, sample and class weights, persistence, and bad input through the API (in-process fits)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _exact import exact_optimum

import dlogit
from dlogit.data import synthetic_numpy


@pytest.fixture(scope="module")
def cancer():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    return X, y.astype(float)


@pytest.fixture(scope="module")
def wine():
    from sklearn.datasets import load_wine

    X, y = load_wine(return_X_y=True)
    return (X - X.mean(0)) / X.std(0), y


def _rel(a, b):
    return np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b))


# --------------------------------------------------------------------------------------------------
# binary

def _sk_reference(X, y, l2, **kw):
    from sklearn.linear_model import LogisticRegression as SK

    C = 1.0 / (2 * len(y) * l2)
    return SK(C=C, tol=1e-14, max_iter=100000, solver="lbfgs", **kw).fit(X, y)


@pytest.mark.parametrize("solver", ["lbfgs", "newton"])
@pytest.mark.parametrize("l2", [0.01, 0.001])
def test_binary_matches_the_exact_optimum_and_scikit_learn(cancer, solver, l2):
    X, y = cancer
    ours = dlogit.LogisticRegression(solver=solver, l2=l2, tol=1e-8, max_iter=5000).fit(X, y)
    coef, b = exact_optimum(X, y.astype(int), 2, l2)
    assert _rel(np.r_[ours.coef_[0], ours.intercept_], np.r_[coef[0], b]) <= 1e-6
    assert ours.status_ == "converged" and ours.grad_norm_ <= 1e-8
    sk = _sk_reference(X, y, l2)
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(X), atol=1e-6)


def test_unscaled_columns_reach_the_optimum_with_lbfgs(cancer):
    """Raw breast-cancer columns span 1e-3..1e3 (like income next to a ratio): lbfgs, preconditioned
    internally, reaches the optimum of the stated objective (the exact Newton optimum on the raw data)."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    m = dlogit.LogisticRegression(l2=0.01, max_iter=5000).fit(X, y)  # tol 1e-6, scale-free
    assert m.status_ == "converged"
    import warnings

    with warnings.catch_warnings():  # at 1e-8 it reaches float64's floor ("stalled") at the optimum
        warnings.simplefilter("ignore", dlogit.ConvergenceWarning)
        tight = dlogit.LogisticRegression(l2=0.01, tol=1e-8, max_iter=5000).fit(X, y)
    coef, b = exact_optimum(X, y, 2, 0.01)
    exact = 1 / (1 + np.exp(-(X @ coef[0] + b[0])))
    np.testing.assert_allclose(m.predict_proba(X)[:, 1], exact, atol=1e-5)
    np.testing.assert_allclose(tight.predict_proba(X)[:, 1], exact, atol=1e-6)
    assert _rel(tight.coef_, coef) <= 1e-6


def test_gd_reaches_the_same_optimum(cancer):
    X, y = cancer
    gd = dlogit.LogisticRegression(solver="gd", lr=0.5, tol=1e-8, max_iter=200000).fit(X, y)
    lb = dlogit.LogisticRegression(solver="newton", tol=1e-10).fit(X, y)
    assert gd.status_ == "converged"
    np.testing.assert_allclose(gd.coef_, lb.coef_, rtol=1e-5, atol=1e-7)


def test_textbook_run_reaches_perfect_accuracy():
    X, y = synthetic_numpy(400, 784, seed=0)
    m = dlogit.LogisticRegression(solver="gd", lr=0.1, l2=0.01, max_iter=10001, init="normal",
                                  random_state=0).fit(X, y)
    assert m.n_iter_ == 10001 and len(m.history_["loss"]) == 10001
    loss = m.history_["loss"]
    assert loss[0] == pytest.approx(19.299139, abs=1e-6) and loss[-1] == pytest.approx(0.123254, abs=1e-6)
    assert np.all(np.diff(loss[:5000]) <= 1e-12)  # falls monotonically
    assert m.score(X, y) == 1.0 and m.status_ == "max_iter"


def test_attributes_and_predictions(cancer):
    X, y = cancer
    m = dlogit.LogisticRegression().fit(X, y)
    assert m.coef_.shape == (1, X.shape[1]) and m.intercept_.shape == (1,)
    assert m.n_iter_ > 0 and list(m.classes_) == [0, 1] and m.family_ == "binomial"
    p = m.predict_proba(X)
    assert p.shape == (len(y), 2)
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_array_equal(m.predict(X), (m.decision_function(X) > 0).astype(int))
    assert m.score(X, y) > 0.95
    np.testing.assert_allclose(np.exp(m.predict_log_proba(X)), p)


def test_no_intercept(cancer):
    X, y = cancer
    m = dlogit.LogisticRegression(fit_intercept=False, tol=1e-9, solver="newton").fit(X, y)
    assert m.intercept_[0] == 0.0
    coef, _ = exact_optimum(X, y.astype(int), 2, 0.01, fit_intercept=False)
    assert _rel(m.coef_, coef) <= 1e-6


# --------------------------------------------------------------------------------------------------
# multinomial, labels, weights

@pytest.mark.parametrize("solver", ["lbfgs", "newton"])
def test_multinomial_matches_the_exact_optimum(wine, solver):
    X, y = wine
    m = dlogit.LogisticRegression(solver=solver, l2=0.005, tol=1e-9, max_iter=5000).fit(X, y)
    coef, b = exact_optimum(X, y, 3, 0.005)
    assert m.coef_.shape == (3, X.shape[1]) and m.family_ == "multinomial"
    assert _rel(m.coef_, coef) <= 1e-6 and abs(m.intercept_.mean()) < 1e-12
    np.testing.assert_allclose(m.intercept_, b, atol=1e-6)
    Z = X @ coef.T + b
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    np.testing.assert_allclose(m.predict_proba(X), P, rtol=1e-6, atol=1e-9)
    from sklearn.linear_model import LogisticRegression as SK

    sk = SK(C=1 / (2 * len(y) * 0.005), tol=1e-12, max_iter=100000).fit(X, y)
    np.testing.assert_allclose(m.predict_proba(X), sk.predict_proba(X), atol=1e-5)


@pytest.mark.parametrize("labels", [
    np.array(["dog", "cat"]), np.array([-1, 1]), np.array([False, True]), np.array([3.0, 7.0]),
    np.array(["a", "b", "c"]), np.array([10, 20, 30]),
])
def test_any_labels_round_trip_through_fit_predict_and_the_model_file(cancer, labels, tmp_path):
    X, y = cancer
    K = len(labels)
    codes = y.astype(int) if K == 2 else (np.arange(len(y)) % 3)
    yl = np.sort(labels)[codes]
    m = dlogit.LogisticRegression(tol=1e-8).fit(X, yl)
    np.testing.assert_array_equal(m.classes_, np.sort(labels))
    ref = dlogit.LogisticRegression(tol=1e-8).fit(X, codes)  # the same model on codes 0..K-1
    np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-10, atol=1e-12)
    pred = m.predict(X)
    assert pred.dtype.kind == np.sort(labels).dtype.kind
    np.testing.assert_array_equal(pred, np.sort(labels)[ref.predict(X)])
    path = tmp_path / "m.npz"
    m.save(path)
    back = dlogit.load_model(path)
    np.testing.assert_array_equal(back.classes_, m.classes_)
    np.testing.assert_array_equal(back.predict(X), pred)


def test_integer_sample_weights_equal_duplicated_rows(wine):
    X, y = wine
    sw = np.random.default_rng(0).integers(0, 4, len(y)).astype(float)
    dup = np.repeat(np.arange(len(y)), sw.astype(int))
    for solver, tol, rtol in (("newton", 1e-12, 1e-8), ("lbfgs", 1e-8, 1e-5)):
        a = dlogit.LogisticRegression(solver=solver, tol=tol).fit(X, y, sample_weight=sw)
        b = dlogit.LogisticRegression(solver=solver, tol=tol).fit(X[dup], y[dup])
        np.testing.assert_allclose(a.coef_, b.coef_, rtol=rtol, atol=rtol * 1e-2)
    coef, _ = exact_optimum(X, y, 3, 0.01, sw=sw)
    assert _rel(a.coef_, coef) <= 1e-6


@pytest.mark.parametrize("solver", ["lbfgs", "newton"])
@pytest.mark.parametrize("sparse", [False, True])
def test_weights_and_repeated_rows_take_the_same_path_at_the_defaults(wine, solver, sparse):
    """Integer weights and repeated rows are the same objective *and* the same preconditioner (the
    column moments are weighted), so the default fits agree far below tol -- scikit-learn's
    check_sample_weight_equivalence asks rtol 1e-7 of predict_proba. Unweighted moments gave the two
    fits different coordinates and probabilities that differed by ~1e-6."""
    import scipy.sparse as sps

    X, y = wine
    sw = np.random.default_rng(0).integers(0, 4, len(y))
    dup = np.repeat(np.arange(len(y)), sw)
    Xw, Xr = (sps.csr_matrix(X), sps.csr_matrix(X[dup])) if sparse else (X, X[dup])
    a = dlogit.LogisticRegression(solver=solver).fit(Xw, y, sample_weight=sw)
    b = dlogit.LogisticRegression(solver=solver).fit(Xr, y[dup])
    assert a.status_ == b.status_ == "converged" and a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-9, atol=1e-12)


def test_balanced_class_weight_equals_the_equivalent_sample_weights(cancer):
    X, y = cancer
    yi = y.astype(int)
    sw = np.random.default_rng(1).random(len(y)) + 0.5
    bal = dlogit.LogisticRegression(class_weight="balanced", solver="newton", tol=1e-10).fit(
        X, yi, sample_weight=sw)
    S = np.bincount(yi, weights=sw)
    eq = sw * (sw.sum() / (2 * S))[yi]
    ref = dlogit.LogisticRegression(solver="newton", tol=1e-10).fit(X, yi, sample_weight=eq)
    # the same objective; the preconditioner's column moments carry the row weights, not the class
    # multipliers, so the two fits move in different coordinates: equal to the solver's precision (the
    # unscaled columns leave some coefficients loosely determined; the probabilities are not)
    np.testing.assert_allclose(bal.predict_proba(X), ref.predict_proba(X), rtol=0, atol=1e-9)
    np.testing.assert_allclose(bal.coef_, ref.coef_, rtol=1e-6, atol=1e-8)
    from sklearn.linear_model import LogisticRegression as SK

    sk = SK(C=1 / (2 * eq.sum() * 0.01), class_weight="balanced", tol=1e-10, max_iter=10000).fit(
        X, yi, sample_weight=sw)
    np.testing.assert_allclose(bal.predict_proba(X), sk.predict_proba(X), atol=1e-6)
    d = dlogit.LogisticRegression(class_weight={0: 2.0, 1: 1.0}, solver="newton", tol=1e-10).fit(X, yi)
    ref = dlogit.LogisticRegression(solver="newton", tol=1e-10).fit(
        X, yi, sample_weight=np.where(yi == 0, 2.0, 1.0))
    # within tol / (2 l2) * |x| of each other
    np.testing.assert_allclose(d.predict_proba(X), ref.predict_proba(X), rtol=0, atol=5e-8)
    np.testing.assert_allclose(d.coef_, ref.coef_, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# persistence, warnings, bad input

def test_save_and_load_roundtrip_with_plain_numpy(cancer, tmp_path):
    import os
    import stat

    X, y = cancer
    m = dlogit.LogisticRegression().fit(X, y)
    path = tmp_path / "m.npz"
    old = os.umask(0o022)
    try:
        m.save(path)  # a pathlib.Path
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # the umask's mode, not mkstemp's 0600
    z = np.load(path, allow_pickle=False)  # plain NumPy reads it
    manual = 1 / (1 + np.exp(-(X @ z["coef"][0] + z["intercept"][0])))
    np.testing.assert_allclose(manual, m.predict_proba(X)[:, 1], rtol=1e-12)
    back = dlogit.load_model(str(path))
    np.testing.assert_array_equal(back.coef_, m.coef_)
    np.testing.assert_array_equal(back.history_["loss"], m.history_["loss"])
    assert back.n_iter_ == m.n_iter_


def test_version_1_model_files_still_load(cancer, tmp_path):
    import json

    X, y = cancer
    m = dlogit.LogisticRegression().fit(X, y)
    meta = {"format": "dlogit-model", "version": 1, "params": {"solver": "lbfgs", "l2": 0.01},
            "n_iter": 3, "status": "converged"}
    path = tmp_path / "v1.npz"
    np.savez(path, coef=m.coef_, intercept=m.intercept_, classes=np.array([0, 1]),
             meta=np.array(json.dumps(meta)))
    back = dlogit.load_model(path)
    np.testing.assert_array_equal(back.predict(X), m.predict(X))
    with open(tmp_path / "junk.npz", "wb") as f:
        f.write(np.random.default_rng(0).bytes(500))
    with pytest.raises(dlogit.ModelError, match="not a dlogit model file") as e:
        dlogit.load_model(tmp_path / "junk.npz")
    assert "pickle" not in str(e.value)


def test_lbfgs_warns_when_not_converged(cancer):
    X, y = cancer
    with pytest.warns(dlogit.ConvergenceWarning, match="did not converge"):
        m = dlogit.LogisticRegression(max_iter=3).fit(X, y)
    assert m.status_ == "max_iter" and m.n_iter_ == 3


def test_convergence_warning_is_caught_by_scikit_learns_filters(cancer):
    """A filter written for scikit-learn's models silences (or raises) dlogit's warning too."""
    from sklearn.exceptions import ConvergenceWarning as SklearnWarning

    X, y = cancer
    assert issubclass(dlogit.ConvergenceWarning, SklearnWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SklearnWarning)
        with pytest.raises(SklearnWarning, match="did not converge"):
            dlogit.LogisticRegression(max_iter=3).fit(X, y)


def test_diverging_gd_is_flagged(cancer):
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)  # unscaled: gd at lr 0.1 oscillates
    with pytest.warns(dlogit.ConvergenceWarning, match="diverged"):
        m = dlogit.LogisticRegression(solver="gd", lr=0.1, max_iter=3000).fit(X, y)
    assert m.status_ == "diverged" and m.n_iter_ < 3000


@pytest.mark.parametrize("X, y, match", [
    (np.array([[1.0, np.nan], [0.0, 1.0]]), np.array([0.0, 1.0]), "NaN"),
    (np.array([[1.0, np.inf], [0.0, 1.0]]), np.array([0.0, 1.0]), "infinity"),
    (np.ones((3, 2)), np.array([0.5, 1.0, 2.0]), "Unknown label type"),
    (np.ones((3, 2)), np.array([1.0, 1.0, 1.0]), "one class"),
    (np.ones((0, 2)), np.array([]), "0 sample"),
    (np.ones((3, 2)), np.array([0.0, 1.0]), "inconsistent numbers of samples"),
    (np.array([["a", "b"], ["c", "d"]]), np.array([0.0, 1.0]), "could not convert"),
])
def test_bad_input_raises_data_error(X, y, match):
    with pytest.raises(dlogit.DataError, match=match):
        dlogit.LogisticRegression().fit(X, y)


@pytest.mark.parametrize("params, match", [
    ({"solver": "sgd"}, "solver"), ({"l2": -1}, "l2"), ({"max_iter": 0}, "max_iter"),
    ({"solver": "gd", "lr": 0}, "lr"), ({"tol": -1}, "tol"), ({"lr": float("inf")}, "lr"),
    ({"solver": "newton", "l1": 0.1}, "does not support l1"), ({"class_weight": "even"}, "class_weight"),
])
def test_bad_parameters_raise_config_error(params, match):
    with pytest.raises(dlogit.ConfigError, match=match):
        dlogit.LogisticRegression(**params).fit(np.eye(2), np.array([0.0, 1.0]))


def test_predict_checks_its_input(cancer):
    X, y = cancer
    m = dlogit.LogisticRegression().fit(X, y)
    bad = X[:5].copy()
    bad[2, 3] = np.nan
    with pytest.raises(dlogit.DataError, match="NaN"):
        m.predict_proba(bad)
    with pytest.raises(dlogit.DataError, match="features"):
        m.predict(X[:, :5])


@pytest.mark.gpu
def test_cupy_arrays_train_in_process_like_numpy(cancer):
    cp = pytest.importorskip("cupy")
    X, y = cancer
    a = dlogit.LogisticRegression(tol=1e-9).fit(X, y)
    b = dlogit.LogisticRegression(tol=1e-9).fit(cp.asarray(X), cp.asarray(y))
    np.testing.assert_allclose(b.coef_, a.coef_, rtol=1e-8)
    assert isinstance(b.predict_proba(cp.asarray(X)), cp.ndarray)
    w = np.random.default_rng(0).random(len(y))
    c = dlogit.LogisticRegression(tol=1e-9).fit(cp.asarray(X), cp.asarray(y), sample_weight=cp.asarray(w))
    d = dlogit.LogisticRegression(tol=1e-9).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(c.coef_, d.coef_, rtol=1e-8)
