"""``--checkpoint`` and ``dscaledgd resume DIR`` (issue 15): a command killed with
SIGKILL is continued by ``resume`` to the result an uninterrupted command writes."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd.cli import main

from ._procs import kill_at_checkpoint

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::dscaledgd.exceptions.ConvergenceWarning"),
]

FIT = ["--rank", "5", "--tol", "1e-30", "--stall-tol", "0", "--checkpoint-interval", "5"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the commands use relative paths, as a user would
    obs, _ = dsg.datasets.make_completion((300, 200), rank=5, p=0.3, cond=10, random_state=0)
    obs.to_zarr("obs.zarr")
    return tmp_path


def _same_result(a, b):
    ra, rb = dsg.load_result(a), dsg.load_result(b)
    assert ra.n_iter == rb.n_iter and ra.status == rb.status
    for x, y in zip(ra.factors, rb.factors):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(rb.history["loss"], ra.history["loss"], rtol=1e-12)


def test_killed_command_resumes_from_its_directory(store):
    cmd = [sys.executable, "-m", "dscaledgd", "complete", "obs.zarr", *FIT, "--max-iter", "400",
           "--checkpoint", "ck", "--out", "killed.zarr"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    last = kill_at_checkpoint(cmd, "ck", 10, env=env)
    assert not os.path.exists("killed.zarr")
    assert 10 <= last < 60
    os.chdir("/")  # resume finds the paths of the stored command from anywhere
    assert main(["resume", str(store / "ck"), "--max-iter", "60", "--out",
                 str(store / "resumed.zarr")]) == 0  # fmt: skip
    os.chdir(store)
    assert dsg.load_result("resumed.zarr").info["resumed_from"] == last
    assert main(["complete", "obs.zarr", *FIT, "--max-iter", "60", "--out", "full.zarr"]) == 0
    _same_result("full.zarr", "resumed.zarr")


def test_resume_errors_in_cli_spelling(store, capsys):
    assert main(["complete", "obs.zarr", *FIT, "--max-iter", "6", "--checkpoint", "ck",
                 "--out", "a.zarr"]) == 0  # fmt: skip
    assert main(["complete", "obs.zarr", *FIT, "--max-iter", "6", "--checkpoint", "ck",
                 "--out", "b.zarr"]) == 1  # fmt: skip
    assert "Pass --resume to continue" in capsys.readouterr().err
    assert main(["complete", "obs.zarr", *FIT, "--rank", "4", "--checkpoint", "ck",
                 "--resume", "--out", "b.zarr"]) == 1  # fmt: skip
    assert "rank: checkpoint 5, now 4" in capsys.readouterr().err
    assert main(["resume", "nowhere"]) == 1
    assert "holds no checkpoint" in capsys.readouterr().err
    assert main(["complete", "obs.zarr", *FIT, "--checkpoint", "new", "--resume",
                 "--out", "b.zarr"]) == 1  # fmt: skip
    assert "--resume auto" in capsys.readouterr().err
    assert main(["complete", "obs.zarr", *FIT, "--max-iter", "6", "--checkpoint", "new",
                 "--resume", "auto", "--out", "b.zarr"]) == 0  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(["complete", "obs.zarr", *FIT, "--checkpoint-interval", "0", "--out", "c.zarr"])
    assert exc.value.code == 2
    assert "--checkpoint-interval" in capsys.readouterr().err


def test_resume_refuses_checkpoints_written_from_python(store, capsys):
    dsg.complete("obs.zarr", 5, max_iter=5, checkpoint="py", checkpoint_interval=5,
                 scheduler="threads")  # fmt: skip
    assert main(["resume", "py"]) == 1
    assert "written by the Python API" in capsys.readouterr().err
