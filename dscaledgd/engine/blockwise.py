"""The generic blockwise layer: map a chunk kernel over an N-d grid, reduce per axis block.

Every engine's data pass has the same shape (DESIGN.md §3): one coarse task
per chunk of an N-dimensional grid (matrix tiles, dense RPCA blocks, tensor
chunks), each returning several partial results; each partial is tree-summed
either per block of one grid axis (a partial gradient of the factor along
that axis), or over the whole grid (a core gradient), or kept per chunk (the
scalars the iteration gathers). :func:`map_reduce` does that once, for every
engine; the sums are in a fixed order (C order over the grid, then a fixed
fan-in tree), so any scheduler and worker count give the same bits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .factors import getitem, tree_sum

__all__ = ["grid_indices", "map_reduce"]


def grid_indices(grid: Sequence[int]) -> list[tuple[int, ...]]:
    """Every block index of ``grid``, in C order (the flat chunk number is the position)."""
    return list(np.ndindex(*(int(g) for g in grid)))


def map_reduce(
    ex,
    grid: Sequence[int],
    task: Callable[[int, tuple], object],
    outputs: Sequence[tuple[str, int | str | None]],
    *,
    scales: dict | None = None,
    combine: dict | None = None,
    name: str = "sum",
) -> dict:
    """Submit ``task(t, idx)`` for every chunk and reduce its parts.

    Parameters
    ----------
    ex : Executor
    grid : blocks per axis
    task : callable
        ``task(t, idx)`` submits the kernel of chunk ``t`` (C order) at block
        index ``idx`` and returns its handle.
    outputs : sequence of ``(key, axis)``, one per part of a task's result
        ``axis`` an int: the part is tree-summed per block along that grid
        axis, giving ``out[key]``, a list of ``grid[axis]`` handles (parts
        sharing a key add into the same blocks: a symmetric fit's two
        partial gradients); a tuple of axes: per block of the sub-grid over
        those axes (C order); ``"all"``: tree-summed over every chunk into one
        handle; ``None``: kept per chunk, a list in C order. With one output
        the task's result is the part itself (no selection task).
    scales : dict, optional
        ``{key: s}``: multiply the sums of ``key`` by ``s`` (at the tree's root).
    combine : dict, optional
        ``{key: f}``: reduce the per-block partials of ``key`` with
        ``f(block, parts)`` (a handle) instead of the tree sum (e.g. a merge
        of per-chunk top-k candidates).
    """
    scales, combine = scales or {}, combine or {}
    per_block: dict = {}
    flat: dict = {}
    for t, idx in enumerate(grid_indices(grid)):
        h = task(t, idx)
        for part, (key, axis) in enumerate(outputs):
            p = h if len(outputs) == 1 else getitem(ex, h, part)
            if isinstance(axis, tuple):  # blocks of the sub-grid over these axes
                sub = [int(grid[a]) for a in axis]
                blocks = per_block.setdefault(key, [[] for _ in range(int(np.prod(sub)))])
                blocks[int(np.ravel_multi_index(tuple(idx[a] for a in axis), sub))].append(p)
            elif isinstance(axis, int) and not isinstance(axis, bool):
                blocks = per_block.setdefault(key, [[] for _ in range(int(grid[axis]))])
                blocks[idx[axis]].append(p)
            else:
                flat.setdefault(key, (axis, []))[1].append(p)
    out = {}
    for key, blocks in per_block.items():
        if key in combine:
            out[key] = [combine[key](i, b) for i, b in enumerate(blocks)]
        else:
            out[key] = [tree_sum(ex, b, scales.get(key, 1.0), name=name) for b in blocks]
    for key, (axis, parts) in flat.items():
        out[key] = tree_sum(ex, parts, scales.get(key, 1.0), name=name) if axis == "all" else parts
    return out
