"""The CLI end to end: real files, real clusters, and every bad input as one line + exit 2.

Two tests run ``dlogit`` as a real process with its own local cluster (the textbook run, 1 vs 2
workers); the rest run the CLI in this process (``dlogit.cli.main``) against one shared cluster of
worker processes, which is what ``--scheduler`` does anyway, without paying a cluster start per case.
Output contract: notices and progress on stdout; stderr holds warnings and the one error line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

import dlogit

DLOGIT = [sys.executable, "-m", "dlogit"]

pytestmark = pytest.mark.timeout(300)


def run(*args, timeout=180):
    return subprocess.run([*DLOGIT, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False)


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def cli(capfd, *args, env: dict[str, str] | None = None) -> Result:
    """``dlogit ARGS`` in this process; restores what main() changes process-wide."""
    from dlogit.cli import main

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    np_err = np.geterr()
    old_env = {k: os.environ.get(k) for k in (env or {})}
    capfd.readouterr()
    rc = 0
    try:
        os.environ.update(env or {})
        with warnings.catch_warnings():
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for s, h in saved.items():
            signal.signal(s, h)
        np.seterr(**np_err)
    out, err = capfd.readouterr()
    return Result(rc, out, err)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def newton_optimum(X: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """The exact minimizer (w..., b) of (1/n) sum [log(1+e^z) - y z] + l2 ||w||^2, by Newton."""
    n, d = X.shape
    A = np.hstack([X, np.ones((n, 1))])
    P = np.r_[np.full(d, 2.0 * l2), 0.0]
    theta = np.zeros(d + 1)
    for _ in range(100):
        p = 0.5 * (1.0 + np.tanh(0.5 * (A @ theta)))
        step = np.linalg.solve((A.T * (p * (1 - p))) @ A / n + np.diag(P), A.T @ (p - y) / n + P * theta)
        theta -= step
        if np.all(np.abs(step) <= 1e-15 * np.maximum(1.0, np.abs(theta))):
            break
    return theta


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=50) as lc:
        yield lc.scheduler_address


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    path = d / "train.csv"
    r = run("generate", path, "--rows", "300", "--cols", "6", "--seed", "4")
    assert r.returncode == 0, r.stderr
    return path


# --------------------------------------------------------------------------------------------------
# real processes with their own local cluster


def test_default_train_is_the_textbook_run():
    r = run("train", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no notice (no "no usable GPU"), no warning
    lines = r.stdout.splitlines()
    assert any(line.startswith("dashboard: http://127.0.0.1:") for line in lines)
    losses = [float(line.split()[3]) for line in lines if line.startswith("step ")]
    assert len(losses) == 11  # every 1000 steps, 0..10000
    assert losses[0] > 10 and losses[-1] < 0.2 and losses == sorted(losses, reverse=True)
    assert "training accuracy 1.0000" in r.stdout
    assert "done: max_iter after 10001 iterations" in r.stdout
    assert "worker-local mode, fused kernel" in r.stdout  # small data: one worker, one-pass CPU kernel


def test_workers_1_and_2_give_the_same_model(tmp_path):
    """A distributed fit of 4 chunks on 1 worker and on 2 (chunks spread, sums sent up the tree of
    workers) gives the same model bit for bit: the chunk tree fixes the order of every sum."""
    outs = []
    for n in ("1", "2"):
        out = tmp_path / f"m{n}.npz"
        r = run("train", "--workers", n, "--max-iter", "500", "--mode", "distributed", "--chunk-rows", "100",
                "--json", "--out", out)
        assert r.returncode == 0, r.stderr
        s = last_json(r.stdout)
        assert s["n_iter"] == 500 and s["workers"] == int(n) and s["seconds"] > 0 and s["solver"] == "gd"
        assert s["mode"] == "distributed" and s["n_chunks"] == 4, s
        m = np.load(out)
        outs.append((m["coef"], m["intercept"], m["history_loss"]))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------------
# in this process, on the shared cluster


def _mann_whitney_auc(pos, score, w):
    """Weighted AUC by its definition: P(score of a positive > a negative's), ties counted half."""
    sp, sn = score[pos], score[~pos]
    wp, wn = w[pos], w[~pos]
    gt = (sp[:, None] > sn[None, :]) + 0.5 * (sp[:, None] == sn[None, :])
    return float(wp @ gt @ wn / (wp.sum() * wn.sum()))


@pytest.mark.parametrize("K", [2, 3])
def test_evaluate_metrics_are_the_definitions(K):
    """``dlogit evaluate``'s numbers (from sklearn.metrics): the weighted mean of the family's own stable
    row loss, weighted accuracy, and the weighted Mann-Whitney AUC (ties half; one-vs-rest macro for K > 2)."""
    import warnings

    from dlogit.cli.evaluate import metrics
    from dlogit.family import get_family

    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 4))
    y = rng.integers(0, K, 400)
    w = rng.uniform(0, 2, 400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = dlogit.LogisticRegression(max_iter=50).fit(X, y)
    Xr = np.round(X, 1)  # tied scores
    fam = get_family(model.family_)
    z = fam.decision(Xr, model.coef_, model.intercept_)
    proba = fam.proba(z)
    for ww in (None, w):
        m = metrics(model, Xr, y, ww)
        wt = np.ones(400) if ww is None else ww
        assert m["logloss"] == pytest.approx(float(fam.row_loss(z, y) @ wt / wt.sum()), rel=1e-13)
        assert m["accuracy"] == pytest.approx(float((np.argmax(proba, 1) == y) @ wt / wt.sum()), rel=1e-13)
        aucs = [_mann_whitney_auc(y == k, proba[:, k], wt) for k in ([1] if K == 2 else range(K))]
        assert m["roc_auc" if K == 2 else "roc_auc_ovr_macro"] == pytest.approx(np.mean(aucs), rel=1e-12)
        assert m["weighted"] == (ww is not None) and m["rows"] == 400


def test_train_csv_predict_evaluate(capfd, csv_file, tmp_path, scheduler):
    model = tmp_path / "m.npz"
    r = cli(capfd, "train", csv_file, "--label", "label", "--chunk-rows", "70", "--mode", "distributed",
            "--scheduler", scheduler, "--json", "--out", model)
    assert r.rc == 0, r.err
    s = last_json(r.out)
    assert s["solver"] == "lbfgs" and s["status"] == "converged" and s["mode"] == "distributed"
    assert s["classes"] == [0, 1] and 0 < s["accuracy"] <= 1
    X = np.loadtxt(csv_file, delimiter=",", skiprows=1)
    ref = newton_optimum(X[:, :-1], X[:, -1], l2=0.01)
    m = np.load(model)
    np.testing.assert_allclose(np.r_[m["coef"][0], m["intercept"]], ref, rtol=1e-5, atol=1e-7)

    pred = tmp_path / "pred.csv"
    r = cli(capfd, "predict", model, csv_file, "--out", pred)
    assert r.rc == 0 and r.err == "", r.err
    import pandas as pd

    got = pd.read_csv(pred)
    assert list(got.columns) == ["label", "proba_0", "proba_1"]
    p = 1 / (1 + np.exp(-(X[:, :-1] @ ref[:-1] + ref[-1])))
    np.testing.assert_allclose(got["proba_1"], p, rtol=1e-5)
    np.testing.assert_allclose(got["proba_0"] + got["proba_1"], 1.0, rtol=1e-12)
    np.testing.assert_array_equal(got["label"], (p > 0.5).astype(int))

    r = cli(capfd, "evaluate", model, csv_file, "--json")
    assert r.rc == 0, r.err
    m = last_json(r.out)
    assert set(m) >= {"logloss", "accuracy", "roc_auc"}
    assert m["accuracy"] == pytest.approx(s["accuracy"])
    from sklearn.metrics import log_loss, roc_auc_score

    assert m["roc_auc"] == pytest.approx(roc_auc_score(X[:, -1], p), rel=1e-6)
    assert m["logloss"] == pytest.approx(log_loss(X[:, -1], p), rel=1e-5)


def test_any_labels_train_and_predict_back_as_labels(capfd, tmp_path, scheduler):
    """Labels need not be 0/1: strings, and three classes (multinomial) come back as themselves."""
    import pandas as pd

    rng = np.random.default_rng(2)
    X = rng.standard_normal((240, 3))
    names = np.array(["cat", "dog", "emu"])
    y = names[np.argmax(X @ rng.standard_normal((3, 3)) + 0.3 * rng.standard_normal((240, 3)), axis=1)]
    data = tmp_path / "animals.csv"
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "kind": y}).to_csv(data, index=False)
    model = tmp_path / "m.npz"
    r = cli(capfd, "train", data, "--label", "kind", "--scheduler", scheduler, "--json", "--out", model)
    assert r.rc == 0, r.err
    s = last_json(r.out)
    assert s["classes"] == ["cat", "dog", "emu"] and s["family"] == "multinomial"
    ref = dlogit.LogisticRegression().fit(X, y)
    pred = tmp_path / "p.parquet"
    r = cli(capfd, "predict", model, data, "--out", pred)  # --label from the model: excluded again
    assert r.rc == 0, r.err
    got = pd.read_parquet(pred)
    assert list(got.columns) == ["label", "proba_cat", "proba_dog", "proba_emu"]
    np.testing.assert_array_equal(got["label"].to_numpy(), ref.predict(X))
    np.testing.assert_allclose(got[["proba_cat", "proba_dog", "proba_emu"]].to_numpy(), ref.predict_proba(X),
                               rtol=1e-5, atol=1e-8)
    r = cli(capfd, "predict", model, data, "--out", tmp_path / "p.npy")
    assert r.rc == 2 and len(r.err_lines) == 1 and "not numeric" in r.err


