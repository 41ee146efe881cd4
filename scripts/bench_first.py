#!/usr/bin/env python3
"""First-contact benchmark (issue 23): what a newcomer meets first, each row a ratio against a baseline
measured in the same run. Cold figures come from fresh processes; each figure is a median of --repeats.

    .venv/bin/python scripts/bench_first.py [--quick] [--only ROW ...] [--json FILE]

Rows:
  cold      `dlogit train` (textbook defaults) with an empty Numba cache (NUMBA_CACHE_DIR = a new temp
            dir, so dlogit's cache=True kernels compile as after an install) vs the same run warm:
            time to the first progress line on stderr and to exit
  cli       `dlogit --version` and `dlogit train --bogus` (a usage error): wall time (goal <= 0.3 s)
  small     `dlogit train small.csv --label y` vs a fresh `python` running import sklearn + pandas +
            read_csv + LogisticRegression(C = 1/(2 n l2)).fit; both objectives evaluated here
  cluster   a fresh LocalCluster (2 worker processes, 1 thread each, loopback): first L-BFGS fit from
            cluster creation (worker imports included), then the second and third fit; data from
            da.from_array and made on the workers; vs scikit-learn lbfgs on aligned C-contiguous data
  busy      in-process fit (NumPy array) quiet and with `taskset -c 0 python -c 'while True: pass'`
            running; the same for scikit-learn; slowdowns side by side
  sparse    CSR ROWS x 100 000, 40 nonzeros per row, l2 = 1e-5, L-BFGS: dlogit in-process vs dlogit
            on a 2-worker local cluster vs scikit-learn
  csv       scripts/bench_csv.py when it exists (else skipped with a note)
Only public dlogit API / CLI is used; config goes through DASK_DLOGIT__* variables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
DLOGIT = os.path.join(os.path.dirname(PY), "dlogit")
if not os.path.exists(DLOGIT):
    DLOGIT = os.path.join(HERE, "dlogit")


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def timed(cmd, env=None, first_marker=None, timeout=900):
    """Run cmd; return (wall to exit, wall to the first stderr line containing first_marker, rc, out)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, **(env or {})})
    first = None
    err = []
    for line in p.stderr:
        if first is None and first_marker is not None and first_marker in line:
            first = time.perf_counter() - t0
        err.append(line)
    out = p.stdout.read()
    p.wait(timeout)
    return time.perf_counter() - t0, first, p.returncode, out, "".join(err)


