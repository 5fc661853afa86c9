"""The tiled completion engine: oracle agreement, finite differences, bounded graphs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dscaledgd as dsg
from dscaledgd.api import reference_copy
from dscaledgd.engine.cluster import DistributedExecutor, ThreadExecutor
from dscaledgd.engine.completion import CompletionEngine

from ..conftest import scheduler_task_counter


def _engine(obs, *, symmetric=False, loss="l2", kernel="fused", ex=None):
    return CompletionEngine(
        obs, ex or ThreadExecutor(2), symmetric=symmetric, loss=loss, kernel=kernel
    )


def _loss_grad(engine, factors):
    state = engine.from_numpy(factors)
    pas = engine.pass_(state)
    stats = engine.scalars(pas)
    return stats, [G.gather() for G in pas.G]


def _factors(rng, obs, rank, symmetric):
    n1, n2 = obs.shape
    return (
        [rng.standard_normal((n1, rank))]
        if symmetric
        else [rng.standard_normal((n1, rank)), rng.standard_normal((n2, rank))]
    )


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("tiles", [(1, 1), (2, 3), (3, 3)])
def test_pass_matches_numpy_oracle(rng, symmetric, tiles):
    obs, _ = dsg.datasets.make_completion(
        (60, 60), 3, 0.3, symmetric=symmetric, random_state=2, tiles=tiles
    )
    if symmetric:
        obs = obs.retile((tiles[0], tiles[0]), square=True)
    F = _factors(rng, obs, 3, symmetric)
    stats, G = _loss_grad(_engine(obs, symmetric=symmetric), F)
    ref_stats, ref_G = _loss_grad(
        _engine(reference_copy(obs), symmetric=symmetric, kernel="reference", ex=ThreadExecutor(0)),
        F,
    )
    assert stats.loss == pytest.approx(ref_stats.loss, rel=1e-12)
    assert stats.residual == pytest.approx(ref_stats.residual, rel=1e-12)
    for g, rg in zip(G, ref_G):
        np.testing.assert_allclose(g, rg, rtol=1e-10, atol=1e-12 * np.abs(rg).max())
    for a, b in zip(stats.FF + stats.FG + stats.GG, ref_stats.FF + ref_stats.FG + ref_stats.GG):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * np.abs(b).max())


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    symmetric=st.booleans(),
    rank=st.integers(1, 4),
    tiles=st.sampled_from([(1, 1), (2, 2), (3, 1)]),
)
def test_gradient_matches_finite_differences(seed, symmetric, rank, tiles):
    rng = np.random.default_rng(seed)
    obs, _ = dsg.datasets.make_completion(
        (30, 30), 2, 0.4, symmetric=symmetric, random_state=seed, tiles=tiles
    )
    if symmetric:
        obs = obs.retile(square=True)
    eng = _engine(obs, symmetric=symmetric, ex=ThreadExecutor(0))
    F = _factors(rng, obs, rank, symmetric)
    D = _factors(rng, obs, rank, symmetric)
    stats, G = _loss_grad(eng, F)
    h = 1e-5
    fp = _loss_grad(eng, [f + h * d for f, d in zip(F, D)])[0].loss
    fm = _loss_grad(eng, [f - h * d for f, d in zip(F, D)])[0].loss
    fd = (fp - fm) / (2 * h)
    analytic = sum(float(np.sum(g * d)) for g, d in zip(G, D))
    # central differences on a quartic: error O(h^2 * f''') plus round-off eps*f/h
    assert fd == pytest.approx(analytic, rel=1e-6, abs=1e-6 * (1 + abs(stats.loss)))


def test_l1_gradient_matches_finite_differences_where_smooth(rng):
    obs, _ = dsg.datasets.make_completion((30, 25), 2, 0.5, random_state=4, tiles=(2, 2))
    eng = _engine(obs, loss="l1", ex=ThreadExecutor(0))
    F = _factors(rng, obs, 2, False)
    D = _factors(rng, obs, 2, False)
    stats, G = _loss_grad(eng, F)
    h = 1e-7  # small enough that no residual changes sign (checked below)
    fp = _loss_grad(eng, [f + h * d for f, d in zip(F, D)])[0].loss
    fm = _loss_grad(eng, [f - h * d for f, d in zip(F, D)])[0].loss
    analytic = sum(float(np.sum(g * d)) for g, d in zip(G, D))
    assert (fp - fm) / (2 * h) == pytest.approx(analytic, rel=1e-6)
    # the l1 loss is (1/p) sum |z|
    r, c, v = obs.to_coo()
    z = np.einsum("kr,kr->k", F[0][r], F[1][c]) - v
    assert stats.loss == pytest.approx(np.abs(z).sum() / obs.density, rel=1e-12)


def test_loss_scaling_conventions(rng):
    obs, _ = dsg.datasets.make_completion((20, 20), 2, 0.5, symmetric=True, random_state=5)
    obs = obs.retile(square=True)
    r, c, v = obs.to_coo()
    L = rng.standard_normal((20, 2))
    z = np.einsum("kr,kr->k", L[r], L[c]) - v
    p = obs.density
    sym = _loss_grad(_engine(obs, symmetric=True, ex=ThreadExecutor(0)), [L])[0]
    asym = _loss_grad(_engine(obs, ex=ThreadExecutor(0)), [L, L])[0]
    assert sym.loss == pytest.approx(z @ z / (4 * p), rel=1e-12)
    assert asym.loss == pytest.approx(z @ z / (2 * p), rel=1e-12)
    assert asym.residual == pytest.approx(np.sqrt(z @ z / (v @ v)), rel=1e-12)


def test_store_backed_memory_and_stream_agree(tmp_path, rng):
    obs, _ = dsg.datasets.make_completion((70, 50), 3, 0.4, random_state=6, tiles=(2, 2))
    stored = dsg.Observations.open_zarr(obs.to_zarr(tmp_path / "o.zarr"))
    F = _factors(rng, obs, 3, False)
    base, G0 = _loss_grad(_engine(obs), F)
    mem = CompletionEngine(stored, ThreadExecutor(2), cache="memory")
    stream = CompletionEngine(stored, ThreadExecutor(2), cache="stream", sub_chunk=37)
    assert mem.cache == "memory" and stream.cache == "stream"
    for eng in (mem, stream):
        stats, G = _loss_grad(eng, F)
        assert stats.loss == pytest.approx(base.loss, rel=1e-13)
        for a, b in zip(G, G0):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_stream_pieces_are_chunk_aligned_and_held_one_at_a_time(tmp_path, monkeypatch):
    """A streamed tile is read in pieces cut at multiples of ``sub`` (the store's chunk
    length by default, so a piece decodes one chunk of each array, not two), and a piece
    is freed before the next one is read: a task holds one piece, never two."""
    import weakref

    from dscaledgd.engine import completion as ce

    obs, _ = dsg.datasets.make_completion((70, 50), 3, 0.4, random_state=6, tiles=(2, 2))
    stored = dsg.Observations.open_zarr(obs.to_zarr(tmp_path / "o.zarr"))
    ref = ce.tile_refs(stored, 37)[1]  # starts inside a run of 37: its first piece is short
    spans = list(ce._spans(ref))
    assert spans[0][0] == ref.lo and spans[-1][1] == ref.hi
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(e % 37 == 0 for _, e in spans[:-1]) and all(0 < e - s <= 37 for s, e in spans)
    assert ref.lo % 37 != 0 and spans[0][1] - spans[0][0] < 37

    alive, read = [], ce._read_range

    def watched(r, s, e):
        assert all(w() is None for w in alive), "the previous piece is still held"
        out = read(r, s, e)
        alive.append(weakref.ref(out[2]))
        return out

    monkeypatch.setattr(ce, "_read_range", watched)
    L, R = np.ones((ref.height, 3)), np.ones((ref.width, 3))
    gL, _, acc = ce._tile_grad(ref, L, R, "l2", "fused")
    assert len(alive) == len(spans) > 2
    whole = ce._tile_grad(read(ref, ref.lo, ref.hi), L, R, "l2", "fused")
    np.testing.assert_allclose(gL, whole[0], rtol=1e-13)
    np.testing.assert_allclose(acc, whole[2], rtol=1e-13)


def test_distributed_pass_matches_threads_bitwise(client, rng):
    obs, _ = dsg.datasets.make_completion((80, 70), 3, 0.3, random_state=7, tiles=(3, 2))
    F = _factors(rng, obs, 3, False)
    a, Ga = _loss_grad(_engine(obs), F)
    b, Gb = _loss_grad(_engine(obs, ex=DistributedExecutor(client)), F)
    assert a.loss == b.loss  # fixed-order tree sums: identical on any scheduler
    for x, y in zip(Ga, Gb):
        np.testing.assert_array_equal(x, y)


def test_scheduler_task_count_is_bounded(client):
    """The scheduler's task table stays flat over 100 iterations (futures re-rooted)."""
    obs, _ = dsg.datasets.make_completion((150, 120), 3, 0.3, random_state=8, tiles=(2, 2))
    counts, cb = scheduler_task_counter(client)

    res = dsg.complete(
        obs,
        3,
        client=client,
        step_size=0.5,
        tol=1e-300,
        stall_tol=0.0,
        max_iter=200,
        callback=cb,
        random_state=0,
    )
    assert res.status == "callback" and res.n_iter == 100
    # one materialize period holds ~20 iterations x ~30 tasks; the count must not trend up
    assert max(counts[3:]) <= max(counts[:3]) and max(counts) < 1000, counts
    assert counts[-1] <= counts[2] + 50, counts


