"""Dask input → Observations store without gathering (storage/ingest.py)."""

from __future__ import annotations

import gc
import os

import dask
import dask.array as da
import numpy as np
import pytest

from dscaledgd import InputDataError, Observations
from dscaledgd.storage import ingest, merge


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


# ------------------------------------------------------------ bounded merge
def _dask_coo(r, c, v, chunks):
    return [da.from_array(x, chunks=chunks) for x in (r, c, v)]


def _entries(obs):
    return [np.asarray(a[:]).tobytes() for a in (obs._rows, obs._cols, obs._values)]


@pytest.mark.parametrize("policy", ["error", "sum", "mean", "last"])
def test_tiny_merge_budget_gives_the_same_store(tmp_path, rng, monkeypatch, policy):
    """A budget of a few dozen entries: every tile is merged in many sub-ranges from
    many runs, duplicate groups (one key repeated 150 times) straddle sub-ranges, and
    the store is byte-identical to the one merged whole."""
    r, c, v = _coo(rng, nnz=3000)
    if policy != "error":
        heavy = np.full(150, 7)
        idx = np.concatenate([rng.integers(0, 3000, 600), heavy])
        r, c = np.concatenate([r, r[idx]]), np.concatenate([c, c[idx]])
        perm = rng.permutation(len(r))
        r, c = r[perm], c[perm]
    v = rng.standard_normal(len(r))
    v[::37] = -0.0
    plans = []
    real_plan = merge._plan
    monkeypatch.setattr(merge, "_plan", lambda *a: plans.append(real_plan(*a)) or plans[-1])
    with dask.config.set(scheduler="threads"):
        whole = Observations.from_coo(
            *_dask_coo(r, c, v, 1000), tiles=(2, 2), duplicates=policy, path=tmp_path / "a.zarr"
        )
        assert max(len(p) for p in plans) == 2  # one sub-range per tile
        plans.clear()
        monkeypatch.setattr(merge, "MERGE_BUDGET", 96 * 60)
        small = Observations.from_coo(
            *_dask_coo(r, c, v, 1000), tiles=(2, 2), duplicates=policy, path=tmp_path / "b.zarr"
        )
    assert min(len(p) for p in plans) > 10  # many sub-ranges per tile
    assert_same_observations(small, whole)
    assert _entries(small) == _entries(whole)
    ref = Observations.from_coo(r, c, v, tiles=(2, 2), duplicates=policy)
    np.testing.assert_array_equal(small.to_coo()[2], ref.to_coo()[2])
    assert sorted(os.listdir(tmp_path)) == ["a.zarr", "b.zarr"]


def test_tiny_merge_budget_duplicate_error_names_the_first_repeat(tmp_path, rng, monkeypatch):
    r, c, v = _coo(rng, nnz=3000)
    # entry 2500 repeats entry 40; later, entries 2900.. repeat entries 10..
    r = np.concatenate([r, r[[40]], r[10:60]])
    c = np.concatenate([c, c[[40]], c[10:60]])
    v = rng.standard_normal(len(r))
    monkeypatch.setattr(merge, "MERGE_BUDGET", 96 * 40)
    with pytest.raises(InputDataError, match=rf"\({r[40]}, {c[40]}\) at entries 40 and 3000 "):
        with dask.config.set(scheduler="threads"):
            Observations.from_coo(*_dask_coo(r, c, v, 700), tiles=(2, 2), path=tmp_path / "o.zarr")
    assert os.listdir(tmp_path) == []


def test_budget_passed_to_distributed_workers(tmp_path, rng, client):
    r, c, v = _coo(rng)
    r = np.concatenate([r, r[:500]])
    c = np.concatenate([c, c[:500]])
    v = rng.standard_normal(len(r))
    ref = Observations.from_coo(r, c, v, tiles=(2, 3), duplicates="mean")
    with client.as_current():
        got = ingest.ingest_chunks(
            ingest_producers(r, c, v, 900),
            shape=None,
            tiles=(2, 3),
            duplicates="mean",
            path=str(tmp_path / "o.zarr"),
            overwrite=False,
            budget=96 * 100,
        )
    assert_same_observations(got, ref)


