"""``sense``: matrix sensing (linear or quadratic), l2 or robust l1, on Dask."""

from __future__ import annotations

import math

import numpy as np

from .._validation import NONE, Interval, check_choice, check_param, resolve_rng
from ..engine.cluster import executor_for
from ..engine.sensing import SensingEngine
from ..exceptions import InputDataError, InvalidParameterError
from ..problems.sensing import as_operator, l1_error_estimate
from ..result import SolveResult
from ..storage.coo import as_real_matrix
from ._core import (
    COMMON,
    LOSSES,
    METHODS,
    check_init,
    check_rank,
    collect_params,
    solve,
    zero_result,
)
from ._scale import check_values

__all__ = ["sense"]

#: ``|y_k| <= MEDIAN_RULE[kind] · median|y|`` keeps a measurement in the robust
#: spectral initialisation when the outlier fraction is unknown. Each drops about
#: 5% of clean measurements: linear ``y`` is Gaussian (3 × median = 2σ); a
#: quadratic ``y = ‖aᵀL‖²`` is a χ² with up to one degree of freedom at large κ,
#: whose largest values carry the top direction (3 × median dropped 24% of
#: them and the init collapsed at κ = 20; 10 × median drops 3%).
MEDIAN_RULE = {"linear": 3.0, "quadratic": 10.0}


def _truncation(y: np.ndarray, loss: str, outlier_fraction, kind: str) -> np.ndarray | None:
    """Measurements kept by the spectral initialisation (ALGORITHMS.md §4)."""
    a = np.abs(y)
    if outlier_fraction is not None:
        keep_n = math.ceil(len(y) * (1 - outlier_fraction))
        keep = np.zeros(len(y), dtype=bool)
        keep[np.argsort(a, kind="stable")[:keep_n]] = True
        return keep
    if loss == "l1":
        return a <= MEDIAN_RULE[kind] * np.median(a)
    return None