def run_json(code, env=None, timeout=900):
    """Run a Python snippet in a fresh process; it prints one JSON line last."""
    wall, _, rc, out, err = timed([PY, "-c", code], env=env, timeout=timeout)
    if rc != 0:
        raise RuntimeError(f"child failed (rc {rc}): {err[-2000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res["process_wall_s"] = wall
    return res


def objective_code():
    return '''
import numpy as np
def objective(X, y, coef, intercept, l2):
    z = X @ np.asarray(coef, float).ravel() + float(np.ravel(intercept)[0])
    s = (1 - 2 * y) * z
    return float(np.mean(np.logaddexp(0, s)) + l2 * np.dot(np.ravel(coef), np.ravel(coef)))
'''


# -- rows -----------------------------------------------------------------------------------------
def row_cold(repeats):
    out = {"cache": "NUMBA_CACHE_DIR set to a new empty temp dir per cold run (dlogit's cache=True kernels "
                    "compile as after an install); warm runs reuse the last cold run's dir"}
    cold, warm = [], []
    for _ in range(repeats):
        d = tempfile.mkdtemp(prefix="dlogit-numba-")
        env = {"NUMBA_CACHE_DIR": d}
        w, f, rc, _, err = timed([DLOGIT, "train"], env=env, first_marker="step ")
        cold.append({"exit_s": w, "first_step_s": f, "rc": rc})
        w, f, rc, _, err = timed([DLOGIT, "train"], env=env, first_marker="step ")
        warm.append({"exit_s": w, "first_step_s": f, "rc": rc})
        shutil.rmtree(d, ignore_errors=True)
    for name, runs in (("cold", cold), ("warm", warm)):
        out[f"{name}_exit_s"] = med([r["exit_s"] for r in runs])
        out[f"{name}_first_step_s"] = med([r["first_step_s"] for r in runs if r["first_step_s"] is not None])
        out[f"{name}_runs"] = runs
    out["cold_over_warm_exit"] = out["cold_exit_s"] / out["warm_exit_s"]
    out["goal"] = "first step <= 5 s after install; never silent"
    return out


def row_cli(repeats):
    v = [timed([DLOGIT, "--version"])[0] for _ in range(repeats)]
    u = []
    for _ in range(repeats):
        w, _, rc, _, _ = timed([DLOGIT, "train", "--bogus"])
        u.append(w)
    py = [timed([PY, "-c", "pass"])[0] for _ in range(repeats)]
    return {"version_s": med(v), "usage_error_s": med(u), "usage_error_rc": rc, "bare_python_s": med(py),
            "goal_s": 0.3, "goal_met": max(med(v), med(u)) <= 0.3}


def row_small(repeats, rows, d, tmp):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1)
    X = rng.standard_normal((rows, d))
    y = (rng.random(rows) < 1 / (1 + np.exp(-X @ (rng.standard_normal(d) * 0.3)))).astype(int)
    path = os.path.join(tmp, "small.csv")
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(d)])
    df["y"] = y
    df.to_csv(path, index=False)
    l2 = 0.01  # dlogit train's default l2; C = 1/(2 n l2) gives scikit-learn the same objective
    sk = objective_code() + f'''
import json, time
t0 = time.perf_counter()
import pandas as pd
from sklearn.linear_model import LogisticRegression
df = pd.read_csv({path!r})
y = df.pop("y").to_numpy(); X = df.to_numpy()
m = LogisticRegression(C=1 / (2 * len(y) * {l2}), tol=1e-6, max_iter=1000).fit(X, y)
print(json.dumps({{"obj": objective(X, y, m.coef_, m.intercept_, {l2}), "in_script_s": time.perf_counter() - t0}}))
'''
    dl, skr = [], []
    for _ in range(repeats):  # interleaved
        w, _, rc, out, err = timed([DLOGIT, "train", path, "--label", "y", "--json"])
        if rc != 0:
            raise RuntimeError(err[-2000:])
        dl.append((w, json.loads(out.strip().splitlines()[-1])))
        skr.append(run_json(sk))
    j = dl[-1][1]
    res = {"file_mb": os.path.getsize(path) / 1e6, "rows": rows, "features": d,
           "dlogit_wall_s": med([w for w, _ in dl]), "sklearn_wall_s": med([r["process_wall_s"] for r in skr]),
           "dlogit_mode": j.get("mode"), "dlogit_workers": j.get("workers"),
           "dlogit_startup_s": j.get("startup_seconds"), "dlogit_loss": j.get("loss"),
           "sklearn_objective": skr[-1]["obj"]}
    res["ratio"] = res["dlogit_wall_s"] / res["sklearn_wall_s"]
    res["goal_ratio"] = 1.0
    return res


