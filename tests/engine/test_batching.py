"""Tasks sent to the scheduler as one graph per wait (dscaledgd/engine/batching.py).

A real 2-worker LocalCluster (the session's ``client``). The scheduler's own
``update_graph`` hook counts the graphs that reach it.
"""

from __future__ import annotations

import gc
import operator
import threading
import time

import dask
import numpy as np
import pytest
from distributed.diagnostics.plugin import SchedulerPlugin

import dscaledgd as dsg
from dscaledgd.engine import batching
from dscaledgd.engine.executors import DistributedExecutor

pytestmark = pytest.mark.skipif(not batching.supported(), reason="dask too old to batch")


class GraphCounter(SchedulerPlugin):
    """Graphs and tasks the scheduler received, and each task's worker restriction."""

    name = "test-graph-counter"

    def __init__(self):
        self.graphs, self.tasks, self.restricted = 0, set(), {}

    def update_graph(self, scheduler, *, keys, tasks, **kwargs):
        self.graphs += 1
        self.tasks.update(k for k in tasks if str(k).startswith("dscaledgd-"))
        for k in tasks:
            ts = scheduler.tasks.get(k)
            if ts is not None and ts.worker_restrictions:
                self.restricted[k] = (set(ts.worker_restrictions), ts.loose_restrictions)


@pytest.fixture
def counter(client):
    plugin = GraphCounter()
    client.register_plugin(plugin)
    yield lambda: client.run_on_scheduler(
        lambda dask_scheduler: (lambda p: (p.graphs, len(p.tasks), dict(p.restricted)))(
            dask_scheduler.plugins[GraphCounter.name]
        )
    )
    client.unregister_scheduler_plugin(GraphCounter.name)


def _fit(obs, client, batch: bool):
    with dask.config.set({"dscaledgd.batch-tasks": batch}):
        return dsg.complete(
            obs, 4, client=client, max_iter=6, tol=1e-300, stall_tol=0.0, random_state=0,
            init_power_iter=1, progress=False,
        )  # fmt: skip


@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")
def test_a_run_sends_a_few_graphs_not_one_per_task_and_the_same_bits(client, counter):
    obs, _ = dsg.datasets.make_completion((600, 500), 4, 0.1, tiles=(4, 2), random_state=0)
    g0, t0, _ = counter()
    batched = _fit(obs, client, True)
    g1, t1, where = counter()
    single = _fit(obs, client, False)
    g2, t2, _ = counter()
    graphs, tasks = g1 - g0, t1 - t0
    assert tasks == t2 - t1 > 200  # the same tasks either way (distinct keys)
    assert g2 - g1 > 0.9 * (t2 - t1)  # task by task: a graph each (keys count scatters too)
    assert graphs * 8 < tasks, (graphs, tasks)  # batched: many tasks per graph
    # every batched task kept its worker, as a preference (allow_other_workers)
    addrs = set(client.scheduler_info()["workers"])
    assert all(len(w) == 1 and w <= addrs and loose for w, loose in where.values())
    pinned = [next(iter(w)) for w, _ in where.values()]  # submit_on; submit: unrestricted
    assert len(pinned) > tasks / 2 and set(pinned) == addrs  # both workers used
    np.testing.assert_array_equal(batched.history["loss"], single.history["loss"])


def test_inputs_outlive_their_handles_until_the_graph_is_sent(client, counter):
    ex = DistributedExecutor(client)
    [x] = ex.scatter([np.arange(4.0)])
    a = ex.submit(operator.add, x, 1.0, name="a")
    ex.flush()  # a is on the scheduler, b (which reads it) is not yet
    b = ex.submit(operator.mul, a, 2.0, name="b")
    del a  # the graph names its input by key only: the batch must hold a's future
    gc.collect()
    ex.flush()
    c = ex.submit(operator.add, b, 1.0, name="c")
    ex.release(b)  # b is sent, c is not: b's release must follow c's graph
    time.sleep(20 * batching.DELAY)  # (the release reaches the scheduler meanwhile)
    np.testing.assert_array_equal(ex.gather(c), 2.0 * (np.arange(4.0) + 1.0) + 1.0)
    # the timer sends a batch nobody waits for
    g0, _, _ = counter()
    d = ex.submit(operator.neg, x, name="d")
    deadline = time.monotonic() + 5
    while counter()[0] == g0 and time.monotonic() < deadline:
        time.sleep(batching.DELAY)
    assert counter()[0] == g0 + 1
    assert len(ex._batch) == 0
    np.testing.assert_array_equal(ex.gather(d), -np.arange(4.0))


def test_a_task_that_cannot_be_sent_raises_at_the_wait_and_the_executor_goes_on(client):
    ex = DistributedExecutor(client)
    [x] = ex.scatter([np.ones(2)])
    bad = ex.submit(operator.add, x, threading.Lock(), name="bad")  # a lock does not pickle
    time.sleep(20 * batching.DELAY)  # the timer's flush fails on the event loop
    with pytest.raises(TypeError, match="serialize"):
        ex.gather(bad)
    ok = ex.submit(operator.add, x, 1.0, name="ok")
    np.testing.assert_array_equal(ex.gather(ok), np.full(2, 2.0))


def test_off_by_dask_config():
    with dask.config.set({"dscaledgd.batch-tasks": False}):
        assert not batching.supported()
    assert batching.supported()
