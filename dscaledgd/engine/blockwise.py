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
    select_in_sum: bool = False,
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
    select_in_sum : bool
        Summed parts are picked out of each task's result by the first level
        of the tree sum instead of one selection task per part and chunk
        (half the tasks of a Tucker pass). A sum task then receives whole
        results, so use it when every part is small (Tucker's factor rows
        and core), not for matrix partial gradients, where the selection
        task keeps the other partials on their worker.
    """
    scales, combine = scales or {}, combine or {}
    per_block: dict = {}
    flat: dict = {}
    single = len(outputs) == 1
    for t, idx in enumerate(grid_indices(grid)):
        h = task(t, idx)
        for part, (key, axis) in enumerate(outputs):
            summed = axis is not None and key not in combine
            if single:
                p = h
            elif select_in_sum and summed:
                p = (h, part)
            else:
                p = getitem(ex, h, part)
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

    def total(parts, scale):
        if parts and isinstance(parts[0], tuple):  # (result, part) pairs: select in the sum
            index = parts[0][1]
            return tree_sum(ex, [h for h, _ in parts], scale, name=name, index=index)
        return tree_sum(ex, parts, scale, name=name)

    for key, blocks in per_block.items():
        if key in combine:
            out[key] = [combine[key](i, b) for i, b in enumerate(blocks)]
        else:
            out[key] = [total(b, scales.get(key, 1.0)) for b in blocks]
    for key, (axis, parts) in flat.items():
        out[key] = total(parts, scales.get(key, 1.0)) if axis == "all" else parts
    return out
