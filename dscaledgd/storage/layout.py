"""The tile layout of COO observations and its Zarr encoding.

Layout (DESIGN.md §2, recorded in docs/design.md):

* the matrix is cut into a grid of ``a × b`` tiles by ``row_bounds`` and
  ``col_bounds``; the bounds balance the number of observations per stripe;
* all entries of tile ``t = ia * b + ib`` are one contiguous range
  ``[tile_ptr[t], tile_ptr[t + 1])`` of the 1-D arrays ``rows``, ``cols``
  (int32, *tile-local*) and ``values`` (float64);
* inside a tile, entries are in **banded order**: sorted by
  ``(j // W, i, j)`` with column band ``W = band_width(nnz, shape)``. While
  the fused kernel sweeps one band, the band's rows of ``R`` and of its
  gradient stay in cache and the rows of ``L`` stream in order. Each band
  re-streams ``L``, so sparse matrices want wide bands (fewer sweeps of
  ``L``) and dense ones narrow bands (``R`` stays in L2): ``W`` is the power
  of two nearest ``1.25 / density``, clamped to [1024, 16384]. Measured with
  ``python benchmarks/bench_layout.py`` (RESULTS.md): at density 1e-4,
  ``W = 16384`` is 2.0–2.6× faster than 1024 and 2048; at 5e-3, 1024 is 11%
  faster than 2048. Any order gives the same result up to summation order;
  stores written in another order stay valid.

Zarr group (format version 1)::

    OBS.zarr/
      zarr.json        attrs["dscaledgd"] = {"type": "observations", ...}
      rows, cols       int32 (nnz,)   uncompressed, chunks of CHUNK entries
      values           float64 (nnz,)
      tile_ptr         int64 (a*b + 1,)
      row_counts       int64 (n1,)    observations per row
      col_counts       int64 (n2,)

Integrity (every writer since the store-integrity change; older stores lack
these and open with structural checks only, see :mod:`.integrity`):

* every array ends each chunk with a CRC-32C (Zarr v3's ``crc32c`` codec), so
  a garbled or truncated chunk fails to decode instead of reading as data;
* the fill value of the entry arrays is invalid data (``-1`` for indices,
  NaN for values), so a chunk deleted after the store was opened reads as an
  out-of-range index or a non-finite value and is refused, never as zeros;
* the attrs hold a random ``store_id`` (the identity that worker caches are
  keyed by) and a ``digest``: the SHA-256 of the canonical JSON of the core
  metadata and of ``tile_ptr`` (:func:`meta_digest`), checked at open.

Writes go to a temporary sibling directory that is renamed into place only
when complete (:func:`atomic_dir`), so a crash never leaves a half-written
store under the final name. The temporary directory's name records the
writer's host and pid; a writer that was killed leaves it behind, and the
next write to the same destination removes it (:func:`remove_stale_siblings`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator

import numpy as np

from ..exceptions import InputDataError

__all__ = [
    "band_width",
    "CHUNK",
    "FORMAT_VERSION",
    "balanced_bounds",
    "default_tiles",
    "tile_of",
    "blocked_order",
    "atomic_dir",
    "check_output_path",
    "checksum_codecs",
    "core_attrs",
    "create_checked_array",
    "create_entry_arrays",
    "invalid_fill",
    "meta_digest",
    "new_store_id",
    "remove_stale_siblings",
    "unstable_dtype_ok",
    "write_small_array",
]

#: Bounds of the column band of the order inside a tile; the band's rows of ``R``
#: and of its gradient take ``2 · W · 8r`` bytes (164 KB at W = 1024, r = 10).
MIN_BAND, MAX_BAND = 1024, 16384
#: Entries per Zarr chunk of the 1-D arrays (16 MB of float64 values).
CHUNK = 1 << 21
FORMAT_VERSION = 1

#: Fewest observations per tile before the default grid stops splitting.
_MIN_TILE_NNZ = 200_000
#: Most bytes of entries (16 per entry) in a default tile: bounds a task's memory at import.
_MAX_TILE_BYTES = 256 << 20


#: Rank for which a memory-limited default grid is sized (a task's factor working set)
_NOMINAL_RANK = 10
#: Bytes per factor row of a tile task's working set at that rank: the interleaved
#: ``[F | ∇F]`` blocks of the fused kernel (2r), the returned gradient (r) and the
#: factor block itself (r), float64
_TASK_BYTES_PER_ROW = 8 * 4 * _NOMINAL_RANK
#: Share of a worker thread's memory that one tile task's factor working set may take
_TASK_MEMORY_SHARE = 0.25


def _grid(t: int, n1: int, n2: int) -> tuple[int, int]:
    a = int(np.clip(round(np.sqrt(t * n1 / max(n2, 1))), 1, t))
    b = max(1, t // a)
    return min(a, n1), min(b, n2)


def default_tiles(
    shape: tuple[int, int],
    nnz: int,
    nthreads: int | None = None,
    memory_limit: int | None = None,
) -> tuple[int, int]:
    """A tile grid sized to the parallelism: about two tiles per thread.

    Small data sets get fewer tiles (at least ``_MIN_TILE_NNZ`` entries each),
    large ones more (at most about 256 MB of entries per tile), and the grid's
    aspect follows the matrix's so that the partial gradients exchanged per
    iteration (``b·n1·r + a·n2·r`` numbers) stay small.

    ``memory_limit`` (bytes per worker thread, when the import runs on a
    cluster with memory limits) bounds a tile task's factor working set at
    rank 10, ``320 · (tile height + tile width)`` bytes, to a quarter of it:
    the grid is refined until it fits. At 2M × 1M on 768 MiB workers this
    gives 7 × 3 tiles instead of 3 × 2 (measured: the 3 × 2 grid's iterations
    restarted the workers 21 times; ``benchmarks/bench_ingest.py``).
    """
    n1, n2 = shape
    nthreads = nthreads or os.cpu_count() or 1
    t = max(1, min(2 * nthreads, nnz // _MIN_TILE_NNZ))
    t = max(t, -(-16 * nnz // _MAX_TILE_BYTES))  # at most ~256 MB of entries per tile
    a, b = _grid(t, n1, n2)
    if memory_limit:
        budget = _TASK_MEMORY_SHARE * memory_limit
        while _TASK_BYTES_PER_ROW * (-(-n1 // a) + -(-n2 // b)) > budget and (a < n1 or b < n2):
            t *= 2
            a, b = _grid(t, n1, n2)
    return a, b


def balanced_bounds(counts: np.ndarray, nblocks: int) -> np.ndarray:
    """Block boundaries over ``len(counts)`` rows that balance ``counts``.

    Every block is non-empty (at least one row). Returns ``nblocks + 1``
    increasing integers from 0 to ``len(counts)``.
    """
    n = len(counts)
    nblocks = max(1, min(nblocks, n))
    total = counts.sum()
    if total == 0:
        return np.linspace(0, n, nblocks + 1).astype(np.int64)
    cum = np.cumsum(counts)
    targets = total * np.arange(1, nblocks) / nblocks
    cuts = np.searchsorted(cum, targets, side="left") + 1
    bounds = np.concatenate([[0], cuts, [n]]).astype(np.int64)
    # force strictly increasing bounds (non-empty blocks)
    for k in range(1, nblocks):
        bounds[k] = min(max(bounds[k], bounds[k - 1] + 1), n - (nblocks - k))
    return bounds


def tile_of(rows: np.ndarray, cols: np.ndarray, row_bounds, col_bounds):
    """Tile id and tile-local indices of global ``(rows, cols)``."""
    ia = np.searchsorted(row_bounds, rows, side="right") - 1
    ib = np.searchsorted(col_bounds, cols, side="right") - 1
    b = len(col_bounds) - 1
    tile = ia * b + ib
    lr = (rows - row_bounds[ia]).astype(np.int32)
    lc = (cols - col_bounds[ib]).astype(np.int32)
    return tile, lr, lc


def band_width(nnz: int, shape: tuple[int, int]) -> int:
    """The column band ``W`` of a store's banded order: the power of two nearest
    ``1.25 / density``, clamped to ``[MIN_BAND, MAX_BAND]`` (about one entry per row
    and band, measured best by ``benchmarks/bench_layout.py``)."""
    density = nnz / max(1, int(shape[0]) * int(shape[1]))
    if not density > 0:
        return MAX_BAND
    return int(np.clip(2 ** round(np.log2(1.25 / density)), MIN_BAND, MAX_BAND))


def blocked_order(tile: np.ndarray, lr: np.ndarray, lc: np.ndarray, band: int) -> np.ndarray:
    """Stable permutation sorting entries by ``(tile, j//W, i, j)``, ``W = band``.

    Equal ``(tile, i, j)`` keys stay in input order, which the ``"last"``
    duplicate policy relies on.
    """
    W = int(band)
    i64 = np.int64
    lr64 = lr.astype(i64)
    lc64 = lc.astype(i64)
    height = int(lr64.max()) + 1 if len(lr64) else 1
    local = (lc64 // W) * (height * W) + lr64 * W + lc64 % W
    span = int(local.max()) + 1 if len(local) else 1
    ntiles = int(tile.max()) + 1 if len(tile) else 1
    if ntiles * span < 2**62:
        return np.argsort(tile.astype(i64) * span + local, kind="stable")
    return np.lexsort((local, tile))


def sort_tile_entries(tile, lr, lc, vals, pos, policy: str, band: int):
    """Banded order (column band ``band``) plus the duplicate policy, for the entries
    of one or many tiles.

    ``pos`` is each entry's position in the input (int64), used for ``"last"``
    (stable order) and to name duplicates. Returns ``(tile, lr, lc, vals, dup)``
    where ``dup`` is ``None`` or, under ``policy="error"``, a tuple
    ``(first_pos, later_pos, n_repeated, tile, lr, lc)`` describing the
    duplicate whose repeat comes first in the input (nothing is combined then).
    """
    order = blocked_order(tile, lr, lc, band)
    tile, lr, lc, vals, pos = tile[order], lr[order], lc[order], vals[order], pos[order]
    same = (tile[1:] == tile[:-1]) & (lr[1:] == lr[:-1]) & (lc[1:] == lc[:-1])
    if not same.any():
        return tile, lr, lc, vals, None
    start = np.concatenate([[True], ~same])  # first entry of each group
    first = np.flatnonzero(start)
    if policy == "error":
        k = int(np.argmin(np.where(same, pos[1:], np.iinfo(np.int64).max)))
        g = np.searchsorted(first, k + 1, side="right") - 1  # group of the repeat
        j = first[g]
        dup = (int(pos[j]), int(pos[k + 1]), int(same.sum()), int(tile[j]), int(lr[j]), int(lc[j]))
        return tile, lr, lc, vals, dup
    group = np.cumsum(start) - 1
    if policy == "last":
        last = np.concatenate([first[1:] - 1, [len(vals) - 1]])
        new_vals = vals[last]
    else:
        new_vals = np.bincount(group, weights=vals)
        if policy == "mean":
            new_vals = new_vals / np.bincount(group)
    return tile[first], lr[first], lc[first], new_vals, None


def duplicate_message(dup, row0: int, col0: int) -> str:
    first, later, n_rep, _, lr, lc = dup
    return (
        f"Duplicate observation ({row0 + lr}, {col0 + lc}) at entries {first} and {later} "
        f"({n_rep} repeated entries in all). Pass duplicates='sum', 'mean' or 'last' to "
        "combine them."
    )


#: dtypes of the per-entry arrays of an Observations store
ENTRY_FIELDS = {"rows": "int32", "cols": "int32", "values": "float64"}


def checksum_codecs() -> list:
    """The bytes-to-bytes codecs of every array a writer creates: a CRC-32C per chunk.

    Uncompressed otherwise; the checksum costs a few percent of a warm read
    (``benchmarks/bench_store_integrity.py``).
    """
    from zarr.codecs import Crc32cCodec

    return [Crc32cCodec()]


def invalid_fill(dtype) -> int | float:
    """A fill value that is invalid data: -1 for indices, NaN for values.

    A chunk that goes missing after a store was opened then reads as an
    out-of-range index or a non-finite value, which the read-time checks
    refuse, instead of as zeros (valid data).
    """
    return float("nan") if np.dtype(dtype).kind == "f" else -1


def create_entry_arrays(group, total: int, fields: dict | None = None, chunk: int | None = None):
    """Create the 1-D per-entry arrays of a store (``CHUNK``-sized chunks).

    Each chunk carries a CRC-32C (:func:`checksum_codecs`) and the fill value
    is invalid data (:func:`invalid_fill`). Chunks equal to the fill value are
    written too (``write_empty_chunks``): every chunk then exists, which is how
    a truncated store is detected. Returns ``{name: array}``.
    """
    fields = ENTRY_FIELDS if fields is None else fields
    chunk = max(1, min(CHUNK, total)) if chunk is None else chunk
    return {
        name: create_checked_array(
            group, name, shape=(total,), chunks=(chunk,), dtype=dt, fill_value=invalid_fill(dt)
        )
        for name, dt in fields.items()
    }


def create_checked_array(group, name: str, **kwargs):
    """``group.create_array(name, **kwargs)`` the way every store writes its arrays.

    Each chunk carries a CRC-32C (:func:`checksum_codecs`), and chunks equal to
    the fill value are written too (``write_empty_chunks``), so that every chunk
    exists and a missing one means a damaged store
    (:func:`~dscaledgd.storage.chunks.check_chunks`).
    """
    return group.create_array(
        name, compressors=checksum_codecs(), config={"write_empty_chunks": True}, **kwargs
    )


@contextlib.contextmanager
def unstable_dtype_ok():
    """Silence Zarr's warning that fixed-width string arrays (id maps) lack a v3 spec."""
    import warnings

    try:
        from zarr.errors import UnstableSpecificationWarning
    except ImportError:  # pragma: no cover - older zarr
        UnstableSpecificationWarning = UserWarning  # noqa: N806
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableSpecificationWarning)
        yield


