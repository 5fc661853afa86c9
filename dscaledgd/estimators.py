"""scikit-learn-style estimators: thin wrappers over :mod:`dscaledgd.api`.

``__init__`` only stores parameters; ``fit`` calls the function and sets the
fitted attributes (ending in ``_``). Every constructor parameter is forwarded
to the function (a test checks this). A method that needs a fit (``predict``,
``score``, ``transform``) raises :class:`~dscaledgd.NotFittedError` before
``fit``, with scikit-learn's message.
"""

from __future__ import annotations

import inspect

from . import api
from .exceptions import NotFittedError

__all__ = ["MatrixCompletion", "MatrixSensing", "RobustPCA"]


class _Estimator:
    _func = None  # the api function wrapped
    _positional = ()  # data arguments of the function, not parameters

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

    def _fit_result(self, res):
        self.result_ = res
        self.factors_ = res.factors
        self.n_iter_ = res.n_iter
        self.history_ = res.history
        self.converged_ = res.converged
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class MatrixCompletion(_Estimator):
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

    def __init__(
        self,
        rank: int = 10,
        *,
        method: str = "scaledgd",
        loss: str = "l2",
        symmetric: bool = False,
        damping=None,
        init: str = "spectral",
        init_scale: float = 1e-3,
        step_size=None,
        reg: float = 0.0,
        center=False,
        validation=None,
        max_iter: int = 500,
        tol: float = 1e-10,
        stall_tol: float = 1e-8,
        patience: int = 10,
        random_state=None,
        client=None,
        address=None,
        scheduler=None,
        cache: str = "auto",
        init_power_iter: int = 4,
        callback=None,
        progress=None,
    ):
        self.rank = rank
        self.method = method
        self.loss = loss
        self.symmetric = symmetric
        self.damping = damping
        self.init = init
        self.init_scale = init_scale
        self.step_size = step_size
        self.reg = reg
        self.center = center
        self.validation = validation
        self.max_iter = max_iter
        self.tol = tol
        self.stall_tol = stall_tol
        self.patience = patience
        self.random_state = random_state
        self.client = client
        self.address = address
        self.scheduler = scheduler
        self.cache = cache
        self.init_power_iter = init_power_iter
        self.callback = callback
        self.progress = progress

    def fit(self, obs, y=None):
        """Fit to ``obs`` (Observations or a store path). ``y`` is ignored."""
        self._fit_result(api.complete(obs, **self.get_params()))
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


class MatrixSensing(_Estimator):
    """Matrix sensing / robust l1 recovery (see :func:`dscaledgd.sense`).

    ``fit(y, operator)``; parameters are those of :func:`dscaledgd.sense`.

    Attributes
    ----------
    factors_, n_iter_, history_, converged_, result_
    """

    def __init__(
        self,
        rank: int = 10,
        *,
        loss: str = "l2",
        symmetric: bool = False,
        step=None,
        f_star=None,
        outlier_fraction=None,
        method: str = "scaledgd",
        damping=None,
        init="spectral",
        init_scale: float = 1e-3,
        shape=None,
        max_iter: int = 500,
        tol: float = 1e-10,
        stall_tol: float = 1e-8,
        patience: int = 10,
        random_state=None,
        client=None,
        address=None,
        scheduler=None,
        cache: str = "auto",
        callback=None,
        progress=None,
    ):
        self.rank = rank
        self.loss = loss
        self.symmetric = symmetric
        self.step = step
        self.f_star = f_star
        self.outlier_fraction = outlier_fraction
        self.method = method
        self.damping = damping
        self.init = init
        self.init_scale = init_scale
        self.shape = shape
        self.max_iter = max_iter
        self.tol = tol
        self.stall_tol = stall_tol
        self.patience = patience
        self.random_state = random_state
        self.client = client
        self.address = address
        self.scheduler = scheduler
        self.cache = cache
        self.callback = callback
        self.progress = progress

    def fit(self, y, operator):
        """Fit to measurements ``y`` of ``operator``."""
        return self._fit_result(api.sense(y, operator, **self.get_params()))


class RobustPCA(_Estimator):
    """Robust PCA ``Y ≈ L Rᵀ + S`` (see :func:`dscaledgd.rpca`).

    Attributes
    ----------
    L_, R_, S_ : dask arrays
    factors_, n_iter_, history_, converged_, result_
    """

    def __init__(
        self,
        rank: int = 10,
        *,
        alpha: float = 0.1,
        mask=None,
        method: str = "scaledgd",
        damping=None,
        init="spectral",
        step_size=None,
        grid=None,
        max_iter: int = 500,
        tol: float = 1e-10,
        stall_tol: float = 1e-8,
        patience: int = 10,
        init_power_iter: int = 4,
        random_state=None,
        client=None,
        address=None,
        scheduler=None,
        callback=None,
        progress=None,
    ):
        self.rank = rank
        self.alpha = alpha
        self.mask = mask
        self.method = method
        self.damping = damping
        self.init = init
        self.step_size = step_size
        self.grid = grid
        self.max_iter = max_iter
        self.tol = tol
        self.stall_tol = stall_tol
        self.patience = patience
        self.init_power_iter = init_power_iter
        self.random_state = random_state
        self.client = client
        self.address = address
        self.scheduler = scheduler
        self.callback = callback
        self.progress = progress

    def fit(self, Y, y=None):
        """Split ``Y`` (``y`` is ignored)."""
        self._fit_result(api.rpca(Y, **self.get_params()))
        self.L_, self.R_, self.S_ = self.result_.L, self.result_.R, self.result_.S
        return self

    def transform(self, Y=None):
        """The low-rank part ``L Rᵀ`` (dask array)."""
        self._check_fitted()
        return self.L_ @ self.R_.T
