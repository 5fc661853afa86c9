"""Inputs a new user hits first: each ends in one clear error, or is fitted correctly.

A DataFrame with a text column, an integer mask, values so tiny that their
squares underflow or so large that they overflow, a negative pair index,
``dir(dscaledgd)`` and ``dscaledgd info | head``. pytest turns warnings into
errors here, so a raw ``RuntimeWarning`` before the error fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import dask.array as da
import numpy as np
import pandas as pd
import pytest

import dscaledgd as dsg
from dscaledgd import InputDataError


@pytest.fixture(scope="module")
def D():
    rng = np.random.default_rng(0)
    return rng.standard_normal((30, 3)) @ rng.standard_normal((3, 20))


@pytest.fixture(scope="module")
def T():
    rng = np.random.default_rng(1)
    core = rng.standard_normal((2, 2, 2))
    U = [np.linalg.qr(rng.standard_normal((n, 2)))[0] for n in (8, 7, 6)]
    return np.einsum("abc,ia,jb,kc->ijk", core, *U) * 10


# ------------------------------------------------------- 1. a DataFrame with text
def test_rpca_names_a_text_column_of_a_dataframe(D):
    frame = pd.DataFrame(D).assign(name="a")
    match = (
        r"The 'Y' parameter of rpca has dtype object and Y\[0, 20\] = 'a' is not a real "
        r"number.*non-numeric DataFrame columns: 'name'; drop them"
    )
    with pytest.raises(InputDataError, match=match):
        dsg.rpca(frame, 3, scheduler="sync")
    with pytest.raises(InputDataError, match=r"The 'M' parameter of from_dense .*'name'"):
        dsg.Observations.from_dense(frame)
    with pytest.raises(InputDataError, match=r"The 'Y' parameter of rpca must hold real"):
        dsg.rpca(da.from_array(np.full((4, 5), "x")), 2, scheduler="sync")


def test_rpca_takes_a_numeric_dataframe(D):
    res = dsg.rpca(pd.DataFrame(D), 3, scheduler="sync", random_state=0)
    assert res.status == "converged"


def test_sense_names_text_measurements():
    A = dsg.GaussianSensing((6, 5), 40, random_state=0)
    with pytest.raises(InputDataError, match=r"The 'y' parameter of sense .* y\[3\] = 'a'"):
        dsg.sense(np.array([1.0, 2.0, 3.0, "a"] + [0.0] * 36, dtype=object), A, 2)


# ----------------------------------------------------------- 2. the mask's dtype
_INT_MASK = (
    r"The 'mask' parameter of {} must be boolean \(True = observed\); got dtype int64\. "
    r"Convert it with mask\.astype\(bool\)"
)


def test_an_integer_mask_is_refused_alike_everywhere(D, T):
    m, tm = np.ones(D.shape, int), np.ones(T.shape, int)
    with pytest.raises(InputDataError, match=_INT_MASK.format("from_dense")):
        dsg.Observations.from_dense(D, mask=m)
    with pytest.raises(InputDataError, match=_INT_MASK.format("from_dense")):
        dsg.Observations.from_dense(da.from_array(D, chunks=10), mask=da.from_array(m, chunks=10))
    with pytest.raises(InputDataError, match=_INT_MASK.format("from_array")):
        dsg.TensorObservations.from_array(T, mask=tm)
    with pytest.raises(InputDataError, match=_INT_MASK.format("rpca")):
        dsg.rpca(D, 3, mask=m, scheduler="sync")
    assert dsg.Observations.from_dense(D, mask=m.astype(bool)).nnz == D.size
    assert dsg.TensorObservations.from_array(T, mask=tm != 0).nnz == T.size


# ------------------------------------------------------ 3. tiny nonzero values
_TINY = r"{}: the observed (values|entries of Y) are too small for float64 .* Rescale the data"


def test_tiny_values_are_not_called_zero(D, T):
    tiny = 1e-173
    with pytest.raises(InputDataError, match=_TINY.format("complete")):
        dsg.complete(dsg.Observations.from_dense(D * tiny), 3, scheduler="sync")
    with pytest.raises(InputDataError, match=_TINY.format("rpca")):
        dsg.rpca(D * tiny, 3, scheduler="sync")
    with pytest.raises(InputDataError, match=_TINY.format("rpca")):
        dsg.rpca(da.from_array(D * tiny, chunks=10), 3, scheduler="sync")
    with pytest.raises(InputDataError, match=_TINY.format("tucker_complete")):
        dsg.tucker_complete(T * tiny, (2, 2, 2), scheduler="sync")
    with pytest.raises(InputDataError, match=_TINY.format("tensor_rpca")):
        dsg.tensor_rpca(T * tiny, (2, 2, 2), scheduler="sync")
    A = dsg.GaussianSensing((6, 5), 40, random_state=0)
    with pytest.raises(InputDataError, match=r"sense: the measurements y are too small"):
        dsg.sense(np.full(40, tiny), A, 2, scheduler="sync")


def test_zero_is_decided_exactly(D):
    """One entry that is not 0 among zeros: not "every observed value is 0"."""
    Z = np.zeros_like(D)
    res = dsg.complete(dsg.Observations.from_dense(Z), 3, scheduler="sync")
    assert "every observed value is 0" in res.message
    Z[4, 5] = 1e-200
    with pytest.raises(InputDataError, match=r"the largest \|value\| is 1e-200"):
        dsg.complete(dsg.Observations.from_dense(Z), 3, scheduler="sync")


def test_small_but_representable_values_are_fitted(D):
    res = dsg.rpca(D * 1e-140, 3, scheduler="sync", random_state=0)
    X = res.L.compute() @ res.R.compute().T
    assert np.linalg.norm(X - D * 1e-140) <= 1e-8 * np.linalg.norm(D * 1e-140)


# ------------------------------------------------------- 4. huge values
_HUGE = r"{}: the sum of squares of the observed values overflows float64 .* Rescale the data"


def test_huge_values_give_only_the_clear_error(D, T):
    """No ``RuntimeWarning: overflow`` first (warnings are errors here)."""
    huge = 1e160
    obs = dsg.Observations.from_dense(D * huge)
    with pytest.raises(InputDataError, match=_HUGE.format("complete")):
        dsg.complete(obs, 3, scheduler="sync")
    r, c, v = obs.to_coo()
    with pytest.raises(InputDataError, match=_HUGE.format("complete")):
        dsg.complete(dsg.Observations.from_coo(r, c, v, shape=D.shape), 3, scheduler="sync")
    with pytest.raises(InputDataError, match=_HUGE.format("tucker_complete")):
        dsg.tucker_complete(T * huge, (2, 2, 2), scheduler="sync")
    with pytest.raises(InputDataError, match=_HUGE.format("tensor_rpca")):
        dsg.tensor_rpca(T * huge, (2, 2, 2), scheduler="sync")


def test_huge_values_are_not_written_as_a_corrupt_store(D, T, tmp_path):
    match = r"sum of squares of the observed values overflows float64 .* Rescale the data"
    with pytest.raises(InputDataError, match=match):
        dsg.Observations.from_dense(D * 1e160).to_zarr(tmp_path / "o.zarr")
    with pytest.raises(InputDataError, match=match):
        dsg.TensorObservations.from_array(T * 1e160, path=str(tmp_path / "t.zarr"))
    assert not os.path.exists(tmp_path / "o.zarr") and not os.path.exists(tmp_path / "t.zarr")


# ------------------------------------------------- 5. a negative pair index
def test_a_negative_pair_index_is_worded_plainly():
    from dscaledgd.problems.pairwise import check_samples

    samples = (np.array([-1, 0]), np.array([0, 1]), np.array([1.0, 0.0]))
    with pytest.raises(InputDataError, match=r"f: the i indices include a negative value \(-1\)"):
        check_samples("f", samples, "l2")


# ------------------------------------------------------------- 6. dir(dscaledgd)
def test_dir_lists_the_public_api_only():
    import dscaledgd.api  # noqa: F401 - a loaded submodule is not listed either

    names = dir(dsg)
    for helper in ("TYPE_CHECKING", "annotations", "importlib", "logging", "api", "engine"):
        assert helper not in names
    assert set(dsg.__all__) <= set(names) and "__version__" in names
    for name in dsg.__all__:
        assert getattr(dsg, name) is not None
    assert dsg.engine.__name__ == "dscaledgd.engine"  # submodules still load on demand


# ------------------------------------------------------- 7. `info | head`
def test_info_into_a_closed_pipe_stops_quietly():
    r, w = os.pipe()
    os.close(r)  # the reader (`head`) has left before anything is written
    try:
        out = subprocess.run(
            [sys.executable, "-m", "dscaledgd", "info"],
            stdout=w,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONWARNINGS": ""},
        )
    finally:
        os.close(w)
    assert out.stderr == "" and out.returncode == 1


def test_a_broken_pipe_elsewhere_is_reported(monkeypatch, capfd):
    """Only stdout's own broken pipe is quiet: one to a subprocess or a socket is an error."""
    from dscaledgd import cli

    def broken(parser, args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_run", broken)
    assert cli.main(["info"]) == 1
    assert "dscaledgd info: error: [Errno 32] Broken pipe" in capfd.readouterr().err


def test_verbose_after_the_subcommand_reconfigures_logging():
    """`resume DIR -v` configures logging a second time, from the run's own command line."""
    import logging

    from dscaledgd import cli

    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    try:
        cli._configure_logging(types.SimpleNamespace(verbose=False))
        assert not logging.getLogger("dscaledgd").isEnabledFor(logging.INFO)
        cli._configure_logging(types.SimpleNamespace(verbose=True))
        assert logging.getLogger("dscaledgd").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
