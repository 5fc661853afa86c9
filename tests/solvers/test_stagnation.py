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
    assert restores[0]["reason"].startswith("no new best loss for 30 iterations")
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


def test_edge_shrink_arithmetic():
    """η c = 2 (f₊ − f + η S) / (η S) from the loss the last step reached; 10 in a row
    above 1.8 shrink η by 0.85, once; a value below 1.8 starts the count again."""
    rule = AdaptiveStep(edge_window=10)
    rule.start(None)
    P = [np.eye(1)]

    def stats(loss):
        return types.SimpleNamespace(loss=loss, GG=[np.eye(1)])  # S = 1

    def run(edges, f=1.0):
        """One call per value; each step reaches the loss with that η c."""
        for e in edges:
            step = rule.scale(stats(f), Step(rule.eta, 0.0), P)
            f = f - step.eta + e * step.eta / 2
        return step, f

    step, f = run([1.97] * 10)
    assert step.eta == 0.7  # the 10th value is only seen at the 11th call
    assert rule.scale(stats(f), Step(rule.eta, 0.0), P).eta == pytest.approx(0.595)
    assert rule.eta == pytest.approx(0.595) and rule.at_edge == 0
    rule.start(None)
    assert run([1.97] * 9 + [1.0] + [1.97] * 9)[0].eta == 0.7
    assert rule.at_edge == 8
    rule.recover()  # a restore forgets the last step
    assert rule.last is None and rule.at_edge == 0


def test_stagnant_counts_iterations_without_a_new_best():
    rule = AdaptiveStep(patience=3)
    rule.start(None)
    assert rule.stagnant(1.0, 1.0, True) is None
    assert rule.stagnant(1.5, 1.0, False) is None
    assert rule.stagnant(1.5, 1.0, False) is None
    reason = rule.stagnant(1.5, 1.0, False)  # the third in a row, 50% above the best
    assert reason == "no new best loss for 3 iterations; loss 1.5 > 1.01 x best 1"
    assert rule.since_best == 0  # counting starts again after a restore
    # within 1% of the best is a floor, not a cycle: never a restore
    for _ in range(10):
        assert rule.stagnant(1.005, 1.0, False) is None
    assert rule.stagnant(2.0, 1.0, False) is not None  # 13 in a row by now
    assert rule.stagnant(0.5, 1.0, True) is None and rule.since_best == 0


@pytest.mark.parametrize("rule", [AdaptiveStep(), FixedStep(0.5)])
def test_no_stagnation_restore_unless_the_problem_asks(rule):
    rule.start(None) if isinstance(rule, AdaptiveStep) else None
    assert all(rule.stagnant(10.0, 1.0, False) is None for _ in range(1000))


def test_only_completion_turns_them_on():
    from dscaledgd.problems import completion, rpca, sensing, tensor_rpca, tucker

    assert completion.SPEC.stagnation_patience == 30 and completion.SPEC.edge_window == 10
    for mod in (rpca, sensing, tensor_rpca, tucker):
        assert mod.SPEC.stagnation_patience is None, mod.__name__
        assert mod.SPEC.edge_window is None, mod.__name__
