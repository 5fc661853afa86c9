"""What a new user gets by default (issue 14): the default executor vs ``scheduler="threads"``,
and the fixed per-iteration cost of the distributed path.

Part ``defaults``: wall seconds of the README's examples run as written (no ``client``,
``address`` or ``scheduler``), side by side with ``scheduler="threads"`` and with an
embedded 2-worker LocalCluster (``scheduler="distributed"``, its start counted: the old
default), alternating, median of ``--rounds``. Cases: the demo instance (1500×1100,
r = 8, κ = 1000, p = 0.25), the README's synthetic instance (2000×2000, r = 10, κ = 100,
p = 0.2), the README's RPCA example (200×150, r = 3, 5% outliers) and, when the data is
present, the MovieLens recipe (ml-latest-small, rank 40, reg 0.1, biases, validation).
Goal: default ÷ threads ≤ 1.2.

Part ``latency``: seconds per ScaledGD iteration on a 1000×1000 instance (r = 5, p = 0.2)
on a 2-worker LocalCluster vs in-process threads, with the tasks per iteration and where
an iteration's time goes (distributed's task stream: compute, transfer, and the rest).
Goal: ≤ 30 ms per iteration on the cluster.

    python benchmarks/bench_defaults.py defaults [--rounds 3] [--data DIR]
    python benchmarks/bench_defaults.py latency [--iters 30]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from _common import local_cluster, report, table  # noqa: E402

import dscaledgd as dsg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "movielens-latest-small", "ratings.csv")


def _cases(data):
    demo, _ = dsg.datasets.make_completion((1500, 1100), 8, 0.25, cond=1000, random_state=0)
    synth, _ = dsg.datasets.make_completion((2000, 2000), 10, 0.2, cond=100, random_state=0)
    rng = np.random.default_rng(2)
    t3 = dsg.datasets.make_low_rank((200, 150), 3, cond=10, random_state=0)
    Y = t3.dense() + np.where(
        rng.random((200, 150)) < 0.05, 10 * rng.standard_normal((200, 150)), 0
    )
    cases = [
        ("demo 1500×1100 r=8 κ=1000", lambda **kw: dsg.complete(demo, 8, **kw)),
        ("README 2000×2000 r=10 κ=100", lambda **kw: dsg.complete(synth, 10, **kw)),
        ("README rpca 200×150 r=3", lambda **kw: dsg.rpca(Y, 3, **kw)),
    ]
    if data and os.path.exists(data):
        obs = dsg.Observations.from_csv(data, row="userId", col="movieId", value="rating")
        train, _ = obs.split(0.1, random_state=0)
        fit, val = train.split(0.1, random_state=1)

        def movielens(**kw):
            return dsg.complete(
                fit, rank=40, reg=0.1, center="biases", validation=val, patience=20, **kw
            )

        cases.append(("MovieLens recipe (small)", movielens))
    return cases


def _timed(fn, **kw):
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fn(random_state=0, progress=False, **kw)
    return time.perf_counter() - t0, res


def part_defaults(args):
    rows = []
    for label, fn in _cases(args.data):
        _timed(fn, scheduler="threads")  # warm-up: Numba kernels, imports
        times = {"default": [], "threads": [], "distributed": []}
        runs = [("default", {}), ("threads", {"scheduler": "threads"})]
        for rnd in range(args.rounds):  # alternating, the order flipped each round
            for how, kw in runs if rnd % 2 == 0 else runs[::-1]:
                t, res = _timed(fn, **kw)
                times[how].append(t)
                if how == "default":
                    executor = res.info["executor"]
        for _ in range(args.rounds):  # after, so that no cluster shuts down during the others
            times["distributed"].append(_timed(fn, scheduler="distributed")[0])
        med = {k: float(np.median(v)) for k, v in times.items()}
        rows.append([
            label, executor, f"{med['default']:.2f}", f"{med['threads']:.2f}",
            f"{med['default'] / med['threads']:.2f}", f"{med['distributed']:.2f}",
            f"{med['distributed'] / med['threads']:.1f}",
        ])  # fmt: skip
        print(rows[-1], flush=True)
    body = table(
        ["case", "default executor", "default s", "threads s", "default ÷ threads",
         "LocalCluster s", "LocalCluster ÷ threads"], rows,
    )  # fmt: skip
    notes = (
        "Each case as the README writes it (random_state=0, progress off), run with no "
        "executor argument ('default'), with scheduler='threads', and with "
        "scheduler='distributed' (an embedded LocalCluster of 2 workers, started and "
        f"closed inside the call: the default before issue 14); medians of {args.rounds} "
        "rounds after one untimed warm-up, default and threads alternating (order flipped "
        "each round), the LocalCluster runs after them (a closing cluster slowed the next "
        "in-process run by up to 1.5× when they were interleaved). Goal (issue 14): "
        "default ÷ threads ≤ 1.2."
    )
    report("Default executor vs threads: the README's examples", body, notes)


def part_latency(args):
    from distributed import get_task_stream

    obs, _ = dsg.datasets.make_completion((1000, 1000), 5, 0.2, cond=10, random_state=0)
    kw = dict(tol=1e-300, stall_tol=0.0, max_iter=args.iters, random_state=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dsg.complete(obs, 5, scheduler="threads", **kw)
        thr = dsg.complete(obs, 5, scheduler="threads", **kw)
        cl, c = local_cluster()
        with cl, c:
            dsg.complete(obs, 5, client=c, **kw)  # warm-up
            with get_task_stream(client=c) as ts:
                res = dsg.complete(obs, 5, client=c, **kw)
    per = np.diff(res.history["time"])[2:]
    per_thr = np.diff(thr.history["time"])[2:]
    n_iter = res.n_iter
    tasks = len(ts.data) / max(n_iter, 1)
    comp = sum(s["stop"] - s["start"] for r in ts.data for s in r["startstops"]
               if s["action"] == "compute") / max(n_iter, 1)  # fmt: skip
    xfer = sum(s["stop"] - s["start"] for r in ts.data for s in r["startstops"]
               if s["action"] == "transfer") / max(n_iter, 1)  # fmt: skip
    row = [
        "1000×1000 r=5 p=0.2", "x".join(map(str, res.info["tiles"])), f"{tasks:.0f}",
        f"{1e3 * np.median(per):.1f}", f"{1e3 * np.median(per_thr):.1f}",
        f"{1e3 * comp:.1f}", f"{1e3 * xfer:.1f}",
        f"{1e3 * (np.median(per) - comp / 2):.1f}",
    ]  # fmt: skip
    print(row, flush=True)
    body = table(
        ["instance", "tiles", "tasks/iter", "LocalCluster ms/iter", "threads ms/iter",
         "task compute ms/iter (sum)", "transfers ms/iter (sum)",
         "not computing ms/iter"], [row],
    )  # fmt: skip
    notes = (
        f"ScaledGD, default rule, {args.iters} iterations (medians after the first 2), on a "
        "LocalCluster of 2 worker processes × 1 thread (one warm-up run first) and on "
        "scheduler='threads'. Task compute / transfers: sums over all tasks of one "
        "iteration from distributed's task stream (2 workers run in parallel); 'not "
        "computing' = the iteration minus half the summed compute (the critical path "
        "left to scheduling, messages and the client). Goal (issue 14): ≤ 30 ms/iteration."
    )
    report("Distributed per-iteration cost at 1000×1000", body, notes)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("part", choices=("defaults", "latency"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--data", default=DATA)
    args = ap.parse_args()
    {"defaults": part_defaults, "latency": part_latency}[args.part](args)


if __name__ == "__main__":
    main()
