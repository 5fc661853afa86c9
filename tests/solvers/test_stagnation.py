"""The default rule's stagnation restore (docs/step_rule.md, "Stagnation restore").

On small, sparsely sampled completion instances η = 0.7 can settle into a cycle at
the edge of stability: the loss sits 10-15x (or only ~10%) above its best, far below
the initial loss, so the blow-up guard does not fire. The docs' first example
(300 × 200, r = 10, κ = 10, 27% observed) took 995 iterations that way.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd.engine.completion import CompletionEngine
from dscaledgd.solvers.scaledgd import AdaptiveStep, FixedStep


def _docs_first_example():
    truth = dsg.datasets.make_low_rank((300, 200), 10, cond=10, random_state=0)
    M = np.where(np.random.default_rng(0).random((300, 200)) < 0.3, truth.dense(), np.nan)
    train, _ = dsg.Observations.from_dense(M).split(test_fraction=0.1, random_state=0)
    return train, truth


def _fit(train, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        return dsg.complete(train, 10, random_state=0, progress=False, **kw)


def test_the_docs_first_example_converges_fast_by_a_stagnation_restore():
    train, truth = _docs_first_example()
    res = _fit(train)
    assert res.status == "converged"
    # fixed η = 0.5 needs 223 iterations here and η = 0.3 needs 377 (measured)
    assert res.n_iter <= 260, res.n_iter
    restores = [e for e in res.info["events"] if e["event"] == "restored"]
    assert len(restores) == 1
    assert restores[0]["reason"].startswith("no new best loss for 30 iterations")
    assert 30 <= restores[0]["iteration"] <= 100
    L, R = res.compute_factors()
    assert truth.relative_error(L, R) < 1e-9


def test_without_the_restore_the_same_run_cycles(monkeypatch):
    """The failure the restore removes, kept measurable: with completion's
    stagnation_patience off the run sits at a relative residual near 3e-2."""
    spec = dataclasses.replace(CompletionEngine.spec, stagnation_patience=None)
    monkeypatch.setattr(CompletionEngine, "spec", spec)
    train, _ = _docs_first_example()
    res = _fit(train, max_iter=400)
    assert res.status == "max_iter"
    assert 2e-2 < res.history["residual"][-1] < 5e-2


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


def test_only_completion_turns_it_on():
    from dscaledgd.problems import completion, rpca, sensing, tensor_rpca, tucker

    assert completion.SPEC.stagnation_patience == 30
    for mod in (rpca, sensing, tensor_rpca, tucker):
        assert mod.SPEC.stagnation_patience is None, mod.__name__
