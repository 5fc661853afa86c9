"""Temporary stores are removed with their owner; killed writers' siblings are cleaned."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import InputDataError, Observations
from dscaledgd.storage import layout

CSV = "userId,movieId,rating,timestamp\n" + "".join(
    f"{u},{m},{(u + m) % 5 + 0.5},0\n" for u in range(1, 7) for m in (10, 20, 30)
)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The temp directory of this test only (other processes share the real one)."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _ratings(tmp_path, text=CSV, name="ratings.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ------------------------------------------------------------ temporary stores
@pytest.mark.parametrize("how", ["close", "with", "gc"])
def test_from_csv_without_out_owns_a_temporary_store(tmp_path, private_tmp, how):
    csv = _ratings(tmp_path)
    obs = Observations.from_csv(csv, "userId", "movieId", "rating")
    assert obs.is_temporary and os.path.isdir(obs.path)
    assert os.path.dirname(obs.path).startswith(str(private_tmp))
    assert obs.nnz == 18
    if how == "close":
        obs.close()
        obs.close()  # twice is fine
    elif how == "with":
        with obs as o:
            assert o.to_coo()[2].size == 18
    else:
        del obs
        gc.collect()
    assert os.listdir(private_tmp) == []


def test_from_csv_with_out_is_not_temporary(tmp_path, private_tmp):
    out = str(tmp_path / "o.zarr")
    obs = Observations.from_csv(_ratings(tmp_path), "userId", "movieId", "rating", out=out)
    assert not obs.is_temporary
    obs.close()
    assert os.path.isdir(out) and os.listdir(private_tmp) == []


def test_failed_from_csv_leaves_no_temporary_store(tmp_path, private_tmp):
    bad = _ratings(tmp_path, "userId,movieId,rating\n1,10,4\n1,10,5\n")  # duplicate
    with pytest.raises(InputDataError, match="Duplicate observation"):
        Observations.from_csv(bad, "userId", "movieId", "rating")
    assert os.listdir(private_tmp) == []
    assert [n for n in os.listdir(tmp_path) if n.startswith(".dscaledgd")] == []


@pytest.mark.parametrize("name", ["ratings.csv", "ratings.dat"])
def test_load_movielens_without_out_is_temporary(tmp_path, private_tmp, name):
    if name.endswith(".dat"):  # ml-1m format: UserID::MovieID::Rating::Timestamp, no header
        text = "".join(line.replace(",", "::") + "\n" for line in CSV.splitlines()[1:])
    else:
        text = CSV
    path = _ratings(tmp_path, text, name)
    obs = dsg.datasets.load_movielens(path, download=False)
    assert obs.is_temporary and obs.shape == (6, 3)
    assert obs.col_ids.tolist() == [10, 20, 30]
    obs.close()
    assert os.listdir(private_tmp) == []


# ------------------------------------------------------------ stale siblings
def _siblings(path):
    parent, base = os.path.split(path)
    return sorted(n for n in os.listdir(parent) if n.startswith(f".{base}."))


_KILLED_WRITER = """
import sys, time
import numpy as np
from dscaledgd import Observations
from dscaledgd.storage import layout

obs = Observations.from_coo(np.arange(50), np.arange(50) % 7, np.ones(50))
real = layout.write_small_array

def slow(group, name, data):
    real(group, name, data)
    print("writing", flush=True)  # the entries are on disk, the metadata is not
    time.sleep(120)

layout.write_small_array = slow
obs.to_zarr(sys.argv[1])
"""


def test_sigkilled_writer_leaves_a_sibling_that_the_next_write_removes(tmp_path):
    path = str(tmp_path / "obs.zarr")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, path], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    left = _siblings(path)
    assert len(left) == 1 and left[0].endswith(f"-{proc.pid}") and ".tmp-" in left[0]
    assert not os.path.exists(path)
    obs = Observations.from_coo(np.arange(5), np.arange(5), np.ones(5))
    obs.to_zarr(path)  # the next write to that destination cleans up
    assert _siblings(path) == []
    assert Observations.open_zarr(path).nnz == 5


def test_remove_stale_siblings_rules(tmp_path):
    path = str(tmp_path / "res.zarr")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = layout._HOST
    names = {
        "dead_here": f".res.zarr.tmp-{'a' * 12}-{host}-{dead.pid}",
        "old_dead": f".res.zarr.old-{'b' * 12}-{host}-{dead.pid}",
        "alive_here": f".res.zarr.tmp-{'c' * 12}-{host}-{os.getpid()}",
        "other_host_young": f".res.zarr.tmp-{'d' * 12}-elsewhere-{dead.pid}",
        "other_host_old": f".res.zarr.tmp-{'e' * 12}-elsewhere-{dead.pid}",
        "legacy_young": f".res.zarr.tmp-{'f' * 12}",
        "legacy_old": f".res.zarr.tmp-{'0' * 12}",
        "other_dest": f".res2.zarr.tmp-{'1' * 12}-{host}-{dead.pid}",
        "not_ours": ".res.zarr.backup",
    }
    for n in names.values():
        os.makedirs(tmp_path / n / "L" / "c")
    day_ago = time.time() - layout.STALE_AGE_S - 60
    for k in ("other_host_old", "legacy_old"):
        os.utime(tmp_path / names[k], (day_ago, day_ago))
    removed = layout.remove_stale_siblings(path)
    gone = {k for k, n in names.items() if not os.path.exists(tmp_path / n)}
    assert gone == {"dead_here", "old_dead", "other_host_old", "legacy_old"}
    assert sorted(os.path.basename(p) for p in removed) == sorted(names[k] for k in gone)


def test_temporary_sibling_names_record_host_and_pid(tmp_path):
    path = str(tmp_path / "x.zarr")
    with layout.atomic_dir(path) as tmp:
        name = os.path.basename(tmp)
        assert name.startswith(".x.zarr.tmp-") and name.endswith(f"-{layout._HOST}-{os.getpid()}")
        os.makedirs(tmp)
        assert layout.remove_stale_siblings(path) == []  # a live writer's is kept
    assert os.path.isdir(path) and _siblings(path) == []


def test_scratch_dirs_of_dead_writers_are_removed_on_the_next_import(tmp_path):
    """Import scratch space and temporary stores left by a SIGKILLed process (no clean-up
    runs) are removed by the next process that makes one with the same prefix."""
    import subprocess
    import sys

    from dscaledgd.storage import layout

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    host = layout._HOST
    names = {
        "dead": f".dscaledgd-ingest-{'a' * 12}-{host}-{dead_pid}",
        "live": f".dscaledgd-ingest-{'b' * 12}-{host}-{os.getpid()}",
        "other_host_young": f".dscaledgd-ingest-{'c' * 12}-elsewhere-{dead_pid}",
        "other_host_old": f".dscaledgd-ingest-{'d' * 12}-elsewhere-{dead_pid}",
        "other_prefix": f".dscaledgd-csv-{'e' * 12}-{host}-{dead_pid}",
        "user_dir": ".dscaledgd-ingest-mine",
    }
    for n in names.values():
        (tmp_path / n).mkdir()
    old = os.path.getmtime(tmp_path) - 2 * layout.STALE_AGE_S
    os.utime(tmp_path / names["other_host_old"], (old, old))
    new = layout.scratch_dir(str(tmp_path), ".dscaledgd-ingest-")
    left = {p.name for p in tmp_path.iterdir()}
    assert os.path.basename(new) in left and new.endswith(f"-{host}-{os.getpid()}")
    gone = {"dead", "other_host_old"}
    assert {k for k, n in names.items() if n not in left} == gone
