"""One result type for every solver: :class:`SolveResult`, and :class:`IterationState`.

A :class:`SolveResult` is frozen and its shape does not depend on flags.
``factors`` holds Dask arrays; ``history`` maps names to 1-D NumPy arrays of
length ``n_iter + 1`` (entry 0 is the initial point).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._version import __version__
from .exceptions import InputDataError, InvalidParameterError

__all__ = ["SolveResult", "IterationState", "load_result", "STATUSES"]

#: Every value ``SolveResult.status`` can take.
STATUSES = ("converged", "stalled", "early_stopped", "max_iter", "callback", "diverged")

#: What :meth:`SolveResult.predict` does with ids never seen in training.
COLD_START = ("nan", "mean", "error")

#: History arrays recorded by the solver loop.
HISTORY_KEYS = ("loss", "residual", "step_size", "damping", "adaptive_damping", "time", "passes")


@dataclass(frozen=True)
class IterationState:
    """What a ``callback`` sees after each accepted iteration.

    Every field is already computed: reading them costs nothing. Only
    :meth:`factors` triggers a computation (it gathers the factors).

    Attributes
    ----------
    iteration : int
        Number of updates applied so far (0 is the initial point).
    loss, residual : float
        Objective and relative residual ``‖P_Ω(X) − Y‖ / ‖Y‖`` at this iterate.
    step_size, damping : float
        Step and damping used to reach this iterate (NaN at iteration 0).
    time : float
        Seconds since the solver started.
    passes : int
        Data passes spent so far (spectral initialisation excluded).
    validation : float or None
        Held-out error, when validation data was given.
    """

    iteration: int
    loss: float
    residual: float
    step_size: float
    damping: float
    time: float
    passes: int
    validation: float | None = None
    _gather: Callable[[], tuple] | None = field(default=None, repr=False, compare=False)

    def factors(self) -> tuple:
        """Gather the current factors as NumPy arrays (costs one transfer)."""
        if self._gather is None:  # pragma: no cover - always set by the loop
            raise RuntimeError("factors are not available for this state")
        return self._gather()


@dataclass(frozen=True)
class SolveResult:
    """The outcome of a solve.

    Attributes
    ----------
    factors : tuple of dask.array.Array
        ``(L, R)``, or ``(L,)`` for a symmetric (PSD) fit ``X = L Lᵀ``. On a
        client that outlives the run (``client=``, or the active default
        client) they are backed by the worker-held blocks: compute them with
        that client (``with client.as_current():``) or use
        :meth:`compute_factors`. Otherwise they wrap gathered NumPy arrays.
    status : str
        One of ``"converged"`` (``tol`` met), ``"stalled"`` (loss stopped
        changing: the normal stop on noisy data), ``"max_iter"``,
        ``"callback"`` (the callback raised ``StopIteration``),
        ``"early_stopped"`` (the validation RMSE stopped improving; the factors
        are those of the best validation iterate) or ``"diverged"`` (the step
        safeguard gave up; the factors are the best iterate seen, and the
        history and ``n_iter`` end at it).
    n_iter : int
        Updates applied (on a ``"diverged"`` run: up to the returned iterate;
        the discarded ones are counted in the ``"diverged"`` event of
        ``info["events"]``).
    converged : bool
        ``status in ("converged", "stalled", "early_stopped")``.
    message : str
    history : dict of str to ndarray
        ``loss``, ``residual``, ``step_size``, ``damping`` (fixed λ),
        ``adaptive_damping`` (``μ`` of the default rule), ``time`` (seconds
        since start) and ``passes`` (cumulative data passes), each of length
        ``n_iter + 1``; plus ``validation`` when held-out data was given.
        Entry ``k`` describes iterate ``k``; the returned factors are iterate
        :attr:`best_iteration` (``n_iter``, the last entry, except on
        ``"early_stopped"``, where the full validation curve is kept).
    params : dict
        The parameters of the run (JSON-serialisable).
    info : dict
        Diagnostics: initial singular values, safeguard events, passes spent
        on initialisation, ``best_iteration``.
    offsets : dict
        The centring: ``mean`` (μ) and ``row_bias``/``col_bias`` arrays (or
        ``None``). The model is ``μ + b_i + c_j + <L_i, R_j>``.
    ids : dict
        Original row/column ids when the observations came from a table
        import; ``predict(..., by="id")`` uses them.
    """

    factors: tuple
    status: str
    n_iter: int
    converged: bool
    message: str
    history: dict
    params: dict
    info: dict = field(default_factory=dict)
    #: ``{"mean": μ, "row_bias": b or None, "col_bias": c or None}`` (``center``)
    offsets: dict = field(default_factory=lambda: {"mean": 0.0, "row_bias": None, "col_bias": None})
    #: ``{"row": ids or None, "col": ids or None}``: original ids of an imported table
    ids: dict = field(default_factory=lambda: {"row": None, "col": None})
    #: the sparse component ``S`` of a robust PCA fit (dask array), else ``None``
    sparse: object = None
    #: the distributed client holding futures-backed factors (not serialised)
    _client: object = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------- access
    @property
    def L(self):
        """Left factor, shape ``(n1, rank)`` (dask array)."""
        return self.factors[0]

    @property
    def R(self):
        """Right factor, shape ``(n2, rank)``; the same array as ``L`` when symmetric."""
        return self.factors[-1]

    @property
    def S(self):
        """Sparse component of :func:`dscaledgd.rpca` (dask array; ``None`` otherwise)."""
        return self.sparse

    @property
    def symmetric(self) -> bool:
        return len(self.factors) == 1

    @property
    def best_iteration(self) -> int:
        """Index into :attr:`history` of the iterate whose factors are returned.

        ``n_iter`` for every status but ``"early_stopped"``, where it is the
        best-validation iterate (``n_iter`` then counts every update applied).
        """
        return int(self.info.get("best_iteration", self.n_iter))

    @property
    def final(self) -> dict:
        """The history entries of the returned iterate: ``{key: history[key][best_iteration]}``.

        This is what "the final loss / residual" of the fit means.
        """
        k = self.best_iteration
        return {key: float(v[k]) for key, v in self.history.items() if len(v) > k}

    def __repr__(self) -> str:
        fin = self.final
        parts = [f"status={self.status!r}", f"n_iter={self.n_iter}"]
        if self.best_iteration != self.n_iter:
            parts.append(f"best_iteration={self.best_iteration}")
        for key in ("loss", "residual", "validation"):
            if key in fin:
                parts.append(f"{key}={fin[key]:.4g}")
        parts.append(f"factors={[tuple(F.shape) for F in self.factors]}")
        return f"SolveResult({', '.join(parts)})"

    def compute_factors(self) -> tuple:
        """The factors as NumPy arrays (uses the run's client for futures-backed ones)."""
        import dask

        kw = {"scheduler": self._client} if self._client is not None else {}
        return tuple(np.ascontiguousarray(F) for F in dask.compute(*self.factors, **kw))

    def compute_sparse(self) -> np.ndarray | None:
        """The sparse component of :func:`dscaledgd.rpca` as a NumPy array (run's client)."""
        if self.sparse is None:
            return None
        kw = {"scheduler": self._client} if self._client is not None else {}
        return np.asarray(self.sparse.compute(**kw))

    def _numpy_factors(self):
        F = self.compute_factors()
        return F[0], F[-1]

    def _offset_arrays(self, n1: int, n2: int):
        o = self.offsets
        b = o.get("row_bias")
        c = o.get("col_bias")
        b = np.zeros(n1) if b is None else np.asarray(b, dtype=np.float64)
        c = np.zeros(n2) if c is None else np.asarray(c, dtype=np.float64)
        return float(o.get("mean", 0.0)), b, c

    def _lookup(self, ids, axis: str):
        known = self.ids.get(axis)
        if known is None:
            raise InputDataError(
                f"predict(by='id') needs the original {axis} ids, but these observations were "
                "not imported from a table. Use by='index'."
            )
        known = np.asarray(known)
        ids = np.asarray(ids, dtype=known.dtype) if known.dtype.kind in "iuf" else np.asarray(ids)
        pos = np.clip(np.searchsorted(known, ids), 0, len(known) - 1)
        found = known[pos] == ids
        return pos, found

    def predict(self, rows, cols, *, by: str = "index", cold_start: str = "nan") -> np.ndarray:
        """Entries of the fitted ``X = μ + b_i + c_j + L_i·R_j`` at ``(rows, cols)``.

        Parameters
        ----------
        rows, cols : array-like, shape (k,)
            Row and column indices (``by="index"``; integers, or floats with
            integer values: ``0.7`` raises ``InvalidParameterError``) or
            original ids from the imported table (``by="id"``).
        by : {"index", "id"}, default "index"
        cold_start : {"nan", "mean", "error"}, default "nan"
            For ``by="id"``, what to return for ids never seen in training:
            ``"nan"`` (the default, as Spark ALS), ``"mean"`` (the centring
            baseline: μ plus the bias of whichever id is known, or 0 without
            centring), or ``"error"`` (raise, naming the first unseen id).

        Notes
        -----
        Gathers the factors to the client (``(n1 + n2) · rank · 8`` bytes).
        """
        from ._validation import check_choice
        from .problems.completion import sddmm

        check_choice("predict", "by", by, ("index", "id"))
        check_choice("predict", "cold_start", cold_start, COLD_START)
        L, R = self._numpy_factors()
        n1, n2 = L.shape[0], R.shape[0]
        mu, b, c = self._offset_arrays(n1, n2)
        rows = np.asarray(rows)
        cols = np.asarray(cols)
        if rows.shape != cols.shape or rows.ndim != 1:
            raise InputDataError(
                f"predict needs 1-D rows and cols of equal length; got shapes {rows.shape} "
                f"and {cols.shape}."
            )
        if by == "id":
            ri, rok = self._lookup(rows, "row")
            ci, cok = self._lookup(cols, "col")
            ok = rok & cok
            if not ok.all() and cold_start == "error":
                k = int(np.argmin(ok))
                which = (
                    f"row id {rows[k].item()!r}" if not rok[k] else f"column id {cols[k].item()!r}"
                )
                raise InputDataError(
                    f"predict: {which} (entry {k}) was never seen in training ({int((~ok).sum())} "
                    "unseen pairs in all). Pass cold_start='nan' or 'mean'."
                )
            out = np.full(len(rows), np.nan)
            out[ok] = mu + b[ri[ok]] + c[ci[ok]] + sddmm(ri[ok], ci[ok], L, R)
            if cold_start == "mean":
                miss = ~ok
                out[miss] = (
                    mu
                    + np.where(rok[miss], b[ri[miss]], 0.0)
                    + np.where(cok[miss], c[ci[miss]], 0.0)
                )
            return out
        for name, idx, n in (("rows", rows, n1), ("cols", cols, n2)):
            frac = np.flatnonzero(idx != np.round(idx)) if idx.dtype.kind == "f" else []
            if idx.dtype.kind not in "iuf" or len(frac):
                seen = f"{idx[frac[0]]!s} at position {frac[0]}" if len(frac) else idx.dtype
                raise InvalidParameterError(
                    f"The '{name}' parameter of predict must hold integer indices. Got {seen}. "
                    "Pass whole numbers (round them first if they are positions), or by='id'."
                )
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise InputDataError(
                    f"predict: '{name}' has indices outside [0, {n}); got range "
                    f"[{idx.min()}, {idx.max()}]."
                )
        rows = rows.astype(np.int64)
        cols = cols.astype(np.int64)
        return mu + b[rows] + c[cols] + sddmm(rows, cols, L, R)

    def rmse(self, obs) -> float:
        """Root-mean-square error of the fit on the entries of ``obs``."""
        from .problems.completion import residual_sumsq

        L, R = self._numpy_factors()
        if obs.shape != (L.shape[0], R.shape[0]):
            raise InputDataError(
                f"rmse: observations of shape {obs.shape} do not match the fitted matrix "
                f"({L.shape[0]}, {R.shape[0]})."
            )
        mu, b, c = self._offset_arrays(L.shape[0], R.shape[0])
        total = 0.0
        for t in range(obs.n_tiles):
            r0, r1, c0, c1 = obs.tile_bounds(t)
            rows, cols, vals = obs.read_tile(t)
            total += residual_sumsq(rows, cols, vals, L[r0:r1], R[c0:c1], (mu, b[r0:r1], c[c0:c1]))
        return float(np.sqrt(total / obs.nnz))

    # -------------------------------------------------------------- store
    def to_zarr(self, path: str | os.PathLike, overwrite: bool = False) -> str:
        """Write factors, history and metadata to a Zarr v3 group (atomic publish).

        The group is written under a temporary sibling name and renamed into
        place when complete, so a crash never leaves a half-written result at
        ``path``. Every array carries a CRC-32C checksum per chunk and every
        chunk is written (even one equal to the fill value), so
        :func:`load_result` can tell a complete store from a truncated,
        garbled or partly deleted one.
        """
        import dask.array as da
        import zarr

        from .storage.layout import atomic_dir

        path = os.fspath(path)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            g = zarr.open_group(tmp, mode="w")
            names = ("L",) if self.symmetric else ("L", "R")
            for name, F in zip(names, self.factors):
                F = F if hasattr(F, "chunks") else da.from_array(np.asarray(F))
                if self._client is not None:  # futures-backed: gather through its client
                    F = da.from_array(self._client.compute(F).result(), chunks=F.chunks)
                arr = g.create_array(
                    name,
                    shape=F.shape,
                    chunks=(max(1, min(F.shape[0], 1 << 18)), F.shape[1]),
                    dtype="float64",
                    compressors=_checksum(),
                    config={"write_empty_chunks": True},
                )
                da.store(F.rechunk({0: arr.chunks[0]}), arr, lock=False)
            h = g.create_group("history")
            for k, v in self.history.items():
                _write_array(h, k, np.asarray(v, dtype=np.float64))
            for name, arr in (
                ("row_bias", self.offsets.get("row_bias")),
                ("col_bias", self.offsets.get("col_bias")),
                ("row_ids", self.ids.get("row")),
                ("col_ids", self.ids.get("col")),
            ):
                if arr is not None:
                    _write_array(g, name, arr)
            g.attrs["dscaledgd"] = {
                "type": "result",
                "format_version": RESULT_FORMAT,
                "library_version": __version__,
                "status": self.status,
                "n_iter": self.n_iter,
                "converged": self.converged,
                "message": self.message,
                "params": _jsonable(self.params),
                "info": _jsonable(self.info),
                "factors": list(names),
                "history": list(self.history),
                "mean": float(self.offsets.get("mean", 0.0)),
            }
        return path


#: format version of result stores: 1 (no checksums), 2 (CRC-32C on every chunk)
RESULT_FORMAT = 2


def _checksum():
    """The codecs after the raw bytes of every array: one CRC-32C per chunk."""
    import zarr

    return (zarr.codecs.Crc32cCodec(),)


def _write_array(group, name: str, data) -> None:
    """A small 1-D array (history, biases, id maps), checksummed, every chunk written."""
    from .storage.layout import unstable_dtype_ok

    data = np.asarray(data)
    if data.dtype.kind in "iub":
        data = data.astype(np.int64)
    with unstable_dtype_ok():
        group.create_array(
            name,
            data=data,
            chunks=(max(1, min(len(data), 1 << 22)),),
            compressors=_checksum(),
            config={"write_empty_chunks": True},
        )


class _CheckedArray:
    """A stored factor read lazily; a failed read names the store and the array."""

    def __init__(self, arr, store: str, name: str):
        import uuid

        self.arr, self.store, self.name = arr, store, name
        self.shape, self.dtype, self.ndim = tuple(arr.shape), arr.dtype, arr.ndim
        self.token = uuid.uuid4().hex  # per load: a store replaced at the same path is new

    def __getitem__(self, key):
        try:
            return self.arr[key]
        except Exception as exc:
            raise _corrupt(self.store, f"array {self.name!r}", f"cannot be read ({exc})") from exc

    def __dask_tokenize__(self):
        return ("dscaledgd-result", self.store, self.name, self.token)


def _corrupt(store: str, name: str, what: str) -> InputDataError:
    return InputDataError(
        f"The result store {store!r} is corrupt or truncated: {name} {what}. Re-create it "
        "(SolveResult.to_zarr, or rerun the solve with `--overwrite`)."
    )


def _check_chunks(path: str, arr, name: str, strict: bool) -> None:
    """Every chunk of ``arr`` is present and, when its encoding has a fixed size
    (raw bytes, optionally with a CRC-32C), exactly that size on disk."""
    if strict and arr.nchunks_initialized != arr.nchunks:
        raise _corrupt(
            path, f"array {name!r}", f"has {arr.nchunks_initialized} of {arr.nchunks} chunks"
        )
    codecs = [type(c).__name__ for c in arr.metadata.codecs]
    if codecs[0] != "BytesCodec" or any(c != "Crc32cCodec" for c in codecs[1:]):
        return  # compressed: the size is not known in advance
    size = int(np.prod(arr.chunks)) * arr.dtype.itemsize + 4 * (len(codecs) - 1)
    for idx in np.ndindex(*arr.cdata_shape):
        f = os.path.join(path, arr.path, *arr.metadata.encode_chunk_key(idx).split("/"))
        if os.path.exists(f) and os.path.getsize(f) != size:
            raise _corrupt(
                path,
                f"array {name!r}",
                f"has a chunk of {os.path.getsize(f)} bytes where {size} are expected "
                f"({os.path.relpath(f, path)})",
            )
        elif strict and not os.path.exists(f):
            raise _corrupt(path, f"array {name!r}", f"lacks the chunk {os.path.relpath(f, path)}")


def _read_small(path: str, g, name: str, strict: bool) -> np.ndarray:
    from .storage.layout import unstable_dtype_ok

    arr = g[name]
    _check_chunks(path, arr, arr.path, strict)
    try:
        with unstable_dtype_ok():
            return np.asarray(arr[:])
    except Exception as exc:
        raise _corrupt(path, f"array {arr.path!r}", f"cannot be read ({exc})") from None


#: attributes every result store has (``dscaledgd`` in the group's attrs)
_REQUIRED = {"status": str, "n_iter": int, "converged": bool, "message": str, "params": dict}


def _result_meta(path: str, g) -> dict:
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
            raise _corrupt(
                path,
                f"its attrs' {key!r}",
                "is missing" if key not in meta else f"is {v!r}, not a {kind.__name__}",
            )
    if meta["status"] not in STATUSES or meta["n_iter"] < 0:
        raise _corrupt(path, "its attrs", f"say status={meta['status']!r}, n_iter={meta['n_iter']}")
    names = meta.get("factors")
    present = set(g.array_keys())
    if not isinstance(names, list) or not 1 <= len(names) <= 2:
        raise _corrupt(path, "its attrs' 'factors'", f"is {names!r}")
    for name in names:
        if name not in present:
            raise _corrupt(
                path, f"its attrs' 'factors' name the array {name!r}", "but it is missing"
            )
    if names not in (["L"], ["L", "R"]):
        raise _corrupt(path, "its attrs' 'factors'", f"is {names!r}, not ['L', 'R'] or ['L']")
    return meta


def load_result(path: str | os.PathLike) -> SolveResult:
    """Open a result written by :meth:`SolveResult.to_zarr`, validated (factors stay lazy).

    The store is refused (:class:`~dscaledgd.InputDataError` naming the store,
    the array and the fix) when its attrs are incomplete, when an array it
    names is missing, or when a chunk of any array is missing or has the
    wrong size. History, biases and id maps are read and their checksums
    verified here; each factor chunk's checksum is verified when it is read,
    and a failed read raises ``InputDataError`` too. Results written before
    checksums (format 1) still load.
    """
    import dask.array as da
    import zarr

    path = os.fspath(path)
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
    meta = _result_meta(path, g)
    strict = meta.get("format_version", 1) >= 2
    arrays = {name: g[name] for name in meta["factors"]}
    for name, arr in arrays.items():
        if arr.ndim != 2 or arr.dtype.kind != "f":
            raise _corrupt(path, f"factor {name!r}", f"has shape {arr.shape} and dtype {arr.dtype}")
        _check_chunks(path, arr, name, True)  # factors were always written in full
    ranks = {arr.shape[1] for arr in arrays.values()}
    if len(ranks) != 1:
        raise _corrupt(path, "the factors", f"have different ranks {sorted(ranks)}")
    if "history" not in set(g.group_keys()):
        raise _corrupt(path, "the 'history' group", "is missing")
    h = g["history"]
    stored = sorted(h.array_keys())
    missing = [k for k in meta.get("history", ("loss", "residual")) if k not in stored]
    if missing:
        raise _corrupt(path, f"history arrays {missing}", "are missing")
    # format 1 wrote history chunks equal to the fill value (0) only in the first chunk
    history = {k: _read_small(path, h, k, strict or h[k].nchunks == 1) for k in stored}
    lengths = sorted({len(v) for v in history.values()})
    if lengths != [meta["n_iter"] + 1]:
        raise _corrupt(path, "the history", f"has lengths {lengths} for n_iter={meta['n_iter']}")
    info = meta.get("info", {}) if isinstance(meta.get("info"), dict) else {}
    best = info.get("best_iteration", meta["n_iter"])
    if not isinstance(best, int) or not 0 <= best <= meta["n_iter"]:
        raise _corrupt(path, "its attrs' info.best_iteration", f"is {best!r}")
    present = set(g.array_keys())
    extra = {
        name: _read_small(path, g, name, True) if name in present else None
        for name in ("row_bias", "col_bias", "row_ids", "col_ids")
    }
    n1, n2 = arrays[meta["factors"][0]].shape[0], arrays[meta["factors"][-1]].shape[0]
    for name, n in (("row_bias", n1), ("col_bias", n2), ("row_ids", n1), ("col_ids", n2)):
        if extra[name] is not None and extra[name].shape != (n,):
            raise _corrupt(path, f"array {name!r}", f"has shape {extra[name].shape}, not ({n},)")
    factors = tuple(
        da.from_array(_CheckedArray(arr, path, name), chunks=arr.chunks, meta=np.empty((0, 0)))
        for name, arr in arrays.items()
    )
    return SolveResult(
        factors=factors,
        status=meta["status"],
        n_iter=int(meta["n_iter"]),
        converged=bool(meta["converged"]),
        message=meta["message"],
        history=history,
        params=meta["params"],
        info=info,
        offsets={
            "mean": float(meta.get("mean", 0.0)),
            "row_bias": extra["row_bias"],
            "col_bias": extra["col_bias"],
        },
        ids={"row": extra["row_ids"], "col": extra["col_ids"]},
    )


def _jsonable(obj: Any) -> Any:
    """Recursively convert NumPy scalars/arrays for JSON attrs (checked by json.dumps)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
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
