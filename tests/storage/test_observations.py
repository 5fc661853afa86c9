"""Observations: construction, validation, tile layout, Zarr round trips."""

from __future__ import annotations

import os

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import InputDataError, InvalidParameterError, Observations
from dscaledgd.storage import layout


def _random_coo(rng, shape=(50, 40), nnz=400):
    lin = rng.choice(shape[0] * shape[1], nnz, replace=False)
    return lin // shape[1], lin % shape[1], rng.standard_normal(nnz)


def _as_set(obs):
    r, c, v = obs.to_coo()
    return {(int(i), int(j)): float(x) for i, j, x in zip(r, c, v)}


@pytest.mark.parametrize("tiles", [(1, 1), (2, 3), (4, 1), (7, 5)])
def test_from_coo_round_trip_any_grid(rng, tiles):
    r, c, v = _random_coo(rng)
    obs = Observations.from_coo(r, c, v, shape=(50, 40), tiles=tiles)
    assert obs.shape == (50, 40) and obs.nnz == 400 and obs.tiles == tiles
    assert _as_set(obs) == {(int(i), int(j)): float(x) for i, j, x in zip(r, c, v)}
    assert obs.value_norm2 == pytest.approx(float(v @ v), rel=1e-14)
    np.testing.assert_array_equal(obs.row_counts, np.bincount(r, minlength=50))
    # every tile's entries are inside the tile and in blocked (row-major here) order
    for t in range(obs.n_tiles):
        r0, r1, c0, c1 = obs.tile_bounds(t)
        lr, lc, _ = obs.read_tile(t)
        assert lr.dtype == np.int32 and np.all((lr >= 0) & (lr < r1 - r0))
        assert np.all((lc >= 0) & (lc < c1 - c0))
        key = lr.astype(np.int64) * (c1 - c0) + lc  # one cache block here: row-major
        assert np.all(np.diff(key) > 0)


@pytest.mark.parametrize(
    "density, band",
    [
        (0.5, 1024),
        (5e-3, 1024),
        (1e-3, 1024),
        (5e-4, 2048),
        (2e-4, 8192),
        (1e-4, 16384),
        (1e-7, 16384),
        (0.0, 16384),
    ],
)
def test_band_width_follows_density(density, band):
    # the power of two nearest 1.25/density, clamped to [1024, 16384]
    n = 1_000_000
    assert layout.band_width(int(density * n * n), (n, n)) == band


