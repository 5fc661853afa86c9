"""Seeded Gaussian matrices that any process can cut into row blocks and regenerate.

Row ``i`` of the ``n × width`` matrix of ``seed`` is drawn from the stream of
``SeedSequence(seed, spawn_key=(i // chunk,))``, so a block of rows is the
same whoever draws it and however the rows are blocked: initial factors
(:mod:`dscaledgd.engine.factors`), Gaussian sensing operators
(:mod:`dscaledgd.problems.sensing`), synthetic data (:mod:`dscaledgd.datasets`).
NumPy only: every layer may import it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["seeded_normal_rows"]


def seeded_normal_rows(seed: int, r0: int, r1: int, width: int, chunk: int) -> np.ndarray:
    """Rows ``r0:r1`` (``r1 > r0``) of the standard Gaussian ``n × width`` matrix of ``seed``,
    drawn ``chunk`` rows per stream (``chunk`` is part of the matrix's definition)."""
    c0, c1 = r0 // chunk, (r1 - 1) // chunk
    parts = []
    for c in range(c0, c1 + 1):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(c,)))
        parts.append(rng.standard_normal((chunk, width)))
    full = np.concatenate(parts) if len(parts) > 1 else parts[0]
    off = c0 * chunk
    return full[r0 - off : r1 - off]
