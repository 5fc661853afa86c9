"""``complete``: matrix completion with ScaledGD (and its test oracle)."""

from __future__ import annotations

import numpy as np

from .._validation import (
    Options,
    check_choice,
    check_param,
    resolve_rng,
)
from ..engine.cluster import executor_for
from ..engine.completion import CACHE_POLICIES, CompletionEngine
from ..exceptions import InvalidParameterError
from ..model_selection import auto_names
from ..result import SolveResult
from ..solvers.centering import CENTER_MODES, fit_offsets
from ..storage.observations import Observations
from ._core import (
    LOSSES,
    METHODS,
    as_observations,
    check_init,
    check_rank,
    collect_params,
    solve,
    warn_empty,
    zero_result,
)
from ._scale import check_values

__all__ = ["complete", "complete_oracle", "reference_copy"]


def complete(
    obs,
    rank: int | str,
    *,
    method: str = "scaledgd",
    loss: str = "l2",
    symmetric: bool = False,
    damping: float | None = None,
    init: str = "spectral",
    init_scale: float | None = None,
    rho: float | None = None,
    step_size: float | str | None = None,
    reg: float | tuple | str = 0.0,
    center=False,
    validation=None,
    max_iter: int = 500,
    tol: float = 1e-10,
    stall_tol: float = 1e-8,
    patience: int = 10,
    random_state=None,
    client=None,
    address: str | None = None,
    scheduler: str | None = None,
    cache: str = "auto",
    init_power_iter: int = 4,
    callback=None,
    progress: bool | None = None,
    checkpoint=None,
    checkpoint_interval: int = 10,
    resume: bool | str = False,
    _oracle: bool = False,
) -> SolveResult:
    r"""Complete a partially observed low-rank matrix with ScaledGD.

    Minimises the observed-entry loss

    .. math::

        f(L, R) = \frac{1}{2p} \| P_\Omega(L R^\top) - Y \|_F^2,
        \qquad p = |\Omega| / (n_1 n_2),

    over ``L`` (n1 × rank) and ``R`` (n2 × rank), or ``f(L) = (1/4p)‖P_Ω(L Lᵀ) − Y‖²``
    when ``symmetric=True``.

    Parameters
    ----------
    obs : Observations or str
        The observed entries, or the path of an Observations Zarr store. When
        every observed value is 0 the exact fit ``X = 0`` is returned (status
        ``"converged"``, no iteration); values whose sum of squares overflows
        float64 (about 1e154 and above) are refused: rescale them.
    rank : int or "auto"
        Target rank, ``1 <= rank <= min(n1, n2)`` (above the true rank:
        over-parameterised, with ``init="random"`` or a small spectral start
        for l1). ``"auto"``: chosen by
        validation RMSE among ``(5, 10, 20, 40)`` (those below ``min(n1, n2)``)
        by successive halving; see the Notes.
    method : {"scaledgd", "gd"}, default "scaledgd"
        ``"gd"`` is the vanilla gradient baseline with step ``η / σ̂₁``.
    loss : {"l2", "l1"}, default "l2"
        ``"l1"`` minimises ``(1/p) Σ_Ω |<L_i, R_j> − y_ij|`` with the scaled
        subgradient method (ScaledSM), robust to outliers among the entries.
    symmetric : bool, default False
        Fit the PSD model ``X = L Lᵀ`` from square observations.
    damping : float or None, default None
        ``λ ≥ 0`` of ScaledGD(λ): preconditioner ``(RᵀR + λI)⁻¹``. ``None``
        means 0 for a spectral or warm start, and for ``init="random"`` the
        smallest of the ``rank`` spectral values (``σ̂_min``, or the estimate's
        noise level when the rank is over-specified). Ignored by ``"gd"``.
    init : {"spectral", "random"} or tuple of arrays, default "spectral"
        ``"spectral"``: balanced factors from ``SVD_r(Y/p)`` (randomized, on
        the tiles). ``"random"``: ScaledGD(λ)'s small random start, factors
        with i.i.d. ``N(0, init_scale² σ̂₁ / n)`` entries. A tuple ``(L0, R0)``
        (``(L0,)`` when symmetric) of arrays of shapes ``(n1, rank)`` and
        ``(n2, rank)`` starts from those factors (warm start).
    init_scale : float, optional
        ``α``, the scale of the start's factors: for ``init="random"`` relative
        to ``√σ̂₁`` (default 1e-3; the final error has a floor that grows with
        α, ALGORITHMS.md §6, and a ``DataWarning`` is given when
        ``damping < α σ̂₁``); for ``init="spectral"`` the spectral factors
        times α (default 1), the small start of the over-parameterised l1
        method (:func:`dscaledgd.sense`, ALGORITHMS.md §4a).
    rho : float in (0, 1), optional
        ``ρ`` of the l1 geometric rule ``η_t = η ρ^t σ̂₁/ĝ`` (default 0.97,
        0.98 for ``method="gd"``; see :func:`dscaledgd.sense`).
    step_size : float, "polyak", "geometric" or None, default None
        ``None`` uses the adaptive default rule for l2 (never diverges
        silently; see :class:`~dscaledgd.solvers.scaledgd.AdaptiveStep`), a
        guarded fixed ``η = 0.5`` for a random start, and the geometric
        ScaledSM rule for l1. A float fixes ``η`` as in the papers (``0.5``
        reproduces them); for l1 it is the geometric rule's ``η``.
    reg : float, (float, float) or "auto", default 0.0
        Ridge penalty in the units of Spark ALS's ``regParam`` (ALS-WR, also
        Surprise's and implicit's per-rating convention): each row's and
        column's penalty is ``reg`` times its number of observations,
        ``Σ_Ω (y − <L_i, R_j>)²/2 + (reg/2)(Σ n_i ‖L_i‖² + Σ m_j ‖R_j‖²)``
        (divided by ``p``, as the loss is). A value tuned for Spark carries
        over (MovieLens: 0.05–0.1). The step stays the derived block-Hessian
        step ``−η W⁻¹(∇f + reg·W F) P`` with ``P = (H + reg_k I)⁻¹``, a descent
        step for the regularised objective. Also regularises the biases
        (an unweighted ridge ``reg · mean(n)`` per side, as Surprise's
        baselines). ``"auto"``: chosen by validation RMSE among
        Spark's grid ``(0.01, 0.05, 0.1, 0.2)``; see the Notes.
    center : {False, True, "mean", "biases"}, default False
        Fit a global mean (``True``/``"mean"``), or the mean and row/column
        biases (``"biases"``, alternating ridge regression with ``reg``),
        before the factors; the model is ``μ + b_i + c_j + <L_i, R_j>``.
    validation : Observations, optional
        Held-out entries (same shape). Their RMSE is computed every
        iteration (``history["validation"]``), and the run stops early (status
        ``"early_stopped"``) when it has not improved for ``patience``
        iterations, returning the best-validation factors. The history keeps
        the full curve; ``res.best_iteration`` is the returned iterate's index
        and ``res.final`` its entries.
    max_iter : int, default 500
    tol : float, default 1e-10
        Stop when the relative residual ``‖P_Ω(L Rᵀ) − Y‖ / ‖Y‖ <= tol``.
    stall_tol : float, default 1e-8
        Stop (status ``"stalled"``) when the relative change of the loss stays
        below ``stall_tol`` for ``patience`` iterations (noisy data).
    patience : int, default 10
    random_state : None, int or numpy.random.Generator
        Seeds the spectral initialisation.
    client : distributed.Client, optional
        Run on this client. Default, as for ``dask.array``: the active client,
        else dask's ``scheduler-address`` (``DASK_SCHEDULER_ADDRESS``), else a
        local thread pool.
    address : str, optional
        Connect to the scheduler at this address instead.
    scheduler : {"distributed", "threads", "sync"}, optional
        ``"threads"`` runs on a local thread pool without distributed;
        ``"distributed"`` without a client starts an embedded LocalCluster
        (closed at the end).
    cache : {"auto", "memory", "stream"}, default "auto"
        For store-backed observations: keep tiles in worker memory, or stream
        them from Zarr every pass. ``"auto"`` keeps them when they fit in
        half of the cluster's memory.
    init_power_iter : int, default 4
        Power iterations of the randomized spectral initialisation.
    callback : callable, optional
        ``callback(state: IterationState)`` after each iteration; raise
        ``StopIteration`` to stop.
    progress : bool, optional
        Show a tqdm bar; default only when stderr is a terminal.
    checkpoint : str or PathLike, optional
        A directory for checkpoints: every ``checkpoint_interval`` iterations
        (and at ``max_iter``) the iterate, the best iterate, the history and
        the solver's state are written there as one Zarr group, atomically;
        the last 3 are kept. See ``docs/checkpoints.md``.
    checkpoint_interval : int, default 10
    resume : bool or "auto", default False
        Continue from the newest intact checkpoint in ``checkpoint`` (same
        data and parameters; ``max_iter``, ``tol`` and where it runs may
        change). The resumed run reaches the answer an uninterrupted run
        would, bit for bit on the same tile grid. ``"auto"``: resume when
        there is a checkpoint, else start (requeued batch jobs). ``False``
        refuses a directory that already holds checkpoints.

    Returns
    -------
    SolveResult
        ``res.L``, ``res.R`` (dask arrays), ``res.history``, ``res.status``.

    Notes
    -----
    Update (simultaneous): ``L+ = L − η ∇_L f (RᵀR + λI)⁻¹`` and
    ``R+ = R − η ∇_R f (LᵀL + λI)⁻¹``.

    Communication per iteration: one pass over the tiles (each task returns
    its partial gradients), tree sums per row and column block, and one
    gather of ``r × r`` Grams and two scalars per block. Memory: the tiles
    (``16 · nnz`` bytes, or a sub-chunk each when streamed) plus about four
    copies of the factors, ``(n1 + n2) · rank · 8`` bytes each.

    Model selection (``rank="auto"``, ``reg="auto"``): every combination of
    the candidate values (the given value for the other parameter) is fitted
    on the training entries and scored on held-out ones: ``validation`` when
    given, else 10% of ``obs`` split off with a seed derived from
    ``random_state`` (``random_state + 1`` for an int, i.e.
    ``obs.split(0.1, random_state=random_state + 1)``, in memory; the fits
    then use the other 90%). Successive halving: every candidate runs 10 iterations, the
    worse half by best validation RMSE is dropped, the others continue from
    their exact state (each candidate's trajectory is that of one
    uninterrupted run) to twice the budget, and so on until one remains; it
    runs on to ``max_iter`` with its early stopping, and that fit is the
    result: the same as ``complete`` with the chosen values, the same
    held-out set and ``random_state``. A round's candidates run concurrently
    on the one executor (``client``/``scheduler``), each driven by a client
    thread; the choice does not depend on their timing. Cost: about
    ``n · 10 · log2(n)`` iterations for ``n`` candidates before the winner's
    run, against up to ``n · max_iter`` for fitting every candidate; memory:
    one set of factors per running candidate, the tiles are shared.
    ``res.params`` holds the chosen ``rank``/``reg`` and ``params["auto"]``
    the names that were chosen; ``res.info["model_selection"]`` the table of
    candidates (budgets, validation RMSE per round, the round each was
    dropped after) and the held-out set used. The candidates run without a
    progress bar. ``callback``, ``checkpoint`` and, with ``rank="auto"``, an
    ``init`` tuple are refused. See ``docs/api.md``.

    Examples
    --------
    >>> import dscaledgd as dsg
    >>> obs, truth = dsg.datasets.make_completion((60, 50), rank=2, p=0.5, random_state=0)
    >>> res = dsg.complete(obs, rank=2, scheduler="sync", random_state=0)
    >>> res.status
    'converged'
    """
    func = "complete"
    obs = as_observations(obs, func)
    auto = auto_names(rank=rank, reg=reg)
    if auto:  # each "auto" parameter is validated as its first candidate, then replaced
        from .selection import check_auto

        rank, reg = check_auto(func, auto, obs.shape, rank, reg, init, callback, checkpoint)
    rank = check_rank(func, rank, obs.shape, full=True)
    check_choice(func, "method", method, METHODS)
    check_choice(func, "loss", loss, LOSSES)
    init = check_init(func, init, obs.shape, rank, symmetric)
    check_choice(func, "cache", cache, CACHE_POLICIES)
    check_param(func, "center", center, [Options(CENTER_MODES)])
    if validation is not None:
        validation = as_observations(validation, func, "validation")
        if validation.shape != obs.shape:
            raise InvalidParameterError(
                f"The 'validation' parameter of complete must have the shape of the training "
                f"observations {obs.shape}. Got {validation.shape}. Split one Observations with "
                "obs.split(...)."
            )
    if symmetric and np.ndim(reg) != 0:
        raise InvalidParameterError(
            f"The 'reg' parameter of complete must be one number with symmetric=True (the PSD "
            f"model has one factor). Got {reg!r}."
        )
    if center and symmetric:
        raise InvalidParameterError(
            "The 'center' parameter of complete is not supported with symmetric=True (the PSD "
            "model has no biases). Pass center=False."
        )
    params = collect_params(func, locals(), center=center)
    if "_checkpoints" in params:  # which entries are observed, beyond their count and norm
        params["_fingerprint"] = {"counts": counts_digest(obs.row_counts, obs.col_counts)}
    if symmetric and obs.shape[0] != obs.shape[1]:
        raise InvalidParameterError(
            f"The 'symmetric' parameter of complete is True but the observations have shape "
            f"{obs.shape}; a symmetric (PSD) fit needs a square matrix. Pass symmetric=False."
        )
    if symmetric and not np.array_equal(obs.row_bounds, obs.col_bounds):
        if obs.path is not None:
            raise InvalidParameterError(
                f"symmetric=True needs observations whose row and column tiles coincide; the "
                f"store {obs.path!r} has tiles {obs.tiles} with different bounds. Rewrite it "
                "with obs.retile(square=True).to_zarr(...)."
            )
        obs = obs.retile(square=True)
    warn_empty(obs.row_counts, obs.col_counts, symmetric)
    if check_values(func, "the observed values", obs, obs.value_norm2, obs.density, obs.nnz):
        params["_ids"] = {"row": obs.row_ids, "col": obs.col_ids}
        return zero_result(obs.shape, rank, params, func, validation)
    where = {"client": client, "address": address, "scheduler": scheduler}
    if auto:
        from .selection import complete_auto

        return complete_auto(obs, validation, params, auto, where, cache=cache, oracle=_oracle)
    rng = resolve_rng(random_state)
    if _oracle:  # the test oracle: one in-memory tile, plain NumPy math, inline
        obs, where = reference_copy(obs), {"scheduler": "sync"}
    with executor_for(**where) as ex:
        engine = make_engine(obs, ex, params, validation, cache=cache, oracle=_oracle)
        try:
            return fit_on(engine, obs, rank, rng, params)
        finally:
            engine.close()


