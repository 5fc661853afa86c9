"""scikit-learn-style estimators: thin wrappers over :mod:`dscaledgd.api`.

``__init__`` only stores parameters; ``fit`` calls the function and sets the
fitted attributes (ending in ``_``). Every constructor parameter is forwarded
to the function (a test checks this): the constructor is made from the
function's signature (:func:`_constructor`), so the two cannot drift apart.
A method that needs a fit (``predict``, ``score``, ``transform``) raises
:class:`~dscaledgd.NotFittedError` before ``fit``, with scikit-learn's message.
"""

from __future__ import annotations

import inspect

import numpy as np

from . import api
from .exceptions import InvalidParameterError, NotFittedError

__all__ = [
    "MatrixCompletion", "MatrixSensing", "RobustPCA", "TuckerCompletion", "TensorRobustPCA",
    "ScaledSGD",
]  # fmt: skip


def _constructor(cls, func: str, defaults: dict):
    """``__init__(self, rank=…, *, <keyword-only parameters of api.<func>>)``.

    The function's positional parameters before its last one are the data
    (``fit``'s arguments); the last one (``rank``/``ranks``) becomes the
    estimator's first parameter. Its default, and those of the function's
    parameters that have none, come from ``defaults``. The body stores every
    parameter unchanged (scikit-learn rule); ``__signature__`` lists them, as
    ``inspect.signature`` (scikit-learn's ``get_params``) reads them.
    """
    P = inspect.Parameter
    params = inspect.signature(getattr(api, func)).parameters.values()
    rank = [p for p in params if p.kind is P.POSITIONAL_OR_KEYWORD][-1]
    public = [rank] + [p for p in params if p.kind is P.KEYWORD_ONLY and p.name[0] != "_"]
    sig = inspect.Signature(
        [P("self", P.POSITIONAL_OR_KEYWORD)]
        + [p.replace(default=defaults.get(p.name, p.default)) for p in public]
    )

    def __init__(self, *args, **kwargs):
        try:
            bound = sig.bind(self, *args, **kwargs)
        except TypeError as exc:  # name the estimator, as a written __init__ would
            raise TypeError(f"{type(self).__name__}(): {exc}") from None
        bound.apply_defaults()
        for name, value in list(bound.arguments.items())[1:]:
            setattr(self, name, value)

    __init__.__signature__ = sig
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__module__ = cls.__module__
    __init__.__doc__ = f"Store the parameters of :func:`dscaledgd.{func}` unchanged."
    return __init__


