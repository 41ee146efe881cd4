"""dlogit's readers (dlogit.io, dlogit.data): real files in tmp_path, compared with exact references.

Every format and layout must give exactly the arrays the single-file CSV (or, for LIBSVM,
``sklearn.datasets.load_svmlight_file`` of the whole file) gives, whatever the chunk size.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import os
import shutil

import dask
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from dlogit.data import Dataset, load_local, read_data
from dlogit.errors import DataError
from dlogit.io import Encoder, Source, read_piece, scan
from dlogit.io.encode import bucket_of

# --------------------------------------------------------------------------------------------------
# helpers


def chunks(ds: Dataset) -> tuple[list, list | None, list | None]:
    """Every chunk of a Dataset's X, y, weights, computed in this process."""
    def blocks(a):
        return None if a is None else list(dask.compute(*a.to_delayed().ravel(), scheduler="sync"))

    return blocks(ds.X), blocks(ds.y), blocks(ds.sample_weight)


def dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def stacked(parts: list) -> np.ndarray:
    return np.concatenate([dense(p) for p in parts])


def assert_csr_equal(a, b) -> None:
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    assert a.shape == b.shape
    a.sort_indices()
    b.sort_indices()
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


@pytest.fixture
def frame() -> pd.DataFrame:
    """A table with float, int and bool features, int labels (0/1) and positive weights."""
    rng = np.random.default_rng(7)
    n = 103
    return pd.DataFrame({
        "a": rng.normal(size=n),
        "b": rng.integers(-5, 5, n),
        "c": rng.normal(size=n) * 1e6,
        "flag": rng.integers(0, 2, n).astype(bool),
        "label": rng.integers(0, 2, n),
    })


