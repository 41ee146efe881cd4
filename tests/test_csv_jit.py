"""dlogit's own CSV parser (dlogit.io._csv_jit, driven by dlogit.io.csv.jit_scan_read): every value
equal, bit for bit, to Python's correctly rounded ``float`` of its text; the same chunks, rows and
arrays as the pyarrow/pandas read; compressed files equal to plain ones; anything it does not decide
handed to the other readers, whose values and one-line errors stay as they were.

The parser reads sources of at least ``JIT_MIN_BYTES`` of text once Numba's cache holds it; the tests
lower that bound and compile it first.
"""

from __future__ import annotations

import bz2
import gzip
import lzma

import numpy as np
import pytest

from dlogit.data import load_local
from dlogit.errors import DataError
from dlogit.io import Source, plan
from dlogit.io import csv as csvio


@pytest.fixture(autouse=True, scope="module")
def _compiled():
    """The parser compiled (or loaded from Numba's cache) here: a read finding no compiled parser takes
    the pyarrow path and compiles it in the background."""
    from dlogit.io import _csv_jit

    _csv_jit.warm()
    assert _csv_jit.ready()


@pytest.fixture
def jit(monkeypatch):
    """The parser for every size, in parts of a few lines (several threads, cuts inside the file)."""
    monkeypatch.setattr(csvio, "JIT_MIN_BYTES", 0)
    monkeypatch.setattr(csvio, "_JIT_PART", 64)


def _off(monkeypatch):
    monkeypatch.setattr(csvio, "JIT_MIN_BYTES", 1 << 62)


def _bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def _used(path: str, **fields) -> bool:
    """Whether the parser (not the pyarrow/pandas reader) reads ``path``."""
    return csvio.jit_scan_read(plan(Source(path, **fields)), min_bytes=0) is not None


