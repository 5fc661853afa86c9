"""The `dscaledgd` command: real processes, real Zarr stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dscaledgd as dsg

EXE = os.path.join(os.path.dirname(sys.executable), "dscaledgd")


def run(*args, cwd=None):
    return subprocess.run(
        [EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.mark.parametrize("sub", ["demo", "import", "complete", "evaluate", "info"])
def test_every_subcommand_has_help(sub):
    out = run(sub, "--help")
    assert out.returncode == 0 and "usage: dscaledgd " + sub in out.stdout
    assert "--scheduler" in out.stdout and "--out" in out.stdout


def test_round_trip_import_complete_evaluate(tmp_path):
    obs, truth = dsg.datasets.make_completion((120, 90), 3, 0.4, cond=10, random_state=31)
    r, c, v = obs.to_coo()
    np.savez(tmp_path / "coo.npz", rows=r, cols=c, values=v, shape=np.array(obs.shape))
    out = run("import", tmp_path / "coo.npz", tmp_path / "obs.zarr", "--tiles", "2,2")
    assert out.returncode == 0, out.stderr
    assert "Observations(shape=(120, 90)" in out.stdout
    out = run(
        "complete",
        tmp_path / "obs.zarr",
        "--rank",
        3,
        "--out",
        tmp_path / "res.zarr",
        "--scheduler",
        "threads",
        "--seed",
        0,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("converged:")
    res = dsg.load_result(tmp_path / "res.zarr")
    assert truth.relative_error(res.L.compute(), res.R.compute()) < 1e-9
    out = run(
        "evaluate", tmp_path / "res.zarr", tmp_path / "obs.zarr", "--out", tmp_path / "m.json"
    )
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["nnz"] == obs.nnz and metrics["rmse"] < 1e-10
    out = run("info", tmp_path / "res.zarr")
    assert out.returncode == 0 and "SolveResult(status='converged'" in out.stdout


def test_errors_exit_nonzero_with_one_line(tmp_path):
    obs, _ = dsg.datasets.make_completion((30, 20), 2, 0.5, random_state=1)
    p = obs.to_zarr(tmp_path / "obs.zarr")
    out = run("complete", p, "--rank", 0, "--out", tmp_path / "r.zarr", "--scheduler", "sync")
    assert out.returncode == 1
    assert "The 'rank' parameter of complete must be an int in [1, 20). Got 0." in out.stderr
    assert not (tmp_path / "r.zarr").exists()
    out = run("complete", tmp_path / "missing.zarr", "--rank", 2, "--out", tmp_path / "r.zarr")
    assert out.returncode == 1 and "does not exist" in out.stderr
    out = run("complete", p, "--rank", 2, "--out", p, "--scheduler", "sync")
    assert out.returncode == 1 and "already exists. Pass overwrite=True" in out.stderr
    out = run("evaluate", p, p)
    assert out.returncode == 1 and "is not a dscaledgd result store" in out.stderr
    out = run("complete", p)  # missing --rank: usage error
    assert out.returncode == 2
    out = run("import", tmp_path / "x.csv", tmp_path / "o.zarr")
    assert out.returncode == 1 and "No such input file" in out.stderr


@pytest.mark.slow
def test_demo_runs_on_embedded_cluster(tmp_path):
    out = run("demo", "--out", tmp_path / "demo.zarr")
    assert out.returncode == 0, out.stderr
    assert "ScaledGD rel. error" in out.stdout and "ScaledGD: converged" in out.stdout
    assert dsg.load_result(tmp_path / "demo.zarr").converged
