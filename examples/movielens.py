"""MovieLens: regularised, centred ScaledGD with early stopping.

Splits the ratings 90/10 (train/test) with a fixed seed, holds out 10% of the
training part for validation, fits, reports the test RMSE and writes a
convergence plot (train and validation RMSE per iteration).

    python examples/movielens.py [PATH_OR_NAME] [--rank 40] [--reg 0.1] [--out DIR]

PATH_OR_NAME defaults to ../shared/data/movielens-latest-small when present,
else "ml-latest-small" (downloaded from GroupLens on first use).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import dscaledgd as dsg
from dscaledgd.plotting import plot_history

HERE = os.path.dirname(os.path.abspath(__file__))
LOCAL = os.path.join(HERE, "..", "..", "shared", "data", "movielens-latest-small")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "source", nargs="?", default=LOCAL if os.path.isdir(LOCAL) else "ml-latest-small"
    )
    ap.add_argument("--rank", type=int, default=40)
    ap.add_argument("--reg", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(HERE, "_out"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    obs = dsg.datasets.load_movielens(args.source)
    train, test = obs.split(0.1, random_state=args.seed)
    fit, val = train.split(0.1, random_state=args.seed + 1)
    print(f"{obs}\ntrain {fit.nnz}, validation {val.nnz}, test {test.nnz} ratings")

    t0 = time.perf_counter()
    with warnings.catch_warnings():  # movies seen only in the test split have no data
        warnings.simplefilter("ignore", dsg.DataWarning)
        res = dsg.complete(
            fit,
            args.rank,
            reg=args.reg,
            center="biases",
            validation=val,
            patience=20,
            scheduler="threads",
            random_state=args.seed,
        )
    secs = time.perf_counter() - t0
    print(f"{res.status} after {res.n_iter} iterations in {secs:.1f} s: {res.message}")
    print(f"test RMSE {res.rmse(test):.4f}  (validation {min(res.history['validation']):.4f})")
    # a prediction by original ids: user 1, movies 1 (Toy Story) and 2 (Jumanji)
    print("user 1, movies 1 and 2:", res.predict([1, 1], [1, 2], by="id").round(2))
    png = plot_history(
        res,
        os.path.join(args.out, "movielens_convergence.png"),
        obs=fit,
        title=f"MovieLens: rank {args.rank}, reg {args.reg:g}",
    )
    print(f"convergence plot: {png}")


if __name__ == "__main__":
    main()
