"""Static checks of the deployment recipes under cluster/ (no cluster is started here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cluster_helpers as H

CLUSTER = H.CLUSTER
YAML_FILES = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yml", ".yaml"))
SHELL_FILES = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".sh", ".sbatch"))
PY_FILES = sorted(CLUSTER.rglob("*.py"))
RECIPE_DIRS = ["slurm", "kubernetes", "compose", "ssh"]


def _load_all(path: Path) -> list:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _containers(pod_spec: dict) -> list[dict]:
    return list(pod_spec.get("containers", [])) + list(pod_spec.get("initContainers", []))


def _k8s_docs(kind: str) -> list[dict]:
    docs = [d for p in YAML_FILES if "kubernetes" in p.parts for d in _load_all(p)]
    return [d for d in docs if d.get("kind") == kind]


def _cluster_specs() -> list[tuple[str, dict]]:
    """(cluster name, DaskCluster spec) for the DaskCluster and for the DaskJob's cluster."""
    out = [(d["metadata"]["name"], d["spec"]) for d in _k8s_docs("DaskCluster")]
    out += [(d["metadata"]["name"], d["spec"]["cluster"]["spec"]) for d in _k8s_docs("DaskJob")]
    return out


# --------------------------------------------------------------------------- inventory
def test_recipe_inventory():
    for d in RECIPE_DIRS:
        assert (CLUSTER / d / "README.md").is_file(), f"cluster/{d}/README.md missing"
    assert H.SBATCH.is_file() and H.SLURM_LIB.is_file()
    assert H.COMPOSE.is_file()
    assert (CLUSTER / "compose" / "Dockerfile").is_file()
    assert (CLUSTER / "ssh" / "ssh_cluster.py").is_file()
    assert _k8s_docs("DaskCluster") and _k8s_docs("DaskJob")


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_yaml_parses(path):
    docs = _load_all(path)
    assert docs, f"{path} is empty"
    for d in docs:
        assert isinstance(d, dict)


# --------------------------------------------------------------------------- kubernetes
def test_k8s_api_versions():
    for kind in ("DaskCluster", "DaskJob"):
        for d in _k8s_docs(kind):
            assert d["apiVersion"] == "kubernetes.dask.org/v1"
            assert d["metadata"]["name"]


def test_k8s_workers_request_gpus():
    specs = _cluster_specs()
    assert len(specs) == 2
    for name, spec in specs:
        worker = spec["worker"]
        assert int(worker["replicas"]) >= 1
        containers = _containers(worker["spec"])
        assert containers, name
        for c in containers:
            limits = c["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1, f"{name}: worker without nvidia.com/gpu limit"
            args = c.get("command", []) + c.get("args", [])
            assert args[:3] == ["dask", "cuda", "worker"], args
            assert "$(DASK_WORKER_NAME)" in args
            assert args[args.index("--preload") + 1] == "dlogit.worker", f"{name}: no worker preload"


def test_k8s_scheduler_service_is_clusterip_and_preloads_dashboard():
    for name, spec in _cluster_specs():
        service = spec["scheduler"]["service"]
        assert service["type"] == "ClusterIP", f"{name}: scheduler Service must not be exposed"
        assert service["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
        ports = {p["name"]: p for p in service["ports"]}
        assert ports["tcp-comm"]["port"] == 8786
        assert ports["http-dashboard"]["port"] == 8787
        (sched,) = _containers(spec["scheduler"]["spec"])
        args = sched.get("command", []) + sched.get("args", [])
        assert args[:2] == ["dask", "scheduler"]
        assert args[args.index("--preload") + 1] == "dlogit.dashboard"
        container_ports = {p["name"] for p in sched["ports"]}
        assert {"tcp-comm", "http-dashboard"} <= container_ports
        for p in service["ports"]:
            assert p["targetPort"] in container_ports


def test_k8s_daskjob_runs_dlogit_train():
    (job,) = _k8s_docs("DaskJob")
    (c,) = _containers(job["spec"]["job"]["spec"])
    args = c.get("command", []) + c.get("args", [])
    assert args[:2] == ["dlogit", "train"]
    assert args[args.index("--scheduler") + 1] == "$(DASK_SCHEDULER_ADDRESS)"
    assert "--json" in args
    assert job["spec"]["job"]["spec"].get("restartPolicy") == "Never"


def test_k8s_images_agree():
    images = set()
    for _, spec in _cluster_specs():
        for part in ("worker", "scheduler"):
            images |= {c["image"] for c in _containers(spec[part]["spec"])}
    for job in _k8s_docs("DaskJob"):
        images |= {c["image"] for c in _containers(job["spec"]["job"]["spec"])}
    assert len(images) == 1, images


# --------------------------------------------------------------------------- compose
def test_compose_ports_loopback_only():
    services = H.compose_services()
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports", []):
            spec = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published')}"
            assert str(spec).startswith("127.0.0.1:"), f"{name} publishes {spec} beyond loopback"
            published += 1
    assert published >= 2  # scheduler + dashboard


def test_compose_structure():
    services = H.compose_services()
    assert {"scheduler", "worker", "train"} <= set(services)
    sched = services["scheduler"]["command"]
    assert sched[:2] == ["dask", "scheduler"]
    assert sched[sched.index("--preload") + 1] == "dlogit.dashboard"
    worker = services["worker"]
    assert worker["command"][:3] == ["dask", "cuda", "worker"]
    assert "tcp://scheduler:8786" in worker["command"]
    assert worker["command"][worker["command"].index("--preload") + 1] == "dlogit.worker"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) and d.get("driver") == "nvidia" for d in devices)
    train = services["train"]["command"]
    assert train[:2] == ["dlogit", "train"]
    assert train[train.index("--scheduler") + 1] == "tcp://scheduler:8786"
    for svc in services.values():
        assert all(isinstance(a, str) for a in svc["command"]), "quote numbers in command lists"


