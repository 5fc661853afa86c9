"""What the ``dscaledgd`` subcommands share: argument types, where a run goes, output
checks, the two-line summary of a fit, one-line warnings (:mod:`dscaledgd.cli`)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

__all__ = [
    "SCHEDULER_NAMES", "check_out", "run_kwargs", "summary", "fraction", "nonneg",
    "solver_options", "respell", "reg_value", "rank_value", "respelled", "run_options",
]  # fmt: skip


#: ``--scheduler`` values that are not addresses
SCHEDULER_NAMES = ("threads", "sync", "distributed")
#: ``tcp://host:port``, ``tls://...``, or a bare ``host:port``
_ADDRESS = re.compile(r"^(?:[a-z][a-z0-9+]*://\S+|[^\s:/]+:\d+)$")


def _scheduler(text: str) -> str:
    """``--scheduler``: a name of :data:`SCHEDULER_NAMES` or a scheduler address."""
    if text in SCHEDULER_NAMES or _ADDRESS.match(text):
        return text
    raise argparse.ArgumentTypeError(
        f"invalid value {text!r}: expected threads, sync, distributed, or a scheduler "
        "address such as tcp://127.0.0.1:8786"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def _executor_kwargs(value: str | None, scheduler_file: str | None = None) -> dict:
    """``--scheduler``: a scheduler address, or ``threads``/``sync``/``distributed``;
    ``--scheduler-file``: the address in that file."""
    if scheduler_file is not None:
        if value is not None:
            raise ValueError("Pass either --scheduler or --scheduler-file, not both.")
        from .engine.cluster import address_from_scheduler_file

        return {"address": address_from_scheduler_file(scheduler_file)}
    if value is None:
        return {}
    if value in SCHEDULER_NAMES:
        return {"scheduler": value}
    return {"address": value}


def check_out(path: str, overwrite: bool, flag: str = "--out") -> None:
    """Refuse an output before any work: it exists (without ``--overwrite``), its
    directory is missing or is a file, or a file cannot be created there. ``flag`` is
    how the command line names it (``--out``, or a positional such as ``TRAIN.zarr``)."""
    from .storage.layout import check_output_path

    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise NotADirectoryError(
            f"Cannot write {flag} {path!r}: {parent!r} is a file, not a directory. Choose "
            "another path."
        )

    def unwritable(why: str = "") -> str:
        return (
            f"Cannot write {flag} {path!r}: the directory {parent!r} is not writable{why}. "
            "Choose a writable location."
        )

    try:
        check_output_path(path, overwrite, flag)
    except FileExistsError:
        raise FileExistsError(
            f"The {flag} path {path!r} already exists. Pass --overwrite to replace it, or "
            "choose another path."
        ) from None
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Cannot write {flag} {path!r}: the directory {parent!r} does not exist. Create "
            "it first."
        ) from None
    except PermissionError:
        raise PermissionError(unwritable()) from None
    try:  # the permission bits do not tell (root, read-only mounts, ACLs): try it
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".dscaledgd-probe-")
    except OSError as exc:
        why = f" (creating a file there failed: {exc.strerror})"
        raise PermissionError(unwritable(why)) from None
    os.close(fd)
    os.remove(probe)


def _write_json(path: str | None, payload: dict, overwrite: bool) -> None:
    if not path:
        return
    check_out(path, overwrite)
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=2)


def run_kwargs(args) -> dict:
    """The solver arguments the fitting subcommands share (``complete``, ``tensor-complete``)."""
    return {
        "method": args.method,
        "step_size": args.step_size,
        "max_iter": args.max_iter,
        "tol": args.tol,
        "random_state": args.seed,
        "progress": None if args.progress else False,
        "checkpoint": args.checkpoint,
        "checkpoint_interval": args.checkpoint_interval,
        "resume": args.resume,
        **_executor_kwargs(args.scheduler, getattr(args, "scheduler_file", None)),
    }


def summary(res, what: str = "") -> str:
    """Two lines on a fit: status and message; iterations, the returned iterate's loss and
    residual (the best-validation one when early-stopped), time. ``what`` leads line 2."""
    fin = res.final
    which = "" if res.best_iteration == res.n_iter else f" (returned: {res.best_iteration})"
    return (
        f"{res.status}: {res.message}\n"
        f"{what}iterations {res.n_iter}{which}, final loss {fin['loss']:.6g}, relative residual "
        f"{fin['residual']:.3e}, {res.history['time'][-1]:.1f} s"
    )


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two integers like 2,2 or 2x2; got {text!r}"
        ) from None
    return a, b


#: Python spellings in API messages, and what a command-line user types instead
_SPELLING = (
    ("overwrite=True", "--overwrite"),
    ("resume=True", "--resume"),
    ("resume='auto'", "--resume auto"),
    ("checkpoint=DIR", "--checkpoint DIR"),
    ("sparsifier='fraction'", "--sparsifier fraction"),
    ("sparsifier='adaptive'", "--sparsifier adaptive"),
    ("alpha=0.1", "--alpha 0.1"),
    ("rank='auto'", "--rank auto"),
    ("reg='auto'", "--reg auto"),
    *((f"loss={name!r}", f"--loss {name}") for name in ("rmse", "1bit", "edm", "bpr")),
)


def respell(msg: str) -> str:
    """An API message in command-line spelling (``overwrite=True`` → ``--overwrite``)."""
    for py, cli in _SPELLING:
        msg = msg.replace(py, cli)
    return msg


_PARAM = re.compile(r"The '(\w+)' parameter of [\w-]+ ")


def respelled(exc: Exception, flags: dict) -> Exception:
    """``exc`` with ``"The 'max_iter' parameter of f must …"`` in command-line spelling
    (``"--max-iter must …"``, by ``flags``: API parameter → flag); same type."""
    msg = _PARAM.sub(lambda m: f"{flags[m[1]]} " if m[1] in flags else m[0], str(exc))
    if msg == str(exc):
        return exc
    try:
        return type(exc)(msg)
    except Exception:  # noqa: BLE001 - an exception type with another signature
        return exc


#: the API function a subcommand runs, where its name differs (warnings start with it)
_API_NAME = {"tensor-complete": "tucker_complete", "sgd": "scaled_sgd"}


def _one_line_warning(command: str):
    """A ``warnings.showwarning`` printing ``dscaledgd CMD: Category: message`` on one line
    (no source file and line, CLI spelling; the API's own ``complete:`` prefix dropped, as
    ``dscaledgd complete:`` already says it)."""
    prefixes = tuple(f"{name}: " for name in {command, _API_NAME.get(command, command)})

    def show(message, category, filename, lineno, file=None, line=None):
        text = respell(" ".join(str(message).split()))
        if text.startswith(prefixes):
            text = text.split(": ", 1)[1]
        print(f"dscaledgd {command}: {category.__name__}: {text}", file=file or sys.stderr)

    return show


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of the subcommand ``command`` (its ``error`` prints its own usage)."""
    for action in parser._actions:  # the subcommands' action
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict) and command in choices:
            return choices[command]
    return parser


