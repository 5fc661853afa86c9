"""Tucker completion kernels against full-tensor references, and the NumPy oracle.

Tolerances: every quantity is a sum of at most a few thousand float64 products
of O(1) numbers, so two summation orders agree to ``~1e-13`` relative; the
tests use 1e-12 (dense vs coo vs reference) and each of them fails for an
off-by-one slice or a missing factor. Finite differences of the loss, which
is quadratic along any single coordinate, are exact up to rounding.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dscaledgd import datasets
from dscaledgd.exceptions import InvalidParameterError
from dscaledgd.linalg import fold, mode_product, multi_mode_product, unfold
from dscaledgd.problems import tucker as tk
from tests.oracles.tucker import breve, full, oracle_tucker

CASES = [((12, 10, 8), (2, 3, 2)), ((6, 5, 4, 3), (2, 3, 2, 2)), ((7, 6), (2, 3))]
RTOL = 1e-12


def _problem(shape, ranks, seed=0, p=0.4):
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal(shape)
    Y[rng.random(shape) >= p] = np.nan
    U = [rng.standard_normal((n, r)) for n, r in zip(shape, ranks)]
    core = rng.standard_normal(ranks)
    return Y, U, core


def _coo(Y):
    obs = ~np.isnan(Y)
    return np.argwhere(obs).astype(np.int32), Y[obs], Y.shape


def assert_close(a, b, rtol=RTOL):
    """Equal to ``rtol`` relative to the largest entry of ``b``."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(np.abs(b).max(), 1e-300))


def _project_einsum(T, U):
    """``T ×_1 U_1ᵀ ⋯ ×_d U_dᵀ`` by one einsum (independent of ``linalg``)."""
    d = T.ndim
    src, dst = "abcdef"[:d], "ghijkl"[:d]
    spec = src + "," + ",".join(a + b for a, b in zip(src, dst)) + "->" + dst
    return np.einsum(spec, T, *U)


def _split(n, parts):
    return np.linspace(0, n, parts + 1).astype(int)


