"""The matrix job on the command line: ``split``, ``complete``, ``rpca`` and ``predict``.

``dscaledgd import`` builds an Observations store with id maps; ``split`` cuts it
into train and test stores that share those maps (so ``evaluate`` and ``predict`` by
original ids work on both); ``complete`` runs the fit the README runs in Python
(ridge, centring, validation early stopping). ``predict`` lives in
:mod:`.cli_predict` (matrix and Tucker results).
"""

from __future__ import annotations

import os

import numpy as np

from .cli_common import _pair, rank_value, reg_value, solver_options
from .cli_common import fraction as _fraction
from .cli_common import nonneg as _nonneg

__all__ = ["add_parsers"]

CENTER = {"none": False, "mean": True, "biases": "biases"}


def add_parsers(sub, common, positive_int) -> None:
    """Add ``split``, ``complete``, ``rpca`` and ``predict`` (:mod:`.cli_predict`) to the
    subcommands."""
    s = sub.add_parser(
        "split",
        help="split an Observations store into train and test stores (shared id maps)",
        description="Random train/test split of the observed entries; both stores keep the "
        "source's tile grid and id maps.",
    )
    s.add_argument("obs", metavar="OBS.zarr", help="the store to split")
    s.add_argument("train", metavar="TRAIN.zarr", help="training store to write")
    s.add_argument("test", metavar="TEST.zarr", help="test store to write")
    s.add_argument("--test-fraction", type=_fraction, default=0.1, help="default 0.1")
    s.add_argument("--seed", type=int, default=0, help="random seed of the split (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace existing output stores")
    s.set_defaults(func=_cmd_split, out=None)

    c = sub.add_parser(
        "complete",
        help="complete an Observations store with ScaledGD",
        description="Fit a low-rank model to an Observations store with ScaledGD (or GD) and "
        "write the result store. Real data: use --reg, --center biases and a validation set; "
        "the run stops when the validation error stops improving or the loss stalls.",
    )
    c.add_argument("obs", metavar="OBS.zarr", help="the training store")
    common(c, "result store to write (required)")
    c.add_argument("--rank", type=rank_value, required=True, metavar="RANK",
                   help="rank of the model, or auto: chosen by validation RMSE among 5, 10, "
                   "20, 40 (docs/api.md, 'Choosing rank and reg')")  # fmt: skip
    c.add_argument("--reg", type=reg_value, default=0.0, metavar="REG[,REG_COLS]",
                   help="ridge penalty in Spark ALS's regParam units (ALS-WR: times each "
                   "row's count), or rows,columns, or auto: chosen by validation RMSE "
                   "among 0.01, 0.05, 0.1, 0.2 (docs/api.md, 'Regularised completion'; "
                   "default 0)")  # fmt: skip
    c.add_argument(
        "--center",
        choices=tuple(CENTER),
        default="none",
        help="fit a global mean, or the mean and row/column biases (default none)",
    )
    c.add_argument(
        "--validation",
        metavar="VAL.zarr",
        default=None,
        help="held-out store: its RMSE is recorded and the run stops early",
    )
    c.add_argument(
        "--validation-fraction",
        type=_fraction,
        default=None,
        metavar="F",
        help="hold out this fraction of OBS as the validation set instead",
    )
    c.add_argument(
        "--patience",
        type=positive_int,
        default=10,
        help="iterations without improvement before stopping (default 10)",
    )
    c.add_argument(
        "--stall-tol",
        type=_nonneg,
        default=1e-8,
        help="relative loss change counted as no improvement (default 1e-8)",
    )
    c.add_argument(
        "--init",
        choices=("spectral", "random"),
        default="spectral",
        help="spectral (default) or a small random start",
    )
    c.add_argument(
        "--cache",
        choices=("auto", "memory", "stream"),
        default="auto",
        help="keep tiles in worker memory or stream them from Zarr (default auto)",
    )
    c.add_argument(
        "--tiles",
        type=_pair,
        default=None,
        metavar="A,B",
        help="fit on an A x B tile grid instead of the store's (re-cut in memory: it loads "
        "the entries; for a store larger than memory re-import it with import --tiles)",
    )
    c.add_argument("--damping", type=_nonneg, default=0.0, help="ScaledGD(λ)'s λ (default 0)")
    c.add_argument("--symmetric", action="store_true", help="PSD model X = L Lᵀ")
    solver_options(c)
    c.set_defaults(func=_cmd_complete)

    r = sub.add_parser(
        "rpca",
        help="robust PCA of a matrix: low rank plus sparse",
        description="Split a matrix (.npy, .npz with X and an optional mask, or a Zarr "
        "array; NaN = missing) into a low-rank L Rᵀ and a sparse S with ScaledGD, and write "
        "the result store (it keeps S).",
    )
    r.add_argument("data", metavar="IN", help=".npy, .npz or Zarr array")
    common(r, "result store to write (required)")
    r.add_argument("--rank", type=int, required=True, help="rank of the low-rank part")
    r.add_argument(
        "--sparsifier",
        choices=("auto", "adaptive", "fraction"),
        default="auto",
        help="how outliers are found: 'adaptive' (beyond 3 robust sigmas of their row and "
        "column; needs no --alpha), 'fraction' (the papers' T_α; needs --alpha), 'auto' "
        "(default: 'fraction' when --alpha is given, else 'adaptive')",
    )
    r.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="for --sparsifier fraction: largest fraction of outliers per row and per column "
        "(docs/matrix-family.md)",
    )
    r.add_argument(
        "--tune",
        action="store_true",
        help="choose the sparsifier's parameter (c, or alpha for 'fraction') from the data by "
        "successive halving on sum|Y - L R^T| / sum|Y|",
    )
    r.add_argument(
        "--mask",
        metavar="M",
        default=None,
        help=".npy boolean mask (True = observed) instead of NaN",
    )
    solver_options(r)
    r.set_defaults(func=_cmd_rpca)

    from .cli_predict import add_parser as add_predict

    add_predict(sub)


