"""Penalties and solvers: L1 / elastic net (KKT, exact zeros, scikit-learn's saga), Newton, standard
errors against statsmodels, and the cross-validated path against GridSearchCV over the same folds."""

from __future__ import annotations

import numpy as np
import pytest
from _exact import exact_optimum

import dlogit


@pytest.fixture(scope="module")
def cancer():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    return (X - X.mean(0)) / X.std(0), y


def kkt_violation(model, X, y, l1, l2):
    """max over coordinates of the KKT residual of f + l1 ||w||_1 at the fitted model (binary)."""
    n = len(y)
    z = X @ model.coef_[0] + model.intercept_[0]
    r = 1 / (1 + np.exp(-z)) - y
    g = X.T @ r / n + 2 * l2 * model.coef_[0]
    w = model.coef_[0]
    nz = w != 0
    res = np.where(nz, np.abs(g + l1 * np.sign(w)), np.maximum(np.abs(g) - l1, 0.0))
    return float(np.max(res)), abs(float(r.mean()))


@pytest.mark.parametrize("solver", ["lbfgs", "gd"])
@pytest.mark.parametrize("l1, l2", [(0.02, 0.0), (0.01, 0.005)])
def test_l1_and_elastic_net_satisfy_kkt_with_exact_zeros(cancer, solver, l1, l2):
    X, y = cancer
    kw = {"lr": 1.0, "max_iter": 20000} if solver == "gd" else {}
    m = dlogit.LogisticRegression(solver=solver, l1=l1, l2=l2, tol=1e-8, **kw).fit(X, y)
    assert m.status_ == "converged"
    worst, gb = kkt_violation(m, X, y, l1, l2)
    assert worst <= 1e-7 and gb <= 1e-7
    zeros = int(np.sum(m.coef_ == 0.0))
    assert zeros > 5 and m.n_nonzero_ == X.shape[1] - zeros  # exact zeros, counted


def test_elastic_net_matches_scikit_learn_saga_and_its_support(cancer):
    """l1 = l1_ratio / (C n), l2 = (1 - l1_ratio) / (2 C n): scikit-learn's elastic net, same optimum."""
    from sklearn.linear_model import LogisticRegression as SK

    X, y = cancer
    n = len(y)
    C, ratio = 0.5, 0.7
    sk = SK(penalty="elasticnet", C=C, l1_ratio=ratio, solver="saga", tol=1e-12, max_iter=200000).fit(X, y)
    ours = dlogit.LogisticRegression(l1=ratio / (C * n), l2=(1 - ratio) / (2 * C * n), tol=1e-10).fit(X, y)
    np.testing.assert_array_equal(ours.coef_ != 0, sk.coef_ != 0)
    np.testing.assert_allclose(ours.coef_, sk.coef_, atol=1e-5)
    np.testing.assert_allclose(ours.intercept_, sk.intercept_, atol=1e-5)


