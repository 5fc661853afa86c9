"""The run driver every method shares: history, progress, callback, early stop, outcome.

A method's iteration (the batch loop of :mod:`.loop`, or an epoch method
such as ScaledSGD) decides *what* one step is. The :class:`Driver` owns what
a user sees of a run, whatever the method:

* the **history**: per recorded point, ``loss``, ``residual``, ``step_size``,
  ``damping``, ``adaptive_damping``, ``time``, ``passes`` and, with held-out
  data, ``validation`` (:meth:`Driver.record`);
* the **progress bar** (tqdm, only when interactive or asked for);
* the **callback**, which may stop the run by raising ``StopIteration``;
* **early stopping** on held-out error with a patience, returning the best
  validation point;
* the end of a run (:meth:`Driver.finish`): the ``ConvergenceWarning`` of
  ``max_iter`` and ``diverged``, the history as arrays, and the
  :class:`LoopOutcome`;
* the hook for checkpoints: :meth:`Driver.on_accept` is called on every
  accepted point, with the iterate, so a checkpoint writer needs nothing from
  the method.

No dask import here.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .._interactive import in_notebook, interactive  # noqa: F401  (in_notebook: re-export)
from ..exceptions import ConvergenceWarning, user_stacklevel
from ..result import HISTORY_KEYS, IterationState

__all__ = ["LoopConfig", "LoopOutcome", "Driver"]

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
    #: ridge penalty Σ_k (reg_k/2) ‖F_k‖²_W added to the objective: one value per
    #: factor (completion's Spark-unit reg, converted), or one for all
    reg: float | tuple = 0.0
    #: seed of the random directions of a re-seed (:mod:`.reseed`)
    seed: int = 0
    #: called with ``(iteration, state)`` on every accepted point (checkpoints)
    on_accept: Callable | None = None
    #: the guard's norm test: ``"factors"`` (max ‖F_k‖²) or ``"model"`` (‖X‖²)
    guard_on: str = "factors"
    #: the ``stats.extra`` entry whose best point early stopping returns (held-out RMSE,
    #: or tensor RPCA's self-supervised criterion ``"l1"``), how it reads in messages,
    #: and the relative improvement that resets the patience
    monitor: str = "validation"
    monitor_label: str = "validation RMSE"
    monitor_tol: float = 0.0
    #: end every run (not only an early stop) at the best monitored point
    return_best: bool = False
    #: the patience counts from this iteration on (tensor RPCA: once the threshold has
    #: come down to the data's scale; before, its criterion is flat by design)
    monitor_from: int = 0


@dataclass
class LoopOutcome:
    state: object
    status: str
    n_iter: int
    message: str
    history: dict
    events: list = field(default_factory=list)
    passes: int = 0
    #: index into ``history`` of the returned iterate (see :mod:`.loop`)
    best_iteration: int = 0


def show_progress(progress: bool | None) -> bool:
    """``progress=None``: a bar when stderr is a terminal or the run is in a Jupyter
    kernel (stderr is not a tty there; ``tqdm.auto`` draws a widget, or text)."""
    if progress is not None:
        return bool(progress)
    return interactive()


class Driver:
    """What a run records and shows, and how it ends (see the module docstring)."""

    def __init__(self, cfg: LoopConfig, desc: str = "dscaledgd"):
        self.cfg, self.desc = cfg, desc
        self.t0 = time.perf_counter()
        self.hist = {k: [] for k in HISTORY_KEYS}
        self.events: list = []
        self.passes = 0
        self.bar = None
        if show_progress(cfg.progress):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.max_iter, desc=desc, leave=False)
        self.best_val, self.val_wait, self.val_ref = None, 0, math.inf

    # ---------------------------------------------------------- history
    def record(self, stats, step=None) -> int:
        """Append the point described by ``stats`` (reached with ``step``); its index."""
        h = self.hist
        for k, v in (
            ("loss", stats.loss),
            ("residual", stats.residual),
            ("step_size", step.eta if step else math.nan),
            ("damping", step.damping if step else math.nan),
            ("adaptive_damping", step.mu if step else math.nan),
            ("time", self.elapsed()),
            ("passes", self.passes),
        ):
            h[k].append(v)
        for key, v in stats.extra.items():  # held-out RMSE, tensor RPCA's criterion, ...
            h.setdefault(key, []).append(v)
        return len(h["loss"]) - 1

    def resumed(self, n_iter: int) -> None:
        """The run continues from a checkpoint at iteration ``n_iter`` (the bar catches up)."""
        if self.bar is not None:
            self.bar.update(n_iter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def overwrite(self, k: int, stats) -> None:
        """Entry ``k`` now describes ``stats`` (a re-seeded point that took its place)."""
        self.hist["loss"][k] = stats.loss
        self.hist["residual"][k] = stats.residual
        if "validation" in self.hist:
            self.hist["validation"][k] = stats.extra["validation"]

    def truncate(self, event: dict, k: int, n_iter: int) -> int:
        """Cut the history after the returned iterate ``k``; record the cut in ``event``.

        Returns the new ``n_iter`` (``k``).
        """
        h = self.hist
        event.update(
            returned_iteration=k,
            discarded_iterations=n_iter - k,
            discarded_loss=[float(v) for v in h["loss"][k + 1 :]],
            discarded_residual=[float(v) for v in h["residual"][k + 1 :]],
        )
        for v in h.values():
            del v[k + 1 :]
        return k

    def event(self, record: dict) -> dict:
        self.events.append(record)
        return record

    # ---------------------------------------------------------- per point
    def progress(self, stats, step) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{stats.loss:.3e}", step=f"{step.eta:.3g}")

    def accepted(self, point, n_iter: int, step, gather: Callable) -> str | None:
        """Validation tracking, checkpoint hook and callback for an accepted ``point``.

        ``point`` has ``stats``, ``state`` and ``k`` (its history index).
        Returns ``"callback"`` when the callback stopped the run, else ``None``.
        """
        stats = point.stats
        val = stats.extra.get(self.cfg.monitor)
        if val is not None:
            if self.best_val is None or val < self.monitored(self.best_val):
                self.best_val = point
            if n_iter < self.cfg.monitor_from or val < self.val_ref * (1.0 - self.cfg.monitor_tol):
                self.val_ref, self.val_wait = min(val, self.val_ref), 0
            else:
                self.val_wait += 1
        if self.cfg.on_accept is not None:
            self.cfg.on_accept(n_iter, point.state)
        if self.cfg.callback is None:
            return None
        st = IterationState(
            iteration=n_iter,
            loss=stats.loss,
            residual=stats.residual,
            step_size=step.eta,
            damping=step.damping,
            time=self.hist["time"][-1],
            passes=self.passes,
            validation=stats.extra.get("validation"),
            core=point.state.params.get("core"),
            _gather=gather,
        )
        try:
            self.cfg.callback(st)
        except StopIteration:
            return "callback"
        return None

    def start_validation(self, point) -> None:
        """The initial point is the first best-validation candidate."""
        if self.cfg.monitor in point.stats.extra:
            self.best_val = point
            self.val_ref = self.monitored(point)

    def monitored(self, point) -> float:
        """The monitored value of ``point`` (its held-out RMSE, or the criterion)."""
        return float(point.stats.extra[self.cfg.monitor])

    def early_stop(self):
        """The best-validation point when the patience ran out, else ``None``."""
        if self.best_val is not None and self.val_wait >= self.cfg.patience:
            return self.best_val
        return None

    # ---------------------------------------------------------- the end
    def finish(self, state, status: str, message: str, n_iter: int, best_iteration: int):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if status in ("max_iter", "diverged"):
            warnings.warn(
                f"{self.desc}: {message}", ConvergenceWarning, stacklevel=user_stacklevel()
            )
        history = {k: np.asarray(v, dtype=np.float64) for k, v in self.hist.items()}
        return LoopOutcome(
            state=state,
            status=status,
            n_iter=n_iter,
            message=message,
            history=history,
            events=self.events,
            passes=self.passes,
            best_iteration=best_iteration,
        )

    def close(self) -> None:
        """Close the bar on an exception (``finish`` closes it otherwise)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
