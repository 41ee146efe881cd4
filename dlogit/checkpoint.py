"""Checkpoints: the solver's whole state, written atomically, so that a fit resumes exactly.

``DIR/checkpoint.npz`` (NumPy only, no pickles) holds the solver state (the arrays
:func:`dlogit.solvers.state_to_arrays` derives from the frozen state's fields, keys prefixed
``state.``), the history so far
(``history.loss``, ``history.grad_norm``, ``history.step_seconds``) and a JSON ``meta``:
``format`` "dlogit-checkpoint", ``version`` 1, the run id, the driver's epoch, the step, the solver, the parameters that
determine the iterates (:meth:`dlogit.spec.FitSpec.trajectory`), the data's fingerprint (from the
validation pass: rows, features, labels, weights, column moments), the model's shape, and the time.

A resume refuses a checkpoint whose data or parameters differ, naming what differs; ``max_iter`` and
``tol`` may change between runs. The driver (wherever the solver loop runs) writes every
``every`` seconds, when it is stopped (Ctrl-C, SIGTERM, a cancelled fit) and at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dlogit.errors import ConfigError
from dlogit.files import atomic_write

if TYPE_CHECKING:
    from dlogit.solvers import SolverState

FORMAT = "dlogit-checkpoint"
VERSION = 1
FILENAME = "checkpoint.npz"


def checkpoint_path(directory: str) -> str:
    return os.path.join(directory, FILENAME)


@dataclass
class Loaded:
    state: SolverState
    history: dict[str, np.ndarray]
    meta: dict[str, Any]


def check_directory(directory: str, resume: bool) -> None:
    """Before any work: the directory must exist (or be creatable) and be writable; without
    ``resume`` it must not hold a checkpoint already (never overwrite one silently)."""
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigError(f"--checkpoint {directory} is a file, not a directory")
    if not os.path.isdir(directory):
        parent = os.path.dirname(os.path.abspath(directory))
        if not os.path.isdir(parent):
            raise ConfigError(f"cannot create checkpoint directory {directory}: {parent} does not exist")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create checkpoint directory {directory}: {exc.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"checkpoint directory {directory} is not writable")
    path = checkpoint_path(directory)
    if resume:
        if not os.path.isfile(path):
            raise ConfigError(f"nothing to resume: {directory} holds no {FILENAME}")
    elif os.path.exists(path):
        step = "?"
        try:
            step = str(read_meta(path).get("step", "?"))
        except ConfigError:
            pass
        raise ConfigError(f"{directory} already holds a checkpoint (step {step}): add --resume to "
                          "continue it, or choose another directory")


def check_where_written(directory: str, resume: bool, client_view: dict[str, Any] | None, where: str) -> None:
    """On the process that will write the checkpoints (a worker), before any step: the directory the
    client checked must be there and writable, and with ``resume`` hold the very checkpoint the client
    saw (``client_view``: its ``run``, ``step`` and ``written``) -- not a stale file of its own.
    ``where`` names this process and host in the errors (the client's own check passed)."""
    directory = os.fspath(directory)
    shared = "is the directory on a filesystem the client and the workers share?"
    if not os.path.isdir(directory):
        raise ConfigError(f"checkpoint directory {directory} does not exist on {where}, where the fit "
                          f"writes its checkpoints ({shared})")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"checkpoint directory {directory} is not writable on {where}, where the fit "
                          "writes its checkpoints")
    path = checkpoint_path(directory)
    if resume:
        if not os.path.isfile(path):
            raise ConfigError(f"nothing to resume on {where}: {directory} holds no {FILENAME} there "
                              f"({shared})")
        seen = read_meta(path)
        keys = ("run", "step", "written")
        if client_view is not None and any(seen.get(k) != client_view.get(k) for k in keys):
            raise ConfigError(f"the {FILENAME} in {directory} on {where} (step {seen.get('step')}, written "
                              f"{seen.get('written')}) is not the one this client sees (step "
                              f"{client_view.get('step')}, written {client_view.get('written')}): {shared}")
    elif os.path.exists(path):
        raise ConfigError(f"{directory} already holds a checkpoint on {where} (step "
                          f"{read_meta(path).get('step', '?')}), not seen by the client: {shared}")


