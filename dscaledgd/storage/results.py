"""The Zarr encoding of a result store, written and validated like an Observations store.

Layout (format version 2)::

    RES.zarr/
      zarr.json          attrs["dscaledgd"] = {"type": "result", "status": ..., ...}
      L, R               float64 (n, rank), chunks of up to 2**18 rows (R absent when symmetric)
      history/<key>      float64 (n_iter + 1,), one array per history entry
      row_bias, col_bias float64 (n1,), (n2,)  (only with centring)
      row_ids, col_ids   (n1,), (n2,)          (only for an imported table)

Every array is written with :func:`~dscaledgd.storage.layout.create_checked_array`
or :func:`~dscaledgd.storage.layout.write_small_array` (a CRC-32C per chunk,
every chunk written) under a temporary name that is renamed into place when
complete (:func:`~dscaledgd.storage.layout.atomic_dir`). At open, the attrs
are checked for type and consistency and every chunk for presence and size
(:func:`~dscaledgd.storage.chunks.check_chunks`); the factors stay lazy and
each chunk's checksum is verified as it is read
(:class:`~dscaledgd.storage.chunks.CheckedArray`). Format 1 (no checksums,
history chunks equal to the fill value not written) still opens.

This module knows nothing of :class:`~dscaledgd.SolveResult`: the caller hands
in plain arrays and values, and gets back the keyword arguments of one.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import numpy as np

from .._version import __version__
from ..exceptions import InputDataError
from . import chunks, layout

__all__ = ["RESULT_FORMAT", "corrupt", "read_result", "write_result"]

#: format version of result stores: 1 (no checksums), 2 (CRC-32C on every chunk)
RESULT_FORMAT = 2

RECREATE = "Re-create it (SolveResult.to_zarr, or rerun the solve with `--overwrite`)."

#: the optional 1-D arrays of a result store, and the factor whose rows they follow
EXTRA_ARRAYS = {"row_bias": 0, "col_bias": -1, "row_ids": 0, "col_ids": -1}

#: attributes every result store has (``dscaledgd`` in the group's attrs)
_REQUIRED = {"status": str, "n_iter": int, "converged": bool, "message": str, "params": dict}


def corrupt(path, detail: str) -> InputDataError:
    return chunks.store_error("result", path, detail, RECREATE, state="is corrupt or truncated")


# -------------------------------------------------------------------- write
def write_result(
    path: str, *, factors: dict, history: dict, arrays: dict, meta: dict, overwrite: bool = False
) -> str:
    """Write a result store at ``path`` (atomic publish); returns ``path``.

    ``factors`` maps ``"L"`` (and ``"R"``) to 2-D Dask arrays, ``history``
    names to 1-D arrays, ``arrays`` the names of :data:`EXTRA_ARRAYS` to 1-D
    arrays or ``None`` (not written). ``meta`` holds ``status``, ``n_iter``,
    ``converged``, ``message``, ``params``, ``info`` and ``mean``.
    """
    import dask.array as da
    import zarr

    with layout.atomic_dir(path, overwrite=overwrite) as tmp:
        g = zarr.open_group(tmp, mode="w")
        for name, F in factors.items():
            arr = layout.create_checked_array(
                g,
                name,
                shape=F.shape,
                chunks=(max(1, min(F.shape[0], 1 << 18)), F.shape[1]),
                dtype="float64",
            )
            da.store(F.rechunk({0: arr.chunks[0]}), arr, lock=False)
        h = g.create_group("history")
        for k, v in history.items():
            layout.write_small_array(h, k, np.asarray(v, dtype=np.float64))
        for name in EXTRA_ARRAYS:
            if arrays.get(name) is not None:
                layout.write_small_array(g, name, arrays[name])
        g.attrs["dscaledgd"] = {
            "type": "result",
            "format_version": RESULT_FORMAT,
            "library_version": __version__,
            "status": meta["status"],
            "n_iter": meta["n_iter"],
            "converged": meta["converged"],
            "message": meta["message"],
            "params": jsonable(meta["params"]),
            "info": jsonable(meta["info"]),
            "factors": list(factors),
            "history": list(history),
            "mean": float(meta["mean"]),
        }
    return path


def jsonable(obj: Any) -> Any:
    """Recursively convert NumPy scalars/arrays for JSON attrs (checked by json.dumps)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return repr(obj)


