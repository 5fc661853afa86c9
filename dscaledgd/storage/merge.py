"""Bounded-memory scatter and per-tile merge of the out-of-core import (storage/ingest.py).

**Runs.** Each input chunk is cut into slices of at most ``B`` entries (the
task's entry budget, :func:`budget_entries`). Each slice is sorted by
``(tile, banded key)`` (stable, so equal keys keep input order) and written
to the scratch directory as one *run file*::

    run-<chunk>-<slice>.bin = key int64 (m) | value float64 (m) | pos int64 (m)
                              | sample key (S) | sample pos (S)

``key`` is the tile-local banded key ``(j // W) · (h·W) + i·W + j % W`` (``h``
the tile's height, ``W`` the column band): ordering by it is the store's
banded order ``(j // W, i, j)`` (:func:`~dscaledgd.storage.layout.blocked_order`).
``pos`` is the entry's position in the input. The samples are every
``every``-th entry of each tile's piece of the run.

**Merge.** Tile ``t`` is the merge of its pieces of all runs, in ``(key, pos)``
order; ``(key, pos)`` is unique, so a tile can be cut anywhere. The tile's
task cuts it into sub-ranges of at most about ``B`` entries, choosing cut
points among the samples (each sample bounds its run's count below and above
to within ``every`` entries, :func:`_plan`), finds each cut's exact position
in every run from a window of at most ``every`` entries, and then, one
sub-range at a time, reads the pieces, sorts them (stably, by key: the runs
come in input order) and applies the duplicate policy. A group of equal keys
cut by a sub-range boundary is carried to the next sub-range as one pseudo
entry (its running sum, count and first position), so sums are accumulated
in exactly the order of a whole-tile sort: the store is byte-identical to a
merge of the whole tile. The output is written through a chunk-aligned buffer
(:class:`_Writer`); the Zarr chunks a tile shares with its neighbours are
written to the scratch directory and assembled afterwards.

**Budget.** A task holds at most about ``budget`` bytes besides its input
chunk and one output Zarr chunk: ``budget`` is ``MERGE_BUDGET`` when set, else
``MERGE_FRACTION`` of the worker's memory limit divided by its threads
(outside a distributed worker: of physical memory divided by the CPU count),
clamped to ``[MIN_BUDGET, MAX_BUDGET]``; sub-ranges hold
``budget / BYTES_PER_ENTRY`` entries.
"""

from __future__ import annotations

import os

import numpy as np

from . import layout

__all__ = ["MERGE_BUDGET", "task_budget", "budget_entries", "scatter_chunk", "tile_task"]

#: Bytes a scatter or merge task may hold (its input chunk aside); ``None``: from the
#: worker's memory limit (see the module docstring). Passed to the tasks by the client.
MERGE_BUDGET: int | None = None
#: Fraction of a worker's memory limit (per thread) one import task may hold.
MERGE_FRACTION = 0.125
MIN_BUDGET, MAX_BUDGET = 8 << 20, 256 << 20
#: Peak bytes per entry of a sub-range being merged (reads, sort, gathers, groups).
BYTES_PER_ENTRY = 96
#: Fewest entries a sub-range or run may hold, whatever the budget.
MIN_ENTRIES = 16

_I8, _F8 = np.dtype(np.int64), np.dtype(np.float64)
_MAXPOS = np.iinfo(np.int64).max


# ------------------------------------------------------------------ budget
def task_budget(budget: int | None = None, worker=None) -> int:
    """Bytes this task may hold: ``budget`` if given, else a share of the memory limit of
    ``worker`` (default: the distributed worker running this task, if any)."""
    if budget is not None:
        return int(budget)
    limit, nthreads = None, 1
    if worker is None:
        try:
            from distributed import get_worker

            worker = get_worker()
        except Exception:  # not in a distributed worker
            worker = None
    if worker is not None:
        limit = worker.memory_manager.memory_limit
        nthreads = worker.state.nthreads
    if not limit:
        try:
            limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
            limit = 8 << 30
        nthreads = os.cpu_count() or 1
    share = MERGE_FRACTION * limit / max(1, nthreads)
    return int(np.clip(share, MIN_BUDGET, MAX_BUDGET))


