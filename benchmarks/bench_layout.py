"""The column band ``W`` of the banded order inside a tile (storage/layout.py).

Two random ``m × m`` tiles (r = 10) are swept by the fused kernel
(``fused_pass_interleaved``) on 2 threads, the same entries sorted by
``(j // W, i, j)`` for each band width ``W``. Rounds alternate the widths so
that the machine's load drifts affect all alike; the table gives the median
and the best round in observed entries per second, and each width's median
relative to the width the shipped rule ``layout.band_width`` picks for that
density (marked *).

    python benchmarks/bench_layout.py [--rounds 7] [--widths 512 1024 ...] [--cases 50000:5e-3 ...]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from _common import report, table

from dscaledgd.problems import completion as cp
from dscaledgd.storage import layout

#: (tile side m, density): the throughput benchmark's tiles at 50M/25M/10M nnz, and sparser
#: recommender-like tiles.
CASES = [
    (50_000, 5e-3),
    (50_000, 2.5e-3),
    (50_000, 1e-3),
    (150_000, 5e-4),
    (100_000, 1e-4),
    (300_000, 1e-4),
]


def _tiles(m, density, widths, r, rng):
    nnz = int(density * m * m)
    out = []
    for _ in range(2):
        rows = rng.integers(0, m, nnz).astype(np.int32)
        cols = rng.integers(0, m, nnz).astype(np.int32)
        vals = rng.standard_normal(nnz)
        by_w = {}
        for W in widths:
            o = layout.blocked_order(np.zeros(nnz, np.int64), rows, cols, W)
            by_w[W] = (rows[o], cols[o], vals[o])
        L = cp.interleave(rng.standard_normal((m, r)))
        R = cp.interleave(rng.standard_normal((m, r)))
        out.append((by_w, L, R))
    return out, 2 * nnz


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    ap.add_argument(
        "--cases", nargs="+", default=[f"{m}:{d:g}" for m, d in CASES], help="tile side:density"
    )
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for case in args.cases:
        m, density = int(case.split(":")[0]), float(case.split(":")[1])
        shipped = layout.band_width(int(density * m * m), (m, m))
        widths = args.widths if shipped in args.widths else [shipped, *args.widths]
        tiles, total = _tiles(m, density, widths, 10, rng)

        def sweep(tile, W):
            cp.fused_pass_interleaved(*tile[0][W], tile[1], tile[2], "l2", None)

        sweep(tiles[0], widths[0])  # compile
        times = {W: [] for W in widths}
        with ThreadPoolExecutor(2) as pool:
            for _ in range(args.rounds):
                for W in widths:
                    t0 = time.perf_counter()
                    list(pool.map(lambda t, W=W: sweep(t, W), tiles))
                    times[W].append(time.perf_counter() - t0)
        ref = float(np.median(times[shipped]))
        for W in widths:
            med = float(np.median(times[W]))
            rows.append(
                [
                    f"{m // 1000}k × {m // 1000}k",
                    f"{density:g}",
                    f"{total / 1e6:.1f}M",
                    f"{W}*" if W == shipped else W,
                    f"{total / med / 1e6:.0f}M",
                    f"{total / min(times[W]) / 1e6:.0f}M",
                    f"{ref / med:.2f}",
                ]
            )
            print(rows[-1], flush=True)
        del tiles
    body = table(
        ["2 tiles of", "density", "entries", "W", "median entries/s", "best", "vs shipped W"],
        rows,
    )
    notes = (
        f"Fused kernel alone (r = 10) on 2 threads, one tile each; {args.rounds} alternating "
        "rounds per width. * = the width layout.band_width picks for the density (the power "
        "of two nearest 1.25/density, clamped to [1024, 16384]); 'vs shipped W' = median time "
        "of that width / median time of this width (> 1: faster)."
    )
    report("Banded order: column band width W of the tile layout", body, notes)


if __name__ == "__main__":
    main()
