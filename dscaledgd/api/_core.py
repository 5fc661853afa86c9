"""Shared machinery of the public functions: validation helpers, the solve driver.

Every public function (``complete``, ``sense``, ``rpca``) validates its own
parameters, builds its engine and calls :func:`solve`, which initialises,
runs the one loop (:mod:`dscaledgd.solvers.loop`) and packages the result.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import warnings

import numpy as np

from .._validation import (
    CALLABLE_OR_NONE,
    NONE,
    RANDOM_STATE,
    Instance,
    Interval,
    Options,
    PairOf,
    check_choice,
    check_param,
    validate_params,
)
from ..engine.cluster import SCHEDULERS
from ..exceptions import DataWarning, InvalidParameterError, user_stacklevel
from ..model_selection import is_auto
from ..result import HISTORY_KEYS, SolveResult
from ..solvers import init as inits
from ..solvers import scaledgd as _sgd
from ..solvers.loop import LoopConfig, run
from ..solvers.reseed import CoherentReseed
from ..solvers.scaledgd import AdaptiveStep, FixedStep, Preconditioner, guarded
from ..solvers.subgradient import GeometricStep, PolyakStep
from ..storage.observations import Observations

__all__ = [
    "solve",
    "COMMON",
    "as_observations",
    "check_rank",
    "check_init",
    "warn_empty",
    "zero_result",
    "checkpoints_for",
]

METHODS = ("scaledgd", "gd")
LOSSES = ("l2", "l1")
INITS = ("spectral", "random")

_BOOL = [Instance((bool, np.bool_), "a bool")]
COMMON = {
    "max_iter": [Interval("int", 1, None)],
    "tol": [Interval("real", 0, None, "neither")],
    "stall_tol": [Interval("real", 0, None, "left")],
    "patience": [Interval("int", 1, None)],
    "damping": [NONE, Interval("real", 0, None, "left")],
    "init_scale": [NONE, Interval("real", 0, None, "neither")],
    "rho": [NONE, Interval("real", 0, 1, "neither")],
    "step_size": [NONE, Interval("real", 0, 10, "right"), Options(("polyak", "geometric"))],
    "init_power_iter": [Interval("int", 0, 100)],
    "reg": [Interval("real", 0, None, "left"), PairOf(Interval("real", 0, None, "left"))],
    "random_state": RANDOM_STATE,
    "callback": CALLABLE_OR_NONE,
    "progress": [NONE, *_BOOL],
    "symmetric": _BOOL,
    "scheduler": [NONE, Instance((str,), "a str")],
    "address": [NONE, Instance((str,), "a str")],
}


#: the run parameters every entry point passes to :func:`solve`
RUN_KEYS = (
    "rank", "method", "loss", "symmetric", "damping", "init", "init_scale", "step_size", "rho",
    "reg", "max_iter", "tol", "stall_tol", "patience", "random_state", "callback",
    "progress", "scheduler", "address", "init_power_iter",
    "checkpoint", "checkpoint_interval", "resume",
)  # fmt: skip

#: parameters that do not change the trajectory: left out of a checkpoint's config_hash
#: (a run may be resumed with a larger max_iter, on another cluster, at another interval)
NOT_HASHED = (
    "max_iter", "tol", "scheduler", "address", "progress", "callback",
    "checkpoint", "checkpoint_interval", "resume",
)  # fmt: skip


def collect_params(func: str, scope: dict, **overrides) -> dict:
    """The run parameters from an entry point's arguments (``scope``), validated.

    With ``checkpoint`` given, its directory is checked (and created) here,
    before any data is read: ``params["_checkpoints"]`` is the
    :class:`~dscaledgd.storage.checkpoints.Checkpoints`.
    """
    params = {k: scope[k] for k in RUN_KEYS if k in scope}
    params.update(overrides)
    if "reg" in params:
        refuse_auto(func, "reg", params["reg"], "a float in [0, inf) or a pair (rows, columns)")
    validate_params(func, params, COMMON)
    if params.get("scheduler") is not None:
        check_choice(func, "scheduler", params["scheduler"], SCHEDULERS)
    interval, resume = params.get("checkpoint_interval", 10), params.get("resume", False)
    ckpt = checkpoints_for(func, params.get("checkpoint"), interval, resume)
    if ckpt is not None:
        params["_checkpoints"] = ckpt
    return params


def checkpoints_for(func: str, checkpoint, interval, resume):
    """The :class:`~dscaledgd.storage.checkpoints.Checkpoints` of ``checkpoint=DIR`` (its
    directory checked and created), or ``None``; ``resume`` without a directory is refused."""
    if checkpoint is None:
        if resume not in (None, False):
            raise InvalidParameterError(
                f"The 'resume' parameter of {func} needs checkpoint=DIR (the directory to "
                f"resume from). Got resume={resume!r} without a checkpoint directory."
            )
        return None
    from ..storage.checkpoints import Checkpoints

    return Checkpoints(checkpoint, interval=interval, resume=resume, func=func)


def run_config(engine, rank, params: dict, desc: str) -> dict:
    """What decides a run's trajectory: its parameters, the rank and a data fingerprint
    (shape, ``‖data‖²`` and the observed fraction to 12 digits, and what the entry point
    adds as ``params["_fingerprint"]``). Hashed into a checkpoint's ``config_hash``."""
    from ..storage.checkpoints import arrays_digest

    out = {"method_of": desc, "rank": np.asarray(rank).tolist()}
    for k, v in params.items():
        if k in NOT_HASHED or k.startswith("_"):
            continue
        if isinstance(v, tuple) and k == "init":  # a warm start: its arrays' digest
            v = "warm-start:" + arrays_digest(*(np.asarray(a, np.float64) for a in v))[:16]
        elif not isinstance(v, int | float | str | bool | type(None) | list | tuple | dict):
            v = type(v).__name__  # a Generator: its seed was drawn once, and is stored
        out[k] = v
    out["data"] = {
        "sizes": [int(b[-1]) for b in engine.factor_bounds],
        "value_norm2": f"{float(engine.value_norm2):.12g}",
        "p": f"{float(engine.p):.12g}",
        **params.get("_fingerprint", {}),
    }
    return out


