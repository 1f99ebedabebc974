"""Imports flow one way: api_shim -> scheduler -> {pipeline, storage}, and inside the
scheduler from the process entry points down to the rooms that know the least.

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

# The scheduler's rooms, each with what it may import of the scheduler besides itself.
# ``errors`` and ``settings`` are the package's base and open to every room.
BASE = {"scheduler.errors", "scheduler.settings"}
ROOMS = {
    # Outbound HTTP knows nothing of jobs, Redis or Celery.
    "scheduler.net": BASE,
    "scheduler.redis": BASE,
    # Jobs are records and their store: no Celery, no stages, no process wiring.
    "scheduler.jobs": BASE | {"scheduler.redis"},
    "scheduler.stages": BASE
    | {
        "scheduler.redis",
        "scheduler.jobs",
        "scheduler.net",
        "scheduler.metrics",
        "scheduler.runtime",
    },
    "scheduler.process": BASE
    | {
        "scheduler.redis",
        "scheduler.jobs",
        "scheduler.stages",
        "scheduler.metrics",
        "scheduler.runtime",
    },
}
# Third-party packages a room may not load: jobs and the network guard stay free of Celery.
FORBIDDEN_LIBRARIES = {
    "scheduler.jobs": {"celery", "kombu", "celery_batches"},
    "scheduler.net": {"celery", "kombu", "celery_batches", "redis"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved to absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # ``from pkg import name`` may name a submodule: count both.
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def within(name: str, prefixes: set[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


@pytest.mark.parametrize("package", PACKAGES)
def test_import_direction(package: str) -> None:
    violations = {
        str(path.relative_to(ROOT)): sorted(
            {name.split(".")[0] for name in imported_modules(path)}
            & set(PACKAGES) - ALLOWED[package]
        )
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in violations.items() if v} == {}


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_scheduler_rooms_import_downwards(room: str) -> None:
    allowed = ROOMS[room] | {room}
    forbidden = FORBIDDEN_LIBRARIES.get(room, set())
    violations = {}
    for path in (ROOT / room.replace(".", "/")).rglob("*.py"):
        names = imported_modules(path)
        wrong = {
            name
            for name in names
            if within(name, {"scheduler"}) and name != "scheduler" and not within(name, allowed)
        }
        # ``from .. import metrics`` shows as both "scheduler" and "scheduler.metrics".
        wrong |= {name for name in names if name.split(".")[0] in forbidden}
        if wrong:
            violations[str(path.relative_to(ROOT))] = sorted(wrong)
    assert violations == {}


def test_the_rules_see_relative_imports() -> None:
    """A guard against the checker going blind: the stages import the job store relatively."""
    assert "scheduler.jobs.store" in imported_modules(ROOT / "scheduler/stages/lifecycle.py")
    assert "scheduler.metrics" in imported_modules(ROOT / "scheduler/stages/lifecycle.py")


def test_the_shim_does_not_load_torch() -> None:
    code = (
        "import sys, api_shim.app, api_shim.cli, scheduler.stages.tasks;"
        "heavy = {'torch', 'diffusers', 'transformers'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
