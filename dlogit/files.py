"""Files dlogit writes: written atomically with the umask's mode.

The one home of this rule (the CLI commands, the model file, checkpoints and scheduler files use it;
the checks before any work starts are :mod:`dlogit.outputs`'):

* :func:`atomic_write` writes to a temporary file beside the target and renames it into place, so a
  reader never sees half a file and a failure leaves the old file (or nothing); the new file gets the
  mode ``0o666 & ~umask`` that ``open()`` would have given it (``mkstemp`` alone makes it 0600).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from dlogit.errors import OutputError


def current_umask() -> int:
    """This process's umask (read from /proc where it can be, without changing it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # not thread-safe, but only reached where /proc is missing
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None], mode: int | None = None) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    The file ends up with ``mode`` when given, else the mode a plain ``open(path, "w")`` would give it
    (``0o666 & ~umask``); on any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OutputError(f"cannot write {path}: directory {directory} does not exist")
    suffix = "".join(os.path.splitext(path)[1:])
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dlogit-", suffix=suffix, dir=directory)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, (0o666 & ~current_umask()) if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
