"""A supervisord event listener that ends the container when a program goes FATAL.

supervisord gives up on a program that keeps dying before ``startsecs`` (``startretries``
times in a row) and marks it FATAL, but stays up itself: the container would look alive with
a dead agent and no lock. This listener, subscribed to ``PROCESS_STATE_FATAL`` in
``block/supervisord.conf``, sends SIGTERM to its parent (supervisord, PID 1 in the image), so
the container exits and the engine's ``restart: always`` starts it afresh.

The protocol (supervisord docs, "Events"): the listener writes ``READY\\n`` on stdout, reads
one header line of ``key:value`` tokens from stdin, then exactly ``len`` bytes of payload, and
answers ``RESULT 2\\nOK``. stdout belongs to that protocol, so log lines go to stderr
(``stderr_logfile=/dev/stdout`` in the config puts them in the container log).

Run as ``python -m update_lock.fatal_listener``; it refuses to run outside supervisord
(no ``SUPERVISOR_ENABLED``), where its parent would be some unrelated process.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import BinaryIO

from update_lock.logs import Logger

__all__ = ["FATAL_EVENT", "main", "parse_tokens", "serve"]

FATAL_EVENT = "PROCESS_STATE_FATAL"
READY = b"READY\n"
OK = b"RESULT 2\nOK"
EX_USAGE = 64  # sysexits.h


def parse_tokens(text: str) -> dict[str, str]:
    """``"a:1 b:2"`` -> ``{"a": "1", "b": "2"}``: a header line or a state-event payload."""
    tokens: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition(":")
        if sep:
            tokens[key] = value
    return tokens


def serve(
    stdin: BinaryIO,
    stdout: BinaryIO,
    log: Logger,
    stop_supervisord: Callable[[], None],
) -> int:
    """Answer events until stdin closes; call ``stop_supervisord`` on every FATAL event.

    Returns 0 when supervisord closes the pipe (it is shutting down), 70 on a broken
    protocol (supervisord then restarts the listener).
    """
    while True:
        stdout.write(READY)
        stdout.flush()
        line = stdin.readline()
        if not line:
            return 0
        header = parse_tokens(line.decode("utf-8", errors="replace"))
        length_text = header.get("len", "")
        if not length_text.isdigit():
            log.error("listener.bad-header", header=line.decode("utf-8", errors="replace").strip())
            return 70
        payload = stdin.read(int(length_text))
        if len(payload) < int(length_text):
            return 0
        if header.get("eventname") == FATAL_EVENT:
            process = parse_tokens(payload.decode("utf-8", errors="replace"))
            log.error(
                "process.fatal",
                name=process.get("processname"),
                from_state=process.get("from_state"),
            )
            stop_supervisord()
        stdout.write(OK)
        stdout.flush()


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if env is None else env
    log = Logger(stream=sys.stderr)
    if args:
        log.error("listener.usage", expected="no arguments", got=" ".join(args))
        return EX_USAGE
    if environ.get("SUPERVISOR_ENABLED") != "1":
        # Outside supervisord our parent is a shell or a test runner: never signal it.
        log.error("listener.refused", why="not started by supervisord (SUPERVISOR_ENABLED unset)")
        return EX_USAGE
    parent = os.getppid()

    def stop_supervisord() -> None:
        log.warning("supervisord.stopping", pid=parent, signal="SIGTERM", why="process-fatal")
        os.kill(parent, signal.SIGTERM)

    return serve(sys.stdin.buffer, sys.stdout.buffer, log, stop_supervisord)


if __name__ == "__main__":
    raise SystemExit(main())
