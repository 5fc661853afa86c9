"""``tensor_rpca(..., tune=...)``: the step and the threshold schedule chosen from the data.

The search is :func:`dscaledgd.model_selection.successive_halving`, the module
``complete(rank="auto", reg="auto")`` and ``rpca(tune=True)`` use; this module
gives it what is specific to tensor RPCA:

* **candidates**: the grid :data:`GRID` over ``step_size``, ``z1`` and
  ``decay`` (``z0 = Z0_PER_Z1 · z1``, the paper's ratio), minus the values the
  call fixed;
* **the score**: ``"self-supervised"``, the smallest criterion
  ``Σ_Ω |Y − X_t| / Σ_Ω |Y|`` of the run (the authors rank by
  ``‖Y − X_T‖₁ / ‖Y‖²_F``: the same order on one data set); ``"validation"``,
  the smallest MAE on held-out entries (``validation=``, or
  :data:`VALIDATION_FRACTION` of the observed entries split off);
* **one fit per candidate**, on a shallow copy of one engine (the chunks are
  placed once) with its own schedule, stopped at each round's budget with an
  in-memory snapshot (the loop's checkpoint protocol, as for completion) from
  which the next round continues exactly as one uninterrupted run would. The
  start (the HOSVD of ``clip(Y, ±z0)``) is computed once per distinct ``z0``
  and shared. The winner's fit is the result.

The candidates of a round run concurrently, as tasks on the one executor.
"""

from __future__ import annotations

import copy
import threading
import time
import warnings

import numpy as np

from .._validation import resolve_rng
from ..engine.cluster import executor_for
from ..exceptions import InvalidParameterError
from ..model_selection import Trial, grid, successive_halving
from ..problems import tensor_rpca as trp
from .selection import VALIDATION_FRACTION, _seeds, _Snapshots, hold_out, reissue
from .tensor_rpca import fit_on, loop_params, make_engine, warn_unexplained

__all__ = ["GRID", "Z0_PER_Z1", "MIN_BUDGET", "VALIDATION_FRACTION", "tune_tensor_rpca"]

#: the values tried (``z1`` in units of the robust scale); 12 candidates
GRID = {"step_size": (0.35, 0.5), "z1": (10.0, 30.0), "decay": (0.75, 0.855, 0.92)}
#: with ``sparsifier="adaptive"``: its multiple ``c`` (the matrix RPCA's grid); 8 candidates
GRID_ADAPTIVE = {"step_size": (0.35, 0.5), "c": (2.5, 3.0, 4.0, 5.0)}
#: ``z0 = Z0_PER_Z1 · z1`` unless ``z0`` is given (the paper's 0.03 / 0.02)
Z0_PER_Z1 = 1.5
#: the first round's iteration budget (doubled each round): past the warm-up of every
#: schedule of the grid (at most 24 iterations, z1 = 30 and decay 0.855), so the candidates
#: are compared once their thresholds act
MIN_BUDGET = 30
#: the most candidate fits run at once (``None``: ``max(2, executor threads)``, at most 8)
CONCURRENT_FITS: int | None = None


def _axes(params: dict) -> dict:
    """The searched axes: :data:`GRID` minus what the call fixed."""
    given = params["_given"]
    th = given["threshold"]
    fixed = set()
    if isinstance(th, dict):
        fixed = set(th)
    elif th is not None:
        fixed = {"z0", "z1", "decay"}
    grid = GRID_ADAPTIVE if params["sparsifier"] == "adaptive" else GRID
    axes = {}
    if not given["step_size"]:
        axes["step_size"] = grid["step_size"]
    for name in grid:
        if name != "step_size" and name not in fixed:
            axes[name] = grid[name]
    return axes


