"""``dscaledgd sgd``: ScaledSGD (or SGD) on pairs or triplets from a file, to a result store.

``SAMPLES`` (and ``--validation``) is a CSV or Parquet file (``--columns``
names ``i, j, [k,] y``), a Zarr array, or a ``.npy`` array of shape
``(m, 3)`` (pairs) or ``(m, 4)`` (triplets, ``--loss bpr``). Files and Zarr
arrays are streamed: read block by block where the stratified epochs run
(threads by default, or ``--scheduler``); a ``.npy`` array runs in this
process on the exact ``P`` unless ``--scheduler`` or ``--n-blocks`` is given.
Errors name the command-line flag, not the API parameter.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from .cli_common import fraction, respelled, run_options

__all__ = ["add_parser", "evaluate_samples", "sgd_columns"]

#: where ``sgd`` runs without --scheduler (the help's default)
SCHEDULER_DEFAULT = (
    "a .npy runs in this process; files and Zarr arrays on $DASK_SCHEDULER_ADDRESS if set, "
    "else threads"
)
#: API parameter → how the command line spells it
FLAGS = {
    "rank": "--rank",
    "loss": "--loss",
    "method": "--method",
    "step_size": "--step-size",
    "epochs": "--epochs",
    "tol": "--tol",
    "n_rows": "--n-rows",
    "eval_every": "--eval-every",
    "n_blocks": "--n-blocks",
    "sync_every": "--sync-every",
    "columns": "--columns",
    "random_state": "--seed",
    "reinvert_every": "--reinvert-every",
    "checkpoint_interval": "--checkpoint-interval",
}


def _read(path: str, what: str, loss: str, columns, whole: bool):
    """``SAMPLES``/``--validation``: a ``.npy`` array (memory-mapped), else the path as the
    API streams it (``whole``: read into memory, for a held-out set)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such {what} file or store: {path!r} does not exist.")
    if path.lower().endswith(".npy"):
        return np.load(path, mmap_mode="r")
    if not whole:
        return path
    from .engine.online import read_samples

    return read_samples(path, loss, columns)


def _cmd_sgd(args) -> int:
    from .api.scaled_sgd import scaled_sgd
    from .cli_common import run_kwargs

    samples = _read(args.input, "SAMPLES", args.loss, args.columns, whole=False)
    test = None
    if args.validation is not None:
        test = _read(args.validation, "--validation", args.loss, args.columns, whole=True)
    kw = run_kwargs(args)
    kw.pop("max_iter")
    if kw["step_size"] is None:
        kw.pop("step_size")
    try:
        res = scaled_sgd(samples, args.rank, loss=args.loss, epochs=args.epochs,
                         n_rows=args.n_rows, validation=test, eval_every=args.eval_every,
                         n_blocks=args.n_blocks, sync_every=args.sync_every,
                         columns=args.columns, reinvert_every=args.reinvert_every,
                         **kw)  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise respelled(exc, FLAGS) from None
    res.to_zarr(args.out, overwrite=args.overwrite)
    info, h = res.info, res.history
    auc = f", training AUC {h['auc'][-1]:.4f}" if "auc" in h else ""
    print(f"{res.status}: {res.message}\nrank {args.rank}, {info['samples']} samples "
          f"({info['executor']}), epochs {res.n_iter}, final loss {h['loss'][-1]:.6g}{auc}, "
          f"{h['time'][-1]:.1f} s")  # fmt: skip
    if "eval_loss" in h:
        line = f"held out: loss {h['eval_loss'][-1]:.6g}"
        if args.loss == "bpr":
            npmax = info["np_maximum"]
            above = np.flatnonzero(h["eval_auc"] >= npmax)
            passed = f"after {h['eval_epoch'][above[0]]:.2f} epochs" if len(above) else "never"
            line += f", AUC {h['eval_auc'][-1]:.4f} (NP-maximum {npmax:.4f}, passed {passed})"
        print(line)
    print(f"result written to {args.out}")
    return 0


