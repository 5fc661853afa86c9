"""Store integrity: checksums, read-time entry checks, metadata validation, identity."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import zarr

import dscaledgd as dsg
from dscaledgd import InputDataError, InvalidParameterError, Observations
from dscaledgd.storage import coo, integrity, layout

from ..conftest import edit_store_attrs


@pytest.fixture
def store(tmp_path):
    obs, _ = dsg.datasets.make_completion((60, 50), 2, 0.5, random_state=0, tiles=(3, 2))
    return obs, obs.to_zarr(str(tmp_path / "obs.zarr"))


def _attrs(path):
    with open(os.path.join(path, "zarr.json")) as fh:
        return json.load(fh)


def _write_legacy(obs, path, monkeypatch):
    """A store as written before the integrity change: no checksum, fill 0, no id/digest."""
    with monkeypatch.context() as m:
        m.setattr(layout, "checksum_codecs", lambda: None)
        m.setattr(layout, "invalid_fill", lambda dtype: 0)
        obs.to_zarr(path)
    edit_store_attrs(path, lambda meta: [meta.pop(k) for k in ("store_id", "digest")])
    return path


# --------------------------------------------------------------- new stores
def test_new_stores_carry_checksums_identity_and_digest(store):
    obs, path = store
    meta = _attrs(path)["attributes"]["dscaledgd"]
    assert len(meta["store_id"]) == 32 and meta["digest"].startswith("sha256:")
    for name in integrity.ARRAYS:
        arr = zarr.open_array(os.path.join(path, name), mode="r")
        assert any(type(c).__name__ == "Crc32cCodec" for c in arr.metadata.codecs), name
    for name in ("rows", "cols"):
        assert zarr.open_array(os.path.join(path, name), mode="r").fill_value == -1
    assert np.isnan(zarr.open_array(os.path.join(path, "values"), mode="r").fill_value)
    back = Observations.open_zarr(path)
    assert back.store_id == meta["store_id"] and "digest" not in back.attrs
    # every write is a new store: a new identity, even for the same data
    path2 = back.to_zarr(path + "2")
    assert _attrs(path2)["attributes"]["dscaledgd"]["store_id"] != meta["store_id"]
    assert Observations.open_zarr(path2).store_id != back.store_id


def test_digest_is_canonical_and_covers_tile_ptr(store):
    obs, path = store
    meta = _attrs(path)["attributes"]["dscaledgd"]
    ptr = zarr.open_array(os.path.join(path, "tile_ptr"), mode="r")[:]
    assert layout.meta_digest(meta, ptr) == meta["digest"]
    assert layout.meta_digest(dict(reversed(list(meta.items()))), ptr) == meta["digest"]
    ptr2 = ptr.copy()
    ptr2[1] += 1
    assert layout.meta_digest(meta, ptr2) != meta["digest"]


# ------------------------------------------------------------ open checks
@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.__setitem__("nnz", "12"), r"attribute 'nnz' is '12' \(a str\)"),
        (lambda m: m.__setitem__("nnz", True), r"attribute 'nnz' is True \(a bool\)"),
        (lambda m: m.pop("col_bounds"), r"attribute 'col_bounds' is missing"),
        (lambda m: m.__setitem__("shape", [60]), r"attribute 'shape' is \[60\]"),
        (lambda m: m.__setitem__("row_bounds", [0, 30, 30, 60]), r"'row_bounds'.*strictly"),
        (lambda m: m.__setitem__("row_bounds", [1, 20, 40, 60]), r"'row_bounds'.*from 0 to 60"),
        (lambda m: m.__setitem__("col_bounds", [0, 25.5, 50]), r"'col_bounds'.*integers"),
        (lambda m: m.__setitem__("value_norm2", -1.0), r"'value_norm2' is -1.0"),
        (lambda m: m.__setitem__("value_norm2", "big"), r"'value_norm2' is 'big'"),
        (lambda m: m.__setitem__("format_version", "1"), r"'format_version' is '1'"),
        (lambda m: m.__setitem__("store_id", 7), r"'store_id' is 7"),
    ],
)
def test_open_refuses_malformed_attributes(store, edit, match):
    _, path = store
    edit_store_attrs(path, edit)
    with pytest.raises(InputDataError, match=match) as info:
        Observations.open_zarr(path)
    assert "Re-create the store" in str(info.value)


def test_open_refuses_shifted_bounds_by_stripe_counts_even_without_digest(store):
    """A shift that keeps the bounds valid is caught by the per-stripe counts."""
    _, path = store
    edit_store_attrs(path, lambda m: [m.pop("digest"), m["col_bounds"].__setitem__(1, 20)])
    with pytest.raises(InputDataError, match=r"'col_counts' sums to .* column stripe 0"):
        Observations.open_zarr(path)


def test_open_refuses_edited_tile_ptr(store):
    obs, path = store
    ptr = zarr.open_array(os.path.join(path, "tile_ptr"), mode="r+")
    p = ptr[:]
    p[1] += 3  # tiles 0 and 3 gain 3 entries, tiles 1 and 2 lose 3: stripe sums unchanged
    p[3] -= 3
    ptr[:] = p
    with pytest.raises(InputDataError, match="metadata was edited"):
        Observations.open_zarr(path)
    p[1] = p[-1] + 1  # decreasing
    ptr[:] = p
    with pytest.raises(InputDataError, match=r"'tile_ptr' does not run from 0 to nnz"):
        Observations.open_zarr(path)


def test_open_refuses_tampered_value_norm2(store):
    _, path = store
    edit_store_attrs(path, lambda m: m.__setitem__("value_norm2", m["value_norm2"] * 1e6))
    with pytest.raises(InputDataError, match="metadata was edited after it was written"):
        Observations.open_zarr(path)


def test_open_refuses_wrong_array_shapes_and_dtypes(store):
    obs, path = store
    counts = zarr.open_group(path, mode="r+")
    del counts["row_counts"]
    layout.write_small_array(counts, "row_counts", np.ones(61, np.int64))
    with pytest.raises(InputDataError, match=r"array 'row_counts' has shape \(61,\)"):
        Observations.open_zarr(path)
    del counts["row_counts"]
    layout.write_small_array(counts, "row_counts", np.ones(60))
    with pytest.raises(InputDataError, match=r"array 'row_counts' has dtype float64"):
        Observations.open_zarr(path)
    del counts["row_counts"]
    layout.write_small_array(counts, "row_counts", obs.row_counts)
    rows = counts["rows"][:].astype(np.int64)
    rows[0] += 2**32  # would wrap back into range if cast to int32
    del counts["rows"]
    layout.create_entry_arrays(counts, obs.nnz, {"rows": "int64"})["rows"][:] = rows
    with pytest.raises(InputDataError, match=r"array 'rows' has dtype int64, expected int32"):
        Observations.open_zarr(path)


def test_garbled_small_array_named_at_open(store):
    _, path = store
    f = os.path.join(path, "row_counts", "c", "0")
    with open(f, "r+b") as fh:
        fh.write(b"\xff\xff\xff\xff")
    with pytest.raises(InputDataError, match=r"chunk 0 of array 'row_counts' .*cannot be decoded"):
        Observations.open_zarr(path)


# ------------------------------------------------------------- read checks
def test_read_tile_checks_indices_and_values(store):
    obs, path = store
    rows = zarr.open_array(os.path.join(path, "rows"), mode="r+")
    t = 4
    rows[int(obs.tile_ptr[t]) + 2] = obs.tile_bounds(t)[1] - obs.tile_bounds(t)[0]
    back = Observations.open_zarr(path)
    back.read_tile(0)  # other tiles read fine
    for fn in (lambda: back.read_tile(t), back.to_coo, lambda: back.split(0.3, random_state=0)):
        with pytest.raises(InputDataError, match=rf"'rows' of tile {t} .*at entry 2 of the tile"):
            fn()
    with pytest.raises(InputDataError, match=rf"'rows' of tile {t}"):
        back.retile((2, 2))
    with pytest.raises(InputDataError, match=rf"'rows' of tile {t}"):  # no laundering by copy
        back.to_zarr(path + ".copy")
    assert not os.path.exists(path + ".copy")


def test_column_and_value_checks(store):
    obs, path = store
    zarr.open_array(os.path.join(path, "cols"), mode="r+")[3] = -7
    with pytest.raises(InputDataError, match=r"'cols' of tile 0 holds local column index -7"):
        Observations.open_zarr(path).read_tile(0)
    zarr.open_array(os.path.join(path, "cols"), mode="r+")[3] = 0
    zarr.open_array(os.path.join(path, "values"), mode="r+")[4] = np.inf
    with pytest.raises(InputDataError, match=r"'values' of tile 0 holds the non-finite value inf"):
        Observations.open_zarr(path).read_tile(0)


def test_chunk_deleted_after_open_reads_as_invalid_not_zeros(store):
    obs, path = store
    back = Observations.open_zarr(path)
    os.remove(os.path.join(path, "values", "c", "0"))
    with pytest.raises(InputDataError, match=r"chunk 0 of array 'values' .* is missing"):
        back.read_tile(0)
    os.remove(os.path.join(path, "rows", "c", "0"))
    with pytest.raises(InputDataError, match=r"chunk 0 of array 'rows' .* is missing"):
        dsg.complete(back, 2, scheduler="threads", max_iter=3)


def test_check_entries_direct():
    r = np.array([0, 1, 2], np.int32)
    v = np.ones(3)
    integrity.check_entries(r, r, v, 3, 3, path="p", tile=0)
    integrity.check_entries(r[:0], r[:0], v[:0], 1, 1, path="p", tile=0)
    with pytest.raises(InputDataError, match=r"local column index 2 at entry 7 .*\[0, 2\)"):
        integrity.check_entries(r, r, v, 3, 2, path="p", tile=5, start=5)
    v[1] = -np.inf
    with pytest.raises(InputDataError, match=r"non-finite value -inf at entry 1"):
        integrity.check_entries(r, r, v, 3, 3, path="p", tile=0)


# ------------------------------------------------------------ legacy stores
def test_legacy_store_opens_works_and_is_still_checked(tmp_path, monkeypatch):
    obs, _ = dsg.datasets.make_completion((60, 50), 2, 0.5, random_state=0, tiles=(2, 2))
    path = _write_legacy(obs, str(tmp_path / "old.zarr"), monkeypatch)
    arr = zarr.open_array(os.path.join(path, "rows"), mode="r")
    assert not any(type(c).__name__ == "Crc32cCodec" for c in arr.metadata.codecs)
    back = Observations.open_zarr(path)
    assert back.store_id.startswith("legacy-")
    np.testing.assert_array_equal(back.to_coo()[2], obs.to_coo()[2])
    res = dsg.complete(path, 2, scheduler="sync", max_iter=200, random_state=0)
    assert res.converged
    # structural checks still apply without a digest
    bad = str(tmp_path / "bad.zarr")
    shutil.copytree(path, bad)
    edit_store_attrs(bad, lambda m: m["row_bounds"].__setitem__(1, m["row_bounds"][1] + 3))
    with pytest.raises(InputDataError, match="'row_counts' sums to"):
        Observations.open_zarr(bad)
    # a truncated chunk without a checksum: the zarr error is wrapped
    f = os.path.join(path, "values", "c", "0")
    os.truncate(f, os.path.getsize(f) // 2)
    with pytest.raises(InputDataError, match=r"chunk 0 of array 'values' .*cannot be decoded"):
        Observations.open_zarr(path).read_tile(0)


# -------------------------------------------------------------- size checks
def test_size_checks_refuse_before_allocating(monkeypatch):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputDataError, match=r"row index 1099511627776 \(entry 1\) is too large"):
        Observations.from_coo([0, 2**40], [0, 1], [1.0, 2.0])
    with pytest.raises(InputDataError, match=r"column index 4294967296 \(entry 0\)"):
        Observations.from_coo([0, 1], [2**32, 1], [1.0, 2.0])
    with pytest.raises(InputDataError, match=r"largest observation column index, 4294967296,"):
        coo.check_size((3, 2**32 + 1), inferred_from=(2, 2**32))  # the out-of-core import's form
    with pytest.raises(InvalidParameterError, match=r"'shape' parameter of from_coo"):
        Observations.from_coo(
            np.array([0, 2**31 - 1], np.int32), [0, 1], [1.0, 2.0], shape=(2**31, 3)
        )
    # the memory rule, with a small machine: 8 (n1 + n2) bytes > a quarter of memory
    monkeypatch.setattr(coo, "_physical_memory", lambda: 1 << 30)
    with pytest.raises(InputDataError, match=r"needs 0\.7 GiB for the per-row"):
        Observations.from_coo([0, 1], [0, 1], [1.0, 2.0], shape=(10**8, 3))
    with pytest.raises(InputDataError, match=r"\(inferred from the largest indices\)"):
        Observations.from_coo([0, 10**8], [0, 1], [1.0, 2.0])
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    assert grown < 64 * 1024, grown


def test_dense_input_must_be_numeric():
    with pytest.raises(InputDataError, match=r"'M' .* dtype <U1 \(strings\)"):
        Observations.from_dense([["1", "x"], ["2", "3"]])
    with pytest.raises(InputDataError, match=r"'M' .*dtype object and M\[1, 0\] = None"):
        Observations.from_dense(np.array([[1.0, 2.0], [None, 3.0]], dtype=object))
    with pytest.raises(InputDataError, match=r"'M' .*dtype object and M\[0, 0\] = 'a'"):
        Observations.from_dense(np.array([["a", 2.0]], dtype=object))
    with pytest.raises(InputDataError, match=r"'M' .*dtype complex128"):
        Observations.from_dense(np.ones((2, 2), complex))
    with pytest.raises(InputDataError, match=r"'M' .*not a rectangular array"):
        Observations.from_dense([[1.0, 2.0], [3.0]])
    ok = Observations.from_dense(np.array([[1.0, np.nan], [2, 3]], dtype=object))
    assert ok.nnz == 3
