"""SolveResult: predict, rmse, atomic to_zarr / load_result."""

from __future__ import annotations

import os

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import InputDataError


@pytest.fixture(scope="module")
def fitted():
    obs, truth = dsg.datasets.make_completion((70, 50), 3, 0.5, cond=5, random_state=21)
    return obs, truth, dsg.complete(obs, 3, scheduler="sync", random_state=0, tol=1e-12)


def test_predict_and_rmse(fitted):
    obs, truth, res = fitted
    rows = np.array([0, 69, 10, 33])
    cols = np.array([0, 49, 7, 20])
    np.testing.assert_allclose(res.predict(rows, cols), truth.dense()[rows, cols], atol=1e-10)
    assert res.rmse(obs) < 1e-12
    r, c, v = obs.to_coo()
    noisy = dsg.Observations.from_coo(r, c, v + 0.5)
    assert res.rmse(noisy) == pytest.approx(0.5, rel=1e-9)
    with pytest.raises(InputDataError, match=r"'rows' has indices outside \[0, 70\)"):
        res.predict([70], [0])
    with pytest.raises(InputDataError, match="1-D rows and cols of equal length"):
        res.predict([0, 1], [0])
    with pytest.raises(InputDataError, match="do not match the fitted matrix"):
        res.rmse(dsg.Observations.from_coo([0], [0], [1.0], shape=(5, 5)))


def test_to_zarr_round_trip(tmp_path, fitted):
    obs, truth, res = fitted
    path = res.to_zarr(tmp_path / "res.zarr")
    back = dsg.load_result(path)
    assert back.status == res.status and back.n_iter == res.n_iter and back.converged
    np.testing.assert_array_equal(back.L.compute(), res.L.compute())
    np.testing.assert_array_equal(back.R.compute(), res.R.compute())
    for k, v in res.history.items():
        np.testing.assert_array_equal(back.history[k], v)
    assert back.params["rank"] == 3 and back.params["method"] == "scaledgd"
    assert back.rmse(obs) == pytest.approx(res.rmse(obs))
    assert sorted(os.listdir(tmp_path)) == ["res.zarr"]


def test_to_zarr_refuses_overwrite_and_publishes_atomically(tmp_path, fitted, monkeypatch):
    _, _, res = fitted
    p = tmp_path / "res.zarr"
    res.to_zarr(p)
    with pytest.raises(FileExistsError, match="already exists. Pass overwrite=True"):
        res.to_zarr(p)
    res.to_zarr(p, overwrite=True)
    # a crash while writing leaves neither a result nor a temporary directory behind
    import dask.array as da

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(da, "store", boom)
    with pytest.raises(OSError, match="disk full"):
        res.to_zarr(tmp_path / "other.zarr")
    assert sorted(os.listdir(tmp_path)) == ["res.zarr"]
    assert dsg.load_result(p).n_iter == res.n_iter


def test_load_result_rejects_other_stores(tmp_path, fitted):
    obs, _, _ = fitted
    p = obs.to_zarr(tmp_path / "obs.zarr")
    with pytest.raises(InputDataError, match="is not a dscaledgd result store"):
        dsg.load_result(p)
    with pytest.raises(FileNotFoundError):
        dsg.load_result(tmp_path / "none.zarr")


def test_symmetric_result_store(tmp_path):
    obs, truth = dsg.datasets.make_completion((40, 40), 2, 0.6, symmetric=True, random_state=3)
    res = dsg.complete(obs, 2, symmetric=True, scheduler="sync", random_state=0)
    back = dsg.load_result(res.to_zarr(tmp_path / "s.zarr"))
    assert back.symmetric and back.R is back.L
    np.testing.assert_allclose(
        back.predict([1, 2], [2, 1]), truth.dense()[[1, 2], [2, 1]], atol=1e-9
    )