def ingest_producers(r, c, v, chunks):
    from dask import delayed

    blocks = [a.to_delayed().ravel() for a in _dask_coo(r, c, v, chunks)]
    return [delayed(tuple)(list(p)) for p in zip(*blocks)]


def test_task_budget_follows_the_worker_memory_limit(client):
    got = client.run(lambda dask_worker: merge.task_budget(worker=dask_worker))
    limit = next(iter(client.scheduler_info()["workers"].values()))["memory_limit"]
    want = int(np.clip(merge.MERGE_FRACTION * limit, merge.MIN_BUDGET, merge.MAX_BUDGET))
    assert set(got.values()) == {want}
    assert merge.task_budget(12345) == 12345
    assert merge.MIN_BUDGET <= merge.task_budget() <= merge.MAX_BUDGET


# ------------------------------------------------------ temporary and scratch
def test_temporary_store_removed_on_close_and_collection(rng):
    r, c, v = _coo(rng, nnz=500)
    with dask.config.set(scheduler="threads"):
        obs = Observations.from_coo(*_dask_coo(r, c, v, 200))
        tmp = os.path.dirname(obs.path)
        assert os.path.basename(tmp).startswith("dscaledgd-obs-") and obs.is_temporary
        obs.close()
        assert not os.path.exists(tmp)
        obs = Observations.from_dense(da.from_array(rng.standard_normal((30, 20)), chunks=10))
        tmp = os.path.dirname(obs.path)
        assert os.path.isdir(tmp)
        del obs
        gc.collect()
        assert not os.path.exists(tmp)
        with Observations.from_coo(*_dask_coo(r, c, v, 200)) as obs:
            tmp = os.path.dirname(obs.path)
        assert not os.path.exists(tmp)


def test_store_at_a_chosen_path_is_not_temporary(tmp_path, rng):
    r, c, v = _coo(rng, nnz=500)
    with dask.config.set(scheduler="threads"):
        obs = Observations.from_coo(*_dask_coo(r, c, v, 200), path=tmp_path / "o.zarr")
    assert not obs.is_temporary
    obs.close()
    del obs
    gc.collect()
    assert os.listdir(tmp_path) == ["o.zarr"]


def _flaky(k, r, c, v, calls, fail_on):
    calls[k] = calls.get(k, 0) + 1
    if k == 1 and calls[k] == fail_on:
        raise RuntimeError("producer failed")
    return r, c, v


@pytest.mark.parametrize("fail_on", [1, 2, 3])  # stats, scatter, (no third pass reads input)
def test_scratch_removed_when_a_task_fails(tmp_path, rng, fail_on, monkeypatch):
    from dask import delayed

    r, c, v = _coo(rng, nnz=900)
    calls: dict = {}
    prods = [
        delayed(_flaky)(k, r[s : s + 300], c[s : s + 300], v[s : s + 300], calls, fail_on)
        for k, s in enumerate(range(0, 900, 300))
    ]
    if fail_on == 3:  # fail in the tile pass instead
        monkeypatch.setattr(merge, "assemble", _raise)
    with dask.config.set(scheduler="threads"), pytest.raises(RuntimeError, match="failed"):
        ingest.ingest_chunks(
            prods,
            shape=(300, 200),
            tiles=(2, 2),
            duplicates="error",
            path=str(tmp_path / "o.zarr"),
            overwrite=False,
        )
    assert os.listdir(tmp_path) == []


def _raise(*a, **k):
    raise RuntimeError("assembly failed")


def test_temporary_dir_removed_when_import_fails(rng, monkeypatch):
    from dscaledgd.storage import layout

    made = []
    real = layout.scratch_dir
    monkeypatch.setattr(
        layout, "scratch_dir", lambda *a, **k: made.append(real(*a, **k)) or made[-1]
    )
    r, c, v = _coo(rng, nnz=500)
    v[3] = np.inf
    with dask.config.set(scheduler="threads"), pytest.raises(InputDataError, match="finite"):
        Observations.from_coo(*_dask_coo(r, c, v, 200))
    assert made and not any(os.path.exists(d) for d in made)
