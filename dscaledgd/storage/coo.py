"""In-memory COO triplets → a tiled :class:`~dscaledgd.storage.observations.Observations`.

Validation of the triplets (one message format: what is wrong, where, and the
fix), of the shape before anything of its size is allocated (:func:`check_size`)
and of dense input (:func:`as_real_matrix`), the tile grid, and the blocked
sort with the duplicate policy.
"""

from __future__ import annotations

import numbers
import os
from typing import TYPE_CHECKING

import numpy as np

from ..exceptions import InputDataError, InvalidParameterError
from . import layout

if TYPE_CHECKING:  # pragma: no cover
    from .observations import Observations

__all__ = [
    "as_real_matrix",
    "build_in_memory",
    "check_mask_dtype",
    "check_shape",
    "check_size",
    "check_tiles",
    "MAX_DIM",
]

#: Largest ``n1`` or ``n2``: every index and the exclusive end ``n`` of a tile
#: bound fit int32, the type of the tile-local indices.
MAX_DIM = 2**31 - 1
#: The per-row and per-column count arrays (``8 · (n1 + n2)`` bytes, held by
#: the client and built at import) may take at most this fraction of memory.
COUNTS_MEMORY_FRACTION = 0.25


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 16 << 30


def check_size(shape, func: str = "from_coo", inferred_from=None) -> tuple[int, int]:
    """Refuse a shape that cannot be held, before anything of its size is allocated.

    Rules: ``n1, n2 <= MAX_DIM`` (``2**31 - 1``: indices are int32 inside a
    tile), and the count arrays, ``8 · (n1 + n2)`` bytes, take at most
    ``COUNTS_MEMORY_FRACTION`` (a quarter) of this machine's memory.
    ``inferred_from`` is ``(rows, cols)`` (the index arrays, or just their
    maxima as ints) when the shape was inferred from the indices: the message
    then names the offending index. Returns ``(n1, n2)``.
    """
    n1, n2 = int(shape[0]), int(shape[1])
    fix = (
        "Check the indices (one far beyond the others is usually an error), or renumber "
        "rows and columns to 0..n-1 (np.unique(..., return_inverse=True))."
    )
    for axis, n, name in ((0, n1, "row"), (1, n2, "column")):
        if n > MAX_DIM:
            if inferred_from is not None:
                idx = inferred_from[axis]
                if np.ndim(idx) == 0:  # only the largest index is known (out-of-core import)
                    seen = f"The largest observation {name} index, {int(idx)},"
                else:
                    k = int(np.argmax(idx))
                    seen = f"Observation {name} index {int(idx[k])} (entry {k})"
                raise InputDataError(
                    f"{seen} is too large: "
                    f"indices must be below {MAX_DIM} (2**31 - 1) so that they fit int32 "
                    f"tile-local indexing. {fix}"
                )
            raise InvalidParameterError(
                f"The 'shape' parameter of {func} is ({n1}, {n2}): each dimension must be at "
                f"most {MAX_DIM} (2**31 - 1) so that indices fit int32 tile-local indexing. "
                f"{fix}"
            )
    need, mem = 8 * (n1 + n2), _physical_memory()
    if need > COUNTS_MEMORY_FRACTION * mem:
        what = "inferred from the largest indices" if inferred_from is not None else "given"
        raise InputDataError(
            f"The shape ({n1}, {n2}) ({what}) needs {need / 2**30:.1f} GiB for the per-row and "
            f"per-column observation counts (8 bytes per row and column), more than a quarter "
            f"of this machine's {mem / 2**30:.1f} GiB. {fix}"
        )
    return n1, n2


