"""``dlogit train``: fit a model on a local or existing Dask cluster."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from typing import Any

import click

from dlogit.cli._options import cluster_options


class _PlainProgress:
    """Fallback printer (used when the monitoring extra cannot be imported)."""

    def __init__(self, period: int, quiet: bool) -> None:
        self.period, self.quiet = period, quiet

    def __call__(self, msg: dict[str, Any]) -> None:
        if self.quiet or msg.get("type") != "progress":
            return
        for k, loss in zip(msg["step"], msg["loss"]):
            if k % self.period == 0:
                click.echo(f"step {k:>7d}  loss {loss:.6f}")

    def close(self) -> None:
        pass


def _progress(max_iter: int, period: int, quiet: bool) -> Any:
    try:
        from dlogit.monitor.progress import TerminalProgress
    except ImportError:
        return _PlainProgress(period, quiet)
    return TerminalProgress(max_iter, period=period, quiet=quiet)


@click.command("train")
@click.argument("data", required=False, type=click.Path())
@click.option("--synthetic", "synthetic_shape", default=None, metavar="ROWSxCOLS",
              help="Train on generated data: X ~ N(0,1), y ~ uniform{0,1} [default when no DATA: 400x784].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic data and of --init normal.")
@click.option("--label", default="label", show_default=True, help="Label column of a CSV/Parquet DATA file.")
@click.option("--labels", type=click.Path(), default=None, help="Labels of an NPY DATA file (a 1-D .npy).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None,
              help="Precision of X on the workers [default: the data's, float64 for synthetic].")
@click.option("--solver", type=click.Choice(["gd", "lbfgs"]), default="gd", show_default=True)
@click.option("--l2", type=float, default=0.01, show_default=True, help="Penalty lambda in lambda*||w||^2.")
@click.option("--lr", type=float, default=0.1, show_default=True, help="Learning rate (gd).")
@click.option("--max-iter", type=int, default=None, help="[default: 10001 for gd, 1000 for lbfgs]")
@click.option("--tol", type=float, default=None, help="Stop at ||grad|| <= tol [default: 0 for gd, 1e-6 for lbfgs].")
@click.option("--init", type=click.Choice(["normal", "zeros"]), default="normal", show_default=True,
              help="Starting w (b starts at 0).")
@click.option("--no-intercept", is_flag=True, help="Fit without an intercept.")
@click.option("--chunk-rows", type=int, default=None, help="Rows per chunk [default: ~128 MiB of X per chunk].")
@click.option("--mode", type=click.Choice(["auto", "worker-local", "distributed"]), default="auto",
              show_default=True, help="Run the solver on one worker, or step across all workers.")
@click.option("--out", "out", type=click.Path(), default=None, help="Write the model here (.npz).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last stdout line.")
@click.option("--progress", "period", type=int, default=1000, show_default=True, help="Report every N steps.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@cluster_options
def train(data: str | None, synthetic_shape: str | None, seed: int, label: str, labels: str | None,
          dtype: str | None, solver: str, l2: float, lr: float, max_iter: int | None, tol: float | None,
          init: str, no_intercept: bool, chunk_rows: int | None, mode: str, out: str | None,
          as_json: bool, period: int, quiet: bool, **cluster: Any) -> None:
    """Train a logistic regression on DATA (CSV, Parquet or NPY) or on synthetic data.

    With no arguments: the textbook run (400x784 random data, gd, lr 0.1, l2 0.01, 10001 steps) on a
    local cluster started for the run.
    """
    import numpy as np

    from dlogit import data as data_mod
    from dlogit.errors import ConfigError
    from dlogit.estimator import LogisticRegression

    if data and synthetic_shape:
        raise ConfigError("give either DATA or --synthetic, not both")
    if period < 1:
        raise ConfigError(f"--progress must be at least 1, got {period}")
    if out is not None and not out.endswith(".npz"):
        raise ConfigError(f"--out must name a .npz file, got {out!r}")
    model = LogisticRegression(solver=solver, l2=l2, lr=lr, max_iter=max_iter, tol=tol,
                               fit_intercept=not no_intercept, init=init, random_state=seed,
                               chunk_rows=chunk_rows, progress_period=period, mode=mode)
    resolved = model._resolved()  # validate options before starting anything
    if data is None:
        rows, cols = data_mod.parse_shape(synthetic_shape or "400x784")
    quiet = quiet or as_json

    t0 = time.perf_counter()
    with _cluster(cluster, quiet) as (client, kind):
        startup = time.perf_counter() - t0
        if data is None:
            X, y = data_mod.synthetic(rows, cols, seed=seed, dtype=dtype or "float64",
                                      chunk_rows=chunk_rows, gpu=(kind == "gpu"))
            source = {"synthetic": f"{rows}x{cols}", "seed": seed}
        else:
            X, y, info = data_mod.read_data(data, label=label, labels=labels, chunk_rows=chunk_rows,
                                            dtype=dtype, client=client)
            if kind == "gpu":
                X, y = _to_gpu(X), _to_gpu(y)
            source = {"data": data, "label": info.label, "labels": info.labels_path,
                      "feature_names": info.columns}
        t1 = time.perf_counter()
        X, y = _load(client, X, y)
        load = time.perf_counter() - t1
        progress = _progress(resolved["max_iter"], period, quiet)
        model.callback = progress
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.fit(X, y, client=client)
        finally:
            progress.close()
        fit_seconds = model.fit_seconds_
        with client.as_current():
            accuracy = model.score(X, y)
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
    for w in caught:
        click.echo(f"dlogit: warning: {w.message}", err=True)
    if out:
        model.save(out, source=source, accuracy=accuracy)
    summary = {"n_iter": model.n_iter_, "loss": model.loss_, "grad_norm": model.grad_norm_,
               "accuracy": accuracy, "status": model.status_, "seconds": fit_seconds,
               "startup_seconds": startup, "load_seconds": load, "workers": workers, "cluster": kind,
               "mode": model.mode_, "kernel": model.kernel_,
               "coef_norm": float(np.linalg.norm(model.coef_)), "intercept": float(model.intercept_[0]),
               "model": out}
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"done: {model.status_} after {model.n_iter_} iterations in {fit_seconds:.2f}s "
               f"(cluster start-up {startup:.2f}s, data loaded in {load:.2f}s, {workers} {kind} worker(s), "
               f"{model.mode_} mode, {model.kernel_} kernel)")
    click.echo(f"loss {model.loss_:.6f}  ||grad|| {model.grad_norm_:.3g}  training accuracy {accuracy:.4f}")
    if out:
        click.echo(f"model written to {out}")


def _to_gpu(a: Any) -> Any:
    import cupy

    return a.map_blocks(cupy.asarray, dtype=a.dtype, meta=cupy.empty((0,) * a.ndim, dtype=a.dtype))


@contextlib.contextmanager
def _cluster(opts: dict[str, Any], quiet: bool) -> Any:
    """Yield ``(client, kind)``: an existing scheduler when one is named, else a local cluster."""
    from distributed import Client

    from dlogit.cluster import connect, make_security, resolve_scheduler, start_local_cluster
    from dlogit.engine import listen

    security = make_security(opts["tls_ca_file"], opts["tls_cert"], opts["tls_key"])
    if resolve_scheduler(opts["scheduler"], opts["scheduler_file"]):
        client = connect(opts["scheduler"], opts["scheduler_file"], timeout=opts["connect_timeout"],
                         security=security)
        try:
            _say_dashboard(client, quiet)
            listen(client)
            yield client, _kind(client)
        finally:
            client.close()
        return
    cluster = start_local_cluster(workers=opts["workers"], gpus=opts["gpus"], host=opts["host"],
                                  dashboard_address=opts["dashboard_address"],
                                  rmm_pool_size=opts["rmm_pool_size"], security=security)
    try:
        client = Client(cluster, security=security, set_as_default=False)
        try:
            if cluster.kind == "cpu" and opts["workers"] is None and not quiet:
                n = len(cluster.workers)
                click.echo(f"dlogit: no usable GPU (CuPy and a CUDA device): using {n} CPU worker "
                           "processes", err=True)
            _say_dashboard(client, quiet)
            listen(client)
            yield client, cluster.kind
        finally:
            client.close()
    finally:
        cluster.close()


def _load(client: Any, X: Any, y: Any) -> tuple[Any, Any]:
    """Read or generate the data on the workers and keep it there (timed apart from the fit).

    The fit keeps every chunk resident anyway; loading first lets the fit start on data already in
    place, and scoring afterwards reads the same chunks instead of reading the files again.
    """
    from distributed import wait

    X, y = client.persist([X, y])
    with client.as_current():
        wait([X, y])
    return X, y


def _say_dashboard(client: Any, quiet: bool) -> None:
    link = getattr(client, "dashboard_link", None)
    if link and not quiet:
        click.echo(f"dashboard: {link.rsplit('/status', 1)[0]}/dlogit")


def _kind(client: Any) -> str:
    def probe() -> bool:
        import os

        from dlogit._xp import cupy_available

        return bool(os.environ.get("CUDA_VISIBLE_DEVICES")) and cupy_available()

    from dlogit._xp import cupy_available

    try:
        on_workers = client.run(probe).values()
        return "gpu" if on_workers and all(on_workers) and cupy_available() else "cpu"
    except Exception:  # noqa: BLE001
        return "cpu"
