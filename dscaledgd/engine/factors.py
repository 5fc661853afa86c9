"""Row-blocked tall matrices (factors, gradients, subspaces) held by an executor.

A :class:`Blocked` matrix is ``n × k`` cut into row blocks at ``bounds``;
each block is a task result on the workers (a future) or, for the thread
executor, in local memory. Only ``k × k`` matrices travel to the client.

Block operations are plain module-level functions so that they pickle by
reference; they are the only code that touches block data.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from .._random import seeded_normal_rows

__all__ = [
    "Blocked",
    "combine",
    "random_blocked",
    "zeros_blocked",
    "tree_sum",
    "fold_on",
    "fold_blocks_on",
    "sum_small",
]

#: Rows per independently seeded chunk of a random matrix: makes random
#: blocks identical whatever the partition.
_RANDOM_CHUNK = 4096


# ------------------------------------------------------------ block kernels
def _al(a):
    """``a``, or an aligned copy of it.

    A block that reached a worker by scatter or transfer is a view into the
    message's frame and may start at any byte (46 mod 64 was seen). NumPy calls
    such an array unaligned, and its matmul then leaves BLAS for its own loop,
    which rounds differently: the iterates lost their bit-identity across
    executors after the first re-rooting of the factors. Factor blocks are
    ``n_k × r``, so the copy is cheap.

    The copy is C-ordered, and so is every array this returns: BLAS rounds
    ``X @ A`` differently for a Fortran-ordered ``A`` (the client's r×r matrices
    from LAPACK are), and an aligned-only rule copied such an ``A`` to C order only
    when its message happened to leave it unaligned: two runs on one cluster
    differed in the last bits from the spectral start on.
    """
    if a is None or (a.flags.aligned and a.flags.c_contiguous):
        return a
    return np.array(a, order="C")


def _gram(X):
    X = _al(X)
    return X.T @ X


def _cross(X, Y):
    return _al(X).T @ _al(Y)


def _stats(F, G, w=None):
    F, G = _al(F), _al(G)
    if w is None:
        return F.T @ F, F.T @ G, G.T @ G
    return F.T @ F, F.T @ G, G.T @ G, F.T @ (F * w[:, None])


def _combine(X, A, G, B, gscale=None):
    # the r×r A and B come from the client (LAPACK: often Fortran order) inside the message
    X, G, A, B = _al(X), _al(G), _al(A), _al(B)
    out = X @ A if A is not None else 0.0
    if G is not None:
        if gscale is not None:
            G = G * gscale[:, None]
        out = out + G @ B
    return np.ascontiguousarray(out)


def _random_block(seed, r0, r1, k, scale):
    return seeded_normal_rows(seed, r0, r1, k, _RANDOM_CHUNK) * scale


def _zeros(m, k):
    return np.zeros((m, k))


def _sum(parts, scale):
    out = parts[0].copy() if scale == 1.0 else parts[0] * scale
    if scale == 1.0:
        for p in parts[1:]:
            out += p
    else:
        for p in parts[1:]:
            out += p * scale
    return out


def _concat(parts):
    return np.concatenate(parts)


# ------------------------------------------------------------------ class
def _on(ex, slots, a: int, fn, *args, name: str):
    """``fn(*args)`` as a task, on worker slot ``slots[a]`` when ``slots`` is given."""
    if slots is None:
        return ex.submit(fn, *args, name=name)
    return ex.submit_on(slots[a], fn, *args, name=name)


@dataclass(eq=False)
class Blocked:
    """An ``n × k`` matrix as row blocks ``[bounds[a], bounds[a+1])``.

    ``slots``: the worker slot that owns each block (tasks on a block run there; see
    :mod:`dscaledgd.engine.placement`), or ``None`` to let the scheduler choose.
    """

    ex: object
    bounds: np.ndarray
    ncols: int
    blocks: list
    slots: list | None = None

    @property
    def n(self) -> int:
        return int(self.bounds[-1])

    @property
    def nblocks(self) -> int:
        return len(self.blocks)

    def block_shape(self, a: int) -> tuple[int, int]:
        return int(self.bounds[a + 1] - self.bounds[a]), self.ncols

    # reductions return handles; gather them with the iteration's other small results
    def gram_parts(self, name="gram") -> list:
        return [_on(self.ex, self.slots, a, _gram, b, name=name) for a, b in enumerate(self.blocks)]

    def cross_parts(self, other: Blocked, name="cross") -> list:
        return [
            _on(self.ex, self.slots, i, _cross, a, b, name=name)
            for i, (a, b) in enumerate(zip(self.blocks, other.blocks))
        ]

    def stats_parts(self, grad: Blocked, weights: list | None = None, name="stats") -> list:
        """Per block ``(FᵀF, FᵀG, GᵀG)``, plus ``Fᵀ diag(w) F`` with row ``weights``."""
        w = weights or [None] * self.nblocks
        slots = self.slots or grad.slots
        return [
            _on(self.ex, slots, a, _stats, f, g, wb, name=name)
            for a, (f, g, wb) in enumerate(zip(self.blocks, grad.blocks, w))
        ]

    def gather(self) -> np.ndarray:
        """The whole matrix as one NumPy array on the client."""
        parts = self.ex.gather(list(self.blocks))
        return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])

    def to_dask(self):
        """A dask array over the blocks (futures stay where they are)."""
        import dask.array as da

        if self.ex.kind != "distributed":
            return da.from_array(self.gather(), chunks=(tuple(np.diff(self.bounds)), self.ncols))
        self.ex.flush()
        parts = [
            da.from_delayed(b, shape=self.block_shape(a), dtype=np.float64)
            for a, b in enumerate(self.blocks)
        ]
        return da.concatenate(parts) if len(parts) > 1 else parts[0]

    def release(self) -> None:
        self.ex.release(*self.blocks)

    def reroot(self) -> Blocked:
        """The same matrix with no task history (see ``Executor.reroot``), each block
        scattered to its owner's slot."""
        blocks = self.ex.reroot(self.blocks, placement=self.slots)
        return Blocked(self.ex, self.bounds, self.ncols, blocks, self.slots)