def expected(df: pd.DataFrame, features=("a", "b", "c", "flag")) -> np.ndarray:
    return df[list(features)].to_numpy(dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# LIBSVM


def _svm_reference_data(rng):
    X = sp.random(60, 9, density=0.3, format="csr", random_state=3, dtype=np.float64)
    X.data = np.round(X.data * 100) / 7.0
    X = X.tolil()
    X[5] = 0  # rows with no features
    X[17] = 0
    X[:, 8] = 0
    X[40, 8] = 2.5  # the last column is reached only once
    return sp.csr_matrix(X), rng.choice([-1.0, 1.0], 60)


@pytest.fixture(params=["one-based", "zero-based", "qid-comments-blank"])
def svm_file(request, tmp_path, rng):
    from sklearn.datasets import dump_svmlight_file

    X, y = _svm_reference_data(rng)
    path = tmp_path / "data.svm"
    if request.param == "one-based":
        dump_svmlight_file(X, y, str(path), zero_based=False)
    elif request.param == "zero-based":
        X = X.tolil()
        X[3, 0] = 1.25  # index 0 appears: detected as 0-based
        X = sp.csr_matrix(X)
        dump_svmlight_file(X, y, str(path), zero_based=True)
    else:
        buf = io.BytesIO()
        dump_svmlight_file(X, y, buf, zero_based=False, query_id=np.arange(60) // 7, comment="made\nfor tests")
        lines = buf.getvalue().decode().splitlines()
        out = []
        for k, line in enumerate(lines):
            out.append(line + ("  # a comment: 3:4" if k % 5 == 0 and not line.startswith("#") else ""))
            if k % 11 == 0:
                out += ["", "   ", "# between rows 99:1"]
        path.write_text("\n".join(out) + "\n\n")  # ends with an empty line
    return path


@pytest.mark.parametrize("size", [{"chunk_bytes": 1}, {"chunk_bytes": 57}, {"chunk_bytes": 300},
                                  {"chunk_bytes": 10**7}, {"chunk_rows": 1}, {"chunk_rows": 7}])
def test_libsvm_chunks_equal_the_whole_file(svm_file, size):
    from sklearn.datasets import load_svmlight_file

    ref_X, ref_y = load_svmlight_file(str(svm_file))  # zero_based="auto", the whole file at once
    ds = read_data(str(svm_file), **size)
    xs, ys, _ = chunks(ds)
    assert ds.info.kind == "libsvm" and ds.info.sparse and ds.info.n_features == ref_X.shape[1]
    assert all(sp.isspmatrix_csr(x) for x in xs)
    assert [x.shape[0] for x in xs] == ds.info.piece_rows and all(r > 0 for r in ds.info.piece_rows)
    if "chunk_rows" in size:
        assert all(r == size["chunk_rows"] for r in ds.info.piece_rows[:-1])
    assert_csr_equal(sp.vstack(xs), ref_X)
    np.testing.assert_array_equal(np.concatenate(ys), ref_y)
    assert np.concatenate(ys).dtype == np.int64  # labels written as integers (-1, 1) stay integers


def test_libsvm_compressed_and_n_features(tmp_path, rng):
    from sklearn.datasets import dump_svmlight_file

    X, y = _svm_reference_data(rng)
    plain = tmp_path / "d.svm"
    dump_svmlight_file(X, y, str(plain), zero_based=False)
    packed = tmp_path / "d.svm.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    ds = read_data(str(packed), chunk_bytes=200, n_features=12, zero_based=False)
    xs, ys, _ = chunks(ds)
    assert len(xs) > 2 and len(ds.info.units) == 1  # one read task, several chunks
    from sklearn.datasets import load_svmlight_file

    ref_X, ref_y = load_svmlight_file(str(plain), n_features=12, zero_based=False)
    assert_csr_equal(sp.vstack(xs), ref_X)
    np.testing.assert_array_equal(np.concatenate(ys), ref_y)
    with pytest.raises(DataError) as e:
        scan(Source(str(plain), n_features=5))
    assert "beyond --n-features 5" in one_line(e)
    zero = tmp_path / "zero.svm"
    zero.write_text("1 0:1 2:3\n-1 1:2\n")
    with pytest.raises(DataError) as e:
        scan(Source(str(zero), zero_based=False))
    assert "index 0" in one_line(e)
    got = load_local(str(zero))
    np.testing.assert_array_equal(got.X.toarray(), [[1, 0, 3], [0, 2, 0]])
    assert any("0-based" in n for n in got.info.notices)


def test_libsvm_index_scan_matches_the_parser(rng):
    """The vectorized index scan used by the scan pass agrees with sklearn's parser on odd lines."""
    from sklearn.datasets import load_svmlight_file

    from dlogit.io.libsvm import index_range

    text = b"1 qid:12 3:1 10:2 # 99:1\n\n# 0:5\n-1\t7:0.5\r\n+1 2:1e-3 100000:4\n1"
    X, _ = load_svmlight_file(io.BytesIO(text), zero_based=True)
    assert index_range(text) == (int(X.indices.min()), int(X.indices.max())) == (2, 100000)
    assert index_range(b"1\n-1 qid:3\n") == (None, None)


# --------------------------------------------------------------------------------------------------
# tables: every layout gives the single-file CSV's arrays


SIZES = [{}, {"chunk_rows": 10}, {"chunk_bytes": 500}]


def _check_same(ds: Dataset, df: pd.DataFrame, features=("a", "b", "c", "flag")) -> None:
    xs, ys, _ = chunks(ds)
    assert [x.shape[0] for x in xs] == ds.info.piece_rows
    np.testing.assert_array_equal(stacked(xs), expected(df, features))
    np.testing.assert_array_equal(np.concatenate(ys), df["label"].to_numpy())
    assert all(x.flags.c_contiguous for x in xs if not sp.issparse(x))


@pytest.mark.parametrize("size", SIZES)
def test_single_csv(tmp_path, frame, size):
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    ds = read_data(str(path), **size)
    _check_same(ds, frame)
    assert ds.info.feature_names == ["a", "b", "c", "flag"] and ds.info.label_dtype == "int64"
    if size:
        assert len(ds.info.pieces) > 3


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("layout", ["glob", "directory", "gzip", "bz2", "xz", "zstd", "zstd-frames", "tsv",
                                    "gzip-glob"])
def test_csv_layouts_equal_the_single_file(tmp_path, frame, size, layout):
    parts = [frame.iloc[:40], frame.iloc[40:41], frame.iloc[41:]]
    if layout in ("glob", "directory", "gzip-glob"):
        folder = tmp_path / "parts"
        folder.mkdir()
        for k, p in enumerate(parts):
            name = folder / f"part-{k}.csv"
            p.to_csv(name, index=False)
            if layout == "gzip-glob":
                name.with_suffix(".csv.gz").write_bytes(gzip.compress(name.read_bytes()))
                name.unlink()
        (folder / "_SUCCESS").write_text("")
        path = {"glob": folder / "part-*.csv", "directory": folder, "gzip-glob": folder / "*.csv.gz"}[layout]
    elif layout == "tsv":
        path = tmp_path / "d.tsv"
        frame.to_csv(path, index=False, sep="\t")
    else:
        raw = frame.to_csv(index=False).encode()
        if layout.startswith("zstd"):
            zstandard = pytest.importorskip("zstandard")
            cut = raw.index(b"\n", len(raw) // 2) + 1  # a file of two frames (zstd -c a b > c) is read whole
            pieces = [raw[:cut], raw[cut:]] if layout == "zstd-frames" else [raw]
            data = b"".join(zstandard.ZstdCompressor().compress(p) for p in pieces)
        else:
            data = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[layout](raw)
        path = tmp_path / ("d.csv." + {"gzip": "gz", "bz2": "bz2", "xz": "xz", "zstd": "zst",
                                       "zstd-frames": "zst"}[layout])
        path.write_bytes(data)
    _check_same(read_data(str(path), **size), frame)


def test_txt_needs_a_separator(tmp_path, frame):
    path = tmp_path / "d.txt"
    frame.to_csv(path, index=False, sep=";")
    with pytest.raises(DataError) as e:
        scan(Source(str(path)))
    assert "cannot tell the format of" in one_line(e) and "--sep" in str(e.value)
    _check_same(read_data(str(path), sep=";"), frame)


def test_quoted_fields_and_empty_trailing_lines(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('x,city,label\n1.5,"Paris, France",1\n2,"a ""quoted"" name",0\n\n3,plain,1\n\n\n')
    got = load_local(str(path), one_hot=("city",), chunk_bytes=1)
    assert got.info.encoder.vocabulary == (("Paris, France", "a \"quoted\" name", "plain"),)
    np.testing.assert_array_equal(got.X.toarray(), [[1.5, 1, 0, 0], [2, 0, 1, 0], [3, 0, 0, 1]])
    np.testing.assert_array_equal(got.y, [1, 0, 1])

    span = tmp_path / "span.csv"
    span.write_text('x,note,label\n1,"two\nlines",1\n2,one,0\n')
    with pytest.raises(DataError) as e:
        scan(Source(str(span), one_hot=("note",)))
    assert "quoted field spanning lines" in one_line(e)
    packed = tmp_path / "span.csv.gz"  # read whole: a quoted line break is fine
    packed.write_bytes(gzip.compress(span.read_bytes()))
    got = load_local(str(packed), one_hot=("note",))
    assert got.info.encoder.vocabulary == (("one", "two\nlines"),)
    np.testing.assert_array_equal(got.X.toarray(), [[1, 0, 1], [2, 1, 0]])


@pytest.mark.parametrize("size", SIZES)
def test_parquet_dataset_directory(tmp_path, frame, size):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "ds"
    folder.mkdir()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table.slice(0, 50), folder / "part-0.parquet", row_group_size=8)
    pq.write_table(table.slice(50), folder / "part-1.parquet", row_group_size=13)
    (folder / "_SUCCESS").write_text("")
    ds = read_data(str(folder), **size)
    _check_same(ds, frame)
    groups = [sum(len(p.row_groups) for p in piece) for piece in ds.info.pieces]
    assert sum(groups) == 7 + 5  # every row group once, none split
    if size.get("chunk_rows") == 10:
        assert all(r >= 10 for r in ds.info.piece_rows[:-1])
    _check_same(read_data(str(folder / "part-*.parquet"), **size), frame)


def test_parquet_hive_partitions_and_float32(tmp_path, frame):
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = frame.assign(a=frame["a"].astype(np.float32), c=frame["c"].astype(np.float32), g=np.arange(103) % 3)
    df = df[["a", "c", "g", "label"]]
    pq.write_to_dataset(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "hive",
                        partition_cols=["g"])
    got = load_local(str(tmp_path / "hive"), chunk_rows=10)
    assert got.info.feature_names == ["a", "c", "g"] and got.info.dtype == "float64"  # g is an integer
    order = np.lexsort([np.arange(103), df["g"].to_numpy()])  # the files are read in partition order
    np.testing.assert_array_equal(got.X, df[["a", "c", "g"]].to_numpy(np.float64)[order])
    np.testing.assert_array_equal(got.y, df["label"].to_numpy()[order])
    df[["a", "c", "label"]].to_parquet(tmp_path / "f32.parquet", index=False)
    got = load_local(str(tmp_path / "f32.parquet"))
    assert got.info.dtype == "float32" and got.X.dtype == np.float32
    np.testing.assert_array_equal(got.X, df[["a", "c"]].to_numpy())


@pytest.mark.parametrize("chunk_rows", [None, 9])
def test_npy_memmap(tmp_path, frame, chunk_rows):
    X = np.ascontiguousarray(expected(frame))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", frame["label"].to_numpy())
    np.save(tmp_path / "w.npy", np.linspace(0.5, 2, 103))
    info = scan(Source(str(tmp_path / "X.npy"), labels=str(tmp_path / "y.npy"), weights=str(tmp_path / "w.npy"),
                       chunk_rows=chunk_rows))
    piece = read_piece(info, len(info.pieces) - 1)
    assert not piece.X.flags.writeable and not piece.X.flags.owndata  # a view of the memory map
    assert info.notices == []
    ds = read_data(info.source)
    _check_same(ds, frame)
    np.testing.assert_array_equal(np.concatenate(chunks(ds)[2]), np.linspace(0.5, 2, 103))
    np.save(tmp_path / "Xi.npy", X.astype(np.int32))
    info = scan(Source(str(tmp_path / "Xi.npy"), labels=str(tmp_path / "y.npy")))
    assert info.dtype == "float64" and "converted to float64" in info.notices[0]
    np.save(tmp_path / "Xf.npy", np.asfortranarray(X))
    info = scan(Source(str(tmp_path / "Xf.npy"), labels=str(tmp_path / "y.npy"), chunk_rows=chunk_rows))
    assert "Fortran order" in info.notices[0]
    np.testing.assert_array_equal(stacked(chunks(read_data(info.source))[0]), X)


def test_zarr_group(tmp_path, frame):
    zarr = pytest.importorskip("zarr")
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    g.create_array("X", shape=(103, 4), chunks=(10, 4), dtype="f8")[:] = expected(frame)
    g.create_array("label", shape=(103,), chunks=(10,), dtype="i8")[:] = frame["label"].to_numpy()
    g.create_array("w", shape=(103,), chunks=(10,), dtype="f4")[:] = np.arange(103)
    ds = read_data(str(tmp_path / "d.zarr"), weights="w", chunk_rows=25)
    assert ds.info.piece_rows == [30, 30, 30, 13]  # whole Zarr chunks, grouped
    _check_same(ds, frame)
    np.testing.assert_array_equal(np.concatenate(chunks(ds)[2]), np.arange(103))
    np.save(tmp_path / "y.npy", frame["label"].to_numpy())
    _check_same(read_data(str(tmp_path / "d.zarr" / "X"), labels=str(tmp_path / "y.npy")), frame)
    with pytest.raises(DataError) as e:
        scan(Source(str(tmp_path / "d.zarr"), label="target"))
    assert "no label array 'target'" in one_line(e)


def test_fsspec_urls(tmp_path, frame):
    import fsspec

    mem = fsspec.filesystem("memory")
    with mem.open("/dlogit-test/d.csv", "wb") as f:
        f.write(frame.to_csv(index=False).encode())
    with mem.open("/dlogit-test/d.csv.gz", "wb") as f:
        f.write(gzip.compress(frame.to_csv(index=False).encode()))
    with mem.open("/dlogit-test/X.npy", "wb") as f:
        np.save(f, expected(frame))
    with mem.open("/dlogit-test/y.npy", "wb") as f:
        np.save(f, frame["label"].to_numpy())
    with mem.open("/dlogit-test/pq/part-0.parquet", "wb") as f:
        frame.to_parquet(f, index=False)
    try:
        for size in SIZES:
            _check_same(read_data("memory://dlogit-test/d.csv", **size), frame)
            _check_same(read_data("memory://dlogit-test/d.csv.gz", **size), frame)
            _check_same(read_data("memory://dlogit-test/X.npy", labels="memory://dlogit-test/y.npy", **size),
                        frame)
            _check_same(read_data("memory://dlogit-test/pq", **size), frame)
        path = tmp_path / "d.csv"
        frame.to_csv(path, index=False)
        _check_same(read_data(f"file://{path}", chunk_rows=10), frame)
        with pytest.raises(DataError) as e:
            scan(Source("memory://dlogit-test/nothing.csv"))
        assert one_line(e) == "cannot read memory://dlogit-test/nothing.csv: No such file or directory"
    finally:
        mem.rm("/dlogit-test", recursive=True)


def test_missing_fsspec_backend_names_the_package():
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401
        pytest.skip("s3fs is installed")
    except ImportError:
        pass
    with pytest.raises(DataError) as e:
        scan(Source("s3://bucket/data.parquet"))
    assert "s3fs" in one_line(e)


# --------------------------------------------------------------------------------------------------
# columns: index, weights, labels, messages


def test_pandas_index_dropped_with_notice_and_index_col(tmp_path, frame):
    path = tmp_path / "d.csv"
    frame.to_csv(path)  # a leading unnamed index column
    got = load_local(str(path))
    assert got.info.notices == [("dropped column 'Unnamed: 0' (a pandas index); use --index-col to choose "
                                 "another")]
    np.testing.assert_array_equal(got.X, expected(frame))
    ids = frame.assign(row_id=np.arange(103) + 1000)[["row_id", "a", "b", "c", "flag", "label"]]
    ids.to_csv(path, index=False)
    got = load_local(str(path), index_col="row_id")
    assert got.info.feature_names == ["a", "b", "c", "flag"] and got.info.notices == []
    np.testing.assert_array_equal(got.X, expected(frame))
    with pytest.raises(DataError) as e:
        scan(Source(str(path), index_col="nope"))
    assert "index column 'nope' not found" in one_line(e)


def test_weights_column_and_npy(tmp_path, frame):
    df = frame.assign(w=np.arange(103) / 10)
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    ds = read_data(str(path), weights="w", chunk_rows=20)
    assert ds.info.feature_names == ["a", "b", "c", "flag"] and ds.info.has_weights
    xs, ys, ws = chunks(ds)
    np.testing.assert_array_equal(stacked(xs), expected(frame))
    np.testing.assert_array_equal(np.concatenate(ws), np.arange(103) / 10)
    assert all(w.dtype == np.float64 for w in ws) and [len(w) for w in ws] == [len(y) for y in ys]

    frame.to_csv(path, index=False)
    np.save(tmp_path / "w.npy", np.arange(103, dtype=np.int32))
    ds = read_data(str(path), weights=str(tmp_path / "w.npy"), chunk_bytes=700)
    np.testing.assert_array_equal(np.concatenate(chunks(ds)[2]), np.arange(103))
    np.save(tmp_path / "w5.npy", np.ones(5))
    with pytest.raises(DataError) as e:
        scan(Source(str(path), weights=str(tmp_path / "w5.npy")))
    assert "103 rows but" in one_line(e)
    with pytest.raises(DataError) as e:
        scan(Source(str(path), weights="nope"))
    assert "weights column 'nope' not found" in one_line(e)


def test_labels_come_back_raw(tmp_path, frame):
    path = tmp_path / "d.csv"
    df = frame.assign(label=np.where(frame["label"] == 1, "spam", "ham"))
    df.to_csv(path, index=False)
    ds = read_data(str(path), chunk_rows=17)
    ys = chunks(ds)[1]
    assert ds.y.dtype == object and all(y.dtype == object for y in ys)
    assert np.concatenate(ys).tolist() == df["label"].tolist()
    df.assign(label=np.where(frame["label"] == 1, 1, -1)).to_csv(path, index=False)
    assert load_local(str(path)).y.tolist() == np.where(frame["label"] == 1, 1, -1).tolist()
    df.assign(label=frame["label"] * 0.5).to_csv(path, index=False)
    got = load_local(str(path))
    assert got.y.dtype == np.float64 and got.y.tolist() == (frame["label"] * 0.5).tolist()


def test_no_label_column(tmp_path, frame):
    path = tmp_path / "d.csv"
    frame.drop(columns="label").to_csv(path, index=False)
    with pytest.raises(DataError) as e:
        scan(Source(str(path)))
    assert one_line(e).startswith(f"label column 'label' not found in {path}; columns are: a, b, c, flag")
    got = load_local(str(path), require_label=False)
    assert got.y is None and got.X.shape == (103, 4)
    assert read_data(str(path), require_label=False).y is None


def test_text_feature_message(tmp_path, frame):
    path = tmp_path / "data.csv"
    frame.assign(country=np.where(frame["b"] > 0, "FR", "DE")).to_csv(path, index=False)
    with pytest.raises(DataError) as e:
        scan(Source(str(path)))
    assert one_line(e) == (f"column 'country' in {path} is not numeric (it holds text); encode it with "
                           "--one-hot country (or --hash-features N for many distinct values)")


def test_text_appearing_after_the_sample_is_reported_by_the_chunk(tmp_path):
    path = tmp_path / "late.csv"
    rows = ["x,label"] + [f"{k},1" for k in range(250_000)] + ["oops,0"]  # beyond the 1 MiB sample
    path.write_text("\n".join(rows) + "\n")
    info = scan(Source(str(path), chunk_rows=100_000))
    read_piece(info, 0)
    with pytest.raises(DataError) as e:
        read_piece(info, 2)
    assert "column 'x'" in one_line(e) and "not numeric" in str(e.value)


def test_glob_headers_must_agree(tmp_path, frame):
    frame.to_csv(tmp_path / "p-0.csv", index=False)
    frame.rename(columns={"c": "z"}).to_csv(tmp_path / "p-1.csv", index=False)
    frame.to_csv(tmp_path / "p-2.csv", index=False)
    with pytest.raises(DataError) as e:
        scan(Source(str(tmp_path / "p-*.csv")))
    assert one_line(e).startswith(f"the header of {tmp_path / 'p-1.csv'} differs from that of "
                                  f"{tmp_path / 'p-0.csv'}")


def test_header_only_first_part(tmp_path, frame):
    frame.iloc[:0].to_csv(tmp_path / "p-0.csv", index=False)
    frame.to_csv(tmp_path / "p-1.csv", index=False)
    ds = read_data(str(tmp_path / "p-*.csv"), chunk_bytes=2000)
    _check_same(ds, frame)  # the column types come from the first part that has rows
    assert ds.info.label_dtype == "int64"


def test_unreadable_and_missing_files(tmp_path):
    cases = {
        str(tmp_path / "missing.csv"): f"cannot read {tmp_path / 'missing.csv'}: No such file or directory",
        str(tmp_path / "none-*.csv"): f"cannot read {tmp_path / 'none-*.csv'}: no files match the pattern",
        str(tmp_path / "x.foo"): "cannot tell the format of",
        str(tmp_path / "bad.parquet"): f"cannot read {tmp_path / 'bad.parquet'}:",
        str(tmp_path / "bad.npy"): f"cannot read {tmp_path / 'bad.npy'}:",
        str(tmp_path / "bad.csv.gz"): f"cannot read {tmp_path / 'bad.csv.gz'}:",
        str(tmp_path / "empty.csv"): "holds no rows",
    }
    for name in ("x.foo", "bad.parquet", "bad.npy", "bad.csv.gz"):
        (tmp_path / name).write_bytes(b"this is not that format\n")
    (tmp_path / "empty.csv").write_text("a,b,label\n")
    for path, message in cases.items():
        with pytest.raises(DataError) as e:
            scan(Source(path, labels=str(tmp_path / "y.npy")))
        assert one_line(e).startswith(message) or message in str(e.value), (path, str(e.value))
    locked = tmp_path / "locked.csv"
    locked.write_text("a,label\n1,0\n")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as a user who reads any file")
        with pytest.raises(DataError) as e:
            scan(Source(str(locked)))
        assert one_line(e) == f"cannot read {locked}: Permission denied"
    finally:
        locked.chmod(0o644)


# --------------------------------------------------------------------------------------------------
# categoricals


@pytest.fixture
def shop(tmp_path) -> tuple[str, pd.DataFrame]:
    df = pd.DataFrame({
        "price": [1.5, 0.0, 2.0, 3.0, 0.0, 4.5],
        "country": ["FR", "DE", "FR", "US", "DE", None],
        "size": ["S", "M", "L", "M", "S", "S"],
        "label": [1, 0, 1, 0, 0, 1],
    })
    path = tmp_path / "shop.csv"
    df.to_csv(path, index=False)
    return str(path), df


def _one_hot_reference(df: pd.DataFrame, vocab: dict[str, list[str]]) -> np.ndarray:
    cols = [df[["price"]].to_numpy(float)]
    for c, values in vocab.items():
        cols.append(np.stack([(df[c] == v).to_numpy(float) for v in values], axis=1))
    return np.hstack(cols)


@pytest.mark.parametrize("size", [{}, {"chunk_rows": 2}, {"chunk_bytes": 1}])
def test_one_hot(shop, size):
    path, df = shop
    ds = read_data(path, one_hot=("country", "size"), **size)
    enc = ds.info.encoder
    assert enc.vocabulary == (("DE", "FR", "US"), ("L", "M", "S"))
    assert ds.info.feature_names == ["price", "country=DE", "country=FR", "country=US", "size=L", "size=M",
                                     "size=S"]
    xs, ys, _ = chunks(ds)
    assert all(sp.isspmatrix_csr(x) for x in xs) and ds.info.sparse
    X = sp.vstack(xs).tocsr()
    np.testing.assert_array_equal(X.toarray(), _one_hot_reference(df, {"country": ["DE", "FR", "US"],
                                                                        "size": ["L", "M", "S"]}))
    assert X.nnz == 4 + 5 + 6  # zero prices are not stored; the missing country has no indicator
    np.testing.assert_array_equal(np.concatenate(ys), df["label"].to_numpy())


def test_encoder_json_round_trip_and_unseen_categories(shop, tmp_path):
    path, _ = shop
    enc = load_local(path, one_hot=("country", "size")).info.encoder
    back = Encoder.from_json(json.loads(json.dumps(enc.to_json())))
    assert back == enc
    new = pd.DataFrame({"price": [1.0, 2.0, 0.0], "country": ["US", "JP", "FR"], "size": ["XL", "S", "M"],
                        "extra": [9, 9, 9]})
    new_path = tmp_path / "new.csv"
    new.to_csv(new_path, index=False)
    got = load_local(str(new_path), encoder=back.to_json(), require_label=False)
    assert got.n_unseen == 2 and any("2 categorical value(s)" in n for n in got.info.notices)
    assert got.info.feature_names == enc.feature_names()
    np.testing.assert_array_equal(got.X.toarray(), [[1, 0, 0, 1, 0, 0, 0],
                                                    [2, 0, 0, 0, 0, 0, 1],
                                                    [0, 0, 1, 0, 0, 1, 0]])
    X, unseen = enc.transform(new)
    assert unseen == 2 and (X != got.X).nnz == 0
    with pytest.raises(DataError) as e:
        Encoder.from_json({"type": "something else"})
    one_line(e)


def test_hashed_features(shop):
    path, df = shop
    got = load_local(path, one_hot=("country", "size"), hash_features=4, chunk_rows=4)
    assert got.info.feature_names == ["price", "hash_0", "hash_1", "hash_2", "hash_3"]
    ref = np.zeros((6, 5))
    ref[:, 0] = df["price"]
    for i, row in df.iterrows():
        for c in ("country", "size"):
            if isinstance(row[c], str):
                ref[i, 1 + bucket_of(c, row[c], 4)] += 1
    np.testing.assert_array_equal(got.X.toarray(), ref)
    from sklearn.utils import murmurhash3_32

    assert bucket_of("country", "FR", 4) == murmurhash3_32("country=FR", seed=0, positive=True) % 4
    auto = load_local(path, hash_features=4)  # no --one-hot: every text column is hashed
    assert auto.info.encoder.categorical == ("country", "size") and (auto.X != got.X).nnz == 0
    assert Encoder.from_json(json.loads(json.dumps(auto.info.encoder.to_json()))) == auto.info.encoder


def test_one_hot_parquet(shop, tmp_path):
    path, df = shop
    pq_path = tmp_path / "shop.parquet"
    df.to_parquet(pq_path, index=False, row_group_size=2)
    a = load_local(path, one_hot=("country", "size"))
    b = load_local(str(pq_path), one_hot=("country", "size"), chunk_rows=2)
    assert a.info.encoder == b.info.encoder and len(b.info.pieces) == 3
    assert (a.X != b.X).nnz == 0


def test_one_hot_errors(shop, tmp_path):
    path, _ = shop
    with pytest.raises(DataError) as e:
        scan(Source(path, one_hot=("nope",)))
    assert "--one-hot column 'nope' not found" in one_line(e)
    np.save(tmp_path / "X.npy", np.ones((3, 2)))
    with pytest.raises(DataError) as e:
        scan(Source(str(tmp_path / "X.npy"), one_hot=("a",), require_label=False))
    assert "table columns" in one_line(e)


# --------------------------------------------------------------------------------------------------
# on a real cluster of worker processes


@pytest.fixture(scope="module")
def cluster_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


def test_read_data_on_workers(cluster_client, tmp_path, monkeypatch, frame, shop):
    c = cluster_client
    folder = tmp_path / "data"
    folder.mkdir()
    frame.iloc[:60].to_csv(folder / "p0.csv.gz", index=False, compression="gzip")
    frame.iloc[60:].to_csv(folder / "p1.csv", index=False)
    monkeypatch.chdir(tmp_path)  # the workers' cwd is elsewhere: the path is made absolute first
    local = read_data("data", chunk_rows=9)
    remote = read_data("data", chunk_rows=9, client=c)
    assert remote.info.source.path == str(folder) and remote.info.piece_rows == local.info.piece_rows
    futures = c.compute([remote.X, remote.y])
    X, y = c.gather(futures)
    np.testing.assert_array_equal(X, expected(frame))
    np.testing.assert_array_equal(y, frame["label"].to_numpy())
    where = c.run(os.getcwd)
    assert all(w != str(tmp_path) for w in where.values())
    # the one-hot vocabulary is gathered from the workers' pass
    shop_path, _ = shop
    ds = read_data(os.path.relpath(shop_path), one_hot=("country", "size"), chunk_rows=2, client=c)
    assert ds.info.encoder.vocabulary == (("DE", "FR", "US"), ("L", "M", "S"))
    parts = c.gather(c.compute(list(ds.X.to_delayed().ravel())))
    assert (sp.vstack(parts) != load_local(shop_path, one_hot=("country", "size")).X).nnz == 0


def test_libsvm_scan_pass_on_workers(cluster_client, tmp_path, rng):
    from sklearn.datasets import dump_svmlight_file, load_svmlight_file

    X, y = _svm_reference_data(rng)
    dump_svmlight_file(X, y, str(tmp_path / "d.svm"), zero_based=False)
    ds = read_data(str(tmp_path / "d.svm"), chunk_bytes=100, client=cluster_client)
    assert len(ds.info.pieces) > 10 and ds.info.n_features == 9
    xs = cluster_client.gather(cluster_client.compute(list(ds.X.to_delayed().ravel())))
    ys = cluster_client.gather(cluster_client.compute(list(ds.y.to_delayed().ravel())))
    ref_X, ref_y = load_svmlight_file(str(tmp_path / "d.svm"))
    assert_csr_equal(sp.vstack(xs), ref_X)
    np.testing.assert_array_equal(np.concatenate(ys), ref_y)


def test_a_path_only_the_client_sees(cluster_client, frame):
    import fsspec

    mem = fsspec.filesystem("memory")  # memory:// lives in this process only
    with mem.open("/client-only/d.csv", "wb") as f:
        f.write(frame.to_csv(index=False).encode())
    try:
        assert load_local("memory://client-only/d.csv").X.shape == (103, 4)
        with pytest.raises(DataError) as e:
            read_data("memory://client-only/d.csv", client=cluster_client)
        assert one_line(e) == ("cannot read memory://client-only/d.csv on the workers: "
                               "No such file or directory")
    finally:
        mem.rm("/client-only", recursive=True)


def test_dataset_unpacks_like_dlogit_0_1(tmp_path, frame):
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    X, y, info = read_data(str(path), label="label", labels=None, chunk_rows=None, dtype="float32")
    assert X.dtype == np.float32 and info.label == "label" and info.columns == ["a", "b", "c", "flag"]
    X, y, info = load_local(str(path), label="label", labels=None, require_label=True)
    assert X.shape == (103, 4) and y.shape == (103,)
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize("row", [3, 70_000])  # in the sample the plan reads, and far past it
def test_a_row_with_more_fields_than_the_header_is_one_line_naming_it(tmp_path, row):
    """pandas, given the header's names, drops a row's extra field (or makes its first field the index)
    without a word: the row's values would shift into the wrong columns, and a label like 7.0 become a
    class. The read refuses it, naming the row."""
    rng = np.random.default_rng(0)
    lines = [f"{a:.6f},{b:.6f},{k % 2}" for k, (a, b) in enumerate(rng.random((80_000, 2)))]
    lines[row - 1] = "1.5,2.5,7.0,1"
    path = tmp_path / "extra.csv"
    path.write_text("a,b,y\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"extra\.csv: row {row} has (4 fields, )?more") as err:
        load_local(str(path), label="y")
    assert "\n" not in str(err.value)
