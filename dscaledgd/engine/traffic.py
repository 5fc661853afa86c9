"""Data moved by a run on a distributed cluster, from distributed's own records.

A worker plugin (:class:`TrafficCounter`) keeps running totals on every worker
of what distributed itself records:

* **between workers**: each entry distributed appends to a worker's
  ``transfer_outgoing_log`` (one per ``get_data`` it served, with the
  requester ``who`` and the bytes ``total`` by its own ``nbytes`` accounting)
  whose requester is a worker (dependency fetches, replication); by the task
  name of each key sent (``dscaledgd-<name>-…``);
* **to clients**: the entries whose requester is not a worker (``who`` is
  ``None`` for the scheduler's and a client's gathers);
* **from clients**: the bytes of data scattered to the worker (its
  ``update_data`` handler, which ``Client.scatter`` reaches; replication
  between workers does not pass through it);
* **tasks**: tasks the worker executed (``executing → memory`` transitions),
  by task name;
* **busy seconds**: the compute time of those tasks (the ``compute`` intervals
  the worker records for the scheduler's occupancy estimates, which exclude the
  thread pool's and the event loop's overhead), per worker: a window's wall time
  minus the busiest worker's compute time is what the cluster adds.

The log's own entries are counted as distributed appends them (its deque is
bounded; the totals are not), so nothing depends on reading the log in time.
:func:`snapshot` reads the totals of every worker; the difference of two
snapshots is a :class:`Traffic`. Only the standard library and distributed are
imported (the module can be shipped by value to a cluster running another
version of the package).
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass, field

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["TrafficCounter", "Traffic", "install", "snapshot", "task_name"]

PLUGIN_NAME = "dscaledgd-traffic"


def task_name(key) -> str:
    """``grad`` for ``dscaledgd-grad-<run>-<seq>``; the dask key prefix otherwise."""
    if isinstance(key, tuple):
        key = key[0]
    key = str(key)
    if key.startswith("dscaledgd-"):
        return key.split("-")[1]
    return key.rsplit("-", 1)[0] or key


def _zero() -> dict:
    return {
        "peer_bytes": 0,
        "peer_transfers": 0,
        "client_bytes": 0,
        "client_transfers": 0,
        "scatter_bytes": 0,
        "scatters": 0,
        "tasks": 0,
        "busy_s": 0.0,
        "peer_bytes_by_name": collections.Counter(),
        "tasks_by_name": collections.Counter(),
    }


class _CountingLog(collections.deque):
    """``transfer_outgoing_log`` that adds every appended entry to the counters."""

    def __init__(self, old, counts):
        super().__init__(old, maxlen=old.maxlen)
        self.counts = counts

    def append(self, entry):
        super().append(entry)
        c = self.counts
        total = int(entry.get("total") or 0)
        if entry.get("who") is None:  # the scheduler's or a client's gather
            c["client_bytes"] += total
            c["client_transfers"] += 1
            return
        c["peer_bytes"] += total
        c["peer_transfers"] += 1
        for key, nbytes in (entry.get("keys") or {}).items():
            c["peer_bytes_by_name"][task_name(key)] += int(nbytes or 0)


class TrafficCounter(WorkerPlugin):
    """Worker plugin keeping the running totals described in the module docstring."""

    idempotent = True
    name = PLUGIN_NAME

    def setup(self, worker):
        self.worker = worker
        self.counts = _zero()
        self._log = worker.transfer_outgoing_log
        worker.transfer_outgoing_log = _CountingLog(self._log, self.counts)
        self._update_data = worker.handlers["update_data"]
        counts, original = self.counts, self._update_data

        @functools.wraps(original)
        def update_data(*args, **kwargs):
            out = original(*args, **kwargs)
            sizes = out.get("nbytes", {}) if isinstance(out, dict) else {}
            counts["scatter_bytes"] += int(sum(sizes.values()))
            counts["scatters"] += len(sizes)
            return out

        worker.handlers["update_data"] = update_data

    def teardown(self, worker):
        worker.transfer_outgoing_log = self._log
        worker.handlers["update_data"] = self._update_data

    def transition(self, key, start, finish, **kwargs):
        if finish == "memory" and start in ("executing", "long-running"):
            self.counts["tasks"] += 1
            self.counts["tasks_by_name"][task_name(key)] += 1
            ts = self.worker.state.tasks.get(key)
            for ss in getattr(ts, "startstops", ()) if ts is not None else ():
                if ss.get("action") == "compute":
                    self.counts["busy_s"] += ss["stop"] - ss["start"]


def _read(dask_worker):
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if plugin is None or not hasattr(plugin, "counts"):
        return None
    c = plugin.counts
    return {k: dict(v) if isinstance(v, collections.Counter) else v for k, v in c.items()}


def install(client) -> None:
    """Register :class:`TrafficCounter` on every worker of ``client``'s cluster (and on
    workers that join later). Registering again keeps the running totals."""
    client.register_plugin(TrafficCounter(), name=PLUGIN_NAME)


@dataclass
class Traffic:
    """Totals over the workers of a cluster (or their change between two snapshots)."""

    peer_bytes: int = 0
    peer_transfers: int = 0
    client_bytes: int = 0
    client_transfers: int = 0
    scatter_bytes: int = 0
    scatters: int = 0
    tasks: int = 0
    peer_bytes_by_name: dict = field(default_factory=dict)
    tasks_by_name: dict = field(default_factory=dict)
    #: compute seconds of the tasks each worker executed, by worker address
    busy_by_worker: dict = field(default_factory=dict)
    workers: int = 0

    def __sub__(self, other: Traffic) -> Traffic:
        def sub(a, b):
            keys = set(a) | set(b)
            return {k: a.get(k, 0) - b.get(k, 0) for k in keys if a.get(k, 0) != b.get(k, 0)}

        return Traffic(
            **{k: getattr(self, k) - getattr(other, k) for k in _TOTALS},
            peer_bytes_by_name=sub(self.peer_bytes_by_name, other.peer_bytes_by_name),
            tasks_by_name=sub(self.tasks_by_name, other.tasks_by_name),
            busy_by_worker=sub(self.busy_by_worker, other.busy_by_worker),
            workers=self.workers,
        )

    def per(self, n: float) -> dict:
        """The scalar totals divided by ``n`` (per iteration)."""
        keys = ("peer_bytes", "peer_transfers", "client_bytes", "scatter_bytes", "tasks")
        return {k: getattr(self, k) / n for k in keys}


#: the scalar counters of :class:`Traffic`
_TOTALS = (
    "peer_bytes", "peer_transfers", "client_bytes", "client_transfers", "scatter_bytes",
    "scatters", "tasks",
)  # fmt: skip


def snapshot(client) -> Traffic:
    """The running totals of every worker of ``client``'s cluster, added up.

    Raises ``RuntimeError`` when a worker has no counter (call :func:`install`).
    """
    per_worker = client.run(_read)
    missing = [w for w, c in per_worker.items() if c is None]
    if missing:
        raise RuntimeError(f"no traffic counter on workers {missing}; call install(client)")
    out = Traffic(workers=len(per_worker))
    by_name: collections.Counter = collections.Counter()
    tasks_by_name: collections.Counter = collections.Counter()
    for w, c in per_worker.items():
        out.busy_by_worker[w] = c.get("busy_s", 0.0)
        for k in _TOTALS:
            setattr(out, k, getattr(out, k) + c[k])
        by_name.update(c["peer_bytes_by_name"])
        tasks_by_name.update(c["tasks_by_name"])
    out.peer_bytes_by_name = dict(by_name)
    out.tasks_by_name = dict(tasks_by_name)
    return out
