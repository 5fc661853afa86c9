"""The scale of the observed values, checked before any solver arithmetic.

float64 squares overflow near ``1e154`` and lose their precision below about
``1e-146`` (they become subnormal, then 0): there the losses and the stopping
tests of every method mean nothing, so such data is refused with a message
that says to rescale it. "Every observed value is 0" is decided exactly, on
the largest ``|value|``, never on a sum of squares that may have underflowed.
"""

from __future__ import annotations

import math

import numpy as np

from ..exceptions import InputDataError

__all__ = ["SMALLEST_MEAN_SQUARE", "check_scale", "check_values", "max_abs"]

#: The smallest mean square of the observed values accepted: squares below
#: ``tiny / eps`` (about 1e-292) keep fewer than 53 bits once the residual is
#: ``eps`` of them, so a fit there stops early at a poor accuracy.
SMALLEST_MEAN_SQUARE = float(np.finfo(np.float64).tiny / np.finfo(np.float64).eps)


def check_scale(func: str, what: str, sumsq: float, p: float = 1.0) -> None:
    """Refuse data whose squares overflow float64 (the loss would be ``inf``)."""
    if not np.isfinite(sumsq / p):
        raise InputDataError(
            f"{func}: the sum of squares of {what} overflows float64 (values near "
            f"{np.sqrt(np.finfo(float).max):.0e} or larger), so the loss cannot be computed. "
            "Rescale the data (divide it by a constant) and scale the result back."
        )


def check_values(func: str, what: str, data, sumsq: float, p: float, nnz: int) -> bool:
    """Refuse values whose squares overflow or underflow float64; ``True`` when every
    observed value is exactly 0 (then the exact fit is 0).

    ``data`` holds the values (read, by :func:`max_abs`, only when their mean
    square is below :data:`SMALLEST_MEAN_SQUARE`), ``sumsq`` is their sum of
    squares (``inf`` when it overflowed), ``p`` the sampling density the loss
    divides by and ``nnz`` their number.
    """
    check_scale(func, what, sumsq, p)
    mean_square = sumsq / max(int(nnz), 1)
    if mean_square >= SMALLEST_MEAN_SQUARE:
        return False
    top = max_abs(data)
    if top == 0.0:
        return True
    raise InputDataError(
        f"{func}: {what} are too small for float64 arithmetic: the largest |value| is "
        f"{top:.3g} and their mean square {mean_square:.3g} is below "
        f"{SMALLEST_MEAN_SQUARE:.0e} (values below about {math.sqrt(SMALLEST_MEAN_SQUARE):.0e}"
        "), where squares underflow or lose their precision, so the loss cannot be computed. "
        f"Rescale the data (multiply it by a constant, e.g. 1 / {top:.1e}) and scale the "
        "result back."
    )


def max_abs(data) -> float:
    """The largest ``|value|`` observed in ``data``: an ``Observations`` or a
    ``TensorObservations`` (read tile by tile / chunk by chunk), or a NumPy or Dask
    array with NaN marking missing entries."""
    if hasattr(data, "read_tile"):
        tops = (np.abs(data.read_tile(t)[2]).max(initial=0.0) for t in range(data.n_tiles))
        return float(max(tops, default=0.0))
    if hasattr(data, "read_chunk"):
        return float(max((_chunk_max(data.read_chunk(c)) for c in range(data.n_chunks)),
                         default=0.0))  # fmt: skip
    if hasattr(data, "dask"):
        import dask.array as da

        x = abs(data.astype(np.float64))
        return float(da.where(da.isnan(x), 0.0, x).max().compute())
    a = np.abs(np.asarray(data, dtype=np.float64))
    return float(np.nan_to_num(a, nan=0.0).max(initial=0.0))


def _chunk_max(chunk) -> float:
    """A tensor chunk in kernel format: dense (NaN = missing) or ``(index, values, shape)``."""
    values = chunk[1] if isinstance(chunk, tuple) else chunk[~np.isnan(chunk)]
    return float(np.abs(values).max(initial=0.0))
