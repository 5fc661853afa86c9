"""ScaledSGD (ALGORITHMS.md §9): fidelity to the authors' instances and speed per core.

Part ``fidelity``: the authors' stored instances (``../shared/data/scaledsgd-data``,
or ``$DSCALEDGD_DATA``): ``MAT_30.mat`` (30 × 30 PSD rank 3, eigenvalues (2, 2, 2)
and (10, 0.1, 0.001)), every entry a sample, lr 0.3, to f ≤ 1e-15 (at most 200
epochs), ScaledSGD and SGD, seeds 1-5: epochs, against the authors' 28-29
(ScaledSGD), 14 (SGD, well conditioned) and a stall near 1e-8 (SGD, κ = 1e4).

Part ``speed``: samples per second of the Numba sample kernel on one core at r = 10
and r = 50, RMSE and BPR, ScaledSGD against plain SGD on the same kernel (2·10⁵
random samples over 10⁴ rows, best of 3); ScaledSGD's cost over SGD.

    python benchmarks/bench_scaledsgd.py fidelity [--seeds 5]
    python benchmarks/bench_scaledsgd.py speed
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from _common import report, table  # noqa: E402

import dscaledgd as dsg  # noqa: E402
from dscaledgd.problems import pairwise as pw  # noqa: E402
from dscaledgd.solvers.online import inverse_gram  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.environ.get("DSCALEDGD_DATA", os.path.join(HERE, "..", "..", "shared", "data"))
MAT_30 = os.path.join(DATA, "scaledsgd-data", "MAT_30.mat")


def part_fidelity(args) -> None:
    from scipy.io import loadmat

    m = loadmat(MAT_30)
    rows = []
    for name, label in (("MW", "well (2, 2, 2)"), ("MI", "ill (10, 0.1, 0.001)")):
        M = np.asarray(m[name], dtype=float)
        i, j = np.nonzero(M)
        for method in ("scaledsgd", "sgd"):
            counts, finals = [], []
            for seed in range(1, args.seeds + 1):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", dsg.ConvergenceWarning)
                    res = dsg.scaled_sgd((i, j, M[i, j]), 3, method=method, step_size=0.3,
                                         epochs=200, tol=1e-15, random_state=seed)  # fmt: skip
                counts.append(res.n_iter if res.status == "converged" else None)
                finals.append(res.history["loss"][-1])
            done = [c for c in counts if c is not None]
            rows.append([label, method, " ".join(str(c) if c else ">200" for c in counts),
                         f"{np.median(done):.0f}" if done else "-",
                         f"{max(finals):.1e}"])  # fmt: skip
            print(rows[-1], flush=True)
    report(
        "ScaledSGD fidelity: the authors' MAT_30 instances (epochs to f ≤ 1e-15)",
        table(["matrix", "method", "epochs per seed", "median", "largest final f"], rows),
        notes=(
            "Every entry of the 30 x 30 matrix is a sample (900), lr 0.3, X ~ N(0, 1), a new "
            "shuffle per epoch, at most 200 epochs, f = mean ½(x_i·x_j − y)². The authors "
            "(Exp1_RMSE.m, seed 1): ScaledSGD 28-29 epochs on both, SGD 14 when well "
            "conditioned and a stall near 1e-8 at κ = 1e4. Rows appearing twice in a sample "
            "(i = j) move once by the summed gradient here; the authors' code applies one of "
            "the two directions."
        ),
    )


def _speed(loss, r, scaled, d=10_000, m=200_000, reps=3) -> float:
    rng = np.random.default_rng(0)
    I, J, K = (rng.integers(0, d, m) for _ in range(3))
    Y = (rng.random(m) < 0.5).astype(float) if loss == "bpr" else rng.standard_normal(m)
    K = K if loss == "bpr" else J
    X0 = rng.standard_normal((d, r)) / np.sqrt(r)
    order = np.arange(m)
    best = np.inf
    for _ in range(reps + 1):  # the first compiles
        X = X0.copy()
        P = inverse_gram(X) if scaled else np.eye(r)
        t0 = time.perf_counter()
        pw.run_samples(I, J, K, Y, order, X, P, 1e-4, loss, scaled)
        best = min(best, time.perf_counter() - t0)
    return m / best


def part_speed(args) -> None:
    rows = []
    for loss in ("rmse", "bpr"):
        for r in (10, 50):
            sgd = _speed(loss, r, False)
            ssgd = _speed(loss, r, True)
            rows.append([loss, r, f"{sgd:,.0f}", f"{ssgd:,.0f}", f"{sgd / ssgd:.2f}x"])
            print(rows[-1], flush=True)
    report(
        "ScaledSGD kernel speed per core: samples per second",
        table(["loss", "r", "SGD", "ScaledSGD", "ScaledSGD cost over SGD"], rows),
        notes=(
            "problems.pairwise.run_samples on one thread, 2e5 random samples over 1e4 rows, "
            "best of 3 after a compiling run. ScaledSGD adds the r × r products with P and "
            "4 (pairs) or 6 (triplets) Sherman–Morrison updates per sample, O(r²) each; the "
            "issue's goal is at most 2.5x at r = 10."
        ),
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    f = sub.add_parser("fidelity")
    f.add_argument("--seeds", type=int, default=5)
    sub.add_parser("speed")
    args = ap.parse_args(argv)
    {"fidelity": part_fidelity, "speed": part_speed}[args.part](args)


if __name__ == "__main__":
    main()
