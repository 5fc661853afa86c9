"""Tucker tensor completion on chunks: the engine behind :func:`dscaledgd.tucker_complete`.

``X = S ×_1 U_1 ⋯ ×_d U_d`` is fitted to the observed entries of a
:class:`~dscaledgd.storage.tensors.TensorObservations` cut into a regular
chunk grid (dense chunks with NaN for missing entries, or the observed
entries only, per chunk). The factors ``U_k`` are row-blocked like the grid's
mode-``k`` axis; the core ``S`` is small NumPy on the client (the state's
``params["core"]``).

One pass (ALGORITHMS.md §7, DESIGN.md §3), with
:func:`~dscaledgd.engine.blockwise.map_reduce`: per chunk, the residual on
its observed entries, its rows of every ``M_k(Z) Ŭ_k`` (computed as
``M_k(Z ×_{j≠k} U_jᵀ) M_k(S)ᵀ``, never forming ``Ŭ_k``) and its part of the
core gradient ``Z ×_k U_kᵀ`` (:mod:`dscaledgd.problems.tucker`); the factor
partials are tree-summed per mode block, the core partials over the grid.
The iteration's one gather brings the ``r_k × r_k`` Grams, the core
gradient and two scalars; ``Ŭ_kᵀŬ_k = M_k(S ×_{j≠k} U_jᵀU_j) M_k(S)ᵀ`` is
built on the client from the small Grams.

The spectral initialisation computes, per mode, the top eigenvectors of
``G_k + (p − 1) diag(G_k)`` with ``G_k = M_k(Y) M_k(Y)ᵀ`` applied implicitly,
two waves per product: ``W = M_k(Y)ᵀ V`` per chunk, summed over the chunks
that share their other-mode position, then ``M_k(Y) W`` summed per mode
block (:func:`~dscaledgd.engine.spectral.randomized_eigh`); no unfolding is
formed. ``diag(G_k)`` comes from the one statistics pass made when the
engine is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..problems import tucker as tk
from ..storage.tensor_store import ChunkRef, load_chunk
from .base import FactorEngine
from .blockwise import map_reduce
from .factors import Blocked, sum_small

__all__ = ["TuckerEngine"]


def _data(chunk):
    return load_chunk(chunk) if isinstance(chunk, ChunkRef) else chunk


def _pass(chunk, U, core, scale):
    G, core_grad, sums = tk.chunk_pass(_data(chunk), U, core, scale)
    return (*G, core_grad, sums)


def _stats(chunk):
    nnz, sumsq, rowsq, _ = tk.chunk_stats(_data(chunk))
    return (*rowsq, np.array([nnz, sumsq]))


def _residual(chunk, U, core):
    return tk.chunk_residual_sumsq(_data(chunk), U, core)


def _rmatvec(chunk, k, V):
    return tk.mode_rmatvec(_data(chunk), k, V)


def _matvec(chunk, k, W):
    return tk.mode_matvec(_data(chunk), k, W)


def _project(chunk, U, scale):
    return tk.chunk_project(_data(chunk), U, scale)


def _add_diag(GV, d, V, c):
    """``G V + c diag(d) V`` (the ``(p − 1) diag(G_k)`` correction of ALGORITHMS.md §7)."""
    return GV + V * (c * d)[:, None]


@dataclass
class TuckerPass:
    G: list
    core: np.ndarray
    small: list


class _ModeGram:
    """``V ↦ (G_k + (p − 1) diag(G_k)) V`` on mode-``k`` blocks (for ``randomized_eigh``)."""

    def __init__(self, engine: TuckerEngine, k: int):
        self.engine, self.k, self.ex = engine, k, engine.ex

    def symmat(self, V: Blocked) -> Blocked:
        e, k, ex = self.engine, self.k, self.ex
        rest = tuple(j for j in range(e.d) if j != k)

        def wave1(t, idx):
            return ex.submit(_rmatvec, e._chunks[t], k, V.blocks[idx[k]], name="gram")

        W = map_reduce(ex, e.grid, wave1, [("W", rest)])["W"]
        sub = [e.grid[j] for j in rest]

        def wave2(t, idx):
            g = int(np.ravel_multi_index(tuple(idx[j] for j in rest), sub))
            return ex.submit(_matvec, e._chunks[t], k, W[g], name="gram")

        GV = map_reduce(ex, e.grid, wave2, [("GV", k)])["GV"]
        blocks = [
            ex.submit(_add_diag, gv, dk, V.blocks[a], e.p - 1.0, name="gram")
            for a, (gv, dk) in enumerate(zip(GV, e._diag[k]))
        ]
        return Blocked(ex, V.bounds, V.ncols, blocks)


class TuckerEngine(FactorEngine):
    """Tucker completion passes over the chunks of a ``TensorObservations`` on an executor.

    Parameters
    ----------
    T : TensorObservations
    ex : Executor
    cache : {"auto", "memory", "stream"}
        Store-backed chunks: ``"memory"`` loads each once onto a worker,
        ``"stream"`` re-reads it every pass, ``"auto"`` keeps them when they
        fit in half the cluster's memory. In-memory chunks are scattered.
    """

    spec = tk.SPEC

    def __init__(self, T, ex, *, cache: str = "auto"):
        self.T, self.ex, self.symmetric = T, ex, False
        self.shape, self.d = tuple(T.shape), T.ndim
        self.grid = tuple(T.grid)
        self.factor_bounds = [np.asarray(b, dtype=np.int64) for b in T.bounds]
        self.p = float(T.density)
        self.value_norm2 = float(T.value_norm2)
        self.grad_scale, self.loss_scale = self.spec.scales(self.p, False, "l2")
        self.cache = ex.cache_policy(cache, T)
        self._chunks = self._place(T)
        self._vchunks, self._vnnz = None, 0
        out = map_reduce(
            ex,
            self.grid,
            lambda t, idx: ex.submit(_stats, self._chunks[t], name="stats"),
            [*((f"d{k}", k) for k in range(self.d)), ("n", "all")],
            select_in_sum=True,
        )
        self._diag = [out[f"d{k}"] for k in range(self.d)]  # diag(G_k) per mode block

    # -------------------------------------------------------------- placement
    def _slots(self) -> list:
        """Worker slot of each chunk: contiguous runs along the grid's C order."""
        n, w = self.T.n_chunks, self.ex.n_workers
        return [min(w - 1, t * w // n) for t in range(n)]

    def _place(self, T) -> list:
        slots = self._slots()
        if T.path is None:
            return self.ex.scatter([T.read_chunk(c) for c in range(T.n_chunks)], placement=slots)
        refs = [T.chunk_ref(c) for c in range(T.n_chunks)]
        if self.cache == "memory":
            return [
                self.ex.submit_on(slots[t], load_chunk, refs[t], name="load")
                for t in range(T.n_chunks)
            ]
        return refs

    def set_validation(self, V) -> None:
        """Held-out entries whose RMSE every pass also computes (re-chunked to this grid)."""
        if tuple(V.chunks) != tuple(self.T.chunks):
            from ..storage.tensors import TensorObservations

            idx, vals = V.observed()
            V = TensorObservations.from_coo(idx, vals, V.shape, chunks=self.T.chunks)
        self._vchunks = self._place(V)
        self._vnnz = V.nnz

    def close(self) -> None:
        for chunks in (self._chunks, self._vchunks or []):
            self.ex.release(*[c for c in chunks if not isinstance(c, ChunkRef)])

    # -------------------------------------------------------------- protocol
    def _blocks(self, state, idx) -> list:
        return [state[k].blocks[idx[k]] for k in range(self.d)]

    def pass_(self, state, it: int = 0) -> TuckerPass:
        ex, core = self.ex, state.params["core"]

        def grad(t, idx):
            U = self._blocks(state, idx)
            return ex.submit(_pass, self._chunks[t], U, core, self.grad_scale, name="grad")

        outputs = [*((f"G{k}", k) for k in range(self.d)), ("core", "all"), ("v", None)]
        out = map_reduce(ex, self.grid, grad, outputs, select_in_sum=True)
        G = [
            Blocked(ex, Fb, state[k].ncols, out[f"G{k}"]) for k, Fb in enumerate(self.factor_bounds)
        ]
        vres = []
        if self._vchunks is not None:
            vres = [
                ex.submit(_residual, self._vchunks[t], self._blocks(state, idx), core, name="val")
                for t, idx in enumerate(np.ndindex(*self.grid))
            ]
        return TuckerPass(G, core, [self.stats_parts(state, G), out["v"], out["core"], vres])

    def scalars(self, pas: TuckerPass):
        stats, values, core_grad, vres = self.ex.gather(pas.small)
        sumsq = float(sum_small(values)[0])
        extra = {"validation": float(np.sqrt(sum(vres) / self._vnnz))} if vres else {}
        FF = [sum_small([s[0] for s in per]) for per in stats]
        H = [tk.breve_gram(pas.core, FF, k) for k in range(self.d)]
        return self.pass_stats(
            sumsq * self.loss_scale, sumsq, sumsq / self.p, stats, extra,
            PG={"core": np.asarray(core_grad)}, H=H,
        )  # fmt: skip

    # -------------------------------------------------------- initialisation
    def spectral(self, ranks, *, seed: int, n_power: int = 4):
        """Per mode, the top-``r_k`` eigenvectors of ``G_k + (p − 1) diag(G_k)``.

        Returns ``(factors, values)``: orthonormal ``Blocked`` factors and,
        per mode, the eigenvalues (≈ ``p²`` times the squared singular values
        of ``M_k(X)``).
        """
        from .spectral import randomized_eigh

        factors, values = [], []
        for k in range(self.d):
            U, w = randomized_eigh(
                _ModeGram(self, k), self.factor_bounds[k], int(ranks[k]),
                seed=seed + k, n_power=n_power,
            )  # fmt: skip
            factors.append(U)
            values.append(np.asarray(w))
        return factors, values

    def project(self, factors) -> np.ndarray:
        """``(Y/p) ×_k U_kᵀ`` (one pass; the spectral core)."""
        ex = self.ex

        def proj(t, idx):
            U = [factors[k].blocks[idx[k]] for k in range(self.d)]
            return ex.submit(_project, self._chunks[t], U, 1.0 / self.p, name="project")

        return np.asarray(ex.gather(map_reduce(ex, self.grid, proj, [("S", "all")])["S"]))
