"""Tensor robust PCA (ALGORITHMS.md §8): the §8 target, κ-flatness, the paper's update.

Part ``target``: the §8 instance, n = 100³, r = 10, 20% of entries corrupted by
``U(−s, s)``, ``s = mean|X*|`` (the authors' generator: orthonormal factors, a
superdiagonal core ``κ^{−i/(r−1)}``), κ ∈ {1, 5, 20}, default parameters (the
paper's tuned η, z0, z1, decay carried to the robust scale). Per κ: where the run
stopped and why, the returned iterate, its squared relative error, the first
iteration below 1e-12, the error at t = 100, wall time on the thread executor (a
second run without the per-iteration error callback). Side by side, the paper's
update (``(1 − η) U_k − η M_k(D) Ŭ_k (H_k + εI)⁻¹``, absolute ε = 1e-7, absolute
thresholds z0 = 0.03, z1 = 0.02 on this instance's scale) run by the NumPy oracle
:func:`dscaledgd.problems.tensor_rpca.reference_run` for T = 100 from the same HOSVD
start: its error at T = 100 and its minimum.

    python benchmarks/bench_tensor_rpca.py target [--n 100] [--rank 10]

Part ``tensorly``: the same generator at 60³, r = 5, κ = 5, 20% corruption; ours with
every default on threads and on a freshly started 2-worker LocalCluster (its start and
stop counted), against ``tensorly.decomposition.robust_pca`` (the convex ADMM) swept
over ``reg_E``; squared error of the low-rank part and wall time.

    python benchmarks/bench_tensor_rpca.py tensorly [--n 60] [--rank 5] [--reg-e ...]

Part ``tune``: the §8 instance (κ = 5) with ``tune=None``, ``"self-supervised"`` and
``"validation"``, from the defaults, on threads and on one 2-worker LocalCluster: the
error against the untuned defaults' and the wall time against one untuned run on the
same executor; the self-supervised search's table.

    python benchmarks/bench_tensor_rpca.py tune [--n 100] [--rank 10]

Part ``cluster``: 300³ (r = 10, 20% corruption, dense chunks): seconds per iteration on
a 2-worker LocalCluster against the in-process thread executor and against the chunk
kernels alone in a 2-thread pool, and the Dask overhead that leaves; medians over
rounds, each round a threads run and a freshly started cluster's runs.

    python benchmarks/bench_tensor_rpca.py cluster [--n 300] [--iters 40] [--rounds 3]

Part ``sparsifier``: the soft threshold's schedule against the fit-following threshold
(``sparsifier="adaptive"``) at 60³, r = 5, 20% corruption plus Gaussian noise of 0, 1%,
5% and 20% of std(X*): the error of the low-rank part and how well the sparse part's
support matches the corruption.

    python benchmarks/bench_tensor_rpca.py sparsifier [--n 60] [--rank 5]

BLAS is pinned to one thread per worker thread (as in bench_tensor.py).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import dask  # noqa: E402
import numpy as np  # noqa: E402
from _common import report, table  # noqa: E402

import dscaledgd as dsg  # noqa: E402
from dscaledgd.linalg import multi_mode_product  # noqa: E402
from dscaledgd.problems import tensor_rpca as trp  # noqa: E402


def instance(n: int, r: int, kappa: float, frac: float = 0.2, seed: int = 0):
    """The authors' §8 instance: ``(X*, Y)``."""
    rng = np.random.default_rng(seed)
    U = [np.linalg.qr(rng.standard_normal((n, r)))[0] for _ in range(3)]
    core = np.zeros((r, r, r))
    i = np.arange(r)
    core[i, i, i] = kappa ** (-i / max(r - 1, 1))
    X = multi_mode_product(core, U)
    s = float(np.mean(np.abs(X)))
    out = rng.random(X.shape) < frac
    return X, X + np.where(out, rng.uniform(-s, s, X.shape), 0.0)


def _err2(A, X) -> float:
    return float((np.linalg.norm(A - X) / np.linalg.norm(X)) ** 2)


