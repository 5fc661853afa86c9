"""Tasks submitted one at a time, sent to the scheduler as one graph.

``Client.submit`` sends one ``update-graph`` message per task, and the scheduler
handles each one on its own: it deserialises it, orders it, and transitions it.
A ScaledGD iteration on a 16 × 4 grid submits 100–220 tasks. The scheduler of a
LocalCluster runs in the client's process, and that process was the busiest one of
a 16-worker run. Side by side on 16 cores, sending each wait's tasks as one graph
cut its CPU per iteration from 0.67 to 0.43 s and the iteration from 0.63 to 0.55 s
(``benchmarks/bench_scaling.py --submit batched single``; docs/design.md, "Tasks
per iteration").

A :class:`Batch` keeps the tasks an engine submits and sends them as one graph:

* **on the next wait.** The executor flushes before it gathers or waits, so a
  pass's tasks leave together, just before their results are needed;
* **after at most** :data:`DELAY` **seconds otherwise**, from the client's event
  loop. A handle that leaves the engine unflushed (a factor in a result, a
  future given to ``client.compute``) still gets computed. A graph the timer
  could not send (an argument that does not pickle) raises at the next wait,
  where ``client.submit`` would have raised at once.

dask config ``dscaledgd.batch-tasks: false`` submits task by task.

Each task keeps the worker it was meant for. Per-key worker restrictions travel
as the graph's ``workers`` annotation (tasks submitted without a worker go in
graphs of their own, unrestricted). That annotation is a callable, the
pinned dict's bound ``get``, which the scheduler calls with each key and can
unpickle without importing dscaledgd. ``allow_other_workers`` is ``True``, as
with ``submit_on``. A handle is a real ``distributed.Future``, made when the
task is submitted: it is an argument of later tasks (a dependency, since
``Future`` is dask's ``TaskRef``), and it can be gathered and released.

The dask annotations in effect when a task is submitted (the dashboard's
``distributed.span``) go with it: consecutive tasks with the same annotations
form one graph, sent from an empty context with those annotations.

Graphs stay the same and so do results: only the number of messages changes.
This needs a dask whose ``Future`` is a ``TaskRef`` (2024.12 and later).
:func:`supported` says so; otherwise the executor submits task by task, as before.
"""

from __future__ import annotations

import contextvars
import threading
import uuid

__all__ = ["Batch", "supported", "DELAY"]

#: seconds after which a batch left waiting is sent from the client's event loop
DELAY = 0.005


def supported() -> bool:
    """Whether to batch: dask config ``dscaledgd.batch-tasks`` (default ``True``) and a
    dask/distributed that takes futures as references in a graph."""
    import dask

    if not dask.config.get("dscaledgd.batch-tasks", True):
        return False
    try:
        from dask._expr import LLGExpr  # noqa: F401
        from dask._task_spec import Task, TaskRef, parse_input  # noqa: F401
        from distributed import Future, futures_of  # noqa: F401
    except ImportError:  # pragma: no cover - old dask
        return False
    return issubclass(Future, TaskRef)


class Batch:
    """Pending tasks of one client; :meth:`flush` sends them as one graph."""

    def __init__(self, client):
        self.client = client
        self._lock = threading.Lock()  # the pending groups
        self._send_lock = threading.Lock()  # one flush at a time, in order
        self._groups: list = []  # [((annotations, pinned), {key: task}, {key: workers})]
        self._inputs: list = []  # futures the pending tasks read
        self._timer = False
        self._error: BaseException | None = None  # a timer's flush that failed

    def __len__(self) -> int:
        return sum(len(tasks) for _, tasks, _ in self._groups)

    def submit(self, key: str, fn, args, kwargs, workers: list[str] | None = None):
        """Queue ``fn(*args, **kwargs)`` under ``key``, preferring ``workers`` (``None``:
        any worker, no restriction); return its future."""
        import dask
        from dask._task_spec import Task, parse_input
        from distributed import Future, futures_of

        task = Task(
            key,
            fn,
            *(parse_input(a) for a in args),
            **{k: parse_input(v) for k, v in kwargs.items()},
        )
        # a graph names its inputs by key (dask's Alias), not by future: hold the
        # futures until the graph is sent, or a dropped last handle would release an
        # input before the scheduler knows a task needs it
        inputs = futures_of([args, kwargs])
        kind = (dask.get_annotations(), workers is not None)
        with self._lock:
            # the handle exists before the task can be sent: a flush that sent it first
            # would drop the only reference, and the scheduler would forget the key
            fut = Future(key, self.client)
            if not self._groups or self._groups[-1][0] != kind:
                self._groups.append((kind, {}, {}))
            self._groups[-1][1][key] = task
            if workers is not None:
                self._groups[-1][2][key] = list(workers)
            self._inputs.extend(inputs)
            start = not self._timer
            self._timer = True
        if start:
            self.client.loop.call_later(DELAY, self._flush_later)
        return fut

    def _flush_later(self) -> None:
        """The timer's flush, on the event loop: an error is kept for the next wait."""
        try:
            self.flush()
        except BaseException as exc:  # noqa: BLE001 - raised by the next flush()
            self._error = exc

    def flush(self) -> None:
        """Send the pending tasks, if any: one graph per run of tasks with equal
        annotations, pinned or not.

        Flushes are sent in the order they take their tasks (``_send_lock``): a
        timer's flush still serialising on the event loop must not be overtaken by
        a waiting thread's flush of tasks that depend on it (the scheduler would
        cancel those for "lost dependencies")."""
        with self._send_lock:
            if self._error is not None:  # a task the timer could not send (unpicklable)
                exc, self._error = self._error, None
                raise exc
            with self._lock:
                groups, self._groups, self._timer = self._groups, [], False
                inputs, self._inputs = self._inputs, []
            if self.client.status in ("closing", "closed"):
                return
            for (ann, _), tasks, where in groups:
                contextvars.Context().run(self._send, ann, tasks, where)
            del inputs  # their releases, if any, now follow the graphs

    def _send(self, ann: dict, tasks: dict, where: dict) -> None:
        import dask
        from dask._expr import LLGExpr

        # a random token, as client.submit gives: tokenizing the graph would hash every
        # argument (and refuse one that does not hash deterministically)
        expr = LLGExpr(tasks, _determ_token=uuid.uuid4().hex)
        pin = {"workers": where.get, "allow_other_workers": True} if where else {}
        with dask.annotate(**ann, **pin):
            self.client.get(expr, list(tasks), sync=False)
        # the futures client.get made are dropped here; the caller's handles hold the keys
