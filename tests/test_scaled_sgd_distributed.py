"""Distributed ScaledSGD (issue 18): stratified cells, per-task P, resynchronisation.

What is checked:

* the schedule: every sample in exactly one cell, the cells of a round on
  disjoint rows, local indices that map back to the global rows;
* the stratified epochs give the same iterates on threads, inline and on a
  real 2-process LocalCluster, for any number of workers (same blocks);
* against the one-process run: the same epochs to ``f ≤ 1e-15`` within 1.2×;
* Dask, Zarr, CSV and Parquet samples give the NumPy result; a bad block is
  refused naming the sample's position in the whole stream;
* held-out evaluation at fixed sample counts, and the NP-maximum baseline.
"""

from __future__ import annotations

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd.exceptions import InputDataError
from dscaledgd.problems import pairwise as pw
from dscaledgd.solvers import strata
from dscaledgd.solvers.online import group_step, inverse_gram

from .sgd_instances import ill_pairs, planted_triplets

#: the runs here stop after a fixed number of epochs on purpose
pytestmark = pytest.mark.filterwarnings("ignore::dscaledgd.exceptions.ConvergenceWarning")


def _ill(seed=0, d=30):
    return ill_pairs(seed, d)


def _bpr(d=120, m=6000, seed=11):
    return planted_triplets(d, m, seed)


# ------------------------------------------------------------------ the schedule
@pytest.mark.parametrize("B, g", [(4, 2), (8, 2), (6, 3), (9, 3), (2, 2), (1, 3)])
def test_schedule_puts_each_sample_in_one_cell_on_disjoint_rows(B, g):
    sched = strata.make_schedule(B, g)
    d = 97
    bounds = strata.block_bounds(d, B)
    rng = np.random.default_rng(B)
    cols = list(rng.integers(0, d, (g, 5000)))
    cell = strata.cells_of(cols, bounds, sched)
    assert cell.min() >= 0 and cell.max() < len(sched.cells)
    for t in range(sched.n_rounds):  # the groups of a round partition the blocks
        blocks = [b for grp in sched.rounds[t] for b in grp]
        assert sorted(blocks) == list(range(B))
    for c in range(len(sched.cells)):
        sel = cell == c
        rows = strata.local_rows(sched.group(c), bounds)
        for x in cols:
            assert np.isin(x[sel], rows).all()
            assert np.array_equal(rows[strata.to_local(x[sel], sched.group(c), bounds)], x[sel])


def test_every_block_set_has_exactly_one_cell():
    sched = strata.make_schedule(6, 3)
    bounds = strata.block_bounds(6, 6)  # one row per block
    for combo in [(0, 1, 2), (0, 0, 5), (3, 3, 3), (1, 4, 5), (5, 1, 4)]:
        c = strata.cells_of([np.array([x]) for x in combo], bounds, sched)[0]
        assert set(combo) <= set(sched.group(c))