def budget_entries(budget: int, reserve: int = 0) -> int:
    """Entries a sub-range (or a scatter slice) may hold in ``budget - reserve`` bytes."""
    return max(MIN_ENTRIES, (int(budget) - int(reserve)) // BYTES_PER_ENTRY)


# ------------------------------------------------------------ banded keys
def tile_geometry(row_bounds, col_bounds, band: int):
    """Per-tile height ``h``, and the offsets that make ``base[t] + key`` one sort key
    over all tiles (``None`` when that would overflow int64)."""
    h = np.diff(np.asarray(row_bounds, np.int64))
    w = np.diff(np.asarray(col_bounds, np.int64))
    W = int(band)
    span = [int(-(-int(wj) // W)) * int(hi) * W for hi in h for wj in w]
    if sum(span) < 2**63 - 1:
        base = np.concatenate([[0], np.cumsum(np.array(span, dtype=object))[:-1]]).astype(np.int64)
    else:
        base = None
    return h, base


def banded_key(lr, lc, h, band: int):
    """The tile-local banded key of local indices (``h``: the tile's height, per entry or one)."""
    W = np.int64(band)
    lc = lc.astype(np.int64)
    return (lc // W) * (np.asarray(h, np.int64) * W) + lr.astype(np.int64) * W + lc % W


def decode_key(key, h: int, band: int):
    """Local ``(rows, cols)`` (int32) of banded keys of a tile of height ``h``."""
    W = int(band)
    hw = int(h) * W
    b, rem = np.divmod(key, hw)
    lr, j = np.divmod(rem, W)
    return lr.astype(np.int32), (b * W + j).astype(np.int32)


# ----------------------------------------------------------------- scatter
def scatter_chunk(chunk, k, offset, row_bounds, col_bounds, band, scratch, every, budget):
    """Write chunk ``k`` (input positions from ``offset``) as sorted runs; return per run
    ``(file, m, counts per tile)``."""
    rows, cols, vals = chunk
    n = len(vals)
    T = (len(row_bounds) - 1) * (len(col_bounds) - 1)
    b = len(col_bounds) - 1
    h, base = tile_geometry(row_bounds, col_bounds, band)
    B = budget_entries(task_budget(budget))
    out = []
    for s, a in enumerate(range(0, n, B)):
        e = min(n, a + B)
        tile, lr, lc = layout.tile_of(
            np.asarray(rows[a:e], np.int64), np.asarray(cols[a:e], np.int64), row_bounds, col_bounds
        )
        key = banded_key(lr, lc, h[tile // b], band)
        del lr, lc
        if base is not None:
            order = np.argsort(base[tile] + key, kind="stable")
        else:  # pragma: no cover - tiles of more than 2**62 cells
            order = np.argsort(key, kind="stable")
            order = order[np.argsort(tile[order], kind="stable")]
        counts = np.bincount(tile, minlength=T).astype(np.int64)
        tile = tile[order]
        key = key[order]
        # samples: every `every`-th entry of each tile's piece
        cum = np.concatenate([[0], np.cumsum(counts)])
        samp = np.flatnonzero((np.arange(e - a) - cum[tile]) % every == 0)
        del tile
        name = f"run-{k}-{s}.bin"
        with open(os.path.join(scratch, name), "wb") as f:  # never creates the directory
            key.tofile(f)
            np.asarray(vals[a:e], np.float64)[order].tofile(f)
            (order + np.int64(offset + a)).tofile(f)
            key[samp].tofile(f)
            (order[samp] + np.int64(offset + a)).tofile(f)
        out.append((name, e - a, counts))
    return out


def tile_specs(runs, t: int, every: int) -> list:
    """The pieces of tile ``t``: ``(file, m, S, start, n, sample_start, n_samples)`` per run
    holding entries of ``t``, in run (= input) order. ``runs``: ``(file, m, counts)``."""
    specs = []
    for name, m, counts in runs:
        if counts[t] == 0:
            continue
        ns = -(-counts // every)
        specs.append(
            (
                name,
                int(m),
                int(ns.sum()),
                int(counts[:t].sum()),
                int(counts[t]),
                int(ns[:t].sum()),
                int(ns[t]),
            )
        )
    return specs


# ------------------------------------------------------------------- reads
class _Run:
    """Ranged reads of one tile's piece of a run file."""

    def __init__(self, scratch, spec):
        self.path = os.path.join(scratch, spec[0])
        self.m, self.S, self.start, self.n, self.s0, self.ns = spec[1:]

    def _read(self, f, block: int, start: int, count: int, dtype) -> np.ndarray:
        f.seek(8 * (block + start))
        x = np.fromfile(f, dtype=dtype, count=count)
        if len(x) != count:
            raise OSError(f"The import's scratch file {self.path!r} is truncated.")
        return x

    def read(self, lo: int, hi: int, fields=("key", "val", "pos")):
        """Entries ``lo:hi`` of the piece (piece-relative) as a dict of arrays."""
        blocks = {"key": (0, _I8), "val": (self.m, _F8), "pos": (2 * self.m, _I8)}
        with open(self.path, "rb") as f:
            return {
                name: self._read(f, blocks[name][0], self.start + lo, hi - lo, blocks[name][1])
                for name in fields
            }

    def samples(self):
        with open(self.path, "rb") as f:
            k = self._read(f, 3 * self.m, self.s0, self.ns, _I8)
            p = self._read(f, 3 * self.m + self.S, self.s0, self.ns, _I8)
        return k, p


def _csearch(keys, pos, ck, cp) -> int:
    """How many ``(keys, pos)`` (sorted by key, then pos) are below ``(ck, cp)``."""
    lo = int(np.searchsorted(keys, ck, "left"))
    hi = int(np.searchsorted(keys, ck, "right"))
    return lo + int(np.searchsorted(pos[lo:hi], cp, "left"))


def _plan(runs, B: int, every: int) -> list:
    """Cut positions ``[P_0 = 0, P_1, ..., P_end = n]`` (arrays over runs) such that
    each sub-range ``P_i:P_{i+1}`` holds at most about ``B`` entries.

    Run ``r``'s samples below a cut ``c`` (``a`` of them) bound its entries below
    ``c`` to ``[(a - 1)·every + 1, min(n_r, a·every)]``; in the global order of
    all samples each sample adds ``dL`` to the lower and ``dU`` to the upper
    bound of every cut above it. Cuts are chosen greedily as the last sample
    whose upper bound stays within ``B`` of the previous cut's lower bound.
    """
    n = np.array([r.n for r in runs], np.int64)
    N = int(n.sum())
    start = np.zeros(len(runs), np.int64)
    if N <= B:
        return [start, n]
    sk, sp, sr, dU, dL = [], [], [], [], []
    for i, r in enumerate(runs):
        k, p = r.samples()
        j = np.arange(len(k), dtype=np.int64)
        sk.append(k)
        sp.append(p)
        sr.append(np.full(len(k), i, np.int64))
        dU.append(np.minimum(r.n, (j + 1) * every) - j * every)
        dL.append(np.where(j == 0, 1, every))
    order = np.lexsort((np.concatenate(sp), np.concatenate(sk)))
    sk, sp = np.concatenate(sk)[order], np.concatenate(sp)[order]
    sr = np.concatenate(sr)[order]
    U = np.concatenate([[0], np.cumsum(np.concatenate(dU)[order])])[:-1]
    L = np.concatenate([[0], np.cumsum(np.concatenate(dL)[order])])[:-1]
    cuts, cur = [], 0
    while N - L[cur] > B:
        j = int(np.searchsorted(U, L[cur] + B, "right")) - 1
        j = max(j, cur + 1)  # progress even when one step overshoots (by < runs · every)
        if j >= len(U):
            break
        cuts.append(j)
        cur = j
    positions = [start]
    # per run, the global order indices of its samples (ascending)
    per_run = np.split(
        np.argsort(sr, kind="stable"), np.cumsum(np.bincount(sr, minlength=len(runs)))[:-1]
    )
    for j in cuts:
        ck, cp = sk[j], sp[j]
        P = np.empty(len(runs), np.int64)
        for i, r in enumerate(runs):
            a = int(np.searchsorted(per_run[i], j))  # samples of run i below the cut
            if a == 0:
                P[i] = 0
                continue
            lo, hi = (a - 1) * every + 1, min(r.n, a * every)
            if hi <= lo:
                P[i] = lo
                continue
            w = r.read(lo, hi, ("key", "pos"))
            P[i] = lo + _csearch(w["key"], w["pos"], ck, cp)
        positions.append(P)
    positions.append(n)
    return positions


# ------------------------------------------------------------------- merge
def _merge(scratch, specs, h, band, policy, budget, every, reserve, emit):
    """Stream tile entries in banded order through the duplicate policy into
    ``emit(key, values)``; returns the tile's duplicate record (``"error"``) or None."""
    runs = [_Run(scratch, s) for s in specs]
    B = budget_entries(task_budget(budget), reserve)
    positions = _plan(runs, B, every)
    carry = None  # (key, value, count, first pos) of a group the last sub-range left open
    best, n_same = None, 0
    for s in range(len(positions) - 1):
        lo, hi = positions[s], positions[s + 1]
        final = s == len(positions) - 2
        m = int((hi - lo).sum()) + (carry is not None)
        key, val, pos = np.empty(m, _I8), np.empty(m, _F8), np.empty(m, _I8)
        cnt = None
        o = 0
        if carry is not None:
            key[0], val[0], pos[0] = carry[0], carry[1], carry[3]
            o = 1
        for r, a, b in zip(runs, lo, hi):
            if b > a:
                piece = r.read(int(a), int(b))
                key[o : o + b - a], val[o : o + b - a], pos[o : o + b - a] = (
                    piece["key"],
                    piece["val"],
                    piece["pos"],
                )
                o += b - a
                del piece
        if m == 0:
            continue
        order = np.argsort(key[1:] if carry is not None else key, kind="stable")
        if carry is not None:  # the pseudo entry stays first: it precedes its group
            order = np.concatenate([[0], order + 1])
        key, val, pos = key[order], val[order], pos[order]
        del order
        same = key[1:] == key[:-1]
        if policy == "error":  # nothing combined: note the earliest repeat, emit all
            ns = int(same.sum())
            last_first = int(pos[-1])
            if ns:
                n_same += ns
                k = int(np.argmin(np.where(same, pos[1:], _MAXPOS)))
                first = np.flatnonzero(np.concatenate([[True], ~same]))
                j = first[np.searchsorted(first, k + 1, side="right") - 1]
                if best is None or pos[k + 1] < best[1]:
                    best = (int(pos[j]), int(pos[k + 1]), int(key[j]))
                last_first = int(pos[first[-1]])
            skip = int(carry is not None)
            carry = (int(key[-1]), 0.0, 1, last_first)
            emit(key[skip:], val[skip:])
            continue
        if carry is not None:
            cnt = np.ones(m, _F8)
            cnt[0] = carry[2]
        start = np.concatenate([[True], ~same])
        del same
        first = np.flatnonzero(start)
        group = np.cumsum(start) - 1
        del start
        if policy == "last":
            gv = val[np.concatenate([first[1:] - 1, [len(val) - 1]])]
            gc = None
        else:
            gv = np.bincount(group, weights=val)
            gc = None
            if policy == "mean":
                gc = np.bincount(group, weights=cnt) if cnt is not None else np.bincount(group)
        del group, val
        gk, gp = key[first], pos[first]
        del key, pos, first
        if not final:
            carry = (int(gk[-1]), float(gv[-1]), 1 if gc is None else gc[-1], int(gp[-1]))
            gk, gv = gk[:-1], gv[:-1]
            gc = None if gc is None else gc[:-1]
        emit(gk, gv if gc is None else gv / gc)
    if best is None:
        return None
    lr, lc = decode_key(np.array([best[2]], np.int64), h, band)
    return (best[0], best[1], n_same, int(lr[0]), int(lc[0]))


class _Writer:
    """Writes a tile's output range ``[start, end)`` of the final arrays chunk by chunk.

    Zarr chunks inside the range are written whole; a chunk the range shares
    with a neighbour is written to ``scratch`` as an edge piece for
    :func:`assemble`.
    """

    def __init__(self, path, scratch, t, start, end, chunk, total):
        self.path, self.scratch, self.t = path, scratch, t
        self.start, self.end, self.chunk, self.total = start, end, chunk, total
        self.cur, self.buf, self.edges, self.arrays = start, None, [], None

    def push(self, lr, lc, v) -> None:
        n, i = len(v), 0
        while i < n:
            j = self.cur // self.chunk
            c0 = j * self.chunk
            c1 = min(c0 + self.chunk, self.total, self.end)
            if self.buf is None:
                size = c1 - self.cur
                self.buf_lo = self.cur
                self.buf = (np.empty(size, np.int32), np.empty(size, np.int32), np.empty(size))
            take = min(n - i, c1 - self.cur)
            o = self.cur - self.buf_lo
            for dst, src in zip(self.buf, (lr, lc, v)):
                dst[o : o + take] = src[i : i + take]
            self.cur += take
            i += take
            if self.cur == c1:
                self._flush(j)

    def _flush(self, j: int) -> None:
        c0 = j * self.chunk
        c1 = min(c0 + self.chunk, self.total)
        lo, hi = self.buf_lo, self.cur
        if lo == c0 and hi == c1:
            if not os.path.isdir(self.path):  # the import was abandoned: write nothing
                raise FileNotFoundError(f"The import's output {self.path!r} was removed.")
            if self.arrays is None:
                from .ingest import _open

                self.arrays = [_open(self.path, name) for name in ("rows", "cols", "values")]
            for arr, x in zip(self.arrays, self.buf):
                arr[c0:c1] = x
        else:
            name = f"edge-{j}-{self.t}.bin"
            with open(os.path.join(self.scratch, name), "wb") as f:
                for x in self.buf:
                    x.tofile(f)
            self.edges.append((j, lo - c0, hi - lo, name))
        self.buf = None


def assemble(path, scratch, j: int, chunk: int, total: int, *edge_lists) -> int:
    """Write Zarr chunk ``j`` of the final arrays from the tiles' edge pieces."""
    from .ingest import _open

    c0, c1 = j * chunk, min((j + 1) * chunk, total)
    buf = (np.zeros(c1 - c0, np.int32), np.zeros(c1 - c0, np.int32), np.zeros(c1 - c0))
    for edges in edge_lists:
        for jj, off, n, name in edges:
            if jj != j:
                continue
            with open(os.path.join(scratch, name), "rb") as f:
                for x in buf:
                    x[off : off + n] = np.fromfile(f, dtype=x.dtype, count=n)
    for name, x in zip(("rows", "cols", "values"), buf):
        _open(path, name)[c0:c1] = x
    return c1 - c0


def tile_task(scratch, specs, shape, band, policy, budget, every, out=None):
    """Merge one tile of ``shape = (h, w)``.

    ``out=None``: count its entries after the duplicate policy (returns the
    count). ``out=(path, t, start, end, chunk, total)``: write them to
    ``[start, end)`` of the final arrays; returns ``(info, edges)``, ``info``
    holding the tile's count, duplicate record, sum of squares and tile-local
    row and column counts, ``edges`` its pieces of shared Zarr chunks.
    """
    h, w = int(shape[0]), int(shape[1])
    if out is None:
        total = [0]

        def count(key, v):
            total[0] += len(v)

        _merge(scratch, specs, h, band, policy, budget, every, 0, count)
        return total[0]
    path, t, start, end, chunk, total = out
    writer = _Writer(path, scratch, t, start, end, chunk, total)
    info = {"n": 0, "sumsq": 0.0, "rows": np.zeros(h, np.int64), "cols": np.zeros(w, np.int64)}

    def write(key, v):
        lr, lc = decode_key(key, h, band)
        info["n"] += len(v)
        info["sumsq"] += layout.sum_squares(v)
        info["rows"] += np.bincount(lr, minlength=h)
        info["cols"] += np.bincount(lc, minlength=w)
        writer.push(lr, lc, v)

    reserve = 16 * min(chunk, max(0, end - start))  # the writer's chunk buffer
    dup = _merge(scratch, specs, h, band, policy, budget, every, reserve, write)
    info["dup"] = None if dup is None else (*dup[:3], t, *dup[3:])
    return info, writer.edges
