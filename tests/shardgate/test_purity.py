"""The sans-I/O rule (conventions rule 1): pure cores never import I/O or read a clock.

Checked statically with ``ast``, following imports of the project's own modules, so a pure module
cannot reach trio through a helper either. The named cores are checked once they exist; any
module whose top docstring calls itself "sans-I/O" is checked too, so the rule tightens by itself
as the code base grows.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shardgate", "storenode", "proxy", "sentinel")

PURE_MODULES = (
    "shardgate/resp.py",
    "shardgate/slots.py",
    "shardgate/commands.py",
    "shardgate/errors.py",
    "shardgate/topology.py",
    "storenode/keyspace.py",
    "storenode/executor.py",
    "proxy/router.py",
)

FORBIDDEN_MODULES = frozenset({"trio", "anyio", "asyncio", "socket", "select", "selectors", "time"})
CLOCK_ATTRIBUTES = frozenset({"now", "utcnow", "today"})  # datetime.now(), date.today() ...
CLOCK_OWNERS = frozenset({"datetime", "date"})


def declared_sans_io(path: Path) -> bool:
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path))) or ""
    return "sans-i/o" in doc.lower() or "sans-io" in doc.lower()


def pure_modules() -> list[Path]:
    found = {ROOT / name for name in PURE_MODULES if (ROOT / name).exists()}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if declared_sans_io(path):
                found.add(path)
    return sorted(found)


def local_module_path(dotted: str) -> Path | None:
    """The file of a project module (``shardgate.resp`` → shardgate/resp.py), if it is one."""
    parts = dotted.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_modules(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Absolute module names imported anywhere in the tree (also inside functions)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            if node.module.split(".")[0] in PACKAGES:
                for alias in node.names:  # ``from shardgate import resp`` may name a module
                    yield f"{node.module}.{alias.name}", node.lineno
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and _call_name(node.func) in ("__import__", "import_module", "importlib.import_module")
        ):
            yield node.args[0].value, node.lineno


def _call_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return f"{_call_name(func.value)}.{func.attr}"
    return ""


def violations_in_source(source: str, where: str) -> tuple[list[str], list[str]]:
    """(violations, project modules it imports) for one module's source."""
    tree = ast.parse(source, where)
    problems: list[str] = []
    local: list[str] = []
    for name, line in imported_modules(tree):
        top = name.split(".")[0]
        if top in FORBIDDEN_MODULES:
            problems.append(f"{where}:{line} imports {name}")
        elif top in PACKAGES:
            local.append(name)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = _call_name(node.value).split(".")[-1]
        if node.attr in CLOCK_ATTRIBUTES and owner in CLOCK_OWNERS:
            problems.append(f"{where}:{node.lineno} reads the clock ({owner}.{node.attr})")
        elif owner == "time":
            problems.append(f"{where}:{node.lineno} uses time.{node.attr}")
    return problems, local


def violations(path: Path) -> list[str]:
    """Violations in a module and in every project module it imports, transitively."""
    problems: list[str] = []
    seen: set[Path] = set()
    todo = [(path, path.relative_to(ROOT).as_posix())]
    while todo:
        current, chain = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        found, local = violations_in_source(current.read_text(), chain)
        problems += found
        for name in local:
            target = local_module_path(name)
            if target is not None and target not in seen:
                todo.append((target, f"{chain} -> {target.relative_to(ROOT).as_posix()}"))
    return problems


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_sans_io_module_imports_no_io_and_reads_no_clock(path: Path) -> None:
    assert violations(path) == []


def test_the_codec_is_among_the_checked_modules() -> None:
    checked = {p.relative_to(ROOT).as_posix() for p in pure_modules()}
    assert {"shardgate/resp.py", "shardgate/slots.py", "shardgate/commands.py"} <= checked


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import trio", "imports trio"),
        ("import socket as s", "imports socket"),
        ("from time import monotonic", "imports time"),
        ("import asyncio.streams", "imports asyncio.streams"),
        ("def f():\n    import select", "imports select"),
        ("import importlib\nimportlib.import_module('trio')", "imports trio"),
        ("__import__('socket')", "imports socket"),
        ("from datetime import datetime\nx = datetime.now()", "reads the clock (datetime.now)"),
        ("import datetime\nx = datetime.datetime.utcnow()", "reads the clock (datetime.utcnow)"),
        ("import datetime\nx = datetime.date.today()", "reads the clock (date.today)"),
        ("def f(time):\n    return time.monotonic()", "uses time.monotonic"),
    ],
)
def test_the_checker_catches(source: str, expected: str) -> None:
    problems, _ = violations_in_source(source, "example.py")
    assert len(problems) == 1
    assert expected in problems[0]


@pytest.mark.parametrize(
    "source",
    [
        "import attrs\nimport enum",
        "from datetime import timedelta\nx = timedelta(seconds=1)",
        "def expire(now: float) -> float:\n    return now + 1",
        "import timeit_helpers_not_time",
    ],
)
def test_the_checker_allows(source: str) -> None:
    assert violations_in_source(source, "example.py") == ([], [])