# ------------------------------------------------------------ store integrity
def _dense(res):
    L, R = (np.asarray(F) for F in res.compute_factors())
    return L @ R.T


@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")
def test_replaced_store_is_reopened_by_long_lived_workers(client, tmp_path):
    """Issue 12: workers cached a store's arrays by path; a store replaced at the same
    path between two runs on one cluster was read with the old shapes (a reshape error,
    or above 2**21 entries a silently different problem). Caches are keyed by the
    store's identity now: the second run equals a fresh run on the new store."""
    path = str(tmp_path / "obs.zarr")
    a, _ = dsg.datasets.make_completion((300, 240), 3, 0.25, random_state=1, tiles=(2, 2))
    b, _ = dsg.datasets.make_completion((260, 280), 3, 0.3, random_state=2, tiles=(2, 2))
    kw = dict(random_state=0, max_iter=15, tol=1e-300, stall_tol=0.0, cache="stream")
    a.to_zarr(path)
    first = dsg.complete(path, 3, client=client, **kw)
    assert _dense(first).shape == (300, 240)
    b.to_zarr(path, overwrite=True)
    second = dsg.complete(path, 3, client=client, **kw)
    fresh = dsg.complete(path, 3, scheduler="threads", **kw)
    Xs, Xf = _dense(second), _dense(fresh)
    assert Xs.shape == (260, 280)
    assert np.linalg.norm(Xs - Xf) <= 1e-9 * np.linalg.norm(Xf)
    np.testing.assert_allclose(
        second.info["init_values"], fresh.info["init_values"], rtol=1e-12, atol=0
    )
    assert second.n_iter == fresh.n_iter


