"""complete(): parameter constraints, oracle agreement, determinism, clients."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import DataWarning, InvalidParameterError
from dscaledgd.api import complete_oracle


@pytest.fixture(scope="module")
def small():
    return dsg.datasets.make_completion((60, 50), 2, 0.5, random_state=0)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"rank": 0}, r"The 'rank' parameter of complete must be an int in \[1, 50\]. Got 0."),
        (
            {"rank": 51},
            r"'rank' parameter of complete must be an int in \[1, 50\]. Got 51. The search rank "
            r"cannot exceed it: a rank-50 factorisation already spans every",
        ),
        ({"rank": 2.0}, r"'rank' parameter of complete must be an int in \[1, 50\]. Got 2.0."),
        ({"rank": True}, r"'rank' parameter"),
        ({"tol": 0.0}, r"'tol' parameter of complete must be a float in \(0, inf\). Got 0.0."),
        ({"tol": -1e-3}, r"'tol' parameter"),
        ({"max_iter": 0}, r"'max_iter' parameter of complete must be an int in \[1, inf\]. Got 0."),
        ({"max_iter": 2.5}, r"'max_iter' parameter"),
        (
            {"method": "sgd"},
            r"'method' parameter of complete must be one of \{'scaledgd', 'gd'\}. Got 'sgd'.",
        ),
        (
            {"loss": "huber"},
            r"'loss' parameter of complete must be one of \{'l2', 'l1'\}. Got 'huber'.",
        ),
        ({"init": "svd"}, r"'init' parameter of complete must be one of \{'spectral', 'random'\}"),
        ({"init": (np.ones((60, 2)),)}, r"'init' parameter of complete must hold 2 finite arrays"),
        (
            {"damping": -1.0},
            r"'damping' parameter of complete must be None or a float in \[0, inf\)",
        ),
        (
            {"step_size": 0.0},
            r"'step_size' parameter of complete must be None, a float in \(0, 10\] or one of \{'polyak', 'geometric'\}",
        ),
        ({"stall_tol": -1.0}, r"'stall_tol' parameter"),
        ({"patience": 0}, r"'patience' parameter"),
        ({"random_state": -1}, r"'random_state' parameter"),
        ({"callback": 3}, r"'callback' parameter of complete must be None or a callable"),
        ({"scheduler": "processes"}, r"'scheduler' parameter of complete must be one of"),
        (
            {"cache": "disk"},
            r"'cache' parameter of complete must be one of \{'auto', 'memory', 'stream'\}",
        ),
        ({"symmetric": "yes"}, r"'symmetric' parameter of complete must be a bool"),
        ({"init_power_iter": -1}, r"'init_power_iter' parameter"),
    ],
)
def test_parameter_constraints(small, kw, match):
    obs, _ = small
    kw = {"rank": 2, **kw}
    rank = kw.pop("rank")
    with pytest.raises(InvalidParameterError, match=match):
        dsg.complete(obs, rank, scheduler=kw.pop("scheduler", "sync"), **kw)


def test_bad_obs_and_symmetric_shape(small, tmp_path):
    with pytest.raises(
        InvalidParameterError, match="'obs' parameter of complete must be an Observations"
    ):
        dsg.complete(np.ones((3, 3)), 1)
    with pytest.raises(InvalidParameterError, match=r"symmetric \(PSD\) fit needs a square matrix"):
        dsg.complete(small[0], 2, symmetric=True, scheduler="sync")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dsg.complete(str(tmp_path / "none.zarr"), 2)
    with pytest.raises(InvalidParameterError, match="either 'client' or 'address'"):
        dsg.complete(small[0], 2, client=object(), address="tcp://127.0.0.1:1")


def test_oracle_and_dask_paths_agree(client):
    """NumPy oracle vs tiled engine (threads and distributed) to 1e-10, whole solve."""
    obs, truth = dsg.datasets.make_completion(
        (120, 100), 3, 0.4, cond=20, random_state=9, tiles=(3, 2)
    )
    kw = dict(random_state=4, tol=1e-12, max_iter=300)
    ref = complete_oracle(obs, 3, **kw)
    thr = dsg.complete(obs, 3, scheduler="threads", **kw)
    dist = dsg.complete(obs, 3, client=client, **kw)
    assert ref.status == thr.status == dist.status == "converged"
    assert ref.n_iter == thr.n_iter == dist.n_iter
    Xr = ref.L.compute() @ ref.R.compute().T
    for res in (thr, dist):
        L, R = res.compute_factors()
        X = L @ R.T
        np.testing.assert_allclose(X, Xr, rtol=0, atol=1e-10 * np.abs(Xr).max())
        np.testing.assert_allclose(res.history["loss"], ref.history["loss"], rtol=1e-8, atol=1e-24)
    assert truth.relative_error(ref.L.compute(), ref.R.compute()) < 1e-11


def test_deterministic_across_schedulers_and_grids(client):
    base, truth = dsg.datasets.make_completion(
        (150, 110), 3, 0.35, cond=10, random_state=10, tiles=(2, 2)
    )
    kw = dict(random_state=1, tol=1e-12, max_iter=300)
    a = dsg.complete(base, 3, scheduler="threads", **kw)
    b = dsg.complete(base, 3, scheduler="sync", **kw)
    c = dsg.complete(base, 3, client=client, **kw)
    # same grid: bit-identical on any scheduler (fixed-order reductions)
    with client.as_current():
        np.testing.assert_array_equal(c.L.compute(), a.L.compute())
    for res in (b, c):
        np.testing.assert_array_equal(res.compute_factors()[0], a.L.compute())
        np.testing.assert_array_equal(res.history["loss"], a.history["loss"])
    # other grids: equal up to summation order (documented tolerance 1e-9 on X)
    Xa = a.L.compute() @ a.R.compute().T
    for tiles in [(1, 1), (3, 1), (4, 3)]:
        d = dsg.complete(base.retile(tiles), 3, scheduler="threads", **kw)
        X = d.L.compute() @ d.R.compute().T
        np.testing.assert_allclose(X, Xa, rtol=0, atol=1e-9 * np.abs(Xa).max())


def test_empty_rows_warn_and_stay_zero():
    obs, _ = dsg.datasets.make_completion((80, 60), 2, 0.5, random_state=11)
    r, c, v = obs.to_coo()
    keep = (r != 7) & (c != 3)
    obs2 = dsg.Observations.from_coo(r[keep], c[keep], v[keep], shape=(80, 60))
    with pytest.warns(DataWarning) as rec:
        res = dsg.complete(obs2, 2, scheduler="sync", random_state=0)
    msgs = sorted(str(w.message) for w in rec)
    assert msgs[0].startswith("1 of 60 columns have no observations (first: 3).")
    assert msgs[1].startswith("1 of 80 rows have no observations (first: 7).")
    assert np.all(res.L.compute()[7] == 0) and np.all(res.R.compute()[3] == 0)
    assert res.predict(np.array([7, 0]), np.array([5, 3])).tolist() == [0.0, 0.0]


def test_store_backed_obs_by_path(tmp_path):
    obs, truth = dsg.datasets.make_completion((90, 70), 2, 0.4, random_state=12)
    path = obs.to_zarr(tmp_path / "o.zarr")
    res = dsg.complete(path, 2, scheduler="threads", cache="stream", random_state=0)
    assert res.status == "converged" and res.info["cache"] == "stream"
    assert truth.relative_error(res.L.compute(), res.R.compute()) < 1e-9


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_address_connects_to_real_scheduler_and_worker_processes():
    """`dask scheduler` and `dask worker` started as processes on 127.0.0.1, stopped by PID."""
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning"}
    bindir = os.path.dirname(sys.executable)
    sched = subprocess.Popen(
        [
            os.path.join(bindir, "dask"),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-address",
            "127.0.0.1:0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    worker = subprocess.Popen(
        [
            os.path.join(bindir, "dask"),
            "worker",
            addr,
            "--host",
            "127.0.0.1",
            "--nthreads",
            "1",
            "--nworkers",
            "1",
            "--no-dashboard",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        from distributed import Client

        deadline = time.time() + 60
        while True:
            try:
                with Client(addr, timeout="2s") as c:
                    if c.scheduler_info()["workers"]:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("dask scheduler/worker did not start within 60 s")
            time.sleep(0.5)
        obs, truth = dsg.datasets.make_completion((90, 70), 2, 0.4, random_state=13, tiles=(2, 2))
        res = dsg.complete(obs, 2, address=addr, random_state=0)
        assert res.status == "converged" and res.info["executor"] == "distributed"
        assert res.info["scheduler_address"] == addr
        # the connection was closed, so the factors were gathered and are still usable
        assert truth.relative_error(res.L.compute(), res.R.compute()) < 1e-9
        # DASK_SCHEDULER_ADDRESS (dask's scheduler-address setting) is used as Client() does,
        # by default and with scheduler="distributed"; an explicit choice still wins
        import dask

        with mock.patch.dict(os.environ, {"DASK_SCHEDULER_ADDRESS": addr}):
            dask.config.refresh()
            try:
                for kw in ({}, {"scheduler": "distributed"}):
                    res = dsg.complete(obs, 2, random_state=0, **kw)
                    assert res.info["executor"] == "distributed", kw
                    assert res.info["scheduler_address"] == addr, kw
                assert dsg.complete(obs, 2, scheduler="threads").info["executor"] == "threads"
            finally:
                os.environ.pop("DASK_SCHEDULER_ADDRESS", None)
                dask.config.refresh()
    finally:
        for proc in (worker, sched):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in (worker, sched):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def test_unreachable_address_gives_clear_error(small):
    with pytest.raises(ConnectionError, match="Could not connect to the Dask scheduler"):
        dsg.complete(small[0], 2, address=f"tcp://127.0.0.1:{_free_port()}")


def test_default_is_threads_unless_a_client_is_active(small, client):
    """As for dask.array: the active client if any, else dask's scheduler setting, else
    threads (a LocalCluster only when scheduler="distributed" asks for one)."""
    import dask
    from distributed import get_client

    with pytest.raises(ValueError):
        get_client()  # no active client in this test
    res = dsg.complete(small[0], 2, random_state=0)
    assert res.info["executor"] == "threads" and res.status == "converged"
    with dask.config.set(scheduler="sync"):
        assert dsg.complete(small[0], 2, random_state=0).info["executor"] == "sync"
    with client.as_current():
        res = dsg.complete(small[0], 2, random_state=0)
    assert res.info["executor"] == "distributed"
    assert res.info["scheduler_address"] == client.scheduler.address


def test_embedded_local_cluster_when_asked_for(small):
    from distributed import get_client

    with pytest.raises(ValueError):
        get_client()  # no active client in this test
    res = dsg.complete(small[0], 2, random_state=0, scheduler="distributed")
    assert res.info["executor"] == "distributed" and res.status == "converged"
    with pytest.raises(ValueError):
        get_client()  # and the embedded one was closed


def test_embedded_cluster_workers_get_the_malloc_settings(monkeypatch):
    import dask

    from dscaledgd.engine.cluster import WORKER_MALLOC_ENV, _embedded_cluster

    # an earlier LocalCluster leaves Dask's value in os.environ, where it beats the config
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    before = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    cluster, client = _embedded_cluster(1, 1, None)
    try:
        seen = next(iter(client.run(lambda: dict(os.environ)).values()))
    finally:
        client.close()
        cluster.close()
    for key, value in WORKER_MALLOC_ENV.items():
        assert seen[key] == str(value)
    assert seen["OMP_NUM_THREADS"] == "1"  # Dask's own settings are kept
    # nothing leaks into this process: neither the config nor os.environ
    assert dask.config.get("distributed.nanny.pre-spawn-environ") == before
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ


def test_all_zero_values_are_fitted_exactly_by_zero(small, tmp_path):
    obs, _ = small
    r, c, v = obs.to_coo()
    zero = dsg.Observations.from_coo(r, c, np.zeros_like(v), shape=obs.shape)
    train, val = zero.split(0.2, random_state=0)
    res = dsg.complete(train, 2, validation=val, scheduler="sync", random_state=0)
    assert res.status == "converged" and res.converged and res.n_iter == 0
    assert np.all(res.L.compute() == 0) and np.all(res.R.compute() == 0)
    assert [res.final[k] for k in ("loss", "residual", "validation")] == [0.0, 0.0, 0.0]
    assert res.rmse(zero) == 0.0 and "every observed value is 0" in res.message
    assert dsg.load_result(res.to_zarr(tmp_path / "z.zarr")).rmse(zero) == 0.0
    sym = dsg.Observations.from_coo([0, 1, 2], [1, 2, 0], [0.0, 0.0, 0.0], shape=(4, 4))
    with pytest.warns(DataWarning, match="have no observations"):
        res = dsg.complete(sym, 1, symmetric=True, scheduler="sync")
    assert res.symmetric and res.L.shape == (4, 1) and res.status == "converged"


def test_values_whose_squares_overflow_are_refused_up_front(small):
    obs, _ = small
    r, c, v = obs.to_coo()
    with np.errstate(over="ignore"):
        huge = dsg.Observations.from_coo(r, c, v * 1e300, shape=obs.shape)
    with pytest.raises(dsg.InputDataError, match=r"complete: the sum of squares of the observed "):
        dsg.complete(huge, 2, scheduler="sync")
    with pytest.raises(dsg.InputDataError, match=r"overflows float64 .* Rescale the data"):
        dsg.complete(huge, 2, scheduler="sync")


def test_bad_validation_is_named(small):
    obs, _ = small
    with pytest.raises(InvalidParameterError, match=r"The 'validation' parameter of complete"):
        dsg.complete(obs, 2, validation=[1, 2], scheduler="sync")


def test_sense_zero_and_huge_measurements():
    A = dsg.GaussianSensing((10, 8), 200, random_state=0)
    res = dsg.sense(np.zeros(200), A, 2, scheduler="sync")
    assert res.status == "converged" and res.n_iter == 0 and res.L.shape == (10, 2)
    assert np.all(res.L.compute() == 0) and res.R.shape == (8, 2)
    with pytest.raises(dsg.InputDataError, match=r"sense: the sum of squares of the measurements"):
        dsg.sense(np.full(200, 1e300), A, 2, scheduler="sync")
