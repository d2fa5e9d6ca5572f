"""The mechanism of balena's update lock: create, flock, inspect, adopt and release one path.

Two locks live on one path (platform facts §1): the Supervisor checks that the file exists,
the host OS checks for an ``flock()`` on it. Holding means both: the file created by us with
``O_CREAT|O_EXCL`` (never truncating, never following a symlink) and ``flock(LOCK_EX)`` on
that same open file. Release unlinks the path only while it is still our inode, and while we
still hold the flock, then closes.

This module knows files, not policy: it never decides whether to hold, it says what is there.
Whose file a file is (uid 65534 = the Supervisor, our own record = a previous run of the
agent, anything else = foreign) is answered by :func:`inspect`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from dataclasses import dataclass
from typing import Literal

from update_lock.errors import LockError

__all__ = [
    "OWNER_TAG",
    "SUPERVISOR_UID",
    "Held",
    "Occupant",
    "adopt",
    "check",
    "create",
    "inspect",
    "release",
    "rewrite",
]

# The Supervisor (>= v13.1) creates its own lock files as nobody and tells them from user
# locks only by this uid (platform facts §3).
SUPERVISOR_UID = 65534
OWNER_TAG = "update-lock"

# Reading someone else's lock file: enough for our own record, never more.
MAX_RECORD_BYTES = 1024

# The host's HUP check flocks the file for an instant every 5 s, and so may another
# process's probe: on a file we have just created, a busy flock is waited out, not a rival.
FLOCK_WAIT_S = 1.0
FLOCK_RETRY_S = 0.002

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass
class Held:
    """A lock we hold: the open fd, and the inode we created (or adopted) at ``path``."""

    path: str
    fd: int
    dev: int
    ino: int
    flocked: bool


OccupantKind = Literal["absent", "supervisor", "ours", "foreign"]


@dataclass(frozen=True)
class Occupant:
    """What is at a lock path that we do not hold."""

    kind: OccupantKind
    uid: int | None = None
    dev: int | None = None
    ino: int | None = None
    record: dict[str, object] | None = None
    detail: str = ""

    @property
    def pid(self) -> int | None:
        value = self.record.get("pid") if self.record else None
        return value if isinstance(value, int) else None


def _errno_name(error: OSError) -> str:
    return errno.errorcode.get(error.errno or 0, str(error.errno))


def _flock_wait(fd: int, deadline_s: float) -> bool:
    """``flock(LOCK_EX)`` on our own file, retrying a busy lock until ``deadline_s`` passes."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            # EWOULDBLOCK: a probe (the host's `flock -n -x`) has it for an instant.
            if time.monotonic() >= end:
                return False
            time.sleep(FLOCK_RETRY_S)


def _write_record(fd: int, record: bytes) -> None:
    # Write first, then trim: truncating first would leave an empty file if we were killed in
    # between, and an empty file is anyone's (the next start would call it foreign and keep
    # it forever). Killed between the two, the file is the new record's line followed by the
    # old one's tail, which _read_record ignores.
    os.pwrite(fd, record, 0)
    os.ftruncate(fd, len(record))


def encode_record(pid: int, token: str, since: str, reasons: tuple[str, ...]) -> bytes:
    """Our lock file's content: who holds it, for people and for our own next start."""
    body = {
        "owner": OWNER_TAG,
        "pid": pid,
        "token": token,
        "since": since,
        "reasons": list(reasons),
    }
    return (json.dumps(body, separators=(",", ":")) + "\n").encode()


