"""Chunk grid, chunk formats and Zarr store of ``TensorObservations`` (:mod:`.tensors`).

Grid: **regular**, like Zarr's: along mode ``k`` every chunk has
``chunk_shape[k]`` entries but the last, which may be smaller; chunks are
numbered in C order (:class:`Grid`). Kernel format of a chunk (``read_chunk``,
:func:`load_chunk`): ``"dense"``: a float64 array of the chunk's shape, NaN at
missing entries; ``"coo"``: ``(index, values, shape)``, ``index`` int32
``(m, d)`` *local* indices sorted in C order without repeats, ``values``
float64 ``(m,)``, ``shape`` the chunk's shape.

Zarr group (format version 1)::

    T.zarr/
      zarr.json    attrs["dscaledgd"]: type "tensor_observations", layout, shape,
                   chunk_shape, nnz, value_norm2, source_dtype, dims, store_id,
                   digest, format_version, library_version
      values       dense: float64, the tensor's shape, chunks = chunk_shape, fill NaN
                   coo:   float64 (nnz,), chunks of ENTRY_CHUNK entries, fill NaN
      index        coo only: int32 (nnz, d), local indices, fill -1
      chunk_ptr    int64 (n_chunks + 1,): chunk c's observed entries are
                   [chunk_ptr[c], chunk_ptr[c + 1]) (coo: rows of index/values)
      mode_counts  int64 (n_1 + ... + n_d,): observed entries per slice, mode after mode

Arrays are checksummed with all chunks written, fill values invalid data
(:func:`~dscaledgd.storage.layout.create_checked_array`). The ``digest``
(:func:`~dscaledgd.storage.layout.meta_digest`) covers ``format_version``,
``shape``, ``nnz``, ``value_norm2``, ``store_id`` by name and ``layout``,
``chunk_shape``, ``chunk_ptr`` as its hashed array. Nothing a store claims is
trusted: :func:`open_store` and :func:`read_checked` check it.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from dataclasses import dataclass

import numpy as np

from .._version import __version__
from ..exceptions import InputDataError, InvalidParameterError
from . import chunks, layout
from .chunk_formats import coo_to_dense, dense_to_coo
from .integrity import _is_int, _seen

__all__ = ["ChunkRef", "ChunkSink", "Grid", "load_chunk", "open_store", "write_store"]

STORE_TYPE = "tensor_observations"
LAYOUTS = ("dense", "coo")
FORMAT_VERSION = 1
#: Entries per Zarr chunk of the coo entry arrays (16 MB of float64 values).
ENTRY_CHUNK = layout.CHUNK
#: Default grids: chunks of at most TARGET_CHUNK_BYTES, CHUNKS_PER_THREAD per CPU thread
#: unless that makes them smaller than MIN_SPLIT_BYTES (:func:`default_chunks`).
TARGET_CHUNK_BYTES, CHUNKS_PER_THREAD, MIN_SPLIT_BYTES = 16 << 20, 3, 1 << 20
RECREATE = "Re-create the store (TensorObservations.to_zarr)."


def corrupt(path, detail: str, state: str = "is corrupt") -> InputDataError:
    return chunks.store_error("TensorObservations", path, detail, RECREATE, state)


def no_observed_entry() -> InputDataError:
    return InputDataError(
        "The tensor has no observed entry: every entry is missing (NaN, or False in the "
        "mask). Pass data with at least one observed value."
    )


# ------------------------------------------------------------------- grid
@dataclass(frozen=True)
class Grid:
    """A regular chunk grid over ``shape``: chunks of ``chunk_shape``, smaller at the ends."""

    shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]

    ndim = property(lambda self: len(self.shape))
    grid = property(lambda self: tuple(-(-n // s) for n, s in zip(self.shape, self.chunk_shape)))
    n_chunks = property(lambda self: math.prod(self.grid))

    chunks = property(lambda self: tuple(tuple(np.diff(b).tolist()) for b in self.bounds))

    @property
    def bounds(self) -> list[np.ndarray]:
        return [
            np.minimum(np.arange(g + 1, dtype=np.int64) * s, n)
            for n, s, g in zip(self.shape, self.chunk_shape, self.grid)
        ]

    def index(self, c: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(c, self.grid))

    def offset(self, c: int) -> tuple[int, ...]:
        return tuple(i * s for i, s in zip(self.index(c), self.chunk_shape))

    def extent(self, c: int) -> tuple[int, ...]:
        return tuple(min(s, n - o) for n, s, o in zip(self.shape, self.chunk_shape, self.offset(c)))

    def slices(self, c: int) -> tuple[slice, ...]:
        return tuple(slice(o, o + e) for o, e in zip(self.offset(c), self.extent(c)))


def default_chunks(shape, bytes_per_entry: float = 8.0, nthreads: int | None = None):
    """A chunk shape of at most ``TARGET_CHUNK_BYTES`` (16 MB) at ``bytes_per_entry``
    (8: dense), split until every CPU thread has ``CHUNKS_PER_THREAD`` chunks unless they
    would get below 1 MB. Halving the largest extent keeps chunks about cubic: 2–4 chunks
    per mode for tensors of tens to hundreds of MB, one chunk for tiny ones."""
    nthreads = nthreads or os.cpu_count() or 1
    sizes = [int(n) for n in shape]
    while True:
        nbytes = bytes_per_entry * math.prod(sizes)
        count = math.prod(-(-int(n) // s) for n, s in zip(shape, sizes))
        few = count < CHUNKS_PER_THREAD * nthreads and nbytes > MIN_SPLIT_BYTES
        k = max(range(len(sizes)), key=sizes.__getitem__)
        if not (nbytes > TARGET_CHUNK_BYTES or few) or sizes[k] == 1:
            return tuple(sizes)
        sizes[k] = -(-sizes[k] // 2)


def resolve_chunks(func: str, chunks_, shape: tuple, default: tuple) -> tuple[int, ...]:
    """``chunks_`` (None, an int, per-mode sizes or Dask-style per-mode tuples) as the
    chunk shape of a regular grid over ``shape``."""
    d, spec = len(shape), default if chunks_ is None else chunks_

    def fail(detail: str = ""):
        return InvalidParameterError(
            f"The 'chunks' parameter of {func} must be an int, or a tuple of {d} chunk sizes "
            f"or of {d} tuples of chunk sizes covering the shape {tuple(shape)} on a regular "
            f"grid (equal chunks, the last one no larger). Got {chunks_!r}{detail}."
        )

    spec = [spec] * d if _is_int(spec) else spec
    if not isinstance(spec, tuple | list) or len(spec) != d:
        raise fail()
    out = []
    for k, (c, n) in enumerate(zip(spec, shape)):
        if c is None or c == -1:
            out.append(n)
        elif _is_int(c):
            if c < 1:
                raise fail(f": mode {k}'s chunk size {c} is not positive")
            out.append(min(int(c), n))
        elif isinstance(c, tuple | list) and c and all(_is_int(x) and x >= 1 for x in c):
            if sum(c) != n:
                raise fail(f": mode {k}'s chunks sum to {sum(c)}, not {n}")
            if any(x != c[0] for x in c[:-1]) or c[-1] > c[0]:
                raise fail(f": mode {k}'s chunks {tuple(c)} are not regular")
            out.append(int(c[0]))
        else:
            raise fail(f": mode {k}'s entry {c!r} is not a chunk size or a tuple of them")
    return tuple(out)


# ----------------------------------- chunks of a grid (their formats: chunk_formats.py)
def coo_chunks(idx: np.ndarray, vals: np.ndarray, grid: Grid):
    """Global entries (``idx`` int64 ``(m, d)`` in range) as coo chunks, in C order.

    Refuses a repeated index (naming the pair of input positions).
    """
    cs = np.asarray(grid.chunk_shape, dtype=np.int64)
    block = idx // cs
    local = (idx - block * cs).astype(np.int32)
    cid = np.ravel_multi_index(tuple(block.T), grid.grid)
    order = np.lexsort((*local.T[::-1], cid))  # chunk, then C order inside it
    cid, local, vals = cid[order], local[order], vals[order]
    same = (cid[1:] == cid[:-1]) & (local[1:] == local[:-1]).all(axis=1)
    if same.any():  # the repeat that comes first in the input
        k = int(np.argmin(np.where(same, order[1:], np.iinfo(np.int64).max)))
        p, q = sorted((int(order[k]), int(order[k + 1])))
        raise InputDataError(
            f"Duplicate entry {tuple(int(i) for i in idx[p])} at positions {p} and {q} of "
            f"indices ({int(same.sum())} repeated entries in all). Each entry may be observed "
            "once: combine the repeats first (e.g. average them)."
        )
    ptr = np.concatenate([[0], np.cumsum(np.bincount(cid, minlength=grid.n_chunks))])
    for c in range(grid.n_chunks):
        yield local[ptr[c] : ptr[c + 1]], vals[ptr[c] : ptr[c + 1]], grid.extent(c)


def _chunk_stats(chunk, counts, offset) -> tuple[int, float]:
    """``(nnz, Σ y²)`` of a chunk in either format; adds its per-slice counts to ``counts``.

    The squares are summed in C order in both formats: both give the same bits.
    """
    if isinstance(chunk, np.ndarray):
        obs = ~np.isnan(chunk)
        v = chunk[obs]
        for k, (cnt, o) in enumerate(zip(counts, offset)):
            per = obs.sum(axis=tuple(j for j in range(chunk.ndim) if j != k), dtype=np.int64)
            cnt[o : o + len(per)] += per
    else:
        index, v, shape = chunk
        for k, (cnt, o) in enumerate(zip(counts, offset)):
            cnt[o : o + shape[k]] += np.bincount(index[:, k], minlength=shape[k])
    return len(v), layout.sum_squares(v)


# ------------------------------------------------------------------ write
class ChunkSink:
    """Builds ``layout_`` from chunks given in C order (either kernel format), in memory
    or in the Zarr ``group``, with ``chunk_ptr``, per-slice counts and ``Σ y²``. Memory
    in a store: one chunk and at most ``ENTRY_CHUNK`` buffered entries."""

    def __init__(self, grid: Grid, layout_: str, *, group=None, nnz_bound: int | None = None):
        self.grid, self.layout, self.group, self._next = grid, layout_, group, 0
        self.chunk_nnz = np.zeros(grid.n_chunks, np.int64)
        self.counts = [np.zeros(n, np.int64) for n in grid.shape]
        self.sumsq, self._parts = 0.0, []
        if layout_ == "dense" and group is None:
            self._dense = np.full(grid.shape, np.nan)
        elif layout_ == "dense":
            kw = {"shape": grid.shape, "chunks": grid.chunk_shape, "fill_value": np.nan}
            self._dense = layout.create_checked_array(group, "values", dtype="float64", **kw)
        elif group is not None:  # coo entries, written in whole Zarr chunks
            bound = math.prod(grid.shape) if nnz_bound is None else nnz_bound
            n, d, self._written, self._pending = max(1, min(ENTRY_CHUNK, bound)), grid.ndim, 0, 0
            new = functools.partial(layout.create_checked_array, group)
            self._index = new("index", shape=(0, d), chunks=(n, d), dtype="int32", fill_value=-1)
            self._values = new("values", shape=(0,), chunks=(n,), dtype="f8", fill_value=np.nan)

    def add(self, chunk) -> None:
        c, self._next = self._next, self._next + 1
        n, s = _chunk_stats(chunk, self.counts, self.grid.offset(c))
        self.chunk_nnz[c], self.sumsq = n, self.sumsq + s
        dense_in = isinstance(chunk, np.ndarray)
        if self.layout == "dense":
            self._dense[self.grid.slices(c)] = chunk if dense_in else coo_to_dense(chunk)
        else:
            self._parts.append((dense_to_coo(chunk) if dense_in else chunk)[:2])
            if self.group is not None:
                self._pending += n
                self._flush()

    def _flush(self, final: bool = False) -> None:
        """Write the buffered coo entries to the store, in whole Zarr chunks unless ``final``."""
        n = self._pending
        take = n if final else n - n % self._index.chunks[0]
        if take:
            index, values = (np.concatenate(a) for a in zip(*self._parts))
            s = self._written
            self._written += take
            self._index.resize((self._written, self.grid.ndim))
            self._values.resize((self._written,))
            self._index[s:], self._values[s:] = index[:take], values[:take]
            self._parts, self._pending = [(index[take:], values[take:])], n - take

    def finish(self) -> dict:
        """The statistics and, in memory, the data: keyword arguments of the class."""
        ptr = np.concatenate([[0], np.cumsum(self.chunk_nnz)]).astype(np.int64)
        if ptr[-1] == 0:
            raise no_observed_entry()
        out = {"chunk_ptr": ptr, "mode_counts": self.counts, "value_norm2": self.sumsq}
        if self.group is not None:
            if self.layout == "coo":
                self._flush(final=True)
            layout.write_small_array(self.group, "chunk_ptr", ptr)
            layout.write_small_array(self.group, "mode_counts", np.concatenate(self.counts))
        elif self.layout == "dense":
            out["dense"] = self._dense
        else:
            out["index"], out["values"] = (np.concatenate(a) for a in zip(*self._parts))
        return out


def _digest(meta: dict, chunk_ptr) -> str:
    """:func:`~dscaledgd.storage.layout.meta_digest`, hashing layout, chunk_shape, chunk_ptr."""
    head = [LAYOUTS.index(meta["layout"]), len(meta["chunk_shape"]), *meta["chunk_shape"]]
    covered = np.concatenate([head, np.asarray(chunk_ptr)]).astype(np.int64)
    return layout.meta_digest(meta, covered)


def write_store(path, overwrite, grid, layout_, chunk_iter, *, nnz_bound, source_dtype, dims):
    """Stream ``chunk_iter`` (C order) into a new store, published atomically at ``path``
    with a fresh ``store_id``; on any error (bad data midway included) nothing is left."""
    import zarr

    path = os.fspath(path)
    with layout.atomic_dir(path, overwrite=overwrite) as tmp:
        g = zarr.open_group(tmp, mode="w")
        sink = ChunkSink(grid, layout_, group=g, nnz_bound=nnz_bound)
        for chunk in chunk_iter:
            sink.add(chunk)
        stats = sink.finish()
        meta = {
            "type": STORE_TYPE,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "layout": layout_,
            "shape": list(grid.shape),
            "chunk_shape": list(grid.chunk_shape),
            "nnz": int(stats["chunk_ptr"][-1]),
            "value_norm2": layout.storable_norm2(stats["value_norm2"]),
            "source_dtype": str(source_dtype),
            "dims": None if dims is None else [str(x) for x in dims],
            "store_id": layout.new_store_id(),
        }
        meta["digest"] = _digest(meta, stats["chunk_ptr"])
        g.attrs.update({"dscaledgd": meta})
    return path


# ------------------------------------------------------------------- open
def _validate_meta(path, meta: dict) -> tuple[Grid, str, int, float]:
    keys = ("layout", "shape", "chunk_shape", "nnz", "value_norm2", "store_id", "digest")
    lay, shape, cs, nnz, v2, sid, dig = (meta.get(k) for k in keys)
    ints = isinstance(shape, list) and len(shape) >= 2 and all(_is_int(n) and n > 0 for n in shape)
    cs_ok = ints and isinstance(cs, list) and len(cs) == len(shape)
    cs_ok = cs_ok and all(_is_int(c) and 1 <= c <= n for c, n in zip(cs, shape))
    v2_ok = isinstance(v2, numbers.Real) and not isinstance(v2, bool) and 0 <= v2 < np.inf
    dims = meta.get("dims")
    dims_ok = dims is None or isinstance(dims, list) and all(isinstance(x, str) for x in dims)
    checks = (
        ("layout", lay in LAYOUTS, "'dense' or 'coo'"),
        ("shape", ints, "a list of at least 2 positive ints"),
        ("chunk_shape", cs_ok, f"one int in [1, n] per mode of the shape {shape}"),
        ("nnz", _is_int(nnz) and nnz >= 1, "a positive int"),
        ("value_norm2", v2_ok, "a finite number >= 0"),
        ("store_id", isinstance(sid, str), "a string"),
        ("digest", isinstance(dig, str), "a string"),
        ("dims", dims_ok and (dims is None or len(dims) == len(shape)), "null or a name per mode"),
    )
    for name, ok, want in checks:
        if not ok:
            seen = _seen(meta[name]) if name in meta else "missing"
            detail = f"attribute {name!r} is {seen}; expected {want}"
            raise corrupt(path, detail, "has invalid metadata")
    return Grid(tuple(shape), tuple(cs)), lay, int(nnz), float(v2)


def _arrays(path, g, grid: Grid, lay: str, nnz: int) -> dict:
    """The store's arrays, checked for presence, shape, dtype and chunk files."""
    expect = {
        "values": (grid.shape if lay == "dense" else (nnz,), np.float64),
        **({"index": ((nnz, grid.ndim), np.int32)} if lay == "coo" else {}),
        "chunk_ptr": ((grid.n_chunks + 1,), np.int64),
        "mode_counts": ((sum(grid.shape),), np.int64),
    }
    missing = [a for a in expect if a not in set(g.array_keys())]
    trunc = functools.partial(corrupt, path, state="is truncated")
    if missing:
        raise trunc(f"arrays {missing} are missing")
    out = {}
    for name, (shape, dtype) in expect.items():
        x = out[name] = g[name]
        if tuple(x.shape) != tuple(shape) or x.dtype != dtype:
            raise corrupt(
                path,
                f"array {name!r} has shape {tuple(x.shape)} and dtype {x.dtype}, expected "
                f"{tuple(shape)} and {np.dtype(dtype)} from the attrs (layout {lay!r}, "
                f"nnz={nnz}, shape={list(grid.shape)}, chunk_shape={list(grid.chunk_shape)})",
            )
        if name == "values" and lay == "dense" and tuple(x.chunks) != grid.chunk_shape:
            raise corrupt(path, f"array 'values' has chunks {x.chunks}, not the chunk_shape")
        chunks.check_chunks(x, name, trunc, path=path)
    return out


