"""Estimators are thin: every parameter is forwarded to the function."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import api


def test_matrix_completion_forwards_every_parameter(monkeypatch):
    est_params = dsg.MatrixCompletion().get_params()
    fn_params = set(inspect.signature(api.complete).parameters) - {"obs", "_oracle"}
    assert set(est_params) == fn_params
    seen = {}

    def fake(obs, **kw):
        seen.update(kw)
        raise RuntimeError("stop")

    monkeypatch.setattr(api, "complete", fake)
    sentinel = {name: object() for name in est_params}
    est = dsg.MatrixCompletion(**sentinel)
    with pytest.raises(RuntimeError, match="stop"):
        est.fit(None)
    assert all(seen[k] is v for k, v in sentinel.items())


def test_fit_sets_attributes_and_predicts():
    obs, truth = dsg.datasets.make_completion((60, 50), 2, 0.5, random_state=0)
    est = dsg.MatrixCompletion(rank=2, scheduler="sync", random_state=0)
    assert not hasattr(est, "n_iter_")
    assert est.fit(obs) is est
    assert est.converged_ and est.n_iter_ == est.result_.n_iter > 0
    assert est.L_.shape == (60, 2) and est.R_.shape == (50, 2)
    assert set(est.history_) >= {"loss", "residual", "step_size", "time"}
    np.testing.assert_allclose(est.predict([3], [4]), truth.dense()[3, 4], atol=1e-9)
    assert est.score(obs) == pytest.approx(-est.result_.rmse(obs))
    assert "MatrixCompletion(rank=2" in repr(est)
    with pytest.raises(ValueError, match="Invalid parameter 'rnak'"):
        est.set_params(rnak=3)
    assert est.set_params(rank=3).rank == 3


@pytest.mark.parametrize(
    "est, call",
    [
        (dsg.MatrixCompletion(rank=2), lambda e: e.predict([0], [0])),
        (dsg.MatrixCompletion(rank=2), lambda e: e.score(None)),
        (dsg.RobustPCA(rank=2), lambda e: e.transform()),
    ],
    ids=["predict", "score", "transform"],
)
def test_unfitted_estimators_raise_not_fitted_error(est, call):
    name = type(est).__name__
    with pytest.raises(
        dsg.NotFittedError,
        match=rf"^This {name} instance is not fitted yet\. Call 'fit' with appropriate "
        r"arguments before using this estimator\.$",
    ) as exc:
        call(est)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, AttributeError)
