"""tensor_rpca(tune=...): successive halving over (η, z1, decay), concurrent fits.

What is checked: on a small instance the self-supervised search ends within 2× of the
error of the best of a fine grid of 80 fixed settings at the same budget; ``"validation"`` holds out
10%, scores by the held-out mean absolute error and fits the winner on the rest;
fixed values are not searched; the round's candidates run at the same time on one
executor (a barrier) and on a real LocalCluster; bad combinations are refused.
"""

from __future__ import annotations

import itertools
import threading
import warnings

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import InvalidParameterError
from dscaledgd.api import tensor_rpca_tune as tune_mod

RANKS = (3, 3, 3)


def _noisy(seed=0, noise=0.05):
    core, U = dsg.datasets.tucker_instance((20, 18, 16), RANKS, kappa=5.0, random_state=seed)
    X = dsg.datasets.tucker_tensor(core, U)
    rng = np.random.default_rng(seed + 1)
    out = rng.random(X.shape) < 0.15
    a = 5 * np.mean(np.abs(X))
    Y = X + np.where(out, rng.uniform(-a, a, X.shape), 0.0)
    return X, Y + noise * np.std(X) * rng.standard_normal(X.shape)


def _err2(res, X) -> float:
    return float(np.linalg.norm(res.to_tensor().compute() - X) ** 2 / np.linalg.norm(X) ** 2)


@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")
def test_self_supervised_search_is_within_2x_of_a_fine_grid():
    """At a 60-iteration budget the 80 settings of the fine grid span 3.2e-15 to 3e-2
    (median 3.4e-8); the search over its 12 candidates must land within 2x of the best."""
    X, Y = _noisy(noise=0.0)
    kw = {"scheduler": "threads", "random_state": 0, "progress": False, "max_iter": 60}
    fine = []
    for eta, z1, decay in itertools.product((0.3, 0.4, 0.5, 0.6), (10, 20, 30, 40),
                                            (0.7, 0.75, 0.8, 0.855, 0.9)):  # fmt: skip
        th = {"z0": 1.5 * z1, "z1": z1, "decay": decay}
        fine.append(_err2(dsg.tensor_rpca(Y, RANKS, step_size=eta, threshold=th, **kw), X))
    res = dsg.tensor_rpca(Y, RANKS, tune="self-supervised", **kw)
    best = min(fine)
    assert _err2(res, X) <= 2 * best, (_err2(res, X), best, np.median(fine))
    assert np.median(fine) > 1e3 * best  # the grid does discriminate
    info = res.info["tuning"]
    assert info["tune"] == "self-supervised" and len(info["table"]) == 12
    assert sum(row["chosen"] for row in info["table"]) == 1
    assert info["budgets"][0] == tune_mod.MIN_BUDGET
    chosen = next(row for row in info["table"] if row["chosen"])
    assert res.params["step_size"] == chosen["step_size"]
    assert res.info["threshold"]["decay"] == chosen["decay"]


@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")
def test_validation_search_holds_out_entries_and_scores_by_their_mae():
    X, Y = _noisy(seed=3, noise=0.0)
    res = dsg.tensor_rpca(Y, RANKS, tune="validation", scheduler="threads", random_state=0,
                          progress=False)  # fmt: skip
    info = res.info["tuning"]
    assert info["validation"]["source"] == "split" and info["score"] == "validation MAE"
    v = res.history["validation"]
    assert res.info["best_iteration"] == int(np.argmin(v))
    chosen = next(row for row in info["table"] if row["chosen"])
    assert chosen["score"] == pytest.approx(float(np.min(v)))
    assert _err2(res, X) < 1e-12


@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")
def test_given_values_are_not_searched():
    _, Y = _noisy(seed=4)
    res = dsg.tensor_rpca(Y, RANKS, tune="self-supervised", step_size=0.4,
                          threshold={"decay": 0.8}, scheduler="sync", random_state=0,
                          progress=False)  # fmt: skip
    info = res.info["tuning"]
    assert info["grid"] == {"z1": [10.0, 30.0]}
    assert res.params["step_size"] == 0.4 and res.info["threshold"]["decay"] == 0.8
    with pytest.raises(InvalidParameterError, match="nothing to choose"):
        dsg.tensor_rpca(Y, RANKS, tune="self-supervised", step_size=0.4,
                        threshold=(30, 20, 0.8), scheduler="sync")  # fmt: skip


def test_candidates_run_concurrently_on_one_executor(monkeypatch):
    """Each first-round fit waits at a barrier for another one: run one after another,
    the first would break the barrier (BrokenBarrierError after 60 s)."""
    barrier = threading.Barrier(2, timeout=60)
    first_fit = tune_mod.fit_on
    executors, lock, calls = set(), threading.Lock(), [0]

    def fit_on(engine, *args, **kw):
        executors.add(id(engine.ex))
        with lock:
            calls[0] += 1
            first_two = calls[0] <= 2
        if first_two:
            barrier.wait()
        return first_fit(engine, *args, **kw)

    monkeypatch.setattr(tune_mod, "CONCURRENT_FITS", 2)
    monkeypatch.setattr(tune_mod, "fit_on", fit_on)
    _, Y = _noisy(seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        res = dsg.tensor_rpca(Y, RANKS, tune="self-supervised", scheduler="threads",
                              random_state=0, progress=False)  # fmt: skip
    assert res.info["tuning"]["max_concurrent"] == 2
    assert len(executors) == 1


@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")
def test_search_on_a_local_cluster_gives_the_threads_answer(client):
    X, Y = _noisy(seed=6, noise=0.0)
    kw = {"tune": "self-supervised", "random_state": 0, "progress": False, "max_iter": 60}
    a = dsg.tensor_rpca(Y, RANKS, scheduler="threads", **kw)
    b = dsg.tensor_rpca(Y, RANKS, client=client, **kw)
    assert b.info["tuning"]["max_concurrent"] >= 2
    assert b.info["tuning"]["chosen"] == a.info["tuning"]["chosen"]
    A, B = a.to_tensor().compute(), b.to_tensor().compute()
    assert np.linalg.norm(A - B) <= 1e-10 * np.linalg.norm(A)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"tune": "grid"}, "'tune'"),
        ({"tune": "self-supervised", "callback": lambda st: None}, "'callback'.*tune="),
    ],
)
def test_bad_tune_combinations_are_refused(kw, match):
    _, Y = _noisy()
    with pytest.raises(InvalidParameterError, match=match):
        dsg.tensor_rpca(Y, RANKS, scheduler="sync", **kw)


@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")
def test_adaptive_search_chooses_c_and_step():
    _, Y = _noisy(seed=7)
    res = dsg.tensor_rpca(Y, RANKS, sparsifier="adaptive", tune="self-supervised",
                          scheduler="threads", random_state=0, progress=False)  # fmt: skip
    info = res.info["tuning"]
    assert info["grid"] == {"step_size": [0.35, 0.5], "c": [2.5, 3.0, 4.0, 5.0]}
    assert set(info["chosen"]) == {"step_size", "z0", "z1", "c"}
    assert res.info["threshold"]["c"] == info["chosen"]["c"]
