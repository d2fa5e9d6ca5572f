"""``status.json`` in the trigger directory: what the agent holds and why, for other services.

Written by the agent only, atomically (a temp file in the same directory, then ``rename``),
whenever its content changes, and at least every :data:`HEARTBEAT` so a health check can
tell a live agent from a stale file. Readers never see a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime, timedelta
from typing import Any

__all__ = ["HEARTBEAT", "iso", "read", "write"]

HEARTBEAT = timedelta(minutes=5)


def iso(value: datetime | None) -> str | None:
    """ISO 8601, to the second, with its offset; None stays None."""
    if value is None:
        return None
    return value.replace(microsecond=0).isoformat()


def replace_file(path: str, data: bytes, tmp_name: str) -> None:
    """Atomically replace ``path`` with ``data``, through the temp file ``tmp_name`` beside it
    (a name the agent ignores). Raises OSError (full disk, missing directory).

    The trigger directory is shared and our pid (part of every temp name) is public:
    whatever was planted at the temp name (a link, a FIFO that would block the open forever)
    is removed first, and the create is exclusive, follows no link and never blocks.
    """
    tmp = os.path.join(os.path.dirname(path), tmp_name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK
                 | os.O_CLOEXEC, 0o644)
    try:
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write(directory: str, status: dict[str, Any]) -> None:
    """Atomically replace ``status.json``. Raises OSError (full disk, missing directory)."""
    data = (json.dumps(status, indent=2, sort_keys=True) + "\n").encode()
    replace_file(os.path.join(directory, "status.json"), data,
                 f".status.json.{os.getpid()}.tmp")


def read(directory: str) -> dict[str, Any] | None:
    """The current status, or None when there is none (yet) or it cannot be read."""
    try:
        with open(os.path.join(directory, "status.json"), "rb") as handle:
            value = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
