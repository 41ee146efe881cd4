#!/usr/bin/env python3
"""First contact (issue 23): what a newcomer meets before any warm, repeated fit, each figure a ratio
against a baseline measured in this run (medians of ``--repeat`` runs; cold figures in fresh processes).

    .venv/bin/python scripts/bench_first.py [--quick] [--json first.json] [--only cold cli ...]

Sections:
  cold     ``scripts/dlogit train`` (the textbook defaults) to its first progress line ("step 0") and to
           its exit, with an empty Numba cache (NUMBA_CACHE_DIR = a new temp dir: dlogit's cache=True
           kernels recompile; the files written there are counted to show it) vs the second run on it
  cli      ``dlogit --version`` and a usage error (``dlogit train --bogus``, exit 2) wall times
  small    ``dlogit train small.csv --label y`` (a ~3 MB CSV made here) wall vs the equivalent
           scikit-learn script as a fresh python (import sklearn + pandas.read_csv +
           LogisticRegression(C=1/(2 n l2)).fit, otherwise scikit-learn's defaults, max_iter 1000)
  cluster  in a fresh python: a new LocalCluster (2 worker processes, 1 thread each, 127.0.0.1) and its
           first dlogit L-BFGS fit of ROWSx100 float64 from ``da.from_array`` (time from cluster creation,
           worker imports included), then the 2nd and 3rd fits, vs scikit-learn lbfgs on the aligned
           C-contiguous array (same l2, tol 1e-6); objectives of both at their solutions; then the same
           on another fresh cluster with the data made on the workers (its making not counted)
  busy     in-process L-BFGS fit of a NumPy ROWSx100 array, quiet vs with a busy loop pinned to core 0
           (``taskset -c 0 python -c 'while True: pass'``); scikit-learn the same; slowdowns side by side
  sparse   CSR SROWSx100 000, 40 nonzeros/row, l2 1e-5, L-BFGS: dlogit in-process vs on a 2-worker local
           cluster (data made on the workers) vs scikit-learn on the gathered CSR
  csv      scripts/bench_csv.py (dlogit's CSV reader vs pyarrow.csv and pandas), when it exists
Only public dlogit API, the CLI and environment configuration are used. The machine's load matters:
compare figures of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
DLOGIT = os.path.join(HERE, "dlogit")
SECTIONS = ("cold", "cli", "small", "cluster", "busy", "sparse", "csv")


def _median(xs):
    return float(np.median(np.asarray(xs, dtype=float)))


def _run(cmd, env=None, first: str | None = None, timeout: float = 600, cwd: str = ROOT) -> dict:
    """Run ``cmd`` (stdout and stderr merged); wall to exit, and to the first line starting with ``first``."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, **(env or {})}, cwd=cwd)
    t_first, lines = None, []
    for line in p.stdout:
        lines.append(line)
        if first is not None and t_first is None and line.startswith(first):
            t_first = time.perf_counter() - t0
    rc = p.wait(timeout=timeout)
    out = {"wall_s": time.perf_counter() - t0, "rc": rc, "first_s": t_first, "tail": "".join(lines[-30:])}
    return out


def _count_files(d: str) -> int:
    return sum(len(fs) for _, _, fs in os.walk(d))