def part_target(args) -> None:
    rows = []
    for kappa in (1.0, 5.0, 20.0):
        X, Y = instance(args.n, args.rank, kappa)
        errs = []

        def cb(st, errs=errs, X=X):
            errs.append(_err2(multi_mode_product(st.core, list(st.factors())), X))

        ranks = (args.rank,) * 3
        res = dsg.tensor_rpca(Y, ranks, scheduler="threads", random_state=0, callback=cb)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            timed = dsg.tensor_rpca(Y, ranks, scheduler="threads", random_state=0)
        wall = time.perf_counter() - t0
        assert timed.n_iter == res.n_iter
        k = res.info["best_iteration"]
        err = _err2(res.to_tensor().compute(), X)
        below = next((t + 1 for t, e in enumerate(errs) if e <= 1e-12), None)
        at100 = errs[99] if len(errs) >= 100 else float("nan")
        # the paper's update by the oracle, from the exact HOSVD of clip(Y, ±0.03)
        core0, U0 = trp.reference_init(Y, ranks, 0.03)
        paper = trp.reference_run(Y, core0, U0, z1=0.02, n_iter=100, form="paper")
        perr = [_err2(multi_mode_product(c, u), X) for c, u, _ in paper]
        rows.append([
            f"{kappa:g}", res.status, res.n_iter, k, f"{err:.2e}", below, f"{at100:.2e}",
            f"{wall:.2f}", f"{perr[100]:.2e}", f"{min(perr):.2e} (t={int(np.argmin(perr))})",
        ])  # fmt: skip
        print(rows[-1], flush=True)
    report(
        f"Tensor RPCA §8 target: {args.n}³, r = {args.rank}, 20% corruption, defaults",
        table(
            [
                "κ",
                "status",
                "n_iter",
                "returned",
                "err² returned",
                "first ≤1e-12",
                "err² t=100",
                "wall s (threads)",
                "paper form err² T=100",
                "paper form min",
            ],
            rows,
        ),  # fmt: skip
        notes=(
            "err² = ‖X − X*‖²/‖X*‖². Ours: tensor_rpca with every default (η = 0.45, z0 = 30, "
            "z1 = 20 in units of the median |Y|, decay 0.855, relative ε = 1e-7, stop when the "
            "criterion Σ|Y − X|/Σ|Y| improves by less than 1e-6 over 10 iterations), the "
            "returned (best-criterion) iterate; wall time of a second run without the error "
            "callback, spectral init included. Paper form: the NumPy oracle's reference_run("
            "form='paper') with the paper's absolute z0 = 0.03, z1 = 0.02, ε = 1e-7, T = 100, "
            "from the exact HOSVD of clip(Y, ±0.03)."
        ),
    )


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def part_tensorly(args) -> None:
    from tensorly.decomposition import robust_pca

    n, r = args.n, args.rank
    X, Y = instance(n, r, args.kappa)
    rows = []

    def ours(scheduler):
        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = dsg.tensor_rpca(Y, r, scheduler=scheduler, random_state=0, progress=False)
                return res, res.to_tensor().compute()

        (res, Xh), wall = _timed(run)
        return [f"dscaledgd tensor_rpca ({scheduler})", "defaults", res.n_iter,
                f"{_err2(Xh, X):.2e}", f"{wall:.2f}"]  # fmt: skip

    # both sides warmed up by one untimed run on a 12³ instance: the modules are imported
    # and Numba's cached kernels loaded in this process, as TensorLy's are by its import
    _, Ys = instance(12, 2, args.kappa)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (_, t_warm) = _timed(lambda: dsg.tensor_rpca(Ys, 2, scheduler="threads", max_iter=5,
                                                     random_state=0, progress=False))  # fmt: skip
        (_, t_warm_tl) = _timed(lambda: robust_pca(Ys, reg_E=0.1, n_iter_max=5, verbose=0))
    rows.append(ours("threads"))
    rows.append(ours("distributed"))  # starts (and stops) its own 2-worker LocalCluster
    best = None
    for reg_e in args.reg_e:
        (D, E), wall = _timed(
            lambda reg_e=reg_e: robust_pca(
                Y, reg_E=reg_e, n_iter_max=args.tl_iter, tol=1e-10, verbose=0
            )
        )  # fmt: skip
        err = _err2(np.asarray(D), X)
        rows.append(["TensorLy robust_pca", f"reg_E={reg_e:g}", args.tl_iter, f"{err:.2e}",
                     f"{wall:.2f}"])  # fmt: skip
        print(rows[-1], flush=True)
        if best is None or err < best[0]:
            best = (err, wall, reg_e)
    cl = float(rows[1][4])
    report(
        f"Tensor RPCA vs TensorLy robust_pca: {n}³, r = {r}, κ = {args.kappa:g}, 20% corruption",
        table(["method", "setting", "iterations", "err²", "wall s"], rows),
        notes=(
            f"err² = ‖X − X*‖²/‖X*‖² of the low-rank part. dscaledgd: every default, wall time "
            "includes the spectral init and forming the tensor; '(distributed)' also starts and "
            "stops the embedded 2-worker LocalCluster. TensorLy: the convex ADMM "
            f"(tensorly.decomposition.robust_pca, tol=1e-10, n_iter_max={args.tl_iter}, reg_J=1), "
            f"swept over reg_E; best reg_E={best[2]:g}: err² {best[0]:.2e} in {best[1]:.2f} s. "
            f"Ratio of wall times, TensorLy best over ours on the LocalCluster: "
            f"{best[1] / cl:.1f}x; over ours on threads: {best[1] / float(rows[0][4]):.1f}x. "
            f"Both sides warmed up first by one untimed run on a 12³ instance in this process "
            f"(ours {t_warm:.2f} s: the modules imported and Numba's cached kernels loaded; "
            f"TensorLy {t_warm_tl:.2f} s); the LocalCluster's workers are not warmed (their "
            "imports and kernel loads are inside the timed run)."
        ),
    )


