"""Sensing operators: blocks, adjoints, quadratic measurements."""

from __future__ import annotations

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import InputDataError, InvalidParameterError
from dscaledgd.problems import sensing as ps


def test_gaussian_blocks_do_not_depend_on_chunking(rng):
    a = dsg.GaussianSensing((6, 5), 700, random_state=3, chunks=100)
    b = dsg.GaussianSensing((6, 5), 700, random_state=3, chunks=333)
    A = np.concatenate([a.block(k) for k in range(a.n_blocks)])
    B = np.concatenate([b.block(k) for k in range(b.n_blocks)])
    np.testing.assert_array_equal(A, B)
    assert A.shape == (700, 30)
    # N(0, 1/m) entries: the sample variance of 21000 draws within 5 standard errors
    assert abs(A.var() * 700 - 1) < 5 * np.sqrt(2 / A.size)


def test_linear_adjoint_is_exact(rng):
    op = dsg.GaussianSensing((7, 4), 90, random_state=1, chunks=40)
    X = rng.standard_normal((7, 4))
    z = rng.standard_normal(90)
    assert float(op.forward(X) @ z) == pytest.approx(float(np.sum(X * op.adjoint(z))), rel=1e-12)
    A = np.concatenate([op.block(k) for k in range(op.n_blocks)])
    np.testing.assert_allclose(op.forward(X), A @ X.ravel(), rtol=1e-13)
    L, R = rng.standard_normal((7, 2)), rng.standard_normal((4, 2))
    np.testing.assert_allclose(
        ps.forward_block("linear", A, L, R), A @ (L @ R.T).ravel(), rtol=1e-13
    )


def test_quadratic_measurements_and_adjoint(rng):
    op = dsg.QuadraticSensing(6, 50, random_state=2, chunks=20)
    L = rng.standard_normal((6, 2))
    a = np.concatenate([op.block(k) for k in range(op.n_blocks)])
    np.testing.assert_allclose(op.forward(L), np.sum((a @ L) ** 2, axis=1), rtol=1e-13)
    np.testing.assert_allclose(op.forward(L @ L.T), op.forward(L), rtol=1e-12)  # X or its factor
    with pytest.raises(
        InputDataError, match=r"forward needs a matrix of shape \(6, 6\) or a factor"
    ):
        op.forward(rng.standard_normal((5, 2)))
    with pytest.raises(InputDataError, match=r"forward needs a matrix of shape \(7, 4\); got"):
        dsg.GaussianSensing((7, 4), 30, random_state=0).forward(np.zeros((4, 7)))
    z = rng.standard_normal(50)
    np.testing.assert_allclose(
        op.adjoint(z), sum(zk * np.outer(ak, ak) for zk, ak in zip(z, a)), rtol=1e-12, atol=1e-12
    )


def test_array_operator_matches_the_generated_one(rng):
    import dask.array as da

    g = dsg.GaussianSensing((5, 4), 60, random_state=4)
    A = np.concatenate([g.block(k) for k in range(g.n_blocks)])
    for arr in (A, da.from_array(A, chunks=(25, 20))):
        op = ps.as_operator(arr, shape=(5, 4))
        X = rng.standard_normal((5, 4))
        np.testing.assert_allclose(op.forward(X), g.forward(X), rtol=1e-13)
    with pytest.raises(InvalidParameterError, match="needs the matrix shape: pass shape"):
        ps.as_operator(A)
    with pytest.raises(InputDataError, match=r"must have shape \(m, n1\*n2\) = \(m, 12\)"):
        ps.as_operator(A, shape=(3, 4))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(shape=(0, 3), m=5), r"'shape' parameter must be a pair of positive ints"),
        (
            dict(shape=(3, 3), m=0),
            r"'m' parameter \(number of measurements\) must be a positive int",
        ),
        (dict(shape=(3, 3), m=5, chunks=-2), r"'chunks' parameter must be None or a positive int"),
    ],
)
def test_bad_operator_parameters(kw, match):
    with pytest.raises(InvalidParameterError, match=match):
        dsg.GaussianSensing(**kw)


def test_zarr_measurement_array_solves_like_the_generated_operator(tmp_path):
    import zarr

    t = dsg.datasets.make_low_rank((12, 10), 2, cond=5, random_state=0)
    g = dsg.GaussianSensing((12, 10), 400, random_state=1, chunks=150)
    A = np.concatenate([g.block(k) for k in range(g.n_blocks)])
    z = zarr.create_array(tmp_path / "A.zarr", shape=A.shape, chunks=(150, 120), dtype="f8")
    z[:] = A
    op = ps.as_operator(zarr.open_array(tmp_path / "A.zarr", mode="r"), shape=(12, 10))
    assert op.n_blocks == g.n_blocks
    y = g.forward(t.dense())
    kw = dict(scheduler="sync", random_state=0, tol=1e-12)
    a = dsg.sense(y, g, 2, **kw)
    b = dsg.sense(y, zarr.open_array(tmp_path / "A.zarr", mode="r"), 2, shape=(12, 10), **kw)
    assert a.n_iter == b.n_iter and b.status == "converged"
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-10)
    assert t.relative_error(*b.compute_factors()) < 1e-10