def _check_counts(path, grid: Grid, nnz: int, ptr, mode_counts) -> None:
    if ptr[0] != 0 or ptr[-1] != nnz or np.any(np.diff(ptr) < 0):
        raise corrupt(
            path,
            f"array 'chunk_ptr' does not run from 0 to nnz={nnz} without decreasing (it runs "
            f"from {int(ptr[0])} to {int(ptr[-1])}); the 'nnz' attribute or the array was edited",
        )
    if mode_counts.min() < 0:
        raise corrupt(path, f"array 'mode_counts' holds a negative count {int(mode_counts.min())}")
    per_chunk = np.diff(ptr).reshape(grid.grid)
    starts = np.cumsum([0, *grid.shape])
    for k, b in enumerate(grid.bounds):
        sums = np.add.reduceat(mode_counts[starts[k] : starts[k + 1]], b[:-1])
        stripe = per_chunk.sum(axis=tuple(j for j in range(grid.ndim) if j != k))
        bad = np.flatnonzero(sums != stripe)
        if bad.size:
            s = int(bad[0])
            raise corrupt(
                path,
                f"array 'mode_counts' sums to {int(sums[s])} over the slices {int(b[s])}:"
                f"{int(b[s + 1])} of mode {k}, but the chunks there hold {int(stripe[s])} "
                "entries (chunk_ptr); the attrs or the arrays were edited",
            )


