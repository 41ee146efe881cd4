"""predict / evaluate read new data the way training read its data, outputs never replace inputs,
and options do what they say (each case found by reviewing the CLI; each would fail if it came back)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_cli import cli, scheduler  # noqa: F401 - the module's shared cluster

pytestmark = pytest.mark.timeout(300)


def _svm(path, rows):
    with open(path, "w") as f:
        f.writelines(f"{y} " + " ".join(f"{j}:{v}" for j, v in feats) + "\n" for y, feats in rows)
    return path


def _binary_table(rng, n):
    import pandas as pd

    X = rng.standard_normal((n, 3))
    y = (X[:, 0] - X[:, 1] + rng.standard_normal(n) > 0).astype(int)
    return pd.DataFrame({"id": np.arange(n), "a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "label": y})


def test_libsvm_predict_uses_the_base_and_width_training_found(capfd, tmp_path, scheduler):  # noqa: F811
    rng = np.random.default_rng(0)
    train = [(int(rng.random() < 0.5), [(j, round(float(rng.standard_normal()), 4)) for j in range(4)])
             for _ in range(200)]
    _svm(tmp_path / "train.svm", train)  # 0-based: index 0 is used
    model = tmp_path / "m.npz"
    r = cli(capfd, "train", tmp_path / "train.svm", "--scheduler", scheduler, "--out", model, "--l2", "0.1")
    assert r.rc == 0, r.err
    # new data that never uses feature 0 (a guess would call it 1-based and shift every column)
    test = [(0, [(1, 0.5), (3, -1.0)]), (1, [(2, 2.0)]), (1, [(1, -0.25), (2, 0.75), (3, 1.5)])]
    _svm(tmp_path / "test.svm", test)
    r = cli(capfd, "predict", model, tmp_path / "test.svm", "--out", tmp_path / "p.csv")
    assert r.rc == 0, r.err
    import pandas as pd

    m = np.load(model)
    X = np.zeros((3, 4))
    for i, (_, feats) in enumerate(test):
        for j, v in feats:
            X[i, j] = v
    p = 1 / (1 + np.exp(-(X @ m["coef"][0] + m["intercept"][0])))
    got = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(got.iloc[:, -1], p, rtol=1e-12)  # P(classes_[1])
    # evaluate --json prints one JSON object, nothing else
    r = cli(capfd, "evaluate", model, tmp_path / "test.svm", "--json")
    assert r.rc == 0, r.err
    assert json.loads(r.out)["rows"] == 3


def test_outputs_never_replace_inputs_named_by_a_glob_a_directory_or_weights(capfd, tmp_path, scheduler):  # noqa: F811
    rng = np.random.default_rng(1)
    d = tmp_path / "parts"
    d.mkdir()
    df = _binary_table(rng, 120).drop(columns="id")
    df[:60].to_csv(d / "a.csv", index=False)
    df[60:].to_csv(d / "b.csv", index=False)
    model = tmp_path / "m.npz"
    assert cli(capfd, "train", d, "--scheduler", scheduler, "--out", model).rc == 0
    before = {p: p.read_bytes() for p in d.iterdir()}
    for data, out in ((str(d / "*.csv"), d / "a.csv"), (str(d), d / "b.csv"), (str(d), d / "new.csv")):
        r = cli(capfd, "predict", model, data, "--out", out)
        assert r.rc == 2 and len(r.err_lines) == 1 and "inputs" in r.err, (data, out, r.err)
    assert {p: p.read_bytes() for p in d.iterdir()} == before
    np.save(tmp_path / "X.npy", df[["a", "b", "c"]].to_numpy())
    np.save(tmp_path / "w.npy", np.ones(120))
    w_before = (tmp_path / "w.npy").read_bytes()
    r = cli(capfd, "predict", model, tmp_path / "X.npy", "--weights", tmp_path / "w.npy", "--out",
            tmp_path / "w.npy")
    assert r.rc == 2 and "inputs" in r.err and (tmp_path / "w.npy").read_bytes() == w_before
    r = cli(capfd, "predict", model, tmp_path / "X.npy", "--out", tmp_path / "p.xlsx")
    assert r.rc == 2 and ".csv" in r.err and not (tmp_path / "p.xlsx").exists()
    # what is not an input is fine: a model file in the data's directory, a file in a subdirectory
    # that the glob does not reach
    assert cli(capfd, "train", d, "--scheduler", scheduler, "--max-iter", "3", "--out", d / "m2.npz").rc == 0
    (d / "sub").mkdir()
    assert cli(capfd, "predict", model, str(d / "*.csv"), "--out", d / "sub" / "p.csv").rc == 0
    assert cli(capfd, "predict", model, tmp_path / "X.npy", "--out", tmp_path / "p.pq").rc == 0


def test_predict_and_evaluate_new_tables(capfd, tmp_path, scheduler):  # noqa: F811
    """An index column the new data lacks, and a label column that is partly empty, do not stop
    predict; a README.txt beside the parts is no data."""
    rng = np.random.default_rng(2)
    df = _binary_table(rng, 150)
    d = tmp_path / "train"
    d.mkdir()
    df.to_csv(d / "part-0.csv", index=False)
    (d / "README.txt").write_text("where this data came from\n")
    model = tmp_path / "m.npz"
    r = cli(capfd, "train", d, "--index-col", "id", "--scheduler", scheduler, "--out", model)
    assert r.rc == 0, r.err
    new = df.drop(columns="id")[:20].copy()
    new.loc[5:, "label"] = np.nan  # labels partly unknown: predict does not need them
    new.to_csv(tmp_path / "new.csv", index=False)
    r = cli(capfd, "predict", model, tmp_path / "new.csv", "--out", tmp_path / "p.csv")
    assert r.rc == 0, r.err
    import pandas as pd

    m = np.load(model)
    X = new[["a", "b", "c"]].to_numpy()
    p = 1 / (1 + np.exp(-(X @ m["coef"][0] + m["intercept"][0])))
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p.csv")["proba_1"], p, rtol=1e-12)
    new[:5].to_csv(tmp_path / "labelled.csv")  # with a pandas index: a notice, never in --json output
    df.drop(columns="id").to_csv(tmp_path / "plain.csv", index=False)
    model = tmp_path / "plain.npz"
    assert cli(capfd, "train", tmp_path / "plain.csv", "--scheduler", scheduler, "--out", model).rc == 0
    r = cli(capfd, "evaluate", model, tmp_path / "labelled.csv")
    assert r.rc == 0 and "dropped column 'Unnamed: 0'" in r.out, r.err
    r = cli(capfd, "evaluate", model, tmp_path / "labelled.csv", "--json")
    assert r.rc == 0 and json.loads(r.out)["rows"] == 5, r.err


def test_summary_that_cannot_be_made_keeps_the_model(capfd, tmp_path, scheduler):  # noqa: F811
    rng = np.random.default_rng(3)
    import pandas as pd

    X = rng.standard_normal((300, 3))
    y = np.argmax(X @ rng.standard_normal((3, 3)) + rng.gumbel(size=(300, 3)), axis=1)
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "label": y}).to_csv(tmp_path / "k3.csv", index=False)
    model = tmp_path / "m.npz"
    r = cli(capfd, "train", tmp_path / "k3.csv", "--summary", "--scheduler", scheduler, "--out", model)
    assert r.rc == 0 and model.exists(), r.err
    assert len(r.err_lines) == 1 and "no --summary table" in r.err and "binary" in r.err
    r = cli(capfd, "train", tmp_path / "k3.csv", "--cv", "3", "--l2", "0.01,0.1", "--l1", "0.05", "--summary",
            "--scheduler", scheduler, "--out", tmp_path / "c.npz")
    assert r.rc == 2 and "without L1" in r.err and not (tmp_path / "c.npz").exists()


def test_chunk_bytes_sizes_synthetic_chunks_and_the_env_scheduler_yields_to_a_file(capfd, tmp_path, scheduler):  # noqa: F811
    r = cli(capfd, "train", "--synthetic", "2000x5", "--chunk-bytes", "4KiB", "--scheduler", scheduler,
            "--max-iter", "3", "--json")
    assert r.rc == 0, r.err
    # 4 KiB of 5 float64 columns: 102 rows a chunk, 20 chunks (the default would be one)
    assert json.loads(r.out.strip().splitlines()[-1])["n_chunks"] == 20
    sf = tmp_path / "scheduler.json"
    sf.write_text(json.dumps({"address": scheduler}))
    r = cli(capfd, "train", "--synthetic", "200x3", "--scheduler-file", sf, "--max-iter", "3", "--json",
            env={"DLOGIT_SCHEDULER": "tcp://127.0.0.1:9"})
    assert r.rc == 0, r.err
    assert os.environ.get("DLOGIT_SCHEDULER") is None


def test_cv_on_a_label_sorted_csv_uses_stratified_folds(capfd, tmp_path, scheduler):  # noqa: F811
    """--cv K on a file sorted by label: GridSearchCV's StratifiedKFold(K) scores and choice (contiguous
    folds would hold out runs of one class); --cv-split contiguous that holds out a whole class is one
    line and exit 2."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression as SK
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    rng = np.random.default_rng(8)
    y = np.repeat([0, 1], [120, 180])
    X = rng.standard_normal((300, 3)) + 0.7 * y[:, None]
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "label": y}).to_csv(tmp_path / "s.csv", index=False)
    l2s = [0.1, 0.001]
    r = cli(capfd, "train", tmp_path / "s.csv", "--cv", "5", "--l2", ",".join(map(str, l2s)), "--solver",
            "newton", "--tol", "1e-11", "--scheduler", scheduler, "--json")
    assert r.rc == 0, r.err
    got = json.loads(r.out.strip().splitlines()[-1])["cv"]
    assert got["split"] == "stratified" and got["folds"] == 5
    df = pd.read_csv(tmp_path / "s.csv")
    gs = GridSearchCV(SK(solver="newton-cholesky", tol=1e-12), {"C": [1 / (2 * 240 * v) for v in l2s]},
                      cv=StratifiedKFold(5), scoring="neg_log_loss").fit(df[["a", "b", "c"]].to_numpy(), df["label"])
    assert got["best_index"] == gs.best_index_
    np.testing.assert_allclose(got["mean_test_score"], gs.cv_results_["mean_test_score"], rtol=1e-8)
    r = cli(capfd, "train", tmp_path / "s.csv", "--cv", "5", "--l2", "0.1", "--scheduler", scheduler)
    assert r.rc == 0 and "(5 stratified folds)" in r.out, r.err
    # five classes of 60 sorted rows: each contiguous fold is one class
    y5 = np.repeat(np.arange(5), 60)
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "label": y5}).to_csv(tmp_path / "k5.csv", index=False)
    r = cli(capfd, "train", tmp_path / "k5.csv", "--cv", "5", "--cv-split", "contiguous", "--l2", "0.1,0.01",
            "--scheduler", scheduler, "--out", tmp_path / "m.npz")
    assert r.rc == 2 and len(r.err_lines) == 1 and not (tmp_path / "m.npz").exists(), r.err
    assert "fold 0's training part has no rows of class 0" in r.err and "use stratified folds" in r.err
    r = cli(capfd, "train", tmp_path / "k5.csv", "--cv-split", "contiguous", "--scheduler", scheduler)
    assert r.rc == 2 and "--cv-split needs --cv K" in r.err
