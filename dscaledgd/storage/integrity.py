"""Trust nothing a store claims: checks of Observations stores at open and at read.

At open (:func:`validate_meta`, :func:`validate_arrays`) the attributes are
checked for type and consistency (bounds strictly increasing from 0 to n,
``tile_ptr`` from 0 to nnz, per-stripe sums of ``row_counts``/``col_counts``
equal to the tiles' counts), then against the ``digest`` written at creation
(:func:`~dscaledgd.storage.layout.meta_digest`). Stores written before the
digest existed get the structural checks only.

At read (:func:`read_entries`) every range of entries is checked before any
kernel sees it: a Zarr or codec error (checksum mismatch, truncated chunk)
becomes an :class:`~dscaledgd.exceptions.InputDataError` naming the store,
the array, the chunk and the tile; then one sweep (:func:`_scan`, 0.3-0.6 ns
per entry, under a tenth of a warm uncompressed read and ~2% of a rank-10
kernel pass; ``benchmarks/bench_store_integrity.py``) checks that local rows
lie in ``[0, height)``, local columns in ``[0, width)`` and that the values
are finite. A chunk deleted after the store was opened reads as the invalid
fill value and is reported as missing.

Every message names the store, the array or attribute, what was seen, and the
fix (:data:`RECREATE`).
"""

from __future__ import annotations

import functools
import numbers
import os

import numpy as np

from .._jit import njit
from ..exceptions import InputDataError
from . import chunks, layout

__all__ = [
    "ARRAYS",
    "CORE_META",
    "RECREATE",
    "check_entries",
    "check_span",
    "entry_arrays",
    "open_store",
    "read_entries",
    "read_span",
    "store_identity",
    "validate_arrays",
    "validate_meta",
]

RECREATE = "Re-create the store (Observations.to_zarr / `dscaledgd import`)."

#: Attributes every Observations store holds.
REQUIRED_KEYS = ("shape", "nnz", "row_bounds", "col_bounds", "value_norm2")


def corrupt(path, detail: str) -> InputDataError:
    return chunks.store_error("Observations", path, detail, RECREATE)


def truncated(path, detail: str) -> InputDataError:
    return chunks.store_error("Observations", path, detail, RECREATE, state="is truncated")


def bad_meta(path, detail: str) -> InputDataError:
    return chunks.store_error("Observations", path, detail, RECREATE, "has invalid metadata")


# ------------------------------------------------------------- entry checks
@njit(nogil=True, cache=True)
def _scan(rows, cols, vals):  # pragma: no cover - compiled
    """``(rmin, rmax, cmin, cmax, any non-finite value)`` in one sweep.

    The finite test reads the exponent bits (all ones for inf and NaN), an
    integer max-reduction that vectorises; fastmath is off on purpose.
    """
    rmin = np.int32(2**31 - 1)
    rmax = np.int32(-(2**31))
    cmin = np.int32(2**31 - 1)
    cmax = np.int32(-(2**31))
    for k in range(rows.shape[0]):
        r = rows[k]
        c = cols[k]
        rmin = min(rmin, r)
        rmax = max(rmax, r)
        cmin = min(cmin, c)
        cmax = max(cmax, c)
    bits = vals.view(np.uint64)
    e = np.uint64(0)
    m = np.uint64(0x7FF0000000000000)
    for k in range(bits.shape[0]):
        e = max(e, bits[k] & m)
    return rmin, rmax, cmin, cmax, e == m


def check_entries(rows, cols, vals, height: int, width: int, *, path, tile: int, start: int = 0):
    """Refuse entries outside the ``height × width`` tile ``tile`` or with non-finite values.

    ``rows``/``cols`` are int32 and ``vals`` float64, contiguous; ``start`` is
    the position of ``rows[0]`` inside the tile (for the message).
    """
    if len(rows) == 0:
        return
    rmin, rmax, cmin, cmax, nonfinite = _scan(rows, cols, vals)
    for name, axis, idx, lo, hi, n in (
        ("rows", "row", rows, rmin, rmax, height),
        ("cols", "column", cols, cmin, cmax, width),
    ):
        if lo < 0 or hi >= n:
            k = int(np.flatnonzero((idx < 0) | (idx >= n))[0])
            raise corrupt(
                path,
                f"array {name!r} of tile {tile} holds local {axis} index {int(idx[k])} at "
                f"entry {start + k} of the tile, outside [0, {n})",
            )
    if nonfinite:
        k = int(np.flatnonzero(~np.isfinite(vals))[0])
        raise corrupt(
            path,
            f"array 'values' of tile {tile} holds the non-finite value {float(vals[k])!r} at "
            f"entry {start + k} of the tile",
        )


