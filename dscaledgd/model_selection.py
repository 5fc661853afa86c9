"""Hyper-parameter selection by held-out error: successive halving over a grid.

One generic routine, :func:`successive_halving`, that knows nothing of the
problem: it is given the candidates (a list of dicts, e.g. from :func:`grid`)
and a callable ``fit(candidate, budget, warm) -> Trial`` that runs one
candidate up to an iteration budget (continuing from ``warm``, what the same
candidate's previous call returned) and scores it on held-out data (lower is
better). :func:`dscaledgd.complete` uses it for ``rank="auto"`` and
``reg="auto"`` (:mod:`dscaledgd.api.selection`); RPCA's and tensor RPCA's
hyper-parameters plug in the same way, with their own ``fit``.

The schedule (Jamieson & Talwalkar 2016; Li et al., Hyperband, 2018): every
candidate runs ``min_budget`` iterations; the worse half (by the best held-out
score so far) is dropped; the survivors continue to twice the budget, and so
on until one remains, which then runs to ``max_budget`` (its own early
stopping may end it sooner), or until the budget reaches ``max_budget``. A
candidate whose fit has ended (early stopping, convergence) keeps its final
score and costs nothing more. With ``n`` candidates the search spends about
``n · min_budget · log2(n)`` iterations before the winner's last run, against
``n · max_budget`` for fitting every candidate to the end.

The candidates of a round run concurrently, ``n_jobs`` at a time, on a small
thread pool of the caller: each thread drives its own fit, whose tasks go to
the one executor the caller chose. The outcome does not depend on that: the
fits are independent, their trials are collected in candidate order, and ties
are broken by candidate order, so the same fits give the same table and the
same winner with any ``n_jobs`` (tested).

No dask import here.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .exceptions import InvalidParameterError

__all__ = ["Trial", "Selection", "successive_halving", "grid", "AUTO", "is_auto", "auto_names"]

logger = logging.getLogger("dscaledgd")

#: the value of a hyper-parameter that is to be chosen by held-out error
AUTO = "auto"


def is_auto(value: Any) -> bool:
    """``value`` is the string ``"auto"``."""
    return isinstance(value, str) and value == AUTO


@dataclass
class Trial:
    """What ``fit(candidate, budget, warm)`` returns for one candidate.

    Attributes
    ----------
    score : float
        The best held-out error so far (lower is better; NaN counts as +inf).
    finished : bool
        The fit has ended on its own (early stopping, convergence, a stall,
        divergence): more budget would not change it.
    warm : object
        Passed back as ``warm`` to the candidate's next call (its state).
    result : object
        What is returned when this candidate wins (its fit's result).
    n_iter : int
        Iterations the fit has run in all.
    info : dict
        Extra columns for the candidate's row of the table (JSON values).
    """

    score: float
    finished: bool
    warm: Any = None
    result: Any = None
    n_iter: int = 0
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`successive_halving`.

    Attributes
    ----------
    best : dict
        The winning candidate.
    result : object
        The winner's last ``Trial.result``.
    table : list of dict
        One row per candidate, in candidate order: its values, ``budgets``
        (the budget of each round it ran), ``scores`` (its score after each),
        ``rounds``, ``n_iter``, ``score`` (final), ``dropped_after_round``
        (``None`` for those kept to the end), ``chosen``, plus the fit's
        ``Trial.info``.
    budgets : list of int
        The budget of each round.
    max_concurrent : int
        The most fits that were running at the same time.
    """

    best: dict
    result: Any
    table: list
    budgets: list
    max_concurrent: int


def grid(**axes: Sequence) -> list[dict]:
    """The Cartesian product of the axes as candidates, the last axis varying fastest.

    >>> grid(rank=(5, 10), reg=(0.1,))
    [{'rank': 5, 'reg': 0.1}, {'rank': 10, 'reg': 0.1}]
    """
    values = {}
    for name, axis in axes.items():
        ok = isinstance(axis, Iterable) and not isinstance(axis, str | bytes | dict)
        values[name] = tuple(axis) if ok else ()
        if not values[name]:
            raise InvalidParameterError(
                f"The grid of {name!r} must be a non-empty sequence of values. Got {axis!r}."
            )
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]