CLUSTER_CHILD = objective_code() + r'''
import json, sys, time
rows, d, source, l2 = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
t0 = time.perf_counter()
import dask, dask.array as da
from distributed import Client, LocalCluster, wait
import dlogit
def make(i, n, d):
    import numpy as np
    rng = np.random.default_rng(i)
    X = rng.standard_normal((n, d))
    w = np.random.default_rng(99).standard_normal(d) * 0.3
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ w))).astype(np.float64)
    return X, y
nch = 8
n = rows // nch
parts = [make(i, n, d) for i in range(nch)] if source == "from_array" else None
if parts is not None:
    import numpy as np
    Xl = np.concatenate([p[0] for p in parts]); yl = np.concatenate([p[1] for p in parts]); del parts
t_data = time.perf_counter() - t0
t1 = time.perf_counter()
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                       dashboard_address=None)
client = Client(cluster)
t_cluster = time.perf_counter() - t1
if source == "from_array":
    X = da.from_array(Xl, chunks=(n, d)); y = da.from_array(yl, chunks=n)
else:
    ds = [dask.delayed(make, nout=2)(i, n, d) for i in range(nch)]
    X = da.concatenate([da.from_delayed(a, (n, d), float) for a, _ in ds])
    y = da.concatenate([da.from_delayed(b, (n,), float) for _, b in ds])
    X, y = dask.persist(X, y); wait([X, y])
t_ready = time.perf_counter() - t1
fits = []
for k in range(3):
    t = time.perf_counter()
    m = dlogit.LogisticRegression(solver="lbfgs", l2=l2, tol=1e-6).fit(X, y)
    fits.append(time.perf_counter() - t)
mods = client.run(lambda: sorted(m for m in ("sklearn", "pandas", "scipy.stats") if m in __import__("sys").modules))
if source != "from_array":
    import numpy as np
    Xl, yl = dask.compute(X, y)
    Xl = np.ascontiguousarray(Xl).copy(); yl = np.ascontiguousarray(yl).copy()
obj = objective(Xl, yl, m.coef_, m.intercept_, l2)
client.close(); cluster.close()
print(json.dumps({"cluster_s": t_cluster, "data_ready_s": t_ready, "fits_s": fits, "first_from_creation_s": t_ready + fits[0],
                  "objective": obj, "worker_modules": {str(k): v for k, v in mods.items()}, "n_iter": int(getattr(m, "n_iter_", [0])[0] if hasattr(getattr(m, "n_iter_", 0), "__len__") else getattr(m, "n_iter_", 0))}))
'''

SK_CHILD = objective_code() + r'''
import json, sys, time
rows, d, l2, reps = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
import numpy as np
from sklearn.linear_model import LogisticRegression
def make(i, n, d):
    rng = np.random.default_rng(i)
    X = rng.standard_normal((n, d))
    w = np.random.default_rng(99).standard_normal(d) * 0.3
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ w))).astype(np.float64)
    return X, y
nch = 8; n = rows // nch
parts = [make(i, n, d) for i in range(nch)]
X = np.concatenate([p[0] for p in parts]); y = np.concatenate([p[1] for p in parts]); del parts
assert X.flags.c_contiguous and X.ctypes.data % 64 == 0 or X.ctypes.data % 16 == 0
ts = []
for _ in range(reps):
    t = time.perf_counter()
    m = LogisticRegression(C=1 / (2 * len(y) * l2), tol=1e-6, max_iter=1000).fit(X, y)
    ts.append(time.perf_counter() - t)
print(json.dumps({"fits_s": ts, "objective": objective(X, y, m.coef_, m.intercept_, l2), "n_iter": int(m.n_iter_[0]),
                  "aligned": X.ctypes.data % 64}))
'''


def row_cluster(repeats, rows, d):
    l2 = 1e-4
    res = {"rows": rows, "features": d, "l2": l2, "tol": 1e-6}
    sk = [run_json(SK_CHILD.replace("sys.argv[1]", str(rows)).replace("sys.argv[2]", str(d))
                   .replace("sys.argv[3]", str(l2)).replace("sys.argv[4]", "3"))]
    res["sklearn_s"] = med(sk[0]["fits_s"][1:])
    res["sklearn_first_s"] = sk[0]["fits_s"][0]
    res["sklearn_objective"] = sk[0]["objective"]
    for source in ("from_array", "on_workers"):
        runs = []
        for _ in range(repeats):
            code = (CLUSTER_CHILD.replace("int(sys.argv[1])", str(rows)).replace("int(sys.argv[2])", str(d))
                    .replace("sys.argv[3]", repr(source)).replace("float(sys.argv[4])", str(l2)))
            runs.append(run_json(code))
        first = med([r["first_from_creation_s"] for r in runs])
        later = med([x for r in runs for x in r["fits_s"][1:]])
        res[source] = {"cluster_s": med([r["cluster_s"] for r in runs]),
                       "first_fit_from_creation_s": first, "first_fit_s": med([r["fits_s"][0] for r in runs]),
                       "later_fits_s": later, "objective": runs[-1]["objective"],
                       "worker_modules": runs[-1]["worker_modules"],
                       "ratio_cold": first / res["sklearn_s"], "ratio_warm": later / res["sklearn_s"]}
    res["goal"] = "cold <= 0.6x, warm <= 0.5x scikit-learn"
    return res