_DTYPES = (("rows", np.int32), ("cols", np.int32), ("values", np.float64))


def _read_array(arr, name: str, s: int, e: int, dtype, *, path, tile: int | None):
    """``arr[s:e]`` as ``dtype``; a Zarr or codec error names the chunk that fails."""
    where = f"tile {tile}, " if tile is not None else ""
    error = functools.partial(corrupt, path)
    data = chunks.read(arr, slice(s, e), name=name, error=error, where=where)
    return np.ascontiguousarray(data, dtype=dtype)


def read_entries(arrays, s: int, e: int, *, path, tile: int, tile_lo: int, height, width):
    """Entries ``[s, e)`` (inside tile ``tile``, which starts at ``tile_lo``), checked.

    ``arrays`` is ``(rows, cols, values)`` of Zarr arrays. Returns contiguous
    ``(int32, int32, float64)`` arrays; raises :class:`InputDataError` on a
    chunk that cannot be decoded or on entries outside the tile.
    """
    out = tuple(
        _read_array(arr, name, s, e, dt, path=path, tile=tile)
        for arr, (name, dt) in zip(arrays, _DTYPES)
    )
    try:
        check_entries(*out, int(height), int(width), path=path, tile=tile, start=s - tile_lo)
    except InputDataError:
        gone = _missing_chunk(arrays, s, e, path)
        if gone is None:
            raise
        name, j, c0, c1 = gone
        raise corrupt(
            path,
            f"chunk {j} of array {name!r} (tile {tile}, entries {c0}:{c1}) is missing: it was "
            "deleted after the store was opened, and reads as the fill value",
        ) from None
    return out


