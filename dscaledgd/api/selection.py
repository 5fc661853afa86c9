"""``complete(rank="auto", reg="auto")``: the candidates, the held-out set, one fit each.

The search itself is :func:`dscaledgd.model_selection.successive_halving`;
this module gives it what is specific to completion:

* **candidates**: the grid of the "auto" parameters (:data:`RANK_GRID`
  clipped to the valid ranks, Spark's :data:`REG_GRID`), the given value for
  the other one;
* **held-out entries**: ``validation`` when given, else 10% of the
  observations split off with a seed derived from ``random_state``;
* **one fit per candidate** (:class:`_CandidateFit`): an engine that shares
  the tiles the search placed once on the one executor (a shallow copy with
  its own offsets and row weights), and a run that stops at each round's
  budget with a snapshot in memory (:class:`_Snapshots`, the loop's checkpoint
  protocol) from which the next round continues exactly as one uninterrupted
  run would. The winner's last fit is the result.
"""

from __future__ import annotations

import copy
import numbers
import threading
import time
import warnings

import numpy as np

from .._validation import resolve_rng
from ..engine.cluster import executor_for
from ..exceptions import ConvergenceWarning, InvalidParameterError, user_stacklevel
from ..model_selection import Trial, grid, successive_halving
from .completion import fit_on, make_engine, reference_copy

__all__ = [
    "RANK_GRID", "REG_GRID", "VALIDATION_FRACTION", "check_auto", "complete_auto", "hold_out",
]  # fmt: skip

#: the ranks tried by ``rank="auto"`` (those below ``min(n1, n2)``)
RANK_GRID = (5, 10, 20, 40)
#: the ``reg`` values tried by ``reg="auto"``: Spark ALS's ``regParam`` grid (same units)
REG_GRID = (0.01, 0.05, 0.1, 0.2)
#: the fraction of the observations held out when no ``validation`` is given
VALIDATION_FRACTION = 0.1
#: the first round's iteration budget (doubled each round)
MIN_BUDGET = 10
#: the most candidate fits run at once (``None``: ``max(2, executor threads)``, at most 8)
CONCURRENT_FITS: int | None = None


def rank_grid(shape) -> tuple:
    """:data:`RANK_GRID` clipped to the valid ranks ``1 <= r < min(shape)``; for a matrix
    too small for any of them, every valid rank."""
    n = min(shape)
    return tuple(r for r in RANK_GRID if r < n) or tuple(range(1, n))


def check_auto(func, auto, shape, rank, reg, init, callback, checkpoint):
    """Refuse what ``"auto"`` cannot be combined with; ``(rank, reg)`` with each "auto"
    replaced by its first candidate (validated as the run's value would be)."""
    ranks = rank_grid(shape)
    if "rank" in auto and not ranks:
        raise InvalidParameterError(
            f"The 'rank' parameter of {func} is 'auto' but the observations of shape "
            f"{tuple(shape)} admit no rank (1 <= rank < {min(shape)})."
        )
    if "rank" in auto and isinstance(init, tuple | list):
        raise InvalidParameterError(
            f"The 'init' parameter of {func} is a tuple of factors, which fixes the rank, but "
            "rank='auto'. Pass the rank of those factors, or init='spectral'."
        )
    for name, value, why in (
        ("callback", callback, "the candidates' fits run concurrently"),
        ("checkpoint", checkpoint, "a search is not checkpointed"),
    ):
        if value is not None:
            raise InvalidParameterError(
                f"The {name!r} parameter of {func} must be None with "
                f"{' and '.join(f'{a}=' + repr('auto') for a in auto)} ({why}). Choose the "
                f"values first, then fit them with {name}=..."
            )
    return (ranks[0] if "rank" in auto else rank), (REG_GRID[0] if "reg" in auto else reg)


