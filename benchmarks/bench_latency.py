"""The fixed costs of a process cluster on this machine: its start, and a round trip.

What a small problem on a freshly started cluster cannot go below, whatever the
solver does: the start of dscaledgd's embedded LocalCluster (2 worker
processes × 1 thread on 127.0.0.1), and the wall time of submitting trivial
tasks and gathering their results, with distributed's message intervals and
with the zero intervals dscaledgd sets while a run lasts
(``dscaledgd.engine.latency.low_latency``). An iterative solver pays at least
one such round trip per iteration.

    cd benchmarks && python bench_latency.py [--starts 3] [--trips 50]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402

import numpy as np  # noqa: E402
from _common import local_cluster, report, table  # noqa: E402


def _noop(x):
    return x


def _round_trips(client, workers, n_tasks: int, trips: int) -> float:
    """Median seconds to submit ``n_tasks`` trivial tasks (one per worker in turn) and
    gather them."""
    out = []
    for i in range(trips):
        t0 = time.perf_counter()
        fs = [
            client.submit(_noop, (i, k), pure=False, workers=[workers[k % len(workers)]])
            for k in range(n_tasks)
        ]
        client.gather(fs)
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--trips", type=int, default=50)
    args = ap.parse_args(argv)
    from dscaledgd.engine.latency import low_latency

    starts, stops, rows = [], [], []
    for s in range(args.starts):
        t0 = time.perf_counter()
        cluster, client = local_cluster(2)
        starts.append(time.perf_counter() - t0)
        try:
            if s == args.starts - 1:  # the round trips on the last cluster
                workers = sorted(client.scheduler_info()["workers"])
                _round_trips(client, workers, 2, 5)  # warm
                for label, ctx in (("distributed's defaults", None), ("dscaledgd's", 1)):
                    if ctx is None:
                        r1 = _round_trips(client, workers, 1, args.trips)
                        r2 = _round_trips(client, workers, 2, args.trips)
                    else:
                        with low_latency(client):
                            r1 = _round_trips(client, workers, 1, args.trips)
                            r2 = _round_trips(client, workers, 2, args.trips)
                    rows.append([label, f"{r1 * 1e3:.1f}", f"{r2 * 1e3:.1f}"])
                    print(rows[-1], flush=True)
        finally:
            t0 = time.perf_counter()
            client.close()
            cluster.close()
            stops.append(time.perf_counter() - t0)
    body = table(
        ["message intervals", "1 task, ms (median)", "2 tasks on 2 workers, ms (median)"], rows
    )
    report(
        "Fixed costs of a 2-worker LocalCluster: start and round trip",
        body,
        notes=(
            f"dscaledgd's embedded LocalCluster (2 worker processes × 1 thread, 127.0.0.1), "
            f"started {args.starts} times in this process: start "
            f"{', '.join(f'{t:.2f}' for t in starts)} s (the first also imports "
            f"distributed's deployment code), stop {', '.join(f'{t:.2f}' for t in stops)} s. "
            f"Round trip: submit trivial tasks (one per worker in turn) and gather them, "
            f"median of {args.trips}, on the last cluster, with distributed's batched-send "
            "intervals and with the zero intervals dscaledgd sets during a run "
            "(engine/latency.py). An iteration of a solver on this cluster costs at least "
            "one such round trip; the client, the scheduler and both workers share this "
            "machine's 2 cores."
        ),
    )


if __name__ == "__main__":
    main()
