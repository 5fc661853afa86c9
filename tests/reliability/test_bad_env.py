"""The "as nobody" cases of ``shared/reliability/bad-inputs.md``.

The probe ran the CLI as an unprivileged user without a writable HOME on a
read-only install: ``import dscaledgd`` failed with numba's "cannot cache
function ...: no locator available" before any command ran. These tests run
the installed CLI in a fresh interpreter in which numba finds no writable
cache location (its locators limited to ``NUMBA_CACHE_DIR``, unset; HOME
points nowhere), which is what that user meets; this session's own user is
root, which can write anywhere, so the permission itself cannot be
reproduced here. The command must then fail or succeed on its own merits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

PRELUDE = textwrap.dedent(
    """
    import sys
    import numba.core.caching as c
    c.CacheImpl._locator_classes = [c.UserProvidedCacheLocator]  # nothing writable
    from dscaledgd.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _cli(args, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")}
    env.update(HOME=str(tmp_path / "no-such-home"), TMPDIR=str(tmp_path))
    return subprocess.run(
        [sys.executable, "-c", PRELUDE, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture
def csv(tmp_path):
    p = tmp_path / "r.csv"
    rng = np.random.default_rng(0)
    lines = [f"{i},{j},{rng.normal():.3f}" for i in range(20) for j in range(0, 15, 2)]
    p.write_text("u,m,r\n" + "\n".join(lines) + "\n")
    return str(p)


@pytest.mark.parametrize("case", ["cli_import_readonly_dir", "cli_complete_out_readonly"])
def test_without_a_writable_numba_cache(case, csv, tmp_path):
    # /proc refuses new files even to root: the unwritable output directory
    out = "/proc/dscaledgd-out.zarr"
    if case == "cli_import_readonly_dir":
        args = ["import", csv, "--row", "u", "--col", "m", "--value", "r", "--out", out]
    else:
        obs = str(tmp_path / "obs.zarr")
        r = _cli(
            ["import", csv, "--row", "u", "--col", "m", "--value", "r", "--out", obs], tmp_path
        )
        assert r.returncode == 0, r.stderr  # import works without a writable cache
        args = ["complete", obs, "--rank", "2", "--scheduler", "sync", "--out", out]
    r = _cli(args, tmp_path)
    assert r.returncode != 0
    assert "no locator" not in r.stderr and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "/proc" in lines[0], r.stderr
