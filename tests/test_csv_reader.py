"""The CSV reader's pyarrow path (dlogit.io.csv): the same values, bit for bit, and the same errors as
pandas.read_csv gives, on the files where the two parsers could differ; row counts and gzip streams.

References are computed here with pandas (the reader before pyarrow was pandas over the same chunks)
and with Python's correctly rounded ``float``.
"""

from __future__ import annotations

import gzip
import importlib
import io
import random

import numpy as np
import pandas as pd
import pytest

from dlogit.data import load_local
from dlogit.errors import DataError
from dlogit.io import Source, plan, text
from dlogit.io import csv as csvio
from dlogit.io import fs as fsio

SIZES = [{}, {"chunk_bytes": 1}]  # one chunk; a chunk per line (every piece a byte range of its own)


def _bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def _write(tmp_path, body: str, packed: bool):
    raw = body.encode()
    path = tmp_path / ("d.csv.gz" if packed else "d.csv")
    path.write_bytes(gzip.compress(raw) if packed else raw)
    return str(path)


def _reference(body: str, label: str | None = "y", header: bool = True):
    ref = pd.read_csv(io.StringIO(body), header=0 if header else None)
    ref.columns = [str(c) for c in ref.columns]
    features = [c for c in ref.columns if c != label]
    return ref[features].to_numpy(np.float64), (ref[label].to_numpy() if label else None)


HARD = ["0.1", "1e23", "8.98846567431158e307", "2.2250738585072011e-308", "2.2250738585072014e-308",
        "4.9406564584124654e-324", "2.4703282292062327e-324", "2.4703282292062328e-324", "1e-400",
        "1.7976931348623157e308", "9007199254740993", "0.30000000000000004", "-0.0", "123456789012345678",
        "1.00000000000000011102230246251565404236316680908203125",
        "1.000000000000000111022302462515654042363166809082031250000000001",
        "0.1000000000000000055511151231257827021181583404541015625", "3.4028236692093846346e38",
        "5e-324", "1.5e-323", "7.2057594037927933e16", "-1.2345678901234567e-300", "1.797693134862315807e308"]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_floats_round_correctly_as_pandas_does(tmp_path, packed, size):
    """Hard decimal inputs (17+ digits, halfway cases, subnormals, the largest finite) parse to the
    correctly rounded double — Python's ``float`` — as pandas >= 3 parses them."""
    rng = np.random.default_rng(3)
    extra = [repr(float(v)) for v in rng.standard_normal(200) * 10.0 ** rng.integers(-300, 300, 200)]
    values = HARD + extra + [f"{v:.17g}" for v in rng.standard_normal(200)]
    body = "x,z,y\n" + "".join(f"{v},{values[-1 - k]},{k % 2}\n" for k, v in enumerate(values))
    got = load_local(_write(tmp_path, body, packed), label="y", **size)
    exact = np.array([[float(v), float(values[-1 - k])] for k, v in enumerate(values)])
    np.testing.assert_array_equal(_bits(got.X), _bits(exact))
    np.testing.assert_array_equal(_bits(got.X), _bits(_reference(body)[0]))
    assert got.info.layout.arrow_types  # read by pyarrow


CASES = {
    "crlf": "a,b,y\r\n1.5,2,1\r\n-3e-2,4,0\r\n\r\n5,6,1\r\n",
    "blank and empty lines": "a,b,y\n1,2,1\n\n   \n3,4,0\n\t\n5,6,1\n\n",
    "no final newline": "a,b,y\n1,2,1\n3,4,0",
    "quoted numbers": 'a,b,y\n"1.5","2",1\n3,"4e2",0\n',
    "integer column with -0": "a,b,y\n-0,1.5,1\n2,-0.0,0\n-0,3,1\n",
    "bool feature": "a,flag,y\n1,True,1\n2,false,0\n3,TRUE,1\n",
    "spaces around numbers": "a,b,y\n 1.5 ,2,1\n3, 4,0\n",
    "float label": "a,b,y\n1,2,0.5\n3,4,1.5\n",
    "text label": 'a,b,y\n1,2,cat\n3,4," dog, big"\n5,6,cat\n',
    "integers past 2**53": "a,b,y\n9007199254740993,9223372036854775807,1\n1,-9223372036854775808,0\n",
    "nan-like word in a text label": "a,b,y\n1,2,1.5\n3,4,nAn\n",
    "a float after the sample's integers": "a,b,y\n" + "1,2,1\n" * 3 + "1.5,2,0\n",
    "long lines": "a,b,y\n" + "".join(f"{k * 1e-7!r},{k},1\n" for k in range(300)),
}


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_values_equal_pandas_bit_for_bit(tmp_path, case, size, packed):
    body = CASES[case]
    got = load_local(_write(tmp_path, body, packed), label="y", **size)
    X, y = _reference(body)
    np.testing.assert_array_equal(_bits(got.X), _bits(X))  # -0 read as an integer is +0, as pandas has it
    np.testing.assert_array_equal(got.y, y)
    assert got.y.dtype == y.dtype or (y.dtype.kind == "O" and got.y.dtype.kind == "O")