INPROC_CHILD = objective_code() + r'''
import json, sys, time
rows, d, l2, who, reps = ROWS, D, L2, WHO, REPS
import numpy as np
rng = np.random.default_rng(3)
X = rng.standard_normal((rows, d)); w = rng.standard_normal(d) * 0.3
y = (rng.random(rows) < 1 / (1 + np.exp(-X @ w))).astype(np.float64)
if who == "dlogit":
    import dlogit
    fit = lambda: dlogit.LogisticRegression(solver="lbfgs", l2=l2, tol=1e-6).fit(X, y)
else:
    from sklearn.linear_model import LogisticRegression
    fit = lambda: LogisticRegression(C=1 / (2 * rows * l2), tol=1e-6, max_iter=1000).fit(X, y)
ts = []
for _ in range(reps):
    t = time.perf_counter(); m = fit(); ts.append(time.perf_counter() - t)
print(json.dumps({"fits_s": ts, "objective": objective(X, y, m.coef_, m.intercept_, l2)}))
'''


def row_busy(repeats, rows, d):
    l2 = 1e-4
    res = {"rows": rows, "features": d, "competitor": "taskset -c 0 python -c 'while True: pass'"}

    def once(who):
        code = (INPROC_CHILD.replace("ROWS", str(rows)).replace("D,", f"{d},").replace("L2,", f"{l2},")
                .replace("WHO", repr(who)).replace("REPS", str(repeats)))
        r = run_json(code)
        return med(r["fits_s"][1:] if len(r["fits_s"]) > 1 else r["fits_s"]), r["fits_s"][0], r["objective"]

    for cond in ("quiet", "busy"):
        busy = None
        if cond == "busy":
            busy = subprocess.Popen(["taskset", "-c", "0", PY, "-c", "while True: pass"])
            time.sleep(0.5)
        try:
            for who in ("dlogit", "sklearn"):
                t, first, obj = once(who)
                res[f"{who}_{cond}_s"] = t
                res[f"{who}_{cond}_first_s"] = first
                res[f"{who}_{cond}_objective"] = obj
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    for who in ("dlogit", "sklearn"):
        res[f"{who}_slowdown"] = res[f"{who}_busy_s"] / res[f"{who}_quiet_s"]
    res["goal"] = "dlogit slowdown <= scikit-learn slowdown"
    return res


