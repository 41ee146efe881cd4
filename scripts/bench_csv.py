#!/usr/bin/env python
"""Reading a numeric CSV: dlogit's reader against pyarrow.csv and pandas.read_csv, plain and gzip.

Makes a CSV of float64 features and a 0/1 label in a temporary directory (``--mb`` of text, 1 GB by
default; ``--gzip`` beside it), then times, interleaved and ``--repeat`` times:

- ``dlogit``: ``dlogit.data.load_local`` (every chunk read into X, y, its rows counted as it is
  parsed): what a first in-process fit reads, with the default chunking -- by dlogit's own parser
  (``dlogit.io._csv_jit``) for a file this large;
- ``dlogit-arrow``: the same with that parser off (``JIT_MIN_BYTES`` out of reach): pyarrow parses,
  then the columns are copied into X (the reader before the parser);
- ``pyarrow``: ``pyarrow.csv.read_csv`` of the same columns with their types given (an Arrow table);
- ``pyarrow+X``: the same, then the features copied into one C-contiguous float64 X, as dlogit gives;
- ``pandas``: ``pandas.read_csv`` of the same file (a DataFrame).

Prints each best time and its ratio to pyarrow's (< 1: faster than pyarrow). The machine's load
matters: compare figures of one run only.

    scripts/bench_csv.py --mb 100            # a quick look
    scripts/bench_csv.py                     # 1 GB and its gzip
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import tempfile
import time
from collections.abc import Callable

import numpy as np


def make_csv(path: str, mb: float, d: int, seed: int = 0) -> int:
    """A CSV of ``d`` float columns (shortest round-trip text, as pandas and pyarrow write floats)
    and an integer label, of about ``mb`` MB; returns its row count."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    names = [f"x{j}" for j in range(d)] + ["y"]
    schema = pa.schema([(n, pa.float64()) for n in names[:-1]] + [("y", pa.int64())])
    rows, block = 0, 20_000
    with pacsv.CSVWriter(path, schema) as w:
        while os.path.getsize(path) < mb * 1e6:
            X = rng.standard_normal((block, d))
            y = (X[:, 0] + rng.standard_normal(block) > 0).astype(np.int64)
            w.write_table(pa.table([pa.array(X[:, j]) for j in range(d)] + [pa.array(y)], schema=schema))
            rows += block
    return rows


def contenders(path: str, d: int) -> dict[str, Callable[[], object]]:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from dlogit.data import load_local

    names = [f"x{j}" for j in range(d)]
    types = {**{n: pa.float64() for n in names}, "y": pa.int64()}

    def arrow():
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types,
                                                                         include_columns=[*names, "y"]))

    def arrow_x():
        t = arrow()
        X = np.empty((t.num_rows, d))
        for j, n in enumerate(names):
            X[:, j] = t.column(n).to_numpy()
        return X, t.column("y").to_numpy()

    from dlogit.io import csv as csvio

    def dlogit():
        data = load_local(path, label="y")
        return data.X, data.y

    def dlogit_arrow():
        saved, csvio.JIT_MIN_BYTES = csvio.JIT_MIN_BYTES, 1 << 62
        try:
            return dlogit()
        finally:
            csvio.JIT_MIN_BYTES = saved

    def pandas():
        return pd.read_csv(path, usecols=[*names, "y"])

    return {"dlogit": dlogit, "dlogit-arrow": dlogit_arrow, "pyarrow": arrow, "pyarrow+X": arrow_x,
            "pandas": pandas}


def warm_parser(tmp: str, d: int) -> float:
    """Seconds of the parser's first use in this process (Numba's import and its on-disk cache; the
    compile itself on a machine's first run): paid once per process, not in the timed reads."""
    from dlogit.data import load_local
    from dlogit.io import csv as csvio

    path = os.path.join(tmp, "warm.csv")
    with open(path, "w") as f:
        f.write(",".join(f"x{j}" for j in range(d)) + ",y\n" + ",".join(["0.5"] * d) + ",1\n")
    saved, csvio.JIT_MIN_BYTES = csvio.JIT_MIN_BYTES, 0
    try:
        t = time.perf_counter()
        load_local(path, label="y")
        return time.perf_counter() - t
    finally:
        csvio.JIT_MIN_BYTES = saved


def bench(path: str, d: int, repeat: int) -> dict[str, float]:
    runs = contenders(path, d)
    best = {k: float("inf") for k in runs}
    for _ in range(repeat):
        for name, fn in runs.items():  # interleaved: a change in the machine's load hits all alike
            t = time.perf_counter()
            out = fn()
            best[name] = min(best[name], time.perf_counter() - t)
            del out
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=1000.0, help="size of the CSV in MB (default 1000)")
    ap.add_argument("--features", type=int, default=100, help="float columns (default 100)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best time counts")
    ap.add_argument("--no-gzip", action="store_true", help="the plain file only")
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temp directory)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="dlogit-bench-csv-", dir=args.dir)
    try:
        plain = os.path.join(tmp, "data.csv")
        t = time.perf_counter()
        rows = make_csv(plain, args.mb, args.features)
        size = os.path.getsize(plain)
        print(f"{plain}: {rows} rows x {args.features} floats + label, {size / 1e6:.0f} MB "
              f"(made in {time.perf_counter() - t:.1f} s)")
        files = [plain]
        if not args.no_gzip:
            packed = plain + ".gz"
            with open(plain, "rb") as src, gzip.open(packed, "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
            files.append(packed)
            print(f"{packed}: {os.path.getsize(packed) / 1e6:.0f} MB (gzip -1)")
        print(f"dlogit's parser ready in {warm_parser(tmp, args.features):.2f} s (its first use in this process)")
        print(f"load: {os.getloadavg()[0]:.2f} (1 min)")
        for f in files:
            best = bench(f, args.features, args.repeat)
            print(f"\n{os.path.basename(f)} (best of {args.repeat}, interleaved; ratio to pyarrow)")
            print(f"  (load after: {os.getloadavg()[0]:.2f})")
            for name, s in best.items():
                print(f"  {name:12s} {s:7.3f} s  {size / 1e6 / s:6.0f} MB/s  {s / best['pyarrow']:5.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
