"""``dlogit train FILE`` on small data trains in its own process (no cluster); a cluster when asked for.

Real ``dlogit`` processes: the in-process run, and the local clusters it is compared with.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)

DLOGIT = [sys.executable, "-m", "dlogit"]

# dlogit train in a process that then says whether `distributed` was imported, and whether it was
# already imported by the library modules the in-process path needs (not this test's to judge)
_PROBE = """
import json, sys
import dlogit.data, dlogit.estimator
before = "distributed" in sys.modules
from dlogit.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"rc": code, "library": before, "after": "distributed" in sys.modules}))
"""


def run(*args, env=None):
    return subprocess.run([*DLOGIT, *map(str, args)], capture_output=True, text=True, timeout=240,
                          check=False, env=env)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    """A 3-class table of 240 rows (a few kB): under dlogit.cli.in-process-bytes."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(240, 5))
    y = np.argmax(X[:, :3] + rng.normal(scale=0.7, size=(240, 3)), axis=1)
    path = tmp_path_factory.mktemp("data") / "small.csv"
    with open(path, "w") as f:
        f.write(",".join([f"x{i}" for i in range(5)] + ["kind"]) + "\n")
        f.writelines(",".join(f"{v:.6f}" for v in row) + f",k{label}\n" for row, label in zip(X, y))
    return path


def test_small_file_trains_in_process_and_matches_a_cluster(small_csv, tmp_path):
    here = tmp_path / "here.npz"
    r = subprocess.run([sys.executable, "-c", _PROBE, "train", str(small_csv), "--label", "kind", "--out",
                        str(here)], capture_output=True, text=True, timeout=240, check=False)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("dlogit: training in this process: small.csv is ")
    assert "dlogit.cli.in-process-bytes" in lines[0] and "--workers N trains on a local cluster" in lines[0]
    assert "starting a local cluster" not in r.stdout and "dashboard:" not in r.stdout
    assert "no cluster, in-process mode" in r.stdout
    probe = json.loads(lines[-1])
    assert probe["rc"] in (0, None)
    if not probe["library"]:  # the CLI itself must not bring in distributed
        assert not probe["after"], "the in-process path imported distributed"

    outs = {}
    for n in ("2", "1"):
        out = tmp_path / f"w{n}.npz"
        r = run("train", small_csv, "--label", "kind", "--workers", n, "--json", "--out", out)
        assert r.returncode == 0, r.stderr
        s = last_json(r.stdout)
        assert s["workers"] == int(n) and s["mode"] == "worker-local" and s["startup_seconds"] > 0
        outs[n] = np.load(out)
    ref = np.load(here)
    assert ref["coef"].shape == (3, 5)
    for n, m in outs.items():  # same single chunk, same solver path: equal up to BLAS alignment rounding
        np.testing.assert_allclose(ref["coef"], m["coef"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(ref["intercept"], m["intercept"], rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(ref["classes"], m["classes"])


def test_textbook_default_still_uses_a_local_cluster():
    r = run("train", "--max-iter", "20", "--json")
    assert r.returncode == 0, r.stderr
    s = last_json(r.stdout)
    assert s["workers"] >= 1 and s["mode"] == "worker-local" and s["solver"] == "gd"


def test_over_the_threshold_uses_a_local_cluster_and_says_why(small_csv):
    env = {**os.environ, "DASK_DLOGIT__CLI__IN_PROCESS_BYTES": "100"}
    r = run("train", small_csv, "--label", "kind", env=env)
    assert r.returncode == 0, r.stderr
    assert "dlogit: training on a local cluster: small.csv is " in r.stdout
    assert "over dlogit.cli.in-process-bytes (100 B)" in r.stdout
    assert "starting a local cluster" in r.stdout and "worker-local mode" in r.stdout


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_checkpoints_an_in_process_fit(small_csv, tmp_path, sig, code):
    ckpt = tmp_path / "ck"
    p = subprocess.Popen([*DLOGIT, "train", str(small_csv), "--label", "kind", "--solver", "gd", "--max-iter",
                          "10000000", "--progress", "100", "--checkpoint", str(ckpt)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            if line.startswith("step 100 "):
                break
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == code, err
    assert f"checkpoint in {ckpt / 'checkpoint.npz'} (resume with --resume)" in err
    assert (ckpt / "checkpoint.npz").exists()
