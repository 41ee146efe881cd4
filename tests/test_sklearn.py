"""The scikit-learn face: estimator checks, Pipeline / GridSearchCV / cross_val_score against
scikit-learn's LogisticRegression at the equivalent C, every input kind, pickling, lazy Dask output."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

import dlogit


@parametrize_with_checks([dlogit.LogisticRegression(), dlogit.LogisticRegression(tol=1e-10)])
def test_scikit_learn_estimator_checks(estimator, check):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dlogit.ConvergenceWarning)
        check(estimator)


@pytest.fixture(scope="module")
def cancer500():
    """500 rows so that 5 folds train on 400 rows each: one equivalent C for every fold."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    return X[:500], y[:500]


def test_pipeline_grid_search_and_cross_val_score_match_scikit_learn(cancer500):
    from sklearn.linear_model import LogisticRegression as SK
    from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = cancer500
    folds = KFold(5)
    n_train = 400
    l2s = [1e-4, 1e-3, 1e-2, 1e-1]
    ours = GridSearchCV(make_pipeline(StandardScaler(), dlogit.LogisticRegression(tol=1e-10)),
                        {"logisticregression__l2": l2s}, cv=folds, scoring="neg_log_loss").fit(X, y)
    theirs = GridSearchCV(make_pipeline(StandardScaler(), SK(tol=1e-12, max_iter=10000)),
                          {"logisticregression__C": [1 / (2 * n_train * lam) for lam in l2s]}, cv=folds,
                          scoring="neg_log_loss").fit(X, y)
    assert ours.best_index_ == theirs.best_index_
    np.testing.assert_allclose(ours.cv_results_["mean_test_score"], theirs.cv_results_["mean_test_score"],
                               rtol=1e-6)
    a = cross_val_score(make_pipeline(StandardScaler(), dlogit.LogisticRegression(l2=1e-3, tol=1e-10)), X, y,
                        cv=folds)
    b = cross_val_score(make_pipeline(StandardScaler(), SK(C=1 / (2 * n_train * 1e-3), tol=1e-12,
                                                           max_iter=10000)), X, y, cv=folds)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("class_weight", [None, "balanced", {0: 3.0, 1: 1.0}])
def test_the_readme_mapping_to_scikit_learn_holds_with_weights(class_weight):
    """README: with row weights s_i (times the class multipliers) dlogit's l2 is scikit-learn's
    C = 1 / (2 * l2 * sum of the weights), where n stands for that sum without weights."""
    from sklearn.linear_model import LogisticRegression as SK

    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 4))
    y = (X[:, 0] + rng.standard_normal(300) > 0).astype(np.int64)
    s = rng.uniform(0.2, 3.0, 300)
    mult = np.ones(300) if not isinstance(class_weight, dict) else np.vectorize(class_weight.get)(y)
    l2 = 0.01
    m = dlogit.LogisticRegression(l2=l2, tol=1e-12, max_iter=2000, class_weight=class_weight).fit(
        X, y, sample_weight=s)
    ref = SK(C=1 / (2 * l2 * float((s * mult).sum())), tol=1e-12, max_iter=10_000,
             class_weight=class_weight).fit(X, y, sample_weight=s)
    np.testing.assert_allclose(m.coef_, ref.coef_, rtol=0, atol=1e-7)
    np.testing.assert_allclose(m.intercept_, ref.intercept_, rtol=0, atol=1e-7)
    wrong = SK(C=1 / (2 * l2 * 300), tol=1e-12, max_iter=10_000, class_weight=class_weight).fit(
        X, y, sample_weight=s)
    assert np.abs(m.coef_ - wrong.coef_).max() > 1e-3  # the unweighted mapping (n) would not do


def test_clone_and_params():
    from sklearn.base import clone

    m = dlogit.LogisticRegression(l2=0.5, l1=0.1, class_weight={"a": 2.0})
    c = clone(m)
    assert c.get_params() == m.get_params() and c is not m
    assert "callback" not in m.get_params()  # the progress callback goes to fit(), not the parameters
    with pytest.raises(dlogit.ConfigError):
        dlogit.LogisticRegression(solver="nope").fit(np.eye(2), [0, 1])


