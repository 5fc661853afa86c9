"""A run on a cluster: low-latency messaging (engine/latency.py) put back afterwards, and
the dashboard spans of a solve."""

from __future__ import annotations

import time

import dask
import pytest

import dscaledgd as dsg


def _intervals(client):
    sched = client.run_on_scheduler(
        lambda dask_scheduler: sorted(c.interval for c in dask_scheduler.stream_comms.values())
    )
    workers = sorted(client.run(lambda dask_worker: dask_worker.batched_stream.interval).values())
    return client.scheduler_comm.interval, sched, workers


@pytest.mark.parametrize("setting", [None, False])
def test_message_intervals_are_zero_during_a_run_and_restored_after(client, setting):
    obs, _ = dsg.datasets.make_completion((80, 60), 2, 0.5, random_state=0)
    before = _intervals(client)
    assert before[0] > 0 and min(before[1]) > 0 and min(before[2]) > 0  # distributed's
    seen = []

    def cb(state):
        if state.iteration == 1:
            seen.append(_intervals(client))

    cfg = {} if setting is None else {"dscaledgd.low-latency": setting}
    with dask.config.set(cfg):
        res = dsg.complete(obs, 2, client=client, callback=cb, random_state=0)
    assert res.status == "converged" and len(seen) == 1
    if setting is None:
        assert seen[0] == (0.0, [0.0, 0.0], [0.0, 0.0])
    else:
        assert seen[0] == before
    assert _intervals(client) == before


def test_a_failed_run_still_restores_the_intervals(client):
    obs, _ = dsg.datasets.make_completion((80, 60), 2, 0.5, random_state=0)
    before = _intervals(client)

    def boom(state):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        dsg.complete(obs, 2, client=client, callback=boom, random_state=0)
    assert _intervals(client) == before


def test_one_dashboard_span_per_solve_with_init_and_iterations_nested(client):
    obs, _ = dsg.datasets.make_completion((80, 60), 2, 0.5, random_state=0)
    dsg.complete(obs, 2, client=client, random_state=0)

    def names(dask_scheduler):
        return sorted({tuple(s.name) for s in dask_scheduler.extensions["spans"].spans.values()})

    seen = client.run_on_scheduler(names)
    for want in (
        ("dscaledgd-complete",),
        ("dscaledgd-complete", "dscaledgd-init"),
        ("dscaledgd-complete", "dscaledgd-iter"),
    ):
        assert want in seen, seen


def test_starting_a_cluster_prints_the_dashboard_link_when_someone_watches(monkeypatch, capsys):
    from dscaledgd.engine import cluster

    for watched in (False, True):
        monkeypatch.setattr(cluster, "interactive", lambda watched=watched: watched)
        with cluster.executor_for(scheduler="distributed", n_workers=1, threads_per_worker=1):
            pass
        err = capsys.readouterr().err
        shown = "dscaledgd: started a LocalCluster of 1 workers; dashboard at http" in err
        assert shown is watched, err


def test_overlapping_runs_leave_the_intervals_as_they_were(client):
    """Two runs at once: the first to finish must not restore under the second, and the
    second must not 'restore' the zeros the first set (reference counted per process)."""
    import threading

    obs, _ = dsg.datasets.make_completion((80, 60), 2, 0.5, random_state=0)
    before = _intervals(client)
    during = []
    gate = threading.Event()

    def slow(state):
        if state.iteration == 1:
            gate.wait(30)  # hold run A open while run B starts and finishes
            during.append(_intervals(client))

    a = threading.Thread(
        target=lambda: dsg.complete(obs, 2, client=client, callback=slow, random_state=0)
    )
    a.start()
    time.sleep(1.0)
    dsg.complete(obs, 2, client=client, random_state=1)  # B: starts and ends inside A
    gate.set()
    a.join(60)
    assert during and during[0] == (0.0, [0.0, 0.0], [0.0, 0.0])  # still low during A
    assert _intervals(client) == before
