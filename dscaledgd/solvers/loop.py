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
values, a loss far above the best seen, factor norms blowing up, or a Gram
that cannot be factorised. It does **not** enforce monotone decrease. On
divergence it restores the best accepted iterate (kept as a snapshot, with
its gradient) and asks the step rule to recover; a rule that cannot (a fixed
step) ends the run with status ``"diverged"`` and a warning. Every restore is
recorded in ``info["events"]``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..exceptions import ConvergenceWarning
from ..result import HISTORY_KEYS, IterationState
from .scaledgd import GramSolveError, Preconditioner

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
    #: divergence: loss above this multiple of the best loss seen
    loss_blowup: float = 1e4
    #: divergence: a factor's squared norm above this multiple of the reference
    norm_blowup: float = 1e2
    #: re-root the factors every this many data passes (bounded scheduler graph)
    materialize_every: int = 20


@dataclass
class LoopOutcome:
    state: list
    status: str
    n_iter: int
    message: str
    history: dict
    events: list = field(default_factory=list)
    passes: int = 0


@dataclass
class _Point:
    state: list
    pas: object
    stats: object


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


def run(engine, state, rule, precond: Preconditioner, cfg: LoopConfig, *, norm_ref: float,
        desc: str = "dscaledgd") -> LoopOutcome:
    """Iterate from ``state`` until a stopping rule fires. See the module docstring."""
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
        return _Point(st, pas, engine.scalars(pas))

    def record(pt, step):
        s = pt.stats
        for k, v in (
            ("loss", s.loss),
            ("residual", s.residual),
            ("step_size", step.eta if step else math.nan),
            ("damping", step.damping if step else math.nan),
            ("time", time.perf_counter() - t0),
            ("passes", passes),
        ):
            hist[k].append(v)

    cur = evaluate(state)
    if not _finite(cur.stats):
        raise FloatingPointError(
            "The initial point has a non-finite loss or Gram; the initialisation failed. "
            "Check the data scale, or pass init='random'."
        )
    ref = [max(float(np.trace(FF)), norm_ref) for FF in cur.stats.FF]
    loss0 = cur.stats.loss
    record(cur, None)
    rule.start(cur.stats, getattr(precond, "sigma1", 1.0))
    best = cur
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
                try:
                    P = precond.matrices(cur.stats.H, step.damping)
                except GramSolveError as exc:
                    reason = f"Gram solve failed ({exc})"
                if reason is None:
                    r = len(P[0])
                    A = [np.eye(r)] * len(P)
                    B = [-step.eta * Pk for Pk in P]
                    new = evaluate(engine.step(cur.state, cur.pas, A, B))
                    reason = _divergence(new.stats, best.stats, loss0, ref, cfg)
            if reason is not None:
                events.append(
                    {"iteration": n_iter, "event": "diverged", "reason": reason,
                     "step_size": step.eta, "passes": passes}
                )
                logger.info("dscaledgd: divergence at iteration %d (%s)", n_iter, reason)
                if not rule.recover():
                    status = "diverged"
                    message = (
                        f"diverged at iteration {n_iter + 1} ({reason}) with step size "
                        f"{step.eta:g}; returning the best iterate (loss {best.stats.loss:.3g})"
                    )
                    cur = best
                    break
                events[-1]["event"] = "restored"
                cur = best  # restore the best accepted iterate and its gradient
                continue
            rel_change = abs(new.stats.loss - cur.stats.loss) / max(cur.stats.loss, 1e-300)
            cur = new
            n_iter += 1
            rule.accept(cur.stats)
            if cur.stats.loss < best.stats.loss:
                best = cur
            record(cur, step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{cur.stats.loss:.3e}", step=f"{step.eta:.3g}")
            quiet = quiet + 1 if rel_change < cfg.stall_tol else 0
            if cfg.callback is not None:
                st = IterationState(
                    iteration=n_iter,
                    loss=cur.stats.loss,
                    residual=cur.stats.residual,
                    step_size=step.eta,
                    damping=step.damping,
                    time=hist["time"][-1],
                    passes=passes,
                    _gather=_gatherer(cur.state),
                )
                try:
                    cfg.callback(st)
                except StopIteration:
                    status, message = "callback", f"callback stopped the run at iteration {n_iter}"
                    break
            if quiet >= cfg.patience and cur.stats.residual > cfg.tol:
                status = "stalled"
                message = (
                    f"loss changed by less than stall_tol={cfg.stall_tol:g} (relative) for "
                    f"{cfg.patience} iterations; relative residual {cur.stats.residual:.3g}"
                )
    finally:
        if bar is not None:
            bar.close()
    if status in ("max_iter", "diverged"):
        warnings.warn(f"{desc}: {message}", ConvergenceWarning, stacklevel=3)
    history = {k: np.asarray(v, dtype=np.float64) for k, v in hist.items()}
    return LoopOutcome(
        state=cur.state, status=status, n_iter=n_iter, message=message, history=history,
        events=events, passes=passes,
    )


def _gatherer(state):
    return lambda: tuple(F.gather() for F in state)


def _divergence(stats, best_stats, loss0, ref, cfg: LoopConfig) -> str | None:
    """A reason string when the new point has diverged, else ``None``.

    The loss test compares with the best loss, floored at ``1e-12 ×`` the
    initial loss so that round-off jitter near the optimum never counts.
    """
    if not _finite(stats):
        return "non-finite loss or Gram"
    if stats.loss > cfg.loss_blowup * max(best_stats.loss, 1e-12 * loss0):
        return f"loss {stats.loss:.3g} > {cfg.loss_blowup:g} x best {best_stats.loss:.3g}"
    for k, FF in enumerate(stats.FF):
        if np.trace(FF) > cfg.norm_blowup * ref[k]:
            return f"factor {k} squared norm {np.trace(FF):.3g} > {cfg.norm_blowup:g} x reference"
    return None
