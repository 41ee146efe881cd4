"""Fuzzing the CLI and the readers (issue 10): whatever the files and options hold, the only outcomes
are a correct run (exit 0 and a model that loads and predicts) or one ``dlogit: error:`` line with exit
2 (3 for a diverged fit), and no stray file: no ``.dlogit-*`` temporary, no output after a failure.

The CLI runs in this process (``dlogit.cli.main``) against one shared cluster for the module, so an
example costs a fraction of a second; the readers are fuzzed directly (``dlogit.io.scan`` and
``read_piece``: data or :class:`~dlogit.errors.DataError`, never another exception).
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_cli import cli as run_cli

import dlogit
from dlogit.errors import DataError

pytestmark = pytest.mark.timeout(600)

FUZZ = settings(max_examples=int(os.environ.get("DLOGIT_FUZZ_EXAMPLES", "30")), deadline=None, derandomize=not os.environ.get("DLOGIT_FUZZ_SEED"), database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def cli(capfd, args: list) -> tuple[int, str, str]:
    """``dlogit ARGS`` in this process: ``(exit code, stdout, stderr)``; process-wide state restored
    (the runner of test_cli)."""
    r = run_cli(capfd, *args)
    return r.rc, r.out, r.err


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=50) as lc:
        yield lc.scheduler_address


# --------------------------------------------------------------------------------------------------
# strategies: cells, columns, tables, option values

_text = st.text(alphabet=string.ascii_letters + " ,;\"'\t-", min_size=0, max_size=6)
_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(min_value=-1e3, max_value=1e3),
    st.integers(min_value=-10**6, max_value=10**6),
)
_cell = st.one_of(_numbers, _numbers, _numbers, st.just(""), _text, st.booleans())
_label = st.one_of(
    st.sampled_from([0, 1]), st.sampled_from([0, 1, 2]), st.sampled_from(["yes", "no"]),
    st.booleans(), st.sampled_from([0.5, -1.0, 7.0]), st.just(""), st.just(float("nan")), _text,
)


@st.composite
def tables(draw):
    """A column dict: 0..40 rows, 1..4 features of one cell kind each (mostly clean numbers), a label."""
    n = draw(st.one_of(st.integers(min_value=0, max_value=3), st.integers(min_value=8, max_value=40),
                       st.integers(min_value=8, max_value=40)))
    k = draw(st.integers(min_value=1, max_value=4))
    cols: dict[str, list] = {}
    for j in range(k):
        kind = draw(st.sampled_from(["clean"] * 6 + ["messy", "int", "text"]))
        if kind == "clean":
            cols[f"x{j}"] = draw(st.lists(st.floats(min_value=-100, max_value=100), min_size=n, max_size=n))
        elif kind == "int":
            cols[f"x{j}"] = draw(st.lists(st.integers(min_value=-5, max_value=5), min_size=n, max_size=n))
        elif kind == "text":
            cols[f"x{j}"] = draw(st.lists(_text, min_size=n, max_size=n))
        else:
            cols[f"x{j}"] = draw(st.lists(_cell, min_size=n, max_size=n))
    label_kind = draw(st.sampled_from(["binary", "binary", "binary", "multi", "strings", "messy", "none"]))
    every = {"binary": [0, 1], "multi": [3, 5, 9], "strings": ["cat", "dog"]}.get(label_kind)
    if every is not None:  # every class present (when the rows allow), the rest drawn
        drawn = draw(st.lists(st.sampled_from(every), min_size=n, max_size=n))
        cols["label"] = (every + drawn[len(every):])[:n] if n >= len(every) else drawn
    elif label_kind == "messy":
        cols["label"] = draw(st.lists(_label, min_size=n, max_size=n))
    return cols


#: option -> (values that must work, values that must be refused)
_option_values = {
    "--solver": (["gd", "lbfgs", "newton"], ["sgd", ""]),
    "--l2": (["0", "0.01", "1", "100", "1e300"], ["-1", "nan", "inf", "x"]),
    "--l1": (["0", "0.01", "0.5"], ["-0.5", "inf"]),
    "--lr": (["0.1", "1e-3", "10", "1e100"], ["0", "-1", "inf", "nan"]),
    "--tol": (["0", "1e-6", "1"], ["-1", "nan"]),
    "--chunk-rows": (["1", "3", "7"], ["0", "-2", "many"]),
    "--dtype": (["float32", "float64"], ["float16"]),
    "--init": (["zeros", "normal"], ["ones"]),
    "--class-weight": (["balanced"], ["heavy"]),
    "--label": (["label"], ["nope", ""]),
    "--index-col": (["x0"], ["nope"]),
    "--checkpoint-every": (["0.01", "1s"], ["-1", "soon"]),
    "--mode": (["auto", "worker-local", "distributed"], ["fast"]),
    "--max-iter": (["1", "3", "25"], ["0", "two"]),
}
_flags = ["--no-intercept", "--keep-diverged", "--checkpoint"]  # --checkpoint DIR: a directory of the example


@st.composite
def options(draw):
    """Mostly valid options (--max-iter always, so that gd's 10001 default never runs); sometimes one
    value that must be refused."""
    names = ["--max-iter", *draw(st.lists(st.sampled_from(sorted(set(_option_values) - {"--max-iter"})),
                                          max_size=4, unique=True))]
    bad = draw(st.sampled_from([None] * 8 + names))
    args = []
    for name in names:
        good, refused = _option_values[name]
        args += [name, draw(st.sampled_from(refused if name == bad else good))]
    for flag in draw(st.lists(st.sampled_from(_flags), max_size=2, unique=True)):
        args.append(flag)
    return args


def _write(fmt: str, cols: dict[str, list], d: Path) -> tuple[Path, list[str]]:
    """Write the table as FMT; return the DATA path and the extra arguments it needs."""
    import pandas as pd

    if fmt == "csv":
        path = d / "data.csv"
        pd.DataFrame(cols).to_csv(path, index=False)
        return path, []
    if fmt == "parquet":
        path = d / "data.parquet"
        frame = pd.DataFrame({k: (v if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                                  else [str(x) for x in v]) for k, v in cols.items()})
        frame.to_parquet(path, index=False)
        return path, []
    path = d / "data.npy"
    feats = [k for k in cols if k != "label"]
    n = len(cols[feats[0]])
    X = np.empty((n, len(feats)))
    for j, k in enumerate(feats):
        for i, v in enumerate(cols[k]):
            try:
                X[i, j] = float(v)
            except (TypeError, ValueError):
                X[i, j] = np.nan
    np.save(path, X)
    if "label" not in cols:
        return path, []
    labels = d / "labels.npy"
    values = cols["label"]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        np.save(labels, np.asarray(values, dtype=np.float64))
    else:
        np.save(labels, np.asarray([str(v) for v in values]))
    return path, ["--labels", labels]


def _check_one_line_error(rc: int, err: str, args: list) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, (args, rc, err)
    assert lines[-1].startswith("dlogit: error: "), (args, rc, err)
    assert all(line.startswith("dlogit: warning: ") for line in lines[:-1]), (args, rc, err)
    assert "Traceback" not in err, (args, err)


@FUZZ
@given(cols=tables(), fmt=st.sampled_from(["csv", "csv", "parquet", "npy"]), opts=options())
def test_fuzz_train_and_predict(capfd, scheduler, cols, fmt, opts):
    d = Path(tempfile.mkdtemp(prefix="dlogit-fuzz-"))
    try:
        data, extra = _write(fmt, cols, d)
        model = d / "m.npz"
        opts = [x for a in opts for x in (["--checkpoint", d / "ck"] if a == "--checkpoint" else [a])]
        args = ["train", data, *extra, *opts, "--scheduler", scheduler, "--quiet", "--out", model]
        rc, out, err = cli(capfd, args)
        event(f"train exit {rc}")
        assert rc in (0, 2, 3), (args, rc, out, err)
        if rc == 0:
            assert all(line.startswith("dlogit: warning: ") for line in err.splitlines() if line.strip()), (args, err)
            m = dlogit.load_model(model)  # loads, finite (load_model checks), usable
            assert np.all(np.isfinite(m.coef_)) and np.all(np.isfinite(m.intercept_))
            pred = d / "p.csv"
            rc2, _, err2 = cli(capfd, ["predict", model, data, "--out", pred])
            event(f"predict exit {rc2}")
            assert rc2 in (0, 2), (args, rc2, err2)
            if rc2 == 0:
                import pandas as pd

                got = pd.read_csv(pred)
                assert list(got.columns[:1]) == ["label"] and len(got.columns) == 1 + max(2, len(m.classes_))
                probs = got.iloc[:, 1:].to_numpy(dtype=float)
                assert np.all(np.isfinite(probs)) and np.allclose(probs.sum(axis=1), 1.0)
            else:
                _check_one_line_error(rc2, err2, ["predict"])
                assert not pred.exists()
        else:
            _check_one_line_error(rc, err, args)
            if rc == 3:
                assert "did not converge" in err or "diverged" in err, err
                assert model.exists() == ("--keep-diverged" in opts), (args, err)
            else:
                assert not model.exists(), (args, err)
        assert not [p for p in os.listdir(d) if p.startswith(".dlogit-")], os.listdir(d)
        for sub in (d / c for c in os.listdir(d) if (d / c).is_dir()):  # checkpoint dirs
            assert not [p for p in os.listdir(sub) if p.startswith(".dlogit-")]
    finally:
        shutil.rmtree(d, ignore_errors=True)


@FUZZ
@given(argv=st.lists(st.one_of(st.sampled_from(
    ["train", "predict", "evaluate", "generate", "report", "cluster", "--out", "--rows", "--cols", "-1", "0",
     "x.csv", "m.npz", "--workers", "--connect-timeout", "banana", "--synthetic", "3x",
     "0x0", "10x2", "--max-iter", "--lr", "--json", "--help", "--seed", "--labels-out", "--dtype"]),
    st.text(alphabet=string.printable, max_size=8)), max_size=6))
def test_fuzz_argv_never_tracebacks(capfd, argv):
    """Random command lines (no cluster reachable: --scheduler to a closed port at most): exit 0 or a
    one-line exit 2, never a traceback; nothing written on failure."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    d = Path(tempfile.mkdtemp(prefix="dlogit-fuzz-"))
    here = os.getcwd()
    try:
        os.chdir(d)
        args = list(argv)
        if args and args[0] == "train":
            args += ["--scheduler", closed, "--connect-timeout", "1s"]  # never start a local cluster here
        if args and args[0] == "cluster":
            args = ["cluster", "--help"]  # `cluster up` would run until stopped
        rc, _, err = cli(capfd, args)
        assert rc in (0, 2), (args, rc, err)
        if rc == 2:
            _check_one_line_error(rc, err, args)
            assert not os.listdir(d), (args, os.listdir(d))
        assert not [p for p in os.listdir(d) if p.startswith(".dlogit-")]
    finally:
        os.chdir(here)
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# the readers themselves


def _read_all(path: Path, **source) -> None:
    from dlogit.io import Source, read_piece, scan

    info = scan(Source(path=str(path), **source))
    for i in range(len(info.pieces)):
        p = read_piece(info, i)
        if p.y is not None:
            assert len(p.y) == p.X.shape[0]


@settings(max_examples=int(os.environ.get("DLOGIT_FUZZ_EXAMPLES", "40")), deadline=None,
          derandomize=not os.environ.get("DLOGIT_FUZZ_SEED"), database=None)
@given(blob=st.binary(max_size=600), ext=st.sampled_from(["csv", "tsv", "parquet", "npy", "svm", "csv.gz"]))
def test_fuzz_readers_on_random_bytes(blob, ext):
    d = Path(tempfile.mkdtemp(prefix="dlogit-fuzz-"))
    try:
        path = d / f"data.{ext}"
        path.write_bytes(blob)
        try:
            _read_all(path, require_label=False)
        except DataError as exc:
            assert str(exc).strip() and "\n" not in str(exc).strip(), repr(exc)
    finally:
        shutil.rmtree(d, ignore_errors=True)


_csv_text = st.lists(st.lists(st.one_of(st.sampled_from(["", "1", "0", "-2.5", "nan", "inf", "1e400", "x", '"',
                                                         "a,b", "label", "True"]),
                                        st.text(alphabet=string.printable, max_size=5)), max_size=5),
                     max_size=8)


@settings(max_examples=int(os.environ.get("DLOGIT_FUZZ_EXAMPLES", "40")), deadline=None,
          derandomize=not os.environ.get("DLOGIT_FUZZ_SEED"), database=None)
@given(rows=_csv_text, sep=st.sampled_from([",", ";", "\t"]), label=st.sampled_from(["label", "x", None]),
       chunk_rows=st.sampled_from([None, 1, 2]))
def test_fuzz_csv_reader_on_random_text(rows, sep, label, chunk_rows):
    d = Path(tempfile.mkdtemp(prefix="dlogit-fuzz-"))
    try:
        path = d / "data.csv"
        path.write_text("\n".join(sep.join(r) for r in rows))
        try:
            _read_all(path, sep=sep, label=label, require_label=label is not None, chunk_rows=chunk_rows)
        except DataError as exc:
            assert str(exc).strip(), repr(exc)
    finally:
        shutil.rmtree(d, ignore_errors=True)
