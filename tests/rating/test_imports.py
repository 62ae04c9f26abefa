"""rating/ is pure: it may import only the standard library and `schemas`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import rating

RATING_DIR = Path(rating.__file__).parent
ALLOWED = set(sys.stdlib_module_names) | {"rating", "schemas"}


def imported_roots(source: str) -> set[str]:
    """Top-level package names imported by `source` (relative imports stay in rating)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_rating_imports_only_stdlib_and_schemas() -> None:
    files = sorted(RATING_DIR.rglob("*.py"))
    assert files, "found no rating modules"
    offenders = {
        str(path.relative_to(RATING_DIR)): sorted(imported_roots(path.read_text()) - ALLOWED) for path in files
    }
    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_the_checker_catches_a_bad_import() -> None:
    assert imported_roots("import pydantic\nfrom sqlalchemy.orm import Session\nfrom . import x") - ALLOWED == {
        "pydantic",
        "sqlalchemy",
    }


FORBIDDEN_MODULES = {"os", "io", "time", "socket", "random", "secrets", "pathlib", "subprocess"}
FORBIDDEN_CALLS = {"now", "utcnow", "today", "open", "print", "input"}


def clock_and_io_uses(source: str) -> set[str]:
    """Imports of I/O or clock modules, and calls such as datetime.now() or open()."""
    found = imported_roots(source) & FORBIDDEN_MODULES
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in FORBIDDEN_CALLS:
                found.add(f"{name}()")
    return found


def test_rating_reads_no_clock_and_does_no_io() -> None:
    uses = {
        str(path.relative_to(RATING_DIR)): sorted(clock_and_io_uses(path.read_text()))
        for path in sorted(RATING_DIR.rglob("*.py"))
    }
    assert {name: bad for name, bad in uses.items() if bad} == {}
    assert clock_and_io_uses("import time\ndatetime.now()\nopen('x')") == {"time", "now()", "open()"}
