"""Out-of-core import: COO chunks (Dask arrays, dense blocks) → an Observations store.

Nothing is gathered on the client beyond per-chunk statistics, the per-row
and per-column counts and per-tile counts. The import runs as three passes of
``dask.delayed`` tasks on the active scheduler (a distributed client if there
is one):

1. **stats**: per input chunk, its length, dtypes, first non-finite value,
   first negative or out-of-range index, index maxima, and (once the shape is
   known and the indices are valid) its row/column counts, tree-summed into
   the counts that give the balanced tile bounds;
2. **scatter**: per input chunk, sorted runs of tile-local banded keys,
   values and input positions written to a scratch directory
   (:func:`~dscaledgd.storage.merge.scatter_chunk`);
3. **tiles**: per tile, a streaming merge of its pieces of every run in
   sub-ranges of bounded size, with the duplicate policy, written to the
   final arrays (:func:`~dscaledgd.storage.merge.tile_task`). Under
   ``"sum"``/``"mean"``/``"last"`` the tile sizes change, so a counting pass
   precedes the writing pass.

Memory per task: its input chunk plus a budget sized to the worker's memory
limit (:mod:`dscaledgd.storage.merge`), whatever the size of a tile. Concurrent
writes never touch the same Zarr chunk: a tile task writes only the chunks
wholly inside its range; the chunks it shares with its neighbours are
assembled from pieces afterwards (:func:`~dscaledgd.storage.merge.assemble`).
The scratch directory (``.dscaledgd-ingest-*`` beside the output) is removed
whatever happens; tasks never create directories, so a task still running
after a failure cannot re-create it.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from ..exceptions import InputDataError
from . import layout, merge
from .coo import check_mask_dtype
from .layout import CHUNK

__all__ = ["coo_from_dask", "dense_from_dask", "ingest_chunks"]

_FIELDS = {"rows": "int32", "cols": "int32", "values": "float64"}
#: Fan-in of the tree sum of per-chunk row/column counts.
_FANIN = 4


# ---------------------------------------------------------------- helpers
def _open(path, name, mode="r+"):
    """Open one array of a store; for writing, chunks equal to the fill value are kept.

    ``write_empty_chunks`` is a run-time setting that a reopened array does not
    keep. Without it a chunk equal to the fill value would not be written and
    the store would read as truncated.
    """
    import zarr

    arr = zarr.open_array(os.path.join(path, name), mode=mode)
    return arr if mode == "r" else arr.with_config({"write_empty_chunks": True})


def _create(path, total: int, chunk: int, dtypes: dict) -> None:
    import zarr

    layout.create_entry_arrays(zarr.open_group(path, mode="a"), total, dtypes, chunk)


def _compute(*objs) -> tuple:
    """``dask.compute`` that leaves no task of ``objs`` running when it raises.

    On a distributed client, pending tasks are cancelled. On the threaded
    scheduler the pool is shut down and its running tasks waited for, so the
    caller may remove the scratch directory safely.
    """
    import dask
    import dask.threaded
    from dask.base import get_scheduler

    if not objs:
        return ()
    sched = get_scheduler(collections=list(objs))
    client = getattr(sched, "__self__", None)
    if client is not None and hasattr(client, "gather") and hasattr(client, "cancel"):
        futures = client.compute(list(objs))
        try:
            return tuple(client.gather(futures))
        except BaseException:
            client.cancel(futures)
            raise
    if sched is dask.threaded.get:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(dask.config.get("num_workers", None) or os.cpu_count() or 1)
        try:
            return dask.compute(*objs, scheduler="threads", pool=pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return dask.compute(*objs)


# ------------------------------------------------------------ pass 1: stats
def _chunk_stats(chunk, shape):
    """``(info, counts)`` of one input chunk; ``counts`` (row and column counts) only
    when the shape is known and the chunk's indices are valid, else ``None``."""
    rows, cols, vals = chunk
    n = len(vals)
    info = {"n": n, "error": None, "rmax": (-1, 0), "cmax": (-1, 0)}
    for name, x in (("rows", rows), ("cols", cols)):
        dt = np.asarray(x).dtype
        if n and not np.issubdtype(dt, np.integer):
            info["error"] = ("dtype", name, str(dt))
            return info, None
    dt = np.asarray(vals).dtype
    if n and (not np.issubdtype(dt, np.number) or np.issubdtype(dt, np.complexfloating)):
        info["error"] = ("vdtype", "values", str(dt))
        return info, None
    if n == 0:
        return info, None
    finite = np.isfinite(vals)
    if not finite.all():
        k = int(np.argmin(finite))
        info["error"] = ("finite", k, int(rows[k]), int(cols[k]), float(vals[k]))
        return info, None
    del finite
    for label, name, x in (("row", "rows", rows), ("column", "cols", cols)):
        k = int(np.argmin(x))
        if x[k] < 0:
            info["error"] = ("negative", label, name, k, int(x[k]))
            return info, None
    kr, kc = int(np.argmax(rows)), int(np.argmax(cols))
    info["rmax"], info["cmax"] = (int(rows[kr]), kr), (int(cols[kc]), kc)
    if shape is None:
        return info, None
    for label, name, x, (v, _), lim in (
        ("row", "rows", rows, info["rmax"], shape[0]),
        ("column", "cols", cols, info["cmax"], shape[1]),
    ):
        if v >= lim:
            k = int(np.argmax(x >= lim))
            info["error"] = ("range", label, name, k, int(x[k]))
            return info, None
    return info, (np.bincount(rows, minlength=shape[0]), np.bincount(cols, minlength=shape[1]))


