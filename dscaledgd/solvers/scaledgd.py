"""The ScaledGD family: one update, three preconditioners, and the step rules.

Every factor moves by ``F_k+ = F_k − η G_k P_k`` where ``G_k`` is the
gradient and ``P_k`` the preconditioner:

=================  ==========================================  ===========
method             ``P_k``                                     step
=================  ==========================================  ===========
ScaledGD           ``(H_k)⁻¹``  (``H_L = RᵀR``, ``H_R = LᵀL``)  ``η``
ScaledGD(λ)        ``(H_k + λ I)⁻¹``                           ``η``
GD (baseline)      ``I / σ̂₁``                                   ``η``
=================  ==========================================  ===========

``σ̂₁`` is the top singular value of the spectral estimate. The ``r × r``
systems are solved by Cholesky with a ridge fallback (never an explicit
``inv``); a Gram that stays indefinite raises :class:`GramSolveError`, which
the loop treats as divergence.

The step rule decides ``η`` (and an extra, adaptive damping) from the small
results of each pass only: the loss and the Grams ``FᵀF``, ``FᵀG``, ``GᵀG``
and ``H``. See :class:`AdaptiveStep` for the default and the measurements
behind it. No dask import here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from ..problems.spec import Update

__all__ = [
    "GramSolveError",
    "Preconditioner",
    "Step",
    "StepRule",
    "FixedStep",
    "AdaptiveStep",
    "guarded",
    "make_update",
    "predicted_grams",
    "update_matrices",
    "with_ridge",
]


class GramSolveError(np.linalg.LinAlgError):
    """A preconditioner Gram is not positive definite, even with a ridge."""


@dataclass(frozen=True)
class Step:
    """One update's step size, fixed damping ``λ`` and adaptive damping ``μ``."""

    eta: float
    damping: float
    mu: float = 0.0


def spd_solve_identity(H: np.ndarray) -> np.ndarray:
    """``H⁻¹`` for a symmetric positive definite ``r × r`` matrix, via Cholesky.

    A ridge of ``1e-14 · tr(H)/r`` (growing) is added only when the factorisation
    fails. Raises :class:`GramSolveError` if ``H`` is not finite or stays
    indefinite.
    """
    H = 0.5 * (H + H.T)
    if not np.all(np.isfinite(H)):
        raise GramSolveError("Gram matrix has non-finite entries")
    r = len(H)
    scale = np.trace(H) / r
    if not scale > 0:
        raise GramSolveError("Gram matrix has a non-positive trace")
    ridge = 0.0
    eye = np.eye(r)
    for _ in range(6):
        try:
            c = sla.cho_factor(H + ridge * eye, lower=True, check_finite=False)
            P = sla.cho_solve(c, eye, check_finite=False)
            return 0.5 * (P + P.T)
        except np.linalg.LinAlgError:
            ridge = 1e-14 * scale if ridge == 0.0 else ridge * 1e3
    raise GramSolveError("Gram matrix is not positive definite")