def _number(text: str, ok, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1 (``--test-fraction``, ``--validation-fraction``)."""
    return _number(text, lambda v: 0 < v < 1, "a number strictly between 0 and 1")


def nonneg(text: str) -> float:
    """A number ≥ 0 (``--reg``, ``--damping``, ``--stall-tol``)."""
    return _number(text, lambda v: v >= 0, "a number >= 0")


def reg_value(text: str):
    """``--reg``: one number ≥ 0, two (``rows,columns``), or ``auto`` (chosen by validation
    RMSE among Spark's grid; docs/api.md)."""
    if text.strip().lower() == "auto":
        return "auto"
    parts = text.split(",")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected REG or REG_ROWS,REG_COLS; got {text!r}")
    values = tuple(nonneg(p) for p in parts)
    return values[0] if len(values) == 1 else values


def rank_value(text: str):
    """``--rank``: an integer (checked by the API: a bad rank is a bad parameter), or
    ``auto`` (chosen by validation RMSE; ``complete`` only)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto'; got {text!r}") from None


def solver_options(sp, *, step_help: str = "fixed step (default adaptive)") -> None:
    """The options every fitting subcommand shares (``complete``, ``rpca``,
    ``tensor-complete``): method, step, stopping, seed, progress."""
    sp.add_argument("--method", choices=("scaledgd", "gd"), default="scaledgd",
                    help="scaledgd (default) or the gd baseline")  # fmt: skip
    sp.add_argument("--step-size", type=float, default=None, help=step_help)
    # plain types: a bad value is a bad parameter (exit 1, checked by the API), not usage
    sp.add_argument("--max-iter", type=int, default=500, help="default 500")
    sp.add_argument("--tol", type=float, default=1e-10,
                    help="stop at this relative residual (default 1e-10)")  # fmt: skip
    run_options(sp, unit="iterations", interval=10)


def run_options(sp, *, unit: str, interval: int) -> None:
    """``--seed``, ``--progress`` and the checkpoint options (``--checkpoint``,
    ``--checkpoint-interval`` in ``unit``, default ``interval``; ``--resume [auto]``)."""
    sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sp.add_argument("--progress", action="store_true", help="show a progress bar")
    sp.add_argument("--checkpoint", metavar="DIR", default=None,
                    help=f"write a checkpoint to DIR every --checkpoint-interval {unit} "
                    "(continue a killed run with: dscaledgd resume DIR)")  # fmt: skip
    sp.add_argument("--checkpoint-interval", metavar="N", type=_positive_int, default=interval,
                    help=f"{unit} between checkpoints (default {interval})")  # fmt: skip
    sp.add_argument("--resume", nargs="?", const=True, default=False, choices=("auto",),
                    help="continue from the newest checkpoint in --checkpoint DIR; "
                    "'--resume auto': only when there is one (requeued jobs)")  # fmt: skip
