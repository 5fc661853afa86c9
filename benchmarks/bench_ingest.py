"""Import in bounded memory: 100M Dask observations, then 3 iterations, on 2 × 768 MiB workers.

The case of issue 12: ``Observations.from_coo`` of Dask arrays (random
indices on a 2M × 1M matrix, chunks of 5M generated lazily per chunk from a
seed, ``duplicates="sum"`` for the few random collisions) on a
``LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="768MiB",
processes=True)``, then ``dsg.complete(store, rank=10, max_iter=3,
client=client)``. Before the bounded merge the import died with
``KilledWorker`` after four worker restarts.

Reported per phase: wall time, each worker's peak resident memory (the
kernel's high-water mark ``VmHWM``, reset between phases, and the largest
value sampled every 0.1 s) and the number of worker restarts (new worker
processes seen).

    python benchmarks/bench_ingest.py [--nnz 100e6] [--chunk 5e6] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
import warnings

import numpy as np
from _common import peak_rss, report, reset_peak_rss, table

import dscaledgd as dsg
from dscaledgd.storage import merge

SHAPE = (2_000_000, 1_000_000)


def _chunk(seed: int, k: int, m: int, shape):
    rng = np.random.default_rng([seed, k])
    return (
        rng.integers(0, shape[0], m, dtype=np.int64),
        rng.integers(0, shape[1], m, dtype=np.int64),
        rng.standard_normal(m),
    )


def lazy_coo(nnz: int, chunk: int, shape, seed: int = 0):
    """Dask arrays ``rows, cols, values``, each chunk generated on demand from ``seed``."""
    import dask
    import dask.array as da

    sizes = [min(chunk, nnz - s) for s in range(0, nnz, chunk)]
    parts = [dask.delayed(_chunk, nout=3)(seed, k, m, shape) for k, m in enumerate(sizes)]
    out = []
    for i, dt in enumerate((np.int64, np.int64, np.float64)):
        out.append(
            da.concatenate([da.from_delayed(p[i], (m,), dtype=dt) for p, m in zip(parts, sizes)])
        )
    return out


class Monitor:
    """Per worker process: peak RSS (VmHWM and sampled) and the processes seen."""

    def __init__(self, client, every=0.1):
        self.client, self.every = client, every
        self.pids: dict[str, int] = {}  # worker address -> pid
        self.seen: set = set()
        self._stop = threading.Event()
        self._t = None
        self._refresh()
        self.phase_start = set(self.seen)

    def _refresh(self):
        """New worker addresses (a restarted worker has a new one) and their pids."""
        try:
            addrs = set(self.client.scheduler_info(n_workers=-1)["workers"])
        except TypeError:  # older distributed
            addrs = set(self.client.scheduler_info()["workers"])
        except Exception:  # noqa: BLE001 - the scheduler is busy; try again later
            return
        new = addrs - set(self.pids)
        if new:
            try:
                self.pids.update(self.client.run(os.getpid, workers=sorted(new)))
            except Exception:  # noqa: BLE001 - not up yet; next time
                pass
        self.seen |= addrs

    def phase(self):
        """Reset the peaks; returns the dict the sampler fills: pid -> [hwm, sampled]."""
        import psutil

        self.peak = {}
        self._refresh()
        self.phase_start = set(self.seen)
        for pid in self.pids.values():
            reset_peak_rss(pid)
        self._psutil = psutil
        return self.peak

    def _sample(self):
        for pid in list(self.pids.values()):
            try:
                rss = self._psutil.Process(pid).memory_info().rss
            except Exception:  # noqa: BLE001 - a worker that died
                continue
            p = self.peak.setdefault(pid, [0, 0])
            p[0] = max(p[0], peak_rss(pid))
            p[1] = max(p[1], rss)

    def _run(self):
        n = 0
        while not self._stop.is_set():
            self._sample()
            n += 1
            if n % 20 == 0:
                self._refresh()
            self._stop.wait(self.every)

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()

    @property
    def restarts(self) -> int:
        self._refresh()
        return len(self.seen - self.phase_start)


def main():
    from distributed import Client, LocalCluster

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nnz", default="100e6", help="observations to import (default 100e6)")
    ap.add_argument("--chunk", default="5e6", help="entries per Dask chunk (default 5e6)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="768MiB")
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where the store goes (default: a temp dir)")
    ap.add_argument(
        "--tiles", type=int, nargs=2, default=None, help="tile grid a b (default: the library's)"
    )
    ap.add_argument(
        "--cache", default="auto", help="complete()'s tile cache: auto (default), stream, memory"
    )
    ap.add_argument(
        "--timeout", type=float, default=1800, help="give up on a phase after this many seconds"
    )
    ap.add_argument("--no-report", action="store_true", help="print only; skip RESULTS.md")
    args = ap.parse_args()
    nnz, chunk = int(float(args.nnz)), int(float(args.chunk))
    tiles = tuple(args.tiles) if args.tiles else None
    workdir = tempfile.mkdtemp(prefix="dscaledgd-bench-ingest-", dir=args.workdir)
    path = os.path.join(workdir, "obs.zarr")
    rows_out = []
    try:
        with (
            LocalCluster(
                n_workers=args.workers,
                threads_per_worker=1,
                memory_limit=args.memory_limit,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
            ) as cluster,
            Client(cluster) as client,
        ):
            mon = Monitor(client)
            limit = next(iter(client.scheduler_info()["workers"].values()))["memory_limit"]
            budget = client.run(lambda dask_worker: merge.task_budget(worker=dask_worker))
            print(
                f"workers {sorted(mon.pids.values())}, memory_limit {limit / 2**20:.0f} MiB, "
                f"task budget {sorted(set(budget.values()))} bytes",
                flush=True,
            )
            r, c, v = lazy_coo(nnz, chunk, SHAPE)
            with mon:
                peak = mon.phase()
                obs, wall, err = _timed(
                    lambda: dsg.Observations.from_coo(
                        r, c, v, shape=SHAPE, tiles=tiles, duplicates="sum", path=path
                    ),
                    args.timeout,
                )
                rows_out.append(_row("import", wall, peak, mon, err))
                print(rows_out[-1], obs, flush=True)
                if obs is not None and args.iters > 0:
                    peak = mon.phase()
                    kw = {} if args.cache == "auto" else {"cache": args.cache}

                    def fit():
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", dsg.ConvergenceWarning)
                            return dsg.complete(
                                obs, rank=args.rank, max_iter=args.iters, client=client, **kw
                            )

                    res, wall, err = _timed(fit, args.timeout)
                    label = f"complete r={args.rank}, {args.iters} iters" + (
                        f", cache={args.cache}" if kw else ""
                    )
                    rows_out.append(_row(label, wall, peak, mon, err))
                    print(rows_out[-1], res and (res.n_iter, res.status), flush=True)
            grid = f"{obs.tiles[0]}x{obs.tiles[1]}" if obs is not None else "-"
            nnz_out = obs.nnz if obs is not None else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    body = table(
        ["phase", "wall s", "peak RSS per worker MiB", "worker restarts", "error"],
        rows_out,
    )  # fmt: skip
    notes = (
        f"Shape {SHAPE[0]}x{SHAPE[1]}, {nnz / 1e6:g}M random (row, col) pairs in Dask chunks of "
        f"{chunk / 1e6:g}M generated per chunk from a seed, duplicates='sum' ({nnz_out} entries "
        f"after combining the collisions), tiles {grid}; LocalCluster {args.workers} workers x 1 "
        f"thread, memory_limit {args.memory_limit} (pause at 80%, restart at 95%), import task "
        f"budget {sorted(set(budget.values()))} bytes (merge.task_budget). Peak RSS: the "
        "kernel's high-water mark VmHWM of each worker process, reset at the start of each "
        "phase (the largest 0.1 s sample is in parentheses). Restarts: worker processes started "
        "during the phase."
    )
    print(body)
    if not args.no_report:
        report("Ingest: bounded-memory import of Dask observations, then iterations", body, notes)


def _timed(fn, timeout):
    """``(result, wall s, error)``: ``fn()`` in a thread, abandoned after ``timeout`` s."""
    out = {}

    def run():
        try:
            out["res"] = fn()
        except Exception as exc:  # noqa: BLE001 - reported in the table
            out["err"] = f"{type(exc).__name__}: {str(exc)[:60]}..."

    t0 = time.perf_counter()
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout)
    wall = time.perf_counter() - t0
    if th.is_alive():
        return None, wall, f"no result after {timeout:.0f} s (hung)"
    return out.get("res"), wall, out.get("err")


def _row(phase, wall, peak, mon, err):
    """Peak RSS of each worker process; after restarts, the largest over all processes."""
    cells = [f"{h / 2**20:.0f} ({s / 2**20:.0f})" for _, (h, s) in sorted(peak.items())]
    restarts = mon.restarts
    if restarts:
        h, s = max(v[0] for v in peak.values()), max(v[1] for v in peak.values())
        cells = [f"max {h / 2**20:.0f} ({s / 2**20:.0f}) over {len(peak)} processes"]
    return [phase, f"{wall:.1f}", " / ".join(cells), restarts, err or "none"]


if __name__ == "__main__":
    main()