class Preconditioner:
    """Per-factor preconditioners.

    ``kind="scaled"``: ``P_k = (H_k + λ I + μ (F_kᵀF_k)⁻¹)⁻¹``. With ``μ = 0``
    this is ScaledGD(λ) (ScaledGD when ``λ = 0``). The ``μ`` term is the
    adaptive damping of :class:`AdaptiveStep`; it transforms like ``H_k``
    under ``(L Q, R Q⁻ᵀ)``, so the iterates keep ScaledGD's invariance.

    ``kind="identity"``: ``P_k = I / σ̂₁`` (vanilla GD).

    Small parameters with a gradient (the Tucker core ``S``) move by
    ``S − η ∇S ×_k Q_k`` (:meth:`param_matrices`): ``Q_k = (F_kᵀF_k + λ I)⁻¹``
    for ScaledGD (ALGORITHMS.md §7), ``Q_k = I`` for GD.

    ``relative_ridge`` ``ε`` adds ``ε tr(M)/r`` to each Gram ``M`` (``H_k``,
    and ``F_kᵀF_k`` of the small parameters) before it is inverted
    (:attr:`~dscaledgd.problems.spec.ProblemSpec.relative_ridge`).
    """

    def __init__(self, kind: str = "scaled", sigma1: float = 1.0, relative_ridge: float = 0.0):
        if kind not in ("scaled", "identity"):  # pragma: no cover - internal
            raise ValueError(kind)
        self.kind = kind
        self.sigma1 = float(sigma1)
        self.relative_ridge = float(relative_ridge)

    def _ridge(self, M: np.ndarray) -> float:
        return self.relative_ridge * float(np.trace(M)) / len(M) if self.relative_ridge else 0.0

    def matrices(self, stats, step: Step, ridge=0.0) -> list:
        """Per factor ``P_k`` (each ``r_k × r_k``; Tucker ranks may differ per mode).

        ``ridge``: the ridge's curvature ``reg_k`` per factor (or one for all),
        added to the damping: ``P_k = (H_k + (λ + reg_k) I + …)⁻¹``.
        """
        if self.kind == "identity":
            return [np.eye(len(Hk)) / self.sigma1 for Hk in stats.H]
        out = []
        for Hk, FFk, rk in zip(stats.H, stats.FF, per_factor(ridge, len(stats.H))):
            M = Hk + (step.damping + rk + self._ridge(Hk)) * np.eye(len(Hk))
            if step.mu > 0:
                M = M + step.mu * spd_solve_identity(FFk)
            out.append(spd_solve_identity(M))
        return out

    def param_matrices(self, stats, step: Step) -> list:
        """Per factor ``Q_k``: the mode-wise preconditioner of the small parameters."""
        if self.kind == "identity":
            return [np.eye(len(FF)) for FF in stats.FF]
        return [
            spd_solve_identity(FF + (step.damping + self._ridge(FF)) * np.eye(len(FF)))
            for FF in stats.FF
        ]


def make_update(precond: Preconditioner, P: list, stats, state, step: Step, reg=0.0):
    """The :class:`~dscaledgd.problems.spec.Update` of one step of size ``step.eta``.

    Factors: :func:`update_matrices`. Each small parameter ``S`` with a
    gradient ``stats.PG[name]``: ``S − η ∇S ×_k Q_k``
    (:meth:`Preconditioner.param_matrices`).
    """
    A, B = update_matrices(P, step.eta, reg)
    params = {}
    if stats.PG:
        from ..linalg import multi_mode_product

        Q = precond.param_matrices(stats, step)
        for name, grad in stats.PG.items():
            params[name] = state.params[name] - step.eta * multi_mode_product(grad, Q)
    return Update(A, B, params)


def per_factor(reg, n: int) -> list:
    """``reg`` as one float per factor (a scalar applies to every factor)."""
    if np.ndim(reg) == 0:
        return [float(reg)] * n
    return [float(r) for r in reg]


def with_ridge(stats, reg):
    """The loss of the regularised objective from the pass statistics.

    ``f + Σ_k (reg_k/2) Σ_i w_i ‖F_k[i]‖²``: the Gram ``Fᵀ diag(w) F`` when the
    engine has row weights (weighted ridge), else ``FᵀF`` (``w = 1``). ``reg``
    is one value per factor, or one for all. The Grams ``FG``/``GG`` stay
    those of the data gradient.
    """
    import dataclasses

    grams = stats.FWF if getattr(stats, "FWF", None) else stats.FF
    regs = per_factor(reg, len(grams))
    if not any(regs):
        return stats
    penalty = 0.5 * sum(rk * float(np.trace(M)) for rk, M in zip(regs, grams))
    return dataclasses.replace(stats, loss=stats.loss + penalty)


