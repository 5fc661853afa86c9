"""``dscaledgd demo``: ScaledGD and GD side by side on an ill-conditioned synthetic matrix,
on an embedded LocalCluster (or ``--scheduler``). Its values are checked, with the API's
rules and named by their flags, before anything is printed or computed."""

from __future__ import annotations

import time

from . import __version__
from .cli_common import _executor_kwargs, _pair, _positive_int, respelled

__all__ = ["add_parser"]

#: the demo's API parameters → its flags
DEMO_FLAGS = {"p": "--p", "rank": "--rank", "cond": "--cond", "max_iter": "--max-iter",
              "tol": "--tol", "random_state": "--seed", "shape": "--shape"}  # fmt: skip
#: where the demo runs without --scheduler (the help's default)
EMBEDDED = "an embedded LocalCluster of --workers workers, as 'distributed'"


def add_parser(sub, common) -> None:
    """Register ``demo`` on the subparsers ``sub`` (``common`` adds ``--scheduler``,
    ``--out``, ``--overwrite``)."""
    d = sub.add_parser(
        "demo",
        help="ScaledGD vs GD on an ill-conditioned synthetic matrix",
        description="Complete a synthetic ill-conditioned matrix (kappa=1000) "
        "with ScaledGD and GD on an embedded LocalCluster, and print their "
        "relative errors side by side.",
    )
    common(d, "also write the ScaledGD result to this Zarr store", scheduler_default=EMBEDDED)
    d.add_argument("--shape", type=_pair, default=(1500, 1100), metavar="N1,N2",
                   help="size of the matrix (default 1500,1100)")  # fmt: skip
    d.add_argument("--rank", type=int, default=8, help="rank of the matrix (default 8)")
    d.add_argument("--cond", type=float, default=1000.0, help="condition number (default 1000)")
    d.add_argument("--p", type=float, default=0.25,
                   help="fraction of the entries observed, in (0, 1] (default 0.25)")  # fmt: skip
    d.add_argument("--max-iter", type=int, default=150,
                   help="iterations of each method at most (default 150)")  # fmt: skip
    d.add_argument("--tol", type=float, default=1e-12,
                   help="stop at this relative residual (default 1e-12)")  # fmt: skip
    d.add_argument(
        "--workers", type=_positive_int, default=2, help="LocalCluster workers (default 2)"
    )
    d.add_argument(
        "--every",
        type=_positive_int,
        default=10,
        help="print every N-th iteration after 10 (default 10)",
    )
    d.add_argument("--seed", type=int, default=0,
                   help="random seed of the matrix and the fits (default 0)")  # fmt: skip
    d.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from .api import complete
    from .datasets import make_completion
    from .engine.cluster import executor_for

    _check_demo(args)  # before the banner: a bad value is refused, not announced
    n1, n2 = args.shape
    print(
        f"dscaledgd {__version__} demo: complete a {n1}x{n2} rank-{args.rank} matrix with "
        f"condition number {args.cond:g} from {100 * args.p:.0f}% of its entries"
    )
    try:
        obs, truth = make_completion(
            (n1, n2), args.rank, args.p, cond=args.cond, random_state=args.seed
        )
    except ValueError as exc:
        raise respelled(exc, DEMO_FLAGS) from None
    print(f"  {obs}")
    errors: dict[str, list] = {}
    results = {}
    # the demo shows the distributed path: no --scheduler means an embedded LocalCluster
    kw = _executor_kwargs(args.scheduler, args.scheduler_file) or {"scheduler": "distributed"}
    embedded = kw.get("scheduler") == "distributed" and "address" not in kw
    size = {"n_workers": args.workers, "threads_per_worker": 1} if embedded else {}
    with executor_for(**kw, **size) as ex:
        if ex.kind == "distributed":
            print(f"  dashboard: {ex.client.dashboard_link}")
        run_kw = {"client": ex.client} if ex.kind == "distributed" else {"scheduler": ex.kind}
        for method in ("scaledgd", "gd"):
            errs = errors.setdefault(method, [])

            def cb(state, errs=errs):
                errs.append(truth.relative_error(*state.factors()))

            t0 = time.perf_counter()
            import warnings

            from .exceptions import ConvergenceWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                res = complete(
                    obs,
                    args.rank,
                    method=method,
                    max_iter=args.max_iter,
                    tol=args.tol,
                    random_state=args.seed,
                    callback=cb,
                    progress=False,
                    **run_kw,
                )
            results[method] = (res, time.perf_counter() - t0)
        if args.out:
            results["scaledgd"][0].to_zarr(args.out, overwrite=args.overwrite)
    print()
    print(f"{'iter':>6} | {'ScaledGD rel. error':>20} | {'GD rel. error':>20}")
    print("-" * 53)
    n = max(len(errors["scaledgd"]), len(errors["gd"]))

    def cell(method, k):
        e = errors[method]
        return f"{e[k]:20.3e}" if k < len(e) else f"{'(stopped)':>20}"

    for k in range(n):
        if k < 10 or (k + 1) % args.every == 0 or k == n - 1:
            print(f"{k + 1:>6} | {cell('scaledgd', k)} | {cell('gd', k)}")
    print()
    for method, label in (("scaledgd", "ScaledGD"), ("gd", "GD")):
        res, secs = results[method]
        final = errors[method][-1] if errors[method] else float("nan")
        print(
            f"{label:>9}: {res.status:<9} after {res.n_iter:4d} iterations in {secs:6.1f} s, "
            f"final relative error {final:.3e}"
        )
    if args.out:
        print(f"ScaledGD result written to {args.out}")
    return 0


def _check_demo(args) -> None:
    """The demo's values, checked with the API's rules and named by their flags."""
    from ._validation import Interval, check_param

    n1, n2 = args.shape
    if n1 < 1 or n2 < 1:
        raise ValueError(f"--shape must be two positive integers like 1500,1100; got {n1},{n2}.")
    for name, value, rule in (
        ("p", args.p, Interval("real", 0, 1, "right")),
        ("rank", args.rank, Interval("int", 1, min(n1, n2))),
        ("cond", args.cond, Interval("real", 1, None)),
        ("max_iter", args.max_iter, Interval("int", 1, None)),
        ("tol", args.tol, Interval("real", 0, None, "neither")),
        ("random_state", args.seed, Interval("int", 0, None)),
    ):
        try:
            check_param("demo", name, value, [rule])
        except ValueError as exc:
            raise respelled(exc, DEMO_FLAGS) from None
