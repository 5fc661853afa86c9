"""Checkpoints of a running fit: one Zarr group per checkpoint, published atomically.

Layout of a checkpoint directory ``DIR`` (``checkpoint=DIR``)::

    DIR/ckpt-00000040/          one Zarr group per checkpoint, the last ``keep``
        zarr.json               attrs["dscaledgd"] = {"type": "checkpoint", "n_iter": 40,
                                  "config_hash": ..., "config": {...}, "state": {...}}
        <array>/                the iterates' factors and small parameters, the history
    DIR/.ckpt-00000050.tmp-...  a checkpoint being written (removed when its writer died)

A checkpoint is written to a temporary sibling and renamed into place
(:func:`~dscaledgd.storage.layout.atomic_dir`), so a reader sees a complete
group or none; every chunk carries a CRC-32C and every array must have all its
chunks, so a truncated or damaged checkpoint is detected and the previous one
used (with a ``DataWarning``). Nothing is pickled: arrays are float64 Zarr
arrays, the rest is JSON in the group's attributes.

``config_hash`` covers what decides the trajectory (the run's parameters, a
fingerprint of the data, the seed), not ``max_iter``, ``tol``, the scheduler
or the checkpoint interval, so a run can be resumed on another cluster with a
larger ``max_iter``. What the snapshot holds is the solver's business
(:mod:`dscaledgd.solvers.resume`); this module stores and checks it.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings

import numpy as np

from ..exceptions import DataWarning, InputDataError, InvalidParameterError
from . import layout
from .chunks import check_chunks, read_all, store_error
from .results import jsonable

__all__ = [
    "Checkpoints", "config_hash", "CLI_ARGV", "list_checkpoints", "read_checkpoint",
    "arrays_digest",
    "stored_command",
]  # fmt: skip

FORMAT = 1
#: checkpoints kept in the directory (the newest)
KEEP = 3
_NAME = re.compile(r"^ckpt-(\d{8})$")
#: the command line of a CLI run, stored so that ``dscaledgd resume DIR`` can repeat it
CLI_ARGV: contextvars.ContextVar = contextvars.ContextVar("dscaledgd_cli_argv", default=None)


def config_hash(config: dict) -> str:
    """SHA-256 of the canonical JSON of ``config``."""
    text = json.dumps(jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def arrays_digest(*arrays) -> str:
    """SHA-256 (hex) of the arrays' bytes in C order, one after another: what ties a
    checkpoint to in-memory data (callers fix the dtypes they hash)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def list_checkpoints(path) -> list[tuple[int, str]]:
    """``(iteration, path)`` of the published checkpoints in ``path``, oldest first."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return []
    out = []
    for name in os.listdir(path):
        m = _NAME.match(name)
        if m:
            out.append((int(m.group(1)), os.path.join(path, name)))
    return sorted(out)


def _damaged(path, detail: str) -> InputDataError:
    return store_error(
        "checkpoint", path, detail, "Delete it; the run resumes from the one before.",
        state="is damaged",
    )  # fmt: skip


def read_checkpoint(path) -> dict:
    """``{"meta": ..., "arrays": {...}}`` of the checkpoint group at ``path``, verified."""
    import zarr

    path = os.fspath(path)
    try:
        g = zarr.open_group(path, mode="r")
        meta = dict(g.attrs).get("dscaledgd")
    except Exception as exc:  # noqa: BLE001 - any failure to open is damage
        raise _damaged(path, f"it cannot be opened as a Zarr group ({exc})") from None
    if not isinstance(meta, dict) or meta.get("type") != "checkpoint":
        raise _damaged(path, "its attrs lack dscaledgd.type == 'checkpoint'")
    if meta.get("format_version") != FORMAT:
        raise _damaged(path, f"its format_version is {meta.get('format_version')!r}, not {FORMAT}")
    names = meta.get("arrays")
    if not isinstance(names, list):
        raise _damaged(path, "its attrs lack the list of arrays")
    arrays = {}
    for name in names:
        try:
            arr = g[name]
        except KeyError:
            raise _damaged(path, f"the array {name!r} is missing") from None

        def err(detail, _p=path):
            return _damaged(_p, detail)

        check_chunks(arr, name, err, path=path)
        arrays[name] = read_all(arr, name=name, error=err)
    return {"meta": meta, "arrays": arrays, "path": path}


def stored_command(path) -> tuple[list, str | None]:
    """``(argv, cwd)`` of the ``dscaledgd`` command that wrote the checkpoints in ``path``
    (from the newest one whose attributes can be read)."""
    import zarr

    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(
            f"{os.fspath(path)!r} holds no checkpoint (ckpt-NNNNNNNN groups). Pass the "
            "directory given to --checkpoint."
        )
    for _, p in reversed(found):
        try:
            meta = dict(zarr.open_group(p, mode="r").attrs).get("dscaledgd") or {}
        except Exception:  # noqa: BLE001 - a damaged one: try the previous
            continue
        cli = meta.get("cli_argv")
        if isinstance(cli, dict) and isinstance(cli.get("argv"), list):
            return [str(a) for a in cli["argv"]], cli.get("cwd")
        if meta.get("type") == "checkpoint":
            raise ValueError(
                f"The checkpoints in {os.fspath(path)!r} were written by the Python API "
                f"({meta.get('func')}), not the command line. Resume them from Python with "
                "the same call and resume=True."
            )
    raise InputDataError(f"No checkpoint in {os.fspath(path)!r} can be read.")


class Checkpoints:
    """The checkpoint directory of one run: validated up front, written atomically.

    Parameters
    ----------
    path : str or PathLike
        The directory; created when missing (its parent must exist).
    interval : int
        Write every ``interval`` iterations (and when ``max_iter`` is reached).
    resume : bool or "auto"
        ``True``: continue from the newest intact checkpoint (one must exist);
        ``"auto"``: continue when there is one, else start (requeued batch
        jobs); ``False``: start, refusing a directory that already holds
        checkpoints.
    func : str
        The public function, for messages.
    keep : int
        How many checkpoints to keep.
    """

    def __init__(self, path, *, interval: int, resume, func: str, keep: int = KEEP):
        if not isinstance(path, str | os.PathLike):
            raise InvalidParameterError(
                f"The 'checkpoint' parameter of {func} must be a directory path (str or "
                f"PathLike) or None. Got {type(path).__name__}."
            )
        if isinstance(interval, bool) or not isinstance(interval, int | np.integer) or interval < 1:
            raise InvalidParameterError(
                f"The 'checkpoint_interval' parameter of {func} must be an int >= 1 (write a "
                f"checkpoint every that many iterations). Got {interval!r}."
            )
        auto = isinstance(resume, str) and resume == "auto"
        if not (isinstance(resume, bool | np.bool_) or auto):
            raise InvalidParameterError(
                f"The 'resume' parameter of {func} must be True, False or 'auto'. Got {resume!r}."
            )
        self.path = os.path.abspath(os.fspath(path))
        self.interval, self.keep, self.func = int(interval), int(keep), func
        self.resume = resume if isinstance(resume, str) else bool(resume)
        self.config, self.hash = {}, ""
        #: what the solve driver stores with every snapshot (seed, initial values)
        self.solve_meta: dict = {}
        self._prepare_dir()

    def bind(self, config: dict) -> None:
        """Set what decides the trajectory (hashed into ``config_hash``)."""
        self.config = jsonable(config)
        self.hash = config_hash(self.config)

    # ------------------------------------------------------------ the directory
    def _prepare_dir(self) -> None:
        p = self.path
        if os.path.exists(p) and not os.path.isdir(p):
            raise NotADirectoryError(
                f"The checkpoint path {p!r} is a file, not a directory. Choose a directory."
            )
        parent = os.path.dirname(p)
        if not os.path.isdir(parent):
            raise FileNotFoundError(
                f"Cannot use the checkpoint directory {p!r}: its parent {parent!r} does not "
                "exist. Create it first."
            )
        try:
            os.makedirs(p, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=p, prefix=".dscaledgd-probe-")
            os.close(fd)
            os.remove(probe)
        except OSError as exc:
            raise PermissionError(
                f"Cannot write checkpoints to {p!r} ({exc.strerror}). Choose a writable directory."
            ) from None
        for name in os.listdir(p):  # writers that died mid-checkpoint
            if name.startswith(".ckpt-"):
                layout.remove_stale_siblings(os.path.join(p, name.split(".")[1]))

    def load(self) -> dict | None:
        """The newest intact checkpoint of this run to resume from, or ``None`` to start.

        Refuses a directory holding another run's checkpoints (naming the
        settings that differ), and one holding this run's without ``resume``.
        """
        found = list_checkpoints(self.path)
        if not found:
            if self.resume is True:
                raise FileNotFoundError(
                    f"{self.func}: resume=True but the checkpoint directory {self.path!r} "
                    "holds no checkpoint. Pass resume='auto' to start when there is none."
                )
            return None
        if self.resume is False:
            raise FileExistsError(
                f"{self.func}: the checkpoint directory {self.path!r} already holds "
                f"checkpoints (the newest at iteration {found[-1][0]}). Pass resume=True to "
                "continue that run, or choose an empty directory."
            )
        damaged = []
        for _, path in reversed(found):
            try:
                ck = read_checkpoint(path)
            except InputDataError as exc:
                damaged.append(str(exc))
                warnings.warn(f"{exc} Trying the previous checkpoint.", DataWarning, stacklevel=4)
                continue
            self._check_config(ck)
            return ck
        raise InputDataError(
            f"{self.func}: no intact checkpoint in {self.path!r}: " + " | ".join(damaged)
        )

    def _check_config(self, ck: dict) -> None:
        meta = ck["meta"]
        if meta.get("config_hash") == self.hash:
            return
        old = meta.get("config") or {}
        keys = sorted(set(old) | set(self.config))
        diff = [
            f"{k}: checkpoint {old.get(k, '<absent>')!r}, now {self.config.get(k, '<absent>')!r}"
            for k in keys
            if old.get(k, "<absent>") != self.config.get(k, "<absent>")
        ]
        raise InvalidParameterError(
            f"{self.func}: the checkpoint {ck['path']!r} belongs to another run (its "
            f"config_hash differs). Differences: {'; '.join(diff) or 'none visible'}. Resume "
            "with the same data and parameters, or choose another checkpoint directory."
        )

    # ------------------------------------------------------------ writing
    def due(self, n_iter: int, max_iter: int) -> bool:
        return n_iter % self.interval == 0 or n_iter >= max_iter

    def save(self, n_iter: int, meta: dict, arrays: dict) -> str:
        """Publish checkpoint ``n_iter`` (``meta``: JSON; ``arrays``: name → ndarray);
        then keep only the newest ``keep``."""
        import zarr

        dest = os.path.join(self.path, f"ckpt-{n_iter:08d}")
        with layout.atomic_dir(dest, overwrite=True) as tmp:
            g = zarr.open_group(tmp, mode="w")
            for name, a in arrays.items():
                a = np.ascontiguousarray(a, dtype=np.float64)
                chunks = tuple(
                    max(1, min(n, 1 << 18) if i == 0 else n) for i, n in enumerate(a.shape)
                )
                layout.create_checked_array(g, name, data=a, chunks=chunks)
            g.attrs["dscaledgd"] = jsonable(
                {
                    "type": "checkpoint",
                    "format_version": FORMAT,
                    "func": self.func,
                    "n_iter": int(n_iter),
                    "config_hash": self.hash,
                    "config": self.config,
                    "cli_argv": CLI_ARGV.get(),
                    "arrays": list(arrays),
                    "state": meta,
                }
            )
        for _, old in list_checkpoints(self.path)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return dest
