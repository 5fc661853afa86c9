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

__all__ = [
    "orthonormalize",
    "orthonormalize_many",
    "randomized_svd",
    "randomized_eigh",
    "randomized_eigh_many",
]


def orthonormalize(X: Blocked, return_r: bool = False):
    """CholeskyQR2: ``X = Q R`` with ``Q`` blocked like ``X``.

    Two rounds of ``G = XᵀX``, ``C = chol(G)``, ``X ← X C⁻¹`` (a triangular
    solve on ``k × k``) restore orthogonality to machine precision.
    """
    ((Q, R),) = orthonormalize_many([X])
    return (Q, R) if return_r else Q


def orthonormalize_many(Xs: list) -> list:
    """:func:`orthonormalize` of several matrices in lockstep: one gather per round for all
    of them. Returns ``[(Q, R), ...]``."""
    eyes = [np.eye(X.ncols) for X in Xs]
    Rs = list(eyes)
    ex = Xs[0].ex
    for _ in range(2):
        grams = ex.gather([X.gram_parts() for X in Xs])
        Cs = [chol_upper(sum_small(g)) for g in grams]
        Xs = [
            combine(X, sla.solve_triangular(C, eye, lower=False), None, None, name="orth")
            for X, C, eye in zip(Xs, Cs, eyes)
        ]
        Rs = [C @ R for C, R in zip(Cs, Rs)]
    return list(zip(Xs, Rs))


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
    return randomized_eigh_many([op], [bounds], [rank], seeds=[seed], oversample=oversample,
                                n_power=n_power)[0]  # fmt: skip


def randomized_eigh_many(ops, bounds, ranks, *, seeds, oversample: int = 10, n_power: int = 4):
    """:func:`randomized_eigh` of several operators in lockstep (the modes of a tensor):
    their products are submitted together and each orthonormalisation round is one
    gather for all of them, so the cost in round trips is that of one. Returns
    ``[(U, w), ...]``."""
    ex = ops[0].ex
    ks = [min(int(r) + oversample, int(b[-1])) for r, b in zip(ranks, bounds)]
    Qs = [random_blocked(ex, b, k, s) for b, k, s in zip(bounds, ks, seeds)]
    for _ in range(n_power + 1):
        Qs = [Q for Q, _ in orthonormalize_many([op.symmat(Q) for op, Q in zip(ops, Qs)])]
    Ws = [op.symmat(Q) for op, Q in zip(ops, Qs)]
    Ts = ex.gather([Q.cross_parts(W) for Q, W in zip(Qs, Ws)])
    out = []
    for Q, T, rank in zip(Qs, Ts, ranks):
        T = sum_small(T)
        w, Vt = np.linalg.eigh(0.5 * (T + T.T))
        top = np.argsort(w)[::-1][:rank]
        out.append((combine(Q, np.ascontiguousarray(Vt[:, top]), None, None, name="eig"), w[top]))
    return out
