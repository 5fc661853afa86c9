"""Distributed ScaledSGD: stratified cells on the workers, ``X`` and ``P`` on the client.

The samples are cut into the cells of a stratified schedule
(:mod:`dscaledgd.solvers.strata`): ``B`` row blocks, rounds of disjoint groups
of blocks, one cell per group and round. Each cell lives on one worker, with
its row indices made local to its group's rows. An epoch visits the rounds
in a random order; a round runs in **steps** of about ``sync_every`` samples:

1. per cell of the round, a task on the cell's worker gets the group's rows
   of ``X``, the synchronised ``P`` and Gram ``G``, and applies its share of
   the step (:func:`dscaledgd.solvers.online.group_step`) with its own copy
   of ``P``, kept current by Sherman–Morrison with its own samples;
2. the client writes the rows back and resynchronises: ``G += Σ ΔG`` (the
   r×r row-block Gram changes the tasks return), ``P = G⁻¹``.

The cells of a round touch disjoint rows, so no row is written twice at
once, and a step's tasks depend only on the state at the step's start: the
iterates do not depend on the number of workers or on the executor
(threads or distributed) for a given number of blocks; they differ from the
one-process run only by the order of the samples and by each task's ``P``
missing the other tasks' moves within a step.

**The shuffle.** At ingest each cell is permuted once (seeded); per epoch
the rounds come in a random order and each cell's share of a step is a
contiguous part of it, in a fresh random permutation (block shuffle plus
in-block permutation): every sample exactly once per epoch; samples of one
part stay together across epochs.

**Where things live.** The samples are split block by block where the block
is read (a NumPy block, a Dask array chunk, a Zarr slice, a CSV/Parquet
partition), then gathered into one array per cell on the cell's worker; no
process holds all of them. ``X`` (``d × r``) and ``P`` stay on the client:
each step ships each group's rows to its task and back (``2 d r`` numbers
per step in all).
"""

from __future__ import annotations

import math

import numpy as np

from ..exceptions import InputDataError
from ..problems import pairwise as pw
from ..solvers import strata
from ..solvers.online import _inv, group_step

__all__ = ["StratifiedEpochs", "sample_blocks", "block_sums", "BLOCK_SAMPLES", "read_samples"]

#: samples per block when cutting NumPy input
BLOCK_SAMPLES = 1 << 20


# ------------------------------------------------------------------ input blocks
class _Lazy:
    """A block read on the worker: a Dask array chunk (``Delayed``) computed in-task."""

    def __init__(self, obj, offset: int):
        self.obj, self.offset = obj, offset

    def load(self):
        return np.asarray(self.obj.compute(scheduler="sync"))


def sample_blocks(samples, loss: str, columns=None, func: str = "scaled_sgd") -> list:
    """The blocks of ``samples``: ``[(offset, data)]`` with ``data`` a tuple of NumPy
    columns, or a :class:`_Lazy` block read where its task runs. Accepts NumPy columns
    or arrays, Dask arrays (``(m, 3|4)``, or a tuple of 1-D), a Zarr array or its
    path, and a CSV or Parquet file (``columns``: the names of ``i, j, [k,] y``)."""
    want = 4 if loss == "bpr" else 3
    arr = _as_dask(samples, want, columns, func)
    if arr is None:
        return [(0, samples)]
    if arr.ndim != 2 or arr.shape[1] != want:
        other = "pairs (i, j, y)" if loss == "bpr" else "triplets (i, j, k, y)"
        what = "triplets (i, j, k, y)" if loss == "bpr" else "pairs (i, j, y)"
        raise InputDataError(
            f"{func}: loss={loss!r} takes {what}: an (m, {want}) array. Got shape "
            f"{arr.shape}"
            + (
                f" (that is {other})." if arr.ndim == 2 and arr.shape[1] == 7 - want else "."
            )  # fmt: skip
        )
    arr = arr.rechunk({1: -1})
    offsets = np.concatenate([[0], np.cumsum(arr.chunks[0])])
    blocks = arr.to_delayed().ravel()
    return [(int(o), _Lazy(b, int(o))) for o, b in zip(offsets, blocks)]


def read_samples(samples, loss: str, columns=None, func: str = "scaled_sgd"):
    """The whole of ``samples`` (any input :func:`sample_blocks` takes) as one NumPy
    ``(m, 3|4)`` array or the NumPy input itself: for held-out sets, which are read once."""
    arr = _as_dask(samples, 4 if loss == "bpr" else 3, columns, func)
    return samples if arr is None else np.asarray(arr.compute())


