"""Tensor robust PCA (ALGORITHMS.md §8): the threshold schedule, the defaults, the oracle.

``Y = X* + S*`` with ``X* = S ×_1 U_1 ⋯ ×_d U_d`` of low Tucker rank and
``S*`` sparse. Every iteration estimates the sparse part by soft
thresholding, ``S_t = thre(Y − X_t, ζ_t)`` with ``ζ_t = z1 · decay^t``, and
takes a ScaledGD step on ``(1/2p) ‖P_Ω(X + S_t − Y)‖²`` at fixed ``S_t``.
Because

.. math:: X - Y + \\mathrm{thre}(Y - X, \\zeta) = \\mathrm{clip}(X - Y, -\\zeta, \\zeta),

the residual of that loss is the residual of Tucker completion clipped at
``±ζ_t``, and one pass is the Tucker completion pass with a clip level
(:func:`dscaledgd.problems.tucker.chunk_pass` with ``zeta``); nothing else of
the method touches the data.

The update, with ``Z = P_Ω(clip(X − Y, ±ζ_t))``, ``H_k = Ŭ_kᵀŬ_k`` and a
ridge ``ε_k = ε tr(M)/r`` relative to each Gram ``M``:

.. math::

    U_k^+ = U_k - \\tfrac{\\eta}{p} M_k(Z)\\, \\breve U_k (H_k + \\varepsilon_k I)^{-1},
    \\qquad
    S^+ = S - \\tfrac{\\eta}{p} Z \\times_k (U_k^\\top U_k + \\varepsilon_k I)^{-1} U_k^\\top.

The paper writes the factor step as ``(1 − η) U_k − η M_k(D) Ŭ_k (H_k + εI)⁻¹``
with ``D = S_t − Y`` and an absolute ``ε``. The two differ by
``η ε U_k (H_k + εI)⁻¹`` per step: the paper's form is this one on the loss
plus a ridge ``(ε/2)‖U_k‖²``, whose bias puts a floor under the error.
Measured on the §8 instance (100³, r = 10, 20% corruption, the paper's
absolute thresholds, ``docs/tensor-rpca.md``): the paper's form ends at
2.4e-13 (κ = 5) and 2.1e-11 (κ = 20) at T = 100, this form at 9.9e-15 and
1.6e-14, and it keeps improving. :func:`reference_run` implements both.

Scale. ``z0`` and ``z1`` are in units of a robust scale of the data, the
median of ``|Y|`` over a sample of chunks (:func:`robust_scale`), so that the
same values work on data of any scale. The paper's ``z0 = 0.03``,
``z1 = 0.02`` on its instance (median ``|Y|`` ≈ 9.6e-4 at κ = 5) are about
31 and 21 in these units; the defaults are 30 and 20.

No dask import here (DESIGN.md §1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..linalg import multi_mode_product, unfold
from .spec import ProblemSpec
from .tucker import reference_spectral

__all__ = [
    "SPEC", "ETA", "Z0", "Z1", "DECAY", "EPS", "C", "Schedule", "soft_threshold", "clip_chunk",
    "robust_scale", "hist_edges", "residual_histogram", "hist_median", "adaptive_zeta",
    "reference_init", "reference_run",
]  # fmt: skip

#: the default step η (the paper's tuned value)
ETA = 0.45
#: the initial threshold ``z0`` and the schedule's ``z1``, in units of :func:`robust_scale`
Z0, Z1 = 30.0, 20.0
#: the schedule's decay per iteration (the paper's)
DECAY = 0.855
#: the relative ridge of the preconditioners
EPS = 1e-7
#: the fit-following threshold: ``ζ_{t+1} = C · median|Y − X_t| / Φ⁻¹(3/4)``, C robust
#: standard deviations of the residual (the matrix RPCA's adaptive rule's default)
C = 3.0
#: residual magnitudes sampled per chunk and pass for that median, and its histogram:
#: log-spaced bins from 1e-13 to 1e4 times the robust scale, 4% wide
SAMPLE_PER_CHUNK = 512
HIST_BINS, HIST_LO, HIST_HI = 1000, 1e-13, 1e4

#: the constants of tensor RPCA: the Tucker loss ``(1/2p)‖P_Ω(X + S − Y)‖²`` (gradient scale
#: ``1/p``), the paper's fixed η, the relative ε ridge; the init is a spectral (HOSVD) fit of
#: the clipped data: Tucker's spectral passes plus one statistics pass of the clipped copy
SPEC = ProblemSpec(
    "tensor_rpca",
    default_eta=ETA,
    default_rule="fixed",
    scales=lambda p, symmetric, loss: (1.0 / p, 0.5 / p),
    spectral_passes=lambda q: 3 * 2 * (q + 2) + 2,
    guard_on="model",
    relative_ridge=EPS,
)


@dataclass(frozen=True)
class Schedule:
    """``ζ_t = z1 · decay^t`` in data units (``z1`` already multiplied by the scale)."""

    z1: float
    decay: float

    def __call__(self, it: int) -> float:
        return float(self.z1 * self.decay ** int(it))


def soft_threshold(x, zeta) -> np.ndarray:
    """``thre(x, ζ) = sign(x) max(|x| − ζ, 0)``; NaN stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.maximum(np.abs(x) - zeta, 0.0)


def clip_chunk(chunk, zeta: float):
    """``Y − thre(Y, ζ) = clip(Y, −ζ, ζ)`` of a dense (NaN kept) or coo chunk."""
    if isinstance(chunk, tuple):
        index, values, shape = chunk
        return index, np.clip(np.asarray(values, dtype=np.float64), -zeta, zeta), shape
    return np.clip(np.asarray(chunk, dtype=np.float64), -zeta, zeta)


