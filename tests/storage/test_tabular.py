"""Streaming CSV/Parquet import with id maps; bad tables get line numbers."""

from __future__ import annotations

import os

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import InputDataError, Observations
from dscaledgd.storage import tabular


def _write(tmp_path, text, name="r.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _entries(obs):
    r, c, v = obs.to_coo()
    return {(obs.row_ids[i].item(), obs.col_ids[j].item()): x for i, j, x in zip(r, c, v)}


CSV = "user,item,rating,ts\n" + "".join(
    f"{u},{i},{(u * 7 + i) % 5 + 0.5},0\n" for u in (10, 3, 99, 42) for i in (7, 1000, 5)
)


@pytest.mark.parametrize("block", [1, 4, 1 << 20])
def test_csv_numeric_ids_round_trip(tmp_path, block, monkeypatch):
    monkeypatch.setattr(tabular, "BLOCK_LINES", block)
    path = _write(tmp_path, CSV)
    obs = tabular.read_table(
        path,
        row="user",
        col="item",
        value="rating",
        out=str(tmp_path / "o.zarr"),
        block_lines=block,
    )
    assert obs.shape == (4, 3) and obs.nnz == 12
    np.testing.assert_array_equal(obs.row_ids, [3, 10, 42, 99])
    np.testing.assert_array_equal(obs.col_ids, [5, 7, 1000])
    got = _entries(obs)
    assert got[(99, 1000)] == (99 * 7 + 1000) % 5 + 0.5 and len(got) == 12
    back = Observations.open_zarr(tmp_path / "o.zarr")
    np.testing.assert_array_equal(back.row_ids, obs.row_ids)
    assert back.attrs["id_names"] == {"row": "user", "col": "item", "value": "rating"}


def test_csv_string_ids_and_separator(tmp_path):
    path = _write(tmp_path, "a;b;v\nu1;x;1.5\nu2;y;2\nu1;y;3\n")
    obs = Observations.from_csv(path, "a", "b", "v", sep=";")
    assert obs.row_ids.tolist() == ["u1", "u2"] and obs.col_ids.tolist() == ["x", "y"]
    assert _entries(obs) == {("u1", "x"): 1.5, ("u2", "y"): 2.0, ("u1", "y"): 3.0}


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"is empty \(line 1\)"),
        ("user,item,rating\n", r"has a header but no data \(line 2"),
        (
            "user,item,score\n1,2,3\n",
            r"Column 'rating' \(the 'value' column\) is missing from the header .* \(line 1\)\. Columns present: \['user', 'item', 'score'\]",
        ),
        (
            "user,item,rating\n1,2,3\n4,5,abc\n",
            r"Non-numeric value 'abc' in column 'rating' at line 3",
        ),
        ("user,item,rating\n1,2,3\n4,5\n", r"Malformed line 3"),
        (
            "user,item,rating\n1,2,3\n4,5,nan\n",
            r"Value nan in column 'rating' at line 3 .* is not finite",
        ),
        ("user,item,rating\n1,2,3\n\n4,5,6\n", r"Line 3 of .* is empty"),
    ],
)
def test_bad_tables_name_the_line_and_write_nothing(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(InputDataError, match=match):
        Observations.from_csv(path, "user", "item", "rating", out=str(tmp_path / "o.zarr"))
    assert sorted(os.listdir(tmp_path)) == ["r.csv"]


def test_non_numeric_value_with_string_ids(tmp_path):
    path = _write(tmp_path, "u,i,r\na,b,1\nc,d,oops\n")
    with pytest.raises(InputDataError, match=r"Non-numeric value 'oops' in column 'r' at line 3"):
        Observations.from_csv(path, "u", "i", "r")


def test_csv_duplicates_name_lines_and_original_ids(tmp_path):
    path = _write(tmp_path, "u,i,r\n5,7,1\n6,7,2\n5,7,4\n")
    with pytest.raises(
        InputDataError, match=r"Duplicate observation \(u=5, i=7\) at lines 2 and 4"
    ):
        Observations.from_csv(path, "u", "i", "r")
    obs = Observations.from_csv(path, "u", "i", "r", duplicates="mean")
    assert _entries(obs) == {(5, 7): 2.5, (6, 7): 2.0}


def test_missing_file_and_parquet(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such input file"):
        Observations.from_csv(str(tmp_path / "none.csv"), "a", "b", "c")
    pa = pytest.importorskip("pyarrow", reason="Parquet import needs pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"u": [3, 1, 3], "i": ["x", "y", "y"], "r": [1.0, 2.0, 3.0]})
    pq.write_table(table, tmp_path / "t.parquet")
    obs = Observations.from_parquet(str(tmp_path / "t.parquet"), "u", "i", "r")
    assert _entries(obs) == {(3, "x"): 1.0, (1, "y"): 2.0, (3, "y"): 3.0}


def test_cli_import_csv(tmp_path):
    import subprocess
    import sys

    path = _write(tmp_path, CSV)
    exe = os.path.join(os.path.dirname(sys.executable), "dscaledgd")
    out = subprocess.run(
        [
            exe,
            "import",
            path,
            str(tmp_path / "o.zarr"),
            "--row",
            "user",
            "--col",
            "item",
            "--value",
            "rating",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert Observations.open_zarr(tmp_path / "o.zarr").nnz == 12
    out = subprocess.run(
        [exe, "import", path, str(tmp_path / "p.zarr"), "--row", "user"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "needs --col, --value" in out.stderr  # a usage error


def test_load_movielens_from_shared_data():
    from tests.conftest import DATA_DIR

    path = os.path.join(DATA_DIR, "movielens-latest-small")
    if not os.path.isdir(path):
        pytest.skip(f"MovieLens data not found at {path} (set DSCALEDGD_DATA)")
    obs = dsg.datasets.load_movielens(path)
    assert obs.shape == (610, 9724) and obs.nnz == 100836
    assert obs.row_ids[0] == 1 and obs.col_ids.max() == 193609
    with pytest.raises(dsg.InvalidParameterError, match="must be an existing path or one of"):
        dsg.datasets.load_movielens("ml-100z")