def part_tune(args) -> None:
    from _common import local_cluster

    X, Y = instance(args.n, args.rank, args.kappa)
    rows, tables = [], []
    cluster, client = local_cluster(2)
    try:
        for where in ({"scheduler": "threads"}, {"client": client}):
            name = "threads" if "scheduler" in where else "LocalCluster (2 workers)"
            runs = {}
            for tune in (None, "self-supervised", "validation"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res, wall = _timed(
                        lambda tune=tune, where=where: dsg.tensor_rpca(
                            Y, args.rank, tune=tune, random_state=0, **where
                        )
                    )  # fmt: skip
                err = _err2(res.to_tensor().compute(), X)
                runs[tune] = (res, wall, err)
                info = res.info.get("tuning", {})
                chosen = info.get("chosen", {"step_size": trp.ETA, "z1": trp.Z1,
                                             "decay": trp.DECAY})  # fmt: skip
                rows.append([
                    name, tune or "none (defaults)", res.n_iter, f"{err:.2e}", f"{wall:.2f}",
                    f"{wall / runs[None][1]:.1f}x", f"{runs[None][2] and err / runs[None][2]:.2g}",
                    ", ".join(f"{k}={v:g}" for k, v in chosen.items()),
                    info.get("max_concurrent", ""),
                ])  # fmt: skip
                print(rows[-1], flush=True)
                if tune == "self-supervised" and name != "threads":
                    tables = info["table"]
    finally:
        client.close()
        cluster.close()
    body = table(
        ["executor", "tune", "n_iter (winner)", "err²", "wall s", "time / single",
         "err² / default", "chosen", "concurrent fits"],
        rows,
    )  # fmt: skip
    body += "\n\nThe self-supervised search on the LocalCluster, per candidate:\n\n" + table(
        ["step_size", "z1", "decay", "scores per round", "n_iter", "dropped after", "chosen"],
        [[t["step_size"], t["z1"], t["decay"], " ".join(f"{v:.6g}" for v in t["scores"]),
          t["n_iter"], t["dropped_after_round"], t["chosen"]] for t in tables],
    )  # fmt: skip
    report(
        f"Tensor RPCA tuning: {args.n}³, r = {args.rank}, κ = {args.kappa:g}, 20% corruption",
        body,
        notes=(
            "Each row is one call from the defaults, nothing hand-set, on the named executor "
            "(the LocalCluster started once for all its rows); 'time / single' is its wall "
            "time over the untuned run's on the same executor; wall times include the spectral "
            "starts. The search is successive halving over 12 candidates (step_size × z1 × "
            "decay, z0 = 1.5 z1), first budget 30 iterations, doubled, the round's fits "
            "concurrent on the one executor; 'validation' holds out 10% of the entries and "
            "its winner is fitted on the other 90%."
        ),
    )


def _per_iteration(res) -> float:
    """Median seconds per iteration from the history's timestamps."""
    return float(np.median(np.diff(res.history["time"])))


def _kernel_time(T, core, U, zeta, reps=3) -> float:
    """Every chunk's clipped pass in a plain 2-thread pool (no Dask, no reductions)."""
    from concurrent.futures import ThreadPoolExecutor

    from dscaledgd.problems import tucker as tk

    work = []
    for c in range(T.n_chunks):
        sl = T.chunk_slices(c)
        chunk = np.ascontiguousarray(T.read_chunk(c))  # as scattered to a worker
        work.append((chunk, [np.ascontiguousarray(u[s]) for u, s in zip(U, sl)]))
    tk.chunk_pass(work[0][0], work[0][1], core, 1.0, zeta)  # compile
    best = np.inf
    with ThreadPoolExecutor(2) as pool:
        for _ in range(reps):
            t0 = time.perf_counter()
            list(pool.map(lambda w: tk.chunk_pass(w[0], w[1], core, 1.0, zeta), work))
            best = min(best, time.perf_counter() - t0)
    return best


def _cluster_round(T, rank, kw) -> tuple:
    """One round: the thread executor with no cluster up, then a freshly started 2-worker
    LocalCluster (batched messages, then task by task), stopped afterwards."""
    from _common import local_cluster

    res_t = dsg.tensor_rpca(T, rank, scheduler="threads", **kw)
    cluster, client = local_cluster(2)
    try:
        res_c = dsg.tensor_rpca(T, rank, client=client, **kw)
        with dask.config.set({"dscaledgd.batch-tasks": False}):  # one message per task
            res_s = dsg.tensor_rpca(T, rank, client=client, **kw)
    finally:
        client.close()
        cluster.close()
    return res_t, res_c, res_s


def part_cluster(args) -> None:
    X, Y = instance(args.n, args.rank, 5.0)
    del X
    T = dsg.TensorObservations.from_array(Y)
    del Y
    kw = {"random_state": 0, "max_iter": args.iters, "progress": False}
    per = []  # per round: s/iteration of threads, cluster, task by task
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rnd in range(args.rounds):
            res_t, res_c, res_s = _cluster_round(T, args.rank, kw)
            per.append([_per_iteration(r) for r in (res_t, res_c, res_s)])
            print(f"round {rnd}: " + " ".join(f"{v:.4f}" for v in per[-1]), flush=True)
    core, U = res_t.core, [np.asarray(F) for F in res_t.factors]
    kern = _kernel_time(T, core, U, res_t.info["threshold"]["zeta_returned"])
    per = np.asarray(per)
    it_t, it_c, it_s = np.median(per, axis=0)
    each = lambda j: ", ".join(f"{v:.4f}" for v in per[:, j])  # noqa: E731
    over = lambda j: ", ".join(f"{(v - t) / v:.0%}" for t, v in per[:, [0, j]])  # noqa: E731
    rows = [
        ["chunk kernels only (2-thread pool)", f"{kern:.4f}", "", ""],
        ["tensor_rpca, threads", f"{it_t:.4f}", each(0), res_t.n_iter],
        ["tensor_rpca, LocalCluster (2 workers)", f"{it_c:.4f}", each(1), res_c.n_iter],
        ["tensor_rpca, LocalCluster, task by task", f"{it_s:.4f}", each(2), res_s.n_iter],
    ]
    report(
        f"Tensor RPCA at {args.n}³ (r = {args.rank}): seconds per iteration on 2 workers",
        table(["what", "s / iteration (median of rounds)", "each round", "n_iter"], rows),
        notes=(
            f"Dense chunks, default grid ({' × '.join(str(g) for g in T.grid)} chunks). "
            f"s/iteration: the median of the history's time steps ({args.iters} iterations), "
            f"then the median over {args.rounds} rounds; each round runs the thread executor "
            "with no cluster up, then starts a 2-worker LocalCluster, runs on it (batched "
            "messages, then task by task: dask config dscaledgd.batch-tasks false) and stops "
            "it, so the machine's drift over the run touches both sides alike. Dask overhead "
            f"of the LocalCluster over the in-process thread executor: {(it_c - it_t) / it_c:.0%} "
            f"of an iteration from the medians (per round: {over(1)}); over the bare kernels: "
            f"{(it_c - kern) / it_c:.0%}. Task by task: {(it_s - it_t) / it_s:.0%} over threads "
            f"(per round: {over(2)}). The client and scheduler share the machine's 2 cores with "
            "the two workers."
        ),
    )


def part_sparsifier(args) -> None:
    X, Y0 = instance(args.n, args.rank, 5.0, frac=0.2, seed=1)
    out = Y0 != X
    rows = []
    for noise in (0.0, 0.01, 0.05, 0.2):
        Y = Y0 + noise * np.std(X) * np.random.default_rng(2).standard_normal(X.shape)
        for sp in ("schedule", "adaptive"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res, wall = _timed(lambda sp=sp, Y=Y: dsg.tensor_rpca(
                    Y, args.rank, sparsifier=sp, scheduler="threads", random_state=0,
                    max_iter=300))  # fmt: skip
            S = res.sparse.compute()
            found = S != 0
            rows.append([
                f"{noise:g}", sp, res.n_iter, f"{_err2(res.to_tensor().compute(), X):.2e}",
                f"{found.mean():.3f}", f"{np.mean(found == out):.3f}",
                f"{np.mean(found[out]):.3f}", f"{wall:.2f}",
            ])  # fmt: skip
            print(rows[-1], flush=True)
    report(
        f"Tensor RPCA sparsifiers: {args.n}³, r = {args.rank}, 20% corruption, Gaussian noise",
        table(
            [
                "noise / std(X*)",
                "sparsifier",
                "n_iter",
                "err² of X",
                "S ≠ 0",
                "support agrees",
                "outliers in S",
                "wall s",
            ],
            rows,
        ),  # fmt: skip
        notes=(
            "The §8 generator (κ = 5, corruption U(−s, s), s = mean|X*|) plus N(0, σ²) noise on "
            "every entry. 'schedule': ζ_t = z1 · decay^t (defaults); 'adaptive': ζ_{t+1} = 3 σ̂_t, "
            "σ̂_t the robust standard deviation of Y − X_t from 512 sampled entries per chunk. "
            "'support agrees': the share of entries where (S ≠ 0) equals 'corrupted'; 'outliers "
            "in S': the share of the corrupted entries with S ≠ 0. Threads, defaults otherwise."
        ),
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    t = sub.add_parser("target")
    t.add_argument("--n", type=int, default=100)
    t.add_argument("--rank", type=int, default=10)
    tl = sub.add_parser("tensorly")
    tl.add_argument("--n", type=int, default=60)
    tl.add_argument("--rank", type=int, default=5)
    tl.add_argument("--kappa", type=float, default=5.0)
    tl.add_argument("--reg-e", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1, 0.3, 1.0])
    tl.add_argument("--tl-iter", type=int, default=300)
    tu = sub.add_parser("tune")
    tu.add_argument("--n", type=int, default=100)
    tu.add_argument("--rank", type=int, default=10)
    tu.add_argument("--kappa", type=float, default=5.0)
    cl = sub.add_parser("cluster")
    cl.add_argument("--n", type=int, default=300)
    cl.add_argument("--rank", type=int, default=10)
    cl.add_argument("--iters", type=int, default=40)
    cl.add_argument("--rounds", type=int, default=3)
    sp = sub.add_parser("sparsifier")
    sp.add_argument("--n", type=int, default=60)
    sp.add_argument("--rank", type=int, default=5)
    args = ap.parse_args(argv)
    parts = {"target": part_target, "tensorly": part_tensorly, "tune": part_tune,
             "cluster": part_cluster, "sparsifier": part_sparsifier}  # fmt: skip
    parts[args.part](args)


if __name__ == "__main__":
    main()
