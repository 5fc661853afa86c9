"""Re-seeding of coherent spurious components (matrix completion, default rule).

At large κ the spectral estimate's smallest components are buried in the
sampling noise. The estimate then carries a *spurious* component in their
place. That component is highly coherent: on 1500×1100, r = 8, p = 0.25,
κ = 1000, its singular vectors have coherence ``n · max_i a_i²`` of 100–380,
against about 10 for the true factors. The sampled loss barely sees it (its
sampled curvature is 0.33–0.85 of nominal), so it decays only about 0.8 per
iteration, and the true component cannot take its place until it has gone.
That wait is most of the extra iterations at κ = 1000 (docs/step_rule.md).

After an accepted step, this module looks at the components of ``X = L Rᵀ``
whose singular value is below the current error level ``√err2``. Those that
are also coherent (above ``tau``) are replaced by a random direction with
the singular value ``c √err2``. That is the scale at which the adaptive
damping ``μ = c² err2`` lets a direction move freely. The true component
then grows into the freed slot. A spurious component can never be resolved
at its size, so nothing that could be fitted is thrown away. Incoherent
components are never touched. At most ``max_events`` re-seeds happen per run,
so a component that the data really support (for example, a coherent true
factor on real data) costs at most that many extra passes.

The singular frames come from the ``r × r`` Grams. The coherence is one
reduction over the factor rows (``n × m`` work, no data pass), and the
replacement is one blockwise ``F M + Z N`` with a seeded Gaussian ``Z``.
Only the accepted point is re-seeded. The re-seeded point costs one extra
data pass, which the loop counts.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from ..linalg import chol_upper

__all__ = ["CoherentReseed", "singular_frames"]


def singular_frames(FF_L: np.ndarray, FF_R: np.ndarray):
    """``(s, W_L, W_R)`` with ``L Rᵀ = (L W_L) diag(s) (R W_R)ᵀ`` an SVD.

    From the Grams only. With ``LᵀL = C_Lᵀ C_L`` (upper Cholesky, as in the
    CholeskyQR of the spectral init, :func:`dscaledgd.linalg.chol_upper`), ``L C_L⁻¹`` has
    orthonormal columns. So the SVD ``U s Vᵀ`` of the ``r × r`` matrix
    ``C_L C_Rᵀ`` gives ``W_L = C_L⁻¹ U`` and ``W_R = C_R⁻¹ V``.
    Raises ``numpy.linalg.LinAlgError`` when a Gram stays indefinite.
    """
    CL, CR = chol_upper(FF_L), chol_upper(FF_R)
    U, s, Vt = np.linalg.svd(CL @ CR.T)
    WL = sla.solve_triangular(CL, U, lower=False)
    WR = sla.solve_triangular(CR, Vt.T, lower=False)
    return s, WL, WR


class CoherentReseed:
    """Replace small, coherent components of ``L Rᵀ`` by random directions.

    Parameters
    ----------
    tau : float, default 150
        Coherence ``n · max_i a_i²`` (of either singular vector) above which a
        small component counts as spurious. A Gaussian vector has about
        ``2 ln n`` (15 at n = 1500, 23 at n = 1e5). The measured spurious
        components had 100–380. A vector of length ``n`` has at most ``n``,
        so matrices with fewer than ``tau`` rows or columns are never
        re-seeded.
    beta : float, default 1
        Only components with singular value below ``beta · √err2`` are
        candidates.
    max_events : int, default 3
        Re-seeds per run.
    """

    def __init__(self, tau: float = 150.0, beta: float = 1.0, max_events: int = 3):
        self.tau, self.beta, self.max_events = float(tau), float(beta), int(max_events)
        self.events = 0

    def __call__(self, engine, state: list, stats, c: float, seed: int):
        """The re-seeded state and an event record, or ``None`` if nothing changes."""
        pending = self.prepare(engine, state, stats)
        return None if pending is None else pending(c, seed)

    def prepare(self, engine, state: list, stats):
        """Submit the coherence check of ``state`` and return, without waiting, a
        function ``(c, seed) ->`` what :meth:`__call__` returns; ``None`` when there
        is nothing to check (no gather). The loop submits the next step in between.
        """
        if self.events >= self.max_events or len(state) != 2 or stats.err2 <= 0:
            return None
        if min(F.n for F in state) <= self.tau:
            return None
        try:
            s, WL, WR = singular_frames(stats.FF[0], stats.FF[1])
        except np.linalg.LinAlgError:
            return None
        level = np.sqrt(stats.err2)
        cand = np.flatnonzero(s < self.beta * level)
        if len(cand) == 0:
            return None
        # one gather for both factors: n · (max_i of each candidate column)²
        fetch = engine.column_max_sq(state, [WL[:, cand], WR[:, cand]], wait=False)
        return lambda c, seed: self._decide(engine, state, fetch(), s, WL, WR, cand, level, c, seed)

    def _decide(self, engine, state, colmax, s, WL, WR, cand, level, c, seed):
        mL, mR = colmax
        coh = np.maximum(state[0].n * mL, state[1].n * mR)
        bad = cand[coh > self.tau]
        if len(bad) == 0:
            return None
        self.events += 1
        r = len(s)
        new_s = s.copy()
        new_s[bad] = c * level
        keep = np.ones(r, dtype=bool)
        keep[bad] = False
        N = np.zeros((len(bad), r))
        N[np.arange(len(bad)), bad] = np.sqrt(new_s[bad])
        new = engine.with_random(
            state,
            [W * np.sqrt(np.where(keep, new_s, 0.0)) for W in (WL, WR)],  # kept, balanced
            [N, N],
            [seed + 2 * self.events + k for k in range(2)],
        )
        event = {
            "event": "reseeded",
            "components": bad.tolist(),
            "singular_values": s[bad].tolist(),
            "coherence": coh[coh > self.tau].tolist(),
        }
        return new, event
