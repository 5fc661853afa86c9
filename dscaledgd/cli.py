"""The ``dscaledgd`` command: arguments → :mod:`dscaledgd.api`, no math.

Subcommands: ``demo`` (:mod:`dscaledgd.cli_demo`), ``import``, ``split``,
``complete``, ``rpca`` (:mod:`dscaledgd.cli_matrix`), ``predict``
(:mod:`dscaledgd.cli_predict`), ``tensor-complete`` (:mod:`dscaledgd.cli_tensor`),
``sgd`` (:mod:`dscaledgd.cli_sgd`), ``evaluate``, ``info``, ``resume``; ``--config
job.yaml`` (:mod:`dscaledgd.cli_config`); shared helpers in :mod:`dscaledgd.cli_common`.
Every subcommand has ``--help`` and ``-v``; errors print one line to stderr and exit
with a non-zero code (1 for bad data or parameters, 2 for bad usage, with the
subcommand's usage).
Outputs are checked before any work: an existing ``--out`` without
``--overwrite``, or one in a directory that cannot be written, is refused
before any data is read or any fit runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys

import numpy as np

from . import __version__
from .cli_common import (  # noqa: F401  (re-exported: the subcommand modules and tests use them)
    SCHEDULER_NAMES,
    _executor_kwargs,
    _one_line_warning,
    _pair,
    _positive_int,
    _scheduler,
    _write_json,
    check_out,
    respell,
    respelled,
    run_kwargs,
    subparser,
    summary,
)

__all__ = ["main"]


# ----------------------------------------------------------------- import
def _cmd_import(args) -> int:
    from .exceptions import InputDataError
    from .storage.observations import Observations

    src = args.source
    if not os.path.exists(src):
        raise FileNotFoundError(f"No such input file: {src!r}.")
    if src.endswith(".npz"):
        import zipfile

        try:
            z = np.load(src) if zipfile.is_zipfile(src) else None
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise InputDataError(f"{src!r} is not a valid .npz file ({exc}).") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise InputDataError(
                f"{src!r} is not a valid .npz file (not a zip archive of .npy arrays). "
                "Write one with numpy.savez(path, rows=..., cols=..., values=...)."
            )
        with z:
            missing = [k for k in ("rows", "cols", "values") if k not in z]
            if missing:
                raise InputDataError(
                    f"{src!r} lacks the arrays {missing}; an .npz import needs 'rows', 'cols' "
                    "and 'values' (and optionally 'shape')."
                )
            shape = tuple(int(s) for s in z["shape"]) if "shape" in z else None
            obs = Observations.from_coo(
                z["rows"],
                z["cols"],
                z["values"],
                shape=shape,
                tiles=args.tiles,
                duplicates=args.duplicates,
            )
        obs.to_zarr(args.out, overwrite=args.overwrite)
    else:  # --row, --col and --value were checked as usage (_run)
        Observations.from_csv(
            src,
            args.row,
            args.col,
            args.value,
            sep=args.sep,
            out=args.out,
            overwrite=args.overwrite,
            tiles=args.tiles,
            duplicates=args.duplicates,
        )
    print(f"wrote {Observations.open_zarr(args.out)}")
    return 0


# --------------------------------------------------------------- evaluate
def _cmd_evaluate(args) -> int:
    from .models import Tucker
    from .result import load_result
    from .storage.observations import Observations

    res = load_result(args.result)
    if "preconditioner" in res.info:  # a ScaledSGD result: pairs or triplets
        from .cli_sgd import evaluate_samples

        payload = evaluate_samples(res, args.result, args.obs, args.columns)
        _write_json(args.out, payload, args.overwrite)
        return 0
    if isinstance(res.model, Tucker):  # a tensor: a store, an array file or NIfTI
        from .cli_tensor import read_tensor

        obs = read_tensor(args.obs, role="DATA")
    else:
        obs = Observations.open_zarr(args.obs)
    rmse = res.rmse(obs)
    rel = rmse * np.sqrt(obs.nnz / obs.value_norm2) if obs.value_norm2 > 0 else float("nan")
    payload = {
        "result": os.path.abspath(args.result),
        "observations": os.path.abspath(args.obs),
        "nnz": obs.nnz,
        "rmse": rmse,
        "relative_residual": rel,
        "status": res.status,
        "n_iter": res.n_iter,
    }
    print(f"rmse {rmse:.6g}  relative residual {rel:.3e}  on {obs.nnz} entries")
    _write_json(args.out, payload, args.overwrite)
    return 0


# ------------------------------------------------------------------- info
def _cmd_info(args) -> int:
    import dask
    import distributed
    import numba
    import scipy
    import zarr

    payload = {
        "dscaledgd": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "zarr": zarr.__version__,
        "numba": numba.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    for k, v in payload.items():
        print(f"{k:>12}: {v}")
    if args.path:
        desc, facts = _describe_store(args.path)
        print(f"{'store':>12}: {desc}")
        payload["store"] = desc
        for k, v in facts.items():
            text = f"{v:.4g}" if isinstance(v, float) else tuple(v) if isinstance(v, list) else v
            print(f"{k:>12}: {text}")
        if facts:
            payload["result"] = facts
    _write_json(args.out, payload, args.overwrite)
    return 0


def _describe_store(path: str) -> tuple[str, dict]:
    """The repr of the Observations, TensorObservations or result store at ``path``,
    opened and validated by its own reader (whose error, if any, is the one reported),
    and for a result its facts (model, shape, rank(s), status, iterations, residual)."""
    import zarr

    from .exceptions import InputDataError
    from .result import load_result
    from .storage.observations import Observations
    from .storage.tensor_store import STORE_TYPE
    from .storage.tensors import TensorObservations

    if not os.path.exists(path):
        raise FileNotFoundError(f"No store at {path!r}: the path does not exist.")
    try:
        meta = dict(zarr.open_group(path, mode="r").attrs).get("dscaledgd")
    except Exception as exc:
        raise InputDataError(
            f"{path!r} is not a dscaledgd store (not a readable Zarr v3 group: {exc})."
        ) from None
    kind = meta.get("type") if isinstance(meta, dict) else None
    if kind == "observations":
        return repr(Observations.open_zarr(path)), {}
    if kind == STORE_TYPE:
        return repr(TensorObservations.open_zarr(path)), {}
    if kind == "result":
        res = load_result(path)
        return repr(res), _result_facts(res)
    raise InputDataError(
        f"{path!r} is not a dscaledgd store: its attrs lack dscaledgd.type ('observations', "
        f"{STORE_TYPE!r} or 'result'). Create one with `dscaledgd import`, `dscaledgd "
        "complete` or `dscaledgd tensor-complete`."
    )


def _result_facts(res) -> dict:
    """What a result store holds, from its metadata only (the factors are not read)."""
    model = res.model
    rank = {"ranks": list(model.ranks)} if hasattr(model, "ranks") else {"rank": model.rank}
    return {
        "model": model.kind,
        "shape": [int(n) for n in model.shape],
        **rank,
        "status": res.status,
        "iterations": res.n_iter,
        "residual": res.final.get("residual", float("nan")),
    }


# ----------------------------------------------------------------- parser
def _cmd_resume(args) -> int:
    """``dscaledgd resume DIR [OPTIONS]``: the stored command line + OPTIONS + ``--resume``."""
    from .storage.checkpoints import stored_command

    argv, cwd = stored_command(args.dir)
    d = os.path.abspath(args.dir)
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # the stored paths are relative to where the run started
    return main([*argv, *args.options, "--checkpoint", d, "--resume"])


VERBOSE_HELP = "log progress and distributed's messages (INFO level)"
#: where a fit runs without --scheduler (the help's default)
SCHEDULER_DEFAULT = "$DASK_SCHEDULER_ADDRESS if set, else threads in this process"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dscaledgd",
        description="Distributed ScaledGD for low-rank matrix and tensor completion on Dask "
        "and Zarr.",
    )
    p.add_argument("--version", action="version", version=f"dscaledgd {__version__}")
    p.add_argument(
        "--config", metavar="JOB.yaml", help="take the command and its options from a YAML file "
        "(options on the command line win)",
    )  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    # not required: without a COMMAND, main prints this help (the list of commands)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp, out_help, runs=True, scheduler_default=SCHEDULER_DEFAULT):
        """``--out``/``--overwrite``, and for commands that run a fit (``runs``) where it
        runs: ``--scheduler`` (``scheduler_default``: where it runs without one, for the
        help), ``--scheduler-file``, ``--wait-for-workers``."""
        if runs:
            sp.add_argument(
                "--scheduler",
                metavar="ADDRESS",
                type=_scheduler,
                default=None,
                help="Dask scheduler address (tcp://127.0.0.1:8786), 'threads'/'sync' to run "
                "without distributed, or 'distributed' for an embedded LocalCluster (default: "
                f"{scheduler_default})",
            )
            sp.add_argument(
                "--scheduler-file",
                metavar="PATH",
                default=None,
                help="connect to the scheduler that wrote this file (dask scheduler "
                "--scheduler-file PATH; waits for it to appear)",
            )
            sp.add_argument(
                "--wait-for-workers",
                metavar="N",
                type=_positive_int,
                default=1,
                help="start once N workers have joined the scheduler (default 1)",
            )
        else:
            sp.set_defaults(scheduler=None, scheduler_file=None, wait_for_workers=1)
        sp.add_argument("--out", metavar="PATH", default=None, help=out_help)
        sp.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    from .cli_demo import add_parser as add_demo

    add_demo(sub, common)

    i = sub.add_parser(
        "import",
        help="import a CSV/Parquet table or COO arrays into an Observations store",
        description="Import observations into an Observations Zarr store. Inputs: a CSV file "
        "with a header (or a .parquet file, with pyarrow) and --row/--col/--value column "
        "names; or an .npz with 'rows', 'cols', 'values' (and optional 'shape'). Tables are "
        "streamed with bounded memory; arbitrary ids are mapped to 0..n-1 and the maps kept "
        "in the store.",
    )
    i.add_argument("source", help="input file (.csv, .parquet or .npz)")
    i.add_argument("--row", help="column with the row ids (tables)")
    i.add_argument("--col", help="column with the column ids (tables)")
    i.add_argument("--value", help="column with the values (tables)")
    i.add_argument("--sep", default=",", help="CSV field separator (default ',')")
    i.add_argument("out_pos", metavar="OBS.zarr", nargs="?", help="output store")
    common(i, "output store (same as the positional OBS.zarr)", runs=False)
    i.add_argument("--tiles", type=_pair, default=None, metavar="A,B")
    i.add_argument("--duplicates", choices=("error", "sum", "mean", "last"), default="error")
    i.set_defaults(func=_cmd_import)

    from .cli_matrix import add_parsers as add_matrix_job

    add_matrix_job(sub, common, _positive_int)

    from .cli_tensor import add_parser as add_tensor_complete

    add_tensor_complete(sub, common)

    from .cli_sgd import add_parser as add_sgd
    from .cli_sgd import sgd_columns

    add_sgd(sub, common)

    e = sub.add_parser(
        "evaluate",
        help="RMSE of a result on an Observations store (or on a tensor)",
        description="Evaluate a result store on an Observations store; a Tucker result on a "
        "TensorObservations store or a tensor (.npy, .npz, Zarr array, NIfTI; NaN = missing).",
    )
    e.add_argument("result", metavar="RES.zarr")
    e.add_argument(
        "obs", metavar="DATA", help="OBS.zarr (matrix result), the tensor (Tucker result), or "
        "samples (CSV, Parquet, Zarr, .npy) for a result of `dscaledgd sgd`",
    )  # fmt: skip
    e.add_argument("--columns", type=sgd_columns, default=None, metavar="I,J,[K,]Y",
                   help="the CSV/Parquet columns of sgd samples (default i,j,[k,]y)")  # fmt: skip
    common(e, "also write the metrics as JSON to this path", runs=False)
    e.set_defaults(func=_cmd_evaluate)

    rs = sub.add_parser(
        "resume",
        help="continue a checkpointed run: the command that wrote DIR, from its newest checkpoint",
        description="Repeat the command that wrote the checkpoints in DIR (complete, rpca, "
        "tensor-complete or sgd with --checkpoint DIR), from its newest intact checkpoint. Options "
        "given after DIR replace the stored ones, e.g. --max-iter 1000 or --scheduler-file "
        "PATH (the data and the fit's parameters must stay the same).",
    )
    rs.add_argument("dir", metavar="DIR", help="the checkpoint directory (--checkpoint DIR)")
    rs.add_argument("options", nargs=argparse.REMAINDER, help="options to change")
    rs.set_defaults(func=_cmd_resume, out=None, overwrite=False)

    f = sub.add_parser(
        "info",
        help="versions, machine, and a store's description",
        description="Print versions and machine facts; describe a store if given.",
    )
    f.add_argument("path", nargs="?", help="an Observations, TensorObservations or result store")
    common(f, "also write the information as JSON to this path", runs=False)
    f.set_defaults(func=_cmd_info)
    for sp in sub.choices.values():  # -v after the COMMAND too (SUPPRESS: keeps one before)
        sp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help=VERBOSE_HELP)  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from .cli_config import expand_config

        argv = expand_config(parser, [str(a) for a in argv])
    except (ValueError, OSError) as exc:
        print(f"dscaledgd: error: {exc}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    if args.command is None:  # `dscaledgd` alone: the list of commands, as a usage error
        parser.print_help(sys.stderr)
        parser.exit(2, "dscaledgd: error: choose a COMMAND from the list above\n")
    from .storage.checkpoints import CLI_ARGV

    argv_token = CLI_ARGV.set({"argv": argv, "cwd": os.getcwd()})  # for dscaledgd resume DIR
    _configure_logging(args)
    import warnings

    import dask

    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning(args.command)
    try:
        wait = getattr(args, "wait_for_workers", 1)
        with dask.config.set({"dscaledgd.wait-for-workers": wait}):
            code = _run(parser, args)
        sys.stdout.flush()  # a reader that left (`| head`) shows here, not at exit
        return code
    except BrokenPipeError as exc:
        if not _stdout_closed():  # a pipe to something else (a subprocess, a socket)
            print(f"dscaledgd {args.command}: error: {exc}", file=sys.stderr)
            return 1
        _stdout_to_devnull()  # the Python docs' "Note on SIGPIPE": stop quietly
        return 1
    finally:
        warnings.showwarning = shown
        CLI_ARGV.reset(argv_token)


def _stdout_closed() -> bool:
    """Whether the reader of stdout has gone (`| head`): the pipe's write end reports an
    error or a hang-up to ``poll``."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll, or not a file: assume it is
        return True


