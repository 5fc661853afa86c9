"""Dask input → Observations store without gathering (engine/ingest.py)."""

from __future__ import annotations

import os

import dask
import dask.array as da
import numpy as np
import pytest

from dscaledgd import InputDataError, Observations
from dscaledgd.engine import ingest


def _coo(rng, shape=(300, 200), nnz=5000):
    lin = rng.choice(shape[0] * shape[1], nnz, replace=False)
    return lin // shape[1], lin % shape[1], rng.standard_normal(nnz)


def assert_same_observations(a: Observations, b: Observations):
    assert a.shape == b.shape and a.tiles == b.tiles and a.nnz == b.nnz
    np.testing.assert_array_equal(a.row_bounds, b.row_bounds)
    np.testing.assert_array_equal(a.tile_ptr, b.tile_ptr)
    for t in range(a.n_tiles):
        for x, y in zip(a.read_tile(t), b.read_tile(t)):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.row_counts, b.row_counts)
    np.testing.assert_array_equal(a.col_counts, b.col_counts)
    assert a.value_norm2 == pytest.approx(b.value_norm2, rel=1e-13)


@pytest.mark.parametrize(
    "chunks, tiles, zchunk",
    [
        (1000, (2, 2), 777),  # input chunks straddle Zarr chunks and tiles
        (333, (3, 1), 64),  # many boundary chunks
        (5000, (1, 1), 1 << 21),  # one chunk, one tile
    ],
)
def test_dask_coo_equals_numpy_path(tmp_path, rng, monkeypatch, chunks, tiles, zchunk):
    monkeypatch.setattr(ingest, "CHUNK", zchunk)
    r, c, v = _coo(rng)
    ref = Observations.from_coo(r, c, v, shape=(300, 200), tiles=tiles)
    with dask.config.set(scheduler="threads"):
        got = Observations.from_coo(
            da.from_array(r, chunks=chunks),
            da.from_array(c, chunks=chunks),
            da.from_array(v, chunks=chunks),
            shape=(300, 200),
            tiles=tiles,
            path=tmp_path / "o.zarr",
        )
    assert got.path == os.path.abspath(tmp_path / "o.zarr")
    assert_same_observations(got, ref)
    # no scratch or temporary directories left behind
    assert sorted(os.listdir(tmp_path)) == ["o.zarr"]


def test_dask_coo_on_distributed_client(tmp_path, rng, client):
    r, c, v = _coo(rng)
    ref = Observations.from_coo(r, c, v, tiles=(2, 3))
    with client.as_current():
        got = Observations.from_coo(
            da.from_array(r, chunks=700),
            da.from_array(c, chunks=700),
            da.from_array(v, chunks=700),
            tiles=(2, 3),
            path=tmp_path / "o.zarr",
        )
    assert_same_observations(got, ref)


@pytest.mark.parametrize("policy", ["sum", "mean", "last"])
def test_dask_duplicate_policies_match_numpy(tmp_path, rng, policy):
    r, c, v = _coo(rng, nnz=2000)
    r = np.concatenate([r, r[:300], r[:100]])
    c = np.concatenate([c, c[:300], c[:100]])
    v = rng.standard_normal(len(r))
    ref = Observations.from_coo(r, c, v, tiles=(2, 2), duplicates=policy)
    with dask.config.set(scheduler="threads"):
        got = Observations.from_coo(
            *(da.from_array(x, chunks=450) for x in (r, c, v)),
            tiles=(2, 2),
            duplicates=policy,
            path=tmp_path / "o.zarr",
        )
    assert_same_observations(got, ref)


def test_dask_errors_name_the_entry_and_write_nothing(tmp_path, rng):
    r, c, v = _coo(rng, nnz=1000)
    v[637] = np.nan
    with pytest.raises(InputDataError, match=rf"entry 637 at \({r[637]}, {c[637]}\) is nan"):
        Observations.from_coo(
            *(da.from_array(x, chunks=100) for x in (r, c, v)), path=tmp_path / "a.zarr"
        )
    v[637] = 1.0
    r2 = r.copy()
    r2[901] = -4
    with pytest.raises(InputDataError, match=r"row index -4 \(entry 901\) is negative"):
        Observations.from_coo(
            *(da.from_array(x, chunks=100) for x in (r2, c, v)), path=tmp_path / "b.zarr"
        )
    with pytest.raises(
        InputDataError, match=r"row index \d+ \(entry 0\) is out of range for shape \(10, 200\)"
    ):
        Observations.from_coo(
            *(da.from_array(x, chunks=100) for x in (r, c, v)),
            shape=(10, 200),
            path=tmp_path / "c.zarr",
        )
    rd = np.concatenate([r, [r[5]]])
    cd = np.concatenate([c, [c[5]]])
    vd = np.concatenate([v, [0.0]])
    with pytest.raises(
        InputDataError, match=rf"Duplicate observation \({r[5]}, {c[5]}\) at entries 5 and 1000"
    ):
        Observations.from_coo(
            *(da.from_array(x, chunks=128) for x in (rd, cd, vd)),
            tiles=(2, 2),
            path=tmp_path / "d.zarr",
        )
    with pytest.raises(InputDataError, match="empty"):
        Observations.from_coo(
            da.zeros(0, dtype=int), da.zeros(0, dtype=int), da.zeros(0), path=tmp_path / "e.zarr"
        )
    with pytest.raises(InputDataError, match="'rows' must hold integers"):
        Observations.from_coo(
            da.from_array(r.astype(float), chunks=100),
            *(da.from_array(x, chunks=100) for x in (c, v)),
            path=tmp_path / "f.zarr",
        )
    assert os.listdir(tmp_path) == []


def test_dask_input_without_path_goes_to_a_temporary_store(rng):
    r, c, v = _coo(rng, nnz=500)
    with dask.config.set(scheduler="threads"):
        got = Observations.from_coo(*(da.from_array(x, chunks=200) for x in (r, c, v)))
    assert got.path is not None and os.path.isdir(got.path)
    assert_same_observations(got, Observations.from_coo(r, c, v, tiles=got.tiles))


def test_from_dense_dask_matches_numpy(tmp_path, rng):
    M = rng.standard_normal((90, 70))
    M[rng.random((90, 70)) < 0.6] = np.nan
    ref = Observations.from_dense(M, tiles=(2, 2))
    with dask.config.set(scheduler="threads"):
        got = Observations.from_dense(
            da.from_array(M, chunks=(40, 30)), tiles=(2, 2), path=tmp_path / "o.zarr"
        )
    assert_same_observations(got, ref)
    mask = rng.random((90, 70)) < 0.3
    M2 = np.where(np.isnan(M), 0.0, M)
    ref2 = Observations.from_dense(M2, mask=mask, tiles=(1, 2))
    with dask.config.set(scheduler="threads"):
        got2 = Observations.from_dense(
            da.from_array(M2, chunks=(25, 70)),
            mask=da.from_array(mask, chunks=(50, 50)),
            tiles=(1, 2),
            path=tmp_path / "m.zarr",
        )
    assert_same_observations(got2, ref2)
    M2[3, 4] = np.inf
    mask[3, 4] = True
    with pytest.raises(InputDataError, match=r"is inf"):
        Observations.from_dense(
            da.from_array(M2, chunks=(25, 70)),
            mask=da.from_array(mask, chunks=(50, 50)),
            path=tmp_path / "x.zarr",
        )
