"""Out-of-core import: COO chunks (Dask arrays, dense blocks) → an Observations store.

Nothing is gathered on the client beyond per-chunk statistics and per-tile
counts. The import runs as three passes of ``dask.delayed`` tasks on the
active scheduler (a distributed client if there is one):

1. **stats**: per input chunk, its length, first non-finite value,
   index ranges and (once the shape is known) row/column counts, which
   give the balanced tile bounds;
2. **scatter**: per input chunk, tile ids and tile-local indices in blocked
   order, written to a scratch store at the chunk's own offset, plus the
   chunk's count per tile;
3. **tiles**: per tile, its pieces are read back from every chunk, merged in
   input order, sorted, checked for duplicates (or combined by the policy)
   and written to the final arrays. Under ``"sum"``/``"mean"``/``"last"``
   the tile sizes change, so a counting pass precedes the writing pass.

Concurrent writes never touch the same Zarr chunk: a task writes only the
chunks wholly inside its range and returns the partial edge pieces, which
per-chunk assembly tasks then write (:func:`_write_range`, :func:`_assemble`).
Memory per task: one input chunk, or one tile (tiles are sized by
:func:`~dscaledgd.storage.layout.default_tiles` to at most ~256 MB).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from ..exceptions import InputDataError
from ..storage import layout
from ..storage.layout import CHUNK

__all__ = ["coo_from_dask", "dense_from_dask", "ingest_chunks"]

_FIELDS = {"rows": "int32", "cols": "int32", "values": "float64"}
_SCRATCH = {**_FIELDS, "pos": "int64", "tile": "int32"}


# ------------------------------------------------------------ range writes
def _open(path, name, mode="r+"):
    """Open one array of a store; for writing, chunks equal to the fill value are kept.

    ``write_empty_chunks`` is a run-time setting that a reopened array does not
    keep. Without it an all-zero chunk (valid data: local index 0 everywhere)
    would not be written and the store would read as truncated.
    """
    import zarr

    arr = zarr.open_array(os.path.join(path, name), mode=mode)
    return arr if mode == "r" else arr.with_config({"write_empty_chunks": True})


def _write_range(path, start: int, data: dict, chunk: int, total: int) -> list:
    """Write ``data[name]`` at ``[start, start + n)``: whole chunks now, edges returned.

    Returns ``[(chunk_index, offset_in_chunk, {name: piece})]`` for the chunks
    this range covers only in part; :func:`_assemble` writes those.
    """
    n = len(next(iter(data.values())))
    end = start + n
    pieces = []
    if n == 0:
        return pieces
    j0, j1 = start // chunk, (end - 1) // chunk
    arrays = {name: _open(path, name) for name in data}
    return _write_chunks(arrays, data, start, end, j0, j1, chunk, total)


def _write_chunks(arrays, data, start, end, j0, j1, chunk, total):
    pieces = []
    for j in range(j0, j1 + 1):
        c0, c1 = j * chunk, min((j + 1) * chunk, total)
        s, e = max(c0, start), min(c1, end)
        part = {name: v[s - start : e - start] for name, v in data.items()}
        if s == c0 and e == c1:
            for name, arr in arrays.items():
                arr[s:e] = part[name]
        else:
            pieces.append((j, s - c0, part))
    return pieces


def _assemble(path, j: int, chunk: int, total: int, dtypes: dict, *piece_lists) -> int:
    """Write chunk ``j`` from the edge pieces of several tasks (gaps are zero)."""
    c0, c1 = j * chunk, min((j + 1) * chunk, total)
    buf = {name: np.zeros(c1 - c0, dtype=dt) for name, dt in dtypes.items()}
    for pieces in piece_lists:
        for jj, off, part in pieces:
            if jj == j:
                for name, v in part.items():
                    buf[name][off : off + len(v)] = v
    for name, v in buf.items():
        _open(path, name)[c0:c1] = v
    return c1 - c0


def _create(path, total: int, chunk: int, dtypes: dict) -> None:
    import zarr

    layout.create_entry_arrays(zarr.open_group(path, mode="a"), total, dtypes, chunk)


def _writes_graph(delayed, path, ranges, chunk, total, dtypes, producer):
    """Delayed tasks: ``producer(k)`` → (info, data) written at ``ranges[k]``; returns infos."""
    infos, piece_lists = [], []
    for k, start in enumerate(ranges):
        out = delayed(_produce_and_write, nout=2)(producer(k), path, start, chunk, total)
        infos.append(out[0])
        piece_lists.append(out[1])
    # chunks that some range covers only in part are assembled from the edge pieces
    # of every range touching them (ranges are disjoint, so a chunk covered whole by
    # one range is touched by no other and was written directly)
    done = []
    bounds = list(ranges) + [total]
    edge_chunks: dict[int, set] = {}
    for k in range(len(ranges)):
        s, e = bounds[k], bounds[k + 1]
        if e <= s:
            continue
        for j in {s // chunk, (e - 1) // chunk}:
            c0, c1 = j * chunk, min((j + 1) * chunk, total)
            if s > c0 or e < c1:
                edge_chunks.setdefault(j, set()).add(k)
    for j, ks in sorted(edge_chunks.items()):
        done.append(
            delayed(_assemble)(path, j, chunk, total, dtypes, *[piece_lists[k] for k in sorted(ks)])
        )
    return infos, done


def _produce_and_write(produced, path, start, chunk, total):
    info, data = produced
    return info, _write_range(path, start, data, chunk, total)


# ------------------------------------------------------------ pass bodies
def _chunk_stats(chunk, shape):
    rows, cols, vals = chunk
    n = len(vals)
    info = {"n": n, "bad": -1, "neg": None, "rmax": -1, "cmax": -1, "dtype": None}
    for name, x in (("rows", rows), ("cols", cols)):
        if n and not np.issubdtype(np.asarray(x).dtype, np.integer):
            info["dtype"] = (name, str(np.asarray(x).dtype))
            return info
    if n:
        finite = np.isfinite(vals)
        if not finite.all():
            k = int(np.argmin(finite))
            info["bad"] = (k, int(rows[k]), int(cols[k]), float(vals[k]))
        for name, x in (("row", rows), ("column", cols)):
            if x.min() < 0:
                k = int(np.argmin(x))
                info["neg"] = (name, k, int(x[k]))
        info["rmax"], info["cmax"] = int(rows.max()), int(cols.max())
    if shape is not None:
        info["rcount"] = np.bincount(rows, minlength=shape[0])[: shape[0]]
        info["ccount"] = np.bincount(cols, minlength=shape[1])[: shape[1]]
    return info


def _chunk_scatter(chunk, k, offset, row_bounds, col_bounds):
    rows, cols, vals = chunk
    tile, lr, lc = layout.tile_of(
        np.asarray(rows, np.int64), np.asarray(cols, np.int64), row_bounds, col_bounds
    )
    # group by tile only (stable: input order kept); the per-tile merge sorts into banded order
    order = np.argsort(tile, kind="stable")
    T = (len(row_bounds) - 1) * (len(col_bounds) - 1)
    data = {
        "rows": lr[order],
        "cols": lc[order],
        "values": np.asarray(vals, np.float64)[order],
        "pos": offset + order.astype(np.int64),
        "tile": tile[order].astype(np.int32),
    }
    return np.bincount(tile, minlength=T), data


def _read_tile_pieces(scratch, t, offsets, cum):
    arrays = {name: _open(scratch, name, "r") for name in ("rows", "cols", "values", "pos")}
    parts = {name: [] for name in arrays}
    for k, off in enumerate(offsets):
        s, e = off + cum[k, t], off + cum[k, t + 1]
        if e > s:
            for name, arr in arrays.items():
                parts[name].append(arr[s:e])
    return {
        name: np.concatenate(v) if v else np.empty(0, _SCRATCH[name]) for name, v in parts.items()
    }


def _tile_merge(scratch, t, offsets, cum, policy, band):
    p = _read_tile_pieces(scratch, t, offsets, cum)
    tile = np.full(len(p["values"]), t, dtype=np.int64)
    _, lr, lc, vals, dup = layout.sort_tile_entries(
        tile, p["rows"], p["cols"], p["values"], p["pos"], policy, band
    )
    return lr, lc, vals, dup


def _tile_count(scratch, t, offsets, cum, policy, band):
    lr, lc, vals, dup = _tile_merge(scratch, t, offsets, cum, policy, band)
    return {
        "n": len(vals),
        "dup": dup,
        "sumsq": float(vals @ vals),
        "rows": np.bincount(lr),
        "cols": np.bincount(lc),
    }


def _tile_final(scratch, t, offsets, cum, policy, band):
    lr, lc, vals, dup = _tile_merge(scratch, t, offsets, cum, policy, band)
    info = {
        "n": len(vals),
        "dup": dup,
        "sumsq": float(vals @ vals),
        "rows": np.bincount(lr),
        "cols": np.bincount(lc),
    }
    return info, {"rows": lr, "cols": lc, "values": vals}


# ------------------------------------------------------------------ driver
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
):
    """Build an Observations store from delayed chunk producers.

    ``producers`` is a list of ``dask.delayed`` objects, each evaluating to a
    ``(rows, cols, values)`` tuple of NumPy arrays with global indices.
    ``extra_arrays`` (e.g. id maps) and ``extra_attrs`` are written into the
    store before it is published. ``describe_duplicate(first, later, i, j, n)``
    formats the duplicate error (default: input entry positions).
    """
    import dask
    from dask import delayed

    from ..storage.coo import check_shape, check_tiles
    from ..storage.observations import Observations

    # pass 1: statistics (and counts when the shape is known)
    stats = dask.compute(*[delayed(_chunk_stats)(p, shape) for p in producers])
    offsets = np.concatenate([[0], np.cumsum([s["n"] for s in stats])]).astype(np.int64)
    total = int(offsets[-1])
    for k, s in enumerate(stats):
        if s["dtype"]:
            name, dt = s["dtype"]
            raise InputDataError(
                f"'{name}' must hold integers; got dtype {dt}. Cast with "
                ".astype(np.int64) after checking the values are whole numbers."
            )
        if s["bad"] != -1:
            i, r, c, v = s["bad"]
            raise InputDataError(
                f"Observation values must be finite; entry {offsets[k] + i} at ({r}, {c}) is "
                f"{v!r}. Drop or impute non-finite entries before building Observations."
            )
        if s["neg"]:
            name, i, v = s["neg"]
            raise InputDataError(
                f"Observation {name} index {v} (entry {offsets[k] + i}) is "
                "negative; indices must be >= 0."
            )
    if total == 0:
        raise InputDataError(
            "The observations are empty (nnz = 0). Completion needs at least one observed entry."
        )
    rmax = max(s["rmax"] for s in stats)
    cmax = max(s["cmax"] for s in stats)
    if shape is None:
        shape = (rmax + 1, cmax + 1)
        stats = dask.compute(*[delayed(_chunk_stats)(p, shape) for p in producers])
    else:
        shape = check_shape(shape, np.array([rmax]), np.array([cmax]))
    tiles = check_tiles(tiles, shape, total)
    rcount = sum(s["rcount"] for s in stats)
    ccount = sum(s["ccount"] for s in stats)
    row_bounds = layout.balanced_bounds(rcount, tiles[0])
    col_bounds = layout.balanced_bounds(ccount, tiles[1])
    T = tiles[0] * tiles[1]
    band = layout.band_width(total, shape)
    chunk = max(1, min(CHUNK, total))

    scratch = tempfile.mkdtemp(
        prefix=".dscaledgd-ingest-", dir=os.path.dirname(os.path.abspath(path))
    )
    try:
        # pass 2: per chunk, sort by tile and write to scratch at its own offset
        _create(scratch, total, chunk, _SCRATCH)
        infos, done = _writes_graph(
            delayed,
            scratch,
            offsets[:-1].tolist(),
            chunk,
            total,
            _SCRATCH,
            lambda k: delayed(_chunk_scatter)(
                producers[k], k, int(offsets[k]), row_bounds, col_bounds
            ),
        )
        counts = np.array(dask.compute(*infos, *done)[: len(infos)])  # (chunks, T)
        cum = np.concatenate([np.zeros((len(counts), 1), np.int64), np.cumsum(counts, 1)], 1)

        # pass 3: per tile, merge pieces; a counting pass first when sizes may shrink
        if duplicates == "error":
            sizes = counts.sum(0)
        else:
            cinfo = dask.compute(
                *[
                    delayed(_tile_count)(scratch, t, offsets[:-1], cum, duplicates, band)
                    for t in range(T)
                ]
            )
            sizes = np.array([c["n"] for c in cinfo])
        ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        nnz = int(ptr[-1])
        out_chunk = max(1, min(CHUNK, nnz))
        with layout.atomic_dir(path, overwrite=overwrite) as tmp:
            _create(tmp, nnz, out_chunk, _FIELDS)
            tinfo, done = _writes_graph(
                delayed,
                tmp,
                ptr[:-1].tolist(),
                out_chunk,
                nnz,
                _FIELDS,
                lambda t: delayed(_tile_final, nout=2)(
                    scratch, t, offsets[:-1], cum, duplicates, band
                ),
            )
            tinfo = dask.compute(*tinfo, *done)[:T]
            dups = [(i["dup"], t) for t, i in enumerate(tinfo) if i["dup"] is not None]
            if dups:
                dup, t = min(dups, key=lambda d: d[0][1])
                b = tiles[1]
                r0, c0 = int(row_bounds[t // b]), int(col_bounds[t % b])
                if describe_duplicate is not None:
                    first, later, n_rep, _, lr, lc = dup
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


def _write_meta(tmp, obs, extra_arrays: dict) -> None:
    import zarr

    g = zarr.open_group(tmp, mode="a")
    arrays = {name: getattr(obs, name) for name in ("tile_ptr", "row_counts", "col_counts")}
    for name, data in {**arrays, **extra_arrays}.items():
        layout.write_small_array(g, name, data)
    g.attrs.update(obs._store_attrs())


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
    blocks = [a.to_delayed().ravel() for a in arrs]
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
    producers = _dense_producers(M, mask)
    return _run(producers, tuple(int(s) for s in M.shape), tiles, "error", path, overwrite)


def _dense_producers(M, mask):
    """Delayed COO producers, one per block of a dense Dask matrix."""
    import dask.array as da
    from dask import delayed

    M = da.asarray(M)
    if M.ndim != 2:
        raise InputDataError(f"from_dense needs a 2-D matrix; got an array with shape {M.shape}.")
    if mask is not None:
        mask = da.asarray(mask)
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
        tmpdir = tempfile.mkdtemp(prefix="dscaledgd-obs-")
        path = os.path.join(tmpdir, "obs.zarr")
    else:
        path = layout.check_output_path(path, overwrite)
    try:
        return ingest_chunks(
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