def combine(
    X: Blocked, A, G: Blocked | None, B, gscale: list | None = None, name="update"
) -> Blocked:
    """Blockwise ``X A + diag(s) G B`` (``A``/``B`` r×r NumPy or ``None``).

    ``gscale`` holds per-block row scales ``s`` (handles), or ``None`` for 1.
    Each block's task runs on its owner's slot (``X.slots``, else ``G.slots``).
    """
    slots = X.slots if X.slots is not None else (G.slots if G is not None else None)
    blocks = []
    for a, xb in enumerate(X.blocks):
        gb = G.blocks[a] if G is not None else None
        sb = gscale[a] if gscale is not None else None
        blocks.append(_on(X.ex, slots, a, _combine, xb, A, gb, B, sb, name=name))
    ncols = X.ncols if A is None else np.shape(A)[1]
    return Blocked(X.ex, X.bounds, ncols, blocks, slots)


def random_blocked(
    ex, bounds, k: int, seed: int, scale: float = 1.0, name="random", slots=None
) -> Blocked:
    """Gaussian ``n × k`` matrix, identical for any ``bounds`` given the seed."""
    blocks = [
        _on(ex, slots, a, _random_block, seed, int(bounds[a]), int(bounds[a + 1]), k, scale,
            name=name)
        for a in range(len(bounds) - 1)
    ]  # fmt: skip
    return Blocked(ex, np.asarray(bounds), k, blocks, slots)


def zeros_blocked(ex, bounds, k: int, name="zeros", slots=None) -> Blocked:
    blocks = [
        _on(ex, slots, a, _zeros, int(bounds[a + 1] - bounds[a]), k, name=name)
        for a in range(len(bounds) - 1)
    ]
    return Blocked(ex, np.asarray(bounds), k, blocks, slots)


def _sum_select(parts, index, scale):
    return _sum([p[index] for p in parts], scale)


def tree_sum(ex, parts: list, scale: float = 1.0, fan_in: int = 4, name="sum", index=None):
    """Sum task results in a fixed-order tree of fan-in ``fan_in``; scale at the root.

    The order is by position, so the result is reproducible on any scheduler.
    ``index``: the parts are tuples and element ``index`` of each is summed
    (selected inside the first level of sums: no selection task per part).
    """
    if index is not None:
        if len(parts) == 1 and scale == 1.0:
            return getitem(ex, parts[0], index, name=name)
        if len(parts) <= fan_in:
            return ex.submit(_sum_select, list(parts), index, scale, name=name)
        parts = [
            ex.submit(_sum_select, parts[i : i + fan_in], index, 1.0, name=name)
            for i in range(0, len(parts), fan_in)
        ]
    if len(parts) == 1 and scale == 1.0:
        return parts[0]
    level = list(parts)
    while len(level) > fan_in:
        level = [
            ex.submit(_sum, level[i : i + fan_in], 1.0, name=name)
            for i in range(0, len(level), fan_in)
        ]
    return ex.submit(_sum, level, scale, name=name)


def _fold(running, parts, indices, scale):
    """``running + Σ s·part`` added left to right: the arithmetic of :func:`_sum`, so
    a fold cut into several calls gives the bits of one call over all the parts."""
    out = None if running is None else running.copy()
    for p, i in zip(parts, indices):
        x = p if i is None else p[i]
        if scale != 1.0:
            x = x * scale
        if out is None:
            out = x.copy() if scale == 1.0 else x
        else:
            out += x
    return out