class _CandidateFit:
    """``fit(candidate, budget, warm)`` of :func:`successive_halving` for tensor RPCA."""

    def __init__(self, base, T, ranks, init, params: dict, seed: int, score_by: str):
        self.base, self.T, self.ranks, self.init = base, T, ranks, init
        self.params, self.seed, self.score_by = params, seed, score_by
        self.lock = threading.Lock()
        self.starts: dict = {}  # z0 -> (lock, [start])
        self.z0_given = isinstance(params["_given"]["threshold"], dict | tuple | list) and (
            not isinstance(params["_given"]["threshold"], dict)
            or "z0" in params["_given"]["threshold"]
        )

    def _start(self, z0: float):
        """The HOSVD of ``clip(Y, ±z0)`` as a warm start, computed once per ``z0``."""
        if isinstance(self.init, tuple):
            return self.init
        with self.lock:
            lock, box = self.starts.setdefault(z0, (threading.Lock(), []))
        with lock:
            if not box:
                th = self.params["threshold"]
                factors, core = self.base.clipped_init(
                    self.ranks, z0 * th["scale"], seed=self.seed,
                    n_power=self.params["init_power_iter"], sweeps=self.params["init_sweeps"],
                )  # fmt: skip
                box.append((np.asarray(core), [np.asarray(U.gather()) for U in factors]))
            return box[0]

    def __call__(self, cand: dict, budget: int, warm) -> Trial:
        if warm is None:
            with self.lock:  # the copy shares the placed chunks (and held-out chunks)
                engine = copy.copy(self.base)
                engine.zetas = {}  # its own fit-following thresholds
            th = dict(self.params["threshold"])
            th.update({k: float(cand[k]) for k in ("z1", "decay", "c") if k in cand})
            if not self.z0_given:
                th["z0"] = Z0_PER_Z1 * th["z1"]
            params = {
                **self.params,
                "step_size": cand.get("step_size", self.params["step_size"]),
                "threshold": th,
                "_loop": loop_params({**self.params, "threshold": th}, engine._vchunks is not None),
                "max_iter": int(budget),
                "callback": None,
                "progress": False,
                "_checkpoints": _Snapshots(),
            }
            init = self._start(th["z0"])
            res = fit_on(engine, self.T, self.ranks, init, params, resolve_rng(self.seed))
        else:
            engine, params, init = warm
            params["max_iter"] = int(budget)  # continue from the snapshot
            res = fit_on(engine, self.T, self.ranks, init, params, None)
        values = np.asarray(res.history[self.score_by], dtype=np.float64)
        score = float(np.nanmin(values)) if np.any(np.isfinite(values)) else float("inf")
        th = params["threshold"]
        return Trial(
            score=score,
            finished=res.status != "max_iter",
            warm=(engine, params, init),
            result=res,
            n_iter=res.n_iter,
            info={"status": res.status, "z0": th["z0"]},
        )


def tune_tensor_rpca(T, ranks, init, validation, params: dict, tune: str, where: dict, *,
                     cache: str):  # fmt: skip
    """:func:`~.tensor_rpca.tensor_rpca` with the values :func:`_axes` leaves open chosen
    by successive halving (``params`` validated, with the call's fixed values)."""
    func = "tensor_rpca"
    for name in ("callback", "checkpoint"):
        if params.get(name) is not None:
            raise InvalidParameterError(
                f"The {name!r} parameter of {func} must be None with tune={tune!r} (the "
                "candidates' fits run concurrently and are not checkpointed). Choose the "
                f"values first, then fit them with {name}=..."
            )
    t0 = time.perf_counter()
    fit_seed, split_seed = _seeds(params["random_state"])
    held = None
    if tune == "validation" or validation is not None:
        why = f"{func}: tune='validation'"
        T, validation, held = hold_out(T, validation, split_seed, why, "observed entries")
    axes = _axes(params)
    if not axes:
        raise InvalidParameterError(
            f"The 'tune' parameter of {func} has nothing to choose: step_size and every "
            "threshold value are given. Pass tune=None, or leave some of them unset."
        )
    cands = grid(**axes)
    score_by = "validation" if tune == "validation" else "l1"
    max_iter = params["max_iter"]
    with executor_for(**where) as ex:
        base = make_engine(T, ex, params, cache)
        try:
            if validation is not None:
                base.set_validation(validation)
            n_jobs = min(CONCURRENT_FITS or min(8, max(2, int(ex.nthreads))), len(cands))
            fit = _CandidateFit(base, T, ranks, init, params, fit_seed, score_by)
            with warnings.catch_warnings(record=True) as caught, ex.span("dscaledgd-tune"):
                warnings.simplefilter("always")
                sel = successive_halving(
                    cands, fit, min_budget=min(MIN_BUDGET, max_iter), max_budget=max_iter,
                    n_jobs=n_jobs,
                )  # fmt: skip
        finally:
            base.close()
    res = sel.result
    adaptive = params["sparsifier"] == "adaptive"
    reissue(caught, res, func, winner_only=("unexplained",))
    warn_unexplained(res, ranks, func)
    th = res.info["threshold"]
    res.info["tuning"] = {
        "method": "successive_halving",
        "tune": tune,
        "score": "criterion |Y - X|_1/|Y|_1" if score_by == "l1" else "validation MAE",
        "chosen": {
            "step_size": res.params["step_size"] or trp.ETA,
            **{k: th[k] for k in ("z0", "z1", "c" if adaptive else "decay")},
        },  # fmt: skip
        "grid": {k: list(v) for k, v in axes.items()},
        "validation": held,
        "budgets": sel.budgets,
        "n_jobs": n_jobs,
        "max_concurrent": sel.max_concurrent,
        "starts": len(fit.starts) if not isinstance(init, tuple) else 0,
        "seconds": time.perf_counter() - t0,
        "table": [
            {
                **{k: row[k] for k in axes},
                "z0": row["z0"],
                "budgets": row["budgets"],
                "scores": row["scores"],
                "score": row["score"],
                "n_iter": row["n_iter"],
                "status": row["status"],
                "dropped_after_round": row["dropped_after_round"],
                "chosen": row["chosen"],
            }
            for row in sel.table
        ],  # fmt: skip
    }
    for key in ("checkpoint", "resumed_from"):
        res.info.pop(key, None)
    res.params.update(max_iter=max_iter, progress=params["progress"], tune=tune)
    return res
