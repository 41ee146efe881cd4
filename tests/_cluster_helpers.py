"""Shared helpers for the recipe and real-cluster tests (no fixtures here: plain functions).

Everything binds 127.0.0.1 only and every process is started in its own session so that
``ProcessSet.close`` can stop it together with its children (nannies, worker processes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
SLURM_LIB = CLUSTER / "slurm" / "dlogit-cluster.sh"
SBATCH = CLUSTER / "slurm" / "dlogit-train.sbatch"
COMPOSE = CLUSTER / "compose" / "docker-compose.yml"
PY_BIN = Path(sys.executable).parent

# Options only `dask cuda worker` understands; dropped when `dask worker` stands in for it.
CUDA_ONLY_OPTIONS = {"--rmm-pool-size": 1, "--device-memory-limit": 1, "--enable-tcp-over-ucx": 0,
                     "--enable-nvlink": 0, "--enable-infiniband": 0, "--rmm-async": 0}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SHIM_DIR: list[Path] = []


def _dlogit_shim_dir() -> Path:
    """A directory holding a ``dlogit`` executable, for when no console script is installed
    (a checkout that was not ``pip install``-ed): scripts call ``dlogit`` by name."""
    if not _SHIM_DIR:
        import atexit
        import tempfile

        d = Path(tempfile.mkdtemp(prefix="dlogit-shim-"))
        atexit.register(shutil.rmtree, d, True)
        shim = d / "dlogit"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "from dlogit.cli import main; main()" "$@"\n')
        shim.chmod(0o755)
        _SHIM_DIR.append(d)
    return _SHIM_DIR[0]


def subprocess_env(**extra: str) -> dict:
    """The environment for every process a test starts: this interpreter first on PATH (and a
    ``dlogit`` command), the checkout importable, quiet logs, no inherited scheduler address."""
    env = dict(os.environ)
    path = [str(PY_BIN)]
    if not (PY_BIN / "dlogit").exists():
        path.append(str(_dlogit_shim_dir()))
    env["PATH"] = os.pathsep.join([*path, env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    env.pop("DLOGIT_SCHEDULER", None)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env["DASK_DISTRIBUTED__LOGGING__DISTRIBUTED"] = "warning"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def dlogit_argv() -> list[str]:
    """How to run the dlogit CLI: the installed console script, else its entry point by hand."""
    script = PY_BIN / "dlogit"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from dlogit.cli import main; main()"]


class ProcessSet:
    """Subprocesses started in their own sessions, logs in files, all stopped by close()."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, argv: list[str], env: dict | None = None, cwd=None) -> subprocess.Popen:
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as f:
            p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env or subprocess_env(), cwd=cwd or REPO, start_new_session=True)
        self.procs[name] = p
        self.logs[name] = log
        return p

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, n: int = 4000) -> str:
        try:
            return self.logs[name].read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def all_logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.tail(name)}" for name in self.procs)

    def kill_group(self, name: str, sig=signal.SIGKILL) -> None:
        p = self.procs[name]
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass

    def close(self, timeout: float = 15.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        # the group may outlive its leader (a nanny's child): make sure nothing is left
        for p in self.procs.values():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


def wait_for_file(path: Path, timeout: float, procs: ProcessSet | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procs is not None:
            procs.check_alive()
        try:
            text = Path(path).read_text()
            if text.strip():
                return json.loads(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{path} not written within {timeout}s\n{procs.all_logs() if procs else ''}")


def wait_for_workers(address: str, n: int, timeout: float = 60, security=None,
                     procs: ProcessSet | None = None) -> list[dict]:
    from distributed import Client

    with Client(address, timeout=timeout, security=security) as client:
        deadline = time.monotonic() + timeout
        while True:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            if len(workers) >= n:
                return list(workers.values())
            if procs is not None:
                procs.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(workers)}/{n} workers after {timeout}s\n"
                                   f"{procs.all_logs() if procs else ''}")
            time.sleep(0.1)


# ----------------------------------------------------------------------- SLURM recipe
def slurm_env(**extra: str) -> dict:
    """The recipe's knobs set for loopback CPU workers; everything else is the recipe default."""
    env = subprocess_env(
        DLOGIT_WORKER_KIND="cpu",
        DLOGIT_SCHEDULER_HOST="127.0.0.1",
        DLOGIT_WORKER_HOST="127.0.0.1",
        DLOGIT_DASHBOARD_ADDRESS="127.0.0.1:0",
        DLOGIT_WORKER_DASHBOARD_ADDRESS="127.0.0.1:0",
        DLOGIT_MEMORY_LIMIT="2GB",
        DLOGIT_DEATH_TIMEOUT="30",
    )
    env.update(extra)
    return env


def slurm_cmd(which: str, *args: str, env: dict | None = None) -> list[str]:
    """The argv the SLURM recipe builds for ``which`` (scheduler | worker | train | srun)."""
    out = subprocess.run(
        ["bash", "-c", 'set -euo pipefail; source "$0"; dlogit_print_cmd "$@"', str(SLURM_LIB), which, *args],
        env=env or slurm_env(), capture_output=True, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"dlogit_print_cmd {which} failed: {out.stderr.decode()}")
    argv = out.stdout.decode().split("\0")
    assert argv[-1] == ""
    return argv[:-1]


def fake_srun_dir(tmp: Path) -> Path:
    """A stand-in ``srun``: drops its own options (up to the first non-option) and execs the rest."""
    d = tmp / "fake-slurm-bin"
    d.mkdir(exist_ok=True)
    srun = d / "srun"
    srun.write_text(
        "#!/usr/bin/env bash\n"
        "# test stand-in for srun: skip srun's options, run the task once on this machine\n"
        'while [[ $# -gt 0 && "$1" == -* ]]; do\n'
        '  case "$1" in\n'
        "    --*=*) shift ;;\n"
        "    --kill-on-bad-exit|--overlap|--exclusive) shift ;;\n"
        "    *) shift 2 ;;\n"
        "  esac\n"
        "done\n"
        'exec "$@"\n'
    )
    srun.chmod(0o755)
    return d


# ----------------------------------------------------------------------- compose recipe
def compose_services() -> dict:
    with open(COMPOSE) as f:
        return yaml.safe_load(f)["services"]


def localize_compose_command(argv: list[str], port_map: dict[str, str], path_map: dict[str, str]) -> list[str]:
    """A compose ``command:`` list made runnable on this machine's loopback:
    service host names and 0.0.0.0 -> 127.0.0.1, published ports -> ``port_map``,
    container paths -> ``path_map``, ``dask cuda worker`` -> ``dask worker`` (no GPU here:
    CUDA-only options dropped) bound to 127.0.0.1."""
    argv = list(argv)
    is_cuda_worker = argv[:3] == ["dask", "cuda", "worker"]
    if is_cuda_worker:
        argv = ["dask", "worker"] + argv[3:]
        kept, i = [], 0
        while i < len(argv):
            opt = argv[i].split("=", 1)[0]
            if opt in CUDA_ONLY_OPTIONS:
                i += 1 + (CUDA_ONLY_OPTIONS[opt] if "=" not in argv[i] else 0)
                continue
            kept.append(argv[i])
            i += 1
        argv = kept
    out = []
    for tok in argv:
        tok = tok.replace("://scheduler:", "://127.0.0.1:").replace("0.0.0.0", "127.0.0.1")
        for container_port, local in port_map.items():
            if tok == container_port:
                tok = local
            elif tok.endswith(":" + container_port):
                tok = tok[: -len(container_port)] + local
        for container_path, local in path_map.items():
            if tok == container_path or tok.startswith(container_path + "/"):
                tok = local + tok[len(container_path):]
        out.append(tok)
    if out[:2] == ["dask", "worker"]:
        out += ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    # the dask CLI of this interpreter
    if out[0] == "dask":
        out[0] = str(PY_BIN / "dask")
    return out


# ----------------------------------------------------------------------- TLS
def make_tls_files(d: Path) -> tuple[str, str, str]:
    """A throw-away CA and one certificate/key (server + client auth, SAN 127.0.0.1/localhost)
    signed by it: with ``cryptography`` when installed, else the ``openssl`` CLI."""
    d.mkdir(parents=True, exist_ok=True)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if shutil.which("openssl") is None:
            import pytest

            pytest.skip("neither the cryptography package nor the openssl CLI is available")
        return _tls_files_openssl(d)
    return _tls_files_cryptography(d)


def _tls_files_cryptography(d: Path) -> tuple[str, str, str]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dlogit-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = d / "ca.pem", d / "node.pem", d / "node.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(ca_path), str(cert_path), str(key_path)


def _tls_files_openssl(d: Path) -> tuple[str, str, str]:
    ca_key, ca_crt = d / "ca.key", d / "ca.pem"
    key, csr, crt = d / "node.key", d / "node.csr", d / "node.pem"
    ext = d / "node.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt),
        "-days", "2", "-subj", "/CN=dlogit-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")
    ssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(crt), "-days", "2", "-extfile", str(ext))
    return str(ca_crt), str(crt), str(key)