def read_meta(path: str) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"]))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear line
        raise ConfigError(f"{path} is not a readable dlogit checkpoint ({type(exc).__name__})") from None


LOCKNAME = ".checkpoint.lock"


@contextlib.contextmanager
def _locked(directory: str, mode: int | None = None) -> Iterator[None]:
    """An exclusive lock on ``DIR/.checkpoint.lock`` (writers of one directory take turns).

    The lock file gets the checkpoint's own mode. Where it cannot be had -- another user's lock file
    left in a shared directory, a filesystem without ``flock`` (Lustre ``noflock``, some FUSE mounts) --
    the checkpoint is still written, unfenced, with a warning: a lock must never cost the fit its
    checkpoints."""
    import fcntl

    path = os.path.join(directory, LOCKNAME)
    fd = None
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            fd = os.open(path, os.O_RDONLY)  # flock needs no write access
        if mode is not None:
            with contextlib.suppress(OSError):  # not ours: keep its mode
                os.fchmod(fd, mode)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        warnings.warn(f"cannot lock {path} ({exc.strerror or exc}): checkpoints are written without the "
                      "fence that keeps an older driver from replacing a newer checkpoint", RuntimeWarning,
                      stacklevel=3)
        if fd is not None:
            os.close(fd)
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _fence_of(path: str) -> tuple[str, int, int] | None:
    """``(run, epoch, step)`` of the checkpoint at ``path``, or ``None`` (no file, or unreadable)."""
    try:
        meta = read_meta(path)
    except ConfigError:
        return None
    return str(meta.get("run")), int(meta.get("epoch", 0)), int(meta.get("step", 0))


class Checkpointer:
    """Writes checkpoints for one fit (see the module docstring).

    ``epoch`` is the incarnation of the fit's driver (a distributed fit's driver restarted elsewhere
    has a higher one): under a lock file, a write never replaces a checkpoint of the same run with a
    higher ``(epoch, step)`` -- a frozen driver that wakes up after its replacement writes nothing.
    """

    def __init__(self, directory: str, every: float, meta: dict[str, Any], mode: int | None = None,
                 epoch: int = 0) -> None:
        self.directory = directory
        self.mode = mode  # the client's 0o666 & ~umask when the fit runs on a worker; else this process's
        self.path = checkpoint_path(directory)
        self.every = float(every)
        self.meta = meta
        self.epoch = int(epoch)
        self._last = time.monotonic()
        self.written = 0
        self.refused = 0  # writes fenced off by a newer driver's checkpoint

    def due(self) -> bool:
        return self.every > 0 and time.monotonic() - self._last >= self.every

    def write(self, state: SolverState, history: dict[str, list[float]]) -> bool:
        """Write the checkpoint; ``False`` when a newer driver's checkpoint fenced it off."""
        from dlogit.solvers import state_to_arrays

        arrays = {f"state.{k}": v for k, v in state_to_arrays(state).items()}
        for k, v in history.items():
            arrays[f"history.{k}"] = np.asarray(v, dtype=np.float64)
        step = int(state.n_iter)
        meta = {"format": FORMAT, "version": VERSION, **self.meta, "epoch": self.epoch, "step": step,
                "status": state.status, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta, default=str)), **arrays)

        self._last = time.monotonic()
        with _locked(self.directory, self.mode):
            there = _fence_of(self.path)
            if there is not None and there[0] == str(self.meta.get("run")) and there[1:] > (self.epoch, step):
                self.refused += 1
                return False
            atomic_write(self.path, save, mode=self.mode)
        self.written += 1
        return True