def _as_index(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise InputDataError(
            f"'{name}' must be 1-D; got shape {x.shape}. Flatten it with .ravel()."
        )
    if x.size and not np.issubdtype(x.dtype, np.integer):
        raise InputDataError(
            f"'{name}' must hold integers; got dtype {x.dtype}. Cast with .astype(np.int64) "
            "after checking the values are whole numbers."
        )
    return x.astype(np.int64, copy=False)


def check_shape(shape, rows, cols) -> tuple[int, int]:
    """Validate or infer ``shape`` from the index arrays' extent, then :func:`check_size`."""
    rmax = int(rows.max()) if rows.size else -1
    cmax = int(cols.max()) if cols.size else -1
    if shape is None:
        return check_size((rmax + 1, cmax + 1), inferred_from=(rows, cols))
    if (
        not isinstance(shape, tuple | list)
        or len(shape) != 2
        or not all(isinstance(s, numbers.Integral) and s >= 1 for s in shape)
    ):
        raise InvalidParameterError(
            f"The 'shape' parameter of from_coo must be a pair of positive ints (n1, n2). "
            f"Got {shape!r}."
        )
    n1, n2 = int(shape[0]), int(shape[1])
    if rmax >= n1:
        k = int(np.argmax(rows >= n1))
        raise InputDataError(
            f"Observation row index {int(rows[k])} (entry {k}) is out of range for shape "
            f"({n1}, {n2}). Pass a larger shape, or drop the entry."
        )
    if cmax >= n2:
        k = int(np.argmax(cols >= n2))
        raise InputDataError(
            f"Observation column index {int(cols[k])} (entry {k}) is out of range for shape "
            f"({n1}, {n2}). Pass a larger shape, or drop the entry."
        )
    return check_size((n1, n2))


def check_tiles(tiles, shape, nnz, memory_limit: int | None = None) -> tuple[int, int]:
    """The tile grid: ``tiles`` checked, or the default (``layout.default_tiles``)."""
    if tiles is None:
        return layout.default_tiles(shape, nnz, memory_limit=memory_limit)
    n1, n2 = shape
    ok = (
        isinstance(tiles, tuple | list)
        and len(tiles) == 2
        and all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in tiles)
        and 1 <= tiles[0] <= n1
        and 1 <= tiles[1] <= n2
    )
    if not ok:
        raise InvalidParameterError(
            f"The 'tiles' parameter must be a pair of ints (a, b) with 1 <= a <= {n1} and "
            f"1 <= b <= {n2}. Got {tiles!r}."
        )
    return int(tiles[0]), int(tiles[1])


