"""dscaledgd.model_selection: the successive-halving schedule on scripted fits."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from dscaledgd import InvalidParameterError
from dscaledgd.model_selection import Trial, auto_names, grid, successive_halving


class Scripted:
    """``fit(candidate, budget, warm)`` over scripted score curves: ``curves[x][k]`` is the
    held-out score after ``k`` iterations; a curve ends (the fit finishes) at its last entry.
    Records every call; ``delay(x)`` seconds of sleep shuffle the completion order."""

    def __init__(self, curves, delay=None, barrier=None):
        self.curves, self.delay, self.barrier = curves, delay, barrier
        self.calls, self.lock = [], threading.Lock()

    def __call__(self, cand, budget, warm):
        x = cand["x"]
        with self.lock:
            self.calls.append((x, budget, warm))
        if self.barrier is not None and warm is None:
            self.barrier.wait()
        if self.delay is not None:
            time.sleep(self.delay(x))
        curve = self.curves[x]
        n = min(budget, len(curve) - 1)
        return Trial(
            score=min(curve[: n + 1]),
            finished=n == len(curve) - 1,
            warm=n,
            result=("fit of", x, n),
            n_iter=n,
            info={"last": curve[n]},
        )


def flat(values, length=1000):
    """Curves that reach their value at iteration 1 and stay there."""
    return {i: [9.0] + [float(v)] * length for i, v in enumerate(values)}


def test_halving_schedule_drops_the_worse_half_each_round():
    fit = Scripted(flat([5, 3, 8, 1, 7, 2, 6, 4]))
    sel = successive_halving(grid(x=range(8)), fit, min_budget=2, max_budget=100)
    assert sel.best == {"x": 3} and sel.result == ("fit of", 3, 100)
    # 8 → 4 → 2 → 1, then the winner runs to max_budget
    assert sel.budgets == [2, 4, 8, 100]
    dropped = {r["x"]: r["dropped_after_round"] for r in sel.table}
    assert dropped == {0: 1, 1: 2, 2: 1, 3: None, 4: 1, 5: 3, 6: 1, 7: 2}
    assert [r["budgets"] for r in sel.table if r["x"] == 3] == [[2, 4, 8, 100]]
    assert [r["budgets"] for r in sel.table if r["x"] == 7] == [[2, 4]]
    assert [r["chosen"] for r in sel.table] == [x == 3 for x in range(8)]
    assert sel.table[5]["scores"] == [2.0, 2.0, 2.0] and sel.table[5]["last"] == 2.0
    # every later call of a candidate continues from what its previous call returned
    for x in range(8):
        warms = [w for c, _, w in fit.calls if c == x]
        budgets = [b for c, b, _ in fit.calls if c == x]
        assert warms == [None] + [min(b, 1000) for b in budgets[:-1]]
    assert len(fit.calls) == 8 + 4 + 2 + 1


def test_finished_fits_keep_their_score_and_cost_nothing_more():
    curves = flat([5, 4, 3, 6])
    curves[1] = [9.0, 2.0, 2.5]  # early-stopped at 2 iterations with the best score
    fit = Scripted(curves)
    sel = successive_halving(grid(x=range(4)), fit, min_budget=4, max_budget=50)
    assert sel.best == {"x": 1} and sel.result == ("fit of", 1, 2)
    assert [b for c, b, _ in fit.calls if c == 1] == [4]  # never called again
    assert sel.table[1]["n_iter"] == 2 and sel.table[1]["budgets"] == [4]


def test_ties_go_to_the_first_candidate_and_max_budget_ends_the_search():
    sel = successive_halving(
        grid(x=range(4)), Scripted(flat([1, 1, 1, 1])), min_budget=3, max_budget=5
    )
    # the budget reaches max_budget with two left: no further halving
    assert sel.budgets == [3, 5] and sel.best == {"x": 0}
    assert sum(r["dropped_after_round"] is None for r in sel.table) == 2
    one = successive_halving(grid(x=[0]), Scripted(flat([1])), min_budget=10, max_budget=4)
    assert one.budgets == [4] and one.result == ("fit of", 0, 4)


def test_nan_scores_rank_last():
    sel = successive_halving(
        grid(x=range(3)), Scripted(flat([np.nan, 2, 1])), min_budget=1, max_budget=8
    )
    assert sel.best == {"x": 2} and sel.table[0]["dropped_after_round"] == 1


def test_the_outcome_does_not_depend_on_concurrency_or_completion_order():
    rng = np.random.default_rng(0)
    curves = {
        i: list(np.minimum.accumulate(rng.uniform(0.5, 2.0, 60))) + [float(rng.uniform(0.4, 1))]
        for i in range(16)
    }
    delays = rng.uniform(0, 0.004, 16)
    ref = successive_halving(grid(x=range(16)), Scripted(curves), min_budget=3, max_budget=60)
    for n_jobs in (2, 5, 16):
        sel = successive_halving(
            grid(x=range(16)),
            Scripted(curves, delay=lambda x: delays[x]),
            min_budget=3,
            max_budget=60,
            n_jobs=n_jobs,
        )
        assert sel.best == ref.best and sel.table == ref.table and sel.budgets == ref.budgets


def test_fits_of_a_round_run_at_the_same_time():
    """Each first-round fit waits at a barrier for three others: a search that ran them one
    after another would break the barrier (BrokenBarrierError after 30 s)."""
    barrier = threading.Barrier(4, timeout=30)
    fit = Scripted(flat(range(8)), barrier=barrier)
    sel = successive_halving(grid(x=range(8)), fit, min_budget=1, max_budget=10, n_jobs=4)
    assert sel.best == {"x": 0} and sel.max_concurrent == 4
    sel1 = successive_halving(grid(x=range(8)), Scripted(flat(range(8))), min_budget=1,
                              max_budget=10, n_jobs=1)  # fmt: skip
    assert sel1.max_concurrent == 1 and sel1.table == sel.table


def test_a_failing_fit_raises_after_its_round():
    def fit(cand, budget, warm):
        if cand["x"] == 2:
            raise ValueError("candidate 2 failed")
        return Trial(score=1.0, finished=False)

    with pytest.raises(ValueError, match="candidate 2 failed"):
        successive_halving(grid(x=range(4)), fit, min_budget=1, max_budget=4, n_jobs=2)
    with pytest.raises(TypeError, match="fit must return a Trial; got float"):
        successive_halving(grid(x=[1]), lambda c, b, w: 1.0, min_budget=1, max_budget=4)


@pytest.mark.parametrize(
    "cands, kw, match",
    [
        ([], {}, "needs a non-empty list of candidates"),
        ([1, 2], {}, "needs a non-empty list of candidates"),
        ([{"x": 1}, {"x": 1}], {}, r"must be distinct; \{'x': 1\} is repeated"),
        ([{"x": 1}], {"min_budget": 0}, "'min_budget' parameter of successive_halving must be"),
        ([{"x": 1}], {"max_budget": 2.5}, "'max_budget' parameter"),
        ([{"x": 1}], {"factor": 1}, "'factor' parameter of successive_halving must be an int >= 2"),
        ([{"x": 1}], {"n_jobs": 0}, "'n_jobs' parameter"),
    ],
)
def test_bad_searches_are_refused(cands, kw, match):
    kw = {"min_budget": 1, "max_budget": 4, **kw}
    with pytest.raises(InvalidParameterError, match=match):
        successive_halving(cands, Scripted({1: [1.0, 1.0]}), **kw)


def test_grid_and_auto_names():
    assert grid(rank=(5, 10), reg=(0.1, 0.2)) == [
        {"rank": 5, "reg": 0.1},
        {"rank": 5, "reg": 0.2},
        {"rank": 10, "reg": 0.1},
        {"rank": 10, "reg": 0.2},
    ]
    for bad in ((), 5, "ab"):
        with pytest.raises(
            InvalidParameterError, match="grid of .rank. must be a non-empty sequence"
        ):
            grid(rank=bad)
    assert auto_names(rank="auto", reg=0.1, alpha="auto") == ("rank", "alpha")
    assert auto_names(rank=5, reg=(0.1, 0.2)) == ()