def test_sparse_store_is_banded_with_its_band_width(tmp_path):
    # 200k × 40k with 60k entries: density 7.5e-6, so W = 16384 (three bands of columns)
    rng = np.random.default_rng(3)
    shape, nnz = (200_000, 40_000), 60_000
    lin = rng.choice(shape[0] * shape[1], nnz, replace=False)
    obs = Observations.from_coo(
        lin // shape[1], lin % shape[1], rng.standard_normal(nnz), shape=shape, tiles=(1, 1)
    )
    W = layout.band_width(nnz, shape)
    assert W == layout.MAX_BAND
    lr, lc, _ = obs.read_tile(0)
    key = (lc.astype(np.int64) // W) * (shape[0] * W) + lr.astype(np.int64) * W + lc % W
    assert np.all(np.diff(key) > 0)
    assert len(np.unique(lc // W)) == 3 and not np.all(np.diff(lr.astype(np.int64)) >= 0)
    obs.to_zarr(tmp_path / "o.zarr")
    import zarr

    assert zarr.open_group(tmp_path / "o.zarr", mode="r").attrs["dscaledgd"]["cache_band"] == W


def test_shape_inferred_and_density(rng):
    r, c, v = _random_coo(rng)
    obs = Observations.from_coo(r, c, v)
    assert obs.shape == (r.max() + 1, c.max() + 1)
    assert obs.density == pytest.approx(400 / (obs.shape[0] * obs.shape[1]))


def test_banded_order_across_column_bands():
    W = layout.MIN_BAND
    rows = np.array([W + 1, 0, W, 1, 0, 3])
    cols = np.array([0, W + 5, 3, 2, 1, 2 * W])
    tile = np.zeros(6, dtype=np.int64)
    order = layout.blocked_order(tile, rows.astype(np.int32), cols.astype(np.int32), W)
    # band 0 by (i, j): (0,1), (1,2), (W,3), (W+1,0); band 1: (0,W+5); band 2: (3,2W)
    got = [(int(i), int(j)) for i, j in zip(rows[order], cols[order])]
    assert got == [(0, 1), (1, 2), (W, 3), (W + 1, 0), (0, W + 5), (3, 2 * W)]


def test_balanced_bounds_balance_and_nonempty():
    counts = np.array([100, 0, 0, 0, 1, 1, 1, 1, 100, 0])
    b = layout.balanced_bounds(counts, 3)
    assert b[0] == 0 and b[-1] == 10 and np.all(np.diff(b) >= 1)
    sums = [counts[b[k] : b[k + 1]].sum() for k in range(3)]
    assert max(sums) <= 104


@pytest.mark.parametrize(
    "values, match",
    [
        ([1.0, np.nan, 2.0], r"entry 1 at \(1, 1\) is nan"),
        ([1.0, 2.0, np.inf], r"entry 2 at \(2, 2\) is inf"),
    ],
)
def test_non_finite_values_rejected(values, match):
    with pytest.raises(InputDataError, match=match):
        Observations.from_coo([0, 1, 2], [0, 1, 2], values)


def test_negative_index_rejected():
    with pytest.raises(InputDataError, match=r"row index -1 \(entry 1\) is negative"):
        Observations.from_coo([0, -1], [0, 1], [1.0, 2.0])
    with pytest.raises(InputDataError, match=r"column index -3 \(entry 0\) is negative"):
        Observations.from_coo([0, 1], [-3, 1], [1.0, 2.0])


def test_out_of_range_and_shape_too_small():
    with pytest.raises(
        InputDataError, match=r"row index 5 \(entry 1\) is out of range for shape \(5, 5\)"
    ):
        Observations.from_coo([0, 5], [0, 1], [1.0, 2.0], shape=(5, 5))
    with pytest.raises(InputDataError, match=r"column index 9 \(entry 0\) is out of range"):
        Observations.from_coo([0, 1], [9, 1], [1.0, 2.0], shape=(5, 5))


def test_bad_shape_and_tiles_parameters():
    with pytest.raises(InvalidParameterError, match="'shape' parameter of from_coo"):
        Observations.from_coo([0], [0], [1.0], shape=(5,))
    with pytest.raises(InvalidParameterError, match="'tiles' parameter"):
        Observations.from_coo([0, 1], [0, 1], [1.0, 2.0], tiles=(3, 1))
    with pytest.raises(InvalidParameterError, match="'tiles' parameter"):
        Observations.from_coo([0, 1], [0, 1], [1.0, 2.0], tiles=(1.5, 1))


def test_non_integer_indices_and_length_mismatch():
    with pytest.raises(InputDataError, match="'rows' must hold integers; got dtype float64"):
        Observations.from_coo([0.0, 1.5], [0, 1], [1.0, 2.0])
    with pytest.raises(InputDataError, match="same length; got 2, 3 and 2"):
        Observations.from_coo([0, 1], [0, 1, 2], [1.0, 2.0])
    with pytest.raises(InputDataError, match="must be real numbers"):
        Observations.from_coo([0, 1], [0, 1], np.array(["a", "b"]))


def test_empty_observations_rejected():
    with pytest.raises(InputDataError, match="empty"):
        Observations.from_coo([], [], [])


def test_duplicates_error_names_first_duplicate():
    rows = [0, 3, 2, 3, 0, 2]
    cols = [1, 4, 2, 4, 1, 2]
    with pytest.raises(
        InputDataError, match=r"Duplicate observation \(3, 4\) at entries 1 and 3 \(3 repeated"
    ):
        Observations.from_coo(rows, cols, np.arange(6.0))


@pytest.mark.parametrize(
    "policy, expect",
    [
        ("sum", {(0, 1): 4.0, (3, 4): 4.0, (2, 2): 7.0}),
        ("mean", {(0, 1): 2.0, (3, 4): 2.0, (2, 2): 3.5}),
        ("last", {(0, 1): 4.0, (3, 4): 3.0, (2, 2): 5.0}),
    ],
)
def test_duplicate_policies(policy, expect):
    rows = [0, 3, 2, 3, 0, 2]
    cols = [1, 4, 2, 4, 1, 2]
    obs = Observations.from_coo(rows, cols, np.arange(6.0), duplicates=policy, tiles=(2, 2))
    assert _as_set(obs) == expect
    assert obs.nnz == 3


def test_unknown_duplicate_policy():
    with pytest.raises(
        InvalidParameterError,
        match=r"'duplicates' parameter of from_coo must be one of \{'error', 'sum', 'mean', 'last'\}",
    ):
        Observations.from_coo([0], [0], [1.0], duplicates="first")


def test_from_dense_nan_is_missing_and_mask(rng):
    M = rng.standard_normal((6, 5))
    M[1, 2] = np.nan
    M[4, 0] = np.nan
    obs = Observations.from_dense(M)
    assert obs.nnz == 28 and (1, 2) not in _as_set(obs)
    mask = np.zeros((6, 5), bool)
    mask[0, :] = True
    obs2 = Observations.from_dense(M, mask=mask)
    assert set(_as_set(obs2)) == {(0, j) for j in range(5)}
    M[0, 3] = np.inf
    with pytest.raises(InputDataError, match=r"M\[0, 3\] = inf is not finite"):
        Observations.from_dense(M)
    with pytest.raises(InputDataError, match="mask has shape"):
        Observations.from_dense(M, mask=np.ones((2, 2), bool))
    with pytest.raises(InputDataError, match="2-D matrix"):
        Observations.from_dense(np.ones(4))


def test_zarr_round_trip(tmp_path, rng):
    r, c, v = _random_coo(rng)
    obs = Observations.from_coo(r, c, v, shape=(50, 40), tiles=(3, 2))
    path = obs.to_zarr(tmp_path / "obs.zarr")
    back = Observations.open_zarr(path)
    assert back.path == os.path.abspath(path)
    assert back.shape == obs.shape and back.tiles == obs.tiles and back.nnz == obs.nnz
    np.testing.assert_array_equal(back.tile_ptr, obs.tile_ptr)
    for t in range(obs.n_tiles):
        for a, b in zip(back.read_tile(t), obs.read_tile(t)):
            np.testing.assert_array_equal(a, b)
    assert back.value_norm2 == obs.value_norm2
    # no temporary directories left behind
    assert sorted(os.listdir(tmp_path)) == ["obs.zarr"]


def test_from_coo_with_path_returns_store_backed(tmp_path, rng):
    r, c, v = _random_coo(rng)
    obs = Observations.from_coo(r, c, v, path=tmp_path / "o.zarr")
    assert obs.path is not None and _as_set(obs) == _as_set(Observations.from_coo(r, c, v))


def test_to_zarr_refuses_existing_and_unwritable(tmp_path, rng):
    obs = Observations.from_coo(*_random_coo(rng))
    p = tmp_path / "o.zarr"
    obs.to_zarr(p)
    before = sorted(os.listdir(p))
    with pytest.raises(FileExistsError, match="already exists. Pass overwrite=True"):
        obs.to_zarr(p)
    assert sorted(os.listdir(p)) == before
    obs.to_zarr(p, overwrite=True)
    assert Observations.open_zarr(p).nnz == obs.nnz
    with pytest.raises(FileNotFoundError, match="parent directory .* does not exist"):
        obs.to_zarr(tmp_path / "missing" / "o.zarr")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileNotFoundError, match="parent directory .* does not exist"):
        obs.to_zarr(tmp_path / "afile" / "o.zarr")


def test_to_zarr_refuses_unwritable_directory(tmp_path, rng, monkeypatch):
    obs = Observations.from_coo(*_random_coo(rng))
    # root ignores directory permissions, so simulate a read-only location
    monkeypatch.setattr(layout.os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError, match="is not writable. Choose a writable location"):
        obs.to_zarr(tmp_path / "o.zarr")
    assert os.listdir(tmp_path) == []


def test_nothing_written_when_construction_fails(tmp_path):
    with pytest.raises(InputDataError):
        Observations.from_coo([0, 0], [1, 1], [1.0, 2.0], path=tmp_path / "o.zarr")
    assert os.listdir(tmp_path) == []


def test_open_zarr_rejects_foreign_and_truncated_stores(tmp_path, rng):
    import zarr

    with pytest.raises(FileNotFoundError, match="does not exist"):
        Observations.open_zarr(tmp_path / "nope.zarr")
    g = zarr.open_group(tmp_path / "foreign.zarr", mode="w")
    g.create_array("x", shape=(3,), dtype="f8")
    with pytest.raises(InputDataError, match="is not a dscaledgd Observations store"):
        Observations.open_zarr(tmp_path / "foreign.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputDataError, match="is not a dscaledgd Observations store"):
        Observations.open_zarr(tmp_path / "plain")

    obs = Observations.from_coo(*_random_coo(rng))
    p = obs.to_zarr(tmp_path / "t.zarr")
    chunk_dir = os.path.join(p, "values", "c")
    victim = os.path.join(chunk_dir, sorted(os.listdir(chunk_dir))[0])
    os.remove(victim)
    with pytest.raises(InputDataError, match="truncated: array 'values' has 0 of 1 chunks"):
        Observations.open_zarr(p)
    import shutil

    shutil.rmtree(os.path.join(p, "cols"))
    with pytest.raises(InputDataError, match=r"truncated: arrays \['cols'\] are missing"):
        Observations.open_zarr(p)


def test_split_exact_disjoint_and_deterministic(rng):
    obs, _ = dsg.datasets.make_completion((80, 60), 2, 0.3, random_state=1, tiles=(2, 2))
    train, test = obs.split(0.2, random_state=7)
    assert test.nnz == round(0.2 * obs.nnz) and train.nnz + test.nnz == obs.nnz
    a, b, full = _as_set(train), _as_set(test), _as_set(obs)
    assert not set(a) & set(b) and {**a, **b} == full
    assert train.tiles == obs.tiles and np.array_equal(train.row_bounds, obs.row_bounds)
    train2, _ = obs.split(0.2, random_state=7)
    assert _as_set(train2) == a
    with pytest.raises(
        InvalidParameterError,
        match=r"'test_fraction' parameter of split must be a float in \(0, 1\)",
    ):
        obs.split(1.0)
    with pytest.raises(InvalidParameterError, match="both parts must be non-empty"):
        obs.split(1e-9)


def test_default_tiles_follow_parallelism_and_size():
    assert layout.default_tiles((1000, 1000), 1000, nthreads=8) == (1, 1)
    a, b = layout.default_tiles((100_000, 100_000), 50_000_000, nthreads=2)
    assert a * b == 4 and a == b
    a, b = layout.default_tiles((1_000_000, 1000), 50_000_000, nthreads=2)
    assert (a, b) == (4, 1)
    a, b = layout.default_tiles((600_000, 400_000), 200_000_000, nthreads=2)
    assert a * b >= 12 and 16 * 200_000_000 / (a * b) <= 300 * 2**20  # tiles <= ~256 MB


def test_default_tiles_fit_the_workers_memory():
    """Under a memory limit per worker thread, a tile task's factor working set at
    rank 10 (320 bytes per tile row and column) takes at most a quarter of it."""
    shape, nnz = (2_000_000, 1_000_000), 100_000_000
    assert layout.default_tiles(shape, nnz, nthreads=2) == (3, 2)
    limit = 768 << 20
    a, b = layout.default_tiles(shape, nnz, nthreads=2, memory_limit=limit)
    assert 320 * (-(-shape[0] // a) + -(-shape[1] // b)) <= limit / 4
    assert (a, b) == (7, 3)  # the first doubling of the grid that fits
    # a generous limit changes nothing
    assert layout.default_tiles(shape, nnz, nthreads=2, memory_limit=64 << 30) == (3, 2)
