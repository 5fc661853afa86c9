"""The `dscaledgd` command: real processes, real Zarr stores."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import dscaledgd as dsg

from .conftest import edit_store_attrs

EXE = os.path.join(os.path.dirname(sys.executable), "dscaledgd")


def run(*args, cwd=None):
    return subprocess.run(
        [EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_python_dash_m_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "dscaledgd", "info"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "dscaledgd:" in out.stdout, out.stderr


def test_verbose_log_lines_name_the_logger_once(tmp_path):
    """-v shows the embedded cluster's dashboard line, prefixed once (was "dscaledgd: dscaledgd:")."""
    import logging

    from dscaledgd.engine.cluster import executor_for

    handler_records = []

    class Keep(logging.Handler):
        def emit(self, record):
            handler_records.append(self.format(record))

    h = Keep()
    h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("dscaledgd")
    log.addHandler(h)
    old = log.level
    log.setLevel(logging.INFO)
    try:
        with executor_for(scheduler="distributed", n_workers=1, threads_per_worker=1):
            pass
    finally:
        log.removeHandler(h)
        log.setLevel(old)
    (line,) = [r for r in handler_records if "dashboard" in r]
    assert line.startswith("INFO dscaledgd: started an embedded LocalCluster; dashboard at ")


@pytest.mark.parametrize(
    "sub",
    ["demo", "import", "split", "complete", "rpca", "predict", "tensor-complete", "evaluate",
     "info"],
)  # fmt: skip
def test_every_subcommand_has_help(sub):
    out = run(sub, "--help")
    assert out.returncode == 0 and "usage: dscaledgd " + sub in out.stdout
    assert ("--out" in out.stdout) is (sub != "split")
    # --scheduler is offered where it is honoured (issue 14), not by import/evaluate/info
    runs = sub in ("demo", "complete", "rpca", "tensor-complete")
    for flag in ("--scheduler ", "--scheduler-file", "--wait-for-workers"):
        assert (flag in out.stdout) is runs, (sub, flag)
    # -v after the subcommand too, and --scheduler's help states this subcommand's default
    assert "-v, --verbose" in out.stdout
    text = " ".join(out.stdout.split())
    if runs:
        default = text.split("--scheduler ADDRESS", 2)[-1].split("(default: ", 1)[1]
        want = "an embedded LocalCluster" if sub == "demo" else "$DASK_SCHEDULER_ADDRESS if set"
        assert default.startswith(want), default[:80]
        assert "'demo'" not in default.split(")")[0]


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
    assert "The 'rank' parameter of complete must be an int in [1, 20]. Got 0." in out.stderr
    assert not (tmp_path / "r.zarr").exists()
    out = run("complete", tmp_path / "missing.zarr", "--rank", 2, "--out", tmp_path / "r.zarr")
    assert out.returncode == 1 and "does not exist" in out.stderr
    out = run("complete", p, "--rank", 2, "--out", p, "--scheduler", "sync")
    assert out.returncode == 1 and "already exists. Pass --overwrite" in out.stderr
    out = run("evaluate", p, p)
    assert out.returncode == 1 and "is not a dscaledgd result store" in out.stderr
    out = run("complete", p)  # missing --rank: usage error
    assert out.returncode == 2
    table = ["--row", "u", "--col", "m", "--value", "r"]
    out = run("import", tmp_path / "x.csv", tmp_path / "o.zarr", *table)
    assert out.returncode == 1 and "No such input file" in out.stderr


@pytest.mark.slow
def test_demo_runs_on_embedded_cluster(tmp_path):
    out = run("demo", "--out", tmp_path / "demo.zarr")
    assert out.returncode == 0, out.stderr
    assert "ScaledGD rel. error" in out.stdout and "ScaledGD: converged" in out.stdout
    assert dsg.load_result(tmp_path / "demo.zarr").converged


# ------------------------------------------------------- in-process checks
from dscaledgd import cli  # noqa: E402


@pytest.mark.parametrize(
    "argv",
    [
        ["complete", "OBS", "--rank", "2"],
        ["import", "coo.npz"],
        ["evaluate", "RES", "OBS"],
        ["info"],
        ["demo"],
    ],
    ids=lambda a: a[0],
)
def test_outputs_are_checked_before_any_work(tmp_path, monkeypatch, capsys, argv):
    def work(args):
        raise AssertionError("ran before checking --out")

    from dscaledgd import cli_demo, cli_matrix

    module = next(m for m in (cli_matrix, cli_demo, cli) if hasattr(m, f"_cmd_{argv[0]}"))
    monkeypatch.setattr(module, f"_cmd_{argv[0]}", work)
    (tmp_path / "out").write_text("{}")
    where = ["--scheduler", "sync"] if argv[0] in ("complete", "demo") else []
    assert cli.main([*argv, "--out", str(tmp_path / "out"), *where]) == 1
    err = capsys.readouterr().err
    assert f"dscaledgd {argv[0]}: error: The --out path" in err and "Pass --overwrite" in err
    (tmp_path / "file").write_text("")
    assert cli.main([*argv, "--out", str(tmp_path / "file" / "out.zarr")]) == 1
    assert "is a file, not a directory" in capsys.readouterr().err
    assert cli.main([*argv, "--out", str(tmp_path / "none" / "out.zarr")]) == 1
    err = capsys.readouterr().err
    assert "Cannot write --out" in err and "does not exist. Create it first." in err