def _as_dask(samples, want, columns, func):
    import os

    import dask.array as da

    if isinstance(samples, da.Array):
        return samples
    if isinstance(samples, tuple | list) and samples and all(
        isinstance(c, da.Array) for c in samples
    ):  # fmt: skip
        return da.stack([c.astype(np.float64) for c in samples], axis=1)
    if isinstance(samples, str | os.PathLike):
        path = os.fspath(samples)
        low = path.lower()
        if low.endswith((".csv", ".parquet", ".pq", ".csv.gz")):
            return _table(path, want, columns, func)
        if not os.path.exists(path):
            raise InputDataError(f"{func}: the samples path {path!r} does not exist.")
        return da.from_zarr(path)
    try:
        import zarr

        if isinstance(samples, zarr.Array):
            return da.from_zarr(samples)
    except ImportError:  # pragma: no cover - zarr is required
        pass
    return None


def _table(path, want, columns, func):
    import dask.dataframe as dd

    default = ["i", "j", "k", "y"] if want == 4 else ["i", "j", "y"]
    names = list(columns) if columns is not None else default
    if len(names) != want:
        raise InputDataError(
            f"{func}: columns={columns!r} names {len(names)} columns; this loss needs "
            f"{want} (i, j, {'k, ' if want == 4 else ''}y)."
        )
    reader = dd.read_parquet if path.lower().endswith((".parquet", ".pq")) else dd.read_csv
    df = reader(path)
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise InputDataError(
            f"{func}: the columns {missing} are missing from {path!r} (it has "
            f"{list(df.columns)}). Name the columns with columns=(...)."
        )
    return df[names].astype("float64").to_dask_array(lengths=True)


def _load(data):
    return data.load() if isinstance(data, _Lazy) else data


def _block_max(data, loss: str, offset: int, func: str):
    I, J, K, Y, d = pw.check_samples(func, _load(data), loss, offset=offset)
    return d, len(Y)


def _split(data, loss, d, bounds, sched, offset, func):
    """Check a block and cut it into its cells: ``[(I, J, K, Y) local to the cell's group]``."""
    I, J, K, Y, _ = pw.check_samples(func, _load(data), loss, n_rows=d, offset=offset)
    cols = [I, J, K] if loss == "bpr" else [I, J]
    cell = strata.cells_of(cols, bounds, sched)
    by_cell = np.argsort(cell, kind="stable")  # one pass, not one per cell; order kept
    ends = np.cumsum(np.bincount(cell, minlength=len(sched.cells)))
    out = []
    for c in range(len(sched.cells)):
        sel = by_cell[(ends[c - 1] if c else 0) : ends[c]]
        grp = sched.group(c)
        loc = [strata.to_local(x[sel], grp, bounds) for x in (I, J, K)]
        out.append((loc[0], loc[1], loc[2], Y[sel]))
    return out


def _take(parts, c):
    return parts[c]


def _concat(seed, *pieces):
    """One cell's samples, from the pieces of every block, permuted once."""
    cols = [np.concatenate([p[q] for p in pieces]) for q in range(4)]
    perm = np.random.default_rng(seed).permutation(len(cols[0]))
    small = all(len(c) == 0 or int(c.max()) < 2**31 for c in cols[:3])
    kinds = [np.int32 if small else np.int64] * 3 + [np.float64]  # local rows: int32 halves
    return tuple(np.ascontiguousarray(c[perm], dtype=t) for c, t in zip(cols, kinds))


def block_sums(block, X, loss):
    """``pw.sums`` of a block held as ``(I, J, K, Y)`` with global indices."""
    I, J, K, Y = block
    return pw.sums(I, J, K, Y, X, loss)


def _cell_sums(cell, X_local, loss):
    I, J, K, Y = cell
    return pw.sums(I, J, K, Y, X_local, loss)


