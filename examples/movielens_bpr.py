"""Item-item BPR on MovieLens with ScaledSGD against SGD, and the NP-maximum line.

The recipe of the ScaledSGD paper's appendix (the authors' ``TaskSmall.m``):

1. the user × item rating matrix of ``ratings.csv``; items rated by more than
   3 users are kept;
2. the item-item similarity ``M = Dᵀ Rᵀ R D`` (cosine: ``D`` scales every item's
   column to unit norm);
3. ``--triplets`` random ``(i, j, k)``; ``y = 1`` when ``M_ij > M_ik``, ``0`` when
   ``M_ij < M_ik``; ties are dropped;
4. a random 80/20 split into training and test triplets.

ScaledSGD and SGD (same kernel, same start) are trained for ``--epochs`` epochs
with the test AUC recorded every 1% of an epoch (``eval_every=0.01``); the
NP-maximum AUC (a per-item score trained on the test triplets:
``res.info["np_maximum"]``) is the line a personal model has to pass. The plot
``auc.png`` shows both curves and the line.

    python examples/movielens_bpr.py [--data DIR] [--rank 10] [--epochs 3]
        [--triplets 500000] [--lr-scaled 300] [--lr-sgd 0.2] [--out DIR] [--quick]

Measured on this 2-core machine (the defaults; seed 0; 4180 items, 348 836
training triplets): NP-maximum 0.712; ScaledSGD passes it after 1.29 epochs and
ends at AUC 0.783, SGD after 1.22 epochs and ends at 0.749 (3 s each): not the
paper's "within the first epoch" (``benchmarks/bench_scaledsgd.py bpr`` has the same on the
authors' stored triplets). ``--quick``: 300 000 triplets, two epochs, for the tests.
The ratings are GroupLens's ml-latest-small (research licence), read from
``$DSCALEDGD_DATA`` (or ``../shared/data``); never copied into the project.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import _tensor_common as common
import numpy as np

import dscaledgd as dsg

RATINGS = os.path.join(common.DATA_DIR, "movielens-latest-small", "ratings.csv")
MISSING = """\
error: the ratings were not found at
    {path}
It reads movielens-latest-small/ratings.csv of the shared data folder (see
../shared/data/README.md). Point DSCALEDGD_DATA at it, or pass --data DIR."""


def item_item(path: str, min_users: int = 3):
    """The cosine item-item similarity of the items rated by more than ``min_users``."""
    import scipy.sparse as sp

    raw = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2))
    users, u = np.unique(raw[:, 0], return_inverse=True)
    items, v = np.unique(raw[:, 1], return_inverse=True)
    R = sp.csc_matrix((raw[:, 2], (u, v)), shape=(len(users), len(items)))
    keep = np.flatnonzero(np.diff(R.indptr) > min_users)
    R = R[:, keep]
    norm = np.sqrt(np.asarray(R.multiply(R).sum(axis=0))).ravel()
    R = R @ sp.diags(1.0 / norm)
    return (R.T @ R).toarray()


def triplets(M, m: int, seed: int):
    """``m`` random triplets labelled by ``M``, ties dropped."""
    rng = np.random.default_rng(seed)
    d = len(M)
    I, J, K = rng.integers(0, d, (3, m))
    diff = M[I, J] - M[I, K]
    keep = diff != 0
    return I[keep], J[keep], K[keep], (diff[keep] > 0).astype(float)


def main(argv=None) -> dict:
    ap = common.new_parser(__doc__)
    ap.add_argument("--data", default=None, help="the movielens-latest-small folder")
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--triplets", type=int, default=500_000)
    ap.add_argument("--lr-scaled", type=float, default=300.0)
    ap.add_argument("--lr-sgd", type=float, default=0.2)
    common.add_common_tail(ap, out_help="folder for auc.png (default: a temp folder)",
                           quick_help="300 000 triplets, two epochs")  # fmt: skip
    args = ap.parse_args(argv)
    path = os.path.join(args.data, "ratings.csv") if args.data else RATINGS
    if not os.path.isfile(path):
        ap.exit(2, MISSING.format(path=path) + "\n")
    if args.quick:
        args.triplets, args.epochs = 300_000, 2
    out = common.output_folder(args.out, "dscaledgd-movielens-bpr-")
    M = item_item(path)
    I, J, K, Y = triplets(M, args.triplets, args.seed)
    perm = np.random.default_rng(args.seed).permutation(len(I))
    cut = int(0.8 * len(I))
    train = tuple(c[perm[:cut]] for c in (I, J, K, Y))
    test = tuple(c[perm[cut:]] for c in (I, J, K, Y))
    print(f"{len(M)} items, {len(train[0])} training and {len(test[0])} test triplets, "
          f"rank {args.rank}, {args.epochs} epochs")  # fmt: skip
    curves, npmax = {}, None
    for method, lr in (("scaledsgd", args.lr_scaled), ("sgd", args.lr_sgd)):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dsg.ConvergenceWarning)
            res = dsg.scaled_sgd(train, args.rank, loss="bpr", method=method, step_size=lr,
                                 epochs=args.epochs, n_rows=len(M), validation=test,
                                 eval_every=0.01, random_state=args.seed)  # fmt: skip
        h = res.history
        npmax = res.info["np_maximum"]
        above = np.flatnonzero(h["eval_auc"] >= npmax)
        passed = float(h["eval_epoch"][above[0]]) if len(above) else None
        curves[method] = {"epoch": h["eval_epoch"], "auc": h["eval_auc"], "passed": passed}
        when = f"after {passed:.2f} epochs" if passed is not None else "never"
        print(f"{method:>9} (lr {lr:g}): final AUC {h['eval_auc'][-1]:.4f}, passes the "
              f"NP-maximum {npmax:.4f} {when}; {time.perf_counter() - t0:.1f} s")  # fmt: skip
    png = plot(curves, npmax, os.path.join(out, "auc.png"))
    return {"curves": curves, "np_maximum": npmax, "png": png, "items": len(M)}


def plot(curves, npmax, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'dscaledgd[examples]'): no plot")
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, label in (("scaledsgd", "ScaledSGD"), ("sgd", "SGD")):
        ax.plot(curves[method]["epoch"], curves[method]["auc"], label=label)
    ax.axhline(npmax, color="k", ls="--", lw=1, label="NP-maximum")
    ax.set_xlabel("epochs")
    ax.set_ylabel("test AUC")
    ax.set_title("Item-item BPR, MovieLens (ml-latest-small)")
    ax.legend()
    return common.save(fig, path)


if __name__ == "__main__":
    main(sys.argv[1:])
