"""The Zarr encoding of a result store, written and validated like an Observations store.

Layout (format version 3; a plain low-rank result is still written as 2)::

    RES.zarr/
      zarr.json          attrs["dscaledgd"] = {"type": "result", "model": ..., "status": ..., ...}
      L, R               float64 (n, rank), chunks of up to 2**18 rows (R absent when symmetric)
      S                  float64 (n1, n2), chunks of up to 2048 x 1024 (model "robust"), or
                         (n_1, ..., n_d) in the data's chunks (model "robust_tucker")
      U0 ... U{d-1}      float64 (n_k, r_k), chunks of up to 2**18 rows (models "tucker",
                         "robust_tucker", instead of L and R)
      core               float64 (r_1, ..., r_d), one chunk (the Tucker models only)
      history/<key>      float64 (n_iter + 1,), one array per history entry; the
                         ``eval_*`` entries (ScaledSGD's held-out curve) share
                         their own length
      row_bias, col_bias float64 (n1,), (n2,)  (only with centring)
      row_ids, col_ids   (n1,), (n2,)          (only for an imported table)

The ``model`` attr is ``"lowrank"``, ``"robust"``, ``"tucker"`` or ``"robust_tucker"``
(:data:`MODEL_KINDS`); a store without it (written before format 3) holds a
low-rank model. A Tucker store's attrs also hold ``dims`` (mode names, or
null).

Every array is written with :func:`~dscaledgd.storage.layout.create_checked_array`
or :func:`~dscaledgd.storage.layout.write_small_array` (a CRC-32C per chunk,
every chunk written) under a temporary name that is renamed into place when
complete (:func:`~dscaledgd.storage.layout.atomic_dir`). At open, the attrs
are checked for type and consistency and every chunk for presence and size
(:func:`~dscaledgd.storage.chunks.check_chunks`); the factors stay lazy and
each chunk's checksum is verified as it is read
(:class:`~dscaledgd.storage.chunks.CheckedArray`). Format 1 (no checksums,
history chunks equal to the fill value not written) still opens.

This module knows nothing of :class:`~dscaledgd.SolveResult` or of the model
classes: the caller hands in plain arrays and values, and gets back the
keyword arguments of a result (the model's as a dict of plain parts).
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

__all__ = ["MODEL_KINDS", "RESULT_FORMAT", "corrupt", "read_result", "write_result"]

#: format version of result stores: 1 (no checksums), 2 (CRC-32C on every chunk),
#: 3 (the ``model`` attr: robust and Tucker stores). A low-rank store is written as
#: ``min(RESULT_FORMAT, 2)``, so a library that reads format 2 still reads it.
RESULT_FORMAT = 3

#: what a result store's ``model`` attr may say (:mod:`dscaledgd.models`)
MODEL_KINDS = ("lowrank", "robust", "tucker", "robust_tucker")
#: the kinds with a Tucker core and factors ``U0 … U{d-1}``
TUCKER_KINDS = ("tucker", "robust_tucker")

#: chunk shape (at most) of the sparse component ``S`` of a robust fit: 16 MiB
SPARSE_CHUNKS = (2048, 1024)

RECREATE = "Re-create it (SolveResult.to_zarr, or rerun the solve with `--overwrite`)."

#: the optional 1-D arrays of a result store, and the factor whose rows they follow
EXTRA_ARRAYS = {"row_bias": 0, "col_bias": -1, "row_ids": 0, "col_ids": -1}

#: attributes every result store has (``dscaledgd`` in the group's attrs)
_REQUIRED = {"status": str, "n_iter": int, "converged": bool, "message": str, "params": dict}


def corrupt(path, detail: str) -> InputDataError:
    return chunks.store_error("result", path, detail, RECREATE, state="is corrupt or truncated")


# -------------------------------------------------------------------- write
def write_result(
    path: str,
    *,
    factors: dict,
    history: dict,
    arrays: dict,
    meta: dict,
    kind: str = "lowrank",
    core=None,
    sparse=None,
    dims=None,
    overwrite: bool = False,
) -> str:
    """Write a result store at ``path`` (atomic publish); returns ``path``.

    ``kind`` is one of :data:`MODEL_KINDS`. ``factors`` maps ``"L"`` (and
    ``"R"``), or ``"U0"`` … ``"U{d-1}"`` for a Tucker model, to 2-D Dask
    arrays; ``core`` is the Tucker core (NumPy), ``dims`` its mode names or
    ``None``; ``sparse`` the 2-D Dask array ``S`` of a robust model.
    ``history`` maps names to 1-D arrays, ``arrays`` the names of
    :data:`EXTRA_ARRAYS` to 1-D arrays or ``None`` (not written). ``meta``
    holds ``status``, ``n_iter``, ``converged``, ``message``, ``params``,
    ``info`` and ``mean``.
    """
    import dask.array as da
    import zarr

    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}; got {kind!r}")
    with layout.atomic_dir(path, overwrite=overwrite) as tmp:
        g = zarr.open_group(tmp, mode="w")
        if core is not None:
            core = np.asarray(core, dtype=np.float64)
            layout.create_checked_array(g, "core", data=core, chunks=core.shape)
        if sparse is not None:  # a tensor's S keeps its (data's) chunks
            sizes = SPARSE_CHUNKS if sparse.ndim == 2 else sparse.chunksize
            arr = layout.create_checked_array(
                g,
                "S",
                shape=sparse.shape,
                chunks=tuple(max(1, min(n, c)) for n, c in zip(sparse.shape, sizes)),
                dtype="float64",
            )
            da.store(sparse.rechunk(arr.chunks), arr, lock=False)
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
            "format_version": RESULT_FORMAT if kind != "lowrank" else min(RESULT_FORMAT, 2),
            "model": kind,
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
            **({"dims": dims} if kind in TUCKER_KINDS else {}),
        }
    return path


#: history entries recorded at their own points (ScaledSGD's held-out curve), not per iteration
CURVE = "eval_"


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
    kind = meta.get("model", "lowrank")
    if kind not in MODEL_KINDS:
        raise corrupt(path, f"its attrs' 'model' is {kind!r}, not one of {list(MODEL_KINDS)}")
    names = meta.get("factors")
    present = set(g.array_keys())
    if not isinstance(names, list) or not names or (kind not in TUCKER_KINDS and len(names) > 2):
        raise corrupt(path, f"its attrs' 'factors' is {names!r}")
    for name in names:
        if name not in present:
            raise corrupt(path, f"its attrs' 'factors' name the array {name!r} but it is missing")
    if kind in TUCKER_KINDS:
        want = [f"U{k}" for k in range(len(names))]
        if names != want:
            raise corrupt(path, f"its attrs' 'factors' is {names!r}, not {want!r}")
        dims = meta.get("dims")
        if dims is not None and (
            not isinstance(dims, list)
            or len(dims) != len(names)
            or not all(isinstance(d, str) for d in dims)
        ):
            raise corrupt(path, f"its attrs' 'dims' is {dims!r}, not null or {len(names)} names")
    elif names not in (["L"], ["L", "R"]):
        raise corrupt(path, f"its attrs' 'factors' is {names!r}, not ['L', 'R'] or ['L']")
    for name in {"tucker": ["core"], "robust": ["S"], "robust_tucker": ["core", "S"]}.get(kind, []):
        if name not in present:
            raise corrupt(path, f"its attrs say model={kind!r} but the array {name!r} is missing")
    return meta


def _read_small(path: str, arr, error, strict: bool) -> np.ndarray:
    chunks.check_chunks(arr, arr.path, error, path=path, strict=strict)
    return chunks.read_all(arr, name=arr.path, error=error)


def read_result(path: str, statuses) -> dict:
    """Open and validate the result store at ``path``: the keyword arguments of a result.

    ``statuses`` are the valid values of the ``status`` attribute. Returns
    ``model`` (a dict: ``kind``, ``factors`` as lazy Dask arrays whose chunks
    are verified as they are read, and ``offsets``, ``ids``, ``sparse`` (lazy,
    or ``None``) for a matrix model, ``core`` and ``dims`` for a Tucker one),
    ``status``, ``n_iter``, ``converged``, ``message``, ``history``,
    ``params`` and ``info``. Raises
    :class:`~dscaledgd.exceptions.InputDataError` naming the store, the array
    and the fix on anything incomplete or inconsistent.
    """
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
    kind = meta.get("model", "lowrank")
    ranks = [int(arr.shape[1]) for arr in factors.values()]
    if kind not in TUCKER_KINDS and len(set(ranks)) != 1:
        raise error(f"the factors have different ranks {sorted(set(ranks))}")
    if "history" not in set(g.group_keys()):
        raise error("the 'history' group is missing")
    h = g["history"]
    stored = sorted(h.array_keys())
    missing = [k for k in meta.get("history", ("loss", "residual")) if k not in stored]
    if missing:
        raise error(f"history arrays {missing} are missing")
    # format 1 wrote history chunks equal to the fill value (0) only in the first chunk
    history = {k: _read_small(path, h[k], error, strict or h[k].nchunks == 1) for k in stored}
    lengths = sorted({len(v) for k, v in history.items() if not k.startswith(CURVE)})
    if lengths != [meta["n_iter"] + 1]:
        raise error(f"the history has lengths {lengths} for n_iter={meta['n_iter']}")
    curve = sorted({len(v) for k, v in history.items() if k.startswith(CURVE)})
    if len(curve) > 1:
        raise error(f"the history's {CURVE}* entries have different lengths {curve}")
    info = meta.get("info", {}) if isinstance(meta.get("info"), dict) else {}
    best = info.get("best_iteration", meta["n_iter"])
    if not isinstance(best, int) or not 0 <= best <= meta["n_iter"]:
        raise error(f"its attrs' info.best_iteration is {best!r}")
    lazy = tuple(_lazy(path, arr, name, error) for name, arr in factors.items())
    if kind in TUCKER_KINDS:
        core = _read_small(path, g["core"], error, True)
        if core.dtype.kind != "f" or core.shape != tuple(ranks):
            raise error(
                f"array 'core' has shape {core.shape} and dtype {core.dtype}, not float64 "
                f"{tuple(ranks)} (the factors' ranks)"
            )
        model = {"kind": kind, "factors": lazy, "core": core, "dims": meta.get("dims")}
        if kind == "robust_tucker":
            S, shape = g["S"], tuple(int(arr.shape[0]) for arr in factors.values())
            if S.shape != shape or S.dtype.kind != "f":
                raise error(f"array 'S' has shape {S.shape} and dtype {S.dtype}, not {shape}")
            chunks.check_chunks(S, "S", error, path=path)
            model["sparse"] = _lazy(path, S, "S", error)
    else:
        model = {"kind": kind, "factors": lazy, **_matrix_parts(path, g, meta, factors, error)}
    return {
        "model": model,
        "status": meta["status"],
        "n_iter": int(meta["n_iter"]),
        "converged": bool(meta["converged"]),
        "message": meta["message"],
        "history": history,
        "params": meta["params"],
        "info": info,
    }


def _lazy(path: str, arr, name: str, error):
    """A stored array as a Dask array whose chunks are verified as they are read."""
    import dask.array as da

    return da.from_array(
        chunks.CheckedArray(arr, path=path, name=name, error=error),
        chunks=arr.chunks,
        meta=np.empty((0,) * arr.ndim),
    )


def _matrix_parts(path: str, g, meta: dict, factors: dict, error) -> dict:
    """``offsets``, ``ids`` and ``sparse`` of a matrix model, validated against the factors."""
    present = set(g.array_keys())
    extra = {
        name: _read_small(path, g[name], error, True) if name in present else None
        for name in EXTRA_ARRAYS
    }
    for name, which in EXTRA_ARRAYS.items():
        n = factors[meta["factors"][which]].shape[0]
        if extra[name] is not None and extra[name].shape != (n,):
            raise error(f"array {name!r} has shape {extra[name].shape}, not ({n},)")
    sparse = None
    if meta.get("model") == "robust":
        S = g["S"]
        shape = (factors["L"].shape[0], factors[meta["factors"][-1]].shape[0])
        if S.shape != shape or S.dtype.kind != "f":
            raise error(f"array 'S' has shape {S.shape} and dtype {S.dtype}, not float64 {shape}")
        chunks.check_chunks(S, "S", error, path=path)
        sparse = _lazy(path, S, "S", error)
    return {
        "offsets": {
            "mean": float(meta.get("mean", 0.0)),
            "row_bias": extra["row_bias"],
            "col_bias": extra["col_bias"],
        },
        "ids": {"row": extra["row_ids"], "col": extra["col_ids"]},
        "sparse": sparse,
    }
