"""Low-latency messaging for the duration of a run on a ``distributed`` cluster.

distributed batches its control messages: the client sends at most one batch
every 10 ms, the scheduler one per worker every 5 ms, a worker one every
2 ms (``BatchedSend`` intervals, fixed in the code, not in dask's config).
That favours throughput when thousands of small tasks are in flight. An
iterative solver is the other case: each iteration is a short chain of
dependent tasks (update → pass → sums → Grams → gather), and every link of the
chain waits out an interval. Measured on a 2-worker LocalCluster, ScaledGD at
1000×1000 took 32 ms per iteration with the default intervals and 15 ms with
all three at 0 (scheduler alone: 21–24 ms; client and scheduler: 18 ms;
``benchmarks/RESULTS.md``).

:func:`low_latency` sets the three to 0 while a run lasts and puts every
value back afterwards; workers that join meanwhile keep distributed's
defaults. It is on by default; dask config ``dscaledgd.low-latency: false``
(``DASK_DSCALEDGD__LOW_LATENCY=false``) leaves a shared cluster's settings
alone. A scheduler or worker that cannot import dscaledgd is left as it is.
"""

from __future__ import annotations

import contextlib
import logging

__all__ = ["low_latency", "enabled"]

logger = logging.getLogger("dscaledgd")


def enabled() -> bool:
    """dask config ``dscaledgd.low-latency`` (default True)."""
    import dask

    value = dask.config.get("dscaledgd.low-latency", True)
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


def _scheduler_intervals(dask_scheduler, value=None, saved=None):
    """Set the scheduler's per-worker stream intervals (``value``, or ``saved`` per
    address); return the previous ones."""
    old = {}
    for addr, comm in dask_scheduler.stream_comms.items():
        old[addr] = comm.interval
        if saved is not None:
            if addr in saved:
                comm.interval = saved[addr]
        else:
            comm.interval = value
    return old


def _worker_interval(dask_worker, value):
    old = dask_worker.batched_stream.interval
    dask_worker.batched_stream.interval = value
    return old


def _restore_worker(dask_worker, saved):
    value = saved.get(dask_worker.address)
    if value is not None:
        dask_worker.batched_stream.interval = value


@contextlib.contextmanager
def low_latency(client):
    """Batched-send intervals of ``client``, its scheduler and its workers at 0 inside."""
    if not enabled():
        yield False
        return
    comm = getattr(client, "scheduler_comm", None)
    saved_client = getattr(comm, "interval", None)
    saved_sched = saved_workers = None
    try:
        if saved_client is not None:
            comm.interval = 0.0
        saved_sched = client.run_on_scheduler(_scheduler_intervals, value=0.0)
        saved_workers = client.run(_worker_interval, value=0.0)
    except Exception as exc:  # noqa: BLE001 - an old or foreign cluster: run as it is
        logger.info("could not lower the cluster's message intervals (%s)", exc)
    try:
        yield True
    finally:
        if saved_client is not None:
            comm.interval = saved_client
        _restore(client, saved_sched, saved_workers)


#: seconds a restore may take (a hung or stopped scheduler must not block the caller)
RESTORE_TIMEOUT = 5.0


def _restore(client, saved_sched, saved_workers) -> None:
    with contextlib.suppress(Exception):
        if saved_sched is not None:
            client.sync(
                client._run_on_scheduler, _scheduler_intervals, saved=saved_sched,
                callback_timeout=RESTORE_TIMEOUT,
            )  # fmt: skip
    with contextlib.suppress(Exception):
        if saved_workers:
            client.sync(
                client._run, _restore_worker, saved=saved_workers, on_error="ignore",
                callback_timeout=RESTORE_TIMEOUT,
            )  # fmt: skip
