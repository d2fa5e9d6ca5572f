"""``update-lock``: the agent and the small tools other services and operators use.

    update-lock run                         the agent (what supervisord runs)
    update-lock status [--json]             what the agent holds and why
    update-lock hold NAME [--reason TEXT]   ask for the lock (creates NAME.lock)
    update-lock release NAME                stop asking (removes NAME.lock)
    update-lock wait NAME [--timeout D]     wait until NAME is acknowledged and the lock held
    update-lock allow DURATION              open a maintenance window now (holders still hold)
    update-lock override [--reason TEXT]    ask for a forced update now
    update-lock check-config                validate the environment; exit 78 on problems
    update-lock health                      for the image's HEALTHCHECK
    update-lock simulate ...                a local stand-in for the balena Supervisor
    update-lock park                        entry.sh's bad-config parking (stop this service)

Exit codes: 0 success, 1 a tool's own failure (timeout, unhealthy), 2 usage, and one per
error family (errors.EXIT_CODES), 78 for configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from update_lock import __version__, holders, status
from update_lock.config import (
    DEFAULT_TRIGGER_DIR,
    DURATION_FORM,
    Config,
    format_duration,
    load,
    parse_duration,
    unknown_variables,
)
from update_lock.errors import EX_CONFIG, ConfigError, UpdateLockError, exit_code_for
from update_lock.lockfile import SUPERVISOR_UID
from update_lock.logs import Logger

__all__ = ["main"]


def _trigger_dir(env: Mapping[str, str]) -> str:
    return env.get("UPDATE_LOCK_DIR", "").strip() or DEFAULT_TRIGGER_DIR


def _report_config_error(log: Logger, error: ConfigError) -> None:
    for problem in error.problems:
        log.error("config.invalid", variable=problem.name, value=problem.value,
                  expected=problem.expected)


def _warn_unknown(log: Logger, env: Mapping[str, str]) -> None:
    for name in unknown_variables(env):
        log.warning("config.unknown_variable", variable=name, why="not a known UPDATE_LOCK_ "
                    "variable: a typo?")


def _load(log: Logger, env: Mapping[str, str]) -> Config | None:
    try:
        return load(env)
    except ConfigError as error:
        _report_config_error(log, error)
        return None


def cmd_run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    log = Logger("info")
    if os.geteuid() == SUPERVISOR_UID:
        log.error("agent.refused", uid=SUPERVISOR_UID, why="uid 65534 is the balena Supervisor's "
                  "own: a lock file it owns is ignored and deleted by the Supervisor; run as "
                  "root (or any other uid)")
        return EX_CONFIG
    _warn_unknown(log, env)
    config = _load(log, env)
    if config is None:
        return EX_CONFIG
    log = Logger(config.log_level)
    # Imported here: the agent's modules are not needed by the small tools.
    from update_lock.daemon import Agent  # noqa: PLC0415
    from update_lock.link import attach  # noqa: PLC0415

    agent = Agent(config, log)
    attach(agent, env)
    return agent.run()


def cmd_check_config(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    log = Logger("info")
    _warn_unknown(log, env)
    config = _load(log, env)
    if config is None:
        return EX_CONFIG
    log.info("config.ok", path=",".join(config.lock_paths), dir=config.trigger_dir)
    return 0


def _status_or_none(env: Mapping[str, str]) -> dict[str, Any] | None:
    return status.read(_trigger_dir(env))


def _summary(value: dict[str, Any]) -> str:
    lines = []
    if value.get("locked"):
        lines.append(f"locked: {', '.join(value.get('reasons') or [])}")
    else:
        opened = ", ".join(value.get("openings") or [])
        lines.append("not locked" + (f" ({opened})" if opened else ""))
    for holder in value.get("holders") or []:
        state = "live" if holder.get("live") else "stale"
        reason = f": {holder['reason']}" if holder.get("reason") else ""
        lines.append(f"  holder {holder.get('name')} ({state}){reason}")
    window = value.get("window")
    if window:
        state = "open" if window.get("open") else "closed"
        lines.append(f"window: {state}, next change {window.get('next_change') or 'none'}")
    if value.get("allow_until"):
        lines.append(f"updates allowed until {value['allow_until']}")
    if value.get("blocked_by_supervisor"):
        lines.append("waiting: the Supervisor is applying an update")
    if value.get("foreign_lock"):
        lines.append(f"foreign lock file: {value['foreign_lock'].get('path')}")
    override = value.get("override")
    if override:
        ended = override.get("ended")
        span = f"ended: {ended}" if ended else f"released until {override.get('until')}"
        lines.append(f"override: by {override.get('by')} at {override.get('at')}, {span}"
                     + (f" ({override.get('outcome')})" if override.get("outcome") else ""))
    for key in ("update_pending", "update_downloaded", "update_failed"):
        if value.get(key) is not None:
            lines.append(f"{key.replace('_', ' ')}: {'yes' if value[key] else 'no'}")
    lines.append(f"agent pid {value.get('pid')}, version {value.get('version')}, "
                 f"updated {value.get('updated_at')}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    value = _status_or_none(env)
    if value is None:
        print(f"no status in {_trigger_dir(env)}: is the agent running?", file=sys.stderr)
        return 1
    print(json.dumps(value, indent=2, sort_keys=True) if args.json else _summary(value))
    return 0


def _holder_path(env: Mapping[str, str], name: str) -> str:
    if not holders.valid_holder_name(name):
        raise SystemExit(f"update-lock: {name!r} is not a holder name: expected 1-64 of "
                         "A-Z a-z 0-9 . _ -, not starting with '.'")
    return os.path.join(_trigger_dir(env), holders.holder_file(name))


def _write_file(path: str, text: str) -> None:
    """Write a small file in the trigger directory atomically (temp name the agent ignores)."""
    status.replace_file(path, (text + "\n").encode(), f".update-lock-cli.{os.getpid()}.tmp")


def cmd_hold(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    path = _holder_path(env, args.name)
    _write_file(path, args.reason or "")
    print(f"holding {args.name}: {path}")
    return 0


def cmd_release(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    path = _holder_path(env, args.name)
    try:
        os.unlink(path)
    except FileNotFoundError:
        print(f"{args.name} was not holding ({path} does not exist)", file=sys.stderr)
        return 1
    print(f"released {args.name}")
    return 0


def _duration_arg(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {DURATION_FORM}") from None


def cmd_allow(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    until = datetime.now(UTC) + args.duration
    path = os.path.join(_trigger_dir(env), holders.ALLOW_FILE)
    _write_file(path, status.iso(until) or "")
    print(f"updates allowed until {status.iso(until)} (holders still hold); "
          f"undo with: rm {path}")
    return 0


def cmd_override(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    path = os.path.join(_trigger_dir(env), holders.OVERRIDE_FILE)
    _write_file(path, args.reason or "requested with update-lock override")
    print(f"override requested ({path}); watch `update-lock status` for the outcome")
    return 0


def _acknowledged(value: dict[str, Any] | None, name: str) -> bool:
    if not value or not value.get("locked"):
        return False
    return any(h.get("name") == name and h.get("live") for h in value.get("holders") or [])


def cmd_wait(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    _holder_path(env, args.name)
    directory = _trigger_dir(env)
    deadline = time.monotonic() + args.timeout.total_seconds()
    # Level-triggered on status.json: wake on any change in the directory, or every 0.5 s.
    from update_lock.inotify import IN_CLOSE_WRITE, IN_MOVED_TO, Inotify  # noqa: PLC0415

    watcher: Inotify | None = None
    with contextlib.suppress(UpdateLockError):
        watcher = Inotify()
        watcher.add_watch(directory, IN_MOVED_TO | IN_CLOSE_WRITE)
    try:
        import select  # noqa: PLC0415

        while True:
            if _acknowledged(status.read(directory), args.name):
                print(f"{args.name} acknowledged: the lock is held")
                return 0
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                print(f"update-lock: timed out after {format_duration(args.timeout)} waiting for "
                      f"{args.name} to be acknowledged in {directory}/status.json",
                      file=sys.stderr)
                return 1
            if watcher is not None:
                select.select([watcher.fd], [], [], min(remaining, 0.5))
                watcher.read()
            else:
                time.sleep(min(remaining, 0.1))
    finally:
        if watcher is not None:
            watcher.close()


def cmd_health(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    value = _status_or_none(env)
    if value is None:
        print("unhealthy: no status.json", file=sys.stderr)
        return 1
    pid = value.get("pid")
    if not isinstance(pid, int) or not os.path.exists(f"/proc/{pid}"):
        print(f"unhealthy: agent pid {pid} is not running", file=sys.stderr)
        return 1
    try:
        updated = datetime.fromisoformat(str(value.get("updated_at")))
    except ValueError:
        print("unhealthy: status.json has no updated_at", file=sys.stderr)
        return 1
    age = datetime.now(UTC) - updated
    if age > 2 * status.HEARTBEAT:
        print(f"unhealthy: status.json is {format_duration(age)} old", file=sys.stderr)
        return 1
    print("healthy")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="update-lock", description="balena update lock block")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the agent").set_defaults(func=cmd_run)
    p = sub.add_parser("status", help="what the agent holds and why")
    p.add_argument("--json", action="store_true", help="print status.json as it is")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("hold", help="ask for the lock (creates NAME.lock)")
    p.add_argument("name")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_hold)
    p = sub.add_parser("release", help="stop asking for the lock (removes NAME.lock)")
    p.add_argument("name")
    p.set_defaults(func=cmd_release)
    p = sub.add_parser("wait", help="wait until NAME is acknowledged and the lock held")
    p.add_argument("name")
    p.add_argument("--timeout", type=_duration_arg, default=timedelta(seconds=60))
    p.set_defaults(func=cmd_wait)
    p = sub.add_parser("allow", help="allow updates now for DURATION (holders still hold)")
    p.add_argument("duration", type=_duration_arg)
    p.set_defaults(func=cmd_allow)
    p = sub.add_parser("override", help="ask for a forced update now")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_override)
    sub.add_parser("check-config", help="validate the environment").set_defaults(
        func=cmd_check_config)
    sub.add_parser("health", help="is the agent alive and its status fresh").set_defaults(
        func=cmd_health)
    # Listed for --help only: main() hands these over before parsing (see _DELEGATED).
    sub.add_parser("simulate", help="run the local Supervisor simulator", add_help=False)
    sub.add_parser("park", help="park after a configuration error", add_help=False)
    return parser


# Subcommands that are whole programs of their own, with their own options.
_DELEGATED = {"simulate": "update_lock.simulator", "park": "update_lock.park"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in _DELEGATED:
        # Handed over whole, imported only then: argparse's REMAINDER would not pass their
        # leading --options on, and the agent need not load the simulator.
        module = importlib.import_module(_DELEGATED[argv[0]])
        code: int = module.main(argv[1:])
        return code
    args = build_parser().parse_args(argv)
    env = dict(os.environ)
    try:
        result: int = args.func(args, env)
    except UpdateLockError as error:
        print(f"update-lock: {error}", file=sys.stderr)
        return exit_code_for(error)
    except OSError as error:
        print(f"update-lock: {error}", file=sys.stderr)
        return 1
    return result
