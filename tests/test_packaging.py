"""The installed package's metadata (issue 14): licence, extras, typed, project URLs."""

from __future__ import annotations

import importlib.metadata
import os

import pytest

import dscaledgd


def test_installed_metadata_has_the_licence_extras_and_urls():
    md = importlib.metadata.metadata("dscaledgd")
    assert md["License-Expression"] == "BSD-3-Clause"
    assert {"plot", "parquet", "neuro", "video", "tensor", "notebook", "all"} <= set(
        md.get_all("Provides-Extra")
    )
    urls = dict(u.split(", ", 1) for u in md.get_all("Project-URL"))
    for paper in ("2005.08898", "2010.13364", "2104.14526", "2208.11246"):
        assert f"https://arxiv.org/abs/{paper}" in urls.values(), paper
    assert all(u.startswith("https://") for u in urls.values())
    assert os.path.exists(os.path.join(os.path.dirname(dscaledgd.__file__), "py.typed"))


def test_import_loads_neither_dask_nor_numba_and_every_public_name_resolves():
    import json
    import subprocess
    import sys

    code = (
        "import json, sys, dscaledgd as dsg; "
        "heavy = [m for m in ('dask.array', 'distributed', 'numba', 'scipy.linalg', 'zarr') "
        "if m in sys.modules]; "
        "missing = [n for n in dsg.__all__ if getattr(dsg, n, None) is None]; "
        "print(json.dumps([heavy, missing, sorted(set(dsg.__all__) - set(dir(dsg)))]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, missing, undir = json.loads(out.stdout)
    assert heavy == [], f"import dscaledgd loaded {heavy}"  # PEP 562 lazy names
    assert missing == [] and undir == []
    assert dscaledgd.ScaledSGD.__module__ == "dscaledgd.estimators"
    assert dscaledgd.engine.__name__ == "dscaledgd.engine"  # submodules on attribute access
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        dscaledgd.no_such_name  # noqa: B018
