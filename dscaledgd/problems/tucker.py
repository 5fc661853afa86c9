"""Tucker tensor completion: what is minimised, per chunk.

The observed-entry loss of the Tucker model ``X = S ×_1 U_1 ⋯ ×_d U_d``
(core ``S`` of shape ``(r_1, …, r_d)``, factors ``U_k`` of shape
``(n_k, r_k)``) is

.. math::

    f(S, U_1, \\dots, U_d) = \\frac{1}{2p} \\| P_\\Omega(X) - Y \\|_F^2

with ``p = |Ω| / Π n_k`` (ALGORITHMS.md §7). With ``Z = P_Ω(X − Y)`` its
gradients are

.. math::

    \\nabla_{U_k} f = \\tfrac1p M_k(Z)\\, \\breve U_k
      = \\tfrac1p M_k(Z \\times_{j \\ne k} U_j^\\top)\\, M_k(S)^\\top,
    \\qquad
    \\nabla_S f = \\tfrac1p Z \\times_1 U_1^\\top \\cdots \\times_d U_d^\\top,

where ``Ŭ_k = M_k(S ×_{j≠k} U_j)ᵀ`` (``Π_{j≠k} n_j × r_k``) is never formed;
its Gram is ``Ŭ_kᵀŬ_k = M_k(S ×_{j≠k} U_jᵀU_j) M_k(S)ᵀ`` (:func:`breve_gram`).

Chunks
------
Every chunk kernel takes a chunk of the tensor (a sub-block at one position
of a regular chunk grid) in one of two layouts:

* **dense**: a float64 array with the chunk's shape, NaN marking a missing
  entry;
* **coo**: a tuple ``(index, values, shape)`` with ``index`` the ``(m, d)``
  int32 *chunk-local* indices (sorted lexicographically, C order), ``values``
  the ``m`` observed values and ``shape`` the chunk's shape.

and the factor blocks ``U`` covering the chunk: ``U[k]`` holds the rows of
``U_k`` for the chunk's extent along mode ``k``. Both layouts give the same
result up to rounding (about 1e-13 relative).

Cost. Dense chunks: about ``3 N r`` BLAS flops for ``N`` cells (the model
chunk ``X_c`` and two full-size contractions shared by all modes). Coo
chunks: one Numba sweep over the entries that reuses the contraction of the
core with the rows of the leading modes while the index prefix is unchanged,
so about ``3 r_d`` flops per entry plus ``O(Π r_k)`` per distinct
``(i_1, …, i_{d-1})`` fibre in sorted order (``O(Π r_k)`` per entry in any
order). Memory: dense, a few chunk-sized temporaries; coo, ``O(Π r_k)``.

No dask import here (DESIGN.md §1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..linalg import mode_product, multi_mode_product, unfold
from ._tucker_kernels import NO_CLIP, _coo_pass, _coo_values, _dense_residual, _fiber_gram
from .completion import spmm
from .spec import ProblemSpec

__all__ = [
    "SPEC", "chunk_pass", "chunk_residual_sumsq", "chunk_abs_residual", "chunk_stats",
    "chunk_leave_one_out",
    "chunk_abs_sum", "as_coo", "fiber_gram", "mode_rmatvec",
    "mode_matvec", "chunk_project", "predict", "breve_gram", "x_norm2", "reference_pass",
    "reference_spectral",
]  # fmt: skip

#: The constants of Tucker completion: ``f = (1/2p)‖P_Ω(X) − Y‖²`` (gradient scale
#: ``1/p``, loss scale ``1/2p``) and the paper's fixed η = 0.3 (ALGORITHMS.md §7). The
#: spectral init applies each mode Gram ``q + 2`` times (two data waves each) for the
#: ``d`` modes, counted here for ``d = 3``, plus one pass for the core ``(Y/p) ×_k U_kᵀ``.
SPEC = ProblemSpec(
    "tucker",
    default_eta=0.3,
    default_rule="guarded",
    scales=lambda p, symmetric, loss: (1.0 / p, 0.5 / p),
    spectral_passes=lambda q: 3 * 2 * (q + 2) + 1,
    guard_on="model",
)

#: Entries per batch of :func:`predict`.
PREDICT_BATCH = 65536


# ------------------------------------------------------------------ layouts
def _coo(chunk):
    """``(index, values, shape)`` checked: int index in bounds, float64 values."""
    if len(chunk) != 3:
        raise ValueError(
            f"A coo chunk is a tuple (index, values, shape); got a tuple of length {len(chunk)}."
        )
    index, values, shape = chunk
    shape = tuple(int(s) for s in shape)
    index = np.asarray(index)
    values = np.ascontiguousarray(values, dtype=np.float64)
    if index.ndim != 2 or index.shape != (len(values), len(shape)):
        raise ValueError(
            f"coo chunk: index must have shape (len(values), d) = ({len(values)}, "
            f"{len(shape)}); got {index.shape}."
        )
    if not np.issubdtype(index.dtype, np.integer):
        raise TypeError(f"coo chunk: index must be integer; got {index.dtype}.")
    if len(values) and ((index.min(axis=0) < 0).any() or (index.max(axis=0) >= shape).any()):
        raise ValueError(f"coo chunk: an index is outside the chunk's shape {shape}.")
    return np.ascontiguousarray(index), values, shape


def _dense(chunk):
    """``(Y0, missing)``: the chunk with missing entries set to 0, and the NaN mask."""
    Y = np.asarray(chunk, dtype=np.float64)
    missing = np.isnan(Y)
    return np.where(missing, 0.0, Y), missing


def _parse(chunk):
    """``(coo, shape)``: a coo chunk checked (``None`` for a dense one), and its shape."""
    if isinstance(chunk, tuple):
        coo = _coo(chunk)
        return coo, coo[2]
    return None, np.shape(chunk)


def _check_factors(U, core, shape) -> None:
    d = len(shape)
    if len(U) != d or (core is not None and np.ndim(core) != d):
        raise ValueError(
            f"Expected {d} factor blocks and a core of order {d} for a chunk of shape "
            f"{shape}; got {len(U)} blocks and a core of order {np.ndim(core)}."
        )
    for k, u in enumerate(U):
        ok = u.ndim == 2 and u.shape[0] == shape[k]
        if core is not None:
            ok = ok and u.shape[1] == core.shape[k]
        if not ok:
            raise ValueError(
                f"Factor block {k} has shape {u.shape}; expected ({shape[k]}, r_{k}) with r_{k} "
                f"= core.shape[{k}]."
            )


def _flat_factors(U):
    """Factors packed for the kernels: ``(ucat, offsets, ranks)``."""
    ranks = np.array([u.shape[1] for u in U], dtype=np.int64)
    sizes = np.array([u.size for u in U], dtype=np.int64)
    uoff = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    ucat = np.concatenate([np.ascontiguousarray(u, dtype=np.float64).ravel() for u in U])
    return ucat, uoff, ranks


_NO_SAMPLE = np.empty(0)


def _residual_chunk(chunk, U, core, zeta=NO_CLIP, tau=NO_CLIP, samp=_NO_SAMPLE):
    """``(Z, sums)`` of a dense chunk, ``Z = P_Ω(clip(X_c − Y_c, ±ζ))``: one fused sweep;
    ``sums = [Σ Z², Σ_obs Y², Σ_obs |X − Y|, #{|X − Y| > ζ}, #{|X − Y| > τ}]``."""
    Y = np.ascontiguousarray(chunk, dtype=np.float64)
    Z = np.ascontiguousarray(multi_mode_product(core, U))
    sums = _dense_residual(Z.reshape(-1), Y.reshape(-1), float(zeta), float(tau), samp)
    return Z, np.array(sums, dtype=np.float64)


def _coo_run(index, values, U, core, project: bool, zeta=NO_CLIP, tau=NO_CLIP, samp=_NO_SAMPLE):
    ucat, uoff, ranks = _flat_factors(U)
    gcat = np.zeros_like(ucat)
    cgrad = np.zeros(int(np.prod(ranks)))
    if core is None:
        core = np.zeros(len(cgrad))
    core = np.ascontiguousarray(core, dtype=np.float64).ravel()
    sums = _coo_pass(
        index,
        values,
        ucat,
        uoff,
        ranks,
        core,
        gcat,
        cgrad,
        project,
        float(zeta),
        float(tau),
        samp,
    )
    G = [gcat[o : o + u.size].reshape(u.shape) for o, u in zip(uoff, U)]
    return G, cgrad.reshape(tuple(ranks)), np.array(sums, dtype=np.float64)


def _values(index, U, core) -> np.ndarray:
    ucat, uoff, ranks = _flat_factors(U)
    core = np.ascontiguousarray(core, dtype=np.float64).ravel()
    return _coo_values(index, ucat, uoff, ranks, core, np.empty(len(index)))


# ------------------------------------------------------------------ dense helpers
def _leave_one_out(T, U, modes) -> dict:
    """``{k: T ×_{j ∈ modes, j ≠ k} U_jᵀ}`` for every ``k`` in ``modes``.

    Divide and conquer: each half of ``modes`` is contracted away once and
    the result shared by the other half, so a full-size tensor is contracted
    only twice whatever the order (the leading mode by a plain ``U_0ᵀ @ T``,
    the trailing one by ``T @ U_{d-1}``).
    """
    if len(modes) == 1:
        return {modes[0]: T}
    h = len(modes) // 2
    left, right = modes[:h], modes[h:]
    TL = T
    for j in reversed(right):
        TL = mode_product(TL, U[j].T, j)
    TR = T
    for j in left:
        TR = mode_product(TR, U[j].T, j)
    return {**_leave_one_out(TL, U, left), **_leave_one_out(TR, U, right)}


# ------------------------------------------------------------------ chunk kernels
def chunk_pass(
    chunk, U: Sequence[np.ndarray], core: np.ndarray, scale: float, zeta=NO_CLIP, tau=NO_CLIP,
    samp=None,
):  # fmt: skip
    """Residual, partial factor gradients and partial core gradient of one chunk.

    With ``Z = P_Ω(clip(X_c − Y_c, −ζ, ζ))`` on the chunk (``X_c = S ×_k U_k``, ``U_k`` the
    chunk's factor blocks):

    .. math::

        G_k = s\\, M_k(Z \\times_{j \\ne k} U_j^\\top) M_k(S)^\\top, \\qquad
        \\nabla_S = s\\, Z \\times_1 U_1^\\top \\cdots \\times_d U_d^\\top.

    Parameters
    ----------
    chunk : ndarray or tuple
        A dense chunk (NaN = missing) or a coo chunk ``(index, values, shape)``.
    U : list of d ndarrays, shapes ``(n_k,c, r_k)``
        The factor blocks covering the chunk.
    core : ndarray, shape ``(r_1, …, r_d)``
    scale : float
        Multiplies ``G`` and the core gradient (``1/p`` for the loss above).
    zeta : float, optional
        The clip level: tensor robust PCA's threshold ``ζ_t``
        (:mod:`dscaledgd.problems.tensor_rpca`); default no clip (completion).
    tau : float, optional
        A level whose exceedances ``|X − Y| > τ`` are counted (``sums[4]``).
    samp : ndarray of float64, optional
        Filled with ``|X − Y|`` of every ``k``-th entry (coo) or cell (dense,
        NaN where missing), ``k = ⌈m / len(samp)⌉``: a sample of the unclipped
        residual (tensor RPCA's fit-following threshold); entries past the
        last sampled one are left as they are.

    Returns
    -------
    G : list of d ndarrays, shapes ``(n_k,c, r_k)``
        The chunk's rows of ``scale · M_k(Z) Ŭ_k``.
    core_grad : ndarray, shape ``(r_1, …, r_d)``
    sums : ndarray, shape (5,)
        ``[Σ Z², Σ_obs Y², Σ_obs |X − Y|, #{|X − Y| > ζ}, #{|X − Y| > τ}]``
        (unscaled).
    """
    coo, shape = _parse(chunk)
    core = np.asarray(core, dtype=np.float64)
    _check_factors(U, core, shape)
    if coo is not None:
        index, values, _ = coo
        samp = _NO_SAMPLE if samp is None else samp
        G, cgrad, sums = _coo_run(index, values, U, core, False, zeta, tau, samp)
        return [scale * g for g in G], scale * cgrad, sums
    Z, sums = _residual_chunk(chunk, U, core, zeta, tau, _NO_SAMPLE if samp is None else samp)
    d = len(shape)
    A = _leave_one_out(Z, U, tuple(range(d)))
    G = [scale * (unfold(A[k], k) @ unfold(core, k).T) for k in range(d)]
    cgrad = scale * mode_product(A[0], U[0].T, 0)
    return G, cgrad, sums


def _residual_stat(chunk, U, core, absolute: bool) -> float:
    """``Σ_obs |X − Y|`` (``absolute``) or ``Σ_obs (X − Y)²`` over the chunk."""
    coo, shape = _parse(chunk)
    core = np.asarray(core, dtype=np.float64)
    _check_factors(U, core, shape)
    if coo is None:
        return float(_residual_chunk(chunk, U, core)[1][2 if absolute else 0])
    index, values, _ = coo
    z = _values(index, U, core) - values
    return float(np.abs(z).sum()) if absolute else float(z @ z)


def chunk_residual_sumsq(chunk, U: Sequence[np.ndarray], core: np.ndarray) -> float:
    """``Σ_obs (X − Y)²`` over the chunk (a validation error)."""
    return _residual_stat(chunk, U, core, absolute=False)


def chunk_abs_residual(chunk, U: Sequence[np.ndarray], core: np.ndarray) -> float:
    """``Σ_obs |X − Y|`` over the chunk (a robust validation error)."""
    return _residual_stat(chunk, U, core, absolute=True)


def chunk_leave_one_out(Y0: np.ndarray, U: Sequence[np.ndarray]) -> list:
    """Per mode ``k``, ``M_k(Y0 ×_{j≠k} U_jᵀ)`` of a dense chunk (missing entries as 0),
    shape ``(n_k,c, Π_{j≠k} r_j)``: one HOOI sweep's partial products."""
    Y0 = np.asarray(Y0, dtype=np.float64)
    _check_factors(U, None, Y0.shape)
    A = _leave_one_out(Y0, U, tuple(range(Y0.ndim)))
    return [unfold(A[k], k) for k in range(Y0.ndim)]


def chunk_stats(chunk):
    """Counts and squared sums of the observed entries of one chunk.

    Returns
    -------
    nnz : int
        Number of observed entries.
    sumsq : float
        ``Σ_obs y²``.
    rowsq : list of d ndarrays, shapes ``(n_k,c,)``
        Per mode, the sum of squares of the observed entries of each mode-k
        slice: the chunk's part of ``diag(M_k(Y) M_k(Y)ᵀ)``.
    counts : list of d int64 ndarrays, shapes ``(n_k,c,)``
        Per mode, the number of observed entries of each slice.
    """
    coo, shape = _parse(chunk)
    if coo is not None:
        index, values, _ = coo
        sq = values * values
        rowsq = [np.bincount(index[:, k], weights=sq, minlength=n) for k, n in enumerate(shape)]
        counts = [
            np.bincount(index[:, k], minlength=n).astype(np.int64) for k, n in enumerate(shape)
        ]
        return len(values), float(sq.sum()), rowsq, counts
    Y0, missing = _dense(chunk)
    mask = ~missing
    sq = Y0 * Y0
    d = Y0.ndim
    rowsq, counts = [], []
    for k in range(d):
        other = tuple(j for j in range(d) if j != k)
        rowsq.append(sq.sum(axis=other))
        counts.append(mask.sum(axis=other, dtype=np.int64))
    return int(mask.sum()), float(sq.sum()), rowsq, counts


def chunk_abs_sum(chunk) -> float:
    """``Σ_obs |y|`` of one chunk (dense: NaN = missing, or coo)."""
    coo, _ = _parse(chunk)
    if coo is not None:
        return float(np.abs(coo[1]).sum())
    return float(np.nansum(np.abs(np.asarray(chunk, dtype=np.float64))))


def _other_linear(index, shape, k) -> np.ndarray:
    """Row-major linear index of the modes other than ``k`` (the columns of ``M_k``)."""
    other = [j for j in range(len(shape)) if j != k]
    if not other:
        return np.zeros(len(index), np.int64)
    return np.ravel_multi_index(
        tuple(index[:, j].astype(np.int64) for j in other), tuple(shape[j] for j in other)
    )


def as_coo(chunk) -> tuple:
    """A dense chunk (NaN = missing) as a coo chunk ``(index, values, shape)``."""
    Y = np.asarray(chunk, dtype=np.float64)
    seen = ~np.isnan(Y)
    return np.argwhere(seen).astype(np.int32), np.ascontiguousarray(Y[seen]), Y.shape


def fiber_gram(parts, k: int, n: int, dense: bool = False) -> np.ndarray:
    """``M_k(Y_C) M_k(Y_C)ᵀ`` (missing entries as 0), ``n × n``, for the chunks ``parts``
    that share one block ``C`` of the other modes and together span mode ``k``.

    ``parts`` is a list of ``(chunk, offset)``: each chunk (dense with NaN, or coo) and the
    row of mode ``k`` where it starts. By default one sweep over the observed entries:
    sorted (stably, so the summation order is the parts' order) by their position in the
    other modes, and each fiber's outer product added, ``Σ_fibers m²`` multiply-adds for
    fibers of ``m`` entries. ``dense=True`` (dense chunks, mostly observed) stacks the
    unfoldings into one ``n × |C|`` array and multiplies it by its transpose (BLAS).
    Summing over the blocks ``C`` gives the mode's Gram ``G_k`` exactly.
    """
    if dense:
        ncols = int(np.prod(np.shape(parts[0][0]))) // np.shape(parts[0][0])[k]
        A = np.zeros((int(n), ncols))  # fresh, so aligned: the same BLAS path everywhere
        for chunk, off in parts:
            Yk = unfold(np.nan_to_num(np.asarray(chunk, dtype=np.float64), nan=0.0), k)
            A[int(off) : int(off) + Yk.shape[0]] = Yk
        G = A @ A.T
        return 0.5 * (G + G.T)
    cols, rows, vals = [], [], []
    for chunk, off in parts:
        coo, shape = _parse(chunk)
        index, values, _ = coo if coo is not None else as_coo(chunk)
        cols.append(_other_linear(index, shape, k))
        rows.append(index[:, k].astype(np.int64) + int(off))
        vals.append(np.asarray(values, dtype=np.float64))
    col = np.concatenate(cols)
    order = np.argsort(col, kind="stable")
    G = np.zeros((int(n), int(n)))
    return _fiber_gram(col[order], np.concatenate(rows)[order], np.concatenate(vals)[order], G)


def mode_rmatvec(chunk, k: int, V: np.ndarray) -> np.ndarray:
    """``M_k(Y_c)ᵀ V`` (missing entries as 0), shape ``(Π_{j≠k} n_j,c, q)``."""
    coo, shape = _parse(chunk)
    V = np.ascontiguousarray(V, dtype=np.float64)
    if V.ndim != 2 or V.shape[0] != shape[k]:
        raise ValueError(f"V must have shape ({shape[k]}, q); got {V.shape}.")
    if coo is not None:
        index, values, _ = coo
        cols = _other_linear(index, shape, k)
        out = np.zeros((int(np.prod(shape)) // shape[k], V.shape[1]))
        rows = np.ascontiguousarray(index[:, k])
        return spmm(cols, rows, values, V, out)
    Y0, _ = _dense(chunk)
    return unfold(Y0, k).T @ V


def mode_matvec(chunk, k: int, W: np.ndarray) -> np.ndarray:
    """``M_k(Y_c) W`` (missing entries as 0), shape ``(n_k,c, q)``."""
    coo, shape = _parse(chunk)
    W = np.ascontiguousarray(W, dtype=np.float64)
    ncols = int(np.prod(shape)) // shape[k]
    if W.ndim != 2 or W.shape[0] != ncols:
        raise ValueError(f"W must have shape ({ncols}, q); got {W.shape}.")
    if coo is not None:
        index, values, _ = coo
        cols = _other_linear(index, shape, k)
        out = np.zeros((shape[k], W.shape[1]))
        rows = np.ascontiguousarray(index[:, k])
        return spmm(rows, cols, values, W, out)
    Y0, _ = _dense(chunk)
    return unfold(Y0, k) @ W


def chunk_project(chunk, U: Sequence[np.ndarray], scale: float) -> np.ndarray:
    """``scale · Y_c ×_1 U_1ᵀ ⋯ ×_d U_dᵀ`` (missing = 0), shape ``(r_1, …, r_d)``."""
    coo, shape = _parse(chunk)
    _check_factors(U, None, shape)
    if coo is not None:
        index, values, _ = coo
        _, cgrad, _ = _coo_run(index, values, U, None, project=True)
        return scale * cgrad
    Y0, _ = _dense(chunk)
    return scale * multi_mode_product(Y0, U, transpose=True)


def predict(index, U: Sequence[np.ndarray], core: np.ndarray) -> np.ndarray:
    """Values of ``X = S ×_k U_k`` at global indices.

    Parameters
    ----------
    index : array of int, shape (m, d)
    U : list of d full factors, shapes ``(n_k, r_k)``
    core : ndarray, shape ``(r_1, …, r_d)``

    Returns
    -------
    ndarray of float64, shape (m,)

    Notes
    -----
    Batches of :data:`PREDICT_BATCH` entries; extra memory is one batch of
    indices. Entries in sorted order are fastest (shared prefixes).
    """
    index = np.asarray(index)
    core = np.asarray(core, dtype=np.float64)
    shape = tuple(u.shape[0] for u in U)
    _check_factors(U, core, shape)
    if index.ndim != 2 or index.shape[1] != len(U):
        raise ValueError(f"index must have shape (m, {len(U)}); got {index.shape}.")
    if not np.issubdtype(index.dtype, np.integer):
        raise TypeError(f"index must be integer; got {index.dtype}.")
    ucat, uoff, ranks = _flat_factors(U)
    flat = np.ascontiguousarray(core).ravel()
    out = np.empty(len(index))
    for b0 in range(0, len(index), PREDICT_BATCH):
        idx = np.ascontiguousarray(index[b0 : b0 + PREDICT_BATCH], dtype=np.int64)
        if (idx.min(axis=0) < 0).any() or (idx.max(axis=0) >= shape).any():
            raise ValueError(f"An index is outside the tensor's shape {shape}.")
        _coo_values(idx, ucat, uoff, ranks, flat, out[b0 : b0 + len(idx)])
    return out


# ------------------------------------------------------------------ small Grams
def breve_gram(core: np.ndarray, FF: Sequence[np.ndarray], k: int) -> np.ndarray:
    """``Ŭ_kᵀŬ_k = M_k(S ×_{j≠k} FF_j) M_k(S)ᵀ`` (``r_k × r_k``) from ``FF_j = U_jᵀU_j``."""
    T = multi_mode_product(core, FF, skip=k)
    return unfold(T, k) @ unfold(core, k).T


def x_norm2(core: np.ndarray, FF: Sequence[np.ndarray]) -> float:
    """``‖X‖_F² = tr(FF_k Ŭ_kᵀŬ_k)`` (any ``k``; ``k = 0`` here)."""
    return float(np.sum(FF[0] * breve_gram(core, FF, 0)))


# ------------------------------------------------------------------ references
def _full(core, U) -> np.ndarray:
    X = np.asarray(core, dtype=np.float64)
    for k, u in enumerate(U):
        X = np.moveaxis(np.tensordot(u, X, axes=(1, k)), 0, k)
    return X


def reference_pass(Y: np.ndarray, U: Sequence[np.ndarray], core: np.ndarray, p: float):
    """Plain full-tensor formulas of ALGORITHMS.md §7 (the test oracle).

    ``Y`` is the whole tensor (NaN = missing) and ``U`` the full factors.
    ``Ŭ_k`` is formed explicitly, which is what makes this an independent
    check of :func:`chunk_pass`; use on small tensors only.

    Returns
    -------
    loss : float
        ``(1/2p) ‖P_Ω(X) − Y‖²``.
    G : list of d ndarrays
        ``(1/p) M_k(Z) Ŭ_k``.
    core_grad : ndarray
        ``(1/p) Z ×_k U_kᵀ``.
    """
    Y = np.asarray(Y, dtype=np.float64)
    mask = ~np.isnan(Y)
    X = _full(core, U)
    Z = np.where(mask, X - np.where(mask, Y, 0.0), 0.0)
    d = Y.ndim
    G = []
    for k in range(d):
        others = [U[j] if j != k else np.eye(core.shape[k]) for j in range(d)]
        Ubreve = np.moveaxis(_full(core, others), k, 0).reshape(core.shape[k], -1).T
        G.append(np.moveaxis(Z, k, 0).reshape(Y.shape[k], -1) @ Ubreve / p)
    core_grad = _full(Z, [u.T for u in U]) / p
    return float(np.sum(Z * Z)) / (2 * p), G, core_grad


def reference_spectral(Y: np.ndarray, ranks: Sequence[int], p: float | None = None):
    """Spectral initialisation of ALGORITHMS.md §7 on a dense tensor (NaN = missing).

    ``U_k0`` holds the top-``r_k`` eigenvectors of ``G_k + (p − 1) diag(G_k)``
    with ``G_k = M_k(Y0) M_k(Y0)ᵀ`` (``Y0``: missing set to 0), and
    ``S0 = (Y0/p) ×_k U_k0ᵀ``. ``p`` defaults to the observed fraction.

    Returns
    -------
    core : ndarray, shape ``ranks``
    factors : list of d ndarrays, shapes ``(n_k, r_k)``
    """
    Y = np.asarray(Y, dtype=np.float64)
    mask = ~np.isnan(Y)
    Y0 = np.where(mask, Y, 0.0)
    if p is None:
        p = mask.mean()
    factors = []
    for k, r in enumerate(ranks):
        Yk = np.moveaxis(Y0, k, 0).reshape(Y.shape[k], -1)
        Gk = Yk @ Yk.T
        w, V = np.linalg.eigh(Gk + (p - 1) * np.diag(np.diag(Gk)))
        factors.append(np.ascontiguousarray(V[:, np.argsort(w)[::-1][:r]]))
    core = _full(Y0 / p, [u.T for u in factors])
    return core, factors
