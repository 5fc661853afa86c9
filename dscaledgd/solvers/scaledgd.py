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

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

__all__ = [
    "GramSolveError",
    "Preconditioner",
    "Step",
    "FixedStep",
    "AdaptiveStep",
    "predicted_grams",
]


class GramSolveError(np.linalg.LinAlgError):
    """A preconditioner Gram is not positive definite, even with a ridge."""


@dataclass(frozen=True)
class Step:
    """One update's step size and (total) damping."""

    eta: float
    damping: float


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
    """``(H_k + λ I)⁻¹`` (``kind="scaled"``) or ``I / σ̂₁`` (``kind="identity"``, GD)."""

    def __init__(self, kind: str = "scaled", sigma1: float = 1.0):
        if kind not in ("scaled", "identity"):  # pragma: no cover - internal
            raise ValueError(kind)
        self.kind = kind
        self.sigma1 = float(sigma1)

    def matrices(self, H: list, damping: float) -> list:
        if self.kind == "identity":
            r = len(H[0])
            return [np.eye(r) / self.sigma1 for _ in H]
        r = len(H[0])
        return [spd_solve_identity(Hk + damping * np.eye(r)) for Hk in H]


def predicted_grams(FF, FG, GG, eta, P):
    """``(F − η G P)ᵀ (F − η G P)`` from the Grams, without a data pass."""
    X = FG @ P
    return FF - eta * (X + X.T) + eta**2 * (P @ GG @ P)


def scaled_grad_norm2(stats, P: list) -> float:
    """``Σ_k <G_k, G_k P_k>``, the squared gradient norm in the scaled metric."""
    return float(sum(np.sum(GG * Pk) for GG, Pk in zip(stats.GG, P)))


# ------------------------------------------------------------------ rules
class FixedStep:
    """Constant ``η`` and damping, as in the papers' reference code.

    On divergence the run stops (status ``"diverged"``) and returns the best
    iterate: a fixed step is never silently changed.
    """

    name = "fixed"

    def __init__(self, eta: float, damping: float = 0.0):
        self.eta = float(eta)
        self.damping = float(damping)

    def start(self, stats, sigma) -> None:
        pass

    def propose(self, stats) -> Step:
        return Step(self.eta, self.damping)

    def accept(self, stats) -> None:
        pass

    def recover(self) -> bool:
        return False


class AdaptiveStep:
    """Default step rule (placeholder until the benchmark settles it)."""

    name = "adaptive"

    def __init__(self, eta: float = 0.5, damping: float = 0.0, shrink: float = 0.7,
                 max_restores: int = 20):
        self.eta0 = float(eta)
        self.eta = float(eta)
        self.base_damping = float(damping)
        self.shrink = shrink
        self.max_restores = max_restores
        self.restores = 0

    def start(self, stats, sigma) -> None:
        pass

    def propose(self, stats) -> Step:
        return Step(self.eta, self.base_damping)

    def accept(self, stats) -> None:
        pass

    def recover(self) -> bool:
        self.restores += 1
        if self.restores > self.max_restores:
            return False
        self.eta *= self.shrink
        return math.isfinite(self.eta) and self.eta > 1e-6