def _sum_counts(*parts):
    if any(p is None for p in parts):
        return None
    rc, cc = parts[0][0].astype(np.int64), parts[0][1].astype(np.int64)
    for r, c in parts[1:]:
        rc += r
        cc += c
    return rc, cc


def _stats_pass(producers, shape):
    """Chunk infos, and the summed counts when ``shape`` is given (tree-summed on the
    workers, so that no worker holds every chunk's counts)."""
    from dask import delayed

    outs = [delayed(_chunk_stats, nout=2)(p, shape) for p in producers]
    infos = [o[0] for o in outs]
    if shape is None or not outs:
        return list(_compute(*infos)), None
    parts = [o[1] for o in outs]
    while len(parts) > 1:
        parts = [delayed(_sum_counts)(*parts[i : i + _FANIN]) for i in range(0, len(parts), _FANIN)]
    res = _compute(*infos, parts[0])
    return list(res[:-1]), res[-1]


def _raise_first_error(infos, offsets, shape) -> None:
    """The error of the earliest chunk that has one, as an :class:`InputDataError`."""
    for k, s in enumerate(infos):
        err = s["error"]
        if err is None:
            continue
        kind = err[0]
        if kind == "dtype":
            raise InputDataError(
                f"'{err[1]}' must hold integers; got dtype {err[2]}. Cast with "
                ".astype(np.int64) after checking the values are whole numbers."
            )
        if kind == "vdtype":
            raise InputDataError(
                f"'values' must be real numbers; got dtype {err[2]}. Cast with .astype(float)."
            )
        if kind == "finite":
            i, r, c, v = err[1:]
            raise InputDataError(
                f"Observation values must be finite; entry {offsets[k] + i} at ({r}, {c}) is "
                f"{v!r}. Drop or impute non-finite entries before building Observations."
            )
        label, name, i, v = err[1:]
        if kind == "negative":
            raise InputDataError(
                f"Observation {label} index {v} (entry {offsets[k] + i}) is negative: indices "
                f"in '{name}' must be >= 0. Drop the entry or fix the index (ids from a file "
                "can be mapped to 0..n-1 with np.unique(..., return_inverse=True))."
            )
        raise InputDataError(
            f"Observation {label} index {v} (entry {offsets[k] + i}) is out of range for shape "
            f"({shape[0]}, {shape[1]}). Pass a larger shape, or drop the entry."
        )


def _inferred_shape(infos, offsets) -> tuple[int, int]:
    """``(max row + 1, max column + 1)``, refused before anything of that size is made."""
    from .coo import MAX_DIM, check_size

    peaks = []
    for axis, label, name in ((0, "row", "rows"), (1, "column", "cols")):
        key = "rmax" if axis == 0 else "cmax"
        k = max(range(len(infos)), key=lambda i: infos[i][key][0])
        v, i = infos[k][key]
        if v >= MAX_DIM:
            raise InputDataError(
                f"Observation {label} index {v} (entry {offsets[k] + i}) in '{name}' is too "
                f"large: indices must be below {MAX_DIM} (2**31 - 1) so that they fit int32 "
                "tile-local indexing. Check the indices (one far beyond the others is usually "
                "an error), or renumber rows and columns to 0..n-1 "
                "(np.unique(..., return_inverse=True))."
            )
        peaks.append(v)
    shape = (peaks[0] + 1, peaks[1] + 1)
    return check_size(shape, inferred_from=(np.array([peaks[0]]), np.array([peaks[1]])))


