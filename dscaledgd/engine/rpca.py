"""Robust PCA on dense chunks: the engine behind :func:`dscaledgd.rpca`.

``Y = X* + S*`` is a dense ``n1 × n2`` matrix (NumPy or Dask, NaN = missing)
cut into a grid of blocks that stay on the workers. One pass at
``X = L Rᵀ`` (ALGORITHMS.md §5) with a line-threshold sparsifier ``𝒮``
(:mod:`dscaledgd.problems.sparsify`: ``T_2α`` or the adaptive rule):

1. per block, ``Z = Y − X`` and its per-row and per-column top-``k``
   magnitudes (:mod:`dscaledgd.problems.rpca`), ``k`` the order statistic the
   sparsifier reads (``⌊2α n⌋``, or ``⌈n/2⌉`` for the median);
2. per row block and per column block, the candidates are merged into the
   ``k``-th largest and mapped to the thresholds of ``𝒮`` (tasks, not the
   client);
3. per block, ``S = 𝒮(Z)`` and ``D = X + S − Y = S − Z`` on the observed
   entries, the partial gradients ``D R_b`` and ``Dᵀ L_a`` and ``Σ D²``.

The loss is ``f = (1/2p) ‖P_Ω(X + S − Y)‖²`` with ``p`` the observed
fraction, so ``∇_L = D R / p``; ``X`` is recomputed in step 3 rather than
holding ``Z`` between the steps (memory: the ``Y`` blocks plus one block of
temporaries per task). A block sends at most its own size in candidates
(``min(k, block side)`` per line).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..exceptions import InputDataError
from ..problems import rpca as pr
from ..problems.sparsify import Sparsifier
from ..storage.layout import balanced_bounds
from .base import FactorEngine
from .blockwise import map_reduce
from .factors import Blocked, sum_small

__all__ = ["RPCAEngine"]


def _block_of(Y, r0, r1, c0, c1):
    return np.ascontiguousarray(Y[r0:r1, c0:c1], dtype=np.float64)


def _counts(Yb):
    """Observed counts per row and column, and the first infinite entry (or ``None``)."""
    rc, cc = pr.observed_counts(Yb)
    bad = np.isinf(Yb)
    first = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else None
    return rc, cc, first


def _sumsq(Yb):
    with np.errstate(over="ignore"):  # inf: refused by the caller with a message
        return float(np.nansum(Yb * Yb))


def _residual(Yb, L, R):
    return Yb - L @ R.T  # NaN (missing) stays NaN


def _candidates(Yb, L, R, kr, kc):
    Z = Yb if L is None else _residual(Yb, L, R)
    # never more candidates than the block has entries per line (merge_topk pads)
    return pr.row_topk(Z, min(kr, Z.shape[1])), pr.col_topk(Z, min(kc, Z.shape[0]))


def _merge(parts, k, axis, ks, sparsifier, it):
    kth = pr.thresholds(pr.merge_topk(list(parts), k, axis), ks, axis)
    return sparsifier.thresholds(kth, it)


def _sparse_block(Yb, L, R, rthr, cthr):
    Z = Yb if L is None else _residual(Yb, L, R)
    return Sparsifier.apply(Z, rthr, cthr)


def _grad_block(Yb, L, R, rthr, cthr, scale):
    Z = _residual(Yb, L, R)
    S = Sparsifier.apply(Z, rthr, cthr)
    D = np.where(np.isnan(Z), 0.0, S - Z)  # X + S − Y on the observed entries
    sq = float(np.sum(D * D))
    return scale * (D @ R), scale * (D.T @ L), np.array([sq, sq])


def _spmm_block(Yb, Sb, V, transpose):
    M = np.where(np.isnan(Yb), 0.0, Yb - Sb)
    return M.T @ V if transpose else M @ V


@dataclass
class RPCAPass:
    G: list
    small: list


class RPCAEngine(FactorEngine):
    """Robust PCA passes over the dense blocks of ``Y`` on an executor.

    Parameters
    ----------
    Y : ndarray or dask array, shape (n1, n2)
        NaN marks a missing entry.
    ex : Executor
    sparsifier : Sparsifier
        The rule ``S = 𝒮(Y − L Rᵀ)`` (:mod:`dscaledgd.problems.sparsify`);
        its ``it=None`` form gives the initialisation's ``S₀ = 𝒮(Y)``.

    Raises
    ------
    InputDataError
        When ``Y`` holds an infinite entry (found block by block as the
        blocks are first placed, before any iteration) or no observed entry.
    grid : (a, b), optional
        Row and column blocks (default: the Dask chunks, else about two row
        stripes per thread).
    """

    spec = pr.SPEC

    def __init__(self, Y, ex, *, sparsifier: Sparsifier, grid=None):
        self.ex, self.symmetric, self.sparsifier = ex, False, sparsifier
        n1, n2 = (int(s) for s in Y.shape)
        if hasattr(Y, "chunks") and grid is None:
            rb = np.concatenate([[0], np.cumsum(Y.chunks[0])]).astype(np.int64)
            cb = np.concatenate([[0], np.cumsum(Y.chunks[1])]).astype(np.int64)
        else:
            a, b = grid or (max(1, min(n1, 2 * ex.nthreads)), 1)
            rb = balanced_bounds(np.ones(n1), a)
            cb = balanced_bounds(np.ones(n2), b)
        self.shape = (n1, n2)
        self.factor_bounds = [rb, cb]
        self.grid = (len(rb) - 1, len(cb) - 1)
        self.cache = "memory"
        self._Y = self._place(Y)
        counts = ex.gather([ex.submit(_counts, yb, name="counts") for yb in self._Y])
        a, b = self.grid
        for t, (_, _, first) in enumerate(counts):  # inf in Y: checked per block, lazily
            if first is not None:
                self.close()
                i, j = int(rb[t // b]) + first[0], int(cb[t % b]) + first[1]
                raise InputDataError(f"Y[{i}, {j}] is infinite; mark it missing (NaN) or fix it.")
        self.row_counts = np.concatenate(
            [sum(counts[ia * b + ib][0] for ib in range(b)) for ia in range(a)]
        )
        self.col_counts = np.concatenate(
            [sum(counts[ia * b + ib][1] for ia in range(a)) for ib in range(b)]
        )
        nobs = int(self.row_counts.sum())
        if nobs == 0:
            self.close()
            raise InputDataError(
                f"Y ({n1} x {n2}) has no observed entries: every entry is NaN (missing) or "
                "masked. Pass a matrix with observed values."
            )
        self.p = nobs / (n1 * n2)
        self.grad_scale, self.loss_scale = self.spec.scales(self.p, False, "l2")
        sumsq = [ex.submit(_sumsq, yb, name="norm") for yb in self._Y]
        self.value_norm2 = float(sum(ex.gather(sumsq)))
        self.S0 = None

    # ------------------------------------------------------------ layout
    def _place(self, Y) -> list:
        rb, cb = self.factor_bounds
        a, b = self.grid
        spans = [
            (int(rb[i]), int(rb[i + 1]), int(cb[j]), int(cb[j + 1]))
            for i in range(a)
            for j in range(b)
        ]
        slots = [(t // b) * self.ex.n_workers // a for t in range(a * b)]
        if hasattr(Y, "dask"):  # each block computed where it will live
            import dask

            blocks = dask.compute(*[Y[r0:r1, c0:c1] for r0, r1, c0, c1 in spans])
            return self.ex.scatter(
                [np.asarray(x, dtype=np.float64) for x in blocks], placement=slots
            )
        Y = np.asarray(Y, dtype=np.float64)
        return self.ex.scatter([_block_of(Y, *sp) for sp in spans], placement=slots)

    def _blocks(self):
        a, b = self.grid
        for t in range(a * b):
            yield t, t // b, t % b

    # ------------------------------------------------------- thresholds
    def _thresholds(self, L, R, it):
        """Per-row-block and per-column-block thresholds of ``𝒮(Y − L Rᵀ)`` (handles)."""
        ex, sp = self.ex, self.sparsifier
        kr_all = np.asarray(sp.ranks(self.row_counts, it), dtype=np.int64)
        kc_all = np.asarray(sp.ranks(self.col_counts, it), dtype=np.int64)
        Kr, Kc = int(kr_all.max()), int(kc_all.max())

        def topk(t, idx):
            ia, ib = idx
            Lb = None if L is None else L.blocks[ia]
            Rb = None if R is None else R.blocks[ib]
            return ex.submit(_candidates, self._Y[t], Lb, Rb, Kr, Kc, name="topk")

        rb, cb = self.factor_bounds

        def merge_rows(ia, parts):
            ks = kr_all[rb[ia] : rb[ia + 1]]
            return ex.submit(_merge, parts, Kr, 1, ks, sp, it, name="thr")

        def merge_cols(ib, parts):
            ks = kc_all[cb[ib] : cb[ib + 1]]
            return ex.submit(_merge, parts, Kc, 0, ks, sp, it, name="thr")

        out = map_reduce(
            ex, self.grid, topk, [("r", 0), ("c", 1)], combine={"r": merge_rows, "c": merge_cols}
        )
        rthr, cthr = out["r"], out["c"]
        return rthr, cthr

    def sparse_blocks(self, state) -> list:
        """The blocks of ``𝒮(Y − L Rᵀ)`` (``state=None``: the initialisation's ``𝒮(Y)``)."""
        L, R = (None, None) if state is None else state
        rthr, cthr = self._thresholds(L, R, None if state is None else 0)
        return [
            self.ex.submit(
                _sparse_block,
                self._Y[t],
                None if L is None else L.blocks[ia],
                None if R is None else R.blocks[ib],
                rthr[ia],
                cthr[ib],
                name="sparse",
            )
            for t, ia, ib in self._blocks()
        ]

    # ------------------------------------------------------------ protocol
    def pass_(self, state, it: int = 0) -> RPCAPass:
        ex = self.ex
        L, R = state
        rthr, cthr = self._thresholds(L, R, it)

        def grad(t, idx):
            ia, ib = idx
            return ex.submit(
                _grad_block,
                self._Y[t],
                L.blocks[ia],
                R.blocks[ib],
                rthr[ia],
                cthr[ib],
                self.grad_scale,
                name="grad",
            )

        out = map_reduce(ex, self.grid, grad, [("G0", 0), ("G1", 1), ("v", None)])
        G = [
            Blocked(ex, Fb, state[k].ncols, out[f"G{k}"]) for k, Fb in enumerate(self.factor_bounds)
        ]
        return RPCAPass(G=G, small=[self.stats_parts(state, G), out["v"]])

    def scalars(self, pas: RPCAPass):
        stats, values = self.ex.gather(pas.small)
        _, sumsq = sum_small(values)
        return self.pass_stats(sumsq * self.loss_scale, sumsq, sumsq / self.p, stats)

    def close(self) -> None:
        self.ex.release(*self._Y)

    # ----------------------------------------------------- initialisation
    def matmat(self, V: Blocked) -> Blocked:
        return self._spmm(V, transpose=False)

    def rmatmat(self, U: Blocked) -> Blocked:
        return self._spmm(U, transpose=True)

    def _spmm(self, V: Blocked, transpose: bool) -> Blocked:
        def spmm(t, idx):
            src = idx[0] if transpose else idx[1]
            return self.ex.submit(
                _spmm_block, self._Y[t], self.S0[t], V.blocks[src], transpose, name="spmm"
            )

        axis = 1 if transpose else 0
        out = map_reduce(self.ex, self.grid, spmm, [("Y", axis)], scales={"Y": 1.0 / self.p})
        return Blocked(self.ex, self.factor_bounds[axis], V.ncols, out["Y"])

    def spectral(self, rank: int, *, seed: int, n_power: int = 4):
        """``SVD_r((Y − S₀)/p)`` with ``S₀ = 𝒮(Y)`` (randomized, on the blocks)."""
        from .spectral import randomized_svd

        self.S0 = self.sparse_blocks(None)
        try:
            U, s, V = randomized_svd(self, self.factor_bounds, rank, seed=seed, n_power=n_power)
        finally:
            self.S0 = None
        return [U, V], s

    def fit_sums(self, state: list) -> tuple[float, float]:
        return 1.0, 1.0  # the papers' initialisation, unscaled
