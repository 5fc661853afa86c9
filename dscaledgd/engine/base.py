"""What every engine shares: pass statistics and the factor-level operations.

An engine (DESIGN.md §1) owns the data and its chunking; this base class
holds the parts that depend only on the factors being row-blocked
:class:`~dscaledgd.engine.factors.Blocked` matrices: the preconditioning
Grams, the update ``F A + G B``, the re-rooting of futures, initial factors,
and the assembly of the iteration's one gather into :class:`PassStats`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..problems.spec import State, Update
from .factors import Blocked, _al, _stats, combine, random_blocked, sum_small

__all__ = ["PassStats", "FactorEngine", "machine_memory"]


@dataclass
class PassStats:
    """The small results of one data pass (all NumPy, on the client)."""

    loss: float
    residual: float
    sumsq: float
    #: an estimate of ``‖X − X*‖_F²`` on noiseless data (``‖P_Ω(X) − Y‖²/p``, ``‖A(X) − y‖²``)
    err2: float
    FF: list
    FG: list
    GG: list
    H: list
    extra: dict = field(default_factory=dict)
    #: per factor ``Fᵀ diag(w) F`` when row weights are set (weighted ridge)
    FWF: list | None = None
    #: gradients of the small parameters by name (the Tucker core), NumPy
    PG: dict = field(default_factory=dict)


def _colmax_sq(X, W):
    X, W = _al(X), _al(W)  # one layout for BLAS, whatever the message did
    return np.max((X @ W) ** 2, axis=0) if len(X) else np.zeros(W.shape[1])


def _colmax_sq_many(blocks, W):
    return np.max(np.vstack([_colmax_sq(X, W) for X in blocks]), axis=0)


def machine_memory() -> int:
    """Physical memory of this machine in bytes (8 GiB when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 8 << 30


class FactorEngine:
    """Factor-level operations of an engine (see :mod:`dscaledgd.engine.protocol`).

    Subclasses set ``ex`` (the executor), ``spec`` (the problem's
    :class:`~dscaledgd.problems.spec.ProblemSpec`), ``symmetric``,
    ``factor_bounds`` (the row bounds of each factor), ``value_norm2``
    (``‖data‖²``) and, for the weighted ridge, ``_weights``. States are
    :class:`~dscaledgd.problems.spec.State`; methods that return a new
    iterate keep the small parameters of the one they were given.
    """

    _weights = None
    #: the executor of the factor-level operations when it is not ``ex`` (an engine
    #: whose factors are small enough to live on the client sets an inline one)
    _fex = None

    @property
    def fex(self):
        """Where the factors live and their operations run: ``ex``, or the client."""
        return self._fex if self._fex is not None else self.ex

    #: per factor, the worker slot owning each block (:mod:`.placement`), or None
    block_slots = None

    def _slots(self, k: int):
        return None if self.block_slots is None else self.block_slots[k]

    @property
    def n_factors(self) -> int:
        return len(self.factor_bounds)

    def pass_stats(self, loss, sumsq, err2, stats, extra=None, PG=None, H=None) -> PassStats:
        """Assemble the gathered per-block ``(FᵀF, FᵀG, GᵀG[, FᵀWF])`` into :class:`PassStats`.

        ``H``: the preconditioning Grams, when not :meth:`preconditioner_grams`
        of the ``FᵀF`` (Tucker's ``Ŭ_kᵀŬ_k`` needs the core).
        """
        FF, FG, GG, FWF = [], [], [], []
        for per_block in stats:
            FF.append(sum_small([s[0] for s in per_block]))
            FG.append(sum_small([s[1] for s in per_block]))
            GG.append(sum_small([s[2] for s in per_block]))
            if self._weights:
                FWF.append(sum_small([s[3] for s in per_block]))
        return PassStats(
            loss=float(loss),
            residual=float(np.sqrt(max(sumsq, 0.0) / self.value_norm2)),
            sumsq=float(sumsq),
            err2=float(err2),
            FF=FF,
            FG=FG,
            GG=GG,
            H=self.preconditioner_grams(FF) if H is None else H,
            extra=extra or {},
            FWF=FWF or None,
            PG=PG or {},
        )

    def stats_parts(self, state: list, G: list) -> list:
        """Per factor, the per-block Gram tasks of the pass at ``state``."""
        return [
            state[k].stats_parts(G[k], self._weights[k][0] if self._weights else None)
            for k in range(self.n_factors)
        ]

    def slot_stats_parts(self, state: list, G: list) -> list:
        """:meth:`stats_parts` with one task per worker slot, not one per block, on a
        cluster: per factor a :class:`~.blockwise.Collected` (gather its ``handles``;
        ``in_order`` gives the per-block results of :meth:`stats_parts`)."""
        from .blockwise import Collected

        out = []
        for k, (F, Gk) in enumerate(zip(state, G)):
            w = self._weights[k][0] if self._weights else [None] * F.nblocks
            slots = F.slots or Gk.slots
            args = zip(F.blocks, Gk.blocks, w)
            items = [(slots[a], a, fgw) for a, fgw in enumerate(args)]
            out.append(Collected.map(self.ex, _stats, items, name="stats"))
        return out

    def grams(self, state) -> list:
        """``F_kᵀF_k`` of every factor (one gather)."""
        parts = self.fex.gather([F.gram_parts() for F in state])
        return [sum_small(p) for p in parts]

    def preconditioner_grams(self, FF: list) -> list:
        """The Gram that preconditions each factor: ``RᵀR`` for ``L``, ``LᵀL`` for ``R``."""
        return [FF[0]] if self.symmetric else [FF[1], FF[0]]

    def step(self, state: State, pas, update: Update) -> State:
        """New factors ``F_k A_k + G_k B_k``, block by block, and the new small parameters.

        With row weights set, ``G_k`` is row-scaled by ``1/w`` (the degree
        preconditioner of the weighted ridge).
        """
        A, B = update.A, update.B
        factors = [
            combine(F, A[k], pas.G[k], B[k], self._weights[k][1] if self._weights else None)
            for k, F in enumerate(state)
        ]
        return State(factors, {**state.params, **update.params})

    def materialize(self, state: State) -> State:
        """Make ``state`` resident with no task history (bounds the scheduler's graph)."""
        return State([F.reroot() for F in state], dict(_params(state)))

    def column_max_sq(self, state: list, W: list, wait: bool = True):
        """Per factor ``k``, ``max_i ((F_k W_k)_{ij})²`` for every column ``j`` (one gather).

        The coherence statistic of a component with row-space direction
        ``F_k W_k`` (:mod:`dscaledgd.solvers.reseed`). ``wait=False`` submits the
        tasks and returns a function that gathers them (the loop submits the next
        step before it waits: :func:`dscaledgd.solvers.loop.run`).
        """
        parts = []
        for F, Wk in zip(state, W):
            if F.slots is None:
                parts.append(
                    [self.fex.submit(_colmax_sq, b, Wk, name="coherence") for b in F.blocks]
                )
                continue
            mine: dict = {}  # one task per worker slot (a maximum: the order does not matter)
            for s, b in zip(F.slots, F.blocks):
                mine.setdefault(s, []).append(b)
            parts.append(
                [
                    self.fex.submit_on(s, _colmax_sq_many, bs, Wk, name="coherence")
                    for s, bs in mine.items()
                ]
            )

        def fetch() -> list:
            flat = self.fex.gather([p for per in parts for p in per])
            out, i = [], 0
            for per in parts:
                out.append(np.max(np.vstack(flat[i : i + len(per)]), axis=0))
                i += len(per)
            return out

        return fetch() if wait else fetch

    def with_random(self, state: State, M: list, N: list, seeds: list) -> State:
        """``F_k M_k + Z_k N_k`` with ``Z_k`` Gaussian (entries ``N(0, 1/n_k)``, seeded by
        ``seeds[k]``, the same for any partition), block by block."""
        out = []
        for F, Mk, Nk, sk in zip(state, M, N, seeds):
            scale = 1.0 / np.sqrt(F.n)
            Z = random_blocked(self.fex, F.bounds, Nk.shape[0], sk, scale, slots=F.slots)
            out.append(combine(F, Mk, Z, Nk, name="reseed"))
        return State(out, dict(state.params))

    def random_factors(self, rank, *, seed: int, scale: float) -> State:
        """Gaussian factors with i.i.d. ``N(0, scale² / n_k)`` entries.

        ``rank``: the columns of every factor, or a sequence with one per factor.
        """
        ranks = [rank] * self.n_factors if np.ndim(rank) == 0 else list(rank)
        out = []
        for k, Fb in enumerate(self.factor_bounds):
            n = int(Fb[-1])
            Z = random_blocked(
                self.fex, Fb, int(ranks[k]), seed + k, scale / np.sqrt(n), slots=self._slots(k)
            )
            out.append(Z)
        return State(out)

    def transform(self, state, A: list) -> State:
        """``F_k A_k`` for every factor (``state``: a State or a list of Blocked)."""
        factors = [combine(F, A[k], None, None, name="scale") for k, F in enumerate(state)]
        return State(factors, dict(_params(state)))

    def carried(self) -> dict:
        """What this engine carries between passes beyond the iterate (JSON): nothing."""
        return {}

    def restore_carried(self, carried: dict) -> None:
        """Put back what :meth:`carried` returned (a checkpoint's)."""

    def from_numpy(self, arrays: list, params: dict | None = None) -> State:
        """Factors given as NumPy arrays, cut into this engine's row blocks."""
        return State([self.block_factor(k, F) for k, F in enumerate(arrays)], dict(params or {}))

    def block_factor(self, k: int, F) -> Blocked:
        """Factor ``k`` given as a NumPy array, cut into this engine's row blocks."""
        Fb = self.factor_bounds[k]
        F = np.ascontiguousarray(F, dtype=np.float64)
        slots = self._slots(k)
        blocks = self.fex.scatter(
            [F[Fb[a] : Fb[a + 1]].copy() for a in range(len(Fb) - 1)], placement=slots
        )
        return Blocked(self.fex, Fb, F.shape[1], list(blocks), slots)


def _params(state) -> dict:
    return state.params if isinstance(state, State) else {}
