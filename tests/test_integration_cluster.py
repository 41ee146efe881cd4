"""dlogit on real Dask clusters of separate processes, started with the recipes' own command lines.

Everything listens on 127.0.0.1 with random free ports; every process is started in its own
session and stopped (with its children) in a fixture's ``finally``. The command lines come from
``cluster/slurm/dlogit-cluster.sh`` (sourced by bash, so the test runs exactly what the sbatch
script runs), from ``cluster/compose/docker-compose.yml`` (host names and ports replaced), and
from ``dlogit cluster up``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cluster_helpers as H

pytest.importorskip("yaml")

# One problem for the "equals an in-process fit" checks: 3000 x 12, 6 chunks of 500 rows.
ROWS, COLS, CHUNK = 3000, 12, 500
LBFGS = {"solver": "lbfgs", "l2": 0.01, "max_iter": 200, "tol": 1e-8, "init": "zeros", "chunk_rows": CHUNK}
LBFGS_CLI = ["--solver", "lbfgs", "--l2", "0.01", "--max-iter", "200", "--tol", "1e-8", "--init", "zeros",
             "--chunk-rows", str(CHUNK)]
REL_TOL = 1e-10


# --------------------------------------------------------------------------------------------------
# fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    X, y, xp, yp = H.make_npy_data(d, ROWS, COLS, seed=7)
    return {"X": X, "y": y, "x": xp, "y_path": yp, "dir": d}


@pytest.fixture(scope="module")
def reference(data):
    """The same fit in this process (NumPy arrays, no Dask client)."""
    from dlogit import LogisticRegression

    m = LogisticRegression(**LBFGS).fit(data["X"], data["y"])
    assert m.status_ == "converged", m.status_
    return H.model_vector(m)


class RecipeCluster:
    """A scheduler and N worker process groups started from the SLURM recipe's command lines."""

    def __init__(self, tmp: Path, n_workers: int = 2, env_extra: dict | None = None,
                 worker_extra_args: list[str] | None = None):
        self.tmp = Path(tmp)
        self.env = H.slurm_env(DLOGIT_NWORKERS="1", **(env_extra or {}))
        self.procs = H.ProcessSet(self.tmp / "logs")
        self.scheduler_file = str(self.tmp / "scheduler.json")
        self.n_workers = n_workers
        self.worker_extra_args = worker_extra_args or []

    def start(self) -> RecipeCluster:
        sched = H.slurm_cmd("scheduler", self.scheduler_file, env=self.env)
        worker = H.slurm_cmd("worker", self.scheduler_file, env=self.env) + self.worker_extra_args
        self.procs.start("scheduler", sched, env=self.env)
        info = H.wait_for_file(Path(self.scheduler_file), 60, self.procs)
        self.address = info["address"]
        for i in range(self.n_workers):
            self.procs.start(f"worker-{i}", worker, env=self.env)
        self.workers = H.wait_for_workers(self.address, self.n_workers, 60, security=self.security(),
                                          procs=self.procs)
        return self

    def security(self):
        if not self.env.get("DLOGIT_TLS_CA_FILE"):
            return None
        from dlogit.cluster import make_security

        return make_security(self.env["DLOGIT_TLS_CA_FILE"], self.env["DLOGIT_TLS_CERT"],
                             self.env["DLOGIT_TLS_KEY"])

    def close(self) -> None:
        self.procs.close()


@pytest.fixture(scope="module")
def tcp_cluster(tmp_path_factory):
    c = RecipeCluster(tmp_path_factory.mktemp("tcp-cluster"))
    try:
        yield c.start()
    finally:
        c.close()


