"""Regularised, centred completion: descent, centring, validation, ids."""

from __future__ import annotations

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import InvalidParameterError
from dscaledgd.engine.cluster import ThreadExecutor
from dscaledgd.engine.completion import CompletionEngine
from dscaledgd.problems.spec import Update
from dscaledgd.solvers.centering import fit_offsets
from dscaledgd.solvers.scaledgd import Preconditioner, Step, update_matrices, with_ridge


def _skewed(seed=0, shape=(60, 80), nnz=900):
    """Ratings-like data: non-uniform sampling (popular columns), values 1..5."""
    rng = np.random.default_rng(seed)
    pop = rng.pareto(1.5, shape[1]) + 0.1
    cols = rng.choice(shape[1], size=3 * nnz, p=pop / pop.sum())
    rows = rng.integers(0, shape[0], size=3 * nnz)
    key = np.unique(rows * shape[1] + cols)[:nnz]
    r, c = key // shape[1], key % shape[1]
    truth = rng.standard_normal((shape[0], 2)) @ rng.standard_normal((2, shape[1]))
    v = np.clip(3 + truth[r, c] + 0.3 * rng.standard_normal(len(r)), 1, 5)
    # like real ratings, some columns are never observed (they warn; tested in test_api.py)
    return dsg.Observations.from_coo(r, c, v, shape=shape, tiles=(2, 2))


pytestmark = pytest.mark.filterwarnings("ignore::dscaledgd.exceptions.DataWarning")


def test_weighted_ridge_step_is_a_descent_step():
    """<∇f_reg, D> < 0 for the degree-scaled preconditioned direction, checked by FD."""
    obs = _skewed()
    eng = CompletionEngine(obs, ThreadExecutor(0))
    eng.set_row_weights()
    rng = np.random.default_rng(1)
    F = [rng.standard_normal((60, 3)), rng.standard_normal((80, 3))]
    reg = 50.0

    def f_reg(factors):
        pas = eng.pass_(eng.from_numpy(factors))
        return with_ridge(eng.scalars(pas), reg).loss, pas

    f0, pas = f_reg(F)
    stats = with_ridge(eng.scalars(pas), reg)
    P = Preconditioner().matrices(stats, Step(1.0, reg))
    A, B = update_matrices(P, 1.0, reg)  # η = 1 gives the direction D = F(A − I) + S G B
    D = [
        n - f
        for n, f in zip([x.gather() for x in eng.step(eng.from_numpy(F), pas, Update(A, B))], F)
    ]
    h = 1e-6
    fd = (
        f_reg([f + h * d for f, d in zip(F, D)])[0] - f_reg([f - h * d for f, d in zip(F, D)])[0]
    ) / (2 * h)
    # analytic: ∇f_reg = G + reg W F; the direction is -(S G + reg F) P
    G = [g.gather() for g in pas.G]

    def weights(n):  # n_i / mean over observed rows; empty rows get the smallest weight
        w = n / n[n > 0].mean()
        w[n == 0] = w[n > 0].min()
        return w

    w = [weights(obs.row_counts.astype(float)), weights(obs.col_counts.astype(float))]
    grad = [g + reg * wk[:, None] * f for g, wk, f in zip(G, w, F)]
    analytic = sum(float(np.sum(g * d)) for g, d in zip(grad, D))
    assert analytic < 0
    assert fd == pytest.approx(analytic, rel=1e-5)
    # and a small step decreases the regularised loss
    A, B = update_matrices(P, 0.05, reg)
    f1 = f_reg([x.gather() for x in eng.step(eng.from_numpy(F), pas, Update(A, B))])[0]
    assert f1 < f0


@pytest.mark.filterwarnings("ignore::dscaledgd.exceptions.ConvergenceWarning")
def test_reg_shrinks_the_factors():
    obs = _skewed(1)
    norms = []
    for reg in (0.1, 1.0, 10.0):  # reg = 0 on noisy skewed data is ill-posed
        res = dsg.complete(obs, 2, reg=reg, scheduler="sync", random_state=0, max_iter=300)
        L, R = res.compute_factors()
        norms.append(np.linalg.norm(L @ R.T))
    assert norms[0] > norms[1] > norms[2]