def update_matrices(P: list, eta: float, reg=0.0):
    """``(A_k, B_k)`` with ``F_k A_k + S G_k B_k = F_k − η S (G_k + reg_k W F_k) P_k``.

    ``W = diag(w)`` are the ridge's row weights and ``S = W⁻¹`` the engine's
    row scale of the gradient (both the identity without weights), so the
    update is ``F − η (S G + reg_k F) P``: ``A = I − η reg_k P``, ``B = −η P``.
    ``reg``: one value per factor, or one for all.

    It is a descent step for the regularised objective: with ``∇ = G + reg W F``
    the inner product ``<∇, −η S ∇ P> = −η tr(P^{1/2} ∇ᵀ S ∇ P^{1/2}) < 0``
    because ``S`` and ``P`` are SPD (tests/solvers/test_regularisation.py).
    """
    A = [np.eye(len(Pk)) - eta * rk * Pk for Pk, rk in zip(P, per_factor(reg, len(P)))]
    B = [-eta * Pk for Pk in P]
    return A, B


def predicted_grams(FF, FG, GG, eta, P):
    """``(F − η G P)ᵀ (F − η G P)`` from the Grams, without a data pass."""
    X = FG @ P
    return FF - eta * (X + X.T) + eta**2 * (P @ GG @ P)


def x_norm2(stats) -> float:
    """``‖X‖_F²`` from the Grams: ``tr(F_kᵀF_k H_k)`` (the same for every k)."""
    return float(np.sum(stats.FF[0] * stats.H[0]))


def scaled_grad_norm2(stats, P: list) -> float:
    """``Σ_k <G_k, G_k P_k>``, the squared gradient norm in the scaled metric."""
    return float(sum(np.sum(GG * Pk) for GG, Pk in zip(stats.GG, P)))


# ------------------------------------------------------------------ rules
class StepRule:
    """What the loop asks of a step rule; the defaults are those of a fixed rule.

    ``propose(stats)`` gives the step before the preconditioner is known,
    ``scale(stats, step, P)`` may set ``η`` from it (ScaledSM), ``recover()``
    after a guard restore says whether to go on (``False``: the run ends
    ``"diverged"``), ``accepted(...)`` sees each accepted step (the adaptive
    rule's stability-edge shrink and stagnation restore). ``loss_blowup`` and
    ``norm_blowup`` are the guard's thresholds, ``stall_on_step`` makes the
    stall rule watch the relative step instead of the loss, and ``c`` is the
    adaptive damping's constant (0 when there is none; the re-seed uses it).
    """

    name = "rule"
    loss_blowup = 1e3
    norm_blowup = 1e2
    stall_on_step = False
    c = 0.0

    def __init__(self, damping: float = 0.0):
        self.damping = float(damping)

    def start(self, stats) -> None:
        pass

    def propose(self, stats) -> Step:  # pragma: no cover - interface
        raise NotImplementedError

    def scale(self, stats, step: Step, P: list) -> Step:
        return step

    def recover(self) -> bool:
        return False

    def accepted(self, prev, cur, step: Step, P: list, best_loss: float):
        """After each accepted step from ``prev`` to ``cur`` (their stats, the step and
        its preconditioners ``P``; ``best_loss`` already counts ``cur``): ``None``,
        ``("shrunk", reason)`` when the rule has shrunk its step, or ``("restore",
        reason)`` to restore the best iterate. Only :class:`AdaptiveStep` with
        ``edge_window`` or ``patience`` acts."""
        return None


class FixedStep(StepRule):
    """Constant ``η`` and damping, as in the papers' reference code.

    The loop stops the run only on a real blow-up (non-finite values, the loss
    above ``1e3 ×`` its initial value, or a factor's squared norm above
    ``1e2 ×`` its initial value), with status ``"diverged"``; a fixed step is
    never silently changed.
    """

    name = "fixed"

    def __init__(self, eta: float, damping: float = 0.0):
        super().__init__(damping)
        self.eta = float(eta)

    def propose(self, stats) -> Step:
        return Step(self.eta, self.damping)