def test_multinomial_l1_is_sparse_and_exact(cancer):
    from sklearn.datasets import load_wine

    X, y = load_wine(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    m = dlogit.LogisticRegression(l1=0.02, l2=0.0, tol=1e-8).fit(X, y)
    assert m.status_ == "converged" and m.coef_.shape == (3, 13)
    assert 0 < m.n_nonzero_ < m.coef_.size and np.sum(m.coef_ == 0.0) == m.coef_.size - m.n_nonzero_


def test_newton_reaches_the_exact_optimum_quickly(cancer):
    X, y = cancer
    m = dlogit.LogisticRegression(solver="newton", l2=1e-4, tol=1e-10).fit(X, y)
    assert m.status_ == "converged" and m.n_iter_ <= 40
    coef, _b = exact_optimum(X, y, 2, 1e-4)
    np.testing.assert_allclose(m.coef_, coef, rtol=1e-7, atol=1e-9)
    with pytest.raises(dlogit.ConfigError, match="does not support l1"):
        dlogit.LogisticRegression(solver="newton", l1=0.1).fit(X, y)


def test_summary_matches_statsmodels_logit(cancer):
    sm = pytest.importorskip("statsmodels.api")
    X, y = cancer
    X = X[:, :6]
    m = dlogit.LogisticRegression(l2=0.0, solver="newton", tol=1e-11).fit(X, y)
    s = m.summary(X, y)
    ref = sm.Logit(y, sm.add_constant(X)).fit(disp=0, tol=1e-12)
    order = np.r_[np.arange(1, 7), 0]  # statsmodels puts the constant first
    np.testing.assert_allclose(s.coef, ref.params[order], rtol=1e-6)
    np.testing.assert_allclose(s.std_err, ref.bse[order], rtol=1e-6)
    np.testing.assert_allclose(s.p_value, ref.pvalues[order], rtol=1e-5, atol=1e-300)
    np.testing.assert_allclose(s.frame["ci_low"], ref.conf_int()[order, 0], rtol=1e-6)
    text = str(s)
    assert "std err" in text and "intercept" in text and "maximum-likelihood" in text
    with pytest.raises(dlogit.ConfigError, match="L1"):
        dlogit.LogisticRegression(l1=0.1).fit(X, y).summary(X, y)
    pen = dlogit.LogisticRegression(l2=0.01).fit(X, y).summary(X, y)
    assert pen.penalized and "penalized" in str(pen)


def test_summary_on_dask_data_is_reduced_on_the_workers(client2, cancer):
    import dask.array as da

    X, y = cancer
    X = X[:, :6]  # well conditioned: the table does not depend on the chunking beyond rounding
    m = dlogit.LogisticRegression(l2=0.0, solver="newton", tol=1e-11).fit(X, y)
    here = m.summary(X, y)
    there = m.summary(da.from_array(X, chunks=(100, X.shape[1])), da.from_array(y, chunks=100), client=client2)
    np.testing.assert_allclose(there.std_err, here.std_err, rtol=1e-10)


def _sorted_cancer():
    """500 rows of the breast-cancer data sorted by label (as many UCI / LIBSVM conversions are): 400
    training rows in every fold of 5, so scikit-learn's C = 1 / (2 * 400 * l2) is our l2."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[:500], y[:500]
    X = (X - X.mean(0)) / X.std(0)
    order = np.argsort(y, kind="stable")
    return X[order], y[order]


def test_cv_path_equals_grid_search_with_stratified_folds_on_class_sorted_data():
    """cv=5 is StratifiedKFold(5): on label-sorted rows the scores, their ranks and the choice are
    GridSearchCV's to 1e-8 (contiguous folds would hold out runs of one class)."""
    from sklearn.linear_model import LogisticRegression as SK
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

    X, y = _sorted_cancer()
    l2s = [1e-1, 1e-2, 1e-3, 1e-4]
    grid = {"C": [1 / (2 * 400 * lam) for lam in l2s]}
    for scoring in ("neg_log_loss", "accuracy"):
        cv = dlogit.LogisticRegressionCV(l2=l2s, cv=5, solver="newton", tol=1e-11, scoring=scoring,
                                         chunk_rows=90).fit(X, y)  # chunks that cut the class boundary
        gs = GridSearchCV(SK(solver="newton-cholesky", tol=1e-12, max_iter=1000), grid, cv=StratifiedKFold(5),
                          scoring=scoring).fit(X, y)
        assert cv.best_index_ == gs.best_index_ and cv.l2_ == l2s[gs.best_index_]
        np.testing.assert_array_equal(cv.cv_results_["rank_test_score"], gs.cv_results_["rank_test_score"])
        for key in ["mean_test_score", "std_test_score"] + [f"split{k}_test_score" for k in range(5)]:
            np.testing.assert_allclose(cv.cv_results_[key], gs.cv_results_[key], rtol=1e-8, atol=1e-12,
                                       err_msg=f"{scoring} {key}")
    refit = dlogit.LogisticRegression(l2=cv.l2_, solver="newton", tol=1e-11).fit(X, y)
    np.testing.assert_allclose(cv.coef_, refit.coef_, rtol=1e-8, atol=1e-10)
    # the contiguous split by name is KFold's (on unsorted rows: sorted ones could hold out a class)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(len(y))
    Xs, ys = X[shuffled], y[shuffled]
    cv = dlogit.LogisticRegressionCV(l2=l2s, cv=5, cv_split="contiguous", solver="newton", tol=1e-11).fit(Xs, ys)
    gs = GridSearchCV(SK(solver="newton-cholesky", tol=1e-12, max_iter=1000), grid, cv=KFold(5),
                      scoring="neg_log_loss").fit(Xs, ys)
    assert cv.best_index_ == gs.best_index_
    for k in range(5):
        np.testing.assert_allclose(cv.cv_results_[f"split{k}_test_score"], gs.cv_results_[f"split{k}_test_score"],
                                   rtol=1e-8)


def test_cv_path_on_a_dask_cluster_equals_grid_search_with_stratified_folds(client2):
    """Dask data (a path always runs distributed: the driver on a worker, the chunks on both): each
    chunk's folds come from the global per-class ranks, and equal StratifiedKFold's."""
    import dask.array as da
    from sklearn.linear_model import LogisticRegression as SK
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    X, y = _sorted_cancer()
    l2s = [1e-1, 1e-3]
    dX, dy = da.from_array(X, chunks=(70, X.shape[1])), da.from_array(y, chunks=70)
    seen = []
    cv = dlogit.LogisticRegressionCV(l2=l2s, cv=5, solver="newton", tol=1e-11).fit(dX, dy, client=client2,
                                                                                   callback=seen.append)
    starts = [e for e in seen if e["type"] == "start" and "cv" in e["params"]]
    assert starts and all(e["params"]["mode"] == "distributed" and len(e["params"]["workers"]) == 2
                          for e in starts)
    gs = GridSearchCV(SK(solver="newton-cholesky", tol=1e-12, max_iter=1000),
                      {"C": [1 / (2 * 400 * lam) for lam in l2s]}, cv=StratifiedKFold(5),
                      scoring="neg_log_loss").fit(X, y)
    assert cv.best_index_ == gs.best_index_
    for key in ["mean_test_score"] + [f"split{k}_test_score" for k in range(5)]:
        np.testing.assert_allclose(cv.cv_results_[key], gs.cv_results_[key], rtol=1e-8, err_msg=key)


def test_cv_splitters_l1_grids_newton_and_events(cancer):
    from sklearn.model_selection import StratifiedKFold

    X, y = cancer
    seen = []
    a = dlogit.LogisticRegressionCV(l2=[1e-2, 1e-3], cv=StratifiedKFold(4), tol=1e-9).fit(X, y,
                                                                                      callback=seen.append)
    b = dlogit.LogisticRegressionCV(l2=[1e-2, 1e-3], cv=4, tol=1e-9).fit(X, y)
    np.testing.assert_array_equal(a.cv_results_["mean_test_score"], b.cv_results_["mean_test_score"])
    paths = [e for e in seen if e["type"] == "path"]
    assert len(paths) == 2 and paths[-1]["done"] and len(paths[-1]["points"]) == 2
    starts = [e for e in seen if e["type"] == "start"]
    assert all(e["params"]["cv"]["folds"] == 4 for e in starts[:2])
    n = dlogit.LogisticRegressionCV(l2=[1e-2, 1e-3], cv=4, solver="newton", tol=1e-10).fit(X, y)
    np.testing.assert_allclose(n.cv_results_["mean_test_score"], b.cv_results_["mean_test_score"], rtol=1e-6)
    grid = dlogit.LogisticRegressionCV(l2=0.0, l1=5, cv=3, tol=1e-7).fit(X, y)
    l1s = grid.cv_results_["param_l1"]
    assert len(l1s) == 5 and np.all(np.diff(l1s) < 0)  # largest first
    top = dlogit.LogisticRegression(l2=0.0, l1=l1s[0], tol=1e-8).fit(X, y)
    assert top.n_nonzero_ == 0  # lambda_max: the smallest L1 penalty that zeroes every coefficient
    assert dlogit.LogisticRegression(l2=0.0, l1=0.99 * l1s[0], tol=1e-8).fit(X, y).n_nonzero_ > 0
    assert grid.path_.points[-1].thetas[:, :-1].any()


@pytest.mark.parametrize("n_workers", [1, 2])
def test_cv_path_on_a_cluster_equals_the_in_process_path(cancer, n_workers, request):
    """Dask data: the on-cluster driver evaluates every fold in one pass per step down the tree of
    workers; with the same chunks the path, the choice and the refit equal the in-process ones."""
    import contextlib

    import dask.array as da
    from conftest import local_cluster

    X, y = cancer
    kw = {"l2": [1e-2, 1e-3], "cv": 5, "tol": 1e-9}
    here = dlogit.LogisticRegressionCV(chunk_rows=100, **kw).fit(X, y)
    dX, dy = da.from_array(X, chunks=(100, X.shape[1])), da.from_array(y, chunks=100)
    # two workers: the session's shared cluster
    with local_cluster(1) if n_workers == 1 else contextlib.nullcontext(request.getfixturevalue("client2")) as c:
        seen = []
        there = dlogit.LogisticRegressionCV(**kw).fit(dX, dy, client=c, callback=seen.append)
    np.testing.assert_allclose(there.cv_results_["mean_test_score"], here.cv_results_["mean_test_score"],
                               rtol=1e-12)
    assert there.best_index_ == here.best_index_
    np.testing.assert_allclose(there.coef_, here.coef_, rtol=1e-10, atol=1e-13)
    assert any(e["type"] == "path" and e["done"] for e in seen)  # path events reach the client


@pytest.mark.parametrize("dtype", [np.float64, np.int64])
def test_cv_on_sparse_multinomial_data_equals_dense(dtype):
    """A sparse chunk's margins come back in F order and integer values must not truncate the fold
    models: CSR input (float or integer counts) gives the dense path's scores and choice."""
    import scipy.sparse as sp

    rng = np.random.default_rng(5)
    X = rng.poisson(0.7, size=(300, 12)).astype(dtype)
    W = rng.normal(size=(3, 12))
    y = np.argmax(X @ W.T + rng.gumbel(size=(300, 3)), axis=1)
    kw = {"l2": [1e-2, 1e-3], "cv": 3, "tol": 1e-9}
    dense = dlogit.LogisticRegressionCV(**kw).fit(X.astype(np.float64), y)
    csr = dlogit.LogisticRegressionCV(**kw).fit(sp.csr_matrix(X), y)
    np.testing.assert_allclose(csr.cv_results_["mean_test_score"], dense.cv_results_["mean_test_score"],
                               rtol=1e-8)
    assert csr.best_index_ == dense.best_index_
    np.testing.assert_allclose(csr.coef_, dense.coef_, rtol=1e-6, atol=1e-8)
    # and the held-out scores are those of each fold's own exact optimum (a wrong gradient cannot pass)
    from sklearn.model_selection import StratifiedKFold

    train, test = next(StratifiedKFold(3).split(X, y))  # cv=3's first fold
    one = dlogit.LogisticRegression(l2=1e-2, tol=1e-10).fit(X[train].astype(float), y[train])
    p = one.predict_proba(X[test].astype(float))
    ref = np.mean(np.log(p[np.arange(len(test)), y[test]]))
    np.testing.assert_allclose(csr.cv_results_["split0_test_score"][0], ref, rtol=1e-6)


def test_summary_of_a_cv_model_uses_the_chosen_penalty_and_any_column_chunks(client2, cancer):
    import dask.array as da

    X, y = cancer
    X = X[:, :6]
    cv = dlogit.LogisticRegressionCV(l2=[1e-1, 1e-4], cv=3, solver="newton", tol=1e-11).fit(X, y)
    one = dlogit.LogisticRegression(l2=cv.l2_, solver="newton", tol=1e-11).fit(X, y)
    a, b = cv.summary(X, y), one.summary(X, y)
    assert a.penalized == (cv.l2_ > 0)
    np.testing.assert_allclose(a.std_err, b.std_err, rtol=1e-6)
    # Dask data split into column chunks too: each chunk's Hessian needs whole rows
    dX = da.from_array(X, chunks=(200, 3))
    there = one.summary(dX, da.from_array(y, chunks=200), client=client2)
    np.testing.assert_allclose(there.std_err, b.std_err, rtol=1e-10)


@pytest.mark.parametrize("kw", [{"class_weight": "balanced"}, {"fit_intercept": False},
                                {"class_weight": {0: 3.0, 1: 1.0}, "fit_intercept": False}])
def test_the_top_of_an_l1_grid_is_lambda_max_with_class_weights_and_without_intercept(cancer, kw):
    X, y = cancer
    X = X + 0.3  # columns off centre, classes 63:37: without an intercept the top differs
    grid = dlogit.LogisticRegressionCV(l2=0.0, l1=3, cv=3, tol=1e-7, **kw).fit(X, y)
    top = float(grid.cv_results_["param_l1"][0])
    assert dlogit.LogisticRegression(l2=0.0, l1=top, tol=1e-9, **kw).fit(X, y).n_nonzero_ == 0
    assert dlogit.LogisticRegression(l2=0.0, l1=0.98 * top, tol=1e-9, **kw).fit(X, y).n_nonzero_ > 0


def test_cv_int_penalties_statuses_and_the_non_convergence_warning(cancer):
    import warnings

    X, y = cancer
    # 0 and 1 are penalties, not grid sizes (an int >= 2 is a grid size)
    one = dlogit.LogisticRegressionCV(l2=[1, 1e-2], l1=0, cv=3, tol=1e-7).fit(X, y)
    assert list(one.cv_results_["param_l2"]) == [1.0, 1e-2] and list(one.cv_results_["param_l1"]) == [0, 0]
    assert list(one.cv_results_["status"]) == ["converged", "converged"]
    with pytest.warns(dlogit.ConvergenceWarning, match="6 of 6 fold fits did not converge .*6 max_iter"):
        short = dlogit.LogisticRegressionCV(l2=[1e-2, 1e-3], cv=3, max_iter=2, tol=1e-9).fit(X, y)
    assert list(short.cv_results_["status"]) == ["max_iter", "max_iter"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", dlogit.ConvergenceWarning)
        dlogit.LogisticRegressionCV(l2=[1e-2, 1e-3], cv=3, tol=1e-6).fit(X, y)
