"""``dscaledgd sgd`` (issue 18): ScaledSGD from files to a result store, in process.

What is checked: a CSV of triplets streamed to the stratified epochs gives the
API's iterates, and the stored result (with its held-out curve) reads back; a
``.npy`` of pairs runs in process; a killed run is continued by ``dscaledgd
resume DIR`` to the iterates of an uninterrupted one; bad input exits 1 in
command-line spelling and writes nothing; bad usage exits 2.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import cli

#: the runs here stop after a fixed number of epochs on purpose
pytestmark = pytest.mark.filterwarnings("ignore::dscaledgd.exceptions.ConvergenceWarning")


def run(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``dscaledgd *argv`` run in this process."""
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(42)
    d, m = 150, 12000
    Z = rng.standard_normal((d, 3))
    I, J, K = rng.integers(0, d, (3, m))
    S = Z @ Z.T
    Y = (S[I, J] > S[I, K]).astype(float)
    import pandas as pd

    cut = 10000
    pd.DataFrame({"a": I[:cut], "b": J[:cut], "c": K[:cut], "y": Y[:cut]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    np.save(tmp_path / "test.npy", np.stack([I[cut:], J[cut:], K[cut:], Y[cut:]], axis=1))
    i, j = np.indices((d, d)).reshape(2, -1)
    np.save(tmp_path / "pairs.npy", np.stack([i, j, S[i, j]], axis=1))
    return tmp_path


def test_a_csv_of_triplets_gives_the_api_result(files, capsys):
    rc, out, err = run(capsys, "sgd", files / "train.csv", "--loss", "bpr", "--rank", 3,
                       "--columns", "a,b,c,y", "--epochs", 3, "--step-size", 10,
                       "--validation", files / "test.npy", "--eval-every", 0.25,
                       "--out", files / "res.zarr")  # fmt: skip
    assert rc == 0, err
    test = np.load(files / "test.npy")
    api = dsg.scaled_sgd(os.fspath(files / "train.csv"), 3, loss="bpr", columns=("a", "b", "c", "y"),
                         epochs=3, step_size=10.0, validation=test, eval_every=0.25,
                         random_state=0)  # fmt: skip
    back = dsg.load_result(files / "res.zarr")
    assert np.array_equal(np.asarray(back.factors[0]), np.asarray(api.L))
    assert len(back.history["eval_auc"]) == 1 + 3 * 4  # the held-out curve is stored
    (auc, npmax) = (float(x) for x in re.findall(r"AUC ([0-9.]+) \(NP-maximum ([0-9.]+)", out)[0])
    assert auc == pytest.approx(api.history["eval_auc"][-1], abs=1e-4) and auc > 0.9 > npmax
    assert "10000 samples (threads), epochs 3" in out
    rc, out, err = run(capsys, "evaluate", files / "res.zarr", files / "test.npy",
                       "--out", files / "m.json")  # fmt: skip
    assert rc == 0, err
    I, J, K, Y = test.T
    auc = dsg.problems.pairwise.auc(I.astype(int), J.astype(int), K.astype(int), Y, api.L.compute())
    assert f"AUC {auc:.4f}  on 2000 samples" in out
    assert json.loads((files / "m.json").read_text())["auc"] == pytest.approx(auc, abs=1e-15)
    rc, out, err = run(capsys, "evaluate", files / "res.zarr", files / "pairs.npy")
    assert rc == 1 and "does not fit this result (fitted with --loss bpr on 150 rows)" in err


def test_a_killed_run_is_resumed_by_dscaledgd_resume(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    args = ["sgd", "pairs.npy", "--rank", 3, "--step-size", 0.3, "--seed", 1]
    rc, out, err = run(capsys, *args, "--epochs", 8, "--out", "full.zarr")
    assert rc == 0 and "(in-process), epochs 8" in out, err
    rc, _, err = run(capsys, *args, "--epochs", 3, "--checkpoint", "ck", "--out", "part.zarr")
    assert rc == 0, err
    rc, out, err = run(capsys, "resume", "ck", "--epochs", "8", "--out", "resumed.zarr")
    assert rc == 0 and "epochs 8" in out, err
    rc, out, err = run(capsys, "evaluate", "full.zarr", "pairs.npy")
    full, resumed = dsg.load_result("full.zarr"), dsg.load_result("resumed.zarr")
    assert rc == 0 and f"rmse objective {full.history['loss'][-1]:.6g}  rmse" in out, err
    assert np.array_equal(np.asarray(full.factors[0]), np.asarray(resumed.factors[0]))
    assert resumed.info["resumed_from"] == 3
    np.testing.assert_array_equal(full.history["loss"], resumed.history["loss"])


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--rank", 0], r"--rank must be an int in \[1, inf\]\. Got 0\."),
        (["--rank", 3, "--step-size", -1], r"--step-size must be a float in \(0, inf\)"),
        (["--rank", 3, "--loss", "bpr"], r"--loss bpr takes triplets .*that is pairs"),
        (["--rank", 3, "--validation", "nope.npy"], r"No such --validation file"),
        (["--rank", 3, "--n-blocks", 0], r"--n-blocks must be an int in \[1, inf\]"),
    ],
)
def test_bad_input_exits_1_in_cli_spelling_and_writes_nothing(files, capsys, monkeypatch,
                                                              extra, match):  # fmt: skip
    monkeypatch.chdir(files)
    rc, out, err = run(capsys, "sgd", "pairs.npy", *extra, "--epochs", 1, "--out", "r.zarr")
    assert rc == 1 and re.search(match, err), err
    assert err.startswith("dscaledgd sgd: error: ") and not os.path.exists("r.zarr")


def test_missing_samples_and_bad_usage(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    rc, _, err = run(capsys, "sgd", "absent.csv", "--rank", 3, "--out", "r.zarr")
    assert rc == 1 and "No such SAMPLES file or store: 'absent.csv'" in err
    for extra in (["--columns", "a,b"], []):
        with pytest.raises(SystemExit) as exc:
            cli.main(["sgd", "pairs.npy", "--rank", "3", *extra] + ([] if not extra else
                                                                  ["--out", "r.zarr"]))  # fmt: skip
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (
        "--columns: expected 3 names" in err
        and "sgd: error: the following arguments are required: --out" in err
    )


def test_a_result_store_checks_the_held_out_curve(files):
    """The ``eval_*`` history entries have their own length, one for all of them."""
    i, j, y = np.load(files / "pairs.npy").T
    res = dsg.scaled_sgd((i, j, y), 3, epochs=2, validation=(i[:50], j[:50], y[:50]),
                         eval_every=0.5, random_state=0)  # fmt: skip
    res.to_zarr(files / "ok.zarr")
    assert len(dsg.load_result(files / "ok.zarr").history["eval_loss"]) == 5
    res.history["eval_time"] = res.history["eval_time"][:-1]
    res.to_zarr(files / "bad.zarr")
    with pytest.raises(dsg.InputDataError, match="eval_\\* entries have different lengths"):
        dsg.load_result(files / "bad.zarr")
