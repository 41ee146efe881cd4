"""What a worker process logs when a dlogit task fails with dlogit's own (user-facing) error."""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np
import pytest

import dlogit
from dlogit.data import synthetic_numpy


def test_a_data_error_on_a_worker_is_one_log_line_not_a_traceback(capfd):
    """The client raises the DataError as one line; the worker's log says the same in one line per
    failed task (distributed's "Compute Failed" record otherwise carries the task and its traceback)."""
    from distributed import Client, LocalCluster

    Xn, yn = synthetic_numpy(400, 4, seed=0)
    Xn[333, 2] = np.nan
    # started inside the test so the worker processes write to the captured stderr
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=False) as client:
        capfd.readouterr()
        for mode in ("worker-local", "distributed"):
            with pytest.raises(dlogit.DataError, match="NaN or infinite"):
                dlogit.LogisticRegression(mode=mode).fit(da.from_array(Xn, chunks=(100, 4)),
                                                         da.from_array(yn, chunks=100), client=client)
        # a task failing with another error keeps distributed's full record
        with pytest.raises(ZeroDivisionError):
            client.submit(lambda: 1 / 0, pure=False).result()
        err = capfd.readouterr().err
    failed = [line for line in err.splitlines() if "Compute Failed" in line]
    ours = [line for line in failed if "DataError" in line]
    assert len(ours) >= 2 and all("NaN or infinite" in line for line in ours), err
    assert "Traceback" not in err.split("ZeroDivisionError")[0], err  # nothing before the other failure
    assert "Traceback: " in err and "in <lambda>" in err, err  # the other task's record is left whole
