"""The generic blockwise layer: map a chunk kernel over an N-d grid, reduce per axis block.

Every engine's data pass has the same shape (DESIGN.md §3): one coarse task
per chunk of an N-dimensional grid (matrix tiles, dense RPCA blocks, tensor
chunks), each returning several partial results; each partial is tree-summed
either per block of one grid axis (a partial gradient of the factor along
that axis), or over the whole grid (a core gradient), or kept per chunk (the
scalars the iteration gathers). :func:`map_reduce` does that once, for every
engine; the sums are in a fixed order (C order over the grid, then a fixed
fan-in tree; or, when the chunks' workers are given, a left fold in C order cut
where the worker changes), so any scheduler and worker count give the same bits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .factors import fold_blocks_on, fold_on, getitem, tree_sum

__all__ = [
    "Slice",
    "slot_groups",
    "map_groups",
    "GroupPass",
    "grid_indices",
    "map_reduce",
    "Collected",
    "chunk_groups",
    "map_reduce_groups",
    "CHUNKS_PER_TASK",
]


class Slice:
    """Chunk ``t``'s parts inside a task that ran several chunks: element ``base + j`` of
    ``handle``'s result is part ``j`` (:func:`map_reduce` with ``slots``)."""

    __slots__ = ("handle", "base")

    def __init__(self, handle, base: int):
        self.handle, self.base = handle, int(base)