# ------------------------------------------------------------------ linalg
def test_unfold_fold_and_mode_products(rng):
    T = rng.standard_normal((4, 3, 5, 2))
    for k in range(4):
        M = unfold(T, k)
        assert M.shape == (T.shape[k], T.size // T.shape[k])
        np.testing.assert_array_equal(M, np.moveaxis(T, k, 0).reshape(T.shape[k], -1))
        np.testing.assert_array_equal(fold(M, k, T.shape), T)
        A = rng.standard_normal((6, T.shape[k]))
        assert_close(unfold(mode_product(T, A, k), k), A @ M)
        assert_close(mode_product(T, A, k), np.moveaxis(np.tensordot(A, T, axes=(1, k)), 0, k))
    mats = [rng.standard_normal((2, n)) for n in T.shape]
    ref = np.einsum("abcd,ia,jb,kc,ld->ijkl", T, *mats)
    assert_close(multi_mode_product(T, mats), ref)
    assert_close(multi_mode_product(T, [m.T for m in mats], transpose=True), ref)
    skipped = multi_mode_product(T, mats, skip=2)
    assert_close(skipped, np.einsum("abcd,ia,jb,ld->ijcl", T, mats[0], mats[1], mats[3]))
    with pytest.raises(ValueError, match="must have shape"):
        mode_product(T, mats[0], 1)
    with pytest.raises(ValueError, match="one per mode"):
        multi_mode_product(T, mats[:3])


# ------------------------------------------------------------------ chunk_pass
@pytest.mark.parametrize("shape, ranks", CASES)
def test_chunk_pass_layouts_match_reference(shape, ranks):
    Y, U, core = _problem(shape, ranks)
    p = 0.4
    loss, G_ref, c_ref = tk.reference_pass(Y, U, core, p)
    grad_scale, loss_scale = tk.SPEC.scales(p, False, "l2")  # what the engine applies
    for chunk in (Y, _coo(Y)):
        G, cgrad, sums = tk.chunk_pass(chunk, U, core, grad_scale)
        for g, gr in zip(G, G_ref):
            assert_close(g, gr)
        assert_close(cgrad, c_ref)
        assert loss_scale * sums[0] == pytest.approx(loss, rel=RTOL)
        assert sums[1] == pytest.approx(np.nansum(Y**2), rel=RTOL)


@pytest.mark.parametrize("shape, ranks", CASES[:2])
def test_chunk_pass_summed_over_a_grid(shape, ranks):
    """Partial results of a split into uneven chunks add up to the whole-tensor pass."""
    Y, U, core = _problem(shape, ranks, seed=1)
    p = 0.4
    loss, G_ref, c_ref = tk.reference_pass(Y, U, core, p)
    bounds = [_split(n, parts) for n, parts in zip(shape, (3, 2, 2, 1))]
    for layout in ("dense", "coo"):
        G = [np.zeros_like(u) for u in U]
        cgrad = np.zeros_like(core)
        sums = np.zeros(5)
        for pos in itertools.product(*(range(len(b) - 1) for b in bounds)):
            sl = tuple(slice(b[i], b[i + 1]) for b, i in zip(bounds, pos))
            block = Y[sl]
            chunk = block if layout == "dense" else _coo(block)
            Ub = [u[s] for u, s in zip(U, sl)]
            g, c, s = tk.chunk_pass(chunk, Ub, core, 1 / p)
            for k in range(len(shape)):
                G[k][sl[k]] += g[k]
            cgrad += c
            sums += s
        for g, gr in zip(G, G_ref):
            assert_close(g, gr)
        assert_close(cgrad, c_ref)
        assert sums[0] / (2 * p) == pytest.approx(loss, rel=RTOL)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    d=st.integers(2, 4),
    n=st.integers(1, 7),
    r=st.integers(1, 3),
    p=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    shuffle=st.booleans(),
)
def test_chunk_pass_layouts_agree(seed, d, n, r, p, shuffle):
    """Any order, any rank, empty and full chunks: coo equals dense."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(x) for x in rng.integers(1, n + 1, size=d))
    ranks = tuple(int(x) for x in rng.integers(1, r + 1, size=d))
    Y, U, core = _problem(shape, ranks, seed=seed, p=p)
    idx, vals, _ = _coo(Y)
    if shuffle:
        perm = rng.permutation(len(vals))
        idx, vals = np.ascontiguousarray(idx[perm]), vals[perm]
    Gd, cd, sd = tk.chunk_pass(Y, U, core, 2.0)
    Gc, cc, sc = tk.chunk_pass((idx, vals, shape), U, core, 2.0)
    for a, b in zip(Gc + [cc, sc], Gd + [cd, sd]):
        assert_close(a, b)
    assert tk.chunk_residual_sumsq((idx, vals, shape), U, core) == pytest.approx(
        sd[0], rel=RTOL, abs=1e-300
    )
    assert_close(tk.chunk_project((idx, vals, shape), U, 0.5), tk.chunk_project(Y, U, 0.5))


def test_chunk_pass_rejects_bad_inputs():
    Y, U, core = _problem((5, 4, 3), (2, 2, 2))
    idx, vals, shape = _coo(Y)
    with pytest.raises(ValueError, match="Factor block 1"):
        tk.chunk_pass(Y, [U[0], U[1][:3], U[2]], core, 1.0)
    with pytest.raises(ValueError, match="outside the chunk"):
        tk.chunk_pass((idx + 1, vals, shape), U, core, 1.0)
    with pytest.raises(ValueError, match="index must have shape"):
        tk.chunk_pass((idx[:, :2], vals, shape), U, core, 1.0)
    with pytest.raises(ValueError, match="tuple"):
        tk.chunk_pass((idx, vals), U, core, 1.0)


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("shape, ranks", CASES[:2])
def test_reference_pass_matches_finite_differences(shape, ranks):
    Y, U, core = _problem(shape, ranks, seed=2)
    p = 0.4
    _, G, cgrad = tk.reference_pass(Y, U, core, p)

    def loss(U, core):
        return tk.reference_pass(Y, U, core, p)[0]

    h = 1e-4
    for k in range(len(shape)):
        fd = np.zeros_like(U[k])
        for i in np.ndindex(*U[k].shape):
            Up = [u.copy() for u in U]
            Um = [u.copy() for u in U]
            Up[k][i] += h
            Um[k][i] -= h
            fd[i] = (loss(Up, core) - loss(Um, core)) / (2 * h)
        assert_close(G[k], fd, rtol=1e-6)
    fd = np.zeros_like(core)
    for i in np.ndindex(*core.shape):
        cp, cm = core.copy(), core.copy()
        cp[i] += h
        cm[i] -= h
        fd[i] = (loss(U, cp) - loss(U, cm)) / (2 * h)
    assert_close(cgrad, fd, rtol=1e-6)


# ------------------------------------------------------------------ small Grams
@pytest.mark.parametrize("shape, ranks", CASES)
def test_breve_gram_and_x_norm2(shape, ranks):
    _, U, core = _problem(shape, ranks, seed=3)
    FF = [u.T @ u for u in U]
    for k in range(len(shape)):
        Ub = breve(core, U, k)
        assert Ub.shape == (np.prod(shape) // shape[k], ranks[k])
        assert_close(tk.breve_gram(core, FF, k), Ub.T @ Ub)
    assert tk.x_norm2(core, FF) == pytest.approx(np.sum(full(core, U) ** 2), rel=RTOL)


# ------------------------------------------------------------------ spectral pieces
@pytest.mark.parametrize("shape, ranks", CASES[:2])
def test_mode_matvecs_and_project(shape, ranks, rng):
    Y, U, _ = _problem(shape, ranks, seed=4)
    Y0 = np.nan_to_num(Y, nan=0.0)
    for chunk in (Y, _coo(Y)):
        for k in range(len(shape)):
            V = rng.standard_normal((shape[k], 3))
            assert_close(tk.mode_rmatvec(chunk, k, V), unfold(Y0, k).T @ V)
            W = rng.standard_normal((Y.size // shape[k], 2))
            assert_close(tk.mode_matvec(chunk, k, W), unfold(Y0, k) @ W)
        assert_close(tk.chunk_project(chunk, U, 2.5), 2.5 * _project_einsum(Y0, U))
    with pytest.raises(ValueError, match="V must have shape"):
        tk.mode_rmatvec(Y, 0, np.ones((shape[0] + 1, 2)))
    with pytest.raises(ValueError, match="W must have shape"):
        tk.mode_matvec(_coo(Y), 1, np.ones((3, 2)))


@pytest.mark.parametrize("shape", [(12, 10, 8), (6, 5, 4, 3)])
def test_fiber_gram_sums_to_the_mode_gram(shape):
    """Over an uneven grid, per mode: the chunks of each block of the other modes (dense
    and coo mixed, given in any order) give that block's ``M_k M_kᵀ``; the blocks sum to
    ``G_k = M_k(Y0) M_k(Y0)ᵀ``, symmetric bit for bit; the BLAS form of dense chunks
    (``dense=True``) gives the same."""
    Y, _, _ = _problem(shape, (1,) * len(shape), seed=6)
    Y0 = np.nan_to_num(Y, nan=0.0)
    bounds = [_split(n, 2 + (j % 2)) for j, n in enumerate(shape)]
    cells = list(itertools.product(*[range(len(b) - 1) for b in bounds]))
    for k in range(len(shape)):
        G = np.zeros((shape[k], shape[k]))
        others = {tuple(c[j] for j in range(len(shape)) if j != k) for c in cells}
        for key in sorted(others):
            parts = []
            for c in cells:
                if tuple(c[j] for j in range(len(shape)) if j != k) != key:
                    continue
                sl = tuple(slice(b[i], b[i + 1]) for b, i in zip(bounds, c))
                chunk = Y[sl] if c[k] % 2 else _coo(Y[sl])
                parts.append((chunk, bounds[k][c[k]]))
            Gc = tk.fiber_gram(parts[::-1], k, shape[k])
            np.testing.assert_array_equal(Gc, Gc.T)
            dense = [(c if isinstance(c, np.ndarray) else _dense_of(c), o) for c, o in parts]
            assert_close(tk.fiber_gram(dense, k, shape[k], dense=True), Gc)
            G += Gc
        Yk = unfold(Y0, k)
        assert_close(G, Yk @ Yk.T)


def _dense_of(coo):
    index, values, shape = coo
    Y = np.full(shape, np.nan)
    Y[tuple(index.T)] = values
    return Y


@pytest.mark.parametrize("shape", [(12, 10, 8), (6, 5, 4, 3)])
def test_chunk_stats(shape):
    Y, _, _ = _problem(shape, (1,) * len(shape), seed=5)
    obs = ~np.isnan(Y)
    Y0 = np.nan_to_num(Y, nan=0.0)
    for chunk in (Y, _coo(Y)):
        nnz, sumsq, rowsq, counts = tk.chunk_stats(chunk)
        assert nnz == obs.sum()
        assert sumsq == pytest.approx(np.sum(Y0**2), rel=RTOL)
        for k in range(len(shape)):
            assert_close(rowsq[k], np.diag(unfold(Y0, k) @ unfold(Y0, k).T))
            assert counts[k].dtype == np.int64
            np.testing.assert_array_equal(counts[k], unfold(obs, k).sum(axis=1))


def test_reference_spectral_is_exact_on_a_full_low_rank_tensor():
    core, U = datasets.tucker_instance((9, 8, 7), (3, 2, 2), kappa=4, random_state=0)
    X = datasets.tucker_tensor(core, U)
    S0, U0 = tk.reference_spectral(X, (3, 2, 2), 1.0)
    for u, u0 in zip(U, U0):
        assert_close(u0 @ u0.T, u @ u.T, rtol=1e-10)  # same subspaces
    assert_close(full(S0, U0), X, rtol=1e-10)


# ------------------------------------------------------------------ predict
def test_predict(monkeypatch, rng):
    shape, ranks = (12, 10, 8, 3), (2, 3, 2, 2)
    _, U, core = _problem(shape, ranks, seed=6)
    X = full(core, U)
    idx = np.stack([rng.integers(0, n, 1000) for n in shape], axis=1)
    monkeypatch.setattr(tk, "PREDICT_BATCH", 128)  # several batches
    assert_close(tk.predict(idx, U, core), X[tuple(idx.T)])
    assert tk.predict(idx[:0], U, core).shape == (0,)
    with pytest.raises(ValueError, match="outside the tensor"):
        tk.predict(idx + np.array([0, 0, 0, 1]), U, core)
    with pytest.raises(ValueError, match="index must have shape"):
        tk.predict(idx[:, :3], U, core)


# ------------------------------------------------------------------ instances
def test_tucker_instance():
    shape, ranks = (30, 20, 10), (4, 3, 2)
    core, U = datasets.tucker_instance(shape, ranks, kappa=5, random_state=0)
    core2, _ = datasets.tucker_instance(shape, ranks, kappa=5, random_state=0)
    np.testing.assert_array_equal(core, core2)
    for u in U:
        assert_close(u.T @ u, np.eye(u.shape[1]), rtol=1e-14)
    c = np.sqrt(np.prod(shape) / ranks[0])
    s = np.linalg.svd(unfold(core, 0), compute_uv=False)
    assert_close(s, c * np.linspace(1, 1 / 5, ranks[0]))
    for basis in ("rademacher", "gaussian"):  # RMS entry exactly 1 at κ = 1
        X = datasets.tucker_tensor(
            *datasets.tucker_instance(shape, ranks, basis=basis, random_state=1)
        )
        assert np.sqrt(np.mean(X**2)) == pytest.approx(1.0, rel=1e-12)


def test_tucker_instance_circulant_core_has_flat_other_modes():
    core, _ = datasets.tucker_instance((8, 8, 8, 8), 3, kappa=10, random_state=0)
    s = [np.linalg.svd(unfold(core, k), compute_uv=False) for k in range(4)]
    assert_close(s[0] / s[0][0], np.linspace(1, 0.1, 3))
    for k in range(1, 4):
        assert_close(s[k], np.full(3, s[k][0]))
    with pytest.raises(InvalidParameterError, match="equal ranks"):
        datasets.tucker_instance((8, 8, 8), (3, 2, 2), core="circulant")
    with pytest.raises(InvalidParameterError, match="prod of the"):
        datasets.tucker_instance((8, 8, 8), (5, 2, 2))
    with pytest.raises(InvalidParameterError, match="kappa"):
        datasets.tucker_instance((8, 8, 8), 2, kappa=0.5)


def test_bernoulli_mask():
    m = datasets.bernoulli_mask((40, 30, 20), 0.3, random_state=0)
    assert m.dtype == bool and m.shape == (40, 30, 20)
    assert abs(m.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / m.size)
    np.testing.assert_array_equal(m, datasets.bernoulli_mask((40, 30, 20), 0.3, random_state=0))


# ------------------------------------------------------------------ the oracle
def test_oracle_scaledgd_is_invariant_to_factor_rescaling(rng):
    shape, ranks = (12, 10, 8), (2, 3, 2)
    core_t, U_t = datasets.tucker_instance(shape, ranks, kappa=3, random_state=0)
    X = datasets.tucker_tensor(core_t, U_t)
    Y = np.where(datasets.bernoulli_mask(shape, 0.5, random_state=1), X, np.nan)
    core0, U0 = tk.reference_spectral(Y, ranks)
    Q = [np.eye(r) + 0.5 * rng.standard_normal((r, r)) for r in ranks]
    U1 = [u @ q for u, q in zip(U0, Q)]
    core1 = multi_mode_product(core0, [np.linalg.inv(q) for q in Q])
    a = oracle_tucker(Y, ranks, init=(core0, U0), max_iter=10, tol=0, keep_iterates=True)
    b = oracle_tucker(Y, ranks, init=(core1, U1), max_iter=10, tol=0, keep_iterates=True)
    assert a.n_iter == b.n_iter == 10
    for (ca, Ua), (cb, Ub) in zip(a.iterates, b.iterates):
        Xa = full(ca, Ua)
        assert np.linalg.norm(full(cb, Ub) - Xa) <= 1e-9 * np.linalg.norm(Xa)
    assert a.errors[-1] < 0.1 * a.errors[0]  # and it does move towards Y


def _counts(kappas, method="scaledgd", n=40, r=3, p=0.3, tol=1e-10, max_iter=300):
    mask = datasets.bernoulli_mask((n,) * 3, p, random_state=1)
    out = []
    for kappa in kappas:
        core, U = datasets.tucker_instance((n,) * 3, r, kappa=kappa, random_state=0)
        X = datasets.tucker_tensor(core, U)
        res = oracle_tucker(
            np.where(mask, X, np.nan), (r,) * 3, p=p, method=method, tol=tol,
            max_iter=max_iter, truth=X,
        )  # fmt: skip
        assert res.converged, (kappa, res.errors[-1])
        out.append(res.n_iter)
    return out


def test_oracle_iteration_count_is_kappa_flat():
    n1, n5 = _counts([1, 5])  # measured 88, 79
    assert abs(n5 - n1) <= 0.15 * n1, (n1, n5)


def test_oracle_gd_matches_scaledgd_at_kappa_one_and_slows_down_with_kappa():
    (s1,) = _counts([1])
    g1, g2 = _counts([1, 2], method="gd", max_iter=1000)  # measured 93, 274 (ScaledGD 88)
    assert abs(g1 - s1) <= 0.1 * s1, (s1, g1)
    assert g2 > 2 * g1, (g1, g2)
