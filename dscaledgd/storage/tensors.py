"""TensorObservations: a partially observed N-way tensor in chunks, in memory or in Zarr.

For Tucker tensor completion. The tensor (order ``d >= 2``: 3 and more is the
target, order 2 is accepted) is cut by a regular chunk grid and held in one of
two layouts: ``"dense"`` (each chunk a float64 array, NaN at missing entries;
``8 · Π n_k`` bytes) or ``"coo"`` (only the observed entries, per chunk: int32
local indices sorted in C order and float64 values; ``(4d + 8) · nnz`` bytes).
``layout="auto"`` is dense when at least :data:`DENSE_MIN_DENSITY` of the
entries are observed. :mod:`.tensor_store` has the grid, the kernel format of
a chunk and the Zarr store format.
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import RANDOM_STATE, Interval, check_choice, check_param, resolve_rng
from ..exceptions import InvalidParameterError
from .chunk_formats import dense_to_coo, pack_dense
from .chunks import StoreBacked
from .coo import _physical_memory
from .integrity import _is_int
from .layout import check_output_path, new_store_id
from .tensor_inputs import _coo_input, _dense_block, _Source
from .tensor_store import (
    LAYOUTS,
    ChunkRef,
    ChunkSink,
    Grid,
    coo_chunks,
    default_chunks,
    load_chunk,
    no_observed_entry,
    open_arrays,
    open_store,
    read_checked,
    resolve_chunks,
    write_store,
)

__all__ = ["TensorObservations", "ChunkRef", "load_chunk", "DENSE_MIN_DENSITY"]

#: ``layout="auto"`` stores a tensor dense when at least this fraction is observed.
#: Measured (benchmarks/bench_tensor.py layout, r = 5, 2 threads): at 200³ the
#: observed-only layout is faster at p = 0.02 (0.019 vs 0.022 s/iter) and dense
#: at p = 0.05 (0.026 vs 0.048); at 300³, p = 0.05, they are within 15%.
DENSE_MIN_DENSITY = 0.03
#: A Dask input larger than this share of memory (as float64) needs ``path=``.
IN_MEMORY_FRACTION = 0.25
_LAYOUT_OPTIONS = ("auto", *LAYOUTS)


# ------------------------------------------------------------------- class
class TensorObservations(StoreBacked):
    """The observed entries of an ``n_1 × … × n_d`` tensor, in chunks of a regular grid.

    Build one with :meth:`from_array`, :meth:`from_coo` or :meth:`open_zarr`;
    the constructor is internal.

    Attributes
    ----------
    shape, ndim, chunks, grid, bounds, n_chunks
        The shape; the grid as Dask's ``chunks`` (per-mode tuples of sizes);
        blocks per mode; per-mode chunk boundaries (int64, ``grid[k] + 1``
        each); the number of chunks, numbered in C order.
    layout : {"dense", "coo"}
    nnz, density, value_norm2, mode_counts, chunk_ptr
        ``|Ω|``, ``|Ω| / Π n_k``, ``Σ_Ω y²``; per mode, the observed entries
        per slice (int64; empty slices are allowed); chunk ``c`` holds
        ``chunk_ptr[c + 1] - chunk_ptr[c]`` observed entries.
    path, store_id
        The backing Zarr store (``None`` in memory), and the identity that
        worker caches are keyed by (a new uuid per object built or store written).
    source_dtype : str
        The input's dtype (the data are float64).
    dims : tuple of str or None
        Mode names, kept from an ``xarray.DataArray`` input.

    Notes
    -----
    Memory: in memory, ``8 · Π n_k`` bytes (dense) or ``(4d + 8) · nnz`` (coo)
    plus ``8 · Σ n_k`` of counts. Store-backed, only the counts and
    ``chunk_ptr``: chunks are read on demand (:meth:`read_chunk`, or
    :func:`load_chunk` on a worker), each decoded (CRC-32C) and checked before
    use. Conversions (:meth:`to_layout`, :meth:`to_zarr`) stream chunk by chunk.
    """

    def __init__(self, *, grid: Grid, layout: str, chunk_ptr, mode_counts, value_norm2: float,
                 path=None, store_id=None, source_dtype="float64", dims=None, **data):  # fmt: skip
        self._grid, self.layout = grid, layout
        self.chunk_ptr = np.asarray(chunk_ptr, dtype=np.int64)
        self.mode_counts = [np.asarray(x, dtype=np.int64) for x in mode_counts]
        self.value_norm2 = float(value_norm2)
        for a in data.values():
            if isinstance(a, np.ndarray):
                a.setflags(write=False)  # read_chunk hands out views
        self._dense, self._index, self._values = (data.get(k) for k in ("dense", "index", "values"))
        self.path, self.store_id = path, store_id or new_store_id()
        self.source_dtype, self.dims = str(source_dtype), None if dims is None else tuple(dims)

    shape = property(lambda self: self._grid.shape)
    ndim = property(lambda self: self._grid.ndim)
    chunks = property(lambda self: self._grid.chunks)
    grid = property(lambda self: self._grid.grid)
    bounds = property(lambda self: self._grid.bounds)
    n_chunks = property(lambda self: self._grid.n_chunks)
    nnz = property(lambda self: int(self.chunk_ptr[-1]))
    density = property(lambda self: self.nnz / math.prod(self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes of the data in this layout (dense: ``8 · Π n_k``; coo: ``(4d + 8) · nnz``)."""
        dense = self.layout == "dense"
        return 8 * math.prod(self.shape) if dense else (4 * self.ndim + 8) * self.nnz

    def _check_chunk(self, c, func: str) -> int:
        check_param(func, "c", c, [Interval("int", 0, self.n_chunks - 1)])
        return int(c)

    def chunk_index(self, c: int) -> tuple[int, ...]:
        """The grid multi-index of chunk ``c`` (chunks are numbered in C order)."""
        return self._grid.index(self._check_chunk(c, "chunk_index"))

    def chunk_slices(self, c: int) -> tuple[slice, ...]:
        """The global index ranges of chunk ``c``."""
        return self._grid.slices(self._check_chunk(c, "chunk_slices"))

    # --------------------------------------------------------------- chunks
    def chunk_ref(self, c: int) -> ChunkRef:
        """A small picklable reference to chunk ``c`` of the backing store, for
        :func:`load_chunk` on a worker. Store-backed objects only."""
        c, g = self._check_chunk(c, "chunk_ref"), self._grid
        if self.path is None:
            raise InvalidParameterError(
                "chunk_ref needs a store-backed TensorObservations; this one is in memory. "
                "Write it with to_zarr and open it with open_zarr, or pass read_chunk(c)."
            )
        lo, hi = int(self.chunk_ptr[c]), int(self.chunk_ptr[c + 1])
        args = (g.index(c), g.offset(c), g.extent(c), lo, hi)
        return ChunkRef(self.path, self.store_id, self.layout, c, *args)

    def read_chunk(self, c: int):
        """Chunk ``c`` in kernel format: a dense float64 array (NaN = missing), or
        ``(index int32 (m, d) local C-sorted, values float64 (m,), shape)`` for coo.

        From a store the chunk is decoded and checked (indices inside the chunk,
        finite values, the count ``chunk_ptr`` records); a failure raises
        :class:`~dscaledgd.exceptions.InputDataError` naming the store and chunk.
        """
        c = self._check_chunk(c, "read_chunk")
        if self.path is not None:
            return read_checked(open_arrays(self.path, self.store_id), self.chunk_ref(c))
        if self.layout == "dense":
            return np.array(self._dense[self._grid.slices(c)], order="C")
        lo, hi = self.chunk_ptr[c], self.chunk_ptr[c + 1]
        return self._index[lo:hi], self._values[lo:hi], self._grid.extent(c)

    def packed_chunk(self, c: int):
        """Chunk ``c`` of a dense in-memory tensor packed to travel to a worker
        (:func:`~dscaledgd.storage.chunk_formats.pack_dense`; ``unpack_dense`` there
        rebuilds :meth:`read_chunk`'s array)."""
        c = self._check_chunk(c, "packed_chunk")
        if self.path is not None or self.layout != "dense":
            raise InvalidParameterError(
                "packed_chunk needs an in-memory TensorObservations with layout='dense'; "
                f"this one is {'store-backed' if self.path else 'in memory'} with layout="
                f"{self.layout!r}. Use read_chunk(c) (or chunk_ref(c) for a store)."
            )
        return pack_dense(self._dense[self._grid.slices(c)])

    def _coo_chunk(self, c: int):
        x = self.read_chunk(c)
        return dense_to_coo(x) if isinstance(x, np.ndarray) else x

    def observed(self):
        """All observed entries as ``(indices int64 (nnz, d) global, values float64)``,
        chunk after chunk (C order), C order inside each chunk. Loads everything."""
        parts = [self._coo_chunk(c)[:2] for c in range(self.n_chunks)]
        offsets = [np.asarray(self._grid.offset(c)) for c in range(self.n_chunks)]
        idx = np.concatenate([p[0].astype(np.int64) + o for p, o in zip(parts, offsets)])
        return idx, np.concatenate([p[1] for p in parts])

    def to_dask(self):
        """The tensor as a lazy dense float64 Dask array with this grid, NaN = missing.

        A store-backed object's chunks are read and checked by the tasks.
        """
        import dask
        import dask.array as da

        if self.path is None and self.layout == "dense":
            return da.from_array(self._dense, chunks=self.chunks)
        blocks = np.empty(self.grid, dtype=object)
        meta = np.empty((0,) * self.ndim)
        for c in range(self.n_chunks):
            src = self.read_chunk(c) if self.path is None else self.chunk_ref(c)
            task = dask.delayed(_dense_block, pure=True)(src)
            shape = self._grid.extent(c)
            blocks[self._grid.index(c)] = da.from_delayed(task, shape, np.float64, meta=meta)
        return da.block(blocks.tolist())

    # --------------------------------------------------------- constructors
    @classmethod
    def _build(cls, grid, layout, chunk_iter, path, overwrite, **kw) -> TensorObservations:
        """Stream ``chunk_iter`` into ``layout``: in memory, or into a new store at ``path``."""
        if path is not None:
            write_store(path, overwrite, grid, layout, chunk_iter, **kw)
            return cls.open_zarr(path)
        sink = ChunkSink(grid, layout)
        for chunk in chunk_iter:
            sink.add(chunk)
        kw.pop("nnz_bound")
        return cls(grid=grid, layout=layout, **sink.finish(), **kw)

    @classmethod
    def from_array(
        cls, X, mask=None, *, chunks=None, layout: str = "auto", path=None, overwrite: bool = False
    ) -> TensorObservations:
        """Observations from a dense tensor; NaN (or ``mask == False``) marks a missing entry.

        Parameters
        ----------
        X : array-like, shape (n_1, ..., n_d), d >= 2
            NumPy, Dask or Zarr array, ``xarray.DataArray`` (``dims`` are kept),
            or a path to a ``.npy`` (memory-mapped), a ``.npz`` (one array, or
            ``'X'``/``'arr_0'`` and an optional ``'mask'``) or a Zarr array.
            Integer and float32 data are converted to float64 (DataWarning).
        mask : array-like of bool, optional
            ``True`` where observed (NumPy, Dask or a path). Values outside the
            mask are ignored; inside it they must be finite. It must have a
            boolean dtype, as in :meth:`Observations.from_dense`: an integer 0/1
            mask is refused (pass ``mask.astype(bool)``).
        chunks : int or tuple, optional
            A regular grid: one size for all modes, a size per mode (``-1``:
            the whole mode) or Dask-style per-mode tuples. Default: a Dask
            input's chunks (the largest per mode if irregular), a Zarr input's,
            else :func:`~dscaledgd.storage.tensor_store.default_chunks`.
        layout : {"auto", "dense", "coo"}, default "auto"
            ``"auto"``: dense when at least ``DENSE_MIN_DENSITY`` of the
            entries are observed; it costs a counting pass over the input.
        path : str, optional
            Write chunk by chunk to a new Zarr store and return the
            store-backed object; the tensor is never held whole. Required for
            a Dask input larger than a quarter of this machine's memory.
        overwrite : bool, default False
            Replace an existing ``path``.

        Raises
        ------
        InputDataError
            Order < 2, non-numeric data, a mask of another shape or not
            boolean, a non-finite observed value (its index is named), or no
            observed entry. Nothing is written.
        InvalidParameterError
            Bad ``chunks`` or ``layout``, or a large Dask input without ``path``.
        """
        lay = check_choice("from_array", "layout", layout, _LAYOUT_OPTIONS)
        src = _Source(X, mask)
        shape, vol = src.shape, math.prod(src.shape)
        default = src.chunk_hint or default_chunks(shape)
        grid = Grid(shape, resolve_chunks("from_array", chunks, shape, default))
        if path is not None:
            check_output_path(path, overwrite)
        elif src.lazy and 8 * vol > IN_MEMORY_FRACTION * _physical_memory():
            raise InvalidParameterError(
                f"The 'path' parameter of from_array must be a Zarr store path for a Dask input "
                f"of {8 * vol / 2**30:.1f} GiB (as float64), more than a quarter of this "
                "machine's memory: the tensor is then written chunk by chunk. Got None."
            )
        nnz = None
        if lay == "auto":
            nnz = src.count_observed(grid)
            if nnz == 0:
                raise no_observed_entry()
            lay = "dense" if nnz / vol >= DENSE_MIN_DENSITY else "coo"
        kw = {"nnz_bound": nnz, "source_dtype": src.dtype, "dims": src.dims}
        return cls._build(grid, lay, src.chunks(grid), path, overwrite, **kw)

    @classmethod
    def from_nifti(cls, path, mask=None, *, chunks=None, layout="auto", store=None,
                   overwrite=False) -> TensorObservations:  # fmt: skip
        """Observations from a NIfTI image (nibabel; ``mask``: a boolean array or a NIfTI
        mask, nonzero = observed). With ``store``, streamed slab by slab into that Zarr
        store (a ``.nii.gz`` is decompressed once). See :mod:`~.volumes`."""
        from .volumes import from_nifti

        return from_nifti(path, mask, chunks=chunks, layout=layout, store=store,
                          overwrite=overwrite)  # fmt: skip

    @classmethod
    def from_video(cls, path, *, gray=True, chunks=None, layout="dense", store=None,
                   overwrite=False, max_frames=None) -> TensorObservations:  # fmt: skip
        """Observations ``(T, H, W)`` (gray) or ``(T, H, W, C)`` from a video's frames, in
        order (imageio), streamed into ``store`` when given. See :mod:`~.volumes`."""
        from .volumes import from_video

        return from_video(path, gray=gray, chunks=chunks, layout=layout, store=store,
                          overwrite=overwrite, max_frames=max_frames)  # fmt: skip

    @classmethod
    def from_coo(
        cls, indices, values, shape, *, chunks=None, layout="coo", path=None, overwrite=False
    ) -> TensorObservations:
        """Observations from global ``indices`` (int, ``(m, d)``) and ``values`` ``(m,)``.

        Every index must be in range and appear once: duplicates are refused
        (combine them first). ``chunks``, ``layout`` (default ``"coo"``),
        ``path`` and ``overwrite`` are as in :meth:`from_array`; the default
        grid aims at 16 MB of entries per chunk in the chosen layout.
        """
        ok = isinstance(shape, tuple | list) and len(shape) >= 2
        if not ok or not all(_is_int(n) and n > 0 for n in shape):
            raise InvalidParameterError(
                "The 'shape' parameter of from_coo must be a tuple of at least 2 positive ints. "
                f"Got {shape!r}."
            )
        lay = check_choice("from_coo", "layout", layout, _LAYOUT_OPTIONS)
        shape = tuple(int(n) for n in shape)
        idx, vals = _coo_input(indices, values, shape)
        vol = math.prod(shape)
        if lay == "auto":
            lay = "dense" if len(vals) / vol >= DENSE_MIN_DENSITY else "coo"
        per_entry = 8.0 if lay == "dense" else (4 * len(shape) + 8) * len(vals) / vol
        default = default_chunks(shape, per_entry)
        grid = Grid(shape, resolve_chunks("from_coo", chunks, shape, default))
        if path is not None:
            check_output_path(path, overwrite)
        chunk_iter = coo_chunks(idx, vals, grid)
        kw = {"nnz_bound": len(vals), "source_dtype": np.asarray(values).dtype, "dims": None}
        return cls._build(grid, lay, chunk_iter, path, overwrite, **kw)

    @classmethod
    def open_zarr(cls, path) -> TensorObservations:
        """Open a store written by :meth:`to_zarr` (or ``from_array(..., path=...)``).

        Validated before anything is returned: the store's kind (a matrix
        Observations store is refused), the attrs, every array with all its
        chunks, ``chunk_ptr`` against the per-slice counts, and the digest.

        Raises
        ------
        FileNotFoundError
            No store at ``path``.
        InputDataError
            Not a TensorObservations store, truncated, inconsistent or edited;
            the message names the path and what is wrong.
        """
        return cls(**open_store(path))

    # ---------------------------------------------------------- conversions
    def to_zarr(self, path, overwrite: bool = False) -> str:
        """Write to a new Zarr v3 store at ``path``, chunk by chunk, published atomically.

        Refuses an existing ``path`` unless ``overwrite=True``. Returns the path.
        """
        chunk_iter = (self.read_chunk(c) for c in range(self.n_chunks))
        kw = {"nnz_bound": self.nnz, "source_dtype": self.source_dtype, "dims": self.dims}
        return write_store(path, overwrite, self._grid, self.layout, chunk_iter, **kw)

    def to_layout(self, layout: str, *, path=None, overwrite: bool = False) -> TensorObservations:
        """The same observed entries, on the same grid, in ``layout`` ("dense" or "coo"):
        in memory, or streamed chunk by chunk into a new store at ``path``."""
        lay = check_choice("to_layout", "layout", layout, LAYOUTS)
        chunk_iter = (self.read_chunk(c) for c in range(self.n_chunks))
        kw = {"nnz_bound": self.nnz, "source_dtype": self.source_dtype, "dims": self.dims}
        return self._build(self._grid, lay, chunk_iter, path, overwrite, **kw)

    def split(self, test_fraction: float = 0.1, random_state=None):
        """Random train/test split of the observed entries, in memory.

        Exactly ``round(test_fraction · nnz)`` entries, uniformly at random, go
        to the test set. Both parts keep the shape and the chunk grid. The train
        part keeps this layout; the test part is coo unless this layout is
        dense and the test part's density is at least ``DENSE_MIN_DENSITY``.
        The split depends on the observed set, the chunk grid and
        ``random_state`` only: not on the layout or where the data live.
        """
        check_param("split", "test_fraction", test_fraction, [Interval("real", 0, 1, "neither")])
        check_param("split", "random_state", random_state, RANDOM_STATE)
        rng = resolve_rng(random_state)
        nnz = self.nnz
        n_test = int(round(test_fraction * nnz))
        if n_test == 0 or n_test == nnz:
            raise InvalidParameterError(
                f"The 'test_fraction' parameter of split must leave both parts non-empty; it "
                f"gives {n_test} test entries out of {nnz}. Got {test_fraction!r}."
            )
        is_test = np.zeros(nnz, dtype=bool)
        is_test[rng.choice(nnz, size=n_test, replace=False)] = True
        dense_test = self.layout == "dense" and n_test / math.prod(self.shape) >= DENSE_MIN_DENSITY
        train = ChunkSink(self._grid, self.layout)
        test = ChunkSink(self._grid, "dense" if dense_test else "coo")
        for c in range(self.n_chunks):
            index, values, shape = self._coo_chunk(c)
            sel = is_test[self.chunk_ptr[c] : self.chunk_ptr[c + 1]]
            train.add((index[~sel], values[~sel], shape))
            test.add((index[sel], values[sel], shape))
        kw = {"grid": self._grid, "source_dtype": self.source_dtype, "dims": self.dims}
        return tuple(type(self)(layout=s.layout, **s.finish(), **kw) for s in (train, test))

    # ------------------------------------------------------------ lifecycle
    # close() releases nothing: every read opens the store through a per-process cache
    # keyed by its identity (:func:`~dscaledgd.storage.tensor_store.open_arrays`).
    def _describe(self) -> str:
        return (
            f"shape={self.shape}, layout={self.layout!r}, nnz={self.nnz}, "
            f"density={self.density:.3g}, grid={self.grid}"
        )