def load(directory: str, expect: dict[str, Any]) -> Loaded:
    """Read ``DIR/checkpoint.npz`` and check it against ``expect`` (the meta this fit would write)."""
    from dlogit.solvers import state_from_arrays

    path = checkpoint_path(directory)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ConfigError(f"nothing to resume: {directory} holds no {FILENAME}") from None
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{path} is not a readable dlogit checkpoint ({type(exc).__name__})") from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (KeyError, ValueError):
        raise ConfigError(f"{path} is not a dlogit checkpoint (no metadata)") from None
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
        raise ConfigError(f"{path} is not a dlogit checkpoint this version can read")
    for key, what in (("data", "data"), ("params", "parameters"), ("shape", "model shape")):
        if meta.get(key) != expect.get(key):
            detail = _difference(meta.get(key), expect.get(key))
            raise ConfigError(f"cannot resume {path}: its {what} differ from this run's ({detail})")
    state = state_from_arrays({k[6:]: v for k, v in arrays.items() if k.startswith("state.")})
    history = {k[8:]: v for k, v in arrays.items() if k.startswith("history.")}
    return Loaded(state, history, meta)


def _difference(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        return "; ".join(f"{k}: checkpoint {old.get(k)!r}, now {new.get(k)!r}" for k in keys[:3])
    return "the data's fingerprint changed" if isinstance(old, str) else f"{old!r} vs {new!r}"


# --------------------------------------------------------------------------------------------------
# in-memory copies of the solver state, sent by a distributed fit's driver to its replicas


def state_copy(state: SolverState, since: tuple[int, int] | None = None) -> dict[str, Any]:
    """The solver part of an in-memory checkpoint copy: ``{"state": arrays, "pairs": (first, last)}``
    (``pairs``: the numbers of the L-BFGS pairs it holds, None without a memory).

    With ``since = (n_iter, last)`` -- the step and the newest pair's number of a copy the receiver
    holds -- and an L-BFGS state that still holds that pair, the copy is a delta: ``"state"`` without
    the memory and ``"delta": {"base": n_iter, "pairs": (first, last), "S", "Y"}`` carrying only the
    pairs pushed since (:func:`merge_copy` completes it). Otherwise it is whole.
    """
    from dlogit.solvers import Pairs, state_to_arrays

    memory = getattr(state, "memory", None)
    if not isinstance(memory, Pairs):
        return {"state": state_to_arrays(state), "pairs": None}
    first, last = memory.numbers()
    if since is None or not first <= since[1] <= last:
        return {"state": state_to_arrays(state), "pairs": (first, last)}
    new = memory.pairs()[memory.count - (last - since[1]):]
    n = memory.n
    S = np.stack([p[0] for p in new]) if new else np.empty((0, n))
    Y = np.stack([p[1] for p in new]) if new else np.empty((0, n))
    return {"state": state_to_arrays(state, structured=False),
            "delta": {"base": int(since[0]), "pairs": (first, last), "S": S, "Y": Y}}


def merge_copy(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any] | None:
    """The copy a replica keeps when ``new`` arrives on top of ``old`` (both ``{"epoch", "n_iter",
    **payload}`` with the payload from :func:`state_copy`): ``new`` when it is whole; a delta
    completed with ``old``'s pairs when ``old`` is the copy it was made against; else ``old`` (a
    replica that missed a copy keeps its older complete one until the next whole copy)."""
    delta = new.get("delta")
    if delta is None:
        return new
    if old is None or old.get("pairs") is None or \
            (old["epoch"], old["n_iter"]) != (new["epoch"], delta["base"]):
        return old
    o_first, o_last = old["pairs"]
    first, last = delta["pairs"]
    if not (o_first <= first <= o_last + 1 and o_last + delta["S"].shape[0] == last):
        return old  # not the continuation of the pairs held (cannot happen between two copies of one driver)
    keep = old["state"]["extra.S"][first - o_first:], old["state"]["extra.Y"][first - o_first:]
    arrays = {**new["state"], "extra.S": np.concatenate([keep[0], delta["S"]]),
              "extra.Y": np.concatenate([keep[1], delta["Y"]])}
    out = {k: v for k, v in new.items() if k != "delta"}
    out.update(state=arrays, pairs=(first, last))
    return out