class AdaptiveStep(StepRule):
    r"""The default step rule: invariant adaptive damping plus a blow-up guard.

    Each iteration uses ``η`` and the preconditioner
    ``P_L = (RᵀR + λI + μ (LᵀL)⁻¹)⁻¹`` (likewise for ``R``), ``η = 0.7``, and

    .. math:: \mu = c^2 \, \|P_\Omega(X) - Y\|^2 / p \approx (c \, \|X - X^\star\|_F)^2 .

    At a balanced point the preconditioner's eigenvalues are
    ``σ_i + μ/σ_i``: directions whose singular value is below the current
    error level are damped (they cannot be resolved yet), the others get plain
    ScaledGD. As the fit improves, ``μ → 0`` and the iteration becomes
    ScaledGD with step ``η``.

    Guard: when a pass finds a non-finite value, a loss above the initial loss,
    or a factor's squared norm above ``10 ×`` its initial value, the loop
    restores the best iterate (with its gradient, no extra pass) and the rule
    doubles ``c`` and shrinks ``η`` by ``0.85`` (not below ``eta_min``).

    On completion without a ridge, the loop also re-seeds coherent spurious
    components (:mod:`dscaledgd.solvers.reseed`).

    Measured (benchmarks/bench_steprule.py, docs/step_rule.md), with the
    re-seed: on 20 random instances (600-1000 rows, r 3-10, p 0.15-0.35, κ up
    to 1e3) it reached relative error 1e-10 on all 20 with at most 1.18x the
    data passes of the best fixed η in {0.3, 0.5, 0.7} for that instance
    (median 0.68x), where fixed η = 0.5 diverged on 5 and η = 0.3 stalled on
    5. Iterations to 1e-12 on 1500×1100, r = 8, p = 0.25 for κ = 1, 10, 100,
    1000 (seed 1): 48, 55, 52, 53.
    η = 0.75 is flatter in κ but converges slowly on small instances (it sits
    near the stability edge; fixed η = 0.75 diverges there), so 0.7 is kept.

    Parameters
    ----------
    eta : float, default 0.7
    c : float, default 0.3
    damping : float, default 0
        Fixed ScaledGD(λ) damping added on top.
    eta_min, eta_shrink, c_growth : float
        Recovery after a guard restore.
    max_restores : int, default 30
        After this many restores the run ends with status ``"diverged"``.
    patience : int or None, default None
        Stagnation restore (the problem's ``stagnation_patience``; 30 on
        completion): when ``patience`` iterations in a row bring no new best
        loss while the loss sits more than ``rise_tol`` (1%) above the best, the
        loop restores the best iterate and recovers as after a guard restore
        (never at the last iteration, nor once ``max_restores`` are spent).
        On small, sparsely sampled completion instances ``η = 0.7`` can settle
        into a cycle or a slow drift at the edge of stability, with the loss
        10-15x (or only 10%) above its best and far below the initial loss,
        so the guard does not see it; healthy runs measured so far never went
        more than 5 iterations without a new best while 1% above it
        (docs/step_rule.md).
    edge_window : int or None, default None
        Stability-edge shrink (the problem's ``edge_window``; 10 on
        completion). Each iteration measures the curvature along the last step
        from the loss it reached: ``η c = 2 (f₊ − f + η S) / (η S)`` with
        ``S = Σ_k <G_k, G_k P_k>`` (the first-order decrease is ``η S``). A
        linear phase whose slowest mode sits at the edge of stability has
        ``η c → 1 + q`` for a contraction ``q`` near 1; healthy runs settle at
        0.3-0.5. After ``edge_window`` iterations in a row with ``η c >
        edge_level`` (1.8), ``η`` shrinks by ``eta_shrink`` (not below
        ``eta_min``), without a restore: the iterate is good, only slow. The
        loop records it as a ``"step_shrunk"`` event. Measured on accepted
        steps only (:meth:`accepted`, from the point the step left), so a
        re-seed or a restore is never read as a step.

    With a ridge (``reg > 0``) both are left off by ``complete``: the loss
    carries the penalty but ``S`` only the data gradient, so ``η c`` reads 2
    at the regularised optimum.
    """

    name = "adaptive"
    loss_blowup = 1.0
    norm_blowup = 10.0

    def __init__(
        self,
        eta: float = 0.7,
        c: float = 0.3,
        damping: float = 0.0,
        eta_min: float = 0.5,
        eta_shrink: float = 0.85,
        c_growth: float = 2.0,
        max_restores: int = 30,
        patience: int | None = None,
        rise_tol: float = 0.01,
        edge_window: int | None = None,
        edge_level: float = 1.8,
    ):
        super().__init__(damping)
        self.eta0, self.c0 = float(eta), float(c)
        self.eta_min, self.eta_shrink, self.c_growth = eta_min, eta_shrink, c_growth
        self.max_restores = max_restores
        self.patience, self.rise_tol, self.since_best = patience, float(rise_tol), 0
        self.edge_window, self.edge_level = edge_window, float(edge_level)
        self.at_edge = 0

    def start(self, stats) -> None:
        self.eta, self.c, self.restores, self.since_best = self.eta0, self.c0, 0, 0
        self.at_edge = 0

    def propose(self, stats) -> Step:
        mu = self.c**2 * stats.err2 if self.c > 0 else 0.0
        return Step(self.eta, self.damping, mu)

    def recover(self) -> bool:
        self.restores += 1
        self.at_edge = 0  # the next step starts from a restored point
        if self.restores > self.max_restores:
            return False
        self.c = self.c * self.c_growth if self.c > 0 else 0.0
        self.eta = max(self.eta_min, self.eta * self.eta_shrink)
        return True

    def accepted(self, prev, cur, step: Step, P: list, best_loss: float):
        if self.edge_window is not None:
            s0 = scaled_grad_norm2(prev, P)  # the step's first-order decrease is η s0
            edge = 2.0 * (cur.loss - prev.loss + step.eta * s0) / (step.eta * s0) if s0 > 0 else 0.0
            self.at_edge = self.at_edge + 1 if edge > self.edge_level else 0
            if self.at_edge >= self.edge_window and self.eta > self.eta_min:
                old, self.at_edge = self.eta, 0
                self.eta = max(self.eta_min, self.eta * self.eta_shrink)
                return "shrunk", (
                    f"{self.edge_window} steps in a row with eta*c > {self.edge_level:g} "
                    f"(the stability edge; last {edge:.3g}): step {old:g} -> {self.eta:g}"
                )
        if self.patience is None:
            return None
        # a new best has cur.loss == best_loss: never "above", so it starts the count again
        above = cur.loss > (1.0 + self.rise_tol) * best_loss
        self.since_best = self.since_best + 1 if above else 0
        if self.since_best < self.patience or self.restores >= self.max_restores:
            return None
        self.since_best = 0
        return "restore", (
            f"no new best loss for {self.patience} iterations, the loss more than "
            f"{self.rise_tol:.0%} above the best (loss {cur.loss:.3g}, best {best_loss:.3g})"
        )


def guarded(eta: float = 0.5, damping: float = 0.0) -> AdaptiveStep:
    """Fixed ``η`` halved on each guard restore (no adaptive damping).

    The default of GD (``η/σ̂₁``) and of ScaledGD(λ) from a small random start,
    where the adaptive damping's ``μ (FᵀF)⁻¹`` term would freeze the tiny
    factors.
    """
    rule = AdaptiveStep(eta=eta, c=0.0, damping=damping, eta_min=1e-4, eta_shrink=0.5)
    rule.name = "guarded"
    return rule
