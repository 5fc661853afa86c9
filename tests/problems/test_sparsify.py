"""The sparsifiers of robust PCA: T_α as a rule object, the adaptive c-sigma rule.

Comparisons are exact (bitwise), as for T_α in test_rpca.py: thresholds are
copies of entries of |Z| times one constant, and the output holds copies of Z
or +0.0.
"""

from __future__ import annotations

import numpy as np
import pytest

from dscaledgd.problems import rpca
from dscaledgd.problems.sparsify import (
    MAD_NORMAL,
    AdaptiveThreshold,
    FixedFraction,
    Sparsifier,
    get_sparsifier,
    kth_largest,
)


def _matrix(seed, n1, n2, *, ties=False, nan_frac=0.0):
    rng = np.random.default_rng(seed)
    Z = rng.integers(-3, 4, (n1, n2)).astype(float) if ties else rng.standard_normal((n1, n2))
    Z[rng.random((n1, n2)) < nan_frac] = np.nan
    return Z


def _median_brute(line: np.ndarray) -> float:
    """The ⌈n/2⌉-th largest observed magnitude of a line, by a plain sort (inf if empty)."""
    v = np.sort(np.abs(line[~np.isnan(line)]))[::-1]
    return v[(len(v) + 1) // 2 - 1] if len(v) else np.inf


def _adaptive_brute(Z: np.ndarray, c: float) -> np.ndarray:
    r = np.array([_median_brute(row) for row in Z]) * (c / MAD_NORMAL)
    s = np.array([_median_brute(col) for col in Z.T]) * (c / MAD_NORMAL)
    A = np.abs(Z)
    keep = ~np.isnan(Z) & (A > 0) & (A >= r[:, None]) & (A >= s[None, :])
    return np.where(keep, Z, 0.0)


def _chunked(sp: Sparsifier, Z: np.ndarray, chunks, it):
    """The engine's steps on a NumPy matrix: counts, per-chunk candidates, merges, apply."""
    n1, n2 = Z.shape
    rs = [slice(a, min(a + chunks[0], n1)) for a in range(0, n1, chunks[0])]
    cs = [slice(a, min(a + chunks[1], n2)) for a in range(0, n2, chunks[1])]
    obs = ~np.isnan(Z)
    kr, kc = sp.ranks(obs.sum(axis=1), it), sp.ranks(obs.sum(axis=0), it)
    Kr, Kc = int(kr.max()), int(kc.max())
    rthr, cthr = np.empty(n1), np.empty(n2)
    for ri in rs:
        parts = [rpca.row_topk(Z[ri, cj], min(Kr, cj.stop - cj.start)) for cj in cs]
        rthr[ri] = sp.thresholds(rpca.thresholds(rpca.merge_topk(parts, Kr, 1), kr[ri], 1), it)
    for cj in cs:
        parts = [rpca.col_topk(Z[ri, cj], min(Kc, ri.stop - ri.start)) for ri in rs]
        cthr[cj] = sp.thresholds(rpca.thresholds(rpca.merge_topk(parts, Kc, 0), kc[cj], 0), it)
    S = np.empty_like(Z)
    for ri in rs:
        for cj in cs:
            S[ri, cj] = sp.apply(Z[ri, cj], rthr[ri], cthr[cj])
    return S


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.3])
@pytest.mark.parametrize("ties, nan_frac", [(False, 0.0), (True, 0.0), (True, 0.3)])
def test_fixed_fraction_is_t_alpha_then_t_2alpha(alpha, ties, nan_frac):
    Z = _matrix(1, 37, 29, ties=ties, nan_frac=nan_frac)
    sp = FixedFraction(alpha)
    np.testing.assert_array_equal(sp.dense(Z, None), rpca.t_alpha_dense(Z, alpha))
    np.testing.assert_array_equal(sp.dense(Z, 0), rpca.t_alpha_dense(Z, 2 * alpha))
    np.testing.assert_array_equal(sp.dense(Z, 7), rpca.t_alpha_dense(Z, 2 * alpha))


def test_fixed_fraction_above_one_half_caps_the_iteration_budget_at_the_line():
    Z = _matrix(2, 10, 8)
    np.testing.assert_array_equal(FixedFraction(0.6).dense(Z, 0), rpca.t_alpha_dense(Z, 1.0))


@pytest.mark.parametrize("c", [1.0, 3.0, 4.5])
@pytest.mark.parametrize("ties, nan_frac", [(False, 0.0), (True, 0.0), (False, 0.3), (True, 0.3)])
def test_adaptive_equals_brute_force(c, ties, nan_frac):
    Z = _matrix(3, 41, 33, ties=ties, nan_frac=nan_frac)
    Z[5] = np.nan  # an unobserved row: threshold +inf, nothing kept there
    got = AdaptiveThreshold(c).dense(Z)
    np.testing.assert_array_equal(got, _adaptive_brute(Z, c))
    assert not got[5].any()
    # the initialisation uses the same rule
    np.testing.assert_array_equal(AdaptiveThreshold(c).dense(Z, None), got)


