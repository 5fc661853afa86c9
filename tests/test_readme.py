"""Every code block of the README runs as written (issue 14).

Python blocks run in a fresh interpreter in an empty directory. Blocks that read
``ratings.csv`` get the MovieLens file from ``../shared/data`` (skipped with a reason
when it is missing). The ``bash`` blocks that only use ``dscaledgd`` run in a shell
with the installed command on ``PATH``. Not run here: the install lines
(``python3 -m venv … pip install …``: CI runs exactly those), and blocks without a
language (sample output and command synopses).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .conftest import DATA_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATINGS = os.path.join(DATA_DIR, "movielens-latest-small", "ratings.csv")


def _blocks():
    with open(os.path.join(ROOT, "README.md")) as fh:
        text = fh.read()
    out = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        first = body.strip().splitlines()[0] if body.strip() else ""
        if lang == "python" or (lang == "bash" and first.startswith("dscaledgd ")):
            out.append((lang, body))
    return out


BLOCKS = _blocks()


def test_the_readme_has_the_blocks_this_test_expects():
    langs = [lang for lang, _ in BLOCKS]
    assert langs.count("python") >= 4 and langs.count("bash") >= 1, langs


@pytest.mark.parametrize("k", range(len(BLOCKS)), ids=lambda k: f"block{k}-{BLOCKS[k][0]}")
def test_readme_block_runs_as_written(k, tmp_path):
    lang, body = BLOCKS[k]
    if "ratings.csv" in body:
        if not os.path.exists(RATINGS):
            pytest.skip(f"needs MovieLens ratings.csv ({RATINGS} is missing)")
        os.symlink(RATINGS, tmp_path / "ratings.csv")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    env["OPENBLAS_NUM_THREADS"] = "1"
    if lang == "python":
        cmd = [sys.executable, "-c", body]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", body]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"README block {k} failed:\n{body}\n--- stderr ---\n{out.stderr}"
