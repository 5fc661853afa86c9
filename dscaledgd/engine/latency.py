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
value back afterwards: each process counts the runs that want it (two clients
may run on one cluster at once) and the last one to finish restores the
saved values; workers that join meanwhile keep distributed's defaults. It is
on by default; dask config ``dscaledgd.low-latency: false``
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


#: attribute holding ``[active runs, saved intervals]`` on a scheduler, worker or client
_MARK = "_dscaledgd_low_latency"


def _enter(obj, comms: dict) -> None:
    """One more run wants ``comms`` (name → BatchedSend) at 0; the first saves them."""
    state = getattr(obj, _MARK, None)
    if state is None or state[0] == 0:
        state = [0, {k: c.interval for k, c in comms.items()}]
        setattr(obj, _MARK, state)
    state[0] += 1
    for c in comms.values():
        c.interval = 0.0


def _leave(obj, comms: dict) -> None:
    """One run fewer; the last one puts the saved intervals back (runs may overlap: two
    clients on one cluster must not leave it at 0)."""
    state = getattr(obj, _MARK, None)
    if state is None or state[0] == 0:
        return
    state[0] -= 1
    if state[0] == 0:
        for k, c in comms.items():
            if k in state[1]:
                c.interval = state[1][k]


def _scheduler_enter(dask_scheduler):
    _enter(dask_scheduler, dict(dask_scheduler.stream_comms))


def _scheduler_leave(dask_scheduler):
    _leave(dask_scheduler, dict(dask_scheduler.stream_comms))


def _worker_enter(dask_worker):
    _enter(dask_worker, {"stream": dask_worker.batched_stream})


def _worker_leave(dask_worker):
    _leave(dask_worker, {"stream": dask_worker.batched_stream})


@contextlib.contextmanager
def low_latency(client):
    """Batched-send intervals of ``client``, its scheduler and its workers at 0 inside."""
    if not enabled():
        yield False
        return
    comm = getattr(client, "scheduler_comm", None)
    mine = {"stream": comm} if comm is not None and hasattr(comm, "interval") else {}
    entered_sched = entered_workers = False
    _enter(client, mine)
    try:
        client.run_on_scheduler(_scheduler_enter)
        entered_sched = True
        client.run(_worker_enter)
        entered_workers = True
    except Exception as exc:  # noqa: BLE001 - an old or foreign cluster: run as it is
        logger.info("could not lower the cluster's message intervals (%s)", exc)
    try:
        yield True
    finally:
        _leave(client, mine)
        _restore(client, entered_sched, entered_workers)


#: seconds a restore may take (a hung or stopped scheduler must not block the caller)
RESTORE_TIMEOUT = 5.0


def _restore(client, sched: bool, workers: bool) -> None:
    with contextlib.suppress(Exception):
        if sched:
            client.sync(
                client._run_on_scheduler, _scheduler_leave, callback_timeout=RESTORE_TIMEOUT
            )
    with contextlib.suppress(Exception):
        if workers:
            client.sync(
                client._run, _worker_leave, on_error="ignore", callback_timeout=RESTORE_TIMEOUT
            )
