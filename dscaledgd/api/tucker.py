"""``tucker_complete``: Tucker tensor completion with ScaledGD (ALGORITHMS.md §7)."""

from __future__ import annotations

import os

import numpy as np

from .._validation import check_choice, resolve_rng
from ..engine.cluster import executor_for
from ..engine.tucker import TuckerEngine
from ..exceptions import InputDataError, InvalidParameterError
from ..problems.spec import State
from ..problems.tucker import breve_gram
from ..result import SolveResult
from ..storage.tensors import TensorObservations
from ._core import (
    METHODS,
    collect_params,
    refuse_auto,
    solve,
    warn_unobserved,
)
from ._scale import check_values

__all__ = ["tucker_complete", "as_tensor", "check_ranks"]

INITS = ("spectral", "random")
CACHES = ("auto", "memory", "stream")


def as_tensor(T, mask, func: str, name: str = "T") -> TensorObservations:
    """``T`` as :class:`TensorObservations` (arrays, paths and stores are imported)."""
    if isinstance(T, TensorObservations):
        if mask is not None:
            raise InvalidParameterError(
                f"The 'mask' parameter of {func} applies to an array input; '{name}' is already "
                "a TensorObservations (its missing entries are fixed). Pass mask=None, or pass "
                "the array and the mask."
            )
        return T
    if isinstance(T, str | os.PathLike):
        path = os.fspath(T)
        if os.path.isdir(path) and os.path.exists(os.path.join(path, "zarr.json")):
            try:
                return TensorObservations.open_zarr(path)
            except InputDataError:
                if mask is None and _is_tensor_store(path):
                    raise
        return TensorObservations.from_array(path, mask)
    if hasattr(T, "shape") and hasattr(T, "dtype"):
        return TensorObservations.from_array(T, mask)
    raise InvalidParameterError(
        f"The '{name}' parameter of {func} must be a TensorObservations, an array (NumPy, "
        f"Dask, Zarr, xarray) or a path (.npy, .npz, Zarr). Got {type(T).__name__}."
    )


def _is_tensor_store(path: str) -> bool:
    import json

    try:
        with open(os.path.join(path, "zarr.json")) as f:
            attrs = json.load(f).get("attributes", {})
    except (OSError, ValueError):
        return False
    return "dscaledgd" in attrs


def check_ranks(func: str, ranks, shape) -> tuple[int, ...]:
    """Tucker ranks: one int per mode, ``1 ≤ r_k ≤ n_k`` and ``r_k ≤ Π_{j≠k} r_j``."""
    d = len(shape)
    refuse_auto(func, "ranks", ranks, f"an int or a sequence of {d} ints")
    if isinstance(ranks, int | np.integer) and not isinstance(ranks, bool):
        ranks = (int(ranks),) * d
    ok = isinstance(ranks, tuple | list) and all(
        isinstance(r, int | np.integer) and not isinstance(r, bool) for r in ranks
    )
    if not ok or len(ranks) != d:
        raise InvalidParameterError(
            f"The 'ranks' parameter of {func} must be an int or a sequence of {d} ints (one per "
            f"mode of the order-{d} tensor of shape {tuple(shape)}). Got {ranks!r}."
        )
    ranks = tuple(int(r) for r in ranks)
    for k, (r, n) in enumerate(zip(ranks, shape)):
        if not 1 <= r <= n:
            raise InvalidParameterError(
                f"The 'ranks' parameter of {func} must have 1 <= ranks[{k}] <= {n} (the size of "
                f"mode {k}). Got ranks[{k}] = {r}."
            )
    for k, r in enumerate(ranks):  # once every rank is in range
        others = int(np.prod([ranks[j] for j in range(d) if j != k]))
        if r > others:
            raise InvalidParameterError(
                f"The 'ranks' parameter of {func} has ranks[{k}] = {r} above the product of the "
                f"other ranks ({others}): a Tucker core cannot have that mode-{k} rank. Lower "
                f"ranks[{k}] to at most {others} or raise the others. Got {ranks}."
            )
    return ranks


