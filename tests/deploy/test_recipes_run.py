"""Every recipe's own commands run as real processes on 127.0.0.1, and a small fit through
them: the sbatch script outside SLURM (tests/deploy/bin/srun stands in for srun), the
compose services, the DaskJob's scheduler, workers and job, and dask-jobqueue's job
script. Only what cannot exist here is mapped: service host names and container ports to
127.0.0.1 and free ports, volume paths to a temporary folder. Every process is stopped by
PID at the end."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dscaledgd as dsg

from ._recipes import (
    DEPLOY,
    HERE,
    MALLOC_ENV,
    Processes,
    check_result,
    children,
    free_port,
    http_ok,
    load_yaml,
    make_problem,
    make_store,
    pid_alive,
    tcp_open,
    venv_env,
    wait_for_workers,
    worker_settings,
)

SBATCH = DEPLOY / "slurm" / "dscaledgd.sbatch"


@pytest.fixture
def procs(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    p = Processes(logs)
    try:
        yield p
    finally:
        p.close()


def _wait(proc: subprocess.Popen, procs: Processes, timeout: float = 180) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s\n{procs.logs()}")


# ------------------------------------------------------------ SLURM, no SLURM


def _sbatch_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The sbatch script's environment outside SLURM: the fake srun first on PATH, none of
    a surrounding job's SLURM_* variables, addresses on 127.0.0.1."""
    env = venv_env(
        SRUN_LOG=str(tmp_path / "srun.log"),
        OBS=str(tmp_path / "obs.zarr"),
        OUT=str(tmp_path / "out.zarr"),
        RANK="3",
        SCHED_FILE=str(tmp_path / "shared" / "scheduler.json"),
        LOCAL_DIR=str(tmp_path / "scratch"),
        DASK_HOST="127.0.0.1",
        DASHBOARD_ADDRESS="127.0.0.1:0",
        **extra,
    )
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_") or k in extra}
    env["PATH"] = str(HERE / "bin") + os.pathsep + env["PATH"]
    return env


