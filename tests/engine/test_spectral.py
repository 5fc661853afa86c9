"""Randomized SVD / eigensolver on the tiles against dense decompositions."""

from __future__ import annotations

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd.engine.cluster import ThreadExecutor
from dscaledgd.engine.completion import CompletionEngine
from dscaledgd.engine.factors import random_blocked
from dscaledgd.engine.spectral import orthonormalize


def _dense(obs):
    r, c, v = obs.to_coo()
    Y = np.zeros(obs.shape)
    Y[r, c] = v
    return Y / obs.density


@pytest.mark.parametrize("tiles", [(1, 1), (3, 2)])
def test_randomized_svd_matches_dense_svd(tiles):
    # subspace iteration converges like (s_{k+1}/s_r)^(2q+1); with q = 30 the
    # top-4 subspace of this instance is exact to ~1e-12
    obs, _ = dsg.datasets.make_completion((90, 70), 4, 0.5, cond=5, random_state=1, tiles=tiles)
    eng = CompletionEngine(obs, ThreadExecutor(2))
    (U, V), s = eng.spectral(4, seed=3, n_power=30)
    Ud, sd, Vdt = np.linalg.svd(_dense(obs))
    np.testing.assert_allclose(s, sd[:4], rtol=1e-9)
    Ug, Vg = U.gather(), V.gather()
    # same subspaces: principal angles ~ 0
    assert np.linalg.norm(Ug @ Ug.T - Ud[:, :4] @ Ud[:, :4].T) < 1e-7
    assert np.linalg.norm(Vg @ Vg.T - Vdt[:4].T @ Vdt[:4]) < 1e-7
    # and a consistent pairing: U^T (Y/p) V = diag(s)
    np.testing.assert_allclose(Ug.T @ _dense(obs) @ Vg, np.diag(s), atol=1e-8)


def test_randomized_eigh_matches_dense_eigh():
    obs, _ = dsg.datasets.make_completion(
        (80, 80), 3, 0.5, cond=4, symmetric=True, random_state=2, tiles=(2, 2)
    )
    eng = CompletionEngine(obs, ThreadExecutor(2), symmetric=True)
    (U,), w = eng.spectral(3, seed=1, n_power=30)
    Y = _dense(obs)
    wd, Vd = np.linalg.eigh(0.5 * (Y + Y.T))
    np.testing.assert_allclose(w, wd[::-1][:3], rtol=1e-9)
    Ug = U.gather()
    assert np.linalg.norm(Ug @ Ug.T - Vd[:, -3:] @ Vd[:, -3:].T) < 1e-7


def test_random_blocks_independent_of_partition():
    ex = ThreadExecutor(0)
    a = random_blocked(ex, np.array([0, 5000, 9000, 10_000]), 3, seed=42).gather()
    b = random_blocked(ex, np.array([0, 10_000]), 3, seed=42).gather()
    np.testing.assert_array_equal(a, b)


def test_orthonormalize_is_orthonormal_even_when_ill_conditioned(rng):
    ex = ThreadExecutor(0)
    from dscaledgd.engine.factors import Blocked

    X = rng.standard_normal((300, 6)) @ np.diag(np.logspace(0, -7, 6))
    B = Blocked(ex, np.array([0, 100, 300]), 6, [X[:100], X[100:]])
    Q, R = orthonormalize(B, return_r=True)
    Qg = Q.gather()
    assert np.linalg.norm(Qg.T @ Qg - np.eye(6)) < 1e-12
    np.testing.assert_allclose(Qg @ R, X, atol=1e-12)


@pytest.mark.parametrize("offset", [0, 6, 8, 46])
def test_block_kernels_give_the_same_bits_for_unaligned_blocks(offset):
    """A block scattered to a worker is a view into the message and may start at any
    byte; the block kernels give the bits they give for an aligned array (NumPy's matmul
    on an unaligned array leaves BLAS and rounds differently)."""
    from dscaledgd.engine import factors

    rng = np.random.default_rng(0)
    X, G = rng.standard_normal((75, 3)), rng.standard_normal((75, 3))
    A, B = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    buf = bytearray(X.nbytes + 128)
    start = (-np.frombuffer(buf, np.uint8).ctypes.data) % 64 + offset
    Y = np.ndarray(X.shape, dtype=np.float64, buffer=memoryview(buf)[start : start + X.nbytes])
    Y[...] = X
    assert Y.flags.aligned == (offset % 8 == 0)
    assert np.array_equal(factors._gram(Y), factors._gram(X))
    assert np.array_equal(factors._cross(Y, G), factors._cross(X, G))
    for a, b in zip(factors._stats(Y, G), factors._stats(X, G)):
        assert np.array_equal(a, b)
    assert np.array_equal(factors._combine(Y, A, Y, B), factors._combine(X, A, X, B))


@pytest.mark.parametrize("offset", [0, 6])
def test_an_r_by_r_operand_gives_the_same_bits_in_either_order_and_at_any_byte(offset):
    """The client's r × r matrices come from LAPACK in Fortran order and reach a worker
    inside a message, aligned or not. BLAS rounds ``X @ A`` differently for a Fortran-
    and a C-ordered ``A``; the update gives one answer for every layout (two runs on one
    cluster differed in the last bits when only unaligned operands were copied)."""
    from dscaledgd.engine import factors

    rng = np.random.default_rng(3)
    X, G = rng.standard_normal((750, 18)), rng.standard_normal((750, 18))
    A, B = rng.standard_normal((18, 18)), rng.standard_normal((18, 18))
    # (on this machine's OpenBLAS, X @ A and X @ asfortranarray(A) differ in the last bits)
    buf = bytearray(A.nbytes + 128)
    start = (-np.frombuffer(buf, np.uint8).ctypes.data) % 64 + offset
    Af = np.ndarray(A.shape, dtype=np.float64, buffer=memoryview(buf)[start:], order="F")
    Af[...] = A
    want = factors._combine(X, A, G, B)
    assert np.array_equal(factors._combine(X, Af, G, np.asfortranarray(B)), want)
    assert np.array_equal(factors._combine(np.asfortranarray(X), A, G, B), want)