def test_group_step_keeps_p_for_its_rows_and_returns_the_gram_change():
    I, J, Y = _ill(d=12)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 3))
    P, G = inverse_gram(X), X.T @ X
    cell = (I, J, J, Y)
    X1, dG, refusals, ok = group_step(cell, X, P, G, 0.05, "rmse", True, 7, 0, 1)
    assert ok and refusals == 0
    np.testing.assert_allclose(dG, X1.T @ X1 - G, atol=1e-12)
    # one task holding every row is the one-process epoch in the same order
    order = np.random.default_rng(7).permutation(len(Y))
    ref = pw.reference_samples(I, J, J, Y, order, X, 0.05, "rmse", True)
    np.testing.assert_allclose(X1, ref, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ executors
def test_threads_inline_and_a_cluster_give_the_same_iterates(client):
    s = _ill()
    kw = dict(epochs=3, random_state=1, n_blocks=4, sync_every=50)
    inline = dsg.scaled_sgd(s, 3, scheduler="sync", **kw)
    threads = dsg.scaled_sgd(s, 3, scheduler="threads", **kw)
    cluster = dsg.scaled_sgd(s, 3, client=client, **kw)
    X = np.asarray(inline.L)
    # 3 rounds of about 300 samples in steps of at most 50, per epoch
    assert inline.info["rounds"] == 3 and 3 * 18 <= inline.info["syncs"] <= 3 * 21
    np.testing.assert_array_equal(np.asarray(threads.L), X)
    np.testing.assert_array_equal(np.asarray(cluster.L), X)
    np.testing.assert_array_equal(cluster.history["loss"], inline.history["loss"])


def test_iterates_do_not_depend_on_the_worker_count():
    from dscaledgd.engine.executors import ThreadExecutor
    from dscaledgd.engine.online import StratifiedEpochs
    from dscaledgd.solvers.driver import LoopConfig
    from dscaledgd.solvers.online import run_epochs

    I, J, K, Y = _bpr(m=3000)
    out = []
    for n in (1, 2, 3):
        ex = ThreadExecutor(n)
        eng = StratifiedEpochs(ex, (I, J, K, Y), loss="bpr", scaled=True, n_rows=None,
                               n_blocks=6, sync_every=200, seed=3)  # fmt: skip
        X = np.random.default_rng(0).standard_normal((eng.d, 3))
        P = inverse_gram(X)
        run_epochs(eng, X, P, scaled=True, lr=0.5, cfg=LoopConfig(tol=0, max_iter=2),
                   rng=np.random.default_rng(1), evaluate=eng.objective)  # fmt: skip
        out.append(X)
        eng.close()
        ex.close()
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


def test_distributed_needs_the_same_epochs_as_one_process(client):
    s = _ill()
    one = dsg.scaled_sgd(s, 3, epochs=60, tol=1e-15, random_state=1)
    dist = dsg.scaled_sgd(s, 3, epochs=60, tol=1e-15, random_state=1, client=client,
                          sync_every=90)  # fmt: skip
    assert one.status == dist.status == "converged"
    assert dist.info["executor"] == "distributed" and dist.info["n_blocks"] == 4
    assert dist.n_iter <= 1.2 * one.n_iter and one.n_iter <= 1.2 * dist.n_iter
    assert dist.history["loss"][-1] <= 1e-15


# ------------------------------------------------------------------ streamed input
def test_dask_zarr_csv_and_parquet_samples_give_the_numpy_result(tmp_path):
    import dask.array as da
    import zarr

    I, J, Y = _ill(d=20)
    arr = np.stack([I, J, Y], axis=1)
    kw = dict(epochs=2, random_state=0, n_blocks=4, scheduler="sync")
    ref = np.asarray(dsg.scaled_sgd((I, J, Y), 3, **kw).L)
    z = zarr.create_array(str(tmp_path / "s.zarr"), shape=arr.shape, chunks=(64, 3), dtype="f8")
    z[:] = arr
    csv = tmp_path / "s.csv"
    np.savetxt(csv, np.stack([I, J, Y], 1), delimiter=",", header="a,b,v", comments="",
               fmt=["%d", "%d", "%.17g"])  # fmt: skip
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    pq = tmp_path / "s.parquet"
    pd.DataFrame({"i": I, "j": J, "y": Y}).to_parquet(pq)
    for source, extra in [
        (da.from_array(arr, chunks=(100, 3)), {}),
        ((da.from_array(I, chunks=70), da.from_array(J, chunks=70), da.from_array(Y, chunks=70)),
         {}),
        (str(tmp_path / "s.zarr"), {}),
        (z, {}),
        (str(csv), {"columns": ("a", "b", "v")}),
        (str(pq), {}),
    ]:  # fmt: skip
        got = np.asarray(dsg.scaled_sgd(source, 3, **kw, **extra).L)
        np.testing.assert_array_equal(got, ref)


def test_a_bad_block_is_refused_with_its_position_in_the_stream(tmp_path):
    import dask.array as da

    I, J, Y = _ill(d=20)
    Y = Y.copy()
    Y[333] = np.inf
    arr = da.from_array(np.stack([I, J, Y], axis=1), chunks=(100, 3))
    with pytest.raises(InputDataError, match="sample 333 is inf"):
        dsg.scaled_sgd(arr, 3, scheduler="sync", epochs=1)
    arr = da.from_array(np.stack([I, J, J, Y], axis=1), chunks=(100, 4))
    with pytest.raises(InputDataError, match="takes pairs.*that is triplets"):
        dsg.scaled_sgd(arr, 3, scheduler="sync", epochs=1)
    with pytest.raises(InputDataError, match="outside the 5 rows"):
        dsg.scaled_sgd(da.from_array(np.stack([I, J, np.abs(Y)], 1), chunks=(100, 3)), 3,
                       scheduler="sync", n_rows=5)  # fmt: skip
    with pytest.raises(InputDataError, match="does not exist"):
        dsg.scaled_sgd(str(tmp_path / "missing.zarr"), 3, scheduler="sync")
    csv = tmp_path / "s.csv"
    csv.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InputDataError, match=r"columns \['i', 'j', 'y'\] are missing"):
        dsg.scaled_sgd(str(csv), 1, scheduler="sync")


