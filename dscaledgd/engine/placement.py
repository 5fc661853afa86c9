"""Which worker holds which tile, and where each factor block's sum ends.

A placed pass (:func:`dscaledgd.engine.blockwise.map_reduce` with ``slots``) adds
the partials of a factor block in one fixed order, the tiles' C order, as a left
fold, and cuts the fold into one task per run of consecutive partials held by one
worker: the worker adds its own partials before anything moves, and only its
running sum travels to the next run's worker. Where the cuts fall does not change
a single addition, so the bits are those of the grid, whatever the workers.

The block's sum ends on the worker of its last partial, its **owner**: the Grams,
the update and the next value of the block stay there, and the new block travels
to every other worker whose tiles use it. Per iteration a block therefore moves
``(runs − 1) + (workers touching it − 1)`` times, and the placement picks, among

* **band layouts**: the tile rows cut into ``P`` contiguous bands and the tile
  columns into ``Q`` (``P·Q`` = the worker count), one worker per rectangle;
* **runs**: the tiles in column-major (or row-major) order cut into equal runs,

the one that spreads the tiles evenly (at most ``⌈tiles / workers⌉`` per worker)
and moves the fewest factor rows in all. On a 16 × 4 grid of a square matrix and
16 workers that is 4 × 4 bands: each worker holds 4 tiles of one column block.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

__all__ = ["Placement", "fold_order", "traffic_rows"]


def fold_order(grid, symmetric: bool) -> dict:
    """``{(factor, block): [tile, ...]}``: the tiles whose partials a block adds up, in
    the order they are added (C order over tiles; a symmetric tile ``(i, j)`` adds to
    block ``i`` and then to block ``j``)."""
    a, b = (int(g) for g in grid)
    order: dict = {}
    for t, (i, j) in enumerate(np.ndindex(a, b)):
        for blk in ((0, i), (0, j)) if symmetric else ((0, i), (1, j)):
            order.setdefault(blk, []).append(t)
    return order


def _runs(seq) -> int:
    return 1 + sum(1 for x, y in zip(seq, seq[1:]) if x != y)


def traffic_rows(slots, order: dict, sizes) -> int:
    """Factor rows moved per iteration by the tile ``slots`` (see the module docstring)."""
    total = 0
    for (k, i), tiles in order.items():
        seq = [slots[t] for t in tiles]
        total += int(sizes[k][i]) * (_runs(seq) - 1 + len(set(seq)) - 1)
    return total


def _cuts(n: int, parts: int) -> list[int]:
    """Band index of each of ``n`` items cut into ``parts`` contiguous near-equal bands."""
    return [k * parts // n for k in range(n)]


def _candidates(a: int, b: int, W: int):
    T = a * b
    if W <= 1 or T == 1:
        yield "one worker", [0] * T
        return
    for P in range(1, min(a, W) + 1):
        Q, rem = divmod(W, P)
        if rem or Q > b:
            continue
        rows, cols = _cuts(a, P), _cuts(b, Q)
        yield f"{P}x{Q} bands", [rows[i] * Q + cols[j] for i, j in np.ndindex(a, b)]
    runs = _cuts(T, min(W, T))
    col_major = [0] * T
    for pos, (j, i) in enumerate(np.ndindex(b, a)):
        col_major[i * b + j] = runs[pos]
    yield "column runs", col_major
    yield "row runs", runs


class Placement:
    """The slot (worker index) of every tile and the owner slot of every factor block.

    Parameters
    ----------
    grid : (a, b) tiles
    bounds : row bounds of each factor (one factor when ``symmetric``)
    n_workers : the executor's worker count
    symmetric : tile ``(i, j)`` adds to blocks ``i`` and ``j`` of the one factor

    Attributes
    ----------
    slots : the slot of each tile, C order
    owners : per factor, the slot where each block's sum ends (its last tile's)
    rows_moved : factor rows moved per iteration (:func:`traffic_rows`)
    """

    def __init__(self, grid, bounds, n_workers: int, symmetric: bool = False):
        a, b = (int(g) for g in grid)
        self.grid = (a, b)
        self.n_workers = W = max(1, int(n_workers))
        self.order = fold_order(self.grid, symmetric)
        sizes = [np.diff(np.asarray(Fb, dtype=np.int64)) for Fb in bounds]
        fair = math.ceil(a * b / W)
        best = None
        for layout, slots in _candidates(a, b, W):
            if max(Counter(slots).values()) > fair:
                continue
            rows = traffic_rows(slots, self.order, sizes)
            if best is None or rows < best[0]:
                best = (rows, layout, slots)
        self.rows_moved, self.layout, self.slots = best
        self.owners = [
            [self.slots[self.order[(k, i)][-1]] for i in range(len(s))] for k, s in enumerate(sizes)
        ]

    def __repr__(self) -> str:
        return (
            f"Placement({self.layout}, {self.n_workers} workers, "
            f"{self.rows_moved} factor rows moved per iteration)"
        )