# -------------------------------------------------------------------- split
def _cmd_split(args) -> int:
    from .cli_common import check_out
    from .storage.observations import Observations

    for path, name in ((args.train, "TRAIN.zarr"), (args.test, "TEST.zarr")):
        check_out(path, args.overwrite, name)
    if os.path.abspath(args.train) == os.path.abspath(args.test):
        raise ValueError("TRAIN.zarr and TEST.zarr must be different paths.")
    obs = Observations.open_zarr(args.obs)
    train, test = obs.split(args.test_fraction, random_state=args.seed)
    train.to_zarr(args.train, overwrite=args.overwrite)
    test.to_zarr(args.test, overwrite=args.overwrite)
    print(f"train: {train.nnz} entries -> {args.train}\ntest: {test.nnz} entries -> {args.test}")
    return 0


# ----------------------------------------------------------------- complete
def _cmd_complete(args) -> int:
    from .api import complete
    from .cli_common import run_kwargs, summary
    from .storage.observations import Observations

    if args.validation and args.validation_fraction:
        raise ValueError("Pass either --validation or --validation-fraction, not both.")
    obs, val = args.obs, None
    if args.tiles is not None:  # re-cut in memory (the store itself stays as it is)
        obs = Observations.open_zarr(args.obs).retile(args.tiles)
    if args.validation:
        val = Observations.open_zarr(args.validation)
    elif args.validation_fraction:
        whole = obs if args.tiles is not None else Observations.open_zarr(args.obs)
        obs, val = whole.split(args.validation_fraction, random_state=args.seed + 1)
    res = complete(
        obs, args.rank, damping=args.damping, symmetric=args.symmetric, reg=args.reg,
        center=CENTER[args.center], validation=val, patience=args.patience,
        stall_tol=args.stall_tol, init=args.init, cache=args.cache, **run_kwargs(args),
    )  # fmt: skip
    res.to_zarr(args.out, overwrite=args.overwrite)
    extra = ""
    if "validation" in res.final:
        extra = f"validation RMSE {res.final['validation']:.6g} (iteration {res.best_iteration})\n"
    sel = res.info.get("model_selection")
    if sel:  # --rank auto / --reg auto
        chosen = ", ".join(f"{k} {v}" for k, v in sel["chosen"].items())
        extra += f"chosen by validation RMSE: {chosen} ({len(sel['table'])} candidates)\n"
    print(f"{summary(res)}\n{extra}result written to {args.out}")
    return 0


# --------------------------------------------------------------------- rpca
def _read_matrix(path: str, flag: str):
    """A 2-D array from ``.npy`` (memory-mapped), ``.npz`` (``X`` or its only array, and
    ``mask`` if present) or a Zarr array (lazily, as a Dask array)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such {flag} file or store: {path!r} does not exist.")
    mask = None
    if path.endswith(".npy"):
        Y = np.load(path, mmap_mode="r")
    elif path.endswith(".npz"):
        with np.load(path) as z:
            names = list(z.files)
            key = "X" if "X" in names else (names[0] if len(names) == 1 else None)
            if key is None:
                raise ValueError(f"{flag} {path!r} holds {names}; name the matrix 'X'.")
            Y = z[key]
            mask = z["mask"] if "mask" in names else None
    elif os.path.isdir(path):
        import dask.array as da

        Y = da.from_zarr(path)
    else:
        raise ValueError(f"{flag} {path!r}: expected a .npy, .npz or a Zarr array.")
    if Y.ndim != 2:
        raise ValueError(f"{flag} {path!r} has shape {Y.shape}; rpca needs a matrix.")
    return Y, mask


def _cmd_rpca(args) -> int:
    from .api import rpca
    from .cli_common import run_kwargs, summary

    Y, mask = _read_matrix(args.data, "IN")
    if args.mask is not None:
        mask, _ = _read_matrix(args.mask, "--mask")
    res = rpca(
        Y,
        args.rank,
        sparsifier=args.sparsifier,
        alpha=args.alpha,
        tune=args.tune,
        mask=mask,
        **run_kwargs(args),
    )
    res.to_zarr(args.out, overwrite=args.overwrite)
    print(f"{summary(res)}\nresult written to {args.out} (low rank L, R and sparse S)")
    return 0
