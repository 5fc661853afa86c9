"""Video background / foreground separation with tensor robust PCA, against the matrix RPCA.

A grayscale clip (frames × height × width, scaled to [0, 1]) is split into a low
Tucker rank background and a sparse foreground with ``dsg.tensor_rpca`` (defaults:
thresholds scaled to the clip's median, stop at the best criterion iterate). Side by
side on the same frames:

* **matrix RPCA**: ``dsg.rpca`` on the (pixels × frames) matrix, rank 1 (one static
  background), its default adaptive sparsifier;
* **TensorLy** ``robust_pca`` (the convex ADMM, its defaults, ``--tensorly-iter``
  iterations), unless ``--no-tensorly``.

Each foreground mask is ``|S| > --fg-level`` (default 0.1 of the intensity range). The
agreement between two masks is their F1 score (2|A∩B| / (|A| + |B|)). The PNG in
``--out`` (default: a new temporary folder), ``separation.png``, shows frame /
background / foreground (|S|) for a few frames, tensor above matrix.

    python examples/video_tensor_rpca.py [--clip highway|shop] [--data PATH]
        [--frames N] [--ranks 3,20,20] [--scheduler threads|cluster] [--no-tensorly]
        [--out DIR] [--quick]

Data: ``video-lrslibrary`` (``$DSCALEDGD_DATA`` or ``../shared/data`` next to the
repository): ``highway_gray_ds2_1699x120x160.npz`` (the first ``--frames`` frames,
default 300) or ``shop_gray_157x144x192.npz``. ``--quick`` uses the 51-frame 48×48
demo clip (a few seconds, for the tests).

Ranks: 2 in time and half of each side by default. A static background is rank 1
in time but has the texture of a full image; low spatial ranks blur it and push the
texture into the foreground (on the demo clip, foreground F1 against the matrix RPCA
0.44 at ranks 2,8,8; 0.84 at 2,24,24; 0.88 at 2,40,40). Research-only data,
read from that folder and never copied into the project.
"""

from __future__ import annotations

import os
import time
import warnings

import _tensor_common as common
import numpy as np

import dscaledgd as dsg

FOLDER = os.path.join(common.DATA_DIR, "video-lrslibrary")
CLIPS = {
    "highway": os.path.join(FOLDER, "highway_gray_ds2_1699x120x160.npz"),
    "shop": os.path.join(FOLDER, "shop_gray_157x144x192.npz"),
}
QUICK_DATA = os.path.join(FOLDER, "demo_gray_51x48x48.npz")

MISSING = """\
error: the video was not found at
    {path}
The clips are those of the video-lrslibrary data folder (LRSLibrary,
github.com/andrewssobral/lrslibrary), decoded to uint8 arrays np.load(f)['frames'] of shape
(T, H, W). Research use only (see ../shared/data/README.md and video-lrslibrary/SOURCE.txt
there). Point DSCALEDGD_DATA at the data folder, or pass --data PATH."""


def load_clip(path: str, frames: int | None) -> np.ndarray:
    with np.load(path) as z:
        X = z["frames"] if "frames" in z.files else z[z.files[0]]
    if X.ndim != 3:
        raise SystemExit(f"error: {path} holds an array of shape {X.shape}, not (T, H, W)")
    X = X[:frames] if frames else X
    return X.astype(np.float64) / (255.0 if X.dtype == np.uint8 else float(np.abs(X).max() or 1))


def f1(A: np.ndarray, B: np.ndarray) -> float:
    """``2|A∩B| / (|A| + |B|)`` of two boolean masks (1 when both are empty)."""
    n = A.sum() + B.sum()
    return float(2 * np.logical_and(A, B).sum() / n) if n else 1.0


def run_tensor(X, ranks, where, seed):
    t0 = time.perf_counter()
    res = dsg.tensor_rpca(X, ranks, random_state=seed, progress=False, **where)
    L, S = res.to_tensor().compute(), res.sparse.compute()
    return L, S, res, time.perf_counter() - t0


def run_matrix(X, where, seed):
    T, H, W = X.shape
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        res = dsg.rpca(X.reshape(T, H * W).T, 1, random_state=seed, progress=False, **where)
    L = (res.L @ res.R.T).compute().T.reshape(X.shape)
    S = res.sparse.compute().T.reshape(X.shape)
    return L, S, res, time.perf_counter() - t0


def run_tensorly(X, n_iter):
    try:
        from tensorly.decomposition import robust_pca
    except ImportError:
        return None
    t0 = time.perf_counter()
    L, S = robust_pca(X, n_iter_max=n_iter, verbose=0)
    return np.asarray(L), np.asarray(S), time.perf_counter() - t0


