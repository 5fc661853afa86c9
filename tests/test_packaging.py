"""The installed package's metadata (issue 14): licence, extras, typed, project URLs."""

from __future__ import annotations

import importlib.metadata
import os

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
