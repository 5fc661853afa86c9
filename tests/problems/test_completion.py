"""The fused completion kernel against the NumPy reference, and its gradients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dscaledgd.problems import completion as cp


def _problem(seed, m, n, r, nnz):
    rng = np.random.default_rng(seed)
    nnz = min(nnz, m * n)
    lin = np.sort(rng.choice(m * n, nnz, replace=False))
    rows = (lin // n).astype(np.int32)
    cols = (lin % n).astype(np.int32)
    vals = rng.standard_normal(nnz)
    L = rng.standard_normal((m, r))
    R = rng.standard_normal((n, r))
    return rows, cols, vals, L, R


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    m=st.integers(1, 40),
    n=st.integers(1, 40),
    r=st.sampled_from([1, 2, 3, 7, 10, 33]),
    nnz=st.integers(1, 500),
    loss=st.sampled_from(["l2", "l1"]),
    shuffle=st.booleans(),
)
def test_fused_kernel_matches_reference(seed, m, n, r, nnz, loss, shuffle):
    rows, cols, vals, L, R = _problem(seed, m, n, r, nnz)
    if shuffle:  # any entry order gives the same result (up to rounding)
        p = np.random.default_rng(seed + 1).permutation(len(vals))
        rows, cols, vals = rows[p], cols[p], vals[p]
    gL = np.zeros_like(L)
    gR = np.zeros_like(R)
    value, sq = cp.fused_pass(rows, cols, vals, L, R, gL, gR, loss)
    (ref_value, ref_sq), rL, rR = cp.reference_pass(rows, cols, vals, L, R, loss)
    scale = 1.0 + np.abs(L).max() * np.abs(R).max() * r
    assert value == pytest.approx(ref_value, rel=1e-12, abs=1e-12 * scale * len(vals))
    assert sq == pytest.approx(ref_sq, rel=1e-12, abs=1e-12 * scale**2 * len(vals))
    np.testing.assert_allclose(gL, rL, rtol=1e-11, atol=1e-11 * scale * len(vals))
    np.testing.assert_allclose(gR, rR, rtol=1e-11, atol=1e-11 * scale * len(vals))


def test_sddmm_spmm_residual_match_dense(rng):
    rows, cols, vals, L, R = _problem(3, 30, 20, 4, 200)
    X = L @ R.T
    np.testing.assert_allclose(cp.sddmm(rows, cols, L, R), X[rows, cols], rtol=1e-13)
    Y = np.zeros((30, 20))
    Y[rows, cols] = vals
    V = rng.standard_normal((20, 5))
    np.testing.assert_allclose(cp.spmm(rows, cols, vals, V, np.zeros((30, 5))), Y @ V, rtol=1e-12)
    U = rng.standard_normal((30, 5))
    np.testing.assert_allclose(cp.spmm(cols, rows, vals, U, np.zeros((20, 5))), Y.T @ U, rtol=1e-12)
    z = X[rows, cols] - vals
    assert cp.residual_sumsq(rows, cols, vals, L, R) == pytest.approx(z @ z, rel=1e-12)


def test_l1_subgradient_is_sign():
    rows = np.array([0, 0, 1], np.int32)
    cols = np.array([0, 1, 1], np.int32)
    L = np.array([[1.0], [2.0]])
    R = np.array([[1.0], [1.0]])
    vals = np.array([0.5, 1.0, 3.0])  # residuals 0.5, 0, -1
    gL = np.zeros_like(L)
    gR = np.zeros_like(R)
    value, sq = cp.fused_pass(rows, cols, vals, L, R, gL, gR, "l1")
    assert value == 1.5 and sq == 1.25
    np.testing.assert_array_equal(gL, [[1.0], [-1.0]])
    np.testing.assert_array_equal(gR, [[1.0], [-2.0]])
