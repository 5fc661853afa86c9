"""Task runners: the four-verb :class:`Executor` interface and its two implementations.

Every chunk-aware routine uses ``submit``, ``scatter``, ``gather`` and
``release`` (plus ``reroot``, ``span``):

* :class:`DistributedExecutor` wraps a ``distributed.Client``. Tasks are
  futures with readable keys (``dscaledgd-<name>-<run>-<seq>``) so the
  dashboard groups them by name; state stays on the workers. Scattered data
  is kept on two workers (:mod:`.replicas`), and a lost worker, a hung or
  vanished scheduler end a wait with a :class:`~dscaledgd.exceptions.ClusterError`
  naming the scheduler's address (docs/design.md, "Surviving a lost worker").
* :class:`ThreadExecutor` runs the same task functions on a local thread
  pool (``scheduler="threads"``), or inline (``scheduler="sync"``).

Which one a run gets is decided in :mod:`.cluster`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import uuid
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..exceptions import ClusterError
from . import batching
from .health import PauseWatch
from .replicas import PREFIX
from .replicas import install as install_keep_replicas

__all__ = ["Executor", "DistributedExecutor", "ThreadExecutor", "POLL", "scheduler_timeout"]


class Executor:
    """Interface of the task runners (see module docstring)."""

    kind: str = "abstract"
    nthreads: int = 1
    #: Memory limit per worker in bytes, or ``None`` when unknown/unlimited.
    memory_limit: int | None = None

    def submit(self, fn, *args, name: str, **kwargs) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def submit_on(self, slot: int, fn, *args, name: str, **kwargs) -> Any:
        """:meth:`submit`, preferring worker ``slot`` where there are several workers."""
        return self.submit(fn, *args, name=name, **kwargs)

    def scatter(self, data: Sequence[Any], placement: Sequence[int] | None = None) -> list:
        """Put data on the workers; ``placement[k]`` is a worker slot (hint) for item k."""
        raise NotImplementedError  # pragma: no cover - interface

    @property
    def n_workers(self) -> int:
        return 1

    def memory_budget(self) -> float:
        """Bytes of data a run may keep on the workers: half of their memory (this
        machine's here; see :meth:`DistributedExecutor.memory_budget`)."""
        from .base import machine_memory

        return 0.5 * machine_memory()

    def cache_policy(self, cache: str, data) -> str:
        """The tile cache of ``data`` (with ``path`` and ``nbytes``: Observations,
        TensorObservations): ``"memory"`` when it is held in memory (scattered);
        ``"auto"`` is ``"memory"`` when it fits :meth:`memory_budget`, else ``"stream"``."""
        if data.path is None:
            return "memory"
        if cache != "auto":
            return cache
        return "memory" if data.nbytes <= self.memory_budget() else "stream"

    def gather(self, handles) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def release(self, *handles) -> None:
        """Drop references to task results (futures are released on the cluster)."""

    def flush(self) -> None:
        """Start the tasks submitted so far (before their handles leave the engine)."""

    def reroot(self, handles: list, placement: Sequence[int] | None = None) -> list:
        """Fresh handles for the same data, with no task history behind them.

        Identity for local executors (see :meth:`DistributedExecutor.reroot`).
        """
        return list(handles)

    def span(self, name: str):
        return contextlib.nullcontext()


def _resolve(x):
    """``x`` with every future in it (nested in lists and tuples) replaced by its result."""
    if isinstance(x, Future):
        return x.result()
    if isinstance(x, list | tuple) and any(_has_future(e) for e in x):
        return type(x)(_resolve(e) for e in x)
    return x


def _has_future(x) -> bool:
    if isinstance(x, Future):
        return True
    return isinstance(x, list | tuple) and any(_has_future(e) for e in x)


def _futures_in(args, kwargs):
    def walk(x):
        if isinstance(x, Future):
            yield x
        elif isinstance(x, list | tuple):
            for e in x:
                yield from walk(e)

    for x in (*args, *kwargs.values()):
        yield from walk(x)


def _call(fn, args, kwargs):
    return fn(*[_resolve(a) for a in args], **{k: _resolve(v) for k, v in kwargs.items()})


class ThreadExecutor(Executor):
    """Run tasks on a local thread pool; ``nthreads=0`` runs them inline.

    Dataflow: a task enters the pool only when every future among its
    arguments is done, so no pool thread ever blocks waiting on another task
    (a plain ``pool.submit`` of dependent tasks would leave threads idle).

    BLAS keeps the process's thread setting. Limiting it to one thread while
    the pool runs (threadpoolctl) made the dense Tucker chunk kernel 30×
    faster on the loaded 2-core machine (0.258 s against 0.008 s for 8 calls
    at 100³), but OpenBLAS limited at run time gave different bits from the
    workers limited at start-up, which broke the bit-identical results across
    schedulers that docs/data-model.md promises. Set ``OPENBLAS_NUM_THREADS=1`` (or
    ``OMP_NUM_THREADS=1``) before starting Python for the speed.
    """

    def __init__(self, nthreads: int | None = None):
        n = (os.cpu_count() or 1) if nthreads is None else nthreads
        self.kind = "sync" if n == 0 else "threads"
        self.nthreads = max(1, n)
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="dscaledgd") if n else None

    def submit(self, fn, *args, name: str, **kwargs):
        out: Future = Future()
        if self._pool is None:
            out.set_result(_call(fn, args, kwargs))
            return out
        pending = [d for d in _futures_in(args, kwargs) if not d.done()]
        if not pending:
            self._launch(out, fn, args, kwargs)
            return out
        remaining = [len(pending)]
        lock = threading.Lock()

        def on_done(_):
            with lock:
                remaining[0] -= 1
                ready = remaining[0] == 0
            if ready:
                self._launch(out, fn, args, kwargs)

        for d in pending:
            d.add_done_callback(on_done)
        return out

    def _launch(self, out: Future, fn, args, kwargs) -> None:
        def work():
            try:
                out.set_result(_call(fn, args, kwargs))
            except BaseException as exc:  # propagated to dependents and gather()
                out.set_exception(exc)

        self._pool.submit(work)

    def scatter(self, data, placement=None):
        out = []
        for d in data:
            f: Future = Future()
            f.set_result(d)
            out.append(f)
        return out

    def gather(self, handles):
        if isinstance(handles, Future):
            return handles.result()
        return [h.result() if isinstance(h, Future) else self.gather(h) for h in handles]

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class DistributedExecutor(Executor):
    """Submit tasks as futures on a ``distributed.Client``."""

    kind = "distributed"
    #: True when this run started the client (it is closed at the end)
    owned = False

    #: copies of every scattered item (observation tiles, re-rooted factors)
    replicas = 2

    def __init__(self, client):
        self.client = client
        self.address = getattr(client.scheduler, "address", None) or "the scheduler"
        self.timeout = scheduler_timeout()
        self._run = uuid.uuid4().hex[:8]
        self._pause_watch = PauseWatch(self.address)  # one warning per paused worker
        self._seq = itertools.count()
        workers = self._identity().get("workers", {})
        if len(workers) < workers_to_wait_for():
            self._wait_for_workers()
            workers = self._identity().get("workers", {})
        self._addrs = sorted(workers)
        #: tasks sent as one graph per wait (:mod:`.batching`); None: task by task
        self._batch = batching.Batch(client) if batching.supported() else None
        self._keep_replicas()
        self.nthreads = max(1, sum(w.get("nthreads", 1) for w in workers.values()))
        limits = [w.get("memory_limit") or 0 for w in workers.values()]
        self.memory_limit = min(limits) if limits and min(limits) > 0 else None

    def key(self, name: str) -> str:
        return f"dscaledgd-{name}-{self._run}-{next(self._seq)}"

    def submit(self, fn, *args, name: str, **kwargs):
        if self._batch is not None:
            return self._batch.submit(self.key(name), fn, args, kwargs)
        return self.client.submit(fn, *args, key=self.key(name), pure=False, **kwargs)

    def flush(self) -> None:
        """Send the tasks submitted since the last wait (:mod:`.batching`)."""
        if self._batch is not None:
            self._batch.flush()

    @property
    def n_workers(self) -> int:
        return max(1, len(self._addrs))

    def memory_budget(self) -> float:
        """Half the memory of the workers (their limit × their number), when they have
        a limit; else half of this machine's memory."""
        if self.memory_limit:
            return 0.5 * self.memory_limit * self.n_workers
        return super().memory_budget()

    # ------------------------------------------------------ talking to the scheduler
    @contextlib.contextmanager
    def _connected(self):
        """A closed connection to the scheduler (``CommClosedError``, ``OSError``) inside
        the block is a :class:`ClusterError` saying the scheduler is gone."""
        from distributed.client import CommClosedError

        try:
            yield
        except (CommClosedError, OSError) as exc:
            raise self._scheduler_gone(exc) from None

    def _identity(self) -> dict:
        """The scheduler's identity (workers included), or a ClusterError within the timeout."""
        with self._connected():
            try:
                return self.client.sync(
                    self.client.scheduler.identity, callback_timeout=self.timeout
                )
            except TimeoutError:
                if self._unreachable():
                    gone = ConnectionRefusedError("no process listens")
                    raise self._scheduler_gone(gone) from None
                raise ClusterError(
                    f"The Dask scheduler at {self.address} did not answer within "
                    f"{self.timeout:g} s: it is hung, stopped or overloaded. Check the "
                    "scheduler process (or raise the dask config 'dscaledgd.scheduler-timeout')."
                ) from None

    def _unreachable(self) -> bool:
        """True when nothing accepts connections at the scheduler's address (a stopped
        process still does: the kernel completes the handshake)."""
        import socket

        try:
            scheme, hostport = _parse_address(self.address)
            if hostport is None:
                return False
            with socket.create_connection(hostport, timeout=2):
                return False
        except (ConnectionRefusedError, socket.gaierror):
            return True
        except (OSError, ValueError):
            return False

    def _scheduler_gone(self, exc) -> ClusterError:
        return ClusterError(
            f"The Dask scheduler at {self.address} is gone (the connection closed: "
            f"{type(exc).__name__}: {exc}). The run cannot continue; restart the scheduler "
            "and its workers, then run again."
        )

    def _wait_for_workers(self, n: int | None = None) -> None:
        """Wait for ``n`` workers (dask config ``dscaledgd.wait-for-workers``, default 1)."""
        n = workers_to_wait_for() if n is None else n
        try:
            self.client.wait_for_workers(n, timeout=self.timeout)
        except TimeoutError:
            have = len(self._identity().get("workers", {}))
            first = "No worker" if have == 0 else f"Only {have} of {n} workers"
            raise ClusterError(
                f"{first} joined the Dask scheduler at {self.address} within "
                f"{self.timeout:g} s. Start workers (`dask worker {self.address}`), wait for "
                "fewer (--wait-for-workers, dask config 'dscaledgd.wait-for-workers'), or "
                "raise the dask config 'dscaledgd.scheduler-timeout'."
            ) from None

    def _keep_replicas(self) -> None:
        """Exempt our scattered copies from the scheduler's ReduceReplicas (:mod:`.replicas`)."""
        try:
            how = self.client.run_on_scheduler(install_keep_replicas)
        except Exception as exc:  # e.g. a scheduler that cannot import dscaledgd
            how = f"failed ({type(exc).__name__}: {exc})"
        self.replica_policy = how
        if how not in ("installed", "present", "no-amm", "no-reduce-replicas"):
            warnings.warn(
                f"dscaledgd could not exempt its data from the memory manager of the scheduler "
                f"at {self.address} ({how}); its ReduceReplicas policy may drop the second "
                "copy of scattered data, and a lost worker may then lose the run. Install "
                "dscaledgd in the scheduler's environment.",
                RuntimeWarning,
                stacklevel=4,
            )

    def _workers(self) -> list:
        """Worker addresses, refreshed (workers may have died or joined since)."""
        addrs = sorted(self._identity().get("workers", {}))
        if not addrs:
            self._wait_for_workers()
            addrs = sorted(self._identity().get("workers", {}))
        self._addrs = addrs
        return addrs

    def scatter(self, data, placement=None):
        """Scatter ``data`` with :attr:`replicas` copies on distinct workers.

        Scattered data has no lineage: a worker that dies with the only copy
        takes it away, and every task computed from it is cancelled
        ("already forgotten"). With two copies the scheduler still holds one,
        and recomputes everything downstream that was lost, so the run goes on
        and its answer is unchanged. ``placement[k]`` picks the primary
        worker of item ``k``; the second copy goes to the next worker.
        """
        data = list(data)
        addrs = self._workers()
        n = min(self.replicas, len(addrs))
        if placement is None:
            placement = [k % len(addrs) for k in range(len(data))]
        out = [None] * len(data)
        for slot in sorted(set(placement)):
            idx = [k for k, w in enumerate(placement) if w == slot]
            targets = [addrs[(slot + i) % len(addrs)] for i in range(n)]
            keys = {k: f"{PREFIX}{self._run}-{next(self._seq)}" for k in idx}
            try:
                futs = self.client.scatter(
                    {keys[k]: data[k] for k in idx},
                    workers=targets,
                    broadcast=n > 1,
                    timeout=self.timeout,
                )
            except TimeoutError:  # no running worker (all paused, or none left)
                raise self._pause_watch.no_running_worker(self._identity(), self.timeout) from None
            for k in idx:
                out[k] = futs[keys[k]]
        return out

    def submit_on(self, slot: int, fn, *args, name: str, **kwargs):
        """Submit preferring worker ``slot`` (other workers may still run it)."""
        addrs = self._addrs or self._workers()
        if self._batch is not None:
            return self._batch.submit(self.key(name), fn, args, kwargs, [addrs[slot % len(addrs)]])
        return self.client.submit(
            fn,
            *args,
            key=self.key(name),
            pure=False,
            workers=[addrs[slot % len(addrs)]],
            allow_other_workers=True,
            **kwargs,
        )

    def gather(self, handles):
        """Gather task results; a lost worker, hung or vanished scheduler is a ClusterError.

        While waiting, the scheduler is asked for its identity every
        :data:`POLL` seconds: one that does not answer within the timeout
        (a ``SIGSTOP``-ed or wedged scheduler) ends the wait with a message
        naming its address, instead of blocking for as long as it is stopped;
        workers paused for memory are watched (:class:`~.health.PauseWatch`).
        """
        from distributed.client import CancelledError, FutureCancelledError, FuturesCancelledError
        from distributed.scheduler import KilledWorker

        futures = list(_futures_of(handles))
        self.flush()
        with self._connected():
            try:
                return self._gather(futures, handles)
            except (FutureCancelledError, FuturesCancelledError, CancelledError) as exc:
                self._identity()  # a vanished scheduler cancels every future: say so
                raise ClusterError(
                    f"Data of this run was lost on the cluster at {self.address} and could not "
                    f"be re-created ({exc}). Every scattered item is kept on {self.replicas} "
                    "workers and everything else is recomputed from its lineage, so this "
                    "takes losing that many workers at once, or the run's futures being "
                    "released by another client (client.restart(), cancel()). Run again."
                ) from None
            except KilledWorker as exc:
                raise ClusterError(
                    f"A task of this run killed the workers it ran on ({exc}). Workers of the "
                    f"cluster at {self.address} died repeatedly while running it: check their "
                    "memory limit and logs."
                ) from None

    def _gather(self, futures, handles):
        """Wait for ``futures``, asking the scheduler every :data:`POLL` s whether it is
        still there, then gather ``handles``."""
        watch = self._pause_watch
        while True:
            try:
                self._wait(futures)
                break
            except TimeoutError:
                watch.check(self._identity())  # _identity raises when the scheduler is gone
        watch.since = None
        return self.client.gather(handles)

    def _wait(self, futures) -> None:
        """Wait up to :data:`POLL` s for ``futures`` on *this* client (``distributed.wait``
        would use the default client, which a user's ``Client(set_as_default=False)``
        is not)."""
        from distributed.client import _wait

        self.client.sync(_wait, futures, timeout=POLL)

    def reroot(self, handles: list, placement: Sequence[int] | None = None) -> list:
        """Gather and re-scatter ``handles`` so the scheduler can forget their history.

        A future computed from futures keeps its whole lineage in the
        scheduler (dask/distributed#809): an iterative solver would grow the
        scheduler's task table by every task of every iteration. Re-rooting
        the factors every few iterations bounds it. Cost: one round trip of
        the factors through the client. ``placement``: the worker slot of each
        item (its owner; see :meth:`scatter`).
        """
        data = self.gather(list(handles))
        return self.scatter(data, placement=placement)

    def release(self, *handles):
        # tasks that use a handle must reach the scheduler before its release does:
        # releasing the last reference to a key nothing known depends on forgets it
        self.flush()
        self._release(handles)

    def _release(self, handles):
        for h in handles:
            if isinstance(h, list | tuple):
                self._release(h)
            elif hasattr(h, "release"):
                h.release()

    def span(self, name: str):
        try:
            from distributed import span
        except ImportError:  # pragma: no cover - old distributed
            return contextlib.nullcontext()
        return span(name)


