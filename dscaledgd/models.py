"""What a fit IS, apart from how it was obtained: LowRank, RobustLowRank, Tucker.

A model holds the fitted parameters (row-blocked factors as Dask arrays; the
small objects, offsets or a Tucker core, as NumPy) and answers questions
about them: entries at given indices, the error on held-out observations,
the full matrix or tensor (lazily). :class:`~dscaledgd.SolveResult` holds one
model beside the record of the run (status, history, parameters).

Every model gathers its factors with :meth:`compute_factors`, through the
run's distributed client when the factors are backed by futures on it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .exceptions import InputDataError, InvalidParameterError
from .linalg import multi_mode_product
from .storage.results import MODEL_KINDS

__all__ = [
    "COLD_START", "MODEL_KINDS", "LowRank", "RobustLowRank", "Tucker", "RobustTucker",
    "model_from_parts",
]  # fmt: skip

#: What :meth:`LowRank.predict` does with ids never seen in training.
COLD_START = ("nan", "mean", "error")


def _no_offsets() -> dict:
    return {"mean": 0.0, "row_bias": None, "col_bias": None}


def _no_ids() -> dict:
    return {"row": None, "col": None}


def _as_dask(F):
    """A factor as a Dask array (NumPy input: one chunk)."""
    if hasattr(F, "dask"):
        return F
    import dask.array as da

    F = np.asarray(F, dtype=np.float64)
    return da.from_array(F, chunks=F.shape)


def _compute(arrays, client) -> tuple:
    """``arrays`` as contiguous NumPy arrays, computed with ``client`` when given."""
    import dask

    kw = {"scheduler": client} if client is not None else {}
    return tuple(np.ascontiguousarray(F) for F in dask.compute(*arrays, **kw))


def _storable(F, client):
    """``F`` ready for ``da.store``: futures-backed arrays are gathered through their client."""
    import dask.array as da

    F = F if hasattr(F, "chunks") else da.from_array(np.asarray(F))
    if client is not None:
        F = da.from_array(client.compute(F).result(), chunks=F.chunks)
    return F


def check_indices(name: str, idx: np.ndarray, hint: str) -> None:
    """Refuse indices that are not integers (floats with integer values pass).

    Raises InvalidParameterError naming the first offending value and its
    position; ``hint`` ends the message.
    """
    bad = np.argwhere(idx != np.round(idx)) if idx.dtype.kind == "f" else []
    if idx.dtype.kind not in "iuf" or len(bad):
        if len(bad):
            pos = tuple(int(x) for x in bad[0])
            seen = f"{idx[pos]!s} at position {pos[0] if len(pos) == 1 else pos}"
        else:
            seen = idx.dtype
        raise InvalidParameterError(
            f"The '{name}' parameter of predict must hold integer indices. Got {seen}. "
            f"Pass whole numbers (round them first if they are positions){hint}."
        )


def check_range(name: str, idx: np.ndarray, n: int, what: str = "") -> None:
    """Refuse indices outside ``[0, n)`` (InputDataError; ``what``: "mode-1 ")."""
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise InputDataError(
            f"predict: '{name}' has {what}indices outside [0, {n}); got range "
            f"[{idx.min()}, {idx.max()}]."
        )


class _Factored:
    """What every model shares: its factors, gathered through the run's client."""

    #: the model's name in a result store's ``model`` attr (:data:`MODEL_KINDS`)
    kind = ""

    def compute_factors(self) -> tuple:
        """The factors as NumPy arrays (uses the run's client for futures-backed ones)."""
        return _compute(self.factors, self._client)


