"""Where tasks run: an embedded LocalCluster, a user's client, or a thread pool.

:func:`executor_for` returns an :class:`~dscaledgd.engine.executors.Executor`
(:mod:`.executors`): a :class:`DistributedExecutor` on a ``distributed.Client``,
or a :class:`ThreadExecutor` on a local thread pool (``scheduler="threads"``)
or inline (``scheduler="sync"``), the cheapest choice on one node and the
mode the tests use most.

Resolution (:func:`executor_for`), as ``dask.array`` does it: an explicit
``client``; else a connection to ``address``; else the active default client
(``distributed.get_client()``); else a connection to dask's
``scheduler-address`` setting (``DASK_SCHEDULER_ADDRESS``, which a DaskJob
runner or a dask-docker notebook sets); else, with ``scheduler=None``, dask's
``scheduler`` setting (``dask.config.set(scheduler="sync")``) or a local
thread pool; with ``scheduler="distributed"``, an embedded ``LocalCluster`` on
127.0.0.1 sized to the machine, whose dashboard link is logged and which is
closed when the run ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from .._interactive import interactive
from ..exceptions import InvalidParameterError
from .executors import (  # noqa: F401  (Executor, scheduler_timeout: re-exported)
    DistributedExecutor,
    Executor,
    ThreadExecutor,
    _parse_address,
    scheduler_timeout,
)

__all__ = ["Executor", "DistributedExecutor", "ThreadExecutor", "executor_for", "SCHEDULERS"]

logger = logging.getLogger("dscaledgd")

SCHEDULERS = ("distributed", "threads", "sync")

#: dask's ``scheduler`` setting → ours (anything else: the thread pool)
_DASK_SCHEDULERS = {
    "sync": "sync", "synchronous": "sync", "single-threaded": "sync",
    "threads": "threads", "threading": "threads",
    "distributed": "distributed", "dask.distributed": "distributed",
}  # fmt: skip


def _active_client():
    """The active default ``distributed`` client, or None."""
    try:
        from distributed import get_client

        return get_client()
    except (ValueError, ImportError):
        return None


def default_scheduler() -> str:
    """What ``scheduler=None`` means with no client, address or active client: dask's
    ``scheduler`` setting when it names one we have, else ``"threads"``."""
    import dask

    return _DASK_SCHEDULERS.get(str(dask.config.get("scheduler", None) or ""), "threads")


def _check_address(address: str) -> None:
    """Refuse a malformed scheduler address before a Client is built on it."""
    try:
        _parse_address(address)
    except (ValueError, TypeError) as exc:
        raise InvalidParameterError(
            "The 'address' parameter must be a Dask scheduler address such as "
            f"'tcp://127.0.0.1:8786'. Got {address!r} ({exc})."
        ) from None


#: glibc malloc settings for the embedded cluster's workers. Dask's default
#: ``MALLOC_TRIM_THRESHOLD_=65536`` also turns off glibc's adaptive mmap
#: threshold, so every array over 128 KB (a 50k × 10 factor block, a partial
#: gradient) is a fresh ``mmap`` and page-faults on first touch: ``X @ A`` on
#: 50k × 10 took 4.4 ms instead of 0.7 ms. Serving blocks up to 32 MB from the
#: heap and trimming it above 128 MB made a 50M-nnz iteration about 7% faster
#: (0.72 vs 0.78 s, two alternating rounds each) for 20–40 MB more RSS per
#: worker. Users' own clusters keep their settings (docs/performance.md).
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": 33554432, "MALLOC_TRIM_THRESHOLD_": 134217728}


@contextlib.contextmanager
def worker_malloc_env() -> Iterator[None]:
    """Start the LocalClusters created inside with :data:`WORKER_MALLOC_ENV`.

    A Nanny reads ``distributed.nanny.pre-spawn-environ``, but a variable
    already in ``os.environ`` wins, and the Nanny writes its values into
    ``os.environ`` of the process that starts it (any earlier LocalCluster
    leaves ``MALLOC_TRIM_THRESHOLD_=65536`` there). So both are set for the
    duration and ``os.environ`` is restored afterwards: nothing leaks into
    the caller's process.
    """
    import dask
    import distributed  # noqa: F401  (loads the distributed config)

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    env.update(WORKER_MALLOC_ENV)
    saved = {k: os.environ.get(k) for k in WORKER_MALLOC_ENV}
    os.environ.update({k: str(v) for k, v in WORKER_MALLOC_ENV.items()})
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _embedded_cluster(n_workers: int | None, threads_per_worker: int | None, memory_limit):
    from distributed import Client, LocalCluster

    ncpu = os.cpu_count() or 1
    if n_workers is None:
        n_workers = min(ncpu, 4)
    if threads_per_worker is None:
        threads_per_worker = max(1, ncpu // n_workers)
    with worker_malloc_env():
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            memory_limit=memory_limit if memory_limit is not None else "auto",
        )
    client = Client(cluster)
    logger.info("started an embedded LocalCluster; dashboard at %s", cluster.dashboard_link)
    if interactive():  # someone is watching: say where to look
        print(
            f"dscaledgd: started a LocalCluster of {n_workers} workers; dashboard at "
            f"{cluster.dashboard_link}",
            file=sys.stderr,
        )
    return cluster, client


def address_from_scheduler_file(path: str, timeout: float | None = None) -> str:
    """The address in a scheduler file (``dask scheduler --scheduler-file``, dask-jobqueue,
    SLURM recipes), waiting up to ``timeout`` s (default: the scheduler timeout) for the
    file to appear, as a batch job's client starts alongside its scheduler."""
    import json
    import time

    timeout = scheduler_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as fh:
                info = json.load(fh)
            address = info.get("address") if isinstance(info, dict) else None
            if not address:
                raise InvalidParameterError(
                    f"The scheduler file {path!r} has no 'address'; it is not a Dask scheduler "
                    "file (written by `dask scheduler --scheduler-file PATH`)."
                )
            return str(address)
        except (FileNotFoundError, json.JSONDecodeError) as exc:
            if time.monotonic() >= deadline:
                what = "does not exist" if isinstance(exc, FileNotFoundError) else "is not JSON"
                raise ConnectionError(
                    f"The scheduler file {path!r} {what} after {timeout:g} s. Start the "
                    f"scheduler with `dask scheduler --scheduler-file {path}` (on a shared "
                    "filesystem), or raise the dask config 'dscaledgd.scheduler-timeout'."
                ) from None
            time.sleep(0.2)


