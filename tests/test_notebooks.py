"""The example notebooks run top to bottom in a real Jupyter kernel (issue 14).

They are kept as jupytext percent scripts (``examples/notebooks/*.py``: reviewable
diffs, no stored outputs), converted with jupytext and executed with nbclient on the
``python3`` kernel of this environment. Notebooks on real data skip with a reason when
``../shared/data`` (or ``$DSCALEDGD_DATA``) lacks their files.
"""

from __future__ import annotations

import os

import pytest

from .conftest import DATA_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "examples", "notebooks")
NEEDS = {
    "movielens.py": os.path.join("movielens-latest-small", "ratings.csv"),
    "video_rpca.py": os.path.join("video-escalator-i2r", "escalator_data.mat"),
}
NOTEBOOKS = sorted(f for f in os.listdir(NB_DIR) if f.endswith(".py"))


def test_every_notebook_is_listed():
    assert set(NOTEBOOKS) >= {"quickstart.py", "movielens.py", "video_rpca.py",
                              "tensor_completion.py"}  # fmt: skip


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_a_kernel(name, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    need = NEEDS.get(name)
    if need and not os.path.exists(os.path.join(DATA_DIR, need)):
        pytest.skip(f"needs {need} under {DATA_DIR}")
    monkeypatch.setenv("DSCALEDGD_DATA", os.path.abspath(DATA_DIR))
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = jupytext.read(os.path.join(NB_DIR, name))
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on failure
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
