"""A local stand-in for the balena Supervisor: its HTTP API and its update-lock rules.

Run it with ``update-lock simulate --lock-dir DIR --pending`` (or ``python -m
update_lock.simulator``), or use :class:`SimulatorServer` in-process as "the Supervisor" in tests.

Theory of operation (platform facts: docs/balena-update-locks.md §3-5):

- One app with one service whose lock directory is ``lock_dir``. A *release* is a commit; a
  release is *pending* while the target commit differs from the current one.
- An apply attempt looks for *user locks*: ``updates.lock`` or ``resin-updates.lock`` in
  ``lock_dir`` that exist and are not owned by uid 65534 (the Supervisor tells its own files
  from user locks only by that uid). A user lock and no force: the attempt fails, the log says
  "Updates are locked, retrying in 1s. Reason: …", and the next attempt comes after 1 s, 2 s,
  4 s … capped at the poll interval. With force (or the override toggle) it unlinks the user
  locks, both names and nothing else.
- Then it takes its own lock: an ``O_CREAT|O_EXCL`` create of ``updates.lock``, chowned to
  uid 65534 when running as root, held for ``apply_s`` seconds (the "apply"). If a user lock
  appeared in between, the create fails and so does the attempt. After the apply the new
  commit is current and it removes its own file (only if the path still holds that file).
- ``POST /v1/update`` starts an attempt now. Like Supervisor v17.5+, a ``force`` sent without
  ``cancel`` while the apply is stuck on a lock is dropped (Supervisor issue #2541).
- Nothing is downloaded, nothing reboots, no container is touched. Control endpoints under
  ``/sim/`` stand for the cloud (a new release) and the dashboard (the override toggle).

One worker thread runs the attempts; HTTP handlers only change state under one condition
variable and wake it. Requests to the Supervisor endpoints are recorded (``requests_seen``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hmac
import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from urllib.parse import parse_qsl, urlsplit

from update_lock.errors import EX_UNAVAILABLE
from update_lock.logs import Logger

__all__ = [
    "DEFAULT_API_KEY",
    "LOCK_NAMES",
    "SUPERVISOR_UID",
    "RecordedRequest",
    "SimulatorServer",
    "check_truthy",
    "main",
    "pretty_ms",
]

SUPERVISOR_UID = 65534  # nobody: the owner of the Supervisor's own lock files since v13.1
LOCK_NAMES = ("updates.lock", "resin-updates.lock")
OWN_LOCK_NAME = "updates.lock"
SUPERVISOR_VERSION = "19.0.5"
OS_VERSION = "balenaOS 6.0.13"
DEFAULT_API_KEY = "simulator-key"
DEFAULT_PORT = 48484
BACKOFF_INCREMENT_S = 0.5  # the Supervisor's constants.backoffIncrement: 2**n * 500 ms
MAX_BODY_BYTES = 1 << 20
REDACTED = "<redacted>"

_OPEN_ROUTES = frozenset({("GET", "/ping"), ("GET", "/v1/healthy")})
_STOP_SERVICE = re.compile(r"/v2/applications/([0-9]+)/stop-service")
_BEARER = re.compile(r"Bearer\s+(\S+)", re.IGNORECASE)


def pretty_ms(delay_s: float) -> str:
    """A delay as the Supervisor writes it (``prettyMs(ms, {compact: true})``): 1s, 15m, 200ms."""
    ms = delay_s * 1000
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size:
            return f"{int(ms // size)}{unit}"
    return f"{round(ms)}ms"


def check_truthy(value: object) -> bool:
    """The Supervisor's ``checkTruthy``: true, 1, "1", "true", "on" (any case) are true."""
    if isinstance(value, str):
        return value.lower() in ("1", "true", "on")
    return value is True or (type(value) is int and value == 1)