def as_observations(obs, func: str, name: str = "obs") -> Observations:
    if isinstance(obs, Observations):
        return obs
    if isinstance(obs, str | os.PathLike):
        return Observations.open_zarr(obs)
    raise InvalidParameterError(
        f"The '{name}' parameter of {func} must be an Observations or the path of an "
        f"Observations Zarr store. Got {type(obs).__name__}. Build one with "
        "Observations.from_coo or Observations.from_dense."
    )


def warn_empty(row_counts, col_counts, symmetric: bool = False):
    """The ``DataWarning`` for rows/columns without observations (their factor rows stay 0)."""
    named = [("rows", row_counts), ("columns", col_counts)]
    if symmetric:
        named = [("rows/columns", row_counts + col_counts)]
    note = "Their factor rows stay at zero, so the completed matrix is 0 there."
    warn_unobserved(named, note)


def warn_unobserved(named, note: str) -> None:
    """One ``DataWarning`` per ``(name, counts)`` with a zero count: how many, the first
    (at the user's line, however deep the call)."""
    for name, counts in named:
        empty = np.flatnonzero(np.asarray(counts) == 0)
        if len(empty):
            warnings.warn(
                f"{len(empty)} of {len(counts)} {name} have no observations (first: "
                f"{int(empty[0])}). {note}",
                DataWarning,
                stacklevel=user_stacklevel(),
            )


