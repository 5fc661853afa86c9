"""A hung, killed or worker-less scheduler ends the run with a message naming it (issue 12).

Real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1, signalled by PID.
"""

from __future__ import annotations

import signal
import time

import dask
import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd.engine import executors as cl
from dscaledgd.engine.replicas import PREFIX

from ._procs import ProcessCluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def short_timeout(monkeypatch):
    monkeypatch.setattr(cl, "POLL", 0.5)
    with dask.config.set({"dscaledgd.scheduler-timeout": "3s"}):
        yield


def _obs():
    obs, _ = dsg.datasets.make_completion((300, 200), rank=3, p=0.3, cond=10, random_state=0)
    return obs


def _signal_at(pc, iteration, sig):
    def cb(state):
        if state.iteration == iteration:
            pc.signal_scheduler(sig)

    return cb


@pytest.mark.slow  # about 20 s: with the slow tests, keeping the default run short
def test_hung_scheduler_times_out_naming_the_address(short_timeout):
    pc = ProcessCluster(1)
    try:
        t0 = None

        def cb(state):
            nonlocal t0
            if state.iteration == 2:
                pc.signal_scheduler(signal.SIGSTOP)
                t0 = time.monotonic()

        with pytest.raises(dsg.ClusterError, match=r"did not answer within 3 s") as err:
            dsg.complete(_obs(), 3, address=pc.address, callback=cb, random_state=0)
        assert pc.address in str(err.value)
        assert time.monotonic() - t0 < 30  # not "for as long as it is stopped"
    finally:
        pc.signal_scheduler(signal.SIGCONT)
        pc.close()


def test_killed_scheduler_is_reported_gone(short_timeout):
    pc = ProcessCluster(1)
    try:
        with pytest.raises(dsg.ClusterError, match=r"scheduler at .* is gone"):
            dsg.complete(_obs(), 3, address=pc.address, callback=_signal_at(pc, 2, signal.SIGKILL))
    finally:
        pc.close()


def test_scheduler_without_workers_waits_then_refuses(short_timeout):
    pc = ProcessCluster(0)
    try:
        t = time.monotonic()
        with pytest.raises(dsg.ClusterError, match=r"No worker joined .* within 3 s"):
            dsg.complete(_obs(), 3, address=pc.address)
        assert time.monotonic() - t < 30
    finally:
        pc.close()


def test_scheduler_without_workers_waits_for_one(short_timeout):
    pc = ProcessCluster(0)
    try:
        with dask.config.set({"dscaledgd.scheduler-timeout": "60s"}):
            pc.workers.append(pc.add_worker())  # joins while complete() waits
            res = dsg.complete(_obs(), 3, address=pc.address, random_state=0)
        assert res.converged
    finally:
        pc.close()


def test_cli_scheduler_file_and_wait_for_workers(short_timeout, tmp_path, capsys):
    """--scheduler-file waits for the file; --wait-for-workers N waits for N workers, and
    says how many came when they do not (issue 15)."""
    from dscaledgd import cli

    obs_p = _obs().to_zarr(tmp_path / "obs.zarr")
    sfile = str(tmp_path / "scheduler.json")
    argv = ["complete", obs_p, "--rank", "3", "--scheduler-file", sfile, "--seed", "0"]
    # no scheduler wrote the file: a bounded wait, then a one-line error naming it
    t = time.monotonic()
    assert cli.main([*argv, "--out", str(tmp_path / "r0.zarr")]) == 1
    err = capsys.readouterr().err
    assert f"The scheduler file {sfile!r} does not exist after 3 s" in err
    assert time.monotonic() - t < 30
    pc = ProcessCluster(1, scheduler_file=sfile)
    try:
        # two workers asked for, one there: refused after the timeout, saying so
        assert cli.main([*argv, "--wait-for-workers", "2", "--out", str(tmp_path / "r1.zarr")]) == 1
        err = capsys.readouterr().err
        assert f"Only 1 of 2 workers joined the Dask scheduler at {pc.address}" in err
        assert "--wait-for-workers" in err
        # the second joins while the run waits for it
        with dask.config.set({"dscaledgd.scheduler-timeout": "60s"}):
            pc.workers.append(pc.add_worker())
            out = str(tmp_path / "r2.zarr")
            assert cli.main([*argv, "--wait-for-workers", "2", "--out", out]) == 0
        res = dsg.load_result(out)
        assert res.converged and res.info["scheduler_address"] == pc.address
        assert res.info["executor"] == "distributed"
        assert cli.main([*argv, "--scheduler", "sync", "--out", str(tmp_path / "r3.zarr")]) == 1
        assert "either --scheduler or --scheduler-file" in capsys.readouterr().err
    finally:
        pc.close()


@pytest.mark.parametrize("address", ["not an address", "tcp://127.0.0.1"])
def test_malformed_address_is_refused(address):
    with pytest.raises(dsg.InvalidParameterError, match="'address' parameter .* Got"):
        dsg.complete(_obs(), 3, address=address)


def test_scattered_items_keep_two_copies_through_the_memory_manager(client):
    """ReduceReplicas would drop the second copy within 2 s (see engine/replicas.py)."""
    ex = cl.DistributedExecutor(client)
    futs = ex.scatter([np.arange(1000.0) + k for k in range(4)])
    assert all(f.key.startswith(PREFIX) for f in futs)
    other = client.scatter(np.ones(1000), broadcast=True)
    client.amm.run_once()
    deadline = time.time() + 10
    while len(client.who_has([other])[other.key]) > 1 and time.time() < deadline:
        time.sleep(0.05)
    assert len(client.who_has([other])[other.key]) == 1  # others' keys: reduced as before
    assert all(len(v) == 2 for v in client.who_has(futs).values())
    assert [float(x[0]) for x in client.gather(futs)] == [0.0, 1.0, 2.0, 3.0]
