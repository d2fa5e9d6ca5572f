"""The trigger directory: what other services ask for, read safely.

Protocol (README, "The trigger directory"):

- ``<name>.lock``: a holder. ``<name>`` is 1-64 of ``[A-Za-z0-9._-]``, not starting with ``.``.
  Its first line (up to 200 characters) is the reason; its mtime is its heartbeat.
- ``allow-until``: an ISO 8601 time until which the baseline (windows, always) is lifted.
- ``override``: a request for a forced update (first line = reason).
- ``status.json`` and dot-files starting with ``.update-lock`` or ``.status.json``: the agent's own.

The scan reads at most a few hundred bytes of any file, follows no symlink, never blocks on
a FIFO (``O_NONBLOCK``) and skips anything that is not a regular file. Files that vanish
mid-scan are simply not there.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime

from update_lock.policy import Holder

__all__ = [
    "ALLOW_FILE",
    "OVERRIDE_FILE",
    "STATUS_FILE",
    "Holder",
    "Ignored",
    "Scan",
    "holder_file",
    "is_own_file",
    "read_first_line",
    "scan",
    "valid_holder_name",
]

STATUS_FILE = "status.json"
ALLOW_FILE = "allow-until"
OVERRIDE_FILE = "override"
STATE_FILE = ".update-lock-state.json"
HOLDER_SUFFIX = ".lock"
MAX_READ_BYTES = 256
MAX_REASON_CHARS = 200

# Far in the future, yet leaving room for any TTL (durations are bounded at 3650 days).
_LATEST_MTIME = datetime(9000, 1, 1, tzinfo=UTC).timestamp()

_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def valid_holder_name(name: str) -> bool:
    return _NAME_RE.fullmatch(name) is not None


def holder_file(name: str) -> str:
    return name + HOLDER_SUFFIX


def is_own_file(name: str) -> bool:
    """Files the agent writes itself: never reported, and their events never wake it."""
    return name == STATUS_FILE or name.startswith((".status.json", ".update-lock"))


@dataclass(frozen=True)
class Ignored:
    entry: str
    why: str


@dataclass(frozen=True)
class Scan:
    holders: tuple[Holder, ...] = ()
    ignored: tuple[Ignored, ...] = ()
    allow_until: str | None = None
    override: str | None = None
    override_mtime: float | None = None  # epoch seconds
    missing: bool = False
    error: str = ""


def _clean(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def read_first_line(fd: int) -> str:
    data = os.read(fd, MAX_READ_BYTES)
    line = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
    return _clean(line)[:MAX_REASON_CHARS]


def _read(path: str, probe_flock: bool) -> tuple[str, float, bool] | str | None:
    """(first line, mtime, flocked by someone) for a regular file; a reason to ignore it; or
    None when it vanished."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:
        # ELOOP: a symlink swapped in after the scan saw a file; ENXIO: a socket; EACCES.
        return "unreadable:" + errno.errorcode.get(error.errno or 0, "?")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "not-a-regular-file"
        line = read_first_line(fd)
        flocked = False
        if probe_flock:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                flocked = True  # EWOULDBLOCK: its writer holds it: live.
        return line, info.st_mtime, flocked
    except OSError as error:
        return "unreadable:" + errno.errorcode.get(error.errno or 0, "?")
    finally:
        os.close(fd)


def scan(directory: str, *, stale_before: float | None) -> Scan:
    """Read the trigger directory once.

    ``stale_before``: an epoch time; holders with an older mtime are probed for an flock
    (the only case where the probe matters). None: never probe.
    """
    holders: list[Holder] = []
    ignored: list[Ignored] = []
    allow_until = None
    override = None
    override_mtime = None
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return Scan(missing=True)
    except OSError as error:
        return Scan(missing=True, error=errno.errorcode.get(error.errno or 0, "?"))
    for entry in entries:
        name = entry.name
        if is_own_file(name):
            continue
        try:
            is_link = entry.is_symlink()
            is_file = entry.is_file(follow_symlinks=False)
        except OSError:
            continue  # vanished mid-scan
        known = name in (ALLOW_FILE, OVERRIDE_FILE)
        if not known and not name.endswith(HOLDER_SUFFIX):
            ignored.append(Ignored(name, "not-a-holder-name"))
            continue
        base = name[: -len(HOLDER_SUFFIX)]
        if not known and not valid_holder_name(base):
            ignored.append(Ignored(name, "invalid-holder-name"))
            continue
        if is_link:
            ignored.append(Ignored(name, "symlink"))
            continue
        if not is_file:
            ignored.append(Ignored(name, "not-a-regular-file"))
            continue
        result = _read(os.path.join(directory, name), probe_flock=False)
        if result is None:
            continue
        if isinstance(result, str):
            ignored.append(Ignored(name, result))
            continue
        line, mtime, _ = result
        # Anyone can set any mtime (`touch -d`), and tmpfs, xfs or btrfs keep ones past year
        # 9999, which datetime cannot hold: clamp to a range the TTL arithmetic is safe in.
        mtime = min(max(mtime, 0.0), _LATEST_MTIME)
        if name == ALLOW_FILE:
            allow_until = line
        elif name == OVERRIDE_FILE:
            override, override_mtime = line, mtime
        else:
            flocked = False
            if stale_before is not None and mtime < stale_before:
                probed = _read(os.path.join(directory, name), probe_flock=True)
                if probed is None:
                    continue
                if not isinstance(probed, str):
                    flocked = probed[2]
            holders.append(Holder(base, line, datetime.fromtimestamp(mtime, UTC), flocked))
    holders.sort(key=lambda h: h.name)
    ignored.sort(key=lambda i: i.entry)
    return Scan(tuple(holders), tuple(ignored), allow_until, override, override_mtime)