# ------------------------------------------------------------------------------------------------
def _fresh_copy(tmp: str) -> tuple[list[str], dict]:
    """A copy of the dlogit package without any __pycache__ (as after a fresh install), and the command
    and environment that run its CLI (workers of its local cluster import the copy too)."""
    dst = os.path.join(tmp, "pkg")
    shutil.copytree(os.path.join(ROOT, "dlogit"), os.path.join(dst, "dlogit"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    path = os.pathsep.join([dst, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return [sys.executable, "-c", "from dlogit.cli import main; main()"], {"PYTHONPATH": path, "NUMBA_CACHE_DIR": ""}


def bench_cold(repeat: int, copy: bool = False) -> dict:
    """``copy``: run a fresh copy of the package (no __pycache__) instead of the checkout with an empty
    NUMBA_CACHE_DIR; used as well when the cold run wrote nothing there (kernels cached elsewhere)."""
    cold, warm, cached = [], [], []
    for _ in range(repeat):
        tmp = tempfile.mkdtemp(prefix="dlogit-cold-")
        try:
            cmd, env = [DLOGIT], {"NUMBA_CACHE_DIR": os.path.join(tmp, "numba")}
            if copy:
                cmd, env = _fresh_copy(tmp)
                where = _run([sys.executable, "-c", "import dlogit; print(dlogit.__file__)"], env, cwd=tmp)
                assert where["tail"].strip().startswith(tmp), f"the copy is not what runs: {where['tail']}"
            os.makedirs(os.path.join(tmp, "numba"))
            before = _count_files(tmp)
            cold.append(_run([*cmd, "train"], env, first="step ", cwd=tmp))
            cached.append(_count_files(tmp) - before)
            warm.append(_run([*cmd, "train"], env, first="step ", cwd=tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for r in cold + warm:
        if r["rc"] != 0:
            raise RuntimeError(f"dlogit train failed: {r['tail']}")
    if not copy and not all(cached):
        print("cold: the run wrote nothing to NUMBA_CACHE_DIR (kernels cached elsewhere?): "
              "measuring with a fresh copy of the package instead", flush=True)
        return bench_cold(repeat, copy=True)
    out = {"method": "fresh copy of the package" if copy else "empty NUMBA_CACHE_DIR",
           "cold_first_step_s": _median([r["first_s"] for r in cold]),
           "cold_exit_s": _median([r["wall_s"] for r in cold]),
           "warm_first_step_s": _median([r["first_s"] for r in warm]),
           "warm_exit_s": _median([r["wall_s"] for r in warm]),
           "cache_files_written_cold": cached}
    out["cold_over_warm_exit"] = out["cold_exit_s"] / out["warm_exit_s"]
    out["cold_over_warm_first_step"] = out["cold_first_step_s"] / out["warm_first_step_s"]
    return out


def bench_cli(repeat: int) -> dict:
    ver, bad = [], []
    for _ in range(repeat):
        ver.append(_run([DLOGIT, "--version"]))
        bad.append(_run([DLOGIT, "train", "--bogus"]))
    assert all(r["rc"] == 0 for r in ver), ver[0]["tail"]
    assert all(r["rc"] == 2 for r in bad), bad[0]["tail"]
    return {"version_s": _median([r["wall_s"] for r in ver]),
            "usage_error_s": _median([r["wall_s"] for r in bad]),
            "goal_s": 0.3}


SK_SCRIPT = """
import sys
import pandas as pd
from sklearn.linear_model import LogisticRegression
df = pd.read_csv(sys.argv[1])
y = df.pop("y").to_numpy()
X = df.to_numpy()
m = LogisticRegression(C=1 / (2 * len(y) * float(sys.argv[2])), max_iter=1000).fit(X, y)
print("accuracy", m.score(X, y))
"""


def make_small_csv(path: str, mb: float, d: int = 20, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    rows = max(100, int(mb * 1e6 / (d * 10.5)))
    X = rng.standard_normal((rows, d))
    w = rng.standard_normal(d) / np.sqrt(d)
    y = (rng.random(rows) < 1 / (1 + np.exp(-3 * (X @ w)))).astype(int)
    with open(path, "w") as f:
        f.write(",".join([f"x{j}" for j in range(d)] + ["y"]) + "\n")
        np.savetxt(f, np.column_stack([X, y]), fmt=["%.6f"] * d + ["%d"], delimiter=",")
    return rows


def bench_small(repeat: int, mb: float, l2: float = 0.01) -> dict:
    tmp = tempfile.mkdtemp(prefix="dlogit-small-")
    try:
        path = os.path.join(tmp, "small.csv")
        rows = make_small_csv(path, mb)
        dl, sk = [], []
        for _ in range(repeat):  # interleaved
            dl.append(_run([DLOGIT, "train", path, "--label", "y"]))
            sk.append(_run([sys.executable, "-c", SK_SCRIPT, path, str(l2)]))
        assert all(r["rc"] == 0 for r in dl + sk), (dl[-1]["tail"], sk[-1]["tail"])
        out = {"data": f"{rows}x20 CSV, {os.path.getsize(path) / 1e6:.1f} MB", "l2": l2,
               "dlogit_s": _median([r["wall_s"] for r in dl]),
               "sklearn_script_s": _median([r["wall_s"] for r in sk]),
               "dlogit_tail": dl[-1]["tail"].strip()[-300:]}
        out["ratio"] = out["dlogit_s"] / out["sklearn_script_s"]
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _dense(rows: int, d: int = 100, seed: int = 7):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, d))
    w_true = np.random.default_rng(1).standard_normal(d) * 3 / np.sqrt(d)
    y = (rng.random(rows) < 1 / (1 + np.exp(-(X @ w_true)))).astype(np.float64)
    return X, y


CLUSTER_CHILD = """
import json, logging, sys, time
sys.path[:0] = [sys.argv[3], sys.argv[4]]
import numpy as np
from bench_first import _dense
from bench_models import objective
rows, l2, source = int(sys.argv[1]), float(sys.argv[2]), sys.argv[5]
if source == "from_array":
    X, y = _dense(rows)
out = {"data": f"{rows}x100 float64 " + ("from da.from_array" if source == "from_array" else
       "made on the workers (8 chunks, persisted; its making excluded)"), "l2": l2, "tol": 1e-6}
t0 = time.perf_counter()
import dask.array as da
from distributed import Client, LocalCluster
import dlogit
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                       dashboard_address=None, silence_logs=logging.CRITICAL)
client = Client(cluster)
out["cluster_up_s"] = time.perf_counter() - t0
if source == "workers":
    from distributed import wait
    from bench import _signal_data
    t = time.perf_counter()
    dX, dy = client.persist(list(_signal_data(rows, 100, 8)))
    wait([dX, dy])
    out["data_making_s"] = time.perf_counter() - t
fits = []
for i in range(3):
    t = time.perf_counter()
    if source == "from_array":
        dX, dy = da.from_array(X), da.from_array(y)
    m = dlogit.LogisticRegression(l2=l2, tol=1e-6).fit(dX, dy, client=client)
    fits.append(time.perf_counter() - t)
    if i == 0:
        out["first_fit_from_creation_s"] = time.perf_counter() - t0 - out.get("data_making_s", 0.0)
if source == "workers":
    X, y = client.compute([dX, dy], sync=True)
out["fits_s"] = fits
out["dlogit_iter"] = int(np.max(m.n_iter_))
out["worker_modules"] = client.run(lambda: sorted(
    {n for n in ("sklearn", "pandas", "scipy.stats") if n in sys.modules}))
client.close(); cluster.close()
from sklearn.linear_model import LogisticRegression as SK
Xa = np.array(X, order="C", copy=True)
sk_t = []
for _ in range(2):
    t = time.perf_counter()
    sk = SK(C=1 / (2 * rows * l2), tol=1e-6, solver="lbfgs", max_iter=1000).fit(Xa, y)
    sk_t.append(time.perf_counter() - t)
out["sklearn_s"] = float(np.median(sk_t))
out["sklearn_iter"] = int(np.max(sk.n_iter_))
out["objective_dlogit"] = float(objective(Xa, y, m.coef_, m.intercept_, l2))
out["objective_sklearn"] = float(objective(Xa, y, sk.coef_, sk.intercept_, l2))
print("JSON", json.dumps(out))
"""


def bench_cluster(rows: int, source: str = "from_array", l2: float = 0.01) -> dict:
    r = _run([sys.executable, "-c", CLUSTER_CHILD, str(rows), str(l2), ROOT, HERE, source])
    line = [x for x in r["tail"].splitlines() if x.startswith("JSON ")]
    if r["rc"] != 0 or not line:
        raise RuntimeError(f"cluster child failed: {r['tail']}")
    out = json.loads(line[-1][5:])
    out["cold_ratio"] = out["first_fit_from_creation_s"] / out["sklearn_s"]
    out["cold_ratio_fit_only"] = out["fits_s"][0] / out["sklearn_s"]
    out["warm_ratio"] = float(np.median(out["fits_s"][1:])) / out["sklearn_s"]
    return out


def bench_busy(rows: int, repeat: int, l2: float = 0.01) -> dict:
    from sklearn.linear_model import LogisticRegression as SK

    import dlogit

    X, y = _dense(rows)
    C = 1 / (2 * rows * l2)
    fit_dl = lambda: dlogit.LogisticRegression(l2=l2, tol=1e-6).fit(X, y)
    fit_sk = lambda: SK(C=C, tol=1e-6, solver="lbfgs", max_iter=1000).fit(X, y)
    fit_dl()  # compiles / warms the kernels: this section is about load, not first use
    t = {"dlogit_quiet": [], "dlogit_busy": [], "sklearn_quiet": [], "sklearn_busy": []}

    def timed(key, fn):
        t0 = time.perf_counter()
        fn()
        t[key].append(time.perf_counter() - t0)

    for _ in range(repeat):
        timed("dlogit_quiet", fit_dl)
        timed("sklearn_quiet", fit_sk)
        hog = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.2)
            timed("dlogit_busy", fit_dl)
            timed("sklearn_busy", fit_sk)
        finally:
            hog.kill()
            hog.wait()
    out = {"data": f"{rows}x100 float64 NumPy, in-process", "l2": l2, "tol": 1e-6}
    out.update({k + "_s": _median(v) for k, v in t.items()})
    out["dlogit_slowdown"] = out["dlogit_busy_s"] / out["dlogit_quiet_s"]
    out["sklearn_slowdown"] = out["sklearn_busy_s"] / out["sklearn_quiet_s"]
    out["quiet_ratio_vs_sklearn"] = out["dlogit_quiet_s"] / out["sklearn_quiet_s"]
    return out


def bench_sparse(rows: int, d: int = 100_000, nnz: int = 40, l2: float = 1e-5) -> dict:
    import scipy.sparse as sp
    from bench import _cluster
    from bench_models import _aligned, _on_workers, _persist, _sparse_chunk, objective
    from sklearn.linear_model import LogisticRegression as SK

    import dlogit

    tol = 1e-6
    out: dict = {"data": f"{rows}x{d} CSR, {nnz} nonzeros per row", "l2": l2, "tol": tol}
    cluster, client = _cluster(2)
    try:
        X, y = _persist(client, *_on_workers(_sparse_chunk, rows, 8, d, nnz, d=d, xmeta=sp.csr_matrix((0, d))))
        dlogit.LogisticRegression(l2=l2, tol=1e-2).fit(X, y, client=client)  # warm
        t0 = time.perf_counter()
        mc = dlogit.LogisticRegression(l2=l2, tol=tol).fit(X, y, client=client)
        out["cluster_s"] = time.perf_counter() - t0
        Xn = sp.vstack(client.compute(list(X.to_delayed().ravel()), sync=True), format="csr")
        yn = client.compute(y).result()
    finally:
        client.close()
        cluster.close()
    Xn = sp.csr_matrix((_aligned(Xn.data), _aligned(Xn.indices), _aligned(Xn.indptr)), shape=Xn.shape)
    dlogit.LogisticRegression(l2=l2, tol=1e-2).fit(Xn, yn)  # warm
    t0 = time.perf_counter()
    mi = dlogit.LogisticRegression(l2=l2, tol=tol).fit(Xn, yn)
    out["inprocess_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sk = SK(C=1 / (2 * rows * l2), tol=tol, max_iter=1000).fit(Xn, yn)
    out["sklearn_s"] = time.perf_counter() - t0
    for name, m in (("inprocess", mi), ("cluster", mc), ("sklearn", sk)):
        out[f"objective_{name}"] = float(objective(Xn, yn, m.coef_, m.intercept_, l2))
    out["inprocess_over_cluster"] = out["inprocess_s"] / out["cluster_s"]
    out["inprocess_over_sklearn"] = out["inprocess_s"] / out["sklearn_s"]
    out["cluster_over_sklearn"] = out["cluster_s"] / out["sklearn_s"]
    return out


def bench_csv(quick: bool, mb: float) -> dict:
    script = os.path.join(HERE, "bench_csv.py")
    if not os.path.exists(script):
        return {"skipped": "scripts/bench_csv.py is not in this checkout"}
    cmd = [sys.executable, script, "--mb", str(mb)] + (["--repeat", "1", "--no-gzip"] if quick else [])
    r = _run(cmd, timeout=1800)
    return {"command": " ".join(cmd[1:]), "rc": r["rc"], "wall_s": r["wall_s"], "output": r["tail"]}


# ------------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    # Python writes the .pyc of what it imports (as after any pip install, where scikit-learn's come
    # compiled): a PYTHONDONTWRITEBYTECODE=1 environment would make every child recompile dlogit's and
    # Dask's sources while scikit-learn's .pyc exist, an unfair start for the first-contact figures
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not for BENCHMARKS.md)")
    ap.add_argument("--only", nargs="*", choices=SECTIONS, default=None)
    ap.add_argument("--repeat", type=int, default=None, help="runs per figure (default 3, --quick 1)")
    ap.add_argument("--rows", type=int, default=None, help="dense rows (default 1 000 000, --quick 100 000)")
    ap.add_argument("--sparse-rows", type=int, default=None,
                    help="sparse rows (default 1 000 000, --quick 100 000)")
    ap.add_argument("--small-mb", type=float, default=3.0, help="size of the small CSV (MB)")
    ap.add_argument("--csv-mb", type=float, default=None, help="bench_csv.py --mb (default 1000, --quick 20)")
    ap.add_argument("--cold-copy", action="store_true",
                    help="cold start from a fresh copy of the package (no __pycache__) instead of an empty "
                         "NUMBA_CACHE_DIR")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    q = args.quick
    repeat = args.repeat or (1 if q else 3)
    rows = args.rows or (100_000 if q else 1_000_000)
    srows = args.sparse_rows or (100_000 if q else 1_000_000)
    want = args.only or SECTIONS
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(),
                 "cpus": os.cpu_count(), "load": os.getloadavg(), "repeat": repeat}
    T = {}

    def section(name, fn):
        t0 = time.perf_counter()
        res[name] = fn()
        T[name] = time.perf_counter() - t0
        res[name]["section_s"] = T[name]
        return res[name]

    if "cold" in want:
        c = section("cold", lambda: bench_cold(repeat, args.cold_copy))
        print(f"cold start (scripts/dlogit train, {c['method']}, vs its second run): first step "
              f"{c['cold_first_step_s']:.2f} vs {c['warm_first_step_s']:.2f} s "
              f"({c['cold_over_warm_first_step']:.2f}x; goal <= 5 s), exit {c['cold_exit_s']:.2f} vs "
              f"{c['warm_exit_s']:.2f} s ({c['cold_over_warm_exit']:.2f}x); cache files written cold "
              f"{c['cache_files_written_cold']}", flush=True)
    if "cli" in want:
        c = section("cli", lambda: bench_cli(max(repeat, 3)))
        print(f"cli: dlogit --version {c['version_s']:.2f} s, usage error {c['usage_error_s']:.2f} s "
              f"(goal <= 0.3 s)", flush=True)
    if "small" in want:
        c = section("small", lambda: bench_small(repeat, args.small_mb))
        print(f"small file ({c['data']}): dlogit train {c['dlogit_s']:.2f} s vs scikit-learn script "
              f"{c['sklearn_script_s']:.2f} s -> {c['ratio']:.2f}x (goal <= 1.0)", flush=True)
    if "cluster" in want:
        for key, source in (("cluster", "from_array"), ("cluster_workers_data", "workers")):
            c = section(key, lambda source=source: bench_cluster(rows, source))
            f = c["fits_s"]
            print(f"fresh cluster ({c['data']}, 2 workers): cluster up {c['cluster_up_s']:.2f} s, first fit "
                  f"{f[0]:.2f} s ({c['first_fit_from_creation_s']:.2f} s from creation), then "
                  f"{f[1]:.2f}, {f[2]:.2f} s; sklearn {c['sklearn_s']:.2f} s -> cold {c['cold_ratio']:.2f}x "
                  f"(goal <= 0.6; fit alone {c['cold_ratio_fit_only']:.2f}x), warm {c['warm_ratio']:.2f}x "
                  f"(goal <= 0.5); objectives {c['objective_dlogit']:.10f} vs {c['objective_sklearn']:.10f}; "
                  f"worker imported {c['worker_modules']}", flush=True)
    if "busy" in want:
        c = section("busy", lambda: bench_busy(rows, repeat))
        print(f"busy core ({c['data']}): dlogit {c['dlogit_quiet_s']:.2f} -> {c['dlogit_busy_s']:.2f} s "
              f"({c['dlogit_slowdown']:.2f}x), sklearn {c['sklearn_quiet_s']:.2f} -> {c['sklearn_busy_s']:.2f} s "
              f"({c['sklearn_slowdown']:.2f}x) (goal: dlogit's slowdown <= sklearn's)", flush=True)
    if "sparse" in want:
        c = section("sparse", lambda: bench_sparse(srows))
        print(f"sparse ({c['data']}, l2 1e-5): in-process {c['inprocess_s']:.2f} s, 2-worker cluster "
              f"{c['cluster_s']:.2f} s, sklearn {c['sklearn_s']:.2f} s -> in-process/cluster "
              f"{c['inprocess_over_cluster']:.2f} (goal <= 1.1); objectives {c['objective_inprocess']:.8f} "
              f"{c['objective_cluster']:.8f} {c['objective_sklearn']:.8f}", flush=True)
    if "csv" in want:
        c = section("csv", lambda: bench_csv(q, args.csv_mb or (20 if q else 1000)))
        print("csv: " + (c.get("skipped") or f"{c['command']} ({c['wall_s']:.0f} s)\n{c['output']}"), flush=True)
    print("section times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in T.items()))
    if args.json:
        from _benchio import write_json  # scripts/, beside this file

        write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
