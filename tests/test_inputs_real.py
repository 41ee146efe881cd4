"""Inputs as they come in real life (issue 19): files written by pandas and Dask, mixed directories,
duplicate or missing headers, untrusted Zarr stores, bad values named where they are, options that
would be ignored. Real files in tmp_path; the CLI cases run ``dlogit`` in this process against one
shared cluster of worker processes (``test_cli``'s)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
from test_cli import cli, scheduler  # noqa: F401 - the module's shared cluster

from dlogit.data import load_local
from dlogit.errors import DataError
from dlogit.io import Source, scan

pytestmark = pytest.mark.timeout(300)


def _frame(n: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    y = (X[:, 0] - X[:, 1] + 0.5 * rng.standard_normal(n) > 0).astype(int)
    return pd.DataFrame({"f0": X[:, 0], "f1": X[:, 1], "f2": X[:, 2], "y": y})


def _one_line(r) -> str:
    assert r.rc == 2, r.out + r.err
    assert len(r.err_lines) == 1 and r.err.startswith("dlogit: error: "), r.err
    assert "Traceback" not in r.err
    return r.err_lines[0]


# --------------------------------------------------------------------------------------------------
# 1. the index pandas and Dask write into Parquet


def test_parquet_index_written_by_pandas_or_dask_is_dropped_with_a_notice(tmp_path):
    d = _frame()
    d[d.f0 > -1].to_parquet(tmp_path / "filtered.parquet")  # a filtered frame: its index is stored
    ids = pd.Index(np.random.default_rng(1).permutation(len(d)), name="row_id")  # not a RangeIndex: stored
    d.set_index(ids).to_parquet(tmp_path / "named.parquet")
    for name, index in (("filtered.parquet", "__index_level_0__"), ("named.parquet", "row_id")):
        info = scan(Source(str(tmp_path / name), label="y"))
        assert info.feature_names == ["f0", "f1", "f2"], name
        assert any(index in n and "pandas index" in n for n in info.notices), info.notices
    import dask.dataframe as dd

    dd.from_pandas(d[d.f0 > -1], npartitions=2).to_parquet(tmp_path / "dask")  # writes its index too
    info = scan(Source(str(tmp_path / "dask"), label="y"))
    assert info.feature_names == ["f0", "f1", "f2"] and info.n_rows == int((d.f0 > -1).sum())
    # a column chosen as the label is never dropped, and --index-col still decides
    info = scan(Source(str(tmp_path / "named.parquet"), label="y", index_col="f2"))
    assert info.feature_names == ["f0", "f1", "row_id"]


# --------------------------------------------------------------------------------------------------
# 2. a directory of parts in several formats


def test_a_directory_of_parts_in_several_formats_is_refused_naming_them(tmp_path):
    d = _frame()
    data = tmp_path / "parts"
    data.mkdir()
    d.iloc[:500].to_csv(data / "part-0.csv", index=False)
    d.iloc[500:].to_parquet(data / "part-1.parquet", index=False)
    (data / "README.txt").write_text("two parts\n")
    with pytest.raises(DataError) as e:
        scan(Source(str(data), label="y"))
    assert "part-0.csv (csv)" in str(e.value) and "part-1.parquet (parquet)" in str(e.value)
    for fmt in ("csv", "parquet"):  # a format named: the parts of the other one are named, not skipped
        with pytest.raises(DataError) as e:
            scan(Source(str(data), label="y", format=fmt))
        assert ("part-1.parquet" if fmt == "csv" else "part-0.csv") in str(e.value)
    with pytest.raises(DataError, match="part-1.parquet"):
        scan(Source(str(data / "part-*"), label="y", format="csv"))
    os.remove(data / "part-1.parquet")  # one format (and a README beside it): read
    assert scan(Source(str(data), label="y")).n_rows == 500


# --------------------------------------------------------------------------------------------------
# 3. duplicate column names; 4. no header


def test_duplicate_column_names_are_refused(capfd, tmp_path, scheduler):  # noqa: F811
    path = tmp_path / "dup.csv"
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    pd.DataFrame(np.c_[rng.standard_normal((200, 2)), y, y], columns=["a", "b", "y", "y"]).to_csv(path, index=False)
    with pytest.raises(DataError, match="column 'y' appears more than once"):
        scan(Source(str(path), label="y"))
    r = cli(capfd, "train", path, "--label", "y", "--scheduler", scheduler, "--out", tmp_path / "m.npz")
    assert "column 'y' appears more than once" in _one_line(r)
    assert not (tmp_path / "m.npz").exists()


def test_headerless_csv_with_no_header_and_a_header_of_numbers(capfd, tmp_path, scheduler):  # noqa: F811
    d = _frame(2000)
    path = tmp_path / "nohead.csv"
    d.to_csv(path, index=False, header=False)
    with pytest.raises(DataError, match="--no-header"):  # its first data row is no header
        scan(Source(str(path), label="1"))
    info = scan(Source(str(path), label="3", header=False, chunk_rows=300))
    assert info.n_rows == 2000 and info.feature_names == ["0", "1", "2"]
    got = load_local(Source(str(path), label="3", header=False, chunk_rows=300))
    np.testing.assert_array_equal(got.X, d[["f0", "f1", "f2"]].to_numpy())
    np.testing.assert_array_equal(got.y, d["y"].to_numpy())
    model = tmp_path / "m.npz"
    r = cli(capfd, "train", path, "--no-header", "--label", "3", "--scheduler", scheduler, "--out", model,
            "--json")
    assert r.rc == 0, r.err
    meta = json.loads(str(np.load(model)["meta"]))
    assert meta["feature_names"] == ["0", "1", "2"] and sum(meta["class_counts"]) == 2000
    r = cli(capfd, "predict", model, path, "--out", tmp_path / "p.csv")  # the model remembers --no-header
    assert r.rc == 0, r.err
    assert len(pd.read_csv(tmp_path / "p.csv")) == 2000
    r = cli(capfd, "train", path, "--label", "1", "--scheduler", scheduler)
    assert "pass --no-header" in _one_line(r)
    with pytest.raises(DataError, match="--no-header is for CSV"):
        scan(Source(str(tmp_path / "x.parquet"), header=False, format="parquet"))


# --------------------------------------------------------------------------------------------------
# 5. Zarr arrays of Python objects are never decoded


def _pickled_zarr_array(path, marker) -> None:
    """A Zarr v2 array of dtype object (Pickle codec) whose one chunk, once unpickled, creates
    ``marker``: written by hand (recent zarr refuses to write object arrays)."""
    import pickle

    os.makedirs(path)
    with open(os.path.join(path, ".zarray"), "w") as f:
        json.dump({"zarr_format": 2, "shape": [10], "chunks": [10], "dtype": "|O", "compressor": None,
                   "fill_value": None, "order": "C", "filters": [{"id": "pickle", "protocol": 5}]}, f)

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    values = np.array([0, 1] * 5, dtype=object)
    values[0] = Payload()
    with open(os.path.join(path, "0"), "wb") as f:
        f.write(pickle.dumps(values, protocol=5))


def test_zarr_arrays_of_python_objects_are_refused_before_reading(tmp_path):
    zarr = pytest.importorskip("zarr")
    store = tmp_path / "d.zarr"
    g = zarr.open_group(str(store), mode="w", zarr_format=2)
    g.create_array("X", data=np.random.default_rng(0).standard_normal((10, 3)))
    g.create_array("w", data=np.ones(10))
    marker = tmp_path / "UNPICKLED"
    _pickled_zarr_array(str(store / "label"), marker)
    _pickled_zarr_array(str(store / "weights"), marker)
    cases = [Source(str(store)),  # the label array
             Source(str(store / "X"), labels=str(store / "label")),  # a labels array named directly
             Source(str(store), label="w", weights="weights")]  # the weights array
    for src in cases:
        for read in (scan, load_local):
            with pytest.raises(DataError, match=r"holds Python objects \(a pickle\)"):
                read(src)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# 6. the pyarrow floor


def test_pyarrow_floor_is_past_cve_2023_47248_and_ci_installs_it():
    root = os.path.join(os.path.dirname(__file__), "..")
    with open(os.path.join(root, "pyproject.toml")) as f:
        floor = re.search(r'"pyarrow>=([0-9.]+)"', f.read()).group(1)
    assert tuple(int(p) for p in floor.split(".")) >= (18,)  # 14.0.0 executes code from Parquet files
    with open(os.path.join(root, ".ci", "run")) as f:
        ci = f.read()
    assert '"pyarrow==$oldest_pyarrow"' in ci and "pyarrow>=" in ci


# --------------------------------------------------------------------------------------------------
# 7. a separator of several characters; Parquet parts whose types differ


def test_a_separator_of_several_characters_is_one_clear_line(capfd, tmp_path, scheduler):  # noqa: F811
    path = tmp_path / "d.csv"
    _frame(50).to_csv(path, index=False)
    with pytest.raises(DataError, match="--sep must be one character, got 'ab'"):
        Source(str(path), sep="ab")
    r = cli(capfd, "train", path, "--sep", "ab", "--label", "y", "--scheduler", scheduler)
    line = _one_line(r)
    assert "--sep must be one character" in line and "Warning" not in r.err
    assert Source(str(path), sep="\\t").sep == "\t"


def test_parquet_parts_whose_types_differ_name_the_file_and_the_columns(tmp_path):
    d = _frame(20)
    data = tmp_path / "ds"
    data.mkdir()
    d.iloc[:10].to_parquet(data / "part-0.parquet", index=False)
    d.iloc[10:].astype({"f1": str, "f2": "float32"}).to_parquet(data / "part-1.parquet", index=False)
    with pytest.raises(DataError) as e:
        load_local(Source(str(data), label="y"))
    msg = str(e.value)
    assert "part-1.parquet" in msg and "part-0.parquet" in msg, msg
    assert re.search(r"'f1' is \w*string there, double in the first file", msg), msg
    assert "'f2' is float there, double" in msg and "\n" not in msg, msg


# --------------------------------------------------------------------------------------------------
# 8. estimator inputs with text columns


def test_estimator_names_the_text_and_category_columns(scheduler):  # noqa: F811
    import dask.dataframe as dd
    from distributed import Client

    import dlogit

    d = _frame(60)
    d["city"] = np.where(d.f0 > 0, "Paris", "Lyon")
    d["kind"] = pd.Categorical(np.where(d.f1 > 0, "a", "b"))
    X, y = d.drop(columns="y"), d["y"]
    with pytest.raises(DataError, match=r"columns 'city' \(\w+\), 'kind' \(category\) of X are not numeric: "
                                        "one-hot encode them"):
        dlogit.LogisticRegression().fit(X, y)
    with pytest.raises(DataError, match=r"column 'kind' \(category\) of X is not numeric"):
        dlogit.LogisticRegression().fit(X.drop(columns="city"), y)
    with Client(scheduler) as client, \
            pytest.raises(DataError, match=r"column 'city' \(\w+\) of X is not numeric"):
        dlogit.LogisticRegression().fit(dd.from_pandas(X.drop(columns="kind"), npartitions=2),
                                        dd.from_pandas(y, npartitions=2), client=client)


# --------------------------------------------------------------------------------------------------
# 9. NaN / inf named by file, row and column


def test_non_finite_values_are_named_by_file_row_and_column(capfd, tmp_path, scheduler):  # noqa: F811
    d = _frame(400)
    d.loc[337, "f1"] = np.nan
    parts = tmp_path / "parts"
    parts.mkdir()
    d.iloc[:200].to_csv(parts / "part-0.csv", index=False)
    d.iloc[200:].to_csv(parts / "part-1.csv", index=False)  # row 337 is row 138 of part-1
    r = cli(capfd, "train", parts, "--label", "y", "--scheduler", scheduler, "--chunk-rows", "50")
    line = _one_line(r)
    assert f"{parts / 'part-1.csv'}: row 138, column 'f1'" in line and "NaN or infinite" in line, line
    assert "worker" not in line and "chunk 5" not in line, line
    d.iloc[200:].to_parquet(tmp_path / "p.parquet", index=False, row_group_size=30)
    with pytest.raises(DataError, match=r"p\.parquet: row 138, column 'f1'"):
        load_local(Source(str(tmp_path / "p.parquet"), label="y", chunk_rows=60))
    X = d[["f0", "f1", "f2"]].to_numpy().copy()
    X[5, 2] = np.inf
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(DataError, match=r"x\.npy: row 6, column 2 \(0-based\)"):
        load_local(Source(str(tmp_path / "x.npy"), require_label=False, chunk_rows=4))
    (tmp_path / "d.svm").write_text("1 1:0.5\n0 2:1\n1 1:2 3:nan\n")
    with pytest.raises(DataError, match=r"d\.svm: row 3, feature index 3"):
        load_local(Source(str(tmp_path / "d.svm")))


# --------------------------------------------------------------------------------------------------
# 10. options that would be ignored; 11. LIBSVM labels stay integers


def test_options_that_would_be_ignored_are_refused_or_warned(capfd, tmp_path, scheduler):  # noqa: F811
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((100, 3)))
    np.save(tmp_path / "y.npy", rng.integers(0, 2, 100))
    r = cli(capfd, "train", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--label", "target",
            "--scheduler", scheduler)
    assert "--label target names a column" in _one_line(r)
    csv = tmp_path / "d.csv"
    d = _frame(300)
    d["price"] = np.round(rng.random(300) * 1000, 3)  # 300 distinct non-integers
    d["city"] = np.where(d.f0 > 0, "Paris", "Lyon")
    d.to_csv(csv, index=False)
    model = tmp_path / "m.npz"
    r = cli(capfd, "train", csv, "--label", "y", "--one-hot", "city,price", "--scheduler", scheduler,
            "--out", model)
    assert r.rc == 0, r.err
    assert "--one-hot column 'price' holds 300 distinct non-integer numbers" in r.out, r.out
    assert "'city' holds" not in r.out
    for opts in (["--one-hot", "city"], ["--hash-features", "8", "--one-hot", "city"]):  # not the model's
        for cmd in (["predict", model, csv, "--out", tmp_path / "p.csv"], ["evaluate", model, csv]):
            r = cli(capfd, *cmd, *opts)
            line = _one_line(r)
            assert opts[0] in line and "model's encoding" in line, line
    assert not (tmp_path / "p.csv").exists()


def test_libsvm_integer_labels_come_back_as_integers(capfd, tmp_path, scheduler):  # noqa: F811
    rng = np.random.default_rng(2)
    lines = []
    for _ in range(200):
        x = rng.standard_normal(3)
        lines.append(f"{'+1' if x[0] > 0 else -1} " + " ".join(f"{j + 1}:{v:.4f}" for j, v in enumerate(x)))
    path = tmp_path / "pm.svm"
    path.write_text("\n".join(lines) + "\n")
    model = tmp_path / "m.npz"
    r = cli(capfd, "train", path, "--scheduler", scheduler, "--out", model, "--l2", "0.01")
    assert r.rc == 0, r.err
    r = cli(capfd, "predict", model, path, "--out", tmp_path / "p.csv")
    assert r.rc == 0, r.err
    labels = pd.read_csv(tmp_path / "p.csv", dtype=str)["label"]
    assert set(labels) == {"-1", "1"}
    assert list(pd.read_csv(tmp_path / "p.csv", nrows=0).columns) == ["label", "proba_-1", "proba_1"]
    (tmp_path / "f.svm").write_text("1.5 1:1\n0 1:2\n")  # labels written as floats stay floats
    assert load_local(str(tmp_path / "f.svm")).y.dtype == np.float64


# --------------------------------------------------------------------------------------------------
# 12. review: pandas' positional header; extensionless parts; matching predict options; Zarr
# vlen-utf8 strings; 0-d arrays in JSON


def test_a_header_of_pandas_positional_names_is_a_header(tmp_path):
    d = _frame(300)
    path = tmp_path / "pos.csv"
    pd.DataFrame(d.to_numpy()).to_csv(path, index=False)  # header 0,1,2,3: pandas' default names
    info = scan(Source(str(path), label="3"))
    assert info.n_rows == 300 and info.feature_names == ["0", "1", "2"]
    got = load_local(Source(str(path), label="3"))
    np.testing.assert_array_equal(got.X, d[["f0", "f1", "f2"]].to_numpy())
    assert sorted(set(got.y.tolist())) == [0, 1]  # no spurious class from a header read as data
    for header in ("1,0,2,3", "0,1,2,4", "0.0,1,2,3"):  # numbers, not 0..n-1 in order: still refused
        other = tmp_path / "other.csv"
        other.write_text(header + "\n" + d.to_csv(index=False, header=False))
        with pytest.raises(DataError, match="pass --no-header"):
            scan(Source(str(other), label="3"))


def test_parts_without_an_extension_are_read_as_the_format_given(tmp_path):
    d = _frame(300)
    spark = tmp_path / "spark"  # Spark's LIBSVM parts and markers
    spark.mkdir()
    for k, part in enumerate((d.iloc[:100], d.iloc[100:])):
        lines = [f"{y} " + " ".join(f"{j + 1}:{v}" for j, v in enumerate(row))
                 for y, row in zip(part.y, part[["f0", "f1", "f2"]].to_numpy())]
        (spark / f"part-0000{k}").write_text("\n".join(lines) + "\n")
        (spark / f".part-0000{k}.crc").write_bytes(b"\0")
    (spark / "_SUCCESS").write_text("")
    for path in (spark, spark / "part-*"):
        assert scan(Source(str(path), format="libsvm")).n_rows == 300, path
    hive = tmp_path / "hive"  # Hive's Parquet parts
    hive.mkdir()
    d.iloc[:100].to_parquet(hive / "000000_0", index=False)
    d.iloc[100:].to_parquet(hive / "000001_0", index=False)
    got = load_local(Source(str(hive), label="y", format="parquet"))
    np.testing.assert_array_equal(got.X, d[["f0", "f1", "f2"]].to_numpy())
    dask_dir = tmp_path / "dask"  # Dask's CSV parts
    dask_dir.mkdir()
    d.iloc[:100].to_csv(dask_dir / "0.part", index=False)
    d.iloc[100:].to_csv(dask_dir / "1.part", index=False)
    for path in (dask_dir, dask_dir / "*"):
        assert scan(Source(str(path), label="y", format="csv")).n_rows == 300, path
    # a file of another known data kind is still named, format given or not
    d.iloc[:10].to_parquet(dask_dir / "extra.parquet", index=False)
    for path in (dask_dir, dask_dir / "*"):
        with pytest.raises(DataError, match=r"extra\.parquet \(parquet\)"):
            scan(Source(str(path), label="y", format="csv"))


def test_sidecar_files_beside_parts_are_skipped_with_a_notice(tmp_path):
    d = _frame(300)
    data = tmp_path / "parts"
    data.mkdir()
    d.iloc[:100].to_csv(data / "part-0.csv", index=False)
    d.iloc[100:].to_csv(data / "part-1.csv", index=False)
    (data / "schema.json").write_text('{"y": "int"}')
    (data / "meta.yaml").write_text("rows: 300\n")
    (data / "_SUCCESS").write_text("")
    (data / "LICENSE").write_text("CC-BY\n")
    info = scan(Source(str(data), label="y"))
    assert info.n_rows == 300
    notice = [n for n in info.notices if "schema.json" in n]
    assert len(notice) == 1 and "meta.yaml" in notice[0] and "LICENSE" in notice[0], info.notices
    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    d.to_parquet(pq_dir / "part-0.parquet", index=False)
    (pq_dir / "README.md").write_text("notes\n")
    (pq_dir / "schema.json").write_text("{}")
    assert scan(Source(str(pq_dir), label="y")).n_rows == 300
    assert scan(Source(str(pq_dir / "*"), label="y", format="parquet")).n_rows == 300
    # a file of no known kind in a directory, no format given: named, not read and not skipped
    d.iloc[:5].to_csv(data / "0.part", index=False)
    with pytest.raises(DataError, match=r"no known format: 0\.part; name the format with --format"):
        scan(Source(str(data), label="y"))
    assert scan(Source(str(data), label="y", format="csv")).n_rows == 305


def test_predict_and_evaluate_accept_the_encoding_of_training(capfd, tmp_path, scheduler):  # noqa: F811
    d = _frame(300)
    d["city"] = np.where(d.f0 > 0, "Paris", np.where(d.f1 > 0, "Lyon", "Nice"))
    csv = tmp_path / "d.csv"
    d.to_csv(csv, index=False)
    hashed = ["--one-hot", "city", "--hash-features"]
    for opts, bad in ((["--dtype", "float64", "--one-hot", "city"], ["--one-hot", "city,f2"]),
                      ([*hashed, "8"], [*hashed, "16"])):
        model = tmp_path / "m.npz"
        r = cli(capfd, "train", csv, "--label", "y", *opts, "--scheduler", scheduler, "--out", model)
        assert r.rc == 0, r.err
        for cmd in (["predict", model, csv, "--out", tmp_path / "p.csv"], ["evaluate", model, csv]):
            r = cli(capfd, *cmd, *opts)  # the same $OPTS as training
            assert r.rc == 0, r.err
            assert "--dtype" not in r.out  # float64: what the model computes in, no notice
            r = cli(capfd, *cmd, *bad)
            line = _one_line(r)
            assert bad[-2] in line and "model's encoding" in line, line
        os.remove(tmp_path / "p.csv")
        encoding = opts[opts.index("--one-hot"):]
        r = cli(capfd, "predict", model, csv, "--out", tmp_path / "p.csv", "--dtype", "float32", *encoding)
        assert r.rc == 0, r.err
        assert "--dtype float32 has no effect" in r.out and "float64" in r.out, r.out
    r = cli(capfd, "evaluate", model, csv, "--hash-features", "8")  # no --one-hot: not the model's
    assert "no --one-hot" in _one_line(r)


def test_json_value_of_zero_dimensional_arrays():
    from dlogit.cli._common import json_line, json_value

    assert json_value(np.array(1.5)) == 1.5 and isinstance(json_value(np.array(1.5)), float)
    assert json_value(np.array(3)) == 3 and json_value(np.array(np.nan)) is None
    assert json_value({"a": np.array(True), "b": np.array([np.array(2.0)])}) == {"a": True, "b": [2.0]}
    assert json_line([np.array(-np.inf), np.float32(0.5)]) == "[null, 0.5]"


def test_zarr_v2_string_arrays_are_no_pickle(capfd, tmp_path, scheduler):  # noqa: F811
    zarr = pytest.importorskip("zarr")
    store = tmp_path / "s.zarr"
    g = zarr.open_group(str(store), mode="w", zarr_format=2)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    names = np.where(X[:, 0] - X[:, 1] > 0, "yes", "no")
    g.create_array("X", data=X)
    for name in ("label", "text"):
        a = g.create_array(name, shape=(200,), dtype=str)  # zarr 3: "dtype": "|O", filter vlen-utf8
        a[:] = names
    with open(store / "label" / ".zarray") as f:
        meta = json.load(f)
    assert meta["dtype"] == "|O" and {"id": "vlen-utf8"} in meta["filters"], meta
    info = scan(Source(str(store)))
    assert info.n_rows == 200 and info.label_dtype == "object"
    got = load_local(Source(str(store), chunk_rows=64))
    assert got.y.tolist() == names.tolist()
    with pytest.raises(DataError, match=r"weights in .*text are not numeric"):
        scan(Source(str(store), weights="text"))
    a = g.create_array("Xtext", shape=(200, 3), dtype=str)
    a[:] = np.c_[names, names, names]
    with pytest.raises(DataError, match=r"Xtext must hold numbers"):
        scan(Source(str(store / "Xtext"), labels=str(store / "label")))
    model = tmp_path / "m.npz"
    r = cli(capfd, "train", store, "--scheduler", scheduler, "--out", model)
    assert r.rc == 0, r.err
    # an object array with no codec that decodes it without pickle is still refused from its metadata
    bare = store / "bare"
    bare.mkdir()
    (bare / ".zarray").write_text(json.dumps({"zarr_format": 2, "shape": [200], "chunks": [200],
                                              "dtype": "|O", "compressor": None, "fill_value": None,
                                              "order": "C", "filters": None}))
    with pytest.raises(DataError, match=r"holds Python objects \(a pickle\)"):
        scan(Source(str(store), label="bare"))
