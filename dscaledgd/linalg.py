"""Small dense algebra on the client (NumPy/SciPy only): r × r factorisations.

One place for the ridge policy of Gram factorisations (STYLE.md rule 13), used
by the engine's CholeskyQR (:mod:`dscaledgd.engine.spectral`) and by the
solvers (:mod:`dscaledgd.solvers.reseed`).

Also the tensor algebra of the Tucker model (TensorLy's ``tenalg``
conventions): the mode-k unfolding ``M_k(T)`` is row-major and 0-based,
``unfold(T, k) = moveaxis(T, k, 0).reshape(n_k, -1)``, and ``T ×_k A``
multiplies mode ``k`` of ``T`` by ``A`` (``M_k(T ×_k A) = A M_k(T)``).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

__all__ = ["chol_upper", "unfold", "fold", "mode_product", "multi_mode_product"]


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


def unfold(T: np.ndarray, k: int) -> np.ndarray:
    """Mode-``k`` unfolding ``M_k(T)``, shape ``(n_k, Π_{j≠k} n_j)`` (row-major, 0-based)."""
    T = np.asarray(T)
    return np.moveaxis(T, k, 0).reshape(T.shape[k], -1)


def fold(M: np.ndarray, k: int, shape) -> np.ndarray:
    """Inverse of :func:`unfold`: the tensor of ``shape`` whose ``M_k`` is ``M``."""
    shape = tuple(int(s) for s in shape)
    moved = (shape[k],) + shape[:k] + shape[k + 1 :]
    return np.moveaxis(np.asarray(M).reshape(moved), 0, k)


def mode_product(T: np.ndarray, A: np.ndarray, k: int) -> np.ndarray:
    """``T ×_k A`` for ``A`` of shape ``(m, n_k)``: mode ``k`` of size ``n_k`` becomes ``m``.

    A single BLAS call with no transpose for the leading and trailing modes
    (``A @ M_0(T)`` and ``T_(…, n_d) @ Aᵀ``); a batched matmul otherwise. The
    result is C-contiguous.
    """
    T = np.asarray(T)
    A = np.asarray(A)
    if A.ndim != 2 or A.shape[1] != T.shape[k]:
        raise ValueError(
            f"mode_product: A must have shape (m, {T.shape[k]}) for mode {k} of a tensor of "
            f"shape {T.shape}; got {A.shape}."
        )
    k = k % T.ndim
    before = int(np.prod(T.shape[:k], dtype=np.int64))
    after = int(np.prod(T.shape[k + 1 :], dtype=np.int64))
    out_shape = T.shape[:k] + (A.shape[0],) + T.shape[k + 1 :]
    if before == 1:
        out = A @ T.reshape(T.shape[k], after)
    elif after == 1:
        out = T.reshape(before, T.shape[k]) @ A.T
    else:
        out = np.matmul(A, T.reshape(before, T.shape[k], after))
    return np.ascontiguousarray(out).reshape(out_shape)


def multi_mode_product(
    T: np.ndarray, mats, skip: int | None = None, transpose: bool = False
) -> np.ndarray:
    """``T ×_1 A_1 ⋯ ×_d A_d`` with ``A_k = mats[k]`` (``mats[k].T`` if ``transpose``).

    ``skip`` leaves one mode out (``T ×_{j≠skip} A_j``).
    """
    if len(mats) != np.ndim(T):
        raise ValueError(
            f"multi_mode_product: expected {np.ndim(T)} matrices, one per mode; got {len(mats)}."
        )
    for k, A in enumerate(mats):
        if skip is not None and k == skip % len(mats):
            continue
        T = mode_product(T, A.T if transpose else A, k)
    return T
