"""Layering rules from DEVELOPERS.md: dependencies point replay -> projections -> ledger."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ledger", "projections", "replay")
LIBRARY = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_dependencies_point_one_way(path: Path) -> None:
    """ledger (but its CLI) imports neither projections nor replay; projections not replay."""
    rel = path.relative_to(ROOT).parts
    imported = _imports(path)
    if rel[0] == "ledger" and rel[1] != "cli":
        assert not imported & {"projections", "replay"}
    if rel[0] == "projections":
        assert "replay" not in imported


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path: Path) -> None:
    """No library module grows much past 400 lines."""
    assert len(path.read_text().splitlines()) <= 450
