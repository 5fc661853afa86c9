"""Bad Dask input to the out-of-core import (``../shared/reliability/bad-inputs.md``).

Each case is refused with an :class:`InputDataError` that names the array, what
was seen and the fix, and nothing is written.
"""

from __future__ import annotations

import os

import dask
import dask.array as da
import numpy as np
import pytest

from dscaledgd import InputDataError, Observations


def _coo_dask_neg_index(path):
    rng = np.random.default_rng(0)
    lin = rng.choice(60 * 50, 400, replace=False)
    rows, cols = lin // 50, lin % 50
    rows[237] = -3
    Observations.from_coo(
        da.from_array(rows, chunks=100),
        da.from_array(cols, chunks=100),
        da.from_array(rng.standard_normal(400), chunks=100),
        shape=(60, 50),
        path=path,
    )


def _dense_dask_unknown_chunks(path):
    M = da.from_array(np.random.default_rng(0).standard_normal((40, 30)), chunks=(10, 30))
    M = M[M[:, 0] > -10]  # boolean indexing: chunk sizes unknown
    assert np.isnan(M.shape[0])
    Observations.from_dense(M, path=path)


CASES = {
    "coo_dask_neg_index": (
        _coo_dask_neg_index,
        r"row index -3 \(entry 237\) is negative: indices in 'rows' must be >= 0\. Drop the "
        r"entry or fix the index",
    ),
    "dense_dask_unknown_chunks": (
        _dense_dask_unknown_chunks,
        r"unknown chunk sizes .* Call M = M\.compute_chunk_sizes\(\) first",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_dask_input_refused(tmp_path, case):
    make, match = CASES[case]
    with dask.config.set(scheduler="threads"), pytest.raises(InputDataError, match=match):
        make(str(tmp_path / "o.zarr"))
    assert os.listdir(tmp_path) == []


def test_dask_index_beyond_int32_refused_before_allocating(tmp_path):
    """An index of 2**31 or more cannot be tile-local int32 (and its shape would need
    gigabytes of counts): refused, naming the entry, before any count is built."""
    rows = da.from_array(np.array([0, 5, 2**31 + 7, 3], np.int64), chunks=2)
    cols = da.from_array(np.array([0, 1, 2, 1], np.int64), chunks=2)
    vals = da.from_array(np.ones(4), chunks=2)
    with (
        dask.config.set(scheduler="threads"),
        pytest.raises(
            InputDataError, match=r"row index 2147483655 \(entry 2\) in 'rows' is too large"
        ),
    ):
        Observations.from_coo(rows, cols, vals, path=str(tmp_path / "a.zarr"))
    with (
        dask.config.set(scheduler="threads"),
        pytest.raises(InputDataError, match=r"column index 1099511627776 \(entry 3\)"),
    ):
        Observations.from_coo(
            cols,
            da.from_array(np.array([0, 1, 2, 2**40]), chunks=2),
            vals,
            path=str(tmp_path / "b.zarr"),
        )
    assert os.listdir(tmp_path) == []


def test_dask_index_out_of_range_names_the_entry(tmp_path):
    rows = da.from_array(np.array([0, 5, 9, 3, 12, 1], np.int64), chunks=4)
    cols = da.from_array(np.zeros(6, np.int64), chunks=4)
    with (
        dask.config.set(scheduler="threads"),
        pytest.raises(
            InputDataError, match=r"row index 12 \(entry 4\) is out of range for shape \(10, 3\)"
        ),
    ):
        Observations.from_coo(
            rows, cols, da.ones(6, chunks=4), shape=(10, 3), path=str(tmp_path / "a.zarr")
        )
    assert os.listdir(tmp_path) == []
