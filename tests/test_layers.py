"""The layers point one way: nothing below `train` imports it, and the kernels import nothing of the package."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BELOW_TRAIN = ("data", "model", "eval")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_data_model_and_eval_never_import_train_study_or_serve():
    for layer in BELOW_TRAIN:
        for path in (REPO / "rodpo_dist" / layer).rglob("*.py"):
            bad = {m for m in imported_modules(path) if m.startswith(("rodpo_dist.train", "rodpo_dist.study",
                                                                      "rodpo_dist.serve"))}
            assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_serve_does_not_need_the_training_code_and_kernels_are_leaves():
    for path in (REPO / "rodpo_dist" / "serve").rglob("*.py"):
        assert not {m for m in imported_modules(path) if m.startswith(("rodpo_dist.train", "rodpo_dist.study"))}, path
    for path in (REPO / "kernels").rglob("*.py"):
        assert not {m for m in imported_modules(path) if m.startswith("rodpo_dist")}, path


def test_no_module_is_long():
    for path in (REPO / "rodpo_dist").rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path
