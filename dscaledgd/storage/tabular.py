"""Streaming import of rating-style tables (CSV, Parquet) into an Observations store.

Two streaming passes over the file, each holding one block of lines at a time:

1. read the header, then per block parse the three columns, check the values
   and collect the distinct row and column ids (the id maps);
2. map ids to ``0..n−1`` (``searchsorted`` into the sorted distinct ids) and
   append the COO block to a scratch Zarr store.

The scratch store then goes through the out-of-core Dask import
(:mod:`dscaledgd.storage.ingest`), which tiles, sorts and checks duplicates,
and writes the final store with the id maps (``row_ids``/``col_ids`` arrays).
Memory: one block (``block_lines`` lines) plus the distinct ids.

Ids that all parse as numbers are stored as int64 (or float64); other ids are
kept as strings. CSV is parsed by NumPy's C reader, or by pyarrow when it is
installed (faster). Parquet needs pyarrow.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator

import numpy as np

from .._validation import Options, check_param
from ..exceptions import InputDataError, InvalidParameterError
from . import layout

__all__ = ["read_table", "TableBlock"]

#: Lines per block of the NumPy CSV reader.
BLOCK_LINES = 1 << 20


class TableBlock:
    """One parsed block: ``first_line`` is the 1-based file line of its first row."""

    __slots__ = ("first_line", "rows", "cols", "values")

    def __init__(self, first_line, rows, cols, values):
        self.first_line, self.rows, self.cols, self.values = first_line, rows, cols, values


# ------------------------------------------------------------------ CSV
def _header(path: str, sep: str) -> tuple[list[str], int]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
        if not first:
            raise InputDataError(
                f"The file {path!r} is empty (line 1). It needs a header line naming the columns "
                "and at least one data line."
            )
        names = [n.strip().strip('"') for n in first.rstrip("\r\n").split(sep)]
        if not fh.readline().strip():
            raise InputDataError(
                f"The file {path!r} has a header but no data (line 2 is empty or missing)."
            )
    return names, 1


def _column_indices(path, names, columns) -> list[int]:
    out = []
    for role, name in zip(("row", "col", "value"), columns):
        if name not in names:
            raise InputDataError(
                f"Column {name!r} (the {role!r} column) is missing from the header of {path!r} "
                f"(line 1). Columns present: {names}."
            )
        where = [k + 1 for k, n in enumerate(names) if n == name]
        if len(where) > 1:
            raise InputDataError(
                f"Column {name!r} (the {role!r} column) appears {len(where)} times in the "
                f"header of {path!r} (line 1, fields {where}); which one holds the data is "
                "ambiguous. Rename the duplicated columns."
            )
        out.append(names.index(name))
    return out


def check_sep(sep) -> str:
    """The CSV reader (NumPy's ``loadtxt``) splits on one character."""
    if not isinstance(sep, str) or len(sep) != 1 or sep in '\r\n"':
        raise InvalidParameterError(
            f"The 'sep' parameter of from_csv must be a single character other than a quote "
            f"or a line break (e.g. ',', ';', '\\t', '|'); got {sep!r}. Multi-character "
            "separators are not supported: replace them first (e.g. sed 's/::/,/g')."
        )
    return sep


def _check_ids(ids, name: str, first_line: int, path, unit: str = "line"):
    """Refuse empty or missing ids and NaN/inf ids: none of them can be looked up."""
    kind = ids.dtype.kind
    if kind in "iub":
        return
    if kind == "f":
        bad = ~np.isfinite(ids)
    elif kind in "US":
        bad = np.char.str_len(np.char.strip(ids)) == 0
    else:  # object (Parquet strings with nulls)
        bad = np.fromiter((_missing_id(x) for x in ids), dtype=bool, count=len(ids))
    if bad.any():
        k = int(np.argmax(bad))
        what = (
            "is not a finite number (a NaN or infinite id can never be looked up)"
            if kind == "f"
            else "is empty or missing"
        )
        raise InputDataError(
            f"The id {'' if ids[k] is None else str(ids[k])!r} in column "
            f"{name!r} at {unit} {first_line + k} of {path!r} {what}. Fix or drop that {unit}."
        )


def _check_values(vals, name: str, first_line: int, path, unit: str = "line"):
    """Refuse NaN and infinite values, naming the first one's ``unit`` (line or row)."""
    bad = ~np.isfinite(vals)
    if bad.any():
        k = int(np.argmax(bad))
        raise InputDataError(
            f"Value {float(vals[k])!r} in column {name!r} at {unit} {first_line + k} of "
            f"{path!r} is not finite. Drop or impute it."
        )


def _missing_id(x) -> bool:
    if x is None:
        return True
    if isinstance(x, float):
        return not np.isfinite(x)
    return not str(x).strip()


_ROW_ERR = re.compile(r"at row (\d+)(?:, column (\d+))?")


def _parse_lines(lines, usecols, sep, first_line, path, names, string_ids):
    """Parse one block; returns ``(rows, cols, values)`` or raises with the file line."""
    dtype = str if string_ids else np.float64
    try:
        arr = np.loadtxt(
            lines,
            delimiter=sep,
            usecols=usecols,
            dtype=dtype,
            comments=None,
            ndmin=2,
            quotechar='"',
        )
    except ValueError as exc:
        msg = str(exc)
        m = _ROW_ERR.search(msg)
        if m and m.group(2) is not None and "could not convert" in msg:
            # conversion errors: 0-based row within the block, 1-based file column
            line = first_line + int(m.group(1))
            file_col = int(m.group(2)) - 1
            role = usecols.index(file_col) if file_col in usecols else 2
            if role < 2 and not string_ids:
                raise _StringIds from None  # ids are not numeric: re-read them as strings
            bad = re.search(r"string '([^']*)'", msg)
            raise InputDataError(
                f"Non-numeric value {bad.group(1) if bad else '?'!r} in column "
                f"{names[usecols[role]]!r} at line {line} of {path!r}. Fix or drop that line."
            ) from None
        line = first_line + int(m.group(1)) - 1 if m else first_line  # 1-based row here
        raise InputDataError(
            f"Malformed line {line} of {path!r}: {msg}. Every line needs the columns "
            f"{[names[u] for u in usecols]}."
        ) from None
    rows, cols, vals = arr[:, 0], arr[:, 1], arr[:, 2]
    for role, ids in enumerate((rows, cols)):
        _check_ids(ids, names[usecols[role]], first_line, path)
    if string_ids:
        try:
            vals = vals.astype(np.float64)
        except ValueError:
            k = next(i for i, v in enumerate(vals) if not _is_float(v))
            raise InputDataError(
                f"Non-numeric value {str(vals[k])!r} in column {names[usecols[2]]!r} at line "
                f"{first_line + k} of {path!r}. Fix or drop that line."
            ) from None
    _check_values(vals, names[usecols[2]], first_line, path)
    return rows, cols, vals


def _is_float(s) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


class _StringIds(Exception):
    pass


def _csv_blocks(path, columns, sep, block_lines, string_ids) -> Iterator[TableBlock]:
    names, _ = _header(path, sep)
    usecols = _column_indices(path, names, columns)
    with open(path, encoding="utf-8", errors="replace") as fh:
        fh.readline()
        line_no = 2
        while True:
            lines = []
            for _ in range(block_lines):
                ln = fh.readline()
                if not ln:
                    break
                lines.append(ln)
            if not lines:
                return
            # blank lines would shift loadtxt's row numbers: refuse them explicitly
            for k, ln in enumerate(lines):
                if not ln.strip():
                    raise InputDataError(
                        f"Line {line_no + k} of {path!r} is empty. Remove empty lines."
                    )
            r, c, v = _parse_lines(lines, usecols, sep, line_no, path, names, string_ids)
            yield TableBlock(line_no, r, c, v)
            line_no += len(lines)


def _parquet_blocks(path, columns, block_lines) -> Iterator[TableBlock]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputDataError(
            f"Reading Parquet ({path!r}) needs pyarrow. Install it with `pip install pyarrow`."
        ) from None
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    _column_indices(path, names, columns)
    line = 1
    for batch in pf.iter_batches(columns=list(columns), batch_size=block_lines):
        cols = [batch.column(i).to_numpy(zero_copy_only=False) for i in range(3)]
        for k in range(2):
            _check_ids(np.asarray(cols[k]), columns[k], line, path, unit="row")
        vals = np.asarray(cols[2], dtype=np.float64)
        _check_values(vals, columns[2], line, path, unit="row")
        yield TableBlock(line, cols[0], cols[1], vals)
        line += len(vals)
    if line == 1:
        raise InputDataError(f"The Parquet file {path!r} has no rows.")


def _blocks(path, columns, sep, block_lines, string_ids):
    if path.endswith(".parquet") or path.endswith(".pq"):
        return _parquet_blocks(path, columns, block_lines)
    return _csv_blocks(path, columns, sep, block_lines, string_ids)


# ------------------------------------------------------------------ ids
def _normalise_ids(ids: np.ndarray) -> np.ndarray:
    """Numeric ids as int64 when they are whole numbers; strings stay strings."""
    if ids.dtype.kind == "f" and np.all(np.mod(ids, 1) == 0) and np.abs(ids).max() < 2**53:
        return ids.astype(np.int64)
    if ids.dtype.kind in "OUS":
        return ids.astype(str)
    return ids


# ---------------------------------------------------------------- driver
def read_table(
    path,
    *,
    row: str,
    col: str,
    value: str,
    sep: str = ",",
    out=None,
    overwrite: bool = False,
    tiles=None,
    duplicates: str = "error",
    block_lines: int = BLOCK_LINES,
):
    """Import a table into an Observations store (see the module docstring): the body of
    :meth:`Observations.from_csv <dscaledgd.Observations.from_csv>`, which documents the
    parameters; ``block_lines`` is the number of lines parsed at a time."""
    import dask.array as da
    import zarr

    from .ingest import coo_from_dask
    from .observations import DUPLICATE_POLICIES

    check_param("from_csv", "duplicates", duplicates, [Options(DUPLICATE_POLICIES)])
    path = os.fspath(path)
    is_parquet = path.endswith((".parquet", ".pq"))
    if not is_parquet:
        check_sep(sep)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such input file: {path!r}.")
    if os.path.getsize(path) == 0:
        raise InputDataError(
            f"The file {path!r} is empty (line 1). It needs a header line naming the columns "
            "and at least one data line."
        )
    columns = (row, col, value)
    string_ids = False
    # pass 1: distinct ids and counts (re-run with string ids if ids are not numeric)
    while True:
        try:
            uniq_r, uniq_c, total = None, None, 0
            for blk in _blocks(path, columns, sep, block_lines, string_ids):
                ur, uc = np.unique(blk.rows), np.unique(blk.cols)
                uniq_r = ur if uniq_r is None else np.union1d(uniq_r, ur)
                uniq_c = uc if uniq_c is None else np.union1d(uniq_c, uc)
                total += len(blk.values)
            break
        except _StringIds:
            string_ids = True
    row_ids = _normalise_ids(uniq_r)
    col_ids = _normalise_ids(uniq_c)
    key_r = uniq_r
    key_c = uniq_c
    # pass 2: map ids and append COO blocks to a scratch store; without ``out`` the
    # store goes to a temporary directory that the returned Observations owns
    tmpdir = None
    if out is None:
        tmpdir = layout.scratch_dir(None, "dscaledgd-obs-")
        target = os.path.join(tmpdir, "obs.zarr")
    else:
        target = os.fspath(out)
    parent = os.path.dirname(os.path.abspath(target))
    scratch = layout.scratch_dir(parent, ".dscaledgd-csv-")
    ok = False
    try:
        g = zarr.open_group(scratch, mode="w")
        arrs = layout.create_entry_arrays(
            g, total, {"rows": "int64", "cols": "int64", "values": "float64"}
        )
        pos = 0
        for blk in _blocks(path, columns, sep, block_lines, string_ids):
            n = len(blk.values)
            arrs["rows"][pos : pos + n] = np.searchsorted(key_r, blk.rows)
            arrs["cols"][pos : pos + n] = np.searchsorted(key_c, blk.cols)
            arrs["values"][pos : pos + n] = blk.values
            pos += n
        src = [da.from_zarr(arrs[name]) for name in ("rows", "cols", "values")]
        extra = {"row_ids": row_ids, "col_ids": col_ids}
        meta = {"id_names": {"row": row, "col": col, "value": value}, "source": path}
        unit = "rows" if is_parquet else "lines"

        def describe(first, later, i, j, n_rep):
            return (
                f"Duplicate observation ({row}={row_ids[i].item()!r}, "
                f"{col}={col_ids[j].item()!r}) at {unit} {first + 2} and {later + 2} of "
                f"{path!r} ({n_rep} repeated entries in all). "
                "Pass duplicates='sum', 'mean' or 'last' to combine them."
            )

        obs = coo_from_dask(
            *src,
            shape=(len(row_ids), len(col_ids)),
            tiles=tiles,
            duplicates=duplicates,
            path=target,
            overwrite=overwrite,
            extra_arrays=extra,
            extra_attrs=meta,
            describe_duplicate=describe,
        )
        ok = True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if tmpdir is not None and not ok:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return obs._adopt_temporary(tmpdir) if tmpdir is not None else obs