def create(path: str, record: bytes, *, use_flock: bool) -> Held | Occupant:
    """Create ``path`` exclusively and flock it; or say who is there instead."""
    try:
        fd = os.open(path, _CREATE_FLAGS, 0o644)
    except FileExistsError:
        return inspect(path)
    except PermissionError as error:
        # EACCES over an existing file: with fs.protected_regular=1 root may not O_CREAT over
        # another user's file in a sticky directory: the Supervisor's own lock (platform
        # facts §3); who it is, inspect says. EACCES with nothing there is a real permission
        # problem (a directory we may not write): an error, reported and retried.
        occupant = inspect(path)
        if occupant.kind == "absent":
            raise LockError(path, "create", "EACCES", error.strerror or "") from error
        return occupant
    except OSError as error:
        raise LockError(path, "create", _errno_name(error), error.strerror or "") from error
    try:
        info = os.fstat(fd)
        # The record before the flock wait (up to FLOCK_WAIT_S): a crash during the wait must
        # leave a file the next start recognises as its own and adopts.
        _write_record(fd, record)
        flocked = _flock_wait(fd, FLOCK_WAIT_S) if use_flock else False
    except OSError as error:
        # ENOSPC and friends: give the path back rather than leave a half-made lock.
        with contextlib.suppress(OSError):
            if _same_inode(path, info.st_dev, info.st_ino):
                os.unlink(path)
        os.close(fd)
        raise LockError(path, "write", _errno_name(error), error.strerror or "") from error
    return Held(path, fd, info.st_dev, info.st_ino, flocked)


def inspect(path: str) -> Occupant:
    """Who is at ``path``: nobody, the Supervisor, a previous run of ours, or someone else."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return Occupant("absent")
    except OSError as error:
        return Occupant("foreign", detail=f"lstat failed: {_errno_name(error)}")
    if info.st_uid == SUPERVISOR_UID:
        return Occupant("supervisor", info.st_uid, info.st_dev, info.st_ino)
    if not stat.S_ISREG(info.st_mode):
        return Occupant("foreign", info.st_uid, info.st_dev, info.st_ino, detail="not a file")
    record = _read_record(path)
    if (
        record is not None
        and record.get("owner") == OWNER_TAG
        and info.st_uid == os.geteuid()
    ):
        return Occupant("ours", info.st_uid, info.st_dev, info.st_ino, record)
    return Occupant("foreign", info.st_uid, info.st_dev, info.st_ino, record)


def _read_record(path: str) -> dict[str, object] | None:
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        data = os.read(fd, MAX_RECORD_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        # The first line only: see _write_record for the tail a crash can leave after it.
        value = json.loads(data.split(b"\n", 1)[0].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def adopt(path: str, occupant: Occupant, record: bytes, *, use_flock: bool) -> Held | None:
    """Take over the lock file a previous run of ours left, without a gap in protection.

    Returns None when it is not ours to take: it changed under us, or a live process still
    holds its flock (another agent).
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != (occupant.dev, occupant.ino) or not stat.S_ISREG(
            info.st_mode
        ):
            os.close(fd)
            return None
        # A live holder's flock is permanent; the host's probe lasts an instant.
        if not _flock_wait(fd, 0.2):
            os.close(fd)
            return None
        if not use_flock:
            fcntl.flock(fd, fcntl.LOCK_UN)
        _write_record(fd, record)
    except OSError:
        os.close(fd)
        return None
    return Held(path, fd, info.st_dev, info.st_ino, use_flock)


def rewrite(held: Held, record: bytes) -> None:
    """Refresh our record (reasons changed). Failure is harmless: the lock stays held."""
    with contextlib.suppress(OSError):
        _write_record(held.fd, record)


def ensure_flock(held: Held) -> None:
    """Take the flock that a busy probe kept us from taking at create time."""
    if not held.flocked:
        held.flocked = _flock_wait(held.fd, 0.05)


def _same_inode(path: str, dev: int, ino: int) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) == (dev, ino)


def check(held: Held) -> bool:
    """Is ``path`` still the inode we hold? False means someone removed or replaced it."""
    return _same_inode(held.path, held.dev, held.ino)


def release(held: Held) -> bool:
    """Unlink our file if it is still ours (flock still held), then close. True if unlinked."""
    unlinked = False
    try:
        if _same_inode(held.path, held.dev, held.ino):
            os.unlink(held.path)
            unlinked = True
    except FileNotFoundError:
        pass  # ENOENT: removed between lstat and unlink by an override; nothing of ours left.
    finally:
        os.close(held.fd)
    return unlinked


def drop(held: Held) -> None:
    """Forget a lock whose path is no longer ours: close the fd, touch nothing on disk."""
    os.close(held.fd)
