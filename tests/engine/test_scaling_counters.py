"""Bytes moved between workers per iteration, from distributed's own records (issue 15).

Each factor block travels, per iteration, once per change of worker along the fixed
order in which its partial gradients are added (each worker adds its own first) and
once to every other worker whose tiles use the new block. On a band layout of
``P × Q`` workers (``P·Q = W``) the row blocks are used by ``Q`` workers and the column
blocks by ``P``, so an iteration moves at most

    ``2 · ((Q − 1)·n1 + (P − 1)·n2) · r · 8`` bytes,

minimised over the band shapes, and never more than ``2 (W − 1)(n1 + n2) r · 8``: it
grows with the workers, not with the tiles. The old per-tile tree sums moved every
tile's partial (``tiles · n · r · 8``) on row-stripe placements.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd.engine import traffic
from dscaledgd.engine.blockwise import Slice, map_reduce, slot_groups
from dscaledgd.engine.completion import TILES_PER_TASK
from dscaledgd.engine.executors import ThreadExecutor
from dscaledgd.engine.factors import fold_blocks_on, fold_on
from dscaledgd.engine.placement import Placement

from ..conftest import local_cluster

SHAPE, RANK, TILES = (4000, 3000), 5, (8, 4)
#: measured passes: iterations FIRST..LAST (numba and caches warm; no re-root inside)
FIRST, LAST = 2, 6


def band_bound(W: int, shape=SHAPE, rank=RANK, grid=TILES) -> float:
    """Bytes per iteration of the best band layout (module docstring)."""
    n1, n2 = shape
    shapes = [(P, W // P) for P in range(1, W + 1) if W % P == 0]
    rows = min(
        2 * ((Q - 1) * n1 + (P - 1) * n2) for P, Q in shapes if P <= grid[0] and Q <= grid[1]
    )
    return rows * rank * 8


@pytest.fixture(scope="module")
def instance():
    obs, _ = dsg.datasets.make_completion(SHAPE, RANK, 0.02, cond=10, tiles=TILES, random_state=0)
    return obs


def _measure(client, obs):
    """Traffic per data pass over iterations FIRST..LAST, and the loss history."""
    traffic.install(client)
    snaps = {}

    def cb(state):
        if state.iteration in (FIRST, LAST):
            snaps[state.iteration] = (traffic.snapshot(client), state.passes, time.monotonic())

    try:
        res = dsg.complete(
            obs, RANK, client=client, max_iter=LAST, tol=1e-300, stall_tol=0.0, callback=cb,
            init_power_iter=1, random_state=0, progress=False,
        )  # fmt: skip
    finally:
        client.unregister_worker_plugin(traffic.PLUGIN_NAME)
    (a, pa, ta), (b, pb, tb) = snaps[FIRST], snaps[LAST]
    d = b - a
    # every worker computed, and no worker's compute seconds exceed the window's wall time
    assert len(d.busy_by_worker) == d.workers, d.busy_by_worker
    assert all(0 < s < tb - ta for s in d.busy_by_worker.values()), (d.busy_by_worker, tb - ta)
    return d, pb - pa, res


def _check(d, passes, W, shape=SHAPE):
    n1, n2 = shape
    per_pass = d.peer_bytes / passes
    general = 2 * (W - 1) * (n1 + n2) * RANK * 8
    bound = band_bound(W, shape)
    slack = 1.05 * bound + 64 * 1024  # r×r matrices and message framing
    print(f"W={W}: {per_pass / 1e6:.3f} MB/pass, band bound {bound / 1e6:.3f} MB")
    assert per_pass <= slack, (W, per_pass, bound, d.peer_bytes_by_name)
    assert per_pass <= general
    # no selection tasks; one gradient task per group of a worker's tiles per pass
    assert "part" not in d.tasks_by_name, d.tasks_by_name
    per_worker = -(-TILES[0] * TILES[1] // W)
    assert d.tasks_by_name["grad"] == passes * W * -(-per_worker // TILES_PER_TASK)


def _measure_on(n_workers: int, obs):
    """:func:`_measure` on a fresh loopback LocalCluster of ``n_workers`` × 1 thread."""
    from distributed import Client

    with local_cluster(n_workers=n_workers) as cluster, Client(cluster) as c:
        return _measure(c, obs)


@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")
def test_bytes_moved_per_iteration_grow_with_workers_not_tiles(client, instance):
    d2, p2, res2 = _measure(client, instance)  # the session's 2 workers
    _check(d2, p2, 2)
    d4, p4, res4 = _measure_on(4, instance)
    _check(d4, p4, 4)
    assert d4.peer_bytes / p4 > d2.peer_bytes / p2  # more workers share more blocks
    # the placement changes where the additions run, not what they add
    h2, h4 = res2.history["loss"], res4.history["loss"]
    assert len(h2) == len(h4)
    np.testing.assert_allclose(h4, h2, rtol=1e-12, atol=0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")
def test_bytes_moved_at_8_workers_where_a_row_blocks_sum_crosses_4_workers():
    """On 8 workers a wide matrix's 8 × 4 grid is laid out in 2 × 4 bands: each of a row
    block's 4 partials sits on its own worker, and each worker must send on one partial
    of its grouped task, not the task's whole result (a regression seen only on such
    layouts: RESULTS.md, 2026-11-27 15:05)."""
    shape = SHAPE[::-1]
    assert Placement(TILES, [np.linspace(0, n, g + 1).astype(int) for n, g in zip(shape, TILES)],
                     8).layout == "2x4 bands"  # fmt: skip
    obs, _ = dsg.datasets.make_completion(shape, RANK, 0.02, cond=10, tiles=TILES, random_state=0)
    d8, p8, _ = _measure_on(8, obs)
    _check(d8, p8, 8, shape)


# ------------------------------------------------------------ without a cluster
def test_placement_keeps_a_column_blocks_tiles_together():
    rb = np.linspace(0, 200_000, 17).astype(np.int64)
    cb = np.linspace(0, 200_000, 5).astype(np.int64)
    p = Placement((16, 4), [rb, cb], 16)
    assert p.layout == "4x4 bands"
    slots = np.array(p.slots).reshape(16, 4)
    for j in range(4):  # 4 tiles of one column block per worker, 4 workers per column
        assert all(len(set(slots[4 * k : 4 * k + 4, j])) == 1 for k in range(4))
        assert len(set(slots[:, j])) == 4
    # each block: 3 moves of its partial sums, 3 copies of its new value
    assert p.rows_moved == 6 * (200_000 + 200_000)
    for W in (1, 2, 3, 4, 5, 8, 12, 16, 64):
        q = Placement((16, 4), [rb, cb], W)
        assert q.rows_moved <= 2 * (W - 1) * 400_000, (W, q)
        assert max(np.bincount(q.slots)) <= -(-64 // W), (W, q)  # evenly spread


def test_a_fold_cut_anywhere_gives_the_same_bits():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((50, 3)) * 10.0 ** rng.integers(-8, 8) for _ in range(11)]
    ex = ThreadExecutor(0)
    futs = ex.scatter(parts)
    ref = ex.gather(fold_on(ex, futs, [0] * 11, max_run=11))
    for slots in ([0] * 11, list(range(11)), [0, 0, 1, 1, 1, 0, 2, 2, 2, 2, 2], [3] * 5 + [1] * 6):
        for scale in (1.0, 0.37):
            got = ex.gather(fold_on(ex, futs, slots, scale=scale))
            want = ref if scale == 1.0 else ex.gather(fold_on(ex, futs, [0] * 11, scale=scale))
            np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(ref, np.sum(parts, axis=0), rtol=1e-12, atol=1e-6)


def test_blocks_on_the_same_workers_fold_together_with_the_same_bits():
    """fold_blocks_on: blocks hopping through the same slots share one task per hop
    (hops + blocks - 1 tasks), every block's sum has fold_on's bits."""
    rng = np.random.default_rng(2)
    ex = ThreadExecutor(0)
    parts = ex.scatter(
        [rng.standard_normal((6, 2)) * 10.0 ** rng.integers(-8, 8) for _ in range(8)]
    )
    picked = ex.scatter([tuple(rng.standard_normal((6, 2)) for _ in range(3)) for _ in range(4)])
    path = [0, 1, 1, 2, 3]  # 4 hops
    blocks = [
        (parts[:5], path, None),  # these three share the path: 4 + 3 - 1 = 6 tasks
        (parts[3:8], path, None),
        ([picked[k] for k in (0, 1, 2, 3, 3)], path, [0, 2, 1, 0, 2]),
        (parts[:3], [2, 2, 0], None),  # a path of its own: fold_on, 2 tasks
        ([parts[4]], [1], None),  # one part: itself, no task
        (parts[:6], [5] * 6, None),  # one slot, two runs of at most 4: 2 tasks
    ]
    calls = []
    submit_on = ex.submit_on

    def counting(slot, fn, *a, **kw):
        calls.append((slot, fn.__name__))
        return submit_on(slot, fn, *a, **kw)

    ex.submit_on = counting
    for scale in (1.0, 0.37):
        calls.clear()
        got = fold_blocks_on(ex, blocks, scale=scale)
        assert len(calls) == 6 + 2 + 2 + (scale != 1.0)  # a lone part is scaled by a task
        assert [s for s, f in calls if f == "_fold_many"] == [0, 1, 2]
        assert (got[4] is parts[4]) == (scale == 1.0)
        ex.submit_on = submit_on
        for (ps, sl, idx), g in zip(blocks, got):
            want = fold_on(ex, ps, sl, indices=idx, scale=scale)
            np.testing.assert_array_equal(ex.gather(g), ex.gather(want))
        ex.submit_on = counting


def test_slot_groups_cover_each_slots_chunks_once_in_order():
    rb, cb = np.linspace(0, 1600, 17).astype(int), np.linspace(0, 400, 5).astype(int)
    slots = Placement((16, 4), [rb, cb], 3).slots
    for per_slot, size in ((1, 8), (2, 8), (1, 3), (4, 100)):
        groups = slot_groups(slots, per_slot, size)
        assert sorted(t for g in groups for t in g) == list(range(64))
        for g in groups:
            assert len({slots[t] for t in g}) == 1 and g == sorted(g)
            assert len(g) <= size or per_slot > 1
        for s in set(slots):
            mine = [g for g in groups if slots[g[0]] == s]
            n = slots.count(s)
            assert len(mine) == min(n, max(per_slot, -(-n // size)))
            assert max(map(len, mine)) - min(map(len, mine)) <= 1  # even


def test_grouped_tasks_give_the_bits_of_one_task_per_chunk():
    """map_reduce over Slices of grouped tasks adds the same parts in the same order."""
    rng = np.random.default_rng(1)
    grid = (4, 3)
    data = [rng.standard_normal((5, 2)) * 10.0 ** rng.integers(-6, 6) for _ in range(12)]
    ex = ThreadExecutor(0)
    tiles = ex.scatter(data)

    def kernel(x):
        return x * 1.5, x[::-1] - 0.25, np.array([x.sum()])

    def kernels(xs):
        return tuple(p for x in xs for p in kernel(x))

    slots = [0, 0, 1, 1, 1, 0, 2, 2, 2, 2, 0, 1]
    outputs = [("A", 0), ("B", 1), ("v", None)]
    ref = map_reduce(
        ex, grid, lambda t, idx: ex.submit(kernel, tiles[t], name="k"), outputs, slots=slots
    )
    parts = {}
    for g in slot_groups(slots, 1, 2):
        h = ex.submit(kernels, [tiles[t] for t in g], name="k")
        parts.update((t, Slice(h, 3 * j)) for j, t in enumerate(g))
    got = map_reduce(ex, grid, lambda t, idx: parts[t], outputs, slots=slots)
    for key in ("A", "B"):
        for a, b in zip(ex.gather(ref[key]), ex.gather(got[key])):
            np.testing.assert_array_equal(a, b)
    v_ref = ref["v"].in_order(ex.gather(ref["v"].handles))
    v_got = got["v"].in_order(ex.gather(got["v"].handles))
    np.testing.assert_array_equal(np.concatenate(v_ref), np.concatenate(v_got))
    np.testing.assert_array_equal(np.concatenate(v_got), [x.sum() for x in data])
