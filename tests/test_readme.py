"""The README is part of the interface: its commands, recipes, variables and fields are real."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from harness import ROOT, World, host_sees_lock
from update_lock.config import KNOWN

README = (ROOT / "README.md").read_text()


def block(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n```\w+\n(.*?)```\n<!-- /recipe -->", README, re.S)
    assert match, f"README has no {marker} block"
    return match.group(1)


def test_the_first_section_gives_exactly_the_two_commands() -> None:
    first = README.split("\n## ")[1]
    assert first.startswith("Try it\n")
    code = re.findall(r"```sh\n(.*?)```", first, re.S)
    assert len(code) == 1
    commands = [line.split("#")[0].strip() for line in code[0].splitlines() if line.strip()]
    assert commands == ["./dev demo", "./dev test"]


def test_ci_runs_the_test_command_and_nothing_else() -> None:
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[-1] == "exec ./dev test"
    assert all(line.startswith(("set ", "cd ", "exec ./dev test")) for line in lines)


def test_every_variable_is_documented() -> None:
    for name in KNOWN:
        assert f"| `{name}` |" in README, name


def test_every_status_field_is_documented(world: World) -> None:
    world.agent()
    status: dict[str, Any] = world.wait_status(lambda s: True, "a status")
    table = README.split("### status.json")[1].split("\n## ")[0]
    for field in status:
        assert f"`{field}`" in table, field


def test_the_python_recipe_works(world: World) -> None:
    agent = world.agent()
    agent.wait_line(r"^agent\.started ")
    namespace: dict[str, Any] = {}
    exec(compile(block("recipe:python"), "README.md", "exec"), namespace)  # noqa: S102
    with namespace["update_lock"]("migration", "schema migration",
                                  directory=str(world.trigger), timeout_s=10):
        assert host_sees_lock(world.lock)
        assert (world.trigger / "migration.lock").read_text() == "schema migration\n"
    assert not (world.trigger / "migration.lock").exists()
    world.wait_status(lambda s: not s["locked"], "released after the with-block")


def test_the_sh_recipe_works(world: World, tmp_path: Path) -> None:
    world.agent()
    world.wait_status(lambda s: True, "a status")
    script = block("recipe:sh").replace("dir=/update-lock", f"dir={world.trigger}")
    seen = tmp_path / "seen"
    # The critical section records whether the host check saw the lock while it ran.
    check = f'flock -n -x 9 9<"{world.lock}" && echo free > {seen} || echo held > {seen}'
    script = script.replace("run_backup", check, 1)
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert seen.read_text() == "held\n"
    assert not (world.trigger / "backup.lock").exists()
    world.wait_status(lambda s: not s["locked"], "released after the script")