def _new_commit() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the simulator received it (the key is in here: use :meth:`redacted`)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """A header by name, any case."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    def json(self) -> object:
        return json.loads(self.body)

    def redacted(self) -> dict[str, object]:
        """A JSON-able copy without the Authorization value or an ``apikey`` query value."""
        headers = {
            k: (REDACTED if k.lower() == "authorization" else v) for k, v in self.headers.items()
        }
        query = {k: (REDACTED if k.lower() == "apikey" else v) for k, v in self.query.items()}
        return {
            "method": self.method,
            "path": self.path,
            "query": query,
            "headers": headers,
            "body": self.body.decode("utf-8", "replace"),
        }


# (st_dev, st_ino, st_uid, st_ctime_ns): a file's identity. The inode number alone is not
# enough: a file created right after ours was unlinked often gets the same one.
_FileId = tuple[int, int, int, int]


def _file_id(st: os.stat_result) -> _FileId:
    return st.st_dev, st.st_ino, st.st_uid, st.st_ctime_ns


# (status, content type, body); body None = no body.
_Response = tuple[int, str, bytes | None]


def _text(status: int, text: str) -> _Response:
    return status, "text/plain; charset=utf-8", text.encode()


def _json(status: int, body: object) -> _Response:
    return status, "application/json; charset=utf-8", json.dumps(body).encode()


def _empty(status: int) -> _Response:
    return status, "", None


class SimulatorServer:
    """The simulated Supervisor, serving on a thread. ``start()``, then ``stop()``.

    State accessors take the same lock as the worker, so each is consistent on its own; use
    :meth:`wait_until` to wait for a state (it wakes on every change and on every request).
    """

    def __init__(
        self,
        lock_dir: str | os.PathLike[str],
        api_key: str,
        *,
        pending: bool = False,
        apply_s: float = 3.0,
        poll_interval_s: float = 900.0,
        logger: Logger | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        app_id: str = "1",
        service_name: str = "main",
    ) -> None:
        if not api_key:
            raise ValueError("api_key: expected a non-empty key")
        self.lock_dir = os.fspath(lock_dir)
        self.api_key = api_key
        self.apply_s = apply_s
        self.poll_interval_s = poll_interval_s
        self.log = logger if logger is not None else Logger()
        self.host = host
        self.port = port
        self.app_id = app_id
        self.service_name = service_name

        self._cond = threading.Condition()  # an RLock inside: accessors nest in wait_until
        self._current = _new_commit()
        self._target = _new_commit() if pending else self._current
        self._applying = False  # holding its own lock, "installing"
        self._update_failed = False
        self._failures = 0  # failed attempts at this target: the Supervisor's failedUpdates
        self._attempts = 0  # attempts at this target
        self._backoff_s: float | None = None
        self._next_attempt_at: float | None = time.monotonic() if pending else None
        self._force_next = False
        self._override = False
        self._stopping = False
        self._requests: list[RecordedRequest] = []
        self._stopped_services: list[tuple[str, str]] = []
        self._reboots = 0
        self._shutdowns = 0
        self._httpd: _HttpServer | None = None
        self._threads: list[threading.Thread] = []

    # ---- life cycle -----------------------------------------------------------------------

    def start(self) -> SimulatorServer:
        httpd = _HttpServer((self.host, self.port), _Handler)
        httpd.sim = self
        self._httpd = httpd
        # Before the worker starts, so this is the first line; tests and scripts wait for it.
        self.log.info(
            "simulator.listening",
            address=self.address,
            lock_dir=os.path.abspath(self.lock_dir),
            app_id=self.app_id,
            service=self.service_name,
            pending=self.update_pending,
        )
        self._threads = [
            # A short poll so that stop() returns quickly (shutdown waits for one poll).
            threading.Thread(
                target=httpd.serve_forever, args=(0.05,), name="simulator-http", daemon=True
            ),
            threading.Thread(target=self._run, name="simulator-apply", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and applying; an apply in progress is abandoned and its lock removed."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = []

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the simulator is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    # ---- state accessors ------------------------------------------------------------------

    @property
    def current_commit(self) -> str:
        with self._cond:
            return self._current

    @property
    def target_commit(self) -> str:
        with self._cond:
            return self._target

    @property
    def update_pending(self) -> bool:
        with self._cond:
            return self._target != self._current

    @property
    def update_failed(self) -> bool:
        with self._cond:
            return self._update_failed

    @property
    def applying(self) -> bool:
        """Holding its own lock (the apply proper), not merely waiting on a user lock."""
        with self._cond:
            return self._applying

    @property
    def app_state(self) -> str:
        """``applying`` while an update is pending (also waiting on a lock), else ``applied``."""
        with self._cond:
            return "applying" if self._target != self._current else "applied"

    @property
    def attempts(self) -> int:
        with self._cond:
            return self._attempts

    @property
    def backoff_s(self) -> float | None:
        with self._cond:
            return self._backoff_s

    @property
    def override_lock(self) -> bool:
        with self._cond:
            return self._override

    @property
    def requests_seen(self) -> list[RecordedRequest]:
        """Every request to a Supervisor endpoint so far, oldest first (``/sim/`` excluded)."""
        with self._cond:
            return list(self._requests)

    @property
    def stopped_services(self) -> list[tuple[str, str]]:
        """``(appId, serviceName)`` of every accepted stop-service call."""
        with self._cond:
            return list(self._stopped_services)

    @property
    def reboots(self) -> int:
        with self._cond:
            return self._reboots

    @property
    def shutdowns(self) -> int:
        with self._cond:
            return self._shutdowns

    def state(self) -> dict[str, object]:
        """The summary ``GET /sim/state`` answers."""
        with self._cond:
            return {
                "commit": self._current,
                "target": self._target,
                "update_pending": self._target != self._current,
                "update_failed": self._update_failed,
                "applying": self._applying,
                "app_state": self.app_state,
                "attempts": self._attempts,
                "backoff_s": self._backoff_s,
                "override_lock": self._override,
                "reboots": self._reboots,
                "shutdowns": self._shutdowns,
            }

    def wait_until(self, predicate: Callable[[SimulatorServer], bool], timeout_s: float) -> bool:
        """Wait until ``predicate(self)`` holds; False if it still does not after ``timeout_s``."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout_s)

    # ---- the cloud and the dashboard ------------------------------------------------------

    def release(self, commit: str | None = None) -> str:
        """A new release becomes the target; an apply attempt starts, as after a poll."""
        with self._cond:
            self._target = commit or _new_commit()
            self._failures = 0
            self._attempts = 0
            self._backoff_s = None
            self._update_failed = False
            if not self._applying and self._target != self._current:
                self._next_attempt_at = time.monotonic()
            self.log.info("simulator.release", commit=self._target)
            self._cond.notify_all()
            return self._target

    def set_override_lock(self, enabled: bool) -> None:
        """The dashboard toggle: while on, every lock attempt deletes user locks.

        Changing it changes the target state, so a pending update is attempted at once.
        """
        with self._cond:
            self._override = enabled
            if enabled and self._target != self._current and not self._applying:
                self._next_attempt_at = time.monotonic()
            self.log.info("simulator.override-lock", enabled=enabled)
            self._cond.notify_all()

    # ---- the API's actions ----------------------------------------------------------------

    def trigger_update(self, *, force: bool, cancel: bool) -> int:
        """``POST /v1/update``: 204 when it starts an attempt at a pending update, else 202."""
        with self._cond:
            if self._target == self._current:
                self.log.info("simulator.update.ignored", why="nothing-pending")
                return 202
            if self._applying:
                self.log.info("simulator.update.ignored", why="already-applying")
                return 202
            # Supervisor issue #2541: since v17.5 a force that reaches an apply already stuck
            # on a lock is lost unless cancel comes with it. The attempt still happens now.
            honoured = force and (cancel or self._failures == 0)
            self._force_next = self._force_next or honoured
            self._next_attempt_at = time.monotonic()
            self.log.info(
                "simulator.update.triggered", force=force, cancel=cancel, force_used=honoured
            )
            if force and not honoured:
                self.log.warning(
                    "simulator.update.force-dropped",
                    why="stuck-on-lock-without-cancel",
                    see="balena-supervisor#2541",
                )
            self._cond.notify_all()
            return 204

    def power_action(self, action: str, *, force: bool) -> _Response:
        """``POST /v1/reboot`` or ``/v1/shutdown``: lock-aware; logged, nothing happens."""
        with self._cond:
            override = self._override
        user = self._user_locks()
        if user and not (force or override):
            self.log.info("simulator.power.locked", action=action, lock=user[0])
            return _json(423, {"Data": "", "Error": self._lockfile_exists()})
        for path in user:
            self._unlink_user_lock(path, why="force" if force else "override")
        with self._cond:
            if action == "reboot":
                self._reboots += 1
            else:
                self._shutdowns += 1
            self.log.info("simulator.power", action=action, force=force)
            self._cond.notify_all()
        return _json(202, {"Data": "OK", "Error": None})

    def stop_service(self, app_id: str, service_name: str) -> None:
        with self._cond:
            self._stopped_services.append((app_id, service_name))
            self.log.info("simulator.stop-service", app_id=app_id, service=service_name)
            self._cond.notify_all()

    # ---- the apply worker -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    due = self._next_attempt_at
                    if due is not None and self._target != self._current:
                        wait_s = due - time.monotonic()
                        if wait_s <= 0:
                            break
                        self._cond.wait(wait_s)
                    else:
                        self._cond.wait()
                self._next_attempt_at = None
                force = self._force_next or self._override
                why = "force" if self._force_next else "override"
                self._force_next = False
                self._attempts += 1
                target = self._target
                self.log.info(
                    "simulator.apply.attempt", commit=target, attempt=self._attempts, force=force
                )
            try:
                self._attempt(target, force, why)
            except OSError as error:
                # Not a lock: the Supervisor logs "Scheduling another update attempt in Nms
                # due to failure" and backs off the same way.
                self._failed(
                    "simulator.apply.failed",
                    errno=errno.errorcode.get(error.errno or 0, "-"),
                    detail=error.strerror,
                )

    def _attempt(self, target: str, force: bool, why: str) -> None:
        user = self._user_locks()
        if user and not force:
            self._locked()
            return
        for path in user:
            self._unlink_user_lock(path, why=why)
        own = self._take_own_lock()
        if own is None:
            self._locked()
            return
        with self._cond:
            self._applying = True
            self.log.info("simulator.apply.started", commit=target, apply_s=f"{self.apply_s:g}")
            self._cond.notify_all()
            deadline = time.monotonic() + self.apply_s
            while not self._stopping and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            stopped = self._stopping
        self._release_own_lock(own)
        with self._cond:
            self._applying = False
            if stopped:
                self.log.info("simulator.apply.abandoned", commit=target)
            else:
                self._current = target
                self.log.info("simulator.apply.done", commit=target)
                if self._target == target:
                    self._failures = 0
                    self._attempts = 0
                    self._backoff_s = None
                    self._update_failed = False
                else:  # a newer release arrived during the apply
                    self._next_attempt_at = time.monotonic()
            self._cond.notify_all()

    def _lockfile_exists(self) -> str:
        return f"Lockfile exists for {{ appId: {self.app_id}, service: {self.service_name} }}"

    def _locked(self) -> None:
        message = self._lockfile_exists()
        with self._cond:
            delay_s = self._schedule_retry()
            self.log.info(
                "simulator.locked",
                message=f"Updates are locked, retrying in {pretty_ms(delay_s)}. Reason: {message}",
                retry_in_s=f"{delay_s:g}",
            )
            self._cond.notify_all()

    def _failed(self, event: str, **fields: object) -> None:
        with self._cond:
            delay_s = self._schedule_retry()
            self.log.warning(event, retry_in_s=f"{delay_s:g}", **fields)
            self._cond.notify_all()

    def _schedule_retry(self) -> float:
        """Count a failure; schedule the next attempt in 1 s, 2 s, 4 s … up to the poll interval."""
        self._failures += 1
        self._update_failed = True
        delay_s = min(float(2**self._failures) * BACKOFF_INCREMENT_S, self.poll_interval_s)
        self._backoff_s = delay_s
        due = time.monotonic() + delay_s
        # A trigger that came in during the attempt keeps its sooner time.
        if self._next_attempt_at is None or self._next_attempt_at > due:
            self._next_attempt_at = due
        return delay_s

    # ---- lock files: the mechanism --------------------------------------------------------

    def _user_locks(self) -> list[str]:
        """Paths of the lock files that exist and are not the Supervisor's (uid 65534)."""
        found = []
        for name in LOCK_NAMES:
            path = os.path.join(self.lock_dir, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if st.st_uid != SUPERVISOR_UID:
                found.append(path)
        return found

    def _unlink_user_lock(self, path: str, *, why: str) -> None:
        self.log.info("simulator.lock.deleted", path=path, why=why)
        # ENOENT: its holder removed it first, which is what we wanted.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _take_own_lock(self) -> _FileId | None:
        """Create ``updates.lock`` exclusively as uid 65534; None when a user lock is there.

        An existing 65534 file is the Supervisor's own and is taken over, as the real one does.
        """
        path = os.path.join(self.lock_dir, OWN_LOCK_NAME)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o644)
        except (FileExistsError, PermissionError) as error:
            # EACCES is EEXIST under fs.protected_regular=1 when the file is someone else's.
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if isinstance(error, PermissionError):
                    raise
                return None  # it was there an instant ago: count this attempt as locked
            if st.st_uid != SUPERVISOR_UID:
                return None
            self.log.info("simulator.lock.adopted", path=path)
            return _file_id(st)
        try:
            if os.geteuid() == 0:
                os.fchown(fd, SUPERVISOR_UID, SUPERVISOR_UID)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self.log.info("simulator.lock.taken", path=path, uid=st.st_uid)
        return _file_id(st)

    def _release_own_lock(self, own: _FileId) -> None:
        """Remove its own file, only if the path still holds that very file."""
        path = os.path.join(self.lock_dir, OWN_LOCK_NAME)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.log.info("simulator.lock.gone", path=path)
            return
        if _file_id(st) != own:
            self.log.info("simulator.lock.gone", path=path, why="replaced")
            return
        os.unlink(path)
        self.log.info("simulator.lock.released", path=path)

    # ---- HTTP: routing ---------------------------------------------------------------------

    def _authorised(self, authorization: str | None, query: Mapping[str, str]) -> bool:
        given = query.get("apikey")
        if authorization is not None:
            match = _BEARER.fullmatch(authorization.strip())
            given = match.group(1) if match else None
        if not given:
            return False
        return hmac.compare_digest(given.encode(), self.api_key.encode())

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()

    def _device(self) -> dict[str, object]:
        with self._cond:
            pending = self._target != self._current
            device: dict[str, object] = {
                "api_port": self._httpd.server_address[1] if self._httpd else self.port,
                "ip_address": self.host,
                "os_version": OS_VERSION,
                "mac_address": "02:42:0A:72:68:02",
                "supervisor_version": SUPERVISOR_VERSION,
                "update_pending": pending,
                "update_failed": self._update_failed,
                "update_downloaded": pending,  # download-then-kill: downloaded before locking
                "status": "Installing" if self._applying else "Idle",
                "download_progress": None,
            }
            if not pending:  # absent while an apply is in progress
                device["commit"] = self._current
            return device

    def _state_status(self) -> dict[str, object]:
        with self._cond:
            return {
                "status": "success",
                "appState": self.app_state,
                "overallDownloadProgress": None,
                "release": self._current,
                "containers": [],
                "images": [],
            }

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: Message, body: bytes
    ) -> _Response:
        if (method, path) not in _OPEN_ROUTES and not self._authorised(
            headers.get("Authorization"), query
        ):
            return _text(401, "Unauthorized")
        # Like the real one (express body-parser): the body is JSON only when it says so.
        data: dict[str, object] = {}
        content_type = headers.get_content_type()
        if body and content_type == "application/json":
            try:
                parsed = json.loads(body)
            except ValueError:
                return _json(400, {"status": "failed", "message": "invalid JSON body"})
            if isinstance(parsed, dict):
                data = parsed

        if method == "GET":
            if path in ("/ping", "/v1/healthy"):
                return _text(200, "OK")
            if path == "/v2/version":
                return _json(200, {"status": "success", "version": SUPERVISOR_VERSION})
            if path == "/v1/device":
                return _json(200, self._device())
            if path == "/v2/state/status":
                return _json(200, self._state_status())
            if path == "/sim/state":
                return _json(200, self.state())
            if path == "/sim/requests":
                return _json(200, [r.redacted() for r in self.requests_seen])
        elif method == "POST":
            if path == "/v1/update":
                status = self.trigger_update(
                    force=check_truthy(data.get("force")), cancel=check_truthy(data.get("cancel"))
                )
                return _empty(204) if status == 204 else _text(202, "Accepted")
            if path in ("/v1/reboot", "/v1/shutdown"):
                return self.power_action(path[4:], force=check_truthy(data.get("force")))
            stop = _STOP_SERVICE.fullmatch(path)
            if stop:
                if stop.group(1) != self.app_id:
                    # The key is scoped to this app.
                    return _json(401, {"status": "failed", "message": "Unauthorized"})
                name = data.get("serviceName")
                if not isinstance(name, str) or not name:
                    return _text(400, "Missing serviceName (send Content-Type: application/json)")
                self.stop_service(stop.group(1), name)
                return _text(200, "OK")
            if path == "/sim/release":
                commit = data.get("commit")
                commit = self.release(commit if isinstance(commit, str) and commit else None)
                return _json(200, {"target": commit})
            if path == "/sim/override-lock":
                enabled = data.get("enabled")
                if not isinstance(enabled, bool):
                    return _json(
                        400,
                        {"status": "failed", "message": 'expected {"enabled": true|false}'},
                    )
                self.set_override_lock(enabled)
                return _json(200, {"override_lock": enabled})
        return _text(404, "Not Found")


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    sim: SimulatorServer

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up mid-answer is not our problem; no traceback on stderr.
        self.sim.log.warning("simulator.request-failed", client=str(client_address))


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    server_version = "balena-supervisor-simulator"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:
        # The default writes the request line, ?apikey= included, to stderr. We log our own.
        return

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY_BYTES:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self, method: str) -> None:
        sim = self.server.sim
        split = urlsplit(self.path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        try:
            body = self._read_body()
        except ValueError:
            body = None
        if body is None:
            self.close_connection = True
            response = _text(413 if self.headers.get("Content-Length") else 400, "Bad body")
        else:
            if not path.startswith("/sim/"):
                sim._record(RecordedRequest(method, path, query, dict(self.headers.items()), body))
            response = sim._route(method, path, query, self.headers, body)
        status, content_type, payload = response
        sim.log.info("simulator.request", method=method, path=path, status=status)
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload is not None:
            self.wfile.write(payload)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


# ---- the command ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="update-lock simulate",
        description="A local stand-in for the balena Supervisor API and its update-lock rules.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to bind, 0 = any (default 48484)"
    )
    parser.add_argument(
        "--api-key",
        help=f"the key to require (default: $BALENA_SUPERVISOR_API_KEY, else {DEFAULT_API_KEY})",
    )
    parser.add_argument(
        "--lock-dir",
        required=True,
        help="the service's lock directory (where updates.lock / resin-updates.lock live)",
    )
    parser.add_argument("--pending", action="store_true", help="start with an update pending")
    parser.add_argument(
        "--release-after-s",
        type=float,
        default=None,
        help="a new release becomes pending this long after start, as if the cloud had one",
    )
    parser.add_argument(
        "--apply-s", type=float, default=3.0, help="how long an apply holds its lock (default 3)"
    )
    parser.add_argument(
        "--poll-interval-s",
        type=float,
        default=900.0,
        help="cap of the locked-retry backoff, like the real poll interval (default 900)",
    )
    parser.add_argument(
        "--app-id", default=os.environ.get("BALENA_APP_ID", "1"), help="default $BALENA_APP_ID or 1"
    )
    parser.add_argument(
        "--service-name",
        default=os.environ.get("BALENA_SERVICE_NAME", "main"),
        help="default $BALENA_SERVICE_NAME or main",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``update-lock simulate``: serve until SIGTERM or SIGINT, then exit 0."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port < 65536:
        parser.error(f"--port {args.port}: expected 0-65535")
    if args.apply_s < 0 or args.poll_interval_s <= 0:
        parser.error("--apply-s must be >= 0 and --poll-interval-s > 0")
    if not args.app_id.isdigit():
        parser.error(f"--app-id {args.app_id!r}: expected a number")
    if not os.path.isdir(args.lock_dir):
        parser.error(f"--lock-dir {args.lock_dir}: not a directory")
    if args.api_key:
        key, key_source = args.api_key, "argument"
    elif os.environ.get("BALENA_SUPERVISOR_API_KEY"):
        key, key_source = os.environ["BALENA_SUPERVISOR_API_KEY"], "env"
    else:
        key, key_source = DEFAULT_API_KEY, "default"

    log = Logger()
    sim = SimulatorServer(
        args.lock_dir,
        key,
        pending=args.pending,
        apply_s=args.apply_s,
        poll_interval_s=args.poll_interval_s,
        logger=log,
        host=args.host,
        port=args.port,
        app_id=args.app_id,
        service_name=args.service_name,
    )
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Where the key came from, never the key itself.
    log.info("simulator.api-key", source=key_source)
    try:
        try:
            sim.start()
        except OSError as error:
            log.error(
                "simulator.bind-failed",
                host=args.host,
                port=args.port,
                errno=errno.errorcode.get(error.errno or 0, "-"),
                detail=error.strerror,
            )
            return EX_UNAVAILABLE
        if args.release_after_s is not None:
            # Waiting on the stop event doubles as the timer: a signal ends it early.
            if stop.wait(max(args.release_after_s, 0.0)):
                log.info("simulator.stopping", signal=received[0] if received else None)
                return 0
            sim.release()
        stop.wait()
        log.info("simulator.stopping", signal=received[0] if received else None)
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
