"""What a problem declares to the shared solvers: its constants and its parameters.

A problem (completion, sensing, RPCA, Tucker completion, ...) is minimised
over a :class:`State`: row-blocked factors, held where the data lives, plus
small NumPy parameters on the client (the Tucker core). Its
:class:`ProblemSpec` carries the tuning constants the solvers use, so that
engines hold none (DESIGN.md §1): the default step size, the default
ScaledGD(λ) damping, the loss and gradient scales. An update of the state is
an :class:`Update`: per factor the matrices of ``F A + G B``, and per small
parameter its new value. No dask here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ProblemSpec", "State", "Update"]


@dataclass(frozen=True)
class ProblemSpec:
    """The constants of a problem (see each ``problems/*.py`` module's ``SPEC``).

    Attributes
    ----------
    name : str
    default_eta : float
        η of the default step rule on this problem.
    default_rule : {"adaptive", "guarded", "fixed"}
        ``"adaptive"``: the invariant adaptive damping of
        :class:`~dscaledgd.solvers.scaledgd.AdaptiveStep`; ``"guarded"``:
        the fixed η of the papers, halved on a guard restore; ``"fixed"``:
        η never changed (tensor RPCA, whose threshold schedule is tied to
        the iteration count).
    damping_fraction : float
        ScaledGD(λ)'s default λ as a fraction of the smallest spectral value.
    reseed_coherent : bool
        Re-seed coherent spurious components under the default rule
        (:mod:`dscaledgd.solvers.reseed`; matrix completion).
    scales : callable ``(p, symmetric, loss) -> (grad_scale, loss_scale)``
        The gradient is ``grad_scale`` times the per-chunk partial sums and
        the loss ``loss_scale`` times the summed residual statistic.
    spectral_passes : callable ``(n_power) -> int``
        Data passes of the spectral initialisation.
    guard_on : {"factors", "model"}
        What the divergence guard's norm test watches: the largest factor
        ``‖F_k‖²`` (balanced matrix factors), or ``‖X‖²`` for models whose
        factor scale is free (Tucker: ``(U_k Q, S ×_k Q⁻¹)`` is the same
        ``X``, and from orthonormal spectral factors ``‖U_k‖²`` legitimately
        grows 30-fold while ``X`` barely moves).
    relative_ridge : float
        ``ε`` of a ridge relative to each Gram: the preconditioners become
        ``(H_k + ε tr(H_k)/r_k I)⁻¹`` and, for the small parameters,
        ``(F_kᵀF_k + ε tr(F_kᵀF_k)/r_k I)⁻¹`` (tensor RPCA's ``ε``,
        ALGORITHMS.md §8; scale-free, unlike an absolute ``ε``).
    stagnation_patience : int or None
        Under the adaptive rule, restore the best iterate (and shrink ``η``,
        as after a guard restore) when the loss has not reached a new best
        for this many iterations and sits more than 1% above it: the
        iteration is cycling or drifting at the stability edge rather than
        converging (docs/step_rule.md, "Stagnation restore"). ``None``: off
        (problems whose loss changes its definition as they run).
    edge_window : int or None
        Under the adaptive rule, shrink ``η`` when this many iterations in a
        row measure the last step's curvature at the edge of stability
        (``η c > 1.8``): a linear phase contracting slowly because ``η`` is
        too large for its stiffest mode. ``None``: off.
    """

    name: str
    default_eta: float = 0.7
    default_rule: str = "adaptive"
    damping_fraction: float = 1.0
    reseed_coherent: bool = False
    scales: Callable = field(default=lambda p, symmetric, loss: (1.0, 0.5), repr=False)
    spectral_passes: Callable = field(default=lambda q: 2 * q + 2, repr=False)
    guard_on: str = "factors"
    relative_ridge: float = 0.0
    stagnation_patience: int | None = None
    edge_window: int | None = None


@dataclass(frozen=True)
class State:
    """An iterate: row-blocked ``factors`` and small NumPy ``params``.

    It behaves as the sequence of its factors (``state[0]``, ``len(state)``,
    iteration), which is all a matrix problem has; ``params`` holds the rest
    by name (``{"core": S}`` for Tucker).
    """

    factors: tuple
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "factors", tuple(self.factors))

    def __getitem__(self, k):
        return self.factors[k]

    def __len__(self) -> int:
        return len(self.factors)

    def __iter__(self):
        return iter(self.factors)

    def with_factors(self, factors) -> State:
        return State(tuple(factors), dict(self.params))


@dataclass(frozen=True)
class Update:
    """One step: ``F_k ← F_k A_k + G_k B_k`` per factor, ``params ← params`` (new values)."""

    A: list
    B: list
    params: dict = field(default_factory=dict)
