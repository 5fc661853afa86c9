"""The API cases of ``shared/reliability/bad-inputs.md``, reproduced as described.

Each case is either refused with the library's error type and a message that
names the parameter, array or store (and the fix), or accepted with a correct
result. "load:" cases write a small valid result with ``SolveResult.to_zarr``
and then damage it on disk, as the probe did.
"""

from __future__ import annotations

import glob
import os
import shutil

import dask.array as da
import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import DataWarning, InputDataError, InvalidParameterError, NotFittedError

from ..conftest import edit_store_attrs


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The probe's 60×50 rank-2 instance, its fit, and the fit's result store."""
    obs, truth = dsg.datasets.make_completion((60, 50), 2, 0.5, random_state=0)
    res = dsg.complete(obs, 2, scheduler="sync", random_state=0)
    store = res.to_zarr(tmp_path_factory.mktemp("valid") / "res.zarr")
    return {"obs": obs, "truth": truth, "res": res, "store": store}


def _result_copy(fitted, tmp_path) -> str:
    dst = str(tmp_path / "res.zarr")
    shutil.copytree(fitted["store"], dst)
    return dst


def _chunk_files(path, name) -> list:
    return [
        f
        for f in glob.glob(os.path.join(path, name, "c", "**"), recursive=True)
        if os.path.isfile(f)
    ]


def _load_and_predict(path):
    dsg.load_result(path).predict([0, 1], [0, 1])


def _relative_error(res, truth):
    return truth.relative_error(*res.compute_factors())


def _dask(Y):
    return da.from_array(Y, chunks=(20, 25))


# ----------------------------------------------------------------- builders
def _complete_all_zero_values(tmp_path, fx):
    r, c, v = fx["obs"].to_coo()
    zero = dsg.Observations.from_coo(r, c, np.zeros_like(v), shape=fx["obs"].shape)
    res = dsg.complete(zero, 2, scheduler="sync")  # valid data: accepted, X = 0
    assert res.status == "converged" and res.final["residual"] == 0.0
    assert not res.L.compute().any() and res.rmse(zero) == 0.0


def _complete_huge_values(tmp_path, fx):
    r, c, v = fx["obs"].to_coo()
    with np.errstate(over="ignore"):  # the import's own sum of squares overflows too
        huge = dsg.Observations.from_coo(r, c, v * 1e300)
    dsg.complete(huge, 2, scheduler="sync")


def _complete_validation_list(tmp_path, fx):
    dsg.complete(fx["obs"], 2, validation=[1, 2], scheduler="sync")


def _rpca_all_nan(tmp_path, fx):
    dsg.rpca(np.full((60, 50), np.nan), 2, alpha=0.1, scheduler="sync")


def _rpca_dask_unknown(tmp_path, fx):
    Y = _dask(fx["truth"].dense())
    dsg.rpca(Y[Y[:, 0] > -1e9], 2, alpha=0.1, scheduler="sync")


def _rpca_dask_inf(tmp_path, fx):
    Y = fx["truth"].dense()
    Y[33, 41] = np.inf
    dsg.rpca(_dask(Y), 2, alpha=0.1, scheduler="sync")


def _rpca_dask_nan_all_row(tmp_path, fx):
    Y = fx["truth"].dense()
    Y[17] = np.nan
    with pytest.warns(DataWarning, match=r"1 of 60 rows have no observations \(first: 17\)"):
        res = dsg.rpca(_dask(Y), 2, alpha=0.1, scheduler="sync", random_state=0)
    assert res.status == "converged" and not res.L.compute()[17].any()


def _load_deleted_L_chunk(tmp_path, fx):
    path = _result_copy(fx, tmp_path)
    for f in _chunk_files(path, "L"):
        os.remove(f)
    _load_and_predict(path)


def _load_truncated_L_chunk(tmp_path, fx):
    path = _result_copy(fx, tmp_path)
    (f,) = _chunk_files(path, "L")
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    dsg.load_result(path).L.compute()


def _load_attr_factors_bad(tmp_path, fx):
    path = _result_copy(fx, tmp_path)
    edit_store_attrs(path, lambda m: m.update(factors=["L", "Q"]))
    _load_and_predict(path)


def _load_attr_missing_status(tmp_path, fx):
    path = _result_copy(fx, tmp_path)
    edit_store_attrs(path, lambda m: m.pop("status"))
    _load_and_predict(path)


def _load_history_deleted(tmp_path, fx):
    path = _result_copy(fx, tmp_path)
    shutil.rmtree(os.path.join(path, "history"))
    _load_and_predict(path)


def _predict_float_idx(tmp_path, fx):
    fx["res"].predict(np.array([0.7, 3.0]), np.array([1, 2]))


def _est_predict_unfitted(tmp_path, fx):
    dsg.MatrixCompletion(rank=2).predict([0], [0])


def _est_rpca_transform_unfitted(tmp_path, fx):
    dsg.RobustPCA(rank=2).transform()


_CORRUPT = r"The result store '.*res.zarr' is corrupt or truncated: "
_FIX = r".*Re-create it"
_UNFITTED = (
    r"This {} instance is not fitted yet\. Call 'fit' with appropriate arguments before "
    r"using this estimator\."
)

#: case -> (builder, error type or None when the input is accepted, message pattern)
CASES = {
    "complete_all_zero_values": (_complete_all_zero_values, None, None),
    "complete_huge_values": (
        _complete_huge_values,
        InputDataError,
        r"sum of squares of the observed values overflows float64.*Rescale",
    ),
    "complete_validation_list": (
        _complete_validation_list,
        InvalidParameterError,
        r"The 'validation' parameter of complete must be an Observations.*Got list",
    ),
    "rpca_all_nan": (_rpca_all_nan, InputDataError, r"Y \(60 x 50\) has no observed entries"),
    "rpca_dask_unknown": (
        _rpca_dask_unknown,
        InputDataError,
        r"unknown chunk sizes.*Call Y\.compute_chunk_sizes\(\)",
    ),
    "rpca_dask_inf": (_rpca_dask_inf, InputDataError, r"Y\[33, 41\] is infinite; mark it missing"),
    "rpca_dask_nan_all_row": (_rpca_dask_nan_all_row, None, None),
    "load_deleted_L_chunk": (
        _load_deleted_L_chunk,
        InputDataError,
        _CORRUPT + r"array 'L' has 0 of 1 chunks" + _FIX,
    ),
    "load_truncated_L_chunk": (
        _load_truncated_L_chunk,
        InputDataError,
        _CORRUPT + r"array 'L' has a chunk of \d+ bytes where \d+ are expected" + _FIX,
    ),
    "load_attr_factors_bad": (
        _load_attr_factors_bad,
        InputDataError,
        _CORRUPT + r"its attrs' 'factors' name the array 'Q' but it is missing" + _FIX,
    ),
    "load_attr_missing_status": (
        _load_attr_missing_status,
        InputDataError,
        _CORRUPT + r"its attrs' 'status' is missing" + _FIX,
    ),
    "load_history_deleted": (
        _load_history_deleted,
        InputDataError,
        _CORRUPT + r"the 'history' group is missing" + _FIX,
    ),
    "predict_float_idx": (
        _predict_float_idx,
        InvalidParameterError,
        r"The 'rows' parameter of predict must hold integer indices\. Got 0\.7 at position 0",
    ),
    "est_predict_unfitted": (
        _est_predict_unfitted,
        NotFittedError,
        _UNFITTED.format("MatrixCompletion"),
    ),
    "est_rpca_transform_unfitted": (
        _est_rpca_transform_unfitted,
        NotFittedError,
        _UNFITTED.format("RobustPCA"),
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_api_input(case, tmp_path, fitted):
    build, exc, match = CASES[case]
    if exc is None:  # valid input: accepted with a correct result (checked by the builder)
        build(tmp_path, fitted)
    else:
        with pytest.raises(exc, match=match):
            build(tmp_path, fitted)
    # nothing was written beside the inputs (no half store, no temporary sibling)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n or ".old-" in n]