def zero_result(shape, rank: int, params: dict, desc: str, validation=None) -> SolveResult:
    """The exact fit ``X = 0`` of data whose observed values are all 0 (status converged).

    The iteration is skipped: the spectral start is 0, and the relative
    residual ``‖P_Ω(X) − Y‖ / ‖Y‖`` is ``0/0``. ``history`` has one entry
    (loss and residual 0; the validation RMSE of ``X = 0`` when given).
    """
    import dask.array as da

    dims = shape[:1] if params.get("symmetric") else shape
    factors = tuple(da.zeros((n, rank), chunks=(n, rank)) for n in dims)
    hist = {k: np.array([np.nan]) for k in HISTORY_KEYS}
    hist.update(loss=np.zeros(1), residual=np.zeros(1), time=np.zeros(1), passes=np.zeros(1))
    if validation is not None:
        hist["validation"] = np.array([np.sqrt(validation.value_norm2 / validation.nnz)])
    stored = {k: v for k, v in params.items() if k != "callback" and not k.startswith("_")}
    if isinstance(stored.get("init"), tuple):
        stored["init"] = "warm-start"
    if not isinstance(stored.get("random_state"), int | type(None)):
        stored["random_state"] = repr(stored["random_state"])
    return SolveResult(
        factors=factors,
        status="converged",
        n_iter=0,
        converged=True,
        message="every observed value is 0: the fit is X = 0 (no iteration needed)",
        history=hist,
        params=stored,
        info={"init_values": [0.0] * rank, "passes": 0, "events": [], "best_iteration": 0},
        offsets=params.get("_offsets", {"mean": 0.0, "row_bias": None, "col_bias": None}),
        ids=params.get("_ids", {"row": None, "col": None}),
    )


def check_rank(func: str, rank, shape, full: bool = False) -> int:
    """The search rank: ``1 <= rank < min(shape)``, or ``<= min(shape)`` with ``full``
    (the over-parameterised models of ``sense`` and ``complete``, ALGORITHMS.md §4a)."""
    n = min(shape)
    what = f"an int in [1, {n}]" if full else f"an int in [1, {n})"
    refuse_auto(func, "rank", rank, what)
    try:
        check_param(func, "rank", rank, [Interval("int", 1, n, "both" if full else "left")])
    except InvalidParameterError as exc:
        if not isinstance(rank, numbers.Integral) or isinstance(rank, bool) or rank < 1:
            raise
        why = (
            f"a rank-{n} factorisation already spans every {shape[0]} × {shape[1]} matrix, "
            "so more columns add nothing"
            if full
            else f"{func} fits a low-rank model, and its spectral initialisation needs a rank "
            f"below min(shape) = {n}"
        )
        raise InvalidParameterError(f"{exc} The search rank cannot exceed it: {why}.") from None
    return int(rank)


def refuse_auto(func: str, name: str, value, what: str) -> None:
    """The error for ``name="auto"`` where only :func:`~.completion.complete` chooses it."""
    if is_auto(value):
        raise InvalidParameterError(
            f"The {name!r} parameter of {func} must be {what}. Got 'auto': choosing {name} by "
            f"validation error ({name}='auto') is supported by complete only. Pass a value, or "
            "choose it with dscaledgd.model_selection.successive_halving."
        )


def check_init(func, init, shape, rank, symmetric):
    if isinstance(init, str):
        return check_choice(func, "init", init, INITS)
    if not isinstance(init, tuple | list):
        raise InvalidParameterError(
            f"The 'init' parameter of {func} must be one of {{{', '.join(map(repr, INITS))}}} "
            f"or a tuple of factor arrays. Got {type(init).__name__}."
        )
    dims = shape[:1] if symmetric else shape
    arrays = tuple(np.asarray(F, dtype=np.float64) for F in init)
    want = [(n, rank) for n in dims]
    got = [a.shape for a in arrays]
    if got != want or not all(np.all(np.isfinite(a)) for a in arrays):
        raise InvalidParameterError(
            f"The 'init' parameter of {func} must hold {len(want)} finite arrays of shapes "
            f"{want}. Got shapes {got}."
        )
    return arrays


