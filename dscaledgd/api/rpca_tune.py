"""``rpca(..., tune=True)``: the sparsifier's parameter chosen from the data.

The candidates are the sparsifier's grid (:data:`GRIDS`: ``c`` of the adaptive
rule, ``alpha`` of ``T_α``), compared by the self-supervised criterion of
ALGORITHMS.md §8, ``Σ_Ω |Y − L Rᵀ| / Σ_Ω |Y|``: a fit that has separated the
sparse part leaves ``Y − L Rᵀ = S*``, and a fit that absorbed outliers into
``L Rᵀ`` or clean entries into ``S`` leaves more. The search is
:func:`dscaledgd.model_selection.successive_halving` (the module ``reg="auto"``
uses): every candidate runs a short budget, the worse half is dropped, the
budget doubles; the winner's run to ``max_iter`` is the result, the same as
``rpca`` with the chosen value. Each round's fits restart from the spectral
init (an RPCA fit of a few hundred iterations is cheap next to a completion
search) and run one after the other where the call would run (with
``scheduler="distributed"`` and no client, each starts its own LocalCluster:
pass a ``client`` to share one).
"""

from __future__ import annotations

import warnings

import numpy as np

from ..exceptions import ConvergenceWarning, user_stacklevel
from ..model_selection import Trial, successive_halving
from ..problems.sparsify import AdaptiveThreshold, FixedFraction

__all__ = ["GRIDS", "tune_sparsifier"]

#: the values tried for each sparsifier
GRIDS = {"adaptive": ("c", (2.5, 3.0, 4.0, 5.0)), "fraction": ("alpha", (0.05, 0.1, 0.2, 0.3))}
#: the first round's iteration budget (doubled each round)
MIN_BUDGET = 10


def l1_criterion(Y, res) -> float:
    """``Σ_Ω |Y − L Rᵀ| / Σ_Ω |Y|`` over the observed (non-NaN) entries."""
    import dask.array as da

    Yd = Y if hasattr(Y, "dask") else da.from_array(np.asarray(Y, dtype=np.float64))
    L, R = res.L, res.R
    num, den = da.compute(da.nansum(da.abs(Yd - L @ R.T)), da.nansum(da.abs(Yd)))
    return float(num) / max(float(den), 1e-300)


def tune_sparsifier(rpca, Y, rank: int, kind: str, kw: dict, where: dict):
    """``rpca(Y, rank, sparsifier=<best of GRIDS[kind]>, **kw)`` and the search's table.

    ``rpca``: the public function (called once per candidate and round with
    ``tune=False``); ``where``: ``client``/``address``/``scheduler`` of the call.
    """
    name, values = GRIDS[kind]
    make = AdaptiveThreshold if kind == "adaptive" else FixedFraction
    max_iter = int(kw.pop("max_iter"))

    def fit(cand, budget, warm):
        res = rpca(Y, rank, sparsifier=make(cand[name]), max_iter=int(budget), **kw, **where)
        return Trial(
            score=l1_criterion(Y, res),
            finished=res.status != "max_iter",
            warm=None,
            result=res,
            n_iter=res.n_iter,
            info={"status": res.status},
        )

    # every candidate stops at its round's budget with a ConvergenceWarning: give the
    # winner's (if its last run did not converge) and each other warning once
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sel = successive_halving(
            [{name: v} for v in values], fit, min_budget=min(MIN_BUDGET, max_iter),
            max_budget=max_iter, n_jobs=1,
        )  # fmt: skip
    res = sel.result
    seen = set()
    for w in caught:
        key = (w.category, str(w.message))
        if not issubclass(w.category, ConvergenceWarning) and key not in seen:
            seen.add(key)
            warnings.warn(w.message, stacklevel=user_stacklevel())
    if res.status in ("max_iter", "diverged"):
        warnings.warn(f"rpca: {res.message}", ConvergenceWarning, stacklevel=user_stacklevel())
    res.info["tuning"] = {
        "criterion": "sum |Y - L R^T| / sum |Y| over the observed entries",
        "parameter": name,
        "chosen": sel.best[name],
        "budgets": sel.budgets,
        "table": [
            {name: row[name], "scores": row["scores"], "budgets": row["budgets"],
             "dropped_after_round": row["dropped_after_round"], "chosen": row["chosen"]}
            for row in sel.table
        ],
    }  # fmt: skip
    return res