def make_engine(obs, ex, params: dict, validation=None, *, cache: str, oracle: bool = False):
    """The :class:`CompletionEngine` of a run: the tiles (and held-out tiles) placed on ``ex``."""
    engine = CompletionEngine(
        obs,
        ex,
        symmetric=params["symmetric"],
        loss=params["loss"],
        cache=cache,
        kernel="reference" if oracle else "fused",
    )
    if validation is not None:
        try:
            engine.set_validation(validation)
        except BaseException:
            engine.close()
            raise
    return engine


def fit_on(engine, obs: Observations, rank: int, rng, params: dict, desc: str = "complete"):
    """One fit on a prepared engine: the offsets of ``params["center"]`` and the row
    weights of ``params["reg"]`` are set on ``engine``, then :func:`~._core.solve`."""
    reg, center = params["reg"], params["center"]
    if center:
        mu, b, c = fit_offsets(engine, center, reg=reg)
        engine.set_offsets(mu, b, c)
        params["_offsets"] = {"mean": mu, "row_bias": b, "col_bias": c}
    if np.any(np.asarray(reg) > 0):
        engine.set_row_weights()
        params["_ridge"] = ridge_per_factor(reg, obs, params["symmetric"])
    params["_ids"] = {"row": obs.row_ids, "col": obs.col_ids}
    return solve(engine, rank, rng, params, desc=desc)


