"""The CLI end to end: real local clusters, real files, and every bad input as one line + exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dlogit

DLOGIT = [sys.executable, "-m", "dlogit"]


def run(*args, timeout=180):
    return subprocess.run([*DLOGIT, *args], capture_output=True, text=True, timeout=timeout)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    path = d / "train.csv"
    r = run("generate", str(path), "--rows", "300", "--cols", "6", "--seed", "4")
    assert r.returncode == 0, r.stderr
    return path


def test_default_train_is_the_textbook_run():
    r = run("train", "--workers", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("dashboard: http://127.0.0.1:") for line in lines)
    losses = [float(line.split()[3]) for line in lines if line.startswith("step ")]
    assert len(losses) == 11  # every 1000 steps, 0..10000
    assert losses[0] > 10 and losses[-1] < 0.2 and losses == sorted(losses, reverse=True)
    assert "training accuracy 1.0000" in r.stdout
    assert "worker-local mode, fused kernel" in r.stdout  # small data: one worker, one-pass CPU kernel


def test_workers_1_and_2_give_the_same_model(tmp_path):
    outs = []
    for n in ("1", "2"):
        out = tmp_path / f"m{n}.npz"
        r = run("train", "--workers", n, "--max-iter", "500", "--json", "--out", str(out))
        assert r.returncode == 0, r.stderr
        s = last_json(r.stdout)
        assert s["n_iter"] == 500 and s["workers"] == int(n) and s["seconds"] > 0
        outs.append(np.load(out)["coef"])
    # same chunks, same reduction tree: equal up to alignment-dependent SIMD rounding in NumPy/BLAS
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12, atol=1e-15)


def test_train_csv_predict_evaluate(csv_file, tmp_path):
    model = tmp_path / "m.npz"
    r = run("train", str(csv_file), "--label", "label", "--solver", "lbfgs", "--workers", "2",
            "--chunk-rows", "70", "--mode", "distributed", "--tol", "1e-9", "--json", "--out", str(model))
    assert r.returncode == 0, r.stderr
    s = last_json(r.stdout)
    assert s["status"] == "converged" and 0 < s["accuracy"] <= 1
    X = np.loadtxt(csv_file, delimiter=",", skiprows=1)
    ref = dlogit.LogisticRegression(solver="lbfgs", tol=1e-9).fit(X[:, :-1], X[:, -1])
    np.testing.assert_allclose(np.load(model)["coef"], ref.coef_, rtol=1e-5, atol=1e-8)

    pred = tmp_path / "pred.csv"
    r = run("predict", str(model), str(csv_file), "--out", str(pred))
    assert r.returncode == 0, r.stderr
    got = np.loadtxt(pred, delimiter=",", skiprows=1)
    np.testing.assert_allclose(got[:, 0], ref.predict_proba(X[:, :-1])[:, 1], rtol=1e-5)

    r = run("evaluate", str(model), str(csv_file), "--json")
    assert r.returncode == 0, r.stderr
    m = last_json(r.stdout)
    assert set(m) >= {"logloss", "accuracy", "roc_auc"}
    assert m["accuracy"] == pytest.approx(s["accuracy"])
    from sklearn.metrics import log_loss, roc_auc_score

    p = ref.predict_proba(X[:, :-1])[:, 1]
    assert m["roc_auc"] == pytest.approx(roc_auc_score(X[:, -1], p), rel=1e-6)
    assert m["logloss"] == pytest.approx(log_loss(X[:, -1], p), rel=1e-4)


@pytest.mark.parametrize("ext", ["parquet", "npy"])
def test_train_parquet_and_npy(tmp_path, ext):
    path = tmp_path / f"d.{ext}"
    assert run("generate", str(path), "--rows", "200", "--cols", "5").returncode == 0
    args = ["--labels", str(tmp_path / "d.labels.npy")] if ext == "npy" else []
    r = run("train", str(path), *args, "--solver", "lbfgs", "--workers", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert last_json(r.stdout)["status"] == "converged"


def _write_csv(path, header, rows):
    with open(path, "w") as f:
        f.write(header + "\n")
        for row in rows:
            f.write(",".join(str(v) for v in row) + "\n")


BAD = {
    "nan": ("a,b,label", [[1, "nan", 0], [2, 3, 1]], "NaN or infinite"),
    "inf": ("a,b,label", [[1, "inf", 0], [2, 3, 1]], "NaN or infinite"),
    "labels": ("a,b,label", [[1, 2, 0], [2, 3, 2]], "labels must be 0 or 1"),
    "single": ("a,b,label", [[1, 2, 1], [2, 3, 1]], "only one class"),
    "empty": ("a,b,label", [], "no rows"),
    "text": ("a,b,label", [[1, "x", 0], [2, "y", 1]], "not numeric"),
    "nolabel": ("a,b,c", [[1, 2, 0], [2, 3, 1]], "label column 'label' not found"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_csv_input_is_one_line_and_exit_2(tmp_path, case):
    header, rows, match = BAD[case]
    path = tmp_path / "bad.csv"
    _write_csv(path, header, rows)
    out = tmp_path / "model.npz"
    r = run("train", str(path), "--workers", "1", "--out", str(out))
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and match in err[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".dlogit-")]


def test_length_mismatch_and_unreadable_files(tmp_path):
    X = tmp_path / "x.npy"
    np.save(X, np.ones((4, 2)))
    np.save(tmp_path / "y.npy", np.array([0.0, 1.0, 1.0]))
    cases = [
        (["train", str(X), "--labels", str(tmp_path / "y.npy")], "4 rows but"),
        (["train", str(tmp_path / "missing.csv")], "cannot read"),
        (["train", str(tmp_path / "data.txt")], "cannot tell the format"),
        (["predict", str(tmp_path / "nomodel.npz"), str(X), "--out", str(tmp_path / "p.csv")],
         "model file not found"),
        (["train", "--synthetic", "10y5"], "ROWSxCOLS"),
    ]
    for args, match in cases:
        r = run(*args, "--workers", "1") if args[0] == "train" else run(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and match in r.stderr, (args, r.stderr)
    assert not (tmp_path / "p.csv").exists()


def test_bad_cpu_kernel_setting_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "m.npz"
    env = {**os.environ, "DASK_DLOGIT__CPU_KERNEL": "fastest"}
    r = subprocess.run([*DLOGIT, "train", "--workers", "1", "--out", str(out)], capture_output=True,
                       text=True, timeout=120, env=env, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "dlogit.cpu-kernel must be one of auto, fused, blas" in err[0], r.stderr
    assert "dashboard" not in r.stdout and not out.exists()  # rejected before any cluster starts


def test_unreachable_scheduler_fails_fast():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run("train", "--scheduler", f"tcp://127.0.0.1:{port}", "--connect-timeout", "2s", timeout=60)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot reach the Dask scheduler" in r.stderr


def test_predict_rejects_wrong_feature_count(csv_file, tmp_path):
    model = tmp_path / "m.npz"
    assert run("train", "--synthetic", "50x3", "--workers", "1", "--max-iter", "5", "--out",
               str(model)).returncode == 0
    r = run("predict", str(model), str(csv_file), "--out", str(tmp_path / "p.csv"))
    assert r.returncode == 2 and "6 feature columns" in r.stderr
    assert not (tmp_path / "p.csv").exists()
