"""MRI volume completion: the MNI152 T1 template with voxels and slices missing.

The MNI152 2009a template (197 × 233 × 189 voxels of 1 mm, nibabel) is scaled
to [0, 1] and damaged three ways, then completed with ``dsg.tucker_complete``
(ScaledGD, Tucker ranks ``--ranks``, default 20,20,20):

1. **random voxels**: ``--missing`` of them (default 80%) are hidden;
2. **thinned slices**: every ``--thin-every``-th axial slice (default 10) keeps
   only ``--thin-observed`` of its voxels (default 5%), as after a corrupted
   acquisition of those slices;
3. **lost slices**: ``--lost`` axial slices (default 2) have no voxel at all.

Tucker completion handles 1 and 2: a slice's factor row is fitted from the
voxels observed in it, so a thinned slice is completed a little worse than
the others but well. It cannot handle 3: a slice with no observed voxel gets
no gradient, so its factor row stays at its initial value (zero for the
spectral start) and the completed slice is blank. ``tucker_complete`` warns
about it (a ``DataWarning`` naming the slices); this script prints that
warning, and reports the error on the lost slices separately (about 1, i.e.
nothing recovered) so that it does not hide in the average. Filling such
slices needs a smoothness prior along the axis (or interpolation), which the
low-rank model does not have.

5% of the observed voxels are held out for validation: the run stops when
their RMSE stops improving and returns the best iterate. Errors are relative
Frobenius errors ``‖Z − X‖ / ‖X‖`` on the named voxels.

Output (in ``--out``, default a new temporary folder): ``slices.png``, the
sagittal, coronal and axial centre slices, a thinned and a lost axial slice,
in four rows: observed (hidden voxels black), completed, original and the
absolute error. ``--quick`` downsamples the volume 3× per axis with ranks
10,10,10 (a few seconds; the tests use it).

    python examples/mri_completion.py [--data PATH] [--missing 0.8] [--thin-every 10]
        [--thin-observed 0.05] [--lost 2] [--ranks 20,20,20] [--downsample 1]
        [--scheduler threads|cluster] [--out DIR] [--quick]

Needs nibabel (``pip install 'dscaledgd[neuro]'``). ``--data`` defaults to
``$DSCALEDGD_DATA/neuro-mni152-nilearn/...nii.gz`` (or ``../shared/data`` next
to the repository): the template shipped with nilearn (BSD-3 and the MNI
copyright notice); it is read from there, never copied into the project.

Measured on this 2-core machine with the defaults (seed 0): 20 s in all (180
iterations); relative error on the hidden voxels 0.136 in the intact slices,
0.138 in the thinned ones, and 1.00 on the lost slices. Ranks 10,10,10: 0.196
and 0.196 (9 s); ranks 30,30,30: 0.102 and 0.108, but 110 s. With thinned slices
keeping 1% of their voxels instead of 5%, ranks 20 fit them badly (0.71 at half
resolution): a factor row then has fewer observations than it needs.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import _tensor_common as common
import numpy as np

import dscaledgd as dsg

DEFAULT_DATA = os.path.join(
    common.DATA_DIR, "neuro-mni152-nilearn", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
)

MISSING = """\
error: the MNI152 template was not found at
    {path}