@pytest.mark.parametrize("ext", ["parquet", "npy"])
def test_train_parquet_and_npy(capfd, tmp_path, ext, scheduler):
    path = tmp_path / f"d.{ext}"
    assert cli(capfd, "generate", path, "--rows", "200", "--cols", "5").rc == 0
    args = ["--labels", tmp_path / "d.labels.npy"] if ext == "npy" else []
    r = cli(capfd, "train", path, *args, "--scheduler", scheduler, "--json")
    assert r.rc == 0, r.err
    assert last_json(r.out)["status"] == "converged"


def _write_csv(path, header, rows):
    with open(path, "w") as f:
        f.write(header + "\n")
        f.writelines(",".join(str(v) for v in row) + "\n" for row in rows)


BAD = {
    "nan": ("a,b,label", [[1, "nan", 0], [2, 3, 1]], "NaN or infinite"),
    "inf": ("a,b,label", [[1, "inf", 0], [2, 3, 1]], "NaN or infinite"),
    "missing-label": ("a,b,label", [[1, 2, 0], [2, 3, ""], [3, 1, 1]], "missing value"),
    "inf-label": ("a,b,label", [[1, 2, 0], [2, 3, "inf"], [3, 1, 1]], "NaN or infinite"),
    "single": ("a,b,label", [[1, 2, 1], [2, 3, 1]], "only one class"),
    "empty": ("a,b,label", [], "no rows"),
    "text": ("a,b,label", [[1, "x", 0], [2, "y", 1]], "not numeric"),
    "nolabel": ("a,b,c", [[1, 2, 0], [2, 3, 1]], "label column 'label' not found"),
    "ragged": ("a,b,label", [[1, 2, 0], [2, 3, 1, 5]], "row 2 has 4 fields, more than the 3 columns"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_csv_input_is_one_line_and_exit_2(capfd, tmp_path, case, scheduler):
    header, rows, match = BAD[case]
    path = tmp_path / "bad.csv"
    _write_csv(path, header, rows)
    out = tmp_path / "model.npz"
    r = cli(capfd, "train", path, "--scheduler", scheduler, "--out", out)
    assert r.rc == 2, r.out + r.err
    assert len(r.err_lines) == 1 and match in r.err_lines[0] and r.err.startswith("dlogit: error: "), r.err
    assert "Traceback" not in r.err
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".dlogit-")]


