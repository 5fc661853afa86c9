"""Shared fixtures: rng, backend (numpy|dask), client, planted_problem."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd.api import complete_oracle

DATA_DIR = os.environ.get(
    "DSCALEDGD_DATA",
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"),
)


def edit_store_attrs(path, fn) -> None:
    """Apply ``fn`` to the ``dscaledgd`` attrs of the store at ``path``, in its zarr.json."""
    meta = os.path.join(path, "zarr.json")
    with open(meta) as fh:
        doc = json.load(fh)
    fn(doc["attributes"]["dscaledgd"])
    with open(meta, "w") as fh:
        json.dump(doc, fh)


def scheduler_task_counter(client, every: int = 10, stop_at: int = 100):
    """``(counts, callback)``: the callback records the scheduler's task count every
    ``every`` iterations and stops the run at iteration ``stop_at``."""
    counts: list = []

    def cb(state):
        if state.iteration % every == 0:
            counts.append(client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)))
        if state.iteration == stop_at:
            raise StopIteration

    return counts, cb


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def local_cluster(**kw):
    """A real LocalCluster on 127.0.0.1: 2 worker processes × 1 thread unless ``kw`` says
    otherwise (e.g. ``memory_limit``)."""
    from distributed import LocalCluster

    opts = dict(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1")
    return LocalCluster(**{**opts, "dashboard_address": "127.0.0.1:0", **kw})


@pytest.fixture(scope="session")
def client():
    """A real 2-process LocalCluster on 127.0.0.1, shared by the session."""
    from distributed import Client

    cluster = local_cluster()
    c = Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(params=["numpy", "dask"])
def backend(request):
    """``solve(obs, rank, **kw)``: the NumPy oracle or the tiled engine on threads."""
    if request.param == "numpy":
        return complete_oracle

    def solve(obs, rank, **kw):
        kw.setdefault("scheduler", "threads")
        return dsg.complete(obs, rank, **kw)

    return solve


@pytest.fixture
def planted_problem():
    """``planted_problem(kind, shape, rank, cond, p=..., **kw) -> (obs, truth)``."""

    def make(kind="completion", shape=(120, 90), rank=3, cond=1.0, p=0.4, **kw):
        if kind != "completion":  # pragma: no cover - later issues add kinds
            raise ValueError(kind)
        kw.setdefault("random_state", 0)
        return dsg.datasets.make_completion(shape, rank, p, cond=cond, **kw)

    return make
