"""Tensor robust PCA on chunks: the engine behind :func:`dscaledgd.tensor_rpca`.

The Tucker completion engine (:mod:`.tucker`) with two differences
(ALGORITHMS.md §8, :mod:`dscaledgd.problems.tensor_rpca`):

* the pass at iteration ``t`` clips every residual at ``±ζ_t``
  (``X − Y + thre(Y − X, ζ_t)``), a scalar handed to the same grouped chunk
  tasks; the pass also sums ``|Y − X|`` and counts the entries of the sparse
  part and those with ``|Y − X| > τ``, so the self-supervised criterion
  ``Σ_Ω |Y − X_t| / Σ_Ω |Y|`` and both fractions come with the iteration's
  one gather at no extra pass;
* the initialisation is the spectral (HOSVD) fit of ``Y − thre(Y, z0) =
  clip(Y, ±z0)``: a clipped copy of each chunk is made where the chunk lives,
  used for the statistics, the mode Grams and the core, and released.
"""

from __future__ import annotations

import numpy as np

from ..problems import tensor_rpca as trp
from ..problems import tucker as tk
from ..problems.sparsify import MAD_NORMAL
from ..storage.chunk_formats import coo_to_dense
from .tucker import TuckerEngine, _data, _model, _rows

__all__ = ["TensorRPCAEngine"]


def _clipped(chunk, zeta):
    return trp.clip_chunk(_data(chunk), zeta)


def _rpca_pass(chunk, U, rows, core, scale, zeta, tau, edges):
    """The Tucker pass with the clip level, plus the histogram of a sample of ``|Y − X|``
    (appended to the sums)."""
    samp = np.full(trp.SAMPLE_PER_CHUNK, np.nan)
    G, core_grad, sums = tk.chunk_pass(_data(chunk), *_model(U, rows, core), scale, zeta, tau, samp)
    return (*G, core_grad, np.concatenate([sums, trp.residual_histogram(samp, edges)]))


def _leave_one_out(chunk, U, rows):
    Y = _data(chunk)
    Y = coo_to_dense(Y) if isinstance(Y, tuple) else np.asarray(Y, dtype=np.float64)
    return tuple(tk.chunk_leave_one_out(np.where(np.isnan(Y), 0.0, Y), _rows(U, rows)))


#: a HOOI sweep gathers ``M_k(Y ×_{j≠k} U_jᵀ)`` (``n_k × Π_{j≠k} r_j``) to the client; modes
#: whose matrix is larger than this many bytes keep their HOSVD factor
HOOI_MAX_BYTES = 1 << 28


def _abs_residual(chunk, U, rows, core):
    return tk.chunk_abs_residual(_data(chunk), *_model(U, rows, core))


