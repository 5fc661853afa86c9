"""ScaledSGD (ALGORITHMS.md §9, issue 18, first part): kernel, oracle, κ, fidelity, input.

What is checked:

* Sherman–Morrison keeps ``P`` equal to a fresh ``(XᵀX)⁻¹`` over thousands of
  updates; the Numba sample kernel equals the plain-Python oracle (``P``
  inverted afresh before every sample) to 1e-12 for every loss, repeated
  indices included; each loss's gradient matches finite differences.
* Epochs to f ≤ 1e-15 on a 30 × 30 PSD rank-3 matrix do not grow with κ
  (eigenvalues (2, 2, 2) against (10, 0.1, 0.001)), while SGD stalls at
  κ = 1e4; on the authors' stored instances (when ``../shared/data`` is
  present) the counts are within 15% of theirs.
* ``partial_fit`` on halves equals one unshuffled epoch of ``fit``; a step
  that blows up is undone and halved, never a NaN; bad input is refused.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import ConvergenceWarning, InputDataError, InvalidParameterError
from dscaledgd.problems import pairwise as pw
from dscaledgd.solvers.online import inverse_gram

from .conftest import DATA_DIR

MAT_30 = os.path.join(DATA_DIR, "scaledsgd-data", "MAT_30.mat")


def _psd(eigs, d=30, seed=0):
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((d, len(eigs))))[0]
    return (U * np.asarray(eigs)) @ U.T


def _pairs(M):
    i, j = np.indices(M.shape).reshape(2, -1)
    return i, j, M[i, j]


def _random_samples(loss, d=8, m=60, seed=0, repeats=True):
    rng = np.random.default_rng(seed)
    I, J, K = (rng.integers(0, d, m) for _ in range(3))
    if repeats:  # every kind of repeated index
        I[:3], J[:3], K[:3] = [1, 2, 3], [1, 2, 4], [5, 2, 4]
    if loss in ("bpr", "1bit"):
        Y = (rng.random(m) < 0.6).astype(float)
    else:
        Y = rng.standard_normal(m)
    if loss != "bpr":
        K = J
    return I, J, K, Y


# ------------------------------------------------------------------ kernel
def test_sherman_morrison_tracks_the_inverse_gram():
    rng = np.random.default_rng(1)
    I, J, K, Y = _random_samples("rmse", d=40, m=5000, seed=1, repeats=False)
    X = rng.standard_normal((40, 4))
    P = inverse_gram(X)
    stop = pw.run_samples(I, J, K, Y, np.arange(5000), X, P, 0.05, "rmse", True)
    assert stop == -1
    fresh = inverse_gram(X)
    assert np.max(np.abs(P - fresh)) <= 1e-9 * np.max(np.abs(fresh))
    u = rng.standard_normal(4)
    A = X.T @ X
    np.testing.assert_allclose(pw.sherman_morrison_add(fresh, u), np.linalg.inv(A + np.outer(u, u)))
    np.testing.assert_allclose(pw.sherman_morrison_remove(fresh, 0.1 * u),
                               np.linalg.inv(A - 0.01 * np.outer(u, u)))  # fmt: skip


@pytest.mark.parametrize("loss", pw.LOSSES)
@pytest.mark.parametrize("scaled", [True, False])
def test_kernel_matches_the_python_oracle(loss, scaled):
    I, J, K, Y = _random_samples(loss, seed=2)
    X0 = np.random.default_rng(3).standard_normal((8, 3))
    order = np.random.default_rng(4).permutation(len(I))
    lr = 0.02 if loss == "edm" else 0.1
    ref = pw.reference_samples(I, J, K, Y, order, X0, lr, loss, scaled)
    X = X0.copy()
    P = inverse_gram(X) if scaled else np.eye(3)
    assert pw.run_samples(I, J, K, Y, order, X, P, lr, loss, scaled) == -1
    np.testing.assert_allclose(X, ref, rtol=0, atol=1e-12 * np.max(np.abs(ref)))


@pytest.mark.parametrize("loss", pw.LOSSES)
def test_gradient_matches_finite_differences(loss):
    I, J, K, Y = _random_samples(loss, seed=5)
    rng = np.random.default_rng(6)
    X = rng.standard_normal((8, 3))
    G = pw.gradient(I, J, K, Y, X, loss)
    h = 1e-6
    for _ in range(3):
        D = rng.standard_normal(X.shape)
        fd = (pw.objective(I, J, K, Y, X + h * D, loss)
              - pw.objective(I, J, K, Y, X - h * D, loss)) / (2 * h)  # fmt: skip
        assert fd == pytest.approx(float(np.sum(G * D)), rel=1e-6, abs=1e-10)


def test_auc_counts_ordered_triplets():
    X = np.array([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    I, J, K = np.array([0, 0, 0]), np.array([1, 3, 2]), np.array([3, 1, 2])
    assert pw.auc(I, J, K, np.array([1.0, 1.0, 0.0]), X) == pytest.approx((1 + 0 + 0.5) / 3)


# ------------------------------------------------------------------ κ and fidelity
def _epochs(M, method, seed=1, epochs=120):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        res = dsg.scaled_sgd(_pairs(M), 3, method=method, step_size=0.3, epochs=epochs,
                             tol=1e-15, random_state=seed)  # fmt: skip
    return res


def test_epochs_do_not_grow_with_kappa():
    """Measured: ScaledSGD 26 / 27 epochs (κ = 1, 1e4); SGD 15 epochs at κ = 1 and still
    near 1e-8 after 120 at κ = 1e4."""
    well, ill = _psd((2.0, 2.0, 2.0)), _psd((10.0, 0.1, 0.001))
    a, b = _epochs(well, "scaledsgd"), _epochs(ill, "scaledsgd")
    assert a.status == b.status == "converged"
    assert max(a.n_iter, b.n_iter) <= 1.2 * min(a.n_iter, b.n_iter), (a.n_iter, b.n_iter)
    sgd = _epochs(ill, "sgd")
    assert sgd.status == "max_iter" and sgd.history["loss"][-1] > 1e-10
    assert _epochs(well, "sgd").status == "converged"
    assert np.max(b.history["p_drift"][1:]) < 1e-6  # measured drift of a whole epoch


@pytest.mark.data
@pytest.mark.skipif(not os.path.exists(MAT_30), reason=f"needs {MAT_30} (shared data)")
def test_fidelity_on_the_authors_instances():
    """The authors: ScaledSGD 28-29 epochs on both, SGD 14 (well) and stalling near 1e-8
    (ill). Measured here (seed 1): 26 / 26, SGD 15 and 1.0e-8 after 200."""
    from scipy.io import loadmat

    m = loadmat(MAT_30)
    for name in ("MW", "MI"):
        res = _epochs(np.asarray(m[name], dtype=float), "scaledsgd", epochs=200)
        assert res.status == "converged" and abs(res.n_iter - 28.5) <= 0.15 * 28.5, name
    well = _epochs(np.asarray(m["MW"], dtype=float), "sgd", epochs=200)
    assert abs(well.n_iter - 14) <= 0.15 * 14 + 1
    ill = _epochs(np.asarray(m["MI"], dtype=float), "sgd", epochs=200)
    assert 1e-9 < ill.history["loss"][-1] < 1e-7


# ------------------------------------------------------------------ estimator
def test_partial_fit_on_halves_equals_one_epoch_of_fit():
    M = _psd((3.0, 1.0, 0.3), d=20, seed=4)
    i, j, y = _pairs(M)
    order = np.random.default_rng(0).permutation(len(i))
    i, j, y = i[order], j[order], y[order]
    kw = {"rank": 3, "step_size": 0.2, "random_state": 7}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        whole = dsg.ScaledSGD(epochs=1, shuffle=False, **kw).fit((i, j, y))
    est = dsg.ScaledSGD(**kw)
    h = len(i) // 2
    est.partial_fit((i[:h], j[:h], y[:h])).partial_fit((i[h:], j[h:], y[h:]))
    np.testing.assert_allclose(est.X_, whole.X_, rtol=0, atol=1e-12 * np.abs(whole.X_).max())
    assert est.n_iter_ == 2 and len(est.history_["loss"]) == 2
    with pytest.raises(InvalidParameterError, match="must stay those of the first call"):
        est.set_params(rank=2).partial_fit((i[:h], j[:h], y[:h]))


def test_a_step_that_blows_up_is_undone_and_halved():
    M = _psd((10.0, 0.1, 0.001), seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        res = dsg.scaled_sgd(_pairs(M), 3, step_size=5.0, epochs=40, random_state=0)
    assert res.info["restores"] >= 1
    assert all(e["event"] == "restored" for e in res.info["events"])
    steps = res.history["step_size"][1:]
    assert steps[-1] < 5.0 and np.all(np.isfinite(res.history["loss"]))
    assert np.all(np.isfinite(np.asarray(res.L)))


def test_bpr_learns_an_ordering():
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((40, 3))
    S = Z @ Z.T
    I, J, K = (rng.integers(0, 40, 4000) for _ in range(3))
    Y = (S[I, J] > S[I, K]).astype(float)
    est = dsg.ScaledSGD(rank=3, loss="bpr", step_size=0.1, epochs=15, random_state=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dsg.ConvergenceWarning)
        est.fit((I, J, K, Y))
    assert est.history_["auc"][-1] > 0.9 > est.history_["auc"][0]
    assert est.score((I, J, K, Y)) == pytest.approx(est.history_["auc"][-1])


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "samples, kw, match",
    [
        (([0, -1], [1, 2], [1.0, 2.0]), {}, "negative"),
        (([0, 5], [1, 2], [1.0, 2.0]), {"n_rows": 4}, "outside the 4 rows"),
        (([0, 1], [1, 2], [0, 1], [1.0, 0.0]), {}, "takes pairs.*pick the loss"),
        (([0, 1], [1, 2], [1.0, 0.0]), {"loss": "bpr"}, "takes triplets"),
        (([0, 1], [1, 2], [0, 1], [1.0, 2.0]), {"loss": "bpr"}, "labels y in \\{0, 1\\}"),
        (([0, 1], [1, 2], [1.0, 0.5]), {"loss": "1bit"}, "'1bit' needs labels y in \\{0, 1\\}"),
        (([0, 1], [1, 2], [1.0, np.nan]), {}, "not finite"),
        (([0.5, 1], [1, 2], [1.0, 0.0]), {}, "must be integers"),
    ],
)
def test_bad_samples_are_refused(samples, kw, match):
    with pytest.raises(InputDataError, match=match):
        dsg.scaled_sgd(samples, 1, **kw)


@pytest.mark.parametrize(
    "kw, match",
    [({"loss": "l2"}, "'loss'"), ({"method": "adam"}, "'method'"), ({"step_size": 0}, "'step_size'"),
     ({"epochs": -1}, "'epochs'")],
)  # fmt: skip
def test_bad_parameters_are_refused(kw, match):
    with pytest.raises(InvalidParameterError, match=match):
        dsg.scaled_sgd(([0, 1, 2], [1, 2, 0], [1.0, 0.0, 2.0]), 1, **kw)
    with pytest.raises(InvalidParameterError, match="at most the number of rows"):
        dsg.scaled_sgd(([0, 1, 2], [1, 2, 0], [1.0, 0.0, 2.0]), 4)


def test_the_docs_example_runs(tmp_path, monkeypatch):
    import re
    import textwrap

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "scaled-sgd.md")) as fh:
        block, streamed, batches = re.findall(r"```python\n(.*?)```", fh.read(), re.S)[:3]
    monkeypatch.chdir(tmp_path)
    ns2: dict = {}
    with pytest.warns(ConvergenceWarning, match="max_iter=2 epochs"):  # BPR: a fixed budget
        exec(compile(streamed, "docs/scaled-sgd.md", "exec"), ns2)  # the Zarr / threads block
    res2 = ns2["res"]
    assert res2.info["executor"] == "threads" and len(res2.history["eval_auc"]) == 21
    assert res2.history["eval_auc"][-1] > res2.info["np_maximum"] + 0.2
    ns: dict = {}
    exec(compile(block, "docs/scaled-sgd.md", "exec"), ns)
    assert ns["res"].status == "converged" and ns["res"].history["loss"][-1] <= 1e-15
    est = ns["est"]
    assert est.X_.shape == (30, 3) and est.n_iter_ == 4
    assert est.history_["loss"][-1] < est.history_["loss"][0]
    ns3: dict = {}
    exec(compile(textwrap.dedent(batches), "docs/scaled-sgd.md", "exec"), ns3)
    est3 = ns3["est"]  # five batches streamed through partial_fit on threads
    assert est3.partial_info_["executor"] == "threads" and est3.n_iter_ == 5
    assert est3.history_["auc"][-1] > 0.95