def default_damping(values, fraction: float = 1.0) -> float:
    """ScaledGD(λ)'s default λ: ``fraction`` × the smallest of the ``rank`` spectral values.

    With the exact rank the smallest value is ``σ̂_min`` itself, the theory's
    choice (ALGORITHMS.md §6: λ ≈ σ_min). With an over-specified rank the
    extra values sit at the noise level of the spectral estimate, an upper
    estimate of the smallest singular value that can be resolved (1.7–3×
    σ_min on the measured instances). The problem sets ``fraction``
    (``ProblemSpec.damping_fraction``): 1 for completion, 1/2 for sensing.
    λ trades speed for the error floor, and the floor rises much faster on
    completion. Measured to 1e-4 (true rank 2, search rank 5, κ = 10,
    α = 1e-6, tests/test_scaledgd_lambda.py): completion 60×50, p = 0.5 took
    210 iterations at the full noise level and never got below 2.3e-4 at half
    of it; Gaussian sensing (m = 40n) went from 112 to 64 (asymmetric) and 89
    to 53 (PSD) at half, with floors near 1e-6. The largest-gap alternative
    picked ``σ̂₁`` on PSD sensing (σ₂ = 0.1 was below the noise, 0.22) and
    crawled; λ = σ_min/10 is ten times slower than λ = σ_min.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[v > 0]
    return fraction * float(v[-1]) if len(v) else 1.0


def init_scale(params: dict) -> float:
    """``α``, the factor scale of the start: ``init_scale``, or by default 1 for a spectral
    start (the spectral estimate itself) and 1e-3 for a random one."""
    alpha = params.get("init_scale")
    if alpha is None:
        return 1.0 if params.get("init") == "spectral" else 1e-3
    return float(alpha)


def small_start(params: dict) -> bool:
    """A start far below the data scale: random, or a spectral start with ``α < 1``."""
    return params.get("init") == "random" or (
        params.get("init") == "spectral" and init_scale(params) < 1.0
    )


def initial_state(engine, rank: int, seed: int, params: dict):
    """``(state, spectral values, data passes)`` of the requested initialisation."""
    init = params["init"]
    q = params["init_power_iter"]
    spectral_passes = engine.spec.spectral_passes(q)
    if isinstance(init, tuple):
        state = engine.from_numpy(list(init))
        L0, R0 = init[0], init[-1]
        values = np.sqrt(np.clip(np.linalg.eigvals((L0.T @ L0) @ (R0.T @ R0)).real, 0, None))
        return state, np.sort(values)[::-1], 0
    if init == "spectral":
        state, values = inits.spectral_init(engine, rank, seed=seed, n_power=q)
        alpha = init_scale(params)
        if alpha != 1.0:  # U₀ = α·B: the small spectral start (ALGORITHMS.md §4a)
            state = engine.transform(state, [alpha * np.eye(rank)] * len(state))
        return state, values, spectral_passes + 1  # + the least-squares rescaling pass
    _, values = engine.spectral(rank, seed=seed, n_power=q)
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    scale = init_scale(params) * np.sqrt(max(values[0], np.finfo(float).tiny))
    return inits.random_init(engine, rank, seed=seed + 1, scale=scale), values, spectral_passes


def uses_polyak(params: dict) -> bool:
    """Polyak steps: asked for, or the l1 loss's default when ``f_star`` is known."""
    step = params.get("step_size")
    return step == "polyak" or (
        params.get("loss") == "l1" and step is None and params.get("f_star") is not None
    )


def choose_rule(params: dict, damping: float, spec, sigma1: float = 1.0):
    """The step rule of a run (see the function docstrings for the defaults).

    ``spec`` is the problem's :class:`~dscaledgd.problems.spec.ProblemSpec`:
    its ``default_eta`` and ``default_rule``. The l1 loss takes Polyak steps
    when ``f_star`` is known, else the geometric rule (a float ``step_size``
    is its ``η``, ``rho`` its ``ρ``; ``sigma1`` the top spectral value).
    """
    step = params.get("step_size")
    loss = params.get("loss", "l2")
    f_star = params.get("f_star")
    if uses_polyak(params):  # capped by the absolute step from a small start
        cap = GeometricStep.ETA if small_start(params) else None
        return PolyakStep(f_star or 0.0, damping, sigma1, cap=cap)
    if step == "geometric" or loss == "l1":  # a float step is the geometric rule's η
        eta = step if isinstance(step, int | float) else GeometricStep.ETA
        rho = params.get("rho")
        if rho is None:
            rho = GeometricStep.RHO_GD if params["method"] == "gd" else GeometricStep.RHO
        return GeometricStep(eta, rho, damping, sigma1)
    if step is not None:
        return FixedStep(step, damping)
    if params["method"] == "gd" or params["init"] == "random":
        return guarded(min(0.5, spec.default_eta), damping)
    if spec.default_rule == "fixed":
        return FixedStep(spec.default_eta, damping)
    if spec.default_rule == "guarded":
        return guarded(spec.default_eta, damping)
    # the edge shrink and the stagnation restore watch the data loss: not with a ridge,
    # whose penalty the loss carries but the measured step curvature does not
    plain = not np.any(np.asarray(params.get("reg", 0.0)) > 0)
    return AdaptiveStep(
        eta=spec.default_eta,
        damping=damping,
        patience=spec.stagnation_patience if plain else None,
        edge_window=spec.edge_window if plain else None,
    )