def build_in_memory(rows, cols, values, shape, tiles, duplicates, bounds=None) -> Observations:
    rows = _as_index(rows, "rows")
    cols = _as_index(cols, "cols")
    vals = np.asarray(values)
    if vals.ndim != 1:
        raise InputDataError(f"'values' must be 1-D; got shape {vals.shape}.")
    if not (len(rows) == len(cols) == len(vals)):
        raise InputDataError(
            f"rows, cols and values must have the same length; got {len(rows)}, {len(cols)} "
            f"and {len(vals)}."
        )
    if len(vals) == 0:
        raise InputDataError(
            "The observations are empty (nnz = 0). Completion needs at least one observed entry."
        )
    if not np.issubdtype(vals.dtype, np.number) or np.issubdtype(vals.dtype, np.complexfloating):
        raise InputDataError(f"'values' must be real numbers; got dtype {vals.dtype}.")
    vals = vals.astype(np.float64, copy=False)
    finite = np.isfinite(vals)
    if not finite.all():
        k = int(np.argmin(finite))
        raise InputDataError(
            f"Observation values must be finite; entry {k} at ({int(rows[k])}, {int(cols[k])}) "
            f"is {float(vals[k])!r}. Drop or impute non-finite entries before building "
            "Observations."
        )
    for name, idx in (("row", rows), ("column", cols)):
        if idx.min() < 0:
            k = int(np.argmin(idx))
            raise InputDataError(
                f"Observation {name} index {int(idx[k])} (entry {k}) is negative; indices must "
                "be >= 0."
            )
    shape = check_shape(shape, rows, cols)
    tiles = check_tiles(tiles, shape, len(vals))
    if bounds is not None:
        row_bounds, col_bounds = bounds
    else:
        row_bounds = layout.balanced_bounds(np.bincount(rows, minlength=shape[0]), tiles[0])
        col_bounds = layout.balanced_bounds(np.bincount(cols, minlength=shape[1]), tiles[1])
    tile, lr, lc = layout.tile_of(rows, cols, row_bounds, col_bounds)
    pos = np.arange(len(vals), dtype=np.int64)
    band = layout.band_width(len(vals), shape)
    tile, lr, lc, vals, dup = layout.sort_tile_entries(tile, lr, lc, vals, pos, duplicates, band)
    if dup is not None:
        b = len(col_bounds) - 1
        raise InputDataError(
            layout.duplicate_message(dup, int(row_bounds[dup[3] // b]), int(col_bounds[dup[3] % b]))
        )
    a, b = len(row_bounds) - 1, len(col_bounds) - 1
    ptr = np.concatenate([[0], np.cumsum(np.bincount(tile, minlength=a * b))])
    gr = lr.astype(np.int64) + row_bounds[tile // b]
    gc = lc.astype(np.int64) + col_bounds[tile % b]
    from .observations import Observations

    return Observations(
        shape=shape,
        row_bounds=row_bounds,
        col_bounds=col_bounds,
        tile_ptr=ptr,
        rows=lr,
        cols=lc,
        values=vals,
        row_counts=np.bincount(gr, minlength=shape[0]),
        col_counts=np.bincount(gc, minlength=shape[1]),
        value_norm2=layout.sum_squares(vals),
    )


def as_real_matrix(
    M,
    func: str = "from_dense",
    name: str = "M",
    *,
    kind: str = "2-D array",
    missing=True,
    table=True,
) -> np.ndarray:
    """``M`` as a real array; strings, ``None`` and other non-numbers are refused by name
    (``name``, the parameter of ``func`` that holds it). ``kind`` is what it should be,
    ``missing`` whether NaN marks missing entries there, ``table`` whether to point at
    ``Observations.from_csv``."""
    try:
        arr = np.asarray(M)
    except ValueError as exc:  # ragged nested lists
        raise InputDataError(
            f"The {name!r} parameter of {func} is not a rectangular array ({exc}). Pass a "
            f"{kind} of numbers."
        ) from None
    if arr.dtype.kind in "biuf":
        return arr
    fix = (
        "Pass real numbers, with NaN (not None or '') marking missing entries"
        if missing
        else "Pass real numbers only (no None, '' or NaN)"
    )
    if arr.dtype.kind == "O":  # per element: numpy would turn None into NaN silently
        flat = arr.ravel()
        k = next((k for k, x in enumerate(flat) if not _is_real(x)), None)
        if k is None:
            return arr.astype(np.float64)
        where = np.unravel_index(k, arr.shape) if arr.ndim else ()
        raise InputDataError(
            f"The {name!r} parameter of {func} has dtype object and "
            f"{name}[{', '.join(map(str, where))}] = {flat[k]!r} is not a real number. {fix}"
            f"{_frame_hint(M)}."
        )
    how = ", or read a table with Observations.from_csv" if table else ""
    raise InputDataError(
        f"The {name!r} parameter of {func} must hold real numbers; got dtype {arr.dtype} "
        f"({'strings' if arr.dtype.kind in 'US' else 'not real numbers'}). {fix}; parse "
        f"text first (e.g. {name}.astype(float)){how}."
    )


def _frame_hint(M) -> str:
    """For a pandas DataFrame with non-numeric columns: the hint to drop them."""
    dtypes = getattr(M, "dtypes", None)
    if dtypes is None or not hasattr(dtypes, "items"):
        return ""
    bad = [str(c) for c, t in dtypes.items() if getattr(t, "kind", "O") not in "biuf"]
    if not bad:
        return ""
    return f" (non-numeric DataFrame columns: {', '.join(map(repr, bad[:5]))}; drop them)"


def check_mask_dtype(mask, func: str) -> None:
    """Refuse a mask that is not boolean: ``1``/``0``, weights or counts are not guessed at."""
    dtype = np.dtype(mask.dtype)
    if dtype.kind != "b":
        raise InputDataError(
            f"The 'mask' parameter of {func} must be boolean (True = observed); got dtype "
            f"{dtype}. Convert it with mask.astype(bool) after checking it holds only 0 and 1 "
            "(or pass mask != 0)."
        )


def _is_real(x) -> bool:
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return not isinstance(x, complex | str | bytes)