def test_compose_commands_localize():
    port_map = {"8786": "40000", "8787": "0"}
    services = H.compose_services()
    sched = H.localize_compose_command(services["scheduler"]["command"], port_map, {})
    assert sched[1:] == ["scheduler", "--host", "127.0.0.1", "--port", "40000",
                         "--dashboard-address", "127.0.0.1:0", "--preload", "dlogit.dashboard"]
    worker = H.localize_compose_command(services["worker"]["command"], port_map, {"/tmp/dask": "/x"})
    assert worker[1:3] == ["worker", "tcp://127.0.0.1:40000"]
    assert "/x" in worker and worker[-4:] == ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]


# --------------------------------------------------------------------------- SLURM / shell
@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_shell_syntax(path):
    out = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_shellcheck(path):
    out = subprocess.run(["shellcheck", "-x", "--severity=style", str(path)], capture_output=True, text=True,
                         cwd=path.parent, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_sbatch_header_and_sourcing():
    text = H.SBATCH.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    headers = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    assert any("--gpus-per-node" in h for h in headers)
    assert any("--nodes" in h for h in headers)
    assert "set -euo pipefail" in text
    assert 'source "$recipe_dir/dlogit-cluster.sh"' in text
    assert "trap " in text and "dlogit_cleanup" in text


def test_slurm_command_lines_default():
    env = H.subprocess_env()  # recipe defaults: GPU workers, dashboard preload
    for k in list(env):
        if k.startswith("DLOGIT_"):
            del env[k]
    sched = H.slurm_cmd("scheduler", "/shared/s.json", env=env)
    assert sched[:2] == ["dask", "scheduler"]
    assert sched[sched.index("--scheduler-file") + 1] == "/shared/s.json"
    assert sched[sched.index("--preload") + 1] == "dlogit.dashboard"
    assert "--protocol" not in sched
    worker = H.slurm_cmd("worker", "/shared/s.json", env=env)
    assert worker[:3] == ["dask", "cuda", "worker"]
    assert worker[worker.index("--scheduler-file") + 1] == "/shared/s.json"
    assert worker[worker.index("--preload") + 1] == "dlogit.worker"
    train = H.slurm_cmd("train", "/shared/s.json", "data.parquet", "--label", "y", env=env)
    assert train[:4] == ["dlogit", "train", "data.parquet", "--label"]
    assert train[train.index("--scheduler-file") + 1] == "/shared/s.json"
    srun = H.slurm_cmd("srun", env=dict(env, SLURM_JOB_NUM_NODES="3"))
    assert srun[:2] == ["--nodes", "3"]


def test_slurm_command_lines_keep_awkward_arguments_whole():
    env = H.slurm_env(DLOGIT_RMM_POOL_SIZE="30GB", DLOGIT_WORKER_KIND="cuda",
                      DLOGIT_LOCAL_DIRECTORY="/scratch/my dir")
    worker = H.slurm_cmd("worker", "/shared/a b.json", env=env)
    assert worker[worker.index("--scheduler-file") + 1] == "/shared/a b.json"
    assert worker[worker.index("--local-directory") + 1] == "/scratch/my dir"
    assert worker[worker.index("--rmm-pool-size") + 1] == "30GB"
    train = H.slurm_cmd("train", "/s.json", "my data.csv", "--label", "a;b $x", env=env)
    assert train[2:5] == ["my data.csv", "--label", "a;b $x"]


def test_slurm_tls_all_or_nothing():
    env = H.slurm_env(DLOGIT_TLS_CA_FILE="/ca.pem", DLOGIT_TLS_CERT="/c.pem", DLOGIT_TLS_KEY="/k.pem")
    for which in ("scheduler", "worker", "train"):
        argv = H.slurm_cmd(which, "/s.json", env=env)
        assert argv[argv.index("--tls-ca-file") + 1] == "/ca.pem"
        assert argv[argv.index("--tls-cert") + 1] == "/c.pem"
        assert argv[argv.index("--tls-key") + 1] == "/k.pem"
    sched = H.slurm_cmd("scheduler", "/s.json", env=env)
    assert sched[sched.index("--protocol") + 1] == "tls"
    half = H.slurm_env(DLOGIT_TLS_CA_FILE="/ca.pem")
    with pytest.raises(RuntimeError, match="DLOGIT_TLS_CERT"):
        H.slurm_cmd("scheduler", "/s.json", env=half)


def test_fake_srun_drops_its_options(tmp_path):
    d = H.fake_srun_dir(tmp_path)
    out = subprocess.run([str(d / "srun"), "--nodes", "2", "--ntasks-per-node", "1", "--kill-on-bad-exit=0",
                          "echo", "--x", "a b"], capture_output=True, text=True, check=True)
    assert out.stdout == "--x a b\n"


# --------------------------------------------------------------------------- SSH example
def test_ssh_example_compiles():
    for path in PY_FILES:
        out = subprocess.run([sys.executable, "-m", "py_compile", str(path)], capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr


def test_ssh_example_dry_run():
    script = CLUSTER / "ssh" / "ssh_cluster.py"
    out = subprocess.run([sys.executable, str(script), "head,gpu1,gpu2", "/shared/x.parquet",
                          "--label", "y", "--gpu", "--rmm-pool-size", "8GB", "--dry-run"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["hosts"] == ["head", "gpu1", "gpu2"]
    assert plan["worker_class"] == "dask_cuda.CUDAWorker"
    assert plan["worker_options"]["rmm_pool_size"] == "8GB"
    assert plan["worker_options"]["preload"] == ["dlogit.worker"]
    assert plan["scheduler_options"]["preload"] == ["dlogit.dashboard"]
    bad = subprocess.run([sys.executable, str(script), "onlyone", "x.npy", "--dry-run"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2


# --------------------------------------------------------------------------- dashboard preload
def test_dashboard_preload_importable():
    """Every recipe passes ``--preload dlogit.dashboard`` to the scheduler."""
    import importlib

    mod = importlib.import_module("dlogit.dashboard")
    assert callable(getattr(mod, "dask_setup", None))


def test_dockerfile_copies_existing_files():
    """The image build copies these paths from the repository root: they must exist there."""
    dockerfile = (CLUSTER / "compose" / "Dockerfile").read_text()
    copies = [ln.split()[1:-1] for ln in dockerfile.splitlines() if ln.startswith("COPY ")]
    assert copies
    for sources in copies:
        for src in sources:
            assert (H.REPO / src).exists(), f"Dockerfile copies {src}, which the repository lacks"
    compose = yaml.safe_load(H.COMPOSE.read_text())
    build = compose["x-image"]["build"]
    assert (H.COMPOSE.parent / build["context"]).resolve() == H.REPO
    assert (H.REPO / build["dockerfile"]).is_file()
