"""Convergence plots."""

from __future__ import annotations

import pytest

import dscaledgd as dsg
from dscaledgd.plotting import plot_history

pytest.importorskip("matplotlib", reason="plotting needs matplotlib (the 'plot' extra)")


def test_plot_history_writes_png(tmp_path):
    obs, _ = dsg.datasets.make_completion((80, 60), 2, 0.5, noise=0.3, random_state=0)
    train, val = obs.split(0.2, random_state=0)
    res = dsg.complete(train, 2, validation=val, scheduler="sync", random_state=0)
    out = plot_history(res, str(tmp_path / "h.png"), obs=train)
    data = (tmp_path / "h.png").read_bytes()
    assert out.endswith("h.png") and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    plot_history(res, str(tmp_path / "r.png"))  # relative residual, log scale
    assert (tmp_path / "r.png").stat().st_size > 5000
