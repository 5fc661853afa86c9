"""Impulse-noise removal with tensor robust PCA: a hyperspectral cube and a brain volume.

A clean volume scaled to [0, 1] gets salt-and-pepper corruption: a random
``--corrupt`` fraction of its entries (default 10%) set to 0 or 1 at random. It is
then recovered with ``dsg.tensor_rpca`` (defaults: thresholds scaled to the data's
median, stop at the best criterion iterate), and, as the baseline, with the plain
least-squares Tucker fit of the same ranks (``dsg.tucker_complete``), which the
outliers pull away. Reported: the PSNR (peak 1) of the noisy data, of the plain
fit and of the robust fit against the clean volume, the share of the corrupted
entries the sparse part caught, and the time. ``--dataset``:

* ``hsi``: the Samson cube (95 × 95 pixels × 156 bands), ranks 20,20,6 (those of
  ``hsi_completion.py``); ``bands.png`` shows three bands noisy / plain / robust /
  clean;
* ``brain``: the MNI152 T1 template (197 × 233 × 189, read with
  ``TensorObservations.from_nifti``), every ``--downsample``-th voxel (default 2),
  ranks 40,40,40; ``slices.png`` shows three slices; without downsampling the
  robust fit is also written as ``denoised.nii.gz`` with the template's affine
  and header (``res.to_nifti``).

    python examples/denoise_tensor_rpca.py [--dataset hsi|brain] [--data PATH]
        [--corrupt 0.1] [--ranks ...] [--downsample 2] [--scheduler threads|cluster]
        [--out DIR] [--quick]

``--quick`` keeps every 2nd entry per axis of the cube (every 4th voxel of the
brain) and halves the ranks: a few seconds, for the tests.

Measured on this 2-core machine (threads, seed 0, 10% salt and pepper; PSNR in dB
against the clean volume):

============================  =====  ============  ===========  =========================
data                          noisy  plain Tucker  tensor RPCA  time plain / robust
============================  =====  ============  ===========  =========================
Samson 95×95×156, (20,20,6)   14.1   27.3          36.8         4.2 s / 1.5 s
MNI152 ÷2, 99×117×95, (40)³   13.4   21.4          31.0         57.7 s / 6.2 s
MNI152 full, 197×233×189      13.4   24.8          31.2         68.9 s / 36.1 s
============================  =====  ============  ===========  =========================

The sparse part (|S| > 0.1) holds 60–72% of the corrupted entries (the others are
pepper on dark voxels or salt on bright ones, which barely change them) and 0.1–1.8%
of the clean ones. The plain fit ran to its 500 iterations each time. Research / BSD-3 data
from ``$DSCALEDGD_DATA`` (or ``../shared/data``); never copied into the project.
"""

from __future__ import annotations

import os
import time
import warnings

import _tensor_common as common
import numpy as np

import dscaledgd as dsg

SAMSON = os.path.join(common.DATA_DIR, "hsi-samson", "samson_1.mat")
MNI = os.path.join(common.DATA_DIR, "neuro-mni152-nilearn",
                   "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")  # fmt: skip
MISSING = """\
error: the data were not found at
    {path}
--dataset hsi reads hsi-samson/samson_1.mat, --dataset brain reads
neuro-mni152-nilearn/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz of the shared data
folder (see ../shared/data/README.md). Point DSCALEDGD_DATA at it, or pass --data PATH."""


def psnr(Z, X) -> float:
    return float(10 * np.log10(1.0 / max(float(np.mean((Z - X) ** 2)), 1e-20)))


def salt_and_pepper(X, frac, seed):
    rng = np.random.default_rng(seed)
    hit = rng.random(X.shape) < frac
    return np.where(hit, (rng.random(X.shape) < 0.5).astype(np.float64), X), hit


def load(dataset, path, quick, downsample):
    if dataset == "hsi":
        from hsi_completion import load_cube

        X = load_cube(path, 2 if quick else 1)
    else:
        T = dsg.TensorObservations.from_nifti(path)
        step = 4 if quick else downsample
        X = T.to_dask().compute()[::step, ::step, ::step]
    lo, hi = float(X.min()), float(X.max())
    return (X - lo) / ((hi - lo) or 1.0)