def sense(
    y,
    operator,
    rank: int,
    *,
    loss: str = "l2",
    symmetric: bool = False,
    step=None,
    f_star: float | None = None,
    outlier_fraction: float | None = None,
    method: str = "scaledgd",
    damping: float | None = None,
    init="spectral",
    init_scale: float | None = None,
    rho: float | None = None,
    shape=None,
    max_iter: int = 500,
    tol: float = 1e-10,
    stall_tol: float = 1e-8,
    patience: int = 10,
    random_state=None,
    client=None,
    address: str | None = None,
    scheduler: str | None = None,
    cache: str = "auto",
    callback=None,
    progress: bool | None = None,
    checkpoint=None,
    checkpoint_interval: int = 10,
    resume: bool | str = False,
) -> SolveResult:
    r"""Recover a low-rank matrix from linear or quadratic measurements.

    Minimises, over ``X = L Rᵀ`` (or ``L Lᵀ`` when ``symmetric``),

    .. math::

        f = \tfrac12 \|\mathcal A(X) - y\|_2^2 \quad (\text{l2, ScaledGD}) \qquad
        f = \|\mathcal A(X) - y\|_1 \quad (\text{l1, ScaledSM})

    (``¼‖·‖²`` for a symmetric l2 fit).

    Parameters
    ----------
    y : array-like, shape (m,)
        The measurements.
    operator : GaussianSensing, QuadraticSensing or array
        The sensing operator; an ``(m, n1·n2)`` NumPy/Dask/Zarr array is
        wrapped (pass ``shape``). :class:`~dscaledgd.QuadraticSensing`
        measures a PSD model and needs ``symmetric=True``.
    rank : int
        Search rank, ``1 <= rank <= min(n1, n2)``. It may exceed the true
        rank (over-parameterisation): with ``loss="l1"`` from a small spectral
        start (``init_scale``), or with ``init="random"`` (ScaledGD(λ)).
    loss : {"l2", "l1"}, default "l2"
        ``"l1"`` is robust to outliers in ``y``.
    symmetric : bool, default False
        PSD model ``X = L Lᵀ`` (square operator).
    step : None, "polyak", "geometric" or float
        ``None``: the adaptive ScaledGD rule for l2; for l1, Polyak steps
        ``η = (f − f*)/‖G‖*²`` when ``f_star`` is given, else geometric steps
        ``η_t = η ρ^t σ̂₁/ĝ`` with ``η = 0.5`` (ALGORITHMS.md §4a; ``ĝ`` the
        subgradient's gain ``‖G₀‖/‖F₀‖`` at the start, so ``η`` is scale-free).
        A float is that ``η`` for l1 and a fixed step for l2.
    f_star : float, optional
        The optimal value of the l1 loss (the l1 norm of the corruption); it
        cannot exceed the loss at the start. From a small start
        (``init_scale < 1`` or ``init="random"``) the Polyak step is capped by
        the geometric rule's first step ``0.5 σ̂₁/ĝ`` and the damping decays
        with the relative gap ``(f − f*)/(f₀ − f*)``.
    outlier_fraction : float in [0, 0.5), optional
        Known fraction of corrupted measurements: the spectral initialisation
        keeps the ``⌈m(1 − p)⌉`` smallest ``|y_k|``. Without it, l1 uses the
        median rule ``|y_k| ≤ 3 · median|y|``.
    method : {"scaledgd", "gd"}
        ``"gd"`` is the unpreconditioned baseline (GD for l2; for l1 the plain
        subgradient method ``U − η ρ^t G/ĝ``), with step ``η/σ̂₁``.
    damping : float or None
        ``λ`` of ScaledGD(λ)'s preconditioner ``(FᵀF + λI)⁻¹``. For the l1
        geometric rule it is ``λ₀`` of the decaying damping ``λ_t = λ₀ ρ^t``,
        by default ``0.3 σ̂₁``: the decay is what lets an over-parameterised
        rank reach the exact-rank accuracy (a fixed λ leaves an error floor of
        about ``0.02 λ/σ̂₁``). Otherwise ``None`` means 0, or for
        ``init="random"`` half the smallest of the ``rank`` spectral values
        (``σ̂_min``, or the estimate's noise level when the rank is
        over-specified). Ignored by ``"gd"``.
    init : {"spectral", "random"} or tuple of arrays
        Spectral: ``SVD_r`` of the (truncated) ``A*(y)``; for quadratic
        sensing the top-rank algebraic eigenpairs of
        ``(Σ_S y_k a_k a_kᵀ − (Σ_S y_k) I)/(2|S|)``, negative ones clipped
        (a symmetric start's columns with a negative eigenvalue start, and
        stay, at zero). ``"random"``: ScaledGD(λ)'s small start, scale
        ``init_scale · √σ̂₁``.
    init_scale : float, optional
        ``α``, the scale of the start's factors: ``U₀ = α·B`` with ``B Bᵀ``
        the (truncated) spectral estimate, as in the over-parameterised robust
        method (Ma and Fattahi); default 1 for ``init="spectral"`` and 1e-3
        for ``init="random"``. A small ``α`` (1e-3 to 1e-6) is what makes
        an over-parameterised rank safe for the plain subgradient method,
        whose error grows with ``α``; the scaled default is flat in ``α``
        (docs/matrix-family.md).
    rho : float in (0, 1), optional
        ``ρ`` of the l1 geometric rule: default 0.97 (0.98 for
        ``method="gd"``). Lower is faster but stalls, at an error that says
        nothing, once ``ρ`` is below the problem's convergence rate, which
        approaches 1 with more outliers and over-parameterisation: 0.93
        suffices with ``m = 8 n r`` and 20% outliers at the exact rank, 0.96
        with ``n = 20``, ``r' = 20``, ``m = 300`` and 10%, while ``n = 200``,
        ``r' = 20``, ``m = 8 n r*`` and 10% need 0.985 (docs/matrix-family.md).
        Check the fit, or pass ``f_star``.
    shape : (n1, n2), optional
        The matrix shape, when ``operator`` is an array.
    max_iter, tol, stall_tol, patience, random_state, client, address,
    scheduler, cache, callback, progress,
    checkpoint, checkpoint_interval, resume
        As in :func:`dscaledgd.complete`; ``tol`` bounds the relative
        residual ``‖A(X) − y‖/‖y‖`` (with outliers it never reaches 0). For
        l1, ``stall_tol`` bounds the relative step ``‖ΔX‖/‖X‖`` instead of the
        loss change (the l1 loss is dominated by ``f*``), so it also caps the
        accuracy at about ``stall_tol``: lower it for high accuracy.
        ``cache``: keep the generated operator blocks on the
        workers (``"memory"``) or regenerate them every pass (``"generate"``).

    Returns
    -------
    SolveResult
        For ``loss="l1"``, ``info["l1_error_estimate"]`` estimates the relative
        error ``‖X − X*‖/‖X*‖`` without ``X*``: the mean of the residuals
        kept by the median rule over that of ``|y|`` (one more pass; see
        :func:`dscaledgd.problems.sensing.l1_error_estimate`). Within 2× once
        converged, a lower estimate (6–14× below) after a stalled run. Check
        it when no ``f_star`` is given: a ``ρ`` below the problem's rate stalls.

    Notes
    -----
    Per iteration: one pass over the operator's blocks (each generated from
    the seed where it is used, or cached), a tree sum of ``n1 × n2`` partial
    adjoints, and one gather of ``r × r`` Grams. Memory: the cached blocks
    (``8 · m · n1 · n2`` bytes for Gaussian sensing) plus ``O(n1 n2)``.

    Examples
    --------
    >>> import numpy as np, dscaledgd as dsg
    >>> truth = dsg.datasets.make_low_rank((20, 20), 2, random_state=0)
    >>> A = dsg.GaussianSensing((20, 20), 400, random_state=0)
    >>> res = dsg.sense(A.forward(truth.dense()), A, 2, scheduler="sync", random_state=0)
    >>> res.status
    'converged'
    """
    func = "sense"
    op = as_operator(operator, shape)
    y = as_real_matrix(y, func, "y", kind="1-D array", missing=False, table=False)
    y = y.astype(np.float64, copy=False)
    if y.ndim != 1 or len(y) != op.m:
        raise InputDataError(
            f"The measurements y have shape {y.shape}, but the operator takes m={op.m} "
            f"measurements; y must be a vector of length {op.m}."
        )
    if not np.all(np.isfinite(y)):
        k = int(np.argmin(np.isfinite(y)))
        raise InputDataError(f"Measurement y[{k}] = {float(y[k])!r} is not finite.")
    n1, n2 = op.shape
    if op.kind == "quadratic" and not symmetric:
        raise InvalidParameterError(
            "QuadraticSensing measures a PSD model X = L Lᵀ: pass symmetric=True."
        )
    check_param(func, "symmetric", symmetric, COMMON["symmetric"])
    if symmetric and n1 != n2:
        raise InvalidParameterError(
            f"The 'symmetric' parameter of sense is True but the operator's shape is "
            f"{op.shape}; a symmetric (PSD) fit needs a square matrix."
        )
    rank = check_rank(func, rank, op.shape, full=True)
    check_choice(func, "method", method, METHODS)
    check_choice(func, "loss", loss, LOSSES)
    check_choice(func, "cache", cache, ("auto", "memory", "generate"))
    check_param(func, "f_star", f_star, [NONE, Interval("real", 0, None, "left")])
    check_param(
        func, "outlier_fraction", outlier_fraction, [NONE, Interval("real", 0, 0.5, "left")]
    )
    init = check_init(func, init, op.shape, rank, symmetric)
    params = collect_params(
        func,
        locals(),
        step_size=step,
        f_star=f_star,
        reg=0.0,
        init_power_iter=0,
        outlier_fraction=outlier_fraction,
    )
    with np.errstate(over="ignore"):
        sumsq = float(np.dot(y, y))
    if check_values(func, "the measurements y", y, sumsq, 1.0, len(y)):
        return zero_result(op.shape, rank, params, func)
    rng = resolve_rng(random_state)
    with executor_for(client, address=address, scheduler=scheduler) as ex:
        engine = SensingEngine(y, op, ex, symmetric=symmetric, loss=loss, cache=cache)
        try:
            keep = _truncation(y, loss, outlier_fraction, op.kind)
            engine.set_truncation(keep)
            res = solve(engine, rank, rng, params, desc=func)
            if loss == "l1":  # one more pass: the fit's error, estimated without X*
                r = engine.residuals([np.asarray(F) for F in res.factors])
                res.info["l1_error_estimate"] = l1_error_estimate(r, y)
            return res
        finally:
            engine.close()