SPARSE_CHILD = r'''
import json, time
import numpy as np, scipy.sparse as sp
rows, d, nnz, l2, who = ROWS, D, NNZ, 1e-5, WHO
rng = np.random.default_rng(5)
ind = rng.integers(0, d, size=rows * nnz).astype(np.int32)
X = sp.csr_matrix((rng.standard_normal(rows * nnz), ind, np.arange(0, rows * nnz + 1, nnz)), shape=(rows, d))
X.sum_duplicates()
w = rng.standard_normal(d) * 0.5
y = (rng.random(rows) < 1 / (1 + np.exp(-(X @ w)))).astype(np.float64)
def obj(m):
    z = X @ np.ravel(m.coef_) + float(np.ravel(m.intercept_)[0]); s = (1 - 2 * y) * z
    return float(np.mean(np.logaddexp(0, s)) + l2 * np.dot(np.ravel(m.coef_), np.ravel(m.coef_)))
out = {}
if who == "sklearn":
    from sklearn.linear_model import LogisticRegression
    t = time.perf_counter(); m = LogisticRegression(C=1 / (2 * rows * l2), tol=1e-6, max_iter=1000).fit(X, y)
    out["fit_s"] = time.perf_counter() - t
else:
    import dlogit
    if who == "dlogit_cluster":
        import dask.array as da
        from distributed import Client, LocalCluster
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
        Xd = da.from_array(X, chunks=(125_000, d), asarray=False); yd = da.from_array(y, chunks=125_000)
        Xd, yd = client.persist(Xd), client.persist(yd)
        dlogit.LogisticRegression(solver="lbfgs", l2=l2, tol=1e-6, max_iter=3).fit(Xd, yd)  # warm
        t = time.perf_counter(); m = dlogit.LogisticRegression(solver="lbfgs", l2=l2, tol=1e-6).fit(Xd, yd)
    else:
        dlogit.LogisticRegression(solver="lbfgs", l2=l2, tol=1e-6, max_iter=3).fit(X, y)  # warm
        t = time.perf_counter(); m = dlogit.LogisticRegression(solver="lbfgs", l2=l2, tol=1e-6).fit(X, y)
    out["fit_s"] = time.perf_counter() - t
out["objective"] = obj(m)
print(json.dumps(out))
'''


def row_sparse(repeats, rows, d=100_000, nnz=40):
    res = {"rows": rows, "features": d, "nnz_per_row": nnz, "l2": 1e-5}
    runs = {k: [] for k in ("dlogit_inprocess", "dlogit_cluster", "sklearn")}
    for _ in range(repeats):
        for who in runs:
            code = (SPARSE_CHILD.replace("ROWS", str(rows)).replace("D,", f"{d},").replace("NNZ", str(nnz))
                    .replace("WHO", repr(who)))
            runs[who].append(run_json(code))
    for who, rs in runs.items():
        res[f"{who}_s"] = med([r["fit_s"] for r in rs])
        res[f"{who}_objective"] = rs[-1]["objective"]
    res["inprocess_over_cluster"] = res["dlogit_inprocess_s"] / res["dlogit_cluster_s"]
    res["inprocess_over_sklearn"] = res["dlogit_inprocess_s"] / res["sklearn_s"]
    res["goal"] = "in-process <= 1.1x cluster"
    return res


def row_csv(quick):
    path = os.path.join(HERE, "bench_csv.py")
    if not os.path.exists(path):
        return {"skipped": "scripts/bench_csv.py not present on this branch"}
    cmd = [PY, path] + (["--quick"] if quick else [])
    w, _, rc, out, err = timed(cmd)
    return {"rc": rc, "wall_s": w, "stdout_tail": out[-3000:], "stderr_tail": err[-1000:] if rc else ""}


ROWS = ("cold", "cli", "small", "cluster", "busy", "sparse", "csv")


