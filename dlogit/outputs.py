"""Output paths, checked before any work starts (the CLI commands' one home of these rules).

* :func:`check_output` runs before a fit, a prediction or a report starts: the directory exists and is
  writable, the path is not a directory, and it is not one of the command's inputs (compared by
  resolved path and by inode, so ``./x.csv``, ``x.csv`` and a hard link are the same file; a directory
  input reads every data file below it, by the readers' own file-name rule);
* :func:`check_distinct` checks a command's outputs against each other.

The files are then written with :func:`dlogit.files.atomic_write`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from dlogit.errors import OutputError


def _same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name one file: the same resolved path (symbolic links followed, whether
    or not it exists yet) or the same inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str] | None] = (),
                 suffixes: tuple[str, ...] = (), what: str = "output") -> str:
    """Check that ``path`` can be written (before any work starts); return it as a string.

    Raises :class:`~dlogit.errors.OutputError` (one line) when the path is empty, a directory, in a
    missing or read-only directory, has none of ``suffixes`` (when given), or names one of ``inputs``.
    """
    text = os.fspath(path)
    if not text:
        raise OutputError(f"the {what} path is empty")
    if os.path.isdir(text):
        raise OutputError(f"cannot write the {what} to {text}: it is a directory")
    directory = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(directory):
        raise OutputError(f"cannot write the {what} to {text}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the {what} to {text}: directory {directory} is not writable")
    for src in inputs:
        if src is None:
            continue
        src = os.fspath(src)
        if "://" in src:
            continue
        if _names_input(text, src):
            raise OutputError(f"the {what} {text} is one of the inputs ({src}); choose another path")
    if suffixes and not text.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise OutputError(f"the {what} file must end in {' or '.join(suffixes)}, got {text!r}")
    return text


def _names_input(out: str, src: str) -> bool:
    """Whether writing ``out`` would replace a file that ``src`` (a file, a glob, a directory) reads."""
    import fnmatch

    if any(c in src for c in "*?["):  # a glob: out matches it component by component (* stops at /)
        pat = os.path.abspath(src).split(os.sep)
        parts = os.path.abspath(out).split(os.sep)
        if len(pat) == len(parts) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pat)):
            return True
        import glob

        return any(_same_file(out, f) for f in glob.glob(src) if os.path.isfile(f))
    if os.path.isdir(src):  # a directory of parts: a data file anywhere below it would be read
        from dlogit.io.source import kind_of_name

        base = os.path.basename(out)
        inside = os.path.realpath(out).startswith(os.path.realpath(src).rstrip(os.sep) + os.sep)
        return inside and kind_of_name(out) is not None and not base.startswith((".", "_"))
    return os.path.exists(src) and _same_file(out, src)


def check_distinct(paths: dict[str, str | os.PathLike[str] | None]) -> None:
    """Raise :class:`OutputError` when two named outputs (``{"--out": path, ...}``) are the same file.

    Every command that writes more than one file (a model and a checkpoint, data and its labels) checks
    them against each other with this, as :func:`check_output` checks each against the inputs."""
    seen: list[tuple[str, str]] = []
    for name, p in paths.items():
        if p is None:
            continue
        p = os.fspath(p)
        for other_name, other in seen:
            if os.path.abspath(p) == os.path.abspath(other) or _same_file(p, other):
                raise OutputError(f"{name} and {other_name} name the same file ({p})")
        seen.append((name, p))
