"""Opening data through fsspec: local paths, URLs, globs, directories, compressed text; error lines.

Every reader opens its files here, so local paths and fsspec URLs (``s3://``, ``gs://``,
``memory://``, ``file://`` ...) take the same code path, a missing backend package is named, and any
failure to open becomes one :class:`~dlogit.errors.DataError` line: ``cannot read PATH: REASON``
(``cannot read PATH on the workers: REASON`` while a scan runs on the workers).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import io
import posixpath
import re
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

from dlogit.errors import DataError
from dlogit.io.source import kind_of_name, split_compression

T = TypeVar("T")

_WHERE: contextvars.ContextVar[str] = contextvars.ContextVar("dlogit_io_where", default="")

#: fsspec protocols whose backend is a separate package
_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
             "abfss": "adlfs", "adl": "adlfs", "http": "aiohttp", "https": "aiohttp", "sftp": "paramiko",
             "ssh": "paramiko", "hf": "huggingface_hub", "webhdfs": "requests"}
_GLOB_CHARS = "*?["
_BLOCK = 16 << 20


def on_workers(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` with read errors saying "on the workers" (the task body of a remote scan)."""
    token = _WHERE.set(" on the workers")
    try:
        return fn(*args)
    finally:
        _WHERE.reset(token)


def read_error(path: str, exc: BaseException) -> DataError:
    """``cannot read PATH[ on the workers]: REASON`` as one line."""
    if isinstance(exc, FileNotFoundError):
        reason = "No such file or directory"
    elif isinstance(exc, IsADirectoryError):
        reason = "Is a directory"
    elif isinstance(exc, PermissionError):
        reason = "Permission denied"
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
    return DataError(f"cannot read {path}{_WHERE.get()}: {reason}")


