"""Randomized SVD / eigensolver on implicit operators.

The operator is anything with ``matmat``/``rmatmat`` (or ``symmat``) on
:class:`~dscaledgd.engine.factors.Blocked` matrices, e.g. the tiles of
``P_Ω(Y)/p``. No dense ``n1 × n2`` array is ever formed: each product is one
pass over the data, and orthonormalisation is CholeskyQR2 on ``k × k`` Gram
reductions (Halko, Martinsson and Tropp 2011, Alg. 4.4).

Cost: ``2 · (n_power + 1)`` data passes for the SVD, ``n_power + 2`` for the
symmetric eigensolver; memory ``O((n1 + n2) k)`` on the workers.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from ..linalg import chol_upper
from .factors import Blocked, combine, random_blocked, sum_small

__all__ = ["orthonormalize", "randomized_svd", "randomized_eigh"]


def orthonormalize(X: Blocked, return_r: bool = False):
    """CholeskyQR2: ``X = Q R`` with ``Q`` blocked like ``X``.

    Two rounds of ``G = XᵀX``, ``C = chol(G)``, ``X ← X C⁻¹`` (a triangular
    solve on ``k × k``) restore orthogonality to machine precision.
    """
    eye = np.eye(X.ncols)
    Rtot = eye
    for _ in range(2):
        G = sum_small(X.ex.gather(X.gram_parts()))
        C = chol_upper(G)
        X = combine(X, sla.solve_triangular(C, eye, lower=False), None, None, name="orth")
        Rtot = C @ Rtot
    return (X, Rtot) if return_r else X


def randomized_svd(op, bounds, rank: int, *, seed: int, oversample: int = 10, n_power: int = 4):
    """Top-``rank`` singular triplets of ``op``, whose rows and columns are blocked at
    ``bounds = (row_bounds, col_bounds)``.

    Returns
    -------
    U : Blocked (n1 × rank), s : ndarray (rank,), V : Blocked (n2 × rank)
    """
    row_bounds, col_bounds = bounds
    n1, n2 = int(row_bounds[-1]), int(col_bounds[-1])
    k = min(rank + oversample, n1, n2)
    Om = random_blocked(op.ex, col_bounds, k, seed)
    Q = orthonormalize(op.matmat(Om))
    for _ in range(n_power):
        Z = orthonormalize(op.rmatmat(Q))
        Q = orthonormalize(op.matmat(Z))
    Qz, Rz = orthonormalize(op.rmatmat(Q), return_r=True)  # Aᵀ Q = Qz Rz, so Qᵀ A = Rzᵀ Qzᵀ
    Ub, s, Vbt = np.linalg.svd(Rz.T)
    U = combine(Q, np.ascontiguousarray(Ub[:, :rank]), None, None, name="svd")
    V = combine(Qz, np.ascontiguousarray(Vbt[:rank].T), None, None, name="svd")
    return U, s[:rank], V


def randomized_eigh(op, bounds, rank: int, *, seed: int, oversample: int = 10, n_power: int = 4):
    """Top-``rank`` *algebraic* eigenpairs of the symmetric ``op.symmat`` (rows blocked at
    ``bounds``).

    Returns
    -------
    U : Blocked (n × rank), w : ndarray (rank,), largest first
    """
    n = int(bounds[-1])
    k = min(rank + oversample, n)
    Q = orthonormalize(op.symmat(random_blocked(op.ex, bounds, k, seed)))
    for _ in range(n_power):
        Q = orthonormalize(op.symmat(Q))
    W = op.symmat(Q)
    T = sum_small(op.ex.gather(Q.cross_parts(W)))
    w, Vt = np.linalg.eigh(0.5 * (T + T.T))
    top = np.argsort(w)[::-1][:rank]
    U = combine(Q, np.ascontiguousarray(Vt[:, top]), None, None, name="eig")
    return U, w[top]
