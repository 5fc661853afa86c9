"""Robust PCA: the sparsifier ``T_α`` and the soft threshold, per chunk.

Robust PCA models ``Y = X* + S*`` with ``X*`` low rank and ``S*`` sparse
(ALGORITHMS.md §5). Every iteration re-estimates the sparse part with the
sparsifier ``T_α``: for ``Z`` of shape ``(n1, n2)``,

.. math::

    [T_\\alpha(Z)]_{ij} = Z_{ij} \\; \\text{if} \\; |Z_{ij}| \\ge \\max(r_i, c_j)
    \\; \\text{and} \\; |Z_{ij}| > 0, \\qquad 0 \\; \\text{otherwise},

where ``r_i`` is the ``k_{r,i}``-th largest ``|Z_i·|`` of row ``i`` and
``c_j`` the ``k_{c,j}``-th largest ``|Z_·j|`` of column ``j`` (counted with
multiplicity). The sizes come from the observed (non-NaN) counts,
``k_{r,i} = ⌊α · #observed in row i⌋`` and ``k_{c,j} = ⌊α · #observed in
column j⌋``; for a fully observed ``Z`` these are ``⌊α n2⌋`` and ``⌊α n1⌋``
(see :func:`topk_sizes` for how the floor is taken). ``k = 0`` gives the
threshold ``+inf``: nothing of that row (column) is kept.

**Tie rule.** An entry equal to its threshold is kept. With ties a row
(column) can therefore keep more than ``k`` entries: a row whose entries all
have the same magnitude keeps every entry that also passes its column rule.
Equivalently, ``Z_ij`` is kept iff fewer than ``k_{r,i}`` observed entries of
row ``i`` and fewer than ``k_{c,j}`` observed entries of column ``j`` are
*strictly* larger in magnitude, and ``|Z_ij| > 0``. Missing entries (NaN) are
never kept and never counted.

**Chunked evaluation.** The thresholds are exact order statistics, so they
can be computed from a grid of chunks without any approximation:

1. :func:`observed_counts` per chunk, summed over the grid, then
   :func:`topk_sizes` (only needed once per data set: the missing pattern of
   ``Y − L Rᵀ`` is that of ``Y``);
2. :func:`row_topk` / :func:`col_topk` per chunk: the ``K`` largest
   magnitudes of each row / column of the chunk, ``K = max_i k_i``;
3. :func:`merge_topk` along the grid (associative and commutative, so a tree
   reduction of any shape gives the same bits);
4. :func:`thresholds` picks the ``k_i``-th largest from the merged candidates;
5. :func:`sparsify` per chunk.

:func:`t_alpha_chunked` runs exactly these steps on a NumPy matrix and equals
the dense reference :func:`t_alpha_dense` bitwise for every chunking, ties
included: the thresholds are copies of entries of ``|Z|`` (no arithmetic), and
the output holds either a copy of ``Z_ij`` or ``+0.0``.

The soft threshold of tensor RPCA (ALGORITHMS.md §8) is
:func:`soft_threshold`.

No dask import here (DESIGN.md §1).
"""

from __future__ import annotations

import numpy as np

from .spec import ProblemSpec

__all__ = [
    "topk_sizes",
    "observed_counts",
    "row_topk",
    "col_topk",
    "merge_topk",
    "thresholds",
    "sparsify",
    "t_alpha_dense",
    "t_alpha_chunked",
    "soft_threshold",
]


#: the constants of robust PCA: ``f = (1/2p)‖P_Ω(X + S − Y)‖²``, η = 0.5 (ALGORITHMS.md §5);
#: the spectral init costs the randomized SVD plus the T_α pass (two sweeps)
SPEC = ProblemSpec(
    "rpca",
    default_eta=0.5,
    scales=lambda p, symmetric, loss: (1.0 / p, 0.5 / p),
    spectral_passes=lambda q: 2 * q + 4,
)