def _missing_chunk(arrays, s, e, path):
    """``(array, chunk, start, stop)`` of a chunk of ``[s, e)`` absent from a local store."""
    for arr, (name, _) in zip(arrays, _DTYPES):
        step = int(arr.chunks[0])
        for j in range(s // step, (e - 1) // step + 1):
            if not os.path.exists(chunks.chunk_path(path, arr, (j,))):
                return name, j, j * step, min(arr.shape[0], (j + 1) * step)
    return None


def read_span(arrays, start: int, stop: int, tile_ptr, row_bounds, col_bounds, *, path):
    """Entries ``[start, stop)`` of ``(rows, cols, values)``, which may span several tiles,
    read and checked as :func:`read_entries` does (:func:`check_span`)."""
    out = tuple(
        _read_array(arr, name, start, stop, dt, path=path, tile=None)
        for arr, (name, dt) in zip(arrays, _DTYPES)
    )
    check_span(*out, start, tile_ptr, row_bounds, col_bounds, path=path)
    return out


def check_span(rows, cols, vals, start: int, tile_ptr, row_bounds, col_bounds, *, path):
    """Check entries ``[start, start + len)`` of a store that may span several tiles."""
    b = len(col_bounds) - 1
    stop = start + len(rows)
    t0 = int(np.searchsorted(tile_ptr, start, side="right")) - 1
    t = max(t0, 0)
    while t < len(tile_ptr) - 1 and tile_ptr[t] < stop:
        lo, hi = max(start, int(tile_ptr[t])), min(stop, int(tile_ptr[t + 1]))
        if hi > lo:
            ia, ib = divmod(t, b)
            sl = slice(lo - start, hi - start)
            check_entries(
                rows[sl],
                cols[sl],
                vals[sl],
                int(row_bounds[ia + 1] - row_bounds[ia]),
                int(col_bounds[ib + 1] - col_bounds[ib]),
                path=path,
                tile=t,
                start=lo - int(tile_ptr[t]),
            )
        t += 1


# ------------------------------------------------------------ open checks
def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _seen(x) -> str:
    text = repr(x)
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{text} (a {type(x).__name__})"


def _check_bounds(path, name: str, x, n: int) -> np.ndarray:
    if not isinstance(x, list) or len(x) < 2 or not all(_is_int(v) for v in x):
        raise bad_meta(
            path, f"attribute {name!r} is {_seen(x)}; expected a list of at least two integers"
        )
    arr = np.asarray(x, dtype=np.int64)
    if arr[0] != 0 or arr[-1] != n or np.any(np.diff(arr) <= 0):
        raise bad_meta(
            path,
            f"attribute {name!r} is {_seen(x)}; tile bounds must increase strictly from 0 to "
            f"{n} (the matrix's size along that axis)",
        )
    return arr


def validate_meta(path, meta: dict) -> dict:
    """Types and bounds of the attrs; returns ``shape``, ``nnz``, bounds, ``value_norm2``."""
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise bad_meta(
            path,
            f"attribute {missing[0]!r} is missing (attrs['dscaledgd'] holds {sorted(meta)})",
        )
    shape, nnz, v2 = meta["shape"], meta["nnz"], meta["value_norm2"]
    if not (
        isinstance(shape, list) and len(shape) == 2 and all(_is_int(s) and s >= 1 for s in shape)
    ):
        raise bad_meta(
            path, f"attribute 'shape' is {_seen(shape)}; expected [n1, n2] of positive ints"
        )
    if not _is_int(nnz) or nnz < 0:
        raise bad_meta(path, f"attribute 'nnz' is {_seen(nnz)}; expected a non-negative int")
    if not isinstance(v2, numbers.Real) or isinstance(v2, bool) or not (0 <= v2 < float("inf")):
        raise bad_meta(
            path, f"attribute 'value_norm2' is {_seen(v2)}; expected a finite number >= 0"
        )
    sid = meta.get("store_id")
    if sid is not None and not isinstance(sid, str):
        raise bad_meta(path, f"attribute 'store_id' is {_seen(sid)}; expected a string")
    return {
        "shape": (int(shape[0]), int(shape[1])),
        "nnz": int(nnz),
        "row_bounds": _check_bounds(path, "row_bounds", meta["row_bounds"], shape[0]),
        "col_bounds": _check_bounds(path, "col_bounds", meta["col_bounds"], shape[1]),
        "value_norm2": float(v2),
    }


def validate_arrays(path, meta: dict, info: dict, tile_ptr, row_counts, col_counts) -> None:
    """``tile_ptr`` and the counts against each other and the attrs, then the digest."""
    nnz, rb, cb = info["nnz"], info["row_bounds"], info["col_bounds"]
    a, b = len(rb) - 1, len(cb) - 1
    if tile_ptr[0] != 0 or tile_ptr[-1] != nnz or np.any(np.diff(tile_ptr) < 0):
        raise corrupt(
            path,
            f"array 'tile_ptr' does not run from 0 to nnz={nnz} without decreasing "
            f"(it runs from {int(tile_ptr[0])} to {int(tile_ptr[-1])})",
        )
    tile_nnz = np.diff(tile_ptr).reshape(a, b)
    for name, counts, bounds, per_stripe, axis in (
        ("row_counts", row_counts, rb, tile_nnz.sum(1), "row"),
        ("col_counts", col_counts, cb, tile_nnz.sum(0), "column"),
    ):
        if counts.size and counts.min() < 0:
            raise corrupt(path, f"array {name!r} holds a negative count {int(counts.min())}")
        sums = np.add.reduceat(counts, bounds[:-1]) if len(counts) else np.zeros(0, np.int64)
        bad = np.flatnonzero(sums != per_stripe)
        if bad.size:
            k = int(bad[0])
            bname = "row_bounds" if axis == "row" else "col_bounds"
            raise corrupt(
                path,
                f"array {name!r} sums to {int(sums[k])} over {axis} stripe {k} "
                f"({bname}[{k}:{k + 2}] = {bounds[k : k + 2].tolist()}), but the tiles of that "
                f"stripe hold {int(per_stripe[k])} entries (tile_ptr); the {bname!r} attribute "
                f"or the arrays were edited",
            )
    digest = meta.get("digest")
    if digest is not None and digest != layout.meta_digest(meta, tile_ptr):
        raise InputDataError(
            f"The Observations store {path!r} fails its integrity check: the store's metadata "
            "was edited after it was written (the 'digest' attribute does not match "
            f"{', '.join(layout.DIGEST_KEYS)} and tile_ptr). Do not edit zarr.json by hand. "
            f"{RECREATE}"
        )


def entry_arrays(path: str, store_id: str) -> tuple:
    """``(rows, cols, values)`` of the Observations store ``store_id`` at ``path``, opened
    once per process and cached by identity (:func:`~dscaledgd.storage.chunks.open_cached`):
    a store replaced at the same path is re-opened, and refused if its identity differs."""
    names = tuple(name for name, _ in _DTYPES)
    arrays = chunks.open_cached(
        path, store_id, kind="Observations", names=names, identity=store_identity
    )
    return tuple(arrays[name] for name in names)


def store_identity(path, meta: dict) -> str:
    """The identity caches are keyed by: ``store_id``, or for older stores a fingerprint.

    Older stores (no ``store_id``) are identified by the inode, size and
    modification time of their ``zarr.json``: replacing the store (an atomic
    rename) gives a new inode.
    """
    sid = meta.get("store_id")
    if sid:
        return str(sid)
    st = os.stat(os.path.join(path, "zarr.json"))
    return f"legacy-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"


# ------------------------------------------------------------------- open
#: The arrays of an Observations store.
ARRAYS = ("rows", "cols", "values", "tile_ptr", "row_counts", "col_counts")
#: Attrs owned by the store format (not carried as user attrs when re-written).
CORE_META = frozenset({"type", "library_version", "digest", *layout.DIGEST_KEYS})
#: dtypes of the arrays: the entries exactly (a cast could wrap an index into range)
_KINDS = {name: "iu" for name in ARRAYS}
_EXACT = {"rows": np.dtype(np.int32), "cols": np.dtype(np.int32), "values": np.dtype(np.float64)}


def _read_whole(arr, name: str, path) -> np.ndarray:
    return chunks.read_all(arr, name=name, error=functools.partial(corrupt, path))


def open_store(path) -> dict:
    """Open and validate an Observations store; the keyword arguments of ``Observations``.

    Checks, in order: the group and its ``attrs["dscaledgd"]`` (type, format
    version, :func:`validate_meta`), that every array exists with all its
    chunks, the arrays' shapes and dtypes, then :func:`validate_arrays`
    (``tile_ptr``, per-stripe counts, digest). Nothing of the entries is read.
    """
    import zarr

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No Observations store at {path!r}: the path does not exist.")
    try:
        g = zarr.open_group(path, mode="r")
    except Exception as exc:  # not a zarr group at all
        raise InputDataError(
            f"{path!r} is not a dscaledgd Observations store (it is not a Zarr v3 group: "
            f"{exc}). Create one with Observations.to_zarr or `dscaledgd import`."
        ) from None
    meta = dict(g.attrs).get("dscaledgd")
    if not isinstance(meta, dict) or meta.get("type") != "observations":
        raise InputDataError(
            f"{path!r} is not a dscaledgd Observations store: its attrs lack "
            "dscaledgd.type == 'observations'. Create one with Observations.to_zarr or "
            "`dscaledgd import`."
        )
    version = meta.get("format_version", 0)
    if not _is_int(version):
        raise bad_meta(path, f"attribute 'format_version' is {_seen(version)}; expected an int")
    if version > layout.FORMAT_VERSION:
        raise InputDataError(
            f"{path!r} has format version {version}, newer than this library's "
            f"{layout.FORMAT_VERSION}. Upgrade dscaledgd."
        )
    info = validate_meta(path, meta)
    present = set(g.array_keys())
    missing = [a for a in ARRAYS if a not in present]
    if missing:
        raise truncated(path, f"arrays {missing} are missing")
    arr = {a: g[a] for a in ARRAYS}
    nnz, (n1, n2) = info["nnz"], info["shape"]
    a, b = len(info["row_bounds"]) - 1, len(info["col_bounds"]) - 1
    expect = {
        "rows": (nnz,),
        "cols": (nnz,),
        "values": (nnz,),
        "tile_ptr": (a * b + 1,),
        "row_counts": (n1,),
        "col_counts": (n2,),
    }
    for name, shp in expect.items():
        x = arr[name]
        if tuple(x.shape) != shp:
            raise corrupt(
                path,
                f"array {name!r} has shape {tuple(x.shape)}, expected {shp} from the attrs "
                f"(nnz={nnz}, shape={[n1, n2]}, a {a}×{b} tile grid)",
            )
        dt = np.dtype(x.dtype)
        if (dt != _EXACT[name]) if name in _EXACT else (dt.kind not in _KINDS[name]):
            want = _EXACT.get(name, "an integer dtype")
            raise corrupt(path, f"array {name!r} has dtype {dt}, expected {want}")
        # presence only: a chunk's size is checked as it is decoded (read_entries)
        chunks.check_chunks(x, name, functools.partial(truncated, path))
    tile_ptr = _read_whole(arr["tile_ptr"], "tile_ptr", path).astype(np.int64)
    row_counts = _read_whole(arr["row_counts"], "row_counts", path).astype(np.int64)
    col_counts = _read_whole(arr["col_counts"], "col_counts", path).astype(np.int64)
    validate_arrays(path, meta, info, tile_ptr, row_counts, col_counts)
    ids = {}
    for name, n in (("row_ids", n1), ("col_ids", n2)):
        ids[name] = _read_whole(g[name], name, path) if name in present else None
        if ids[name] is not None and ids[name].shape != (n,):
            raise corrupt(path, f"array {name!r} has shape {ids[name].shape}, expected ({n},)")
    return {
        **{k: v for k, v in info.items() if k != "nnz"},
        "tile_ptr": tile_ptr,
        "rows": arr["rows"],
        "cols": arr["cols"],
        "values": arr["values"],
        "row_counts": row_counts,
        "col_counts": col_counts,
        "path": os.path.abspath(path),
        "attrs": {k: v for k, v in meta.items() if k not in CORE_META},
        "store_id": store_identity(path, meta),
        **ids,
    }
