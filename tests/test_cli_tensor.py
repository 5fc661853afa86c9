"""``dscaledgd tensor-complete``, and ``evaluate``/``info`` on tensor results, in process."""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import cli, cli_tensor

SHAPE, RANKS = (20, 18, 16), (2, 2, 2)


@pytest.fixture(scope="module")
def planted():
    """A rank-(2, 2, 2) tensor, 40% observed: ``(X, mask)``."""
    core, U = dsg.datasets.tucker_instance(SHAPE, RANKS, random_state=0)
    X = dsg.datasets.tucker_tensor(core, U)
    mask = np.random.default_rng(0).random(SHAPE) < 0.4
    return X, mask


@pytest.fixture
def files(tmp_path, planted):
    X, mask = planted
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "mask.npy", mask)
    np.save(tmp_path / "Y.npy", np.where(mask, X, np.nan))
    return tmp_path


def run(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``dscaledgd *argv`` run in this process."""
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def fit_error(path, X) -> float:
    Z = dsg.load_result(path).to_tensor().compute()
    return float(np.linalg.norm(Z - X) / np.linalg.norm(X))


def test_help_names_the_inputs_and_the_shared_options(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["tensor-complete", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: dscaledgd tensor-complete")
    for flag in ("--ranks", "--mask", "--scheduler", "--out", "--overwrite", "--test-fraction"):
        assert flag in out
    assert "NIfTI" in out and "dscaledgd[neuro]" in out


def test_round_trip_complete_info_evaluate(files, planted, capsys):
    X, mask = planted
    res = files / "res.zarr"
    rc, out, err = run(
        capsys, "tensor-complete", files / "Y.npy", "--ranks", "2,2,2", "--out", res,
        "--scheduler", "sync", "--seed", "0", "--test-fraction", "0.1",
    )  # fmt: skip
    assert rc == 0, err
    assert "input: TensorObservations(shape=(20, 18, 16)" in out
    assert f"held out {round(0.1 * mask.sum())} of the {mask.sum()} observed entries" in out
    assert re.search(r"^converged: ", out, re.M) and "ranks (2, 2, 2), iterations" in out
    (test_rmse,) = re.findall(r"test rmse ([0-9.e+-]+) ", out)
    assert float(test_rmse) < 1e-8  # exact low-rank data: the held-out entries are recovered
    assert out.rstrip().endswith(f"result written to {res}")
    assert fit_error(res, X) < 1e-8

    rc, out, err = run(capsys, "info", res, "--out", files / "info.json")
    assert rc == 0, err
    lines = dict(re.findall(r"^\s*(\w+): (.*)$", out, re.M))
    assert lines["model"] == "tucker" and lines["shape"] == "(20, 18, 16)"
    assert lines["ranks"] == "(2, 2, 2)" and lines["status"] == "converged"
    r = dsg.load_result(res)
    assert int(lines["iterations"]) == r.n_iter
    assert float(lines["residual"]) == pytest.approx(r.final["residual"], rel=1e-3)
    facts = json.loads((files / "info.json").read_text())["result"]
    assert facts["ranks"] == [2, 2, 2] and facts["shape"] == [20, 18, 16]

    # on the full tensor (no NaN: every entry counts), and on the observed entries
    rc, out, err = run(capsys, "evaluate", res, files / "X.npy", "--out", files / "m.json")
    assert rc == 0, err
    m = json.loads((files / "m.json").read_text())
    assert m["nnz"] == X.size and m["rmse"] < 1e-8 and m["status"] == "converged"
    rc, out, _ = run(capsys, "evaluate", res, files / "Y.npy")
    assert rc == 0 and f"on {mask.sum()} entries" in out


def _inputs(files, X, mask, kind):
    """``(IN, --mask or None)`` for each supported input kind."""
    import zarr

    if kind == "npy+mask":
        return files / "X.npy", files / "mask.npy"
    if kind == "npz":
        np.savez(files / "in.npz", X=X, mask=mask)
        return files / "in.npz", None
    if kind == "zarr-array":
        z = zarr.create_array(files / "in.zarr", shape=X.shape, chunks=(10, 9, 8), dtype="f8")
        z[...] = np.where(mask, X, np.nan)
        return files / "in.zarr", None
    if kind == "tensor-store":
        T = dsg.TensorObservations.from_array(np.where(mask, X, np.nan), chunks=(10, 9, 8))
        return T.to_zarr(files / "T.zarr"), None
    nib = pytest.importorskip("nibabel", reason="NIfTI input needs nibabel (the neuro extra)")
    nib.save(nib.Nifti1Image(X, np.eye(4)), files / "X.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), files / "mask.nii")
    return files / "X.nii.gz", files / "mask.nii"


@pytest.mark.parametrize(
    "kind, scheduler",
    [
        ("npy+mask", "sync"),
        ("npz", "threads"),
        ("zarr-array", "sync"),
        ("tensor-store", "threads"),
        ("nifti", "sync"),
    ],
)
def test_every_input_kind_gives_the_same_fit(files, planted, capsys, kind, scheduler):
    X, mask = planted
    src, m = _inputs(files, X, mask, kind)
    res = files / "res.zarr"
    argv = ["tensor-complete", src, "--ranks", "2", "--out", res, "--scheduler", scheduler]
    rc, out, err = run(capsys, *argv, *(["--mask", m] if m else []), "--seed", "1")
    assert rc == 0, err
    assert f"nnz={mask.sum()}" in out and "converged:" in out
    assert fit_error(res, X) < 1e-8
    # evaluate reads the same kinds of data
    rc, out, err = run(capsys, "evaluate", res, src if m is None else files / "X.npy")
    assert rc == 0, err
    assert float(out.split()[1]) < 1e-8


def test_runs_on_a_scheduler_address(files, planted, capsys, client):
    res = files / "res.zarr"
    address = client.scheduler.address
    rc, out, err = run(
        capsys, "tensor-complete", files / "Y.npy", "--ranks", "2,2,2", "--out", res,
        "--scheduler", address, "--seed", "0", "--method", "gd", "--max-iter", "400",
    )  # fmt: skip
    assert rc == 0, err
    assert "converged:" in out and fit_error(res, planted[0]) < 1e-8


# ----------------------------------------------------------------- errors
def _never_solve(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the solve ran on bad input")

    monkeypatch.setattr("dscaledgd.api.tucker.tucker_complete", boom)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--ranks", "2,2"], "--ranks must be an int or a sequence of 3 ints"),
        (["--ranks", "2,30,2"], "--ranks must have 1 <= ranks[1] <= 18 (the size of mode 1)"),
        (["--ranks", "2,2,5"], "--ranks has ranks[2] = 5 above the product of the other"),
        (["--ranks", "2", "--mask", "{d}/nope.npy"], "No such --mask file or store"),
        (["--ranks", "2", "--mask", "{d}/short.npy"], "The mask has shape (20, 18, 15)"),
        (["--ranks", "2", "--mask", "{d}/int.npy"], "--mask must be boolean (True = observed)"),
        (["--ranks", "2", "--mask", "{d}/none.npy"], "no observed entry"),
        (["--ranks", "2", "--max-iter", "0"], "--max-iter must be an int in [1, inf]. Got 0."),
        (["--ranks", "2", "--tol", "-1"], "--tol must be a float in (0, inf). Got -1.0."),
    ],
)
def test_bad_input_exits_1_in_cli_spelling_and_writes_nothing(
    files, capsys, monkeypatch, extra, match
):
    np.save(files / "short.npy", np.ones((20, 18, 15), dtype=bool))
    np.save(files / "int.npy", np.ones(SHAPE, dtype=np.int8))
    np.save(files / "none.npy", np.zeros(SHAPE, dtype=bool))
    if "--max-iter" not in extra and "--tol" not in extra:
        _never_solve(monkeypatch)
    extra = [e.format(d=files) for e in extra]
    src = files / ("X.npy" if "--mask" in extra else "Y.npy")
    res = files / "res.zarr"
    rc, out, err = run(capsys, "tensor-complete", src, *extra, "--out", res, "--scheduler", "sync")
    assert rc == 1
    assert err.startswith("dscaledgd tensor-complete: error: ") and len(err.splitlines()) == 1
    assert match in err
    assert "tucker_complete" not in err and "parameter of" not in err
    assert not res.exists()


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--ranks", "2,a"], "--ranks must be positive integers separated by commas"),
        (["--ranks", "0"], "--ranks must be positive integers"),
        (
            ["--ranks", "2", "--test-fraction", "1.5"],
            "argument --test-fraction: must be a number strictly",
        ),
        (["--ranks", "2", "--method", "als"], "argument --method: invalid choice: 'als'"),
        (["--out", "{d}/r.zarr"], "the following arguments are required: --ranks"),
        (["--ranks", "2"], "tensor-complete: error: the following arguments are required: --out"),
    ],
)
def test_bad_usage_exits_2(files, capsys, monkeypatch, extra, match):
    _never_solve(monkeypatch)
    extra = [e.format(d=files) for e in extra]
    if "--out" not in extra:
        extra += ["--out", str(files / "r.zarr")] if "required: --out" not in match else []
    with pytest.raises(SystemExit) as exc:
        cli.main(["tensor-complete", str(files / "Y.npy"), *extra])
    assert exc.value.code == 2
    assert match in capsys.readouterr().err
    assert not (files / "r.zarr").exists()


def test_an_existing_out_is_refused_before_reading_the_input(files, capsys, monkeypatch):
    def never(path, *a, **k):
        raise AssertionError("read the input before checking --out")

    monkeypatch.setattr(cli_tensor, "read_tensor", never)
    (files / "res.zarr").mkdir()
    rc, _, err = run(capsys, "tensor-complete", files / "Y.npy", "--ranks", "2", "--out",
                     files / "res.zarr")  # fmt: skip
    assert rc == 1 and "The --out path" in err and "already exists. Pass --overwrite" in err
    assert os.listdir(files / "res.zarr") == []


def test_non_finite_observed_value_is_named(files, planted, capsys):
    X, mask = planted
    Y = np.where(mask, X, np.nan)
    i = tuple(int(v) for v in np.argwhere(mask)[3])
    Y[i] = np.inf
    np.save(files / "bad.npy", Y)
    rc, _, err = run(capsys, "tensor-complete", files / "bad.npy", "--ranks", "2", "--out",
                     files / "res.zarr", "--scheduler", "sync")  # fmt: skip
    assert rc == 1 and ", ".join(map(str, i)) in err and "dscaledgd tensor-complete: error" in err
    assert not (files / "res.zarr").exists()


def test_stores_that_are_not_tensor_data_are_refused(files, planted, capsys):
    X, mask = planted
    obs, _ = dsg.datasets.make_completion((30, 20), 2, 0.5, random_state=1)
    matrix = obs.to_zarr(files / "obs.zarr")
    store = dsg.TensorObservations.from_array(np.where(mask, X, np.nan)).to_zarr(files / "T.zarr")
    out = files / "res.zarr"
    cases = [
        ([matrix, "--ranks", "2"], "is a matrix Observations store, not a tensor"),
        ([store, "--ranks", "2", "--mask", files / "mask.npy"], "Drop --mask"),
        ([files / "missing.npy", "--ranks", "2"], "No such IN file or store"),
    ]
    for argv, match in cases:
        rc, _, err = run(capsys, "tensor-complete", *argv, "--out", out, "--scheduler", "sync")
        assert rc == 1 and match in err, err
    # a truncated TensorObservations store: one chunk of its values deleted
    os.remove(os.path.join(store, "values", "c", "0", "0", "0"))
    rc, _, err = run(capsys, "tensor-complete", store, "--ranks", "2", "--out", out)
    assert rc == 1 and "T.zarr" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_nifti_without_nibabel_names_the_extra(files, capsys, monkeypatch):
    (files / "vol.nii.gz").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel -> ImportError
    rc, _, err = run(capsys, "tensor-complete", files / "vol.nii.gz", "--ranks", "2", "--out",
                     files / "res.zarr")  # fmt: skip
    assert rc == 1
    assert "needs nibabel, which is not installed" in err and "dscaledgd[neuro]" in err
    assert not (files / "res.zarr").exists()


def test_a_garbled_nifti_is_an_input_error(files, capsys):
    pytest.importorskip("nibabel", reason="NIfTI input needs nibabel (the neuro extra)")
    (files / "vol.nii").write_bytes(b"\x00" * 400)
    rc, _, err = run(capsys, "tensor-complete", files / "vol.nii", "--ranks", "2", "--out",
                     files / "res.zarr")  # fmt: skip
    assert rc == 1 and "cannot be read as NIfTI" in err and "vol.nii" in err


# --------------------------------------------------------------- warnings
@pytest.mark.filterwarnings("ignore::dscaledgd.exceptions.ConvergenceWarning")
@pytest.mark.filterwarnings("always::dscaledgd.exceptions.DataWarning")  # as on a terminal
def test_integer_input_is_computed_in_float64_and_said_so(files, planted, capsys):
    X, _ = planted
    q = np.round(100 * X / np.abs(X).max()).astype(np.int16)
    np.save(files / "q.npy", q)
    argv = ["tensor-complete", files / "q.npy", "--ranks", "2", "--out", files / "res.zarr"]
    rc, out, err = run(capsys, *argv, "--scheduler", "sync", "--max-iter", "20")
    assert rc == 0, err
    assert "dscaledgd tensor-complete: DataWarning: " in err  # one line, CLI form
    assert "dtype int16; it is converted to float64" in err
    assert dsg.load_result(files / "res.zarr").core.dtype == np.float64


@pytest.mark.filterwarnings("always::dscaledgd.exceptions.DataWarning")  # as on a terminal
def test_an_empty_mode_slice_is_warned_about(files, planted, capsys):
    X, mask = planted
    Y = np.where(mask, X, np.nan)
    Y[:, 5, :] = np.nan
    np.save(files / "hole.npy", Y)
    argv = ["tensor-complete", files / "hole.npy", "--ranks", "2", "--out", files / "res.zarr"]
    rc, _, err = run(capsys, *argv, "--scheduler", "sync", "--seed", "0")
    assert rc == 0, err
    assert "dscaledgd tensor-complete: DataWarning: " in err and "1 of 18 mode-1 slices" in err


# ------------------------------------------------------- evaluate and info
def test_evaluate_refuses_data_that_do_not_fit_the_result(files, planted, capsys):
    res = files / "res.zarr"
    assert run(capsys, "tensor-complete", files / "Y.npy", "--ranks", "2", "--out", res,
               "--scheduler", "sync")[0] == 0  # fmt: skip
    np.save(files / "other.npy", np.ones((20, 18, 17)))
    rc, _, err = run(capsys, "evaluate", res, files / "other.npy")
    assert rc == 1 and "do not match the fitted tensor (20, 18, 16)" in err
    obs, _ = dsg.datasets.make_completion((30, 20), 2, 0.5, random_state=1)
    rc, _, err = run(capsys, "evaluate", res, obs.to_zarr(files / "obs.zarr"))
    assert rc == 1 and "is a matrix Observations store" in err
    rc, _, err = run(capsys, "evaluate", res, files / "nothing.npy")
    assert rc == 1 and "No such DATA file or store" in err


def test_info_describes_tensor_stores_and_matrix_results(files, planted, capsys):
    X, mask = planted
    store = dsg.TensorObservations.from_array(np.where(mask, X, np.nan)).to_zarr(files / "T.zarr")
    rc, out, err = run(capsys, "info", store)
    assert rc == 0, err
    assert "store: TensorObservations(shape=(20, 18, 16)" in out and "model:" not in out
    obs, _ = dsg.datasets.make_completion((30, 20), 2, 0.5, random_state=1)
    r = dsg.complete(obs, 2, scheduler="sync", random_state=0, tol=1e-6).to_zarr(files / "m.zarr")
    rc, out, err = run(capsys, "info", r)
    assert rc == 0, err
    assert "model: lowrank" in out and "shape: (30, 20)" in out and "rank: 2" in out


def test_unequal_ranks(tmp_path, capsys):
    core, U = dsg.datasets.tucker_instance((16, 14, 12), (2, 3, 2), random_state=2)
    X = dsg.datasets.tucker_tensor(core, U)
    np.save(tmp_path / "Y.npy", np.where(np.random.default_rng(2).random(X.shape) < 0.5, X, np.nan))
    res = tmp_path / "res.zarr"
    rc, out, err = run(capsys, "tensor-complete", tmp_path / "Y.npy", "--ranks", "2x3x2",
                       "--out", res, "--scheduler", "threads", "--seed", "0")  # fmt: skip
    assert rc == 0, err
    assert "converged:" in out and fit_error(res, X) < 1e-8
    rc, out, _ = run(capsys, "info", res)
    assert rc == 0 and re.search(r"ranks: \(2, 3, 2\)$", out, re.M)