# --------------------------------------------------------------------- read
def _meta(path: str, g, statuses) -> dict:
    """The validated ``dscaledgd`` attrs of a result store."""
    meta = dict(g.attrs).get("dscaledgd")
    if not isinstance(meta, dict) or meta.get("type") != "result":
        raise InputDataError(
            f"{path!r} is not a dscaledgd result store (attrs lack dscaledgd.type == "
            "'result'). Write one with SolveResult.to_zarr or `dscaledgd complete`."
        )
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > RESULT_FORMAT:
        raise InputDataError(
            f"The result store {path!r} has format version {version!r}, newer than this "
            f"library's {RESULT_FORMAT}. Upgrade dscaledgd."
        )
    for key, kind in _REQUIRED.items():
        v = meta.get(key)
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            seen = "is missing" if key not in meta else f"is {v!r}, not a {kind.__name__}"
            raise corrupt(path, f"its attrs' {key!r} {seen}")
    if meta["status"] not in statuses or meta["n_iter"] < 0:
        raise corrupt(path, f"its attrs say status={meta['status']!r}, n_iter={meta['n_iter']}")
    names = meta.get("factors")
    present = set(g.array_keys())
    if not isinstance(names, list) or not 1 <= len(names) <= 2:
        raise corrupt(path, f"its attrs' 'factors' is {names!r}")
    for name in names:
        if name not in present:
            raise corrupt(path, f"its attrs' 'factors' name the array {name!r} but it is missing")
    if names not in (["L"], ["L", "R"]):
        raise corrupt(path, f"its attrs' 'factors' is {names!r}, not ['L', 'R'] or ['L']")
    return meta


def _read_small(path: str, arr, error, strict: bool) -> np.ndarray:
    chunks.check_chunks(arr, arr.path, error, path=path, strict=strict)
    return chunks.read_all(arr, name=arr.path, error=error)


def read_result(path: str, statuses) -> dict:
    """Open and validate the result store at ``path``: the keyword arguments of a result.

    ``statuses`` are the valid values of the ``status`` attribute. Returns
    ``factors`` (lazy Dask arrays whose chunks are verified as they are read),
    ``status``, ``n_iter``, ``converged``, ``message``, ``history``,
    ``params``, ``info``, ``offsets`` and ``ids``. Raises
    :class:`~dscaledgd.exceptions.InputDataError` naming the store, the array
    and the fix on anything incomplete or inconsistent.
    """
    import dask.array as da
    import zarr

    if not os.path.exists(path):
        raise FileNotFoundError(f"No result store at {path!r}.")
    try:
        g = zarr.open_group(path, mode="r")
        dict(g.attrs)
    except Exception as exc:
        raise InputDataError(
            f"{path!r} is not a dscaledgd result store (not a readable Zarr v3 group: {exc}). "
            "Write one with SolveResult.to_zarr or `dscaledgd complete`."
        ) from None
    meta = _meta(path, g, statuses)
    error = functools.partial(corrupt, path)
    strict = meta.get("format_version", 1) >= 2
    factors = {name: g[name] for name in meta["factors"]}
    for name, arr in factors.items():
        if arr.ndim != 2 or arr.dtype.kind != "f":
            raise error(f"factor {name!r} has shape {arr.shape} and dtype {arr.dtype}")
        chunks.check_chunks(arr, name, error, path=path)  # factors were always written in full
    ranks = {arr.shape[1] for arr in factors.values()}
    if len(ranks) != 1:
        raise error(f"the factors have different ranks {sorted(ranks)}")
    if "history" not in set(g.group_keys()):
        raise error("the 'history' group is missing")
    h = g["history"]
    stored = sorted(h.array_keys())
    missing = [k for k in meta.get("history", ("loss", "residual")) if k not in stored]
    if missing:
        raise error(f"history arrays {missing} are missing")
    # format 1 wrote history chunks equal to the fill value (0) only in the first chunk
    history = {k: _read_small(path, h[k], error, strict or h[k].nchunks == 1) for k in stored}
    lengths = sorted({len(v) for v in history.values()})
    if lengths != [meta["n_iter"] + 1]:
        raise error(f"the history has lengths {lengths} for n_iter={meta['n_iter']}")
    info = meta.get("info", {}) if isinstance(meta.get("info"), dict) else {}
    best = info.get("best_iteration", meta["n_iter"])
    if not isinstance(best, int) or not 0 <= best <= meta["n_iter"]:
        raise error(f"its attrs' info.best_iteration is {best!r}")
    present = set(g.array_keys())
    extra = {
        name: _read_small(path, g[name], error, True) if name in present else None
        for name in EXTRA_ARRAYS
    }
    for name, which in EXTRA_ARRAYS.items():
        n = factors[meta["factors"][which]].shape[0]
        if extra[name] is not None and extra[name].shape != (n,):
            raise error(f"array {name!r} has shape {extra[name].shape}, not ({n},)")
    lazy = tuple(
        da.from_array(
            chunks.CheckedArray(arr, path=path, name=name, error=error),
            chunks=arr.chunks,
            meta=np.empty((0, 0)),
        )
        for name, arr in factors.items()
    )
    return {
        "factors": lazy,
        "status": meta["status"],
        "n_iter": int(meta["n_iter"]),
        "converged": bool(meta["converged"]),
        "message": meta["message"],
        "history": history,
        "params": meta["params"],
        "info": info,
        "offsets": {
            "mean": float(meta.get("mean", 0.0)),
            "row_bias": extra["row_bias"],
            "col_bias": extra["col_bias"],
        },
        "ids": {"row": extra["row_ids"], "col": extra["col_ids"]},
    }
