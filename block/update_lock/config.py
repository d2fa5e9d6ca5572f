"""Configuration: environment variables in, a frozen :class:`Config` out. Pure.

Every variable shares the prefix ``UPDATE_LOCK_``. :func:`load` checks all of them and raises
one :class:`~update_lock.errors.ConfigError` listing every problem (name, value, expected
form), so a fleet owner fixes everything in one round. Unknown ``UPDATE_LOCK_*`` names are
returned as warnings: they are almost always typos.
"""

from __future__ import annotations

import os.path
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from update_lock.errors import ConfigError, ConfigProblem
from update_lock.windows import WINDOWS_FORM, Window, WindowSyntaxError, parse_windows

__all__ = [
    "BOOL_FORM",
    "DEFAULT_LOCK_PATH",
    "DEFAULT_TRIGGER_DIR",
    "DURATION_FORM",
    "KNOWN",
    "Config",
    "format_duration",
    "load",
    "parse_bool",
    "parse_duration",
    "unknown_variables",
]

PREFIX = "UPDATE_LOCK_"
DEFAULT_LOCK_PATH = "/tmp/balena/updates.lock"  # noqa: S108  # the platform's path, not a temp file
DEFAULT_TRIGGER_DIR = "/update-lock"
LEGACY_NAME = "resin-updates.lock"

BOOL_FORM = "a boolean: 1/true/yes/on or 0/false/no/off"
DURATION_FORM = "a duration like 90s, 15m, 2h, 1d, 1h30m or plain seconds"
OPTIONAL_DURATION_FORM = DURATION_FORM + ", or off/0"
PATH_FORM = "an absolute path"
ZONE_FORM = "an IANA time zone such as Europe/Berlin or UTC"
LEVEL_FORM = "one of debug, info, warning, error"

# A bound keeps every duration far from timedelta's own limits (and from nonsense).
MAX_DURATION = timedelta(days=3650)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# ASCII digits only: `\d` would also take other scripts' digits, which nobody means here.
_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)
_SECONDS_RE = re.compile(r"(\d{1,12}(?:\.\d{1,9})?)s?", re.ASCII)

KNOWN: dict[str, str] = {
    "UPDATE_LOCK_ALWAYS": "false",
    "UPDATE_LOCK_WINDOWS": "",
    "UPDATE_LOCK_TIMEZONE": "TZ, else UTC",
    "UPDATE_LOCK_BOOT_WINDOW": "off",
    "UPDATE_LOCK_PATH": "BALENA_APP_LOCK_PATH, else " + DEFAULT_LOCK_PATH,
    "UPDATE_LOCK_HOST_OS": "true",
    "UPDATE_LOCK_LEGACY": "false",
    "UPDATE_LOCK_DIR": DEFAULT_TRIGGER_DIR,
    "UPDATE_LOCK_HOLDER_TTL": "0",
    "UPDATE_LOCK_OVERRIDE_GRACE": "30m",
    "UPDATE_LOCK_DISABLE": "false",
    "UPDATE_LOCK_LOG_LEVEL": "info",
    "UPDATE_LOCK_ALLOW_OVERRIDE": "true",
    "UPDATE_LOCK_MAX_DEFER": "off",
    "UPDATE_LOCK_APPLY_ON_RELEASE": "true",
    "UPDATE_LOCK_POLL_INTERVAL": "60s",
}


