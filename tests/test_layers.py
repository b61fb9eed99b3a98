"""The layers point one way (README, Layout): `runtime` and `config` at the bottom, then `data` ->
`model` -> `eval` -> `train` -> `study` / `serve` -> `cli`; a module imports only from layers below
its own (and its own layer), relative and dynamic imports included; the kernels import nothing of
the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "rodpo_dist"
LAYERS = {"": -1, "runtime": 0, "config": 0, "data": 1, "model": 2, "eval": 3, "train": 4, "study": 5, "serve": 5, "cli": 6}
"""Rank of each top-level part of the package ("": its `__init__`, which imports none of it): a part may import
parts of lower rank only (siblings of one rank, e.g. `study` and `serve` or `runtime` and `config`, not each other)."""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = REPO) -> set[str]:
    """Absolute names of every module `path` imports: `import a.b`, `from a.b import c` (also `a.b.c`, which
    may be a module), relative imports resolved against the file's package, and string literals passed to
    `importlib.import_module` / `__import__`."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names if a.name != "*"}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                names.add(node.args[0].value)
    return names


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else ("" if len(parts) == 1 else None)


def violations(root: Path = REPO) -> list[str]:
    out = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        own = layer_of(module_name(path, root))
        assert own is not None, f"{path.relative_to(root)} is in no layer: add its part to LAYERS"
        for module in sorted(imported_modules(path, root)):
            other = layer_of(module)
            if other is not None and other != own and LAYERS[other] >= LAYERS[own] and other != "":
                out.append(f"{path.relative_to(root)} ({own}) imports {module} ({other})")
    return out


def test_every_part_imports_only_from_the_layers_below_it():
    assert violations() == []


def test_kernels_import_nothing_of_the_package():
    for path in (REPO / "kernels").rglob("*.py"):
        bad = {m for m in imported_modules(path) if m.split(".")[0] == PACKAGE}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


@pytest.mark.parametrize("where, source, found", [
    ("data/x.py", "from rodpo_dist.model import sasrec", "rodpo_dist/data/x.py (data) imports rodpo_dist.model (model)"),
    ("model/x.py", "import rodpo_dist.eval.metrics", "rodpo_dist/model/x.py (model) imports rodpo_dist.eval.metrics (eval)"),
    ("data/x.py", "from ..train import recipe", "rodpo_dist/data/x.py (data) imports rodpo_dist.train (train)"),
    ("model/sub/x.py", "from ...eval.metrics import MISS", "rodpo_dist/model/sub/x.py (model) imports rodpo_dist.eval.metrics (eval)"),
    ("serve/x.py", "from .. import study", "rodpo_dist/serve/x.py (serve) imports rodpo_dist.study (study)"),
    ("config/x.py", "import importlib\nimportlib.import_module('rodpo_dist.runtime')",
     "rodpo_dist/config/x.py (config) imports rodpo_dist.runtime (runtime)"),
])
def test_the_check_sees_upward_relative_and_dynamic_imports(tmp_path, where, source, found):
    path = tmp_path / PACKAGE / where
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n")
    assert found in violations(tmp_path)
    path.write_text("import numpy\nfrom . import y\n")  # its own layer
    assert all(not v.startswith(str(path.relative_to(tmp_path))) for v in violations(tmp_path))


def test_no_module_is_long():
    for path in (REPO / PACKAGE).rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path
