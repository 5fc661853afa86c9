"""Workers paused for memory: a warning naming each, and an error when all stay paused.

A real 2-process LocalCluster on 127.0.0.1 whose workers are told to pause at
1% of their memory limit (the threshold ``distributed.worker.memory.pause``
sets), before or during a run: without the watch the run would wait forever
(a CI run hung this way for 10 minutes on workers restarted at 95% of 500 MiB).
"""

from __future__ import annotations

import time

import dask
import pytest

import dscaledgd as dsg
from dscaledgd.engine import executors as ex
from dscaledgd.engine.health import PauseWatch

from ..conftest import local_cluster

pytestmark = pytest.mark.timeout(120)


def _cluster():
    from distributed import Client

    cl = local_cluster(memory_limit="2GiB")
    return cl, Client(cl)


def _pause_at(fraction):
    """On a worker: pause once the process uses ``fraction`` of its memory limit."""

    def run(dask_worker):
        dask_worker.memory_manager.memory_pause_fraction = fraction

    return run


def _wait_paused(c, n=2):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the memory monitor runs every 100 ms
        status = [w["status"] for w in c.scheduler_info()["workers"].values()]
        if status == ["paused"] * n:
            return status
        time.sleep(0.1)
    raise AssertionError(f"workers not paused: {status}")


@pytest.fixture
def short_waits(monkeypatch):
    monkeypatch.setattr(ex, "POLL", 0.5)
    with dask.config.set({"dscaledgd.paused-timeout": "3s", "dscaledgd.scheduler-timeout": "3s"}):
        yield


def test_a_run_on_paused_workers_ends_with_a_clear_error(short_waits):
    """Paused before the run: nothing can be scattered (Dask scatters to running workers
    only), and the error says why instead of Dask's 'No valid workers found'."""
    obs, _ = dsg.datasets.make_completion((200, 150), rank=3, p=0.3, random_state=0)
    cl, c = _cluster()
    with cl, c:
        c.run(_pause_at(0.01))
        status = _wait_paused(c)
        t0 = time.monotonic()
        with (
            pytest.warns(dsg.ClusterWarning, match=r"is paused: its process uses \d+ MiB of"),
            pytest.raises(dsg.ClusterError, match="No running worker .* paused") as err,
        ):
            dsg.complete(obs, 3, client=c, max_iter=5, random_state=0, progress=False)
        assert time.monotonic() - t0 < 20
        assert status == ["paused", "paused"]
        assert all(a in str(err.value) for a in c.scheduler_info()["workers"])
        assert "memory_limit" in str(err.value)


def test_workers_paused_during_a_run_end_it_after_the_paused_timeout(short_waits):
    """Paused between two iterations: the wait warns for each worker, then gives up
    after 'dscaledgd.paused-timeout' instead of waiting forever."""
    obs, _ = dsg.datasets.make_completion((200, 150), rank=3, p=0.3, random_state=0)
    cl, c = _cluster()
    seen = []

    def pause(state):
        if state.iteration == 2:
            c.run(_pause_at(0.01))
            seen.extend(_wait_paused(c))

    with cl, c:
        t0 = time.monotonic()
        with (
            pytest.warns(dsg.ClusterWarning, match="is paused") as warned,
            pytest.raises(dsg.ClusterError, match="has been paused for memory for more than 3 s"),
        ):
            dsg.complete(obs, 3, client=c, max_iter=500, tol=1e-300, random_state=0,
                         progress=False, callback=pause)  # fmt: skip
        assert time.monotonic() - t0 < 30
    assert seen == ["paused", "paused"]
    assert len({str(w.message).split()[2] for w in warned}) == 2  # one per worker


def _ident(*status):
    return {
        "workers": {
            f"tcp://127.0.0.1:{4000 + i}": {
                "status": s,
                "memory_limit": 2**30,
                "metrics": {"memory": 900 * 2**20},
            }
            for i, s in enumerate(status)
        }
    }


def test_pause_watch_warns_once_per_worker_and_forgives_a_resume(monkeypatch):
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    clock = [0.0]
    w = PauseWatch("tcp://127.0.0.1:8786")
    with dask.config.set({"dscaledgd.paused-timeout": "10s"}):
        with pytest.warns(dsg.ClusterWarning, match="4000 is paused: .* 900 MiB of its 1024"):
            w.check(_ident("paused", "running"))
        w.check(_ident("paused", "running"))  # no second warning (warnings are errors here)
        clock[0] = 100.0
        w.check(_ident("paused", "running"))  # one worker still runs: no error
        with pytest.warns(dsg.ClusterWarning, match="4001 is paused"):
            w.check(_ident("paused", "paused"))
        clock[0] = 109.0
        w.check(_ident("paused", "paused"))  # paused for 9 s of the 10
        clock[0] = 110.0
        w.check(_ident("running", "paused"))  # one resumed: the clock starts again
        clock[0] = 111.0
        w.check(_ident("paused", "paused"))
        clock[0] = 120.0
        w.check(_ident("paused", "paused"))
        clock[0] = 121.5
        with pytest.raises(dsg.ClusterError, match=r"for more than 10 s \(tcp://127.0.0.1:4000"):
            w.check(_ident("paused", "paused"))
