"""Centring: a global mean and row/column biases, fitted before the factors.

The model becomes ``X_ij = μ + b_i + c_j + <L_i, R_j>``. With ``center=True``
only ``μ`` (the mean of the observed values) is fitted; with
``center="biases"`` the biases are then fitted by alternating ridge
regression on the observed entries,

.. math::

    \\min_{b, c} \\sum_{(i,j) \\in \\Omega} (y_{ij} - \\mu - b_i - c_j)^2
        + \\lambda (\\|b\\|^2 + \\|c\\|^2),

whose exact coordinate updates are ``b_i = Σ_j (y_ij − μ − c_j) / (n_i + λ)``
and likewise for ``c``. ``λ = p · reg`` puts the bias penalty on the same
scale as the factors': the factor objective ``(1/2p) Σ z² + (reg/2) ‖F‖²``
is ``(1/p)`` times ``½ Σ z² + (p · reg / 2) ‖F‖²``. Each half-sweep is one data pass (per-row and
per-column residual sums); ``sweeps`` full sweeps are run. The factors are
then fitted to the centred residual ``y − μ − b_i − c_j``.

No dask import here: the passes are the engine's ``bias_sums``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit_offsets", "CENTER_MODES"]

CENTER_MODES = (False, True, "mean", "biases")


def fit_offsets(engine, mode, *, reg: float, sweeps: int = 10):
    """Return ``(mu, row_bias, col_bias)``; biases are ``None`` unless ``mode == "biases"``."""
    nr, nc = (c.astype(np.float64) for c in engine.counts())
    zeros_r, zeros_c = np.zeros(len(nr)), np.zeros(len(nc))
    rsum, _ = engine.bias_sums(0.0, zeros_r, zeros_c)
    mu = float(rsum.sum() / nr.sum())
    if mode != "biases":
        return mu, None, None
    lam = max(float(reg) * engine.p, 1e-12)
    b, c = zeros_r, zeros_c
    for _ in range(sweeps):
        rs, _ = engine.bias_sums(mu, b, c)
        b = np.where(nr > 0, (rs + nr * b) / (nr + lam), 0.0)
        _, cs = engine.bias_sums(mu, b, c)
        c = np.where(nc > 0, (cs + nc * c) / (nc + lam), 0.0)
    return mu, b, c