def evaluate_samples(res, result_path: str, path: str, columns) -> dict:
    """``dscaledgd evaluate`` of a ScaledSGD result on samples at ``path``: the mean
    objective of its loss, the RMSE of the predicted values (pairs) or the AUC (BPR)."""
    from .problems import pairwise as pw

    loss = res.params["loss"]
    X = np.asarray(res.factors[0])
    data = _read(path, "DATA", loss, columns, whole=True)
    try:
        I, J, K, Y, _ = pw.check_samples("evaluate", data, loss, X.shape[0])
    except (ValueError, TypeError) as exc:
        raise type(exc)(
            f"DATA {path!r} does not fit this result (fitted with --loss {loss} on "
            f"{X.shape[0]} rows): {exc}"
        ) from None
    tot = pw.sums(I, J, K, Y, X, loss)
    payload = {"result": os.path.abspath(result_path),
               "samples": os.path.abspath(path), "n": len(Y), "loss": loss,
               "objective": float(tot[0] / tot[2])}  # fmt: skip
    line = f"{loss} objective {payload['objective']:.6g}"
    if loss == "bpr":
        payload["auc"] = float(tot[1] / tot[2])
        line += f"  AUC {payload['auc']:.4f}"
    else:
        payload["rmse"] = pw.rmse(I, J, K, Y, X, loss)
        line += f"  rmse {payload['rmse']:.6g}"
    print(f"{line}  on {len(Y)} samples")
    return payload


def sgd_columns(text: str) -> tuple[str, ...]:
    """``--columns``: 3 or 4 names separated by commas."""
    names = tuple(c.strip() for c in text.split(",") if c.strip())
    if len(names) not in (3, 4):
        raise argparse.ArgumentTypeError(
            f"expected 3 names (i,j,y) or 4 (i,j,k,y) separated by commas; got {text!r}"
        )
    return names


def add_parser(sub, common) -> argparse.ArgumentParser:
    """Register ``sgd`` on the subparsers ``sub`` (``common`` adds ``--scheduler``,
    ``--out``, ``--overwrite``)."""
    s = sub.add_parser(
        "sgd",
        help="online ScaledSGD on pairs or triplets (RMSE, 1-bit, EDM, BPR) to M = X Xᵀ",
        description="Fit a symmetric low-rank model M = X Xᵀ to samples (i, j, y), or "
        "triplets (i, j, k, y) with --loss bpr, by ScaledSGD (or plain SGD), epoch by epoch, "
        "and write the result store. SAMPLES is a CSV or Parquet file (--columns names "
        "i,j,[k,]y), a Zarr array, or a .npy array (m x 3 or m x 4); files and Zarr arrays "
        "are streamed to the stratified epochs (docs/scaled-sgd.md).",
    )
    s.add_argument("input", metavar="SAMPLES", help="CSV, Parquet, Zarr array or .npy")
    common(s, "result store to write (required)", scheduler_default=SCHEDULER_DEFAULT)
    s.add_argument("--rank", type=int, required=True, help="the rank r of X (d x r)")
    s.add_argument("--loss", choices=("rmse", "1bit", "edm", "bpr"), default="rmse",
                   help="rmse (default), 1bit (y in {0,1}), edm (squared distances) or bpr "
                   "(triplets, y in {0,1})")  # fmt: skip
    s.add_argument("--method", choices=("scaledsgd", "sgd"), default="scaledsgd",
                   help="scaledsgd (default) or plain sgd")  # fmt: skip
    s.add_argument("--step-size", type=float, default=None, help="default 0.3")
    s.add_argument("--epochs", type=int, default=50, help="default 50")
    s.add_argument("--tol", type=float, default=0.0,
                   help="stop when the mean objective is at most this (default 0)")  # fmt: skip
    s.add_argument("--columns", type=sgd_columns, default=None, metavar="I,J,[K,]Y",
                   help="the CSV/Parquet columns (default i,j,y or i,j,k,y)")  # fmt: skip
    s.add_argument("--n-rows", type=int, default=None, help="d (default: largest index + 1)")
    s.add_argument("--validation", metavar="PATH", default=None,
                   help="held-out samples (same formats): loss, and AUC against the "
                   "NP-maximum for bpr, every --eval-every of an epoch")  # fmt: skip
    s.add_argument("--eval-every", type=fraction, default=None, metavar="F",
                   help="fraction of an epoch between held-out evaluations (default: per "
                   "epoch)")  # fmt: skip
    s.add_argument("--n-blocks", type=int, default=None,
                   help="row blocks of the stratified schedule (default: 2 or 3 per "
                   "worker)")  # fmt: skip
    s.add_argument("--sync-every", type=int, default=None,
                   help="samples per stratified step (default 1%% of an epoch)")  # fmt: skip
    s.add_argument("--reinvert-every", type=int, default=1,
                   help="re-invert XᵀX every this many epochs (default 1)")  # fmt: skip
    run_options(s, unit="epochs", interval=1)
    s.set_defaults(func=_cmd_sgd, max_iter=None)
    return s