def filesystem(path: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for a local path or a URL; a missing backend is named."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(path)
    except ImportError as exc:
        proto = path.split("://", 1)[0].lower()
        pkg = _BACKENDS.get(proto)
        hint = f"{proto}:// URLs need the {pkg} package (pip install {pkg})" if pkg else str(exc)
        raise DataError(f"cannot read {path}: {hint}") from None
    except ValueError as exc:  # unknown protocol
        raise DataError(f"cannot read {path}: {exc}") from None


def is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def display(fs: Any, p: str) -> str:
    """How to name file ``p`` of ``fs`` in messages (and pieces): a plain path, or a URL."""
    return p if is_local(fs) else fs.unstrip_protocol(p)


def _hidden(name: str) -> bool:
    base = posixpath.basename(name.rstrip("/"))
    return base.startswith((".", "_")) or base.endswith(".crc")


_NOTE_NAME = re.compile(r"(README|LICENSE|NOTICE)", re.IGNORECASE)


def is_note(name: str) -> bool:
    """A file kept beside data parts that is no data: ``README.txt``, ``NOTES.md``, ``LICENSE`` ..."""
    base = posixpath.basename(name.rstrip("/"))
    stem, ext = posixpath.splitext(base)
    return ext.lower() in (".txt", ".md", ".rst") or bool(_NOTE_NAME.match(stem))


_METADATA = (".json", ".yaml", ".yml")


def is_sidecar(name: str) -> bool:
    """A file writers keep beside data parts that is no part: a note (:func:`is_note`), a hidden file,
    ``_SUCCESS``, ``_metadata``, ``_common_metadata``, a ``.crc`` checksum, metadata in JSON/YAML
    (``schema.json``)."""
    base = posixpath.basename(name.rstrip("/"))
    stem = split_compression(base)[0]
    return _hidden(base) or is_note(base) or posixpath.splitext(stem)[1].lower() in _METADATA


#: set by :func:`listing` for the files :func:`expand` picks during one plan
_FORMAT: contextvars.ContextVar[str | None] = contextvars.ContextVar("dlogit_io_format", default=None)
_SKIPPED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("dlogit_io_skipped", default=None)


@contextlib.contextmanager
def listing(fmt: str | None) -> Iterator[list[str]]:
    """While it lasts, :func:`expand` reads a directory's files of no known data kind as ``fmt`` (the
    format given explicitly; ``None``: not given) and appends a notice naming the sidecar files it
    skips to the list it yields."""
    notices: list[str] = []
    tokens = (_FORMAT.set(fmt), _SKIPPED.set(notices))
    try:
        yield notices
    finally:
        _SKIPPED.reset(tokens[1])
        _FORMAT.reset(tokens[0])


def _shown(files: list[str], with_kind: bool = False) -> str:
    names = [posixpath.basename(f) + (f" ({kind_of_name(f)})" if with_kind else "") for f in files[:5]]
    return ", ".join(names) + (" ..." if len(files) > 5 else "")


def _pick(path: str, found: list[str], is_data: Callable[[str], bool] | None, glob: bool) -> list[str]:
    """The data files of ``found`` (``is_data``: the files of this format by name).

    A file of another known data kind is an error naming it (reading a directory of CSV and Parquet
    parts must not quietly train on the CSV ones); sidecar files (:func:`is_sidecar`) are skipped with
    a notice; a file of no known kind is read as this format when the path is a glob or the format was
    given (Spark's ``part-00000``, Hive's ``000000_0``, Dask's ``0.part``), else it is an error.
    """
    if is_data is None:
        return found
    data, skipped, other, unknown = [], [], [], []
    for f in found:
        base = posixpath.basename(f)
        if _hidden(base):
            skipped.append(f)
        elif is_data(f):
            data.append(f)
        elif glob and kind_of_name(f) == "txt" and not _NOTE_NAME.match(base):
            unknown.append(f)  # data/*.txt with --format libsvm: the glob names them
        elif is_sidecar(f):
            skipped.append(f)
        elif kind_of_name(f) not in (None, "txt"):
            other.append(f)
        else:
            unknown.append(f)
    if other:
        raise DataError(f"{path} also holds {len(other)} file(s) of another format: {_shown(other, True)}; "
                        "move them out, or name the data files with a glob")
    fmt = _FORMAT.get()
    if unknown and not glob and fmt is None:
        raise DataError(f"{path} also holds {len(unknown)} file(s) of no known format: {_shown(unknown)}; "
                        "name the format with --format to read them as parts, or move them out")
    data = sorted(data + unknown)
    notices = _SKIPPED.get()
    if skipped and data and notices is not None:
        notices.append(f"skipped {len(skipped)} file(s) of {path} that are no data: {_shown(skipped)}")
    return data


def expand(path: str, is_data: Callable[[str], bool] | None = None) -> list[str]:
    """The files ``path`` names, sorted: itself, a glob's matches, or a directory's data files.

    Files are returned as :func:`display` names (URLs keep their protocol). In a directory, hidden
    files and ``_SUCCESS``-style markers are skipped; ``is_data`` (when given) picks the files by name,
    with the rules of :func:`_pick` for the others.
    """
    fs, p = filesystem(path)
    try:
        if any(c in p for c in _GLOB_CHARS):
            found = sorted(f for f in fs.glob(p) if not fs.isdir(f))
            if not found:
                raise DataError(f"cannot read {path}{_WHERE.get()}: no files match the pattern")
            found = _pick(path, found, is_data, glob=True)
            if not found:
                raise DataError(f"cannot read {path}{_WHERE.get()}: no data files match the pattern")
            return [display(fs, f) for f in found]
        if fs.isdir(p):
            found = sorted(f for f in fs.find(p)
                           if not any(_hidden(part) for part in posixpath.relpath(f, p).split("/")))
            found = _pick(path, found, is_data, glob=False)
            if not found:
                raise DataError(f"cannot read {path}{_WHERE.get()}: the directory holds no data files")
            return [display(fs, f) for f in found]
        if not fs.exists(p):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", p)
        return [display(fs, p)]
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - every way a listing fails becomes one line
        raise read_error(path, exc) from None


def size(path: str) -> int:
    fs, p = filesystem(path)
    return int(fs.size(p))


@contextlib.contextmanager
def open_binary(path: str, compression: str | None = "infer") -> Iterator[IO[bytes]]:
    """A binary stream of ``path`` (decompressed when its name ends in .gz/.bz2/.xz/.zst).

    Errors opening it (not reading it) become :func:`read_error` lines.
    """
    fs, p = filesystem(path)
    if compression == "infer":
        compression = split_compression(p)[1]
    try:
        raw = fs.open(p, "rb")
    except Exception as exc:  # noqa: BLE001
        raise read_error(path, exc) from None
    with contextlib.ExitStack() as stack:
        stack.callback(raw.close)
        yield stack.enter_context(_decompressed(raw, compression, path))


def _decompressed(raw: IO[bytes], compression: str | None, path: str) -> Any:
    """``raw`` decompressed by fsspec's reader of ``compression`` (the names :func:`split_compression`
    gives: gzip, bz2, xz), except zstd: fsspec's zstandard reader stops at the end of the first frame on
    the zstandard releases whose ``stream_reader`` does not yet read across frames, and reads no lines."""
    if compression is None:
        return contextlib.nullcontext(raw)
    if compression == "zstd":
        try:
            import zstandard
        except ImportError:
            raise DataError(f"cannot read {path}: .zst files need the zstandard package "
                            "(pip install zstandard)") from None
        import io

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
    from fsspec.compression import compr

    if compression not in compr:
        raise DataError(f"cannot read {path}: unknown compression {compression!r}")
    return compr[compression](raw, mode="rb")


def read_range(path: str, offset: int, length: int) -> bytes:
    """``length`` bytes of an uncompressed file from ``offset``."""
    fs, p = filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            f.seek(offset)
            return f.read(length)
    except Exception as exc:  # noqa: BLE001
        raise read_error(path, exc) from None


def read_all(path: str) -> bytes:
    """The whole (decompressed) content of ``path``."""
    try:
        with open_binary(path) as f:
            return f.read()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt archive, a vanished file ...
        raise read_error(path, exc) from None


def _gunzip(raw: IO[bytes], path: str) -> Iterator[bytes]:
    """The decompressed content of a gzip stream (several members, zero padding after a member as
    :mod:`gzip` reads them), inflated by :mod:`zlib` in 1 MiB reads: :class:`gzip.GzipFile` feeds zlib
    8 KiB at a time on Python < 3.12, about 1.5x slower."""
    import zlib

    d = zlib.decompressobj(31)
    started = False  # some compressed byte of the current member was read
    after = False  # a member ended: zero bytes may pad the file here
    try:
        while True:
            data = raw.read(1 << 20)
            if not data:
                break
            while data:
                if not started and after:
                    data = data.lstrip(b"\x00")
                    if not data:
                        break
                started = True
                out = d.decompress(data)
                if out:
                    yield out
                if not d.eof:
                    break
                data, d, started, after = d.unused_data, zlib.decompressobj(31), False, True
        if started and not d.eof:
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")
    except zlib.error:
        # the error gzip itself gives (its wording: "Not a gzipped file (b'no')", ...)
        import gzip

        fs, p = filesystem(path)
        with fs.open(p, "rb") as again, gzip.GzipFile(fileobj=again, mode="rb") as g:
            while g.read(_BLOCK):
                pass
        raise


def iter_blocks(path: str, block: int = _BLOCK) -> Iterator[bytes]:
    """The (decompressed) content of ``path`` in blocks of about ``block`` bytes (a gzip file in the
    blocks zlib gives, of a few MiB)."""
    try:
        if split_compression(path)[1] == "gzip":
            with _open_raw(path) as raw:
                yield from _gunzip(raw, path)
            return
        with open_binary(path) as f:
            while True:
                b = f.read(block)
                if not b:
                    return
                yield b
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise read_error(path, exc) from None


def iter_range(path: str, offset: int, length: int, block: int = _BLOCK) -> Iterator[bytes]:
    """``length`` bytes of an uncompressed file from ``offset``, in blocks of ``block`` bytes."""
    fs, p = filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            f.seek(offset)
            left = length
            while left > 0:
                b = f.read(min(block, left))
                if not b:
                    return
                left -= len(b)
                yield b
    except Exception as exc:  # noqa: BLE001
        raise read_error(path, exc) from None


class _Range(io.RawIOBase):
    """``length`` bytes of a binary file from ``offset``, read as a stream (then end of file)."""

    def __init__(self, f: IO[bytes], offset: int, length: int) -> None:
        super().__init__()
        self._f = f
        self._f.seek(offset)
        self._left = length

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._f.read(size) if size else b""
        self._left -= len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


@contextlib.contextmanager
def open_range(path: str, offset: int, length: int) -> Iterator[IO[bytes]]:
    """A stream of ``length`` bytes of an uncompressed file from ``offset`` (read in the blocks its
    reader asks for: no copy of the whole range in memory)."""
    with _open_raw(path) as raw:
        yield _Range(raw, offset, length)  # type: ignore[misc]


def _open_raw(path: str) -> IO[bytes]:
    """``path`` opened as it is stored (no decompression); a failure is the reader's one-line error."""
    fs, p = filesystem(path)
    try:
        return fs.open(p, "rb")
    except Exception as exc:  # noqa: BLE001
        raise read_error(path, exc) from None
