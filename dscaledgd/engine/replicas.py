"""Two copies of every scattered item, kept against the scheduler's memory manager.

Scattered data has no lineage: a worker that dies with its only copy takes
it away. :meth:`DistributedExecutor.scatter
<dscaledgd.engine.executors.DistributedExecutor.scatter>` therefore sends
each item to two workers, under keys that start with :data:`PREFIX`. But
distributed's Active Memory Manager runs ``ReduceReplicas`` every two
seconds by default, which drops every copy beyond the first of a key that
no task is waiting for: the second copy would be gone before it was ever
needed (measured: 2 of 6 lost-worker tests failed that way).

:func:`install` (run on the scheduler once per executor) replaces the
scheduler's ``ReduceReplicas`` policy with :class:`KeepScatteredReplicas`,
which makes the same suggestions except for keys with :data:`PREFIX`. Every
other key on the cluster is treated as before. A scheduler that cannot
import dscaledgd keeps its policy; the run then warns that a lost worker
may lose data.
"""

from __future__ import annotations

from distributed.active_memory_manager import ReduceReplicas

__all__ = ["PREFIX", "KeepScatteredReplicas", "install"]

#: key prefix of the items dscaledgd scatters with two copies
PREFIX = "dscaledgd-keep-"


def _ours(key) -> bool:
    return isinstance(key, str) and key.startswith(PREFIX)


class KeepScatteredReplicas(ReduceReplicas):
    """``ReduceReplicas`` that leaves the replicas of dscaledgd's scattered items alone."""

    def run(self):
        for suggestion in super().run():  # ReduceReplicas ignores the values sent back
            if not _ours(suggestion.ts.key):
                yield suggestion


def install(dask_scheduler=None) -> str:
    """Swap the scheduler's ``ReduceReplicas`` for :class:`KeepScatteredReplicas`.

    Run with ``client.run_on_scheduler(install)``. Idempotent. Returns what
    was found: ``"installed"``, ``"present"``, ``"no-amm"`` or
    ``"no-reduce-replicas"`` (a memory manager without that policy never
    drops our copies).
    """
    amm = dask_scheduler.extensions.get("amm")
    if amm is None:
        return "no-amm"
    for policy in list(amm.policies):
        if isinstance(policy, KeepScatteredReplicas):
            return "present"
    for policy in list(amm.policies):
        if type(policy) is ReduceReplicas:
            amm.policies.discard(policy)
            amm.add_policy(KeepScatteredReplicas())
            return "installed"
    return "no-reduce-replicas"
