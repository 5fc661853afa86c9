"""``scaled_sgd``: online preconditioned SGD for ``M ≈ X Xᵀ`` (ALGORITHMS.md §9).

NumPy samples with no cluster named run in the calling process, one sample
after another on the exact ``P``. Streamed samples (Dask, Zarr, CSV,
Parquet), a ``client``/``address``/``scheduler``, or ``n_blocks`` run the
stratified epochs of :mod:`dscaledgd.engine.online` on an executor (threads
or a Dask cluster), with one ``P`` per task resynchronised at every step.
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import Interval, check_choice, check_param, resolve_rng
from ..exceptions import InvalidParameterError
from ..problems import pairwise as pw
from ..problems.pairwise import check_samples
from ..result import SolveResult
from ..solvers.driver import LoopConfig
from ..solvers.online import inverse_gram, run_batch, run_epochs, sequential_epoch
from ..storage.checkpoints import arrays_digest
from ._core import checkpoints_for

__all__ = [
    "scaled_sgd", "check_samples", "METHODS_SGD", "initial_factors", "evaluator", "partial_batch",
]  # fmt: skip

METHODS_SGD = ("scaledsgd", "sgd")


def initial_factors(d: int, rank: int, rng) -> np.ndarray:
    """The papers' start, ``X ~ N(0, 1)`` of shape ``(d, rank)``."""
    return rng.standard_normal((d, rank))


def _initial_state(d: int, rank: int, scaled: bool, rng) -> tuple:
    """``(X, P)`` at the start: :func:`initial_factors`, and ``(XᵀX)⁻¹`` (``I`` for SGD)."""
    X = initial_factors(d, int(rank), rng)
    return X, (inverse_gram(X) if scaled else np.eye(int(rank)))