# ------------------------------------------------------------------ matrices
@dataclass(frozen=True)
class LowRank(_Factored):
    """The matrix model ``X = μ + b_i + c_j + L_i·R_j`` (``X = L Lᵀ`` plus offsets when symmetric).

    Parameters
    ----------
    factors : tuple of dask.array.Array
        ``(L, R)`` of shapes ``(n1, r)`` and ``(n2, r)``, or ``(L,)`` for a
        symmetric fit. NumPy arrays are wrapped (one chunk).
    offsets : dict
        ``{"mean": μ, "row_bias": b or None, "col_bias": c or None}`` (the
        centring; zero by default).
    ids : dict
        ``{"row": ids or None, "col": ids or None}``: original ids of an
        imported table, used by ``predict(..., by="id")``.

    Examples
    --------
    >>> import numpy as np
    >>> from dscaledgd.models import LowRank
    >>> m = LowRank((np.ones((3, 1)), np.arange(4.0)[:, None]), {"mean": 0.5})
    >>> m.shape, m.rank
    ((3, 4), 1)
    >>> m.predict([0, 2], [1, 3])
    array([1.5, 3.5])
    """

    factors: tuple
    offsets: dict = field(default_factory=_no_offsets)
    ids: dict = field(default_factory=_no_ids)
    #: the distributed client holding futures-backed factors (not serialised)
    _client: object = field(default=None, repr=False, compare=False, kw_only=True)

    kind = "lowrank"

    def __post_init__(self):
        factors = tuple(_as_dask(F) for F in self.factors)
        if not 1 <= len(factors) <= 2 or any(F.ndim != 2 for F in factors):
            raise InvalidParameterError(
                "The 'factors' parameter of LowRank must be (L, R) or (L,) of 2-D arrays. Got "
                f"{[getattr(F, 'shape', None) for F in factors]}."
            )
        object.__setattr__(self, "factors", factors)
        object.__setattr__(self, "offsets", {**_no_offsets(), **(self.offsets or {})})
        object.__setattr__(self, "ids", {**_no_ids(), **(self.ids or {})})

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
    def symmetric(self) -> bool:
        return len(self.factors) == 1

    @property
    def rank(self) -> int:
        return int(self.L.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        """``(n1, n2)``: the shape of the fitted matrix."""
        return int(self.L.shape[0]), int(self.R.shape[0])

    def with_sparse(self, sparse) -> RobustLowRank:
        """This model plus the sparse component ``S`` of a robust PCA fit."""
        return RobustLowRank(self.factors, self.offsets, self.ids, sparse, _client=self._client)

    # ------------------------------------------------------------ compute
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
            check_indices(name, idx, ", or by='id'")
            check_range(name, idx, n)
        rows = rows.astype(np.int64)
        cols = cols.astype(np.int64)
        return mu + b[rows] + c[cols] + sddmm(rows, cols, L, R)

    def rmse(self, obs) -> float:
        """Root-mean-square error of the fit on the entries of ``obs`` (an Observations)."""
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
    def _parts(self) -> dict:
        """What a result store holds of this model (factors ready for ``da.store``)."""
        names = ("L",) if self.symmetric else ("L", "R")
        return {
            "kind": self.kind,
            "factors": {n: _storable(F, self._client) for n, F in zip(names, self.factors)},
            "arrays": {
                "row_bias": self.offsets.get("row_bias"),
                "col_bias": self.offsets.get("col_bias"),
                "row_ids": self.ids.get("row"),
                "col_ids": self.ids.get("col"),
            },
            "mean": self.offsets.get("mean", 0.0),
        }


def _check_sparse(model) -> None:
    """A robust model's ``sparse`` is an array of the model's shape."""
    if model.sparse is None or tuple(model.sparse.shape) != model.shape:
        raise InvalidParameterError(
            f"The 'sparse' parameter of {type(model).__name__} must be an array of shape "
            f"{model.shape}. Got {getattr(model.sparse, 'shape', model.sparse)!r}."
        )


@dataclass(frozen=True)
class RobustLowRank(LowRank):
    """A :class:`LowRank` model plus the sparse component ``S`` of robust PCA: ``Y ≈ L Rᵀ + S``.

    Parameters
    ----------
    factors, offsets, ids
        As in :class:`LowRank`.
    sparse : dask.array.Array, shape (n1, n2)
        ``S``, zero outside the entries flagged as corrupted.
    """

    sparse: object = None

    kind = "robust"

    def __post_init__(self):
        super().__post_init__()
        _check_sparse(self)

    @property
    def S(self):
        """The sparse component (dask array)."""
        return self.sparse

    def compute_sparse(self) -> np.ndarray:
        """The sparse component as a NumPy array (uses the run's client)."""
        return _compute((self.sparse,), self._client)[0]

    def _parts(self) -> dict:
        return {**super()._parts(), "sparse": _storable(self.sparse, self._client)}


# ------------------------------------------------------------------- tensors
def _tucker_block(core: np.ndarray, *U: np.ndarray) -> np.ndarray:
    """``core ×_1 U_1 ×_2 … ×_d U_d`` for one block of rows of each factor."""
    return multi_mode_product(core, U)


@dataclass(frozen=True)
class Tucker(_Factored):
    """The Tucker model ``X = G ×_1 U_1 ×_2 U_2 … ×_d U_d``.

    Parameters
    ----------
    core : ndarray, shape (r_1, ..., r_d)
        The core ``G`` (small, NumPy).
    factors : tuple of dask.array.Array
        ``U_k`` of shape ``(n_k, r_k)``, one per mode, row-blocked like that
        mode's axis. NumPy arrays are wrapped (one chunk).
    dims : tuple of str, optional
        Names of the modes (the ``dims`` of an xarray input; kept as str).

    Examples
    --------
    >>> import numpy as np
    >>> from dscaledgd.models import Tucker
    >>> rng = np.random.default_rng(0)
    >>> m = Tucker(rng.standard_normal((2, 2, 2)), [rng.standard_normal((n, 2)) for n in (4, 3, 5)])
    >>> m.shape, m.ranks
    ((4, 3, 5), (2, 2, 2))
    >>> X = m.to_tensor().compute()
    >>> bool(np.isclose(m.predict([[1, 2, 3]])[0], X[1, 2, 3]))
    True
    """

    core: np.ndarray
    factors: tuple
    dims: tuple | None = None
    #: the distributed client holding futures-backed factors (not serialised)
    _client: object = field(default=None, repr=False, compare=False, kw_only=True)

    kind = "tucker"

    def __post_init__(self):
        core = np.asarray(self.core, dtype=np.float64)
        factors = tuple(_as_dask(U) for U in self.factors)
        shapes = [tuple(U.shape) for U in factors]
        if (
            core.ndim != len(factors)
            or core.ndim < 1
            or any(len(s) != 2 or s[1] != r for s, r in zip(shapes, core.shape))
        ):
            raise InvalidParameterError(
                "The 'factors' parameter of Tucker must hold one (n_k, r_k) array per mode of "
                f"the core (shape {core.shape}). Got shapes {shapes}."
            )
        dims = self.dims
        if dims is not None:
            dims = tuple(str(d) for d in dims)  # xarray allows any hashable; stores keep str
            if len(dims) != core.ndim:
                raise InvalidParameterError(
                    f"The 'dims' parameter of Tucker must be None or {core.ndim} names. "
                    f"Got {self.dims!r}."
                )
        object.__setattr__(self, "core", core)
        object.__setattr__(self, "factors", factors)
        object.__setattr__(self, "dims", dims)

    @property
    def ranks(self) -> tuple[int, ...]:
        """``(r_1, ..., r_d)``: the shape of the core."""
        return tuple(int(r) for r in self.core.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n_1, ..., n_d)``: the shape of the fitted tensor."""
        return tuple(int(U.shape[0]) for U in self.factors)

    @property
    def ndim(self) -> int:
        return self.core.ndim

    def predict(self, indices) -> np.ndarray:
        """Entries of the fitted tensor at ``indices``.

        Parameters
        ----------
        indices : array-like of int, shape (m, d)
            One row of global indices per entry (integers, or floats with
            integer values).

        Returns
        -------
        ndarray, shape (m,)

        Notes
        -----
        Gathers the factors to the client (``Σ_k n_k · r_k · 8`` bytes).
        """
        idx = np.asarray(indices)
        d = self.ndim
        if idx.ndim != 2 or idx.shape[1] != d:
            raise InputDataError(
                f"predict needs an (m, {d}) array of indices, one column per mode of the "
                f"{self.shape} tensor; got shape {idx.shape}."
            )
        check_indices("indices", idx, "")
        for k, n in enumerate(self.shape):
            check_range("indices", idx[:, k], n, what=f"mode-{k} ")
        idx = idx.astype(np.int64)
        if len(idx) == 0:
            return np.empty(0)
        from .problems.tucker import predict

        return np.asarray(predict(idx, list(self.compute_factors()), self.core), dtype=np.float64)

    def rmse(self, T) -> float:
        """Root-mean-square error of the fit on the observed entries of ``T``.

        ``T`` is a ``TensorObservations`` of the fitted shape; its chunks are
        read one at a time (memory: one chunk plus the gathered factors).
        """
        from .problems.tucker import chunk_residual_sumsq

        if tuple(T.shape) != self.shape:
            raise InputDataError(
                f"rmse: observations of shape {tuple(T.shape)} do not match the fitted tensor "
                f"{self.shape}."
            )
        if T.nnz == 0:
            raise InputDataError("rmse: the observations hold no observed entry.")
        U = self.compute_factors()
        total = 0.0
        for c in range(T.n_chunks):
            blocks = [u[s] for u, s in zip(U, T.chunk_slices(c))]
            total += float(chunk_residual_sumsq(T.read_chunk(c), blocks, self.core))
        return float(np.sqrt(total / T.nnz))

    def to_tensor(self, chunks=None):
        """The full tensor as a lazy Dask array, one block per product of factor row blocks.

        Parameters
        ----------
        chunks : optional
            Chunks of the result, anything ``dask.array`` accepts for this
            shape; default: each factor's row chunks.

        Notes
        -----
        Nothing is formed on the client: block ``(b_1, …, b_d)`` is computed
        where it is needed from the core and the factor blocks
        ``U_k[b_k]`` (memory per task: one block of the result).
        """
        import dask.array as da

        if chunks is None:
            chunks = tuple(U.chunks[0] for U in self.factors)
        else:
            chunks = da.core.normalize_chunks(chunks, self.shape, dtype=np.float64)
        factors = [U.rechunk({0: c, 1: -1}) for U, c in zip(self.factors, chunks)]
        core = da.from_array(self.core, chunks=self.core.shape)
        d = self.ndim
        args = [core, tuple(f"r{k}" for k in range(d))]
        for k, U in enumerate(factors):
            args += [U, (f"n{k}", f"r{k}")]
        return da.blockwise(
            _tucker_block,
            tuple(f"n{k}" for k in range(d)),
            *args,
            dtype=np.float64,
            concatenate=True,
            meta=np.empty((0,) * d),
        )

    def to_xarray(self, chunks=None):
        """:meth:`to_tensor` as a lazy ``xarray.DataArray`` with the input's ``dims`` (the
        names of an ``xarray`` input; ``dim_0, …`` when the input had none)."""
        try:
            import xarray as xr
        except ImportError as exc:
            raise ImportError(
                "Tucker.to_xarray needs xarray, which is not installed. Install the extra: "
                "pip install 'dscaledgd[xarray]' (or pip install xarray)."
            ) from exc
        dims = self.dims or tuple(f"dim_{k}" for k in range(self.ndim))
        return xr.DataArray(self.to_tensor(chunks), dims=dims)

    def to_tensorly(self):
        """The model as a ``tensorly.tucker_tensor.TuckerTensor`` (gathers the factors)."""
        try:
            from tensorly.tucker_tensor import TuckerTensor
        except ImportError as exc:
            raise ImportError(
                "Tucker.to_tensorly needs TensorLy, which is not installed. Install the extra: "
                "pip install 'dscaledgd[tensorly]' (or pip install tensorly)."
            ) from exc
        return TuckerTensor((self.core.copy(), list(self.compute_factors())))

    def _parts(self) -> dict:
        return {
            "kind": self.kind,
            "factors": {f"U{k}": _storable(U, self._client) for k, U in enumerate(self.factors)},
            "core": self.core,
            "dims": None if self.dims is None else list(self.dims),
        }


@dataclass(frozen=True)
class RobustTucker(Tucker):
    """A :class:`Tucker` model plus the sparse part of tensor robust PCA: ``Y ≈ X + S``.

    ``sparse`` is ``S = thre(Y − X, ζ)`` at the returned iterate, a lazy Dask
    array of the data's shape and chunks (zero where ``|Y − X| ≤ ζ`` and at
    missing entries).
    """

    sparse: object = None

    def __post_init__(self):
        super().__post_init__()
        _check_sparse(self)

    def compute_sparse(self) -> np.ndarray:
        """The sparse part as a NumPy array (uses the run's client)."""
        return _compute((self.sparse,), self._client)[0]

    kind = "robust_tucker"

    def _parts(self) -> dict:
        return {**super()._parts(), "sparse": _storable(self.sparse, self._client)}


# -------------------------------------------------------------------- store
def model_from_parts(kind: str, factors, *, core=None, dims=None, sparse=None, **kw):
    """The model a result store describes (``kind`` from :data:`MODEL_KINDS`).

    ``kw`` holds ``offsets``, ``ids`` and ``_client`` for a matrix model.
    """
    if kind == "robust_tucker":
        return RobustTucker(core, factors, dims, sparse=sparse, _client=kw.get("_client"))
    if kind == "tucker":
        return Tucker(core, factors, dims, _client=kw.get("_client"))
    model = LowRank(factors, kw.get("offsets"), kw.get("ids"), _client=kw.get("_client"))
    return model.with_sparse(sparse) if kind == "robust" else model


def replace_client(model, client):
    """``model`` with the run's ``client`` (unchanged when it already has one or none is given)."""
    if client is None or model._client is client:
        return model
    return dataclasses.replace(model, _client=client)