def test_store_replaced_during_use_is_refused(tmp_path):
    """An Observations opened before its store was replaced is refused by the worker."""
    path = str(tmp_path / "obs.zarr")
    a, _ = dsg.datasets.make_completion((60, 50), 2, 0.5, random_state=1)
    b, _ = dsg.datasets.make_completion((60, 50), 2, 0.5, random_state=2)
    a.to_zarr(path)
    stale = dsg.Observations.open_zarr(path)
    b.to_zarr(path, overwrite=True)
    with pytest.raises(dsg.InputDataError, match="was replaced while in use"):
        dsg.complete(stale, 2, scheduler="threads", cache="stream", max_iter=3)


@pytest.mark.parametrize("cache", ["memory", "stream"])
def test_corrupt_entries_refused_cleanly_on_threads_and_cluster(client, tmp_path, cache):
    """An index outside its tile raises InputDataError from the worker task (no
    segfault, no hang), in memory placement and when streamed."""
    import zarr

    obs, _ = dsg.datasets.make_completion((60, 50), 2, 0.5, random_state=3, tiles=(2, 2))
    path = obs.to_zarr(str(tmp_path / "obs.zarr"))
    zarr.open_array(path + "/rows", mode="r+")[int(obs.tile_ptr[3])] = 100000
    match = r"array 'rows' of tile 3 holds local row index 100000 .*outside \[0, \d+\)"
    for kw in ({"scheduler": "threads"}, {"client": client}):
        with pytest.raises(dsg.InputDataError, match=match):
            dsg.complete(path, 2, cache=cache, max_iter=5, **kw)
    # the cluster is still usable afterwards
    assert client.submit(sum, [1, 2]).result(timeout=30) == 3


def test_tile_refs_carry_identity_and_tile_shape(tmp_path):
    from dscaledgd.engine.completion import tile_refs

    obs, _ = dsg.datasets.make_completion((70, 50), 2, 0.4, random_state=4, tiles=(2, 3))
    stored = dsg.Observations.open_zarr(obs.to_zarr(str(tmp_path / "o.zarr")))
    refs = tile_refs(stored, 100)
    assert [r.tile for r in refs] == list(range(6))
    for t, ref in enumerate(refs):
        r0, r1, c0, c1 = stored.tile_bounds(t)
        assert (ref.height, ref.width) == (r1 - r0, c1 - c0)
        assert ref.store_id == stored.store_id == stored.attrs.get("store_id", ref.store_id)
        assert (ref.lo, ref.hi) == (stored.tile_ptr[t], stored.tile_ptr[t + 1])
