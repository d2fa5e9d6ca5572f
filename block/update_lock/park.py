"""``update-lock park``: keep a misconfigured block still, with its message in view.

``entry.sh`` runs this (as PID 1, through ``exec``) after ``update-lock check-config`` has
printed every configuration problem. Exiting instead would crash-loop the container: the
problem scrolls out of the dashboard log and a Pi Zero spends its time restarting Python.
So park:

- with the Supervisor API (the label ``io.balena.features.supervisor-api: '1'`` injects
  ``BALENA_SUPERVISOR_ADDRESS`` and ``BALENA_SUPERVISOR_API_KEY``; ``BALENA_APP_ID`` and
  ``BALENA_SERVICE_NAME`` are always there), ask the Supervisor to stop this service:
  ``POST /v2/applications/<appId>/stop-service`` with ``{"serviceName": ...}``. The service
  then shows as stopped until the fleet owner fixes the variable (which recreates it) or the
  device reboots;
- then, or without the API, or if the request fails, sleep until a signal.

SIGTERM or SIGINT ends the park with exit status 0 (as PID 1 in a container, a signal with no
handler is ignored, so the handlers are what lets ``docker stop`` and the Supervisor's stop
work at once). Parking holds no lock and never touches the lock path. The API key is never
logged: :class:`~update_lock.supervisor_api.SupervisorClient` sends it in a header only and
scrubs it from every message.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence
from types import FrameType

from update_lock.errors import ApiError
from update_lock.logs import Logger
from update_lock.supervisor_api import SupervisorClient, api_settings

__all__ = ["main", "service_identity"]

EX_USAGE = 64  # sysexits.h
# The Supervisor restarts during its own updates: retry a little longer than the default.
STOP_ATTEMPTS = 6


class _Stopped(BaseException):  # like KeyboardInterrupt: no `except Exception` may swallow it
    """Raised by the signal handler to end the park wherever it is (sleep or HTTP call)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


def service_identity(env: Mapping[str, str]) -> tuple[str, str] | str:
    """``(app_id, service_name)`` from the environment, or why it is missing. Pure."""
    found: list[str] = []
    for name in ("APP_ID", "SERVICE_NAME"):
        value = env.get(f"BALENA_{name}", "").strip() or env.get(f"RESIN_{name}", "").strip()
        if not value:
            return f"BALENA_{name} is not set (the Supervisor sets it in every service)"
        found.append(value)
    return found[0], found[1]


def _request_stop(env: Mapping[str, str], log: Logger) -> str:
    """Ask the Supervisor to stop this service. Returns the ``why=`` of the sleep after it."""
    settings = api_settings(env)
    identity = service_identity(env)
    if isinstance(settings, str) or isinstance(identity, str):
        log.warning("park.no-api", why=settings if isinstance(settings, str) else identity)
        return "no-api"
    address, key = settings
    app_id, service = identity
    log.info("park.stopping-service", app_id=app_id, service=service)
    try:
        with SupervisorClient(address, key, logger=log, attempts=STOP_ATTEMPTS) as client:
            client.stop_service(app_id, service)
    except ApiError as error:
        log.error("park.stop-failed", status=error.status, message=error.message)
        return "stop-failed"
    log.info("park.stop-requested", app_id=app_id, service=service)
    return "stop-requested"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    log = Logger()
    if args:
        log.error("park.usage", expected="no arguments", got=" ".join(args))
        return EX_USAGE
    previous = {
        signum: signal.signal(signum, _on_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        why = _request_stop(os.environ if env is None else env, log)
        log.info("park.sleeping", why=why)
        while True:
            signal.pause()
    except _Stopped as stopped:
        for signum in previous:  # a second signal must not interrupt the goodbye
            signal.signal(signum, signal.SIG_IGN)
        log.info("park.stopped", signal=signal.Signals(stopped.signum).name)
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    raise SystemExit(main())