def open_store(path) -> dict:
    """Open and validate a store: the keyword arguments of the class. Checks the group
    and its type (a matrix Observations store is named), the attrs, every array with all
    its chunk files of the right size, shapes and dtypes, ``chunk_ptr`` against ``nnz``
    and the per-slice counts, then the digest. No entry is read."""
    import zarr

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No TensorObservations store at {path!r}: no such path.")
    try:
        g = zarr.open_group(path, mode="r")
    except Exception as exc:  # noqa: BLE001 - not a zarr group at all
        raise InputDataError(
            f"{path!r} is not a dscaledgd TensorObservations store (not a Zarr v3 group: "
            f"{exc}). Create one with TensorObservations.to_zarr."
        ) from None
    meta = dict(g.attrs).get("dscaledgd")
    kind = meta.get("type") if isinstance(meta, dict) else None
    if kind != STORE_TYPE:
        matrix = kind == "observations"
        fix = "Open it with Observations.open_zarr" if matrix else "Create one with to_zarr"
        raise InputDataError(
            f"{path!r} is {'a matrix Observations store, ' if matrix else ''}not a dscaledgd "
            f"TensorObservations store (its attrs lack dscaledgd.type == {STORE_TYPE!r}). {fix}."
        )
    version = meta.get("format_version")
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        detail = f"attribute 'format_version' is {_seen(version)}; this library reads 1"
        raise corrupt(
            path, detail + " (upgrade dscaledgd for newer stores)", "has invalid metadata"
        )
    grid, lay, nnz, v2 = _validate_meta(path, meta)
    arrays = _arrays(path, g, grid, lay, nnz)  # checked here; reads re-open by identity
    error = functools.partial(corrupt, path)
    ptr = chunks.read_all(arrays.pop("chunk_ptr"), name="chunk_ptr", error=error)
    mc = chunks.read_all(arrays.pop("mode_counts"), name="mode_counts", error=error)
    _check_counts(path, grid, nnz, ptr, mc)
    if meta["digest"] != _digest(meta, ptr):
        raise InputDataError(
            f"The TensorObservations store {path!r} fails its integrity check: its metadata "
            "was edited after it was written (the 'digest' attribute does not match "
            "format_version, shape, nnz, value_norm2, store_id, layout, chunk_shape and "
            f"chunk_ptr). Do not edit zarr.json by hand. {RECREATE}"
        )
    dims = meta.get("dims")
    return {
        "grid": grid,
        "layout": lay,
        "chunk_ptr": ptr,
        "mode_counts": np.split(mc, np.cumsum(grid.shape)[:-1]),
        "value_norm2": v2,
        "path": os.path.abspath(path),
        "store_id": meta["store_id"],
        "source_dtype": str(meta.get("source_dtype", "float64")),
        "dims": None if dims is None else tuple(dims),
    }


