"""Scale-out (issue 15): seconds, tasks and bytes moved per ScaledGD iteration vs workers.

For each worker count W a LocalCluster of W processes × 1 thread (127.0.0.1) runs
``dscaledgd.complete`` on one synthetic instance; over a window of iterations the
benchmark reads, from distributed's own records on every worker
(:mod:`dscaledgd.engine.traffic`): the bytes moved **between workers**
(``transfer_outgoing_log`` entries requested by a worker), the bytes sent **to the
client** (gathers), the bytes **scattered from the client**, and the **tasks** the
workers executed. The same instance then runs in-process (``scheduler="threads"``)
with W threads, for the "within 1.2× of threads at equal cores" goal.

Bytes and task counts do not depend on the machine: they are meaningful on a small
machine for any W. Seconds are only meaningful with at least W free cores.

``--baseline DIR`` also measures the package found in DIR (for example a worktree
of an older commit: ``git worktree add /tmp/base HEAD``) in the same run, and prints
both side by side; the counters are always this tree's (shipped to the workers by
value).

    python benchmarks/bench_scaling.py --workers 1 2 4 8 16 [--shape 16000 16000]
        [--rank 10] [--nnz 5e6] [--cond 2] [--tiles 16 4] [--iters 20] [--baseline DIR]
        [--submit batched single] [--no-threads]

It also reports where the time goes: the busiest worker's compute seconds (from
distributed's own task timings), how busy the workers were, and the CPU seconds of
the client+scheduler process and of the busiest worker process. ``--submit batched
single`` runs both ways of sending tasks to the scheduler (dask config
``dscaledgd.batch-tasks``) on the same cluster, side by side.

The default instance keeps the issue's proportions (100M observations on 200k × 200k,
tiles 16 × 4: a tile holds several times the bytes of a factor block) at a size that
runs on 2 cores in a few minutes; κ = 2 because at κ = 10 this smaller instance has
the solver re-seed spurious components inside the window (extra data passes).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TRAFFIC = os.path.join(ROOT, "dscaledgd", "engine", "traffic.py")
#: iterations before the measured window (numba loads, caches warm)
WARMUP = 2


def _traffic_module():
    """This tree's counters, loaded by path and pickled by value (the workers may run
    another version of the package, which may not have them)."""
    import cloudpickle

    spec = importlib.util.spec_from_file_location("_dscaledgd_traffic", TRAFFIC)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    cloudpickle.register_pickle_by_value(mod)
    return mod


def _git(src: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", src, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", src, "status", "--porcelain", "--", "dscaledgd"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "")
    except OSError:
        return "?"


def _instance(args):
    import dscaledgd as dsg

    n1, n2 = args.shape
    p = float(args.nnz) / (n1 * n2)
    obs, _ = dsg.datasets.make_completion(
        (n1, n2), args.rank, p, cond=args.cond, tiles=tuple(args.tiles), random_state=0
    )
    return obs


def _solve(obs, args, **kw):
    import dscaledgd as dsg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        return dsg.complete(
            obs,
            args.rank,
            init_power_iter=1,
            max_iter=WARMUP + args.iters,
            tol=1e-300,
            stall_tol=0.0,
            random_state=0,
            progress=False,
            **kw,
        )


def _seconds(res) -> float:
    import numpy as np

    t = np.diff(res.history["time"])[WARMUP:]
    return float(np.median(t))


def _cpu(c=None) -> float:
    """CPU seconds (user + system) of this process, or of each worker of ``c``."""
    import psutil

    if c is None:
        return sum(psutil.Process().cpu_times()[:2])
    return c.run(lambda: sum(__import__("psutil").Process().cpu_times()[:2]))


def _on_cluster(obs, args, W: int, traffic) -> list[dict]:
    """One row per submission mode (``--submit``), on one LocalCluster of W workers."""
    import dask
    from distributed import Client, LocalCluster

    from dscaledgd.engine.cluster import worker_malloc_env

    with worker_malloc_env():
        cluster = LocalCluster(
            n_workers=W,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        )
    rows = []
    with cluster, Client(cluster) as c:
        traffic.install(c)
        for mode in args.submit:
            snaps = {}

            def cb(state, snaps=snaps):
                if state.iteration in (WARMUP, WARMUP + args.iters):
                    snaps[state.iteration] = (
                        traffic.snapshot(c), time.perf_counter(), state.passes, _cpu(), _cpu(c)
                    )  # fmt: skip

            with dask.config.set({"dscaledgd.batch-tasks": mode == "batched"}):
                res = _solve(obs, args, client=c, callback=cb)
            (a, ta, pa, ma, wa), (b, tb, pb, mb, wb) = snaps[WARMUP], snaps[WARMUP + args.iters]
            rows.append(_row(W, mode, res, a, b, tb - ta, pa, pb, mb - ma, wa, wb, args.iters))
    return rows


def _row(W, mode, res, a, b, window, pa, pb, main_cpu, wa, wb, n) -> dict:
    d = b - a
    return {
        "W": W,
        "submit": mode,
        "s_iter": _seconds(res),
        "window_s": window,
        "passes": [pa, pb],
        "peer_MB": d.peer_bytes / n / 1e6,
        "peer_transfers": d.peer_transfers / n,
        "to_client_MB": d.client_bytes / n / 1e6,
        "from_client_MB": d.scatter_bytes / n / 1e6,
        "tasks": d.tasks / n,
        "busy_max": max(d.busy_by_worker.values(), default=0.0) / n,
        "busy_mean": sum(d.busy_by_worker.values()) / W / n,
        "main_cpu": main_cpu / n,
        "worker_cpu_max": max(wb[w] - wa[w] for w in wb) / n,
        "peer_MB_by_name": {k: v / n / 1e6 for k, v in sorted(d.peer_bytes_by_name.items())},
        "tasks_by_name": {k: v / n for k, v in sorted(d.tasks_by_name.items())},
        "status": res.status,
        "final_loss": float(res.history["loss"][-1]),
        "loss0": float(res.history["loss"][0]),
    }


def _threads(obs, args, W: int) -> float:
    from unittest import mock

    with mock.patch("os.cpu_count", return_value=W):  # ThreadExecutor's default size
        res = _solve(obs, args, scheduler="threads")
    return _seconds(res)


def child(args) -> None:
    """Measure the package in ``args.src`` (or this tree); one JSON line per W."""
    if args.src:
        sys.path.insert(0, args.src)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [args.src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
    import dscaledgd

    traffic = _traffic_module()
    print(json.dumps({"package": os.path.dirname(dscaledgd.__file__)}), flush=True)
    obs = _instance(args)
    print(json.dumps({"instance": str(obs), "nnz": int(obs.nnz)}), flush=True)
    for W in args.workers:
        rows = _on_cluster(obs, args, W, traffic)
        thr = None if args.no_threads else _threads(obs, args, W)
        for row in rows:
            row["threads_s_iter"] = thr
            print(json.dumps(row), flush=True)


def _run_child(argv: list[str], src: str | None) -> list[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", *argv]
    if src:
        cmd += ["--src", src]
    rows = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:  # each row as it comes: a run cut short still shows some
            if line.startswith("{"):
                rows.append(json.loads(line))
                print(rows[-1], file=sys.stderr, flush=True)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return rows


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--shape", type=int, nargs=2, default=[16_000, 16_000])
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--nnz", type=float, default=5e6)
    ap.add_argument("--cond", type=float, default=2.0)
    ap.add_argument("--tiles", type=int, nargs=2, default=[16, 4])
    ap.add_argument("--iters", type=int, default=20, help="measured iterations (after 2)")
    ap.add_argument(
        "--submit",
        nargs="+",
        choices=("batched", "single"),
        default=["batched"],
        help="how tasks reach the scheduler (dask config dscaledgd.batch-tasks): one graph "
        "per wait, or task by task; several run side by side on the same cluster",
    )
    ap.add_argument("--baseline", help="also measure the package in this directory")
    ap.add_argument("--no-threads", action="store_true", help="skip the in-process runs")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.child:
        return child(args)
    argv = [a for a in sys.argv[1:]]
    if "--baseline" in argv:
        i = argv.index("--baseline")
        del argv[i : i + 2]
    sources = [("before", os.path.abspath(args.baseline))] if args.baseline else []
    sources.append(("after" if args.baseline else "this tree", None))
    measured = []
    for label, src in sources:
        t0 = time.perf_counter()
        rows = _run_child(argv, src)
        meta = {k: v for r in rows if "W" not in r for k, v in r.items()}
        measured.append(
            (label, src or ROOT, meta, [r for r in rows if "W" in r], time.perf_counter() - t0)
        )
    _report(args, measured)


def _model(args):
    """MB per data pass that this tree's placement predicts (factor rows moved · r · 8)."""
    import numpy as np

    from dscaledgd.engine.placement import Placement

    n1, n2 = args.shape
    a, b = args.tiles
    # the bounds of make_completion's tiles are balanced on the counts: near-even here
    bounds = [np.linspace(0, n1, a + 1).astype(int), np.linspace(0, n2, b + 1).astype(int)]
    return lambda W: Placement((a, b), bounds, W).rows_moved * args.rank * 8 / 1e6