It is mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz from the nilearn wheel
(nilearn/datasets/data/; BSD-3 with the MNI copyright notice, see ../shared/data/README.md
and neuro-mni152-nilearn/SOURCE.txt there). Point DSCALEDGD_DATA at the data folder, or
pass --data PATH (any 3-D NIfTI volume)."""

NO_NIBABEL = """\
error: reading NIfTI needs nibabel, which is not installed.
Install the neuro extra: pip install 'dscaledgd[neuro]'"""


def load_volume(path: str, downsample: int = 1) -> np.ndarray:
    """The volume as float64 in [0, 1], every ``downsample``-th voxel per axis."""
    try:
        import nibabel
    except ImportError:
        print(NO_NIBABEL, file=sys.stderr)
        raise SystemExit(2) from None
    X = nibabel.load(path).get_fdata(dtype=np.float64)
    if X.ndim != 3:
        raise SystemExit(f"error: {path} is a {X.ndim}-D image; this example needs a 3-D volume")
    X = X[::downsample, ::downsample, ::downsample]
    lo, hi = float(X.min()), float(X.max())
    return (X - lo) / ((hi - lo) or 1.0)


def damage(shape, *, missing, thin_every, thin_observed, lost, seed):
    """``(mask, thin, lost)``: the observed voxels, and the thinned and lost axial slices."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) >= missing
    nz = shape[2]
    thin = np.zeros(nz, dtype=bool)
    if thin_every:
        thin[thin_every // 2 :: thin_every] = True
        mask[:, :, thin] = rng.random((*shape[:2], int(thin.sum()))) < thin_observed
    gone = np.zeros(nz, dtype=bool)
    for z in np.linspace(0.4 * nz, 0.6 * nz, lost).round().astype(int) if lost else []:
        while thin[z] or gone[z]:  # keep the three kinds of slices apart
            z += 1
        gone[z] = True
    mask[:, :, gone] = False
    return mask, thin, gone


def rel(Z, X, where) -> float:
    """``‖Z − X‖ / ‖X‖`` on the voxels ``where``."""
    den = np.linalg.norm(X[where])
    return float(np.linalg.norm((Z - X)[where]) / den) if den > 0 else float("nan")


def plot_slices(X, Y, Z, views, path: str, title: str) -> str:
    """Rows: observed (NaN black), completed, original, |error|; one column per view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def cut(V, axis, i):
        return np.rot90(np.take(V, i, axis=axis))  # superior / anterior up

    err = np.abs(Z - X)
    emax = float(np.percentile(err, 99.5)) or 1.0
    rows = [
        ("observed", np.nan_to_num(Y, nan=0.0), dict(vmin=0, vmax=1)),
        ("completed", np.clip(Z, 0, 1), dict(vmin=0, vmax=1)),
        ("original", X, dict(vmin=0, vmax=1)),
        ("|error|", err, dict(vmin=0, vmax=emax, cmap="magma")),
    ]
    fig, axes = plt.subplots(len(rows), len(views), figsize=(2.1 * len(views), 8.4), squeeze=False)
    for i, (label, V, kw) in enumerate(rows):
        for j, (name, axis, k) in enumerate(views):
            ax = axes[i, j]
            ax.imshow(cut(V, axis, k), interpolation="nearest", **{"cmap": "gray", **kw})
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(title, fontsize=9)
    return common.save(fig, path)


def main(argv=None) -> dict:
    ap = common.new_parser(__doc__)
    ap.add_argument("--data", default=DEFAULT_DATA, help="a 3-D NIfTI volume")
    common.add_missing_and_ranks(
        ap,
        missing=0.8,
        what="voxels",
        ranks="20,20,20",
        between=[
            (("--thin-every",), dict(type=int, default=10, help="thin every N-th axial slice")),
            (("--thin-observed",), dict(type=float, default=0.05, help="voxels kept there")),
            (("--lost",), dict(type=int, default=2, help="axial slices with no voxel")),
        ],
    )
    ap.add_argument("--downsample", type=int, default=None, help="keep every N-th voxel per axis")
    ap.add_argument("--max-iter", type=int, default=500)
    common.add_scheduler_args(ap)
    common.add_common_tail(
        ap,
        out_help="folder for slices.png (default: a temp folder)",
        quick_help="downsample 3x, ranks 10,10,10",
    )
    args = ap.parse_args(argv)

    common.check_inputs(ap, args, args.data, MISSING)
    ranks = args.ranks or ((10, 10, 10) if args.quick else (20, 20, 20))
    downsample = args.downsample or (3 if args.quick else 1)
    out = common.output_folder(args.out, "dscaledgd-mri-")

    t0 = time.perf_counter()
    X = load_volume(args.data, downsample)
    mask, thin, gone = damage(
        X.shape,
        missing=args.missing,
        thin_every=args.thin_every,
        thin_observed=args.thin_observed,
        lost=args.lost,
        seed=args.seed,
    )
    print(
        f"volume: {os.path.basename(args.data)}, {X.shape[0]}x{X.shape[1]}x{X.shape[2]} "
        f"voxels{f' (every {downsample}th per axis)' if downsample > 1 else ''}; "
        f"{mask.mean():.1%} observed: {1 - args.missing:.0%} of the voxels at random, "
        f"{args.thin_observed:.0%} in {thin.sum()} thinned axial slices {np.flatnonzero(thin)}, "
        f"none in {gone.sum()} lost slices {np.flatnonzero(gone)}"
    )
    T = dsg.TensorObservations.from_array(X, mask)
    train, val = T.split(0.05, random_state=args.seed)
    t1 = time.perf_counter()
    with (
        common.executor(args.scheduler, args.workers) as where,
        warnings.catch_warnings(record=True) as w,
    ):
        warnings.simplefilter("always", dsg.DataWarning)
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)  # the status is printed
        res = common.tucker_validated(
            train, val, ranks, seed=args.seed, max_iter=args.max_iter, where=where
        )
        Z = res.to_tensor().compute()
    t_solve = time.perf_counter() - t1
    for warning in w:
        if issubclass(warning.category, dsg.DataWarning):
            print(f"DataWarning: {warning.message}")
    if gone.any():
        print(
            "  -> expected: the lost slices hold no voxel, so Tucker has nothing to fit them "
            "to; they are reported apart below."
        )

    hidden = ~mask
    intact = np.zeros(X.shape, dtype=bool)
    intact[:, :, ~(thin | gone)] = True
    errors = {
        "all voxels": rel(Z, X, np.ones(X.shape, dtype=bool)),
        "hidden voxels": rel(Z, X, hidden),
        "hidden, intact slices": rel(Z, X, hidden & intact),
        "hidden, thinned slices": rel(Z, X, hidden & thin[None, None, :]),
        "lost slices": rel(Z, X, np.broadcast_to(gone[None, None, :], X.shape)),
    }
    print(f"\nTucker ranks {ranks}: {common.stop_note(res)}, {t_solve:.1f} s")
    print("relative error ||Z - X|| / ||X||:")
    for name, e in errors.items():
        print(f"  {name:>24}: {e:.4f}")

    cx, cy, cz = (n // 2 for n in X.shape)
    views = [(f"sagittal x={cx}", 0, cx), (f"coronal y={cy}", 1, cy)]
    axial = [z for z in range(cz, X.shape[2]) if not (thin[z] or gone[z])][:1]
    views += [(f"axial z={z}", 2, z) for z in axial]
    views += [(f"thinned z={z}", 2, z) for z in np.flatnonzero(thin) if z >= cz][:1]
    views += [(f"lost z={z}", 2, z) for z in np.flatnonzero(gone)[:1]]
    title = (
        f"MNI152: {mask.mean():.0%} observed, Tucker ranks {ranks}; rel. error on hidden "
        f"voxels {errors['hidden voxels']:.3f} (intact slices "
        f"{errors['hidden, intact slices']:.3f})"
    )
    png = plot_slices(
        X, np.where(mask, X, np.nan), Z, views, os.path.join(out, "slices.png"), title
    )
    print(f"time: {time.perf_counter() - t0:.1f} s in all\nfigure: {png}")
    return dict(
        X=X, mask=mask, thin=thin, lost=gone, completed=Z, result=res, ranks=ranks,
        errors=errors, warnings=[str(x.message) for x in w], png=png, out=out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
