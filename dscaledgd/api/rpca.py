"""``rpca``: robust PCA ``Y = L Rᵀ + S`` with ScaledGD on dense chunks."""

from __future__ import annotations

import dataclasses
import math

import dask.array as da
import numpy as np

from .._validation import Instance, Interval, check_choice, check_param, resolve_rng
from ..engine.cluster import executor_for
from ..engine.rpca import RPCAEngine
from ..exceptions import InputDataError, InvalidParameterError
from ..problems.sparsify import SPARSIFIERS, Sparsifier, get_sparsifier
from ..result import SolveResult
from ..storage.coo import as_real_matrix, check_mask_dtype
from ._core import (
    METHODS,
    check_init,
    check_rank,
    collect_params,
    finalize_blocks,
    solve,
    warn_empty,
    zero_result,
)
from ._scale import check_values

__all__ = ["rpca"]


def rpca(
    Y,
    rank: int,
    *,
    sparsifier: str | Sparsifier = "auto",
    alpha: float | None = None,
    mask=None,
    method: str = "scaledgd",
    damping: float | None = None,
    init="spectral",
    step_size=None,
    grid=None,
    max_iter: int = 500,
    tol: float = 1e-10,
    stall_tol: float = 1e-8,
    patience: int = 10,
    init_power_iter: int = 4,
    random_state=None,
    client=None,
    address: str | None = None,
    scheduler: str | None = None,
    callback=None,
    progress: bool | None = None,
    checkpoint=None,
    checkpoint_interval: int = 10,
    resume: bool | str = False,
    tune: bool = False,
) -> SolveResult:
    r"""Robust PCA: split ``Y`` into a low-rank ``L Rᵀ`` and a sparse ``S``.

    ScaledGD on (ALGORITHMS.md §5)

    .. math::

        f(L, R) = \frac{1}{2p} \|P_\Omega(L R^\top + S - Y)\|_F^2,
        \qquad S = \mathcal S(Y - L R^\top),

    where the sparsifier ``𝒮`` keeps an entry of the residual when it is large
    for its row and for its column: by default (``"adaptive"``) when it
    exceeds ``3`` robust standard deviations ``median|Z_line| / 0.6745`` of
    both, so the threshold follows the fit; with ``"fraction"``, the papers'
    ``T_{2α}``, when it is among the ``⌊2α n1⌋`` largest magnitudes of its
    column and the ``⌊2α n2⌋`` largest of its row.

    Parameters
    ----------
    Y : array-like, shape (n1, n2)
        NumPy or Dask array; NaN marks a missing entry (partially observed
        RPCA: ``k`` then counts the observed entries of each row/column).
    rank : int
    sparsifier : {"auto", "adaptive", "fraction"} or Sparsifier, default "auto"
        How ``S`` is taken out of the residual
        (:mod:`dscaledgd.problems.sparsify`). ``"adaptive"``: the
        ``c``-sigma rule above, ``c = 3``; needs no outlier fraction (pass
        ``AdaptiveThreshold(c)`` for another ``c``). ``"fraction"``: ``T_α``
        (ALGORITHMS.md §5), which needs ``alpha``. ``"auto"``: ``"fraction"``
        when ``alpha`` is given, else ``"adaptive"``. Measured on the README's
        200 × 150, rank-3, κ = 10 matrix with 5% (10%) outliers ``10·N(0, 1)``
        at random positions, 20 seeds each: ``"adaptive"`` recovers 20 (20)
        of 20 to ≤ 1e-6 in a median of 34 (38) iterations, ``alpha=0.1``
        10 (0); on the papers' n = 1000, r = 10, ``S* = T_0.1(randn)``
        instance it needs 64 iterations to 1e-14 where ``T_α`` needs 210, at
        about 1.35× the cost per iteration (benchmarks/bench_rpca.py).
        **Known limit:** an outlier that the initialisation misses and that
        is larger than ``σ_r`` can take the place of the weakest singular
        direction in ``L Rᵀ``, and neither rule recovers from it: with
        κ = 100, r = 10 on 200 × 150 (5% outliers) ``"adaptive"`` recovered 1
        of 10 seeds, ``alpha=0.1`` 0, convex PCP 10.
    alpha : float in (0, 1), optional
        For ``sparsifier="fraction"`` only: upper bound on the fraction of
        corrupted entries per row and column
        (of the *observed* entries of that line when ``Y`` has missing
        values). ``T_α`` keeps at most ``⌊α·count⌋`` entries per line, so an
        ``alpha`` below the true per-line fraction leaves outliers in the
        initialisation; when only an average rate is known, pass a safe bound
        (about 1.5× it, as in Yi et al. 2016). Measured on 150 × 150 with 20%
        missing and outliers planted at rate 0.05 before masking: ``alpha=0.05``
        stalls near residual 1e-2, ``alpha=0.075`` converges in 135 iterations.
    mask : array-like of bool, optional
        ``True`` where observed (alternative to NaN); a boolean dtype, as in
        :meth:`~dscaledgd.Observations.from_dense` (an integer 0/1 mask is
        refused: pass ``mask.astype(bool)``). Infinite entries are
        refused (``InputDataError``; for Dask input, checked block by block
        before the first iteration). A row or column with no observed entry
        gives a ``DataWarning``, as in :func:`dscaledgd.complete`; when every
        observed entry is 0 the exact fit ``L Rᵀ = 0, S = 0`` is returned
        (status ``"converged"``).
    method, damping, init, step_size, max_iter, tol, stall_tol, patience,
    init_power_iter, random_state, client, address, scheduler, callback, progress,
    checkpoint, checkpoint_interval, resume
        As in :func:`dscaledgd.complete`. Initialisation: ``S₀ = 𝒮(Y)``
        (``T_α(Y)`` for ``"fraction"``), then ``SVD_r(Y − S₀)`` (randomized,
        on the blocks). The default step
        is the papers' ``η = 0.5`` with the adaptive damping and guard.
    grid : (a, b), optional
        Row and column blocks; default: the Dask chunks, else row stripes.
    tune : bool, default False
        Choose the sparsifier's parameter from the data (``c`` in
        ``(2.5, 3, 4, 5)`` for ``"adaptive"``, ``alpha`` in
        ``(0.05, 0.1, 0.2, 0.3)`` for ``"fraction"``; leave ``alpha`` out) by
        successive halving (:mod:`dscaledgd.model_selection`) on the
        self-supervised criterion of ALGORITHMS.md §8, ``Σ_Ω |Y − L Rᵀ| / Σ_Ω
        |Y|``: the result is ``rpca`` with the chosen value, and
        ``res.info["tuning"]`` the candidates' scores per round.

    Returns
    -------
    SolveResult
        ``res.L``, ``res.R`` and ``res.S`` (dask arrays; ``res.S`` is
        ``𝒮(Y − L Rᵀ)`` at the returned factors); ``res.model`` is a
        :class:`~dscaledgd.models.RobustLowRank`.

    Notes
    -----
    Per iteration: two sweeps over the blocks (top-``k`` candidates, then the
    sparsified residual and partial gradients), candidate merges per row and
    column block, and one gather of ``r × r`` Grams. The candidates are the
    ``k`` largest magnitudes of each line of a block, at most the block itself:
    ``k = ⌊2α n⌋`` for ``T_α``, ``⌈n/2⌉`` (the median) for ``"adaptive"``. Memory: the blocks of
    ``Y`` on the workers plus one block of temporaries per task.

    Examples
    --------
    >>> import numpy as np, dscaledgd as dsg
    >>> t = dsg.datasets.make_low_rank((60, 50), 2, random_state=0)
    >>> Y = t.dense() * 10
    >>> Y[3, 4] += 50.0
    >>> res = dsg.rpca(Y, 2, scheduler="sync", random_state=0)
    >>> float(np.round(res.S.compute()[3, 4], 3))
    50.0
    >>> res = dsg.rpca(Y, 2, alpha=0.05, scheduler="sync", random_state=0)  # T_α
    >>> float(np.round(res.S.compute()[3, 4], 3))
    50.0
    """
    func = "rpca"
    if tune:
        return _tuned(locals())
    sp = _check_sparsifier(func, sparsifier, alpha)
    if not hasattr(Y, "shape") or len(Y.shape) != 2:
        raise InputDataError(
            f"rpca needs a 2-D matrix Y; got {type(Y).__name__} with shape "
            f"{getattr(Y, 'shape', None)}."
        )
    if hasattr(Y, "chunks") and any(math.isnan(c) for cs in Y.chunks for c in cs):
        raise InputDataError(
            f"Y is a Dask array with unknown chunk sizes (shape {Y.shape}), as after boolean "
            "indexing. Call Y.compute_chunk_sizes() first (or Y.rechunk to known chunks)."
        )
    if hasattr(Y, "dask"):
        if np.dtype(Y.dtype).kind not in "biuf":
            raise InputDataError(
                f"The 'Y' parameter of rpca must hold real numbers; got a Dask array of dtype "
                f"{Y.dtype}. Pass real numbers, with NaN marking missing entries."
            )
    else:
        Y = as_real_matrix(Y, func, "Y", table=False)
    if mask is not None:
        mask = np.asarray(mask)
        check_mask_dtype(mask, func)
        if mask.shape != tuple(Y.shape):
            raise InputDataError(f"The mask has shape {mask.shape} but Y has shape {Y.shape}.")
        Y = np.where(mask, np.asarray(Y, dtype=np.float64), np.nan)
    if not hasattr(Y, "dask"):
        Y = np.asarray(Y, dtype=np.float64)
        if np.isinf(Y).any():
            i, j = np.argwhere(np.isinf(Y))[0]
            raise InputDataError(f"Y[{i}, {j}] is infinite; mark it missing (NaN) or fix it.")
    shape = tuple(int(s) for s in Y.shape)
    rank = check_rank(func, rank, shape)
    check_choice(func, "method", method, METHODS)
    init = check_init(func, init, shape, rank, False)
    params = collect_params(
        func,
        locals(),
        loss="l2",
        symmetric=False,
        init_scale=None,
        reg=0.0,
        alpha=getattr(sp, "alpha", None),
        sparsifier=sp.name,
        sparsifier_params=sp.params(),
    )
    if grid is not None and (len(grid) != 2 or not all(1 <= g <= s for g, s in zip(grid, shape))):
        raise InvalidParameterError(
            f"The 'grid' parameter of rpca must be (a, b) with 1 <= a <= {shape[0]} and "
            f"1 <= b <= {shape[1]}. Got {grid!r}."
        )
    rng = resolve_rng(random_state)
    with executor_for(client, address=address, scheduler=scheduler) as ex:
        engine = RPCAEngine(Y, ex, sparsifier=sp, grid=grid)
        try:
            warn_empty(engine.row_counts, engine.col_counts)
            what, nnz = "the observed entries of Y", int(np.sum(engine.row_counts))
            if check_values(func, what, Y, engine.value_norm2, engine.p, nnz):
                # every observed entry is exactly 0: L Rᵀ = 0 and S = 0
                res = zero_result(shape, rank, params, func)
                S = da.zeros(shape, chunks=Y.chunks if hasattr(Y, "chunks") else shape)
                return dataclasses.replace(res, model=res.model.with_sparse(S))
            res = solve(engine, rank, rng, params, desc=func)
            state = engine.from_numpy(list(res.compute_factors()))
            blocks = engine.sparse_blocks(state)
            S = finalize_blocks(ex, blocks, engine.grid, engine.factor_bounds)
            return dataclasses.replace(res, model=res.model.with_sparse(S))
        finally:
            engine.close()