def _report(args, measured) -> None:
    from _common import report, table

    model = _model(args)
    headers = [
        "package",
        "W",
        "submit",
        "passes/iter",
        "MB between workers/iter",
        "placement model MB/pass",
        "transfers/iter",
        "MB to client/iter",
        "MB from client/iter",
        "tasks/iter",
        "s/iter cluster",
        "busiest worker's compute s/iter",
        "workers busy",
        "client+scheduler CPU s/iter",
        "busiest worker's CPU s/iter",
        "s/iter threads (W)",
        "cluster ÷ threads",
    ]
    rows, detail = [], []
    for label, src, meta, rs, wall in measured:
        name = f"{label} ({_git(src)})"
        for r in rs:
            thr = r.get("threads_s_iter")
            pa, pb = r["passes"]
            rows.append(
                [
                    name,
                    r["W"],
                    r.get("submit", "single"),
                    f"{(pb - pa) / args.iters:.2f}",
                    f"{r['peer_MB']:.2f}",
                    f"{model(r['W']):.2f}" if src == ROOT else "-",
                    f"{r['peer_transfers']:.1f}",
                    f"{r['to_client_MB']:.3f}",
                    f"{r['from_client_MB']:.3f}",
                    f"{r['tasks']:.1f}",
                    f"{r['s_iter']:.3f}",
                    f"{r['busy_max']:.3f}" if "busy_max" in r else "-",
                    f"{r['busy_mean'] / (r['window_s'] / args.iters):.0%}"
                    if "busy_mean" in r
                    else "-",
                    f"{r['main_cpu']:.3f}" if "main_cpu" in r else "-",
                    f"{r['worker_cpu_max']:.3f}" if "worker_cpu_max" in r else "-",
                    "-" if thr is None else f"{thr:.3f}",
                    "-" if thr is None else f"{r['s_iter'] / thr:.2f}",
                ]
            )
            top = sorted(r["peer_MB_by_name"].items(), key=lambda kv: -kv[1])[:5]
            tasks = sorted(r["tasks_by_name"].items(), key=lambda kv: -kv[1])
            detail.append(
                f"- {name}, W={r['W']}, {r.get('submit', 'single')}: MB/iter between workers by task name "
                + ", ".join(f"{k} {v:.2f}" for k, v in top)
                + "; tasks/iter by name "
                + ", ".join(f"{k} {v:.1f}" for k, v in tasks)
                + f"; final loss {r['final_loss']:.6g} ({r['status']})"
            )
        losses = [r["final_loss"] for r in rs]
        if len(set(losses)) <= 1:
            same = "the same bits for every W"
        else:  # worker processes can round NumPy kernels differently (tests/test_determinism.py)
            spread = (max(losses) - min(losses)) / rs[0]["loss0"]
            same = f"equal for every W to {spread:.1e} of the initial loss"
        detail.append(
            f"- {name}: package {meta.get('package')}, {wall:.0f} s in all; final loss {same}"
        )
    inst = measured[0][2].get("instance", "")
    pa, pb = measured[0][3][0]["passes"] if measured[0][3] else (0, 0)
    reroots = sum(1 for p in range(pa, pb) if p and p % 20 == 0)
    f = args.shape[0] + args.shape[1]
    notes = (
        f"Instance: `datasets.make_completion({tuple(args.shape)}, {args.rank}, nnz/(n1·n2), "
        f"cond={args.cond:g}, tiles={tuple(args.tiles)}, random_state=0)` ({inst}); "
        "`complete(init_power_iter=1, tol=1e-300, stall_tol=0)`; per-iteration figures are "
        f"over iterations {WARMUP}–{WARMUP + args.iters} (data passes {pa}–{pb}; the "
        f"factors are re-rooted through the client every 20 passes: {reroots} time(s) "
        "inside, in the client columns and, for its second copy, between workers). "
        "Counters: dscaledgd/engine/traffic.py on every worker (distributed's "
        "transfer_outgoing_log by requester, scattered bytes, executed tasks). "
        "For scale: one copy of both factors is (n1+n2)·r·8 = "
        f"{f * args.rank * 8 / 1e6:.2f} MB. 'placement model' = the factor rows "
        "dscaledgd/engine/placement.py expects to move per data pass, × r × 8 (each block: "
        "once per change of worker along its sum, once to each other worker using it); "
        "passes/iter > 1 where the solver re-seeded or restored. "
        "'submit': how the tasks reached the scheduler (dscaledgd/engine/batching.py: "
        "'batched' = one graph per wait, 'single' = one client.submit per task; dask "
        "config dscaledgd.batch-tasks). 'client+scheduler CPU' = CPU seconds per "
        "iteration of this process, which runs the LocalCluster's scheduler and the "
        "client; 'busiest worker's CPU' = the most CPU seconds per iteration of one "
        "worker process (its tasks and its own overhead). "
        "'busiest worker's compute' = the most compute seconds one worker's tasks took "
        "per iteration (distributed's own task timings); 'workers busy' = the workers' mean "
        "compute time over the window's wall time: the rest is waiting (on transfers, the "
        "scheduler, the client's step, or the busiest worker). "
        "LocalCluster of W processes × 1 thread on 127.0.0.1; 'threads (W)' = "
        "scheduler='threads' with W threads in this process. **Seconds are only meaningful "
        f"where W ≤ the free cores ({os.cpu_count()} cores here, shared with other work); "
        "bytes and task counts do not depend on the machine.**\n\n" + "\n".join(detail)
    )
    report(
        "Scale-out: bytes moved and tasks per iteration vs workers",
        table(headers, rows),
        notes,
    )


if __name__ == "__main__":
    main()