def ridge_per_factor(reg: float, obs: Observations, symmetric: bool) -> tuple:
    """``reg`` in Spark ALS's units (ALS-WR: ``λ n_i`` per row) as the loop's ``reg_k``.

    The objective is ``(1/2p) Σ_Ω (y − <L_i, R_j>)² + (reg/2p) Σ_k Σ_i n_i ‖F_k[i]‖²``,
    i.e. ``1/p`` times Spark's ``½ Σ_Ω (…)² + (λ/2) Σ n_i ‖·‖²``. The engine's row
    weights are ``w_i = n_i / mean(n)`` (mean over observed rows), so factor ``k``'s
    ridge is ``reg_k = reg · mean(n_k) / p``.
    """
    counts = [obs.row_counts + obs.col_counts] if symmetric else [obs.row_counts, obs.col_counts]
    regs = [reg] * len(counts) if np.ndim(reg) == 0 else list(reg)
    out = []
    for n, rk in zip(counts, regs):
        n = np.asarray(n, dtype=np.float64)
        out.append(float(rk) * float(n[n > 0].mean()) / obs.density)
    return tuple(out)


def counts_digest(*counts) -> str:
    """A short SHA-256 of per-row/column observation counts (a checkpoint's data fingerprint)."""
    from ..storage.checkpoints import arrays_digest

    return arrays_digest(*(np.asarray(c, dtype=np.int64) for c in counts))[:16]


def reference_copy(obs: Observations) -> Observations:
    """``obs`` as a single in-memory tile (for the NumPy oracle)."""
    r, c, v = obs.to_coo()
    return Observations.from_coo(r, c, v, shape=obs.shape, tiles=(1, 1))


def complete_oracle(obs, rank: int, **kwargs) -> SolveResult:
    """:func:`complete` on the in-memory NumPy reference (tests and benchmarks).

    Same parameters; the data pass is plain NumPy on one tile and runs inline.
    """
    return complete(obs, rank, _oracle=True, **kwargs)