def robust_scale(samples: Sequence) -> float:
    """The median of ``|y|`` over the observed entries of sample chunks (dense or coo).

    Falls back to the root mean square when the median is 0 (data that are
    mostly exact zeros); ``0`` only when every sampled entry is 0 or none is
    observed.
    """
    parts = []
    for c in samples:
        v = np.asarray(c[1] if isinstance(c, tuple) else c, dtype=np.float64).ravel()
        parts.append(np.abs(v[np.isfinite(v)]))
    v = np.concatenate(parts) if parts else np.empty(0)
    if not len(v):
        return 0.0
    med = float(np.median(v))
    return med if med > 0 else float(np.sqrt(np.mean(v * v)))


# ------------------------------------------------------------------ fit-following threshold
def hist_edges(scale: float) -> np.ndarray:
    """The :data:`HIST_BINS` + 1 log-spaced bin edges, in data units."""
    return scale * np.logspace(np.log10(HIST_LO), np.log10(HIST_HI), HIST_BINS + 1)


def residual_histogram(samp: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of the finite ``samp`` values per bin (below the first edge: bin 0; above the
    last: the last bin)."""
    v = np.asarray(samp, dtype=np.float64)
    v = v[np.isfinite(v)]
    k = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(k, minlength=len(edges) - 1).astype(np.float64)


def hist_median(counts: np.ndarray, edges: np.ndarray) -> float:
    """The median of the histogrammed values (the geometric centre of its bin); NaN when
    the histogram is empty."""
    total = float(np.sum(counts))
    if total <= 0:
        return float("nan")
    b = int(np.searchsorted(np.cumsum(counts), 0.5 * total))
    return float(np.sqrt(edges[b] * edges[b + 1]))


def adaptive_zeta(counts: np.ndarray, edges: np.ndarray, c: float) -> float:
    """``c · median|Y − X| / Φ⁻¹(3/4)``: ``c`` robust standard deviations of the residual."""
    from .sparsify import MAD_NORMAL

    return c * hist_median(counts, edges) / MAD_NORMAL


# ------------------------------------------------------------------ the oracle
def _full(core, U) -> np.ndarray:
    return multi_mode_product(np.asarray(core, dtype=np.float64), U)


def _spd_right_solve(B: np.ndarray, A: np.ndarray) -> np.ndarray:
    """``B A⁻¹`` for a symmetric positive definite ``r × r`` ``A`` (Cholesky)."""
    import scipy.linalg as sla

    return sla.cho_solve(sla.cho_factor(A, lower=True), B.T).T


def reference_init(Y: np.ndarray, ranks, z0: float):
    """HOSVD of ``Y − thre(Y, z0)`` (observed entries; NaN = missing): ``(core, factors)``."""
    Y = np.asarray(Y, dtype=np.float64)
    return reference_spectral(np.clip(Y, -z0, z0), ranks)


def reference_run(
    Y: np.ndarray,
    core,
    factors,
    *,
    eta: float = ETA,
    z1: float,
    decay: float = DECAY,
    eps: float = EPS,
    n_iter: int,
    form: str = "gradient",
):
    """The plain full-tensor iteration of §8 (the test oracle; small tensors only).

    ``Ŭ_k`` is formed explicitly. ``form="gradient"``: the update of the
    module docstring (what the engine runs, relative ``ε``); ``"paper"``: the
    paper's ``(1 − η) U_k − η M_k(D) Ŭ_k (H_k + εI)⁻¹`` with an absolute ``ε``
    (fully observed ``Y`` only).

    Returns
    -------
    list of ``(core, factors, l1)``
        Iterates ``0 … n_iter``; ``l1 = Σ_Ω |Y − X_t|``.
    """
    Y = np.asarray(Y, dtype=np.float64)
    mask = ~np.isnan(Y)
    Y0 = np.where(mask, Y, 0.0)
    p = mask.mean()
    d = Y.ndim
    S, U = np.asarray(core, dtype=np.float64), [np.asarray(u, dtype=np.float64) for u in factors]
    out = []
    for t in range(n_iter + 1):
        X = _full(S, U)
        out.append((S, U, float(np.abs(np.where(mask, Y0 - X, 0.0)).sum())))
        if t == n_iter:
            break
        zeta = z1 * decay**t
        Z = np.where(mask, np.clip(X - Y0, -zeta, zeta), 0.0)
        newU, Q = [], []
        for k in range(d):
            others = [U[j] if j != k else np.eye(S.shape[k]) for j in range(d)]
            Ub = unfold(_full(S, others), k).T
            H = Ub.T @ Ub
            r = len(H)
            if form == "paper":
                D = Z - X  # S_t − Y = clip(X − Y) − X
                step = _spd_right_solve(unfold(D, k) @ Ub, H + eps * np.eye(r))
                newU.append((1 - eta) * U[k] - eta * step)
            else:
                ridge = eps * np.trace(H) / r
                step = _spd_right_solve(unfold(Z, k) @ Ub, H + ridge * np.eye(r))
                newU.append(U[k] - (eta / p) * step)
            FF = U[k].T @ U[k]
            ridge = eps if form == "paper" else eps * np.trace(FF) / r
            Q.append(_spd_right_solve(U[k], FF + ridge * np.eye(r)).T)
        S = S - (eta / p) * _full(Z, Q)
        U = newU
    return out