def test_no_header_file_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbf1.5,2,1\n3,4,0\n")
    got = load_local(str(path), label="2", header=False)
    np.testing.assert_array_equal(got.X, [[1.5, 2], [3, 4]])
    np.testing.assert_array_equal(got.y, [1, 0])


ERRORS = {
    # a word pandas takes for text, though pyarrow would read it as NaN
    "NAN word": ("a,b,y\n1,2,1\n" * 3 + "NAN,4,0\n", "column 'a' in {path} is not numeric (it holds text)"),
    "infinite value": ("a,b,y\n1,2,1\n3,inf,0\n", "{path}: row 2, column 'b' holds a missing, NaN or infinite"),
    "missing value": ("a,b,y\n1,2,1\n3,,0\n", "{path}: row 2, column 'b' holds a missing, NaN or infinite"),
    "NA word": ("a,b,y\n1,2,1\n3,4,1\nNA,4,0\n", "{path}: row 3, column 'a' holds a missing, NaN or infinite"),
    "missing label": ("a,b,y\n1,2,1\n3,4,\n", "label column 'y' in {path} has 1 missing value(s)"),
    "integer past 2**64": ("a,b,y\n1,2,1\n18446744073709551616,4,0\n", "column 'a' in {path} is not numeric"),
    # a short row's missing fields are missing values, also when the row is a chunk of its own
    "short row": ("a,b,y\n1,2,1\n3,4\n", "label column 'y' in {path} has 1 missing value(s)"),
    # never its first fields alone (pandas, given the names, would drop the extra field without a word)
    "long row": ("a,b,y\n1,2,1\n3,4,0,9\n", "{path}: row 2 has "),
}


@pytest.mark.parametrize("size", [{}, {"chunk_bytes": 1}])
@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_are_pandas_words(tmp_path, case, size):
    """Where pyarrow would read a value pandas refuses (or word it otherwise), the chunk is read by
    pandas and the message is the one the reader gave before pyarrow."""
    body, message = ERRORS[case]
    path = _write(tmp_path, body, False)
    with pytest.raises(DataError) as e:
        load_local(path, label="y", **size)
    assert any(m.format(path=path) in str(e.value) for m in message.split("|")), str(e.value)


def test_chunks_are_those_of_the_scan(tmp_path):
    """The chunking is the scan's (the same bytes per chunk whatever parses them)."""
    body = "a,b,y\n" + "".join(f"{k}.25,{k},1\n" for k in range(500))
    path = _write(tmp_path, body, False)
    got = load_local(path, label="y", chunk_bytes=1000)
    rows = got.info.piece_rows
    assert len(rows) > 5 and sum(rows) == 500
    np.testing.assert_array_equal(got.X, _reference(body)[0])


def test_arrow_reads_the_layouts_pandas_alone_cannot_share(tmp_path):
    """Encoded (one-hot) columns and several-character separators stay with pandas; numeric tables
    go to pyarrow."""
    (tmp_path / "n.csv").write_text("a,b,y\n1,2,1\n")
    (tmp_path / "c.csv").write_text("a,city,y\n1,Paris,1\n")
    assert plan(Source(str(tmp_path / "n.csv"), label="y")).layout.arrow_types
    assert plan(Source(str(tmp_path / "c.csv"), label="y", one_hot=("city",))).layout.arrow_types == ()


def test_missing_words_are_pandas_defaults():
    from pandas._libs.parsers import STR_NA_VALUES

    assert set(csvio.NA_VALUES) == set(STR_NA_VALUES)


def test_row_counts_over_blocks_equal_the_whole_buffer():
    """The streaming count (any block size, header skipped or not) equals the per-line rule."""
    rng = random.Random(0)
    pieces = [b"1,2", b"  ", b"", b"\t", b'"a",b', b'"a\nb"', b"x,y", b"\r", b'3,"q"', b" 4", b"#c", b"5"]
    for style in (text.csv_style(","), text.csv_style("\t"), text.LIBSVM_STYLE):
        for _ in range(1500):
            buf = b"\n".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
            buf += rng.choice([b"", b"\n", b"\r\n"])
            skip = rng.random() < 0.5
            step = rng.randint(1, 12)
            got = text.stream_records([buf[i:i + step] for i in range(0, len(buf), step)], style, skip)
            body = (buf[buf.find(b"\n") + 1:] if b"\n" in buf else b"") if skip else buf
            assert got == (text.count_records(body, style), len(buf), text.has_open_quote(body)), (buf, step)


