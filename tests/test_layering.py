"""The tree is the architecture (DESIGN.md §1): imports go one way, modules stay small.

Every module of the package is parsed with :mod:`ast`; every import is seen,
at the top level or inside a function, absolute or relative (resolved against
the module's package), plus ``importlib.import_module("...")`` and
``__import__("...")`` with a literal name. A failure names the file, the line
and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dscaledgd"
MAX_LINES = 600

#: (where, what it must not import, why): ``where`` is a folder or a file of the package
RULES = [
    (
        "problems/",
        ("dask", "distributed", "zarr", "dscaledgd.engine", "dscaledgd.api", "dscaledgd.storage"),
        "problems/ is NumPy/Numba only: what is minimised, per chunk",
    ),
    (
        "solvers/",
        ("dask", "distributed", "zarr", "dscaledgd.engine", "dscaledgd.api", "dscaledgd.storage"),
        "solvers/ talks to the data only through the engine protocol",
    ),
    (
        "storage/",
        ("dscaledgd.engine", "dscaledgd.api", "dscaledgd.solvers"),
        "storage/ only reads and writes stores (engine → storage, never back)",
    ),
    ("engine/", ("dscaledgd.api",), "engine/ sits below api/"),
    ("result.py", ("dscaledgd.problems",), "the result record knows no problem's math"),
]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``dscaledgd.storage.ingest`` for ``dscaledgd/storage/ingest.py`` (a package for ``__init__``)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` inside ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]  # a plain module's package
    base = base[: len(base) - (level - 1)] if level > 1 else base
    if len(base) == 0:
        raise ValueError(f"relative import beyond the top level in {module}")
    return ".".join(base + ([target] if target else []))


def imports(source: str, module: str, is_package: bool):
    """``(line, absolute name, statement text)`` for every import in ``source``.

    ``from X import a, b`` yields ``X``, ``X.a`` and ``X.b`` (``a`` may be a
    submodule); ``import a.b`` yields ``a.b``.
    """
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, is_package, node.level, node.module)
            text = f"from {'.' * node.level}{node.module or ''} import " + ", ".join(
                a.name for a in node.names
            )
            yield node.lineno, base, text
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}", text
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                if isinstance(arg.value, str) and not arg.value.startswith("."):
                    yield node.lineno, arg.value, f"{name}({arg.value!r})"


def _hits(name: str, forbidden) -> str | None:
    return next((f for f in forbidden if name == f or name.startswith(f + ".")), None)


def violations(where: str, forbidden, root: Path = PACKAGE) -> list[str]:
    """``file:line: statement (imports X)`` for every forbidden import under ``where``."""
    target = root / where
    files = sorted(target.rglob("*.py")) if where.endswith("/") else [target]
    out = []
    for path in files:
        module = module_name(path, root)
        found = {}
        for line, name, text in imports(path.read_text(), module, path.name == "__init__.py"):
            hit = _hits(name, forbidden)
            if hit:
                found.setdefault((line, text), hit)
        rel = path.relative_to(root.parent)
        out += [
            f"{rel}:{line}: `{text}` (imports {hit})" for (line, text), hit in sorted(found.items())
        ]
    return out


@pytest.mark.parametrize("where, forbidden, why", RULES, ids=[r[0] for r in RULES])
def test_imports_go_one_way(where, forbidden, why):
    found = violations(where, forbidden)
    assert not found, f"{why}; {len(found)} forbidden import(s):\n" + "\n".join(found)


def test_no_module_exceeds_the_size_limit():
    sizes = {p: len(p.read_text().splitlines()) for p in sorted(PACKAGE.rglob("*.py"))}
    big = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p, n in sizes.items() if n > MAX_LINES]
    assert not big, f"modules over {MAX_LINES} lines (split them):\n" + "\n".join(big)


# ------------------------------------------------------- the checker itself
def test_relative_imports_resolve_against_the_package():
    assert resolve("dscaledgd.storage.ingest", False, 1, None) == "dscaledgd.storage"
    assert resolve("dscaledgd.storage.ingest", False, 2, "engine.x") == "dscaledgd.engine.x"
    assert resolve("dscaledgd.storage", True, 1, "merge") == "dscaledgd.storage.merge"
    assert resolve("dscaledgd.storage", True, 2, "api") == "dscaledgd.api"
    assert resolve("dscaledgd.result", False, 1, "problems") == "dscaledgd.problems"
    assert resolve("dscaledgd", True, 1, "engine") == "dscaledgd.engine"
    assert module_name(PACKAGE / "storage" / "__init__.py") == "dscaledgd.storage"


def test_the_checker_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "dscaledgd"
    (pkg / "solvers").mkdir(parents=True)
    (pkg / "solvers" / "__init__.py").write_text("from .. import engine\n")
    (pkg / "solvers" / "m.py").write_text(
        "import numpy as np\n"
        "import dask.array as da\n"
        "from ..storage.layout import CHUNK\n"
        "def f():\n"
        "    from distributed import get_client\n"
        "    import importlib\n"
        "    return importlib.import_module('zarr')\n"
        "from ..problems import completion\n"
        "from dscaledgd import api\n"
        "from dscaledgd.apis import ok\n"
    )
    found = violations("solvers/", RULES[1][1], root=pkg)
    assert [f.split(": ", 1)[0] for f in found] == [
        "dscaledgd/solvers/__init__.py:1",
        "dscaledgd/solvers/m.py:2",
        "dscaledgd/solvers/m.py:3",
        "dscaledgd/solvers/m.py:5",
        "dscaledgd/solvers/m.py:7",
        "dscaledgd/solvers/m.py:9",
    ]
    assert "`from ..storage.layout import CHUNK` (imports dscaledgd.storage)" in found[2]
