"""The one iteration driver shared by every method.

The loop talks to the data only through the **engine protocol**:

``engine.pass_(state)``
    submit one data pass at ``state`` (loss, gradients, Grams); lazy.
``engine.scalars(pass_)``
    the iteration's one gather: a ``PassStats`` with ``loss``, ``residual``
    and the per-factor ``r × r`` Grams ``FF``, ``FG``, ``GG`` and ``H``.
``engine.step(state, pass_, A, B)``
    the new state ``F_k A_k + G_k B_k``, computed block by block where the
    data lives (the ``materialize`` of DESIGN.md §1: results stay resident on
    the workers as futures; identity for in-memory NumPy).
``engine.materialize(state)``
    called every ``materialize_every`` iterations on a new state before its
    pass: re-roots the worker-resident factors so that the scheduler forgets
    their task history and its graph stays bounded (identity for local
    executors).
``engine.preconditioner_grams(FF)``
    which Gram preconditions which factor.

The same loop therefore runs on the in-memory NumPy oracle, a thread pool and
a distributed cluster, for ScaledGD, ScaledGD(λ) and GD, which differ only in
:class:`~dscaledgd.solvers.scaledgd.Preconditioner` and the step rule.

Safeguard (DESIGN.md §4): after each pass the loop checks for non-finite
values, a loss above a multiple of the initial loss, factor norms blowing up,
or a Gram that cannot be factorised (thresholds from the step rule). It does
**not** enforce monotone decrease. On divergence it restores the best accepted
iterate (kept as a snapshot, with its gradient) and asks the step rule to
recover; a rule that cannot (a fixed step) ends the run with status
``"diverged"`` and a warning. Every restore is recorded in ``info["events"]``,
and so is every re-seed of a coherent spurious component (:mod:`.reseed`).

What is returned is what is reported. ``history[key][k]`` describes iterate
``k``, and the outcome's ``best_iteration`` is the index of the iterate whose
factors are returned:

* ``"diverged"``: the best accepted iterate ``k`` is returned, the history is
  truncated after it and ``n_iter = k``; the discarded iterations (their
  count, losses and residuals) are recorded in the final ``"diverged"`` event;
* ``"early_stopped"``: the best-validation iterate is returned; the full
  validation curve is kept (``n_iter`` counts every update applied) and
  ``best_iteration`` points into it;
* every other status returns the last iterate: ``best_iteration = n_iter``.

A re-seeded point (:mod:`.reseed`) takes the place of the iterate it was made
from; when it is the one returned, its loss, residual and validation error
overwrite that history entry (the replaced loss is kept in the event).
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..exceptions import ConvergenceWarning
from ..result import HISTORY_KEYS, IterationState
from .scaledgd import (
    GramSolveError,
    Preconditioner,
    scaled_grad_norm2,
    update_matrices,
    with_ridge,
    x_norm2,
)

__all__ = ["LoopConfig", "LoopOutcome", "run"]

logger = logging.getLogger("dscaledgd")


@dataclass
class LoopConfig:
    tol: float = 1e-10
    max_iter: int = 500
    stall_tol: float = 1e-8
    patience: int = 10
    callback: Callable | None = None
    progress: bool | None = None
    #: re-root the factors every this many data passes (bounded scheduler graph)
    materialize_every: int = 20
    #: ridge penalty (reg/2)(‖L‖² + ‖R‖²) added to the objective
    reg: float = 0.0
    #: seed of the random directions of a re-seed (:mod:`.reseed`)
    seed: int = 0


@dataclass
class LoopOutcome:
    state: list
    status: str
    n_iter: int
    message: str
    history: dict
    events: list = field(default_factory=list)
    passes: int = 0
    #: index into ``history`` of the returned iterate (see the module docstring)
    best_iteration: int = 0


@dataclass
class _Point:
    state: list
    pas: object
    stats: object
    #: index of this iterate's history entry (-1: not yet recorded)
    k: int = -1
    #: a re-seeded point: its history entry still describes the point it replaced
    reseeded: bool = False


def _finite(stats) -> bool:
    if not (math.isfinite(stats.loss) and math.isfinite(stats.residual)):
        return False
    return all(np.all(np.isfinite(M)) for M in (*stats.FF, *stats.FG, *stats.GG))


def _show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return bool(progress)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # pragma: no cover
        return False


def run(
    engine,
    state,
    rule,
    precond: Preconditioner,
    cfg: LoopConfig,
    *,
    norm_ref: float,
    desc: str = "dscaledgd",
    reseed=None,
) -> LoopOutcome:
    """Iterate from ``state`` until a stopping rule fires. See the module docstring.

    ``reseed``: an optional :class:`~dscaledgd.solvers.reseed.CoherentReseed`
    applied to every accepted point (its extra pass is counted).
    """
    t0 = time.perf_counter()
    hist = {k: [] for k in HISTORY_KEYS}
    events: list = []
    passes = 0

    def evaluate(st):
        nonlocal passes
        if passes and passes % cfg.materialize_every == 0:
            st = engine.materialize(st)
        pas = engine.pass_(st)
        passes += 1
        return _Point(st, pas, with_ridge(engine.scalars(pas), cfg.reg))

    def record(pt, step):
        s = pt.stats
        for k, v in (
            ("loss", s.loss),
            ("residual", s.residual),
            ("step_size", step.eta if step else math.nan),
            ("damping", step.damping if step else math.nan),
            ("adaptive_damping", step.mu if step else math.nan),
            ("time", time.perf_counter() - t0),
            ("passes", passes),
        ):
            hist[k].append(v)
        if "validation" in s.extra:
            hist.setdefault("validation", []).append(s.extra["validation"])
        pt.k = len(hist["loss"]) - 1

    cur = evaluate(state)
    if not _finite(cur.stats):
        raise FloatingPointError(
            "The initial point has a non-finite loss or Gram; the initialisation failed. "
            "Check the data scale, or pass init='random'."
        )
    guard = _Guard(cur.stats, norm_ref, rule)
    record(cur, None)
    rule.start(cur.stats)
    best = cur
    best_val, val_wait = cur, 0  # early stopping on held-out error
    status, message, n_iter, quiet = None, "", 0, 0
    bar = None
    if _show_progress(cfg.progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_iter, desc=desc, leave=False)

    try:
        while status is None:
            if cur.stats.residual <= cfg.tol:
                status = "converged"
                message = f"relative residual {cur.stats.residual:.3g} <= tol={cfg.tol:g}"
                break
            if n_iter >= cfg.max_iter:
                status = "max_iter"
                message = (
                    f"max_iter={cfg.max_iter} reached with relative residual "
                    f"{cur.stats.residual:.3g} > tol={cfg.tol:g}"
                )
                break
            step = rule.propose(cur.stats)
            reason = None
            with engine.ex.span("dscaledgd-iter"):
                try:  # the ridge's curvature belongs in the preconditioner: λ + reg
                    P = precond.matrices(cur.stats, replace(step, damping=step.damping + cfg.reg))
                    if hasattr(rule, "scale"):  # step sizes that need P (ScaledSM)
                        step = rule.scale(cur.stats, step, P)
                except GramSolveError as exc:
                    reason = f"Gram solve failed ({exc})"
                if reason is None:
                    A, B = update_matrices(P, step.eta, cfg.reg)
                    new = evaluate(engine.step(cur.state, cur.pas, A, B))
                    reason = guard.check(new.stats)
            if reason is not None:
                events.append(
                    {
                        "iteration": n_iter,
                        "event": "diverged",
                        "reason": reason,
                        "step_size": step.eta,
                        "passes": passes,
                    }
                )
                logger.info("dscaledgd: divergence at iteration %d (%s)", n_iter, reason)
                if not rule.recover():
                    status = "diverged"
                    message = (
                        f"diverged at iteration {n_iter + 1} ({reason}) with step size "
                        f"{step.eta:g}; returning the best iterate, iteration {best.k} "
                        f"(loss {best.stats.loss:.3g}, relative residual "
                        f"{best.stats.residual:.3g})"
                    )
                    cur = best
                    n_iter = _truncate(hist, events[-1], best.k, n_iter)
                    break
                events[-1]["event"] = "restored"
                cur = best  # restore the best accepted iterate and its gradient
                continue
            best_before = best.stats.loss
            prev, cur = cur, new
            n_iter += 1
            if cur.stats.loss < best.stats.loss:
                best = cur
            record(cur, step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{cur.stats.loss:.3e}", step=f"{step.eta:.3g}")
            # stall: the best loss stopped improving while the loss sits at it (not in
            # a transient: ScaledGD's loss may rise far above its minimum and recover)
            # relative step ‖ΔX‖/‖X‖ (first order: η ‖G‖* in the scaled metric)
            moved = step.eta * np.sqrt(max(scaled_grad_norm2(prev.stats, P), 0.0))
            rel_step = moved / max(np.sqrt(max(x_norm2(cur.stats), 0.0)), 1e-300)
            if getattr(rule, "stall_on_step", False):  # l1: the iterates stopped moving
                gain, at_floor = rel_step, True
            else:  # the loss stopped improving, and the iterates barely move (not a
                # plateau of a small random start, where X still grows fast)
                gain = (best_before - best.stats.loss) / max(best.stats.loss, 1e-300)
                at_floor = cur.stats.loss <= 2.0 * best.stats.loss and (
                    cfg.reg > 0 or rel_step < np.sqrt(cfg.stall_tol)
                )
            quiet = quiet + 1 if (gain < cfg.stall_tol and at_floor) else 0
            val = cur.stats.extra.get("validation")
            if val is not None:
                if val < best_val.stats.extra["validation"]:
                    best_val, val_wait = cur, 0
                else:
                    val_wait += 1
            if cfg.callback is not None:
                st = IterationState(
                    iteration=n_iter,
                    loss=cur.stats.loss,
                    residual=cur.stats.residual,
                    step_size=step.eta,
                    damping=step.damping,
                    time=hist["time"][-1],
                    passes=passes,
                    validation=val,
                    _gather=_gatherer(cur.state),
                )
                try:
                    cfg.callback(st)
                except StopIteration:
                    status, message = "callback", f"callback stopped the run at iteration {n_iter}"
                    break
            if val is not None and val_wait >= cfg.patience:
                status = "early_stopped"
                message = (
                    f"the validation RMSE did not improve for {cfg.patience} iterations; "
                    f"returning iteration {best_val.k} "
                    f"(validation RMSE {best_val.stats.extra['validation']:.6g})"
                )
                cur = best_val
                break
            if quiet >= cfg.patience and cur.stats.residual > cfg.tol:
                status = "stalled"
                what = (
                    "the relative step |dX|/|X| stayed below"
                    if getattr(rule, "stall_on_step", False)
                    else "the best loss improved by less than"
                )
                message = (
                    f"{what} stall_tol={cfg.stall_tol:g} for {cfg.patience} iterations; "
                    f"relative residual {cur.stats.residual:.3g}"
                )
            if reseed is not None and status is None and n_iter < cfg.max_iter:
                # (never at the last iteration: a fresh re-seed would be what is returned)
                out = reseed(engine, cur.state, cur.stats, rule.c, cfg.seed)
                pt = evaluate(out[0]) if out is not None else None
                if pt is not None and _finite(pt.stats):
                    pt.k, pt.reseeded = cur.k, True
                    events.append(
                        {
                            "iteration": n_iter,
                            **out[1],
                            "loss_before": cur.stats.loss,
                            "loss": pt.stats.loss,
                            "passes": passes,
                        }
                    )
                    cur = pt
                    logger.info("dscaledgd: re-seeded components %s", out[1]["components"])
                    if cur.stats.loss < best.stats.loss:
                        best = cur
    finally:
        if bar is not None:
            bar.close()
    if status in ("max_iter", "diverged"):
        warnings.warn(f"{desc}: {message}", ConvergenceWarning, stacklevel=3)
    if cur.reseeded:  # the returned re-seeded point takes its iterate's history entry
        hist["loss"][cur.k] = cur.stats.loss
        hist["residual"][cur.k] = cur.stats.residual
        if "validation" in hist:
            hist["validation"][cur.k] = cur.stats.extra["validation"]
    history = {k: np.asarray(v, dtype=np.float64) for k, v in hist.items()}
    return LoopOutcome(
        state=cur.state,
        status=status,
        n_iter=n_iter,
        message=message,
        history=history,
        events=events,
        passes=passes,
        best_iteration=cur.k,
    )


def _truncate(hist: dict, event: dict, k: int, n_iter: int) -> int:
    """Cut the history after the returned iterate ``k``; record the cut in ``event``.

    Returns the new ``n_iter`` (``k``).
    """
    event.update(
        returned_iteration=k,
        discarded_iterations=n_iter - k,
        discarded_loss=[float(v) for v in hist["loss"][k + 1 :]],
        discarded_residual=[float(v) for v in hist["residual"][k + 1 :]],
    )
    for v in hist.values():
        del v[k + 1 :]
    return k


def _gatherer(state):
    return lambda: tuple(F.gather() for F in state)


class _Guard:
    """Divergence test against the initial point, with the step rule's thresholds.

    Diverged: a non-finite loss or Gram; a loss above ``rule.loss_blowup ×``
    the initial loss; or a factor's squared norm above ``rule.norm_blowup ×``
    the reference ``max(initial squared norms, norm_ref)``. The best loss is
    deliberately *not* the reference: ScaledGD's loss legitimately rises by
    more than 1000x above its running minimum during transients at large κ.
    """

    def __init__(self, stats0, norm_ref: float, rule):
        self.loss0 = stats0.loss
        self.ref = max(max(float(np.trace(FF)) for FF in stats0.FF), norm_ref)
        self.loss_blowup = rule.loss_blowup
        self.norm_blowup = rule.norm_blowup

    def check(self, stats) -> str | None:
        if not _finite(stats):
            return "non-finite loss or Gram"
        if stats.loss > self.loss_blowup * self.loss0:
            return f"loss {stats.loss:.3g} > {self.loss_blowup:g} x initial {self.loss0:.3g}"
        tr = max(float(np.trace(FF)) for FF in stats.FF)
        if tr > self.norm_blowup * self.ref:
            return f"factor squared norm {tr:.3g} > {self.norm_blowup:g} x initial {self.ref:.3g}"
        return None
