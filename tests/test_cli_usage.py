"""The command line as a new user meets it: quiet logs, usage errors, messages in CLI spelling.

Each test is one finding of a walkthrough: distributed's INFO lines without ``-v``,
``predict`` of a Tucker result, an output named by the argument typed, the
``--scheduler`` help's default, ``-v`` after the subcommand, usage errors with the
subcommand's usage, the demo's checks, ``predict``'s messages, one ``complete`` in
a warning, and ``dscaledgd`` alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import cli

EXE = os.path.join(os.path.dirname(sys.executable), "dscaledgd")


def run(*args):
    """``dscaledgd *args`` in a fresh process (logging configured as on a terminal)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return subprocess.run(
        [EXE, *map(str, args)], capture_output=True, text=True, timeout=300, env=env
    )


def fit(func, *args, **kw):
    """A short fit (its ConvergenceWarning is expected, not a test failure)."""
    from dscaledgd.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return func(*args, scheduler="sync", random_state=0, **kw)


def main(capsys, *argv):
    """``(exit code, stdout, stderr)`` in this process; a usage error's SystemExit too."""
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A fit on an imported table (user ids 1000.., movie ids 5000..): ``(dir, res, obs)``."""
    d = tmp_path_factory.mktemp("imported")
    rng = np.random.default_rng(0)
    with open(d / "ratings.csv", "w") as fh:
        fh.write("userId,movieId,rating\n")
        for u in range(30):
            for m in range(20):
                if rng.random() < 0.6:
                    fh.write(f"{1000 + u},{5000 + m},{rng.random():.3f}\n")
    obs = dsg.Observations.from_csv(d / "ratings.csv", row="userId", col="movieId",
                                    value="rating", out=str(d / "obs.zarr"))  # fmt: skip
    obs = dsg.Observations.open_zarr(d / "obs.zarr")
    fit(dsg.complete, obs, 2, max_iter=5).to_zarr(d / "res.zarr")
    return d, str(d / "res.zarr"), str(d / "obs.zarr")


# ------------------------------------------------------------- 1: logging
def test_distributed_info_lines_only_with_v(tmp_path):
    """Importing distributed reset its loggers to INFO after the CLI had set WARNING."""
    obs, _ = dsg.datasets.make_completion((30, 20), 2, 0.5, random_state=0)
    p = obs.to_zarr(tmp_path / "obs.zarr")
    argv = ["complete", p, "--rank", 2, "--max-iter", 2, "--scheduler", "distributed"]
    quiet = run(*argv, "--out", tmp_path / "a.zarr")
    assert quiet.returncode == 0, quiet.stderr
    assert "INFO" not in quiet.stderr and "distributed." not in quiet.stderr, quiet.stderr
    loud = run(*argv, "--out", tmp_path / "b.zarr", "-v")  # -v after the subcommand
    assert loud.returncode == 0, loud.stderr
    assert "INFO distributed.scheduler: " in loud.stderr


# -------------------------------------------------- 2: predict of a tensor
def test_predict_a_tucker_result_at_index_tuples(tmp_path, capsys):
    core, U = dsg.datasets.tucker_instance((8, 7, 6), (2, 2, 2), random_state=0)
    X = dsg.datasets.tucker_tensor(core, U)
    X[np.random.default_rng(0).random(X.shape) < 0.5] = np.nan
    res = fit(dsg.tucker_complete, X, (2, 2, 2), max_iter=5)
    r = res.to_zarr(tmp_path / "res.zarr")
    idx = np.array([[0, 0, 0], [7, 6, 5], [3, 2, 1]])
    (tmp_path / "idx.csv").write_text("i,j,k\n" + "".join(f"{a},{b},{c}\n" for a, b, c in idx))
    out = tmp_path / "pred.csv"
    rc, printed, err = main(capsys, "predict", r, tmp_path / "idx.csv", "--out", out)
    assert rc == 0, err
    assert "3 predictions (0 NaN)" in printed
    lines = out.read_text().splitlines()
    assert lines[0] == "i,j,k,prediction" and lines[2].startswith("7,6,5,")
    got = [float(ln.split(",")[3]) for ln in lines[1:]]
    np.testing.assert_allclose(got, res.predict(idx), rtol=1e-12)
    # what does not apply to a tensor is refused, naming the flag and the fix
    rc, _, err = main(capsys, "predict", r, tmp_path / "idx.csv", "--out", tmp_path / "x.csv",
                      "--by", "id")  # fmt: skip
    assert rc == 1 and "--by id applies to a matrix fit" in err and "Tucker fit" in err
    assert "unexpected keyword" not in err
    (tmp_path / "two.csv").write_text("i,j\n0,0\n")
    rc, _, err = main(capsys, "predict", r, tmp_path / "two.csv", "--out", tmp_path / "y.csv")
    assert rc == 1 and "needs 3 index columns, one per mode" in err
    (tmp_path / "far.csv").write_text("i,j,k\n0,0,0\n1,9,0\n")
    rc, _, err = main(capsys, "predict", r, tmp_path / "far.csv", "--out", tmp_path / "z.csv")
    assert rc == 1 and "line 3, column 'j': '9' is not one of the 7 indices of mode 1" in err
    assert not any(p.exists() for p in (tmp_path / "x.csv", tmp_path / "y.csv", tmp_path / "z.csv"))


# --------------------------------------------- 4: outputs named as typed
def test_split_names_the_positional_output(tmp_path, capsys):
    obs, _ = dsg.datasets.make_completion((30, 20), 2, 0.5, random_state=0)
    p = obs.to_zarr(tmp_path / "obs.zarr")
    (tmp_path / "train.zarr").mkdir()
    rc, _, err = main(capsys, "split", p, tmp_path / "train.zarr", tmp_path / "test.zarr")
    assert rc == 1 and "--out" not in err
    assert "The TRAIN.zarr path" in err and "already exists. Pass --overwrite" in err


# ---------------------------------------------- 5, 6: help and -v anywhere
def test_demo_help_gives_every_default(capsys):
    rc, out, _ = main(capsys, "demo", "--help")
    assert rc == 0
    text = " ".join(out.split())
    for flag, default in [("--shape N1,N2", "1500,1100"), ("--rank RANK", "8"),
                          ("--max-iter MAX_ITER", "150"), ("--tol TOL", "1e-12"),
                          ("--seed SEED", "0"), ("--p P", "0.25")]:  # fmt: skip
        after = text.split(flag + " ", 1)[1]
        assert f"(default {default})" in after.split(" --", 1)[0], (flag, after[:100])


@pytest.mark.parametrize(
    "argv, verbose",
    [(["info"], False), (["-v", "info"], True), (["info", "-v"], True),
     (["info", "--verbose"], True), (["-v", "complete", "X", "--rank", "2", "-v"], True)],
)  # fmt: skip
def test_v_before_or_after_the_subcommand(argv, verbose):
    assert cli.build_parser().parse_args(argv).verbose is verbose


# ------------------------------------------------------- 7, 11: usage
def test_usage_errors_exit_2_with_the_subcommands_usage(tmp_path, capsys):
    obs, _ = dsg.datasets.make_completion((30, 20), 2, 0.5, random_state=0)
    p = obs.to_zarr(tmp_path / "obs.zarr")
    rc, _, err = main(capsys, "complete", p, "--rank", "2")  # no --out
    assert rc == 2 and err.startswith("usage: dscaledgd complete ")
    assert err.rstrip().endswith("dscaledgd complete: error: the following arguments are "
                                 "required: --out")  # fmt: skip
    (tmp_path / "ratings.csv").write_text("u,m,r\n1,2,3.0\n")
    rc, _, err = main(capsys, "import", tmp_path / "ratings.csv", tmp_path / "x.zarr")
    assert rc == 2 and err.startswith("usage: dscaledgd import ")
    assert "needs --row, --col, --value" in err.splitlines()[-1]
    assert not (tmp_path / "x.zarr").exists()
    rc, _, err = main(capsys, "import", tmp_path / "ratings.csv")  # no output store
    assert rc == 2 and err.startswith("usage: dscaledgd import ")


def test_no_command_lists_the_commands():
    out = run()
    assert out.returncode == 2
    for command in ("demo", "import", "complete", "tensor-complete", "predict", "info"):
        assert f"    {command} " in out.stderr, command
    assert out.stderr.rstrip().splitlines()[-1].startswith("dscaledgd: error: ")


# -------------------------------------------------------------- 8: demo
@pytest.mark.parametrize(
    "argv, msg",
    [(["--p", "2"], "--p must be a float in (0, 1]. Got 2.0."),
     (["--p", "0"], "--p must be"),
     (["--rank", "50", "--shape", "40,30"], "--rank must be an int in [1, 30]. Got 50."),
     (["--cond", "0.5"], "--cond must be"),
     (["--max-iter", "0"], "--max-iter must be"),
     (["--tol", "-1"], "--tol must be"),
     (["--seed", "-1"], "--seed must be"),
     (["--shape", "0,5"], "--shape must be two positive integers")],
)  # fmt: skip
def test_demo_checks_its_values_before_the_banner(argv, msg, capsys, monkeypatch):
    from dscaledgd import api

    def refuse(*a, **k):
        raise AssertionError("the demo ran a fit")

    monkeypatch.setattr(api, "complete", refuse)
    rc, out, err = main(capsys, "demo", *argv, "--scheduler", "sync")
    assert rc == 1 and out == ""  # no banner
    assert err.startswith(f"dscaledgd demo: error: {msg}") and err.count("\n") == 1, err
    assert "make_completion" not in err and "make_low_rank" not in err


# ------------------------------------------------- 9: predict's messages
def test_predict_messages_in_cli_spelling(imported, capsys):
    d, res, _ = imported
    (d / "pairs.csv").write_text("userId,movieId\n1000,5000\n999999,5001\n")
    rc, _, err = main(capsys, "predict", res, d / "pairs.csv", "--out", d / "a.csv",
                      "--cold-start", "error")  # fmt: skip
    assert rc == 1 and err.count("error:") == 1 and "predict: row id" not in err
    assert "line 3, column 'userId': row id '999999' was never seen in training" in err
    assert "--cold-start nan" in err and "cold_start" not in err
    # --by index: the range in integers, the line and the column
    (d / "idx.csv").write_text("userId,movieId\n0,0\n100000,1\n")
    rc, _, err = main(capsys, "predict", res, d / "idx.csv", "--out", d / "b.csv",
                      "--by", "index")  # fmt: skip
    assert rc == 1 and "line 3, column 'userId': '100000' is not one of the 30 rows" in err
    assert "from 0 to 29" in err and "100000.0" not in err and "29.0" not in err
    # a non-numeric id: the line and the column, not numpy's message
    (d / "bad.csv").write_text("userId,movieId\n1000,5000\n1001,abc\n")
    rc, _, err = main(capsys, "predict", res, d / "bad.csv", "--out", d / "c.csv")
    assert rc == 1 and "line 3, column 'movieId': 'abc' is not a number" in err
    assert "invalid literal" not in err and "np.str_" not in err
    assert not any((d / f).exists() for f in ("a.csv", "b.csv", "c.csv"))
    # and the good case still works by index
    rc, _, err = main(capsys, "predict", res, d / "pairs.csv", "--out", d / "ok.csv")
    assert rc == 0, err
    assert (d / "ok.csv").read_text().splitlines()[2] == "999999,5001,nan"


def test_predict_by_id_without_ids_says_by_index(tmp_path, capsys):
    obs, _ = dsg.datasets.make_completion((30, 20), 2, 0.5, random_state=0)
    r = fit(dsg.complete, obs, 2, max_iter=3).to_zarr(tmp_path / "r.zarr")
    (tmp_path / "p.csv").write_text("i,j\n1,2\n")
    rc, _, err = main(capsys, "predict", r, tmp_path / "p.csv", "--out", tmp_path / "o.csv")
    assert rc == 1 and "has no original ids" in err and "Pass --by index" in err
    assert "by='index'" not in err


# ---------------------------------------------------- 10: one "complete"
@pytest.mark.parametrize(
    "command, message, shown",
    [("complete", "complete: diverged at 3", "diverged at 3"),
     ("tensor-complete", "tucker_complete: max_iter=3 reached", "max_iter=3 reached"),
     ("complete", "rpca: other", "rpca: other")],
)  # fmt: skip
def test_a_warning_names_the_command_once(command, message, shown, capsys):
    from dscaledgd.exceptions import ConvergenceWarning

    cli._one_line_warning(command)(message, ConvergenceWarning, "x.py", 1)
    assert capsys.readouterr().err == f"dscaledgd {command}: ConvergenceWarning: {shown}\n"


# ------------------------------------------------- 3: the docs tell which
def test_docs_say_which_subcommands_take_scheduler_and_out():
    """docs/cli.md's table of options agrees with the parser (it once said every
    subcommand has --scheduler and --out)."""
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "cli.md")) as fh:
        doc = fh.read()
    assert "Every subcommand has `--help`, `--scheduler" not in doc
    parser = cli.build_parser()
    names = next(a.choices for a in parser._actions if isinstance(a.choices, dict))

    def takes(flag):
        return {n for n, sp in names.items() if flag in sp._option_string_actions}

    def documented(row_start):
        (row,) = [ln for ln in doc.splitlines() if ln.startswith(row_start)]
        cells = row.split("|")[2]
        return {c for c in re.findall(r"`([a-z-]+)`", cells) if c in names}

    assert documented("| `--scheduler ADDRESS`") == takes("--scheduler")
    assert documented("| `--out PATH`, `--overwrite`") == takes("--out")
    assert documented("| `--overwrite` only") == takes("--overwrite") - takes("--out")
    assert documented("| neither") == set(names) - takes("--overwrite")