@pytest.mark.parametrize(
    "value, ok",
    [
        ("threads", True),
        ("sync", True),
        ("distributed", True),
        ("tcp://127.0.0.1:8786", True),
        ("tls://scheduler.example.org:8786", True),
        ("localhost:8786", True),
        ("thread", False),
        ("tcp://", False),
        ("localhost", False),
    ],
)
def test_scheduler_values(value, ok):
    import argparse

    if ok:
        assert cli._scheduler(value) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="expected threads, sync, distributed"):
            cli._scheduler(value)
    assert cli._executor_kwargs("distributed") == {"scheduler": "distributed"}


@pytest.mark.filterwarnings("always::dscaledgd.exceptions.ConvergenceWarning")  # as on a terminal
def test_complete_prints_the_returned_iterate(tmp_path, capsys):
    """A diverged run: the printed residual is the one `evaluate` measures on the store."""
    obs, _ = dsg.datasets.make_completion((200, 150), 4, 0.3, cond=10, random_state=4)
    p = obs.to_zarr(tmp_path / "obs.zarr")
    out = str(tmp_path / "res.zarr")
    argv = ["complete", p, "--rank", "4", "--out", out, "--scheduler", "sync", "--seed", "0"]
    assert cli.main([*argv, "--step-size", "0.9"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert printed.startswith("diverged:")
    # the warning is one line in CLI form (no source file and line)
    (warning,) = [ln for ln in captured.err.splitlines() if "Warning" in ln]
    assert warning.startswith("dscaledgd complete: ConvergenceWarning: diverged")
    assert ".py:" not in captured.err
    assert cli.main(["evaluate", out, p]) == 0
    measured = capsys.readouterr().out
    import re

    (printed,) = re.findall(r"relative residual ([0-9.e+-]+),", printed)  # the summary line
    (measured,) = re.findall(r"relative residual ([0-9.e+-]+) ", measured)
    assert float(printed) == pytest.approx(float(measured), rel=1e-3)  # both to 4 digits


@pytest.mark.parametrize("damage", ["garbled-L", "no-status"])
@pytest.mark.parametrize("sub", ["evaluate", "info"])
def test_damaged_result_store_exits_nonzero_with_one_line(tmp_path, capsys, sub, damage):
    obs, _ = dsg.datasets.make_completion((60, 50), 2, 0.5, random_state=0)
    p = obs.to_zarr(tmp_path / "obs.zarr")
    res = dsg.complete(obs, 2, scheduler="sync", random_state=0)
    r = res.to_zarr(tmp_path / "res.zarr")
    if damage == "garbled-L":  # same size: only the checksum, checked as L is read, tells
        chunk = os.path.join(r, "L", "c", "0", "0")
        with open(chunk, "r+b") as fh:
            fh.write(b"\x00" * 16)
        match = "chunk 0 of array 'L' (rows 0:60) cannot be decoded"
    else:
        edit_store_attrs(r, lambda m: m.pop("status"))
        match = "its attrs' 'status' is missing"
    argv = ["evaluate", r, p] if sub == "evaluate" else ["info", r]
    if sub == "info" and damage == "garbled-L":
        match = None  # info reads only the metadata: the store still describes itself
    rc = cli.main(argv)
    err = capsys.readouterr().err
    if match is None:
        assert rc == 0 and err == ""
    else:
        assert rc == 1 and len(err.strip().splitlines()) == 1
        assert f"dscaledgd {sub}: error: The result store" in err and match in err


# ------------------------------------------------- the matrix job, end to end
@pytest.mark.filterwarnings("ignore::dscaledgd.exceptions.ConvergenceWarning")
def test_import_split_complete_evaluate_predict_match_the_python_recipe(tmp_path, capsys):
    """The README's real-data recipe on the command line gives the Python recipe's RMSE."""
    rng = np.random.default_rng(0)
    t = dsg.datasets.make_low_rank((120, 90), 3, cond=5, random_state=0)
    dense = 3.0 + t.dense()
    users, items = rng.integers(0, 120, 4000), rng.integers(0, 90, 4000)
    keep = np.unique(users * 1000 + items, return_index=True)[1]
    users, items = users[keep], items[keep]
    csv_path = tmp_path / "ratings.csv"
    with open(csv_path, "w") as fh:
        fh.write("userId,movieId,rating\n")
        for u, i in zip(users, items):
            fh.write(f"{1000 + u},{5000 + i},{dense[u, i] + 0.01 * rng.standard_normal():.6f}\n")
    obs_p, tr_p, te_p = (str(tmp_path / f) for f in ("obs.zarr", "train.zarr", "test.zarr"))
    res_p = str(tmp_path / "res.zarr")
    imp = [
        "import",
        str(csv_path),
        obs_p,
        "--row",
        "userId",
        "--col",
        "movieId",
        "--value",
        "rating",
    ]
    assert cli.main(imp) == 0
    assert cli.main(["split", obs_p, tr_p, te_p, "--test-fraction", "0.1", "--seed", "0"]) == 0
    fit = ["complete", tr_p, "--rank", "3", "--reg", "1", "--center", "biases",
           "--validation-fraction", "0.1", "--patience", "20", "--out", res_p,
           "--scheduler", "sync"]  # fmt: skip
    assert cli.main(fit) == 0
    printed = capsys.readouterr().out
    assert "validation RMSE" in printed and "result written to" in printed
    assert cli.main(["evaluate", res_p, te_p]) == 0
    (cli_rmse,) = [float(x) for x in re.findall(r"rmse ([0-9.e+-]+)", capsys.readouterr().out)]
    # the same in Python
    obs = dsg.Observations.from_csv(csv_path, row="userId", col="movieId", value="rating")
    train, test = obs.split(0.1, random_state=0)
    fit_obs, val = train.split(0.1, random_state=1)
    res = dsg.complete(fit_obs, 3, reg=1.0, center="biases", validation=val, patience=20,
                       random_state=0, scheduler="sync")  # fmt: skip
    assert cli_rmse == pytest.approx(res.rmse(test), rel=1e-5)  # printed to 6 digits
    assert cli_rmse < 0.1  # noise 0.01: the fit is good, not just equal
    # predict by original ids, CSV and Parquet, an unseen id gives NaN
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("userId,movieId\n1000,5000\n1001,5003\n999999,5000\n")
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", res_p, str(pairs), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "userId,movieId,prediction" and lines[3].endswith(",nan")
    want = res.predict([1000, 1001], [5000, 5003], by="id")
    got = [float(ln.split(",")[2]) for ln in lines[1:3]]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    pq = pytest.importorskip("pyarrow.parquet")
    assert cli.main(["predict", res_p, str(pairs), "--out", str(tmp_path / "p.parquet")]) == 0
    table = pq.read_table(tmp_path / "p.parquet")
    np.testing.assert_allclose(table.column("prediction").to_numpy()[:2], want, rtol=1e-9)
    # bad input: an existing --out, a missing column, a non-numeric id
    assert cli.main(["predict", res_p, str(pairs), "--out", str(out)]) == 1
    assert "Pass --overwrite" in capsys.readouterr().err
    assert cli.main(["predict", res_p, str(pairs), "--row", "user", "--out",
                     str(tmp_path / "x.csv")]) == 1  # fmt: skip
    assert "--row 'user' is not a column" in capsys.readouterr().err
    pairs.write_text("userId,movieId\nabc,5000\n")
    assert cli.main(["predict", res_p, str(pairs), "--out", str(tmp_path / "y.csv")]) == 1
    err = capsys.readouterr().err
    assert "PAIRS" in err and "line 2, column 'userId': 'abc' is not a number" in err
    assert not (tmp_path / "y.csv").exists()


def test_split_refuses_existing_outputs_and_writes_nothing(tmp_path, capsys):
    obs, _ = dsg.datasets.make_completion((40, 30), 2, 0.5, random_state=0)
    p = obs.to_zarr(tmp_path / "obs.zarr")
    tr, te = tmp_path / "tr.zarr", tmp_path / "te.zarr"
    te.mkdir()
    assert cli.main(["split", p, str(tr), str(te)]) == 1
    assert "Pass --overwrite" in capsys.readouterr().err and not tr.exists()
    assert cli.main(["split", p, str(tr), str(te), "--overwrite"]) == 0
    a, b = dsg.Observations.open_zarr(tr), dsg.Observations.open_zarr(te)
    assert a.nnz + b.nnz == obs.nnz and b.nnz == round(0.1 * obs.nnz)
    out = run("split", p, tr, te, "--test-fraction", "1.5")
    assert out.returncode == 2
    assert "argument --test-fraction: must be a number strictly between 0 and 1" in out.stderr


@pytest.mark.filterwarnings("ignore::dscaledgd.exceptions.ConvergenceWarning")
def test_rpca_subcommand_gives_the_python_result(tmp_path, capsys):
    rng = np.random.default_rng(2)
    t = dsg.datasets.make_low_rank((120, 90), 2, cond=3, random_state=0)
    Y = t.dense() + np.where(rng.random((120, 90)) < 0.03, 5 * rng.standard_normal((120, 90)), 0)
    Y[rng.random(Y.shape) < 0.1] = np.nan
    np.save(tmp_path / "Y.npy", Y)
    out = str(tmp_path / "res.zarr")
    argv = ["rpca", str(tmp_path / "Y.npy"), "--rank", "2", "--alpha", "0.1", "--out", out,
            "--scheduler", "sync"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "(low rank L, R and sparse S)" in capsys.readouterr().out
    got = dsg.load_result(out)
    want = dsg.rpca(Y, 2, alpha=0.1, random_state=0, scheduler="sync")
    assert (got.status, got.n_iter) == (want.status, want.n_iter)
    np.testing.assert_allclose(got.compute_sparse(), want.compute_sparse(), atol=1e-12)
    # the same observed entries through --mask (zeros where missing) and from a .npz
    np.save(tmp_path / "M.npy", ~np.isnan(Y))
    np.save(tmp_path / "Y0.npy", np.nan_to_num(Y))
    out2 = str(tmp_path / "res2.zarr")
    argv2 = ["rpca", str(tmp_path / "Y0.npy"), "--mask", str(tmp_path / "M.npy"), "--rank", "2",
             "--alpha", "0.1", "--out", out2, "--scheduler", "sync"]  # fmt: skip
    assert cli.main(argv2) == 0
    np.testing.assert_allclose(dsg.load_result(out2).L.compute(), got.L.compute(), atol=1e-10)
    np.save(tmp_path / "cube.npy", np.zeros((3, 4, 5)))
    bad = ["rpca", str(tmp_path / "cube.npy"), "--rank", "1", "--alpha", "0.1", "--out",
           str(tmp_path / "r3.zarr")]  # fmt: skip
    assert cli.main(bad) == 1
    assert "rpca needs a matrix" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::dscaledgd.exceptions.ConvergenceWarning")
def test_a_job_file_holds_the_command_line(tmp_path, capsys):
    obs, _ = dsg.datasets.make_completion((80, 60), 2, 0.5, random_state=0)
    p = obs.to_zarr(tmp_path / "obs.zarr")
    job = tmp_path / "job.yaml"
    out = tmp_path / "res.zarr"
    job.write_text(
        f"command: complete\nobs: {p}\nrank: 2\nout: {out}\nscheduler: sync\nseed: 3\n"
        "max_iter: 200\nprogress: false\n"
    )
    assert cli.main(["--config", str(job), "--max-iter", "4"]) == 0  # the line wins
    res = dsg.load_result(out)
    assert res.n_iter == 4 and res.params["random_state"] == 3 and res.params["rank"] == 2
    for text, msg in [
        ("- a\n- b\n", "must be a mapping"),
        ("rank: 2\n", "names no command"),
        ("command: nope\n", "unknown command 'nope'"),
        ("command: [1\n", "is not valid YAML"),
    ]:
        job.write_text(text)
        assert cli.main(["--config", str(job)]) == 1
        assert msg in capsys.readouterr().err
    assert cli.main(["--config", str(tmp_path / "missing.yaml")]) == 1
    assert "No such --config file" in capsys.readouterr().err
    job.write_text(f"command: complete\nobs: {p}\nrank: 2\nout: {out}\nbogus: 1\n")
    assert run("--config", job).returncode == 2  # an unknown option is a usage error


@pytest.mark.filterwarnings("ignore::dscaledgd.exceptions.ConvergenceWarning")
def test_complete_tiles_recuts_the_grid(tmp_path, capsys):
    """``--tiles A,B`` fits on that grid: the result equals the Python fit on
    ``obs.retile((A, B))``, and the store itself is not rewritten."""
    obs, _ = dsg.datasets.make_completion((120, 90), 3, 0.3, random_state=0)
    obs.to_zarr(tmp_path / "obs.zarr")
    argv = ["complete", str(tmp_path / "obs.zarr"), "--rank", "3", "--max-iter", "15",
            "--tiles", "3,2", "--out", str(tmp_path / "res.zarr")]  # fmt: skip
    assert cli.main(argv) == 0
    res = dsg.load_result(tmp_path / "res.zarr")
    assert res.info["tiles"] == [3, 2]
    ref = dsg.complete(dsg.Observations.open_zarr(tmp_path / "obs.zarr").retile((3, 2)), 3,
                       max_iter=15, random_state=0)  # fmt: skip
    np.testing.assert_array_equal(res.history["loss"], ref.history["loss"])
    assert dsg.Observations.open_zarr(tmp_path / "obs.zarr").tiles != (3, 2)
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv[:-2], "--tiles", "x", "--out", str(tmp_path / "r2.zarr")])
    assert exc.value.code == 2 and "--tiles" in capsys.readouterr().err