#: seconds between the scheduler health checks of a long wait (DistributedExecutor.gather)
POLL = 5.0


def scheduler_timeout() -> float:
    """Seconds the scheduler may take to answer: dask config ``dscaledgd.scheduler-timeout``
    (default ``"60s"``; any dask time string or number of seconds)."""
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("dscaledgd.scheduler-timeout", "60s")))


def workers_to_wait_for() -> int:
    """Workers a run waits for before it starts: dask config ``dscaledgd.wait-for-workers``
    (default 1; the CLI's ``--wait-for-workers``), at least 1."""
    import dask

    try:
        return max(1, int(dask.config.get("dscaledgd.wait-for-workers", 1)))
    except (TypeError, ValueError):
        return 1


def _futures_of(handles):
    if isinstance(handles, list | tuple):
        for h in handles:
            yield from _futures_of(h)
    elif hasattr(handles, "key") and hasattr(handles, "status"):
        yield handles


def _parse_address(address: str):
    """``(scheme, (host, port))`` of a scheduler address; ``(scheme, None)`` for schemes
    without a TCP port. Raises ``ValueError`` on a malformed address."""
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    scheme, loc = parse_address(address)
    return scheme, parse_host_port(loc) if scheme in ("tcp", "tls", "ws", "wss") else None