def _stdout_to_devnull() -> None:
    """Point stdout at devnull, so that the flush at exit does not fail on the closed pipe."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a non-file object
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _configure_logging(args) -> None:
    """INFO with ``-v``, else WARNING: for distributed's loggers too. Importing
    distributed sets them from dask's ``logging`` config (INFO by default), so that is
    set first, here and for the worker processes a Nanny starts with this config; the
    levels are also set directly in case distributed is imported already."""
    import dask

    level = logging.INFO if args.verbose else logging.WARNING
    # force: `resume DIR -v` configures again, from the run's own command line
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    dask.config.set({"logging.distributed": "info" if args.verbose else "warning"})
    if args.verbose:
        logging.getLogger("distributed").setLevel(logging.INFO)
        return
    for name in ("distributed", "bokeh", "tornado"):
        log = logging.getLogger(name)
        if log.level < logging.WARNING:  # only raise: tornado's CRITICAL stays
            log.setLevel(logging.WARNING)


def _run(parser, args) -> int:
    usage = subparser(parser, args.command)
    flag = "--out"
    if args.command == "import":
        if args.out is None:
            args.out, flag = args.out_pos, "OBS.zarr"
        if args.out is None:
            usage.error("an output store is required: OBS.zarr or --out PATH")
        missing = [f"--{k}" for k in ("row", "col", "value") if getattr(args, k) is None]
        if missing and not args.source.endswith(".npz"):
            usage.error(
                f"importing a table ({args.source!r}) needs {', '.join(missing)}: the names of "
                "its row id, column id and value columns (e.g. --row userId --col movieId "
                "--value rating)"
            )
    if args.command in ("complete", "tensor-complete", "rpca", "sgd") and args.out is None:
        usage.error("the following arguments are required: --out")
    from .exceptions import ClusterError, DivergenceError

    try:
        if args.out:  # before any data is read or any fit runs
            check_out(args.out, args.overwrite, flag)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout's reader left: main stops quietly
        raise
    except (
        ValueError,
        TypeError,
        OSError,
        ImportError,
        ConnectionError,
        FloatingPointError,
        ClusterError,
        DivergenceError,
    ) as exc:
        msg = respell(" ".join(str(exc).split()))
        print(f"dscaledgd {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
