"""The engine protocol: what the shared solvers may ask of the data (DESIGN.md §1).

An engine owns the data, its chunking and the executor it runs on. The
solvers (:mod:`dscaledgd.solvers`) see only the methods below, so the same
loop runs on the in-memory NumPy oracle, a thread pool and a cluster, for
matrices (completion, sensing, RPCA) and tensors (Tucker completion) alike.

**State.** An iterate is a :class:`~dscaledgd.problems.spec.State`: a tuple
of row-blocked factors (:class:`~dscaledgd.engine.factors.Blocked`, whose
blocks live where the data is) plus small NumPy parameters on the client
(``{"core": S}`` for Tucker; none for a matrix).

**One iteration** is ``pass_`` → ``scalars`` → (the solver's step rule) →
``step``:

* ``pass_(state, it)`` submits one data pass at ``state`` for iteration
  ``it`` (the index lets schedules such as tensor RPCA's threshold decay
  depend on it) and returns handles; nothing is gathered.
* ``scalars(pas)`` is the iteration's **one** gather: a
  :class:`~dscaledgd.engine.base.PassStats` with the loss, the relative
  residual, per factor the ``r × r`` Grams ``FF = FᵀF``, ``FG = FᵀG``,
  ``GG = GᵀG`` and the preconditioning Gram ``H``, and ``PG``, the
  gradients of the small parameters.
* ``step(state, pas, update)`` applies an
  :class:`~dscaledgd.problems.spec.Update`: ``F_k A_k + G_k B_k`` block by
  block where the blocks live, and the small parameters' new values.
* ``materialize(state)`` re-roots worker-resident blocks so the scheduler's
  graph stays bounded (the loop calls it every ``materialize_every`` passes).
* ``carried()`` / ``restore_carried(d)``: what the engine carries from one
  pass to the next beyond the iterate (JSON; tensor RPCA's fit-following
  thresholds), stored in a checkpoint and put back before a resumed run
  re-evaluates its points. Most engines carry nothing (``{}``).

Anything else a solver needs from the data is an engine method as well
(``spectral``, ``fit_sums``, ``column_max_sq``, ``with_random``, ...), never
a reach into an engine's attributes. The generic chunk machinery all engines
share is :func:`dscaledgd.engine.blockwise.map_reduce`; the factor-level
operations are :class:`dscaledgd.engine.base.FactorEngine`'s.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..problems.spec import ProblemSpec, State, Update

__all__ = ["Engine"]


@runtime_checkable
class Engine(Protocol):
    """The methods and attributes every engine provides (see the module docstring)."""

    #: the executor (threads, distributed futures, inline)
    ex: Any
    #: the problem's constants (default η, damping fraction, loss scales)
    spec: ProblemSpec
    #: row bounds of each factor's blocks
    factor_bounds: list
    #: ``‖observed data‖²`` (the relative residual's denominator)
    value_norm2: float
    #: the observed fraction (1 for sensing)
    p: float
    symmetric: bool

    def pass_(self, state: State, it: int) -> Any: ...

    def scalars(self, pas: Any) -> Any: ...

    def step(self, state: State, pas: Any, update: Update) -> State: ...

    def materialize(self, state: State) -> State: ...

    def preconditioner_grams(self, FF: list) -> list: ...

    def from_numpy(self, arrays: list, params: dict | None = None) -> State: ...

    def random_factors(self, rank: int, *, seed: int, scale: float) -> State: ...

    def transform(self, state: State, A: list) -> State: ...

    def column_max_sq(self, state: State, W: list, wait: bool = True) -> list[np.ndarray]: ...

    def with_random(self, state: State, M: list, N: list, seeds: list) -> State: ...

    def carried(self) -> dict: ...

    def restore_carried(self, carried: dict) -> None: ...

    def close(self) -> None: ...