def write_small_array(group, name: str, data) -> None:
    """Write a small 1-D array (counts, pointers, id maps, histories), one chunk per 4M,
    checksummed (:func:`create_checked_array`).

    Integer data is stored as int64; string ids as fixed-width unicode (Zarr
    warns that this dtype's v3 spec is not final; the warning is silenced).
    """
    data = np.asarray(data)
    if data.dtype.kind in "iub":
        data = data.astype(np.int64)
    with unstable_dtype_ok():
        create_checked_array(group, name, data=data, chunks=(max(1, min(len(data), 1 << 22)),))


def check_output_path(path: str | os.PathLike, overwrite: bool, what: str = "output") -> str:
    """Refuse an existing path (unless ``overwrite``) or an unwritable parent."""
    path = os.fspath(path)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(
            f"The {what} path {path!r} already exists. Pass overwrite=True to replace it, "
            "or choose another path."
        )
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(parent):
        raise FileNotFoundError(
            f"Cannot write the {what} {path!r}: the parent directory {parent!r} does not "
            "exist. Create it first."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(
            f"Cannot write the {what} {path!r}: the directory {parent!r} is not writable. "
            "Choose a writable location."
        )
    return path


# ---------------------------------------------------------- store identity
#: The attrs covered by the digest (with the SHA-256 of ``tile_ptr``).
DIGEST_KEYS = (
    "format_version",
    "shape",
    "nnz",
    "row_bounds",
    "col_bounds",
    "value_norm2",
    "store_id",
)


def new_store_id() -> str:
    """A fresh random store identity (32 hex digits)."""
    return uuid.uuid4().hex


def meta_digest(meta: dict, tile_ptr) -> str:
    """``"sha256:<hex>"`` of the canonical JSON of the core metadata and of ``tile_ptr``.

    The core metadata are the attrs named by :data:`DIGEST_KEYS`; ``tile_ptr``
    enters as the SHA-256 of its little-endian int64 bytes. Canonical JSON:
    sorted keys, no spaces, floats as ``repr`` (exact round trip).
    """
    core = {k: meta.get(k) for k in DIGEST_KEYS}
    ptr = np.ascontiguousarray(np.asarray(tile_ptr).astype("<i8", copy=False))
    core["tile_ptr_sha256"] = hashlib.sha256(ptr.tobytes()).hexdigest()
    text = json.dumps(core, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def sum_squares(values) -> float:
    """``Σ v²`` of float64 values; ``inf``, without a ``RuntimeWarning``, when it overflows
    float64: the data is kept, and the solvers refuse it up front with a message that names
    the scale (``dscaledgd.api._scale.check_values``)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    with np.errstate(over="ignore"):
        return float(v @ v)


def storable_norm2(value_norm2: float) -> float:
    """``value_norm2`` for a store's attrs; an overflowed (``inf``) one is refused here,
    before anything is written, rather than read back later as corrupt metadata."""
    v2 = float(value_norm2)
    if not np.isfinite(v2):
        raise InputDataError(
            "The sum of squares of the observed values overflows float64 (values near "
            f"{np.sqrt(np.finfo(float).max):.0e} or larger), so a store cannot record it "
            "('value_norm2') and no solver can fit them. Rescale the data (divide it by a "
            "constant) and write it again."
        )
    return v2


def core_attrs(*, shape, nnz, row_bounds, col_bounds, value_norm2, tile_ptr, store_id=None) -> dict:
    """The core ``attrs["dscaledgd"]`` of an Observations store, with identity and digest.

    Every writer of an Observations store calls this (through
    ``Observations._store_attrs``) once per store it creates: it draws a new
    ``store_id`` (:func:`new_store_id`) unless one is given, and adds the
    ``digest`` (:func:`meta_digest`) that :meth:`Observations.open_zarr`
    checks.
    """
    meta = {
        "type": "observations",
        "format_version": FORMAT_VERSION,
        "shape": [int(shape[0]), int(shape[1])],
        "nnz": int(nnz),
        "row_bounds": [int(x) for x in row_bounds],
        "col_bounds": [int(x) for x in col_bounds],
        "value_norm2": storable_norm2(value_norm2),
        "store_id": store_id or new_store_id(),
    }
    meta["digest"] = meta_digest(meta, tile_ptr)
    return meta


# ------------------------------------------------------------ atomic writes
#: A temporary or old sibling left by an interrupted write is stale after this long.
STALE_AGE_S = 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9._]", "_", socket.gethostname())[:64] or "host"
_SIBLING = re.compile(r"(?:tmp|old)-[0-9a-f]{12}(?:-(?P<host>.+)-(?P<pid>\d+))?")


def _sibling_name(base: str, kind: str) -> str:
    """``.BASE.KIND-<uuid>-<host>-<pid>``: the writer's host and pid, for stale detection."""
    return f".{base}.{kind}-{uuid.uuid4().hex[:12]}-{_HOST}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_siblings(path: str, max_age: float = STALE_AGE_S) -> list[str]:
    """Remove the ``.NAME.tmp-*`` / ``.NAME.old-*`` siblings of ``path`` left by dead writers.

    A sibling is stale when it was last modified more than ``max_age``
    seconds ago (one day), or when its name says it was written on this host
    by a process that is no longer alive. Siblings of live writers (another
    process writing the same destination now) are kept; so are siblings from
    other hosts younger than ``max_age``. Returns the removed paths.
    """
    parent = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(os.path.abspath(path))
    return _remove_stale(parent, f".{base}.", _SIBLING, max_age)


#: ``<uuid>-<host>-<pid>`` after a scratch directory's prefix (:func:`scratch_dir`)
_SCRATCH = re.compile(r"[0-9a-f]{12}-(?P<host>.+)-(?P<pid>\d+)")


def scratch_dir(parent: str | None, prefix: str, max_age: float = STALE_AGE_S) -> str:
    """A new directory ``PREFIX<uuid>-<host>-<pid>`` in ``parent`` (default: the temp dir).

    Import scratch space and temporary stores: a process killed while using
    one (SIGKILL runs no clean-up) leaves it behind, so every call first
    removes the directories with the same prefix that are stale by the rule
    of :func:`remove_stale_siblings` (a dead writer on this host, or older
    than a day).
    """
    import tempfile

    parent = os.path.abspath(parent or tempfile.gettempdir())
    _remove_stale(parent, prefix, _SCRATCH, max_age)
    path = os.path.join(parent, f"{prefix}{uuid.uuid4().hex[:12]}-{_HOST}-{os.getpid()}")
    os.makedirs(path)
    return path


def _remove_stale(parent: str, prefix: str, pattern, max_age: float) -> list[str]:
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        m = pattern.fullmatch(name[len(prefix) :]) if name.startswith(prefix) else None
        if m is None:
            continue
        full = os.path.join(parent, name)
        try:
            age = now - os.lstat(full).st_mtime
        except OSError:
            continue
        dead = m["pid"] is not None and m["host"] == _HOST and not _pid_alive(int(m["pid"]))
        if not (dead or age > max_age):
            continue
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(full)
        removed.append(full)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary sibling directory; publish it at ``path`` on success.

    On any exception the temporary directory is removed and ``path`` is left
    untouched. With ``overwrite=True`` an existing ``path`` is replaced only
    after the new one is complete. The temporary name records this host and
    pid; stale siblings that killed writers left for ``path`` are removed
    first (:func:`remove_stale_siblings`).
    """
    path = check_output_path(path, overwrite)
    parent = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(os.path.abspath(path))
    remove_stale_siblings(path)
    tmp = os.path.join(parent, _sibling_name(base, "tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.lexists(path):
        old = os.path.join(parent, _sibling_name(base, "old"))
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.remove(old)
