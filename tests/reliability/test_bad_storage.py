"""The storage cases of ``shared/reliability/bad-inputs.md``, reproduced as described.

Every case is refused with the library's error type and a message naming the
array, attribute or parameter, never a segfault, a raw NumPy/Zarr error or a
silently wrong answer. "store:" cases write a small valid store with
``Observations.to_zarr`` and then edit it, as the probe did.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

import dscaledgd as dsg
from dscaledgd import InputDataError, InvalidParameterError, Observations

from ..conftest import edit_store_attrs


@pytest.fixture(scope="module")
def valid_stores(tmp_path_factory):
    """A 60×50 store on one tile (as in the probe) and one on a 3×2 grid, written once."""
    base = tmp_path_factory.mktemp("valid")
    obs, _ = dsg.datasets.make_completion((60, 50), 2, 0.5, random_state=0)
    one = obs.retile((1, 1)).to_zarr(str(base / "one.zarr"))
    grid = obs.retile((3, 2)).to_zarr(str(base / "grid.zarr"))
    return {"one": one, "grid": grid}


def _copy(valid_stores, tmp_path, which="one") -> str:
    import shutil

    dst = str(tmp_path / "obs.zarr")
    shutil.copytree(valid_stores[which], dst)
    return dst


def _chunk_file(path, name, j=0) -> str:
    return os.path.join(path, name, "c", str(j))


def _complete(path):
    return dsg.complete(path, 2, scheduler="sync", max_iter=50)


# ----------------------------------------------------------------- builders
def _coo_overflow_index(tmp_path, stores):
    Observations.from_coo([0, 2**40], [0, 1], [1.0, 2.0])


def _coo_int32_near_max(tmp_path, stores):
    rows = np.array([0, 2**31 - 1], dtype=np.int32)
    Observations.from_coo(rows, [0, 1], [1.0, 2.0], shape=(2**31, 3))


def _dense_strings(tmp_path, stores):
    Observations.from_dense(np.array([["1.5", "a"], ["2", "3"]]))


def _dense_object_none(tmp_path, stores):
    Observations.from_dense(np.array([[1.0, None], [2.0, 3.0]], dtype=object))


def _dense_list_of_str(tmp_path, stores):
    Observations.from_dense([["1", "x"], ["2", "3"]])


def _csv(tmp_path, text, **kw):
    p = tmp_path / "ratings.csv"
    p.write_text(text)
    Observations.from_csv(str(p), "userId", "movieId", "rating", **kw)


def _csv_missing_id(tmp_path, stores):
    _csv(tmp_path, "userId,movieId,rating\n1,10,4.0\n2,,3.5\n3,30,2.0\n")


def _csv_inf_id(tmp_path, stores):
    _csv(tmp_path, "userId,movieId,rating\n1,10,4.0\n2,inf,3.5\n3,30,2.0\n")


def _csv_dup_header(tmp_path, stores):
    _csv(tmp_path, "userId,movieId,rating,rating\n1,10,4.0,1.0\n2,20,3.5,2.0\n")


def _csv_sep_multi(tmp_path, stores):
    _csv(tmp_path, "userId,movieId,rating\n1,10,4.0\n", sep="")


def _open_truncated_chunk_then_complete(tmp_path, stores):
    path = _copy(stores, tmp_path)
    f = _chunk_file(path, "values")
    os.truncate(f, os.path.getsize(f) // 2)
    _complete(Observations.open_zarr(path))


def _open_garbled_rows_chunk_complete(tmp_path, stores):
    path = _copy(stores, tmp_path)
    f = _chunk_file(path, "rows")
    size = os.path.getsize(f)
    with open(f, "wb") as fh:
        fh.write(np.random.default_rng(0).bytes(size))
    _complete(Observations.open_zarr(path))


def _open_attr_rowbounds(tmp_path, stores):
    path = _copy(stores, tmp_path, "grid")
    edit_store_attrs(path, lambda m: m["row_bounds"].__setitem__(1, m["row_bounds"][1] + 5))
    _complete(path)


def _open_attr_value_norm(tmp_path, stores):
    path = _copy(stores, tmp_path)
    edit_store_attrs(path, lambda m: m.__setitem__("value_norm2", m["value_norm2"] * 1e6))
    _complete(path)


def _open_attr_nnz_str(tmp_path, stores):
    path = _copy(stores, tmp_path)
    edit_store_attrs(path, lambda m: m.__setitem__("nnz", str(m["nnz"])))
    _complete(path)


def _open_attr_missing_key(tmp_path, stores):
    path = _copy(stores, tmp_path)
    edit_store_attrs(path, lambda m: m.pop("row_bounds"))
    _complete(path)


def _set_entry(name, k, value):
    def build(tmp_path, stores):
        path = _copy(stores, tmp_path)
        zarr.open_array(os.path.join(path, name), mode="r+")[k] = value
        _complete(path)

    return build


def _store_tileptr_edit(tmp_path, stores):
    path = _copy(stores, tmp_path)
    edit_store_attrs(path, lambda m: m["col_bounds"].__setitem__(-1, 25))
    _complete(path)


CASES = {
    "coo_overflow_index": (_coo_overflow_index, InputDataError, r"row index 1099511627776"),
    "coo_int32_near_max": (_coo_int32_near_max, InvalidParameterError, r"'shape'.*2\*\*31"),
    "dense_strings": (_dense_strings, InputDataError, r"'M'.*dtype <U3"),
    "dense_object_none": (_dense_object_none, InputDataError, r"'M'.*dtype object.*None"),
    "dense_list_of_str": (_dense_list_of_str, InputDataError, r"'M'.*dtype <U1"),
    "csv_missing_id": (_csv_missing_id, InputDataError, r"'movieId' at line 3 .* empty"),
    "csv_inf_id": (_csv_inf_id, InputDataError, r"'inf' in column 'movieId' at line 3"),
    "csv_dup_header": (_csv_dup_header, InputDataError, r"'rating'.*appears 2 times"),
    "csv_sep_multi": (_csv_sep_multi, InvalidParameterError, r"'sep'.*single character"),
    "open_truncated_chunk_then_complete": (
        _open_truncated_chunk_then_complete,
        InputDataError,
        r"chunk 0 of array 'values' .*cannot be decoded",
    ),
    "open_garbled_rows_chunk_complete": (
        _open_garbled_rows_chunk_complete,
        InputDataError,
        r"chunk 0 of array 'rows' .*cannot be decoded",
    ),
    "open_attr_rowbounds": (_open_attr_rowbounds, InputDataError, r"'row_bounds'"),
    "open_attr_value_norm": (_open_attr_value_norm, InputDataError, r"edited.*value_norm2"),
    "open_attr_nnz_str": (_open_attr_nnz_str, InputDataError, r"attribute 'nnz' is '\d+' \(a str"),
    "open_attr_missing_key": (_open_attr_missing_key, InputDataError, r"'row_bounds' is missing"),
    "store_row_index_out_of_tile": (
        _set_entry("rows", 0, 100000),
        InputDataError,
        r"array 'rows' of tile 0 holds local row index 100000 .*outside \[0, 60\)",
    ),
    "store_row_index_60": (
        _set_entry("rows", 0, 60),
        InputDataError,
        r"array 'rows' of tile 0 holds local row index 60 .*outside \[0, 60\)",
    ),
    "store_row_index_neg": (
        _set_entry("rows", 0, -1),
        InputDataError,
        r"array 'rows' of tile 0 holds local row index -1 ",
    ),
    "store_value_nan": (
        _set_entry("values", 5, np.nan),
        InputDataError,
        r"array 'values' of tile 0 holds the non-finite value nan at entry 5",
    ),
    "store_tileptr_edit": (_store_tileptr_edit, InputDataError, r"'col_bounds'.*from 0 to 50"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_storage_input_is_refused(case, tmp_path, valid_stores):
    build, exc, match = CASES[case]
    with pytest.raises(exc, match=match):
        build(tmp_path, valid_stores)
    # nothing was written beside the inputs (no half store, no temporary sibling)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n or n.endswith(".zarr.old")]


def test_store_messages_name_the_store_and_the_fix(tmp_path, valid_stores):
    path = _copy(valid_stores, tmp_path)
    zarr.open_array(os.path.join(path, "rows"), mode="r+")[0] = 100000
    with pytest.raises(InputDataError) as info:
        _complete(path)
    msg = str(info.value)
    assert repr(os.path.abspath(path)) in msg
    assert "Re-create the store (Observations.to_zarr / `dscaledgd import`)" in msg
