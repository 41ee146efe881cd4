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
def train(data: str | None, synthetic_shape: str | None, seed: int, class_weight: str | None,
          solver: str | None, l2: Any, l1: Any, l2_path: int | None, l1_path: int | None, cv: int | None,
          cv_split: str, scoring: str, with_summary: bool, lr: float, max_iter: int | None, tol: float | None,
          init: str | None, no_intercept: bool, mode: str, out: str | None, keep_diverged: bool,
          checkpoint: str | None, checkpoint_every: float | None, resume: bool, as_json: bool, period: int,
          quiet: bool, verbose: bool, cache_bytes: str | None = None, **opts: Any) -> None:
    """Train a logistic regression on DATA (CSV/TSV, Parquet, NPY, LIBSVM, Zarr; files, directories,
    globs or URLs) or on synthetic data.

    With no arguments: the textbook run (400x784 random data, gd, lr 0.1, l2 0.01, 10001 steps) on a
    local cluster started for the run.
    """
    import numpy as np

    from dlogit import data as data_mod
    from dlogit.cli import NotConverged
    from dlogit.errors import ClusterError, ConfigError, DlogitError
    from dlogit.estimator import LogisticRegression
    from dlogit.files import check_distinct, check_output
    from dlogit.spec import CheckpointSpec

    check_config()
    cluster = {k: opts.pop(k) for k in list(opts) if k in _CLUSTER_KEYS}
    if cluster["connect_timeout"] is None:
        cluster["connect_timeout"] = config_duration("connect-timeout")
    if data and synthetic_shape:
        raise ConfigError("give either DATA or --synthetic, not both")
    synthetic = data is None
    solver = solver or ("gd" if synthetic else "lbfgs")
    init = init or ("normal" if synthetic else "zeros")
    if resume and not checkpoint:
        raise ConfigError("--resume needs --checkpoint DIR")
    source = None
    if synthetic:
        rows, cols = data_mod.parse_shape(synthetic_shape or "400x784")
        inputs = []
        if opts.get("chunk_bytes") and not opts.get("chunk_rows"):  # --chunk-bytes sizes synthetic chunks too
            import dask.utils

            itemsize = np.dtype(opts.get("dtype") or "float64").itemsize
            opts["chunk_rows"] = max(1, dask.utils.parse_bytes(opts["chunk_bytes"]) // (cols * itemsize))
    else:
        source = source_from_options(data, opts)
        inputs = [source.path, source.labels, source.weights if source.weights and
                  source.weights.endswith(".npy") else None]
    if out is not None:
        check_output(out, inputs=inputs, suffixes=(".npz",), what="model")
    ckpt = None
    if checkpoint is not None:
        from dlogit.checkpoint import checkpoint_path

        every = checkpoint_every if checkpoint_every is not None else config_duration("checkpoint-every")
        for src in inputs:
            if src and os.path.abspath(src) == os.path.abspath(checkpoint):
                raise ConfigError(f"--checkpoint {checkpoint} is one of the inputs")
        # the outputs against each other, as against the inputs: the model must not replace the checkpoint
        check_distinct({"--out": out, "--checkpoint": checkpoint,
                        "--checkpoint's file": checkpoint_path(checkpoint)})
        ckpt = CheckpointSpec(checkpoint, every=float(every), resume=resume)
    if l2_path is not None:
        l2 = l2_path
    if l1_path is not None:
        l1 = l1_path
    path = cv is not None
    if not path and (isinstance(l2, tuple) or isinstance(l1, tuple) or l2_path or l1_path):
        raise ConfigError("several penalty values (or --l2-path/--l1-path) need --cv K to choose among them")
    if not path and cv_split != "stratified":
        raise ConfigError("--cv-split needs --cv K")
    if path and ckpt is not None:
        raise ConfigError("--checkpoint is not available with --cv (each point of a path is short)")
    common = {"solver": solver, "lr": lr, "max_iter": max_iter, "tol": tol, "fit_intercept": not no_intercept,
              "class_weight": class_weight, "init": init, "random_state": seed,
              "chunk_rows": opts.get("chunk_rows"), "progress_period": period, "mode": mode}
    if path:
        from dlogit.estimator_cv import LogisticRegressionCV

        model = LogisticRegressionCV(l2=list(l2) if isinstance(l2, tuple) else l2,
                                     l1=list(l1) if isinstance(l1, tuple) else l1, cv=cv, cv_split=cv_split,
                                     scoring=scoring,
                                     **common)
    else:
        model = LogisticRegression(l2=l2, l1=l1, **common)
    if with_summary and any(float(v) > 0 for v in (l1 if isinstance(l1, tuple) else (l1,))):
        raise ConfigError("--summary needs a fit without L1 (the standard errors come from the Hessian)")
    spec = model.make_spec(checkpoint=ckpt)  # validates every option (and the checkpoint dir) first
    _say_kernel(spec, quiet or as_json)
    quiet_progress = quiet  # --json keeps the progress lines, on stderr (a log being tailed; stdout is JSON)
    quiet = quiet or as_json
    from dlogit.cluster import resolve_scheduler

    ctx = click.get_current_context()
    if solver != "gd" and _given(ctx, "lr"):
        _warn(f"--lr is ignored by --solver {solver} (it chooses its own steps; --lr is for gd)")
    target = resolve_scheduler(cluster["scheduler"], cluster["scheduler_file"])
    local = not target  # --workers: local only
    if not local:
        _warn_local_only(ctx, target, cluster)
    _check_plan(cluster.get("workers") if local else None, synthetic and rows, opts.get("chunk_rows"))
    here = not synthetic and not target and _in_process(ctx, source, mode, quiet)

    import dask

    t0 = time.perf_counter()
    with _quiet_dask_logs(verbose), dask.config.set(
            {} if cache_bytes is None else {"dlogit.engine.cache-bytes": cache_bytes}), \
            _cluster(cluster, quiet, verbose, here) as (client, kind):
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        if synthetic:
            X, y = data_mod.synthetic(rows, cols, seed=seed, dtype=opts.get("dtype") or "float64",
                                      chunk_rows=opts.get("chunk_rows"), gpu=(kind == "gpu"))
            w = None
            meta_source: dict[str, Any] = {"synthetic": f"{rows}x{cols}", "seed": seed}
        else:
            ds = data_mod.read_data(source, client=client) if client else data_mod.load_local(source)
            check_label_option(opts.get("label"), ds.info.kind)
            for notice in ds.info.notices:
                _note(quiet, notice)
            X, y, w = ds.X, ds.y, ds.sample_weight
            if y is None:
                raise ConfigError(f"{data} has no labels (use --label COLUMN or --labels FILE.npy)")
            if kind == "gpu":
                X = data_mod.on_device(X)  # moved on the workers: the client needs no CuPy
            meta_source = {"data": source.path, "format": ds.info.kind, "label": source.label,
                           "labels": source.labels, "weights": source.weights,
                           "feature_names": ds.info.feature_names, "sep": source.sep,
                           "no_header": True if not source.header else None,
                           "index_col": source.index_col,
                           "n_features": int(X.shape[1]) if ds.info.kind == "libsvm" else source.n_features,
                           "zero_based": getattr(ds.info.layout, "zero_based", None)
                           if ds.info.kind == "libsvm" else None,
                           "encoder": ds.info.encoder.to_json() if ds.info.encoder is not None else None}
        n_chunks = int(X.numblocks[0]) if client else -(-X.shape[0] // (opts.get("chunk_rows") or X.shape[0]))
        if not (synthetic and opts.get("chunk_rows")):  # else said before the cluster started
            _check_chunks(n_chunks)
        # data dlogit's readers read is not loaded here: each worker reads its chunks in the fit's first
        # pass and keeps what --cache-bytes allows (dlogit.engine.residency)
        streamed = bool(client) and not synthetic and kind != "gpu" and _streamable(X, y, w)
        X, y, w = _load(client, X, y, w, quiet) if client and not streamed else (X, y, w)
        load = time.perf_counter() - t1
        progress = _progress(spec.max_iter, period, quiet_progress, to_stderr=as_json)
        if ckpt is not None and resume:
            _note(quiet, f"resuming from {os.path.join(ckpt.directory, 'checkpoint.npz')}")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tracker = _StepTracker(progress, note=lambda text: _note(quiet, text))
                try:
                    if path:
                        try:
                            model.fit(X, y, sample_weight=w, client=client, callback=tracker)
                        except KeyboardInterrupt:
                            progress.close()
                            if not as_json:
                                click.echo(_interrupted_path(tracker.path, cv, cv_split, scoring))
                            raise
                    else:
                        model.fit(X, y, sample_weight=w, client=client, checkpoint=spec.checkpoint,
                                  callback=tracker)
                except _scheduler_lost(client):
                    raise ClusterError(_lost_scheduler(tracker.step, ckpt)) from None
                except (DlogitError, KeyboardInterrupt):
                    raise
                except Exception as exc:  # the client's own failure once the scheduler is gone
                    if _scheduler_gone(client, exc):
                        raise ClusterError(_lost_scheduler(tracker.step, ckpt)) from None
                    raise
        finally:
            progress.close()
        if not synthetic and ds.info.feature_names:
            model.feature_names_in_ = np.asarray(ds.info.feature_names, dtype=object)
        fit_seconds = model.fit_seconds_
        usable = model.status_ != "diverged" and np.all(np.isfinite(model.coef_))
        accuracy = None
        table = None
        no_table = None
        if usable:
            with client.as_current() if client else warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="X does not have valid feature names")  # X: NumPy
                accuracy = model.score(X, y, sample_weight=None)
                if with_summary:
                    try:  # a model without a table (K > 2, L1, a singular Hessian) is still a model
                        table = model.summary(X, y, sample_weight=w, client=client)
                    except ConfigError as exc:
                        no_table = str(exc)
        workers = len(client.scheduler_info(n_workers=-1).get("workers", {})) if client else 0
    _report_warnings(caught, model.status_)
    from dlogit.cli._common import json_line, json_value

    if not usable:
        if out and keep_diverged:
            model.save(out, source=meta_source, accuracy=None)
        kept = f"; model written to {out} (--keep-diverged)" if out and keep_diverged else "; no model written"
        one_l2 = max(l2) if isinstance(l2, tuple) else (0.0 if path else float(l2))  # a path: its largest
        if as_json:  # the one JSON object, with its status, before the error line (exit code 3)
            click.echo(json_line({"status": model.status_, "n_iter": model.n_iter_, "loss": model.loss_,
                                  "grad_norm": model.grad_norm_, "message": model.message_,
                                  "seconds": fit_seconds, "startup_seconds": startup, "load_seconds": load,
                                  "workers": workers, "cluster": kind, "mode": model.mode_, "solver": solver,
                                  "model": out if keep_diverged else None}))
        raise NotConverged(f"the fit diverged: {_divergence_why(model.message_)}; "
                           f"{_divergence_advice(model.message_, solver, lr, one_l2, init)}{kept}")
    if out:
        model.save(out, source=meta_source, accuracy=accuracy)
    if no_table is not None:
        _warn(f"no --summary table: {no_table}")
    summary = {"n_iter": model.n_iter_, "loss": model.loss_, "grad_norm": model.grad_norm_,
               "l2": float(getattr(model, "l2_", l2)), "l1": float(getattr(model, "l1_", l1)),
               "accuracy": accuracy, "status": model.status_, "seconds": fit_seconds,
               "startup_seconds": startup, "load_seconds": load, "workers": workers, "cluster": kind,
               "mode": model.mode_, "kernel": model.kernel_, "solver": solver,
               "family": model.family_, "n_classes": len(model.classes_),
               "classes": [json_value(c) for c in model.classes_[:100]], "n_nonzero": model.n_nonzero_,
               "coef_norm": float(np.linalg.norm(model.coef_)),
               "intercept": [float(b) for b in model.intercept_], "resumed_from": model.resumed_from_,
               "n_chunks": n_chunks,
               "model": out}
    if path:
        summary["cv"] = {"scoring": scoring, "folds": cv, "split": cv_split,
                         "best_index": int(model.best_index_),
                         "best_score": float(model.best_score_),
                         "l2": [float(v) for v in model.cv_results_["param_l2"]],
                         "l1": [float(v) for v in model.cv_results_["param_l1"]],
                         "mean_test_score": [float(v) for v in model.cv_results_["mean_test_score"]]}
    if table is not None:
        summary["summary"] = {n: {"coef": float(c), "std_err": float(e), "p_value": float(p)}
                              for n, c, e, p in zip(table.names, table.coef, table.std_err, table.p_value)}
    if as_json:
        click.echo(json_line(summary))
        return
    if path:
        click.echo(f"cv: best l2 {model.l2_:.4g}, l1 {model.l1_:.4g}: {scoring} {model.best_score_:.6f} "
                   f"({cv} {cv_split} folds); "
                   "refit on all the data")
    classes = "" if len(model.classes_) == 2 else f", {len(model.classes_)} classes"
    where = f"cluster start-up {startup:.2f}s, " if client else ""
    where += f"data loaded in {load:.2f}s, " + (f"{workers} {kind} worker(s), " if client else "no cluster, ")
    click.echo(f"done: {model.status_} after {model.n_iter_} iterations in {fit_seconds:.2f}s "
               f"({where}{model.mode_} mode, {model.kernel_} kernel{classes})")
    sparsity = f"  nonzero {model.n_nonzero_}/{model.coef_.size}" if model.n_nonzero_ < model.coef_.size else ""
    click.echo(f"loss {_num(model.loss_)}  ||grad|| {model.grad_norm_:.3g}  training accuracy {accuracy:.4f}"
               f"{sparsity}")
    if table is not None:
        click.echo(str(table))
    if out:
        click.echo(f"model written to {out}")


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the user set option ``name`` (on the command line or in the environment)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _warn_local_only(ctx: click.Context, target: dict[str, str], cluster: dict[str, Any]) -> None:
    """One warning naming the local-cluster options given while training on an existing scheduler."""
    from dlogit.cluster import SCHEDULER_ENV

    names = [f"--{n.replace('_', '-')}" for n in ("workers", "gpus", "rmm_pool_size", "host",
                                                 "dashboard_address") if _given(ctx, n)]
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


_CLUSTER_KEYS = ("workers", "gpus", "rmm_pool_size", "host", "dashboard_address", "scheduler",
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
            from dlogit.engine.residency import describe

            self.note(describe(cache))
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
    the disk cache yet (:mod:`dlogit.kernels.cache`: a background process compiles them)."""
    import dask

    if spec.cpu_kernel == "blas" and str(dask.config.get("dlogit.cpu-kernel", "auto")).strip().lower() == "auto":
        _note(quiet, "compiling the fused CPU kernels in the background (first run on this machine); "
                     "this fit uses the BLAS path")


def _in_process(ctx: click.Context, source: Any, mode: str, quiet: bool) -> bool:
    """Whether DATA trains in this process: no cluster asked for (no --workers, --gpus or other local
    cluster option, --mode auto) and DATA (with its --labels / --weights files) at most
    ``dlogit.cli.in-process-bytes`` on local disk. Says which it picked and why."""
    import dask

    if mode != "auto" or any(_given(ctx, n) for n in ("workers", "gpus", "rmm_pool_size", "dashboard_address")):
        return False
    limit = int(dask.utils.parse_bytes(dask.config.get("dlogit.cli.in-process-bytes")))
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
def _cluster(opts: dict[str, Any], quiet: bool, verbose: bool, in_process: bool = False) -> Any:
    """Yield ``(client, kind)``: ``(None, "cpu")`` in this process; an existing scheduler when one is
    named, else a local cluster."""
    if in_process:
        with _fit_signals():
            yield None, "cpu"
        return
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
            _close_quietly(client)
        return
    n = opts["workers"]
    if not quiet:
        what = f"{n} CPU worker(s)" if n else ("GPU workers" if opts["gpus"] else "workers")
        click.echo(f"dlogit: starting a local cluster ({what})...")
    from dlogit.cli import children_start_without_sigint

    cluster = None
    try:
        with children_start_without_sigint():  # a Ctrl-C while they import is ours alone
            cluster = start_local_cluster(workers=opts["workers"], gpus=opts["gpus"], host=opts["host"],
                                          dashboard_address=opts["dashboard_address"],
                                          rmm_pool_size=opts["rmm_pool_size"], security=security)
        client = Client(cluster, security=security, set_as_default=False)
        client._dlogit_versions_checked = True  # its workers are this installation's own processes
        try:
            if cluster.kind == "cpu" and opts["workers"] is None and verbose:
                click.echo(f"dlogit: no usable GPU (CuPy and a CUDA device): using {len(cluster.workers)} "
                           "CPU worker processes")
            _say_dashboard(client, quiet)
            listen(client)
            yield client, cluster.kind
        finally:
            _close_quietly(client)
    finally:
        if cluster is not None:
            _close_quietly(cluster)


def _close_quietly(obj: Any) -> None:
    from dlogit.cli import ignore_signals

    if sys.exc_info()[0] is not None and issubclass(sys.exc_info()[0], KeyboardInterrupt):
        ignore_signals()
    with contextlib.suppress(Exception):
        obj.close()


def _load(client: Any, X: Any, y: Any, w: Any, quiet: bool) -> tuple[Any, Any, Any]:
    """Read or generate the data on the workers and keep it there (timed apart from the fit).

    A load that takes more than a second shows how many chunks are in: rewritten in place on a
    terminal, else one line every few seconds (stdout, like every notice)."""
    from distributed import futures_of

    arrays = [a for a in (X, y, w) if a is not None]
    with warnings.catch_warnings():  # dask's advice about graph size is not for a CLI user
        warnings.filterwarnings("ignore", message="Sending large graph")
        persisted = client.persist(arrays)
    futs = [f for a in persisted for f in futures_of(a)]
    x_futs = futures_of(persisted[0])
    total = len(x_futs)  # chunks of X (the labels and weights come with them)
    tty = _isatty(sys.stdout)
    t0 = time.monotonic()
    next_show = t0 + 1.0
    shown = False
    while True:
        errored = next((f for f in futs if f.status == "error"), None)
        if errored is not None:
            errored.result()  # raises the reader's DataError
        if all(f.done() for f in futs):
            break
        done = sum(f.done() for f in x_futs)
        now = time.monotonic()
        if not quiet and now >= next_show:
            line = f"dlogit: loading data: {done}/{total} chunks"
            click.echo(f"\r{line}" if tty else line, nl=not tty)
            next_show = now + (0.2 if tty else 5.0)
            shown = True
        time.sleep(0.05)
    if shown:
        line = f"dlogit: loading data: {total}/{total} chunks in {time.monotonic() - t0:.1f}s"
        click.echo(f"\r{line}" if tty else line)
    it = iter(persisted)
    return next(it), next(it), (next(it) if w is not None else None)


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


def _kind(client: Any) -> str:
    from dlogit import cluster as dcluster

    probe = getattr(dcluster, "workers_have_gpus", None)
    if probe is None:
        return "cpu"
    try:
        return "gpu" if probe(client) else "cpu"
    except Exception:  # noqa: BLE001 - a probe that fails means no usable GPU workers
        return "cpu"
