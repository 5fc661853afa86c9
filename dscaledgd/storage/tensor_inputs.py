"""The inputs of :class:`~dscaledgd.storage.tensors.TensorObservations`, read chunk by chunk.

NumPy, Dask, Zarr and xarray arrays and ``.npy`` / ``.npz`` / Zarr paths
(:class:`_Source`, for ``from_array``), and global coordinates (``from_coo``),
checked: order, dtype, mask shape, finite observed values (the first bad one
is named). Split from :mod:`.tensors` (issue 17) to keep each module small.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from ..exceptions import DataWarning, InputDataError, InvalidParameterError
from .chunk_formats import coo_to_dense
from .coo import check_mask_dtype
from .tensor_store import ChunkRef, Grid, load_chunk, no_observed_entry


def _module_is(x, name: str) -> bool:
    return type(x).__module__.split(".")[0] == name


# ------------------------------------------------------------------ inputs
def _load(x, role: str):
    """``x`` as an array-like: ``(array, mask found beside it in a .npz, dims)``."""
    if _module_is(x, "xarray") and hasattr(x, "dims"):
        return x.data, None, tuple(str(v) for v in x.dims)
    if not isinstance(x, str | os.PathLike):
        return x, None, None
    p = os.fspath(x)
    if not os.path.exists(p):
        raise FileNotFoundError(f"The {role} path {p!r} does not exist.")
    try:
        if p.endswith(".npy"):
            return np.load(p, mmap_mode="r", allow_pickle=False), None, None
        if p.endswith(".npz"):
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            keys = ("mask",) if role == "mask" else ("X", "arr_0")
            key = next((k for k in keys if k in arrays), None)
            if len(arrays) == 1:
                return next(iter(arrays.values())), None, None
            if key is None:
                raise InputDataError(
                    f"The {role} file {p!r} holds the arrays {sorted(arrays)}; expected a "
                    f"single array or one named {' or '.join(map(repr, keys))}."
                )
            return arrays[key], (arrays.get("mask") if role == "X" else None), None
    except ValueError as exc:
        raise InputDataError(f"The {role} file {p!r} cannot be read as NumPy data: {exc}") from None
    import zarr

    try:
        node = zarr.open(p, mode="r")
    except Exception as exc:  # noqa: BLE001 - reported with the path
        raise InputDataError(
            f"The {role} path {p!r} is not a .npy file, a .npz file or a Zarr array ({exc})."
        ) from None
    if isinstance(node, zarr.Group):
        raise InputDataError(
            f"The {role} path {p!r} is a Zarr group, not an array. Open a TensorObservations "
            "store with TensorObservations.open_zarr; else pass the array in it (group[name])."
        )
    return node, None, None


def _asarray(x):
    """Dask, Zarr and NumPy (memmap) arrays as they are, read per chunk; else np.asarray."""
    if x is None or isinstance(x, np.ndarray) or _module_is(x, "zarr") or _module_is(x, "dask"):
        return x
    try:
        return np.asarray(x)
    except ValueError as exc:  # ragged nested lists
        raise InputDataError(f"The input is not a rectangular array ({exc}).") from None


class _Source:
    """The input of :meth:`TensorObservations.from_array`, checked, read chunk by chunk."""

    def __init__(self, X, mask):
        X, npz_mask, self.dims = _load(X, "X")
        if mask is not None and npz_mask is not None:
            raise InvalidParameterError(
                "The 'mask' parameter of from_array must be None when the .npz file holds a "
                "'mask' array. Got a second mask."
            )
        self.X = _asarray(X)
        self.mask = _asarray(npz_mask if mask is None else _load(mask, "mask")[0])
        self.shape, self.dtype = tuple(int(n) for n in self.X.shape), np.dtype(self.X.dtype)
        if self.dtype.kind not in "iuf":
            raise InputDataError(
                f"X must hold real numbers (NaN marking missing entries); got dtype "
                f"{self.dtype}{' (is it the mask?)' if self.dtype.kind == 'b' else ''}. "
                "Convert it first, e.g. X.astype(np.float64)."
            )
        if len(self.shape) < 2:
            raise InputDataError(
                f"TensorObservations needs a tensor of order >= 2 (3 or more for Tucker "
                f"completion); X has shape {self.shape}."
            )
        m = self.mask
        if m is not None and tuple(m.shape) != self.shape:
            raise InputDataError(
                f"The mask has shape {tuple(m.shape)} but X has shape {self.shape}; they must "
                "match."
            )
        if m is not None:
            check_mask_dtype(m, "from_array")
        if self.dtype != np.float64:
            warnings.warn(
                f"X has dtype {self.dtype}; it is converted to float64 and computed in float64.",
                DataWarning,
                stacklevel=3,
            )
        self.lazy = _module_is(self.X, "dask") or _module_is(m, "dask")

    @property
    def chunk_hint(self):
        """The input's chunks: Dask's (the largest per mode when irregular), or Zarr's."""
        if _module_is(self.X, "dask"):
            return tuple(max(c) for c in self.X.chunks)
        return tuple(int(c) for c in self.X.chunks) if _module_is(self.X, "zarr") else None

    def _read(self, slices: list) -> list:
        xs = [self.X[sl] for sl in slices]
        ms = [None if self.mask is None else self.mask[sl] for sl in slices]
        if self.lazy:
            import dask

            xs, ms = dask.compute(xs, ms)
        return [(np.asarray(x), None if m is None else np.asarray(m)) for x, m in zip(xs, ms)]

    def count_observed(self, grid: Grid) -> int:
        """Observed entries: one streaming Dask reduction, or a pass over the chunks."""
        if self.lazy:
            import dask.array as da

            obs = ~da.isnan(da.asarray(self.X)) if self.mask is None else da.asarray(self.mask)
            return int(da.count_nonzero(obs).compute())
        reads = (self._read([grid.slices(c)])[0] for c in range(grid.n_chunks))
        return sum(int(np.count_nonzero(~np.isnan(x) if m is None else m)) for x, m in reads)

    def chunks(self, grid: Grid):
        """The dense chunks (NaN = missing), checked, in C order. A Dask input is computed
        one batch of chunks (one per CPU thread) at a time, never whole."""
        step = (os.cpu_count() or 1) if self.lazy else 1
        for start in range(0, grid.n_chunks, step):
            cs = range(start, min(grid.n_chunks, start + step))
            for c, (x, m) in zip(cs, self._read([grid.slices(c) for c in cs])):
                yield _checked_chunk(x, m, grid.offset(c))


