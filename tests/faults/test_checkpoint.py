"""Checkpoint and resume (issue 15): every method through the shared driver, a killed
client, a killed scheduler, and the bad inputs.

A resumed run must reach the answer of an uninterrupted one to ≤ 1e-12 (it does
bit for bit: the iteration is deterministic for a given tile grid).
Checkpoints are real Zarr groups on disk; the client and the scheduler are
killed as real processes.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import warnings

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd.exceptions import DataWarning, InputDataError, InvalidParameterError
from dscaledgd.storage.checkpoints import list_checkpoints, read_checkpoint

from ._procs import ProcessCluster, kill_at_checkpoint

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::UserWarning")]

KW = dict(tol=1e-30, stall_tol=0.0, random_state=1, scheduler="threads")


def _obs(shape=(300, 200), rank=5, cond=10, seed=0):
    obs, _ = dsg.datasets.make_completion(shape, rank=rank, p=0.3, cond=cond, random_state=seed)
    return obs


def assert_same(a, b, tol=1e-12):
    """Same factors (and core), same history (bar the clock), same status."""
    assert a.status == b.status and a.n_iter == b.n_iter
    assert a.best_iteration == b.best_iteration
    for x, y in zip(a.factors, b.factors):
        x, y = np.asarray(x), np.asarray(y)
        assert np.max(np.abs(x - y)) <= tol * max(1.0, np.max(np.abs(x)))
    if getattr(a, "core", None) is not None:
        np.testing.assert_allclose(b.core, a.core, rtol=0, atol=tol * np.max(np.abs(a.core)))
    assert set(a.history) == set(b.history)
    for k in a.history:
        if k != "time":
            np.testing.assert_allclose(b.history[k], a.history[k], rtol=tol, atol=0, err_msg=k)
    assert [e["event"] for e in a.info["events"]] == [e["event"] for e in b.info["events"]]


def _interrupted(fit, tmp_path, stop_at, max_iter, interval=4, **kw):
    """Run to ``stop_at`` with checkpoints, then resume to ``max_iter``."""
    d = str(tmp_path / "ck")
    fit(max_iter=stop_at, checkpoint=d, checkpoint_interval=interval, **kw)
    assert list_checkpoints(d)[-1][0] == stop_at
    res = fit(max_iter=max_iter, checkpoint=d, checkpoint_interval=interval, resume=True, **kw)
    assert res.info["resumed_from"] == stop_at
    return res


# ------------------------------------------------------------------ every method
def test_complete_resumes_bit_for_bit(tmp_path):
    obs = _obs()

    def fit(**kw):
        return dsg.complete(obs, 5, **KW, **kw)

    assert_same(fit(max_iter=30), _interrupted(fit, tmp_path, 13, 30), tol=0.0)


def test_complete_with_validation_resumes(tmp_path):
    obs, _ = dsg.datasets.make_completion((150, 120), 2, 0.3, noise=0.5, random_state=3)
    tr, va = obs.split(0.2, random_state=1)

    def fit(**kw):  # over-specified rank on noisy data: the held-out error turns up
        return dsg.complete(tr, 8, validation=va, patience=3, center="biases", **KW, **kw)

    full = fit(max_iter=60)
    assert full.status == "early_stopped"  # the best-validation point is in the checkpoint
    stop = full.n_iter - 2  # after the best point, before the patience ran out
    assert_same(full, _interrupted(fit, tmp_path, stop, 60, interval=2))


def test_complete_with_ridge_resumes(tmp_path):
    obs = _obs(cond=3)

    def fit(**kw):
        return dsg.complete(obs, 5, reg=(0.002, 0.004), center="biases", **KW, **kw)

    assert_same(fit(max_iter=25), _interrupted(fit, tmp_path, 10, 25))


def test_sense_l1_geometric_resumes(tmp_path):
    t = dsg.datasets.make_low_rank((20, 20), 2, cond=10, random_state=0)
    A = dsg.GaussianSensing((20, 20), 320, random_state=1, chunks=97)
    y = A.forward(t.dense())
    rng = np.random.default_rng(2)
    y[rng.random(A.m) < 0.1] += 10 * np.abs(y).max()

    def fit(**kw):
        return dsg.sense(y, A, 2, loss="l1", **KW, **kw)

    assert_same(fit(max_iter=25), _interrupted(fit, tmp_path, 11, 25))


def test_rpca_resumes(tmp_path):
    rng = np.random.default_rng(0)
    L = rng.standard_normal((80, 3)) @ rng.standard_normal((3, 60))
    S = np.where(rng.random(L.shape) < 0.05, 10.0, 0.0)

    def fit(**kw):
        return dsg.rpca(L + S, 3, alpha=0.1, **KW, **kw)

    assert_same(fit(max_iter=20), _interrupted(fit, tmp_path, 9, 20))


def test_tucker_resumes(tmp_path):
    core, U = dsg.datasets.tucker_instance((20, 18, 16), (2, 2, 2), random_state=0)
    X = dsg.datasets.tucker_tensor(core, U)
    Y = np.where(np.random.default_rng(0).random(X.shape) < 0.4, X, np.nan)

    def fit(**kw):
        return dsg.tucker_complete(Y, (2, 2, 2), **KW, **kw)

    assert_same(fit(max_iter=20), _interrupted(fit, tmp_path, 8, 20))


# ------------------------------------------------------------------ the directory
def test_keeps_the_last_three_and_stores_no_pickle(tmp_path):
    d = tmp_path / "ck"
    res = dsg.complete(_obs(), 5, max_iter=20, checkpoint=d, checkpoint_interval=3, **KW)
    assert [n for n, _ in list_checkpoints(d)] == [15, 18, 20]
    assert res.info["checkpoint"] == str(d) and res.info["resumed_from"] is None
    ck = read_checkpoint(list_checkpoints(d)[-1][1])
    meta = ck["meta"]
    assert meta["n_iter"] == 20 and len(meta["config_hash"]) == 64
    assert "max_iter" not in meta["config"] and "scheduler" not in meta["config"]
    assert all(a.dtype == np.float64 for a in ck["arrays"].values())
    for _, _, files in os.walk(d):
        assert not [f for f in files if f.endswith((".pkl", ".pickle"))]
    np.testing.assert_array_equal(ck["arrays"]["history.loss"], res.history["loss"])


def test_resume_auto_starts_when_there_is_none(tmp_path):
    d = tmp_path / "ck"
    a = dsg.complete(_obs(), 5, max_iter=8, checkpoint=d, resume="auto", **KW)
    assert a.info["resumed_from"] is None and list_checkpoints(d)
    b = dsg.complete(_obs(), 5, max_iter=12, checkpoint=d, resume="auto", **KW)
    assert b.info["resumed_from"] == 8


def test_dead_writer_leftovers_are_removed(tmp_path):
    d = tmp_path / "ck"
    dsg.complete(_obs(), 5, max_iter=6, checkpoint=d, checkpoint_interval=3, **KW)
    junk = d / ".ckpt-00000009.tmp-0123456789ab-somehost-999999"
    junk.mkdir()
    os.utime(junk, (1, 1))  # older than a day: stale whatever the host
    dsg.complete(_obs(), 5, max_iter=9, checkpoint=d, checkpoint_interval=3, resume=True, **KW)
    assert not junk.exists()


# ------------------------------------------------------------------ killed client
CHILD = textwrap.dedent(
    """
    import sys, time, warnings
    warnings.simplefilter("ignore")
    import dscaledgd as dsg
    obs, _ = dsg.datasets.make_completion((300, 200), rank=5, p=0.3, cond=10, random_state=0)
    dsg.complete(obs, 5, max_iter=400, tol=1e-30, stall_tol=0.0, random_state=1,
                 scheduler="threads", checkpoint=sys.argv[1], checkpoint_interval=5,
                 callback=lambda s: time.sleep(0.05))
    """
)


def test_killed_client_resumes_to_the_same_answer(tmp_path):
    d = str(tmp_path / "ck")
    last = kill_at_checkpoint([sys.executable, "-c", CHILD, d], d, 15)
    assert 15 <= last < 400
    obs = _obs()
    res = dsg.complete(obs, 5, max_iter=40, checkpoint=d, checkpoint_interval=5, resume=True, **KW)
    assert res.info["resumed_from"] == last
    assert_same(dsg.complete(obs, 5, max_iter=40, **KW), res)


# ------------------------------------------------------------------ killed scheduler
@pytest.mark.slow  # about 20 s: with the slow tests, keeping the default run short
def test_killed_scheduler_then_resume_on_a_new_one(tmp_path):
    import dask

    from dscaledgd.engine import executors as cl

    obs, d = _obs(), str(tmp_path / "ck")
    ref = dsg.complete(obs, 5, max_iter=24, **KW)
    pc = ProcessCluster(n_workers=2)

    def kill_at_10(state):
        if state.iteration == 10:
            pc.signal_scheduler(signal.SIGKILL)

    kw = {k: v for k, v in KW.items() if k != "scheduler"}
    try:
        with dask.config.set({"dscaledgd.scheduler-timeout": "3s"}):
            cl.POLL, old = 0.5, cl.POLL
            try:
                with pytest.raises(Exception, match=r"(?i)scheduler"):
                    dsg.complete(
                        obs, 5, max_iter=24, address=pc.address, checkpoint=d,
                        checkpoint_interval=4, callback=kill_at_10, **kw,
                    )  # fmt: skip
            finally:
                cl.POLL = old
    finally:
        pc.close()
    assert list_checkpoints(d)[-1][0] == 8  # intact, the last before the kill
    pc2 = ProcessCluster(n_workers=2)
    try:
        res = dsg.complete(
            obs, 5, max_iter=24, address=pc2.address, checkpoint=d, checkpoint_interval=4,
            resume=True, **kw,
        )  # fmt: skip
    finally:
        pc2.close()
    assert res.info["resumed_from"] == 8
    assert_same(ref, res)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("interval", [0, -3, 1.5, True, "10"])
def test_bad_interval(tmp_path, interval):
    with pytest.raises(InvalidParameterError, match="checkpoint_interval.*int >= 1"):
        dsg.complete(_obs(), 5, checkpoint=tmp_path / "ck", checkpoint_interval=interval, **KW)
    assert not (tmp_path / "ck").exists()


def test_bad_resume_values(tmp_path):
    with pytest.raises(InvalidParameterError, match="'resume'.*True, False or 'auto'"):
        dsg.complete(_obs(), 5, checkpoint=tmp_path / "ck", resume="yes", **KW)
    with pytest.raises(InvalidParameterError, match="'resume'.*needs checkpoint=DIR"):
        dsg.complete(_obs(), 5, resume=True, **KW)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint.*resume='auto'"):
        dsg.complete(_obs(), 5, checkpoint=tmp_path / "ck", resume=True, **KW)


def test_bad_directories(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        dsg.complete(_obs(), 5, checkpoint=f, **KW)
    with pytest.raises(FileNotFoundError, match="parent .* does not exist"):
        dsg.complete(_obs(), 5, checkpoint=tmp_path / "no" / "ck", **KW)
    with pytest.raises(InvalidParameterError, match="'checkpoint'.*directory path"):
        dsg.complete(_obs(), 5, checkpoint=3, **KW)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_unwritable_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="Cannot write checkpoints"):
            dsg.complete(_obs(), 5, checkpoint=d, **KW)
    finally:
        d.chmod(0o700)


def test_unwritable_directory_when_root(tmp_path, monkeypatch):
    """Root ignores permission bits; a failing probe file stands in for a read-only mount."""
    import errno

    from dscaledgd.storage import checkpoints

    def refuse(*a, **k):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(checkpoints.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError, match="Cannot write checkpoints.*Read-only"):
        dsg.complete(_obs(), 5, checkpoint=tmp_path / "ck", **KW)


def test_directory_of_another_run_or_other_data(tmp_path):
    d = tmp_path / "ck"
    dsg.complete(_obs(), 5, max_iter=6, checkpoint=d, checkpoint_interval=3, **KW)
    with pytest.raises(FileExistsError, match="already holds checkpoints.*resume=True"):
        dsg.complete(_obs(), 5, max_iter=6, checkpoint=d, **KW)
    with pytest.raises(InvalidParameterError, match=r"another run.*rank: checkpoint 5, now 4"):
        dsg.complete(_obs(), 4, max_iter=9, checkpoint=d, resume=True, **KW)
    with pytest.raises(InvalidParameterError, match=r"another run.*data:"):
        dsg.complete(_obs(seed=7), 5, max_iter=9, checkpoint=d, resume=True, **KW)
    with pytest.raises(InvalidParameterError, match=r"reg: checkpoint 0.0, now 0.1"):
        dsg.complete(_obs(), 5, max_iter=9, reg=0.1, checkpoint=d, resume=True, **KW)


def test_truncated_checkpoint_falls_back_then_refuses(tmp_path):
    d = tmp_path / "ck"
    obs = _obs()
    dsg.complete(obs, 5, max_iter=9, checkpoint=d, checkpoint_interval=3, **KW)
    newest = list_checkpoints(d)[-1][1]
    chunk = next(
        os.path.join(r, f) for r, _, fs in os.walk(os.path.join(newest, "cur.F0")) for f in fs
        if f != "zarr.json"
    )  # fmt: skip
    with open(chunk, "r+b") as fh:
        fh.truncate(100)
    with pytest.warns(DataWarning, match="ckpt-00000009.*damaged.*previous checkpoint"):
        res = dsg.complete(obs, 5, max_iter=12, checkpoint=d, checkpoint_interval=3,
                           resume=True, **KW)  # fmt: skip
    assert res.info["resumed_from"] == 6
    assert_same(dsg.complete(obs, 5, max_iter=12, **KW), res)
    for _, p in list_checkpoints(d):  # now damage every one
        os.remove(os.path.join(p, "zarr.json"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(InputDataError, match="no intact checkpoint"):
            dsg.complete(obs, 5, max_iter=15, checkpoint=d, resume=True, **KW)