def _texts(rng: np.random.Generator, n: int) -> list[str]:
    """Decimals of every kind a file holds: random 17-digit ones, short ones, shortest round-trip
    text of doubles over the whole normal range, integers, exact binary fractions, leading zeros."""
    digits = rng.integers(10 ** 16, 10 ** 17, n, dtype=np.int64)
    wide = rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n)
    out = [f"0.{d}" for d in digits[: n // 8]]
    out += [f"-{d}e{e}" for d, e in zip(digits[n // 8: n // 4], rng.integers(-320, 290, n))]
    out += [f"{v:.{k}f}" for k, v in zip(rng.integers(0, 5, n // 8), rng.standard_normal(n) * 100)]
    out += [repr(float(v)) for v in wide[: n // 8]]
    out += [repr(float(v)) for v in rng.standard_normal(n // 8) * 1e-3]  # 0.000123...: 20+ digits
    out += [str(int(v)) + ".0" for v in rng.integers(-2 ** 56, 2 ** 56, n // 16)]
    out += [f"{int(v)}.5" for v in rng.integers(-2 ** 50, 2 ** 50, n // 16)]
    out += [f"{d}{k:02d}e{e}" for d, k, e in zip(digits[: n // 8], rng.integers(0, 100, n), rng.integers(-300, 280, n))]
    out += ["0", "-0", "-0.0", ".5", "5.", "+1.5", "1E+05", "2e-3", "1e22", "1e23", "9007199254740993",
            "123456789012345678", "0.30000000000000004", "1.7976931348623157e308", "2.2250738585072014e-308",
            "000123.4500", "7.2057594037927933e16"]
    return out


def _table(texts: list[str], d: int) -> list[list[str]]:
    rows = -(-len(texts) // d)
    padded = texts + ["1"] * (rows * d - len(texts))
    return [padded[i * d:(i + 1) * d] for i in range(rows)]


def _write(path, header: list[str] | None, rows: list[list[str]], sep: str = ",", nl: str = "\n") -> str:
    lines = ([sep.join(header)] if header else []) + [sep.join(r) for r in rows]
    path.write_bytes((nl.join(lines) + nl).encode())
    return str(path)


def test_values_are_float_of_the_text(tmp_path, jit):
    """Each value is Python's ``float()`` of its text, bit for bit (signed zeros included); the label
    column keeps its integers."""
    rng = np.random.default_rng(7)
    texts = _texts(rng, 16_000)
    d = 7
    rows = _table(texts, d)
    labels = [str(int(v)) for v in rng.integers(-3, 3, len(rows))]
    path = _write(tmp_path / "f.csv", [f"x{j}" for j in range(d)] + ["y"],
                  [r + [lab] for r, lab in zip(rows, labels)])
    assert _used(path, label="y")
    data = load_local(path, label="y")
    expect = np.array([[float(v) for v in r] for r in rows])
    np.testing.assert_array_equal(_bits(data.X), _bits(expect))
    np.testing.assert_array_equal(data.y, np.array(labels, dtype=np.int64))
    assert data.y.dtype == np.int64 and data.X.flags.c_contiguous


@pytest.mark.parametrize("shape", ["header", "no-header", "tsv", "crlf", "blank-lines", "weights",
                                   "float-label", "int-feature", "label-first", "chunks"])
def test_same_arrays_and_chunks_as_the_other_reader(tmp_path, monkeypatch, shape):
    """The parser's info and chunks are those the pyarrow/pandas read gives, bit for bit."""
    rng = np.random.default_rng(11)
    n, d = 500, 4
    X = [[repr(float(v)) for v in r] for r in rng.standard_normal((n, d))]
    y = [str(int(v)) for v in rng.integers(0, 2, n)]
    names = [f"x{j}" for j in range(d)] + ["y"]
    rows = [r + [lab] for r, lab in zip(X, y)]
    fields = {"label": "y"}
    sep, nl, header = ",", "\n", names
    if shape == "no-header":
        header, fields = None, {"label": str(d), "header": False}
    elif shape == "tsv":
        sep = "\t"
    elif shape == "crlf":
        nl = "\r\n"
    elif shape == "weights":
        header = names = names + ["w"]
        rows = [r + [repr(float(v))] for r, v in zip(rows, rng.uniform(0.5, 2, n))]
        fields["weights"] = "w"
    elif shape == "float-label":
        rows = [r[:-1] + [lab + ".0"] for r, lab in zip(rows, y)]
    elif shape == "int-feature":
        rows = [[str(int(v))] + r[1:] for r, v in zip(rows, rng.integers(-5, 5, n))]
    elif shape == "label-first":
        header = names = names[-1:] + names[:-1]
        rows = [r[-1:] + r[:-1] for r in rows]
    elif shape == "chunks":
        fields["chunk_bytes"] = 4000
    path = _write(tmp_path / ("f.tsv" if shape == "tsv" else "f.csv"), header, rows, sep, nl)
    if shape == "blank-lines":
        with open(path) as f:
            text = f.read().replace("\n", "\n\n", 40)
        with open(path, "w") as f:
            f.write(text)
    monkeypatch.setattr(csvio, "_JIT_PART", 256)
    assert _used(path, **fields)
    monkeypatch.setattr(csvio, "JIT_MIN_BYTES", 0)
    got = load_local(path, **fields)
    _off(monkeypatch)
    ref = load_local(path, **fields)
    np.testing.assert_array_equal(_bits(got.X), _bits(ref.X))
    np.testing.assert_array_equal(got.y, ref.y)
    assert got.y.dtype == ref.y.dtype
    for a, b in ((got.sample_weight, ref.sample_weight),):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(_bits(a), _bits(b))
    assert got.info.piece_rows == ref.info.piece_rows and got.info.pieces == ref.info.pieces
    assert got.info.feature_names == ref.info.feature_names
    if shape == "chunks":
        assert len(got.info.pieces) > 3
        assert got.X.flags.c_contiguous


@pytest.mark.parametrize("ext,pack", [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)])
def test_compressed_equals_plain(tmp_path, monkeypatch, jit, ext, pack):
    """A compressed file (parsed as it is decompressed, in several blocks) gives the plain file's
    arrays; its rows are split into the chunks the scan makes."""
    import dlogit.io.fs as fsio

    rng = np.random.default_rng(5)
    rows = [[repr(float(v)) for v in r] + [str(int(r[0] > 0))] for r in rng.standard_normal((3000, 5))]
    plain = _write(tmp_path / "f.csv", ["a", "b", "c", "d", "e", "y"], rows)
    packed = tmp_path / f"f.csv{ext}"
    with open(plain, "rb") as f:
        packed.write_bytes(pack(f.read()))
    real = fsio.iter_blocks

    def small_blocks(p, block=0):  # blocks of 1000 bytes: lines cross them
        return (b[i:i + 1000] for b in real(p) for i in range(0, len(b), 1000))

    monkeypatch.setattr(fsio, "iter_blocks", small_blocks)
    assert _used(str(packed), label="y")
    a = load_local(plain, label="y", chunk_bytes=20_000)
    b = load_local(str(packed), label="y", chunk_bytes=20_000)
    np.testing.assert_array_equal(_bits(a.X), _bits(b.X))
    np.testing.assert_array_equal(a.y, b.y)
    assert b.info.piece_rows == [p.stop - p.start for p in b.info.pieces] and sum(b.info.piece_rows) == 3000
    assert len(b.info.pieces) > 1


@pytest.mark.parametrize("field", ["1.00000000000000011102230246251565404236316680908203125",
                                   "4.9406564584124654e-324", "1e-400", "1e400"])
def test_fields_it_does_not_decide_go_to_the_other_reader(tmp_path, jit, field):
    """More than 19 significant digits, subnormal, underflowing and overflowing values: the parser
    stops and the pyarrow/pandas reader reads the file -- the value is ``float()``'s, or the one-line
    error names the row and column of the infinite value."""
    path = _write(tmp_path / "f.csv", ["a", "b", "y"], [["0.5", "1", "0"], [field, "2", "1"]])
    assert not _used(path, label="y")
    if field == "1e400":
        with pytest.raises(DataError, match=r"f\.csv: row 2, column 'a' holds a missing, NaN or infinite"):
            load_local(path, label="y")
        return
    data = load_local(path, label="y")
    assert _bits(data.X[1, 0]) == _bits(float(field))


_GOOD = "".join(f"{k % 7}.25,{k % 5},{k % 2}\n" for k in range(150_000))  # beyond the plan's 1 MiB sample


@pytest.mark.parametrize("bad,message", [
    ("3,x,1", r"column 'b' .* is not numeric"),
    ("3,nan,1", r"row 150002, column 'b' holds a missing, NaN or infinite"),
    ("3,,1", r"row 150002, column 'b' holds a missing"),
    ("3,4", r"f\.csv"),
    ("3,4,1,5", r"f\.csv: row 150002 has (4 fields, )?more than the 3 columns"),  # not a silent shift
    ('3,"4",1', None),
])
def test_bad_rows_keep_their_one_line_errors(tmp_path, monkeypatch, jit, bad, message):
    """A field the parser does not read, past the sample the plan looked at: the other reader reads the
    file and says what is wrong in one line (or reads it as it did before)."""
    monkeypatch.setattr(csvio, "_JIT_PART", 1 << 16)
    path = tmp_path / "f.csv"
    path.write_text("a,b,y\n" + _GOOD + "1.5,2,0\n" + bad + "\n")
    assert not _used(str(path), label="y")
    if message is None:
        got = load_local(str(path), label="y")
        _off(monkeypatch)
        np.testing.assert_array_equal(_bits(got.X), _bits(load_local(str(path), label="y").X))
        assert got.X[-1, 1] == 4.0
        return
    with pytest.raises(DataError, match=message) as err:
        load_local(str(path), label="y")
    assert "\n" not in str(err.value)


def test_text_labels_and_float32_use_the_other_reader(tmp_path, jit):
    path = _write(tmp_path / "f.csv", ["a", "y"], [["0.25", "cat"], ["1.5", "dog"]])
    assert not _used(path, label="y")
    data = load_local(path, label="y")
    assert list(data.y) == ["cat", "dog"]
    path = _write(tmp_path / "g.csv", ["a", "y"], [["0.1", "1"], ["1.5", "0"]])
    assert not _used(path, label="y", dtype="float32")
    assert load_local(path, label="y", dtype="float32").X.dtype == np.float32


def test_integer_columns_keep_every_digit(tmp_path, jit):
    """Integer labels beyond 2**53 stay exact; an integer feature is its double."""
    labels = ["9007199254740993", "-123456789012345678", "0", "-0"]
    path = _write(tmp_path / "f.csv", ["a", "y"], [[str(k - 2), lab] for k, lab in enumerate(labels)])
    assert _used(path, label="y")
    data = load_local(path, label="y")
    assert data.y.tolist() == [int(v) for v in labels]
    np.testing.assert_array_equal(_bits(data.X[:, 0]), _bits([-2.0, -1.0, 0.0, 1.0]))