# ------------------------------------------------------------ checked reads
@dataclass(frozen=True)
class ChunkRef:
    """Chunk ``chunk`` (grid ``index``) of the store at ``path``, for :func:`load_chunk`:
    ``offset`` and ``shape`` place it in the tensor; its observed entries are
    ``[lo, hi)`` of the store's (coo) or number ``hi - lo`` (dense). A store replaced at
    ``path`` since it was opened as ``store_id`` is refused."""

    path: str
    store_id: str
    layout: str
    chunk: int
    index: tuple[int, ...]
    offset: tuple[int, ...]
    shape: tuple[int, ...]
    lo: int
    hi: int

    slices = property(lambda self: tuple(slice(o, o + n) for o, n in zip(self.offset, self.shape)))
    nnz = property(lambda self: self.hi - self.lo)


def _deleted(ref: ChunkRef, arr, name: str, keys) -> None:
    """Raise when a chunk file among ``keys`` of ``arr`` is gone (it read as the fill value)."""
    if any(not os.path.exists(chunks.chunk_path(ref.path, arr, k)) for k in keys):
        raise corrupt(
            ref.path,
            f"a chunk of array {name!r} holding chunk {ref.chunk} (grid index {ref.index}) is "
            "missing: it was deleted after the store was opened, and reads as the fill value",
        )


