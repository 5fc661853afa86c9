"""Video RPCA: background/foreground separation of the I2R escalator clip.

Each of the 200 grayscale frames (130×160) becomes one column of a
20800 × 200 matrix ``Y`` scaled to [0, 1]. A static camera makes the
background nearly the same in every frame (low rank), while the people are
small and move (sparse), so ``dsg.rpca`` splits ``Y ≈ L Rᵀ + S``:

* background = ``L Rᵀ`` (rank ``--rank``),
* foreground = ``res.S``, the library's sparse part ``T_{2α}(Y − L Rᵀ)``
  (shown as ``|S|``, brighter = larger).

The run uses an embedded 2-worker LocalCluster on 127.0.0.1 and writes a PNG
grid: originals, backgrounds and foregrounds of a few frames.

    python examples/video_rpca.py [--data PATH] [--rank 2] [--alpha 0.1]
        [--max-iter 60] [--frames N] [--scheduler threads] [--out PNG]

``--data`` defaults to ``$DSCALEDGD_DATA/video-escalator-i2r/escalator_data.mat``
when ``DSCALEDGD_DATA`` is set, else ``../shared/data/...`` next to the
repository. The clip is research-only data (I2R background-modelling
benchmark, Li, Huang, Gu and Tian, IEEE TIP 2004) and is never copied into
the project.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

import dscaledgd as dsg

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.environ.get("DSCALEDGD_DATA", os.path.join(HERE, "..", "..", "shared", "data"))
DEFAULT_DATA = os.path.join(DATA_DIR, "video-escalator-i2r", "escalator_data.mat")
DEFAULT_OUT = os.path.join(HERE, "_out", "video_rpca.png")
FRAME_SHAPE = (130, 160)  # (height, width); frames are stored column-major (MATLAB)

MISSING = """\
The escalator video was not found at
    {path}
It is escalator_data.mat from the fastRPCA repository (github.com/stephenbeckr/fastRPCA,
utilities/referenceSolutions/escalator_data.mat; md5 a5148171a2d0767bcf571f07e53389fc),
the I2R 'Escalator' sequence, research use only. Put it in
../shared/data/video-escalator-i2r/ (see ../shared/data/README.md), set DSCALEDGD_DATA
to the data folder, or pass --data PATH."""


def load_video(path: str, frames: int | None = None) -> np.ndarray:
    """The clip as a float matrix (pixels × frames) in [0, 1].

    ``escalator_data.mat`` is a MATLAB v5 file (not v7.3/HDF5), so
    :func:`scipy.io.loadmat` reads it directly. ``frames`` keeps the first N.
    """
    from scipy.io import loadmat

    X = loadmat(path, variable_names=["X"])["X"]
    if frames is not None:
        X = X[:, :frames]
    return X.astype(np.float64) / 255.0


def frame(col: np.ndarray) -> np.ndarray:
    return col.reshape(FRAME_SHAPE, order="F")


def plot_grid(Y, B, S, cols, path: str, title: str) -> str:
    """Rows: original, background ``L Rᵀ``, foreground ``|S|``; one column per frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fg_max = float(np.percentile(np.abs(S[:, cols]), 99.9)) or 1.0
    rows = [
        ("original", Y, dict(vmin=0, vmax=1)),
        ("background  L Rᵀ", B, dict(vmin=0, vmax=1)),
        ("foreground  |S|", np.abs(S), dict(vmin=0, vmax=fg_max)),
    ]
    fig, axes = plt.subplots(3, len(cols), figsize=(1.9 * len(cols), 5.2), dpi=120)
    for i, (name, M, kw) in enumerate(rows):
        for j, k in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(frame(M[:, k]), cmap="gray", interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"frame {k}", fontsize=9)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=DEFAULT_DATA, help="path of escalator_data.mat")
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--max-iter", type=int, default=60)
    ap.add_argument("--stall-tol", type=float, default=1e-8)
    ap.add_argument("--frames", type=int, default=None, help="use only the first N frames")
    ap.add_argument("--columns", type=int, default=5, help="frames shown in the PNG")
    ap.add_argument(
        "--scheduler",
        choices=["cluster", "threads", "sync"],
        default="cluster",
        help="cluster: embedded 2-worker LocalCluster on 127.0.0.1 (default)",
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--grid", default=None, help="row x column blocks of Y, e.g. 2x1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=DEFAULT_OUT, help="PNG to write")
    args = ap.parse_args(argv)

    if not os.path.isfile(args.data):
        print(MISSING.format(path=os.path.abspath(args.data)), file=sys.stderr)
        raise SystemExit(2)

    t0 = time.perf_counter()
    Y = load_video(args.data, args.frames)
    t_load = time.perf_counter() - t0
    n1, n2 = Y.shape
    print(f"video: {n2} frames of {FRAME_SHAPE[0]}x{FRAME_SHAPE[1]} -> Y {n1} x {n2}")

    kw = dict(
        alpha=args.alpha,
        max_iter=args.max_iter,
        stall_tol=args.stall_tol,
        random_state=args.seed,
        progress=False,
        grid=None if args.grid is None else tuple(int(g) for g in args.grid.split("x")),
    )
    with warnings.catch_warnings():
        # on real video the residual never reaches tol: max_iter is the normal stop
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        if args.scheduler == "cluster":
            from distributed import Client, LocalCluster

            with (
                LocalCluster(
                    n_workers=args.workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",
                ) as cluster,
                Client(cluster) as client,
            ):
                t1 = time.perf_counter()
                res = dsg.rpca(Y, args.rank, client=client, **kw)
                L, R = res.compute_factors()
                S = res.S.compute(scheduler=client)
                t_solve = time.perf_counter() - t1
        else:
            t1 = time.perf_counter()
            res = dsg.rpca(Y, args.rank, scheduler=args.scheduler, **kw)
            L, R = res.compute_factors()
            S = np.asarray(res.S.compute())
            t_solve = time.perf_counter() - t1

    t2 = time.perf_counter()
    B = L @ R.T
    rel_res = float(np.linalg.norm(Y - B - S) / np.linalg.norm(Y))
    cols = np.unique(np.linspace(0, n2 - 1, args.columns).round().astype(int))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    png = plot_grid(
        Y,
        B,
        S,
        cols,
        args.out,
        f"escalator RPCA: rank {args.rank}, alpha {args.alpha:g}, "
        f"{res.n_iter} iterations ({res.status})",
    )
    t_plot = time.perf_counter() - t2

    print(f"{res.status} after {res.n_iter} iterations: {res.message}")
    print(f"relative residual ||Y - L R^T - S||_F / ||Y||_F = {rel_res:.4f}")
    print(f"foreground: {np.mean(S != 0):.1%} of the entries of S are nonzero")
    print(f"time: load {t_load:.2f} s, solve {t_solve:.1f} s, plot {t_plot:.2f} s")
    print(f"figure: {png}")
    return dict(
        result=res,
        Y=Y,
        background=B,
        foreground=S,
        relative_residual=rel_res,
        times=dict(load=t_load, solve=t_solve, plot=t_plot),
        png=png,
    )


if __name__ == "__main__":
    main()
