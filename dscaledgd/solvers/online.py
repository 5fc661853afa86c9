"""ScaledSGD epochs (ALGORITHMS.md §9): the per-sample kernel under the shared driver.

One epoch applies every sample once, in an order drawn per epoch (a
permutation: every sample exactly once), with
:func:`dscaledgd.problems.pairwise.run_samples`. Around it:

* ``P = (XᵀX)⁻¹`` is carried by Sherman–Morrison inside the kernel. When a
  removal's denominator is unsafe the kernel stops at that sample; ``P`` is
  re-inverted from ``X`` and the epoch goes on (counted in ``info``).
  At the end of every epoch the drift ``max|P XᵀX − I|`` is measured
  (history ``p_drift``), and ``P`` is re-inverted when it exceeds
  :data:`DRIFT_TOL` or every ``reinvert_every`` epochs: the run never depends
  on the drift being small.
* **Safeguard.** An epoch that leaves a non-finite ``X`` or ``P``, or an
  objective above :data:`BLOWUP` times the initial one, is undone (``X``
  and ``P`` restored from the epoch's start), the step is halved and the
  epoch is run again; each restore is an event in ``info["events"]`` and the
  step used is in the history (``step_size``). Never a silent NaN.
* What a user sees of the run (history, progress bar, callback, warnings,
  the outcome) is the :class:`~.driver.Driver`'s, shared with the batch loop.
* **Checkpoints** at epoch ends, in the batch loop's store
  (:class:`dscaledgd.storage.checkpoints.Checkpoints`): ``X``, ``P``, the step
  (after any halving), the random generator's state, the counters, the
  history and the held-out curve. A resumed run continues with the same
  iterates as one that did not stop (the epoch's order comes from the stored
  generator state).

No dask import here.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import numpy as np

from ..problems import pairwise as pw
from .driver import Driver, LoopConfig
from .resume import dec, driver_snapshot, enc, restore_driver

__all__ = [
    "EpochStats", "run_epochs", "run_batch", "sequential_epoch", "group_step", "DRIFT_TOL",
    "BLOWUP",
]  # fmt: skip

#: re-invert ``P`` when ``max|P XᵀX − I|`` exceeds this
DRIFT_TOL = 1e-8
#: an epoch whose objective exceeds this multiple of the initial one is undone
BLOWUP = 1e3
#: restores of one run before it ends ``"diverged"``
MAX_RESTORES = 20


@dataclass
class EpochStats:
    """What the driver records of an epoch (the fields of the batch loop's ``PassStats``
    that it reads)."""

    loss: float
    residual: float
    extra: dict


def inverse_gram(X: np.ndarray) -> np.ndarray:
    """``(XᵀX)⁻¹`` by Cholesky (symmetrised); raises ``LinAlgError`` when singular."""
    return _inv(X.T @ X)


def _inv(G: np.ndarray) -> np.ndarray:
    """``G⁻¹`` of a symmetric positive definite ``G`` by Cholesky (symmetrised)."""
    import scipy.linalg as sla

    c = sla.cho_factor(G, lower=True)
    P = sla.cho_solve(c, np.eye(len(G)))
    return 0.5 * (P + P.T)


def drift(X: np.ndarray, P: np.ndarray) -> float:
    """``max|P XᵀX − I|``: how far the carried ``P`` is from the inverse Gram."""
    return float(np.max(np.abs(P @ (X.T @ X) - np.eye(P.shape[0]))))


def sequential_epoch(samples, loss: str, scaled: bool, shuffle: bool = True):
    """The in-process epoch: every sample once, in a fresh permutation (or in order), on
    the exact ``P`` (one process applies the samples one after another)."""
    m = len(samples[0])

    def epoch(X, P, lr, rng, info, mark, every):
        order = rng.permutation(m) if shuffle else np.arange(m)
        stops = list(range(every, m, every)) if every else []
        lo = 0
        for hi in stops + [m]:
            if not _apply(samples, order[lo:hi], X, P, lr, loss, scaled, info):
                return False
            if hi < m:
                mark(hi)
            lo = hi
        return True

    epoch.n_samples = m
    return epoch


def run_epochs(epoch, X, P, *, scaled: bool, lr: float, cfg: LoopConfig, rng, evaluate,
               probe=None, probe_every: int | None = None, reinvert_every: int = 1,
               desc: str = "scaled_sgd", checkpoint=None, resume=None):  # fmt: skip
    """Run up to ``cfg.max_iter`` epochs from ``X``, ``P`` (changed in place).

    ``epoch(X, P, lr, rng, info, mark, every)`` applies every sample once
    (:func:`sequential_epoch`, or the stratified epoch of
    :mod:`dscaledgd.engine.online`), calling ``mark(samples_done)`` after every
    ``every`` samples, and says whether ``X`` and ``P`` are still finite;
    ``epoch.n_samples`` is the number of samples. ``evaluate(X) -> (loss, extra)``:
    the recorded training objective and extra history entries, once per epoch.
    ``probe(X) -> dict``: held-out metrics, recorded at the start, every
    ``probe_every`` samples and at each epoch's end as the history's ``eval_*``
    entries (``eval_samples``, ``eval_epoch``, ``eval_time`` and one
    ``eval_<name>`` per metric); the points of an epoch that is undone are
    dropped with it. Stops when the objective is at most ``cfg.tol``.

    ``checkpoint``: an object with ``due(n_epoch, max_iter)`` and
    ``save(n_epoch, meta, arrays)`` (:class:`dscaledgd.storage.checkpoints.Checkpoints`),
    called after each accepted epoch; ``resume``: a checkpoint read back
    (``{"meta": {"state": ...}, "arrays": ...}``) to continue from: ``X``, ``P`` and
    ``rng`` are overwritten by it.

    Returns ``(outcome, info)``: the driver's :class:`~.driver.LoopOutcome` (``state`` is
    ``X``) and ``{"reinversions", "sm_refusals", "restores", "events", ...}``.
    """
    m = epoch.n_samples
    drv = Driver(cfg, desc)
    info = {"reinversions": 0, "sm_refusals": 0, "restores": 0, "probe_seconds": 0.0}
    curve: dict = {}

    def record(step_lr, p_drift):
        f, extra = evaluate(X)
        stats = EpochStats(f, f, {**extra, "p_drift": p_drift})
        drv.record(stats, _Step(step_lr))
        return stats

    def probed(done, epoch_no, rows):
        if probe is not None:
            t0 = drv.elapsed()
            rows.append({"samples": epoch_no * m + done, "epoch": epoch_no + done / m,
                         "time": t0, **probe(X)})  # fmt: skip
            info["probe_seconds"] += drv.elapsed() - t0

    def commit(rows):
        for row in rows:
            for key, v in row.items():
                curve.setdefault(f"eval_{key}", []).append(v)

    try:
        if resume is None:
            start: list = []
            probed(0, 0, start)
            commit(start)
            stats = record(math.nan, drift(X, P) if scaled else 0.0)
            f0 = max(stats.loss, 1e-300)
            n_epoch = 0
        else:
            n_epoch, lr, f0 = _restore(resume, X, P, rng, info, drv, curve, epoch)
            stats = EpochStats(drv.hist["loss"][-1], drv.hist["loss"][-1], {})
        status, message = None, ""
        while status is None:
            if stats.loss <= cfg.tol:
                status, message = "converged", f"objective {stats.loss:.3g} <= tol={cfg.tol:g}"
                break
            if n_epoch >= cfg.max_iter:
                status = "max_iter"
                message = f"max_iter={cfg.max_iter} epochs reached with objective {stats.loss:.3g}"
                break
            X0, P0 = X.copy(), P.copy()
            rows: list = []
            mark = functools.partial(_mark, probed, n_epoch, rows)
            finite = epoch(X, P, lr, rng, info, mark, probe_every if probe is not None else None)
            finite = finite and bool(np.all(np.isfinite(X)) and np.all(np.isfinite(P)))
            p_drift = drift(X, P) if scaled and finite else 0.0
            if scaled and finite and (p_drift > DRIFT_TOL or (n_epoch + 1) % reinvert_every == 0):
                finite = _reinvert(X, P)
                info["reinversions"] += 1
            f_new = evaluate(X)[0] if finite else math.inf
            if not (finite and math.isfinite(f_new) and f_new <= BLOWUP * f0):
                X[...], P[...] = X0, P0
                info["restores"] += 1
                drv.event({"epoch": n_epoch, "event": "restored", "step_size": lr,
                           "reason": "non-finite X or P" if not finite else
                           f"objective {f_new:.3g} > {BLOWUP:g} x initial {f0:.3g}"})  # fmt: skip
                lr *= 0.5
                if info["restores"] > MAX_RESTORES:
                    status = "diverged"
                    message = f"diverged: {MAX_RESTORES} restores, step size now {lr:g}"
                continue
            probed(m, n_epoch, rows)
            commit(rows)
            n_epoch += 1
            drv.passes += 1
            stats = record(lr, p_drift)
            drv.progress(stats, _Step(lr))
            point = _Point(stats, _State(X))
            if drv.accepted(point, n_epoch, _Step(lr), lambda: (X.copy(),)) == "callback":
                status, message = "callback", f"callback stopped the run at epoch {n_epoch}"
            if checkpoint is not None and checkpoint.due(n_epoch, cfg.max_iter):
                checkpoint.save(n_epoch, *_snapshot(n_epoch, X, P, lr, f0, rng, info, drv, curve,
                                                    epoch))  # fmt: skip
    except BaseException:
        drv.close()
        raise
    out = drv.finish(X, status, message, n_epoch, n_epoch)
    out.history.update({k: np.asarray(v, dtype=np.float64) for k, v in curve.items()})
    info["events"] = out.events
    info["final_step_size"] = lr
    return out, info


_COUNTERS = ("reinversions", "sm_refusals", "restores", "probe_seconds")


def _snapshot(n_epoch, X, P, lr, f0, rng, info, drv, curve, epoch) -> tuple[dict, dict]:
    """``(meta, arrays)`` of the run between epochs (floats as exact hex strings)."""
    driver, hist = driver_snapshot(drv)
    arrays = {"X": X, "P": P, **hist}
    arrays.update({f"curve.{k}": np.asarray(v, dtype=np.float64) for k, v in curve.items()})
    state = rng.bit_generator.state  # its 128-bit integers kept exactly as JSON text
    meta = {
        "n_epoch": int(n_epoch),
        "step_size": enc(lr),
        "f0": enc(f0),
        "rng": {"bit_generator": state["bit_generator"], "json": json.dumps(state)},
        "info": {k: enc(info[k]) for k in _COUNTERS},
        "syncs": int(getattr(epoch, "syncs", 0)),
        "driver": driver,
    }
    return meta, arrays


def _restore(ck, X, P, rng, info, drv, curve, epoch) -> tuple[int, float, float]:
    """Put a checkpoint back; ``(n_epoch, step_size, f0)``."""
    meta, arrays = ck["meta"]["state"], ck["arrays"]
    if meta["rng"]["bit_generator"] != rng.bit_generator.state["bit_generator"]:
        raise ValueError(
            f"the checkpoint's random generator is {meta['rng']['bit_generator']}, this "
            f"run's {rng.bit_generator.state['bit_generator']}"
        )
    rng.bit_generator.state = json.loads(meta["rng"]["json"])
    X[...], P[...] = arrays["X"], arrays["P"]
    restore_driver(drv, meta["driver"], arrays)
    for name, values in arrays.items():
        if name.startswith("curve."):
            curve[name[len("curve."):]] = [float(v) for v in values]  # fmt: skip
    info.update({k: dec(v) for k, v in meta["info"].items()})
    if hasattr(epoch, "syncs"):
        epoch.syncs = int(meta["syncs"])
    n_epoch = int(meta["n_epoch"])
    drv.resumed(n_epoch)
    return n_epoch, dec(meta["step_size"]), dec(meta["f0"])


def _mark(probed, n_epoch, rows, done):
    probed(done, n_epoch, rows)


def _apply(samples, order, X, P, lr, loss, scaled, info, reinvert=None) -> bool:
    """The samples ``order`` once, re-inverting ``P`` where Sherman–Morrison refuses;
    whether ``X`` and ``P`` are still finite. ``reinvert()`` recomputes ``P`` (default:
    from ``X``, which then holds every row)."""
    I, J, K, Y = samples
    pos = 0
    while True:
        stop = pw.run_samples(I, J, K, Y, order, X, P, lr, loss, scaled, start=pos)
        if stop < 0:
            break
        info["sm_refusals"] += 1
        if not (reinvert() if reinvert is not None else _reinvert(X, P)):
            return False
        pos = stop + 1
    return bool(np.all(np.isfinite(X)) and np.all(np.isfinite(P)))


def group_step(cell, X_local, P, G, lr: float, loss: str, scaled: bool, seed, part: int,
               nparts: int):  # fmt: skip
    """One worker's share of a stratified step (:mod:`dscaledgd.engine.online`).

    ``cell = (I, J, K, Y)`` holds the cell's samples with row indices local to
    ``X_local`` (the rows of the cell's group of blocks); the step applies part
    ``part`` of ``nparts`` contiguous parts, in a permutation drawn from ``seed``
    (block shuffle plus in-block permutation), from the synchronised ``P`` and
    Gram ``G = XᵀX``. ``P`` then follows this worker's own rows only; a refused
    Sherman–Morrison update re-inverts ``G − X₀ᵀX₀ + XᵀX`` (the Gram with this
    worker's rows as they are now).

    Returns ``(X_local, dG, sm_refusals, finite)``, ``dG = XᵀX − X₀ᵀX₀`` over the
    group's rows: the r×r contribution the driver sums to resynchronise ``P``.
    """
    n = len(cell[0])
    lo, hi = n * part // nparts, n * (part + 1) // nparts
    order = lo + np.random.default_rng(seed).permutation(hi - lo)
    X = np.array(X_local, dtype=np.float64)
    P = np.array(P, dtype=np.float64)
    G0 = X.T @ X
    info = {"sm_refusals": 0}

    def reinvert():
        try:
            P[...] = _inv(G - G0 + X.T @ X)
        except np.linalg.LinAlgError:
            return False
        return bool(np.all(np.isfinite(P)))

    finite = _apply(cell, order, X, P, lr, loss, scaled, info, reinvert)
    return X, X.T @ X - G0, info["sm_refusals"], finite


def run_batch(epoch, X, P, *, scaled: bool, lr: float, rng, evaluate) -> tuple:
    """One pass over a batch (``partial_fit``): ``epoch`` (the interface of
    :func:`run_epochs`: :func:`sequential_epoch` in the batch's order, or the
    stratified epoch) run once, with the epoch's safeguard: a non-finite result, or an
    objective above :data:`BLOWUP` times the batch's objective before, is undone and
    the pass rerun at half the step. Returns ``(step used, objective, extra)``; raises
    ``FloatingPointError`` after :data:`MAX_RESTORES` halvings."""
    info = {"sm_refusals": 0}
    f0 = max(evaluate(X)[0], 1e-300)
    X0, P0 = X.copy(), P.copy()
    for _ in range(MAX_RESTORES + 1):
        ok = epoch(X, P, lr, rng, info, None, None)
        if ok and scaled and drift(X, P) > DRIFT_TOL:
            ok = _reinvert(X, P)
        if ok:
            f, extra = evaluate(X)
            if f <= BLOWUP * f0:
                return lr, f, extra
        X[...], P[...] = X0, P0
        lr *= 0.5
    raise FloatingPointError(
        f"the batch diverged at every step size down to {lr:g}; X and P are left as before it"
    )


def _reinvert(X, P) -> bool:
    try:
        P[...] = inverse_gram(X)
    except np.linalg.LinAlgError:
        return False
    return bool(np.all(np.isfinite(P)))


@dataclass
class _Step:
    eta: float
    damping: float = math.nan
    mu: float = math.nan


@dataclass
class _State:
    X: np.ndarray
    params: dict = None

    def __post_init__(self):
        self.params = {}


@dataclass
class _Point:
    stats: EpochStats
    state: _State
