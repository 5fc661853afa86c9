"""ScaledGD and GD for Tucker tensor completion on a dense in-memory tensor.

The oracle of ALGORITHMS.md §7, written from the formulas and independent of
the chunk kernels: gradients come from
:func:`dscaledgd.problems.tucker.reference_pass` (which forms ``Ŭ_k``
explicitly), the preconditioners ``Ŭ_kᵀŬ_k`` from the same explicit ``Ŭ_k``,
and the solves use Cholesky (:func:`scipy.linalg.cho_solve`). Use on tensors
of up to a few million cells.

Updates (simultaneous, ``G_k`` and ``∇_S`` include ``1/p``):

* ScaledGD: ``U_k+ = U_k − η G_k (Ŭ_kᵀŬ_k)⁻¹`` and
  ``S+ = S − η ∇_S ×_k (U_kᵀU_k)⁻¹``;
* GD: ``U_k+ = U_k − (η/σ̂²) G_k`` and ``S+ = S − η ∇_S``, where ``σ̂`` is the
  largest singular value over the mode unfoldings of the initial ``X0``.
  With orthonormal factors ``Ŭ_kᵀŬ_k = M_k(S) M_k(S)ᵀ``, so when every
  unfolding of ``S`` has all its singular values equal to ``σ̂`` (``κ = 1``
  with the authors' circulant core) GD is ScaledGD. The authors' script
  divides by the largest singular value of the *true* core instead; from the
  spectral initialisation the two agree to the initial error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla

from dscaledgd.linalg import fold, multi_mode_product, unfold
from dscaledgd.problems.tucker import reference_pass, reference_spectral


@dataclass
class OracleResult:
    """Final iterate and history of :func:`oracle_tucker`.

    ``errors[t]`` and ``losses[t]`` belong to the iterate after ``t`` updates
    (``t = 0`` is the initialisation); ``n_iter`` is the number of updates
    made; ``iterates`` holds every ``(core, factors)`` when asked for.
    """

    core: np.ndarray
    factors: list
    n_iter: int
    converged: bool
    errors: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    iterates: list = field(default_factory=list)


def full(core, factors) -> np.ndarray:
    return multi_mode_product(np.asarray(core, dtype=np.float64), factors)


def breve(core, factors, k) -> np.ndarray:
    """``Ŭ_k = M_k(S ×_{j≠k} U_j)ᵀ``, formed explicitly (``Π_{j≠k} n_j × r_k``)."""
    return unfold(multi_mode_product(core, factors, skip=k), k).T


def _spd_solve_right(A, B):
    """``B A⁻¹`` for SPD ``A`` (Cholesky)."""
    return sla.cho_solve(sla.cho_factor(A), B.T).T


def random_init(Y, ranks, p, rng):
    """``U_k = randn/√n_k`` and ``S0 = randn · ‖Y‖ / √(p Π r_k)`` (§7)."""
    Y0 = np.nan_to_num(Y, nan=0.0)
    factors = [rng.standard_normal((n, r)) / np.sqrt(n) for n, r in zip(Y.shape, ranks)]
    core = rng.standard_normal(ranks) * np.linalg.norm(Y0) / np.sqrt(p * np.prod(ranks))
    return core, factors


def oracle_tucker(
    Y,
    ranks,
    *,
    p=None,
    eta=0.3,
    init="spectral",
    method="scaledgd",
    max_iter=500,
    tol=1e-14,
    truth=None,
    random_state=0,
    keep_iterates=False,
) -> OracleResult:
    """Run ScaledGD or GD on ``Y`` (dense, NaN = missing).

    Parameters
    ----------
    Y : ndarray, order d
    ranks : sequence of d ints
    p : float, optional
        Sampling rate; the observed fraction when omitted.
    eta : float, default 0.3
    init : "spectral", "random" or (core, factors)
    method : {"scaledgd", "gd"}
    max_iter : int
    tol : float
        Stop once the relative error to ``truth`` (or, without ``truth``, the
        relative observed residual ``‖P_Ω(X) − Y‖/‖P_Ω(Y)‖``) is ``≤ tol``.
    truth : ndarray or (core, factors), optional
        The planted tensor for ``errors``.
    random_state : int or Generator
        For ``init="random"``.
    keep_iterates : bool
        Keep every ``(core, factors)`` in ``iterates``.
    """
    Y = np.asarray(Y, dtype=np.float64)
    ranks = tuple(int(r) for r in ranks)
    observed = ~np.isnan(Y)
    if p is None:
        p = observed.mean()
    y_norm = np.linalg.norm(Y[observed])
    if truth is not None and not isinstance(truth, np.ndarray):
        truth = full(*truth)
    t_norm = None if truth is None else np.linalg.norm(truth)
    if isinstance(init, str) and init == "spectral":
        core, factors = reference_spectral(Y, ranks, p)
    elif isinstance(init, str) and init == "random":
        core, factors = random_init(Y, ranks, p, np.random.default_rng(random_state))
    elif isinstance(init, str):
        raise ValueError(f"init must be 'spectral', 'random' or (core, factors); got {init!r}.")
    else:
        core, factors = init
        core = np.array(core, dtype=np.float64)
        factors = [np.array(u, dtype=np.float64) for u in factors]
    if method not in ("scaledgd", "gd"):
        raise ValueError(f"method must be 'scaledgd' or 'gd'; got {method!r}.")
    d = Y.ndim
    if method == "gd":
        X0 = full(core, factors)
        sigma2 = max(np.linalg.norm(unfold(X0, k), 2) for k in range(d)) ** 2

    res = OracleResult(core, factors, 0, False)

    def record(core, factors):
        loss, G, cgrad = reference_pass(Y, factors, core, p)
        res.losses.append(loss)
        if truth is not None:
            err = np.linalg.norm(full(core, factors) - truth) / t_norm
        else:
            err = np.sqrt(2 * p * loss) / y_norm
        res.errors.append(err)
        if keep_iterates:
            res.iterates.append((core.copy(), [u.copy() for u in factors]))
        return err, G, cgrad

    err, G, cgrad = record(core, factors)
    for t in range(max_iter):
        if err <= tol or not np.isfinite(err):
            break
        if method == "scaledgd":
            new = [
                U - eta * _spd_solve_right(breve(core, factors, k).T @ breve(core, factors, k), Gk)
                for k, (U, Gk) in enumerate(zip(factors, G))
            ]
            step = cgrad
            for k, U in enumerate(factors):  # ∇_S ×_k (U_kᵀU_k)⁻¹
                step = fold(sla.cho_solve(sla.cho_factor(U.T @ U), unfold(step, k)), k, ranks)
            core = core - eta * step
        else:
            new = [U - (eta / sigma2) * Gk for U, Gk in zip(factors, G)]
            core = core - eta * cgrad
        factors = new
        res.n_iter = t + 1
        err, G, cgrad = record(core, factors)
    res.core, res.factors = core, factors
    res.converged = bool(err <= tol)
    return res


def _iteration_counts(n=100, r=5, p=0.1, kappas=(1, 2, 5, 10), seed=0) -> None:
    """Iterations to relative error 1e-14 at the authors' size (ALGORITHMS.md §7 targets).

    Run as ``python -m tests.oracles.tucker``. One mask for every κ, as in the
    authors' script; one instance per κ from the same seed.
    """
    import time

    from dscaledgd.datasets import bernoulli_mask, tucker_instance, tucker_tensor

    mask = bernoulli_mask((n,) * 3, p, random_state=seed + 1)
    runs = [("scaledgd", "spectral", kappas), ("scaledgd", "random", kappas)]
    runs.append(("gd", "spectral", (1, 2)))
    for method, init, ks in runs:
        for kappa in ks:
            core, U = tucker_instance((n,) * 3, r, kappa=kappa, random_state=seed)
            X = tucker_tensor(core, U)
            t0 = time.perf_counter()
            res = oracle_tucker(
                np.where(mask, X, np.nan), (r,) * 3, p=p, init=init, method=method,
                max_iter=1000, tol=1e-14, truth=X, random_state=seed + 2,
            )  # fmt: skip
            dt = (time.perf_counter() - t0) / max(res.n_iter, 1)
            print(
                f"{method:8s} {init:8s} kappa={kappa:<3g} n_iter={res.n_iter:4d} "
                f"converged={res.converged} initial error={res.errors[0]:.2e} "
                f"time/iter={1e3 * dt:.1f} ms",
                flush=True,
            )


if __name__ == "__main__":
    _iteration_counts()
