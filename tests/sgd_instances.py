"""Small ScaledSGD instances shared by the ScaledSGD test modules."""

from __future__ import annotations

import numpy as np


def ill_pairs(seed=0, d=30):
    """Every entry of a ``d × d`` rank-3 PSD matrix with eigenvalues (10, 0.1, 0.001)."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((d, 3)))[0]
    M = (U * [10.0, 0.1, 0.001]) @ U.T
    i, j = np.indices(M.shape).reshape(2, -1)
    return i, j, M[i, j]


def planted_triplets(d, m, seed):
    """``m`` random BPR triplets labelled by a planted rank-3 ``Z Zᵀ`` over ``d`` items."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((d, 3))
    I, J, K = rng.integers(0, d, (3, m))
    S = Z @ Z.T
    return I, J, K, (S[I, J] > S[I, K]).astype(float)
