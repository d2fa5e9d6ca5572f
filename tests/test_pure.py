"""The pure core (config, windows, policy and the errors they raise) does no I/O.

House style: "Config parsing, window arithmetic and the decision take plain values in and give
plain values out; a test can check that they import nothing that does I/O." Two checks: the
source (every import, every call that reads the clock or the outside world) and what importing
the module actually loads, in a fresh interpreter.

One deliberate allowance: ``zoneinfo``: ``ZoneInfo(name)`` reads the system's tz database,
a read-only, cached lookup of data that is part of the platform; it is the only way to get
correct DST rules. (The Holder value type lives in ``policy`` itself, so that the decision
imports nothing from ``holders``, which does I/O.)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "block" / "update_lock"
PURE = ["config", "windows", "policy", "errors"]

# Standard-library modules that compute and do not touch files, sockets, processes or clocks.
ALLOWED_MODULES = {
    "__future__",
    "bisect",
    "collections",
    "collections.abc",
    "dataclasses",
    "datetime",
    "enum",
    "functools",
    "itertools",
    "math",
    "operator",
    "re",
    "string",
    "typing",
    "zoneinfo",  # see the module docstring
    "update_lock.config",
    "update_lock.errors",
    "update_lock.windows",
}
# Modules from which only the named things may be imported (none today).
ALLOWED_NAMES: dict[str, set[str]] = {}
# `import os.path` (config.py) also binds `os`; only these string functions of it may be used.
PURE_OS_PATH = {"basename", "commonpath", "dirname", "isabs", "join", "normcase", "normpath",
                "split", "splitext"}
FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "compile", "__import__",
                   "breakpoint", "getattr", "globals", "vars"}
# Reading the clock: the caller passes `now` in.
CLOCK_METHODS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "sleep",
                 "time_ns", "monotonic_ns"}


def tree(module: str) -> ast.Module:
    path = PACKAGE / f"{module}.py"
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imports(source_tree: ast.Module) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None for `import x`, line) for every import in a tree."""
    found: list[tuple[str, str | None, int]] = []
    for node in ast.walk(source_tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = "." * node.level + (node.module or "")
            found.extend((source, alias.name, node.lineno) for alias in node.names)
    return found


def import_problems(label: str, source_tree: ast.Module) -> list[str]:
    problems = []
    for source, name, line in imports(source_tree):
        if source == "os.path" and name is None:
            continue  # `import os.path`: its uses are checked by test_only_pure_os_path
        if source in ALLOWED_MODULES:
            continue
        if name is not None and name in ALLOWED_NAMES.get(source, set()):
            continue
        shown = f"from {source} import {name}" if name else f"import {source}"
        problems.append(f"{label}:{line}: {shown}")
    return problems


@pytest.mark.parametrize("module", PURE)
def test_imports_only_pure_modules(module: str) -> None:
    assert import_problems(f"{module}.py", tree(module)) == []


def test_policy_imports_nothing_from_holders() -> None:
    assert [name for source, name, _ in imports(tree("policy"))
            if source == "update_lock.holders"] == []


def test_the_import_check_catches_io() -> None:
    snippet = "\n".join([
        "from __future__ import annotations",
        "import os.path",
        "from update_lock.holders import Holder",
        "import fcntl",
        "import os",
        "from os import path",
        "from update_lock.holders import Holder, scan",
        "from update_lock.lockfile import acquire",
        "from .holders import Holder",
        "import time",
        "from datetime import datetime",
    ])
    assert import_problems("x.py", ast.parse(snippet)) == [
        "x.py:3: from update_lock.holders import Holder",
        "x.py:4: import fcntl",
        "x.py:5: import os",
        "x.py:6: from os import path",
        "x.py:7: from update_lock.holders import Holder",
        "x.py:7: from update_lock.holders import scan",
        "x.py:8: from update_lock.lockfile import acquire",
        "x.py:9: from .holders import Holder",
        "x.py:10: import time",
    ]


@pytest.mark.parametrize("module", PURE)
def test_only_pure_os_path(module: str) -> None:
    bad = []
    for node in ast.walk(tree(module)):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and node.attr != "path"
        ):
            bad.append(f"{module}.py:{node.lineno}: os.{node.attr}")
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "os"
            and node.value.attr == "path"
            and node.attr not in PURE_OS_PATH
        ):
            bad.append(f"{module}.py:{node.lineno}: os.path.{node.attr}")
    assert bad == []


@pytest.mark.parametrize("module", PURE)
def test_no_io_or_clock_calls(module: str) -> None:
    bad = []
    for node in ast.walk(tree(module)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
            bad.append(f"{module}.py:{node.lineno}: {func.id}()")
        if isinstance(func, ast.Attribute) and func.attr in CLOCK_METHODS:
            bad.append(f"{module}.py:{node.lineno}: .{func.attr}()")
    assert bad == []


# ---------------------------------------------------------------------------------------------
# What importing actually loads, in a fresh interpreter

IO_MODULES = {
    "asyncio", "fcntl", "http", "mmap", "multiprocessing", "requests", "select", "selectors",
    "shutil", "signal", "socket", "ssl", "subprocess", "tempfile", "termios", "urllib",
    "update_lock.cli", "update_lock.daemon", "update_lock.fatal_listener",
    "update_lock.holders", "update_lock.inotify", "update_lock.link", "update_lock.lockfile",
    "update_lock.logs", "update_lock.park", "update_lock.simulator", "update_lock.status",
    "update_lock.supervisor_api",
}

PROBE = """
import sys
before = set(sys.modules)
sys.path.insert(0, sys.argv[1])
__import__(sys.argv[2])
print("\\n".join(sorted(set(sys.modules) - before)))
"""


def loaded_by(module: str) -> set[str]:
    # -I -S: no site, no user paths, no PYTHON* variables: only what the import itself pulls in.
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PROBE, str(PACKAGE.parent), module],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return set(result.stdout.split())


def io_loaded_by(module: str) -> list[str]:
    return sorted(m for m in loaded_by(module) if m.split(".")[0] in IO_MODULES or m in IO_MODULES)


@pytest.mark.parametrize("module", ["update_lock.config", "update_lock.windows",
                                    "update_lock.errors"])
def test_loads_no_io_module(module: str) -> None:
    loaded = loaded_by(module)
    assert module in loaded  # the probe really imported it
    assert io_loaded_by(module) == []


def test_policy_loads_no_io_module() -> None:
    assert io_loaded_by("update_lock.policy") == []