# ------------------------------------------------------------------ the epochs
class StratifiedEpochs:
    """The samples cut into cells on the workers; calling it runs one epoch
    (the ``epoch`` interface of :func:`dscaledgd.solvers.online.run_epochs`)."""

    def __init__(self, ex, samples, *, loss: str, scaled: bool, n_rows: int | None,
                 n_blocks: int, sync_every: int | None, seed: int, columns=None,
                 func: str = "scaled_sgd"):  # fmt: skip
        self.ex, self.loss, self.scaled = ex, loss, scaled
        g = 3 if loss == "bpr" else 2
        blocks = sample_blocks(samples, loss, columns, func)
        if len(blocks) == 1 and not isinstance(blocks[0][1], _Lazy):
            blocks = self._cut(blocks[0][1], loss, func)
        handles = [ex.scatter([b])[0] if not isinstance(b, _Lazy) else b for _, b in blocks]
        if n_rows is None:
            stats = ex.gather([ex.submit(_block_max, h, loss, o, func, name="sgd-scan")
                               for (o, _), h in zip(blocks, handles)])  # fmt: skip
            n_rows = max(s[0] for s in stats)
        self.d = int(n_rows)
        B = max(1, min(int(n_blocks), self.d))
        if B > g and B % g:
            B -= B % g
        self.sched = strata.make_schedule(B, g)
        self.bounds = strata.block_bounds(self.d, B)
        W = max(1, ex.n_workers)
        self.slots = [q % W for _, q in self.sched.cells]
        parts = [ex.submit(_split, h, loss, self.d, self.bounds, self.sched, o, func,
                           name="sgd-split")
                 for (o, _), h in zip(blocks, handles)]  # fmt: skip
        ncell = len(self.sched.cells)
        self.cells = []
        for c in range(ncell):
            pieces = [ex.submit(_take, p, c, name="sgd-take") for p in parts]
            self.cells.append(ex.submit_on(self.slots[c], _concat, (seed, c), *pieces,
                                           name="sgd-cell"))  # fmt: skip
            ex.release(*pieces)
        self.counts = [int(n) for n in ex.gather(
            [ex.submit_on(self.slots[c], _count, h, name="sgd-count")
             for c, h in enumerate(self.cells)])]  # fmt: skip
        ex.release(*parts, *[h for h in handles if not isinstance(h, _Lazy)])
        self.n_samples = int(sum(self.counts))
        if self.n_samples == 0:
            raise InputDataError(f"{func}: no samples were given.")
        self.sync_every = int(sync_every) if sync_every else max(1, math.ceil(self.n_samples / 100))
        self.rows = [strata.local_rows(self.sched.group(c), self.bounds) for c in range(ncell)]
        self.syncs = 0

    @staticmethod
    def _cut(data, loss, func):
        I, J, K, Y, _ = pw.check_samples(func, data, loss)
        cols = (I, J, K, Y) if loss == "bpr" else (I, J, Y)
        return [(lo, tuple(c[lo:lo + BLOCK_SAMPLES] for c in cols))
                for lo in range(0, len(Y), BLOCK_SAMPLES)]  # fmt: skip

    @property
    def n_blocks(self) -> int:
        return self.sched.n_blocks

    def __call__(self, X, P, lr, rng, info, mark, every):
        ex, sched = self.ex, self.sched
        G = X.T @ X
        epoch_seed = int(rng.integers(2**62))
        done, next_mark = 0, every
        for t in rng.permutation(sched.n_rounds):
            cells = [c for c in sched.cells_of_round(int(t)) if self.counts[c]]
            n_round = sum(self.counts[c] for c in cells)
            nsteps = max(1, math.ceil(n_round / self.sync_every))
            order = {c: rng.permutation(nsteps) for c in cells}
            for s in range(nsteps):
                futs = [ex.submit_on(self.slots[c], group_step, self.cells[c], X[self.rows[c]],
                                     P, G, lr, self.loss, self.scaled, (epoch_seed, c, s),
                                     int(order[c][s]), nsteps, name="sgd-step")
                        for c in cells]  # fmt: skip
                finite = True
                for c, (Xl, dG, refusals, ok) in zip(cells, ex.gather(futs)):
                    X[self.rows[c]] = Xl
                    G += dG
                    info["sm_refusals"] += refusals
                    finite = finite and ok
                if not finite:
                    return False
                if self.scaled:
                    try:
                        P[...] = _inv(G)
                    except np.linalg.LinAlgError:
                        return False
                self.syncs += 1
                done += sum(
                    self.counts[c] * (o + 1) // nsteps - self.counts[c] * o // nsteps
                    for c in cells for o in [int(order[c][s])]
                )  # fmt: skip
                while next_mark and done >= next_mark and done < self.n_samples:
                    mark(done)
                    next_mark += every
        info["syncs"] = self.syncs
        return True

    def objective(self, X):
        """``(mean objective, extra)`` over the training samples, cell by cell on the workers."""
        futs = [self.ex.submit_on(self.slots[c], _cell_sums, h, X[self.rows[c]], self.loss,
                                  name="sgd-eval")
                for c, h in enumerate(self.cells) if self.counts[c]]  # fmt: skip
        tot = np.sum(self.ex.gather(futs), axis=0)
        extra = {"auc": tot[1] / tot[2]} if self.loss == "bpr" else {}
        return float(tot[0] / tot[2]), extra

    def close(self):
        self.ex.release(*self.cells)
        self.cells = []


def _count(cell):
    return len(cell[3])
