"""Shared fixtures: real Dask clusters of worker processes on loopback."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest


def _has_gpu() -> bool:
    from dlogit._xp import cupy_available

    return cupy_available()


def pytest_sessionstart(session):
    """Fill the fused kernels' disk cache first (once per machine): a fit that finds it empty takes the
    BLAS path (:mod:`dlogit.kernels.cache`), and tests that name the kernel a fit picks mean a machine
    where they are compiled."""
    import os

    from dlogit.kernels import cache, cpu

    if cpu.available() and not cache.ready():
        os.makedirs(cache.cache_dir(), exist_ok=True)
        cache.compile_kernels(cache.stamp_path())


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", dest="run_all",
                     help="also run the tests marked slow (the default run deselects them)")


def _runs_slow(config) -> bool:
    """The default run deselects ``slow`` tests; ``--all`` (everything), a ``-m`` expression (``-m slow``:
    only them) or a test named by its node id (``file.py::test``) runs them."""
    return (config.getoption("run_all") or config.getoption("markexpr") != ""
            or any("::" in str(arg) for arg in config.args))


def pytest_collection_modifyitems(config, items):
    if not _runs_slow(config):
        slow = [item for item in items if "slow" in item.keywords]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if "slow" not in item.keywords]
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@contextlib.contextmanager
def local_cluster(n_workers: int):
    """A LocalCluster of ``n_workers`` single-threaded worker processes bound to 127.0.0.1."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="session")
def client2():
    """One 2-worker cluster shared by the tests that only need 'a cluster'."""
    with local_cluster(2) as client:
        yield client


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array namespace under test."""
    if request.param == "cupy":
        return pytest.importorskip("cupy")
    return np


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
