"""Cost of trusting nothing on disk: per-chunk CRC-32C and the per-read entry check.

One Observations store of ``--nnz`` entries (a 4×4 tile grid) is written
twice, with the CRC-32C codec that every writer now uses and without it (as
stores written before the change), then read warm (page cache) the way the
engine streams it: ``sub_chunk`` entries at a time, ``rows``, ``cols`` and
``values`` of each piece. Rounds alternate the variants so that the shared
machine's load drifts affect all alike; the table gives the median round in
entries per second and relative to the unchecked read of the store without
checksums.

Variants:

* ``read``: the Zarr reads only (no checksum in the store);
* ``read + crc32c``: the Zarr reads of the checksummed store;
* ``read + check``: the reads plus the entry check (one Numba sweep: local
  indices inside the tile, finite values), without checksums;
* ``engine read (crc32c + check)``: what a streamed pass does now
  (``engine.completion._read_range``: ``stat`` of ``zarr.json``, reads, check).

The notes give the entry check alone on a piece already in memory and, for
scale, the fused rank-10 completion kernel on the same piece.

    python benchmarks/bench_store_integrity.py [--nnz 50_000_000] [--rounds 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
from _common import report, table

from dscaledgd.engine import completion as ce
from dscaledgd.problems import completion as cp
from dscaledgd.storage import integrity, layout
from dscaledgd.storage.observations import Observations


def _make(nnz: int, rng) -> Observations:
    n = 200_000
    a = b = 4
    rb = np.linspace(0, n, a + 1).astype(np.int64)
    cb = rb.copy()
    ptr = np.linspace(0, nnz, a * b + 1).astype(np.int64)
    rows = np.empty(nnz, np.int32)
    cols = np.empty(nnz, np.int32)
    for t in range(a * b):
        m = int(ptr[t + 1] - ptr[t])
        rows[ptr[t] : ptr[t + 1]] = np.sort(rng.integers(0, n // a, m))
        cols[ptr[t] : ptr[t + 1]] = rng.integers(0, n // b, m)
    vals = rng.standard_normal(nnz)
    tile_nnz = np.diff(ptr).reshape(a, b)
    rcounts = np.zeros(n, np.int64)  # only the stripe sums are checked at open
    rcounts[rb[:-1]] = tile_nnz.sum(1)
    ccounts = np.zeros(n, np.int64)
    ccounts[cb[:-1]] = tile_nnz.sum(0)
    return Observations(
        shape=(n, n),
        row_bounds=rb,
        col_bounds=cb,
        tile_ptr=ptr,
        rows=rows,
        cols=cols,
        values=vals,
        row_counts=rcounts,
        col_counts=ccounts,
        value_norm2=float(vals @ vals),
    )


def _read(obs, sub, check, engine=False):
    arrays = (obs._rows, obs._cols, obs._values)
    total = 0
    for t in range(obs.n_tiles):
        lo, hi = int(obs.tile_ptr[t]), int(obs.tile_ptr[t + 1])
        r0, r1, c0, c1 = obs.tile_bounds(t)
        if engine:
            ref = ce.tile_refs(obs, sub)[t]
            for piece in ce._chunks(ref):
                total += len(piece[0])
            continue
        for s in range(lo, hi, sub):
            e = min(hi, s + sub)
            r, c, v = (
                np.ascontiguousarray(arr[s:e], dtype=dt)
                for arr, dt in zip(arrays, (np.int32, np.int32, np.float64))
            )
            if check:
                integrity.check_entries(
                    r, c, v, r1 - r0, c1 - c0, path=obs.path, tile=t, start=s - lo
                )
            total += len(r)
    return total


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nnz", type=lambda s: int(float(s.replace("_", ""))), default=50_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sub-chunk", type=int, default=layout.CHUNK)
    ap.add_argument("--dir", default=None, help="where to write the two stores (default: temp)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    src = _make(args.nnz, rng)
    work = tempfile.mkdtemp(prefix="bench-integrity-", dir=args.dir)
    try:
        with_crc = Observations.open_zarr(src.to_zarr(os.path.join(work, "crc.zarr")))
        orig = layout.checksum_codecs
        layout.checksum_codecs = lambda: None  # a store as written before the change
        try:
            plain = Observations.open_zarr(src.to_zarr(os.path.join(work, "plain.zarr")))
        finally:
            layout.checksum_codecs = orig
        del src
        variants = {
            "read": lambda: _read(plain, args.sub_chunk, False),
            "read + crc32c": lambda: _read(with_crc, args.sub_chunk, False),
            "read + check": lambda: _read(plain, args.sub_chunk, True),
            "engine read (crc32c + check)": lambda: _read(with_crc, args.sub_chunk, True, True),
        }
        for f in variants.values():  # warm the page cache and the JIT
            assert f() == args.nnz
        times = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, f in variants.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        # the check alone, on pieces already in memory
        r, c, v = (
            np.ascontiguousarray(x[: args.sub_chunk], dtype=dt)
            for x, dt in zip(
                (with_crc._rows, with_crc._cols, with_crc._values),
                (np.int32, np.int32, np.float64),
            )
        )
        h = int(with_crc.row_bounds[1])
        integrity.check_entries(r, c, v, h, h, path="", tile=0)
        reps = 20
        t0 = time.perf_counter()
        for _ in range(reps):
            integrity.check_entries(r, c, v, h, h, path="", tile=0)
        check_s = (time.perf_counter() - t0) / reps / len(r)
        # for scale: the fused rank-10 kernel of a completion pass on the same piece
        LG = cp.interleave(rng.standard_normal((h, 10)))
        RG = cp.interleave(rng.standard_normal((h, 10)))
        cp.fused_pass_interleaved(r, c, v, LG, RG)
        t0 = time.perf_counter()
        for _ in range(3):
            cp.fused_pass_interleaved(r, c, v, LG, RG)
        kernel_s = (time.perf_counter() - t0) / 3 / len(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(times["read"])
    rows = []
    for k, ts in times.items():
        med = statistics.median(ts)
        rows.append(
            [
                k,
                f"{args.nnz / med / 1e6:.0f}",
                f"{args.nnz / min(ts) / 1e6:.0f}",
                f"{med:.3f}",
                f"{med / base:.3f}",
            ]
        )
    body = table(
        [
            "variant",
            "median M entries/s",
            "best M entries/s",
            "median s per pass",
            "vs read",
        ],
        rows,
    )
    notes = (
        f"{args.nnz:,} entries (16 bytes each), 4×4 tiles, read warm in pieces of "
        f"{args.sub_chunk:,} entries, {args.rounds} rounds. Entry check alone on a piece in "
        f"memory: {check_s * 1e9:.2f} ns per entry "
        f"({check_s * args.sub_chunk * 1e3:.2f} ms per {args.sub_chunk:,}-entry piece). "
        f"For scale, the fused rank-10 completion kernel on that piece (one thread): "
        f"{kernel_s * 1e9:.2f} ns per entry; the warm read without checks: "
        f"{base / args.nnz * 1e9:.2f} ns per entry, the CRC-32C adds "
        f"{(statistics.median(times['read + crc32c']) - base) / args.nnz * 1e9:.2f}."
    )
    report("Store integrity: CRC-32C and entry-check cost on a warm streamed read", body, notes)


if __name__ == "__main__":
    main()