def plot(X, rows, shown, path, title):
    panels = [("frame", X)]
    for name, (L, S) in rows.items():
        panels += [(f"{name}\nbackground", L), (f"{name}\n|foreground|", np.abs(S))]
    return common.image_grid(panels, list(shown), path, title)


def main(argv=None) -> dict:
    ap = common.new_parser(__doc__)
    ap.add_argument("--clip", choices=sorted(CLIPS), default="highway")
    ap.add_argument("--data", default=None, help="an .npz with 'frames' (T, H, W)")
    ap.add_argument("--frames", type=int, default=300, help="use the first N frames")
    ap.add_argument(
        "--ranks",
        type=common.ranks_type("2,60,80"),
        default=None,
        help="Tucker ranks (default: 2 in time, half of each side)",
    )
    ap.add_argument("--fg-level", type=float, default=0.1, help="foreground: |S| above this")
    common.add_scheduler_args(ap)
    ap.add_argument("--no-tensorly", action="store_true", help="skip TensorLy's robust_pca")
    ap.add_argument("--tensorly-iter", type=int, default=100)
    ap.add_argument("--columns", type=int, default=5, help="frames shown in the PNG")
    common.add_common_tail(ap, out_help="folder for the PNG (default: a temp folder)",
                           quick_help="the small demo clip")  # fmt: skip
    args = ap.parse_args(argv)
    path = args.data or (QUICK_DATA if args.quick else CLIPS[args.clip])
    args.missing = 0.5  # (check_inputs also checks --missing, which this example has not)
    common.check_inputs(ap, args, path, MISSING)
    out = common.output_folder(args.out, "dscaledgd-video-trpca-")
    X = load_clip(path, None if args.quick else args.frames)
    ranks = args.ranks or (2, -(-X.shape[1] // 2), -(-X.shape[2] // 2))
    print(f"video: {os.path.basename(path)}, {X.shape[0]} frames of {X.shape[1]}x{X.shape[2]}")
    with common.executor(args.scheduler, args.workers, timed=True) as where:
        Lt, St, rt, t_t = run_tensor(X, ranks, where, args.seed)
        Lm, Sm, rm, t_m = run_matrix(X, where, args.seed)
    rows = {"tensor RPCA": (Lt, St), "matrix RPCA": (Lm, Sm)}
    times = {"tensor RPCA": t_t, "matrix RPCA": t_m}
    notes = {"tensor RPCA": f"ranks {ranks}, {rt.status} at {rt.n_iter}, returned "
                            f"{rt.info['best_iteration']}",
             "matrix RPCA": f"rank 1, {rm.status} at {rm.n_iter}"}  # fmt: skip
    if not args.no_tensorly:
        tly = run_tensorly(X, args.tensorly_iter)
        if tly is None:
            print("TensorLy is not installed: comparison skipped (pip install tensorly)")
        else:
            rows["TensorLy"] = tly[:2]
            times["TensorLy"] = tly[2]
            notes["TensorLy"] = f"robust_pca, n_iter_max={args.tensorly_iter}"
    masks = {name: np.abs(S) > args.fg_level for name, (_, S) in rows.items()}
    print(f"\n{'':>12} | {'time (s)':>8} | {'foreground':>10} | {'F1 vs tensor':>12} | run")
    for name in rows:
        print(f"{name:>12} | {times[name]:8.1f} | {masks[name].mean():10.2%} | "
              f"{f1(masks[name], masks['tensor RPCA']):12.3f} | {notes[name]}")  # fmt: skip
    shown = np.unique(np.linspace(0, X.shape[0] - 1, args.columns).round().astype(int))
    title = (f"{os.path.basename(path)}: tensor RPCA (ranks {ranks}) vs matrix RPCA (rank 1); "
             f"foreground F1 {f1(masks['matrix RPCA'], masks['tensor RPCA']):.3f}")  # fmt: skip
    png = plot(X, {k: rows[k] for k in ("tensor RPCA", "matrix RPCA")}, shown,
               os.path.join(out, "separation.png"), title)  # fmt: skip
    print(f"\nfigure: {png}")
    return dict(X=X, rows=rows, masks=masks, times=times, tensor=rt, matrix=rm, png=png,
                f1=f1(masks["matrix RPCA"], masks["tensor RPCA"]), ranks=ranks)  # fmt: skip


if __name__ == "__main__":
    main()