def test_gzip_members_padding_and_errors_read_as_gzip_reads_them(tmp_path):
    cases = {"members": gzip.compress(b"a\n") + gzip.compress(b"b\n"), "padded": gzip.compress(b"a\n") + b"\0" * 64,
             "empty": b"", "truncated": gzip.compress(b"a\n" * 1000)[:-10],
             "garbage after": gzip.compress(b"a\n") + b"xx", "no gzip": b"hello", "zeros first": b"\0\0" + gzip.compress(b"a\n")}
    for name, data in cases.items():
        path = tmp_path / f"{name.replace(' ', '-')}.gz"
        path.write_bytes(data)
        try:
            with gzip.open(path) as g:
                want = g.read()
        except (OSError, EOFError) as exc:
            want = f"cannot read {path}: {exc}"
        try:
            got = b"".join(fsio.iter_blocks(str(path)))
        except DataError as exc:
            got = str(exc)
        assert got == want, name


def test_counter_fed_block_by_block_equals_stream_records():
    """The fused read's count (blocks as pyarrow pulls them) is the scan's count of the same stream."""
    rng = random.Random(1)
    pieces = [b"1,2", b"  ", b"", b"\t", b'"a",b', b'"a\nb"', b"x,y", b"\r", b'3,"q"', b" 4", b"5"]
    for style in (text.csv_style(","), text.csv_style("\t")):
        for _ in range(1500):
            buf = b"\n".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
            buf += rng.choice([b"", b"\n", b"\r\n"])
            skip = rng.random() < 0.5
            step = rng.randint(1, 12)
            blocks = [buf[i:i + step] for i in range(0, len(buf), step)]
            counter = csvio._Counter(style, skip)
            for b in blocks:
                counter.feed(b)
            got = counter.finish()
            rows, nbytes, quote = text.stream_records(blocks, style, skip)
            assert (got.rows, got.nbytes, counter.open_quote) == (rows, nbytes, quote), (buf, step)


def _two_pass(src):
    """The scan's pass, then each unit read (what load_local did before the fused read)."""
    scanmod = importlib.import_module("dlogit.io.scan")  # dlogit.io.scan: also a function

    info = scanmod.scan(src)
    return info, [p for u in range(len(info.units)) for p in scanmod.read_unit(info, u)]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("size", [{}, {"chunk_bytes": 700}, {"chunk_rows": 7}])
def test_one_pass_read_gives_the_scans_chunks_and_arrays(tmp_path, monkeypatch, packed, size):
    """load_local reads a CSV (a gzip file: decompressed) once, with the rows counted as pyarrow parses
    them: the same chunks, row counts and arrays, bit for bit, as the scan's pass followed by the read;
    row weights from a .npy are sliced the same way."""
    scanmod = importlib.import_module("dlogit.io.scan")  # dlogit.io.scan: also a function

    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 3)) * 10.0 ** rng.integers(-5, 5, (300, 3))
    body = "a,b,c,y\n" + "".join(f"{r[0]!r},{r[1]!r},{r[2]!r},{k % 3}\n" for k, r in enumerate(X.tolist()))
    path = _write(tmp_path, body, packed)
    np.save(tmp_path / "w.npy", rng.uniform(0.5, 2, 300))
    src = Source(path, label="y", weights=str(tmp_path / "w.npy"), **size).absolute()
    ref_info, ref = _two_pass(src)
    calls = {"iter_blocks": 0, "arrow_source": 0, "survey": 0}

    def counting(name, fn):
        def run(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return run

    monkeypatch.setattr(fsio, "iter_blocks", counting("iter_blocks", fsio.iter_blocks))
    monkeypatch.setattr(csvio, "_arrow_source", counting("arrow_source", csvio._arrow_source))
    monkeypatch.setattr(scanmod, "survey", counting("survey", scanmod.survey))
    got = load_local(src)
    # one pass: no survey, no second source for the read; a gzip file decompressed once. (A plain file
    # cut by --chunk-rows has its rows counted by the cut: no survey there, each chunk read once.)
    cut = "chunk_rows" in size and not packed
    assert calls == {"iter_blocks": 1 if packed else 0, "arrow_source": len(ref) if cut else 0, "survey": 0}
    assert got.info.piece_rows == ref_info.piece_rows and got.info.units == ref_info.units
    assert got.info.pieces == ref_info.pieces
    np.testing.assert_array_equal(_bits(got.X), _bits(np.concatenate([p.X for p in ref])))
    np.testing.assert_array_equal(got.y, np.concatenate([p.y for p in ref]))
    np.testing.assert_array_equal(got.sample_weight, np.concatenate([p.sample_weight for p in ref]))
    np.testing.assert_array_equal(_bits(got.X), _bits(_reference(body)[0]))
    assert len(ref) == len(got.info.pieces) and (len(ref) > 1) == bool(size)