@dataclass(frozen=True)
class Config:
    always: bool = False
    windows: tuple[Window, ...] = ()
    timezone: str = "UTC"
    boot_window: timedelta | None = None
    lock_path: str = DEFAULT_LOCK_PATH
    host_os: bool = True
    legacy: bool = False
    trigger_dir: str = DEFAULT_TRIGGER_DIR
    holder_ttl: timedelta | None = None
    override_grace: timedelta = timedelta(minutes=30)
    disable: bool = False
    log_level: str = "info"
    allow_override: bool = True
    max_defer: timedelta | None = None
    apply_on_release: bool = True
    poll_interval: timedelta = timedelta(seconds=60)
    tz: ZoneInfo = field(default=ZoneInfo("UTC"), compare=False, repr=False)

    @property
    def lock_paths(self) -> tuple[str, ...]:
        """Every path the agent holds: the lock, and the legacy name beside it when asked."""
        if not self.legacy:
            return (self.lock_path,)
        return (self.lock_path, os.path.join(os.path.dirname(self.lock_path), LEGACY_NAME))


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(text)


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``1d``, ``1h30m`` or plain (possibly fractional) seconds."""
    word = text.strip().lower()
    plain = _SECONDS_RE.fullmatch(word)
    if plain:
        seconds = float(plain[1])
        if seconds > MAX_DURATION.total_seconds():
            raise ValueError(text)
        return timedelta(seconds=seconds)
    match = _DURATION_RE.fullmatch(word)
    if not word or match is None or any(len(g) > 12 for g in match.groups() if g):
        raise ValueError(text)
    days, hours, minutes, seconds_part = (int(g) if g else 0 for g in match.groups())
    total_s = ((days * 24 + hours) * 60 + minutes) * 60 + seconds_part
    if total_s > MAX_DURATION.total_seconds():
        raise ValueError(text)
    return timedelta(seconds=total_s)


def format_duration(value: timedelta) -> str:
    """The shortest ``1d2h3m4s`` form (``0s`` for zero); fractions of a second are kept."""
    total = value.total_seconds()
    whole = int(total)
    if total != whole:
        return f"{round(total, 6):.6f}".rstrip("0") + "s"  # parse_duration reads it back
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, whole = divmod(whole, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def _optional_duration(text: str) -> timedelta | None:
    word = text.strip().lower()
    if word in ("", "off", "none") or word in _FALSE:
        return None
    value = parse_duration(word)
    return value if value > timedelta(0) else None


def _zone(text: str) -> ZoneInfo:
    name = text.strip()
    # A POSIX TZ may start with ':' to name a file; the zone name after it is what counts.
    name = name.removeprefix(":")
    if not name or name.startswith("/") or "\x00" in name:
        raise ValueError(text)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as error:
        # OSError: names that map onto directories or unreadable files in the tz database.
        raise ValueError(text) from error


def _abs_path(text: str) -> str:
    path = text.strip()
    if not os.path.isabs(path) or "\x00" in path or path.endswith("/"):
        raise ValueError(text)
    path = os.path.normpath(path)
    if path in ("/", "//"):
        raise ValueError(text)  # the root is neither a lock file nor a trigger directory
    return path


def _level(text: str) -> str:
    word = text.strip().lower()
    if word not in ("debug", "info", "warning", "error"):
        raise ValueError(text)
    return word


T = TypeVar("T")


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """``UPDATE_LOCK_*`` names the block does not know (likely typos), sorted."""
    return sorted(n for n in env if n.startswith(PREFIX) and n not in KNOWN)


def load(env: Mapping[str, str]) -> Config:
    """Parse every ``UPDATE_LOCK_*`` variable; raise one ConfigError naming every problem."""
    problems: list[ConfigProblem] = []

    def get(name: str, parse: Callable[[str], T], expected: str, default: T) -> T:
        raw = env.get(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError:
            problems.append(ConfigProblem(name, raw, expected))
            return default

    def windows(text: str) -> tuple[Window, ...]:
        try:
            return parse_windows(text)
        except WindowSyntaxError as error:
            problems.append(ConfigProblem("UPDATE_LOCK_WINDOWS", text, f"{WINDOWS_FORM} ({error})"))
            return ()

    always = get("UPDATE_LOCK_ALWAYS", parse_bool, BOOL_FORM, False)
    window_list = windows(env.get("UPDATE_LOCK_WINDOWS", ""))

    tz = ZoneInfo("UTC")
    if "UPDATE_LOCK_TIMEZONE" in env:
        tz = get("UPDATE_LOCK_TIMEZONE", _zone, ZONE_FORM, tz)
    elif env.get("TZ", "").strip():
        tz = get("TZ", _zone, ZONE_FORM + " (or set UPDATE_LOCK_TIMEZONE)", tz)

    default_path = env.get("BALENA_APP_LOCK_PATH") or env.get("RESIN_APP_LOCK_PATH")
    if default_path:
        default_path = get(
            "BALENA_APP_LOCK_PATH" if env.get("BALENA_APP_LOCK_PATH") else "RESIN_APP_LOCK_PATH",
            _abs_path,
            PATH_FORM,
            DEFAULT_LOCK_PATH,
        )
    before = len(problems)
    lock_path = get("UPDATE_LOCK_PATH", _abs_path, PATH_FORM, default_path or DEFAULT_LOCK_PATH)
    trigger_dir = get("UPDATE_LOCK_DIR", _abs_path, PATH_FORM, DEFAULT_TRIGGER_DIR)
    # The lock file inside the trigger directory would read as a holder of itself, and the
    # trigger directory inside the lock directory is invisible to other services.
    lock_dir = os.path.dirname(lock_path)
    if len(problems) == before and (
        lock_dir == trigger_dir or lock_dir.startswith(trigger_dir + "/")
        or trigger_dir.startswith(lock_dir + "/")
    ):
        if "UPDATE_LOCK_DIR" in env:
            problems.append(ConfigProblem(
                "UPDATE_LOCK_DIR", env["UPDATE_LOCK_DIR"],
                f"a directory apart from the lock file's directory ({lock_dir})"))
        else:
            problems.append(ConfigProblem(
                "UPDATE_LOCK_PATH", env.get("UPDATE_LOCK_PATH", lock_path),
                f"a path outside the trigger directory UPDATE_LOCK_DIR ({trigger_dir})"))

    config = Config(
        always=always,
        windows=window_list,
        timezone=str(tz.key),
        tz=tz,
        boot_window=get(
            "UPDATE_LOCK_BOOT_WINDOW", _optional_duration, OPTIONAL_DURATION_FORM, None
        ),
        lock_path=lock_path,
        host_os=get("UPDATE_LOCK_HOST_OS", parse_bool, BOOL_FORM, True),
        legacy=get("UPDATE_LOCK_LEGACY", parse_bool, BOOL_FORM, False),
        trigger_dir=trigger_dir,
        holder_ttl=get("UPDATE_LOCK_HOLDER_TTL", _optional_duration, OPTIONAL_DURATION_FORM, None),
        override_grace=get(
            "UPDATE_LOCK_OVERRIDE_GRACE", parse_duration, DURATION_FORM, timedelta(minutes=30)
        ),
        disable=get("UPDATE_LOCK_DISABLE", parse_bool, BOOL_FORM, False),
        log_level=get("UPDATE_LOCK_LOG_LEVEL", _level, LEVEL_FORM, "info"),
        allow_override=get("UPDATE_LOCK_ALLOW_OVERRIDE", parse_bool, BOOL_FORM, True),
        max_defer=get("UPDATE_LOCK_MAX_DEFER", _optional_duration, OPTIONAL_DURATION_FORM, None),
        apply_on_release=get("UPDATE_LOCK_APPLY_ON_RELEASE", parse_bool, BOOL_FORM, True),
        poll_interval=get(
            "UPDATE_LOCK_POLL_INTERVAL", _positive_duration, DURATION_FORM + ", above 0",
            timedelta(seconds=60),
        ),
    )
    if problems:
        raise ConfigError(problems)
    return config


def _positive_duration(text: str) -> timedelta:
    value = parse_duration(text)
    if value <= timedelta(0):
        raise ValueError(text)
    return value
