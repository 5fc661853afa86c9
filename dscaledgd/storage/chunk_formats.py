"""The kernel formats of a tensor chunk, and the packed form a dense chunk travels in.

A chunk reaches a kernel either **dense** (float64, NaN = missing) or as its
**observed entries** (``(index int32 (m, d) local, C-sorted, values float64 (m,),
shape)``). :class:`PackedChunk` is how a dense in-memory chunk travels to a
worker (one bit per entry and the observed values); the worker rebuilds it
with :func:`unpack_dense`, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PackedChunk", "coo_to_dense", "dense_to_coo", "pack_dense", "unpack_dense"]


def dense_to_coo(x: np.ndarray):
    """A dense chunk (NaN = missing) in coo kernel format."""
    where = np.nonzero(~np.isnan(x))
    index = np.ascontiguousarray(np.stack(where, axis=1), dtype=np.int32)
    return index, np.ascontiguousarray(x[where]), tuple(x.shape)


@dataclass(frozen=True, eq=False)
class PackedChunk:
    """A dense chunk (NaN = missing) packed to travel (:func:`pack_dense`): one bit per
    entry (observed or not) and the observed values, both in C order."""

    bits: np.ndarray
    values: np.ndarray
    shape: tuple


def pack_dense(x: np.ndarray) -> PackedChunk:
    """``x`` as a :class:`PackedChunk`: ``1/8 + 8p`` bytes per entry instead of 8.
    :func:`unpack_dense` gives back the same bits."""
    seen = ~np.isnan(x)
    return PackedChunk(np.packbits(seen, axis=None), x[seen], tuple(x.shape))


def unpack_dense(packed: PackedChunk) -> np.ndarray:
    """The dense chunk (float64, NaN = missing) of :func:`pack_dense`'s output."""
    n = math.prod(packed.shape)
    seen = np.unpackbits(packed.bits, count=n).view(bool).reshape(packed.shape)
    out = np.full(packed.shape, np.nan)
    out[seen] = packed.values
    return out


def coo_to_dense(chunk) -> np.ndarray:
    """A coo kernel-format chunk as a dense float64 array, NaN at missing entries."""
    index, values, shape = chunk
    out = np.full(shape, np.nan)
    out[tuple(index.T)] = values
    return out
