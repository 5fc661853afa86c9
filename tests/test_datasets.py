"""Synthetic generators (ALGORITHMS.md §10)."""

from __future__ import annotations

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import InvalidParameterError
from dscaledgd.datasets import bernoulli_mask_coo, make_low_rank, spectrum


def test_spectra():
    np.testing.assert_allclose(spectrum(5, 100, "linear"), np.linspace(1, 0.01, 5))
    np.testing.assert_allclose(spectrum(3, 100, "geometric"), [1, 0.1, 0.01])
    assert spectrum(1, 10).tolist() == [1.0]


@pytest.mark.parametrize("basis", ["gaussian", "rademacher"])
def test_low_rank_structure(basis):
    t = make_low_rank((50, 30), 4, cond=20, spectrum_kind="geometric", basis=basis, random_state=1)
    assert t.shape == (50, 30) and t.rank == 4 and t.cond == pytest.approx(20)
    np.testing.assert_allclose(t.U.T @ t.U, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(np.linalg.svd(t.dense(), compute_uv=False)[:4], t.s, rtol=1e-12)
    s = make_low_rank((20, 20), 2, symmetric=True, random_state=2)
    np.testing.assert_allclose(s.dense(), s.dense().T, atol=1e-14)


def test_reproducible_and_rectangular():
    a, ta = dsg.datasets.make_completion((40, 25), 2, 0.3, cond=3, random_state=5)
    b, tb = dsg.datasets.make_completion((40, 25), 2, 0.3, cond=3, random_state=5)
    assert a.nnz == b.nnz and np.array_equal(ta.U, tb.U)
    np.testing.assert_array_equal(a.to_coo()[2], b.to_coo()[2])
    r, c, v = a.to_coo()
    np.testing.assert_allclose(v, ta.dense()[r, c], rtol=1e-13)


def test_bernoulli_mask_rate_and_symmetry():
    rng = np.random.default_rng(0)
    r, c = bernoulli_mask_coo((3000, 2000), 0.01, rng)
    n = 3000 * 2000
    # Binomial(n, p): 5 standard deviations
    assert abs(len(r) - 0.01 * n) < 5 * np.sqrt(n * 0.01 * 0.99)
    assert len(np.unique(r * 2000 + c)) == len(r)
    rs, cs = bernoulli_mask_coo((200, 200), 0.1, rng, symmetric=True)
    pairs = set(zip(rs.tolist(), cs.tolist()))
    assert all((j, i) in pairs for i, j in pairs)


def test_relative_error_is_exact_to_round_off():
    t = make_low_rank((100, 80), 3, cond=10, random_state=4)
    L = t.U * t.s
    assert t.relative_error(L, t.V) < 1e-15
    E = 1e-13 * np.ones((100, 80))
    dL = np.hstack([L, np.ones((100, 1)) * 1e-13])
    dR = np.hstack([t.V, np.ones((80, 1))])
    want = np.linalg.norm(E) / np.linalg.norm(t.s)
    assert t.relative_error(dL, dR) == pytest.approx(want, rel=1e-6)


def test_noise_and_parameter_checks():
    obs, t = dsg.datasets.make_completion((60, 60), 2, 0.5, noise=0.1, random_state=1)
    r, c, v = obs.to_coo()
    rms = np.linalg.norm(t.s) / 60
    assert np.std(v - t.dense()[r, c]) == pytest.approx(0.1 * rms, rel=0.1)
    with pytest.raises(
        InvalidParameterError, match=r"'p' parameter of make_completion must be a float in \(0, 1\]"
    ):
        dsg.datasets.make_completion((10, 10), 2, 0.0)
    with pytest.raises(InvalidParameterError, match=r"'cond' parameter of make_low_rank"):
        make_low_rank((10, 10), 2, cond=0.5)
    with pytest.raises(InvalidParameterError, match=r"'spectrum_kind' parameter"):
        make_low_rank((10, 10), 2, spectrum_kind="cubic")


def test_make_completion_store_is_bernoulli_and_solvable(tmp_path):
    obs = dsg.datasets.make_completion_store(
        tmp_path / "s.zarr", (900, 700), 3, 60_000, cond=5, tiles=(3, 2), random_state=1
    )
    assert obs.path and obs.tiles == (3, 2) and obs.shape == (900, 700)
    n = 900 * 700
    p = 60_000 / n
    assert abs(obs.nnz - 60_000) < 5 * np.sqrt(n * p * (1 - p))
    r, c, v = obs.to_coo()
    assert len(np.unique(r * 700 + c)) == obs.nnz  # no repeated positions
    again = dsg.datasets.make_completion_store(
        tmp_path / "t.zarr", (900, 700), 3, 60_000, cond=5, tiles=(3, 2), random_state=1
    )
    np.testing.assert_array_equal(again.to_coo()[2], v)  # reproducible
    res = dsg.complete(obs, 3, scheduler="threads", cache="stream", random_state=0)
    assert res.status == "converged"
