"""The default rule's stagnation restore and stability-edge shrink (docs/step_rule.md).

On small, sparsely sampled completion instances η = 0.7 can settle into a cycle at
the edge of stability: the loss sits 10-15x (or only ~10%) above its best, far below
the initial loss, so the blow-up guard does not fire. The docs' first example
(300 × 200, r = 10, κ = 10, 27% observed) took 995 iterations that way.
"""

from __future__ import annotations

import dataclasses
import types
import warnings

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd.engine.completion import CompletionEngine
from dscaledgd.solvers.scaledgd import AdaptiveStep, FixedStep, Step


def _docs_first_example():
    truth = dsg.datasets.make_low_rank((300, 200), 10, cond=10, random_state=0)
    M = np.where(np.random.default_rng(0).random((300, 200)) < 0.3, truth.dense(), np.nan)
    train, _ = dsg.Observations.from_dense(M).split(test_fraction=0.1, random_state=0)
    return train, truth


def _fit(train, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        return dsg.complete(train, 10, random_state=0, progress=False, **kw)


def _without(monkeypatch, **off):
    spec = dataclasses.replace(CompletionEngine.spec, **off)
    monkeypatch.setattr(CompletionEngine, "spec", spec)


def test_the_docs_first_example_converges_fast():
    """By the stability-edge shrink: η 0.7 → 0.595, no restore."""
    train, truth = _docs_first_example()
    res = _fit(train)
    assert res.status == "converged"
    # fixed η = 0.5 needs 223 iterations here and η = 0.3 needs 377 (measured)
    assert res.n_iter <= 200, res.n_iter
    assert not [e for e in res.info["events"] if e["event"] == "restored"]
    shrunk = [e for e in res.info["events"] if e["event"] == "step_shrunk"]
    assert len(shrunk) == 1 and shrunk[0]["step_size"] == pytest.approx(0.595)
    eta = res.history["step_size"][1:]
    assert eta[0] == 0.7 and eta[-1] == pytest.approx(0.595)
    L, R = res.compute_factors()
    assert truth.relative_error(L, R) < 1e-9


def test_the_stagnation_restore_alone_also_ends_the_cycle(monkeypatch):
    _without(monkeypatch, edge_window=None)
    train, truth = _docs_first_example()
    res = _fit(train)
    assert res.status == "converged" and res.n_iter <= 260, res.n_iter
    restores = [e for e in res.info["events"] if e["event"] == "restored"]
    assert len(restores) == 1
    assert restores[0]["reason"].startswith("no new best loss for 30 iterations, the loss")
    assert 30 <= restores[0]["iteration"] <= 100


def test_without_both_the_same_run_cycles(monkeypatch):
    """The failure they remove, kept measurable: the run sits at a relative residual
    near 3e-2 (it took 995 iterations to converge)."""
    _without(monkeypatch, stagnation_patience=None, edge_window=None)
    train, _ = _docs_first_example()
    res = _fit(train, max_iter=400)
    assert res.status == "max_iter"
    assert 2e-2 < res.history["residual"][-1] < 5e-2


def _slow_at_the_edge():
    """bench_steprule.py --family small, instance 10: fixed η = 0.7 converges, slowly
    (659 passes: a contraction of 0.975 per iteration, η c = 1.97); η = 0.5: 246."""
    obs, truth = dsg.datasets.make_completion((174, 196), 7, 0.2789, cond=50.5, random_state=11010)
    return obs, truth


def test_the_edge_shrink_speeds_up_a_slow_linear_phase(monkeypatch):
    obs, truth = _slow_at_the_edge()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        res = dsg.complete(obs, 7, random_state=0, progress=False, max_iter=1000)
    assert res.status == "converged" and res.n_iter <= 200, res.n_iter
    assert res.history["step_size"][-1] == pytest.approx(0.595)
    _without(monkeypatch, edge_window=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        slow = dsg.complete(obs, 7, random_state=0, progress=False, max_iter=1000)
    assert slow.n_iter > 600 and slow.history["step_size"][-1] == 0.7


def _stats(loss):
    return types.SimpleNamespace(loss=loss, GG=[np.eye(1)])  # S = <G, G P> = 1 with P = I


def _steps(rule, edges, f=1.0, best=None, eta=None):
    """One accepted step per value of η c: each reaches the loss with that curvature.
    Returns what the rule said at each step and the last loss."""
    said = []
    for e in edges:
        step = Step(eta or rule.eta, 0.0)
        f1 = f - step.eta + e * step.eta / 2
        said.append(rule.accepted(_stats(f), _stats(f1), step, [np.eye(1)], best or f1))
        f = f1
    return said, f


def test_edge_shrink_arithmetic():
    """η c = 2 (f₊ − f + η S) / (η S) of each accepted step; 10 in a row above 1.8
    shrink η by 0.85, not below 0.5; a value below 1.8 starts the count again."""
    rule = AdaptiveStep(edge_window=10)
    rule.start(None)
    said, _ = _steps(rule, [1.97] * 9)
    assert said == [None] * 9 and rule.at_edge == 9
    ((what, why),) = _steps(rule, [1.97])[0]
    assert what == "shrunk" and "step 0.7 -> 0.595" in why
    assert rule.eta == pytest.approx(0.595) and rule.at_edge == 0
    _steps(rule, [1.97] * 20)
    assert rule.eta == 0.5  # 0.595 -> 0.506 -> 0.5, then no lower
    assert _steps(rule, [1.97] * 10)[0] == [None] * 10
    rule.start(None)
    said, _ = _steps(rule, [1.97] * 9 + [1.0] + [1.97] * 8)
    assert said == [None] * 18 and rule.at_edge == 8 and rule.eta == 0.7
    assert _steps(rule, [0.4] * 30)[0] == [None] * 30  # a healthy run's 0.3-0.5
    rule.recover()  # a restore starts the count again
    assert rule.at_edge == 0


def test_stagnation_counts_steps_above_the_best_without_a_new_best():
    rule = AdaptiveStep(patience=3)
    rule.start(None)
    P, step = [np.eye(1)], Step(0.7, 0.0)

    def see(loss, best):
        return rule.accepted(_stats(loss), _stats(loss), step, P, best)

    assert see(1.0, 1.0) is None  # a new best: its loss is the best loss
    assert see(1.5, 1.0) is None and see(1.5, 1.0) is None
    what, why = see(1.5, 1.0)  # the third in a row, 50% above the best
    assert what == "restore"
    assert why == (
        "no new best loss for 3 iterations, the loss more than 1% above the best (loss 1.5, best 1)"
    )
    assert rule.since_best == 0  # counting starts again after a restore
    # within 1% of the best is a floor, not a cycle: it never counts, and it breaks a run
    assert all(see(1.005, 1.0) is None for _ in range(10))
    assert see(2.0, 1.0) is None and see(2.0, 1.0) is None and see(1.005, 1.0) is None
    assert see(2.0, 1.0) is None and see(2.0, 1.0) is None
    assert see(2.0, 1.0)[0] == "restore"
    rule.restores = rule.max_restores  # no restore left: no request for one
    assert [see(2.0, 1.0) for _ in range(10)] == [None] * 10


@pytest.mark.parametrize("rule", [AdaptiveStep(), FixedStep(0.5)])
def test_neither_safeguard_unless_the_problem_asks(rule):
    if isinstance(rule, AdaptiveStep):
        rule.start(None)
    said, _ = _steps(rule, [1.97] * 100, best=1e-9, eta=0.7)
    assert said == [None] * 100


def test_off_with_a_ridge_and_never_at_the_last_iteration(monkeypatch):
    """With ``reg > 0`` the loss carries the penalty but the measured curvature does not,
    so both are off; and a restore at ``max_iter`` would return an older iterate."""
    from dscaledgd.api._core import choose_rule

    params = {"method": "scaledgd", "init": "spectral", "reg": 0.1}
    rule = choose_rule(params, 0.0, CompletionEngine.spec)
    assert rule.edge_window is None and rule.patience is None
    rule = choose_rule({**params, "reg": (0.0, 0.0)}, 0.0, CompletionEngine.spec)
    assert rule.edge_window == 10 and rule.patience == 30
    _without(monkeypatch, edge_window=None)
    train, _ = _docs_first_example()
    res = _fit(train, max_iter=69)  # the restore alone fires at iteration 69 otherwise
    assert res.status == "max_iter" and res.best_iteration == res.n_iter == 69
    assert not [e for e in res.info["events"] if e["event"] == "restored"]


def test_only_completion_turns_them_on():
    from dscaledgd.problems import completion, rpca, sensing, tensor_rpca, tucker

    assert completion.SPEC.stagnation_patience == 30 and completion.SPEC.edge_window == 10
    for mod in (rpca, sensing, tensor_rpca, tucker):
        assert mod.SPEC.stagnation_patience is None, mod.__name__
        assert mod.SPEC.edge_window is None, mod.__name__