def test_labels_are_not_only_0_and_1(capfd, tmp_path, scheduler):
    path = tmp_path / "l.csv"
    _write_csv(path, "a,b,label", [[1, 2, 0], [2, 3, 2], [3, 1, 0], [0, 2, 2]])
    r = cli(capfd, "train", path, "--scheduler", scheduler, "--json")
    assert r.rc == 0, r.err
    assert last_json(r.out)["classes"] == [0, 2]  # numbers for numeric classes (issue 19)


def test_length_mismatch_and_unreadable_files(capfd, tmp_path, scheduler):
    X = tmp_path / "x.npy"
    np.save(X, np.ones((4, 2)))
    np.save(tmp_path / "y.npy", np.array([0.0, 1.0, 1.0]))
    cases = [
        (["train", X, "--labels", tmp_path / "y.npy"], "4 rows but"),
        (["train", tmp_path / "missing.csv"], "cannot read"),
        (["train", tmp_path / "data.txt"], "cannot tell the format"),
        (["predict", tmp_path / "nomodel.npz", X, "--out", tmp_path / "p.csv"], "model file not found"),
        (["train", "--synthetic", "10y5"], "ROWSxCOLS"),
    ]
    for args, match in cases:
        r = cli(capfd, *args, "--scheduler", scheduler) if args[0] == "train" else cli(capfd, *args)
        assert r.rc == 2, (args, r.err)
        assert len(r.err_lines) == 1 and match in r.err, (args, r.err)
    assert not (tmp_path / "p.csv").exists()


