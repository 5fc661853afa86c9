"""ScaledSGD checkpoints (issue 18): epochs written to the batch loop's Zarr store, resumed.

What is checked: a run killed after a checkpoint and resumed has the iterates,
history and held-out curve of a run that did not stop (in process, on threads,
and resumed on a real 2-process LocalCluster from a checkpoint written on
threads), including a step halved by the safeguard before the checkpoint; a
checkpoint of other data or other parameters is refused, as are the resume
flags without a directory.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd.exceptions import InvalidParameterError

from .sgd_instances import ill_pairs, planted_triplets

#: the runs here stop after a fixed number of epochs on purpose
pytestmark = pytest.mark.filterwarnings("ignore::dscaledgd.exceptions.ConvergenceWarning")


class Killed(Exception):
    """The stand-in for a lost job: raised by the callback at a given epoch."""


def _kill_at(epoch):
    def callback(state):
        if state.iteration == epoch:
            raise Killed(epoch)

    return callback


def _ill():
    return ill_pairs()


def _bpr(d=90, m=4000, seed=3):
    return planted_triplets(d, m, seed)


def _same(a, b):
    assert np.array_equal(np.asarray(a.L), np.asarray(b.L))
    assert a.n_iter == b.n_iter and a.status == b.status
    for key in b.history:
        if key != "time" and not key.endswith("_time"):
            np.testing.assert_array_equal(a.history[key], b.history[key], err_msg=key)
    assert a.info["restores"] == b.info["restores"]
    assert a.info["final_step_size"] == b.info["final_step_size"]


def _interrupted_then_resumed(samples, tmp_path, kill_at, first=None, **kw):
    path = os.fspath(tmp_path / "ckpt")
    with pytest.raises(Killed):
        dsg.scaled_sgd(samples, 3, checkpoint=path, callback=_kill_at(kill_at), **kw)
    # the killed epoch's checkpoint was never written: the newest is the one before
    assert sorted(os.listdir(path))[-1] == f"ckpt-{kill_at - 1:08d}"
    return dsg.scaled_sgd(samples, 3, checkpoint=path, resume=True, **(first or kw))


def test_a_resumed_run_in_process_equals_one_that_did_not_stop(tmp_path):
    kw = {"epochs": 12, "random_state": 1, "step_size": 0.3}
    full = dsg.scaled_sgd(_ill(), 3, **kw)
    res = _interrupted_then_resumed(_ill(), tmp_path, 5, **kw)
    assert res.info["resumed_from"] == 4
    _same(res, full)
    assert res.history["loss"][-1] < 1e-6  # it did converge on its way (not a frozen copy)


def test_a_step_halved_before_the_checkpoint_is_resumed_halved(tmp_path):
    kw = {"epochs": 6, "random_state": 2, "step_size": 3.0}
    full = dsg.scaled_sgd(_ill(), 3, **kw)
    assert full.info["restores"] >= 1  # the safeguard halved the step in the first epochs
    res = _interrupted_then_resumed(_ill(), tmp_path, 4, **kw)
    _same(res, full)


def test_stratified_epochs_resume_with_the_same_curve(tmp_path):
    I, J, K, Y = _bpr()
    test = _bpr(m=800, seed=4)
    kw = {"loss": "bpr", "epochs": 5, "random_state": 0, "step_size": 0.5,
          "scheduler": "threads", "n_blocks": 6, "validation": test, "eval_every": 0.25}  # fmt: skip
    full = dsg.scaled_sgd((I, J, K, Y), 3, **kw)
    res = _interrupted_then_resumed((I, J, K, Y), tmp_path, 3, **kw)
    _same(res, full)
    assert len(res.history["eval_auc"]) == 1 + 5 * 4  # the curve of the epochs before the stop
    assert res.info["syncs"] == full.info["syncs"]


def test_a_run_checkpointed_on_threads_resumes_on_a_local_cluster(tmp_path, client):
    kw = {"epochs": 8, "random_state": 5, "step_size": 0.3, "n_blocks": 4}
    full = dsg.scaled_sgd(_ill(), 3, scheduler="threads", **kw)
    res = _interrupted_then_resumed(_ill(), tmp_path, 4, first={**kw, "client": client},
                                    scheduler="threads", **kw)  # fmt: skip
    assert res.info["executor"] == "distributed" and res.info["resumed_from"] == 3
    _same(res, full)


def test_a_checkpoint_of_other_data_or_parameters_is_refused(tmp_path):
    path = os.fspath(tmp_path / "ckpt")
    dsg.scaled_sgd(_ill(), 3, epochs=2, random_state=0, checkpoint=path)
    i, j, y = _ill()
    with pytest.raises(InvalidParameterError, match="belongs to another run.*data"):
        dsg.scaled_sgd((i, j, y * 2), 3, epochs=4, random_state=0, checkpoint=path, resume=True)
    with pytest.raises(InvalidParameterError, match="another run.*step_size: checkpoint 0.3"):
        dsg.scaled_sgd(_ill(), 3, epochs=4, step_size=0.1, random_state=0, checkpoint=path,
                       resume=True)  # fmt: skip
    with pytest.raises(FileExistsError, match="Pass resume=True"):
        dsg.scaled_sgd(_ill(), 3, epochs=4, random_state=0, checkpoint=path)
    more = dsg.scaled_sgd(_ill(), 3, epochs=4, random_state=0, checkpoint=path, resume=True)
    assert more.n_iter == 4 and more.info["resumed_from"] == 2  # epochs may grow


def test_resume_flags_need_a_directory(tmp_path):
    with pytest.raises(InvalidParameterError, match="'resume' parameter of scaled_sgd needs"):
        dsg.scaled_sgd(_ill(), 3, epochs=1, resume=True)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        dsg.scaled_sgd(_ill(), 3, epochs=1, checkpoint=os.fspath(tmp_path / "e"), resume=True)
    with pytest.raises(InvalidParameterError, match="'checkpoint_interval' parameter"):
        dsg.scaled_sgd(_ill(), 3, epochs=1, checkpoint=os.fspath(tmp_path / "f"),
                       checkpoint_interval=0)  # fmt: skip
    with pytest.raises(InvalidParameterError, match="'loss' parameter"):
        dsg.scaled_sgd(_ill(), 3, loss="l2", checkpoint=os.fspath(tmp_path / "h"))
    assert not os.path.exists(tmp_path / "h")  # a bad parameter creates nothing
    est = dsg.ScaledSGD(rank=3, epochs=3, random_state=0, checkpoint=os.fspath(tmp_path / "g"))
    est.fit(_ill())
    assert sorted(os.listdir(tmp_path / "g"))[-1] == "ckpt-00000003"