def _check_init(func: str, init, ranks, shape):
    if isinstance(init, str):
        return check_choice(func, "init", init, INITS)
    if hasattr(init, "core") and hasattr(init, "factors"):  # a Tucker model, a TuckerTensor
        factors = init.compute_factors() if hasattr(init, "compute_factors") else init.factors
        init = (np.asarray(init.core), [np.asarray(U) for U in factors])
    ok = isinstance(init, tuple | list) and len(init) == 2
    if ok:
        core = np.asarray(init[0], dtype=np.float64)
        factors = [np.asarray(U, dtype=np.float64) for U in init[1]]
        want = [(n, r) for n, r in zip(shape, ranks)]
        ok = (
            core.shape == ranks
            and [U.shape for U in factors] == want
            and np.all(np.isfinite(core))
            and all(np.all(np.isfinite(U)) for U in factors)
        )
    if not ok:
        raise InvalidParameterError(
            f"The 'init' parameter of {func} must be one of {{'spectral', 'random'}} or a warm "
            "start (a (core, factors) pair, a Tucker model or a TensorLy TuckerTensor): a "
            f"finite core of shape {ranks} and factors of shapes "
            f"{[(n, r) for n, r in zip(shape, ranks)]}. Got {_describe(init)}."
        )
    return core, factors


def _describe(init) -> str:
    if isinstance(init, tuple | list) and len(init) == 2:
        try:
            return f"core {np.shape(init[0])}, factors {[np.shape(U) for U in init[1]]}"
        except TypeError:
            pass
    return type(init).__name__


def _warn_empty_slices(T: TensorObservations, func: str) -> None:
    named = [(f"mode-{k} slices", c) for k, c in enumerate(T.mode_counts)]
    note = (
        f"{func}: their factor rows get no gradient, so the completed tensor there comes "
        "from the initialisation only."
    )
    warn_unobserved(named, note)


def tucker_complete(
    T,
    ranks,
    *,
    mask=None,
    method: str = "scaledgd",
    init="spectral",
    step_size: float | None = None,
    validation=None,
    max_iter: int = 500,
    tol: float = 1e-10,
    stall_tol: float = 1e-8,
    patience: int = 10,
    random_state=None,
    client=None,
    address: str | None = None,
    scheduler: str | None = None,
    cache: str = "auto",
    init_power_iter: int = 4,
    callback=None,
    progress: bool | None = None,
    checkpoint=None,
    checkpoint_interval: int = 10,
    resume: bool | str = False,
) -> SolveResult:
    """Complete a partially observed tensor with a low Tucker rank model (ScaledGD).

    Fits ``X = S ×_1 U_1 ⋯ ×_d U_d`` to the observed entries by minimising
    ``(1/2p) ‖P_Ω(X) − Y‖²`` (ALGORITHMS.md §7), distributed over the
    tensor's chunks. ``Ŭ_k``, unfoldings and the full tensor are never formed.

    Parameters
    ----------
    T : TensorObservations, array-like or path
        The data: a :class:`~dscaledgd.TensorObservations`, a NumPy, Dask,
        Zarr or xarray array (NaN = missing unless ``mask`` is given), or the
        path of a ``.npy``/``.npz`` file or of a Zarr store.
    ranks : int or sequence of int
        Tucker ranks ``(r_1, …, r_d)``; ``1 ≤ r_k ≤ n_k`` and
        ``r_k ≤ Π_{j≠k} r_j``.
    mask : array-like of bool, optional
        ``True`` where ``T`` is observed (array input only).
    method : {"scaledgd", "gd"}
        ``"gd"``: the same loop with identity preconditioners (the factor step
        is ``η/σ̂²``, σ̂ the largest mode singular value of the start).
    init : {"spectral", "random"}, (core, factors), Tucker or TuckerTensor
        Spectral: per mode the top eigenvectors of ``G_k + (p−1) diag(G_k)``,
        ``G_k = M_k(Y) M_k(Y)ᵀ``, then ``S₀ = (Y/p) ×_k U_kᵀ``. Random:
        ``U_k ~ N(0, 1/n_k)``, ``S₀ ~ N(0, ‖Y‖²/(p Π r_k))``. Or a warm start:
        a pair, a fitted model (``res.model``) or a TensorLy ``TuckerTensor``.
    step_size : float, optional
        A fixed ``η`` (``0.3`` is the paper's). Default: ``η = 0.3``, halved
        whenever the safeguard sees a blow-up (it never diverges silently).
    validation : TensorObservations, optional
        Held-out entries: their RMSE is recorded every iteration, and the run
        stops early (best iterate) when it stops improving for ``patience``.
    max_iter, tol, stall_tol, patience : stopping rules, as for :func:`complete`.
    random_state : int or Generator, optional
    client, address, scheduler : where to run, as for :func:`complete`.
    cache : {"auto", "memory", "stream"}
        For store-backed tensors: keep chunks on the workers or stream them.
    init_power_iter : int
        Subspace iterations of the spectral initialisation, for the modes whose Gram
        is not formed exactly (see docs/tensors.md: long or densely filled modes).
    callback, progress : as for :func:`complete`.
    checkpoint, checkpoint_interval, resume : checkpoints, as for :func:`complete`.

    Returns
    -------
    SolveResult
        ``res.core`` (NumPy), ``res.factors`` (dask arrays ``n_k × r_k``),
        ``res.to_tensor()`` (lazy), ``res.predict(indices)``, ``res.rmse(T)``.

    Examples
    --------
    >>> import numpy as np, dscaledgd as dsg
    >>> core, U = dsg.datasets.tucker_instance((20, 18, 16), (2, 2, 2), random_state=0)
    >>> X = dsg.datasets.tucker_tensor(core, U)
    >>> Y = np.where(np.random.default_rng(0).random(X.shape) < 0.4, X, np.nan)
    >>> res = dsg.tucker_complete(Y, (2, 2, 2), scheduler="sync", random_state=0)
    >>> res.status
    'converged'
    """
    func = "tucker_complete"
    T = as_tensor(T, mask, func)
    ranks = check_ranks(func, ranks, T.shape)
    check_choice(func, "method", method, METHODS)
    check_choice(func, "cache", cache, CACHES)
    init = _check_init(func, init, ranks, T.shape)
    if validation is not None:
        validation = as_tensor(validation, None, func, "validation")
        if tuple(validation.shape) != tuple(T.shape):
            raise InvalidParameterError(
                f"The 'validation' parameter of {func} must have the shape of the training "
                f"tensor {tuple(T.shape)}. Got {tuple(validation.shape)}. Split one tensor "
                "with T.split(...)."
            )
    rank = int(max(ranks))
    params = collect_params(
        func, locals(), rank=rank, loss="l2", symmetric=False, damping=0.0, reg=0.0,
        init_scale=1.0,
    )  # fmt: skip
    params["init"] = init if isinstance(init, str) else "warm-start"
    params["ranks"] = list(ranks)
    _warn_empty_slices(T, func)
    if check_values(func, "the observed values", T, T.value_norm2, T.density, T.nnz):
        raise InputDataError(
            f"{func}: every observed value is 0, so the fit is X = 0 and no Tucker factors "
            "are defined. Check the data (or the mask)."
        )
    rng = resolve_rng(random_state)
    with executor_for(client, address=address, scheduler=scheduler) as ex:
        engine = TuckerEngine(T, ex, cache=cache)
        try:
            if validation is not None:
                engine.set_validation(validation)
            return solve(
                engine,
                rank,
                rng,
                params,
                desc=func,
                initial=lambda eng, seed: _initial(eng, ranks, init, seed, init_power_iter),
                make_model=lambda factors, p: _model(factors, p, T),
            )
        finally:
            engine.close()


