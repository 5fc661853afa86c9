"""Observations: a partially observed matrix as COO tiles, in memory or in Zarr.

See :mod:`dscaledgd.storage.layout` for the tile layout and the store format.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .._validation import RANDOM_STATE, Interval, Options, check_param, resolve_rng
from .._version import __version__
from ..exceptions import InputDataError, InvalidParameterError
from . import integrity, layout
from .chunks import StoreBacked
from .coo import as_real_matrix, build_in_memory, check_mask_dtype, check_tiles
from .layout import CHUNK

__all__ = ["Observations"]

DUPLICATE_POLICIES = ("error", "sum", "mean", "last")


def _is_dask(x: Any) -> bool:
    return type(x).__module__.startswith("dask.")


class Observations(StoreBacked):
    """The observed entries of an ``n1 × n2`` matrix, stored as a grid of COO tiles.

    Build one with :meth:`from_coo`, :meth:`from_dense` or :meth:`open_zarr`;
    the constructor is internal.

    Attributes
    ----------
    shape : tuple of int
        ``(n1, n2)``.
    nnz : int
        Number of observed entries ``|Ω|``.
    tiles : tuple of int
        The tile grid ``(a, b)``; tile ``t = ia * b + ib``.
    row_bounds, col_bounds : ndarray of int64
        Tile boundaries, ``a + 1`` and ``b + 1`` increasing integers.
    path : str or None
        The Zarr store backing the data, or ``None`` when held in memory.
    store_id : str or None
        The identity of the backing store (written at creation; for older
        stores a fingerprint of their ``zarr.json``), or ``None`` in memory.
        Caches on the workers are keyed by it, never by the path alone.

    Notes
    -----
    Memory: an in-memory instance holds ``16 · nnz`` bytes (int32 rows and
    cols, float64 values) plus ``8 · (n1 + n2)`` bytes of counts. A
    store-backed instance holds only the counts; tiles are read on demand,
    in sub-chunks, by the workers.

    Nothing a store claims is trusted (:mod:`dscaledgd.storage.integrity`):
    its metadata is checked at open, and every range of entries read from it
    (:meth:`read_tile`, the engine's tasks) is checked before use, so a
    corrupt store raises :class:`~dscaledgd.exceptions.InputDataError` naming
    the array and tile instead of reaching a kernel.
    """

    def __init__(
        self,
        *,
        shape,
        row_bounds,
        col_bounds,
        tile_ptr,
        rows,
        cols,
        values,
        row_counts,
        col_counts,
        value_norm2: float,
        path: str | None = None,
        attrs: dict | None = None,
        row_ids=None,
        col_ids=None,
        store_id: str | None = None,
    ):
        self.shape = (int(shape[0]), int(shape[1]))
        self.row_bounds = np.asarray(row_bounds, dtype=np.int64)
        self.col_bounds = np.asarray(col_bounds, dtype=np.int64)
        self.tile_ptr = np.asarray(tile_ptr, dtype=np.int64)
        self._rows, self._cols, self._values = rows, cols, values
        self.row_counts = np.asarray(row_counts, dtype=np.int64)
        self.col_counts = np.asarray(col_counts, dtype=np.int64)
        self.value_norm2 = float(value_norm2)
        self.path = path
        self.store_id = store_id
        self.attrs = dict(attrs or {})
        #: original ids of rows/columns (from a CSV/Parquet import), or None
        self.row_ids = None if row_ids is None else np.asarray(row_ids)
        self.col_ids = None if col_ids is None else np.asarray(col_ids)

    # ------------------------------------------------------------------ basics
    @property
    def nnz(self) -> int:
        return int(self.tile_ptr[-1])

    @property
    def tiles(self) -> tuple[int, int]:
        return len(self.row_bounds) - 1, len(self.col_bounds) - 1

    @property
    def n_tiles(self) -> int:
        a, b = self.tiles
        return a * b

    @property
    def density(self) -> float:
        """``p = |Ω| / (n1 n2)``."""
        return self.nnz / (self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the tile data (indices and values)."""
        return 16 * self.nnz

    def tile_bounds(self, t: int) -> tuple[int, int, int, int]:
        """``(row0, row1, col0, col1)`` of tile ``t``."""
        a, b = self.tiles
        ia, ib = divmod(t, b)
        return (
            int(self.row_bounds[ia]),
            int(self.row_bounds[ia + 1]),
            int(self.col_bounds[ib]),
            int(self.col_bounds[ib + 1]),
        )

    def tile_nnz(self, t: int) -> int:
        return int(self.tile_ptr[t + 1] - self.tile_ptr[t])

    def read_tile(self, t: int, start: int = 0, stop: int | None = None):
        """Entries ``start:stop`` of tile ``t`` as ``(rows, cols, values)`` (tile-local).

        From a store, the entries are checked as they are read: a chunk that
        fails to decode, a local index outside the tile or a non-finite value
        raises :class:`~dscaledgd.exceptions.InputDataError`.
        """
        lo = int(self.tile_ptr[t])
        hi = int(self.tile_ptr[t + 1])
        s = lo + start
        e = hi if stop is None else min(hi, lo + stop)
        if self.path is None:
            return (
                np.asarray(self._rows[s:e], dtype=np.int32),
                np.asarray(self._cols[s:e], dtype=np.int32),
                np.asarray(self._values[s:e], dtype=np.float64),
            )
        r0, r1, c0, c1 = self.tile_bounds(t)
        arrays = (self._rows, self._cols, self._values)
        return integrity.read_entries(
            arrays, s, e, path=self.path, tile=t, tile_lo=lo, height=r1 - r0, width=c1 - c0
        )

    def _entries(self, start: int, stop: int):
        """Entries ``[start, stop)`` of the 1-D arrays (any tiles), checked when from a store."""
        if self.path is None:
            return (
                np.asarray(self._rows[start:stop]),
                np.asarray(self._cols[start:stop]),
                np.asarray(self._values[start:stop]),
            )
        return integrity.read_span(
            (self._rows, self._cols, self._values),
            start,
            stop,
            self.tile_ptr,
            self.row_bounds,
            self.col_bounds,
            path=self.path,
        )

    def to_coo(self):
        """All entries as global ``(rows, cols, values)`` (int64, int64, float64).

        Loads everything into memory.
        """
        parts = []
        for t in range(self.n_tiles):
            r0, _, c0, _ = self.tile_bounds(t)
            lr, lc, v = self.read_tile(t)
            parts.append((lr.astype(np.int64) + r0, lc.astype(np.int64) + c0, v))
        if not parts:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))

    # ------------------------------------------------------- temporary stores
    def _adopt_temporary(self, dirpath: str) -> Observations:
        """Own the temporary directory ``dirpath`` holding this store.

        It is removed by :meth:`close`, on leaving a ``with`` block, or when
        this object is garbage-collected, whichever comes first. Returns self.
        """
        import shutil
        import weakref

        self._temp_finalizer = weakref.finalize(self, shutil.rmtree, dirpath, True)
        return self

    @property
    def is_temporary(self) -> bool:
        """``True`` when the backing store is a temporary directory owned by this object."""
        fin = getattr(self, "_temp_finalizer", None)
        return fin is not None and fin.alive

    def close(self) -> None:
        """Remove the backing store if it is a temporary one (see :meth:`_adopt_temporary`).

        A store at a path the user chose is never removed. Safe to call twice.
        """
        fin = getattr(self, "_temp_finalizer", None)
        if fin is not None:
            fin()

    def _describe(self) -> str:
        return f"shape={self.shape}, nnz={self.nnz}, density={self.density:.3g}, tiles={self.tiles}"

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_coo(
        cls,
        rows,
        cols,
        values,
        shape=None,
        tiles=None,
        *,
        duplicates: str = "error",
        path: str | os.PathLike | None = None,
        overwrite: bool = False,
    ) -> Observations:
        """Observations from COO triplets.

        Parameters
        ----------
        rows, cols : array-like of int, shape (nnz,)
            Global row and column indices. NumPy or Dask arrays.
        values : array-like of float, shape (nnz,)
            Observed values; must be finite.
        shape : tuple of int, optional
            ``(n1, n2)``. Defaults to ``(rows.max() + 1, cols.max() + 1)``.
            Checked before anything of its size is allocated: each dimension
            at most ``2**31 - 1`` (int32 tile-local indices), and the count
            arrays, ``8 · (n1 + n2)`` bytes, at most a quarter of the
            machine's memory.
        tiles : tuple of int, optional
            Tile grid ``(a, b)``. Defaults to about two tiles per CPU thread
            (:func:`~dscaledgd.storage.layout.default_tiles`).
        duplicates : {"error", "sum", "mean", "last"}, default "error"
            What to do with repeated ``(i, j)`` pairs. ``"error"`` names the
            first duplicate; ``"last"`` keeps the value that comes last in
            input order.
        path : str, optional
            Write the result to this Zarr store and return the store-backed
            observations. Required to keep Dask input out of core; Dask input
            without a path is written to a temporary directory.
        overwrite : bool, default False
            Replace an existing ``path``.

        Returns
        -------
        Observations

        Raises
        ------
        InputDataError
            Non-finite values, negative, out-of-range or too large indices,
            duplicate pairs (with ``duplicates="error"``) or no entries at all.
        InvalidParameterError
            A ``shape`` that is not a pair of positive ints, or too large.
        """
        check_param("from_coo", "duplicates", duplicates, [Options(DUPLICATE_POLICIES)])
        if any(_is_dask(x) for x in (rows, cols, values)):
            from .ingest import coo_from_dask

            return coo_from_dask(
                rows,
                cols,
                values,
                shape=shape,
                tiles=tiles,
                duplicates=duplicates,
                path=path,
                overwrite=overwrite,
            )
        obs = build_in_memory(rows, cols, values, shape, tiles, duplicates)
        if path is not None:
            obs.to_zarr(path, overwrite=overwrite)
            return cls.open_zarr(path)
        return obs

    @classmethod
    def from_dense(cls, M, mask=None, tiles=None, **kwargs) -> Observations:
        """Observations from a dense matrix; NaN marks a missing entry.

        Parameters
        ----------
        M : array-like, shape (n1, n2)
            NumPy or Dask array.
        mask : array-like of bool, shape (n1, n2), optional
            ``True`` where observed. When given, NaN inside the mask is an
            error; entries outside the mask are ignored. It must have a
            boolean dtype, as in :meth:`TensorObservations.from_array`: an
            integer 0/1 mask is refused (pass ``mask.astype(bool)``).
        tiles, **kwargs
            Passed to :meth:`from_coo` (``path``, ``overwrite``). A Dask ``M``
            is imported block by block without being gathered.
        """
        if _is_dask(M) or _is_dask(mask):
            from .ingest import dense_from_dask

            return dense_from_dask(
                M,
                mask,
                tiles=tiles,
                path=kwargs.get("path"),
                overwrite=kwargs.get("overwrite", False),
            )
        M = as_real_matrix(M)
        if M.ndim != 2:
            raise InputDataError(
                f"from_dense needs a 2-D matrix; got an array with shape {M.shape}. "
                "Reshape it, or use tucker_complete for tensors."
            )
        if mask is None:
            obs_mask = ~np.isnan(M.astype(np.float64, copy=False))
            bad = np.isinf(M) & obs_mask
        else:
            obs_mask = np.asarray(mask)
            check_mask_dtype(obs_mask, "from_dense")
            if obs_mask.shape != M.shape:
                raise InputDataError(
                    f"The mask has shape {obs_mask.shape} but M has shape {M.shape}; they "
                    "must match."
                )
            bad = ~np.isfinite(M) & obs_mask
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise InputDataError(
                f"M[{i}, {j}] = {float(M[i, j])!r} is not finite inside the observed set. Mark it "
                "missing (NaN without a mask, or False in the mask) or replace it."
            )
        r, c = np.nonzero(obs_mask)
        return cls.from_coo(r, c, M[r, c], shape=M.shape, tiles=tiles, **kwargs)

    @classmethod
    def from_csv(
        cls, path, row: str, col: str, value: str, sep: str = ",", **options
    ) -> Observations:
        """Observations from a CSV file with a header line, streamed in blocks.

        Ids in the ``row`` and ``col`` columns may be any numbers or strings;
        they are mapped to ``0..n−1`` (sorted) and the maps kept as
        :attr:`row_ids` / :attr:`col_ids` (also in the store), so that
        predictions can be asked for by original id.

        Parameters
        ----------
        path : str
            The CSV file (first line: column names).
        row, col, value : str
            Column names of the row id, column id and value.
        sep : str, default ","
        out : str, optional (keyword-only, as the parameters below)
            Zarr store to write; a temporary directory when omitted.
        overwrite : bool, default False
        tiles, duplicates
            As in :meth:`from_coo`.

        Returns
        -------
        Observations
            Backed by ``out``, or by a temporary store it owns (see :meth:`close`).

        Notes
        -----
        Memory is bounded by one block of lines (about 1M) plus the distinct
        ids, whatever the file size: the file is read twice (ids, then data)
        and the data goes through the out-of-core import.

        Raises
        ------
        InputDataError
            An empty file, a missing column (the header's columns are listed),
            a non-numeric or non-finite value, or a malformed line; the message
            gives the line number. Nothing is written.
        """
        from .tabular import read_table

        return read_table(path, row=row, col=col, value=value, sep=sep, **options)

    @classmethod
    def from_parquet(cls, path, row: str, col: str, value: str, **kwargs) -> Observations:
        """As :meth:`from_csv`, for a Parquet file (needs pyarrow)."""
        if not str(path).endswith((".parquet", ".pq")):
            raise InputDataError(f"from_parquet expects a .parquet file; got {path!r}.")
        return cls.from_csv(path, row, col, value, **kwargs)

    # ------------------------------------------------------------------ zarr
    def to_zarr(self, path: str | os.PathLike, overwrite: bool = False) -> str:
        """Write to a Zarr v3 store at ``path`` (atomic publish).

        Refuses an existing ``path`` unless ``overwrite=True``. Returns the path.
        """
        import zarr

        path = os.fspath(path)
        with layout.atomic_dir(path, overwrite=overwrite) as tmp:
            g = zarr.open_group(tmp, mode="w")
            nnz = self.nnz
            chunk = max(1, min(CHUNK, nnz))
            arrs = layout.create_entry_arrays(g, nnz, chunk=chunk)
            for start in range(0, nnz, chunk):
                stop = min(nnz, start + chunk)
                for name, x in zip(("rows", "cols", "values"), self._entries(start, stop)):
                    arrs[name][start:stop] = x
            for name in ("tile_ptr", "row_counts", "col_counts", "row_ids", "col_ids"):
                if getattr(self, name) is not None:
                    layout.write_small_array(g, name, getattr(self, name))
            g.attrs.update(self._store_attrs())
        return path

    def _store_attrs(self) -> dict:
        """``{"dscaledgd": attrs}`` of a new store: every writer calls this once per store.

        The core attrs come from :func:`~dscaledgd.storage.layout.core_attrs`:
        a fresh ``store_id`` and the ``digest`` checked at open. User attrs
        never override them.
        """
        core = layout.core_attrs(
            shape=self.shape,
            nnz=self.nnz,
            row_bounds=self.row_bounds,
            col_bounds=self.col_bounds,
            value_norm2=self.value_norm2,
            tile_ptr=self.tile_ptr,
        )
        extra = {k: v for k, v in self.attrs.items() if k not in integrity.CORE_META}
        return {
            "dscaledgd": {
                "library_version": __version__,
                "cache_band": layout.band_width(self.nnz, self.shape),
                **extra,
                **core,
            }
        }

    @classmethod
    def open_zarr(cls, path: str | os.PathLike) -> Observations:
        """Open a store written by :meth:`to_zarr` or ``dscaledgd import``.

        The store's claims are validated before anything is returned (see
        :mod:`dscaledgd.storage.integrity`): every array present with all its
        chunks; the attributes well-typed, tile bounds strictly increasing from
        0 to ``n``, ``tile_ptr`` from 0 to ``nnz``, the per-stripe sums of
        ``row_counts``/``col_counts`` equal to the tiles' counts; and the
        metadata digest written at creation (stores written before it existed
        get the structural checks only). The entries themselves are checked as
        they are read.

        Raises
        ------
        FileNotFoundError
            No store at ``path``.
        InputDataError
            Not an Observations store, truncated, inconsistent or edited; the
            message names the attribute or array, what was seen and the fix.
        """
        return cls(**integrity.open_store(path))

    def retile(self, tiles=None, *, square: bool = False, bounds=None) -> Observations:
        """The same entries on another tile grid, in memory.

        ``square=True`` (square matrices only) gives rows and columns the same
        bounds, balanced on ``row_counts + col_counts``, as a symmetric fit
        needs. ``bounds=(row_bounds, col_bounds)`` imposes a grid (e.g. another
        Observations'). Loads all entries.
        """
        r, c, v = self.to_coo()
        if bounds is not None:
            rb, cb = (np.asarray(x, dtype=np.int64) for x in bounds)
            if rb[-1] != self.shape[0] or cb[-1] != self.shape[1]:
                raise InputDataError(
                    f"retile: the bounds cover {(int(rb[-1]), int(cb[-1]))} but the "
                    f"observations have shape {self.shape}."
                )
            out = build_in_memory(
                r, c, v, self.shape, (len(rb) - 1, len(cb) - 1), "error", bounds=(rb, cb)
            )
        elif square:
            if self.shape[0] != self.shape[1]:
                raise InvalidParameterError(
                    f"retile(square=True) needs a square matrix; the shape is {self.shape}."
                )
            a = check_tiles(tiles, self.shape, self.nnz)[0] if tiles else self.tiles[0]
            b = layout.balanced_bounds(self.row_counts + self.col_counts, a)
            out = build_in_memory(r, c, v, self.shape, (a, a), "error", bounds=(b, b))
        else:
            out = build_in_memory(r, c, v, self.shape, tiles, "error")
        out.attrs, out.row_ids, out.col_ids = dict(self.attrs), self.row_ids, self.col_ids
        return out

    # ------------------------------------------------------------------ split
    def split(self, test_fraction: float = 0.1, random_state=None):
        """Random train/test split of the observed entries.

        Exactly ``round(test_fraction · nnz)`` entries go to the test set,
        chosen uniformly at random. Both parts keep this tile grid, so they
        line up with the same factor blocks.

        Returns
        -------
        train, test : Observations
            In memory.
        """
        check_param("split", "test_fraction", test_fraction, [Interval("real", 0, 1, "neither")])
        check_param("split", "random_state", random_state, RANDOM_STATE)
        rng = resolve_rng(random_state)
        n_test = int(round(test_fraction * self.nnz))
        if n_test == 0 or n_test == self.nnz:
            raise InvalidParameterError(
                f"The 'test_fraction' parameter of split gives {n_test} test entries out of "
                f"{self.nnz}; both parts must be non-empty. Use a fraction between "
                f"{1 / self.nnz:.3g} and {1 - 1 / self.nnz:.3g}."
            )
        is_test = np.zeros(self.nnz, dtype=bool)
        is_test[rng.choice(self.nnz, size=n_test, replace=False)] = True
        rows, cols, vals = self._entries(0, self.nnz)
        return tuple(self._subset(rows, cols, vals, sel) for sel in (~is_test, is_test))

    def _subset(self, rows, cols, vals, sel) -> Observations:
        tile_id = np.repeat(np.arange(self.n_tiles), np.diff(self.tile_ptr))[sel]
        ptr = np.concatenate([[0], np.cumsum(np.bincount(tile_id, minlength=self.n_tiles))])
        r, c, v = rows[sel], cols[sel], vals[sel]
        a, b = self.tiles
        gr = r.astype(np.int64) + self.row_bounds[tile_id // b]
        gc = c.astype(np.int64) + self.col_bounds[tile_id % b]
        return Observations(
            shape=self.shape,
            row_bounds=self.row_bounds,
            col_bounds=self.col_bounds,
            tile_ptr=ptr,
            rows=r,
            cols=c,
            values=v,
            row_counts=np.bincount(gr, minlength=self.shape[0]),
            col_counts=np.bincount(gc, minlength=self.shape[1]),
            value_norm2=layout.sum_squares(v),
            attrs=self.attrs,
            row_ids=self.row_ids,
            col_ids=self.col_ids,
        )