def _edge_chunks(ptr, chunk: int, total: int) -> dict:
    """``{zarr chunk: [tiles]}`` for the chunks that several tile ranges share."""
    edges: dict[int, list] = {}
    for t in range(len(ptr) - 1):
        s, e = int(ptr[t]), int(ptr[t + 1])
        if e <= s:
            continue
        for j in sorted({s // chunk, (e - 1) // chunk}):
            c0, c1 = j * chunk, min((j + 1) * chunk, total)
            if s > c0 or e < c1:
                edges.setdefault(j, []).append(t)
    return edges


def _sample_every(total: int, budget) -> int:
    """Entries between two samples of a run: fine enough that a sub-range overshoots
    its budget by little, coarse enough that a tile's samples are small."""
    every = int(np.clip(total >> 18, 8, 4096))
    if budget is not None:  # an explicit (possibly tiny) budget: cut finely
        every = min(every, max(1, merge.budget_entries(budget) // 8))
    return every


# ------------------------------------------------------------------ driver
def _thread_memory_limit() -> int | None:
    """Memory limit per worker thread of the active distributed client, if any."""
    try:
        from distributed import get_client

        workers = get_client().scheduler_info().get("workers", {})
    except (ImportError, ValueError):
        return None
    per_thread = [
        w["memory_limit"] / max(1, w.get("nthreads", 1))
        for w in workers.values()
        if w.get("memory_limit")
    ]
    return int(min(per_thread)) if per_thread else None


def ingest_chunks(
    producers,
    *,
    shape,
    tiles,
    duplicates,
    path,
    overwrite,
    extra_arrays=None,
    extra_attrs=None,
    describe_duplicate=None,
    budget=None,
):
    """Build an Observations store from delayed chunk producers.

    ``producers`` is a list of ``dask.delayed`` objects, each evaluating to a
    ``(rows, cols, values)`` tuple of NumPy arrays with global indices.
    ``extra_arrays`` (e.g. id maps) and ``extra_attrs`` are written into the
    store before it is published. ``describe_duplicate(first, later, i, j, n)``
    formats the duplicate error (default: input entry positions). ``budget``:
    bytes per task (default :data:`dscaledgd.storage.merge.MERGE_BUDGET`, else a
    share of each worker's memory limit).
    """
    from dask import delayed

    from .coo import check_shape, check_tiles
    from .observations import Observations

    budget = merge.MERGE_BUDGET if budget is None else budget
    if shape is not None:  # the parameter and its size, before any task runs
        shape = check_shape(shape, np.empty(0, np.int64), np.empty(0, np.int64))
    infos, counts = _stats_pass(producers, shape)
    offsets = np.concatenate([[0], np.cumsum([s["n"] for s in infos])]).astype(np.int64)
    total = int(offsets[-1])
    _raise_first_error(infos, offsets, shape)
    if total == 0:
        raise InputDataError(
            "The observations are empty (nnz = 0). Completion needs at least one observed entry."
        )
    if shape is None:
        shape = _inferred_shape(infos, offsets)
        _, counts = _stats_pass(producers, shape)
    tiles = check_tiles(tiles, shape, total, memory_limit=_thread_memory_limit())
    rcount, ccount = counts
    row_bounds = layout.balanced_bounds(rcount, tiles[0])
    col_bounds = layout.balanced_bounds(ccount, tiles[1])
    del rcount, ccount, counts
    T = tiles[0] * tiles[1]
    tshape = [
        (int(row_bounds[t // tiles[1] + 1] - row_bounds[t // tiles[1]]),
         int(col_bounds[t % tiles[1] + 1] - col_bounds[t % tiles[1]]))
        for t in range(T)
    ]  # fmt: skip
    band = layout.band_width(total, shape)
    every = _sample_every(total, budget)

    scratch = layout.scratch_dir(os.path.dirname(os.path.abspath(path)), ".dscaledgd-ingest-")
    try:
        # pass 2: per chunk, sorted runs in the scratch directory
        runs = _compute(
            *[
                delayed(merge.scatter_chunk)(
                    p, k, int(offsets[k]), row_bounds, col_bounds, band, scratch, every, budget
                )
                for k, p in enumerate(producers)
            ]
        )
        runs = [r for chunk_runs in runs for r in chunk_runs]
        counts = np.sum([r[2] for r in runs], axis=0, dtype=np.int64)
        specs = [merge.tile_specs(runs, t, every) for t in range(T)]

        # pass 3: per tile, a streaming merge; a counting pass first when sizes may shrink
        if duplicates == "error":
            sizes = counts
        else:
            sizes = np.array(
                _compute(
                    *[
                        delayed(merge.tile_task)(
                            scratch, specs[t], tshape[t], band, duplicates, budget, every
                        )
                        for t in range(T)
                    ]
                ),
                dtype=np.int64,
            )
        # a tile without duplicates keeps its entries as they are ("error" finds none)
        policy = [duplicates if sizes[t] < counts[t] else "error" for t in range(T)]
        ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        nnz = int(ptr[-1])
        out_chunk = max(1, min(CHUNK, nnz))
        with layout.atomic_dir(path, overwrite=overwrite) as tmp:
            _create(tmp, nnz, out_chunk, _FIELDS)
            outs = [
                delayed(merge.tile_task, nout=2)(
                    scratch,
                    specs[t],
                    tshape[t],
                    band,
                    policy[t],
                    budget,
                    every,
                    (tmp, t, int(ptr[t]), int(ptr[t + 1]), out_chunk, nnz),
                )
                for t in range(T)
            ]
            asm = [
                delayed(merge.assemble)(tmp, scratch, j, out_chunk, nnz, *[outs[t][1] for t in ts])
                for j, ts in sorted(_edge_chunks(ptr, out_chunk, nnz).items())
            ]
            tinfo = _compute(*[o[0] for o in outs], *asm)[:T]
            dups = [i["dup"] for i in tinfo if i["dup"] is not None]
            if dups:
                dup = min(dups, key=lambda d: d[1])  # the repeat that comes first in the input
                first, later, n_rep, t, lr, lc = dup
                r0, c0 = int(row_bounds[t // tiles[1]]), int(col_bounds[t % tiles[1]])
                if describe_duplicate is not None:
                    raise InputDataError(describe_duplicate(first, later, r0 + lr, c0 + lc, n_rep))
                raise InputDataError(layout.duplicate_message(dup, r0, c0))
            rc = np.zeros(shape[0], np.int64)
            cc = np.zeros(shape[1], np.int64)
            for t, i in enumerate(tinfo):
                r0, c0 = row_bounds[t // tiles[1]], col_bounds[t % tiles[1]]
                rc[r0 : r0 + len(i["rows"])] += i["rows"]
                cc[c0 : c0 + len(i["cols"])] += i["cols"]
            meta = Observations(
                shape=shape,
                row_bounds=row_bounds,
                col_bounds=col_bounds,
                tile_ptr=ptr,
                rows=None,
                cols=None,
                values=None,
                row_counts=rc,
                col_counts=cc,
                value_norm2=sum(i["sumsq"] for i in tinfo),
                attrs=extra_attrs,
            )
            _write_meta(tmp, meta, extra_arrays or {})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Observations.open_zarr(path)


def _final_attrs(meta) -> dict:
    """The attrs of the store being published: the one place ingest builds them.

    ``Observations._store_attrs`` draws the store's identity and digest
    (:func:`~dscaledgd.storage.layout.core_attrs`) and adds the user attrs.
    """
    return meta._store_attrs()


def _write_meta(tmp, obs, extra_arrays: dict) -> None:
    import zarr

    g = zarr.open_group(tmp, mode="a")
    arrays = {name: getattr(obs, name) for name in ("tile_ptr", "row_counts", "col_counts")}
    for name, data in {**arrays, **extra_arrays}.items():
        layout.write_small_array(g, name, data)
    g.attrs.update(_final_attrs(obs))


# --------------------------------------------------------------- adapters
def coo_from_dask(rows, cols, values, *, shape, tiles, duplicates, path, overwrite, **extra):
    """:meth:`Observations.from_coo` for Dask arrays (see the module docstring)."""
    import dask.array as da

    arrs = [da.asarray(x) for x in (rows, cols, values)]
    for name, a in zip(("rows", "cols", "values"), arrs):
        if a.ndim != 1:
            raise InputDataError(f"'{name}' must be 1-D; got shape {a.shape}.")
    if any(np.isnan(a.shape[0]) for a in arrs):
        arrs = [a.compute_chunk_sizes() for a in arrs]
    if not arrs[0].shape[0] == arrs[1].shape[0] == arrs[2].shape[0]:
        raise InputDataError(
            f"rows, cols and values must have the same length; got {arrs[0].shape[0]}, "
            f"{arrs[1].shape[0]} and {arrs[2].shape[0]}."
        )
    chunks = arrs[2].chunks
    arrs = [a.rechunk(chunks) for a in arrs]
    # unoptimised: chunks of the three arrays made by one task (a generator, a file
    # read) share it, and it runs once per pass instead of once per array
    blocks = [a.to_delayed(optimize_graph=False).ravel() for a in arrs]
    from dask import delayed

    producers = [delayed(tuple)(list(p)) for p in zip(*blocks)]
    return _run(producers, shape, tiles, duplicates, path, overwrite, **extra)


def _block_coo(M, mask, r0, c0):
    """COO triplets of one dense block; non-finite observed values are kept for pass 1
    to report (NaN is "missing" only without a mask)."""
    M = np.asarray(M, dtype=np.float64)
    obs = ~np.isnan(M) if mask is None else np.asarray(mask, dtype=bool)
    r, c = np.nonzero(obs)
    return r + r0, c + c0, M[r, c]


def dense_from_dask(M, mask, *, tiles, path, overwrite):
    """:meth:`Observations.from_dense` for a Dask matrix (one producer per block)."""
    import dask.array as da

    M = da.asarray(M)
    producers = _dense_producers(M, mask)
    return _run(producers, tuple(int(s) for s in M.shape), tiles, "error", path, overwrite)


def _check_known_chunks(x, name: str) -> None:
    if any(np.isnan(c) for dim in x.chunks for c in dim):
        raise InputDataError(
            f"from_dense needs the chunk sizes of '{name}', but the Dask array has unknown "
            f"chunk sizes (shape {x.shape}), as after boolean indexing or from a dataframe. "
            f"Call {name} = {name}.compute_chunk_sizes() first."
        )


def _dense_producers(M, mask):
    """Delayed COO producers, one per block of a dense Dask matrix."""
    import dask.array as da
    from dask import delayed

    M = da.asarray(M)
    if M.ndim != 2:
        raise InputDataError(f"from_dense needs a 2-D matrix; got an array with shape {M.shape}.")
    _check_known_chunks(M, "M")
    if mask is not None:
        mask = da.asarray(mask)
        check_mask_dtype(mask, "from_dense")
        _check_known_chunks(mask, "mask")
        if mask.shape != M.shape:
            raise InputDataError(
                f"The mask has shape {mask.shape} but M has shape {M.shape}; they must match."
            )
        mask = mask.rechunk(M.chunks)
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in M.chunks]
    mb = M.to_delayed()
    kb = mask.to_delayed() if mask is not None else None
    out = []
    for i in range(mb.shape[0]):
        for j in range(mb.shape[1]):
            out.append(
                delayed(_block_coo)(
                    mb[i, j], None if kb is None else kb[i, j], int(starts[0][i]), int(starts[1][j])
                )
            )
    return out


def _run(producers, shape, tiles, duplicates, path, overwrite, **extra):
    tmpdir = None
    if path is None:
        tmpdir = layout.scratch_dir(None, "dscaledgd-obs-")
        path = os.path.join(tmpdir, "obs.zarr")
    else:
        path = layout.check_output_path(path, overwrite)
    try:
        obs = ingest_chunks(
            producers,
            shape=shape,
            tiles=tiles,
            duplicates=duplicates,
            path=os.fspath(path),
            overwrite=overwrite,
            **extra,
        )
    except BaseException:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    # a temporary store is removed when the Observations is closed or collected
    return obs._adopt_temporary(tmpdir) if tmpdir else obs
