"""Helpers shared by the tensor-completion examples (video, MRI, hyperspectral).

Not an example itself: ``video_completion.py``, ``mri_completion.py`` and
``hsi_completion.py`` import it from their own folder (``python
examples/<name>.py`` puts that folder on ``sys.path``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time

import dscaledgd as dsg

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.environ.get("DSCALEDGD_DATA", os.path.join(HERE, "..", "..", "shared", "data"))


def ranks_type(example: str):
    """An argparse ``type`` for ``--ranks``: ``a,b,c`` (or ``axbxc``, or one ``r`` for all
    three); ``example`` is shown in the error message."""

    def _ranks(text: str) -> tuple[int, ...]:
        try:
            ranks = tuple(int(r) for r in text.replace("x", ",").split(","))
        except ValueError:
            ranks = ()
        if len(ranks) not in (1, 3) or min(ranks, default=0) < 1:
            raise argparse.ArgumentTypeError(
                f"expected 3 positive integers like {example}; got {text!r}"
            )
        return ranks * 3 if len(ranks) == 1 else ranks

    return _ranks


def new_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of an example, its module docstring as the description."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_missing_and_ranks(ap, *, missing: float, what: str, ranks: str, between=()) -> None:
    """``--missing`` (the fraction of ``what`` hidden), the arguments ``between``
    (``(flags, kwargs)`` pairs), then ``--ranks`` (default ``ranks``)."""
    ap.add_argument("--missing", type=float, default=missing, help=f"fraction of {what} hidden")
    for flags, kwargs in between:
        ap.add_argument(*flags, **kwargs)
    ap.add_argument(
        "--ranks", type=ranks_type(ranks), default=None, help=f"Tucker ranks (default {ranks})"
    )


def add_scheduler_args(ap) -> None:
    """``--scheduler threads|cluster`` and ``--workers``, for :func:`executor`."""
    ap.add_argument("--scheduler", choices=["threads", "cluster"], default="threads")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster workers (cluster)")


def add_common_tail(ap, *, out_help: str, quick_help: str) -> None:
    """``--seed``, ``--out`` and ``--quick``, the last arguments of every example."""
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help=out_help)
    ap.add_argument("--quick", action="store_true", help=quick_help)


def check_inputs(ap, args, path: str, message: str) -> None:
    """Exit 2 with ``message`` (formatted with the path) when ``path`` is not a file;
    a usage error when ``--missing`` is not strictly between 0 and 1."""
    if not os.path.isfile(path):
        print(message.format(path=os.path.abspath(path)), file=sys.stderr)
        raise SystemExit(2)
    if not 0 < args.missing < 1:
        ap.error(f"--missing must be strictly between 0 and 1; got {args.missing}")


def output_folder(out: str | None, prefix: str) -> str:
    """``out`` (created if need be), or a new temporary folder named ``prefix...``."""
    out = out or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(out, exist_ok=True)
    return out


@contextlib.contextmanager
def executor(kind: str, workers: int, *, timed: bool = False):
    """``tucker_complete``'s keyword arguments for ``--scheduler``; ``timed``: print the
    LocalCluster's start-up time."""
    if kind == "threads":
        yield {"scheduler": "threads"}
        return
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        started = f", started in {time.perf_counter() - t0:.1f} s" if timed else ""
        print(f"LocalCluster: {workers} workers{started}")
        yield {"client": client}


def tucker_validated(train, val, ranks, *, seed: int, max_iter: int, where: dict):
    """``dsg.tucker_complete`` stopped on the validation RMSE (best iterate returned)."""
    return dsg.tucker_complete(
        train,
        ranks,
        validation=val,
        max_iter=max_iter,
        tol=1e-8,
        stall_tol=1e-6,
        random_state=seed,
        progress=False,
        **where,
    )


def stop_note(res) -> str:
    """``"<status> after N iterations"``, and where the best validation RMSE was."""
    stop = f"{res.status} after {res.n_iter} iterations"
    if res.best_iteration != res.n_iter:
        stop += f" (best validation RMSE at {res.best_iteration})"
    return stop


def save(fig, path: str) -> str:
    """Lay out, write (110 dpi) and close a matplotlib figure; its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_grid(panels, indices, path: str, title: str, *, axis: int = 0, name: str = "frame",
               rotate: bool = False) -> str:  # fmt: skip
    """One row per ``(label, volume)`` of ``panels``, one column per index along ``axis``
    (titled ``name i``), gray in [0, 1] (NaN black); ``rotate``: ``np.rot90`` each image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    first = np.take(panels[0][1], indices[0], axis=axis)
    H, W = np.rot90(first).shape if rotate else first.shape
    w = 1.6 * W / max(H, W) + 0.2
    fig, axes = plt.subplots(len(panels), len(indices), squeeze=False,
                             figsize=(w * len(indices) + 0.8, 1.6 * len(panels)))  # fmt: skip
    for i, (label, V) in enumerate(panels):
        for j, k in enumerate(indices):
            img = np.take(V, k, axis=axis)
            img = np.nan_to_num(np.clip(np.rot90(img) if rotate else img, 0, 1), nan=0.0)
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{name} {k}", fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)
