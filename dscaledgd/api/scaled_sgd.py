"""``scaled_sgd``: online preconditioned SGD for ``M ≈ X Xᵀ`` (ALGORITHMS.md §9).

This first version runs in the calling process on in-memory samples (NumPy
arrays); the per-sample kernel is Numba, ``nogil``. The distributed, streamed
version of issue 18 builds on the same kernel and epoch driver.
"""

from __future__ import annotations

import numpy as np

from .._validation import Interval, check_choice, check_param, resolve_rng
from ..exceptions import InputDataError, InvalidParameterError
from ..problems import pairwise as pw
from ..result import SolveResult
from ..solvers.driver import LoopConfig
from ..solvers.online import inverse_gram, run_epochs

__all__ = ["scaled_sgd", "check_samples", "METHODS_SGD", "initial_factors", "evaluator"]

METHODS_SGD = ("scaledsgd", "sgd")


def check_samples(func: str, samples, loss: str, n_rows=None):
    """``(I, J, K, Y, d)`` from ``(i, j, y)`` / ``(i, j, k, y)`` columns or an ``(m, 3)`` /
    ``(m, 4)`` array; indices checked against ``n_rows`` (default: the largest + 1)."""
    want = 4 if loss == "bpr" else 3
    what = "triplets (i, j, k, y)" if loss == "bpr" else "pairs (i, j, y)"
    if isinstance(samples, tuple | list):
        cols = [np.asarray(c) for c in samples]
    else:
        arr = np.asarray(samples)
        cols = [arr[:, c] for c in range(arr.shape[1])] if arr.ndim == 2 else [arr]
    if len(cols) != want or len({len(c) for c in cols}) != 1 or cols[0].ndim != 1:
        other = "pairs (i, j, y)" if loss == "bpr" else "triplets (i, j, k, y)"
        raise InputDataError(
            f"{func}: loss={loss!r} takes {what}: {want} columns of equal length. Got "
            f"{len(cols)} column(s) of lengths {[len(c) for c in cols]}"
            + (
                f" (that is {other}; pick the loss that matches)." if len(cols) == 7 - want else "."
            )  # fmt: skip
        )
    if len(cols[0]) == 0:
        raise InputDataError(f"{func}: no samples were given.")
    idx = cols[:-1]
    Y = np.asarray(cols[-1], dtype=np.float64)
    for name, c in zip("ijk", idx):
        ok = np.issubdtype(c.dtype, np.integer) or (
            np.issubdtype(c.dtype, np.floating)
            and np.all(np.isfinite(c))
            and np.all(c == np.round(c))
        )
        if not ok:
            raise InputDataError(f"{func}: the {name} indices must be integers. Got {c.dtype}.")
        if np.any(c < 0):
            raise InputDataError(
                f"{func}: a {name} index is negative ({int(c.min())}); indices start at 0."
            )
    d = int(max(int(c.max()) for c in idx)) + 1
    if n_rows is not None:
        if any(int(c.max()) >= n_rows for c in idx):
            raise InputDataError(
                f"{func}: an index is {d - 1}, outside the {n_rows} rows (n_rows={n_rows}). "
                "Indices run from 0 to n_rows - 1."
            )
        d = int(n_rows)
    if not np.all(np.isfinite(Y)):
        bad = int(np.flatnonzero(~np.isfinite(Y))[0])
        raise InputDataError(f"{func}: the value of sample {bad} is {Y[bad]}, not finite.")
    if loss == "bpr" and not np.all((Y == 0) | (Y == 1)):
        bad = int(np.flatnonzero((Y != 0) & (Y != 1))[0])
        raise InputDataError(
            f"{func}: loss='bpr' needs labels y in {{0, 1}} (1: j above k for i); sample "
            f"{bad} has y = {Y[bad]}."
        )
    I = np.ascontiguousarray(idx[0], dtype=np.int64)
    J = np.ascontiguousarray(idx[1], dtype=np.int64)
    K = np.ascontiguousarray(idx[2], dtype=np.int64) if loss == "bpr" else J
    return I, J, K, np.ascontiguousarray(Y), d


def initial_factors(d: int, rank: int, rng) -> np.ndarray:
    """The papers' start, ``X ~ N(0, 1)`` of shape ``(d, rank)``."""
    return rng.standard_normal((d, rank))


def evaluator(samples, loss: str):
    """``X ↦ (objective, extra)``: the mean per-sample objective, and for BPR the AUC."""
    I, J, K, Y = samples

    def evaluate(X):
        extra = {"auc": pw.auc(I, J, K, Y, X)} if loss == "bpr" else {}
        return pw.objective(I, J, K, Y, X, loss), extra

    return evaluate