@pytest.mark.parametrize("sp", [FixedFraction(0.15), AdaptiveThreshold()], ids=repr)
@pytest.mark.parametrize("chunks", [(1, 1), (41, 33), (7, 33), (41, 5), (9, 11), (13, 40)])
@pytest.mark.parametrize("ties, nan_frac", [(False, 0.0), (True, 0.25)])
def test_chunked_equals_dense_for_every_grid(sp, chunks, ties, nan_frac):
    Z = _matrix(4, 41, 33, ties=ties, nan_frac=nan_frac)
    for it in (None, 0):
        np.testing.assert_array_equal(_chunked(sp, Z, chunks, it), sp.dense(Z, it))


def test_apply_is_rpca_sparsify_for_matrices_and_broadcasts_over_tensors(rng):
    Z = rng.standard_normal((6, 5))
    Z[1, 2] = np.nan
    r, c = np.abs(rng.standard_normal(6)), np.abs(rng.standard_normal(5))
    np.testing.assert_array_equal(Sparsifier.apply(Z, r, c), rpca.sparsify(Z, r, c))
    T = rng.standard_normal((4, 3, 5))
    t = [np.abs(rng.standard_normal(n)) for n in T.shape]
    thr = np.maximum(np.maximum(t[0][:, None, None], t[1][None, :, None]), t[2][None, None, :])
    np.testing.assert_array_equal(Sparsifier.apply(T, *t), np.where(np.abs(T) >= thr, T, 0.0))
    with pytest.raises(ValueError, match="need 2 threshold arrays"):
        Sparsifier.apply(Z, r)
    with pytest.raises(ValueError, match=r"thresholds of axis 1 must have shape \(5,\)"):
        Sparsifier.apply(Z, r, r)


def test_adaptive_on_tensors_uses_slices():
    T = _matrix(5, 6, 20).reshape(6, 4, 5)
    sp = AdaptiveThreshold()
    thr = [
        np.array([_median_brute(np.moveaxis(T, a, 0)[i].ravel()) for i in range(T.shape[a])])
        * (3 / MAD_NORMAL)
        for a in range(3)
    ]
    np.testing.assert_array_equal(sp.dense(T), Sparsifier.apply(T, *thr))


@pytest.mark.parametrize("sp", [FixedFraction(0.1), AdaptiveThreshold()], ids=repr)
def test_scale_free(sp):
    """𝒮(s Z) = s 𝒮(Z): powers of two scale exactly, so the equality is bitwise."""
    Z = _matrix(6, 30, 20)
    for s in (2.0**-40, 2.0**30):
        np.testing.assert_array_equal(sp.dense(s * Z), s * sp.dense(Z))


def test_adaptive_recovers_the_support_and_follows_the_fit():
    """Z = E + S* with E Gaussian at any scale σ: every outlier beyond 6σ is found, few
    clean entries are taken (P(|N| > 3) ≈ 0.27%, times the row-and-column rule), and at
    the exact fit (E = 0) S = S* exactly: the threshold shrinks with the error."""
    rng = np.random.default_rng(7)
    n1, n2 = 200, 150
    out = rng.random((n1, n2)) < 0.1
    S_star = np.where(out, 10 * rng.standard_normal((n1, n2)), 0.0)
    np.testing.assert_array_equal(AdaptiveThreshold().dense(S_star), S_star)
    for sigma in (1e-1, 1e-4, 1e-8):
        E = sigma * rng.standard_normal((n1, n2))
        S = AdaptiveThreshold().dense(E + S_star)
        big = out & (np.abs(S_star) > 6 * sigma)
        assert np.all(S[big] == (E + S_star)[big])
        assert np.count_nonzero(S[~out]) < 0.005 * np.count_nonzero(~out)


def test_kth_largest():
    Z = np.array([[1.0, -5.0, np.nan, 3.0], [np.nan, np.nan, np.nan, np.nan]])
    np.testing.assert_array_equal(kth_largest(Z, 0, [2, 0]), [3.0, np.inf])
    np.testing.assert_array_equal(kth_largest(Z, 1, [1, 1, 0, 1]), [1.0, 5.0, np.inf, 3.0])


def test_params_repr_and_lookup():
    assert AdaptiveThreshold().params() == {"c": 3.0}
    assert repr(FixedFraction(0.1)) == "FixedFraction(alpha=0.1)"
    assert get_sparsifier("adaptive") == AdaptiveThreshold()
    assert get_sparsifier("fraction", 0.2) == FixedFraction(0.2)
    sp = AdaptiveThreshold(4.0)
    assert get_sparsifier(sp) is sp
    with pytest.raises(ValueError, match="needs alpha"):
        get_sparsifier("fraction")
    with pytest.raises(ValueError, match="unknown sparsifier 'soft'"):
        get_sparsifier("soft")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="c must be a positive number"):
            AdaptiveThreshold(bad)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
            FixedFraction(bad)
