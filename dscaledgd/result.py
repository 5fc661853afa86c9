"""One result type for every solver: :class:`SolveResult`, and :class:`IterationState`.

A :class:`SolveResult` is frozen and its shape does not depend on flags.
``factors`` holds Dask arrays; ``history`` maps names to 1-D NumPy arrays of
length ``n_iter + 1`` (entry 0 is the initial point).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .exceptions import InputDataError, InvalidParameterError
from .storage.results import RESULT_FORMAT, read_result, write_result  # noqa: F401 (re-export)

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

        factors = {}
        for name, F in zip(("L",) if self.symmetric else ("L", "R"), self.factors):
            F = F if hasattr(F, "chunks") else da.from_array(np.asarray(F))
            if self._client is not None:  # futures-backed: gather through its client
                F = da.from_array(self._client.compute(F).result(), chunks=F.chunks)
            factors[name] = F
        return write_result(
            os.fspath(path),
            factors=factors,
            history=self.history,
            arrays={
                "row_bias": self.offsets.get("row_bias"),
                "col_bias": self.offsets.get("col_bias"),
                "row_ids": self.ids.get("row"),
                "col_ids": self.ids.get("col"),
            },
            meta={
                "status": self.status,
                "n_iter": self.n_iter,
                "converged": self.converged,
                "message": self.message,
                "params": self.params,
                "info": self.info,
                "mean": self.offsets.get("mean", 0.0),
            },
            overwrite=overwrite,
        )


def load_result(path: str | os.PathLike) -> SolveResult:
    """Open a result written by :meth:`SolveResult.to_zarr`, validated (factors stay lazy).

    The store is refused (:class:`~dscaledgd.InputDataError` naming the store,
    the array and the fix) when its attrs are incomplete, when an array it
    names is missing, or when a chunk of any array is missing or has the
    wrong size. History, biases and id maps are read and their checksums
    verified here; each factor chunk's checksum is verified when it is read,
    and a failed read raises ``InputDataError`` too (naming the chunk).
    Results written before checksums (format 1) still load.
    """
    return SolveResult(**read_result(os.fspath(path), STATUSES))
