"""The RPCA sparsifier T_α (dense, chunked, brute force) and the soft threshold.

All T_α comparisons are exact (bitwise): the thresholds are copies of entries
of |Z| and the output holds copies of Z or +0.0, so no rounding is involved and
any tolerance would hide a wrong tie or missing-entry rule.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dscaledgd.problems import rpca

ALPHAS = [0.05, 0.1, 0.3]


# --------------------------------------------------------------------------- helpers
def _k_exact(count: int, alpha: float) -> int:
    """⌊α · count⌋ on the decimal value of α (independent of topk_sizes)."""
    return math.floor(Fraction(repr(alpha)) * count)


def _brute_keep(Z: np.ndarray, alpha: float) -> np.ndarray:
    """Keep-mask from the rank definition, by counting strictly larger magnitudes.

    Z_ij is kept iff it is observed, |Z_ij| > 0, fewer than k_r,i observed
    entries of its row and fewer than k_c,j observed entries of its column are
    strictly larger in magnitude. This is the ">= k-th largest" rule: if v is
    the k-th largest (with multiplicity) and |z| >= v, every entry strictly
    larger than |z| is strictly larger than v, and at most k - 1 entries are;
    if |z| < v, the k largest entries are all >= v > |z|, so at least k are
    strictly larger. With k = 0 the count (>= 0) is never < 0: nothing kept.
    """
    A = np.abs(Z)
    obs = ~np.isnan(Z)
    Af = np.where(obs, A, -np.inf)  # missing never counts as larger
    row_larger = (Af[:, None, :] > A[:, :, None]).sum(axis=2)  # [i, j] = #{l: |Z_il| > |Z_ij|}
    col_larger = (Af[None, :, :] > A[:, None, :]).sum(axis=1)  # [i, j] = #{l: |Z_lj| > |Z_ij|}
    k_r = np.array([_k_exact(int(c), alpha) for c in obs.sum(axis=1)])
    k_c = np.array([_k_exact(int(c), alpha) for c in obs.sum(axis=0)])
    return obs & (A > 0) & (row_larger < k_r[:, None]) & (col_larger < k_c[None, :])


def _matrix(seed: int, n1: int, n2: int, *, ties: bool, nan_frac: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if ties:
        Z = rng.integers(-2, 3, size=(n1, n2)).astype(np.float64)
    else:
        Z = rng.standard_normal((n1, n2))
    if nan_frac:
        Z[rng.random((n1, n2)) < nan_frac] = np.nan
    return Z


def _assert_bitwise(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype == np.float64
    assert a.shape == b.shape
    assert a.tobytes() == b.tobytes(), np.argwhere(a.view(np.int64) != b.view(np.int64))[:5]


def assert_matches_dense_reference(
    Z: np.ndarray, alpha: float, chunks: tuple[int, int]
) -> np.ndarray:
    S = rpca.t_alpha_dense(Z, alpha)
    _assert_bitwise(rpca.t_alpha_chunked(Z, alpha, chunks), S)
    keep = _brute_keep(Z, alpha)
    np.testing.assert_array_equal(S != 0, keep)
    np.testing.assert_array_equal(S[keep], Z[keep])
    assert not np.signbit(S[~keep]).any()  # +0.0 off the support, never NaN
    return S


# --------------------------------------------------------------------------- budgets
def test_topk_sizes_decimal_floor():
    assert rpca.topk_sizes([100, 10, 3, 0], 0.29).tolist() == [29, 2, 0, 0]
    assert 0.29 * 100 < 29  # the binary product would floor to 28
    assert rpca.topk_sizes([3, 7], 0.5).tolist() == [1, 3]
    assert rpca.topk_sizes([5], 1.0).tolist() == [5]
    assert rpca.topk_sizes([5], 0.0).tolist() == [0]
    counts = np.arange(0, 2001)
    for alpha in [0.01, 0.05, 0.07, 0.1, 0.15, 0.2, 0.29, 0.3, 0.33, 0.57, 0.7, 0.9]:
        expected = [_k_exact(int(c), alpha) for c in counts]
        assert rpca.topk_sizes(counts, alpha).tolist() == expected, alpha


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_out_of_range_raises(alpha):
    with pytest.raises(ValueError, match="alpha must be in"):
        rpca.topk_sizes([10], alpha)
    with pytest.raises(ValueError, match="alpha must be in"):
        rpca.t_alpha_dense(np.ones((2, 2)), alpha)


def test_observed_counts():
    Z = np.array([[1.0, np.nan, 0.0], [np.nan, np.nan, -2.0]])
    r, c = rpca.observed_counts(Z)
    assert r.tolist() == [2, 1] and c.tolist() == [1, 0, 2]
    assert r.dtype == c.dtype == np.int64


# --------------------------------------------------------------------------- per-chunk pieces
def _topk_reference(Z: np.ndarray, k: int) -> np.ndarray:
    A = np.where(np.isnan(Z), -np.inf, np.abs(Z))
    full = -np.sort(-A, axis=1)
    pad = np.full((Z.shape[0], max(k - Z.shape[1], 0)), -np.inf)
    return np.concatenate([full, pad], axis=1)[:, :k]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    m=st.integers(0, 12),
    n=st.integers(0, 12),
    k=st.integers(0, 15),
    ties=st.booleans(),
    nan_frac=st.sampled_from([0.0, 0.4]),
)
def test_row_col_topk_against_full_sort(seed, m, n, k, ties, nan_frac):
    Z = _matrix(seed, m, n, ties=ties, nan_frac=nan_frac)
    Z_before = Z.copy()
    top = rpca.row_topk(Z, k)
    _assert_bitwise(top, _topk_reference(Z, k))
    _assert_bitwise(rpca.col_topk(Z, k), np.ascontiguousarray(_topk_reference(Z.T, k).T))
    np.testing.assert_array_equal(Z, Z_before)  # input untouched (partition is on a copy)


def test_topk_partition_path_keeps_duplicates():
    Z = np.array([[1.0, -3.0, 3.0, 2.0, np.nan, -3.0, 0.5]])
    assert rpca.row_topk(Z, 2).tolist() == [[3.0, 3.0]]
    assert rpca.row_topk(Z, 4).tolist() == [[3.0, 3.0, 3.0, 2.0]]
    assert rpca.row_topk(Z, 8).tolist() == [[3.0, 3.0, 3.0, 2.0, 1.0, 0.5, -np.inf, -np.inf]]
    assert rpca.col_topk(Z.T, 2).tolist() == [[3.0], [3.0]]
    assert rpca.row_topk(Z, 0).shape == (1, 0)


def test_topk_rejects_bad_input():
    with pytest.raises(ValueError, match="k must be >= 0"):
        rpca.row_topk(np.ones((2, 2)), -1)
    with pytest.raises(ValueError, match="must be a 2-D array"):
        rpca.col_topk(np.ones(3), 1)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    widths=st.lists(st.integers(0, 5), min_size=3, max_size=3),
    k=st.integers(0, 8),
    axis=st.sampled_from([0, 1]),
)
def test_merge_topk_associative_commutative(seed, widths, k, axis):
    rng = np.random.default_rng(seed)
    vals = np.array([-np.inf, 0.0, 1.0, 2.0, 2.5])  # many ties and padding values
    m = 3
    parts = []
    for w in widths:
        p = rng.choice(vals, size=(m, w))
        parts.append(p if axis == 1 else np.ascontiguousarray(p.T))
    a, b, c = parts
    whole = rpca.merge_topk([a, b, c], k, axis)
    left = rpca.merge_topk([rpca.merge_topk([a, b], k, axis), c], k, axis)
    right = rpca.merge_topk([a, rpca.merge_topk([b, c], k, axis)], k, axis)
    swapped = rpca.merge_topk([c, a, b], k, axis)
    for other in (left, right, swapped):
        _assert_bitwise(other, whole)
    # and it is the top k of the multiset union (values are magnitudes already: no abs)
    cat = np.concatenate(parts, axis=axis)
    cat = cat if axis == 1 else cat.T
    full = np.concatenate([-np.sort(-cat, axis=1), np.full((m, k), -np.inf)], axis=1)
    ref = full[:, :k]
    _assert_bitwise(whole, ref if axis == 1 else np.ascontiguousarray(ref.T))


def test_merge_topk_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one part"):
        rpca.merge_topk([], 2, axis=1)
    with pytest.raises(ValueError, match="axis must be 0"):
        rpca.merge_topk([np.ones((2, 2))], 2, axis=2)
    with pytest.raises(ValueError, match="disagree on the non-candidate dimension"):
        rpca.merge_topk([np.ones((2, 2)), np.ones((3, 2))], 2, axis=1)


def test_thresholds_rules():
    inf = np.inf
    top = np.array(
        [
            [5.0, 3.0, 3.0],  # k = 2 -> 3 (k-th largest, a tied value)
            [2.0, 1.0, -inf],  # k = 3 > 2 observed -> smallest observed, 1
            [-inf, -inf, -inf],  # nothing observed -> +inf
            [4.0, 4.0, 4.0],  # k = 0 -> +inf
        ]
    )
    k = np.array([2, 3, 1, 0])
    np.testing.assert_array_equal(rpca.thresholds(top, k, axis=1), [3.0, 1.0, inf, inf])
    np.testing.assert_array_equal(rpca.thresholds(top.T, k, axis=0), [3.0, 1.0, inf, inf])
    np.testing.assert_array_equal(rpca.thresholds(top, 1, axis=1), [5.0, 2.0, inf, 4.0])
    np.testing.assert_array_equal(rpca.thresholds(top[:, :0], 0, axis=1), [inf] * 4)
    with pytest.raises(ValueError, match="Compute the candidates with k >= max"):
        rpca.thresholds(top, 4, axis=1)
    with pytest.raises(ValueError, match="axis must be 0"):
        rpca.thresholds(top, 1, axis=-1)


def test_thresholds_fewer_observed_than_k_keeps_every_observed_entry():
    # A row with 2 observed entries and an explicit budget k = 3: both survive the row rule.
    Z = np.array([[0.5, np.nan, 2.0, np.nan]])
    thr = rpca.thresholds(rpca.row_topk(Z, 3), 3, axis=1)
    S = rpca.sparsify(Z, thr, np.zeros(4))
    np.testing.assert_array_equal(S, [[0.5, 0.0, 2.0, 0.0]])


def test_sparsify_rule_and_shapes():
    Z = np.array([[3.0, -2.0, 0.0, np.nan], [-1.0, 2.0, -0.0, 5.0]])
    S = rpca.sparsify(Z, [2.0, 1.0], [0.0, 2.0, 0.0, 9.0])
    np.testing.assert_array_equal(S, [[3.0, -2.0, 0.0, 0.0], [-1.0, 2.0, 0.0, 0.0]])
    assert not np.signbit(S[:, 2]).any()  # |z| = 0 is never kept, -0.0 becomes +0.0
    S0 = rpca.sparsify(Z, [0.0, 0.0], [0.0] * 4)  # zero thresholds: only |z| > 0 drops zeros
    np.testing.assert_array_equal(S0, np.nan_to_num(Z, nan=0.0))
    assert not np.signbit(S0[S0 == 0]).any()
    with pytest.raises(ValueError, match="row_thr and col_thr must have shapes"):
        rpca.sparsify(Z, [1.0], [0.0] * 4)


# --------------------------------------------------------------------------- T_alpha
@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n1=st.integers(1, 30),
    n2=st.integers(1, 30),
    alpha=st.sampled_from(ALPHAS),
    ties=st.booleans(),
    nan_frac=st.sampled_from([0.0, 0.3]),
    data=st.data(),
)
def test_chunked_equals_dense_and_brute_force(seed, n1, n2, alpha, ties, nan_frac, data):
    b1 = data.draw(st.integers(1, n1 + 2), label="b1")
    b2 = data.draw(st.integers(1, n2 + 2), label="b2")
    Z = _matrix(seed, n1, n2, ties=ties, nan_frac=nan_frac)
    assert_matches_dense_reference(Z, alpha, (b1, b2))


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("nan_frac", [0.0, 0.3])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("chunks", [(1, 1), (1, 47), (40, 1), (7, 11), (40, 47), (13, 50)])
def test_chunked_fixed_grid(alpha, nan_frac, ties, chunks):
    # 40 x 47 so every alpha gives k > 0; 7 and 11 and 13 do not divide the shape.
    Z = _matrix(2024, 40, 47, ties=ties, nan_frac=nan_frac)
    S = assert_matches_dense_reference(Z, alpha, chunks)
    assert np.count_nonzero(S) > 0  # the comparison is not vacuous


def test_ties_all_equal_row_keeps_everything_passing_the_column_rule(rng):
    n1, n2, alpha = 20, 30, 0.1  # k_r = 3, k_c = 2
    Z = rng.uniform(-1.0, 1.0, size=(n1, n2))
    Z[0] = 5.0 * rng.choice([-1.0, 1.0], size=n2)  # all-equal magnitudes, largest in every column
    S = assert_matches_dense_reference(Z, alpha, (6, 7))
    np.testing.assert_array_equal(S[0], Z[0])  # 30 kept although k_r = 3
    # the same along columns
    S_t = assert_matches_dense_reference(np.ascontiguousarray(Z.T), alpha, (7, 6))
    np.testing.assert_array_equal(S_t[:, 0], Z[0])


def test_ties_constant_and_zero_matrices():
    ones = -np.ones((9, 13))
    _assert_bitwise(
        rpca.t_alpha_chunked(ones, 0.2, (4, 5)), ones
    )  # every entry ties its thresholds
    # All thresholds are 0 here, so only the |z| > 0 rule drops the entries: -0.0 in, +0.0 out.
    neg_zeros = np.full((9, 13), -0.0)
    _assert_bitwise(rpca.t_alpha_chunked(neg_zeros, 0.5, (4, 5)), np.zeros((9, 13)))
    _assert_bitwise(rpca.t_alpha_dense(neg_zeros, 0.5), np.zeros((9, 13)))


@pytest.mark.parametrize("alpha", [0.0, 0.01])
def test_k_zero_keeps_nothing(rng, alpha):
    Z = 100.0 * rng.standard_normal((40, 60))  # floor(0.01 * 60) = 0
    _assert_bitwise(rpca.t_alpha_dense(Z, alpha), np.zeros_like(Z))
    _assert_bitwise(rpca.t_alpha_chunked(Z, alpha, (7, 9)), np.zeros_like(Z))


def test_k_zero_on_one_axis_only(rng):
    # k_c = floor(0.1 * 5) = 0 for the columns, k_r = floor(0.1 * 80) = 8 for the rows.
    Z = rng.standard_normal((5, 80))
    _assert_bitwise(rpca.t_alpha_chunked(Z, 0.1, (2, 9)), np.zeros_like(Z))


def test_planted_exact_support_when_every_line_has_k_outliers(rng):
    # n = 50, alpha = 0.1: k = 5 outliers in every row and column (circulant pattern).
    # Outliers have magnitude >= 10, the noise < 1 (0.1 * N(0,1) exceeds 1 with probability
    # ~1e-23 per entry), so every threshold is the smallest outlier of its line.
    n, alpha = 50, 0.1
    noise = 0.1 * rng.standard_normal((n, n))
    S_star = np.zeros((n, n))
    i = np.arange(n)
    for t in range(5):
        S_star[i, (i + 7 * t) % n] = rng.choice([-1.0, 1.0], n) * rng.uniform(10.0, 20.0, n)
    Y = noise + S_star
    S = assert_matches_dense_reference(Y, alpha, (16, 9))
    np.testing.assert_array_equal(S != 0, S_star != 0)
    np.testing.assert_array_equal(S[S_star != 0], Y[S_star != 0])


@pytest.mark.parametrize("nan_frac", [0.0, 0.2])
def test_planted_support_contained_when_counts_below_k(rng, nan_frac):
    # With fewer than k outliers in a line, T_alpha keeps them all, plus the largest noise
    # entries of that line up to the budget: a superset of supp(S*) with at most k_r per row
    # and k_c per column (continuous noise: no ties, almost surely).
    n1, n2, alpha = 60, 80, 0.1
    Y = 0.1 * rng.standard_normal((n1, n2))
    support = rng.random((n1, n2)) < 0.03
    obs = rng.random((n1, n2)) >= nan_frac
    support &= obs
    k_r = rpca.topk_sizes(obs.sum(axis=1), alpha)
    k_c = rpca.topk_sizes(obs.sum(axis=0), alpha)
    for i in range(n1):  # thin out to at most k_r - 1 per row
        extra = np.flatnonzero(support[i])[max(k_r[i] - 1, 0) :]
        support[i, extra] = False
    for j in range(n2):
        extra = np.flatnonzero(support[:, j])[max(k_c[j] - 1, 0) :]
        support[extra, j] = False
    assert support.sum() > 20
    Y[support] += rng.choice([-1.0, 1.0], support.sum()) * rng.uniform(10.0, 20.0, support.sum())
    Y[~obs] = np.nan
    S = assert_matches_dense_reference(Y, alpha, (11, 13))
    kept = S != 0
    assert np.all(kept[support])  # every outlier recovered
    np.testing.assert_array_equal(S[support], Y[support])
    assert np.all(kept.sum(axis=1) <= k_r) and np.all(kept.sum(axis=0) <= k_c)
    assert not np.any(kept & ~obs)


def test_chunked_rejects_bad_chunks():
    with pytest.raises(ValueError, match="chunk sizes must be positive"):
        rpca.t_alpha_chunked(np.ones((3, 3)), 0.5, (0, 2))


# --------------------------------------------------------------------------- soft threshold
@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), zeta=st.floats(0.0, 3.0))
def test_soft_threshold_formula(seed, zeta):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(200) * 2.0
    x[:5] = [zeta, -zeta, 0.0, -0.0, np.nan]  # boundary values and a missing one
    out = rpca.soft_threshold(x, zeta)
    with np.errstate(invalid="ignore"):
        expected = np.sign(x) * np.maximum(np.abs(x) - zeta, 0.0)
    # exact: x - clip(x, -ζ, ζ) performs the same single rounding as sign(x)(|x| - ζ)
    np.testing.assert_array_equal(out, expected)
    assert np.isnan(out[4]) and np.isnan(out).sum() == 1
    finite = ~np.isnan(out)
    assert not np.signbit(out[finite & (out == 0)]).any()  # +0.0 inside the dead zone


def test_soft_threshold_values_and_broadcast():
    x = np.array([[3.0, -0.5, -2.0, np.nan], [0.25, -4.0, 1.0, 2.0]])
    zeta = np.array([[1.0], [0.5]])
    out = rpca.soft_threshold(x, zeta)
    np.testing.assert_array_equal(out, [[2.0, 0.0, -1.0, np.nan], [0.0, -3.5, 0.5, 1.5]])
    np.testing.assert_array_equal(rpca.soft_threshold(x, 0.0), x)  # ζ = 0 is the identity
    with pytest.raises(ValueError, match="zeta must be non-negative"):
        rpca.soft_threshold(x, -0.1)
