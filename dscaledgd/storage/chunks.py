"""Stored Zarr arrays checked the same way in every kind of store.

Observations stores (:mod:`.integrity`) and result stores (:mod:`.results`)
are written with the same primitives (:func:`~dscaledgd.storage.layout.create_checked_array`,
:func:`~dscaledgd.storage.layout.write_small_array`: a CRC-32C per chunk, every
chunk written) and read back through the ones here:

* :func:`check_chunks`: every chunk present and, for a local store with a
  fixed-size encoding (raw bytes, optionally with a CRC-32C), of exactly that
  size on disk;
* :func:`read` (and :func:`read_all`, :class:`CheckedArray` for lazy Dask
  reads): a Zarr or codec error (checksum mismatch, truncated chunk) becomes an
  :class:`~dscaledgd.exceptions.InputDataError` naming the store, the array
  and the chunk.

Each store kind says how its errors read by passing ``error``, a callable that
turns a detail (``"array 'L' has 0 of 1 chunks"``) into the exception: the
store's kind, its path and the fix (:func:`store_error`).

What every store kind shares besides: :func:`open_cached`, the per-process
cache of a store's open arrays that the workers read through (keyed by the
store's identity, never by its path alone), and :class:`StoreBacked`, the
lifecycle (``close``, ``with``) and ``repr`` of an object backed by a store.
"""

from __future__ import annotations

import functools
import numbers
import os
import uuid
from collections.abc import Callable

import numpy as np

from ..exceptions import InputDataError

__all__ = [
    "CheckedArray",
    "StoreBacked",
    "check_chunks",
    "chunk_path",
    "open_cached",
    "read",
    "read_all",
    "store_error",
]

#: ``error(detail)``: the exception a store kind raises for a damaged array
ErrorFactory = Callable[[str], InputDataError]


def store_error(kind: str, path, detail: str, fix: str, state: str = "is corrupt"):
    """``The {kind} store {path!r} {state}: {detail}. {fix}`` as an InputDataError."""
    return InputDataError(f"The {kind} store {path!r} {state}: {detail}. {fix}")


def chunk_path(path: str, arr, idx: tuple) -> str:
    """The file of chunk ``idx`` of ``arr`` in the local store at ``path``."""
    return os.path.join(path, arr.path, *arr.metadata.encode_chunk_key(idx).split("/"))


def check_chunks(arr, name: str, error: ErrorFactory, *, path=None, strict: bool = True) -> None:
    """Refuse ``arr`` (called ``name`` in messages) when a chunk is missing or has the wrong size.

    With ``strict``, every chunk must exist. With ``path`` (the local store
    holding ``arr``), every chunk file present must have the size its encoding
    fixes, when it fixes one (raw bytes, optionally followed by CRC-32Cs;
    compressed chunks are not checked), and, with ``strict``, every chunk
    file must exist.
    """
    if strict and arr.nchunks_initialized != arr.nchunks:
        raise error(f"array {name!r} has {arr.nchunks_initialized} of {arr.nchunks} chunks")
    if path is None:
        return
    codecs = [type(c).__name__ for c in arr.metadata.codecs]
    if codecs[0] != "BytesCodec" or any(c != "Crc32cCodec" for c in codecs[1:]):
        return  # compressed: the size is not known in advance
    size = int(np.prod(arr.chunks)) * arr.dtype.itemsize + 4 * (len(codecs) - 1)
    for idx in np.ndindex(*arr.cdata_shape):
        f = chunk_path(path, arr, idx)
        if os.path.exists(f) and os.path.getsize(f) != size:
            raise error(
                f"array {name!r} has a chunk of {os.path.getsize(f)} bytes where {size} are "
                f"expected ({os.path.relpath(f, path)})"
            )
        elif strict and not os.path.exists(f):
            raise error(f"array {name!r} lacks the chunk {os.path.relpath(f, path)}")


def read(arr, key, *, name: str, error: ErrorFactory, where: str = ""):
    """``arr[key]``; a Zarr or codec error names the first chunk that fails to decode.

    ``where`` (``"tile 3, "``) is put before the chunk's range in the message.
    Memory and OS errors (a full disk, a vanished mount) pass through as they are.
    """
    try:
        return arr[key]
    except (MemoryError, OSError):
        raise
    except Exception as exc:
        raise _chunk_error(arr, key, exc, name=name, error=error, where=where) from None


def read_all(arr, *, name: str, error: ErrorFactory) -> np.ndarray:
    """The whole (small) array, read as :func:`read` does; fixed-width string arrays
    (id maps) read without Zarr's warning that their v3 spec is not final."""
    from .layout import unstable_dtype_ok

    with unstable_dtype_ok():
        return np.asarray(read(arr, slice(None), name=name, error=error))