def _check(candidates, min_budget, max_budget, factor, n_jobs) -> list[dict]:
    cands = list(candidates)
    if not cands or not all(isinstance(c, dict) for c in cands):
        raise InvalidParameterError(
            "successive_halving needs a non-empty list of candidates (dicts of parameter "
            f"values). Got {candidates!r}."
        )
    seen = set()
    for c in cands:
        key = repr(sorted(c.items()))
        if key in seen:
            raise InvalidParameterError(
                f"The candidates of successive_halving must be distinct; {c!r} is repeated."
            )
        seen.add(key)
    for name, value, lo in (
        ("min_budget", min_budget, 1),
        ("max_budget", max_budget, 1),
        ("factor", factor, 2),
        ("n_jobs", n_jobs, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise InvalidParameterError(
                f"The {name!r} parameter of successive_halving must be an int >= {lo}. Got "
                f"{value!r}."
            )
    return cands


def _key(trial: Trial, i: int) -> tuple:
    s = float(trial.score)
    return (s if math.isfinite(s) else math.inf, i)


def successive_halving(
    candidates: Sequence[dict],
    fit: Callable[[dict, int, Any], Trial],
    *,
    min_budget: int,
    max_budget: int,
    factor: int = 2,
    n_jobs: int = 1,
) -> Selection:
    """Choose among ``candidates`` by held-out score, dropping the worse half each round.

    Parameters
    ----------
    candidates : list of dict
        Distinct parameter sets (see :func:`grid`).
    fit : callable
        ``fit(candidate, budget, warm) -> Trial``: run ``candidate`` until it has
        done ``budget`` iterations in all (or its fit ends sooner), continuing
        from ``warm`` (``None`` on its first call, else the previous trial's
        ``warm``). Called from worker threads, up to ``n_jobs`` at a time.
    min_budget, max_budget : int
        The first round's budget and the last one's (budgets are cumulative
        iteration counts, multiplied by ``factor`` each round).
    factor : int, default 2
        Keep ``1/factor`` of the candidates each round; multiply the budget by it.
    n_jobs : int, default 1
        Fits run at the same time (a round's fits are independent).

    Returns
    -------
    Selection

    Notes
    -----
    A round ranks the remaining candidates by ``(score, position)``; the
    winner is the first of the last ranking. Deterministic for deterministic
    fits, whatever ``n_jobs``. A fit's exception is raised (the first in
    candidate order) once the round's other fits have returned.
    """
    cands = _check(candidates, min_budget, max_budget, factor, n_jobs)
    n = len(cands)
    trials: list[Trial | None] = [None] * n
    rows = [
        {**c, "budgets": [], "scores": [], "dropped_after_round": None, "chosen": False}
        for c in cands
    ]
    running, peak, lock = [0], [0], threading.Lock()

    def one(i: int, budget: int) -> Trial:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            prev = trials[i]
            out = fit(cands[i], budget, None if prev is None else prev.warm)
        finally:
            with lock:
                running[0] -= 1
        if not isinstance(out, Trial):
            raise TypeError(f"fit must return a Trial; got {type(out).__name__}")
        return out

    alive, budget, budgets = list(range(n)), min(min_budget, max_budget), []
    with ThreadPoolExecutor(max(1, min(n_jobs, n)), thread_name_prefix="dscaledgd-select") as pool:
        while True:
            todo = [i for i in alive if trials[i] is None or not trials[i].finished]
            # each fit in a copy of the caller's context (dask annotations: dashboard spans)
            futs = {i: pool.submit(contextvars.copy_context().run, one, i, budget) for i in todo}
            errors = []
            for i in todo:  # candidate order: the outcome does not depend on timing
                try:
                    trials[i] = futs[i].result()
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    errors.append(exc)
            if errors:
                raise errors[0]
            budgets.append(budget)
            for i in todo:
                rows[i]["budgets"].append(budget)
                rows[i]["scores"].append(float(trials[i].score))
            order = sorted(alive, key=lambda i: _key(trials[i], i))
            logger.info(
                "model selection round %d (budget %d): %s",
                len(budgets),
                budget,
                ", ".join(f"{cands[i]} {trials[i].score:.6g}" for i in order),
            )
            if len(alive) == 1 or budget >= max_budget:
                break
            keep = max(1, len(alive) // factor)
            for i in order[keep:]:
                rows[i]["dropped_after_round"] = len(budgets)
                trials[i] = Trial(  # its state and result are no longer needed
                    trials[i].score, True, None, None, trials[i].n_iter, trials[i].info
                )
            alive = order[:keep]
            # one left: its last fit runs to the end (its early stopping may end it sooner)
            budget = max_budget if len(alive) == 1 else min(budget * factor, max_budget)
    win = order[0]
    for i, row in enumerate(rows):
        t = trials[i]
        row.update(t.info)
        row.update(rounds=len(row["budgets"]), n_iter=int(t.n_iter), score=float(t.score))
    rows[win]["chosen"] = True
    return Selection(
        best=dict(cands[win]),
        result=trials[win].result,
        table=rows,
        budgets=budgets,
        max_concurrent=peak[0],
    )


def auto_names(**values: Any) -> tuple[str, ...]:
    """The names whose value is ``"auto"``, in the order given."""
    return tuple(name for name, v in values.items() if is_auto(v))
