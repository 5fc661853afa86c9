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
    ``η_t = η ρ^t σ̂₁ / ĝ`` with the damping ``λ_t = λ₀ ρ^t`` (ALGORITHMS.md
    §4a). The step is *absolute*: it is proportional to the subgradient, so
    each factor direction grows or shrinks multiplicatively, at a rate set by
    the data, and a small start ``α·B`` grows as fast as a large one (a step
    normalised by ``‖G‖`` or ``‖X₀‖`` would jump from a small start to the data
    scale at once, or never leave it). ``σ̂₁`` (the top spectral value) and
    ``ĝ = ‖G₀‖_F / ‖F₀‖_F`` (the subgradient's gain at the start, which does
    not depend on the start's scale) make ``η`` dimensionless: it sets the
    first step's relative move of the factors (exactly ``η`` for GD). The decaying damping is what
    lets an over-parameterised search rank reach the exact-rank accuracy: a
    fixed ``λ`` leaves an error floor of about ``0.02 λ/σ̂₁`` (the spurious
    directions settle where ``FᵀF ≈ λ``), and ``λ_t → 0`` takes the floor
    down with the steps. Defaults ``η = 0.5``, ``ρ = 0.97`` (0.98 for GD, the
    talk's value), ``λ₀ = 0.3 σ̂₁``
    (benchmarks/bench_family.py ``robust``; docs/matrix-family.md). GD
    (``P = I/σ̂₁``) gets the talk's plain subgradient method
    ``U − η ρ^t G / ĝ``.

Both rules stop on the relative step length: with outliers the l1 loss is
dominated by ``f*`` and its relative change says nothing about convergence.

No dask import here.
"""

from __future__ import annotations

import math

import numpy as np

from ..exceptions import InvalidParameterError
from .scaledgd import Step, StepRule, scaled_grad_norm2

__all__ = ["PolyakStep", "GeometricStep"]


class _ScaledSubgradientRule(StepRule):
    """Common parts: stop on a real blow-up, never silently change the rule."""

    #: the loop's stall rule watches ‖ΔX‖/‖X‖ (the step length), not the loss
    stall_on_step = True

    def __init__(self, damping: float = 0.0, sigma1: float = 1.0):
        super().__init__(damping)
        self.sigma1 = float(sigma1)
        self.t = 0
        self.gain = 1.0

    def start(self, stats) -> None:
        """``ĝ = ‖G₀‖_F / ‖F₀‖_F``: the subgradient's gain at the start (independent of the
        start's scale while the residual's signs are those of ``−y``)."""
        self.t = 0
        ff = sum(float(np.trace(M)) for M in stats.FF)
        gg = sum(float(np.trace(M)) for M in stats.GG)
        self.gain = math.sqrt(gg / ff) if ff > 0 and gg > 0 else 1.0

    def absolute(self, eta: float) -> float:
        """The step size that moves the factors by about ``η`` times their size."""
        return eta * self.sigma1 / self.gain

    def propose(self, stats) -> Step:
        return Step(math.nan, self.damping)  # η is set by scale() once P is known


class PolyakStep(_ScaledSubgradientRule):
    """``η = (f − f*) / ‖G‖*²`` (ScaledSM with known optimal value ``f_star``).

    From a small start (``cap`` given) the Polyak step would jump to the data
    scale at once (it diverged at the first step from α = 1e-3); there it is
    capped by the absolute step ``cap · σ̂₁/ĝ`` of :class:`GeometricStep`, so the
    start grows multiplicatively until Polyak's step is the smaller, and the
    damping decays with the relative gap, ``λ_t = λ₀ (f_t − f*)/(f_0 − f*)``.
    """

    name = "polyak"

    def __init__(self, f_star: float = 0.0, damping: float = 0.0, sigma1: float = 1.0, cap=None):
        super().__init__(damping, sigma1)
        self.f_star = float(f_star)
        self.cap = None if cap is None else float(cap)
        self.gap0 = 1.0

    def start(self, stats) -> None:
        super().start(stats)
        if self.f_star > stats.loss:
            raise InvalidParameterError(
                f"The 'f_star' parameter ({self.f_star:.6g}) is larger than the l1 loss at the "
                f"start ({stats.loss:.6g}). f_star is the optimal (smallest) value of the loss "
                "‖A(X) − y‖₁, the l1 norm of the corruption, so it cannot exceed a value the "
                "loss takes. Pass the right value, or f_star=None for geometric steps."
            )
        self.gap0 = max(stats.loss - self.f_star, 1e-300)

    def propose(self, stats) -> Step:
        if self.cap is None:
            return Step(math.nan, self.damping)
        rel = min(max(stats.loss - self.f_star, 0.0) / self.gap0, 1.0)
        return Step(math.nan, self.damping * max(rel, 1e-14))

    def scale(self, stats, step: Step, P: list) -> Step:
        g2 = scaled_grad_norm2(stats, P)
        gap = max(stats.loss - self.f_star, 0.0)
        eta = gap / g2 if g2 > 0 else 0.0
        if self.cap is not None:
            eta = min(eta, self.absolute(self.cap))
        self.t += 1
        return Step(eta, step.damping, step.mu)


class GeometricStep(_ScaledSubgradientRule):
    """``η_t = η ρ^t σ̂₁ / ĝ``, damping ``λ_t = λ₀ ρ^t`` (ScaledSM without ``f*``).

    ``damping`` is ``λ₀``; it decays with the step. ``sigma1`` is the top
    spectral value of the data.
    """

    name = "geometric"
    #: the defaults: ``η``, ``ρ`` (ScaledSM), ``ρ`` of the plain subgradient method (GD;
    #: the talk's value) and ``λ₀`` as a fraction of ``σ̂₁``
    ETA, RHO, RHO_GD, DAMPING_FRACTION = 0.5, 0.97, 0.98, 0.3

    def __init__(
        self,
        eta: float = ETA,
        rho: float = RHO,
        damping: float = 0.0,
        sigma1: float = 1.0,
    ):
        super().__init__(damping, sigma1)
        self.eta, self.rho = float(eta), float(rho)

    def propose(self, stats) -> Step:
        lam = self.damping * self.rho**self.t
        # a floor far below any resolvable value keeps the Gram solve well posed when a
        # factor has zero columns (clipped spectral directions)
        return Step(math.nan, max(lam, 1e-14 * self.damping))

    def scale(self, stats, step: Step, P: list) -> Step:
        eta = self.absolute(self.eta * self.rho**self.t)
        self.t += 1
        return Step(eta, step.damping, step.mu)
