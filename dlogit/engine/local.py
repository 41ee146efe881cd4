"""In-process fits (NumPy / CuPy / SciPy-sparse arrays held by this process), and the one function all
modes share to go from raw chunks to a result on whoever runs the solver loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dlogit.engine.shard import LocalEvaluator, Shard, merged_stats
from dlogit.errors import ConfigError
from dlogit.kernels.policy import cpu_threads, single_threaded_blas
from dlogit.spec import FitResult, FitSpec, make_plan
from dlogit.training import Stop, run_fit

if TYPE_CHECKING:
    from dlogit.cv import PathResult, PathSpec

Callback = Callable[[dict[str, Any]], None]


def needs_curvature(solver: str) -> bool:
    from dlogit.solvers import get

    return bool(get(solver).needs_hvp)


class BlockThreads:
    """``runner(fn, n)``: ``fn(j)`` for ``j < n`` on ``threads`` threads (the caller's and ``threads - 1``
    helpers), each taking the next ``j`` when it is free -- a thread the OS deschedules (another process
    on its core) takes fewer blocks instead of holding the others up. The caller combines the blocks'
    results in a fixed order, so the bits never depend on which thread ran which block."""

    def __init__(self, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.threads = int(threads)
        self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="dlogit-block")

    def __call__(self, fn: Callable[[int], None], n: int) -> None:
        take = iter(range(n)).__next__  # one C call under the GIL: each j goes to exactly one thread
        failed: list[BaseException] = []

        def drain() -> None:
            while not failed:
                try:
                    j = take()
                except StopIteration:
                    return
                try:
                    fn(j)
                except BaseException as exc:  # noqa: BLE001 - the others stop taking blocks; raised below
                    failed.append(exc)
                    return

        helpers = [self._pool.submit(drain) for _ in range(min(self.threads, n) - 1)]
        try:
            drain()
        except BaseException as exc:  # noqa: BLE001 - (an interrupt) raised once no helper writes any more
            failed.append(exc)
        for f in helpers:
            while True:
                try:
                    f.result()
                    break
                except BaseException as exc:  # noqa: BLE001 - an interrupt while waiting: the others stop
                    failed.append(exc)        # taking blocks, and none writes any more when it is raised
        if failed:
            raise failed[0]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class InProcessShard(Shard):
    """The shard of an in-process CPU fit. When every chunk is dense binomial (an evaluator with
    ``begin``), one evaluation's sums are one batch of every chunk's 4 MiB cache blocks on
    :class:`BlockThreads` (about 200 blocks at 1M x 100 float64, against 6 chunks), one wait per
    evaluation: no thread waits long for one the OS descheduled. The blocks' sums are added in block
    order, the chunks' along the fixed tree: the bits of one thread. The validation pass, preparation,
    H.v products and other chunk kinds keep the pool over chunks (``threads``)."""

    blocks: BlockThreads | None = None

    def prepare(self, *args: Any, **kwargs: Any) -> Any:
        out = super().prepare(*args, **kwargs)
        evs = list(self.evaluators.values())
        if self.threads > 1 and evs and not self.streamed and all(hasattr(e, "begin") for e in evs):
            self.blocks = BlockThreads(self.threads)
        return out

    def chunk_sums(self, theta: Any) -> dict[int, Any]:
        if self.blocks is None:
            return super().chunk_sums(theta)
        ev, th, keep = self.evaluators, self._theta(theta), self.curvature
        order = [i for lo, hi in self.nodes for i in range(lo, hi)]
        passes = [ev[i].begin(th, keep) for i in order]
        items = [(p[1], j) for p in passes for j in range(p[0])]
        self.blocks(lambda k: items[k][0](items[k][1]), len(items))
        values = {i: p[2]() for i, p in zip(order, passes)}
        self.done += len(values)
        if not keep:
            return values
        self._handles = (np.array(theta, dtype=np.float64, copy=True), values)  # for node_hvp
        return {i: h.sums for i, h in values.items()}

    def close(self, wait: bool = True) -> None:
        super().close(wait)
        if self.blocks is not None:
            self.blocks.close()
            self.blocks = None


def fit_shard(shard: Shard, spec: FitSpec, send: Callback, *, mode: str, weighted: bool,
              info: dict[str, Any], stop: Stop | None = None, emitter_hook: Any = None) -> FitResult:
    """Validate, plan, prepare and fit a shard that holds every chunk of the data."""
    stats = merged_stats(dict(shard.stats()), shard.n_chunks)
    plan = make_plan(spec, stats, weighted_input=weighted)
    shard.prepare(spec, plan, curvature=needs_curvature(spec.solver))
    return run_fit(LocalEvaluator(shard), spec, plan, send, mode=mode, info=info, stop=stop,
                   emitter_hook=emitter_hook)


def fit_arrays(X_chunks: Sequence[Any], y_chunks: Sequence[Any], w_chunks: Sequence[Any] | None,
               spec: FitSpec, callback: Callback | None, stop: Stop | None = None) -> FitResult:
    """``in-process`` mode: fit on chunks held by this process."""
    ws = list(w_chunks) if w_chunks is not None else [None] * len(X_chunks)
    shard = InProcessShard({i: (x, y, w) for i, (x, y, w) in enumerate(zip(X_chunks, y_chunks, ws))},
                           len(X_chunks))
    info = {"n_chunks": len(X_chunks), "workers": []}
    if shard.on_gpu:
        return fit_shard(shard, spec, callback or (lambda msg: None), mode="in-process",
                         weighted=w_chunks is not None, info=info, stop=stop)
    shard.threads = in_process_threads()
    try:
        with single_threaded_blas():
            return fit_shard(shard, spec, callback or (lambda msg: None), mode="in-process",
                             weighted=w_chunks is not None, info=info, stop=stop)
    finally:
        shard.close()


def in_process_threads() -> int:
    """``dlogit.threads``: threads evaluating an in-process CPU fit's chunks (each with one BLAS thread);
    unset, the CPUs this process may run on."""
    from dlogit.config import setting

    value = setting("dlogit.threads")
    if value in (None, "", "auto"):
        return cpu_threads()
    if isinstance(value, bool) or not str(value).strip().isdigit() or int(value) < 1:
        raise ConfigError(f"dlogit.threads must be a positive integer or null, not {value!r}")
    return int(value)


def path_on_chunks(raw: list[tuple[Any, Any, Any]], spec: FitSpec, path: PathSpec, send: Callback, *,
                   mode: str, weighted: bool, info: dict[str, Any] | None = None,
                   stop: Callable[[], str | None] | None = None) -> PathResult:
    """Validate, plan and fit a whole path on chunks held by this process (in-process, or the one task
    of a worker-local path): the validation pass, lambda_max, the penalties, the folds, every point."""
    from dlogit.cv import needs_labels, path_penalties, run_path, with_folds
    from dlogit.engine.shard import ShardFoldSource
    from dlogit.folds import chunk_labels

    shard = Shard(dict(enumerate(raw)), len(raw))
    rows = shard.row_counts()
    stats = merged_stats(dict(shard.stats()), len(raw))
    labels = [chunk_labels(y) for _, y, _ in raw] if needs_labels(path) else None
    plan = with_folds(make_plan(spec, stats, weighted_input=weighted), path,
                      [rows[i] for i in range(len(raw))], labels)
    shard.prepare(spec, plan, curvature=needs_curvature(spec.solver))
    penalties = path_penalties(plan, path, LocalEvaluator(shard).sums, spec.fit_intercept)
    return run_path(ShardFoldSource(shard, plan.folds.n_folds), spec, plan, penalties, path.scoring, send,
                    mode=mode, info={"n_chunks": len(raw), **(info or {})}, stop=stop)