def slot_groups(slots: Sequence[int], per_slot: int, max_size: int) -> list[list[int]]:
    """The chunks of each slot (C order), cut into at least ``per_slot`` groups of at
    most ``max_size`` chunks, as even as can be: the chunks of one task each."""
    by_slot: dict = {}
    for t, s in enumerate(slots):
        by_slot.setdefault(s, []).append(t)
    groups = []
    for ts in by_slot.values():
        k = min(len(ts), max(per_slot, -(-len(ts) // max_size)))
        groups += [list(g) for g in np.array_split(ts, k)]
    return groups


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
    slots: Sequence[int] | None = None,
) -> dict:
    """Submit ``task(t, idx)`` for every chunk and reduce its parts.

    Parameters
    ----------
    ex : Executor
    grid : blocks per axis
    task : callable
        ``task(t, idx)`` submits the kernel of chunk ``t`` (C order) at block
        index ``idx`` and returns its handle; with ``slots``, it may instead return a
        :class:`Slice` of a task that ran several chunks of one slot (parts ``base``,
        ``base + 1``, … of its result are chunk ``t``'s).
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
    slots : sequence of int, optional
        The worker slot of each chunk's task (C order; :mod:`.placement`). Each
        block's parts are then added in chunk order as a left fold cut into one
        task per run of parts on one worker (:func:`~.factors.fold_on`: each
        worker adds its own parts before anything moves, the sum ends on the slot
        of the block's last chunk; blocks whose folds hop through the same slots
        share one task per hop, :func:`~.factors.fold_blocks_on`), and ``None``
        outputs are collected by one task per slot (``out[key]`` is then a
        :class:`Collected`). The chunk tasks are sent to the scheduler before the
        sums are built. No selection tasks; ``select_in_sum`` is ignored. The bits
        do not depend on the slots.
    """
    scales, combine = scales or {}, combine or {}
    per_block: dict = {}
    flat: dict = {}
    single = len(outputs) == 1
    for t, idx in enumerate(grid_indices(grid)):
        h, base = task(t, idx), None
        if isinstance(h, Slice):
            if slots is None or combine:
                raise ValueError("a Slice of a grouped task needs slots and no combine")
            h, base = h.handle, h.base
        for part, (key, axis) in enumerate(outputs):
            summed = axis is not None and key not in combine
            if slots is not None and (summed or axis is None):
                index = None if single else part
                if base is not None:
                    index = base + (index or 0)
                p = (h, index, slots[t], t)
            elif single:
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
        if slots is not None:
            hs, idx, where, _ = zip(*parts)
            return fold_on(ex, hs, where, indices=idx, scale=scale, name=name)
        if parts and isinstance(parts[0], tuple):  # (result, part) pairs: select in the sum
            index = parts[0][1]
            return tree_sum(ex, [h for h, _ in parts], scale, name=name, index=index)
        return tree_sum(ex, parts, scale, name=name)

    if slots is not None:  # the chunk tasks leave now, while the client builds the sums
        ex.flush()
    for key, blocks in per_block.items():
        if key in combine:
            out[key] = [combine[key](i, b) for i, b in enumerate(blocks)]
        elif slots is not None:  # blocks hopping through the same workers fold together
            parts = [tuple(zip(*b)) for b in blocks]  # (handles, indices, slots, chunks)
            out[key] = fold_blocks_on(
                ex, [(h, w, i) for h, i, w, _ in parts], scale=scales.get(key, 1.0), name=name
            )
        else:
            out[key] = [total(b, scales.get(key, 1.0)) for b in blocks]
    for key, (axis, parts) in flat.items():
        if axis == "all":
            out[key] = total(parts, scales.get(key, 1.0))
        elif slots is not None:
            out[key] = Collected.of(ex, parts)
        else:
            out[key] = parts
    return out


def _map_all(fn, calls):
    return [fn(*args) for args in calls]


def _pick_all(results, indices):
    return [r if i is None else r[i] for r, i in zip(results, indices)]


class Collected:
    """Small per-chunk parts fetched by one task per worker slot, not one per chunk.

    ``handles``: one per slot, each a list of parts; :meth:`in_order` puts the
    gathered lists back in chunk order (C order), whatever the slots.
    """

    def __init__(self, handles: list, chunks: list):
        self.handles, self.chunks = handles, chunks

    @classmethod
    def of(cls, ex, parts, name: str = "collect") -> Collected:
        """From ``(handle, index, slot, chunk)`` quadruples (see :func:`map_reduce`)."""
        by_slot: dict = {}
        for h, i, s, t in parts:
            by_slot.setdefault(s, []).append((h, i, t))
        handles, chunks = [], []
        for s, items in by_slot.items():
            hs, idx, ts = zip(*items)
            handles.append(ex.submit_on(s, _pick_all, list(hs), list(idx), name=name))
            chunks.append(list(ts))
        return cls(handles, chunks)

    @classmethod
    def map(cls, ex, fn, items, name: str) -> Collected:
        """``fn(*args)`` for each ``(slot, chunk, args)`` of ``items``, one task per slot."""
        by_slot: dict = {}
        for s, t, args in items:
            by_slot.setdefault(s, []).append((t, args))
        handles, chunks = [], []
        for s, calls in by_slot.items():
            handles.append(ex.submit_on(s, _map_all, fn, [a for _, a in calls], name=name))
            chunks.append([t for t, _ in calls])
        return cls(handles, chunks)

    def in_order(self, gathered: list) -> list:
        out: dict = {}
        for values, ts in zip(gathered, self.chunks):
            out.update(zip(ts, values))
        return [out[t] for t in sorted(out)]


# ------------------------------------------------------------------ grouped passes
#: Chunks per task of a grouped pass (:func:`map_reduce_groups`). Fixed by the
#: grid, never by the cluster, so the sums are the same on every scheduler. Four
#: chunks per task cut a 2-worker Tucker iteration from ~70 tasks to ~15 (each task
#: costs the scheduler about 2 ms on a loaded 2-core machine, measured in
#: benchmarks/RESULTS.md) and still leave ``n_chunks / 4`` tasks to run in parallel.
CHUNKS_PER_TASK = 4


def chunk_groups(n_chunks: int, size: int = CHUNKS_PER_TASK) -> list[list[int]]:
    """Contiguous runs of ``size`` chunk numbers (C order): the chunks of each grouped task."""
    return [list(range(s, min(n_chunks, s + size))) for s in range(0, n_chunks, size)]


def _run_group(fn, calls, shared, places, kinds):
    """Run ``fn(*call, *shared)`` for each chunk of a group and add up its parts in order.

    ``kinds[j]`` is ``"block"`` (part ``j`` of a chunk covers rows ``[lo, hi)`` of
    block ``key``, ``L`` rows long: ``places[c][j] = (key, lo, hi, L)``; the sums are
    ``{key: array}``) or ``"all"`` (one sum).
    """
    acc: list = [{} if kind == "block" else None for kind in kinds]
    for call, place in zip(calls, places):
        parts = fn(*call, *shared)
        if len(kinds) == 1:
            parts = (parts,)
        for j, (part, kind) in enumerate(zip(parts, kinds)):
            part = np.asarray(part, dtype=np.float64)
            if kind == "all":
                acc[j] = part.copy() if acc[j] is None else acc[j] + part
                continue
            key, lo, hi, length = place[j]
            block = acc[j].get(key)
            if block is None:
                block = acc[j][key] = np.zeros((length, *part.shape[1:]))
            block[lo:hi] += part
    return tuple(acc)


def _run_groups(fn, work, shared, kinds):
    """Several groups in one task (a worker's share of a pass): each group's sums, apart
    (``work`` is ``[(calls, places), ...]``, one pair per group, as :func:`_run_group`)."""
    return [_run_group(fn, calls, shared, places, kinds) for calls, places in work]


def _pick(result, path):
    for p in path:
        result = result[p]
    return result


def _sum_paths(parts, path, scale):
    out = np.array(_pick(parts[0], path), dtype=np.float64, copy=True)
    for p in parts[1:]:
        out += _pick(p, path)
    return out * scale if scale != 1.0 else out


def map_reduce_groups(
    ex,
    groups: Sequence[Sequence[int]],
    fn: Callable,
    call: Callable[[int], tuple],
    place: Callable[[int], Sequence],
    outputs: Sequence[tuple[str, str]],
    *,
    shared: tuple = (),
    slots: Sequence[int] | None = None,
    scales: dict | None = None,
    task_name: str = "pass",
    name: str = "sum",
    fan_in: int = 4,
) -> dict:
    """One task per group of chunks, partial sums per block inside it, then across groups.

    Parameters
    ----------
    ex : Executor
    groups : lists of chunk numbers (:func:`chunk_groups`)
    fn : callable
        The chunk kernel, ``fn(*call(t), *shared)``, returning one part per output.
    call : ``t ↦`` the per-chunk arguments of ``fn`` (handles allowed, nested in lists).
    place : ``t ↦`` per output, ``(key, lo, hi, L)`` for a ``"block"`` output (the part
        covers rows ``[lo, hi)`` of block ``key``, an int, of ``L`` rows), ``None`` for
        ``"all"``.
    outputs : ``(key, kind)`` pairs, ``kind`` in ``{"block", "all"}``
    shared : arguments passed to every call (after the per-chunk ones)
    slots : worker slot of each group (a placement hint), or None

    Returns
    -------
    dict: ``out[key]`` is a list of handles, one per block (keys ``0..nb-1``), for a
    ``"block"`` output and one handle for ``"all"``. Sums run in group order with a
    fixed fan-in, so the bits do not depend on the scheduler or the worker count.
    """
    gp = map_groups(ex, groups, fn, call, place, outputs, shared=shared, slots=slots,
                    task_name=task_name)  # fmt: skip

    def add(hs, path, scale):
        return ex.submit(_sum_paths, list(hs), path, scale, name=name)

    return gp.reduce(gp.handles, add, scales, fan_in)


class GroupPass:
    """The tasks of a grouped pass (:func:`map_groups`) and how their parts add up.

    :meth:`reduce` adds the group results per block in group order with a fixed
    fan-in, either as tasks (``add`` submits :func:`_sum_paths`) or, on gathered
    results, in the caller's process (``add`` is :func:`_sum_paths`): the same
    additions in the same order, so the same bits.
    """

    def __init__(self, handles: list, outputs, per_block: dict, flat: dict, where=None):
        self.handles, self.outputs = handles, list(outputs)
        self.per_block, self.flat = per_block, flat
        self.where = where  # group g is item where[g][1] of task where[g][0]; None: task g

    def group_results(self, gathered: list) -> list:
        """Each group's result, in group order, from the gathered results of
        :attr:`handles` (tasks of several groups are unpacked)."""
        if self.where is None:
            return list(gathered)
        return [gathered[i][k] for i, k in self.where]

    def reduce(self, results: list, add=None, scales: dict | None = None, fan_in: int = 4):
        """``{key: [per block] or one}`` from ``results[g]`` (handles or values) of group g."""
        add = add or _sum_paths
        scales = scales or {}

        def total(idx, path, scale):
            hs = [results[g] for g in idx]
            while len(hs) > fan_in:  # first level selects, the rest add arrays
                hs = [add(hs[i : i + fan_in], path, 1.0) for i in range(0, len(hs), fan_in)]
                path = ()
            return add(list(hs), path, scale)

        out: dict = {}
        for j, (key, kind) in enumerate(self.outputs):
            scale = scales.get(key, 1.0)
            if kind == "all":
                out[key] = total(self.flat[key], (j,), scale)
            else:
                blocks = self.per_block[key]
                out[key] = [total(blocks[b], (j, b), scale) for b in range(len(blocks))]
        return out


def map_groups(
    ex,
    groups,
    fn,
    call,
    place,
    outputs,
    *,
    shared=(),
    slots=None,
    task_name="pass",
    tasks=None,
) -> GroupPass:
    """Submit the tasks of :func:`map_reduce_groups` (one per group, or per bundle of
    groups); sum nothing yet.

    ``tasks``: the groups of each task (:func:`slot_groups`: groups on one slot),
    or None for one task per group. A task of several groups returns each group's sums
    apart (:meth:`GroupPass.group_results` sorts them out), so the additions are those of
    one task per group, whatever the bundling."""
    kinds = tuple(kind for _, kind in outputs)
    per_block: dict = {key: {} for key, kind in outputs if kind == "block"}
    flat: dict = {key: [] for key, kind in outputs if kind == "all"}
    work = []
    for g, ts in enumerate(groups):
        places = [tuple(place(t)) for t in ts]
        work.append(([tuple(call(t)) for t in ts], places))
        for j, (key, kind) in enumerate(outputs):
            if kind == "all":
                flat[key].append(g)
                continue
            for b in dict.fromkeys(pl[j][0] for pl in places):
                per_block[key].setdefault(b, []).append(g)

    def submit(g, *args):
        if slots is None:
            return ex.submit(*args, name=task_name)
        return ex.submit_on(slots[g], *args, name=task_name)

    if tasks is None:
        handles = [submit(g, _run_group, fn, w[0], tuple(shared), w[1], kinds)
                   for g, w in enumerate(work)]  # fmt: skip
        return GroupPass(handles, outputs, per_block, flat)
    handles = [submit(gs[0], _run_groups, fn, [work[g] for g in gs], tuple(shared), kinds)
               for gs in tasks]  # fmt: skip
    where = [None] * len(groups)
    for i, gs in enumerate(tasks):
        for k, g in enumerate(gs):
            where[g] = (i, k)
    return GroupPass(handles, outputs, per_block, flat, where=where)
