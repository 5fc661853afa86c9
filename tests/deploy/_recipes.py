"""What the deploy/ tests share: the recipes' paths, a small store, real processes on
127.0.0.1 stopped by PID, and the check of a result store."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

import dscaledgd as dsg

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
HERE = Path(__file__).resolve().parent
BIN = os.path.dirname(sys.executable)

#: the malloc settings of the embedded cluster, which every recipe gives its workers
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "134217728"}


def worker_settings(dask_worker) -> dict:
    """What a recipe sets on a worker (for ``client.run``): environment, threads, memory
    limit, lifetime, scratch folder. Sent by value: the workers cannot import ``tests``."""
    import os

    return {
        "env": {k: os.environ.get(k) for k in [*MALLOC_ENV, "OPENBLAS_NUM_THREADS"]},
        "nthreads": dask_worker.state.nthreads,
        "memory_limit": dask_worker.memory_manager.memory_limit,
        "lifetime": dask_worker.lifetime,
        "local_directory": dask_worker.local_directory,
    }


def _ship_by_value() -> None:
    """Functions of this module reach workers by value (cloudpickle), not by import."""
    import sys

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


_ship_by_value()


def load_yaml(path: Path):
    with open(path) as fh:
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def tool(name: str) -> str:
    """A command-line tool from the test environment or PATH, or a skip naming it."""
    path = shutil.which(name, path=BIN) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]' provides it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_env(**extra: str) -> dict[str, str]:
    """This environment with the test venv's ``bin`` first on PATH (``dask``, ``dscaledgd``)."""
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    for key in ("DASK_SCHEDULER_ADDRESS", "DASK_SCHEDULER_FILE"):
        env.pop(key, None)
    env.update(extra)
    return env


def make_problem(rank: int = 3):
    """A 300 x 200 completion problem of ``rank``, half observed, in two row tiles: a fit
    converges in well under 100 iterations."""
    return dsg.datasets.make_completion((300, 200), rank, 0.5, random_state=0, tiles=(2, 1))


def make_store(path: Path, rank: int = 3):
    """:func:`make_problem` written to ``path``; returns the truth."""
    obs, truth = make_problem(rank)
    obs.to_zarr(str(path))
    return truth


def check_result(out: Path, truth, address: str | None = None) -> None:
    """The result store is complete, converged, recovers the truth, and (when given) was
    computed on the scheduler at ``address``."""
    res = dsg.load_result(str(out))
    assert res.converged, res.status
    assert res.info["executor"] == "distributed"
    if address is not None:
        assert res.info["scheduler_address"] == address
    L, R = np.asarray(res.L), np.asarray(res.R)
    assert truth.relative_error(L, R) < 1e-8


class Processes:
    """Processes started here, each in its own session, stopped by PID (and the PIDs'
    process groups: a nanny's worker, a script's children) in :meth:`close`."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: list[subprocess.Popen] = []

    def start(self, argv, *, env=None, name="proc") -> subprocess.Popen:
        log = open(self.logdir / f"{name}-{len(self.procs)}.log", "w")  # noqa: SIM115
        p = subprocess.Popen(
            [str(a) for a in argv],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.procs.append(p)
        return p

    def logs(self) -> str:
        return "\n".join(
            f"--- {f.name}\n{f.read_text()[-4000:]}" for f in sorted(self.logdir.glob("*.log"))
        )

    def close(self) -> None:
        for p in reversed(self.procs):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, sig)  # its session: p.pid is the group's id
                try:
                    p.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)  # anything the group still holds


def wait_for_workers(address: str, n: int, timeout: float = 60, security=None) -> None:
    from distributed import Client

    deadline = time.time() + timeout
    while True:
        try:
            with Client(address, timeout="2s", security=security) as c:
                c.wait_for_workers(n, timeout=max(1.0, deadline - time.time()))
                return
        except (OSError, TimeoutError):
            if time.time() > deadline:
                raise
            time.sleep(0.3)


def http_ok(url: str, timeout: float = 30) -> bool:
    """GET ``url`` until it answers 200 (a readiness probe), at most ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[tuple[int, str]]:
    """The child processes of ``pid``: (PID, command line)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                out.append((int(stat.parent.name), cmd))
        except (OSError, IndexError, ValueError):
            continue
    return out
