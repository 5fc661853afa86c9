"""``dscaledgd predict``: a result's predictions for the entries a CSV or Parquet file lists.

A matrix fit (``complete``, ``rpca``, ``sgd``) reads a (row id, column id) pair per
line: the original ids of the import (``--by id``, the default) or 0-based indices
(``--by index``). A Tucker fit (``tensor-complete``) reads one 0-based index column
per mode. The entries are written back with a ``prediction`` column, to CSV or
Parquet by ``--out``'s extension. Bad input names the file, the line and the column.
"""

from __future__ import annotations

import csv
import os

import numpy as np

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    """Register ``predict`` on the subparsers ``sub``."""
    p = sub.add_parser(
        "predict",
        help="predict entries of a fit: id pairs (matrix) or index tuples (tensor)",
        description="Read the entries to predict from a CSV or Parquet file and write them "
        "with the fit's prediction to CSV or Parquet (by --out's extension). A matrix fit "
        "(complete, rpca, sgd) reads a row id and a column id per line (--row, --col; "
        "original ids, or 0-based indices with --by index). A Tucker fit (tensor-complete) "
        "reads one 0-based index column per mode: the file's first columns, one per mode.",
    )
    p.add_argument("result", metavar="RES.zarr", help="a result store")
    p.add_argument(
        "pairs",
        metavar="PAIRS",
        help=".csv (with a header line) or .parquet: the id pairs, or for a Tucker fit one "
        "index column per mode",
    )
    p.add_argument("--row", default=None, help="column with the row ids (default: the first)")
    p.add_argument("--col", default=None, help="column with the column ids (default: the "
                   "second)")  # fmt: skip
    p.add_argument(
        "--by",
        choices=("id", "index"),
        default=None,
        help="original ids from the import, or 0-based indices (default: id for a matrix "
        "fit; a Tucker fit takes indices)",
    )
    p.add_argument(
        "--cold-start",
        choices=("nan", "mean", "error"),
        default=None,
        help="for ids never seen in training (matrix fits, --by id; default nan)",
    )
    p.add_argument(
        "--out", metavar="PRED.csv", required=True, help="output file, .csv or .parquet (required)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_cmd_predict)


# ------------------------------------------------------------------- input
class _Table:
    """The columns read from PAIRS (``names``, ``values``: object arrays, strings for CSV),
    and where each entry came from (for messages)."""

    def __init__(self, path: str, names: list, values: list, lines: list | None):
        self.path, self.names, self.values, self._lines = path, names, values, lines

    def where(self, k: int, column: int) -> str:
        at = f"line {self._lines[k]}" if self._lines is not None else f"row {k + 1}"
        return f"PAIRS {self.path!r} {at}, column {self.names[column]!r}"


def _pick(header: list, wanted: list, path: str, need: str) -> list:
    """The column names ``wanted`` (``[(flag, name or None), ...]``; ``None`` at place i:
    the file's i-th column), each checked to be in ``header``."""
    picked = []
    for i, (flag, name) in enumerate(wanted):
        if name is None:
            if i >= len(header):
                raise ValueError(f"PAIRS {path!r} has {len(header)} column(s) {header}; {need}.")
            name = header[i]
        elif name not in header:
            raise ValueError(f"{flag} {name!r} is not a column of {path!r} (columns: {header}).")
        picked.append(name)
    return picked


def _read(path: str, wanted: list, need: str) -> _Table:
    """The columns ``wanted`` (see :func:`_pick`) of a CSV or Parquet file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such input file: PAIRS {path!r}.")
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(
                "Reading Parquet needs pyarrow: pip install 'dscaledgd[parquet]'."
            ) from None
        table = pq.read_table(path)
        names = _pick(table.column_names, wanted, path, need)
        values = [np.asarray(table.column(n).to_pylist(), dtype=object) for n in names]
        return _Table(path, names, values, None)
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"PAIRS {path!r} is empty; expected a header line and the entries.")
        names = _pick(header, wanted, path, need)
        at = [header.index(n) for n in names]
        columns: list[list] = [[] for _ in names]
        lines = []
        for rec in reader:
            if len(rec) <= max(at):
                raise ValueError(
                    f"PAIRS {path!r} line {reader.line_num}: expected {len(header)} fields, "
                    f"got {len(rec)}."
                )
            lines.append(reader.line_num)
            for col, i in zip(columns, at):
                col.append(rec[i])
    return _Table(path, names, [np.asarray(c, dtype=object) for c in columns], lines)


def _first_bad(values, convert) -> int:
    for k, v in enumerate(values):
        try:
            convert(v)
        except (ValueError, TypeError):
            return k
    return 0


def _indices(
    table: _Table, c: int, n: int, what: str, fix: str = "check the columns"
) -> np.ndarray:
    """Column ``c`` as 0-based indices in ``[0, n)``, int64 (``what``: "rows of the fit";
    ``fix``: what else to check, for the message)."""
    values = table.values[c]
    try:
        x = values.astype(str).astype(np.float64)
    except ValueError:
        k = _first_bad(values, lambda v: float(str(v)))
        raise ValueError(
            f"{table.where(k, c)}: {str(values[k])!r} is not an index (a whole number from 0 "
            f"to {n - 1}). Fix the entry, or {fix}."
        ) from None
    bad = ~np.isfinite(x) | (x != np.round(x)) | (x < 0) | (x >= n)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(
            f"{table.where(k, c)}: {str(values[k])!r} is not one of the {n} {what} (0-based "
            f"indices, whole numbers from 0 to {n - 1}). Fix the entry, or {fix}."
        )
    return x.astype(np.int64)


def _ids(table: _Table, c: int, known, axis: str) -> np.ndarray:
    """Column ``c`` as original ids in the dtype of the fit's id map (CSV: strings)."""
    values = table.values[c]
    kind = np.asarray(known).dtype
    if kind.kind not in "iuf":
        return values.astype(str)
    dtype = np.int64 if kind.kind in "iu" else np.float64
    try:
        return values.astype(str).astype(dtype)
    except ValueError:
        k = _first_bad(values, lambda v: dtype(str(v)))
        raise ValueError(
            f"{table.where(k, c)}: {str(values[k])!r} is not a number, but the fit's {axis} "
            "ids are numbers. Fix the entry, or check that --row and --col name the id "
            "columns."
        ) from None


# ----------------------------------------------------------------- command
def _cmd_predict(args) -> int:
    from .cli_common import check_out
    from .models import Tucker
    from .result import load_result

    check_out(args.out, args.overwrite)
    if not args.out.endswith((".csv", ".parquet")):
        raise ValueError(f"--out {args.out!r} must end in .csv or .parquet.")
    res = load_result(args.result)
    if isinstance(res.model, Tucker):
        names, keys, pred = _predict_tensor(args, res.model)
    else:
        names, keys, pred = _predict_matrix(args, res.model)
    _write_predictions(args.out, names, keys, pred)
    print(f"{len(pred)} predictions ({int(np.isnan(pred).sum())} NaN) written to {args.out}")
    return 0


def _predict_tensor(args, model):
    shape = tuple(int(n) for n in model.shape)
    d = len(shape)
    hint = f"PAIRS' first {d} columns are the indices, one per mode"
    for flag, value, fix in (
        ("--row", args.row, f"drop --row ({hint})"),
        ("--col", args.col, f"drop --col ({hint})"),
        ("--by", args.by if args.by == "id" else None, "drop --by, or pass --by index"),
        ("--cold-start", args.cold_start, "drop --cold-start"),
    ):
        if value is not None:
            raise ValueError(
                f"{flag} {value} applies to a matrix fit; RES.zarr {args.result!r} is a Tucker "
                f"fit of a {shape} tensor, predicted at 0-based indices, without ids: {fix}."
            )
    need = f"a Tucker fit of a {d}-way tensor needs {d} index columns, one per mode"
    table = _read(args.pairs, [("PAIRS", None)] * d, need)
    idx = [_indices(table, k, n, f"indices of mode {k} of the {shape} tensor")
           for k, n in enumerate(shape)]  # fmt: skip
    pred = model.predict(np.stack(idx, axis=1))
    return table.names, idx, np.asarray(pred, dtype=np.float64)


def _predict_matrix(args, model):
    need = "it needs two id columns (a row id and a column id)"
    table = _read(args.pairs, [("--row", args.row), ("--col", args.col)], need)
    by, cold = args.by or "id", args.cold_start or "nan"
    ids = getattr(model, "ids", {}) or {}
    if by == "index":
        if args.cold_start is not None:
            raise ValueError(
                f"--cold-start {args.cold_start} applies to --by id (ids never seen in "
                "training); --by index checks each index against the fit's shape. Drop "
                "--cold-start."
            )
        n1, n2 = (int(n) for n in model.shape)
        fix = "check the columns"
        if ids.get("row") is not None:
            fix += ", or pass --by id for original ids"
        rows = _indices(table, 0, n1, "rows of the fit", fix)
        cols = _indices(table, 1, n2, "columns of the fit", fix)
    else:
        if ids.get("row") is None or ids.get("col") is None:
            raise ValueError(
                f"RES.zarr {args.result!r} has no original ids: it was fitted on observations "
                "not imported from a table. Pass --by index (0-based row and column indices)."
            )
        rows = _ids(table, 0, ids["row"], "row")
        cols = _ids(table, 1, ids["col"], "column")
        if cold == "error":
            _refuse_unseen(table, (rows, ids["row"], "row"), (cols, ids["col"], "column"))
    pred = model.predict(rows, cols, by=by, cold_start=cold)
    return table.names, [rows, cols], np.asarray(pred, dtype=np.float64)


def _refuse_unseen(table: _Table, *axes) -> None:
    """``--cold-start error``: name the first entry with an id never seen in training."""
    seen = [np.isin(ids, np.asarray(known)) for ids, known, _ in axes]
    ok = seen[0] & seen[1]
    if ok.all():
        return
    k = int(np.argmin(ok))
    c = 0 if not seen[0][k] else 1
    ids, _, axis = axes[c]
    raise ValueError(
        f"{table.where(k, c)}: {axis} id {str(ids[k])!r} was never seen in training "
        f"({int((~ok).sum())} of {len(ok)} entries have an unseen id). Pass --cold-start nan "
        "(NaN for those entries) or --cold-start mean (the fit's mean and known biases)."
    )


def _write_predictions(path, names: list, keys: list, pred) -> None:
    """Write under a temporary sibling name, then rename: never a half-written file."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.tmp-{os.getpid()}")  # fmt: skip
    try:
        if path.endswith(".parquet"):
            import pyarrow as pa
            import pyarrow.parquet as pq

            arrays = [pa.array(k.tolist()) for k in keys] + [pa.array(pred)]
            pq.write_table(pa.Table.from_arrays(arrays, names=[*names, "prediction"]), tmp)
        else:
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow([*names, "prediction"])
                for *key, v in zip(*(k.tolist() for k in keys), pred.tolist()):
                    w.writerow([*key, repr(v) if v == v else "nan"])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
