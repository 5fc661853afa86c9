"""Real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessCluster:
    """A scheduler and ``n`` nanny-less workers (a SIGKILL removes a worker for good)."""

    def __init__(self, n_workers: int = 3, scheduler_file: str | None = None):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        extra = ["--scheduler-file", scheduler_file] if scheduler_file else []
        self.scheduler = self._spawn(
            "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard",
            *extra,
        )  # fmt: skip
        self.workers = [self.add_worker() for _ in range(n_workers)]

    def _spawn(self, *args):
        return subprocess.Popen(
            [os.path.join(BIN, "dask"), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def add_worker(self):
        return self._spawn(
            "worker", self.address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
            "--no-dashboard", "--memory-limit", "2GiB",
        )  # fmt: skip

    def kill_worker(self) -> int:
        """SIGKILL the oldest live worker; returns its PID."""
        victim = next(w for w in self.workers if w.poll() is None)
        victim.kill()
        victim.wait()
        return victim.pid

    def replace_dead(self, client, timeout: float = 60) -> None:
        """Start a worker for each dead one and wait until the scheduler sees exactly
        the live ones."""
        n = len(self.workers)
        self.workers = [w for w in self.workers if w.poll() is None]
        self.workers += [self.add_worker() for _ in range(n - len(self.workers))]
        client.wait_for_workers(n, timeout=timeout)
        deadline = time.time() + timeout
        while len(client.scheduler_info()["workers"]) != n and time.time() < deadline:
            time.sleep(0.1)  # the scheduler has yet to notice a dead worker

    def signal_scheduler(self, sig) -> None:
        os.kill(self.scheduler.pid, sig)

    def close(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                p.kill()
            p.wait()


def kill_at_checkpoint(cmd: list, ckpt_dir: str, at_least: int, env=None, timeout=120) -> int:
    """Start ``cmd``, SIGKILL it once ``ckpt_dir`` holds a checkpoint at iteration
    ``at_least`` or later; return the newest checkpoint's iteration."""
    from dscaledgd.storage.checkpoints import list_checkpoints

    child = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not any(n >= at_least for n, _ in list_checkpoints(ckpt_dir)):
            assert child.poll() is None, f"the run ended before checkpoint {at_least}"
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return list_checkpoints(ckpt_dir)[-1][0]
