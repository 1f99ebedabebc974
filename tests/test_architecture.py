"""Imports flow one way: api_shim -> scheduler -> {pipeline, storage}, and inside the
scheduler from the process entry points down to the rooms that know the least. The shim
sees the scheduler only through its facade (``scheduler/__init__.py``), which nothing
inside the scheduler imports.

Checked on the source, so a violation fails here even if nothing exercises the import.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.imports import HEAVY, modules_loaded_by

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


def _package_of(path: Path) -> str:
    """The package relative imports in ``path`` are resolved against."""
    package = module_name(path)
    return package if path.name == "__init__.py" else package.rpartition(".")[0]


def _from_base(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a ``from ... import`` statement imports from."""
    if node.level == 0:
        return node.module or ""
    anchor = package.split(".")
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved to absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, package)
            # ``from pkg import name`` may name a submodule: count both.
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def scheduler_imports(path: Path) -> tuple[set[str], set[str]]:
    """What ``path`` takes from the scheduler: the names it imports from the package itself
    (``from scheduler import X`` where X is no submodule: the facade), and every other
    import of a scheduler module (``import scheduler.x``, ``from scheduler.x import y``,
    ``from scheduler import x`` where x is a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(path)
    facade: set[str] = set()
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name for a in node.names if within(a.name, {"scheduler"}))
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, package)
            if base != "scheduler":
                modules.update({base} if within(base, {"scheduler"}) else set())
                continue
            for alias in node.names:
                submodule = ROOT / "scheduler" / alias.name
                if submodule.is_dir() or submodule.with_suffix(".py").is_file():
                    modules.add(f"scheduler.{alias.name}")
                else:
                    facade.add(alias.name)
    return facade, modules


def within(name: str, prefixes: set[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def violations(folder: str, wrong_of: Callable[[Path], set[str]]) -> dict[str, list[str]]:
    """Each source file under ``folder`` with what ``wrong_of`` finds wrong in it."""
    found = {}
    for path in (ROOT / folder).rglob("*.py"):
        wrong = wrong_of(path)
        if wrong:
            found[str(path.relative_to(ROOT))] = sorted(wrong)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_import_direction(package: str) -> None:
    def wrong_of(path: Path) -> set[str]:
        packages = {name.split(".")[0] for name in imported_modules(path)}
        return packages & set(PACKAGES) - ALLOWED[package]

    assert violations(package, wrong_of) == {}


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_scheduler_rooms_import_downwards(room: str) -> None:
    allowed = ROOMS[room] | {room}
    forbidden = FORBIDDEN_LIBRARIES.get(room, set())

    def wrong_of(path: Path) -> set[str]:
        names = imported_modules(path)
        # ``from .. import metrics`` shows as both "scheduler" and "scheduler.metrics".
        rooms = {
            name
            for name in names
            if within(name, {"scheduler"}) and name != "scheduler" and not within(name, allowed)
        }
        return rooms | {name for name in names if name.split(".")[0] in forbidden}

    assert violations(room.replace(".", "/"), wrong_of) == {}


def test_the_shim_uses_only_the_scheduler_facade() -> None:
    """``from scheduler import X`` with X in the facade's ``__all__``, never a room."""
    import scheduler

    def wrong_of(path: Path) -> set[str]:
        facade, modules = scheduler_imports(path)
        return modules | (facade - set(scheduler.__all__))

    assert violations("api_shim", wrong_of) == {}


def test_the_scheduler_never_imports_its_facade() -> None:
    """The facade imports the rooms; a room importing the facade would be a cycle."""
    assert violations("scheduler", lambda path: scheduler_imports(path)[0]) == {}


def test_the_facade_rules_see_what_they_check() -> None:
    """A guard against the checker going blind, as for relative imports below."""
    facade, modules = scheduler_imports(ROOT / "api_shim/routes.py")
    assert "Service" in facade and not modules
    facade, modules = scheduler_imports(ROOT / "scheduler/stages/lifecycle.py")
    assert not facade and {"scheduler.metrics", "scheduler.jobs.store"} <= modules


def test_the_rules_see_relative_imports() -> None:
    """A guard against the checker going blind: the stages import the job store relatively."""
    assert "scheduler.jobs.store" in imported_modules(ROOT / "scheduler/stages/lifecycle.py")
    assert "scheduler.metrics" in imported_modules(ROOT / "scheduler/stages/lifecycle.py")


def test_the_shim_does_not_load_torch() -> None:
    assert not HEAVY & modules_loaded_by(
        "import api_shim.app, api_shim.cli, scheduler.stages.tasks"
    )
