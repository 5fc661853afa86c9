"""Initialisations: spectral (balanced factors) and small random.

Spectral: with ``U₀ Σ₀ V₀ᵀ = SVD_r(Y/p)``, the balanced factors are
``L₀ = U₀ Σ₀^{1/2}`` and ``R₀ = V₀ Σ₀^{1/2}``, then rescaled by the
least-squares factor ``s* = <P_Ω(X₀), Y> / ‖P_Ω(X₀)‖²`` (one more pass).
The ``1/p`` scaling assumes uniform sampling. On real data (in MovieLens,
popular items are observed far more often) it over-scales ``X₀`` about 60x
and the first steps blow up. On uniformly sampled planted data ``s*`` is
0.85-0.95, so the rescaling is applied only when ``s*`` is outside
``[0.5, 2]``: the papers' initialisation is kept wherever it is sound. For a symmetric fit the top-r
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
    state = engine.transform(bases, [d] * len(bases))
    xy, xx = engine.fit_sums(state)
    scale = xy / xx if xx > 0 and xy > 0 else 1.0
    if not 0.5 <= scale <= 2.0:  # only when 1/p is far off (non-uniform sampling)
        state = engine.transform(state, [np.eye(rank) * np.sqrt(scale)] * len(state))
        values = values * scale
    return state, values


def random_init(engine, rank: int, *, seed: int, scale: float):
    """Factors with i.i.d. ``N(0, scale²/n_k)`` entries."""
    return engine.random_factors(rank, seed=seed, scale=scale)
