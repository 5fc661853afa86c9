"""``dscaledgd tensor-complete``, and how ``evaluate`` reads tensor data.

Inputs (``IN``, ``--mask``, and ``evaluate``'s data for a Tucker result):
``.npy``, ``.npz`` (one array, or ``X`` and an optional ``mask``), a Zarr
array, a TensorObservations store, or NIfTI (``.nii``/``.nii.gz``, with the
``neuro`` extra: ``pip install 'dscaledgd[neuro]'``). NaN marks a missing
entry unless ``--mask`` (boolean, True = observed; a NIfTI mask: nonzero =
observed) is given. Errors name the command-line flag, not the API parameter.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from .cli_common import fraction as _fraction
from .cli_common import respelled, solver_options

__all__ = ["add_parser", "read_tensor", "NIFTI_SUFFIXES", "NEURO_HINT"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NEURO_HINT = "pip install 'dscaledgd[neuro]'"
FUNC = "tensor-complete"

#: API parameter → how the command line spells it
FLAGS = {
    "ranks": "--ranks",
    "mask": "--mask",
    "max_iter": "--max-iter",
    "tol": "--tol",
    "method": "--method",
    "init": "--init",
    "step_size": "--step-size",
    "random_state": "--seed",
    "test_fraction": "--test-fraction",
    "T": "IN",
}


def _respelled(exc: Exception) -> Exception:
    return respelled(exc, FLAGS)


# ------------------------------------------------------------------ types
def _ranks(text: str) -> tuple[int, ...]:
    """``--ranks``: ``5,5,5`` (or ``5x5x5``), or one integer for every mode."""
    try:
        ranks = tuple(int(p) for p in text.lower().replace("x", ",").split(","))
    except ValueError:
        ranks = ()
    if not ranks or any(r < 1 for r in ranks):
        raise argparse.ArgumentTypeError(
            f"--ranks must be positive integers separated by commas, one per mode (like "
            f"5,5,5), or one integer for every mode; got {text!r}"
        )
    return ranks


# ------------------------------------------------------------------ input
def _is_nifti(path: str) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _nifti(path: str, role: str, *, mask: bool = False) -> np.ndarray:
    """A NIfTI image as a float64 array (``mask``: as booleans, nonzero = observed)."""
    from .storage.volumes import read_nifti

    return read_nifti(path, role, mask=mask)


def _store_type(path: str) -> str | None:
    """``dscaledgd.type`` of the Zarr store at ``path`` (``None`` if it is not one)."""
    try:
        with open(os.path.join(path, "zarr.json")) as fh:
            meta = json.load(fh).get("attributes", {}).get("dscaledgd")
    except (OSError, ValueError, AttributeError):
        return None
    return meta.get("type") if isinstance(meta, dict) else None


def read_tensor(path: str, mask: str | None = None, role: str = "IN"):
    """The tensor at ``path`` (and ``--mask``) as a TensorObservations, errors in CLI spelling."""
    from .api.tucker import as_tensor
    from .exceptions import InputDataError
    from .storage.tensor_store import STORE_TYPE

    for what, p in ((role, path), ("--mask", mask)):
        if p is not None and not os.path.exists(p):
            raise FileNotFoundError(f"No such {what} file or store: {p!r} does not exist.")
    kind = _store_type(path) if os.path.isdir(path) else None
    if kind == "observations":
        raise InputDataError(
            f"{role} {path!r} is a matrix Observations store, not a tensor. Complete it with "
            "`dscaledgd complete`."
        )
    if kind == "result":
        raise InputDataError(
            f"{role} {path!r} is a result store, not data. Give the tensor (or its "
            "TensorObservations store)."
        )
    if kind == STORE_TYPE and mask is not None:
        raise InputDataError(
            f"--mask applies to an array input; {role} {path!r} is a TensorObservations store, "
            "whose observed entries are fixed. Drop --mask, or give the array and the mask."
        )
    X = _nifti(path, role) if _is_nifti(path) else path
    M = _nifti(mask, "--mask", mask=True) if mask is not None and _is_nifti(mask) else mask
    try:
        return as_tensor(X, M, FUNC, "T")
    except (ValueError, TypeError) as exc:
        raise _respelled(exc) from None


# ---------------------------------------------------------------- command
def _cmd_tensor_complete(args) -> int:
    from .api.tucker import check_ranks, tucker_complete
    from .cli_common import run_kwargs, summary

    T = read_tensor(args.input, args.mask)
    ranks = args.ranks[0] if len(args.ranks) == 1 else args.ranks
    try:
        ranks = check_ranks(FUNC, ranks, T.shape)
    except ValueError as exc:
        raise _respelled(exc) from None
    print(f"input: {T}")
    test = None
    if args.test_fraction is not None:
        try:
            T, test = T.split(args.test_fraction, random_state=args.seed)
        except ValueError as exc:
            raise _respelled(exc) from None
        print(f"held out {test.nnz} of the {T.nnz + test.nnz} observed entries for testing")
    try:
        res = tucker_complete(T, ranks, init=args.init, **run_kwargs(args))
    except (ValueError, TypeError) as exc:
        raise _respelled(exc) from None
    res.to_zarr(args.out, overwrite=args.overwrite)
    print(summary(res, f"ranks {ranks}, "))
    if test is not None:
        rmse = res.rmse(test)
        rel = rmse * np.sqrt(test.nnz / test.value_norm2) if test.value_norm2 > 0 else np.nan
        print(f"test rmse {rmse:.6g}  relative {rel:.3e}  on {test.nnz} held-out entries")
    print(f"result written to {args.out}")
    return 0


def add_parser(sub, common) -> argparse.ArgumentParser:
    """Register ``tensor-complete`` on the subparsers ``sub`` (``common`` adds the
    shared ``--scheduler``/``--out``/``--overwrite``)."""
    t = sub.add_parser(
        "tensor-complete",
        help="complete a tensor (.npy, .npz, Zarr, NIfTI) with Tucker ScaledGD",
        description="Complete a partially observed tensor with a low Tucker rank model "
        "(ScaledGD, or GD) and write the result store. IN is a .npy or .npz file, a Zarr "
        "array, a TensorObservations store, or a NIfTI image (.nii, .nii.gz; needs the neuro "
        f"extra: {NEURO_HINT}). NaN marks a missing entry unless --mask is given.",
    )
    t.add_argument("input", metavar="IN", help="the tensor (.npy, .npz, Zarr, .nii, .nii.gz)")
    common(t, "result store to write (required)")
    t.add_argument(
        "--ranks",
        type=_ranks,
        required=True,
        metavar="R1,R2,...",
        help="Tucker ranks, one per mode (e.g. 5,5,5), or one for every mode",
    )
    t.add_argument(
        "--mask",
        metavar="PATH",
        default=None,
        help="boolean array of IN's shape, True = observed (.npy, .npz, Zarr; NIfTI: "
        "nonzero = observed). Default: the non-NaN entries",
    )
    t.add_argument("--init", choices=("spectral", "random"), default="spectral",
                   help="spectral (default) or random")  # fmt: skip
    solver_options(t, step_help="fixed step (default 0.3, safeguarded)")
    t.add_argument(
        "--test-fraction",
        type=_fraction,
        default=None,
        metavar="F",
        help="hold out this fraction of the observed entries and report the fit's RMSE on them",
    )
    t.set_defaults(func=_cmd_tensor_complete)
    return t