def _tuned(args: dict) -> SolveResult:
    """``rpca(..., tune=True)``: the sparsifier's parameter chosen by successive halving on
    the self-supervised l1 criterion (:mod:`.rpca_tune`)."""
    func = "rpca"
    check_param(func, "tune", args["tune"], [Instance((bool, np.bool_), "a bool")])
    kind = args["sparsifier"]
    if kind == "auto":
        kind = "adaptive" if args["alpha"] is None else "fraction"
    if kind not in ("adaptive", "fraction") or args["alpha"] is not None:
        raise InvalidParameterError(
            f"The 'tune' parameter of {func} chooses the sparsifier's parameter (c of "
            "'adaptive', alpha of 'fraction') from the data: pass sparsifier='adaptive' or "
            f"'fraction' without alpha. Got sparsifier={args['sparsifier']!r}, "
            f"alpha={args['alpha']!r}."
        )
    for name in ("callback", "checkpoint"):
        if args[name] is not None:
            raise InvalidParameterError(
                f"The {name!r} parameter of {func} must be None with tune=True (the "
                f"candidates are fitted in turn). Tune first, then fit with {name}=..."
            )
    from .rpca_tune import tune_sparsifier

    where = {k: args[k] for k in ("client", "address", "scheduler")}
    skip = ("Y", "rank", "sparsifier", "alpha", "tune", "func", *where)
    kw = {k: v for k, v in args.items() if k not in skip}
    return tune_sparsifier(rpca, args["Y"], args["rank"], kind, kw, where)


