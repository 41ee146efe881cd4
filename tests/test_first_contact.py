"""First contact (issue 23): ``dlogit train`` loads only what it uses -- no scikit-learn (its import outlasts
reading and fitting a small file), and in its own process no ``distributed``, ``dask.array`` or Numba --
while the textbook run keeps its local cluster; :class:`dlogit.model.LogisticModel` (what the command
trains) gives :class:`dlogit.LogisticRegression`'s models bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)

WATCHED = ("sklearn", "scipy.stats", "scipy.optimize", "distributed", "dask.array", "numba")

# dlogit train in this process, then the watched modules it loaded
_RUN = f"""
import json, sys
from dlogit.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"rc": code, "loaded": sorted(m for m in {WATCHED!r} if m in sys.modules)}}))
"""


def _train(*args: str) -> tuple[dict, str]:
    r = subprocess.run([sys.executable, "-c", _RUN, "train", *args], capture_output=True, text=True,
                       timeout=240, check=False)
    probe = json.loads(r.stdout.strip().splitlines()[-1])
    assert probe["rc"] in (0, None), r.stderr
    return probe, r.stdout


def _csv(path, labels) -> str:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(len(labels), 4))
    with open(path, "w") as f:
        f.write("a,b,c,d,y\n")
        f.writelines(",".join(f"{v:.6f}" for v in row) + f",{lab}\n" for row, lab in zip(X, labels))
    return str(path)


@pytest.mark.parametrize("labels", ["numbers", "text"])
def test_a_small_file_trains_in_process_without_sklearn_distributed_or_numba(tmp_path, labels):
    y = np.random.default_rng(1).integers(0, 3, 300)
    data = _csv(tmp_path / "t.csv", [f"k{v}" for v in y] if labels == "text" else list(y))
    probe, out = _train(data, "--label", "y", "--out", str(tmp_path / "m.npz"))
    assert "dlogit: training in this process: t.csv is " in out and "no cluster, in-process mode" in out
    assert probe["loaded"] == [], probe  # nothing of scikit-learn, SciPy's stats/optimize, Dask's cluster
    m = np.load(tmp_path / "m.npz")
    assert m["coef"].shape == (3, 4) and list(m["classes"]) == ([f"k{v}" for v in range(3)] if labels == "text"
                                                                 else [0, 1, 2])


def test_the_textbook_run_keeps_its_local_cluster_and_dashboard_without_sklearn():
    probe, out = _train("--max-iter", "5")
    assert "dlogit: starting a local cluster" in out and "dashboard: http" in out
    assert "2 cpu worker(s)" in out or "cpu worker(s)" in out
    assert "distributed" in probe["loaded"] and "sklearn" not in probe["loaded"], probe


# --------------------------------------------------------------------------------------------------
def _problems():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 6))
    yb = (X @ rng.normal(size=6) + rng.normal(size=500) > 0).astype(np.int64)
    ym = np.argmax(X[:, :3] + rng.normal(size=(500, 3)), axis=1).astype(np.float64)
    w = rng.uniform(0.5, 2.0, 500)
    return [("binomial", X, yb, None, {}), ("multinomial weighted", X, ym, w, {}),
            ("binomial L1", X, yb, None, {"l1": 0.01}), ("newton", X, yb, w, {"solver": "newton"}),
            ("gd", X.astype(np.float32), yb, None, {"solver": "gd", "max_iter": 50}),
            ("text labels", X, np.array(["no", "yes"], dtype=object)[yb], None, {"chunk_rows": 128})]


@pytest.mark.parametrize("case", _problems(), ids=lambda c: c[0])
def test_logistic_model_gives_logistic_regressions_model_bit_for_bit(case):
    from dlogit import LogisticRegression
    from dlogit.model import LogisticModel

    _, X, y, w, params = case
    a = LogisticModel(**params).fit(X, y, sample_weight=w)
    b = LogisticRegression(**params).fit(X, y, sample_weight=w)
    for attr in ("coef_", "intercept_", "classes_"):
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))
    assert (a.n_iter_, a.status_, a.loss_, a.n_features_in_) == (b.n_iter_, b.status_, b.loss_, b.n_features_in_)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert a.score(X, y, sample_weight=w) == b.score(X, y, sample_weight=w)
    assert a.score(X, y) == b.score(X, y)


def test_logistic_model_takes_other_inputs_through_sklearns_checks():
    import pandas as pd

    from dlogit.model import LogisticModel

    rng = np.random.default_rng(2)
    df = pd.DataFrame(rng.normal(size=(200, 3)), columns=["p", "q", "r"])
    y = (df["p"] > 0).astype(int).tolist()
    m = LogisticModel().fit(df, y)
    assert list(m.feature_names_in_) == ["p", "q", "r"] and m.n_features_in_ == 3
    assert m.predict(df).shape == (200,)
    m2 = LogisticModel().fit(df.to_numpy(), np.asarray(y))  # a refit on plain arrays drops the names
    assert not hasattr(m2, "feature_names_in_")
    m.fit(df.to_numpy(), np.asarray(y))
    assert not hasattr(m, "feature_names_in_")


@pytest.mark.parametrize("params, match", [
    ({"random_state": -1}, r"'random_state' parameter of LogisticRegression must be an int in the range \[0, inf\)"),
    ({"l2": -1.0}, r"'l2' parameter of LogisticRegression must be a float in the range \[0.0, inf\)"),
    ({"solver": "sgd"}, r"'solver' parameter of LogisticRegression must be a str among"),
    ({"lr": 0.0}, r"'lr' parameter of LogisticRegression must be a float in the range \(0.0, inf\)"),
    ({"l2": float("inf")}, r"'l2' parameter of LogisticRegression must be a float in the range \[0.0, inf\)"),
    ({"tol": float("nan")}, r"'tol' parameter of LogisticRegression must be"),
    ({"solver": "newton", "l1": 0.1}, r"solver 'newton' does not support l1"),
])
def test_logistic_model_checks_its_parameters_as_the_estimator_does(params, match):
    from dlogit import ConfigError, LogisticRegression
    from dlogit.model import LogisticModel

    X, y = np.eye(4), np.array([0, 1, 0, 1])
    for cls in (LogisticModel, LogisticRegression):
        with pytest.raises(ConfigError, match=match):
            cls(**params).fit(X, y)


def test_the_spawn_guard_runs_after_first_once_after_the_first_spawn_with_sigint_unblocked():
    """``children_start_without_sigint(after_first)``: what the CLI does while its workers start runs once,
    after the first process is spawned (not before: it would slow the scheduler's start), with this
    thread's own signal mask (the guard's SIGINT block lifted), and the spawned processes still start
    with SIGINT blocked."""
    import multiprocessing
    import signal

    from dlogit.cli import children_start_without_sigint

    calls = []
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    ctx = multiprocessing.get_context("spawn")
    with children_start_without_sigint(lambda: calls.append(signal.pthread_sigmask(signal.SIG_BLOCK, set()))):
        assert calls == []
        q = ctx.SimpleQueue()
        procs = [ctx.Process(target=_report_sigmask, args=(q,)) for _ in range(2)]
        for p in procs:
            p.start()
        masks = [q.get() for _ in procs]
        for p in procs:
            p.join(60)
    assert len(calls) == 1 and calls[0] == before  # the guard's own SIGINT block is lifted by then
    assert all(int(signal.SIGINT) in m for m in masks)


def _report_sigmask(q) -> None:
    import signal

    q.put(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, set())))