def _read_dense(arr, ref: ChunkRef) -> np.ndarray:
    where = f"chunk {ref.chunk} (grid index {ref.index}) of array 'values'"
    try:
        x = np.ascontiguousarray(arr[ref.slices], dtype=np.float64)
    except (MemoryError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - a codec error: reported with the chunk
        raise corrupt(
            ref.path,
            f"{where} cannot be decoded ({type(exc).__name__}: {exc}); it was truncated, "
            "overwritten or garbled on disk",
        ) from None
    inf = np.argwhere(np.isinf(x))
    if len(inf):
        k = tuple(int(i) for i in inf[0])
        raise corrupt(
            ref.path, f"{where} holds the non-finite value {float(x[k])!r} at local index {k}"
        )
    n = int(np.count_nonzero(~np.isnan(x)))
    if n != ref.nnz:
        _deleted(ref, arr, "values", [ref.index])
        raise corrupt(ref.path, f"{where} holds {n} observed entries; chunk_ptr records {ref.nnz}")
    return x


def _read_coo(arrays, ref: ChunkRef):
    where, sl, error = f"chunk {ref.chunk} (grid index {ref.index})", slice(ref.lo, ref.hi), None
    read = functools.partial(chunks.read, error=functools.partial(corrupt, ref.path))
    index, values = (
        np.ascontiguousarray(read(arrays[name], sl, name=name, where=where + ", "), dtype=dt)
        for name, dt in (("index", np.int32), ("values", np.float64))
    )
    bad = (index < 0) | (index >= np.asarray(ref.shape))
    unsorted = np.diff(index.astype(np.int64) @ np.cumprod((ref.shape[1:] + (1,))[::-1])[::-1])
    if bad.any():
        e, k = (int(i) for i in np.argwhere(bad)[0])
        error = (
            f"array 'index' of {where} holds the local index {index[e].tolist()} at entry {e} "
            f"of the chunk, outside the chunk's shape {ref.shape} along mode {k}"
        )
    elif not np.isfinite(values).all():
        e = int(np.flatnonzero(~np.isfinite(values))[0])
        error = (
            f"array 'values' of {where} holds the non-finite value {float(values[e])!r} at "
            f"entry {e} of the chunk"
        )
    elif (unsorted <= 0).any():
        e = int(np.flatnonzero(unsorted <= 0)[0]) + 1
        error = (
            f"array 'index' of {where} is not sorted without repeats (C order) at entry {e} "
            f"of the chunk ({index[e - 1].tolist()} then {index[e].tolist()})"
        )
    if error:
        for name in ("index", "values"):
            step = int(arrays[name].chunks[0])
            keys = [
                (j,) + (0,) * (name == "index") for j in range(ref.lo // step, ref.hi // step + 1)
            ]
            _deleted(ref, arrays[name], name, [k for k in keys if k[0] * step < ref.hi])
        raise corrupt(ref.path, error)
    return index, values, ref.shape


def read_checked(arrays: dict, ref: ChunkRef):
    """Chunk ``ref`` of the open store ``arrays`` in kernel format, decoded and checked.

    Raises :class:`~dscaledgd.exceptions.InputDataError` naming the store and
    the chunk when a piece cannot be decoded, is missing, holds an index
    outside the chunk, a non-finite value, or disagrees with ``chunk_ptr``.
    """
    if ref.layout == "dense":
        return _read_dense(arrays["values"], ref)
    return _read_coo(arrays, ref)


def _stored_id(path: str, meta: dict):
    """The identity of a TensorObservations store: its ``store_id`` (always written)."""
    return meta.get("store_id")


def open_arrays(path: str, store_id: str) -> dict:
    """The entry arrays of store ``store_id`` at ``path``, cached per process by identity
    (:func:`~dscaledgd.storage.chunks.open_cached`): a store replaced at the same path is
    re-opened, and refused if its identity differs."""
    return chunks.open_cached(
        path, store_id, kind="TensorObservations", names=("index", "values"), identity=_stored_id
    )


def load_chunk(ref: ChunkRef):
    """Chunk ``ref`` in kernel format, read (on a worker) and checked as :func:`read_checked`."""
    return read_checked(open_arrays(ref.path, ref.store_id), ref)