# Relative nudge applied before the floor in ``topk_sizes`` so that decimal
# fractions give the decimal answer (0.29 * 100 is 28.999999999999996 in
# binary floating point; we want 29). A product alpha * n with a few-digit
# decimal alpha is either an integer or at least 10**-digits away from one, so
# the nudge (~1.8e-15 relative) cannot push a true non-integer over an integer
# unless n * 10**digits exceeds ~5e14.
_FLOOR_NUDGE = 8.0 * np.finfo(np.float64).eps


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
    return alpha


def _as_matrix(Z, name: str = "Z") -> np.ndarray:
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {Z.shape}.")
    return Z


def _check_k(k) -> int:
    k = int(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}.")
    return k


def topk_sizes(counts, alpha: float) -> np.ndarray:
    """Per-row (or per-column) sparsity budget ``k = ⌊α · count⌋``.

    Parameters
    ----------
    counts : int or array_like of int, shape (m,)
        Number of observed (non-NaN) entries of each row or column, as summed
        from :func:`observed_counts`; for fully observed data, ``n2`` for the
        rows and ``n1`` for the columns.
    alpha : float in [0, 1]
        Outlier fraction.

    Returns
    -------
    k : ndarray of int64, shape of ``counts``
        ``⌊α · count⌋``, taken on the decimal value of ``α`` (a relative nudge
        of 8 machine epsilons before the floor makes ``0.29 · 100`` give 29
        rather than 28). Always ``0 <= k <= count``.

    Examples
    --------
    >>> topk_sizes([100, 10, 3], 0.29).tolist()
    [29, 2, 0]
    """
    alpha = _check_alpha(alpha)
    c = np.asarray(counts, dtype=np.int64)
    if np.any(c < 0):
        raise ValueError("counts must be non-negative.")
    k = np.floor(alpha * c.astype(np.float64) * (1.0 + _FLOOR_NUDGE)).astype(np.int64)
    return np.minimum(k, c)


def observed_counts(Z_chunk) -> tuple[np.ndarray, np.ndarray]:
    """Per-row and per-column numbers of observed (non-NaN) entries of a chunk.

    Parameters
    ----------
    Z_chunk : array_like, shape (m, n)
        NaN marks a missing entry.

    Returns
    -------
    row_counts : ndarray of int64, shape (m,)
    col_counts : ndarray of int64, shape (n,)
        Chunk-local counts; the caller sums ``row_counts`` over the chunks of
        a row block and ``col_counts`` over the chunks of a column block.
    """
    obs = ~np.isnan(_as_matrix(Z_chunk, "Z_chunk"))
    return obs.sum(axis=1, dtype=np.int64), obs.sum(axis=0, dtype=np.int64)


