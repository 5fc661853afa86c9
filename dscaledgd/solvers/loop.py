"""The batch iteration shared by every batch method: pass → scalars → step → safeguard.

The loop talks to the data only through the **engine protocol**
(:mod:`dscaledgd.engine.protocol`):

``engine.pass_(state, it)``
    submit one data pass at ``state`` (loss, gradients, Grams); lazy.
``engine.scalars(pass_)``
    the iteration's one gather: a ``PassStats`` with ``loss``, ``residual``,
    the per-factor ``r × r`` Grams ``FF``, ``FG``, ``GG`` and ``H``, and the
    gradients ``PG`` of the small parameters (the Tucker core).
``engine.step(state, pass_, update)``
    the new state: ``F_k A_k + G_k B_k`` per factor, computed block by block
    where the data lives, and the new small parameters of the
    :class:`~dscaledgd.problems.spec.Update`.
``engine.materialize(state)``
    called every ``materialize_every`` iterations on a new state before its
    pass: re-roots the worker-resident factors so that the scheduler forgets
    their task history and its graph stays bounded (identity for local
    executors).

What a user sees of the run (history, progress, callback, early stopping,
warnings, the outcome) is the :class:`~.driver.Driver`'s, shared with epoch
methods.

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
from dataclasses import dataclass

import numpy as np

from . import resume as resume_
from .driver import Driver, LoopConfig, LoopOutcome
from .scaledgd import (
    GramSolveError,
    Preconditioner,
    make_update,
    scaled_grad_norm2,
    with_ridge,
    x_norm2,
)

__all__ = ["LoopConfig", "LoopOutcome", "run"]

logger = logging.getLogger("dscaledgd")


@dataclass
class _Point:
    state: object
    pas: object
    stats: object
    #: index of this iterate's history entry (-1: not yet recorded)
    k: int = -1
    #: a re-seeded point: its history entry still describes the point it replaced
    reseeded: bool = False
    #: the iteration index its pass was made for
    it: int = 0


def _finite(stats) -> bool:
    if not (math.isfinite(stats.loss) and math.isfinite(stats.residual)):
        return False
    small = (*stats.FF, *stats.FG, *stats.GG, *stats.PG.values())
    return all(np.all(np.isfinite(M)) for M in small)


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
    checkpoint=None,
    resume=None,
) -> LoopOutcome:
    """Iterate from ``state`` until a stopping rule fires. See the module docstring.

    ``reseed``: an optional :class:`~dscaledgd.solvers.reseed.CoherentReseed`
    applied to every accepted point (its extra pass is counted).

    ``checkpoint``: an object with ``due(n_iter, max_iter)`` and
    ``save(n_iter, meta, arrays)`` (:class:`dscaledgd.storage.checkpoints.Checkpoints`)
    and a ``solve_meta`` dict stored with each snapshot; ``resume``: a
    checkpoint read back, to continue from instead of ``state``
    (:mod:`.resume`).
    """
    drv = Driver(cfg, desc)

    def submit(st, it):
        """The pass at ``st``, submitted (the first half of ``evaluate``)."""
        if drv.passes and drv.passes % cfg.materialize_every == 0:
            st = engine.materialize(st)
        pas = engine.pass_(st, it)
        drv.passes += 1
        return st, pas

    def finish(st, pas, it):
        return _Point(st, pas, with_ridge(engine.scalars(pas), cfg.reg), it=it)

    def evaluate(st, it):
        return finish(*submit(st, it), it)

    def prepared(cur, step):
        """``(step, P, update)`` of the proposed ``step`` from ``cur``; raises
        GramSolveError."""
        P = precond.matrices(cur.stats, step, ridge=cfg.reg)
        step = rule.scale(cur.stats, step, P)  # step sizes that need P (ScaledSM, Polyak)
        return step, P, make_update(precond, P, cur.stats, cur.state, step, cfg.reg)

    try:
        if resume is None:
            cur = evaluate(state, 0)
            if not _finite(cur.stats):
                raise FloatingPointError(
                    "The initial point has a non-finite loss or Gram; the initialisation "
                    "failed. Check the data scale, or pass init='random'."
                )
            guard = _Guard(cur.stats, norm_ref, rule, cfg.guard_on)
            cur.k = drv.record(cur.stats)
            drv.start_validation(cur)
            rule.start(cur.stats)
            best = cur
            n_iter, quiet = 0, 0
        else:
            engine.restore_carried(resume["meta"]["state"].get("engine", {}))
            pts = resume_.restore_points(resume, engine, evaluate)
            cur, best, drv.best_val = pts["cur"], pts["best"], pts["best_val"]
            guard = _Guard(cur.stats, norm_ref, rule, cfg.guard_on)
            n_iter, quiet = resume_.restore_objects(resume, rule, guard, reseed, drv)
            drv.resumed(n_iter)
        status, message, saved, rel_step = None, "", n_iter, None
        ahead = None  # the next step, submitted while a re-seed check was pending
        while status is None:
            if cur.stats.residual <= cfg.tol:
                status = "converged"
                message = f"relative residual {cur.stats.residual:.3g} <= tol={cfg.tol:g}"
                break
            if checkpoint is not None and n_iter != saved and checkpoint.due(n_iter, cfg.max_iter):
                points = {"cur": cur, "best": best, "best_val": drv.best_val}
                meta, arrays = resume_.snapshot(
                    n_iter, quiet, points, rule, guard, reseed, drv, checkpoint.solve_meta
                )
                meta["engine"] = engine.carried()
                checkpoint.save(n_iter, meta, arrays)
                saved = n_iter
            if n_iter >= cfg.max_iter:
                status = "max_iter"
                message = f"max_iter={cfg.max_iter} reached with relative residual "
                if cfg.return_best:  # a monitored run: the residual is not the measure
                    message = (
                        f"max_iter={cfg.max_iter} reached while the {cfg.monitor_label} still "
                        f"improved by a relative {cfg.monitor_tol:g} within {cfg.patience} "
                        "iterations"
                    )
                elif rule.stall_on_step and rel_step is not None:  # l1: the residual has f*
                    message += (
                        f"{cur.stats.residual:.3g} and relative step |dX|/|X| "
                        f"{rel_step:.3g} > stall_tol={cfg.stall_tol:g} (the l1 loss ends a "
                        "run on the relative step, as outliers can keep the residual large; "
                        "geometric steps shrink by rho each iteration: raise max_iter)"
                    )
                else:
                    message += f"{cur.stats.residual:.3g} > tol={cfg.tol:g}"
                break
            reason = None
            with engine.ex.span("dscaledgd-iter"):
                if ahead is not None and ahead[0] is cur:  # submitted already
                    _, step, P, st, pas = ahead
                else:
                    step = rule.propose(cur.stats)
                    try:  # the ridge's curvature belongs in the preconditioner: λ + reg_k
                        step, P, update = prepared(cur, step)
                    except GramSolveError as exc:
                        reason = f"Gram solve failed ({exc})"
                    if reason is None:
                        st, pas = submit(engine.step(cur.state, cur.pas, update), n_iter + 1)
                ahead = None
                if reason is None:
                    new = finish(st, pas, n_iter + 1)
                    reason = guard.check(new.stats)
            if reason is not None:
                ev = drv.event(
                    {
                        "iteration": n_iter,
                        "event": "diverged",
                        "reason": reason,
                        "step_size": step.eta,
                        "passes": drv.passes,
                    }
                )
                logger.info("divergence at iteration %d (%s)", n_iter, reason)
                if not rule.recover():
                    status = "diverged"
                    message = (
                        f"diverged at iteration {n_iter + 1} ({reason}) with step size "
                        f"{step.eta:g}; returning the best iterate, iteration {best.k} "
                        f"(loss {best.stats.loss:.3g}, relative residual "
                        f"{best.stats.residual:.3g})"
                    )
                    cur = best
                    n_iter = drv.truncate(ev, best.k, n_iter)
                    break
                ev["event"] = "restored"
                cur = best  # restore the best accepted iterate and its gradient
                continue
            best_before = best.stats.loss
            prev, cur = cur, new
            n_iter += 1
            if cur.stats.loss < best.stats.loss:
                best = cur
            cur.k = drv.record(cur.stats, step)
            drv.progress(cur.stats, step)
            still, rel_step = _quiet(rule, cfg, prev, cur, best, best_before, step, P)
            quiet = quiet + 1 if still else 0
            if drv.accepted(cur, n_iter, step, _gatherer(cur.state)) == "callback":
                status, message = "callback", f"callback stopped the run at iteration {n_iter}"
                break
            stop = drv.early_stop()
            if stop is not None:
                status = "early_stopped"
                by = f" by a relative {cfg.monitor_tol:g}" if cfg.monitor_tol else ""
                message = (
                    f"the {cfg.monitor_label} did not improve{by} for {cfg.patience} "
                    f"iterations; returning iteration {stop.k} "
                    f"({cfg.monitor_label} {drv.monitored(stop):.6g})"
                )
                cur = stop
                break
            if quiet >= cfg.patience and cur.stats.residual > cfg.tol:
                status = "stalled"
                what = (
                    "the relative step |dX|/|X| stayed below"
                    if rule.stall_on_step
                    else "the best loss improved by less than"
                )
                message = (
                    f"{what} stall_tol={cfg.stall_tol:g} for {cfg.patience} iterations; "
                    f"relative residual {cur.stats.residual:.3g}"
                )
            acted = None  # the rule's look at this step (an edge shrink, a stagnation restore)
            if status is None and n_iter < cfg.max_iter:
                acted = rule.accepted(prev.stats, cur.stats, step, P, best.stats.loss)
            if acted is not None and (acted[0] == "shrunk" or rule.recover()):
                restore = acted[0] == "restore"
                drv.event(
                    {
                        "iteration": n_iter,
                        "event": "restored" if restore else "step_shrunk",
                        "reason": acted[1],
                        "step_size": step.eta if restore else rule.eta,
                        "passes": drv.passes,
                    }
                )
                logger.info("%s at iteration %d (%s)", acted[0], n_iter, acted[1])
                if restore:
                    cur, quiet = best, 0  # the best accepted iterate and its gradient
                    continue
            if reseed is not None and status is None and n_iter < cfg.max_iter:
                # (never at the last iteration: a fresh re-seed would be what is returned)
                due = checkpoint is not None and checkpoint.due(n_iter, cfg.max_iter)
                out, ahead = _reseed_check(
                    reseed, engine, cur, n_iter, rule, cfg, drv, n_iter != saved and due,
                    prepared, submit,
                )  # fmt: skip
                pt = evaluate(out[0], n_iter) if out is not None else None
                if pt is not None and _finite(pt.stats):
                    pt.k, pt.reseeded = cur.k, True
                    drv.event(
                        {
                            "iteration": n_iter,
                            **out[1],
                            "loss_before": cur.stats.loss,
                            "loss": pt.stats.loss,
                            "passes": drv.passes,
                        }
                    )
                    cur = pt
                    logger.info("re-seeded components %s", out[1]["components"])
                    if cur.stats.loss < best.stats.loss:
                        best = cur
    except BaseException:
        drv.close()
        raise
    best_val = drv.best_val
    if cfg.return_best and best_val is not None and best_val is not cur and status != "diverged":
        if status != "early_stopped":
            message += (
                f"; returning iteration {best_val.k}, the best {cfg.monitor_label} "
                f"({drv.monitored(best_val):.6g})"
            )
        cur = best_val
    if cur.reseeded:  # the returned re-seeded point takes its iterate's history entry
        drv.overwrite(cur.k, cur.stats)
    return drv.finish(cur.state, status, message, n_iter, cur.k)


def _reseed_check(reseed, engine, cur, n_iter, rule, cfg, drv, saving: bool, prepared, submit):
    """``reseed`` at the accepted point ``cur``: ``(its result, the step ahead)``.

    A re-seed's coherence check (:meth:`~.reseed.CoherentReseed.prepare`) needs a
    gather. Rather than wait for it, the next iteration's step from ``cur`` is
    submitted first (``ahead``: the tasks the loop's next turn would submit), so
    that the check and the step share one wait. A re-seed drops that step and its
    pass (the pass count is restored); otherwise the next turn uses it. Only where
    the next turn steps from ``cur`` at once: not converged, no checkpoint to save
    (``saving``). The iterates, and so the bits, are those of a run that waits.
    """
    prepare = getattr(reseed, "prepare", None)
    if prepare is None:
        return reseed(engine, cur.state, cur.stats, rule.c, cfg.seed), None
    pending = prepare(engine, cur.state, cur.stats)
    if pending is None:
        return None, None
    ahead, passes = None, drv.passes
    if cur.stats.residual > cfg.tol and not saving:
        try:
            step, P, update = prepared(cur, rule.propose(cur.stats))
        except GramSolveError:
            update = None  # the next turn meets the same error, and handles it
        if update is not None:
            with engine.ex.span("dscaledgd-iter"):
                st, pas = submit(engine.step(cur.state, cur.pas, update), n_iter + 1)
            ahead = (cur, step, P, st, pas)
    out = pending(rule.c, cfg.seed)
    if out is not None:
        drv.passes = passes  # the step ahead is dropped
        ahead = None
    return out, ahead


def _quiet(rule, cfg, prev, cur, best, best_before, step, P) -> tuple[bool, float]:
    """One more iteration without progress (the stall rule), and the relative step.

    The best loss stopped improving while the loss sits at it (not in a
    transient: ScaledGD's loss may rise far above its minimum and recover),
    and the iterates barely move: the relative step ``‖ΔX‖/‖X‖`` (first
    order: ``η ‖G‖*`` in the scaled metric) is small, unlike on the plateau
    of a small random start, where ``X`` still grows fast. Rules that stall
    on the step (l1) watch the relative step only.
    """
    moved = step.eta * np.sqrt(max(scaled_grad_norm2(prev.stats, P), 0.0))
    rel_step = moved / max(np.sqrt(max(x_norm2(cur.stats), 0.0)), 1e-300)
    if rule.stall_on_step:
        return rel_step < cfg.stall_tol, rel_step
    gain = (best_before - best.stats.loss) / max(best.stats.loss, 1e-300)
    at_floor = cur.stats.loss <= 2.0 * best.stats.loss and (
        np.any(np.asarray(cfg.reg) > 0) or rel_step < np.sqrt(cfg.stall_tol)
    )
    return gain < cfg.stall_tol and at_floor, rel_step


def _gatherer(state):
    return lambda: tuple(F.gather() for F in state)


class _Guard:
    """Divergence test against the initial point, with the step rule's thresholds.

    Diverged: a non-finite loss or Gram; a loss above ``rule.loss_blowup ×``
    the initial loss; or a squared norm above ``rule.norm_blowup ×`` the
    reference ``max(initial value, norm_ref)``: the largest factor's
    (``guard_on="factors"``, balanced matrix factors) or the model's ``‖X‖²``
    (``"model"``: Tucker, whose factor scale is free). The best loss is
    deliberately *not* the reference: ScaledGD's loss legitimately rises by
    more than 1000x above its running minimum during transients at large κ.
    """

    def __init__(self, stats0, norm_ref: float, rule, guard_on: str = "factors"):
        self.loss0 = stats0.loss
        self.model = guard_on == "model"
        self.what = "model squared norm" if self.model else "factor squared norm"
        self.ref = max(self._norm(stats0), norm_ref)
        self.loss_blowup = rule.loss_blowup
        self.norm_blowup = rule.norm_blowup

    def _norm(self, stats) -> float:
        if self.model:
            return x_norm2(stats)
        return max(float(np.trace(FF)) for FF in stats.FF)

    def check(self, stats) -> str | None:
        if not _finite(stats):
            return "non-finite loss or Gram"
        if stats.loss > self.loss_blowup * self.loss0:
            return f"loss {stats.loss:.3g} > {self.loss_blowup:g} x initial {self.loss0:.3g}"
        tr = self._norm(stats)
        if tr > self.norm_blowup * self.ref:
            return f"{self.what} {tr:.3g} > {self.norm_blowup:g} x initial {self.ref:.3g}"
        return None