class TensorRPCAEngine(TuckerEngine):
    """Tensor RPCA passes over the chunks of a ``TensorObservations`` on an executor.

    Parameters
    ----------
    T : TensorObservations
    ex : Executor
    schedule : callable ``it -> ζ_t``
        The threshold schedule (:class:`~dscaledgd.problems.tensor_rpca.Schedule`).
    tau : float
        Entries with ``|Y − X| > τ`` are counted as unexplained
        (``extra["unexplained_fraction"]``).
    scale : float
        The data's robust scale (the residual histogram's unit).
    adaptive : float, optional
        The fit-following threshold: ``ζ_{t+1} = adaptive · σ̂_t``, ``σ̂_t`` the
        robust standard deviation of ``Y − X_t`` from the pass's sample (the
        schedule then gives ``ζ_0`` only).
    cache : {"auto", "memory", "stream"}
    """

    spec = trp.SPEC
    #: held-out entries are scored by their mean absolute error: a held-out set holds
    #: corrupted entries too, and their squares would dominate an RMSE
    val_kernel = staticmethod(_abs_residual)

    pass_fn = staticmethod(_rpca_pass)

    def __init__(self, T, ex, *, schedule, tau: float, scale: float, adaptive=None,
                 cache: str = "auto"):  # fmt: skip
        super().__init__(T, ex, cache=cache)
        self.schedule, self.tau, self.adaptive = schedule, float(tau), adaptive
        self.edges = trp.hist_edges(scale)
        self.zetas: dict = {}  # iteration -> ζ of the fit-following threshold
        self.abs_norm = float(np.asarray(ex.gather(self._totals))[2])  # Σ|y| of the stats
        self.nnz = int(T.nnz)

    def validation_value(self, total: float) -> float:
        return float(total / self._vnnz)

    def clip(self, it: int) -> float:
        if self.adaptive is not None and it > 0:
            return self.zetas[it]
        return self.schedule(it)

    def carried(self) -> dict:
        """The fit-following thresholds by iteration (floats as exact hex strings)."""
        return {"zetas": {str(it): float(z).hex() for it, z in self.zetas.items()}}

    def restore_carried(self, carried: dict) -> None:
        self.zetas = {int(it): float.fromhex(z) for it, z in carried.get("zetas", {}).items()}

    def pass_shared(self, core, it: int) -> tuple:
        return (*super().pass_shared(core, it), self.edges)

    def pass_extra(self, sums, it: int = 0) -> dict:
        hist = sums[5:]
        med = trp.hist_median(hist, self.edges)
        if self.adaptive is not None:  # the next pass's clip level
            self.zetas[it + 1] = trp.adaptive_zeta(hist, self.edges, self.adaptive)
        return {
            "l1": float(sums[2]) / max(self.abs_norm, 1e-300),
            "sparse_fraction": float(sums[3]) / max(self.nnz, 1),
            "unexplained_fraction": float(sums[4]) / max(self.nnz, 1),
            "zeta": self.clip(it),
            "residual_sigma": med / MAD_NORMAL,
        }

    def hooi(self, ranks, factors, chunks, sweeps: int) -> tuple[list, int]:
        """``sweeps`` HOOI sweeps on ``chunks`` from ``factors``: per sweep one pass for every
        mode at once (each ``U_k`` from the previous sweep's others, Jacobi order), ``U_k``
        the top ``r_k`` left singular vectors of ``M_k(Y ×_{j≠k} U_jᵀ)``. Returns the factors
        and the number of modes updated per sweep."""
        ranks = [int(r) for r in ranks]
        others = [int(np.prod(ranks)) // r for r in ranks]
        modes = [k for k in range(self.d) if 8 * self.shape[k] * others[k] <= HOOI_MAX_BYTES]
        for _ in range(sweeps if modes else 0):
            out = self.grouped(
                _leave_one_out, self._call(chunks, factors), lambda t: tuple(self.place[t]),
                [(f"W{k}", "block") for k in range(self.d)], task_name="hooi",
            )  # fmt: skip
            new = [F.gather() for F in factors]
            for k in modes:
                W = np.vstack(self.ex.gather(out[f"W{k}"]))
                new[k] = np.linalg.svd(W, full_matrices=False)[0][:, : ranks[k]]
            self.ex.release(*[h for k in range(self.d) for h in out[f"W{k}"]])
            factors = list(self.from_numpy(new).factors)
        return factors, len(modes)

    def clipped_init(self, ranks, z0: float, *, seed: int, n_power: int, sweeps: int = 0):
        """``(factors, core)``: the spectral fit of ``clip(Y, ±z0)`` (HOSVD when fully
        observed; the ``(p − 1) diag`` correction of §7 otherwise), then ``sweeps`` HOOI
        sweeps (:meth:`hooi`)."""
        slots = self._chunk_slots()
        copies = [
            self.ex.submit_on(slots[t], _clipped, c, z0, name="clip")
            for t, c in enumerate(self._chunks)
        ]
        try:
            diag = self.mode_diag(self.stats_pass(copies))
            factors, _ = self.spectral(ranks, seed=seed, n_power=n_power, chunks=copies, diag=diag)
            factors, _ = self.hooi(ranks, factors, copies, sweeps)
            core = self.project(factors, chunks=copies)
        finally:
            self.ex.release(*copies)
        return factors, core