def _check(func, rank, d, loss, method, step_size, epochs, tol, reinvert_every):
    check_choice(func, "loss", loss, pw.LOSSES)
    check_choice(func, "method", method, METHODS_SGD)
    for name, v, lo in (("rank", rank, 1), ("epochs", epochs, 0),
                        ("reinvert_every", reinvert_every, 1)):  # fmt: skip
        check_param(func, name, v, [Interval("int", lo, None)])
    if rank > d:
        raise InvalidParameterError(
            f"The 'rank' parameter of {func} must be at most the number of rows ({d}). Got {rank}."
        )
    check_param(func, "step_size", step_size, [Interval("real", 0, None, "neither")])
    check_param(func, "tol", tol, [Interval("real", 0, None, "left")])


def scaled_sgd(
    samples,
    rank: int,
    *,
    loss: str = "rmse",
    method: str = "scaledsgd",
    step_size: float = 0.3,
    epochs: int = 50,
    tol: float = 0.0,
    n_rows: int | None = None,
    shuffle: bool = True,
    reinvert_every: int = 1,
    random_state=None,
    callback=None,
    progress: bool | None = None,
) -> SolveResult:
    """Fit ``M ≈ X Xᵀ`` to samples with ScaledSGD (or plain SGD), epoch by epoch.

    Parameters
    ----------
    samples : tuple of arrays or array
        ``(i, j, y)`` pairs, or ``(i, j, k, y)`` triplets for ``loss="bpr"``:
        columns, or an ``(m, 3)`` / ``(m, 4)`` array. Indices start at 0.
    rank : int
    loss : {"rmse", "1bit", "edm", "bpr"}
        The per-sample losses of :mod:`dscaledgd.problems.pairwise`.
    method : {"scaledsgd", "sgd"}
        ``"scaledsgd"`` right-multiplies each row update by ``P = (XᵀX)⁻¹``,
        kept current by Sherman–Morrison; ``"sgd"`` is the same kernel with
        ``P = I``.
    step_size : float, default 0.3
    epochs : int, default 50
        The most epochs; each applies every sample once.
    tol : float, default 0
        Stop when the mean objective is at most ``tol`` (status
        ``"converged"``).
    n_rows : int, optional
        ``d``, the number of rows of ``X`` (default: the largest index + 1).
    shuffle : bool, default True
        A new random order every epoch (a permutation: each sample once).
    reinvert_every : int, default 1
        Re-invert ``XᵀX`` at the end of every this many epochs (and whenever
        ``P`` has drifted by more than 1e-8).
    random_state, callback, progress
        As for :func:`complete`.

    Returns
    -------
    SolveResult
        ``res.L`` is ``X`` (a symmetric low-rank model ``X Xᵀ``); the history
        has the objective per epoch (``loss``), ``p_drift``, ``step_size``,
        ``time`` and, for BPR, ``auc`` on the training triplets;
        ``res.info["preconditioner"]`` is the final ``P``.

    Examples
    --------
    >>> import numpy as np, dscaledgd as dsg
    >>> rng = np.random.default_rng(0)
    >>> Z = np.linalg.qr(rng.standard_normal((20, 2)))[0] * [3.0, 1.0]
    >>> M = Z @ Z.T
    >>> i, j = np.indices(M.shape).reshape(2, -1)
    >>> res = dsg.scaled_sgd((i, j, M[i, j]), 2, epochs=100, tol=1e-20, random_state=0)
    >>> res.status
    'converged'
    """
    func = "scaled_sgd"
    check_choice(func, "loss", loss, pw.LOSSES)
    I, J, K, Y, d = check_samples(func, samples, loss, n_rows)
    _check(func, rank, d, loss, method, step_size, epochs, tol, reinvert_every)
    rng = resolve_rng(random_state)
    X = initial_factors(d, int(rank), rng)
    scaled = method == "scaledsgd"
    P = inverse_gram(X) if scaled else np.eye(int(rank))
    cfg = LoopConfig(tol=float(tol), max_iter=int(epochs), callback=callback, progress=progress)
    data = (I, J, K, Y)
    out, info = run_epochs(
        data, X, P, loss=loss, scaled=scaled, lr=float(step_size), cfg=cfg, rng=rng,
        evaluate=evaluator(data, loss), shuffle=shuffle, reinvert_every=int(reinvert_every),
        desc=func,
    )  # fmt: skip
    import dask.array as da

    params = {"rank": int(rank), "loss": loss, "method": method, "step_size": float(step_size),
              "epochs": int(epochs), "tol": float(tol), "n_rows": d, "shuffle": bool(shuffle),
              "reinvert_every": int(reinvert_every),
              "random_state": random_state if isinstance(random_state, int | type(None))
              else repr(random_state)}  # fmt: skip
    return SolveResult(
        factors=(da.from_array(X, chunks=X.shape),),
        status=out.status,
        n_iter=out.n_iter,
        converged=out.status == "converged",
        message=out.message,
        history=out.history,
        params=params,
        info={
            **info,
            "samples": int(len(I)),
            "preconditioner": P.tolist(),
            "best_iteration": out.n_iter,
        },  # fmt: skip
    )