def run_dlogit(*args: str, env_extra: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = H.subprocess_env(**(env_extra or {}))
    return subprocess.run(H.dlogit_argv() + list(args), capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=H.REPO, check=False)


def assert_trained(out: subprocess.CompletedProcess, model_path: Path, reference, workers: int | None = 2,
                   tol: float = REL_TOL) -> dict:
    assert out.returncode == 0, f"rc={out.returncode}\nstdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
    summary = H.last_json_line(out.stdout)
    for key in ("n_iter", "loss", "accuracy", "seconds", "coef_norm", "workers"):
        assert key in summary, key
    if workers is not None:
        assert summary["workers"] == workers
    got = H.model_vector(model_path)
    assert H.rel_diff(got, reference) <= tol, (got, reference)
    return summary


# --------------------------------------------------------------------------------------------------
# training on a recipe-started cluster
@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", ["address", "scheduler-file", "env-address", "env-file"])
def test_cli_train_on_recipe_cluster(tcp_cluster, data, reference, tmp_path, target):
    model = tmp_path / "model.npz"
    args = ["train", data["x"], "--labels", data["y_path"], *LBFGS_CLI, "--json", "--out", str(model)]
    env = {}
    if target == "address":
        args += ["--scheduler", tcp_cluster.address]
    elif target == "scheduler-file":
        args += ["--scheduler-file", tcp_cluster.scheduler_file]
    elif target == "env-address":
        env["DLOGIT_SCHEDULER"] = tcp_cluster.address
    else:
        env["DLOGIT_SCHEDULER"] = tcp_cluster.scheduler_file
    assert_trained(run_dlogit(*args, env_extra=env), model, reference)


@pytest.mark.timeout(120)
def test_cli_train_distributed_mode_reads_on_workers(tcp_cluster, data, reference, tmp_path):
    """Every worker holds chunks and steps them (the direct worker connections), reading the file itself."""
    model = tmp_path / "model.npz"
    out = run_dlogit("train", data["x"], "--labels", data["y_path"], *LBFGS_CLI, "--mode", "distributed",
                     "--json", "--out", str(model), "--scheduler", tcp_cluster.address)
    assert_trained(out, model, reference)
    with np.load(model, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["params"]["mode"] == "distributed", meta["params"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["auto", "distributed"])
def test_python_api_on_recipe_cluster(tcp_cluster, data, reference, mode):
    from distributed import Client

    import dlogit

    events: list[dict] = []
    with Client(tcp_cluster.address, set_as_default=False, timeout=30) as client:
        X, y, _ = dlogit.read_data(data["x"], labels=data["y_path"], chunk_rows=CHUNK, client=client)
        assert X.numblocks[0] == ROWS // CHUNK
        m = dlogit.LogisticRegression(**LBFGS, mode=mode).fit(X, y, client=client, callback=events.append)
    assert H.rel_diff(H.model_vector(m), reference) <= REL_TOL
    start = next(e for e in events if e["type"] == "start")
    if mode == "distributed":
        assert sorted(start["params"]["workers"]) == sorted(w["id"] for w in tcp_cluster.workers) or \
            len(start["params"]["workers"]) == 2, start["params"]


@pytest.mark.timeout(120)
def test_python_api_connect_by_scheduler_file(tcp_cluster, data, reference):
    import dlogit
    from dlogit.cluster import check_versions, connect

    client = connect(scheduler_file=tcp_cluster.scheduler_file, timeout=30)
    try:
        check_versions(client)  # same environment everywhere: no complaint
        X, y, _ = dlogit.read_data(data["x"], labels=data["y_path"], chunk_rows=CHUNK, client=client)
        m = dlogit.LogisticRegression(**LBFGS, mode="distributed").fit(X, y, client=client)
    finally:
        client.close()
    assert H.rel_diff(H.model_vector(m), reference) <= REL_TOL


# --------------------------------------------------------------------------------------------------
# failures to connect
@pytest.fixture
def silent_listener():
    """A TCP port that accepts connections and never says anything (a hung scheduler)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(2)
        for c in conns:
            c.close()
        srv.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["refused", "silent", "missing-file"])
def test_unreachable_scheduler_fails_fast_with_one_line(kind, tmp_path, request):
    timeout = 3
    if kind == "refused":
        where = ["--scheduler", f"tcp://127.0.0.1:{H.free_port()}"]
    elif kind == "silent":
        where = ["--scheduler", request.getfixturevalue("silent_listener")]
    else:
        where = ["--scheduler-file", str(tmp_path / "no-such-scheduler.json")]
    t0 = time.monotonic()
    out = run_dlogit("train", "--synthetic", "100x5", "--solver", "lbfgs", "--json", *where,
                     "--connect-timeout", str(timeout), timeout=timeout + 30)
    elapsed = time.monotonic() - t0
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("dlogit: error:"), lines[0]
    assert "Traceback" not in out.stderr
    # the connect timeout plus interpreter start-up (slow on a loaded 2-core machine), not dask's 30 s default
    assert elapsed < timeout + 20, elapsed


# --------------------------------------------------------------------------------------------------
# version mismatch: a real worker process that reports another dlogit version
@pytest.mark.timeout(120)
def test_version_mismatch_is_reported(tmp_path, data):
    from distributed import Client

    from dlogit.cluster import check_versions
    from dlogit.errors import ClusterError

    preload = tmp_path / "other_dlogit_version.py"
    preload.write_text("import dlogit\n\ndlogit.__version__ = '0.0.0+other'\n")
    c = RecipeCluster(tmp_path / "c", n_workers=1, worker_extra_args=["--preload", str(preload)])
    try:
        c.start()
        out = run_dlogit("train", data["x"], "--labels", data["y_path"], "--solver", "lbfgs", "--json",
                         "--scheduler", c.address, "--connect-timeout", "20")
        assert out.returncode == 2, (out.stdout, out.stderr)
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, out.stderr
        assert "version mismatch" in lines[0] and "0.0.0+other" in lines[0], lines[0]
        with Client(c.address, set_as_default=False, timeout=30) as client, \
                pytest.raises(ClusterError, match="dlogit 0.0.0"):
            check_versions(client)
    finally:
        c.close()


# --------------------------------------------------------------------------------------------------
# TLS
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return H.make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.mark.timeout(150)
def test_tls_cluster(tmp_path, tls_files, data, reference):
    ca, cert, key = tls_files
    c = RecipeCluster(tmp_path / "c", env_extra={"DLOGIT_TLS_CA_FILE": ca, "DLOGIT_TLS_CERT": cert,
                                                  "DLOGIT_TLS_KEY": key})
    try:
        c.start()
        assert c.address.startswith("tls://127.0.0.1:"), c.address
        tls = ["--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key]
        model = tmp_path / "model.npz"
        # distributed mode: the driver runs on a worker and steps the others over the cluster's TLS comms
        out = run_dlogit("train", data["x"], "--labels", data["y_path"], *LBFGS_CLI, "--mode", "distributed",
                         "--json", "--out", str(model), "--scheduler", c.address, *tls)
        assert_trained(out, model, reference)
        # the same through the recipe's train command line (scheduler file + TLS flags from the env)
        model2 = tmp_path / "model2.npz"
        argv = H.slurm_cmd("train", c.scheduler_file, data["x"], "--labels", data["y_path"], *LBFGS_CLI,
                           "--json", "--out", str(model2), env=c.env)
        out2 = subprocess.run(argv, capture_output=True, text=True, env=c.env, timeout=120, check=False)
        assert_trained(out2, model2, reference)
        # without the certificates: refused in one line, exit 2
        out3 = run_dlogit("train", data["x"], "--labels", data["y_path"], "--scheduler", c.address,
                          "--connect-timeout", "5")
        assert out3.returncode == 2, (out3.stdout, out3.stderr)
        assert len([ln for ln in out3.stderr.splitlines() if ln.strip()]) == 1, out3.stderr
    finally:
        c.close()


# --------------------------------------------------------------------------------------------------
# losing a worker in the middle of a fit
LOSS_ROWS, LOSS_COLS, LOSS_CHUNK, LOSS_STEPS = 16000, 40, 2000, 2500


@pytest.fixture(scope="module")
def loss_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("loss-data")
    X, y, xp, yp = H.make_npy_data(d, LOSS_ROWS, LOSS_COLS, seed=11)
    return {"X": X, "y": y, "x": xp, "y_path": yp}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["distributed", pytest.param("worker-local", marks=pytest.mark.slow)])
def test_worker_killed_mid_fit(tmp_path, loss_data, mode):
    """SIGKILL one worker (its nanny too) while a gd fit runs; the fit must finish with the
    coefficients of an undisturbed fit."""
    from distributed import Client

    import dlogit

    params = {"solver": "gd", "lr": 0.5, "l2": 1e-3, "max_iter": LOSS_STEPS, "tol": 0.0, "init": "zeros",
              "chunk_rows": LOSS_CHUNK, "progress_period": 25}
    ref = dlogit.LogisticRegression(**params).fit(loss_data["X"], loss_data["y"])

    c = RecipeCluster(tmp_path / "c")
    events: list[dict] = []
    try:
        c.start()
        with Client(c.address, set_as_default=False, timeout=30) as client:
            X, y, _ = dlogit.read_data(loss_data["x"], labels=loss_data["y_path"], chunk_rows=LOSS_CHUNK,
                                       client=client)
            assert X.dtype == np.float64
            model = dlogit.LogisticRegression(**params, mode=mode)
            result: dict = {}

            def fit():
                try:
                    model.fit(X, y, client=client, callback=events.append)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    result["error"] = exc

            t = threading.Thread(target=fit, daemon=True)
            t.start()
            # wait until the fit is well under way, then kill the process group of a worker it uses
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _last_step(events) < 100:
                assert t.is_alive() or result, "fit ended before any progress"
                time.sleep(0.02)
            step_at_kill = _last_step(events)
            assert 0 < step_at_kill < LOSS_STEPS - 200, f"fit too fast to interrupt (step {step_at_kill})"
            start = next(e for e in events if e["type"] == "start")
            used = set(start["params"]["workers"])
            victim = _worker_group_of(c, client, used)
            c.procs.kill_group(victim, signal.SIGKILL)
            print(f"killed {victim} at step {step_at_kill}", file=sys.stderr)
            t.join(150)
            assert not t.is_alive(), "fit did not finish after the worker loss"
            assert "error" not in result, repr(result.get("error"))
            alive = client.scheduler_info(n_workers=-1)["workers"]
            assert len(alive) == 1, alive
    finally:
        c.close()
    end = [e for e in events if e["type"] == "end"]
    assert end and end[-1]["status"] == "max_iter"
    assert model.n_iter_ == LOSS_STEPS
    assert _last_step(events) > step_at_kill
    assert H.rel_diff(H.model_vector(model), H.model_vector(ref)) <= 1e-8


def _last_step(events: list[dict]) -> int:
    steps = [s for e in list(events) if e.get("type") == "progress" for s in e["step"]]
    return max(steps, default=0)


def _worker_group_of(c: RecipeCluster, client, used: set[str]) -> str:
    """The name of the recipe process group (nanny + worker) running one of the workers in ``used``."""
    import psutil

    pids = client.run(os.getpid, workers=sorted(used))
    target_pids = set(pids.values())
    assert target_pids, used
    for name, p in c.procs.procs.items():
        if not name.startswith("worker-"):
            continue
        try:
            group = {p.pid} | {ch.pid for ch in psutil.Process(p.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            continue
        if group & target_pids:
            return name
    raise AssertionError(f"no recipe worker process holds pids {target_pids}")


# --------------------------------------------------------------------------------------------------
# the whole sbatch script, with a stand-in srun
@pytest.mark.timeout(180)
def test_sbatch_script_end_to_end(tmp_path, data, reference):
    fake = H.fake_srun_dir(tmp_path)
    submit = tmp_path / "submit"
    submit.mkdir()
    env = H.slurm_env(DLOGIT_NWORKERS="2", DLOGIT_RECIPE_DIR=str(H.SLURM_LIB.parent),
                      SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="1", SLURM_SUBMIT_DIR=str(submit),
                      DLOGIT_WORKER_WAIT="90")
    env["PATH"] = os.pathsep.join([str(fake), env["PATH"]])
    model = tmp_path / "model.npz"
    p = subprocess.Popen(["bash", str(H.SBATCH), data["x"], "--labels", data["y_path"], *LBFGS_CLI, "--json",
                          "--out", str(model)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=submit, start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=150)
        out = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
        assert_trained(out, model, reference)
        assert not (submit / "dlogit-scheduler-4242.json").exists(), "scheduler file left behind"
        # the trap stopped the scheduler and the workers: nothing is left in the job's session
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and H.group_alive(p.pid):
            time.sleep(0.2)
        assert not H.group_alive(p.pid), "processes of the job outlived it"
    finally:
        if H.group_alive(p.pid):
            os.killpg(p.pid, signal.SIGKILL)
        if p.poll() is None:
            p.kill()
            p.wait(10)




# --------------------------------------------------------------------------------------------------
# the docker compose command lines, run as local processes
@pytest.mark.timeout(180)
def test_compose_command_lines(tmp_path):
    import dlogit
    from dlogit.data import synthetic_numpy

    services = H.compose_services()
    port = str(H.free_port())
    out_dir, data_dir, scratch = tmp_path / "out", tmp_path / "data", tmp_path / "dask"
    for d in (out_dir, data_dir, scratch):
        d.mkdir()
    ports = {"8786": port, "8787": "0"}
    paths = {"/out": str(out_dir), "/data": str(data_dir), "/tmp/dask": str(scratch)}
    procs = H.ProcessSet(tmp_path / "logs")
    try:
        procs.start("scheduler", H.localize_compose_command(services["scheduler"]["command"], ports, paths))
        address = f"tcp://127.0.0.1:{port}"
        for i in range(2):
            procs.start(f"worker-{i}", H.localize_compose_command(services["worker"]["command"], ports, paths))
        H.wait_for_workers(address, 2, 60, procs=procs)
        argv = H.localize_compose_command(services["train"]["command"], ports, paths)
        assert argv[:2] == ["dlogit", "train"]
        argv = H.dlogit_argv() + argv[1:]
        out = subprocess.run(argv, capture_output=True, text=True, env=H.subprocess_env(), timeout=150,
                             check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        summary = H.last_json_line(out.stdout)
        assert summary["workers"] == 2 and summary["status"] == "converged", summary
        model = out_dir / "model.npz"
        assert model.exists()
    finally:
        procs.close()
    # the same run in this process: the synthetic data are generated identically on the workers
    cmd = services["train"]["command"]
    rows, cols = (int(v) for v in cmd[cmd.index("--synthetic") + 1].split("x"))
    seed = int(cmd[cmd.index("--seed") + 1])
    X, y = synthetic_numpy(rows, cols, seed=seed)
    ref = dlogit.LogisticRegression(solver="lbfgs", init="normal", random_state=seed).fit(X, y)
    assert H.rel_diff(H.model_vector(model), H.model_vector(ref)) <= REL_TOL


# --------------------------------------------------------------------------------------------------
# dlogit cluster up
@pytest.mark.timeout(150)
def test_cluster_up_serves_until_sigterm(tmp_path, data, reference):
    sched_file = tmp_path / "up" / "scheduler.json"
    procs = H.ProcessSet(tmp_path / "logs")
    try:
        p = procs.start("up", H.dlogit_argv() + ["cluster", "up", "--workers", "2", "--scheduler-port", "0",
                                                 "--dashboard-address", "127.0.0.1:0",
                                                 "--scheduler-file", str(sched_file)])
        info = H.wait_for_file(sched_file, 90, procs)
        assert info["address"].startswith("tcp://127.0.0.1:")
        H.wait_for_workers(info["address"], 2, 60, procs=procs)
        model = tmp_path / "model.npz"
        out = run_dlogit("train", data["x"], "--labels", data["y_path"], *LBFGS_CLI, "--json",
                         "--out", str(model), "--scheduler-file", str(sched_file))
        assert_trained(out, model, reference)
        log = procs.tail("up")
        assert f"scheduler: {info['address']}" in log
        assert "dashboard: http://127.0.0.1:" in log
        assert "warning" not in log.lower()
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0, procs.tail("up")
        assert not sched_file.exists(), "scheduler file left behind"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and H.group_alive(p.pid):
            time.sleep(0.2)
        assert not H.group_alive(p.pid), "worker processes outlived `dlogit cluster up`"
    finally:
        procs.close()


@pytest.mark.timeout(150)
def test_cluster_up_tls(tmp_path, tls_files, data, reference):
    ca, cert, key = tls_files
    tls = ["--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key]
    sched_file = tmp_path / "scheduler.json"
    procs = H.ProcessSet(tmp_path / "logs")
    try:
        p = procs.start("up", H.dlogit_argv() + ["cluster", "up", "--workers", "2", "--scheduler-port", "0",
                                                 "--dashboard-address", "127.0.0.1:0",
                                                 "--scheduler-file", str(sched_file), *tls])
        info = H.wait_for_file(sched_file, 90, procs)
        assert info["address"].startswith("tls://127.0.0.1:"), info["address"]
        model = tmp_path / "model.npz"
        out = run_dlogit("train", data["x"], "--labels", data["y_path"], *LBFGS_CLI, "--mode", "distributed",
                         "--json", "--out", str(model), "--scheduler-file", str(sched_file), *tls)
        assert_trained(out, model, reference)
        p.send_signal(signal.SIGINT)  # Ctrl-C
        assert p.wait(60) == 0, procs.tail("up")
        assert not sched_file.exists()
    finally:
        procs.close()


def test_cluster_up_exposure_warning():
    from dlogit.cli.cluster_cmd import exposure_warning
    from dlogit.cluster import is_loopback

    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2", "tcp://127.0.0.1"):
        assert is_loopback(host), host
        assert exposure_warning(host, tls=False) is None
    for host in ("0.0.0.0", "10.1.2.3", "gpu-node-1", "::"):
        assert not is_loopback(host), host
        msg = exposure_warning(host, tls=False)
        assert msg and "without TLS" in msg and host in msg
        assert exposure_warning(host, tls=True) is None


def test_cluster_up_bad_options_fail_before_starting(tmp_path):
    from click.testing import CliRunner

    from dlogit.cli.cluster_cmd import cluster

    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    res = CliRunner().invoke(cluster, ["up", "--tls-ca-file", str(ca)])
    assert res.exit_code == 2
    assert "TLS" in res.output
    res = CliRunner().invoke(cluster, ["up", "--workers", "0"])
    assert res.exit_code == 2


def test_scheduler_file_is_written_atomically(tmp_path):
    from dlogit.cli.cluster_cmd import write_scheduler_file

    path = tmp_path / "deep" / "s.json"
    write_scheduler_file(str(path), {"address": "tcp://127.0.0.1:1"})
    assert json.loads(path.read_text()) == {"address": "tcp://127.0.0.1:1"}
    assert [p.name for p in path.parent.iterdir()] == ["s.json"]


@pytest.mark.skipif(__import__("shutil").which("openssl") is None, reason="openssl CLI not installed")
def test_tls_helper_openssl_files_load(tmp_path):
    """The openssl fallback of the TLS helper makes files Python's ssl accepts (CI without cryptography)."""
    import ssl

    ca, cert, key = H._tls_files_openssl(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.load_cert_chain(cert, key)


def test_cluster_command_is_registered():
    from click.testing import CliRunner

    from dlogit.cli import cli

    res = CliRunner().invoke(cli, ["cluster", "up", "--help"])
    assert res.exit_code == 0, res.output
    for opt in ("--workers", "--gpus", "--host", "--scheduler-port", "--dashboard-address", "--scheduler-file",
                "--tls-ca-file", "--tls-cert", "--tls-key"):
        assert opt in res.output, opt
