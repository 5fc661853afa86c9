"""Small dense algebra on the client (NumPy/SciPy only): r × r factorisations.

One place for the ridge policy of Gram factorisations (STYLE.md rule 13), used
by the engine's CholeskyQR (:mod:`dscaledgd.engine.spectral`) and by the
solvers (:mod:`dscaledgd.solvers.reseed`).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

__all__ = ["chol_upper"]


def chol_upper(G: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of an SPD Gram, with a growing ridge as fallback."""
    G = 0.5 * (G + G.T)
    scale = max(np.trace(G) / max(len(G), 1), np.finfo(float).tiny)
    ridge = 0.0
    for _ in range(12):
        try:
            return sla.cholesky(G + ridge * np.eye(len(G)), lower=False)
        except np.linalg.LinAlgError:
            ridge = scale * 1e-14 if ridge == 0.0 else ridge * 100
    raise np.linalg.LinAlgError("Gram matrix is not positive definite even with a ridge")