class _Estimator:
    """Base of the estimators: ``class E(_Estimator, func="complete", defaults={"rank": 10})``
    wraps ``api.complete`` (looked up at each fit), with a generated ``__init__``."""

    _func: str  # the name of the api function wrapped

    def __init_subclass__(cls, *, func: str, defaults: dict, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._func = func
        cls.__init__ = _constructor(cls, func, defaults)

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params):
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise ValueError(
                    f"Invalid parameter {k!r} for {type(self).__name__}. Valid: {sorted(valid)}."
                )
            setattr(self, k, v)
        return self

    @classmethod
    def _param_names(cls) -> list:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def _check_fitted(self) -> None:
        """Raise :class:`~dscaledgd.NotFittedError` (scikit-learn's wording) before ``fit``."""
        if not hasattr(self, "result_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )

    def _fit(self, *data):
        """Call the api function on ``data`` with every parameter; set the fitted attributes."""
        res = getattr(api, self._func)(*data, **self.get_params())
        self.result_ = res
        self.factors_ = res.factors
        self.n_iter_ = res.n_iter
        self.history_ = res.history
        self.converged_ = res.converged
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class MatrixCompletion(_Estimator, func="complete", defaults={"rank": 10}):
    """Low-rank matrix completion with ScaledGD (see :func:`dscaledgd.complete`).

    Parameters are those of :func:`dscaledgd.complete`.

    Attributes
    ----------
    L_, R_ : dask.array.Array
        Fitted factors (``R_`` is ``L_`` when symmetric).
    factors_ : tuple
    n_iter_ : int
    history_ : dict of ndarray
    converged_ : bool
    result_ : SolveResult

    Examples
    --------
    >>> import dscaledgd as dsg
    >>> obs, _ = dsg.datasets.make_completion((60, 50), rank=2, p=0.5, random_state=0)
    >>> est = dsg.MatrixCompletion(rank=2, scheduler="sync", random_state=0).fit(obs)
    >>> est.converged_
    True
    """

    def fit(self, obs, y=None):
        """Fit to ``obs`` (Observations or a store path). ``y`` is ignored."""
        self._fit(obs)
        self.L_ = self.result_.L
        self.R_ = self.result_.R
        return self

    def predict(self, rows, cols):
        """Fitted entries at ``(rows, cols)``."""
        self._check_fitted()
        return self.result_.predict(rows, cols)

    def score(self, obs) -> float:
        """Negative RMSE on ``obs`` (greater is better, scikit-learn convention)."""
        self._check_fitted()
        return -self.result_.rmse(obs)


class MatrixSensing(_Estimator, func="sense", defaults={"rank": 10}):
    """Matrix sensing / robust l1 recovery (see :func:`dscaledgd.sense`).

    ``fit(y, operator)``; parameters are those of :func:`dscaledgd.sense`.

    Attributes
    ----------
    factors_, n_iter_, history_, converged_, result_
    """

    def fit(self, y, operator):
        """Fit to measurements ``y`` of ``operator``."""
        return self._fit(y, operator)


class RobustPCA(_Estimator, func="rpca", defaults={"rank": 10}):
    """Robust PCA ``Y ≈ L Rᵀ + S`` (see :func:`dscaledgd.rpca`).

    Parameters are those of :func:`dscaledgd.rpca`: by default the adaptive
    sparsifier, which needs no outlier fraction; ``alpha=…`` (or
    ``sparsifier="fraction"``) gives the papers' ``T_α``.

    Attributes
    ----------
    L_, R_, S_ : dask arrays
    factors_, n_iter_, history_, converged_, result_
    """

    def fit(self, Y, y=None):
        """Split ``Y`` (``y`` is ignored)."""
        self._fit(Y)
        self.L_, self.R_, self.S_ = self.result_.L, self.result_.R, self.result_.S
        return self

    def transform(self, Y=None):
        """The low-rank part ``L Rᵀ`` (dask array)."""
        self._check_fitted()
        return self.L_ @ self.R_.T


class TuckerCompletion(_Estimator, func="tucker_complete", defaults={"ranks": 5}):
    """Tucker tensor completion with ScaledGD (see :func:`dscaledgd.tucker_complete`).

    Parameters are those of :func:`dscaledgd.tucker_complete`.

    Attributes
    ----------
    core_ : ndarray
    factors_ : tuple of dask arrays
    n_iter_, history_, converged_, result_

    Examples
    --------
    >>> import dscaledgd as dsg
    >>> core, U = dsg.datasets.tucker_instance((20, 18, 16), (2, 2, 2), random_state=0)
    >>> X = dsg.datasets.tucker_tensor(core, U)
    >>> seen = dsg.datasets.bernoulli_mask(X.shape, 0.4, random_state=0)
    >>> T = dsg.TensorObservations.from_array(X, mask=seen)
    >>> est = dsg.TuckerCompletion(ranks=(2, 2, 2), scheduler="sync", random_state=0).fit(T)
    >>> est.converged_, est.core_.shape
    (True, (2, 2, 2))
    """

    def fit(self, T, y=None):
        """Fit to ``T`` (TensorObservations, array or path). ``y`` is ignored."""
        self._fit(T)
        self.core_ = self.result_.core
        return self

    def predict(self, indices):
        """Fitted entries at ``indices`` (an ``(m, d)`` integer array)."""
        self._check_fitted()
        return self.result_.predict(indices)

    def transform(self, T=None):
        """The completed tensor (lazy dask array)."""
        self._check_fitted()
        return self.result_.to_tensor()

    def score(self, T) -> float:
        """Negative RMSE on the observed entries of ``T``."""
        self._check_fitted()
        return -self.result_.rmse(T)


class TensorRobustPCA(_Estimator, func="tensor_rpca", defaults={"ranks": 5}):
    """Tensor robust PCA with ScaledGD (see :func:`dscaledgd.tensor_rpca`).

    Parameters are those of :func:`dscaledgd.tensor_rpca`.

    Attributes
    ----------
    core_ : ndarray
    factors_ : tuple of dask arrays
    sparse_ : dask array, the sparse part ``S``
    n_iter_, history_, converged_, result_

    Examples
    --------
    >>> import numpy as np, dscaledgd as dsg
    >>> core, U = dsg.datasets.tucker_instance((20, 18, 16), (2, 2, 2), random_state=0)
    >>> X = dsg.datasets.tucker_tensor(core, U)
    >>> rng = np.random.default_rng(0)
    >>> Y = X + np.where(rng.random(X.shape) < 0.1, rng.uniform(-5, 5, X.shape), 0.0)
    >>> est = dsg.TensorRobustPCA(ranks=(2, 2, 2), scheduler="sync", random_state=0).fit(Y)
    >>> est.core_.shape, est.sparse_.shape
    ((2, 2, 2), (20, 18, 16))
    """

    def fit(self, Y, y=None):
        """Fit to ``Y`` (TensorObservations, array or path). ``y`` is ignored."""
        self._fit(Y)
        self.core_ = self.result_.core
        self.sparse_ = self.result_.sparse
        return self

    def transform(self, Y=None):
        """The low-rank part (lazy dask array)."""
        self._check_fitted()
        return self.result_.to_tensor()


class ScaledSGD(_Estimator, func="scaled_sgd", defaults={"rank": 3}):
    """Online ScaledSGD for ``M ≈ X Xᵀ`` (see :func:`dscaledgd.scaled_sgd`).

    Parameters are those of :func:`dscaledgd.scaled_sgd`. ``fit`` runs the
    epochs; ``partial_fit`` applies one batch once, keeping ``X`` and ``P``
    between calls (the first call starts them as ``fit`` does): in process in
    the batch's order, or, where ``fit`` would run the stratified epochs (a
    cluster named, ``n_blocks``, streamed samples), as one stratified pass on
    the workers.

    Attributes
    ----------
    X_ : ndarray, shape (d, rank)
    P_ : ndarray, shape (rank, rank)
        The carried ``(XᵀX)⁻¹`` (the identity for ``method="sgd"``).
    history_ : dict
        Per epoch (``fit``) or per batch (``partial_fit``): ``loss`` (the
        objective on the samples just used), and ``auc`` for BPR.
    partial_info_ : dict
        Where the last ``partial_fit`` batch ran (``executor``; for a stratified
        pass also ``n_blocks``, ``samples`` and ``syncs``).
    n_iter_, converged_, result_

    Examples
    --------
    >>> import numpy as np, dscaledgd as dsg
    >>> rng = np.random.default_rng(0)
    >>> Z = rng.standard_normal((15, 2))
    >>> i, j = np.indices((15, 15)).reshape(2, -1)
    >>> pairs = (i, j, (Z @ Z.T)[i, j])
    >>> est = dsg.ScaledSGD(rank=2, epochs=60, tol=1e-20, random_state=0).fit(pairs)
    >>> est.X_.shape, bool(est.score(pairs) > -1e-6)
    ((15, 2), True)
    """

    def fit(self, samples, y=None):
        """Run the epochs on ``samples`` (pairs or triplets, see :func:`scaled_sgd`)."""
        self._fit(samples)
        self.X_ = np.asarray(self.result_.L)
        self.P_ = np.asarray(self.result_.info["preconditioner"])
        self._config = (self.rank, self.loss, self.method)
        return self

    def partial_fit(self, samples, y=None):
        """Apply ``samples`` once to the current ``X_`` and ``P_``: in process in their
        order, or, with a cluster named (``client``/``address``/``scheduler``),
        ``n_blocks`` or streamed samples (Dask, Zarr, CSV/Parquet), as one stratified
        pass on the workers (see :func:`dscaledgd.api.scaled_sgd.partial_batch`)."""
        from .api.scaled_sgd import partial_batch

        func = "ScaledSGD.partial_fit"
        config = (self.rank, self.loss, self.method)
        fitted = hasattr(self, "X_")
        if fitted and config != self._config:
            raise InvalidParameterError(
                f"{func}: rank, loss and method must stay those of the first call "
                f"{self._config}; got {config}. Start a new estimator to change them."
            )
        if not fitted or not hasattr(self, "_rng"):
            self._rng = _rng(self.random_state)
        out = partial_batch(
            func, samples, (self.X_, self.P_) if fitted else None, rank=self.rank,
            loss=self.loss, method=self.method, step_size=self.step_size,
            n_rows=self.X_.shape[0] if fitted else self.n_rows, rng=self._rng,
            checks=(self.epochs, self.tol, self.reinvert_every), client=self.client,
            address=self.address, scheduler=self.scheduler, n_blocks=self.n_blocks,
            sync_every=self.sync_every, columns=self.columns,
        )  # fmt: skip
        if not fitted:
            self.X_, self.P_ = out["X"], out["P"]
            self._config, self.history_, self.n_iter_ = config, {"loss": []}, 0
        # after fit the history holds arrays (one entry per epoch): batches extend them
        self.history_ = {k: v if isinstance(v, list) else np.asarray(v).tolist()
                         for k, v in self.history_.items()}  # fmt: skip
        self.history_["loss"].append(out["loss"])
        self.history_.setdefault("step_size", []).append(out["lr"])
        for k, v in out["extra"].items():
            self.history_.setdefault(k, []).append(v)
        self.n_iter_ += 1
        self.converged_ = bool(out["loss"] <= self.tol)
        self.partial_info_ = out["info"]
        return self

    def score(self, samples) -> float:
        """AUC on test triplets (BPR); otherwise the negative RMSE of the predicted values
        (``x_i·x_j``, or the squared distance for EDM) against ``y`` (higher is better)."""
        from .api.scaled_sgd import check_samples
        from .problems import pairwise as pw

        self._check_fitted()
        I, J, K, Y, _ = check_samples("ScaledSGD.score", samples, self.loss, self.X_.shape[0])
        if self.loss == "bpr":
            return pw.auc(I, J, K, Y, self.X_)
        return -pw.rmse(I, J, K, Y, self.X_, self.loss)


def _rng(random_state):
    from ._validation import resolve_rng

    return resolve_rng(random_state)
