"""Matrix completion on tiles: the engine behind :func:`dscaledgd.complete`.

One data pass (:meth:`CompletionEngine.pass_`) submits, per tile, the fused
kernel of :mod:`dscaledgd.problems.completion` on the tile's factor blocks;
each task returns its partial ``∇_L`` rows, partial ``∇_R`` rows and two
partial sums. Each tile lives on, and its tasks run on, the worker that
:class:`~.placement.Placement` gives it (for example, 4 tiles of one column
block per worker on a 16 × 4 grid and 16 workers). Partials are added per row
and per column block in the tiles' C order, a left fold cut into one task per
run of tiles on one worker: every worker adds its own partials before anything
moves, and the bits are the grid's, whatever the workers or the scheduler. The
sum ends on the block's owner, where a small task computes ``FᵀF``, ``FᵀG`` and
``GᵀG`` and the update runs. All of these small results, and nothing else,
reach the client in **one** gather (:meth:`scalars`).

Tiles are read once, by the cache policy:

``"memory"``
    tiles live on the workers for the whole run (scattered from memory, or
    loaded from Zarr by a task);
``"stream"``
    every pass re-reads the tile from Zarr in sub-chunks of ``sub_chunk``
    entries, so a task's memory is bounded whatever the tile size;
``"auto"`` (default)
    ``"memory"`` when the tiles fit in half the cluster's memory, else
    ``"stream"``. In-memory observations are always scattered.

Every piece of a tile read from a store is decoded (CRC-32C) and checked
(local indices inside the tile, finite values) before a kernel sees it
(:func:`~dscaledgd.storage.integrity.read_entries`; about 0.3-0.6 ns per entry).
Workers cache a store's open arrays by its identity (``store_id``), never by
path alone: a store replaced at the same path is re-opened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..problems import completion as cp
from ..storage.layout import CHUNK
from .base import FactorEngine, PassStats
from .blockwise import Collected, Slice, map_reduce, slot_groups
from .factors import Blocked, sum_small
from .placement import Placement

__all__ = ["CompletionEngine", "PassStats", "TileRef", "CACHE_POLICIES"]

CACHE_POLICIES = ("auto", "memory", "stream")

#: Most tiles one gradient task runs on a cluster (:meth:`CompletionEngine.pass_`). A
#: task costs the scheduler about a millisecond whatever its size; grouping a worker's
#: tiles cuts the 64 gradient tasks of a 16 × 4 grid's iteration to 8 on 1 worker and
#: to 16 on 16 workers (docs/design.md, "Tasks per iteration"). Each tile's parts are
#: added as before, so the sums keep their bits.
TILES_PER_TASK = 8


@dataclass(frozen=True)
class TileRef:
    """Tile ``tile`` of the store at ``path``, read by the task that uses it.

    Entries ``[lo, hi)`` of the store's arrays, read ``sub`` at a time; every
    piece is checked against the tile's ``height × width`` before a kernel sees
    it. ``store_id`` is the store's identity at open: a worker whose cached
    arrays belong to another store at the same path re-opens it, and a store
    replaced since it was opened is refused.
    """

    path: str
    store_id: str
    tile: int
    lo: int
    hi: int
    sub: int
    height: int
    width: int


def tile_refs(obs, sub: int) -> list[TileRef]:
    """A :class:`TileRef` per tile of the store-backed ``obs``."""
    ptr = obs.tile_ptr
    out = []
    for t in range(obs.n_tiles):
        r0, r1, c0, c1 = obs.tile_bounds(t)
        out.append(
            TileRef(
                obs.path, obs.store_id, t, int(ptr[t]), int(ptr[t + 1]), int(sub), r1 - r0, c1 - c0
            )
        )
    return out


def _read_range(ref: TileRef, s: int, e: int):
    """Entries ``[s, e)`` of tile ``ref``, decoded and checked (indices inside the tile,
    finite values) before any kernel sees them."""
    from ..storage.integrity import entry_arrays, read_entries

    return read_entries(
        entry_arrays(ref.path, ref.store_id),
        s,
        e,
        path=ref.path,
        tile=ref.tile,
        tile_lo=ref.lo,
        height=ref.height,
        width=ref.width,
    )


def _load_tile(ref: TileRef):
    return _read_range(ref, ref.lo, ref.hi)


def _spans(ref: TileRef):
    """``[s, e)`` pieces of at most ``ref.sub`` entries, cut at multiples of ``ref.sub``:
    with ``sub`` the store's chunk length (the default), every piece decodes exactly one
    chunk of each array instead of straddling two."""
    s = ref.lo
    while s < ref.hi:
        e = min(ref.hi, (s // ref.sub + 1) * ref.sub)
        yield s, e
        s = e


def _pieces(tile, fn):
    """Yield ``fn(rows, cols, values)`` per piece of a tile (one piece if resident).

    A streamed piece is read, used and freed before the next is read: a task holds one
    piece at a time, never two."""
    if not isinstance(tile, TileRef):
        yield fn(*tile)
        return
    for s, e in _spans(tile):
        yield fn(*_read_range(tile, s, e))


# ------------------------------------------------------------------ tasks
def _tile_grad(tile, L, R, loss, kernel, scale=1.0, offsets=None):
    # gradients accumulate in interleaved [F | ∇F] blocks, the fused kernel's layout
    r = L.shape[1]
    LG, RG = cp.interleave(L), cp.interleave(R)

    def piece(rows, cols, vals):
        if kernel != "reference":
            return cp.fused_pass_interleaved(rows, cols, vals, LG, RG, loss, offsets)
        sums, pl, pr = cp.reference_pass(rows, cols, vals, L, R, loss, offsets)
        LG[:, r:] += pl
        RG[:, r:] += pr
        return sums

    acc = np.zeros(2)
    for sums in _pieces(tile, piece):
        acc += sums
    gL, gR = np.ascontiguousarray(LG[:, r:]), np.ascontiguousarray(RG[:, r:])
    if scale != 1.0:  # scaling here spares a reduction task for single-partial blocks
        gL *= scale
        gR *= scale
    return gL, gR, acc


def _tiles_grad(tiles, Ls, Rs, offsets, loss, kernel, scale=1.0):
    """:func:`_tile_grad` of several tiles of one worker in one task: their parts in one
    flat tuple, 3 per tile (each tile's own arithmetic, so the sums keep their bits)."""
    out: list = []
    for tile, L, R, offs in zip(tiles, Ls, Rs, offsets):
        out.extend(_tile_grad(tile, L, R, loss, kernel, scale, offs))
    return tuple(out)


def _tile_spmm(tile, V, m, transpose, offsets=None):
    out = np.zeros((m, V.shape[1]))

    def piece(rows, cols, vals):
        if offsets is not None:  # the centred matrix Y − mu − b_i − c_j
            mu, ro, co = offsets
            vals = vals - mu - ro[rows] - co[cols]
        if transpose:
            cp.spmm(cols, rows, vals, V, out)
        else:
            cp.spmm(rows, cols, vals, V, out)

    for _ in _pieces(tile, piece):
        pass
    return out


def _tile_symspmm(tile, Vb, Va, m_a, m_b, offsets=None):
    """``(Y_t V_b, Y_tᵀ V_a)``: both halves of ``(Y + Yᵀ) V`` from one read of the tile."""
    return _tile_spmm(tile, Vb, m_a, False, offsets), _tile_spmm(tile, Va, m_b, True, offsets)


def _tile_residual(tile, L, R, offsets=None):
    return sum(_pieces(tile, lambda r, c, v: cp.residual_sumsq(r, c, v, L, R, offsets)))


def _tile_fit(tile, L, R, offsets=None):
    out = np.zeros(2)
    for sums in _pieces(tile, lambda r, c, v: cp.fit_sums(r, c, v, L, R, offsets)):
        out += sums
    return out


def _tile_bias(tile, offsets, m, n):
    rs, cs = np.zeros(m), np.zeros(n)
    for a, b in _pieces(tile, lambda r, c, v: cp.bias_sums(r, c, v, offsets, m, n)):
        rs += a
        cs += b
    return rs, cs


# ------------------------------------------------------------------ engine
@dataclass
class CompletionPass:
    G: list
    small: list
    #: the per-tile loss sums, fetched by one task per worker (:class:`Collected`)
    values: Collected | None = None
    #: per factor, the Gram tasks of one worker slot each (``small[0]`` is their handles)
    stats: list | None = None


class CompletionEngine(FactorEngine):
    """Completion data passes over an :class:`~dscaledgd.Observations` on an executor.

    Parameters
    ----------
    obs : Observations
    ex : Executor
    symmetric : bool
        Fit ``X = L Lᵀ`` (square observations): one factor.
    loss : {"l2", "l1"}
    cache : {"auto", "memory", "stream"}
    kernel : {"fused", "reference"}
        ``"reference"`` runs the plain NumPy oracle instead of the Numba
        kernel (tests only).
    sub_chunk : int
        Entries per streamed read.
    """

    spec = cp.SPEC

    def __init__(
        self,
        obs,
        ex,
        *,
        symmetric: bool = False,
        loss: str = "l2",
        cache: str = "auto",
        kernel: str = "fused",
        sub_chunk: int = CHUNK,
    ):
        self.obs = obs
        self.ex = ex
        self.symmetric = symmetric
        self.loss = loss
        self.kernel = kernel
        self.p = obs.density
        self.value_norm2 = obs.value_norm2
        self.grid = obs.tiles
        rb, cb = obs.row_bounds, obs.col_bounds
        self.factor_bounds = [rb] if symmetric else [rb, cb]
        self.placement = Placement(self.grid, self.factor_bounds, ex.n_workers, symmetric)
        self.block_slots = self.placement.owners
        self.cache = ex.cache_policy(cache, obs)
        self._tiles = self._place_tiles(obs, sub_chunk)
        self._offsets = None  # (mu, row-bias block handles, col-bias block handles)
        self._offset_values = None
        self._vtiles = None  # validation tiles, aligned with this grid
        self._vnnz = 0
        self._groups = None  # tiles of each gradient task (_grad_groups)
        self.grad_scale, self.loss_scale = self.spec.scales(self.p, symmetric, loss)

    # -------------------------------------------------------------- placement
    def _placement(self) -> list:
        """Worker slot of each tile (C order): the layout of :class:`~.placement.Placement`
        that moves the fewest factor rows per iteration, e.g. on a 16 × 4 grid of a
        square matrix and 16 workers each worker holds 4 tiles of one column block, so
        that a column block's partial gradients are summed on the worker that computed
        them and only one sum per worker travels."""
        return self.placement.slots

    def _place_tiles(self, obs, sub_chunk: int) -> list:
        T = obs.n_tiles
        slots = self._placement()
        if obs.path is None:
            return self.ex.scatter([obs.read_tile(t) for t in range(T)], placement=slots)
        refs = tile_refs(obs, sub_chunk)
        if self.cache == "memory":
            return [self.ex.submit_on(slots[t], _load_tile, refs[t], name="load") for t in range(T)]
        return refs

    def _tiles_iter(self):
        a, b = self.grid
        for t in range(a * b):
            ia, ib = divmod(t, b)
            yield t, ia, ib

    def _factors(self, state) -> tuple:
        """``(L, R)`` of ``state`` (``R`` is ``L`` when symmetric)."""
        return state[0], state[0] if self.symmetric else state[1]

    def _submit(self, fn, tiles, t, ia, ib, L, R, *args, name: str):
        """``fn(tile t, L block ia, R block ib, *args, offsets=…)`` as a task, on the
        worker that holds tile ``t``."""
        offsets = self._tile_offsets(ia, ib)
        return self.ex.submit_on(
            self.placement.slots[t],
            fn, tiles[t], L.blocks[ia], R.blocks[ib], *args, offsets=offsets, name=name,
        )  # fmt: skip

    def _map_reduce(self, task, outputs, **kw) -> dict:
        """:func:`~.blockwise.map_reduce` over this grid, placed: tasks on their tiles'
        workers, partials added on them before moving, each factor block's sum ending
        on its owner (``block_slots``)."""
        return map_reduce(self.ex, self.grid, task, outputs, slots=self.placement.slots, **kw)

    def _per_tile(self, fn, tiles, state, name: str) -> list:
        """One task ``fn`` per tile of ``tiles`` (this grid) at ``state``."""
        L, R = self._factors(state)
        return [self._submit(fn, tiles, *tia, L, R, name=name) for tia in self._tiles_iter()]

    # ------------------------------------------------ offsets and validation
    def set_offsets(self, mu: float, row_bias, col_bias) -> None:
        """Model ``mu + b_i + c_j + <L_i, R_j>``: the offsets are scattered once, by block."""
        rb, cb = self.obs.row_bounds, self.obs.col_bounds
        row_bias = np.zeros(self.obs.shape[0]) if row_bias is None else np.asarray(row_bias)
        col_bias = np.zeros(self.obs.shape[1]) if col_bias is None else np.asarray(col_bias)
        own = self.block_slots
        rblocks = self.ex.scatter(
            [row_bias[rb[a] : rb[a + 1]].copy() for a in range(len(rb) - 1)], placement=own[0]
        )
        cblocks = self.ex.scatter(
            [col_bias[cb[b] : cb[b + 1]].copy() for b in range(len(cb) - 1)], placement=own[-1]
        )
        self._offsets = (float(mu), list(rblocks), list(cblocks))
        self._offset_values = (float(mu), row_bias, col_bias)

    def _tile_offsets(self, ia: int, ib: int):
        if self._offsets is None:
            return None
        mu, rblocks, cblocks = self._offsets
        return (mu, rblocks[ia], cblocks[ib])

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Observed entries per row and per column."""
        return self.obs.row_counts, self.obs.col_counts

    def bias_sums(self, mu: float, row_bias, col_bias):
        """Row and column sums of ``y − mu − b_i − c_j`` (one pass; vectors on the client)."""
        self.set_offsets(mu, row_bias, col_bias)
        rb, cb = self.obs.row_bounds, self.obs.col_bounds

        def bias(t, idx):
            ia, ib = idx
            m, n = int(rb[ia + 1] - rb[ia]), int(cb[ib + 1] - cb[ib])
            offs = self._tile_offsets(ia, ib)
            slot = self.placement.slots[t]
            return self.ex.submit_on(slot, _tile_bias, self._tiles[t], offs, m, n, name="bias")

        out = self._map_reduce(bias, [("r", 0), ("c", 1)])
        rs, cs = self.ex.gather([out["r"], out["c"]])
        return np.concatenate(rs), np.concatenate(cs)

    def set_row_weights(self) -> None:
        """Row weights ``w_i = n_i / mean(n)`` (observation counts) for the weighted ridge.

        Rows without observations get the smallest positive weight. The
        blocks of ``w`` and ``1/w`` are scattered once.
        """
        o = self.obs
        counts = [o.row_counts + o.col_counts] if self.symmetric else [o.row_counts, o.col_counts]
        self._weights = []
        for n, Fb, own in zip(counts, self.factor_bounds, self.block_slots):
            n = n.astype(np.float64)
            w = n / n[n > 0].mean()
            w[n == 0] = w[n > 0].min()
            blocks = [w[Fb[a] : Fb[a + 1]].copy() for a in range(len(Fb) - 1)]
            self._weights.append(
                (
                    self.ex.scatter(blocks, placement=own),
                    self.ex.scatter([1.0 / b for b in blocks], placement=own),
                )
            )

    def set_validation(self, vobs) -> None:
        """Held-out observations whose RMSE every pass also computes (same grid)."""
        o = self.obs
        same = (
            vobs.shape == o.shape
            and np.array_equal(vobs.row_bounds, o.row_bounds)
            and np.array_equal(vobs.col_bounds, o.col_bounds)
        )
        if not same:
            vobs = vobs.retile(bounds=(o.row_bounds, o.col_bounds))
        self._vtiles = self._place_tiles(vobs, CHUNK)
        self._vnnz = vobs.nnz

    # -------------------------------------------------- operator (spectral)
    def matmat(self, V: Blocked) -> Blocked:
        """``(Y / p) V`` for ``V`` blocked like the columns."""
        return self._spmm(V, transpose=False)

    def rmatmat(self, U: Blocked) -> Blocked:
        """``(Y / p)ᵀ U`` for ``U`` blocked like the rows."""
        return self._spmm(U, transpose=True)

    def symmat(self, V: Blocked) -> Blocked:
        """``((Y + Yᵀ) / 2p) V`` (square observations)."""
        rb = self.obs.row_bounds

        def spmm(t, idx):
            ia, ib = idx
            m_a, m_b = int(rb[ia + 1] - rb[ia]), int(rb[ib + 1] - rb[ib])
            offs = self._tile_offsets(ia, ib)
            return self.ex.submit_on(
                self.placement.slots[t],
                _tile_symspmm, self._tiles[t], V.blocks[ib], V.blocks[ia], m_a, m_b, offs,
                name="spmm",
            )  # fmt: skip

        out = self._map_reduce(spmm, [("Y", 0), ("Y", 1)], scales={"Y": 0.5 / self.p})
        return Blocked(self.ex, rb, V.ncols, out["Y"], self.block_slots[0])

    def _spmm(self, V: Blocked, transpose: bool) -> Blocked:
        out_bounds = self.obs.col_bounds if transpose else self.obs.row_bounds

        def spmm(t, idx):
            ia, ib = idx
            src, dst = (ia, ib) if transpose else (ib, ia)
            m = int(out_bounds[dst + 1] - out_bounds[dst])
            offs = self._tile_offsets(ia, ib)
            return self.ex.submit_on(
                self.placement.slots[t],
                _tile_spmm, self._tiles[t], V.blocks[src], m, transpose, offs, name="spmm",
            )  # fmt: skip

        axis = 1 if transpose else 0
        out = self._map_reduce(spmm, [("Y", axis)], scales={"Y": 1.0 / self.p})
        return Blocked(self.ex, out_bounds, V.ncols, out["Y"], self.block_slots[-1 if axis else 0])

    # ----------------------------------------------------------- protocol
    def pass_(self, state, it: int = 0) -> CompletionPass:
        """Submit one data pass at ``state``; nothing is gathered."""
        ex = self.ex
        L, R = self._factors(state)
        args = (self.loss, self.kernel, self.grad_scale)
        groups = self._grad_groups()
        if groups is None:

            def grad(t, idx):
                return self._submit(_tile_grad, self._tiles, t, *idx, L, R, *args, name="grad")

        else:  # one task per group of a worker's tiles
            parts: dict = {}
            for g in groups:
                ias = [t // self.grid[1] for t in g]
                ibs = [t % self.grid[1] for t in g]
                h = ex.submit_on(
                    self.placement.slots[g[0]], _tiles_grad,
                    [self._tiles[t] for t in g], [L.blocks[a] for a in ias],
                    [R.blocks[b] for b in ibs],
                    [self._tile_offsets(a, b) for a, b in zip(ias, ibs)], *args, name="grad",
                )  # fmt: skip
                parts.update((t, Slice(h, 3 * j)) for j, t in enumerate(g))

            def grad(t, idx):
                return parts[t]

        out = self._map_reduce(
            grad, [("G0", 0), ("G0" if self.symmetric else "G1", 1), ("v", None)]
        )
        G = [
            Blocked(ex, Fb, state[k].ncols, out[f"G{k}"], self.block_slots[k])
            for k, Fb in enumerate(self.factor_bounds)
        ]
        stats = small = None
        if groups is None:
            small = self.stats_parts(state, G)
        else:  # a cluster: one Gram task per worker
            stats = self.slot_stats_parts(state, G)
            small = [c.handles for c in stats]
        vres = []
        if self._vtiles is not None:  # held-out RMSE, in the same gather
            vres = self._per_tile(_tile_residual, self._vtiles, state, "validation")
        return CompletionPass(
            G=G, small=[small, out["v"].handles, vres], values=out["v"], stats=stats
        )

    def _grad_groups(self) -> list | None:
        """The tiles of each gradient task on a cluster (:data:`TILES_PER_TASK`, at least
        one task per worker thread); ``None`` in process, where a task costs next to
        nothing and one per tile balances the threads best."""
        if self.ex.kind != "distributed":
            return None
        if self._groups is None:
            per_worker = max(1, self.ex.nthreads // max(1, self.ex.n_workers))
            self._groups = slot_groups(self.placement.slots, per_worker, TILES_PER_TASK)
        return self._groups

    def scalars(self, pas: CompletionPass) -> PassStats:
        """The one gather of an iteration: losses and r×r Grams."""
        stats, values, vres = self.ex.gather(pas.small)
        if pas.stats is not None:  # per worker slot: back to per block, in block order
            stats = [c.in_order(s) for c, s in zip(pas.stats, stats)]
        value, sumsq = sum_small(pas.values.in_order(values))  # tile order, on any cluster
        extra = {}
        if vres:
            extra["validation"] = float(np.sqrt(sum(vres) / self._vnnz))
        return self.pass_stats(value * self.loss_scale, sumsq, sumsq / self.p, stats, extra)

    def close(self) -> None:
        for tiles in (self._tiles, self._vtiles or []):
            self.ex.release(*[t for t in tiles if not isinstance(t, TileRef)])

    # ----------------------------------------------------- initialisation
    def spectral(self, rank: int, *, seed: int, n_power: int = 4):
        """Top-``rank`` spectral pairs of ``Y/p``.

        Returns ``([U, V], s)``, or ``([U], w)`` when symmetric.
        """
        from .spectral import randomized_eigh, randomized_svd

        if self.symmetric:
            U, w = randomized_eigh(self, self.obs.row_bounds, rank, seed=seed, n_power=n_power)
            return [U], w
        bounds = (self.obs.row_bounds, self.obs.col_bounds)
        U, s, V = randomized_svd(self, bounds, rank, seed=seed, n_power=n_power)
        return [U, V], s

    def fit_sums(self, state: list) -> tuple[float, float]:
        """``(<P_Ω(X), Y_c>, ‖P_Ω(X)‖²)`` for ``X = L Rᵀ`` and the centred data (one pass)."""
        parts = self._per_tile(_tile_fit, self._tiles, state, "fit")
        xy, xx = sum_small(self.ex.gather(parts))
        return float(xy), float(xx)