def _configured_address() -> str | None:
    """dask's ``scheduler-address`` setting (``DASK_SCHEDULER_ADDRESS``), or None."""
    import dask

    return dask.config.get("scheduler-address", None) or None


@contextlib.contextmanager
def executor_for(
    client=None,
    *,
    address: str | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit=None,
) -> Iterator[Executor]:
    """Yield the executor a run should use, and clean up what it started.

    Parameters
    ----------
    client : distributed.Client, optional
        Use this client. Nothing is closed afterwards.
    address : str, optional
        Connect to a running scheduler (e.g. ``"tcp://127.0.0.1:8786"``); the
        connection is closed afterwards, the cluster is not.
    scheduler : {"distributed", "threads", "sync"}, optional
        ``"threads"`` runs on a local thread pool without distributed;
        ``"sync"`` runs inline (debugging). ``"distributed"`` uses the active
        client, dask's ``scheduler-address``, or starts an embedded
        LocalCluster. ``None`` (default) uses the active client or
        ``scheduler-address`` when there is one, else dask's ``scheduler``
        setting, else threads (module docstring).
    n_workers, threads_per_worker, memory_limit
        Sizing of an embedded LocalCluster, if one is started.
    """
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise InvalidParameterError(
            f"The 'scheduler' parameter must be one of {{{', '.join(map(repr, SCHEDULERS))}}} "
            f"or None. Got {scheduler!r}."
        )
    active = _active_client() if client is None and address is None else None
    if scheduler is None and client is None and address is None:
        if active is None and not _configured_address():
            scheduler = default_scheduler()
    if scheduler in ("threads", "sync"):
        if client is not None or address is not None:
            raise InvalidParameterError(
                f"scheduler={scheduler!r} runs without distributed; do not also pass "
                "'client' or 'address'."
            )
        ex = ThreadExecutor(0 if scheduler == "sync" else threads_per_worker)
        try:
            yield ex
        finally:
            ex.close()
        return
    if client is not None:
        if address is not None:
            raise InvalidParameterError("Pass either 'client' or 'address', not both.")
        with _running(DistributedExecutor(client)) as ex:
            yield ex
        return
    if active is not None:
        with _running(DistributedExecutor(active)) as ex:
            yield ex
        return
    source = "the 'address' parameter"
    if address is None:
        address = _configured_address()
        source = "dask's 'scheduler-address' setting (DASK_SCHEDULER_ADDRESS)"
    if address is not None:
        from distributed import Client

        _check_address(address)
        try:
            c = Client(address, timeout="10s", set_as_default=False)
        except OSError as exc:
            raise ConnectionError(
                f"Could not connect to the Dask scheduler at {address!r}, from {source} "
                f"({exc}). Check that `dask scheduler` is running there, or pass "
                "scheduler='threads' to run in this process."
            ) from None
        try:
            ex = DistributedExecutor(c)
        except BaseException:
            c.close()
            raise
        ex.owned = True
        try:
            with _running(ex):
                yield ex
        finally:
            c.close()
        return
    cluster, c = _embedded_cluster(n_workers, threads_per_worker, memory_limit)
    ex = DistributedExecutor(c)
    ex.owned = True
    try:
        with _running(ex):
            yield ex
    finally:
        c.close()
        cluster.close()


@contextlib.contextmanager
def _running(ex: DistributedExecutor) -> Iterator[DistributedExecutor]:
    """A run on ``ex``'s cluster, with its message intervals lowered (:mod:`.latency`)."""
    from .latency import low_latency

    with low_latency(ex.client):
        yield ex
