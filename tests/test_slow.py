"""Slow end-to-end runs (``pytest -m slow``): out of core, the MovieLens example."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import dscaledgd as dsg

from .conftest import DATA_DIR

pytestmark = pytest.mark.slow


def test_out_of_core_on_memory_limited_cluster(tmp_path):
    """A store larger than the workers' memory budget is streamed, with no restarts."""
    from distributed import Client, LocalCluster

    obs = dsg.datasets.make_completion_store(
        tmp_path / "big.zarr", (200_000, 150_000), 5, 40_000_000, cond=5, random_state=0
    )
    assert obs.nbytes > 600 * 2**20  # 640 MB of tiles, more than the 500 MB cache budget
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            memory_limit="500MiB",
        ) as cl,
        Client(cl) as c,
    ):
        with pytest.warns(dsg.ConvergenceWarning, match="max_iter=3"):
            res = dsg.complete(obs, 5, client=c, max_iter=3, random_state=0, progress=False)
        assert res.info["cache"] == "stream"  # 640 MB > half of the cluster's 1000 MiB
        assert len(c.scheduler_info()["workers"]) == 2
        h = res.history["residual"]
        assert h[-1] < h[0]


def test_movielens_example_runs(tmp_path):
    path = os.path.join(DATA_DIR, "movielens-latest-small")
    if not os.path.isdir(path):
        pytest.skip(f"MovieLens data not found at {path} (set DSCALEDGD_DATA)")
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(here, "..", "examples", "movielens.py")
    out = subprocess.run(
        [sys.executable, script, path, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr
    rmse = float(out.stdout.split("test RMSE ")[1].split()[0])
    assert rmse < 0.865  # measured 0.858 (reg 0.1); the bias-only model gets 0.860
    assert (tmp_path / "movielens_convergence.png").stat().st_size > 5000