def _srun_calls(log: Path) -> tuple[list[str], list[int]]:
    text = log.read_text()
    return re.findall(r"^run .*$", text, re.M), [
        int(p) for p in re.findall(r"^pid (\d+)$", text, re.M)
    ]


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (it makes the test's TLS certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=dscaledgd-test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


@pytest.mark.parametrize("protocol", ["tcp", "tls"])
def test_sbatch_recipe_runs_a_fit_outside_slurm(tmp_path, procs, protocol):
    """The script as SLURM would run it: one scheduler and NWORKERS workers through srun,
    with the malloc settings, the memory limit from --mem-per-cpu, the lifetime from the
    walltime; the job converges on that scheduler, and the trap stops everything and
    removes the scheduler file when the job ends. With TLS_* set, all of it over tls://."""
    truth = make_store(tmp_path / "obs.zarr")
    extra = {
        "NWORKERS": "2",
        "WORKER_THREADS": "1",
        "WALLTIME": "10:00",
        "SLURM_MEM_PER_CPU": "1024",
    }
    if protocol == "tls":
        cert, key = _self_signed(tmp_path)
        extra.update(TLS_CA_FILE=cert, TLS_CERT=cert, TLS_KEY=key)
    env = _sbatch_env(tmp_path, **extra)
    script = procs.start(["bash", SBATCH], env=env, name="sbatch")
    assert _wait(script, procs) == 0, procs.logs()

    res_address = dsg.load_result(str(tmp_path / "out.zarr")).info["scheduler_address"]
    assert res_address.startswith(f"{protocol}://127.0.0.1:")
    check_result(tmp_path / "out.zarr", truth, res_address)

    calls, pids = _srun_calls(tmp_path / "srun.log")
    assert len(calls) == 2 and len(pids) == 3, calls
    malloc = " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items()) + " OPENBLAS_NUM_THREADS=1"
    sched_file = env["SCHED_FILE"]
    (scheduler,) = [c for c in calls if ":: dask scheduler " in c]
    assert scheduler.startswith(f"run ntasks=1 {malloc} ::")
    assert f"--scheduler-file {sched_file} " in scheduler
    (workers,) = [c for c in calls if ":: dask worker " in c]
    assert workers.startswith(f"run ntasks=2 {malloc} ::")
    # 90% of 1 GiB per CPU; 600 s left: lifetime 540 s +- 30 s
    for flag in (f"--scheduler-file {sched_file} ", "--nthreads 1 ", "--memory-limit 921MiB ",
                 "--lifetime 540s --lifetime-stagger 30s ", f"--local-directory {env['LOCAL_DIR']} "):  # fmt: skip
        assert flag in workers, (flag, workers)
    if protocol == "tls":
        assert f"--protocol tls --tls-ca-file {env['TLS_CA_FILE']}" in scheduler
        assert f"--tls-cert {env['TLS_CERT']} --tls-key {env['TLS_KEY']}" in workers
    # the trap: scheduler and workers are gone, the scheduler file too
    assert not [pid for pid in pids if pid_alive(pid)]
    assert not Path(sched_file).exists()
    out = (procs.logdir / "sbatch-0.log").read_text()
    assert "stopping the workers" in out and "stopping the scheduler" in out


def test_sbatch_recipe_workers_have_its_settings_and_stop_on_sigterm(tmp_path, procs):
    """While the job runs, the workers the script started have its threads, memory limit,
    lifetime, scratch folder and environment; SIGTERM to the script (scancel, walltime)
    stops the job, the workers and the scheduler, and removes the scheduler file."""
    from distributed import Client

    make_store(tmp_path / "obs.zarr")
    env = _sbatch_env(
        tmp_path,
        NWORKERS="2",
        WORKER_THREADS="1",
        WALLTIME="0-00:10:00",
        SLURM_MEM_PER_CPU="1024",
        DSCALEDGD_ARGS="--tol 1e-300 --stall-tol 0 --max-iter 1000000",  # runs until stopped
    )
    script = procs.start(["bash", SBATCH], env=env, name="sbatch")
    sched_file = Path(env["SCHED_FILE"])
    deadline = time.time() + 60
    while not sched_file.exists():
        assert script.poll() is None and time.time() < deadline, procs.logs()
        time.sleep(0.2)
    with Client(scheduler_file=str(sched_file), timeout="30s") as client:
        client.wait_for_workers(2, timeout=60)
        while len(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients))) < 3:
            assert script.poll() is None and time.time() < deadline, procs.logs()
            time.sleep(0.2)  # ours, the scheduler's own, and the job's

        seen = client.run(worker_settings)
    assert len(seen) == 2
    for s in seen.values():
        assert s["env"] == {**MALLOC_ENV, "OPENBLAS_NUM_THREADS": "1"}
        assert s["nthreads"] == 1 and s["memory_limit"] == 921 * 2**20
        assert 540 - 30 <= s["lifetime"] <= 540 + 30
        assert s["local_directory"].startswith(env["LOCAL_DIR"])

    _, pids = _srun_calls(tmp_path / "srun.log")
    job = [pid for pid, cmd in children(script.pid) if "dscaledgd complete" in cmd]
    assert len(job) == 1, procs.logs()
    os.kill(script.pid, signal.SIGTERM)
    assert _wait(script, procs, timeout=90) == 128 + signal.SIGTERM
    assert not [pid for pid in [*pids, *job] if pid_alive(pid)]
    assert not sched_file.exists()
    assert "stopping the workers" in (procs.logdir / "sbatch-0.log").read_text()


@pytest.mark.parametrize(
    "settings, message",
    [({}, "set OBS to the Observations store"),
     ({"OBS": "obs.zarr", "TLS_CERT": "cert.pem"}, "TLS needs all of TLS_CA_FILE, TLS_CERT and TLS_KEY")],
    ids=["no OBS", "TLS half set"],
)  # fmt: skip
def test_sbatch_recipe_refuses_an_incomplete_configuration(tmp_path, settings, message):
    """Before anything starts: exit status 2 and what to set."""
    env = _sbatch_env(tmp_path)
    del env["OBS"]
    env.update(settings)
    r = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "srun.log").exists()  # no srun ran


