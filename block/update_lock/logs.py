"""Log lines are an interface: ``event key=value ...`` on unbuffered stdout, one per event.

No timestamp (the container engine adds one). INFO lines carry no level word; WARNING and
ERROR lines start with it so they stand out in the dashboard:
``lock.acquired path=/tmp/balena/updates.lock reasons=window-closed,holder:backup``
``WARNING holder.ignored name=x.txt why=not-a-holder-name``
Values with spaces, quotes or ``=`` are written as JSON strings. Never pass a secret.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterable
from typing import TextIO

__all__ = ["LEVELS", "Logger", "format_line", "format_value"]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

_PLAIN = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:/,+@%"
)


def format_value(value: object) -> str:
    """One value as it appears after ``key=``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set, frozenset)):
        value = ",".join(str(v) for v in value) if value else "-"
    text = str(value)
    if text and all(c in _PLAIN for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def format_line(event: str, level: str = "info", fields: Iterable[tuple[str, object]] = ()) -> str:
    parts = [] if level == "info" else [level.upper()]
    parts.append(event)
    parts.extend(f"{k}={format_value(v)}" for k, v in fields)
    return " ".join(parts)


class Logger:
    """Writes event lines to a stream (stdout by default), filtered by a minimum level."""

    def __init__(self, level: str = "info", stream: TextIO | None = None) -> None:
        self.threshold = LEVELS[level]
        self.stream = stream
        self._lock = threading.Lock()

    def _write(self, level: str, event: str, fields: dict[str, object]) -> None:
        if LEVELS[level] < self.threshold:
            return
        line = format_line(event, level, fields.items()) + "\n"
        with self._lock:
            stream = self.stream if self.stream is not None else sys.stdout
            try:
                stream.write(line)
                stream.flush()
            except BrokenPipeError:
                # EPIPE: nobody reads our stdout any more; logging must never kill the agent.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)

    def debug(self, event: str, **fields: object) -> None:
        self._write("debug", event, fields)

    def info(self, event: str, **fields: object) -> None:
        self._write("info", event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._write("warning", event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._write("error", event, fields)
