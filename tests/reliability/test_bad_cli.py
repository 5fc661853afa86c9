"""The CLI cases of ``shared/reliability/bad-inputs.md``, reproduced as described.

Every case runs ``dscaledgd.cli.main`` in-process (the installed ``dscaledgd``
script calls the same function) and must end with a non-zero exit code and
one line on stderr that names the problem: no traceback, no zero exit. Usage
errors exit with 2 (argparse), bad data or paths with 1. Outputs are refused
before any data is read or any fit runs.
"""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import api
from dscaledgd.cli import main


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The probe's 60×50 store and a result fitted on it, written once."""
    base = tmp_path_factory.mktemp("valid")
    obs, _ = dsg.datasets.make_completion((60, 50), 2, 0.5, random_state=0)
    res = dsg.complete(obs, 2, scheduler="sync", random_state=0)
    return {
        "obs": obs.to_zarr(str(base / "obs.zarr")),
        "res": res.to_zarr(str(base / "res.zarr")),
    }


def _copy(stores, tmp_path, which) -> str:
    dst = str(tmp_path / f"{which}.zarr")
    shutil.copytree(stores[which], dst)
    return dst


def _no_work(monkeypatch):
    """Fail the test if any data is read or any fit runs."""

    def refuse(*a, **k):
        raise AssertionError("the command did work before checking its output")

    monkeypatch.setattr(api, "complete", refuse)
    monkeypatch.setattr(dsg.Observations, "open_zarr", refuse)


# ----------------------------------------------------------------- builders
def _cli_complete_out_exists(tmp_path, stores, monkeypatch):
    out = tmp_path / "res.zarr"
    out.mkdir()
    _no_work(monkeypatch)
    return ["complete", stores["obs"], "--rank", "2", "--out", str(out), "--scheduler", "sync"]


def _cli_complete_out_readonly(tmp_path, stores, monkeypatch):
    # root ignores permission bits, so as root the unwritable directory is /proc
    # (no file can be created there); otherwise a directory made read-only by chmod
    if os.geteuid() == 0:
        parent = "/proc"
    else:
        parent = str(tmp_path / "ro")
        os.mkdir(parent)
        os.chmod(parent, 0o555)
    _no_work(monkeypatch)
    out = os.path.join(parent, "dscaledgd-res.zarr")
    return ["complete", stores["obs"], "--rank", "2", "--out", out, "--scheduler", "sync"]


def _cli_complete_scheduler_typo(tmp_path, stores, monkeypatch):
    _no_work(monkeypatch)
    out = str(tmp_path / "res.zarr")
    return ["complete", stores["obs"], "--rank", "2", "--out", out, "--scheduler", "thread"]


def _cli_complete_truncated_chunk(tmp_path, stores, monkeypatch):
    path = _copy(stores, tmp_path, "obs")
    chunk = os.path.join(path, "values", "c", "0")
    with open(chunk, "r+b") as fh:
        fh.truncate(os.path.getsize(chunk) // 2)
    out = str(tmp_path / "res.zarr")
    return ["complete", path, "--rank", "2", "--out", out, "--scheduler", "sync"]


def _cli_import_corrupt_npz(tmp_path, stores, monkeypatch):
    src = tmp_path / "coo.npz"
    src.write_bytes(np.random.default_rng(0).bytes(4096))
    return ["import", str(src), str(tmp_path / "obs.zarr")]


def _cli_evaluate_deleted_L(tmp_path, stores, monkeypatch):
    path = _copy(stores, tmp_path, "res")
    for name in os.listdir(os.path.join(path, "L", "c", "0")):
        os.remove(os.path.join(path, "L", "c", "0", name))
    return ["evaluate", path, stores["obs"]]


def _cli_info_corrupt_obs(tmp_path, stores, monkeypatch):
    path = _copy(stores, tmp_path, "obs")
    shutil.rmtree(os.path.join(path, "row_counts"))
    return ["info", path]


def _cli_demo_workers0(tmp_path, stores, monkeypatch):
    _no_work(monkeypatch)
    return ["demo", "--workers", "0"]


def _cli_demo_every0(tmp_path, stores, monkeypatch):
    _no_work(monkeypatch)
    return ["demo", "--every", "0"]


#: case -> (builder of the argv, exit code, pattern of the one stderr line)
CASES = {
    "cli_complete_out_exists": (
        _cli_complete_out_exists,
        1,
        r"^dscaledgd complete: error: The --out path '.*res\.zarr' already exists\. "
        r"Pass --overwrite to replace it",
    ),
    "cli_complete_out_readonly": (
        _cli_complete_out_readonly,
        1,
        r"^dscaledgd complete: error: Cannot write --out '.*dscaledgd-res\.zarr': the "
        r"directory '.*' is not writable.*Choose a writable location\.$",
    ),
    "cli_complete_scheduler_typo": (
        _cli_complete_scheduler_typo,
        2,
        r"argument --scheduler: invalid value 'thread': expected threads, sync, distributed, "
        r"or a scheduler address such as tcp://127\.0\.0\.1:8786",
    ),
    "cli_complete_truncated_chunk": (
        _cli_complete_truncated_chunk,
        1,
        r"^dscaledgd complete: error: .*values",
    ),
    "cli_import_corrupt_npz": (
        _cli_import_corrupt_npz,
        1,
        r"^dscaledgd import: error: '.*coo\.npz' is not a valid \.npz file",
    ),
    "cli_evaluate_deleted_L": (
        _cli_evaluate_deleted_L,
        1,
        r"^dscaledgd evaluate: error: The result store '.*res\.zarr' is corrupt or truncated: "
        r"array 'L' has 0 of 1 chunks",
    ),
    "cli_info_corrupt_obs": (
        _cli_info_corrupt_obs,
        1,
        r"^dscaledgd info: error: The Observations store '.*obs\.zarr' is truncated.*row_counts",
    ),
    "cli_demo_workers0": (
        _cli_demo_workers0,
        2,
        r"argument --workers: must be a positive integer; got '0'",
    ),
    "cli_demo_every0": (
        _cli_demo_every0,
        2,
        r"argument --every: must be a positive integer; got '0'",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_cli_input(case, tmp_path, stores, monkeypatch, capsys):
    build, code, match = CASES[case]
    argv = build(tmp_path, stores, monkeypatch)
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    if code == 2:  # argparse: the usage, then one error line
        assert lines[0].startswith("usage: dscaledgd ") and "error:" not in "".join(lines[:-1])
    else:
        assert len(lines) == 1, err
    assert re.search(match, lines[-1]), lines[-1]
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # nothing half-written