def _inputs(X, y):
    import pandas as pd

    cols = [f"f{j}" for j in range(X.shape[1])]
    kinds = {"numpy": (X, y), "list": (X.tolist(), y.tolist()),
             "pandas": (pd.DataFrame(X, columns=cols), pd.Series(y, name="t"))}
    # pyarrow is a dependency and polars in the test extra: every kind README names is tested, none skipped
    import polars as pl
    import pyarrow as pa

    kinds["pyarrow"] = (pa.table({c: X[:, j] for j, c in enumerate(cols)}), y)
    kinds["polars"] = (pl.DataFrame({c: X[:, j] for j, c in enumerate(cols)}), y)
    return kinds


def test_every_in_memory_input_gives_the_same_model(cancer500):
    X, y = cancer500
    X = (X - X.mean(0)) / X.std(0)
    ref = dlogit.LogisticRegression(tol=1e-9).fit(X, y)
    for kind, (Xi, yi) in _inputs(X, y).items():
        m = dlogit.LogisticRegression(tol=1e-9).fit(Xi, yi)
        np.testing.assert_array_equal(m.coef_, ref.coef_, err_msg=kind)
        assert m.n_features_in_ == X.shape[1]
        if kind in ("pandas", "pyarrow", "polars"):
            assert list(m.feature_names_in_) == [f"f{j}" for j in range(X.shape[1])], kind


def test_pandas_feature_names_are_checked_at_predict_time(cancer500):
    import pandas as pd

    X, y = cancer500
    df = pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])])
    m = dlogit.LogisticRegression().fit(df, y)
    np.testing.assert_array_equal(m.predict(df), m.predict(X))
    with pytest.raises(ValueError, match="feature names"):
        m.predict(df[df.columns[::-1]])
    with pytest.raises(dlogit.DataError, match="could not convert|not numeric"):
        dlogit.LogisticRegression().fit(df.assign(f0=["x"] * len(df)), y)


def test_pickle_and_joblib_round_trip_and_pathlike_save(cancer500, tmp_path):
    import joblib

    X, y = cancer500
    m = dlogit.LogisticRegression().fit(X, np.where(y == 1, "malignant", "benign"))
    for blob in (pickle.dumps(m),):
        back = pickle.loads(blob)
        np.testing.assert_array_equal(back.predict_proba(X), m.predict_proba(X))
        assert list(back.classes_) == ["benign", "malignant"]
    joblib.dump(m, tmp_path / "m.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "m.joblib").predict(X), m.predict(X))
    m.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(dlogit.load_model(tmp_path / "m.npz").predict(X), m.predict(X))
    for value in vars(m).values():  # plain data: no client, futures or device buffers inside
        assert type(value).__module__.split(".")[0] in ("builtins", "numpy"), type(value)


def test_dask_inputs_and_lazy_outputs(client2, cancer500):
    import dask.array as da
    import dask.dataframe as dd
    import pandas as pd

    X, y = cancer500
    X = (X - X.mean(0)) / X.std(0)
    ref = dlogit.LogisticRegression(tol=1e-9, chunk_rows=100).fit(X, y)  # the same chunks: the same bits
    ref125 = dlogit.LogisticRegression(tol=1e-9, chunk_rows=125).fit(X, y)  # the DataFrame's partitions
    known = da.from_array(X, chunks=(100, X.shape[1]))
    dy = da.from_array(y, chunks=100)
    df = dd.from_pandas(pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])]), npartitions=4)
    ds = dd.from_pandas(pd.Series(y), npartitions=4)
    unknown_X = df.to_dask_array(lengths=None)
    assert np.isnan(unknown_X.shape[0])
    for mode in ("worker-local", "distributed"):
        for Xi, yi, want in ((known, dy, ref), (unknown_X, ds.to_dask_array(lengths=None), ref125),
                             (df, ds, ref125)):
            m = dlogit.LogisticRegression(tol=1e-9, mode=mode).fit(Xi, yi, client=client2)
            np.testing.assert_allclose(m.coef_, want.coef_, rtol=1e-12, atol=1e-14)
    assert list(m.feature_names_in_) == list(df.columns)
    proba = m.predict_proba(known)
    pred = m.predict(known)
    assert isinstance(proba, da.Array) and isinstance(pred, da.Array)
    with client2.as_current():
        np.testing.assert_allclose(proba.compute(), m.predict_proba(X), rtol=1e-12)
        np.testing.assert_array_equal(pred.compute(), m.predict(X))
        assert m.score(known, dy) == pytest.approx(m.score(X, y), abs=1e-15)