# ----------------------------------------------------------------------- data and checks
def make_npy_data(d: Path, rows: int, cols: int, seed: int):
    """A separable-ish binary problem saved as X.npy / y.npy; returns (X, y, x_path, y_path)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, cols))
    w = rng.standard_normal(cols) / np.sqrt(cols)
    y = (X @ w + 0.5 * rng.standard_normal(rows) > 0).astype(np.int64)
    d.mkdir(parents=True, exist_ok=True)
    xp, yp = d / "X.npy", d / "y.npy"
    np.save(xp, X)
    np.save(yp, y)
    return X, y, str(xp), str(yp)


def model_vector(model_or_path):
    """coef and intercept of a fitted estimator or a saved .npz as one float64 vector."""
    import numpy as np

    if isinstance(model_or_path, (str, Path)):
        with np.load(model_or_path, allow_pickle=False) as z:
            return np.concatenate([np.ravel(z["coef"]), np.ravel(z["intercept"])]).astype(np.float64)
    return np.concatenate([np.ravel(model_or_path.coef_),
                           np.ravel(np.atleast_1d(model_or_path.intercept_))]).astype(np.float64)


def rel_diff(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def last_json_line(stdout: str) -> dict:
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    assert lines, "no stdout"
    return json.loads(lines[-1])


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` is still alive (zombies aside: signal 0)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