def fold_on(
    ex, parts, slots, *, indices=None, scale: float = 1.0, name: str = "sum", max_run: int = 4
):
    """The sum of ``parts`` added in order, one task per run of consecutive parts on
    one worker slot (at most ``max_run`` parts, so that the adding starts before the
    last part is ready), each starting from the previous run's sum.

    ``slots[k]``: the slot holding ``parts[k]``; ``indices[k]``: ``None`` when
    ``parts[k]`` is the array to add, else the element of the task result to add
    (picked inside the fold, on the worker that holds the result). Each worker adds
    its own parts before anything moves; only the running sum travels, once per
    change of worker, and the result ends on the slot of the last part. The
    additions, and so the bits, do not depend on the slots.
    """
    n = len(parts)
    indices = [None] * n if indices is None else list(indices)
    if n == 1 and scale == 1.0 and indices[0] is None:
        return parts[0]
    running = None
    for k, e in _runs(slots, max_run):
        running = ex.submit_on(
            slots[k], _fold, running, list(parts[k:e]), indices[k:e], scale, name=name
        )
    return running


def _runs(slots, max_run: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each task of :func:`fold_on`: runs of consecutive parts on
    one slot, at most ``max_run`` long."""
    out, k, n = [], 0, len(slots)
    while k < n:
        e = k + 1
        while e < n and e - k < max_run and slots[e] == slots[k]:
            e += 1
        out.append((k, e))
        k = e
    return out


def _fold_many(runnings, parts, indices, scale):
    """:func:`_fold` of several blocks in one task (``runnings`` ``None`` at the start)."""
    if runnings is None:
        runnings = [None] * len(parts)
    return [_fold(r, p, i, scale) for r, p, i in zip(runnings, parts, indices)]


def _fold_last(runnings, k, parts, indices, scale):
    """Block ``k`` of a :func:`_fold_many` result, with its last run of parts added."""
    return _fold(runnings[k], parts, indices, scale)


def fold_blocks_on(ex, blocks, *, scale: float = 1.0, name: str = "sum", max_run: int = 4):
    """:func:`fold_on` of several blocks' parts; one handle per block.

    ``blocks``: ``(parts, slots, indices)`` per block. Blocks whose folds hop through
    the same slots in the same order (on a 16 × 4 grid and 16 workers, the four row
    blocks of a worker's tiles) are folded together: one task per hop adds the parts
    of every block of the group and the running sums travel as one list; the last hop
    is one task per block, so each block's sum is its own result on its last slot.
    That is ``hops + blocks - 1`` tasks for the group instead of ``hops × blocks``,
    with the same additions, so the same bits, and the same bytes moved.
    """
    out: list = [None] * len(blocks)
    groups: dict = {}
    for b, (parts, slots, indices) in enumerate(blocks):
        n = len(parts)
        indices = [None] * n if indices is None else list(indices)
        if n == 1 and scale == 1.0 and indices[0] is None:
            out[b] = parts[0]
            continue
        runs = _runs(slots, max_run)
        sig = tuple(slots[k] for k, _ in runs)
        groups.setdefault(sig, []).append((b, parts, indices, runs))
    for sig, members in groups.items():
        if len(members) == 1 or len(sig) == 1:
            for b, parts, indices, _ in members:
                out[b] = fold_on(
                    ex, parts, blocks[b][1], indices=indices, scale=scale, name=name,
                    max_run=max_run,
                )  # fmt: skip
            continue
        running = None
        for h, slot in enumerate(sig[:-1]):
            spans = [m[3][h] for m in members]
            running = ex.submit_on(
                slot, _fold_many, running,
                [list(m[1][k:e]) for m, (k, e) in zip(members, spans)],
                [m[2][k:e] for m, (k, e) in zip(members, spans)], scale, name=name,
            )  # fmt: skip
        for j, (b, parts, indices, runs) in enumerate(members):
            k, e = runs[-1]
            out[b] = ex.submit_on(
                sig[-1], _fold_last, running, j, list(parts[k:e]), indices[k:e], scale, name=name
            )
    return out


def getitem(ex, handle, index, name="part"):
    """A task selecting ``handle[index]`` (keeps the other parts where they are)."""
    return ex.submit(operator.getitem, handle, index, name=name)


def sum_small(values) -> np.ndarray:
    """Client-side sum of gathered small arrays, in order."""
    out = np.array(values[0], dtype=np.float64, copy=True)
    for v in values[1:]:
        out += v
    return out


def concat(ex, X: Blocked, name="concat"):
    """One task holding the whole matrix (for a factor block used by every tile)."""
    return ex.submit(_concat, list(X.blocks), name=name)
