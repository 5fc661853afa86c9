"""The matrix job on the command line: ``split``, ``complete``, ``rpca`` and ``predict``.

``dscaledgd import`` builds an Observations store with id maps; ``split`` cuts it
into train and test stores that share those maps (so ``evaluate`` and ``predict`` by
original ids work on both); ``complete`` runs the fit the README runs in Python
(ridge, centring, validation early stopping); ``predict`` writes predictions for
pairs of original ids to CSV or Parquet.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from .cli_common import _pair, rank_value, reg_value, solver_options
from .cli_common import fraction as _fraction
from .cli_common import nonneg as _nonneg

__all__ = ["add_parsers"]

CENTER = {"none": False, "mean": True, "biases": "biases"}


def add_parsers(sub, common, positive_int) -> None:
    """Add ``split``, ``complete`` and ``predict`` to the subcommands."""
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

    p = sub.add_parser(
        "predict",
        help="predict entries of a matrix fit for pairs of original ids",
        description="Read (row id, column id) pairs from a CSV or Parquet file and write "
        "them with the fit's prediction to CSV or Parquet (by --out's extension).",
    )
    p.add_argument("result", metavar="RES.zarr", help="a complete result store")
    p.add_argument("pairs", metavar="PAIRS", help=".csv or .parquet with the id pairs")
    p.add_argument("--row", default=None, help="column with the row ids (default: the first)")
    p.add_argument("--col", default=None, help="column with the column ids (default: the "
                   "second)")  # fmt: skip
    p.add_argument(
        "--by",
        choices=("id", "index"),
        default="id",
        help="original ids from the import (default) or 0-based indices",
    )
    p.add_argument(
        "--cold-start",
        choices=("nan", "mean", "error"),
        default="nan",
        help="for ids never seen in training (default nan)",
    )
    p.add_argument(
        "--out", metavar="PRED.csv", required=True, help="output file, .csv or .parquet (required)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_cmd_predict)


# -------------------------------------------------------------------- split
def _cmd_split(args) -> int:
    from .cli_common import check_out
    from .storage.observations import Observations

    for path in (args.train, args.test):
        check_out(path, args.overwrite)
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


# ------------------------------------------------------------------ predict
def _read_pairs(path: str, row: str | None, col: str | None):
    """``(rows, cols, row name, col name)`` from a CSV or Parquet file (as strings for CSV)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such input file: PAIRS {path!r}.")
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(
                "Reading Parquet needs pyarrow: pip install 'dscaledgd[parquet]'."
            ) from None
        table = pq.read_table(path)
        names = table.column_names
        row, col = _pick_columns(names, row, col, path)
        return (np.asarray(table.column(row).to_pylist(), dtype=object),
                np.asarray(table.column(col).to_pylist(), dtype=object), row, col)  # fmt: skip
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        names = next(reader, None)
        if names is None:
            raise ValueError(f"PAIRS {path!r} is empty; expected a header line and id pairs.")
        row, col = _pick_columns(names, row, col, path)
        i, j = names.index(row), names.index(col)
        rows, cols = [], []
        for line, rec in enumerate(reader, start=2):
            if len(rec) <= max(i, j):
                raise ValueError(f"PAIRS {path!r} line {line}: expected {len(names)} fields.")
            rows.append(rec[i])
            cols.append(rec[j])
    return np.asarray(rows, dtype=object), np.asarray(cols, dtype=object), row, col


def _pick_columns(names, row, col, path):
    if len(names) < 2 and (row is None or col is None):
        raise ValueError(f"PAIRS {path!r} has {len(names)} column(s); it needs two id columns.")
    row = names[0] if row is None else row
    col = names[1] if col is None else col
    for flag, name in (("--row", row), ("--col", col)):
        if name not in names:
            raise ValueError(f"{flag} {name!r} is not a column of {path!r} (columns: {names}).")
    return row, col


def _as_ids(values, known):
    """Original ids in the dtype of the fit's id map (CSV fields are strings)."""
    kind = np.asarray(known).dtype if known is not None else None
    if kind is None or kind.kind not in "iuf":
        return values.astype(str)
    try:
        return values.astype(str).astype(np.int64 if kind.kind in "iu" else np.float64)
    except ValueError as exc:
        raise ValueError(f"PAIRS: an id is not a number as the fit's ids are ({exc}).") from None


def _cmd_predict(args) -> int:
    from .cli_common import check_out
    from .result import load_result

    check_out(args.out, args.overwrite)
    if not args.out.endswith((".csv", ".parquet")):
        raise ValueError(f"--out {args.out!r} must end in .csv or .parquet.")
    res = load_result(args.result)
    rows, cols, rname, cname = _read_pairs(args.pairs, args.row, args.col)
    if args.by == "id":
        ids = getattr(res.model, "ids", {}) or {}
        rows, cols = _as_ids(rows, ids.get("row")), _as_ids(cols, ids.get("col"))
    else:
        rows = np.asarray(rows.astype(str).astype(np.float64))
        cols = np.asarray(cols.astype(str).astype(np.float64))
    pred = res.predict(rows, cols, by=args.by, cold_start=args.cold_start)
    _write_predictions(args.out, rname, cname, rows, cols, pred)
    print(f"{len(pred)} predictions ({int(np.isnan(pred).sum())} NaN) written to {args.out}")
    return 0


def _write_predictions(path, rname, cname, rows, cols, pred) -> None:
    """Write under a temporary sibling name, then rename: never a half-written file."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.tmp-{os.getpid()}")  # fmt: skip
    try:
        if path.endswith(".parquet"):
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({rname: rows.tolist(), cname: cols.tolist(), "prediction": pred})
            pq.write_table(table, tmp)
        else:
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow([rname, cname, "prediction"])
                for a, b, v in zip(rows.tolist(), cols.tolist(), pred.tolist()):
                    w.writerow([a, b, repr(v) if v == v else "nan"])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