def test_bad_cpu_kernel_setting_is_one_line_and_exit_2(capfd, tmp_path):
    import dask

    out = tmp_path / "m.npz"
    with dask.config.set({"dlogit.cpu-kernel": "fastest"}):
        r = cli(capfd, "train", "--workers", "1", "--out", out)
    assert r.rc == 2, r.out + r.err
    assert len(r.err_lines) == 1 and "dlogit.cpu-kernel must be one of auto, fused, blas" in r.err, r.err
    assert "dashboard" not in r.out and not out.exists()  # rejected before any cluster starts


def test_unreachable_scheduler_fails_fast(capfd):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    r = cli(capfd, "train", "--scheduler", f"tcp://127.0.0.1:{port}", "--connect-timeout", "2s")
    assert r.rc == 2 and time.monotonic() - t0 < 30
    assert len(r.err_lines) == 1 and "cannot reach the Dask scheduler" in r.err


def test_predict_rejects_wrong_feature_count(capfd, csv_file, tmp_path, scheduler):
    model = tmp_path / "m.npz"
    assert cli(capfd, "train", "--synthetic", "50x3", "--scheduler", scheduler, "--max-iter", "5", "--out",
               model).rc == 0
    r = cli(capfd, "predict", model, csv_file, "--out", tmp_path / "p.csv")
    assert r.rc == 2 and len(r.err_lines) == 1 and "6 feature columns" in r.err
    assert not (tmp_path / "p.csv").exists()


def test_notices_and_progress_go_to_stdout(capfd, tmp_path, scheduler):
    """stdout: notices ('dropped column ...'), progress and the summary; stderr: nothing on success."""
    rng = np.random.default_rng(0)
    import pandas as pd

    X = rng.standard_normal((200, 2))
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "label": (X[:, 0] > 0).astype(int)}).to_csv(tmp_path / "d.csv")
    r = cli(capfd, "train", tmp_path / "d.csv", "--scheduler", scheduler, "--progress", "1", "--l2", "0.1")
    assert r.rc == 0 and r.err == "", r.err
    assert "dlogit: dropped column 'Unnamed: 0'" in r.out
    assert any(line.startswith("step 0 ") for line in r.out.splitlines())
    assert any(line.startswith("done: converged") for line in r.out.splitlines())
    r = cli(capfd, "train", tmp_path / "d.csv", "--scheduler", scheduler, "--quiet")
    assert r.rc == 0 and r.err == "" and "dropped column" not in r.out


def test_help_lists_exit_codes_and_new_options(capfd):
    r = cli(capfd, "--help")
    assert r.rc == 0 and "Exit codes:" in r.out
    for code in ("0 ", "2 ", "3 ", "130", "143"):
        assert code in r.out.split("Exit codes:")[1]
    r = cli(capfd, "train", "--help")
    assert r.rc == 0
    for opt in ("--checkpoint", "--checkpoint-every", "--resume", "--keep-diverged", "--index-col", "--verbose"):
        assert opt in r.out, opt


def test_memory_limit_sets_each_local_workers_limit_and_a_percentage_cache_follows_it(tmp_path):
    """``--memory-limit`` is each local worker's Dask ``memory_limit``: ``--cache-bytes 1%`` is then 1% of
    it (the budget line says so); a value Dask would not take is one line, exit 2, before any start."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4000, 5))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", (X[:, 0] > 0).astype(float))
    r = run("train", tmp_path / "X.npy", "--labels", tmp_path / "y.npy", "--workers", 1, "--memory-limit",
            "400MiB", "--cache-bytes", "1%", "--dashboard-address", "127.0.0.1:0")
    assert r.returncode == 0, r.stderr
    assert "dlogit.engine.cache-bytes: 4.00 MiB per worker" in r.stdout + r.stderr
    # 400 MiB cannot hold a worker (~400 MiB) and two 128 MiB chunks under Dask's 80% pause: said first
    assert "--memory-limit 400MiB: the chunk cache (4.00 MiB) + 2 chunks (256.00 MiB)" in r.stderr
    r = run("train", tmp_path / "X.npy", "--labels", tmp_path / "y.npy", "--workers", 1, "--memory-limit",
            "4GiB", "--cache-bytes", "1%", "--dashboard-address", "127.0.0.1:0")
    assert r.returncode == 0 and "pass 80%" not in r.stderr, r.stderr
    for bad in ("2x", "0", "1.5"):
        r = run("train", tmp_path / "X.npy", "--labels", tmp_path / "y.npy", "--memory-limit", bad)
        assert r.returncode == 2 and "--memory-limit" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
