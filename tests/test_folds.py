"""Cross-validation folds: ``cv=K`` gives exactly scikit-learn's ``StratifiedKFold(K)`` folds, computed
chunk by chunk (any chunking, awkward class counts, any label type); the contiguous split by name;
iterables of splits; and the folds that cannot be fitted are refused in one line."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dlogit


def dlogit_folds(chunks_y: list[np.ndarray], m: int) -> np.ndarray:
    """The fold of every row as a path plans them: the validation pass, the plan, the chunks' label
    summaries, then each chunk's folds from its class codes alone."""
    from dlogit.cv import PathSpec, with_folds
    from dlogit.engine.shard import Shard, merged_stats
    from dlogit.folds import chunk_labels
    from dlogit.spec import make_plan

    raw = [(np.zeros((len(y), 1)), y, None) for y in chunks_y]
    spec = dlogit.LogisticRegressionCV(cv=m).make_spec(1)
    shard = Shard(dict(enumerate(raw)), len(raw))
    stats = merged_stats(dict(shard.stats()), len(raw))
    plan = with_folds(make_plan(spec, stats, weighted_input=False), PathSpec(0.0, 0.0, m),
                      [len(y) for y in chunks_y], [chunk_labels(y) for y in chunks_y])
    return np.concatenate([plan.folds.folds_of(i, len(y), plan.classes.encode(y))
                           for i, y in enumerate(chunks_y)])