def main(argv=None) -> dict:
    ap = common.new_parser(__doc__)
    ap.add_argument("--dataset", choices=["hsi", "brain"], default="hsi")
    ap.add_argument("--data", default=None)
    ap.add_argument("--corrupt", type=float, default=0.1, help="fraction of entries hit")
    ap.add_argument("--ranks", type=common.ranks_type("20,20,6"), default=None)
    ap.add_argument("--downsample", type=int, default=2, help="brain: every N-th voxel")
    common.add_scheduler_args(ap)
    common.add_common_tail(ap, out_help="folder for the PNG (default: a temp folder)",
                           quick_help="a smaller volume and ranks")  # fmt: skip
    args = ap.parse_args(argv)
    path = args.data or (SAMSON if args.dataset == "hsi" else MNI)
    args.missing = args.corrupt  # check_inputs: strictly between 0 and 1
    common.check_inputs(ap, args, path, MISSING)
    full = (20, 20, 6) if args.dataset == "hsi" else (40, 40, 40)
    ranks = args.ranks or (tuple(max(2, r // 2) for r in full) if args.quick else full)
    out = common.output_folder(args.out, f"dscaledgd-denoise-{args.dataset}-")
    X = load(args.dataset, path, args.quick, args.downsample)
    Y, hit = salt_and_pepper(X, args.corrupt, args.seed)
    print(f"{args.dataset}: {os.path.basename(path)}, shape {X.shape}, {hit.mean():.1%} of "
          f"the entries set to 0 or 1; ranks {ranks}")  # fmt: skip
    with common.executor(args.scheduler, args.workers, timed=True) as where:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dsg.ConvergenceWarning)
            plain = dsg.tucker_complete(Y, ranks, random_state=args.seed, progress=False,
                                        **where)  # fmt: skip
        Zp = plain.to_tensor().compute()
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = dsg.tensor_rpca(Y, ranks, random_state=args.seed, progress=False, **where)
        Zr, S = res.to_tensor().compute(), res.sparse.compute()
        t_rob = time.perf_counter() - t0
    caught = float(np.mean(np.abs(S[hit]) > 0.1))
    false = float(np.mean(np.abs(S[~hit]) > 0.1))
    rows = [("noisy", Y, float("nan"), ""),
            ("plain Tucker", Zp, t_plain, f"{plain.status} at {plain.n_iter}"),
            ("tensor RPCA", Zr, t_rob, f"{res.status} at {res.n_iter}, returned "
                                       f"{res.info['best_iteration']}")]  # fmt: skip
    print(f"\n{'':>13} | {'PSNR (dB)':>9} | {'time (s)':>8} | run")
    for name, Z, t, note in rows:
        print(f"{name:>13} | {psnr(Z, X):9.2f} | {t:8.1f} | {note}")
    print(
        f"sparse part |S| > 0.1: {caught:.1%} of the corrupted entries, {false:.2%} of the "
        "clean ones"
    )
    nifti = None
    if args.dataset == "brain" and not args.quick and args.downsample == 1:
        nifti = res.to_nifti(os.path.join(out, "denoised.nii.gz"), like=path, overwrite=True)
        print(f"written with the template's affine and header: {nifti}")
    title = (f"{args.dataset}: {args.corrupt:.0%} salt and pepper; PSNR noisy "
             f"{psnr(Y, X):.1f}, plain {psnr(Zp, X):.1f}, robust {psnr(Zr, X):.1f} dB")  # fmt: skip
    panels = [("noisy", Y), ("plain Tucker", Zp), ("tensor RPCA", Zr), ("clean", X)]
    idx = list((np.linspace(0.25, 0.75, 3) * (X.shape[2] - 1)).round().astype(int))
    name = "bands.png" if args.dataset == "hsi" else "slices.png"
    png = common.image_grid(panels, idx, os.path.join(out, name), title, axis=2, rotate=True,
                            name="band" if args.dataset == "hsi" else "axial slice")  # fmt: skip
    print(f"figure: {png}")
    return dict(X=X, Y=Y, plain=Zp, robust=Zr, result=res, caught=caught, false=false,
                psnr={n: psnr(Z, X) for n, Z, _, _ in rows}, png=png, nifti=nifti)  # fmt: skip


if __name__ == "__main__":
    main()
