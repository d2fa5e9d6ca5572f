"""A literal, tiny inotify wrapper (ctypes), after inotify_simple.

One helper per libc call, ``IN_CLOEXEC`` and ``IN_NONBLOCK`` always, and a pure
:func:`parse_events` apart from the read. ``IN_Q_OVERFLOW`` is passed through untreated: the
caller is level-triggered and rescans on any event anyway.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

from update_lock.errors import WatchError

__all__ = [
    "IN_ATTRIB",
    "IN_CLOSE_WRITE",
    "IN_CREATE",
    "IN_DELETE",
    "IN_DELETE_SELF",
    "IN_IGNORED",
    "IN_MODIFY",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "IN_MOVE_SELF",
    "IN_ONLYDIR",
    "IN_Q_OVERFLOW",
    "Event",
    "Inotify",
    "parse_events",
]

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_CLOEXEC = os.O_CLOEXEC
IN_NONBLOCK = os.O_NONBLOCK

_HEADER = struct.Struct("iIII")
# The process's own symbols include libc (glibc and musl alike). ctypes.util.find_library
# would import subprocess and run `ldconfig -p` at every start, for nothing.
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Event:
    wd: int
    mask: int
    cookie: int
    name: str


def _check(result: int, path: str) -> int:
    if result == -1:
        code = ctypes.get_errno()
        raise WatchError(path, errno.errorcode.get(code, str(code)), os.strerror(code))
    return result


def parse_events(data: bytes) -> list[Event]:
    """Decode a buffer read from an inotify fd."""
    events = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, cookie, size = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        raw = data[offset : offset + size].rstrip(b"\0")
        offset += size
        events.append(Event(wd, mask, cookie, os.fsdecode(raw)))
    return events


class Inotify:
    def __init__(self) -> None:
        self.fd = _check(_libc.inotify_init1(IN_CLOEXEC | IN_NONBLOCK), "inotify_init1")

    def fileno(self) -> int:
        return self.fd

    def add_watch(self, path: str, mask: int) -> int:
        return _check(_libc.inotify_add_watch(self.fd, os.fsencode(path), mask), path)

    def rm_watch(self, wd: int) -> None:
        # EINVAL: the watch is already gone (its directory was deleted): nothing to remove.
        if _libc.inotify_rm_watch(self.fd, wd) == -1 and ctypes.get_errno() != errno.EINVAL:
            code = ctypes.get_errno()
            raise WatchError(str(wd), errno.errorcode.get(code, str(code)), os.strerror(code))

    def read(self) -> list[Event]:
        """Every event queued now (none if nothing is pending)."""
        chunks = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        return parse_events(b"".join(chunks))

    def close(self) -> None:
        os.close(self.fd)