def evaluator(samples, loss: str):
    """``X ↦ (objective, extra)``: the mean per-sample objective, and for BPR the AUC."""
    I, J, K, Y = samples

    def evaluate(X):
        tot = pw.sums(I, J, K, Y, X, loss)
        extra = {"auc": tot[1] / tot[2]} if loss == "bpr" else {}
        return float(tot[0] / tot[2]), extra

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
    validation=None,
    eval_every: float | None = None,
    n_blocks: int | None = None,
    sync_every: int | None = None,
    columns=None,
    client=None,
    address: str | None = None,
    scheduler: str | None = None,
    random_state=None,
    callback=None,
    progress: bool | None = None,
    checkpoint=None,
    checkpoint_interval: int = 1,
    resume=False,
) -> SolveResult:
    """Fit ``M ≈ X Xᵀ`` to samples with ScaledSGD (or plain SGD), epoch by epoch.

    Parameters
    ----------
    samples : tuple of arrays, array, Dask array, Zarr array or path, CSV/Parquet path
        ``(i, j, y)`` pairs, or ``(i, j, k, y)`` triplets for ``loss="bpr"``:
        columns, or an ``(m, 3)`` / ``(m, 4)`` array. Indices start at 0.
        A Dask array, a Zarr array (or the path of one) or a CSV/Parquet file
        (``columns`` names its columns) is read block by block on the
        workers and never loaded whole.
    rank : int
    loss : {"rmse", "1bit", "edm", "bpr"}
        The per-sample losses of :mod:`dscaledgd.problems.pairwise`. ``"1bit"``
        and ``"bpr"`` take labels ``y ∈ {0, 1}``.
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
        A new random order every epoch (in process: a permutation of all
        samples; stratified: see :mod:`dscaledgd.engine.online`).
    reinvert_every : int, default 1
        Re-invert ``XᵀX`` at the end of every this many epochs (and whenever
        ``P`` has drifted by more than 1e-8).
    validation : samples, optional
        Held-out samples (NumPy, as ``samples``): their mean objective, and for
        BPR their AUC, are recorded at the start, every ``eval_every`` of an
        epoch and at each epoch's end (history ``eval_samples``,
        ``eval_epoch``, ``eval_time``, ``eval_loss``, ``eval_auc``); for BPR
        ``res.info["np_maximum"]`` is the NP-maximum AUC on them
        (:func:`dscaledgd.problems.pairwise.np_maximum`).
    eval_every : float, optional
        The fraction of an epoch between held-out evaluations (e.g. 0.01).
        Default: once per epoch.
    n_blocks : int, optional
        Row blocks of the stratified schedule (default: 2 per worker for
        pairs, 3 per worker for triplets). Iterates depend on ``n_blocks``,
        not on the number of workers.
    sync_every : int, optional
        Samples per stratified step, after which the tasks' ``P`` are
        resynchronised (default: 1% of the samples).
    columns : sequence of str, optional
        The CSV/Parquet columns holding ``i, j, [k,] y`` (default ``i, j, y``
        or ``i, j, k, y``).
    client, address, scheduler
        Where the stratified epochs run (as for :func:`complete`).
    random_state, callback, progress
        As for :func:`complete`.
    checkpoint : str or PathLike, optional
        A directory for checkpoints (:mod:`dscaledgd.storage.checkpoints`),
        written after every ``checkpoint_interval`` epochs and at the end:
        ``X``, ``P``, the step size, the random generator's state, the
        history and the held-out curve.
    checkpoint_interval : int, default 1
        Epochs between checkpoints.
    resume : bool or "auto", default False
        Continue from the newest intact checkpoint in ``checkpoint`` (``True``:
        one must be there; ``"auto"``: start afresh when there is none). The
        resumed run has the same iterates as one that did not stop; a
        checkpoint of other data or other parameters (``epochs``, ``tol``,
        ``progress``, ``callback`` and where it runs may differ) is refused.

    Returns
    -------
    SolveResult
        ``res.L`` is ``X`` (a symmetric low-rank model ``X Xᵀ``); the history
        has the objective per epoch (``loss``), ``p_drift``, ``step_size``,
        ``time``, for BPR ``auc`` on the training triplets, and the
        ``eval_*`` entries with ``validation``;
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
    check_choice(func, "method", method, METHODS_SGD)
    if eval_every is not None:
        check_param(func, "eval_every", eval_every, [Interval("real", 0, 1, "right")])
    for name, v in (("n_blocks", n_blocks), ("sync_every", sync_every)):
        if v is not None:
            check_param(func, name, v, [Interval("int", 1, None)])
    ckpt = checkpoints_for(func, checkpoint, checkpoint_interval, resume)  # before any data
    rng = resolve_rng(random_state)
    scaled = method == "scaledsgd"
    in_process = _in_process(samples, client, address, scheduler, n_blocks)
    test = None
    if validation is not None:
        test = check_samples(f"{func} (validation)", validation, loss, n_rows)[:4]
    params = {"rank": rank, "loss": loss, "method": method, "step_size": step_size,
              "epochs": epochs, "tol": tol, "n_rows": n_rows, "shuffle": bool(shuffle),
              "reinvert_every": reinvert_every, "eval_every": eval_every, "n_blocks": n_blocks,
              "sync_every": sync_every,
              "random_state": random_state if isinstance(random_state, int | type(None))
              else repr(random_state)}  # fmt: skip
    if in_process:
        I, J, K, Y, d = check_samples(func, samples, loss, n_rows)
        _check(func, rank, d, loss, method, step_size, epochs, tol, reinvert_every)
        data = (I, J, K, Y)
        epoch = sequential_epoch(data, loss, scaled, shuffle)
        _bind(ckpt, params, d, arrays_digest(*data))
        return _run(func, epoch, evaluator(data, loss), d, rank, scaled, rng, params, test,
                    None, step_size, epochs, tol, eval_every, reinvert_every, loss, callback,
                    progress, {"executor": "in-process"}, ckpt)  # fmt: skip
    from ..engine.cluster import executor_for

    with executor_for(client, address=address, scheduler=scheduler) as ex:
        engine = _stratified(ex, samples, loss, scaled, n_rows, n_blocks, sync_every, rng,
                             columns)  # fmt: skip
        try:
            _check(func, rank, engine.d, loss, method, step_size, epochs, tol, reinvert_every)
            extra = {"executor": ex.kind, "n_blocks": engine.n_blocks,
                     "rounds": engine.sched.n_rounds, "sync_every": engine.sync_every}  # fmt: skip
            _bind(ckpt, {**params, "n_blocks": engine.n_blocks, "sync_every": engine.sync_every},
                  engine.d, {"cell_counts": engine.counts})  # fmt: skip
            res = _run(func, engine, engine.objective, engine.d, rank, scaled, rng, params,
                       test, ex, step_size, epochs, tol, eval_every, reinvert_every, loss,
                       callback, progress, extra, ckpt)  # fmt: skip
            res.info["syncs"] = engine.syncs
            return res
        finally:
            engine.close()


def partial_batch(func, samples, state, *, rank, loss, method, step_size, n_rows, rng,
                  checks=(1, 0.0, 1), client=None, address=None, scheduler=None,
                  n_blocks=None, sync_every=None, columns=None) -> dict:  # fmt: skip
    """One pass over a batch (``ScaledSGD.partial_fit``), from ``state = (X, P)`` (changed
    in place) or, when ``None``, from the start :func:`scaled_sgd` draws from ``rng``.

    Where it runs follows :func:`scaled_sgd`: NumPy samples with no cluster named
    run in process, one after another in the batch's order; streamed samples, a
    ``client``/``address``/``scheduler`` or ``n_blocks`` run one stratified pass of
    :mod:`dscaledgd.engine.online` on the workers (the order of the stratified
    schedule, drawn from ``rng``). ``checks = (epochs, tol, reinvert_every)`` are
    validated with the other parameters on the first call. Returns ``X``, ``P``,
    the step used (``lr``), the batch's objective after the pass (``loss``), the
    extra history entries (``extra``) and where it ran (``info``)."""
    scaled = method == "scaledsgd"

    def start(d):
        if state is not None:
            return state
        _check(func, rank, d, loss, method, step_size, *checks)
        return _initial_state(d, rank, scaled, rng)

    def run(epoch, d, evaluate, info):
        X, P = start(d)
        lr, f, extra = run_batch(epoch, X, P, scaled=scaled, lr=float(step_size), rng=rng,
                                 evaluate=evaluate)  # fmt: skip
        return {"X": X, "P": P, "lr": lr, "loss": f, "extra": extra, "info": info}

    if _in_process(samples, client, address, scheduler, n_blocks):
        I, J, K, Y, d = check_samples(func, samples, loss, n_rows)
        data = (I, J, K, Y)
        return run(sequential_epoch(data, loss, scaled, shuffle=False), d,
                   evaluator(data, loss), {"executor": "in-process"})  # fmt: skip
    from ..engine.cluster import executor_for

    with executor_for(client, address=address, scheduler=scheduler) as ex:
        engine = _stratified(ex, samples, loss, scaled, n_rows, n_blocks, sync_every, rng,
                             columns, func)  # fmt: skip
        try:
            out = run(engine, engine.d, engine.objective,
                      {"executor": ex.kind, "n_blocks": engine.n_blocks,
                       "samples": engine.n_samples})  # fmt: skip
            out["info"]["syncs"] = engine.syncs
            return out
        finally:
            engine.close()


def _stratified(ex, samples, loss, scaled, n_rows, n_blocks, sync_every, rng, columns,
                func="scaled_sgd"):  # fmt: skip
    """The samples cut into the cells of the stratified schedule on ``ex``'s workers
    (default: 2 row blocks per worker for pairs, 3 for triplets)."""
    from ..engine.online import StratifiedEpochs

    W = ex.n_workers if ex.kind == "distributed" else ex.nthreads
    g = 3 if loss == "bpr" else 2
    return StratifiedEpochs(
        ex, samples, loss=loss, scaled=scaled, n_rows=n_rows,
        n_blocks=n_blocks if n_blocks is not None else g * max(1, W),
        sync_every=sync_every, seed=int(rng.integers(2**62)), columns=columns, func=func,
    )  # fmt: skip


def _in_process(samples, client, address, scheduler, n_blocks) -> bool:
    """No cluster named, no ``n_blocks`` and NumPy samples: the one-process run."""
    named = (client, address, scheduler, n_blocks)
    return all(v is None for v in named) and _in_memory(samples)


def _in_memory(samples) -> bool:
    """NumPy columns or an array (not Dask, Zarr or a path)."""
    if isinstance(samples, tuple | list):
        return all(isinstance(c, np.ndarray | list | range) or np.isscalar(c) for c in samples)
    return isinstance(samples, np.ndarray)


#: parameters that do not change the iterates: left out of a checkpoint's config_hash
_NOT_HASHED = ("epochs", "tol")


def _bind(ckpt, params, d, fingerprint) -> None:
    if ckpt is not None:
        config = {k: v for k, v in params.items() if k not in _NOT_HASHED}
        ckpt.bind({**config, "n_rows": d, "data": fingerprint})


def _run(func, epoch, evaluate, d, rank, scaled, rng, params, test, ex, step_size, epochs, tol,
         eval_every, reinvert_every, loss, callback, progress, extra, ckpt):  # fmt: skip
    X, P = _initial_state(d, rank, scaled, rng)
    resumed = ckpt.load() if ckpt is not None else None
    cfg = LoopConfig(tol=float(tol), max_iter=int(epochs), callback=callback, progress=progress)
    every = None
    if eval_every is not None and test is not None:
        every = max(1, math.ceil(float(eval_every) * epoch.n_samples))
    out, info = run_epochs(
        epoch, X, P, scaled=scaled, lr=float(step_size), cfg=cfg, rng=rng, evaluate=evaluate,
        probe=_probe(ex, test, loss) if test is not None else None, probe_every=every,
        reinvert_every=int(reinvert_every), desc=func, checkpoint=ckpt, resume=resumed,
    )  # fmt: skip
    if ckpt is not None:
        start = None if resumed is None else int(resumed["meta"]["n_iter"])
        extra = {**extra, "checkpoint": ckpt.path, "resumed_from": start}
    if test is not None and loss == "bpr":
        info["np_maximum"] = pw.np_maximum(test[1], test[2], test[3], d)
    import dask.array as da

    params = {**params, "n_rows": d}
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
            **extra,
            "samples": int(epoch.n_samples),
            "preconditioner": P.tolist(),
            "best_iteration": out.n_iter,
        },  # fmt: skip
    )


#: held-out samples per evaluation task
PROBE_BLOCK = 1 << 18


def _probe(ex, test, loss):
    """``X ↦ {"loss", ["auc"]}`` on the held-out samples, in blocks (tasks of ``ex``)."""
    I, J, K, Y = test
    m = len(Y)
    blocks = [tuple(c[lo:lo + PROBE_BLOCK] for c in (I, J, K, Y))
              for lo in range(0, m, PROBE_BLOCK)]  # fmt: skip
    if ex is not None:
        from ..engine.online import block_sums

        handles = ex.scatter(blocks)

    def probe(X):
        if ex is None:
            tot = np.sum([pw.sums(*b, X, loss) for b in blocks], axis=0)
        else:
            hx = ex.scatter([X])[0]
            tot = np.sum(ex.gather([ex.submit(block_sums, h, hx, loss, name="sgd-probe")
                                    for h in handles]), axis=0)  # fmt: skip
            ex.release(hx)
        out = {"loss": float(tot[0] / tot[2])}
        if loss == "bpr":
            out["auc"] = float(tot[1] / tot[2])
        return out

    return probe
