"""The SLURM recipes on a real one-node SLURM (slurmctld, slurmd and munged on this host;
.ci/run starts them with tests/deploy/one_node_slurm.sh and exports DSCALEDGD_SLURM=1):
deploy/slurm/dscaledgd.sbatch submitted with ``sbatch --wait``, and dask-jobqueue's
SLURMCluster with deploy/slurm/jobqueue.yaml submitting its worker job."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid

import pytest

from ._recipes import (
    DEPLOY,
    MALLOC_ENV,
    check_result,
    load_yaml,
    make_problem,
    make_store,
    venv_env,
)


@pytest.fixture(scope="module")
def slurm() -> int:
    """The CPUs of the idle node of a working SLURM, or a skip that says what is missing
    (a failure where .ci/run said it started one)."""
    started = os.environ.get("DSCALEDGD_SLURM") == "1"
    if shutil.which("sbatch") is None:
        if started:
            pytest.fail("DSCALEDGD_SLURM=1 but sbatch is not on PATH")
        pytest.skip("sbatch not found: SLURM is not installed (apt-get install slurm-wlm munge)")
    try:
        r = subprocess.run(
            ["sinfo", "--noheader", "--format=%T %c"], capture_output=True, text=True, timeout=20
        )
        states = r.stdout.split()
    except (OSError, subprocess.TimeoutExpired) as exc:
        r, states = None, [str(exc)]
    if r is None or r.returncode != 0 or not states or not states[0].startswith(("idle", "mixed")):
        msg = (
            "SLURM is not running here (slurmctld/slurmd/munged; tests/deploy/one_node_slurm.sh "
            f"starts a one-node one and prints SLURM_CONF): sinfo says {_last_line(r, states)}"
        )
        if started:
            pytest.fail(msg)
        pytest.skip(msg)
    return int(states[1])


def _last_line(r, states) -> str:
    if r is None:
        return states[0]
    lines = (r.stderr.strip() or r.stdout.strip() or "nothing").splitlines()
    return lines[-1]


def test_sbatch_recipe_on_slurm(tmp_path, slurm):
    """``sbatch --wait`` of the recipe with two tasks and --mem-per-cpu: the job's exit status
    comes back through sbatch, the workers got 90% of their memory share and a lifetime
    from the time squeue reports left, the result converged on the job's scheduler, and
    the scheduler file (by default in the submit folder) is gone."""
    ntasks = 2 if slurm >= 2 else 1
    truth = make_store(tmp_path / "obs.zarr")
    name = f"dscaledgd-test-{uuid.uuid4().hex[:8]}"
    env = venv_env(
        OBS=str(tmp_path / "obs.zarr"),
        OUT=str(tmp_path / "out.zarr"),
        RANK="3",
        DASK_HOST="127.0.0.1",
        DASHBOARD_ADDRESS="127.0.0.1:0",
        LOCAL_DIR=str(tmp_path / "scratch"),
    )
    argv = ["sbatch", "--wait", f"--job-name={name}", f"--ntasks={ntasks}", "--cpus-per-task=1",
            "--mem-per-cpu=1G", "--time=5", f"--output={tmp_path}/slurm-%j.out",
            str(DEPLOY / "slurm" / "dscaledgd.sbatch")]  # fmt: skip
    try:
        r = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", f"--name={name}"], timeout=30, check=False)
        pytest.fail("the job did not finish within 150 s")
    (log,) = tmp_path.glob("slurm-*.out")
    out = log.read_text()
    assert r.returncode == 0, r.stdout + r.stderr + out
    job_id = re.search(r"Submitted batch job (\d+)", r.stdout)[1]

    assert f"scheduler file {tmp_path}/dask-scheduler-{job_id}.json" in out
    m = re.search(
        r"(\d+) workers x 1 threads, memory-limit 921MiB, lifetime (\d+)s \+- (\d+)s of (\d+)s left",
        out,
    )
    assert m, out
    assert int(m[1]) == ntasks
    left, lifetime, stagger = int(m[4]), int(m[2]), int(m[3])
    assert 240 <= left <= 300 and lifetime == left - 60 and stagger == 30  # from squeue's %L
    assert len(re.findall(r"Memory:\s+921\.00 MiB", out)) == ntasks  # the workers' own logs
    assert "stopping the workers" in out and "stopping the scheduler" in out
    assert not (tmp_path / f"dask-scheduler-{job_id}.json").exists()
    address = re.search(r"Scheduler at:\s+(tcp://127\.0\.0\.1:\d+)", out)[1]
    check_result(tmp_path / "out.zarr", truth, address)


def test_sbatch_recipe_failure_reaches_sbatch(tmp_path, slurm):
    """A job that fails (no such store) makes ``sbatch --wait`` fail, and the trap still
    stops the cluster."""
    env = venv_env(OBS=str(tmp_path / "missing.zarr"), OUT=str(tmp_path / "out.zarr"),
                   DASK_HOST="127.0.0.1", DASHBOARD_ADDRESS="127.0.0.1:0")  # fmt: skip
    argv = ["sbatch", "--wait", "--ntasks=1", "--cpus-per-task=1", "--time=5",
            f"--output={tmp_path}/slurm-%j.out", str(DEPLOY / "slurm" / "dscaledgd.sbatch")]  # fmt: skip
    r = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=150)
    (log,) = tmp_path.glob("slurm-*.out")
    out = log.read_text()
    assert r.returncode != 0, out
    assert re.search(r"dscaledgd exited with status [1-9]", out), out
    assert "stopping the scheduler" in out and not list(tmp_path.glob("dask-scheduler-*.json"))
    assert not (tmp_path / "out.zarr").exists()


def test_jobqueue_cluster_on_slurm(tmp_path, slurm):
    """SLURMCluster with jobqueue.yaml (the site's numbers set to this node) submits a worker
    job through sbatch; the worker joins with the prologue's environment, a fit runs on
    it, and closing the cluster cancels the job."""
    pytest.importorskip("dask_jobqueue")
    import dask
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    import dscaledgd as dsg

    loaded = load_yaml(DEPLOY / "slurm" / "jobqueue.yaml")
    config = dask.config.merge(dask.config.get("jobqueue"), loaded["jobqueue"])
    name = f"dscaledgd-jq-{uuid.uuid4().hex[:8]}"
    saved = os.environ.get("PATH")
    os.environ["PATH"] = venv_env()["PATH"]  # sbatch exports it to the job
    try:
        with dask.config.set({"jobqueue": config}), SLURMCluster(
            name=name, cores=1, memory="2GiB", walltime="00:05:00", log_directory=str(tmp_path),
            scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        ) as cluster, Client(cluster) as client:  # fmt: skip
            cluster.scale(jobs=1)
            client.wait_for_workers(1, timeout=90)
            env = client.run(lambda: {k: os.environ.get(k) for k in [*MALLOC_ENV, "SLURM_JOB_ID"]})
            ((_, seen),) = env.items()
            obs, truth = make_problem(3)
            res = dsg.complete(obs, 3, client=client, random_state=0)
            L, R = res.L.compute(), res.R.compute()
    finally:
        if saved is not None:
            os.environ["PATH"] = saved
    assert {k: seen[k] for k in MALLOC_ENV} == MALLOC_ENV
    assert seen["SLURM_JOB_ID"]  # the worker ran inside a SLURM job
    assert res.converged and truth.relative_error(L, R) < 1e-8
    deadline = time.time() + 30
    while True:
        q = subprocess.run(["squeue", "--noheader", f"--jobs={seen['SLURM_JOB_ID']}", "--format=%T"],
                           capture_output=True, text=True, timeout=20)  # fmt: skip
        if q.stdout.strip() in ("", "COMPLETING", "COMPLETED", "CANCELLED") or q.returncode != 0:
            break
        assert time.time() < deadline, f"job {seen['SLURM_JOB_ID']} still {q.stdout.strip()}"
        time.sleep(0.5)