def _first_axis(arr, key) -> tuple[int, int]:
    """The range ``[s, e)`` (never empty) of the first axis that ``key`` selects."""
    k = key[0] if isinstance(key, tuple) and key else key
    n = int(arr.shape[0])
    if isinstance(k, slice):
        s, e, _ = k.indices(n)
    elif isinstance(k, numbers.Integral):
        s = int(k) % n if n else 0
        e = s + 1
    else:
        s, e = 0, n
    return s, max(e, s + 1)


def _chunk_error(arr, key, exc, *, name, error, where) -> InputDataError:
    """Find the first chunk along the first axis of ``key`` that fails (error path only)."""
    s, e = _first_axis(arr, key)
    step = int(arr.chunks[0])
    for j in range(s // step, (e - 1) // step + 1):
        try:
            arr[j * step : min(arr.shape[0], (j + 1) * step)]
        except Exception as sub:  # noqa: BLE001 - reported below
            exc = sub
            break
    else:
        j = s // step
    unit = "entries" if arr.ndim == 1 else "rows"
    return error(
        f"chunk {j} of array {name!r} ({where}{unit} {j * step}:"
        f"{min(arr.shape[0], (j + 1) * step)}) cannot be decoded ({type(exc).__name__}: {exc}); "
        "it was truncated, overwritten or garbled on disk"
    )


class CheckedArray:
    """A stored array for ``dask.array.from_array``: every read goes through :func:`read`.

    ``error`` must pickle (a module-level function or a ``functools.partial``
    of one) when the array is computed on a distributed cluster.
    """

    def __init__(self, arr, *, path: str, name: str, error: ErrorFactory):
        self.arr, self.path, self.name, self.error = arr, path, name, error
        self.shape, self.dtype, self.ndim = tuple(arr.shape), arr.dtype, arr.ndim
        self.token = uuid.uuid4().hex  # per open: a store replaced at the same path is new

    def __getitem__(self, key):
        return read(self.arr, key, name=self.name, error=self.error)

    def __dask_tokenize__(self):
        return ("dscaledgd-checked", self.path, self.name, self.token)


# ------------------------------------------------------- open stores, per process
def open_cached(path: str, store_id: str, *, kind: str, names: tuple, identity) -> dict:
    """The arrays ``names`` (those the store holds) of the ``kind`` store ``store_id`` at
    ``path``, opened once per process and cached by identity.

    The cache key adds the inode, mtime and size of the store's ``zarr.json``
    (one ``stat`` per call), so a store replaced at the same path is re-opened,
    and refused when its identity, ``identity(path, attrs["dscaledgd"])``,
    is not ``store_id``. ``identity`` must be a module-level function (it is
    part of the key). Raises :class:`~dscaledgd.exceptions.InputDataError`
    when the store is gone or was replaced.
    """
    try:
        st = os.stat(os.path.join(path, "zarr.json"))
    except OSError as exc:
        raise InputDataError(
            f"The {kind} store {path!r} is gone or unreadable in this process ({exc}). Every "
            "worker must see the store at the same path (a shared file system)."
        ) from None
    signature = (st.st_ino, st.st_mtime_ns, st.st_size)
    return _open(path, store_id, kind, tuple(names), identity, signature)


@functools.lru_cache(maxsize=16)
def _open(path: str, store_id: str, kind: str, names: tuple, identity, signature: tuple) -> dict:
    import zarr

    g = zarr.open_group(path, mode="r")
    found = identity(path, dict(g.attrs).get("dscaledgd") or {})
    if found != store_id:
        raise InputDataError(
            f"The {kind} store {path!r} was replaced while in use: it was opened as store "
            f"{store_id!r} but the store now at that path is {found!r}. Open it again "
            f"({kind}.open_zarr) and re-run."
        )
    present = set(g.array_keys())
    return {name: g[name] for name in names if name in present}


# ------------------------------------------------------------ store-backed objects
class StoreBacked:
    """``close``, ``with`` and ``repr`` of an object held in memory or backed by a store.

    Subclasses set ``path`` (``None`` in memory) and define :meth:`_describe`,
    the fields of their ``repr``; they override :meth:`close` when they own
    something to release.
    """

    path: str | None

    def close(self) -> None:
        """Release what this object owns (nothing here). Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        where = f"store={self.path!r}" if self.path else "in memory"
        return f"{type(self).__name__}({self._describe()}, {where})"