# ---------------------------------------------------------------- processes


def _localize(argv, env: dict[str, str], exact: dict[str, str], prefix: dict[str, str]):
    """A container's argv as it runs here: ``$(VAR)`` expanded from its environment (as
    the kubelet does), tokens in ``exact`` replaced, and path or URL prefixes in ``prefix``
    moved (service names, container ports, volume mount points)."""
    out = []
    for tok in argv:
        tok = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], str(tok))
        tok = exact.get(tok, tok)
        for old, new in prefix.items():
            tok = tok.replace(old, new)
        out.append(tok)
    return out


def _interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` and ``${VAR}``."""
    return re.sub(
        r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: variables.get(m[1]) or (m[2] or ""), value
    )


def test_compose_services_run_a_fit(tmp_path, procs):
    """compose.yaml's scheduler, its healthcheck, ``replicas`` workers and the job profile's
    command, with ``scheduler`` resolving to 127.0.0.1 and /data, /scratch in a temporary
    folder: the job converges on that scheduler."""
    doc = load_yaml(DEPLOY / "docker" / "compose.yaml")
    data = tmp_path / "data"
    data.mkdir()
    truth = make_store(data / "obs.zarr")
    variables = {"DSCALEDGD_DATA": str(data), "OBS": "obs.zarr", "RANK": "3", "OUT": "out.zarr"}
    port, dash = free_port(), free_port()
    exact = {"0.0.0.0": "127.0.0.1", "8786": str(port), ":8787": f"127.0.0.1:{dash}",
             "/scratch": str(tmp_path / "scratch")}  # fmt: skip
    prefix = {"tcp://scheduler:8786": f"tcp://127.0.0.1:{port}",
              "localhost:8787": f"127.0.0.1:{dash}", "/data/": f"{data}/"}  # fmt: skip

    def service(name):
        s = doc["services"][name]
        argv = _localize([_interpolate(a, variables) for a in s["command"]], {}, exact, prefix)
        env = venv_env(**{k: str(v) for k, v in s.get("environment", {}).items()})
        for vol in s.get("volumes", []):  # every mount is mapped above
            assert _interpolate(vol, variables).split(":")[-1] in ("/data", "/scratch"), vol
        return argv, env

    argv, env = service("scheduler")
    procs.start(argv, env=env, name="scheduler")
    check = doc["services"]["scheduler"]["healthcheck"]["test"]
    assert check[0] == "CMD"
    health = [
        sys.executable if a == "python" else a for a in _localize(check[1:], {}, exact, prefix)
    ]
    deadline = time.time() + 60
    while subprocess.run(health, capture_output=True, timeout=30).returncode != 0:
        assert time.time() < deadline, "the healthcheck never passed\n" + procs.logs()
        time.sleep(0.5)

    replicas = int(_interpolate(str(doc["services"]["worker"]["deploy"]["replicas"]), variables))
    argv, env = service("worker")
    for _ in range(replicas):
        procs.start([*argv, "--host", "127.0.0.1"], env=env, name="worker")
    argv, env = service("job")
    job = procs.start(argv, env=env, name="job")
    assert _wait(job, procs) == 0, procs.logs()
    check_result(data / "out.zarr", truth, f"tcp://127.0.0.1:{port}")


def _k8s_env(container: dict, **injected: str) -> dict[str, str]:
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    return {**injected, **env}


def test_daskjob_runs_a_fit(tmp_path, procs):
    """daskjob.yaml's scheduler (its readiness and liveness probes answer), ``replicas``
    workers and the job runner, with what the operator injects (DASK_SCHEDULER_ADDRESS,
    DASK_WORKER_NAME) pointing at 127.0.0.1: the job finds the scheduler through
    DASK_SCHEDULER_ADDRESS alone and converges there."""
    manifest = load_yaml(DEPLOY / "kubernetes" / "daskjob.yaml")
    cluster, job = manifest["spec"]["cluster"]["spec"], manifest["spec"]["job"]["spec"]
    (runner,) = job["containers"]
    data = tmp_path / "data"
    data.mkdir()
    truth = make_store(
        data / "obs.zarr", rank=int(runner["args"][runner["args"].index("--rank") + 1])
    )
    port, dash = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    exact = {"8786": str(port), ":8787": f"127.0.0.1:{dash}", ":8788": "127.0.0.1:0",
             "/scratch": str(tmp_path / "scratch")}  # fmt: skip
    prefix = {"/data/": f"{data}/"}

    (scheduler,) = cluster["scheduler"]["spec"]["containers"]
    env = _k8s_env(scheduler)
    procs.start([*_localize(scheduler["args"], env, exact, prefix), "--host", "127.0.0.1"],
                env=venv_env(**env), name="scheduler")  # fmt: skip
    ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    mapped = {8786: port, 8787: dash}
    probe = scheduler["readinessProbe"]["httpGet"]
    assert http_ok(f"http://127.0.0.1:{mapped[ports[probe['port']]]}{probe['path']}"), procs.logs()
    assert tcp_open(mapped[ports[scheduler["livenessProbe"]["tcpSocket"]["port"]]])

    (worker,) = cluster["worker"]["spec"]["containers"]
    for i in range(cluster["worker"]["replicas"]):
        env = _k8s_env(
            worker, DASK_SCHEDULER_ADDRESS=address, DASK_WORKER_NAME=f"dscaledgd-worker-{i}"
        )
        argv = _localize(worker["args"], env, exact, prefix)
        procs.start([*argv, "--host", "127.0.0.1"], env=venv_env(**env), name="worker")

    env = _k8s_env(runner, DASK_SCHEDULER_ADDRESS=address)
    p = procs.start(_localize(runner["args"], env, exact, prefix), env=venv_env(**env), name="job")
    assert _wait(p, procs) == 0, procs.logs()
    out = _localize([runner["args"][runner["args"].index("--out") + 1]], env, exact, prefix)[0]
    check_result(Path(out), truth, address)
    wait_for_workers(address, cluster["worker"]["replicas"], timeout=10)  # all of them had joined


# ------------------------------------------------------------- dask-jobqueue


def test_jobqueue_job_script_starts_a_worker_that_fits(tmp_path, procs):
    """The job script SLURMCluster renders from jobqueue.yaml, run here by bash (its
    #SBATCH lines are comments to it): its worker joins, has the prologue's environment
    and the lifetime, and a fit runs on it. Only the site's numbers (cores, memory) are
    set to this machine's."""
    pytest.importorskip("dask_jobqueue")
    import dask
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    loaded = load_yaml(DEPLOY / "slurm" / "jobqueue.yaml")
    config = dask.config.merge(dask.config.get("jobqueue"), loaded["jobqueue"])
    with dask.config.set({"jobqueue": config}), SLURMCluster(
        cores=2, memory="2GiB", scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    ) as cluster, Client(cluster) as client:  # fmt: skip
        script = tmp_path / "job.sh"
        script.write_text(cluster.job_script())
        procs.start(["bash", script], env=venv_env(TMPDIR=str(tmp_path)), name="jobqueue-worker")
        client.wait_for_workers(1, timeout=60)

        ((_, seen),) = client.run(worker_settings).items()
        obs, truth = make_problem(3)
        res = dsg.complete(obs, 3, client=client, random_state=0)
        L, R = res.L.compute(), res.R.compute()  # blocks held by this client's workers
    assert seen["env"] == {**MALLOC_ENV, "OPENBLAS_NUM_THREADS": "1"}
    assert seen["nthreads"] == 2 and seen["memory_limit"] == 2 * 2**30
    assert 105 * 60 <= seen["lifetime"] <= 115 * 60  # 110m +- 5m
    assert seen["local_directory"].startswith(str(tmp_path))
    assert res.converged and res.info["executor"] == "distributed"
    assert truth.relative_error(L, R) < 1e-8
