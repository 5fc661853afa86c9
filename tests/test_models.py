"""Models (what a fit is) and SolveResult holding one: Tucker, RobustLowRank, stores."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import dask.array as da
import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import InputDataError, InvalidParameterError, SolveResult
from dscaledgd.models import LowRank, RobustLowRank, Tucker

from .conftest import edit_store_attrs

SHAPE, RANKS = (9, 7, 5), (2, 3, 2)


def _run(model, n_iter=2, **kw):
    hist = {"loss": np.linspace(1.0, 0.1, n_iter + 1), "residual": np.full(n_iter + 1, 0.5)}
    return SolveResult(
        model,
        status="converged",
        n_iter=n_iter,
        converged=True,
        message="test",
        history=hist,
        params={"rank": 2},
        **kw,
    )


@pytest.fixture
def tucker(rng):
    core = rng.standard_normal(RANKS)
    U = [rng.standard_normal((n, r)) for n, r in zip(SHAPE, RANKS)]
    dense = np.einsum("abc,ia,jb,kc->ijk", core, *U)
    return core, U, dense


def _attrs(path):
    with open(os.path.join(path, "zarr.json")) as fh:
        return json.load(fh)["attributes"]["dscaledgd"]


# ------------------------------------------------------------------ Tucker
def test_tucker_result_round_trips_through_zarr(tmp_path, tucker):
    core, U, dense = tucker
    res = _run(Tucker(core, U, dims=("x", "y", "t")))
    assert isinstance(res.model, Tucker) and res.model.ranks == RANKS and res.model.shape == SHAPE
    assert repr(res).endswith("core=(2, 3, 2), factors=[(9, 2), (7, 3), (5, 2)])")
    p = res.to_zarr(tmp_path / "t.zarr")
    meta = _attrs(p)
    assert meta["model"] == "tucker" and meta["factors"] == ["U0", "U1", "U2"]
    assert meta["dims"] == ["x", "y", "t"] and meta["format_version"] == 3
    back = dsg.load_result(p)
    assert isinstance(back.model, Tucker) and back.model.dims == ("x", "y", "t")
    np.testing.assert_array_equal(back.core, core)
    for a, b in zip(back.compute_factors(), U):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(back.to_tensor().compute(), dense, rtol=1e-12, atol=1e-12)
    assert back.status == "converged" and back.n_iter == 2 and back.params == {"rank": 2}
    assert repr(back) == repr(res)


def test_to_tensor_is_lazy_blockwise_and_equals_the_dense_reconstruction(tucker):
    core, U, dense = tucker
    factors = [da.from_array(u, chunks=(c, -1)) for u, c in zip(U, (4, 3, 5))]
    model = Tucker(core, factors)
    X = model.to_tensor()
    assert isinstance(X, da.Array) and X.shape == SHAPE
    assert X.chunks == ((4, 4, 1), (3, 3, 1), (5,))  # the factors' row chunks
    np.testing.assert_allclose(X.compute(), dense, rtol=1e-12, atol=1e-12)
    Y = model.to_tensor(chunks=(5, 7, 2))
    assert Y.chunks == ((5, 4), (7,), (2, 2, 1))
    np.testing.assert_allclose(Y.compute(), dense, rtol=1e-12, atol=1e-12)
    # one task per output block (each from the core and one row block per factor)
    assert Y.npartitions == 2 * 1 * 3


def test_tucker_predict_equals_the_dense_tensor(rng, tucker):
    core, U, dense = tucker
    res = _run(Tucker(core, U))
    idx = np.stack([rng.integers(0, n, 50) for n in SHAPE], axis=1)
    np.testing.assert_allclose(res.predict(idx), dense[tuple(idx.T)], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res.predict(idx.astype(float)), dense[tuple(idx.T)], atol=1e-12)
    assert res.predict(np.empty((0, 3), dtype=int)).shape == (0,)
    with pytest.raises(InputDataError, match=r"predict needs an \(m, 3\) array of indices"):
        res.predict(idx[:, :2])
    with pytest.raises(InputDataError, match=r"'indices' has mode-1 indices outside \[0, 7\)"):
        res.predict([[0, 7, 0]])
    with pytest.raises(InvalidParameterError, match=r"'indices' .* Got 0.5 at position \(1, 2\)"):
        res.predict([[0, 0, 0], [1, 1, 0.5]])
    with pytest.raises(InvalidParameterError, match=r"'indices' .* integer indices. Got <U1"):
        res.predict([["a", "b", "c"]])


@pytest.mark.parametrize("layout", ["dense", "coo"])
def test_tucker_rmse_on_observed_entries(rng, tucker, layout):
    from dscaledgd.storage import tensors

    core, U, dense = tucker
    Y = dense + rng.standard_normal(SHAPE)
    Y[rng.random(SHAPE) < 0.4] = np.nan
    T = tensors.TensorObservations.from_array(Y, chunks=(4, 3, 2), layout=layout)
    res = _run(Tucker(core, U))
    want = np.sqrt(np.nanmean((dense - Y) ** 2))
    assert res.rmse(T) == pytest.approx(want, rel=1e-12)
    other = tensors.TensorObservations.from_array(Y[:8], chunks=(4, 3, 2), layout=layout)
    with pytest.raises(InputDataError, match=r"do not match the fitted tensor \(9, 7, 5\)"):
        res.rmse(other)


def test_to_tensorly(tucker, monkeypatch):
    core, U, dense = tucker
    res = _run(Tucker(core, U))
    monkeypatch.setitem(sys.modules, "tensorly", None)
    monkeypatch.setitem(sys.modules, "tensorly.tucker_tensor", None)
    with pytest.raises(ImportError, match=r"needs TensorLy.*dscaledgd\[tensorly\]"):
        res.to_tensorly()
    monkeypatch.undo()
    tl = pytest.importorskip("tensorly")
    tt = res.to_tensorly()
    np.testing.assert_allclose(tl.to_numpy(tt.to_tensor()), dense, rtol=1e-12, atol=1e-12)


def test_to_xarray_keeps_dims(tucker, monkeypatch):
    core, U, dense = tucker
    res = _run(Tucker(core, U, dims=("x", "y", "t")))
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match=r"needs xarray.*dscaledgd\[xarray\]"):
        res.to_xarray()
    monkeypatch.undo()
    pytest.importorskip("xarray")
    xa = res.to_xarray(chunks=(4, 7, 5))
    assert xa.dims == ("x", "y", "t") and xa.data.chunks[0] == (4, 4, 1)
    np.testing.assert_allclose(xa.values, dense, rtol=1e-12, atol=1e-12)
    assert _run(Tucker(core, U)).to_xarray().dims == ("dim_0", "dim_1", "dim_2")
    mres = _run(LowRank((U[0], U[1][:, :2])))
    with pytest.raises(AttributeError, match="no 'to_xarray'"):
        mres.to_xarray()


def test_tucker_and_matrix_attributes_refuse_the_other_kind(tucker):
    core, U, _ = tucker
    tres = _run(Tucker(core, U))
    for attr in ("L", "R", "offsets", "ids"):
        with pytest.raises(AttributeError, match=f"tucker fit: it has no '{attr}'"):
            getattr(tres, attr)
    assert not tres.symmetric and tres.sparse is None and tres.compute_sparse() is None
    mres = _run(LowRank((U[0], U[1][:, :2])))
    assert not hasattr(mres, "core")
    with pytest.raises(AttributeError, match=r"lowrank \(matrix\) fit: it has no 'to_tensor'"):
        mres.to_tensor()
    with pytest.raises(AttributeError, match="no 'to_tensorly'"):
        mres.to_tensorly()
    with pytest.raises(InvalidParameterError, match="one \\(n_k, r_k\\) array per mode"):
        Tucker(core, U[:2])
    with pytest.raises(InvalidParameterError, match="'dims' parameter of Tucker"):
        Tucker(core, U, dims=("x", "y"))


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda m: m.update(model="cp"), r"'model' is 'cp', not one of"),
        (lambda m: m.update(factors=["U0", "U2", "U1"]), r"'factors' is \['U0', 'U2', 'U1'\]"),
        (lambda m: m.update(dims=["x"]), r"'dims' is \['x'\], not null or 3 names"),
    ],
    ids=["model", "factor-names", "dims"],
)
def test_damaged_tucker_store_is_refused(tmp_path, tucker, damage, match):
    core, U, _ = tucker
    p = _run(Tucker(core, U)).to_zarr(tmp_path / "t.zarr")
    edit_store_attrs(p, damage)
    with pytest.raises(InputDataError, match=r"The result store .* is corrupt") as exc:
        dsg.load_result(p)
    assert exc.match(match)


def test_tucker_store_with_a_wrong_core_is_refused(tmp_path, tucker):
    import shutil

    core, U, _ = tucker
    p = _run(Tucker(core, U)).to_zarr(tmp_path / "t.zarr")
    q = _run(Tucker(core[:, :2], [U[0], U[1][:, :2], U[2]])).to_zarr(tmp_path / "q.zarr")
    shutil.rmtree(os.path.join(p, "core"))
    shutil.copytree(os.path.join(q, "core"), os.path.join(p, "core"))
    with pytest.raises(InputDataError, match=r"array 'core' has shape \(2, 2, 2\)"):
        dsg.load_result(p)
    shutil.rmtree(os.path.join(p, "core"))
    with pytest.raises(InputDataError, match=r"model='tucker' but the array 'core' is missing"):
        dsg.load_result(p)


# ---------------------------------------------------------- matrix models
def test_constructor_forms_and_replace(rng):
    L, R = rng.standard_normal((6, 2)), rng.standard_normal((5, 2))
    S = da.from_array(np.where(rng.random((6, 5)) < 0.1, 3.0, 0.0))
    old = _run(None, factors=(L, R), offsets=None, ids=None, sparse=S)
    assert isinstance(old.model, RobustLowRank) and old.S is S and old.sparse is S
    np.testing.assert_array_equal(old.compute_sparse(), S.compute())
    assert repr(old).endswith("factors=[(6, 2), (5, 2)], sparse=(6, 5))")
    plain = _run(LowRank((L, R)))
    assert type(plain.model) is LowRank and plain.S is None and plain.compute_sparse() is None
    assert plain.offsets == {"mean": 0.0, "row_bias": None, "col_bias": None}
    robust = dataclasses.replace(plain, model=plain.model.with_sparse(S))
    assert isinstance(robust.model, RobustLowRank) and robust.n_iter == plain.n_iter
    assert dataclasses.replace(plain, sparse=S).S is S  # the old form still works
    assert dataclasses.replace(robust, status="max_iter").model is robust.model
    np.testing.assert_allclose(robust.predict([1], [2]), L[1] @ R[2])
    with pytest.raises(TypeError, match="either model= or factors="):
        _run(LowRank((L, R)), factors=(L, R))
    with pytest.raises(TypeError, match="needs model="):
        _run(None)
    with pytest.raises(InvalidParameterError, match="'sparse' parameter of RobustLowRank"):
        RobustLowRank((L, R), sparse=S[:5])


def test_robust_result_store_keeps_S_and_old_stores_load_as_lowrank(tmp_path):
    Y = dsg.datasets.make_low_rank((30, 24), 2, random_state=0).dense() * 10
    Y[3, 4] += 50.0
    res = dsg.rpca(Y, 2, alpha=0.1, scheduler="sync", random_state=0)
    assert isinstance(res.model, RobustLowRank)
    p = res.to_zarr(tmp_path / "r.zarr")
    assert _attrs(p)["model"] == "robust" and _attrs(p)["format_version"] == 3
    back = dsg.load_result(p)
    assert isinstance(back.model, RobustLowRank)
    np.testing.assert_array_equal(back.compute_sparse(), res.compute_sparse())
    np.testing.assert_array_equal(back.L.compute(), res.L.compute())
    # a store written before models (no 'model' attr, no S) loads as a plain low-rank fit
    plain = dataclasses.replace(res, model=LowRank(res.factors)).to_zarr(tmp_path / "o.zarr")
    assert _attrs(plain)["format_version"] == 2
    edit_store_attrs(plain, lambda m: m.pop("model"))
    old = dsg.load_result(plain)
    assert type(old.model) is LowRank and old.S is None
    np.testing.assert_array_equal(old.R.compute(), res.R.compute())