def _seeds(random_state) -> tuple[int, int]:
    """``(seed of every candidate's fit, seed of the held-out split)``: ``(s, s + 1)`` for
    an int ``s`` (the split the CLI's ``--validation-fraction`` makes), else two draws."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state), int(random_state) + 1
    a, b = resolve_rng(random_state).integers(2**62, size=2)
    return int(a), int(b)


def hold_out(data, validation, seed: int, why: str, what: str):
    """``(train, validation, how)``: the given ``validation``, or :data:`VALIDATION_FRACTION`
    of ``data``'s observed entries split off with ``seed`` (``why`` and ``what`` word the
    error when that leaves none on one side)."""
    if validation is not None:
        return data, validation, {"source": "validation"}
    n_held = int(round(VALIDATION_FRACTION * data.nnz))
    if n_held < 1 or n_held >= data.nnz:
        raise InvalidParameterError(
            f"{why} holds out {VALIDATION_FRACTION:g} of the {data.nnz} {what}, which leaves "
            "none to score on. Pass validation=..."
        )
    train, held = data.split(VALIDATION_FRACTION, random_state=seed)
    return train, held, {"source": "split", "fraction": VALIDATION_FRACTION, "random_state": seed}


class _Snapshots:
    """The loop's checkpoint protocol in memory: one snapshot, taken at ``max_iter``.

    ``solve`` binds the run's config, loads the snapshot to continue from (none
    on the first round) and saves one when the round's budget (its
    ``max_iter``) is reached. The metadata go through JSON, as on disk, so the
    continued run sees exactly what a resumed checkpoint gives.
    """

    path = None

    def __init__(self):
        self.solve_meta: dict = {}
        self.config = None
        self._ck = None

    def bind(self, config: dict) -> None:
        if self.config is not None and config != self.config:  # pragma: no cover - a bug
            raise RuntimeError("a candidate's run changed its configuration between rounds")
        self.config = config

    def load(self):
        return self._ck

    def due(self, n_iter: int, max_iter: int) -> bool:
        return n_iter >= max_iter

    def save(self, n_iter: int, meta: dict, arrays: dict) -> None:
        import json

        from ..storage.results import jsonable

        state = json.loads(json.dumps(jsonable(meta)))
        arrays = {k: np.array(v, dtype=np.float64, copy=True) for k, v in arrays.items()}
        self._ck = {"meta": {"n_iter": int(n_iter), "state": state}, "arrays": arrays}


class _CandidateFit:
    """``fit(candidate, budget, warm)`` of :func:`successive_halving` for completion."""

    def __init__(self, base, obs, params: dict, seed: int):
        self.base, self.obs, self.params, self.seed = base, obs, params, seed
        self.lock = threading.Lock()

    def __call__(self, cand: dict, budget: int, warm) -> Trial:
        if warm is None:
            with self.lock:  # the copy shares the placed tiles and validation tiles
                engine = copy.copy(self.base)
            params = {
                **self.params,
                "rank": int(cand["rank"]),
                "reg": cand["reg"],
                "max_iter": int(budget),
                "callback": None,
                "progress": False,
                "_checkpoints": _Snapshots(),
            }
            res = fit_on(engine, self.obs, params["rank"], resolve_rng(self.seed), params)
        else:
            engine, params = warm
            params["max_iter"] = int(budget)  # continue from the snapshot
            res = fit_on_again(engine, params)
        val = np.asarray(res.history["validation"], dtype=np.float64)
        score = float(np.nanmin(val)) if np.any(np.isfinite(val)) else float("inf")
        return Trial(
            score=score,
            finished=res.status != "max_iter",
            warm=(engine, params),
            result=res,
            n_iter=res.n_iter,
            info={"status": res.status},
        )


def fit_on_again(engine, params: dict):
    """Continue a candidate's run from its snapshot (offsets and weights are on ``engine``)."""
    from ._core import solve

    return solve(engine, params["rank"], None, params, desc="complete")


def complete_auto(obs, validation, params: dict, auto: tuple, where: dict, *, cache, oracle):
    """:func:`~.completion.complete` with ``rank``/``reg`` chosen by successive halving
    (validated parameters; ``params`` holds the first candidate of each "auto" one)."""
    t0 = time.perf_counter()
    fit_seed, split_seed = _seeds(params["random_state"])
    why = f"complete: {'/'.join(auto)}='auto'"
    obs, validation, held = hold_out(obs, validation, split_seed, why, "observations")
    held.update(nnz=int(validation.nnz), train_nnz=int(obs.nnz))
    if oracle:
        obs, validation = reference_copy(obs), reference_copy(validation)
        where = {"scheduler": "sync"}
    axes = {
        "rank": rank_grid(obs.shape) if "rank" in auto else (params["rank"],),
        "reg": REG_GRID if "reg" in auto else (params["reg"],),
    }
    cands = grid(**axes)
    max_iter = params["max_iter"]
    with executor_for(**where) as ex:
        base = make_engine(obs, ex, params, validation, cache=cache, oracle=oracle)
        try:
            n_jobs = CONCURRENT_FITS or min(8, max(2, int(ex.nthreads)))
            fit = _CandidateFit(base, obs, params, fit_seed)
            # the candidates' warnings (ConvergenceWarning at every round's budget) are
            # collected here, from every thread, and the winner's are given once at the end
            with warnings.catch_warnings(record=True) as caught, ex.span("dscaledgd-auto"):
                warnings.simplefilter("always")
                sel = successive_halving(
                    cands,
                    fit,
                    min_budget=min(MIN_BUDGET, max_iter),
                    max_budget=max_iter,
                    n_jobs=min(n_jobs, len(cands)),
                )
        finally:
            base.close()
    res = sel.result
    reissue(caught, res)
    for key in ("checkpoint", "resumed_from"):
        res.info.pop(key, None)
    table = [  # one row per candidate, in grid order
        {
            "rank": row["rank"],
            "reg": row["reg"],
            "rounds": row["rounds"],
            "budgets": row["budgets"],
            "val_rmse": row["scores"],  # the best validation RMSE after each round
            "best_val_rmse": row["score"],
            "n_iter": row["n_iter"],
            "status": row["status"],
            "dropped_after_round": row["dropped_after_round"],
            "chosen": row["chosen"],
        }
        for row in sel.table
    ]
    res.info["model_selection"] = {
        "method": "successive_halving",
        "auto": list(auto),
        "chosen": {k: sel.best[k] for k in auto},
        "grid": {k: list(v) for k, v in axes.items()},
        "validation": held,
        "budgets": sel.budgets,
        "n_jobs": min(n_jobs, len(cands)),
        "max_concurrent": sel.max_concurrent,
        "seconds": time.perf_counter() - t0,
        "table": table,
    }
    res.params.update(max_iter=max_iter, progress=params["progress"], auto=list(auto))
    return res


def reissue(caught, res, func: str = "complete", winner_only=()) -> None:
    """Give the collected warnings once each, in this thread: the winner's
    ``ConvergenceWarning`` when its last fit ended at ``max_iter`` or diverged (the
    candidates' ones at each round's budget are dropped), every other kind once, except
    messages containing one of ``winner_only`` (about one fit: the caller re-checks the
    winner's)."""
    seen = set()
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            continue
        if any(text in str(w.message) for text in winner_only):
            continue
        key = (w.category, str(w.message))
        if key not in seen:
            seen.add(key)
            warnings.warn(w.message, stacklevel=user_stacklevel())
    if res.status in ("max_iter", "diverged"):
        warnings.warn(f"{func}: {res.message}", ConvergenceWarning, stacklevel=user_stacklevel())
