"""What a checkpoint holds of a running loop, and how the loop continues from it.

A snapshot is everything the batch loop (:mod:`.loop`) carries from one
iteration to the next, as NumPy arrays and JSON:

* the **points**: the current iterate, the best accepted one (the guard
  restores it) and the best-validation one (early stopping), each as its
  factors and small parameters, its history index and the iteration index
  its pass was made for. A point that is another one (the current iterate is
  usually the best) is stored once;
* the **step rule's** attributes (``η``, the adaptive damping's ``c``, the
  restore count, ScaledSM's ``t``...), the **guard's** references, the
  **re-seed's** event count;
* the **driver's** history, events, data passes, validation counters and
  elapsed time; the loop's iteration count and stall counter.

Floats are stored as ``float.hex`` strings, so they come back bit for bit.
There is no RNG state to keep beyond the run's seed: every random draw after
the initialisation (the re-seed's directions) is seeded from it and the
re-seed count.

On resume each stored point is evaluated again (one data pass each; the pass
is deterministic for a given tile grid, so its statistics are those the
interrupted run had) and the counters are put back, so the run continues as
if it had not stopped: the same iterates, history and answer.

No dask import here.
"""

from __future__ import annotations

import numbers
import time

import numpy as np

__all__ = [
    "snapshot", "restore_points", "restore_objects", "enc", "dec", "driver_snapshot",
    "restore_driver",
]  # fmt: skip

_POINTS = ("cur", "best", "best_val")


def enc(x):
    """JSON for rule/guard attributes: floats as exact hex strings, the rest as they are."""
    if isinstance(x, bool | np.bool_) or x is None or isinstance(x, str):
        return x if not isinstance(x, np.bool_) else bool(x)
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return {"hex": float(x).hex()}
    if isinstance(x, list | tuple):
        return [enc(v) for v in x]
    return None


def dec(x):
    if isinstance(x, dict) and "hex" in x:
        return float.fromhex(x["hex"])
    if isinstance(x, list):
        return [dec(v) for v in x]
    return x


def _plain_attrs(obj) -> dict:
    """The attributes of a rule/guard that are numbers, strings or lists of numbers."""
    out = {}
    for k, v in vars(obj).items():
        if isinstance(v, bool | np.bool_ | numbers.Number | str) or v is None:
            out[k] = enc(v)
        elif isinstance(v, list | tuple) and all(isinstance(e, numbers.Number) for e in v):
            out[k] = enc(v)
    return out


def snapshot(n_iter: int, quiet: int, points: dict, rule, guard, reseed, drv, solve_meta: dict):
    """``(meta, arrays)`` of the loop between iterations (see the module docstring).

    ``points`` maps ``cur``/``best``/``best_val`` to the loop's points (or
    ``None``); ``solve_meta`` is the solve driver's (seed, initial values).
    """
    arrays: dict = {}
    pmeta: dict = {}
    seen: dict = {}
    for name in _POINTS:
        pt = points.get(name)
        if pt is None:
            pmeta[name] = None
            continue
        if id(pt) in seen:
            pmeta[name] = {"same_as": seen[id(pt)]}
            continue
        seen[id(pt)] = name
        fac = [f"{name}.F{k}" for k in range(len(pt.state))]
        for key, F in zip(fac, pt.state):
            arrays[key] = F.gather()
        par = {}
        for pname, v in pt.state.params.items():
            par[pname] = f"{name}.{pname}"
            arrays[par[pname]] = np.asarray(v, dtype=np.float64)
        pmeta[name] = {
            "factors": fac,
            "params": par,
            "k": int(pt.k),
            "it": int(pt.it),
            "reseeded": bool(pt.reseeded),
        }
    driver, hist = driver_snapshot(drv)
    arrays.update(hist)
    meta = {
        "n_iter": int(n_iter),
        "quiet": int(quiet),
        "points": pmeta,
        "rule": {"name": rule.name, "attrs": _plain_attrs(rule)},
        "guard": {"loss0": enc(guard.loss0), "ref": enc(guard.ref)},
        "reseed_events": None if reseed is None else int(reseed.events),
        "driver": driver,
        "solve": solve_meta,
    }
    return meta, arrays


def restore_points(ck: dict, engine, evaluate) -> dict:
    """The stored points, each evaluated again: ``{"cur": ..., "best": ..., "best_val": ...}``.

    ``evaluate(state, it)`` makes a point (one data pass at ``state`` for
    iteration ``it``).
    """
    meta, arrays = ck["meta"]["state"], ck["arrays"]
    out: dict = {}
    for name in _POINTS:
        pm = meta["points"].get(name)
        if pm is None:
            out[name] = None
            continue
        if "same_as" in pm:
            out[name] = out[pm["same_as"]]
            continue
        factors = [arrays[key] for key in pm["factors"]]
        params = {p: arrays[key] for p, key in pm["params"].items()}
        pt = evaluate(engine.from_numpy(factors, params), pm["it"])
        pt.k, pt.reseeded = pm["k"], pm["reseeded"]
        out[name] = pt
    return out


def restore_objects(ck: dict, rule, guard, reseed, drv) -> tuple[int, int]:
    """Put the rule, guard, re-seed and driver back; ``(n_iter, quiet)``."""
    meta, arrays = ck["meta"]["state"], ck["arrays"]
    if meta["rule"]["name"] != rule.name:
        raise ValueError(
            f"the checkpoint's step rule is {meta['rule']['name']!r}, this run's {rule.name!r}"
        )
    for k, v in meta["rule"]["attrs"].items():
        setattr(rule, k, dec(v))
    guard.loss0 = dec(meta["guard"]["loss0"])
    guard.ref = dec(meta["guard"]["ref"])
    if reseed is not None and meta["reseed_events"] is not None:
        reseed.events = int(meta["reseed_events"])
    restore_driver(drv, meta["driver"], arrays)
    return int(meta["n_iter"]), int(meta["quiet"])


def driver_snapshot(drv) -> tuple[dict, dict]:
    """``(meta, arrays)`` of a :class:`~.driver.Driver`: its counters, events and elapsed
    time, and its history as ``history.<key>`` arrays (the batch loop's and the epochs')."""
    meta = {
        "passes": int(drv.passes),
        "val_wait": int(drv.val_wait),
        "val_ref": enc(drv.val_ref),
        "elapsed": enc(drv.elapsed()),
        "events": drv.events,
    }
    arrays = {f"history.{k}": np.asarray(v, dtype=np.float64) for k, v in drv.hist.items()}
    return meta, arrays


def restore_driver(drv, d: dict, arrays: dict) -> None:
    """Put back what :func:`driver_snapshot` stored (``d``, and the ``history.*`` arrays)."""
    drv.hist = {}
    for name in arrays:
        if name.startswith("history."):
            drv.hist[name[len("history.") :]] = [float(v) for v in arrays[name]]
    drv.passes = int(d["passes"])
    drv.val_wait = int(d.get("val_wait", 0))
    if "val_ref" in d:  # checkpoints before tensor RPCA: the best value was the reference
        drv.val_ref = dec(d["val_ref"])
    elif drv.best_val is not None:
        drv.val_ref = drv.monitored(drv.best_val)
    drv.events = list(d["events"])
    drv.t0 = time.perf_counter() - dec(d["elapsed"])
