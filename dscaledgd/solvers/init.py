"""Initialisations: spectral (balanced factors) and small random.

Spectral: with ``U₀ Σ₀ V₀ᵀ = SVD_r(Y/p)``, the balanced factors are
``L₀ = U₀ Σ₀^{1/2}`` and ``R₀ = V₀ Σ₀^{1/2}``. For a symmetric fit the top-r
*algebraic* eigenpairs of ``(Y + Yᵀ)/2p`` are used, negative eigenvalues
clipped to zero: ``L₀ = U₀ Λ₊^{1/2}``.

Small random (ScaledGD(λ)): every factor has i.i.d. ``N(0, α²/n)`` entries.

The engine computes the spectral pairs on its implicit operator (no dense
``n1 × n2`` array); this module only turns them into factors.
"""

from __future__ import annotations

import numpy as np

__all__ = ["spectral_init", "random_init"]


def spectral_init(engine, rank: int, *, seed: int, n_power: int = 4):
    """Balanced spectral factors and the spectral values (descending)."""
    bases, values = engine.spectral(rank, seed=seed, n_power=n_power)
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    d = np.diag(np.sqrt(values))
    return engine.transform(bases, [d] * len(bases)), values


def random_init(engine, rank: int, *, seed: int, scale: float):
    """Factors with i.i.d. ``N(0, scale²/n_k)`` entries."""
    return engine.random_factors(rank, seed=seed, scale=scale)
