"""What a run watches while it waits on a cluster: workers paused for memory.

Dask pauses a worker whose process memory passes the pause threshold
(``distributed.worker.memory.pause``, 80% of its limit by default): it runs
no task until its memory falls. Memory that is the process's own (imported
modules, compiled kernels, what the allocator keeps) never falls, so a
cluster whose every worker is paused waits forever, silently.
:class:`PauseWatch` reads the workers' status from the scheduler's identity
at each health check of a long wait (:meth:`DistributedExecutor.gather
<dscaledgd.engine.executors.DistributedExecutor.gather>`): a worker seen
paused gives one :class:`~dscaledgd.exceptions.ClusterWarning` naming it and
its memory, and every worker paused for longer than the dask config
``dscaledgd.paused-timeout`` (default 120 s) ends the run with a
:class:`~dscaledgd.exceptions.ClusterError`.
"""

from __future__ import annotations

import time
import warnings

from ..exceptions import ClusterError, ClusterWarning

__all__ = ["PauseWatch", "paused_timeout"]

_FIX = (
    "Give the workers more memory (memory_limit, `dask worker --memory-limit`) or fewer "
    "threads each; data in a Zarr store is streamed from it with cache='stream'"
)


def paused_timeout() -> float:
    """Seconds every worker may stay paused before a run gives up: dask config
    ``dscaledgd.paused-timeout`` (default ``"120s"``)."""
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("dscaledgd.paused-timeout", "120s")))


def _mib(x) -> str:
    return f"{x / 2**20:.0f} MiB" if isinstance(x, int | float) and x > 0 else "?"


class PauseWatch:
    """Warn once per paused worker; raise when all of them stay paused too long."""

    def __init__(self, address: str):
        self.address = address
        self.warned: set[str] = set()
        self.since: float | None = None

    def _warn(self, workers: dict) -> list:
        """One warning per worker newly seen paused; returns the paused ones, sorted."""
        paused = sorted(a for a, w in workers.items() if w.get("status") == "paused")
        for a in paused:
            if a not in self.warned:
                self.warned.add(a)
                w = workers[a]
                used = (w.get("metrics") or {}).get("memory")
                warnings.warn(
                    f"Dask worker {a} is paused: its process uses {_mib(used)} of its "
                    f"{_mib(w.get('memory_limit'))} limit, past Dask's pause threshold "
                    "('distributed.worker.memory.pause'), and it runs no task until that "
                    f"falls; the run waits. {_FIX}.",
                    ClusterWarning,
                    stacklevel=3,
                )
        return paused

    def check(self, identity: dict) -> None:
        workers = identity.get("workers", {})
        paused = self._warn(workers)
        if not workers or len(paused) < len(workers):
            self.since = None
            return
        now = time.monotonic()
        self.since = self.since if self.since is not None else now
        limit = paused_timeout()
        if now - self.since > limit:
            raise ClusterError(
                f"Every worker of the cluster at {self.address} has been paused for memory "
                f"for more than {limit:g} s ({', '.join(paused)}): no task can run, and "
                f"memory that is the workers' own does not fall. {_FIX}; or raise the dask "
                "config 'dscaledgd.paused-timeout'."
            )

    def no_running_worker(self, identity: dict, timeout: float) -> ClusterError:
        """The error for a scatter that found no running worker within ``timeout``
        (Dask scatters to running workers only), after the warnings of :meth:`check`."""
        workers = identity.get("workers", {})
        paused = self._warn(workers)
        seen = ", ".join(f"{a} {w.get('status')}" for a, w in sorted(workers.items()))
        fix = f"{_FIX}." if paused else "Start workers, or raise 'dscaledgd.scheduler-timeout'."
        return ClusterError(
            f"No running worker of the cluster at {self.address} took this run's data within "
            f"{timeout:g} s (workers: {seen or 'none'}). {fix}"
        )
