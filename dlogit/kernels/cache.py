"""Is the on-disk Numba cache of the fused CPU kernels filled, for this Numba, this dlogit and this CPU?

Answered without importing Numba or compiling: a stamp file, written by :func:`compile_kernels` after
the kernel modules (:mod:`dlogit.kernels._cpu_jit`, :mod:`dlogit.kernels._sparse_jit`) were imported
(compiled into the cache, or loaded from it), sits next to Numba's own cache files. Its name holds a key
of what the cached code depends on: the Numba and llvmlite versions, Python's, the kernel sources (text,
size and modification time, which Numba's index also checks) and the CPU (model and feature flags).

When the stamp is missing, :func:`ensure_ready` starts one background process (``python -m
dlogit.kernels.cache``, at low priority) that fills the cache and writes the stamp, and says "not
ready": ``dlogit.cpu-kernel: auto`` fits then use the BLAS/SciPy path for the whole fit
(:func:`dlogit.engine.cpu_kernel_setting`, which builds every fit's spec), and the worker preload does
not compile (:func:`dlogit.worker.warm_up`). So no fit waits for a compile; the next fit after the
compile finished uses the fused kernels.

Where: ``NUMBA_CACHE_DIR`` when set (Numba caches there too); else the kernels' ``__pycache__`` when it is
writable; else a user cache directory (``$XDG_CACHE_HOME/dlogit`` or ``~/.cache/dlogit``; Numba then
caches in its own user-wide directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCES = ("_cpu_jit.py", "_sparse_jit.py")
#: a compile that has held its lock this long is taken as dead (the lock is removed, a new one starts)
STALE_LOCK_SECONDS = 900.0


def cache_dir() -> str:
    """The directory of the stamp (see the module docstring)."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        return env
    pycache = os.path.join(_HERE, "__pycache__")
    if os.access(pycache if os.path.isdir(pycache) else _HERE, os.W_OK):
        return pycache
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dlogit")


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def _cpu() -> str:
    """The CPU model and feature flags (what Numba's cached machine code is specific to)."""
    text = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    text += line
                elif not line.strip() and text:
                    break  # the first processor's block is enough
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{text}"


def key() -> str:
    """What the cached kernels depend on, hashed (16 hex digits)."""
    h = hashlib.sha256()
    for part in (_version("numba"), _version("llvmlite"), sys.version, _cpu()):
        h.update(part.encode() + b"\0")
    for name in _SOURCES:
        path = os.path.join(_HERE, name)
        st = os.stat(path)
        with open(path, "rb") as f:
            h.update(f.read())
        h.update(f"{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def stamp_path() -> str:
    return os.path.join(cache_dir(), f"dlogit-kernels-{key()}.ok")


def ready() -> bool:
    """Whether the fused kernels load from the disk cache here (no compile); never compiles."""
    return os.path.exists(stamp_path())


def cannot_cache() -> bool:
    """Whether a compile here found that Numba cannot cache the kernels (no writable cache directory):
    ``auto`` then stays on BLAS / SciPy, and nothing compiles in the background."""
    return os.path.exists(stamp_path() + ".nocache")


def ensure_ready() -> bool:
    """:func:`ready`; when not, start the background compile (once: a fresh lock means one runs)."""
    path = stamp_path()
    if os.path.exists(path):
        return True
    if not os.path.exists(path + ".nocache"):  # no usable cache here: every process would compile
        start_background_compile(path)
    return False


def start_background_compile(path: str | None = None) -> bool:
    """Start ``python -m dlogit.kernels.cache`` to fill the cache; False when one already runs."""
    path = path or stamp_path()
    lock = path + ".lock"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            if time.time() - os.stat(lock).st_mtime > STALE_LOCK_SECONDS:
                os.unlink(lock)
        except FileNotFoundError:
            pass
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except OSError:  # another process compiles (or the directory is not writable)
        return False
    os.close(fd)
    try:
        subprocess.Popen([sys.executable, "-m", "dlogit.kernels.cache", path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         close_fds=True)
    except OSError:
        os.unlink(lock)
        return False
    return True


def compile_kernels(path: str) -> bool:
    """Import (compile or load) every fused kernel, then write the stamp ``path`` (or ``path.nocache``
    when Numba could not cache them). Returns whether the cache is filled."""
    from dlogit.kernels import _cpu_jit, _sparse_jit

    kernels = [_cpu_jit.dense_binomial_sums, _sparse_jit.csr_binomial_sums, _sparse_jit.csr_binomial_hvp,
               _sparse_jit.csr_multinomial_sums, _sparse_jit.csr_multinomial_hvp]
    cached = all(type(getattr(k, "_cache", None)).__name__ not in ("NullCache", "NoneType") for k in kernels)
    target = path if cached else path + ".nocache"
    tmp = f"{target}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"numba": _version("numba"), "python": sys.version, "pid": os.getpid(),
                   "written": time.time()}, f)
    os.replace(tmp, target)
    return cached


def _main(path: str) -> None:
    try:
        try:
            os.nice(10)  # a background job: the fit that started it comes first
        except OSError:
            pass
        compile_kernels(path)
    finally:
        try:
            os.unlink(path + ".lock")
        except OSError:
            pass


if __name__ == "__main__":
    _main(sys.argv[1])