def _topk_last_axis(A: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest of each row of ``A`` (no NaN), descending, -inf padded.

    ``A`` may be overwritten (it is partitioned in place).
    """
    m, n = A.shape
    if k == 0:
        return np.empty((m, 0), dtype=np.float64)
    if k < n:
        # O(n) selection, then sort only the k survivors.
        A.partition(n - k, axis=1)
        top = A[:, n - k :]
    else:
        top = A
    top = np.sort(top, axis=1)[:, ::-1]
    if top.shape[1] < k:
        pad = np.full((m, k - top.shape[1]), -np.inf)
        top = np.concatenate([top, pad], axis=1)
    return np.ascontiguousarray(top)


def _magnitudes(Z_chunk) -> np.ndarray:
    """``|Z|`` as a new float64 array, with NaN (missing) replaced by ``-inf``."""
    A = np.abs(_as_matrix(Z_chunk, "Z_chunk"))
    np.copyto(A, -np.inf, where=np.isnan(A))
    return A


def row_topk(Z_chunk, k: int) -> np.ndarray:
    """The ``k`` largest magnitudes of each row of a chunk.

    Parameters
    ----------
    Z_chunk : array_like, shape (m, n)
        NaN marks a missing entry; it is never a candidate.
    k : int >= 0
        Number of candidates per row; for partially observed data use
        ``max_i k_i`` (or any upper bound) of the row budgets.

    Returns
    -------
    top : ndarray of float64, shape (m, k)
        ``top[i]`` holds the ``k`` largest ``|Z_i·|`` in descending order,
        counted with multiplicity (ties are all kept), padded with ``-inf``
        where the row has fewer than ``k`` observed entries.

    Notes
    -----
    ``O(m n)`` time by ``np.partition`` plus ``O(m k log k)`` to sort the
    survivors; memory is one ``(m, n)`` float64 temporary.

    Examples
    --------
    >>> row_topk([[1.0, -3.0, np.nan, 2.0]], 2).tolist()
    [[3.0, 2.0]]
    >>> row_topk([[1.0, np.nan]], 2).tolist()
    [[1.0, -inf]]
    """
    k = _check_k(k)
    return _topk_last_axis(_magnitudes(Z_chunk), k)


def col_topk(Z_chunk, k: int) -> np.ndarray:
    """The ``k`` largest magnitudes of each column of a chunk: ``row_topk(Z_chunk.T, k).T``.

    The parameters are those of :func:`row_topk` (``k`` candidates per column);
    the result, of shape ``(k, n)``, holds in ``top[:, j]`` the ``k`` largest
    ``|Z_·j|`` in descending order, with multiplicity, ``-inf`` padded. Same
    cost as :func:`row_topk` (the selection runs on a transposed copy).
    """
    k = _check_k(k)
    A = np.ascontiguousarray(_magnitudes(Z_chunk).T)
    return np.ascontiguousarray(_topk_last_axis(A, k).T)


def merge_topk(parts: list[np.ndarray], k: int, axis: int) -> np.ndarray:
    """Merge top-k candidate arrays of several chunks into the ``k`` largest.

    Parameters
    ----------
    parts : list of ndarray
        Candidate arrays as returned by :func:`row_topk` (shapes ``(m, k_p)``,
        ``axis=1``: the column chunks of one row block) or :func:`col_topk`
        (shapes ``(k_p, n)``, ``axis=0``: the row chunks of one column block),
        or earlier outputs of this function. Widths ``k_p`` may differ; the
        other dimension must agree. Values are magnitudes, ``-inf`` = none.
    k : int >= 0
        Number of candidates to keep.
    axis : {0, 1}
        The candidate axis: 1 for row candidates, 0 for column candidates.

    Returns
    -------
    top : ndarray of float64, shape (m, k) for ``axis=1`` or (k, n) for ``axis=0``
        The ``k`` largest values of the multiset union of the parts along
        ``axis``, descending, ``-inf`` padded.

    Notes
    -----
    The top ``k`` of a multiset union equals the top ``k`` of the union of
    the parts' top ``k``, so the merge is associative and commutative and its
    result is bitwise independent of the reduction tree. Cost
    ``O(m · Σ k_p)``.
    """
    k = _check_k(k)
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (column candidates) or 1 (row candidates), got {axis}.")
    if len(parts) == 0:
        raise ValueError("merge_topk needs at least one part.")
    arrs = [np.asarray(p, dtype=np.float64) for p in parts]
    for p in arrs:
        if p.ndim != 2:
            raise ValueError(f"candidate arrays must be 2-D, got shape {p.shape}.")
    if axis == 0:
        arrs = [p.T for p in arrs]
    m = arrs[0].shape[0]
    if any(p.shape[0] != m for p in arrs):
        raise ValueError(
            "candidate arrays disagree on the non-candidate dimension: "
            f"{[p.T.shape if axis == 0 else p.shape for p in arrs]}."
        )
    A = np.concatenate(arrs, axis=1)  # always a fresh array
    top = _topk_last_axis(A, k)
    return np.ascontiguousarray(top.T) if axis == 0 else top


def thresholds(top: np.ndarray, k, axis: int) -> np.ndarray:
    """Per-row or per-column thresholds from merged candidates.

    Parameters
    ----------
    top : ndarray, shape (m, K) for ``axis=1`` or (K, n) for ``axis=0``
        Merged candidates (:func:`merge_topk`) over the *whole* row (column):
        descending magnitudes, ``-inf`` padded.
    k : int or array_like of int, shape (m,) or (n,)
        Budget per row (column), ``0 <= k <= K``; an array for partially
        observed data (:func:`topk_sizes` of the observed counts).
    axis : {0, 1}
        1 for row thresholds, 0 for column thresholds.

    Returns
    -------
    thr : ndarray of float64, shape (m,) or (n,)
        With ``c`` the number of observed (``> -inf``) candidates of the row:

        * ``k == 0``: ``+inf`` (nothing is kept);
        * ``0 < k <= c``: ``top[i, k - 1]``, the k-th largest magnitude;
        * ``0 < k`` and ``c < k`` (fewer observed values than the budget,
          which :func:`topk_sizes` never produces): ``top[i, c - 1]``, the
          smallest observed magnitude, so every observed entry passes the row
          rule; ``+inf`` when ``c == 0`` (nothing is observed).

    Examples
    --------
    >>> top = np.array([[5.0, 3.0, 3.0], [2.0, -np.inf, -np.inf]])
    >>> thresholds(top, [2, 3], axis=1).tolist()
    [3.0, 2.0]
    >>> thresholds(top, 0, axis=1).tolist()
    [inf, inf]
    """
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (column thresholds) or 1 (row thresholds), got {axis}.")
    top = np.asarray(top, dtype=np.float64)
    if top.ndim != 2:
        raise ValueError(f"top must be 2-D, got shape {top.shape}.")
    if axis == 0:
        top = top.T
    m, K = top.shape
    kk = np.broadcast_to(np.asarray(k, dtype=np.int64), (m,))
    if np.any(kk < 0) or np.any(kk > K):
        raise ValueError(
            f"k must be in [0, {K}] (the number of candidates); got values in "
            f"[{kk.min() if m else 0}, {kk.max() if m else 0}]. Compute the candidates with "
            "k >= max(k)."
        )
    n_obs = np.count_nonzero(top > -np.inf, axis=1)
    eff = np.minimum(kk, n_obs)
    thr = np.full(m, np.inf)
    has = eff > 0
    thr[has] = top[np.flatnonzero(has), eff[has] - 1]
    return thr


def sparsify(Z_chunk, row_thr, col_thr) -> np.ndarray:
    """Apply the thresholds to one chunk.

    Parameters
    ----------
    Z_chunk : array_like, shape (m, n)
        NaN marks a missing entry.
    row_thr : array_like, shape (m,)
        Thresholds of the chunk's rows (:func:`thresholds`, ``axis=1``).
    col_thr : array_like, shape (n,)
        Thresholds of the chunk's columns (:func:`thresholds`, ``axis=0``).

    Returns
    -------
    S : ndarray of float64, shape (m, n)
        ``S_ij = Z_ij`` where ``|Z_ij| >= max(row_thr[i], col_thr[j])`` and
        ``|Z_ij| > 0`` (so never where ``Z_ij`` is NaN), ``+0.0`` elsewhere.
        Entries equal to a threshold are kept.

    Examples
    --------
    >>> sparsify([[3.0, -1.0], [np.nan, 2.0]], [1.0, 0.0], [3.0, 2.0]).tolist()
    [[3.0, 0.0], [0.0, 2.0]]
    """
    Z = _as_matrix(Z_chunk, "Z_chunk")
    r = np.asarray(row_thr, dtype=np.float64)
    c = np.asarray(col_thr, dtype=np.float64)
    if r.shape != (Z.shape[0],) or c.shape != (Z.shape[1],):
        raise ValueError(
            f"row_thr and col_thr must have shapes ({Z.shape[0]},) and ({Z.shape[1]},), "
            f"got {r.shape} and {c.shape}."
        )
    A = np.abs(Z)
    keep = (A >= np.maximum(r[:, None], c[None, :])) & (A > 0.0)  # NaN compares False
    return np.where(keep, Z, 0.0)


def t_alpha_dense(Z, alpha: float) -> np.ndarray:
    """The sparsifier ``T_α`` on a whole matrix (the test oracle).

    Parameters
    ----------
    Z : array_like, shape (n1, n2)
        NaN marks a missing entry.
    alpha : float in [0, 1]
        Outlier fraction; the budgets are ``k_{r,i} = topk_sizes(obs_row_i, α)``
        and ``k_{c,j} = topk_sizes(obs_col_j, α)``, i.e. ``⌊α n2⌋`` and
        ``⌊α n1⌋`` for fully observed ``Z``.

    Returns
    -------
    S : ndarray of float64, shape (n1, n2)
        ``Z_ij`` where ``|Z_ij| >= max(r_i, c_j)`` and ``|Z_ij| > 0``, ``+0.0``
        elsewhere; ``r_i`` (``c_j``) is the ``k_{r,i}``-th (``k_{c,j}``-th)
        largest observed magnitude of row ``i`` (column ``j``), ``+inf`` when
        the budget is 0. Ties at a threshold are kept (see the module notes).

    Notes
    -----
    Sorts every row and column in full: ``O(n1 n2 log n)`` time and three
    ``(n1, n2)`` temporaries. Use :func:`t_alpha_chunked` or the engine for
    large inputs.

    Examples
    --------
    >>> Z = np.array([[9.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 1.0, -7.0]])
    >>> t_alpha_dense(Z, 0.34)
    array([[ 9.,  0.,  0.],
           [ 0.,  2.,  0.],
           [ 0.,  0., -7.]])
    """
    alpha = _check_alpha(alpha)
    Z = _as_matrix(Z)
    n1, n2 = Z.shape
    A = np.abs(Z)
    A[np.isnan(A)] = -np.inf
    obs = A > -np.inf
    k_r = topk_sizes(obs.sum(axis=1), alpha)
    k_c = topk_sizes(obs.sum(axis=0), alpha)
    # Full descending sorts; missing (-inf) entries sort last and k <= #observed.
    row_sorted = -np.sort(-A, axis=1)
    col_sorted = -np.sort(-A, axis=0)
    r = np.full(n1, np.inf)
    c = np.full(n2, np.inf)
    i = np.flatnonzero(k_r > 0)
    j = np.flatnonzero(k_c > 0)
    r[i] = row_sorted[i, k_r[i] - 1]
    c[j] = col_sorted[k_c[j] - 1, j]
    keep = obs & (A >= r[:, None]) & (A >= c[None, :]) & (A > 0.0)
    return np.where(keep, Z, 0.0)


def _tree_merge(parts: list[np.ndarray], k: int, axis: int) -> np.ndarray:
    """Pairwise (tree) reduction with :func:`merge_topk`, like a Dask tree-reduce."""
    while len(parts) > 1:
        parts = [merge_topk(parts[i : i + 2], k, axis) for i in range(0, len(parts), 2)]
    return merge_topk(parts, k, axis)


def t_alpha_chunked(Z, alpha: float, chunks: tuple[int, int]) -> np.ndarray:
    """``T_α`` computed chunk by chunk: the reference for the distributed engine.

    Parameters
    ----------
    Z : array_like, shape (n1, n2)
        NaN marks a missing entry.
    alpha : float in [0, 1]
        Outlier fraction, as in :func:`t_alpha_dense`.
    chunks : (int, int)
        Chunk sizes ``(b1, b2)``; the last chunk of a row/column may be smaller.

    Returns
    -------
    S : ndarray of float64, shape (n1, n2)
        Bitwise equal to ``t_alpha_dense(Z, alpha)`` for every chunking.

    Notes
    -----
    The steps, each a per-chunk function a task graph can call:

    1. :func:`observed_counts` per chunk, summed along the grid;
       :func:`topk_sizes` gives the budgets ``k_r`` (n1,) and ``k_c`` (n2,).
    2. :func:`row_topk` with ``K_r = max(k_r)`` and :func:`col_topk` with
       ``K_c = max(k_c)`` per chunk.
    3. :func:`merge_topk` over the chunks of each row block (``axis=1``) and
       of each column block (``axis=0``), as a pairwise tree.
    4. :func:`thresholds` per row block and per column block.
    5. :func:`sparsify` per chunk.

    Communication: per chunk ``(b1, K_r)`` row and ``(K_c, b2)`` column
    candidates, i.e. about ``2α`` times the chunk size; then ``n1 + n2``
    thresholds.
    """
    alpha = _check_alpha(alpha)
    Z = _as_matrix(Z)
    b1, b2 = (int(b) for b in chunks)
    if b1 < 1 or b2 < 1:
        raise ValueError(f"chunk sizes must be positive, got {chunks!r}.")
    n1, n2 = Z.shape
    rs = [slice(a, min(a + b1, n1)) for a in range(0, n1, b1)]
    cs = [slice(a, min(a + b2, n2)) for a in range(0, n2, b2)]

    # 1. budgets from the observed counts.
    row_cnt = np.zeros(n1, dtype=np.int64)
    col_cnt = np.zeros(n2, dtype=np.int64)
    for ri in rs:
        for cj in cs:
            rc, cc = observed_counts(Z[ri, cj])
            row_cnt[ri] += rc
            col_cnt[cj] += cc
    k_r = topk_sizes(row_cnt, alpha)
    k_c = topk_sizes(col_cnt, alpha)
    K_r = int(k_r.max()) if n1 else 0
    K_c = int(k_c.max()) if n2 else 0

    # 2-4. candidates per chunk, merged along the grid, then thresholds.
    row_thr = np.empty(n1)
    col_thr = np.empty(n2)
    for ri in rs:
        top = _tree_merge([row_topk(Z[ri, cj], K_r) for cj in cs], K_r, axis=1)
        row_thr[ri] = thresholds(top, k_r[ri], axis=1)
    for cj in cs:
        top = _tree_merge([col_topk(Z[ri, cj], K_c) for ri in rs], K_c, axis=0)
        col_thr[cj] = thresholds(top, k_c[cj], axis=0)

    # 5. sparsify per chunk.
    S = np.empty((n1, n2))
    for ri in rs:
        for cj in cs:
            S[ri, cj] = sparsify(Z[ri, cj], row_thr[ri], col_thr[cj])
    return S


def soft_threshold(x, zeta) -> np.ndarray:
    """Soft thresholding ``thre(x, ζ) = sign(x) · max(|x| − ζ, 0)``.

    Parameters
    ----------
    x : array_like
        Any shape; NaN stays NaN.
    zeta : float or array_like, broadcastable to ``x``, ``>= 0``
        The threshold ``ζ``.

    Returns
    -------
    out : ndarray of float64, shape of ``x`` broadcast with ``zeta``
        ``x − ζ`` where ``x > ζ``, ``x + ζ`` where ``x < −ζ``, ``+0.0`` where
        ``|x| <= ζ`` (never ``-0.0``), NaN where ``x`` is NaN. Computed as
        ``x − clip(x, −ζ, ζ)``, which rounds exactly like the formula.

    Examples
    --------
    >>> soft_threshold([3.0, -0.5, -2.0, np.nan], 1.0).tolist()
    [2.0, 0.0, -1.0, nan]
    """
    x = np.asarray(x, dtype=np.float64)
    zeta = np.asarray(zeta, dtype=np.float64)
    if np.any(zeta < 0) or np.any(np.isnan(zeta)):
        raise ValueError("zeta must be non-negative (and not NaN).")
    return x - np.clip(x, -zeta, zeta)
