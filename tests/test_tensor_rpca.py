"""tensor_rpca (ALGORITHMS.md §8): kernels, oracle, best-iterate stop, bad input.

What is checked:

* **Kernels.** ``X − Y + thre(Y − X, ζ) = clip(X − Y, ±ζ)``; the clipped
  chunk pass (dense and coo) equals the full-tensor formulas, and its
  gradient is the finite-difference gradient of ``(1/p) Σ_Ω huber_ζ(X − Y)``
  (the loss whose gradient the soft-thresholded step takes).
* **Oracle agreement.** From the same warm start, the first 20 iterates of
  :func:`~dscaledgd.problems.tensor_rpca.reference_run` (``Ŭ_k`` formed,
  explicit inverses) and of the chunked path agree to 1e-10 on a 1- and a
  3×2×2-chunk grid, dense and coo, fully and partly observed. The
  distributed initialisation (randomised HOSVD of the clipped data) matches
  the exact one.
* **Recovery and κ.** Exact recovery of a planted tensor with 10% gross
  corruption, with NaN-missing entries too; stopping iterations flat over κ.
* **Best iterate.** With a schedule that decays too fast the error rises after
  its minimum; the run returns the iterate with the smallest criterion and
  says so.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import DataWarning, InputDataError, InvalidParameterError
from dscaledgd.problems import tensor_rpca as trp
from dscaledgd.problems import tucker as tk

SHAPE, RANKS = (20, 18, 16), (3, 3, 3)
RTOL = 1e-10


def _instance(shape=SHAPE, ranks=RANKS, kappa=3.0, frac=0.1, seed=0, amp=None):
    """``(X, Y, outliers)``: a planted Tucker tensor plus gross sparse corruption.

    Corruption ``U(−a, a)`` on a Bernoulli(frac) support, ``a = 5 mean|X|``
    by default.
    """
    core, U = dsg.datasets.tucker_instance(shape, ranks, kappa=kappa, random_state=seed)
    X = dsg.datasets.tucker_tensor(core, U)
    rng = np.random.default_rng(seed + 1)
    out = rng.random(X.shape) < frac
    a = 5 * np.mean(np.abs(X)) if amp is None else amp
    return X, X + np.where(out, rng.uniform(-a, a, X.shape), 0.0), out


def _rel2(a, b) -> float:
    return float((np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)) ** 2)


def _coo(Y):
    seen = ~np.isnan(Y)
    return np.argwhere(seen).astype(np.int32), Y[seen], Y.shape


def _huber(z, zeta):
    a = np.abs(z)
    return np.where(a <= zeta, 0.5 * z * z, zeta * a - 0.5 * zeta * zeta)


# ------------------------------------------------------------------ kernels
def test_soft_threshold_residual_is_a_clip():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((2, 1000))
    for zeta in (0.0, 0.3, 5.0):
        lhs = X - Y + trp.soft_threshold(Y - X, zeta)
        assert np.allclose(lhs, np.clip(X - Y, -zeta, zeta), rtol=0, atol=1e-15)


@pytest.mark.parametrize("missing", [0.0, 0.4])
def test_clipped_chunk_pass_matches_formulas_and_finite_differences(missing):
    rng = np.random.default_rng(1)
    shape, ranks = (7, 6, 5), (2, 3, 2)
    core = rng.standard_normal(ranks)
    U = [rng.standard_normal((n, r)) / np.sqrt(n) for n, r in zip(shape, ranks)]
    X = tk._full(core, U)
    Y = X + rng.standard_normal(shape) * np.where(rng.random(shape) < 0.3, 3.0, 0.01)
    Y[rng.random(shape) < missing] = np.nan
    mask = ~np.isnan(Y)
    p = mask.mean()
    zeta = 0.2
    Z = np.where(mask, np.clip(X - np.where(mask, Y, 0), -zeta, zeta), 0.0)
    # the formulas with Ŭ formed (reference_pass takes Y' = X − Z: its residual is Z)
    _, G_ref, c_ref = tk.reference_pass(np.where(mask, X - Z, np.nan), U, core, p)

    def f(core_, U_):
        Xf = tk._full(core_, U_)
        return float(np.sum(_huber(np.where(mask, Xf - np.where(mask, Y, 0), 0.0), zeta))) / p

    for chunk in (Y, _coo(Y)):
        G, cgrad, sums = tk.chunk_pass(chunk, U, core, 1 / p, zeta)
        for g, gr in zip(G, G_ref):
            np.testing.assert_allclose(g, gr, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(cgrad, c_ref, rtol=1e-12, atol=1e-13)
        resid = np.abs(np.where(mask, X - np.where(mask, Y, 0), 0.0))
        assert sums[0] == pytest.approx(np.sum(Z * Z), rel=1e-12)
        assert sums[2] == pytest.approx(resid.sum(), rel=1e-12)
        assert sums[3] == int(np.sum(resid[mask] > zeta))
        assert sums[4] == 0  # no τ given: nothing counted
    # finite differences of the Huber loss (central, h = 1e-6) along random directions
    h = 1e-6
    for k in range(3):
        D = rng.standard_normal(U[k].shape)
        Up = [u + h * D if j == k else u for j, u in enumerate(U)]
        Um = [u - h * D if j == k else u for j, u in enumerate(U)]
        fd = (f(core, Up) - f(core, Um)) / (2 * h)
        assert fd == pytest.approx(float(np.sum(G[k] * D)), rel=1e-6)
    D = rng.standard_normal(ranks)
    fd = (f(core + h * D, U) - f(core - h * D, U)) / (2 * h)
    assert fd == pytest.approx(float(np.sum(cgrad * D)), rel=1e-6)


# ------------------------------------------------------------------ oracle
def _states(res_holder):
    def cb(st):
        res_holder.append((st.core.copy(), [np.asarray(u) for u in st.factors()]))

    return cb


@pytest.mark.parametrize(
    "chunks, layout, missing, scheduler",
    [(None, "dense", 0.0, "sync"), ((7, 9, 8), "dense", 0.3, "threads"),
     ((7, 9, 8), "coo", 0.3, "sync")],
)  # fmt: skip
def test_first_iterates_match_the_numpy_oracle(chunks, layout, missing, scheduler):
    X, Y, _ = _instance(kappa=5.0)
    rng = np.random.default_rng(5)
    Y[rng.random(Y.shape) < missing] = np.nan
    scale = trp.robust_scale([Y])
    z0, z1 = 30 * scale, 20 * scale
    core0, U0 = trp.reference_init(Y, RANKS, z0)
    ref = trp.reference_run(Y, core0, U0, z1=z1, n_iter=20)
    T = dsg.TensorObservations.from_array(Y, chunks=chunks, layout=layout)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        dsg.tensor_rpca(
            T, RANKS, init=(core0, U0), threshold_scale=scale, max_iter=20, scheduler=scheduler,
            callback=_states(seen),
        )  # fmt: skip
    assert len(seen) == 20
    for t, (core, U) in enumerate(seen, start=1):
        rc, rU, _ = ref[t]
        assert _rel2(tk._full(core, U), tk._full(rc, rU)) <= RTOL**2, t


@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore::dscaledgd.DataWarning")  # one iteration: unexplained
def test_distributed_init_is_the_hosvd_of_the_clipped_data():
    X, Y, _ = _instance()
    scale = trp.robust_scale([Y])
    core0, U0 = trp.reference_init(Y, RANKS, 30 * scale)
    T = dsg.TensorObservations.from_array(Y, chunks=(7, 9, 8))
    res = dsg.tensor_rpca(
        T, RANKS, max_iter=1, scheduler="sync", init_power_iter=30, threshold_scale=scale,
        progress=False, random_state=0, init_sweeps=0,
    )  # fmt: skip
    # the engine's start is history entry 0: its loss (1/2)‖clip(X_0 − Y, ±ζ_0)‖² against
    # the oracle's exact HOSVD start
    X0 = tk._full(core0, U0)
    Z = np.clip(X0 - Y, -20 * scale, 20 * scale)
    assert res.info["init_passes"] > 0
    assert res.history["loss"][0] == pytest.approx(0.5 * float(np.sum(Z * Z)), rel=1e-8)


@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore::dscaledgd.DataWarning")
def test_hooi_sweeps_match_a_numpy_reference():
    """Two Jacobi HOOI sweeps from the exact HOSVD: U_k ← top r_k left singular vectors of
    M_k(Y' ×_{j≠k} U_jᵀ), every mode from the previous sweep's factors."""
    from dscaledgd.linalg import multi_mode_product, unfold

    X, Y, _ = _instance(seed=11)
    scale = trp.robust_scale([Y])
    Yc = np.clip(Y, -30 * scale, 30 * scale)
    _, U = trp.reference_init(Y, RANKS, 30 * scale)
    for _ in range(2):
        U = [np.linalg.svd(unfold(multi_mode_product(Yc, [u.T for u in U], skip=k), k),
                           full_matrices=False)[0][:, :r] for k, r in enumerate(RANKS)]  # fmt: skip
    core = multi_mode_product(Yc, [u.T for u in U])
    Z = np.clip(tk._full(core, U) - Y, -20 * scale, 20 * scale)
    res = dsg.tensor_rpca(
        dsg.TensorObservations.from_array(Y, chunks=(7, 9, 8)), RANKS, max_iter=1,
        scheduler="threads", init_power_iter=30, threshold_scale=scale, progress=False,
        random_state=0, init_sweeps=2,
    )  # fmt: skip
    assert res.history["loss"][0] == pytest.approx(0.5 * float(np.sum(Z * Z)), rel=1e-8)
    with pytest.raises(InvalidParameterError, match="'init_sweeps'"):
        dsg.tensor_rpca(Y, RANKS, init_sweeps=-1, scheduler="sync")


# ------------------------------------------------------------------ recovery
def test_recovers_a_planted_tensor_and_its_outliers():
    X, Y, out = _instance(kappa=5.0)
    res = dsg.tensor_rpca(Y, RANKS, scheduler="threads", random_state=0, progress=False)
    assert res.status == "early_stopped", res.message
    assert _rel2(res.to_tensor().compute(), X) < 1e-12
    S = res.sparse.compute()
    assert np.array_equal(S != 0, out)
    zeta = res.info["threshold"]["zeta_returned"]  # S = thre(Y − X, ζ): off by ζ
    np.testing.assert_allclose(S[out], (Y - X)[out], rtol=0, atol=zeta + 1e-6 * np.abs(X).max())
    assert res.history["l1"][res.info["best_iteration"]] == pytest.approx(
        res.history["l1"].min(), rel=0, abs=0
    )
    assert res.info["sparse_fraction"] == pytest.approx(out.mean(), abs=0.01)
    assert res.info["unexplained_fraction"] <= out.mean()


def test_recovers_with_missing_entries():
    X, Y, out = _instance(frac=0.1, seed=3)
    seen = np.random.default_rng(9).random(Y.shape) < 0.6
    res = dsg.tensor_rpca(Y, RANKS, mask=seen, scheduler="threads", random_state=0,
                          progress=False)  # fmt: skip
    assert _rel2(res.to_tensor().compute(), X) < 1e-12
    S = res.sparse.compute()
    assert np.all(S[~seen] == 0)


def test_stopping_iterations_flat_over_kappa():
    its = []
    for kappa in (1.0, 5.0, 20.0):
        X, Y, _ = _instance((24, 22, 20), (3, 3, 3), kappa=kappa, seed=4)
        res = dsg.tensor_rpca(Y, 3, scheduler="threads", random_state=0, progress=False)
        assert res.status == "early_stopped"
        assert _rel2(res.to_tensor().compute(), X) < 1e-12, kappa
        its.append(res.n_iter)
    assert max(its) / min(its) <= 1.15, its


def test_scale_free_defaults():
    """The thresholds follow the data's robust scale: a rescaled tensor gives the rescaled
    fit, iterate for iterate."""
    X, Y, _ = _instance(seed=6)
    a = dsg.tensor_rpca(Y, RANKS, scheduler="sync", random_state=0, progress=False)
    b = dsg.tensor_rpca(1e4 * Y, RANKS, scheduler="sync", random_state=0, progress=False)
    assert a.n_iter == b.n_iter
    assert _rel2(b.to_tensor().compute() / 1e4, a.to_tensor().compute()) < 1e-20
    assert b.info["threshold"]["scale"] == pytest.approx(1e4 * a.info["threshold"]["scale"])


@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")
def test_returns_the_iterate_with_the_smallest_criterion():
    """A schedule that decays too fast (0.5) freezes the fit before it has converged; the
    criterion then wanders at its floor, and the run returns its smallest point, not the
    last one."""
    X, Y, _ = _instance(kappa=5.0, seed=2)
    seen = []
    res = dsg.tensor_rpca(
        Y, RANKS, threshold={"decay": 0.5}, max_iter=80, patience=80, scheduler="sync",
        random_state=0, progress=False, callback=_states(seen),
    )  # fmt: skip
    l1 = res.history["l1"]
    k = res.info["best_iteration"]
    assert k == int(np.argmin(l1)) and 0 < k < res.n_iter == 80
    assert res.status == "max_iter" and f"returning iteration {k}" in res.message
    core, U = seen[k - 1]
    assert _rel2(res.to_tensor().compute(), tk._full(core, U)) == 0.0


@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")
def test_validation_returns_the_held_out_best_under_noise():
    """With dense noise the error is lowest at an interior iterate (the fit then follows
    the noise as ζ_t → 0); the held-out MAE finds it."""
    X, Y, _ = _instance(kappa=5.0, seed=2)
    Y = Y + 0.3 * np.std(X) * np.random.default_rng(4).standard_normal(X.shape)
    train, held = dsg.TensorObservations.from_array(Y).split(0.2, random_state=0)
    seen = []
    res = dsg.tensor_rpca(
        train, RANKS, validation=held, max_iter=80, scheduler="sync", random_state=0,
        progress=False, callback=_states(seen),
    )  # fmt: skip
    v = res.history["validation"]
    k = res.info["best_iteration"]
    assert k == int(np.argmin(v)) and k < len(v) - 1
    assert res.status == "early_stopped" and "validation MAE" in res.message
    core, U = seen[k - 1]
    assert _rel2(res.to_tensor().compute(), tk._full(core, U)) == 0.0


def test_estimator():
    X, Y, out = _instance(seed=8)
    est = dsg.TensorRobustPCA(ranks=RANKS, scheduler="sync", random_state=0, progress=False)
    est.fit(Y)
    assert _rel2(est.transform().compute(), X) < 1e-12
    assert np.array_equal(est.sparse_.compute() != 0, out)
    assert set(est.get_params()) >= {"ranks", "threshold", "step_size", "tol", "validation"}


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"step_size": 0.0}, "'step_size'.*in \\(0, 1\\]"),
        ({"step_size": 1.5}, "'step_size'"),
        ({"step_size": float("nan")}, "'step_size'"),
        ({"threshold": {"z0": -1}}, "z0 a finite number > 0"),
        ({"threshold": {"decay": 1.2}}, "decay in \\(0, 1\\]"),
        ({"threshold": {"zeta": 1}}, "unknown keys \\['zeta'\\]"),
        ({"threshold": (1, 2)}, "'threshold'"),
        ({"threshold_scale": 0.0}, "'threshold_scale'"),
        ({"init": "random"}, "'init'"),
        ({"cache": "disk"}, "'cache'"),
    ],
)
def test_bad_parameters_are_refused(kw, match):
    _, Y, _ = _instance()
    with pytest.raises(InvalidParameterError, match=match):
        dsg.tensor_rpca(Y, RANKS, scheduler="sync", **kw)


def test_bad_ranks_and_data_are_refused():
    _, Y, _ = _instance()
    with pytest.raises(InvalidParameterError, match="'ranks'"):
        dsg.tensor_rpca(Y, (3, 3), scheduler="sync")
    with pytest.raises(InvalidParameterError, match="above the product"):
        dsg.tensor_rpca(Y, (2, 2, 5), scheduler="sync")
    with pytest.raises(InputDataError, match="no observed entry"):
        dsg.tensor_rpca(np.full((4, 5, 6), np.nan), 2, scheduler="sync")
    with pytest.raises(InputDataError, match="every observed value is 0"):
        dsg.tensor_rpca(np.zeros((4, 5, 6)), 2, scheduler="sync")


def test_validation_overlapping_training_entries_is_refused():
    _, Y, _ = _instance()
    T = dsg.TensorObservations.from_array(Y)
    _, held = T.split(0.1, random_state=0)
    with pytest.raises(InvalidParameterError, match="overlaps the training entries"):
        dsg.tensor_rpca(T, RANKS, validation=held, scheduler="sync")


@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")
def test_dense_corruption_warns():
    X, Y, _ = _instance(frac=0.7, seed=1, amp=None)
    with pytest.warns(DataWarning, match="unexplained"):
        dsg.tensor_rpca(Y, RANKS, max_iter=40, scheduler="sync", random_state=0, progress=False)


def test_the_docs_example_runs():
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "tensor-rpca.md")) as fh:
        block = re.findall(r"```python\n(.*?)```", fh.read(), re.S)[0]
    ns: dict = {}
    exec(compile(block, "docs/tensor-rpca.md", "exec"), ns)
    res, X = ns["res"], ns["X"]
    assert res.status == "early_stopped"
    assert _rel2(res.to_tensor().compute(), X) < 1e-12
    assert np.array_equal(res.sparse.compute() != 0, ns["outliers"])


# ------------------------------------------------------------------ fit-following sparsifier
def test_adaptive_threshold_follows_the_residual():
    """ζ_{t+1} = 3 σ̂_t, σ̂_t the sampled robust standard deviation of Y − X_t (within the
    histogram's 4% bins and the sample's error of the full residual's)."""
    X, Y, out = _instance(kappa=5.0, seed=9)
    Y = Y + 0.05 * np.std(X) * np.random.default_rng(1).standard_normal(X.shape)
    seen = []
    res = dsg.tensor_rpca(Y, RANKS, sparsifier="adaptive", scheduler="sync", random_state=0,
                          progress=False, callback=_states(seen))  # fmt: skip
    zeta, sigma = res.history["zeta"], res.history["residual_sigma"]
    np.testing.assert_allclose(zeta[1:], 3.0 * sigma[:-1], rtol=1e-12)
    for t in (1, len(seen) // 2, len(seen)):
        core, U = seen[t - 1]
        full = np.median(np.abs(Y - tk._full(core, U))) / 0.6744897501960817
        assert sigma[t] == pytest.approx(full, rel=0.15), t
    # on noisy data its sparse part holds the outliers, not the noise (the schedule's
    # holds every entry: ζ_t falls below the noise)
    S = res.sparse.compute() != 0
    assert np.mean(S == out) > 0.9
    sched = dsg.tensor_rpca(Y, RANKS, scheduler="sync", random_state=0, progress=False)
    assert np.mean(sched.sparse.compute() != 0) > 0.9


class _Killed(Exception):
    pass


def test_adaptive_thresholds_survive_a_checkpoint(tmp_path):
    """The fit-following ζ_t are carried in the checkpoint: a run killed at iteration 17
    and resumed from its checkpoint at 15 ends where the uninterrupted run does."""
    _, Y, _ = _instance(seed=3)
    kw = {"sparsifier": "adaptive", "scheduler": "sync", "random_state": 0, "progress": False}
    full = dsg.tensor_rpca(Y, RANKS, **kw)

    def kill(st):
        if st.iteration == 17:
            raise _Killed

    ck = str(tmp_path / "ck")
    with pytest.raises(_Killed):
        dsg.tensor_rpca(Y, RANKS, checkpoint=ck, checkpoint_interval=5, callback=kill, **kw)
    res = dsg.tensor_rpca(Y, RANKS, checkpoint=ck, checkpoint_interval=5, resume=True, **kw)
    assert res.info["resumed_from"] == 15 and res.n_iter == full.n_iter
    np.testing.assert_array_equal(res.history["zeta"], full.history["zeta"])
    np.testing.assert_array_equal(res.history["l1"], full.history["l1"])
    np.testing.assert_array_equal(res.to_tensor().compute(), full.to_tensor().compute())


def test_an_unknown_sparsifier_is_refused():
    _, Y, _ = _instance()
    with pytest.raises(InvalidParameterError, match="'sparsifier'"):
        dsg.tensor_rpca(Y, RANKS, sparsifier="fraction", scheduler="sync")


def test_a_local_cluster_gives_the_threads_answer(client):
    """Up to the rounding of another process (tests/test_determinism.py: 1e-12)."""
    X, Y, _ = _instance(seed=12)
    T = dsg.TensorObservations.from_array(Y, chunks=(7, 9, 8))
    kw = {"random_state": 0, "progress": False, "init_power_iter": 10}
    a = dsg.tensor_rpca(T, RANKS, scheduler="threads", **kw)
    b = dsg.tensor_rpca(T, RANKS, client=client, **kw)
    assert a.n_iter == b.n_iter and a.info["best_iteration"] == b.info["best_iteration"]
    np.testing.assert_allclose(b.history["l1"], a.history["l1"], rtol=1e-12)
    A, B = a.to_tensor().compute(), b.to_tensor().compute()
    assert np.linalg.norm(A - B) <= 1e-12 * np.linalg.norm(A)
    np.testing.assert_array_equal(a.sparse.compute() != 0, b.sparse.compute() != 0)


def test_result_store_round_trip(tmp_path):
    X, Y, out = _instance(seed=13)
    res = dsg.tensor_rpca(dsg.TensorObservations.from_array(Y, chunks=(7, 9, 8)), RANKS,
                          scheduler="sync", random_state=0, progress=False)  # fmt: skip
    path = res.to_zarr(str(tmp_path / "res.zarr"))
    back = dsg.load_result(path)
    assert type(back.model).__name__ == "RobustTucker"
    np.testing.assert_array_equal(back.core, res.core)
    np.testing.assert_array_equal(back.sparse.compute(), res.sparse.compute())
    np.testing.assert_array_equal(back.to_tensor().compute(), res.to_tensor().compute())
    assert back.info["threshold"] == res.info["threshold"]
