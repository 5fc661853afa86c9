"""Shared helpers for the benchmark scripts: tables, machine facts, RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.environ.get("DSCALEDGD_RESULTS", os.path.join(HERE, "RESULTS.md"))


def machine() -> str:
    import dask
    import numba
    import numpy as np
    import zarr

    import dscaledgd

    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM, Python "
        f"{platform.python_version()}, numpy {np.__version__}, dask {dask.__version__}, "
        f"zarr {zarr.__version__}, numba {numba.__version__}, dscaledgd "
        f"{dscaledgd.__version__}"
    )


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(cells[0]), sep] + [fmt(r) for r in cells[1:]])


def report(title: str, body: str, notes: str = "") -> None:
    """Print ``body`` and append it to RESULTS.md with the date, machine and command."""
    cmd = "python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:]
    )
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    block = (
        f"\n## {title}\n\n- date: {stamp}\n- machine: {machine()}\n- command: `{cmd}`\n\n"
        f"{body}\n" + (f"\n{notes.strip()}\n" if notes.strip() else "")
    )
    print(block)
    new = not os.path.exists(RESULTS)
    with open(RESULTS, "a") as fh:
        if new:
            fh.write(
                "# Benchmark results\n\nAppended by the scripts in this folder; newest last. "
                "Ratios are measured side by side in one run; absolute times on this shared "
                "machine are noisy.\n"
            )
        fh.write(block)


def local_cluster(n_workers: int = 2):
    """The embedded LocalCluster of ``dscaledgd`` with ``n_workers`` × 1 thread, and its client.

    Worker processes on 127.0.0.1 with the embedded cluster's malloc settings
    (``dscaledgd.engine.cluster.WORKER_MALLOC_ENV``).
    """
    from dscaledgd.engine.cluster import _embedded_cluster

    return _embedded_cluster(n_workers, 1, None)


def steps_to(obs, truth, rank, target, max_iter, *, count="iteration", **kw):
    """Iterations (or data passes, ``count="passes"``) until the relative error of the
    fit first reaches ``target``; otherwise ``"div"`` or ``">N (err)"``.

    Runs ``dscaledgd.complete`` on the thread executor with the tolerance and stall
    rule disabled, tracking ``truth.relative_error`` through the callback.
    """
    import warnings

    import dscaledgd as dsg

    hit = {}

    def cb(state):
        err = truth.relative_error(*state.factors())
        hit["err"] = err
        if err <= target:
            hit["n"] = getattr(state, count)
            raise StopIteration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        res = dsg.complete(
            obs,
            rank,
            scheduler="threads",
            tol=1e-300,
            stall_tol=0.0,
            max_iter=max_iter,
            callback=cb,
            random_state=0,
            progress=False,
            **kw,
        )
    if "n" in hit:
        return hit["n"], res
    if res.status == "diverged":
        return "div", res
    return f">{max_iter} ({hit.get('err', float('nan')):.0e})", res


def peak_rss(pid: int) -> int:
    """Peak resident bytes of a process (``VmHWM`` from ``/proc``), or 0."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss(pid: int) -> None:
    """Restart ``VmHWM`` of a process at its current RSS (best effort)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def measured_on_workers(client, run):
    """``run()`` on ``client``'s workers with their peak memory measured.

    Returns ``(result, wall seconds, peak RSS per worker in MiB, workers replaced)``;
    ``ConvergenceWarning`` is silenced (the benchmarks report the status).
    """
    import os
    import time
    import warnings

    import dscaledgd as dsg

    pids = client.run(os.getpid)
    for pid in pids.values():
        reset_peak_rss(pid)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        res = run()
    wall = time.perf_counter() - t0
    peaks = [peak_rss(pid) / 2**20 for pid in pids.values()]
    restarts = len(set(client.run(os.getpid).values()) - set(pids.values()))
    return res, wall, peaks, restarts
