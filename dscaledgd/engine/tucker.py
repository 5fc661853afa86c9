"""Tucker tensor completion on chunks: the engine behind :func:`dscaledgd.tucker_complete`.

``X = S ×_1 U_1 ⋯ ×_d U_d`` is fitted to the observed entries of a
:class:`~dscaledgd.storage.tensors.TensorObservations` cut into a regular
chunk grid (dense chunks with NaN for missing entries, or the observed
entries only, per chunk). A factor ``U_k`` is one block when it has at most
:data:`SINGLE_BLOCK_ROWS` rows (every realistic volume), else it is
row-blocked like the grid's mode-``k`` axis; the core ``S`` is small NumPy on
the client (the state's ``params["core"]``).

One pass (ALGORITHMS.md §7, DESIGN.md §3), with
:func:`~dscaledgd.engine.blockwise.map_reduce_groups`: one task per group of
:data:`~dscaledgd.engine.blockwise.CHUNKS_PER_TASK` chunks computes, per
chunk, the residual on its observed entries, its rows of every
``M_k(Z) Ŭ_k`` (computed as ``M_k(Z ×_{j≠k} U_jᵀ) M_k(S)ᵀ``, never forming
``Ŭ_k``) and its part of the core gradient ``Z ×_k U_kᵀ``
(:mod:`dscaledgd.problems.tucker`), and adds them up per factor block; the
groups' partials are then tree-summed per factor block and over the grid.
The iteration's one gather brings the ``r_k × r_k`` Grams, the core
gradient and two scalars; ``Ŭ_kᵀŬ_k = M_k(S ×_{j≠k} U_jᵀU_j) M_k(S)ᵀ`` is
built on the client from the small Grams. Grouping chunks and keeping small
factors whole took a 2-worker iteration at 300³ from about 70 tasks to 16
(benchmarks/RESULTS.md); the groups depend on the grid only, so every
scheduler sums in the same order.

The spectral initialisation computes, per mode, the top eigenvectors of
``G_k + (p − 1) diag(G_k)`` with ``G_k = M_k(Y) M_k(Y)ᵀ`` applied implicitly,
two waves per product: ``W = M_k(Y)ᵀ V`` per chunk, summed over the chunks
that share their other-mode position, then ``M_k(Y) W`` summed per factor
block (:func:`~dscaledgd.engine.spectral.randomized_eigh_many`, all modes in
lockstep: one gather per round for every mode); no unfolding is formed.
``diag(G_k)`` comes from the one statistics pass made when the engine is
built.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import Future as LocalFuture
from dataclasses import dataclass

import numpy as np

from ..problems import tucker as tk
from ..storage.chunk_formats import PackedChunk, unpack_dense
from ..storage.tensor_store import ChunkRef, load_chunk
from .base import FactorEngine
from .blockwise import chunk_groups, map_groups, map_reduce_groups, slot_groups
from .executors import ThreadExecutor
from .factors import Blocked, _al, sum_small

__all__ = ["TuckerEngine"]


#: On a cluster, a pass with client-held factors runs a worker's groups as one task per
#: worker thread (:func:`~dscaledgd.engine.blockwise.slot_groups`); False: one task per group
#: (``bench_tensor.py throughput`` measures both)
BUNDLE = True

#: An in-memory dense tensor at most this dense travels to the workers packed.
PACK_BELOW = 0.5


def _travels_packed(T) -> bool:
    """Whether the dense chunks of in-memory ``T`` go to the workers packed
    (:func:`~dscaledgd.storage.chunk_formats.pack_dense`: a bit per entry and the observed
    values), to be rebuilt there: when at most :data:`PACK_BELOW` of the entries are
    observed (``1/8 + 8p`` bytes an entry against 8)."""
    return T.layout == "dense" and T.density <= PACK_BELOW


def _data(chunk):
    """A chunk in kernel format from what a task got: a store reference, a packed chunk
    (rebuilt here), or the chunk itself."""
    if isinstance(chunk, ChunkRef):
        return load_chunk(chunk)
    return unpack_dense(chunk) if isinstance(chunk, PackedChunk) else chunk


def _rows(U, rows):
    """The chunk's rows of each factor block (``rows[k] = (lo, hi)`` within block ``k``),
    from aligned C-ordered blocks (:func:`~dscaledgd.engine.factors._al`: a block that
    came in a message may start at any byte, and BLAS then rounds differently)."""
    return [_al(u)[lo:hi] for u, (lo, hi) in zip(U, rows)]


def _model(U, rows, core):
    """``(the chunk's factor rows, core)`` for a kernel, both aligned (:func:`_rows`)."""
    return _rows(U, rows), _al(core)


def _pass(chunk, U, rows, core, scale, zeta, tau):
    G, core_grad, sums = tk.chunk_pass(_data(chunk), *_model(U, rows, core), scale, zeta, tau)
    return (*G, core_grad, sums)


def _stats(chunk):
    data = _data(chunk)
    nnz, sumsq, rowsq, _ = tk.chunk_stats(data)
    return (*rowsq, np.array([nnz, sumsq, tk.chunk_abs_sum(data)]))


def _residual(chunk, U, rows, core):
    return tk.chunk_residual_sumsq(_data(chunk), *_model(U, rows, core))


def _rmatvec(chunk, V, rows, k):
    lo, hi = rows
    return tk.mode_rmatvec(_data(chunk), k, _al(V)[lo:hi])


def _matvec(chunk, W, k):
    return tk.mode_matvec(_data(chunk), k, _al(W))


def _project(chunk, U, rows, scale):
    return tk.chunk_project(_data(chunk), _rows(U, rows), scale)


def _as_coo(chunk):
    """A dense chunk's observed entries as a coo chunk (the spectral products' input)."""
    return tk.as_coo(_data(chunk))


def _fiber_gram_task(k, n, parts, dense):
    """``M_k(Y_C) M_k(Y_C)ᵀ`` of one block ``C`` of the other modes: ``parts`` are its
    chunks along mode ``k`` with their first row (:func:`~dscaledgd.problems.tucker.fiber_gram`)."""
    return tk.fiber_gram([(_data(c), off) for c, off in parts], k, n, dense)


def _numpy(U):
    return U if isinstance(U, np.ndarray) else U.gather()


def _add_diag(GV, d, V, c):
    """``G V + c diag(d) V`` (the ``(p − 1) diag(G_k)`` correction of ALGORITHMS.md §7)."""
    return GV + V * (c * d)[:, None]


#: Below this density the spectral products read a coo copy of dense in-memory chunks:
#: ``M_k(Y)ᵀV`` and ``M_k(Y)W`` of a 75×150×150 chunk took 10.5 ms dense and 1.9 ms coo
#: at p = 0.05, 9.1 / 3.9 ms at 0.1, 11.3 / 7.5 ms at 0.2 and 13.6 / 11.0 at 0.3 (r + 10
#: = 15 columns, one thread); the copy costs one conversion per chunk.
SPECTRAL_COO_BELOW = 0.25

#: The spectral init forms a mode's Gram ``G_k`` exactly (one data wave, ``Σ_fibers m²``
#: multiply-adds, an ``n_k × n_k`` result per block of the other modes) when the mode has
#: at most this many rows, and its fibers at most ``EXACT_GRAM_FILL`` observed entries on
#: average (``n_k p``); subspace iteration costs ``2 (q + 2)`` waves of ``2 (r + 10)``
#: flops per entry. Init plus one iteration, r = 5, 2 threads: 0.109 s by subspace
#: iteration (q = 4) and 0.043 s exactly at 100³ (p = 0.1), 1.43 and 0.74 s at 300³
#: (p = 0.05) (``benchmarks/bench_tensor.py init``).
EXACT_GRAM_ROWS = 1024
EXACT_GRAM_FILL = 64
#: Dense chunks at least ``SPECTRAL_COO_BELOW`` observed form the Gram by BLAS instead,
#: ``n_k`` flops per cell against subspace iteration's ``2 (q + 2) · 2 (r + 10)``.
EXACT_DENSE_ROWS = 512

#: A factor with at most this many rows is one block (every grouped task gets the
#: whole of it, a few hundred KiB at r = 10); longer ones are cut like the grid's axis.
SINGLE_BLOCK_ROWS = 1 << 18


#: Factors with at most this many rows in all (``Σ n_k``; 2.5 MiB of float64 at r = 10)
#: live on the client: each grouped task gets the blocks it needs as arguments, the group
#: results come back in the iteration's one gather, and the sums, Grams and update run
#: in the client's process. One round trip per iteration instead of the chain pass →
#: sums → Grams → gather → update → pass. The sums keep the group order and fan-in of
#: :func:`~dscaledgd.engine.blockwise.map_reduce_groups`, so the bits do not change.
CLIENT_FACTOR_ROWS = 1 << 15


def _value(x):
    """A factor block's array: client-held factors are finished local futures."""
    return x.result() if isinstance(x, LocalFuture) else x


@dataclass
class TuckerPass:
    G: list
    core: np.ndarray
    small: list
    #: client-held factors: the grouped pass (and the validation pass) to reduce here,
    #: and the iterate it was made at
    groups: tuple = ()
    state: object = None
    #: the iteration the pass was made for
    it: int = 0


class _ModeGram:
    """``V ↦ (G_k + (p − 1) diag(G_k)) V`` on mode-``k`` blocks (for ``randomized_eigh``)."""

    def __init__(self, engine: TuckerEngine, k: int, chunks: list, diag: list):
        self.engine, self.k, self.ex, self.chunks, self.diag = engine, k, engine.ex, chunks, diag

    def symmat(self, V: Blocked) -> Blocked:
        e, k, ex = self.engine, self.k, self.ex
        rest = tuple(j for j in range(e.d) if j != k)
        sub = [e.grid[j] for j in rest]

        def column_block(t):  # the chunk's block of M_k's columns (other modes' position)
            idx = e.index[t]
            g = int(np.ravel_multi_index(tuple(idx[j] for j in rest), sub))
            n = int(np.prod([e.extent[t][j] for j in rest]))
            return g, 0, n, n

        W = e.grouped(
            _rmatvec,
            lambda t: (self.chunks[t], V.blocks[e.place[t][k][0]], e.place[t][k][1:3]),
            lambda t: (column_block(t),),
            [("W", "block")],
            shared=(k,), task_name="gram",
        )["W"]  # fmt: skip
        GV = e.grouped(
            _matvec,
            lambda t: (self.chunks[t], W[column_block(t)[0]]),
            lambda t: (e.place[t][k],),
            [("GV", "block")],
            shared=(k,), task_name="gram",
        )["GV"]  # fmt: skip
        blocks = [
            ex.submit(_add_diag, gv, dk, V.blocks[a], e.p - 1.0, name="gram")
            for a, (gv, dk) in enumerate(zip(GV, self.diag))
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
        self.factor_bounds = [
            np.array([0, n], dtype=np.int64) if n <= SINGLE_BLOCK_ROWS
            else np.asarray(b, dtype=np.int64)
            for n, b in zip(self.shape, T.bounds)
        ]  # fmt: skip
        self.index = [T.chunk_index(c) for c in range(T.n_chunks)]
        if sum(self.shape) <= CLIENT_FACTOR_ROWS:  # on every executor: the same bits
            self._fex = ThreadExecutor(0)
        self.extent = [
            tuple(s.stop - s.start for s in T.chunk_slices(c)) for c in range(T.n_chunks)
        ]
        self.place = [self._factor_rows(T.chunk_slices(c)) for c in range(T.n_chunks)]
        self.groups = chunk_groups(T.n_chunks)
        w = ex.n_workers
        self.slots = [min(w - 1, g * w // len(self.groups)) for g in range(len(self.groups))]
        self.tasks = None  # one task per group; on a cluster, one per worker thread
        if ex.kind == "distributed" and BUNDLE:
            per_worker = max(1, ex.nthreads // max(w, 1))
            self.tasks = slot_groups(self.slots, per_worker, len(self.groups))
        self.p = float(T.density)
        self.value_norm2 = float(T.value_norm2)
        self.grad_scale, self.loss_scale = self.spec.scales(self.p, False, "l2")
        self.cache = ex.cache_policy(cache, T)
        self._packed: list = []  # scattered packed chunks (:func:`_travels_packed`)
        self._chunks = self._place(T)
        self._vchunks, self._vnnz = None, 0
        out = self.stats_pass(self._chunks)
        self._totals = out["n"]  # [nnz, Σ y², Σ |y|] (a handle; gathered when needed)
        self._diag = self.mode_diag(out)  # diag(G_k) per factor block

    # -------------------------------------------------------------- placement
    def _factor_rows(self, slices) -> tuple:
        """Per mode ``(block, lo, hi, L)``: the chunk covers rows ``[lo, hi)`` of factor
        block ``block``, which has ``L`` rows."""
        out = []
        for s, Fb in zip(slices, self.factor_bounds):
            b = int(np.searchsorted(Fb, s.start, side="right") - 1)
            out.append((b, s.start - int(Fb[b]), s.stop - int(Fb[b]), int(Fb[b + 1] - Fb[b])))
        return tuple(out)

    def mode_diag(self, out) -> list:
        """Per mode, the ``diag(G_k)`` blocks of a statistics pass's outputs."""
        return [out[f"d{k}"] for k in range(self.d)]

    def stats_pass(self, chunks) -> dict:
        """Per chunk group :func:`_stats`, summed: ``d{k}`` (``diag(G_k)`` per factor
        block) and ``n`` (``[nnz, Σ y², Σ |y|]``)."""
        return self.grouped(
            _stats,
            lambda t: (chunks[t],),
            lambda t: (*self.place[t], None),
            [*((f"d{k}", "block") for k in range(self.d)), ("n", "all")],
            task_name="stats",
        )  # fmt: skip

    def grouped(self, fn, call, place, outputs, *, shared=(), task_name="pass"):
        """:func:`~dscaledgd.engine.blockwise.map_reduce_groups` over this grid's chunk groups,
        each group's task preferring the worker that holds its chunks."""
        return map_reduce_groups(
            self.ex, self.groups, fn, call, place, outputs,
            shared=shared, slots=self.slots, task_name=task_name,
        )  # fmt: skip

    def _chunk_slots(self) -> list:
        """Worker slot of each chunk: that of its group."""
        out = [0] * self.T.n_chunks
        for g, ts in enumerate(self.groups):
            for t in ts:
                out[t] = self.slots[g]
        return out

    def _place(self, T) -> list:
        slots = self._chunk_slots()
        if T.path is None and self.ex.kind == "distributed" and _travels_packed(T):
            # the workers rebuild the dense chunks: at 300³, p = 0.05, 14 MB travel
            # instead of 216 MB (twice: every scattered item has two copies)
            packed = self.ex.scatter([T.packed_chunk(c) for c in range(T.n_chunks)], slots)
            self._packed += packed  # kept: a lost worker's chunks are rebuilt from them
            return [self.ex.submit_on(slots[t], unpack_dense, h, name="unpack")
                    for t, h in enumerate(packed)]  # fmt: skip
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
        for chunks in (self._chunks, self._vchunks or [], self._packed):
            self.ex.release(*[c for c in chunks if not isinstance(c, ChunkRef)])
        self.ex.release(self._totals)

    # -------------------------------------------------------------- protocol
    def _call(self, chunks, factors):
        """``t ↦ (chunk, its factor blocks, its rows in them)`` for a grouped pass."""

        def call(t):
            pl = self.place[t]
            U = [_value(factors[k].blocks[pl[k][0]]) for k in range(self.d)]
            return chunks[t], U, [(lo, hi) for _, lo, hi, _ in pl]

        return call

    #: the level whose exceedances ``|X − Y| > τ`` a pass counts (none for completion)
    tau = tk.NO_CLIP
    #: the held-out chunks' kernel: ``Σ (X − Y)²`` (:meth:`validation_value`: the RMSE)
    val_kernel = staticmethod(_residual)

    def validation_value(self, total: float) -> float:
        """The held-out error from the summed :attr:`val_kernel` (the RMSE)."""
        return float(np.sqrt(total / self._vnnz))

    def clip(self, it: int) -> float:
        """The residual's clip level at iteration ``it`` (none for completion)."""
        return tk.NO_CLIP

    pass_fn = staticmethod(_pass)

    def pass_shared(self, core, it: int) -> tuple:
        """The arguments every chunk task of the pass at iteration ``it`` shares."""
        return (core, self.grad_scale, self.clip(it), self.tau)

    def pass_extra(self, sums, it: int = 0) -> dict:
        """Entries of ``PassStats.extra`` from the summed chunk ``sums`` of
        :func:`~dscaledgd.problems.tucker.chunk_pass`."""
        return {}

    def pass_(self, state, it: int = 0) -> TuckerPass:
        ex, core = self.ex, state.params["core"]
        shared = self.pass_shared(core, it)
        outputs = [*((f"G{k}", "block") for k in range(self.d)), ("core", "all"), ("v", "all")]
        args = (self.pass_fn, self._call(self._chunks, state),
                lambda t: (*self.place[t], None, None))  # fmt: skip
        val = None
        if self._vchunks is not None:
            val = (self.val_kernel, self._call(self._vchunks, state), lambda t: (None,))
        if self._fex is not None:  # client-held factors: reduce here after the one gather
            gp = map_groups(ex, self.groups, *args, outputs, shared=shared,
                            slots=self.slots, task_name="grad", tasks=self.tasks)  # fmt: skip
            vgp = None
            if val is not None:
                vgp = map_groups(ex, self.groups, *val, [("r", "all")], shared=(core,),
                                 slots=self.slots, task_name="val", tasks=self.tasks)  # fmt: skip
            return TuckerPass(None, core, [], groups=(gp, vgp), state=state, it=it)
        out = self.grouped(*args, outputs, shared=shared, task_name="grad")
        G = [
            Blocked(ex, Fb, state[k].ncols, out[f"G{k}"]) for k, Fb in enumerate(self.factor_bounds)
        ]
        vres = []
        if val is not None:
            vres = [self.grouped(*val, [("r", "all")], shared=(core,), task_name="val")["r"]]
        return TuckerPass(G, core, [self.stats_parts(state, G), out["v"], out["core"], vres], it=it)

    def _reduce_here(self, pas: TuckerPass) -> list:
        """Client-held factors: gather the group results, add them up here (the order of
        the tasks' sums), set ``pas.G``; the ``small`` results of a worker-side pass."""
        gp, vgp = pas.groups
        state = pas.state
        res = self.ex.gather([gp.handles, vgp.handles if vgp is not None else []])
        out = gp.reduce(gp.group_results(res[0]))
        fex = self._fex
        pas.G = [
            Blocked(fex, Fb, state[k].ncols, fex.scatter(out[f"G{k}"]))
            for k, Fb in enumerate(self.factor_bounds)
        ]
        vres = [vgp.reduce(vgp.group_results(res[1]))["r"]] if vgp is not None else []
        return [fex.gather(self.stats_parts(state, pas.G)), out["v"], out["core"], vres]

    def scalars(self, pas: TuckerPass):
        if pas.groups:
            stats, values, core_grad, vres = self._reduce_here(pas)
        else:
            stats, values, core_grad, vres = self.ex.gather(pas.small)
        sumsq = float(values[0])
        extra = self.pass_extra(np.asarray(values, dtype=np.float64), pas.it)
        if vres:
            extra["validation"] = self.validation_value(sum(vres))
        FF = [sum_small([s[0] for s in per]) for per in stats]
        H = [tk.breve_gram(pas.core, FF, k) for k in range(self.d)]
        return self.pass_stats(
            sumsq * self.loss_scale, sumsq, sumsq / self.p, stats, extra,
            PG={"core": np.asarray(core_grad)}, H=H,
        )  # fmt: skip

    # -------------------------------------------------------- initialisation
    def spectral(self, ranks, *, seed: int, n_power: int = 4, chunks=None, diag=None):
        """Per mode, the top-``r_k`` eigenvectors of ``G_k + (p − 1) diag(G_k)``.

        Returns ``(factors, values)``: orthonormal ``Blocked`` factors and,
        per mode, the eigenvalues (≈ ``p²`` times the squared singular values
        of ``M_k(X)``). A short, sparsely filled mode (:meth:`exact_gram`) gets
        its Gram formed exactly in one data wave (:func:`_fiber_gram_task`) and
        its exact eigenvectors; the others ``n_power`` rounds of randomised
        subspace iteration. ``chunks`` (with their ``diag``, :meth:`stats_pass`):
        other data on this grid, e.g. tensor RPCA's clipped copy; default the
        observations.
        """
        from .spectral import randomized_eigh_many

        copies, in_memory = [], True
        if chunks is None:
            chunks, diag, in_memory = self._chunks, self._diag, self.cache == "memory"
        exact = [k for k in range(self.d) if self.exact_gram(k)]
        out = dict(zip(exact, self._exact_eigh(chunks, exact, ranks)))
        rand = [k for k in range(self.d) if k not in out]
        if rand:
            src = chunks
            if self.T.layout == "dense" and in_memory and self.p < SPECTRAL_COO_BELOW:
                slots = self._chunk_slots()
                src = copies = [
                    self.ex.submit_on(slots[t], _as_coo, c, name="coo")
                    for t, c in enumerate(chunks)
                ]
            try:
                got = randomized_eigh_many(
                    [_ModeGram(self, k, src, diag[k]) for k in rand],
                    [self.factor_bounds[k] for k in rand], [int(ranks[k]) for k in rand],
                    seeds=[seed + k for k in rand], n_power=n_power,
                )  # fmt: skip
            finally:
                self.ex.release(*copies)
            out.update(zip(rand, got))
        values = [np.asarray(out[k][1]) for k in range(self.d)]
        if self._fex is not None:  # client-held from here on
            return list(self.from_numpy([_numpy(out[k][0]) for k in range(self.d)]).factors), values
        factors = [
            self.block_factor(k, U) if isinstance(U, np.ndarray) else U
            for k, (U, _) in sorted(out.items())
        ]
        return factors, values

    def exact_gram(self, k: int) -> bool:
        """Whether mode ``k``'s spectral Gram is formed exactly: dense chunks at least
        :data:`SPECTRAL_COO_BELOW` observed, by BLAS, when the mode has at most
        :data:`EXACT_DENSE_ROWS` rows; otherwise by fibers, with at most
        :data:`EXACT_GRAM_ROWS` rows and :data:`EXACT_GRAM_FILL` observed entries per fiber
        on average (``n_k p``)."""
        if self._dense_gram():
            return self.shape[k] <= EXACT_DENSE_ROWS
        return self.shape[k] <= EXACT_GRAM_ROWS and self.shape[k] * self.p <= EXACT_GRAM_FILL

    def _dense_gram(self) -> bool:
        return self.T.layout == "dense" and self.p >= SPECTRAL_COO_BELOW

    def spectral_passes(self, n_power: int) -> int:
        """Data waves of :meth:`spectral` (one per exact mode, ``2 (n_power + 2)`` per
        randomised one) and of the core's :meth:`project`."""
        return 1 + sum(1 if self.exact_gram(k) else 2 * (n_power + 2) for k in range(self.d))

    def _exact_eigh(self, chunks, modes, ranks) -> list:
        """``[(U_k, w_k)]`` for ``modes``: ``G_k`` summed from one task per block of the other
        modes (:func:`_fiber_gram_task`, in the grid's order), in one gather for all modes;
        the eigenpairs on the client."""
        if not modes:
            return []
        slots = self._chunk_slots()
        packed = self._packed if chunks is self._chunks else []

        def part(t, slot, k):  # a chunk held by another worker travels packed when it can
            far = packed and slots[t] != slot
            return packed[t] if far else chunks[t], self.T.chunk_slices(t)[k].start

        handles, load = [], Counter()
        for k in modes:
            fibers: dict = {}
            for t in range(self.T.n_chunks):
                key = tuple(i for j, i in enumerate(self.index[t]) if j != k)
                fibers.setdefault(key, []).append(t)
            parts = [sorted(ts, key=lambda t: self.index[t][k]) for _, ts in sorted(fibers.items())]
            row = []
            for ts in parts:  # on the worker holding most of its chunks, the least loaded
                held = Counter(slots[t] for t in ts)
                slot = min(held, key=lambda s: (-held[s], load[s], s))
                load[slot] += 1
                row.append(self.ex.submit_on(
                    slot, _fiber_gram_task, k, self.shape[k], [part(t, slot, k) for t in ts],
                    self._dense_gram(), name="gram",
                ))  # fmt: skip
            handles.append(row)
        out = []
        for k, G in zip(modes, self.ex.gather(handles)):
            G = sum_small(G)
            w, V = np.linalg.eigh(G + (self.p - 1.0) * np.diag(np.diag(G)))
            top = np.argsort(w)[::-1][: int(ranks[k])]
            out.append((np.ascontiguousarray(V[:, top]), w[top]))
        return out

    def project(self, factors, chunks=None) -> np.ndarray:
        """``(Y/p) ×_k U_kᵀ`` (one pass; the spectral core). ``chunks``: as for
        :meth:`spectral`."""
        chunks = self._chunks if chunks is None else chunks
        out = self.grouped(
            _project, self._call(chunks, factors), lambda t: (None,), [("S", "all")],
            shared=(1.0 / self.p,), task_name="project",
        )  # fmt: skip
        return np.asarray(self.ex.gather(out["S"]))