def run(args) -> dict:
    q = args.quick
    rep = args.repeats or (1 if q else 3)
    want = args.only or list(ROWS)
    res = {"repeats": rep, "quick": q}
    tmp = tempfile.mkdtemp(prefix="bench-first-")
    try:
        for name in want:
            t0 = time.perf_counter()
            try:
                if name == "cold":
                    r = row_cold(rep)
                elif name == "cli":
                    r = row_cli(max(rep, 3))
                elif name == "small":
                    r = row_small(rep, 5_000 if q else args.small_rows, 20, tmp)
                elif name == "cluster":
                    r = row_cluster(1 if q else min(rep, 2), 100_000 if q else args.rows, 100)
                elif name == "busy":
                    r = row_busy(2 if q else rep, 100_000 if q else args.rows, 100)
                elif name == "sparse":
                    r = row_sparse(1 if q else min(rep, 2), 50_000 if q else args.sparse_rows)
                elif name == "csv":
                    r = row_csv(q)
            except Exception as exc:  # one broken row must not hide the others
                r = {"error": f"{type(exc).__name__}: {exc}"[:3000]}
            r["section_s"] = time.perf_counter() - t0
            res[name] = r
            print_row(name, r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def print_row(name, r):
    f = lambda x: f"{x:.3f}" if isinstance(x, float) else str(x)  # noqa: E731
    if "error" in r or "skipped" in r:
        print(f"{name:8s} {r.get('error') or r.get('skipped')}", flush=True)
        return
    if name == "cold":
        s = (f"cold: first step {f(r['cold_first_step_s'])} s, exit {f(r['cold_exit_s'])} s; warm: first step "
             f"{f(r['warm_first_step_s'])} s, exit {f(r['warm_exit_s'])} s; cold/warm {f(r['cold_over_warm_exit'])}")
    elif name == "cli":
        s = (f"--version {f(r['version_s'])} s, usage error {f(r['usage_error_s'])} s (rc {r['usage_error_rc']}); "
             f"bare python {f(r['bare_python_s'])} s; goal <= 0.3 s")
    elif name == "small":
        s = (f"{r['file_mb']:.1f} MB CSV: dlogit train {f(r['dlogit_wall_s'])} s (mode {r['dlogit_mode']}) vs "
             f"sklearn script {f(r['sklearn_wall_s'])} s -> {f(r['ratio'])} (goal <= 1.0); objectives "
             f"{r['dlogit_loss']} vs {r['sklearn_objective']}")
    elif name == "cluster":
        s = f"{r['rows']}x{r['features']}: sklearn {f(r['sklearn_s'])} s (obj {r['sklearn_objective']:.10f})"
        for src in ("from_array", "on_workers"):
            c = r[src]
            s += (f"\n         {src}: cluster {f(c['cluster_s'])} s, first fit from creation "
                  f"{f(c['first_fit_from_creation_s'])} s ({f(c['ratio_cold'])}x), later {f(c['later_fits_s'])} s "
                  f"({f(c['ratio_warm'])}x); obj {c['objective']:.10f}; worker imports {c['worker_modules']}")
    elif name == "busy":
        s = (f"{r['rows']}x{r['features']}: dlogit quiet {f(r['dlogit_quiet_s'])} busy {f(r['dlogit_busy_s'])} "
             f"({f(r['dlogit_slowdown'])}x); sklearn quiet {f(r['sklearn_quiet_s'])} busy {f(r['sklearn_busy_s'])} "
             f"({f(r['sklearn_slowdown'])}x)")
    elif name == "sparse":
        s = (f"{r['rows']}x{r['features']}: dlogit in-process {f(r['dlogit_inprocess_s'])} s, cluster "
             f"{f(r['dlogit_cluster_s'])} s, sklearn {f(r['sklearn_s'])} s; in-process/cluster "
             f"{f(r['inprocess_over_cluster'])} (goal <= 1.1); objectives {r['dlogit_inprocess_objective']:.8f} / "
             f"{r['dlogit_cluster_objective']:.8f} / {r['sklearn_objective']:.8f}")
    else:
        s = r.get("stdout_tail", "")
    print(f"{name:8s} {s}   [{r['section_s']:.0f} s]", flush=True)


def add_args(ap):
    ap.add_argument("--repeats", type=int, default=None, help="runs per figure (median) [3; --quick 1]")
    ap.add_argument("--rows", type=int, default=1_000_000, help="dense rows of cluster and busy [1M]")
    ap.add_argument("--small-rows", type=int, default=20_000, help="rows of the small CSV (20 features) [20000]")
    ap.add_argument("--sparse-rows", type=int, default=1_000_000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", choices=ROWS)
    ap.add_argument("--json", default=None)
    add_args(ap)
    args = ap.parse_args()
    res = run(args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2, default=float)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