def test_centering_matches_least_squares():
    obs = _skewed(2)
    eng = CompletionEngine(obs, ThreadExecutor(0))
    r, c, v = obs.to_coo()
    mu, b0, c0 = fit_offsets(eng, True, reg=0.0)
    assert mu == pytest.approx(v.mean(), rel=1e-13) and b0 is None and c0 is None
    reg = 0.3  # Spark's units: each bias's penalty is reg × the mean count of its side
    mu, b, cc = fit_offsets(eng, "biases", reg=reg, sweeps=400)
    n1, n2 = obs.shape
    # dense ridge least squares: [I_rows, I_cols] [b; c] ≈ y - mu
    A = np.zeros((len(v), n1 + n2))
    A[np.arange(len(v)), r] = 1
    A[np.arange(len(v)), n1 + c] = 1
    keep_r, keep_c = obs.row_counts > 0, obs.col_counts > 0
    cols = np.concatenate([keep_r, keep_c])
    nr, nc = obs.row_counts, obs.col_counts
    lam = np.concatenate(
        [np.full(n1, reg * nr[nr > 0].mean()), np.full(n2, reg * nc[nc > 0].mean())]
    )[cols]
    x = np.linalg.solve(A[:, cols].T @ A[:, cols] + np.diag(lam), A[:, cols].T @ (v - mu))
    np.testing.assert_allclose(np.concatenate([b, cc])[cols], x, atol=1e-8)


def test_centered_fit_predicts_with_offsets(tmp_path):
    obs = _skewed(3)
    train, test = obs.split(0.2, random_state=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.DataWarning)
        res = dsg.complete(train, 2, reg=0.5, center="biases", scheduler="threads", random_state=0)
    assert res.offsets["mean"] == pytest.approx(train.to_coo()[2].mean(), rel=1e-12)
    L, R = res.compute_factors()
    X = res.offsets["mean"] + res.offsets["row_bias"][:, None] + res.offsets["col_bias"] + L @ R.T
    r, c, v = test.to_coo()
    np.testing.assert_allclose(res.predict(r, c), X[r, c], rtol=1e-12)
    assert res.rmse(test) == pytest.approx(np.sqrt(np.mean((X[r, c] - v) ** 2)), rel=1e-12)
    back = dsg.load_result(res.to_zarr(tmp_path / "res.zarr"))
    np.testing.assert_array_equal(back.offsets["row_bias"], res.offsets["row_bias"])
    assert back.rmse(test) == pytest.approx(res.rmse(test), rel=1e-12)


def test_validation_history_and_early_stopping():
    # over-specified rank on noisy data: the held-out error bottoms out, then rises
    obs, _ = dsg.datasets.make_completion((150, 120), 2, 0.3, noise=0.5, random_state=3)
    train, val = obs.split(0.2, random_state=1)
    res = dsg.complete(
        train, 8, validation=val, patience=5, scheduler="sync", random_state=0, max_iter=300
    )
    h = res.history["validation"]
    assert len(h) == res.n_iter + 1 and res.status == "early_stopped" and res.converged
    best = int(np.argmin(h))
    assert res.n_iter == best + 5  # stopped `patience` iterations after the best
    assert res.rmse(val) == pytest.approx(h[best], rel=1e-10)  # the best iterate is returned
    assert f"returning iteration {best}" in res.message


def test_predict_by_id_and_cold_start(tmp_path):
    text = "u,i,r\n" + "".join(
        f"{u},{i},{(u + i) % 5 + 1}\n" for u in (1, 2, 3, 5) for i in (10, 20, 30)
    )
    (tmp_path / "r.csv").write_text(text)
    obs = dsg.Observations.from_csv(str(tmp_path / "r.csv"), "u", "i", "r")
    res = dsg.complete(obs, 1, center="biases", reg=1.0, scheduler="sync", random_state=0)
    idx = res.predict([0, 3], [0, 2])
    np.testing.assert_allclose(res.predict([1, 5], [10, 30], by="id"), idx)
    out = res.predict([1, 4, 4], [10, 10, 99], by="id")
    assert np.isfinite(out[0]) and np.isnan(out[1:]).all()  # default cold_start="nan"
    mean = res.predict([4, 4, 1], [10, 99, 99], by="id", cold_start="mean")
    mu, cb = res.offsets["mean"], res.offsets["col_bias"]
    rb = res.offsets["row_bias"]
    np.testing.assert_allclose(mean, [mu + cb[0], mu, mu + rb[0]])
    with pytest.raises(
        dsg.InputDataError,
        match=r"row id 4 \(entry 1\) was never seen in training \(2 unseen pairs",
    ):
        res.predict([1, 4, 4], [10, 10, 99], by="id", cold_start="error")
    with pytest.raises(
        InvalidParameterError, match=r"'cold_start' parameter of predict must be one of"
    ):
        res.predict([1], [10], by="id", cold_start="zero")
    back = dsg.load_result(res.to_zarr(tmp_path / "res.zarr"))
    np.testing.assert_allclose(back.predict([1, 5], [10, 30], by="id"), idx)
    plain = dsg.complete(
        dsg.datasets.make_completion((20, 20), 2, 0.5, random_state=0)[0],
        2,
        scheduler="sync",
        random_state=0,
    )
    with pytest.raises(dsg.InputDataError, match="not imported from a table. Use by='index'"):
        plain.predict([0], [0], by="id")


