"""What a lost worker costs: a completion run on three real ``dask worker`` processes,
undisturbed and with one worker SIGKILLed during the spectral initialisation or
during the iterations (issue 12).

Usage::

    python benchmarks/bench_faults.py [--shape 3000 2000] [--rank 5] [--p 0.1] [--repeats 3]

Each round runs the three cases back to back on a fresh scheduler with three
nanny-less workers (a killed worker does not come back; the run finishes on two).
It reports the wall time of each run and the relative difference of ``LRᵀ`` on
the observed entries from an undisturbed run on threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from _common import report, table  # noqa: E402

import dscaledgd as dsg  # noqa: E402
from dscaledgd.engine import executors as cl  # noqa: E402
from tests.faults._procs import ProcessCluster  # noqa: E402


def one_run(obs, rank, when, rc):
    from distributed import Client

    pc = ProcessCluster(3)
    killed = []
    gather = cl.DistributedExecutor.gather
    try:
        client = Client(pc.address, timeout=30, set_as_default=False)
        client.wait_for_workers(3, timeout=60)
        calls = [0]

        def gather_then_kill(self, handles):
            calls[0] += 1
            if when == "init" and calls[0] == 2 and not killed:
                killed.append(pc.kill_worker())
            return gather(self, handles)

        def cb(state):
            if when == "iterations" and state.iteration == 10 and not killed:
                killed.append(pc.kill_worker())

        cl.DistributedExecutor.gather = gather_then_kill
        t = time.perf_counter()
        res = dsg.complete(obs, rank, client=client, random_state=1, callback=cb)
        wall = time.perf_counter() - t
        X = res.predict(rc[0], rc[1])
        client.close()
        return res, wall, X
    finally:
        cl.DistributedExecutor.gather = gather
        pc.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=2, default=[3000, 2000])
    ap.add_argument("--rank", type=int, default=5)
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    obs, _ = dsg.datasets.make_completion(
        tuple(args.shape), args.rank, args.p, cond=10, random_state=0
    )
    obs = obs.retile((3, 2))
    rc = obs.to_coo()[:2]
    ref = dsg.complete(obs, args.rank, scheduler="threads", random_state=1)
    Xr = ref.predict(*rc)
    rows = []
    warnings.simplefilter("ignore")
    for rep in range(args.repeats):
        for when in ("none", "init", "iterations"):
            res, wall, X = one_run(obs, args.rank, when, rc)
            rel = np.linalg.norm(X - Xr) / np.linalg.norm(Xr)
            rows.append([rep + 1, when, res.status, res.n_iter, f"{wall:.1f}", f"{rel:.1e}"])
            print(rows[-1], flush=True)
    walls = {w: [float(r[4]) for r in rows if r[1] == w] for w in ("none", "init", "iterations")}
    med = {w: float(np.median(v)) for w, v in walls.items()}
    notes = (
        f"{args.shape[0]}×{args.shape[1]}, r = {args.rank}, p = {args.p}, nnz = {obs.nnz}, "
        "tiles 3×2, in-memory observations (scattered with two copies). Median wall time: "
        f"undisturbed {med['none']:.1f} s, worker killed in the init {med['init']:.1f} s "
        f"({med['init'] - med['none']:+.1f} s), killed at iteration 10 "
        f"{med['iterations']:.1f} s ({med['iterations'] - med['none']:+.1f} s). 'rel. diff' "
        "is ‖X − X_threads‖/‖X_threads‖ on the observed entries."
    )
    report(
        "Lost worker: cost and answer (bench_faults.py)",
        table(["round", "worker killed", "status", "iterations", "wall s", "rel. diff"], rows),
        notes,
    )


if __name__ == "__main__":
    main()
