"""The package's public surface and its place in the import graph."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import storage

PACKAGE_DIR = Path(storage.__file__).parent
FORBIDDEN = {"api_shim", "scheduler", "pipeline"}


def test_public_surface_is_re_exported() -> None:
    assert storage.__all__ == [
        "ObjectStore",
        "LocalFile",
        "LocalStore",
        "S3Store",
        *storage.errors.__all__,
    ]
    for name in storage.__all__:
        assert getattr(storage, name).__doc__, f"storage.{name} has no docstring"


def test_every_module_declares_all_and_its_names_exist() -> None:
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(f"storage.{path.stem}")
        assert module.__doc__, f"{path.name} has no module docstring"
        for name in module.__all__:
            assert hasattr(module, name), f"storage.{path.stem}.__all__ names missing {name}"


def test_error_hierarchy() -> None:
    for name in ("ObjectNotFound", "UploadFailed", "InvalidKey", "InvalidSignature", "URLExpired"):
        assert issubclass(getattr(storage, name), storage.StorageError)
    assert issubclass(storage.NotServedLocally, storage.StorageError)


def test_storage_imports_none_of_the_upper_layers() -> None:
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & FORBIDDEN, f"{path.name}:{node.lineno} imports {roots & FORBIDDEN}"
