"""One result type for every solver: :class:`SolveResult`, and :class:`IterationState`.

A :class:`SolveResult` is frozen and its shape does not depend on flags. It
holds the fitted **model** (:mod:`dscaledgd.models`: what the fit is) beside
the record of the run (status, history, parameters: how it was obtained).
``factors`` are Dask arrays; ``history`` maps names to 1-D NumPy arrays of
length ``n_iter + 1`` (entry 0 is the initial point).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ._html import result_html
from .models import (
    COLD_START,  # noqa: F401 (re-export)
    LowRank,
    RobustLowRank,
    Tucker,
    model_from_parts,
    replace_client,
)
from .storage.results import RESULT_FORMAT, read_result, write_result  # noqa: F401 (re-export)

__all__ = ["SolveResult", "IterationState", "load_result", "STATUSES"]

#: Every value ``SolveResult.status`` can take.
STATUSES = ("converged", "stalled", "early_stopped", "max_iter", "callback", "diverged")

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
    core : ndarray or None
        The Tucker core at this iterate (small, on the client); ``None`` for
        matrix methods.
    """

    iteration: int
    loss: float
    residual: float
    step_size: float
    damping: float
    time: float
    passes: int
    validation: float | None = None
    core: np.ndarray | None = field(default=None, repr=False, compare=False)
    _gather: Callable[[], tuple] | None = field(default=None, repr=False, compare=False)

    def factors(self) -> tuple:
        """Gather the current factors as NumPy arrays (costs one transfer)."""
        if self._gather is None:  # pragma: no cover - always set by the loop
            raise RuntimeError("factors are not available for this state")
        return self._gather()