def _initial(engine: TuckerEngine, ranks, init, seed: int, n_power: int):
    """``(state, values, init passes)``; ``values`` are the start's ``Ŭ_0ᵀŬ_0`` eigenvalues
    with the largest over all modes first (the GD step scale ``σ̂²``)."""
    passes = 0
    if isinstance(init, tuple):
        core, factors = init
        state = engine.from_numpy(factors, {"core": core})
    elif init == "spectral":
        factors, _ = engine.spectral(ranks, seed=seed, n_power=n_power)
        state = State(factors, {"core": engine.project(factors)})
        passes = 1 + engine.spectral_passes(n_power)
    else:
        rng = np.random.default_rng(seed)
        scale = np.sqrt(engine.value_norm2 / (engine.p * np.prod(ranks)))
        core = rng.standard_normal(ranks) * scale
        state = State(engine.random_factors(ranks, seed=seed + 1, scale=1.0), {"core": core})
    return state, _initial_values(engine, state), passes


def _initial_values(engine, state) -> np.ndarray:
    """The start's ``Ŭ_0ᵀŬ_0`` eigenvalues with the largest over all modes first."""
    FF = engine.grams(state)
    H = [breve_gram(state.params["core"], FF, k) for k in range(engine.d)]
    eig = [np.sort(np.linalg.eigvalsh(0.5 * (h + h.T)))[::-1] for h in H]
    top = max(float(e[0]) for e in eig)
    return np.concatenate([[top], eig[0][1:]])


def _model(factors, params, T):
    from ..models import Tucker

    # the engine may hold a factor as one block: chunk the result like the input
    factors = [F.rechunk({0: T.chunks[k], 1: -1}) for k, F in enumerate(factors)]
    return Tucker(params["core"], factors, dims=getattr(T, "dims", None))