def _checked_chunk(x, m, offset) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if m is None:
        bad = np.isinf(x)
    else:
        bad = m & ~np.isfinite(x)
        x = np.where(m, x, np.nan)
    if bad.any():
        local = np.argwhere(bad)[0]
        where = ", ".join(str(int(i + o)) for i, o in zip(local, offset))
        raise InputDataError(
            f"X[{where}] = {float(x[tuple(local)])!r} is not finite inside the observed set. "
            "Mark it missing (NaN without a mask, or False in the mask) or replace it."
        )
    return x


def _coo_input(indices, values, shape):
    """``indices`` as int64 ``(m, d)`` in range and ``values`` as finite float64 ``(m,)``."""
    d = len(shape)
    idx, vals = np.asarray(indices), np.asarray(values)
    if idx.ndim != 2 or idx.shape[1] != d:
        raise InputDataError(
            f"indices must have shape (m, {d}) for a tensor of shape {shape}; got shape "
            f"{idx.shape}. Stack one column per mode (np.stack([i, j, k], axis=1))."
        )
    if idx.size and idx.dtype.kind not in "iu":
        raise InputDataError(
            f"indices must hold integers; got dtype {idx.dtype}. Cast with .astype(np.int64) "
            "after checking the values are whole numbers."
        )
    if vals.shape != (idx.shape[0],) or (vals.size and vals.dtype.kind not in "iuf"):
        raise InputDataError(
            f"values must hold {idx.shape[0]} real numbers, one per row of indices; got shape "
            f"{vals.shape} and dtype {vals.dtype}."
        )
    if len(vals) == 0:
        raise no_observed_entry()
    idx = idx.astype(np.int64, copy=False)
    bad = (idx < 0) | (idx >= np.asarray(shape))
    if bad.any():
        e, k = (int(i) for i in np.argwhere(bad)[0])
        raise InputDataError(
            f"indices[{e}] = {tuple(int(i) for i in idx[e])} is "
            f"{'negative' if idx[e, k] < 0 else 'out of range'} along mode {k}: indices must "
            f"lie in [0, {shape[k]}) there (shape {shape})."
        )
    if vals.dtype != np.float64:
        warnings.warn(
            f"values have dtype {vals.dtype}; they are converted to float64 and computed in "
            "float64.",
            DataWarning,
            stacklevel=3,
        )
    vals = vals.astype(np.float64, copy=False)
    if not np.isfinite(vals).all():
        e = int(np.flatnonzero(~np.isfinite(vals))[0])
        raise InputDataError(
            f"values[{e}] = {float(vals[e])!r} at index {tuple(int(i) for i in idx[e])} is not "
            "finite. Observed values must be finite: drop or replace it."
        )
    return idx, vals


def _dense_block(src) -> np.ndarray:
    x = load_chunk(src) if isinstance(src, ChunkRef) else src
    return x if isinstance(x, np.ndarray) else coo_to_dense(x)
