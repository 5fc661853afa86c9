"""Stratified blocks for distributed ScaledSGD (Gemulla et al.'s DSGD, for ``X Xᵀ``).

The rows of ``X`` are cut into ``B`` contiguous blocks. A sample touches the
blocks of its two (pairs) or three (triplets) rows: its *block set*, of size
1 to ``g`` (``g = 2`` for pairs, 3 for triplets). A **round** is a partition of
the ``B`` blocks into ``B / g`` *groups* of ``g`` blocks; in a round, the
samples whose block set lies inside one group are that group's *cell*. The
cells of one round touch disjoint rows, so they can run at the same time on
different workers and no row is written by two of them.

:func:`make_schedule` picks rounds that together contain every possible block
set, and gives each block set to exactly one cell (its first round): every
sample belongs to exactly one cell, fixed before any data is seen, so a
stream can be stratified chunk by chunk. For pairs the rounds are the
``B − 1`` rounds of the circle method (a 1-factorisation of the complete
graph on ``B`` blocks: each pair of blocks meets once); for triplets a greedy
cover of all block sets of size ≤ 3.

No dask import here (DESIGN.md §1).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

__all__ = ["Schedule", "make_schedule", "block_bounds", "cells_of", "local_rows", "to_local"]


@dataclass(frozen=True)
class Schedule:
    """``rounds[t]`` is a list of groups (sorted tuples of blocks); cell ``c`` is
    ``cells[c] = (t, q)``, group ``q`` of round ``t``."""

    n_blocks: int
    group_size: int
    rounds: tuple
    cells: tuple
    #: ``table[code]`` is the cell of the sorted block tuple with that code
    table: np.ndarray

    @property
    def n_rounds(self) -> int:
        return len(self.rounds)

    def group(self, cell: int) -> tuple:
        t, q = self.cells[cell]
        return self.rounds[t][q]

    def cells_of_round(self, t: int) -> list[int]:
        return [c for c, (tt, _) in enumerate(self.cells) if tt == t]


def _code(blocks: tuple, B: int, g: int) -> int:
    padded = tuple(blocks) + (blocks[-1],) * (g - len(blocks))
    return sum(b * B**p for p, b in enumerate(padded))


def _circle(B: int) -> list[list[tuple]]:
    """The ``B − 1`` rounds of the circle method for even ``B``."""
    rounds = []
    for t in range(B - 1):
        groups = [tuple(sorted((B - 1, t)))]
        for k in range(1, B // 2):
            groups.append(tuple(sorted(((t + k) % (B - 1), (t - k) % (B - 1)))))
        rounds.append(sorted(groups))
    return rounds


def _greedy(B: int, g: int) -> list[list[tuple]]:
    """Partitions of ``B`` blocks into groups of ``g`` until every block set of size ``≤ g``
    lies inside a group of some round."""
    todo = [frozenset(s) for s in itertools.combinations(range(B), g)]
    rounds = []
    while todo:
        groups: list[set] = []
        used: set = set()
        for s in todo:
            if any(s <= grp for grp in groups):
                continue
            for grp in groups:
                if len(grp | s) <= g and not ((s - grp) & used):
                    used |= s
                    grp |= s
                    break
            else:
                if len(groups) < B // g and not (s & used):
                    groups.append(set(s))
                    used |= s
        free = [b for b in range(B) if b not in used]
        for grp in groups:  # fill the groups, then open new ones, with the blocks left
            while len(grp) < g and free:
                grp.add(free.pop(0))
        while free:
            groups.append({free.pop(0) for _ in range(min(g, len(free)))})
        rounds.append(sorted(tuple(sorted(grp)) for grp in groups))
        todo = [s for s in todo if not any(s <= set(grp) for grp in rounds[-1])]
    return rounds


def make_schedule(n_blocks: int, group_size: int) -> Schedule:
    """The rounds and cells for ``n_blocks`` row blocks (a multiple of ``group_size``, or 1)."""
    B, g = int(n_blocks), int(group_size)
    if B <= g:
        rounds = [[tuple(range(B))]]
    elif g == 2 and B % 2 == 0:
        rounds = _circle(B)
    else:
        rounds = _greedy(B, g)
    cells = tuple((t, q) for t, groups in enumerate(rounds) for q in range(len(groups)))
    cell_of = {(t, q): c for c, (t, q) in enumerate(cells)}
    table = np.full(B**g, -1, dtype=np.int64)
    for combo in itertools.combinations_with_replacement(range(B), g):
        blocks = tuple(sorted(set(combo)))
        for t, groups in enumerate(rounds):
            q = next((q for q, grp in enumerate(groups) if set(blocks) <= set(grp)), None)
            if q is not None:
                table[_code(combo, B, g)] = cell_of[(t, q)]
                break
    assert np.all(table[[_code(c, B, g) for c in
                         itertools.combinations_with_replacement(range(B), g)]] >= 0)  # fmt: skip
    return Schedule(B, g, tuple(tuple(r) for r in rounds), cells, table)


def block_bounds(d: int, n_blocks: int) -> np.ndarray:
    """``bounds[b]:bounds[b + 1]`` are the rows of block ``b`` (near-equal, contiguous)."""
    return (np.arange(n_blocks + 1, dtype=np.int64) * d) // n_blocks


def _block(idx: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    return np.searchsorted(bounds, idx, side="right") - 1


def cells_of(index_columns, bounds: np.ndarray, sched: Schedule) -> np.ndarray:
    """The cell of every sample whose row indices are ``index_columns`` (2 or 3 arrays)."""
    B, g = sched.n_blocks, sched.group_size
    blocks = np.sort(np.stack([_block(np.asarray(c), bounds) for c in index_columns]), axis=0)
    while len(blocks) < g:
        blocks = np.concatenate([blocks, blocks[-1:]])
    code = sum(blocks[p].astype(np.int64) * B**p for p in range(g))
    return sched.table[code]


def local_rows(group: tuple, bounds: np.ndarray) -> np.ndarray:
    """The global rows of a group's blocks, in the order of its local copy of ``X``."""
    return np.concatenate([np.arange(bounds[b], bounds[b + 1]) for b in group])


def to_local(idx: np.ndarray, group: tuple, bounds: np.ndarray) -> np.ndarray:
    """Global row indices (all inside ``group``'s blocks) → rows of the group's local ``X``."""
    off = np.zeros(len(bounds) - 1, dtype=np.int64)
    pos = 0
    for b in group:
        off[b] = pos - bounds[b]
        pos += bounds[b + 1] - bounds[b]
    return idx + off[_block(idx, bounds)]
