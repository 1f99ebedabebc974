"""Imports flow one way: api_shim -> scheduler -> {pipeline, storage}.

Checked on the source, so a violation fails here even if nothing exercises the import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api_shim", "scheduler", "pipeline", "storage")
ALLOWED = {
    "api_shim": {"api_shim", "scheduler"},
    "scheduler": {"scheduler", "pipeline", "storage"},
    "pipeline": {"pipeline"},
    "storage": {"storage"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_import_direction(package: str) -> None:
    violations = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) - ALLOWED[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in violations.items() if v} == {}


def test_the_shim_does_not_load_torch() -> None:
    code = (
        "import sys, api_shim.app, api_shim.cli, scheduler.tasks;"
        "heavy = {'torch', 'diffusers', 'transformers'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