@dataclass(frozen=True, init=False)
class SolveResult:
    """The outcome of a solve: the fitted :attr:`model` and the record of the run.

    Construct it with ``model=`` (a :class:`~dscaledgd.models.LowRank`,
    :class:`~dscaledgd.models.RobustLowRank` or
    :class:`~dscaledgd.models.Tucker`), or, for a matrix fit, with
    ``factors=`` (plus ``offsets=``, ``ids=`` and, for robust PCA,
    ``sparse=``), which builds the model. Every other field is keyword-only.

    Attributes
    ----------
    model : LowRank, RobustLowRank or Tucker
        What the fit is: predict, rmse, the factors (and the core or the
        sparse component). The attributes below that describe the fit
        delegate to it.
    factors : tuple of dask.array.Array
        ``(L, R)``, or ``(L,)`` for a symmetric (PSD) fit ``X = L Lᵀ``; one
        ``U_k`` per mode for a Tucker fit. On a client that outlives the run
        (``client=``, or the active default client) they are backed by the
        worker-held blocks: compute them with that client
        (``with client.as_current():``) or use :meth:`compute_factors`.
        Otherwise they wrap gathered NumPy arrays.
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
        Matrix fits: the centring, ``mean`` (μ) and ``row_bias``/``col_bias``
        arrays (or ``None``). The model is ``μ + b_i + c_j + <L_i, R_j>``.
    ids : dict
        Matrix fits: original row/column ids when the observations came from
        a table import; ``predict(..., by="id")`` uses them.
    sparse : dask.array.Array or None
        The sparse component ``S`` of a robust PCA fit, else ``None``.
    core : ndarray
        Tucker fits: the core (an ``AttributeError`` for matrix fits).
    """

    model: LowRank | Tucker
    status: str
    n_iter: int
    converged: bool
    message: str
    history: dict
    params: dict
    info: dict = field(default_factory=dict)
    #: the distributed client holding futures-backed factors (not serialised)
    _client: object = field(default=None, repr=False, compare=False)

    def __init__(
        self,
        model: LowRank | Tucker | None = None,
        *,
        status: str,
        n_iter: int,
        converged: bool,
        message: str,
        history: dict,
        params: dict,
        info: dict | None = None,
        factors: tuple | None = None,
        offsets: dict | None = None,
        ids: dict | None = None,
        sparse=None,
        _client=None,
    ):
        if model is None:
            if factors is None:
                raise TypeError("SolveResult needs model= (or the factors= of a matrix fit).")
            model = LowRank(factors, offsets, ids, _client=_client)
        elif factors is not None or offsets is not None or ids is not None:
            raise TypeError("SolveResult takes either model= or factors=/offsets=/ids=, not both.")
        elif not isinstance(model, LowRank | Tucker):
            raise TypeError(
                f"SolveResult's model must be a LowRank, RobustLowRank or Tucker; got "
                f"{type(model).__name__}. Pass factors=... for a matrix fit."
            )
        if sparse is not None:
            if not isinstance(model, LowRank):
                raise TypeError("sparse= belongs to a matrix fit (RobustLowRank), not a Tucker.")
            model = model.with_sparse(sparse)
        model = replace_client(model, _client)
        for name, value in (
            ("model", model),
            ("status", status),
            ("n_iter", n_iter),
            ("converged", converged),
            ("message", message),
            ("history", history),
            ("params", params),
            ("info", {} if info is None else info),
            ("_client", model._client),
        ):
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------- access
    def _model_as(self, kind: type, attr: str):
        """The model, when it is a ``kind`` (:class:`LowRank` or :class:`Tucker`): ``attr``
        belongs to that kind of fit; else an AttributeError saying where this fit's are."""
        if isinstance(self.model, kind):
            return self.model
        this, owner, theirs = (
            (self.model.kind, "matrix", "res.factors (one per mode) and its core res.core")
            if kind is LowRank
            else (f"{self.model.kind} (matrix)", "Tucker", "res.L and res.R")
        )
        raise AttributeError(
            f"This is a {this} fit: it has no {attr!r} (that belongs to {owner} fits). "
            f"Its factors are {theirs}."
        )

    @property
    def factors(self) -> tuple:
        """The factors: ``(L, R)`` or ``(L,)``; ``(U_1, …, U_d)`` for Tucker (dask arrays)."""
        return self.model.factors

    @property
    def L(self):
        """Left factor, shape ``(n1, rank)`` (dask array)."""
        return self._model_as(LowRank, "L").L

    @property
    def R(self):
        """Right factor, shape ``(n2, rank)``; the same array as ``L`` when symmetric."""
        return self._model_as(LowRank, "R").R

    @property
    def offsets(self) -> dict:
        """The centring of a matrix fit: ``{"mean": μ, "row_bias": b, "col_bias": c}``."""
        return self._model_as(LowRank, "offsets").offsets

    @property
    def ids(self) -> dict:
        """``{"row": ids or None, "col": ids or None}``: original ids of an imported table."""
        return self._model_as(LowRank, "ids").ids

    @property
    def sparse(self):
        """Sparse component of :func:`dscaledgd.rpca` (dask array; ``None`` otherwise)."""
        return getattr(self.model, "sparse", None)

    @property
    def S(self):
        """Sparse component of :func:`dscaledgd.rpca` (dask array; ``None`` otherwise)."""
        return self.sparse

    @property
    def symmetric(self) -> bool:
        """A symmetric (PSD) matrix fit ``X = L Lᵀ`` (``False`` for a Tucker fit)."""
        return bool(getattr(self.model, "symmetric", False))

    @property
    def core(self) -> np.ndarray:
        """The core of a Tucker fit, shape ``(r_1, ..., r_d)`` (NumPy)."""
        return self._model_as(Tucker, "core").core

    def to_tensor(self, chunks=None):
        """The fitted tensor of a Tucker fit as a lazy Dask array (:meth:`Tucker.to_tensor`)."""
        return self._model_as(Tucker, "to_tensor").to_tensor(chunks)

    def to_xarray(self, chunks=None):
        """The fitted tensor of a Tucker fit as a lazy ``xarray.DataArray`` with the input's
        dims (:meth:`Tucker.to_xarray`)."""
        return self._model_as(Tucker, "to_xarray").to_xarray(chunks)

    def to_tensorly(self):
        """A Tucker fit as a ``tensorly`` TuckerTensor (:meth:`Tucker.to_tensorly`)."""
        return self._model_as(Tucker, "to_tensorly").to_tensorly()

    def to_pyttb(self):
        """A Tucker fit as a ``pyttb.ttensor`` (gathers the factors; needs pyttb)."""
        try:
            import pyttb
        except ImportError as exc:
            raise ImportError(
                "to_pyttb needs pyttb, which is not installed: pip install pyttb."
            ) from exc
        m = self._model_as(Tucker, "to_pyttb")
        return pyttb.ttensor(pyttb.tensor(m.core.copy()), [np.asarray(U) for U in
                                                           m.compute_factors()])  # fmt: skip

    def to_nifti(self, path, like, *, part: str = "low_rank", overwrite: bool = False) -> str:
        """Write the low-rank part (``part="low_rank"``) or, for tensor RPCA, the sparse part
        (``"sparse"``) of a Tucker fit as NIfTI with ``like``'s affine and header (``like``:
        the source image's path, or a nibabel image). Written as float32, atomically.
        """
        from .storage.volumes import write_nifti

        if part not in ("low_rank", "sparse"):
            raise ValueError(f"part must be 'low_rank' or 'sparse'; got {part!r}.")
        if part == "sparse" and self.sparse is None:
            raise ValueError(
                "part='sparse' needs a tensor RPCA result; this fit has no sparse part."
            )
        X = self.to_tensor() if part == "low_rank" else self.sparse
        return write_nifti(X, path, like, overwrite=overwrite)

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
        if isinstance(self.model, Tucker):
            parts.append(f"core={self.model.ranks}")
        parts.append(f"factors={[tuple(F.shape) for F in self.factors]}")
        if isinstance(self.model, RobustLowRank):
            parts.append(f"sparse={tuple(self.model.sparse.shape)}")
        return f"SolveResult({', '.join(parts)})"

    def _repr_html_(self) -> str:
        """Jupyter's view: the outcome, the fitted parts with their chunks, the loss curve."""
        return result_html(self)

    # ------------------------------------------------------------ compute
    def compute_factors(self) -> tuple:
        """The factors as NumPy arrays (uses the run's client for futures-backed ones)."""
        return self.model.compute_factors()

    def compute_sparse(self) -> np.ndarray | None:
        """The sparse component of :func:`dscaledgd.rpca` as a NumPy array (run's client)."""
        if not isinstance(self.model, RobustLowRank):
            return None
        return self.model.compute_sparse()

    def predict(self, *args, **kwargs) -> np.ndarray:
        """Entries of the fitted model.

        Matrix fits: ``predict(rows, cols, *, by="index", cold_start="nan")``
        (:meth:`LowRank.predict <dscaledgd.models.LowRank.predict>`). Tucker
        fits: ``predict(indices)`` with an ``(m, d)`` integer array
        (:meth:`Tucker.predict <dscaledgd.models.Tucker.predict>`).
        """
        return self.model.predict(*args, **kwargs)

    def rmse(self, obs) -> float:
        """Root-mean-square error of the fit on the observed entries of ``obs``.

        ``obs`` is an :class:`~dscaledgd.Observations` for a matrix fit and a
        ``TensorObservations`` for a Tucker fit.
        """
        return self.model.rmse(obs)

    # -------------------------------------------------------------- store
    def to_zarr(self, path: str | os.PathLike, overwrite: bool = False) -> str:
        """Write the model, history and metadata to a Zarr v3 group (atomic publish).

        The group is written under a temporary sibling name and renamed into
        place when complete, so a crash never leaves a half-written result at
        ``path``. Every array carries a CRC-32C checksum per chunk and every
        chunk is written (even one equal to the fill value), so
        :func:`load_result` can tell a complete store from a truncated,
        garbled or partly deleted one. The store's ``model`` attr says which
        model it holds (``"lowrank"``, ``"robust"`` with ``S``, ``"tucker"``
        with the core and ``U0 … U{d-1}``).
        """
        parts = self.model._parts()
        return write_result(
            os.fspath(path),
            kind=parts["kind"],
            factors=parts["factors"],
            history=self.history,
            arrays=parts.get("arrays", {}),
            core=parts.get("core"),
            sparse=parts.get("sparse"),
            dims=parts.get("dims"),
            meta={
                "status": self.status,
                "n_iter": self.n_iter,
                "converged": self.converged,
                "message": self.message,
                "params": self.params,
                "info": self.info,
                "mean": parts.get("mean", 0.0),
            },
            overwrite=overwrite,
        )


def load_result(path: str | os.PathLike) -> SolveResult:
    """Open a result written by :meth:`SolveResult.to_zarr`, validated (factors stay lazy).

    The store is refused (:class:`~dscaledgd.InputDataError` naming the store,
    the array and the fix) when its attrs are incomplete, when an array it
    names is missing, or when a chunk of any array is missing or has the
    wrong size. History, biases, id maps and a Tucker core are read and their
    checksums verified here; each chunk of a factor (or of ``S``) has its
    checksum verified when it is read, and a failed read raises
    ``InputDataError`` too (naming the chunk). The model is the one the
    store's ``model`` attr names; stores without it (written before models)
    hold a :class:`~dscaledgd.models.LowRank`. Results written before
    checksums (format 1) still load.
    """
    kw = read_result(os.fspath(path), STATUSES)
    model = model_from_parts(**kw.pop("model"))
    return SolveResult(model, **kw)
