"""SolveResult: predict, rmse, atomic to_zarr / load_result."""

from __future__ import annotations

import os

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import InputDataError

from .conftest import edit_store_attrs


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


def _chunks(path, name):
    import glob

    return sorted(glob.glob(os.path.join(path, name, "c", "**", "*"), recursive=True))


def _files(paths):
    return [p for p in paths if os.path.isfile(p)]


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda p: [os.remove(f) for f in _files(_chunks(p, "L"))], r"array 'L' has 0 of 1 chunks"),
        (
            lambda p: [os.remove(f) for f in _files(_chunks(p, "history/residual"))],
            r"array 'history/residual' has 0 of 1 chunks",
        ),
        (
            lambda p: [open(f, "r+b").truncate(100) for f in _files(_chunks(p, "R"))],
            r"array 'R' has a chunk of 100 bytes where 1204 are expected",
        ),
        (
            lambda p: edit_store_attrs(p, lambda m: m.update(factors=["L", "Q"])),
            r"'factors' name the array 'Q' but it is missing",
        ),
        (lambda p: edit_store_attrs(p, lambda m: m.pop("status")), r"attrs' 'status' is missing"),
        (
            lambda p: edit_store_attrs(p, lambda m: m.update(n_iter="7")),
            r"attrs' 'n_iter' is '7', not a int",
        ),
        (
            lambda p: __import__("shutil").rmtree(os.path.join(p, "history")),
            r"the 'history' group is missing",
        ),
    ],
    ids=["L-chunk", "history-chunk", "R-truncated", "factors", "status", "n_iter", "history"],
)
def test_load_result_refuses_a_damaged_store(tmp_path, fitted, damage, match):
    _, _, res = fitted
    p = res.to_zarr(tmp_path / "res.zarr")
    damage(p)
    with pytest.raises(InputDataError, match=r"The result store .*res.zarr' is corrupt") as exc:
        dsg.load_result(p)
    assert exc.match(match) and "Re-create it" in str(exc.value)


def test_garbled_factor_chunk_fails_its_checksum_when_read(tmp_path, fitted):
    _, _, res = fitted
    p = res.to_zarr(tmp_path / "res.zarr")
    (f,) = _files(_chunks(p, "L"))
    size = os.path.getsize(f)
    with open(f, "wb") as fh:  # same size: only the checksum can tell
        fh.write(np.random.default_rng(0).bytes(size))
    back = dsg.load_result(p)
    with pytest.raises(
        InputDataError,
        match=r"chunk 0 of array 'L' \(rows 0:70\) cannot be decoded \(\w+: Stored and computed",
    ):
        back.compute_factors()


def test_results_without_checksums_still_load(tmp_path, fitted, monkeypatch):
    """Format 1 (written before checksums): loads, and truncation is still caught by size."""
    from dscaledgd.storage import layout, results

    obs, _, res = fitted
    monkeypatch.setattr(layout, "checksum_codecs", lambda: None)
    monkeypatch.setattr(results, "RESULT_FORMAT", 1)
    p = res.to_zarr(tmp_path / "old.zarr")
    monkeypatch.undo()
    assert "Crc32c" not in open(os.path.join(p, "L", "zarr.json")).read()
    back = dsg.load_result(p)
    np.testing.assert_array_equal(back.L.compute(), res.L.compute())
    assert back.rmse(obs) == pytest.approx(res.rmse(obs))
    (f,) = _files(_chunks(p, "L"))
    open(f, "r+b").truncate(64)
    with pytest.raises(InputDataError, match=r"array 'L' has a chunk of 64 bytes where 1680 "):
        dsg.load_result(p)


def test_predict_refuses_fractional_indices(fitted):
    _, truth, res = fitted
    with pytest.raises(dsg.InvalidParameterError, match=r"'rows' parameter of predict must hold"):
        res.predict([0.7], [1])
    with pytest.raises(dsg.InvalidParameterError, match=r"'cols' .* Got 2.5 at position 1"):
        res.predict([0, 1], [1.0, 2.5])
    with pytest.raises(dsg.InvalidParameterError, match=r"'rows' .* Got <U1"):
        res.predict(["a"], [1])
    # integer-valued floats are positions too
    np.testing.assert_allclose(res.predict([3.0], [4.0]), truth.dense()[3, 4], atol=1e-10)


def test_repr_and_final_describe_the_returned_iterate(fitted):
    _, _, res = fitted
    assert res.best_iteration == res.n_iter == res.info["best_iteration"]
    assert res.final["residual"] == res.history["residual"][-1]
    assert repr(res).startswith(f"SolveResult(status='converged', n_iter={res.n_iter}, loss=")


def test_html_view_for_jupyter_shows_outcome_parts_and_curve():
    import xml.etree.ElementTree as ET

    obs, _ = dsg.datasets.make_completion((60, 50), 2, 0.5, random_state=0)
    res = dsg.complete(obs, 2, scheduler="sync", random_state=0)
    page = res._repr_html_()
    assert "<table>" in page and f"<td style='text-align:left'>{res.status}</td>" in page
    assert "factor 0" in page and "(60, 2), row chunks" in page and "<svg" in page
    assert "history" not in repr(res) and len(repr(res)) < 200
    ET.fromstring(page)  # well-formed
    svg = ET.fromstring(page[page.index("<svg") : page.index("</svg>") + 6])
    pts = svg.find("{http://www.w3.org/2000/svg}polyline").get("points").split()
    assert len(pts) == len(res.history["loss"])  # one point per recorded loss
    from dscaledgd._html import loss_curve_svg

    assert loss_curve_svg([1.0]) == "" and loss_curve_svg([np.nan, 0.0]) == ""