# ------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("where", ["in-process", "threads"])
def test_held_out_metrics_are_recorded_at_fixed_sample_counts(where):
    I, J, K, Y = _bpr()
    train = tuple(c[:5000] for c in (I, J, K, Y))
    test = tuple(c[5000:] for c in (I, J, K, Y))
    kw = {} if where == "in-process" else {"scheduler": "threads"}
    res = dsg.scaled_sgd(train, 3, loss="bpr", step_size=10.0, epochs=2, random_state=0,
                         validation=test, eval_every=0.1, **kw)  # fmt: skip
    h = res.history
    assert len(h["eval_samples"]) == 1 + 2 * 10
    assert h["eval_samples"][0] == 0 and h["eval_samples"][-1] == 10000
    np.testing.assert_allclose(h["eval_epoch"], h["eval_samples"] / 5000)
    assert np.all(np.diff(h["eval_samples"]) > 0) and np.all(np.diff(h["eval_time"]) >= 0)
    X = np.asarray(res.L)
    assert h["eval_auc"][-1] == pytest.approx(pw.auc(*test, X), abs=1e-12)
    assert h["eval_loss"][-1] == pytest.approx(pw.objective(*test, X, "bpr"), rel=1e-12)
    assert h["eval_auc"][-1] > h["eval_auc"][0] + 0.1
    assert 0.5 < res.info["np_maximum"] < h["eval_auc"][-1]


def test_np_maximum_finds_a_popularity_order():
    rng = np.random.default_rng(0)
    d = 50
    s = rng.standard_normal(d)
    J, K = rng.integers(0, d, (2, 4000))
    keep = J != K
    J, K = J[keep], K[keep]
    Y = (s[J] > s[K]).astype(float)
    assert pw.np_maximum(J, K, Y, d) > 0.97  # a per-item score explains it all
    Yr = (rng.random(len(J)) < 0.5).astype(float)
    assert pw.np_maximum(J, K, Yr, d) < 0.75  # random labels: little to learn


def test_1bit_learns_binary_labels():
    rng = np.random.default_rng(11)
    d = 40
    Z = rng.standard_normal((d, 2)) * 2
    i, j = np.indices((d, d)).reshape(2, -1)
    y = (rng.random(len(i)) < 1 / (1 + np.exp(-(Z @ Z.T)[i, j]))).astype(float)
    res = dsg.scaled_sgd((i, j, y), 2, loss="1bit", step_size=3.0, epochs=10, random_state=0)
    assert res.history["loss"][-1] < 0.4 * res.history["loss"][0]
    M, X = Z @ Z.T, np.asarray(res.L)  # 1600 coin flips recover the logits to about 36%
    assert np.linalg.norm(X @ X.T - M) < 0.5 * np.linalg.norm(M)