def _check_sparsifier(func: str, sparsifier, alpha) -> Sparsifier:
    """Resolve ``sparsifier`` (``"auto"``: ``"fraction"`` iff ``alpha`` is given) and ``alpha``."""
    if alpha is not None:
        check_param(func, "alpha", alpha, [Interval("real", 0, 1, "neither")])
    if isinstance(sparsifier, Sparsifier):
        if alpha is not None:
            raise InvalidParameterError(
                f"The 'alpha' parameter of {func} is the budget of sparsifier='fraction'; "
                f"with sparsifier={sparsifier!r} drop alpha (FixedFraction(alpha) holds its own)."
            )
        return sparsifier
    if not isinstance(sparsifier, str) or sparsifier not in ("auto", *SPARSIFIERS):
        raise InvalidParameterError(
            f"The 'sparsifier' parameter of {func} must be one of "
            "{'auto', 'adaptive', 'fraction'} or a dscaledgd.problems.sparsify.Sparsifier. "
            f"Got {sparsifier!r}."
        )
    if sparsifier == "auto":
        sparsifier = "adaptive" if alpha is None else "fraction"
    if sparsifier == "fraction" and alpha is None:
        raise InvalidParameterError(
            f"sparsifier='fraction' (T_α) of {func} needs alpha, a bound on the outlier "
            "fraction of every row and column (e.g. alpha=0.1); or use sparsifier='adaptive', "
            "which needs none."
        )
    if sparsifier == "adaptive" and alpha is not None:
        raise InvalidParameterError(
            f"The 'alpha' parameter of {func} is the budget of sparsifier='fraction'; "
            "sparsifier='adaptive' does not use it. Drop alpha, or pass sparsifier='fraction'."
        )
    return get_sparsifier(sparsifier, alpha)