def test_reg_per_side_pair():
    """``reg=(rows, columns)``: each side's ridge in Spark's units; a pair of equal values
    is the single value, bit for bit."""
    obs = _skewed(5)
    kw = dict(scheduler="sync", random_state=0, max_iter=30, center="biases")
    a = dsg.complete(obs, 2, reg=0.3, **kw)
    b = dsg.complete(obs, 2, reg=(0.3, 0.3), **kw)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    c = dsg.complete(obs, 2, reg=(0.05, 2.0), **kw)
    Lc, Rc = c.compute_factors()
    La, Ra = a.compute_factors()
    # the heavier column ridge shrinks R relative to L
    assert np.linalg.norm(Rc) / np.linalg.norm(Lc) < np.linalg.norm(Ra) / np.linalg.norm(La)
    with pytest.raises(InvalidParameterError, match="'reg'.*one number with symmetric=True"):
        dsg.complete(dsg.datasets.make_completion((30, 30), 2, 0.5, random_state=0)[0], 2,
                     reg=(0.1, 0.2), symmetric=True, scheduler="sync")  # fmt: skip
    with pytest.raises(InvalidParameterError, match="'reg'.*a pair \\(rows, columns\\)"):
        dsg.complete(obs, 2, reg=(0.1, -1.0), scheduler="sync")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"reg": -1.0}, r"'reg' parameter of complete must be a float in \[0, inf\)"),
        ({"center": "median"}, r"'center' parameter of complete must be one of"),
        ({"validation": "nope.zarr"}, r"does not exist"),
    ],
)
def test_bad_parameters(kw, match):
    obs, _ = dsg.datasets.make_completion((30, 20), 2, 0.5, random_state=0)
    err = FileNotFoundError if "validation" in kw else InvalidParameterError
    with pytest.raises(err, match=match):
        dsg.complete(obs, 2, scheduler="sync", **kw)
    other, _ = dsg.datasets.make_completion((30, 21), 2, 0.5, random_state=0)
    with pytest.raises(InvalidParameterError, match="must have the shape of the training"):
        dsg.complete(obs, 2, scheduler="sync", validation=other)


@pytest.mark.filterwarnings("ignore::dscaledgd.exceptions.ConvergenceWarning")
def test_reg_is_spark_als_regparam():
    """``reg`` means Spark ALS's ``regParam`` (ALS-WR): the fit is a stationary point of
    ``½ Σ_Ω (y − <L_i, R_j>)² + (reg/2)(Σ n_i ‖L_i‖² + Σ m_j ‖R_j‖²)``, and the reported
    loss is that objective divided by p. (A fixed η = 0.7 converges fast here: the default
    rule's adaptive damping stays at the noise level on noisy data and crawls; with
    skewed sampling the block-Hessian step's ``w_i (RᵀR + reg)`` is a poor model of row
    ``i``'s Hessian and fixed steps overshoot.)"""
    obs, _ = dsg.datasets.make_completion((80, 60), 2, 0.4, noise=0.3, random_state=0)
    reg = 0.2
    res = dsg.complete(
        obs, 2, reg=reg, step_size=0.7, scheduler="sync", random_state=0, max_iter=300
    )
    L, R = res.compute_factors()
    r, c, v = obs.to_coo()
    z = np.sum(L[r] * R[c], axis=1) - v
    n, m = obs.row_counts.astype(float), obs.col_counts.astype(float)
    obj = 0.5 * np.sum(z**2) + 0.5 * reg * (n @ np.sum(L**2, 1) + m @ np.sum(R**2, 1))
    assert res.history["loss"][-1] == pytest.approx(obj / obs.density, rel=1e-10)
    # ALS-WR's normal equations, row by row: Σ_j z_ij R_j + reg n_i L_i = 0
    gL = np.zeros_like(L)
    np.add.at(gL, r, z[:, None] * R[c])
    gR = np.zeros_like(R)
    np.add.at(gR, c, z[:, None] * L[r])
    gL += reg * n[:, None] * L
    gR += reg * m[:, None] * R
    scale = np.sqrt(np.sum(v**2))
    assert np.linalg.norm(gL) / scale < 1e-7 and np.linalg.norm(gR) / scale < 1e-7