def sklearn_folds(y: np.ndarray, m: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    out = np.full(len(y), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class ... less than n_splits"
        for f, (_, test) in enumerate(StratifiedKFold(m).split(np.zeros((len(y), 1)), y)):
            out[test] = f
    return out


@pytest.mark.parametrize("y, m", [
    (np.r_[np.zeros(10, int), np.ones(13, int)], 4),  # sorted, remainders in both classes
    (np.r_[np.ones(13, int), np.zeros(10, int)], 4),  # class 1 first: classes numbered by appearance
    (np.repeat([3, 0, 2, 1, 4], [2, 3, 20, 7, 9]), 5),  # multinomial, two classes smaller than K
    (np.array(list("cabbcacbbbcccaabbbcb")), 3),  # string labels
    (np.tile([1, 0, 0], 11), 7),  # interleaved
])
def test_stratified_folds_equal_stratified_kfold_for_any_chunking(y, m):
    rng = np.random.default_rng(len(y) * m)
    want = sklearn_folds(y, m)
    for cuts in ([], [1], [len(y) // 2], sorted(rng.choice(np.arange(1, len(y)), 4, replace=False)),
                 list(range(1, len(y)))):  # one chunk, ... one row a chunk
        got = dlogit_folds(np.split(y, cuts), m)
        np.testing.assert_array_equal(got, want, err_msg=f"chunks cut at {cuts}")


def test_stratified_folds_equal_stratified_kfold_on_random_label_orders():
    rng = np.random.default_rng(7)
    for _ in range(40):
        K, m = int(rng.integers(2, 6)), int(rng.integers(2, 8))
        y = rng.choice(K, size=int(rng.integers(3 * m, 80)), p=rng.dirichlet(np.ones(K)))
        counts = np.unique(y, return_counts=True)[1]
        if len(counts) < 2 or counts.min() < 2 or np.all(counts < m):
            continue
        cuts = sorted(rng.choice(np.arange(1, len(y)), int(rng.integers(0, 6)), replace=False))
        np.testing.assert_array_equal(dlogit_folds(np.split(y, cuts), m), sklearn_folds(y, m))


def _sorted_classes(k=3, n_per=30, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    X = rng.standard_normal((len(y), 3)) + y[:, None]
    return X, y


def test_unfittable_folds_are_refused_and_a_small_class_is_a_warning():
    from sklearn.model_selection import KFold

    X, y = _sorted_classes()
    kw = {"l2": [1e-2], "tol": 1e-6}
    # contiguous folds of label-sorted rows: each fold holds out a whole class
    with pytest.raises(dlogit.DataError, match=r"^fold 0's training part has no rows of class 0: all 30 of "
                       r"its rows are held out by that fold; contiguous folds"):
        dlogit.LogisticRegressionCV(cv=3, cv_split="contiguous", **kw).fit(X, y)
    with pytest.raises(dlogit.DataError, match="training part has no rows of class 0"):
        dlogit.LogisticRegressionCV(cv="contiguous", **kw).fit(*_sorted_classes(5, 10))  # 5 folds
    with pytest.raises(dlogit.DataError, match="training part has no rows of class 0"):  # a splitter too
        dlogit.LogisticRegressionCV(cv=KFold(3), **kw).fit(X, y)
    # stratified: a one-row class would be missing from one training part
    y1 = y.copy()
    y1[-1] = 7
    with pytest.raises(dlogit.DataError, match=r"^class 7 has 1 row: fold 4 holds it out and would train "
                       "without the class"):
        dlogit.LogisticRegressionCV(cv=5, **kw).fit(X, y1)
    # every class smaller than K (scikit-learn refuses too)
    with pytest.raises(dlogit.DataError, match="need a class with at least 40 rows: the largest, class 0, "
                       "has 30"):
        dlogit.LogisticRegressionCV(cv=40, **kw).fit(X, y)
    # a held-out part without rows
    splits = [(np.arange(45, 90), np.arange(45)), (np.arange(45), np.arange(45, 90)), (np.arange(90), [])]
    with pytest.raises(dlogit.ConfigError, match="split 2 holds out no rows"):
        dlogit.LogisticRegressionCV(cv=splits, **kw).fit(X, y)
    # a class with fewer rows than folds but at least 2: fitted, with scikit-learn's warning's gist
    y3 = y.copy()
    y3[[0, 40]] = 9
    with pytest.warns(UserWarning, match="class 9 has only 2 rows, fewer than cv=5 folds: 3 of the held-out "
                      "folds have none of it"):
        m = dlogit.LogisticRegressionCV(cv=5, **kw).fit(X, y3)
    assert np.isfinite(m.best_score_)
    with pytest.raises(dlogit.ConfigError, match="cv_split='contiguous' applies to cv=K"):
        dlogit.LogisticRegressionCV(cv=KFold(3), cv_split="contiguous", **kw).fit(X, y)


def test_iterable_of_splits_and_the_contiguous_split_by_name():
    from sklearn.model_selection import KFold, StratifiedKFold

    rng = np.random.default_rng(3)
    X = rng.standard_normal((120, 4))
    y = (X[:, 0] + rng.standard_normal(120) > 0).astype(int)
    kw = {"l2": [1e-1, 1e-3], "tol": 1e-7}
    listed = dlogit.LogisticRegressionCV(cv=list(KFold(3).split(X)), **kw).fit(X, y)  # AttributeError before
    splitter = dlogit.LogisticRegressionCV(cv=KFold(3), **kw).fit(X, y)
    named = dlogit.LogisticRegressionCV(cv=3, cv_split="contiguous", **kw).fit(X, y)
    for other in (splitter, named):
        np.testing.assert_array_equal(listed.cv_results_["mean_test_score"], other.cv_results_["mean_test_score"])
    strat = dlogit.LogisticRegressionCV(cv=StratifiedKFold(3), **kw).fit(X, y)
    default = dlogit.LogisticRegressionCV(cv=3, **kw).fit(X, y)
    np.testing.assert_array_equal(strat.cv_results_["mean_test_score"], default.cv_results_["mean_test_score"])
    assert not np.array_equal(strat.cv_results_["split0_test_score"], named.cv_results_["split0_test_score"])
    five = dlogit.LogisticRegressionCV(cv="contiguous", **kw).fit(X, y)
    np.testing.assert_array_equal(five.cv_results_["mean_test_score"],
                                  dlogit.LogisticRegressionCV(cv=KFold(5), **kw).fit(X, y).cv_results_[
                                      "mean_test_score"])


def test_an_interrupted_path_says_where_it_stopped():
    """Ctrl-C during the second point: the point's end event carries the rounds it ran and their loss
    (not 0 and NaN), and the error and the CLI's line name the finished points and the best so far."""
    from dlogit.cli.train import _interrupted_path

    rng = np.random.default_rng(4)
    X = rng.standard_normal((200, 5))
    y = (X[:, 0] + rng.standard_normal(200) > 0).astype(int)
    seen: list[dict] = []

    def callback(msg):
        seen.append(msg)
        if msg["type"] == "progress" and msg["run"].endswith("/p1") and not any(
                e["type"] == "end" and e["status"] == "interrupted" for e in seen):
            raise KeyboardInterrupt

    with pytest.raises(dlogit.Interrupted, match=r"^interrupted during point 2 of 3 of the cross-validation "
                       r"path \(1 finished; best so far l2 0\.1, l1 0: neg_log_loss -0\.\d{6}; no penalty chosen\)"):
        dlogit.LogisticRegressionCV(l2=[1e-1, 1e-2, 1e-3], cv=3, tol=1e-9, progress_period=1).fit(
            X, y, callback=callback)
    end = [e for e in seen if e["type"] == "end" and e["status"] == "interrupted"]
    assert len(end) == 1 and end[0]["run"].endswith("/p1")
    assert end[0]["n_iter"] >= 1 and np.isfinite(end[0]["loss"]) and "during point 2 of 3" in end[0]["message"]
    tracker = {"event": [e for e in seen if e["type"] == "path"][-1],
               "cv": [e for e in seen if e["type"] == "start"][-1]["params"]["cv"]}
    line = _interrupted_path(tracker, 3, "stratified", "neg_log_loss")
    assert line.startswith("cv: interrupted during point 2 of 3 (3 stratified folds): 1 point(s) finished; "
                           "best so far l2 0.1, l1 0: neg_log_loss -0.")
    assert line.endswith("; no penalty chosen, no model written")
    # a path that finished, stopped in its refit, says so
    done = dict(tracker["event"], done=True)
    line = _interrupted_path({"event": done, "cv": tracker["cv"]}, 3, "stratified", "neg_log_loss")
    assert line.startswith("cv: the path finished (1 points, 3 stratified folds; best l2 0.1, l1 0: ")
    assert line.endswith("interrupted during the refit on all the data, no model written")