def _reseed(engine, rule, params: dict):
    """The coherent-component re-seed of the default rule on unregularised completion."""
    on = (
        engine.spec.reseed_coherent
        and isinstance(rule, _sgd.AdaptiveStep)
        and rule.c0 > 0
        and not np.any(np.asarray(params["reg"]) > 0)
        and not engine.symmetric
    )
    return CoherentReseed() if on else None


def solve(
    engine, rank, rng, params: dict, desc: str, *, initial=None, make_model=None
) -> SolveResult:
    """Initialise, run the shared loop and package the result.

    ``initial(engine, seed)`` returns ``(state, values, init_passes)`` when the
    problem has its own initialisation (Tucker), else :func:`initial_state`.
    ``make_model(factors, params)`` builds the result's model from the final
    factors (dask arrays) and small parameters (default: the matrix model).
    """
    # one dashboard span per solve, the initialisation and each iteration nested in it
    with engine.ex.span(f"dscaledgd-{desc}"):
        return _solve(engine, rank, rng, params, desc, initial, make_model)


def _solve(engine, rank, rng, params, desc, initial, make_model) -> SolveResult:
    ckpt = params.get("_checkpoints")
    resumed = None
    if ckpt is not None:
        ckpt.bind(run_config(engine, rank, params, desc))
        resumed = ckpt.load()
    if resumed is not None:  # the initialisation is in the checkpoint
        from ..solvers.resume import dec

        solve_meta = resumed["meta"]["state"]["solve"]
        seed, state = int(solve_meta["seed"]), None
        values = np.asarray(dec(solve_meta["init_values"]), dtype=np.float64)
        init_passes = int(solve_meta["init_passes"])
    else:
        seed = int(rng.integers(2**62))
        with engine.ex.span("dscaledgd-init"):
            if initial is not None:
                state, values, init_passes = initial(engine, seed)
            else:
                state, values, init_passes = initial_state(engine, rank, seed, params)
    if ckpt is not None:
        from ..solvers.resume import enc

        ckpt.solve_meta = {
            "seed": seed,
            "init_values": enc([float(v) for v in np.ravel(values)]),
            "init_passes": int(init_passes),
        }
    sigma1 = float(values[0]) if len(values) and values[0] > 0 else 1.0
    method = params["method"]
    precond = Preconditioner(
        "identity" if method == "gd" else "scaled", sigma1, engine.spec.relative_ridge
    )
    damping = params["damping"]
    geometric = params.get("loss") == "l1" and not uses_polyak(params)
    if method == "gd":
        damping = 0.0  # the identity preconditioner has no λ
    elif damping is None:
        if geometric or (params.get("loss") == "l1" and small_start(params)):
            # λ₀ of the decaying damping: λ_t = λ₀ ρ^t (geometric), λ₀ × the relative gap
            # (Polyak from a small start, whose tiny Gram needs a λ)
            damping = GeometricStep.DAMPING_FRACTION * sigma1
        elif params["init"] == "random" and initial is None:
            damping = default_damping(values, engine.spec.damping_fraction)
        else:
            damping = 0.0
    alpha = init_scale(params)
    if (
        initial is None
        and params["init"] == "random"
        and method != "gd"
        and not geometric
        and damping < alpha * sigma1
    ):
        warnings.warn(
            f"{desc}: damping={damping:.3g} is small for init_scale={alpha:g} "
            f"(below init_scale·σ̂₁ = {alpha * sigma1:.3g}): the first steps "
            "from the small random start may overshoot. Raise damping, or leave it at None "
            "for the default (a fraction of the smallest of the rank spectral values).",
            DataWarning,
            stacklevel=user_stacklevel(),
        )
    rule = choose_rule(params, damping, engine.spec, sigma1)
    cfg = LoopConfig(
        tol=params["tol"],
        max_iter=params["max_iter"],
        stall_tol=params["stall_tol"],
        patience=params["patience"],
        callback=params["callback"],
        progress=params["progress"],
        reg=params.get("_ridge", params["reg"]),
        seed=seed + 2,
        guard_on=engine.spec.guard_on,
    )
    cfg = dataclasses.replace(cfg, **params.get("_loop", {}))  # the entry point's overrides
    # factor-norm reference of the guard: the initial factors for a spectral start; the
    # data scale (an upper bound of Σσ_i for balanced factors) for a given start
    norm_ref = (
        0.0
        if initial is not None or (params["init"] == "spectral" and not small_start(params))
        else float(np.sqrt(rank * engine.value_norm2 / engine.p))
    )
    params = {**params, "damping": damping}
    out = run(
        engine,
        state,
        rule,
        precond,
        cfg,
        norm_ref=norm_ref,
        desc=desc,
        reseed=_reseed(engine, rule, params),
        checkpoint=ckpt,
        resume=resumed,
    )
    factors = tuple(_finalize(engine.ex, F) for F in out.state)
    info = {
        "init_values": np.asarray(values).tolist(),
        "init_passes": init_passes,
        "passes": out.passes,
        "events": out.events,
        "best_iteration": out.best_iteration,
        "step_rule": rule.name,
        "damping": damping,
        "executor": engine.ex.kind,
        "scheduler_address": getattr(engine.ex, "address", None),
        "tiles": list(engine.grid),
        "cache": engine.cache,
    }
    if ckpt is not None:
        info["checkpoint"] = ckpt.path
        info["resumed_from"] = None if resumed is None else int(resumed["meta"]["n_iter"])
    stored = {k: v for k, v in params.items() if k not in ("callback",) and not k.startswith("_")}
    if isinstance(stored["init"], tuple):
        stored["init"] = "warm-start"
    stored["random_state"] = (
        params["random_state"]
        if isinstance(params["random_state"], int | type(None))
        else repr(params["random_state"])
    )
    if make_model is not None:
        what = {"model": make_model(factors, out.state.params)}
    else:
        what = {
            "factors": factors,
            "offsets": params.get("_offsets", {"mean": 0.0, "row_bias": None, "col_bias": None}),
            "ids": params.get("_ids", {"row": None, "col": None}),
        }
    return SolveResult(
        **what,
        status=out.status,
        n_iter=out.n_iter,
        converged=out.status in ("converged", "stalled", "early_stopped"),
        message=out.message,
        history=out.history,
        params=stored,
        info=info,
        _client=engine.ex.client if _lasting(engine.ex) else None,
    )


def _lasting(ex) -> bool:
    """The executor's client outlives this run (its futures stay valid)."""
    return ex.kind == "distributed" and not getattr(ex, "owned", False)


def _finalize(ex, F):
    """Factors at the edge: futures-backed on a lasting client, else gathered."""
    import dask.array as da

    if _lasting(ex):
        return F.to_dask()
    arr = F.gather()
    return da.from_array(arr, chunks=(tuple(int(x) for x in np.diff(F.bounds)), F.ncols))


def finalize_blocks(ex, blocks: list, grid, bounds):
    """A grid of matrix blocks as one dask array (futures-backed on a lasting client)."""
    import dask.array as da

    a, b = grid
    rb, cb = bounds
    shapes = [(int(rb[i + 1] - rb[i]), int(cb[j + 1] - cb[j])) for i in range(a) for j in range(b)]
    if _lasting(ex):
        ex.flush()
        parts = [da.from_delayed(f, shape=sh, dtype=np.float64) for f, sh in zip(blocks, shapes)]
    else:
        parts = [da.from_array(x) for x in ex.gather(list(blocks))]
    return da.block([[parts[i * b + j] for j in range(b)] for i in range(a)])
