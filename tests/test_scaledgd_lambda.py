"""ScaledGD(λ): over-specified rank from a small random start, completion and sensing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dscaledgd as dsg


def _problem(kind, symmetric, n=60, cond=10):
    shape = (n, n) if symmetric else (n, n - 10)
    t = dsg.datasets.make_low_rank(shape, 2, cond=cond, symmetric=symmetric, random_state=3)
    M = t.dense()
    if kind == "completion":
        mask = np.random.default_rng(0).random(shape) < 0.5
        if symmetric:
            mask = np.triu(mask) | np.triu(mask).T
        obs = dsg.Observations.from_dense(np.where(mask, M, np.nan))
        return M, lambda **kw: dsg.complete(obs, 5, **kw)
    A = dsg.GaussianSensing(shape, 40 * n, random_state=4)
    y = A.forward(M)
    return M, lambda **kw: dsg.sense(y, A, 5, **kw)


def _iterations_to(fit, M, symmetric, method, target=1e-4, cap=1500, **kw):
    errs = []

    def cb(st):
        F = st.factors()
        errs.append(np.linalg.norm(F[0] @ F[-1].T - M) / np.linalg.norm(M))
        if errs[-1] < target:
            raise StopIteration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        res = fit(
            symmetric=symmetric,
            init="random",
            init_scale=1e-6,
            method=method,
            scheduler="sync",
            random_state=0,
            max_iter=cap,
            stall_tol=0.0,
            tol=1e-300,
            callback=cb,
            **kw,
        )
    return len(errs) if errs[-1] < target else np.inf, res


# measured (iterations to 1e-4, ScaledGD(λ) default λ / GD): 210/583, 125/524, 64/388, 53/407
@pytest.mark.parametrize(
    "kind, symmetric, measured, fraction, gd_ratio",
    [
        ("completion", False, 210, 1.0, 2.5),
        ("completion", True, 125, 1.0, 2.5),
        ("sensing", False, 64, 0.5, 5.0),
        ("sensing", True, 53, 0.5, 5.0),
    ],
)
def test_overspecified_rank_beats_gd(kind, symmetric, measured, fraction, gd_ratio):
    """True rank 2, search rank 5, κ = 10, ``init_scale=1e-6``."""
    M, fit = _problem(kind, symmetric)
    its, res = _iterations_to(fit, M, symmetric, "scaledgd")
    assert its <= 1.15 * measured
    # the default λ: the engine's fraction of the smallest `rank` spectral value
    lam = fraction * res.info["init_values"][-1]
    assert res.info["damping"] == pytest.approx(lam, rel=1e-12)
    assert res.history["damping"][1] == pytest.approx(res.info["damping"], rel=1e-12)
    gd_its, _ = _iterations_to(fit, M, symmetric, "gd", cap=int(gd_ratio * its))
    assert gd_its > gd_ratio * its  # GD: measured 2.8× / 4.2× (completion), 6.1× / 7.7× (sensing)


def test_damping_must_not_be_negative_and_small_damping_warns():
    M, fit = _problem("completion", False)
    with pytest.raises(dsg.InvalidParameterError, match="'damping' parameter of complete"):
        fit(init="random", damping=-1.0, scheduler="sync")
    with pytest.raises(dsg.InvalidParameterError, match="'init_scale' parameter of complete"):
        fit(init="random", init_scale=-1e-3, scheduler="sync")
    with pytest.warns(dsg.DataWarning, match="damping=1e-12 is small for init_scale"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dsg.ConvergenceWarning)
            fit(init="random", damping=1e-12, scheduler="sync", max_iter=2)
