"""``dlogit train``: fit a model on a local or existing Dask cluster.

Everything that can be checked is checked before any work starts (options, the output path, the
checkpoint directory); bad input is one line and exit code 2; a fit that did not produce a usable model
exits 3 and writes no model (unless ``--keep-diverged``); Ctrl-C / SIGTERM stop the fit at a step
boundary (exit 130 / 143) after writing a checkpoint when ``--checkpoint`` is on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, fields
from typing import Any

import click

from dlogit.cli._options import (
    FiniteFloat,
    PenaltyValues,
    cache_bytes_option,
    check_config,
    check_label_option,
    cluster_options,
    config_duration,
    data_options,
    duration,
    source_from_options,
)


def _progress(max_iter: int, period: int, quiet: bool, to_stderr: bool = False) -> Any:
    from dlogit.monitor.progress import TerminalProgress

    return TerminalProgress(max_iter, period=period, quiet=quiet, stream=sys.stderr if to_stderr else None)


def _note(quiet: bool, message: str) -> None:
    """An informational line: on stdout (stderr is for warnings and the one error line)."""
    if not quiet:
        click.echo(f"dlogit: {message}")


def _warn(message: str) -> None:
    click.echo(f"dlogit: warning: {message}", err=True)


@click.command("train")
@click.argument("data", required=False)
@click.option("--synthetic", "synthetic_shape", default=None, metavar="ROWSxCOLS",
              help="Train on generated data: X ~ N(0,1), y ~ uniform{0,1} [default when no DATA: 400x784].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic data and of --init normal.")
@data_options
@click.option("--class-weight", "class_weight", type=click.Choice(["balanced"]), default=None,
              help="Weight classes inversely to their frequency (S / (K S_k)).")
@click.option("--solver", type=click.Choice(["gd", "lbfgs", "newton"]), default=None,
              help="[default: lbfgs for a DATA file, gd for synthetic data (the textbook run)]")
@click.option("--l2", type=PenaltyValues(), default=0.01, show_default=True,
              help="L2 strength in l2*||W||^2; several (1e-4,1e-3,1e-2) make a path for --cv.")
@click.option("--l1", type=PenaltyValues(), default=0.0, show_default=True,
              help="L1 strength in l1*||W||_1 (sparse coefficients; lbfgs runs OWL-QN, gd is proximal).")
@click.option("--l2-path", type=click.IntRange(min=2), default=None, metavar="N",
              help="A path of N L2 values, log-spaced from the largest useful one (with --cv).")
@click.option("--l1-path", type=click.IntRange(min=2), default=None, metavar="N",
              help="A path of N L1 values, from the smallest that zeroes every coefficient (with --cv).")
@click.option("--cv", "cv", type=click.IntRange(min=2), default=None, metavar="K",
              help="Choose the penalty by K-fold cross-validation (stratified; see --cv-split), then refit "
                   "on all data.")
@click.option("--cv-split", "cv_split", type=click.Choice(["stratified", "contiguous"]), default="stratified",
              show_default=True,
              help="How --cv splits the rows: stratified (as scikit-learn's StratifiedKFold) or "
                   "contiguous (KFold).")
@click.option("--scoring", type=click.Choice(["neg_log_loss", "accuracy"]), default="neg_log_loss",
              show_default=True, help="Held-out score of --cv.")
@click.option("--summary", "with_summary", is_flag=True,
              help="Print the coefficient table (std err, z, p-value, 95% interval) of a binary fit.")
@click.option("--lr", type=FiniteFloat(positive=True), default=0.1, show_default=True, help="Learning rate (gd).")
@click.option("--max-iter", type=click.IntRange(min=1), default=None,
              help="[default: 10001 for gd, 1000 for lbfgs, 100 for newton]")
@click.option("--tol", type=FiniteFloat(), default=None,
              help="Stop at ||grad|| <= tol (with L1: the minimum-norm subgradient) [default: 0 for gd, 1e-6 otherwise].")
@click.option("--init", type=click.Choice(["normal", "zeros"]), default=None,
              help="Starting coefficients (intercepts start at 0) [default: normal for synthetic data, zeros for files].")
@click.option("--no-intercept", is_flag=True, help="Fit without an intercept.")
@click.option("--mode", type=click.Choice(["auto", "worker-local", "distributed"]), default="auto",
              show_default=True, help="Run the solver on one worker, or step across all workers.")
@click.option("--out", "out", default=None, help="Write the model here (.npz).")
@click.option("--keep-diverged", is_flag=True, help="Write the model even when the fit diverged (exit code stays 3).")
@click.option("--checkpoint", "checkpoint", default=None, metavar="DIR",
              help="Write the solver's state to DIR/checkpoint.npz every --checkpoint-every and on Ctrl-C/SIGTERM.")
@click.option("--checkpoint-every", default=None, callback=duration, metavar="SECONDS",
              help="How often to checkpoint, e.g. 30 or 5min [dlogit.checkpoint-every: 30s].")
@click.option("--resume", is_flag=True, help="Continue the fit saved in --checkpoint DIR (same data and parameters).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object on stdout, its only line (also when the fit diverged); progress "
                   "lines go to stderr, one at a time (--quiet: none).")
@click.option("--progress", "period", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Report every N steps.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--verbose", "-v", is_flag=True, help="Also print informational notices.")
@cache_bytes_option
@cluster_options
def train(**kw: Any) -> None:
    """Train a logistic regression on DATA (CSV/TSV, Parquet, NPY, LIBSVM, Zarr; files, directories,
    globs or URLs) or on synthetic data.

    With no arguments: the textbook run (400x784 random data, gd, lr 0.1, l2 0.01, 10001 steps) on a
    local cluster started for the run.
    """
    check_config()
    args = _Args.take(kw)
    job = _prepare(args)  # every option, the outputs and the checkpoint directory checked first
    ctx = click.get_current_context()
    here = _where(ctx, args, job)
    _warn_memory_pause(args)
    t0 = time.perf_counter()
    with _quiet_dask_logs(args.verbose), _cache_budget(args.cache_bytes), \
            _session(args, job, here) as (client, kind):
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        data = _read(args, job, client, kind)
        load = time.perf_counter() - t1
        caught = _fit(args, job, data, client)
        result = _score(args, job, data, client)
    _report_warnings(caught, job.model.status_)
    result.update(startup_seconds=startup, load_seconds=load, cluster=kind, client=client is not None)
    _finish(args, job, data, result)


@dataclass
class _Args:
    """What ``dlogit train`` was given, as click parsed it: the command's own options, the data options
    (``opts``: :data:`dlogit.cli._options.DATA_KEYS` and any other) and where to run (``cluster``)."""

    data: str | None
    synthetic_shape: str | None
    seed: int
    class_weight: str | None
    solver: str | None
    l2: Any
    l1: Any
    l2_path: int | None
    l1_path: int | None
    cv: int | None
    cv_split: str
    scoring: str
    with_summary: bool
    lr: float
    max_iter: int | None
    tol: float | None
    init: str | None
    no_intercept: bool
    mode: str
    out: str | None
    keep_diverged: bool
    checkpoint: str | None
    checkpoint_every: float | None
    resume: bool
    as_json: bool
    period: int
    quiet: bool
    verbose: bool
    cache_bytes: str | None
    opts: dict[str, Any]
    cluster: dict[str, Any]

    @classmethod
    def take(cls, kw: dict[str, Any]) -> _Args:
        own = {f.name for f in fields(cls)} - {"opts", "cluster"}
        cluster = {k: kw[k] for k in _CLUSTER_KEYS}
        if cluster["connect_timeout"] is None:
            cluster["connect_timeout"] = config_duration("connect-timeout")
        opts = {k: v for k, v in kw.items() if k not in own and k not in _CLUSTER_KEYS}
        return cls(**{k: kw[k] for k in own}, opts=opts, cluster=cluster)


@dataclass
class _Job:
    """The checked plan of a run: the estimator, its frozen spec, the data's source (``None``: synthetic
    ``rows`` x ``cols``), the checkpoint, and how quiet the output is (``quiet``: no notices — also with
    --json —; ``quiet_progress``: no progress lines)."""

    model: Any
    spec: Any
    source: Any
    rows: int
    cols: int
    ckpt: Any
    path: bool
    quiet: bool
    quiet_progress: bool

    @property
    def synthetic(self) -> bool:
        return self.source is None


def _prepare(a: _Args) -> _Job:
    """Check the options against each other, the outputs against the inputs, and build the estimator
    and its spec (which validates every value): a bad one is a :class:`ConfigError` before anything
    starts."""
    from dlogit import data as data_mod
    from dlogit.errors import ConfigError
    from dlogit.outputs import check_output

    if a.data and a.synthetic_shape:
        raise ConfigError("give either DATA or --synthetic, not both")
    synthetic = a.data is None
    a.solver = a.solver or ("gd" if synthetic else "lbfgs")
    a.init = a.init or ("normal" if synthetic else "zeros")
    if a.resume and not a.checkpoint:
        raise ConfigError("--resume needs --checkpoint DIR")
    source, rows, cols = None, 0, 0
    if synthetic:
        rows, cols = data_mod.parse_shape(a.synthetic_shape or "400x784")
        inputs = []
        if a.opts.get("chunk_bytes") and not a.opts.get("chunk_rows"):  # --chunk-bytes sizes synthetic chunks too
            import dask.utils
            import numpy as np

            itemsize = np.dtype(a.opts.get("dtype") or "float64").itemsize
            a.opts["chunk_rows"] = max(1, dask.utils.parse_bytes(a.opts["chunk_bytes"]) // (cols * itemsize))
    else:
        source = source_from_options(a.data, a.opts)
        inputs = [source.path, source.labels, source.weights if source.weights and
                  source.weights.endswith(".npy") else None]
    if a.out is not None:
        check_output(a.out, inputs=inputs, suffixes=(".npz",), what="model")
    ckpt = _checkpoint_spec(a, inputs)
    if a.l2_path is not None:
        a.l2 = a.l2_path
    if a.l1_path is not None:
        a.l1 = a.l1_path
    path = a.cv is not None
    if not path and (isinstance(a.l2, tuple) or isinstance(a.l1, tuple) or a.l2_path or a.l1_path):
        raise ConfigError("several penalty values (or --l2-path/--l1-path) need --cv K to choose among them")
    if not path and a.cv_split != "stratified":
        raise ConfigError("--cv-split needs --cv K")
    if path and ckpt is not None:
        raise ConfigError("--checkpoint is not available with --cv (each point of a path is short)")
    model = _make_model(a, path)
    if a.with_summary and any(float(v) > 0 for v in (a.l1 if isinstance(a.l1, tuple) else (a.l1,))):
        raise ConfigError("--summary needs a fit without L1 (the standard errors come from the Hessian)")
    spec = model.make_spec(checkpoint=ckpt)  # validates every option (and the checkpoint dir) first
    _say_kernel(spec, a.quiet or a.as_json)
    # --json keeps the progress lines, on stderr (a log being tailed; stdout is JSON)
    return _Job(model, spec, source, rows, cols, ckpt, path, quiet=a.quiet or a.as_json, quiet_progress=a.quiet)


def _checkpoint_spec(a: _Args, inputs: list[str | None]) -> Any:
    """The :class:`~dlogit.spec.CheckpointSpec` of ``--checkpoint`` (``None`` without), its directory
    checked against the inputs and the other outputs."""
    if a.checkpoint is None:
        return None
    from dlogit.checkpoint import checkpoint_path
    from dlogit.errors import ConfigError
    from dlogit.outputs import check_distinct
    from dlogit.spec import CheckpointSpec

    every = a.checkpoint_every if a.checkpoint_every is not None else config_duration("checkpoint-every")
    for src in inputs:
        if src and os.path.abspath(src) == os.path.abspath(a.checkpoint):
            raise ConfigError(f"--checkpoint {a.checkpoint} is one of the inputs")
    # the outputs against each other, as against the inputs: the model must not replace the checkpoint
    check_distinct({"--out": a.out, "--checkpoint": a.checkpoint,
                    "--checkpoint's file": checkpoint_path(a.checkpoint)})
    return CheckpointSpec(a.checkpoint, every=float(every), resume=a.resume)


def _make_model(a: _Args, path: bool) -> Any:
    """The model the options describe: a :class:`~dlogit.model.LogisticModel` (no scikit-learn to import:
    its seconds would outlast the fit of a small file), :class:`~dlogit.LogisticRegressionCV` for a path."""
    common = {"solver": a.solver, "lr": a.lr, "max_iter": a.max_iter, "tol": a.tol,
              "fit_intercept": not a.no_intercept, "class_weight": a.class_weight, "init": a.init,
              "random_state": a.seed, "chunk_rows": a.opts.get("chunk_rows"), "progress_period": a.period,
              "mode": a.mode}
    if path:
        from dlogit.estimator_cv import LogisticRegressionCV

        return LogisticRegressionCV(l2=list(a.l2) if isinstance(a.l2, tuple) else a.l2,
                                    l1=list(a.l1) if isinstance(a.l1, tuple) else a.l1, cv=a.cv,
                                    cv_split=a.cv_split, scoring=a.scoring, **common)
    from dlogit.model import LogisticModel

    return LogisticModel(l2=a.l2, l1=a.l1, **common)


def _where(ctx: click.Context, a: _Args, job: _Job) -> bool:
    """The warnings about options that will be ignored or plans that cannot work well, then whether
    DATA trains in this process."""
    from dlogit.cluster import resolve_scheduler

    if a.solver != "gd" and _given(ctx, "lr"):
        _warn(f"--lr is ignored by --solver {a.solver} (it chooses its own steps; --lr is for gd)")
    target = resolve_scheduler(a.cluster["scheduler"], a.cluster["scheduler_file"])
    if target:  # --workers: local only
        _warn_local_only(ctx, target, a.cluster)
    _check_plan(None if target else a.cluster.get("workers"), job.synthetic and job.rows,
                a.opts.get("chunk_rows"))
    return not job.synthetic and not target and _in_process(ctx, job.source, a.mode, job.quiet)


@dataclass
class _Data:
    """The training data as the fit takes it (persisted on the workers with a cluster) and what the
    model file records about it."""

    X: Any
    y: Any
    w: Any
    meta_source: dict[str, Any]
    feature_names: Any
    n_chunks: int


def _read(a: _Args, job: _Job, client: Any, kind: str) -> _Data:
    """Generate or read the data (on the workers, kept there, with a cluster; here without)."""
    from dlogit import data as data_mod
    from dlogit.errors import ConfigError

    opts, names = a.opts, None
    if job.synthetic:
        X, y = data_mod.synthetic(job.rows, job.cols, seed=a.seed, dtype=opts.get("dtype") or "float64",
                                  chunk_rows=opts.get("chunk_rows"), gpu=(kind == "gpu"))
        w = None
        meta: dict[str, Any] = {"synthetic": f"{job.rows}x{job.cols}", "seed": a.seed}
    else:
        source = job.source
        ds = data_mod.read_data(source, client=client) if client else data_mod.load_local(source)
        check_label_option(opts.get("label"), ds.info.kind)
        for notice in ds.info.notices:
            _note(job.quiet, notice)
        X, y, w, names = ds.X, ds.y, ds.sample_weight, ds.info.feature_names
        if y is None:
            raise ConfigError(f"{a.data} has no labels (use --label COLUMN or --labels FILE.npy)")
        if kind == "gpu":
            X = data_mod.on_device(X)  # moved on the workers: the client needs no CuPy
        meta = _source_meta(source, ds.info, X)
    n_chunks = int(X.numblocks[0]) if client else -(-X.shape[0] // (opts.get("chunk_rows") or X.shape[0]))
    if not (job.synthetic and opts.get("chunk_rows")):  # else said before the cluster started
        _check_chunks(n_chunks)
    # data dlogit's readers read is not loaded here: each worker reads its chunks in the fit's first pass
    # and keeps what --cache-bytes allows (dlogit.engine.residency)
    streamed = client is not None and not job.synthetic and kind != "gpu" and _streamable(X, y, w)
    if client is not None and not streamed:
        X, y, w = _load(client, X, y, w, job.quiet)
    return _Data(X, y, w, meta, names, n_chunks)


def _source_meta(source: Any, info: Any, X: Any) -> dict[str, Any]:
    """How DATA was read, for the model file (``predict``/``evaluate`` read new data the same way)."""
    libsvm = info.kind == "libsvm"
    return {"data": source.path, "format": info.kind, "label": source.label, "labels": source.labels,
            "weights": source.weights, "feature_names": info.feature_names, "sep": source.sep,
            "no_header": True if not source.header else None, "index_col": source.index_col,
            "n_features": int(X.shape[1]) if libsvm else source.n_features,
            "zero_based": getattr(info.layout, "zero_based", None) if libsvm else None,
            "encoder": info.encoder.to_json() if info.encoder is not None else None}


def _fit(a: _Args, job: _Job, data: _Data, client: Any) -> list[warnings.WarningMessage]:
    """Fit the model with the progress lines; the warnings it raised, to report once each. A lost
    scheduler is a one-line :class:`ClusterError`; an interrupted path prints what it finished."""
    from dlogit.errors import ClusterError, DlogitError

    progress = _progress(job.spec.max_iter, a.period, job.quiet_progress, to_stderr=a.as_json)
    if job.ckpt is not None and a.resume:
        _note(job.quiet, f"resuming from {os.path.join(job.ckpt.directory, 'checkpoint.npz')}")
    kw: dict[str, Any] = {} if job.path else {"checkpoint": job.spec.checkpoint}
    tracker = _StepTracker(progress, note=lambda text: _note(job.quiet, text))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                job.model.fit(data.X, data.y, sample_weight=data.w, client=client, callback=tracker, **kw)
            except KeyboardInterrupt:
                if job.path:
                    progress.close()
                    if not a.as_json:
                        click.echo(_interrupted_path(tracker.path, a.cv, a.cv_split, a.scoring))
                raise
            except _scheduler_lost(client):
                raise ClusterError(_lost_scheduler(tracker.step, job.ckpt)) from None
            except DlogitError:
                raise
            except Exception as exc:  # the client's own failure once the scheduler is gone
                if _scheduler_gone(client, exc):
                    raise ClusterError(_lost_scheduler(tracker.step, job.ckpt)) from None
                raise
    finally:
        progress.close()
    return caught


def _score(a: _Args, job: _Job, data: _Data, client: Any) -> dict[str, Any]:
    """The training accuracy and the ``--summary`` table of a usable model (``usable``: it did not
    diverge and its coefficients are finite), and the workers it ran on."""
    import numpy as np

    from dlogit.errors import ConfigError

    model = job.model
    if data.feature_names:
        model.feature_names_in_ = np.asarray(data.feature_names, dtype=object)
    usable = model.status_ != "diverged" and bool(np.all(np.isfinite(model.coef_)))
    out: dict[str, Any] = {"usable": usable, "accuracy": None, "table": None, "no_table": None}
    if usable:
        with client.as_current() if client else warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="X does not have valid feature names")  # X: NumPy
            out["accuracy"] = model.score(data.X, data.y, sample_weight=None)
            if a.with_summary:
                try:  # a model without a table (K > 2, L1, a singular Hessian) is still a model
                    out["table"] = model.summary(data.X, data.y, sample_weight=data.w, client=client)
                except ConfigError as exc:
                    out["no_table"] = str(exc)
    out["workers"] = len(client.scheduler_info(n_workers=-1).get("workers", {})) if client else 0
    return out


def _finish(a: _Args, job: _Job, data: _Data, r: dict[str, Any]) -> None:
    """Write the model and print the result: the summary lines, or one JSON object (--json); a model
    that is not usable is an error (exit code 3) after its JSON object."""
    from dlogit.cli._common import json_line

    model = job.model
    if not r["usable"]:
        _diverged(a, job, data, r)
    if a.out:
        model.save(a.out, source=data.meta_source, accuracy=r["accuracy"])
    if r["no_table"] is not None:
        _warn(f"no --summary table: {r['no_table']}")
    if a.as_json:
        click.echo(json_line(_summary(a, job, data, r)))
        return
    if job.path:
        click.echo(f"cv: best l2 {model.l2_:.4g}, l1 {model.l1_:.4g}: {a.scoring} {model.best_score_:.6f} "
                   f"({a.cv} {a.cv_split} folds); "
                   "refit on all the data")
    classes = "" if len(model.classes_) == 2 else f", {len(model.classes_)} classes"
    where = f"cluster start-up {r['startup_seconds']:.2f}s, " if r["client"] else ""
    where += (f"data loaded in {r['load_seconds']:.2f}s, "
              + (f"{r['workers']} {r['cluster']} worker(s), " if r["client"] else "no cluster, "))
    click.echo(f"done: {model.status_} after {model.n_iter_} iterations in {model.fit_seconds_:.2f}s "
               f"({where}{model.mode_} mode, {model.kernel_} kernel{classes})")
    sparsity = f"  nonzero {model.n_nonzero_}/{model.coef_.size}" if model.n_nonzero_ < model.coef_.size else ""
    click.echo(f"loss {_num(model.loss_)}  ||grad|| {model.grad_norm_:.3g}  training accuracy "
               f"{r['accuracy']:.4f}{sparsity}")
    if r["table"] is not None:
        click.echo(str(r["table"]))
    if a.out:
        click.echo(f"model written to {a.out}")


def _diverged(a: _Args, job: _Job, data: _Data, r: dict[str, Any]) -> None:
    """A fit without a usable model: kept with --keep-diverged, its JSON object with --json, then the
    one error line with what to do (exit code 3)."""
    from dlogit.cli import NotConverged
    from dlogit.cli._common import json_line

    model = job.model
    if a.out and a.keep_diverged:
        model.save(a.out, source=data.meta_source, accuracy=None)
    kept = f"; model written to {a.out} (--keep-diverged)" if a.out and a.keep_diverged else "; no model written"
    one_l2 = max(a.l2) if isinstance(a.l2, tuple) else (0.0 if job.path else float(a.l2))  # a path: its largest
    if a.as_json:  # the one JSON object, with its status, before the error line (exit code 3)
        click.echo(json_line({"status": model.status_, "n_iter": model.n_iter_, "loss": model.loss_,
                              "grad_norm": model.grad_norm_, "message": model.message_,
                              "seconds": model.fit_seconds_, "startup_seconds": r["startup_seconds"],
                              "load_seconds": r["load_seconds"], "workers": r["workers"],
                              "cluster": r["cluster"], "mode": model.mode_, "solver": a.solver,
                              "model": a.out if a.keep_diverged else None}))
    raise NotConverged(f"the fit diverged: {_divergence_why(model.message_)}; "
                       f"{_divergence_advice(model.message_, a.solver, a.lr, one_l2, a.init)}{kept}")


def _summary(a: _Args, job: _Job, data: _Data, r: dict[str, Any]) -> dict[str, Any]:
    """The --json object of a usable model."""
    import numpy as np

    from dlogit.cli._common import json_value

    model = job.model
    summary = {"n_iter": model.n_iter_, "loss": model.loss_, "grad_norm": model.grad_norm_,
               "l2": float(getattr(model, "l2_", a.l2)), "l1": float(getattr(model, "l1_", a.l1)),
               "accuracy": r["accuracy"], "status": model.status_, "seconds": model.fit_seconds_,
               "startup_seconds": r["startup_seconds"], "load_seconds": r["load_seconds"],
               "workers": r["workers"], "cluster": r["cluster"],
               "mode": model.mode_, "kernel": model.kernel_, "solver": a.solver,
               "family": model.family_, "n_classes": len(model.classes_),
               "classes": [json_value(c) for c in model.classes_[:100]], "n_nonzero": model.n_nonzero_,
               "coef_norm": float(np.linalg.norm(model.coef_)),
               "intercept": [float(b) for b in model.intercept_], "resumed_from": model.resumed_from_,
               "n_chunks": data.n_chunks,
               "model": a.out}
    if job.path:
        summary["cv"] = {"scoring": a.scoring, "folds": a.cv, "split": a.cv_split,
                         "best_index": int(model.best_index_),
                         "best_score": float(model.best_score_),
                         "l2": [float(v) for v in model.cv_results_["param_l2"]],
                         "l1": [float(v) for v in model.cv_results_["param_l1"]],
                         "mean_test_score": [float(v) for v in model.cv_results_["mean_test_score"]]}
    table = r["table"]
    if table is not None:
        summary["summary"] = {n: {"coef": float(c), "std_err": float(e), "p_value": float(p)}
                              for n, c, e, p in zip(table.names, table.coef, table.std_err, table.p_value)}
    return summary


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the user set option ``name`` (on the command line or in the environment)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _warn_local_only(ctx: click.Context, target: dict[str, str], cluster: dict[str, Any]) -> None:
    """One warning naming the local-cluster options given while training on an existing scheduler."""
    from dlogit.cluster import SCHEDULER_ENV

    names = [f"--{n.replace('_', '-')}" for n in ("workers", "gpus", "rmm_pool_size", "memory_limit",
                                                 "host", "dashboard_address") if _given(ctx, n)]
    if not names:
        return
    if cluster.get("scheduler_file") or (not cluster.get("scheduler") and "scheduler_file" in target):
        where = f"the scheduler in {target.get('scheduler_file')}"
    else:
        where = f"the existing scheduler at {target.get('address')}"
    if not cluster.get("scheduler") and not cluster.get("scheduler_file"):
        where += f" (from {SCHEDULER_ENV})" if os.environ.get(SCHEDULER_ENV) else " (from dlogit.scheduler)"
    _warn(f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} ignored: training on {where}, "
          "not on a local cluster")


_CLUSTER_KEYS = ("workers", "gpus", "rmm_pool_size", "memory_limit", "host", "dashboard_address", "scheduler",
                 "scheduler_file", "connect_timeout", "tls_ca_file", "tls_cert", "tls_key")


class _StepTracker:
    """Passes every event to the progress printer, remembering the last step seen (and a path's last
    ``path`` event and the point it is on)."""

    def __init__(self, inner: Any, note: Any = None) -> None:
        self.inner = inner
        self.note = note
        self.step: int | None = None
        self.path: dict[str, Any] = {}

    def __call__(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        cache = (msg.get("params") or {}).get("cache") if kind == "start" else None
        if isinstance(cache, dict) and self.note is not None and "/p" not in str(msg.get("run", "")):
            from dlogit.engine import describe_cache

            self.note(describe_cache(cache))
        if kind == "progress" and msg.get("step"):
            self.step = int(msg["step"][-1])
        elif kind == "path":
            self.path["event"] = msg
        elif kind == "start" and isinstance((msg.get("params") or {}).get("cv"), dict):
            self.path["cv"] = msg["params"]["cv"]
        self.inner(msg)


def _interrupted_path(seen: dict[str, Any], folds: int, split: str, scoring: str) -> str:
    """The line an interrupted ``--cv`` prints: the points it finished and the best of them."""
    event = seen.get("event") or {}
    points = [p for p in event.get("points") or [] if isinstance(p, dict)]
    cv = seen.get("cv") or {}
    best = event.get("best")
    chosen = ""
    if points and isinstance(best, int) and 0 <= best < len(points):
        b = points[best]
        chosen = (f"l2 {float(b.get('l2', 0.0)):.4g}, l1 {float(b.get('l1', 0.0)):.4g}: "
                  f"{scoring} {float(b.get('mean', float('nan'))):.6f}")
    if event.get("done") and chosen:
        return (f"cv: the path finished ({len(points)} points, {folds} {split} folds; best {chosen}); "
                "interrupted during the refit on all the data, no model written")
    at = "before its first point"
    if "index" in cv and "of" in cv:
        at = f"during point {int(cv['index']) + 1} of {cv['of']}"
    text = f"cv: interrupted {at} ({folds} {split} folds): {len(points)} point(s) finished"
    if chosen:
        text += f"; best so far {chosen}"
    return text + "; no penalty chosen, no model written"


def _scheduler_gone(client: Any, exc: BaseException) -> bool:
    """Whether ``exc`` from a fit means the client lost its scheduler (it no longer runs, or Dask
    cancelled the fit's task for that reason)."""
    if "scheduler-connection-lost" in str(exc):
        return True
    return getattr(client, "status", "running") not in ("running", "newly-created")


def _lost_scheduler(step: int | None, ckpt: Any) -> str:
    where = f" at step {step}" if step is not None else " during the fit"
    text = f"lost the Dask scheduler{where}"
    if ckpt is not None:
        path = os.path.join(ckpt.directory, "checkpoint.npz")
        if os.path.exists(path):
            return f"{text}; resume with --resume (the checkpoint {path} holds the last saved step)"
        return f"{text}; no checkpoint was written yet"
    return f"{text}; the fit is lost (--checkpoint DIR lets a fit resume)"


def _num(x: float) -> str:
    """A loss for a summary line: six decimals in the usual range, else six significant digits."""
    return f"{x:.6f}" if 1e-4 <= abs(x) < 1e6 else f"{x:.6g}"


def _report_warnings(caught: list[warnings.WarningMessage], status: str) -> None:
    """The fit's warnings, each once and on one line (NumPy floating-point warnings never: a fit that
    overflowed says so itself, as status "diverged")."""
    seen = set()
    for w in caught:
        if w.category.__name__ == "ConvergenceWarning" and status == "diverged":
            continue
        if issubclass(w.category, RuntimeWarning) and "numpy" in (w.filename or ""):
            continue
        text = str(w.message).strip().splitlines()[0] if str(w.message).strip() else w.category.__name__
        if text not in seen:
            seen.add(text)
            _warn(text)


def _divergence_why(message: str | None) -> str:
    """What the solver saw, without its own generic advice (the CLI gives its own, in option names)."""
    import re

    text = (message or "the coefficients became non-finite").strip().splitlines()[0]
    m = re.match(r"^(.*?\))\s*:\s", text)
    return m.group(1) if m else text


def _divergence_advice(message: str | None, solver: str, lr: float, l2: float, init: str) -> str:
    """One piece of advice that would fix the run, in the CLI's option names (the same suggestion as
    the solver's message: :func:`dlogit.solvers.divergence_advice`)."""
    from dlogit.solvers import fmt, suggested_lr

    if "starting point" in (message or ""):
        if init == "normal":
            return "use --init zeros, or standardize the columns"
        return "the feature values are too large to compute with: standardize (rescale) the columns"
    if solver == "gd":
        safe = suggested_lr(lr, l2)
        if l2 > 0 and lr * l2 >= 1.0:  # the penalty alone makes steps of lr unstable: scaling cannot help
            return f"lower --lr below 1/l2 = {fmt(1.0 / l2)} (try --lr {fmt(safe)}), or use --solver lbfgs"
        return (f"lower --lr (try --lr {fmt(safe)}), standardize the columns, or use --solver lbfgs "
                "(it copes with unscaled columns)")
    return "standardize the columns or raise --l2"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check_plan(workers: int | None, rows: int | None, chunk_rows: int | None) -> None:
    """One-line warnings for plans that cannot work well (before anything starts)."""
    cores = _cores()
    if workers is not None and workers > 4 * cores:
        _warn(f"--workers {workers} on {cores} core(s): start-up will be slow and the workers will "
              f"compete for the cores; use --workers {max(1, cores)} (one per core) or a real cluster")
    if rows and chunk_rows and -(-rows // chunk_rows) > 10_000:
        _warn(f"--chunk-rows {chunk_rows} makes {-(-rows // chunk_rows)} chunks: per-chunk overhead will "
              "dominate; leave --chunk-rows unset (about 128 MiB per chunk) or raise it")


def _check_chunks(n_chunks: int) -> None:
    if n_chunks > 10_000:
        _warn(f"the data has {n_chunks} chunks: per-chunk overhead will dominate; use larger chunks "
              "(--chunk-rows or --chunk-bytes)")


@contextlib.contextmanager
def _quiet_dask_logs(verbose: bool) -> Any:
    """Dask's own log lines (a client reconnecting, a comm closing, with tracebacks) stay off the
    terminal unless --verbose: dlogit says what happened in its own one line."""
    import logging

    if verbose:
        yield
        return
    names = ["distributed", "asyncio"] + [n for n in list(logging.root.manager.loggerDict)
                                          if n.startswith("distributed.")]
    saved = {}
    for name in names:
        lg = logging.getLogger(name)
        if name in ("distributed", "asyncio") or lg.level != logging.NOTSET:
            saved[name] = lg.level
            lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _say_kernel(spec: Any, quiet: bool) -> None:
    """One line when ``dlogit.cpu-kernel: auto`` took the BLAS path because the fused kernels are not in
    the disk cache (:func:`dlogit.engine.cpu_kernel_notice`)."""
    from dlogit.engine import cpu_kernel_notice

    notice = cpu_kernel_notice(spec.cpu_kernel)
    if notice:
        _note(quiet, notice)


def _in_process(ctx: click.Context, source: Any, mode: str, quiet: bool) -> bool:
    """Whether DATA trains in this process: no cluster asked for (no --workers, --gpus or other local
    cluster option, --mode auto) and DATA (with its --labels / --weights files) at most
    ``dlogit.cli.in-process-bytes`` on local disk. Says which it picked and why."""
    import dask

    from dlogit.config import setting

    if mode != "auto" or any(_given(ctx, n) for n in ("workers", "gpus", "rmm_pool_size", "memory_limit",
                                                      "dashboard_address")):
        return False
    limit = int(dask.utils.parse_bytes(setting("dlogit.cli.in-process-bytes")))
    size = _local_bytes([p for p in (source.path, source.labels, source.weights) if p])
    name = os.path.basename(source.path.rstrip("/")) or source.path
    if size is not None and size <= limit:
        _note(quiet, f"training in this process: {name} is {dask.utils.format_bytes(size)}, at most "
                     f"dlogit.cli.in-process-bytes ({dask.utils.format_bytes(limit)}); --workers N trains "
                     "on a local cluster")
        return True
    why = "not a local file" if size is None else f"{dask.utils.format_bytes(size)}, over " \
          f"dlogit.cli.in-process-bytes ({dask.utils.format_bytes(limit)})"
    _note(quiet, f"training on a local cluster: {name} is {why}")
    return False


def _local_bytes(paths: list[str]) -> int | None:
    """The bytes on local disk of ``paths`` (files, directories, globs; 0 for none there); None for a URL."""
    import glob

    total = 0
    for path in paths:
        if "://" in path and not path.startswith("file://"):
            return None
        path = path.removeprefix("file://")
        for match in glob.glob(path) if glob.has_magic(path) else [path]:  # a missing file: its error, here
            if os.path.isdir(match):
                total += sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(match) for f in fs)
            elif os.path.isfile(match):
                total += os.path.getsize(match)
    return total


def _scheduler_lost(client: Any) -> Any:
    """What ``except`` catches for a lost scheduler: nothing in this process (and no ``distributed``)."""
    if client is None:
        return ()
    from dlogit.engine import SchedulerLost

    return SchedulerLost


class _Signal(KeyboardInterrupt):
    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum
        self.message = "terminated" if signum == signal.SIGTERM else "interrupted"


@contextlib.contextmanager
def _fit_signals() -> Any:
    """SIGINT / SIGTERM during an in-process fit: a ``KeyboardInterrupt`` the fit loop turns into a
    checkpoint of its last step and :class:`~dlogit.errors.Interrupted` (the CLI's own handler raises
    ``Interrupted`` itself, which the loop passes on without a checkpoint)."""
    from dlogit.errors import Interrupted

    def raise_signal(signum: int, frame: Any) -> None:
        raise _Signal(signum)

    saved = {sig: signal.signal(sig, raise_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except _Signal as exc:  # outside the fit loop (reading the data, scoring)
        raise Interrupted(exc.message, exc.signum) from None
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _session(a: _Args, job: _Job, in_process: bool) -> Any:
    """Yield ``(client, kind)``: ``(None, "cpu")`` in this process; else a client of the existing
    scheduler named, or of a local cluster started for the run (:func:`dlogit.cluster.open_cluster`),
    with the lines saying so."""
    if in_process:
        with _fit_signals():
            yield None, "cpu"
        return
    import functools

    from dlogit.cli import children_start_without_sigint, ignore_signals
    from dlogit.cluster import open_cluster, resolve_scheduler

    opts, quiet = a.cluster, job.quiet
    local = not resolve_scheduler(opts["scheduler"], opts["scheduler_file"])
    if local and not quiet:
        n = opts["workers"]
        what = f"{n} CPU worker(s)" if n else ("GPU workers" if opts["gpus"] else "workers")
        click.echo(f"dlogit: starting a local cluster ({what})...")
    # what the fit imports here once the cluster is up is imported while its workers start instead
    guard = functools.partial(children_start_without_sigint, lambda: _import_in_background(_AFTER_START))
    with open_cluster(**opts, spawn_guard=guard, on_interrupt=ignore_signals) as s:
        if local and s.kind == "cpu" and opts["workers"] is None and a.verbose:
            click.echo(f"dlogit: no usable GPU (CuPy and a CUDA device): using {len(s.cluster.workers)} "
                       "CPU worker processes")
        _say_dashboard(s.client, quiet)
        yield s.client, s.kind


#: what a fit on a local cluster imports here once the cluster is up (dask.array: 0.25 s or more of a
#: quiet 2-core box's time): imported while the workers start instead (:func:`_import_in_background`,
#: after the first worker process is spawned, not to slow the scheduler's own start)
_AFTER_START = ("dask.array", "dlogit.inputs", "dlogit.monitor.progress")


def _import_in_background(modules: tuple[str, ...]) -> Any:
    """Import ``modules`` in a daemon thread (returned): the client mostly waits while its cluster's
    worker processes start, and the fit's first step then does not wait for these imports. An import
    that fails here fails again, with its own error, where the module is used."""
    import importlib
    import threading

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001, S112 - its user imports it again and reports the error
                continue

    thread = threading.Thread(target=run, name="dlogit-imports", daemon=True)
    thread.start()
    return thread


def _load(client: Any, X: Any, y: Any, w: Any, quiet: bool) -> tuple[Any, Any, Any]:
    """Read or generate the data on the workers and keep it there (timed apart from the fit).

    A load that takes more than a second shows how many chunks are in: rewritten in place on a
    terminal, else one line every few seconds (stdout, like every notice)."""
    from dlogit.cluster import persist

    tty = _isatty(sys.stdout)

    def show(done: int, total: int, seconds: float, final: bool) -> None:
        line = f"dlogit: loading data: {done}/{total} chunks" + (f" in {seconds:.1f}s" if final else "")
        click.echo(f"\r{line}" if tty else line, nl=final or not tty)

    persisted = persist(client, [a for a in (X, y, w) if a is not None], None if quiet else show,
                        every=0.2 if tty else 5.0)
    it = iter(persisted)
    return next(it), next(it), (next(it) if w is not None else None)


def _warn_memory_pause(args: _Args) -> None:
    """One warning when ``--memory-limit`` leaves a local worker too little room: Dask pauses a worker
    whose memory passes ``distributed.worker.memory.pause`` of its limit, and a fit then waits on it."""
    limit = args.cluster.get("memory_limit")
    if limit in (None, "auto") or args.cluster.get("scheduler") or args.cluster.get("scheduler_file"):
        return
    import dask.utils
    from distributed.system import MEMORY_LIMIT  # also registers Dask's distributed.* defaults

    from dlogit.config import setting
    from dlogit.engine import budget_for, parse_cache_bytes

    pause = dask.config.get("distributed.worker.memory.pause")
    if not pause:
        return
    try:  # as Dask reads it: a fraction of the machine's (or the cgroup's) memory, or a size
        limit_bytes = float(limit) * MEMORY_LIMIT
    except ValueError:
        limit_bytes = float(dask.utils.parse_bytes(limit))
    cache = budget_for(parse_cache_bytes(args.cache_bytes or setting("dlogit.engine.cache-bytes")), limit_bytes)
    chunk = float(dask.utils.parse_bytes(args.opts.get("chunk_bytes") or setting("dlogit.chunk-bytes")))
    if cache + 2 * chunk + _WORKER_FOOTPRINT > pause * limit_bytes:
        size = dask.utils.format_bytes
        _warn(f"--memory-limit {limit}: the chunk cache ({size(int(cache))}) + 2 chunks ({size(int(2 * chunk))}) "
              f"+ ~{size(_WORKER_FOOTPRINT)} for the worker itself pass {pause:.0%} of it, where Dask pauses a "
              "worker (distributed.worker.memory.pause) and the fit waits on it: lower --cache-bytes or "
              "--chunk-bytes, or raise --memory-limit")


#: what a dlogit worker process holds before any data (its imports, the preload, the kernels), measured
#: at 0.2-0.4 GiB on CPU workers
_WORKER_FOOTPRINT = 400 * 2**20


def _cache_budget(cache_bytes: str | None) -> Any:
    """``--cache-bytes`` as ``dlogit.engine.cache-bytes`` for the run (nothing to set: no Dask import)."""
    if cache_bytes is None:
        return contextlib.nullcontext()
    import dask

    return dask.config.set({"dlogit.engine.cache-bytes": cache_bytes})


def _streamable(X: Any, y: Any, w: Any) -> bool:
    """Whether the fit reads these arrays' chunks from their source itself (dlogit.io.stream)."""
    from dlogit.io.stream import stream_sources

    return stream_sources(X, y, w) is not None


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def _say_dashboard(client: Any, quiet: bool) -> None:
    from dlogit.cluster import dashboard_link
    from dlogit.monitor.progress import format_dashboard_url

    link = dashboard_link(client)
    if link and not quiet:
        click.echo(f"dashboard: {format_dashboard_url(link)}")
