"""The scaled subgradient method (ScaledSM) for the l1 loss: step rules.

The update is ScaledGD's, ``F_k+ = F_k − η G_k P_k``, with ``G_k`` a
subgradient of ``f = ‖A(L Rᵀ) − y‖₁`` (sign of the residual, see
:mod:`dscaledgd.problems.completion` and :mod:`dscaledgd.problems.sensing`)
and ``P_k`` ScaledGD's preconditioner. Only the step size differs. Both rules
use the scaled norm ``‖G‖*² = Σ_k <G_k, G_k P_k>``, computed from the
iteration's ``r × r`` Grams (no extra pass):

Polyak (:class:`PolyakStep`)
    ``η_t = (f − f*) / ‖G‖*²``, with ``f*`` the optimal value (the l1 norm of
    the corruption), when the user knows it.
Geometric (:class:`GeometricStep`)
    ``η_t = λ q^t ‖X₀‖_F / ‖G‖*``: the step moves ``X`` by about
    ``λ q^t ‖X₀‖_F`` (``X₀`` the initial estimate, so λ is scale-free).
    Calibrated against Polyak steps on l1 sensing with 20% outliers (40×40,
    r = 3, 4, κ = 1, 10): Polyak's first step is 0.33–0.35 ‖X₀‖ and shrinks by
    0.88–0.89 per iteration, hence λ = 0.3, q = 0.91 by default. ALGORITHMS.md
    §4 quotes λ ∈ [5, 20] in the reference's absolute units; a q below the
    convergence rate (0.88) stalls.

Both rules stop on the relative step length: with outliers the l1 loss is
dominated by ``f*`` and its relative change says nothing about convergence.

No dask import here.
"""

from __future__ import annotations

import math

from .scaledgd import Step, StepRule, scaled_grad_norm2, x_norm2

__all__ = ["PolyakStep", "GeometricStep"]


class _ScaledSubgradientRule(StepRule):
    """Common parts: stop on a real blow-up, never silently change the rule."""

    #: the loop's stall rule watches ‖ΔX‖/‖X‖ (the step length), not the loss
    stall_on_step = True

    def __init__(self, damping: float = 0.0):
        super().__init__(damping)
        self.t = 0

    def start(self, stats) -> None:
        self.t = 0

    def propose(self, stats) -> Step:
        return Step(math.nan, self.damping)  # η is set by scale() once P is known


class PolyakStep(_ScaledSubgradientRule):
    """``η = (f − f*) / ‖G‖*²`` (ScaledSM with known optimal value ``f_star``)."""

    name = "polyak"

    def __init__(self, f_star: float = 0.0, damping: float = 0.0):
        super().__init__(damping)
        self.f_star = float(f_star)

    def scale(self, stats, step: Step, P: list) -> Step:
        g2 = scaled_grad_norm2(stats, P)
        gap = max(stats.loss - self.f_star, 0.0)
        self.t += 1
        return Step(gap / g2 if g2 > 0 else 0.0, step.damping, step.mu)


class GeometricStep(_ScaledSubgradientRule):
    """``η_t = λ q^t / ‖G‖*`` (ScaledSM without the optimal value)."""

    name = "geometric"

    def __init__(self, lam: float = 0.3, q: float = 0.91, damping: float = 0.0):
        super().__init__(damping)
        self.lam, self.q = float(lam), float(q)
        self.x0 = 1.0

    def start(self, stats) -> None:
        super().start(stats)
        self.x0 = math.sqrt(max(x_norm2(stats), 0.0)) or 1.0

    def scale(self, stats, step: Step, P: list) -> Step:
        g = math.sqrt(max(scaled_grad_norm2(stats, P), 0.0))
        eta = self.lam * self.q**self.t * self.x0 / g if g > 0 else 0.0
        self.t += 1
        return Step(eta, step.damping, step.mu)
