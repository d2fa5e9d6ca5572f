"""The agent's link to the balena Supervisor: overrides, apply-on-release, update awareness.

HTTP never runs on the agent's loop: a worker thread makes every call (with the client's
bounded retries) and hands results back through a queue, waking the loop. The loop stays
free to react to holder files within milliseconds whatever the Supervisor is doing.

- Override (``override`` file, ``update-lock override``, or max-defer): release our lock so
  HUP reboots may pass too, then ``POST /v1/update {"force": true, "cancel": true}``, and stay
  released until the Supervisor reports the apply finished (``appState`` back to ``applied``
  after ``applying``), the container is replaced, or ``UPDATE_LOCK_OVERRIDE_GRACE`` passes.
- Apply-on-release: right after the agent releases its lock, ``{"cancel": true}`` when an
  update is pending, so it applies now rather than after the Supervisor's backoff.
- Awareness: ``GET /v1/device`` every poll interval; ``update_pending``, ``update_downloaded``
  and ``update_failed`` go to status.json; the pending-since time of an update held back by
  the lock survives restarts (in the trigger directory's state file), for max-defer.

Without the API (no address or key) the agent still locks; what needs the API says so once.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from update_lock import holders, status
from update_lock.daemon import Agent, AgentHook
from update_lock.errors import ApiError
from update_lock.logs import Logger
from update_lock.policy import Decision
from update_lock.supervisor_api import api_settings

__all__ = ["Link", "attach"]

# While an override is in force, how often to ask whether the apply finished.
APPLY_POLL = timedelta(seconds=2)
# How long an empty `override` file may wait for its writer's reason before it is acted on.
OVERRIDE_SETTLE = timedelta(seconds=1)


@dataclass(frozen=True)
class DeviceState:
    pending: bool | None
    downloaded: bool | None
    failed: bool | None


@dataclass(frozen=True)
class AppState:
    state: str


@dataclass(frozen=True)
class UpdateOutcome:
    kind: str  # "override" | "apply-on-release"
    ok: bool
    detail: str


@dataclass(frozen=True)
class ApiFailure:
    what: str
    detail: str


Result = DeviceState | AppState | UpdateOutcome | ApiFailure


def _flag(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


class Worker:
    """The one thread that talks HTTP. Tasks in, results out; the agent is woken per result."""

    def __init__(self, address: str, key: str, log: Logger, poll_interval: timedelta,
                 wake: Any) -> None:
        from update_lock.supervisor_api import SupervisorClient  # noqa: PLC0415  # requests

        self.client = SupervisorClient(address, key, logger=log)
        self.log = log
        self.poll_interval_s = poll_interval.total_seconds()
        self.wake = wake
        self.tasks: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self.results: queue.Queue[Result] = queue.Queue()
        self.watch_apply = threading.Event()
        self.pending: set[tuple[str, Any]] = set()
        self.pending_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="supervisor-api", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.tasks.put(None)
        # A request may be mid-retry: the thread is a daemon and dies with the process.
        self.thread.join(timeout=0.2)

    def submit(self, task: str, arg: Any = None) -> None:
        # One of each task waiting at a time: while a slow or failing Supervisor keeps the
        # worker busy, a burst of releases must not queue an apply request each, all sent
        # later (every `cancel` would restart an apply already under way).
        with self.pending_lock:
            if (task, arg) in self.pending:
                return
            self.pending.add((task, arg))
        self.tasks.put((task, arg))

    def _post(self, result: Result) -> None:
        self.results.put(result)
        self.wake()

    def _run(self) -> None:
        import time  # noqa: PLC0415

        next_poll = 0.0
        next_state = 0.0
        while True:
            now = time.monotonic()
            if now >= next_poll:
                self._poll_device()
                next_poll = time.monotonic() + self.poll_interval_s
            if self.watch_apply.is_set() and now >= next_state:
                self._poll_state()
                next_state = time.monotonic() + APPLY_POLL.total_seconds()
            wait = next_poll - time.monotonic()
            if self.watch_apply.is_set():
                wait = min(wait, next_state - time.monotonic())
            try:
                task = self.tasks.get(timeout=max(wait, 0.0))
            except queue.Empty:
                continue
            if task is None:
                self.client.close()
                return
            with self.pending_lock:
                self.pending.discard(task)  # from now on, a new request queues again
            self._do(*task)

    def _do(self, task: str, arg: Any) -> None:
        if task == "override":
            try:
                code = self.client.update(force=True, cancel=True)
                self._post(UpdateOutcome("override", True, f"HTTP {code}"))
            except ApiError as error:
                self._post(UpdateOutcome("override", False, str(error)))
        elif task == "apply-on-release":
            try:
                device = self.client.device()
            except ApiError as error:
                self._post(ApiFailure("GET /v1/device", str(error)))
                return
            self._post(self._device_state(device))
            if device.get("update_pending") is True:
                try:
                    code = self.client.update(force=False, cancel=True)
                    self._post(UpdateOutcome("apply-on-release", True, f"HTTP {code}"))
                except ApiError as error:
                    self._post(UpdateOutcome("apply-on-release", False, str(error)))
        elif task == "poll":
            self._poll_device()

    @staticmethod
    def _device_state(device: Mapping[str, object]) -> DeviceState:
        return DeviceState(
            _flag(device.get("update_pending")),
            _flag(device.get("update_downloaded")),
            _flag(device.get("update_failed")),
        )

    def _poll_device(self) -> None:
        try:
            self._post(self._device_state(self.client.device()))
        except ApiError as error:
            self._post(ApiFailure("GET /v1/device", str(error)))

    def _poll_state(self) -> None:
        try:
            state = self.client.state_status().get("appState")
        except ApiError as error:
            self._post(ApiFailure("GET /v2/state/status", str(error)))
            return
        if isinstance(state, str):
            self._post(AppState(state))


def instance_id() -> str:
    """Identifies this container: kept in its own /tmp (not a volume, not the lock dir), so a
    restart keeps it and a replaced container (a new release) gets a new one."""
    # TMPDIR as tempfile.gettempdir() would read it, without importing tempfile (memory).
    path = os.path.join(os.environ.get("TMPDIR") or "/tmp", "update-lock.instance")  # noqa: S108
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read(64).strip()
            if value:
                return value
    except OSError:
        pass
    value = os.urandom(8).hex()
    with contextlib.suppress(OSError), open(path, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value


class Link(AgentHook):
    def __init__(self, env: Mapping[str, str], log: Logger) -> None:
        self.log = log
        settings = api_settings(env)
        self.settings = settings if isinstance(settings, tuple) else None
        self.unavailable = settings if isinstance(settings, str) else ""
        self.worker: Worker | None = None
        self.instance = instance_id()
        self.device: DeviceState = DeviceState(None, None, None)
        self.api_error = ""
        self.was_held = False
        self.pending_override: dict[str, Any] | None = None
        self.saw_applying = False
        self.held_back_logged = False
        self.pending_since: datetime | None = None
        self.defer_fired = False
        self.override_settles_at: datetime | None = None

    # --- hook -------------------------------------------------------------------------------

    def start(self, agent: Agent) -> None:
        config = agent.config
        if self.settings is None:
            self.log.info("api.disabled", why=self.unavailable,
                          off="override-request,apply-on-release,update-awareness,max-defer")
        else:
            address, key = self.settings
            self.worker = Worker(address, key, self.log, config.poll_interval, agent.wake)
            self.worker.start()
            self.log.info("api.enabled", address=address,
                          poll_interval=int(config.poll_interval.total_seconds()))
        saved = agent.saved_state
        since = saved.get("pending_since")
        if isinstance(since, str):
            with contextlib.suppress(ValueError):
                value = datetime.fromisoformat(since)
                # The state file sits in the shared trigger directory: only an aware time in
                # the past can be ours (a naive one, or one near year 9999, would crash the
                # max-defer arithmetic on every wake).
                if value.tzinfo is not None and value <= agent.clock():
                    self.pending_since = value
        self.defer_fired = saved.get("defer_fired") is True
        override = agent.override
        if override is not None and override.get("instance") not in (None, self.instance):
            # The container was replaced since the override: the apply is over.
            self.log.info("override.ended", why="container-replaced")
            agent.set_override(dict(override, ended="container-replaced"), None)
        elif agent.override_until is not None and self.worker is not None:
            self.worker.watch_apply.set()
        agent.extra_status = self._status()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def observe(self, agent: Agent, scan: holders.Scan, now: datetime) -> None:
        self._drain(agent, now)
        self.override_settles_at = None
        if scan.override == "" and scan.override_mtime is not None:
            # An empty request may be one whose writer has created the file but not yet
            # written its reason (`echo reason > override` is two steps): the request is
            # consumed when acted on, so give the reason a moment to arrive.
            settles = datetime.fromtimestamp(scan.override_mtime, UTC) + OVERRIDE_SETTLE
            if now < settles:
                self.override_settles_at = settles
        if scan.override is not None and self.override_settles_at is None:
            self._request_override(agent, now, "request", scan.override or "override file")
            path = os.path.join(agent.config.trigger_dir, holders.OVERRIDE_FILE)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # the request is consumed once acted on
        if agent.override_until is not None and self.worker is not None:
            self.worker.watch_apply.set()
        self._max_defer(agent, now)
        agent.extra_status = self._status()

    def after_apply(self, agent: Agent, decision: Decision, now: datetime) -> None:
        held = bool(agent.held)
        if self.pending_override is not None and not held:
            record = self.pending_override
            self.pending_override = None
            if self.worker is None:
                self._outcome(agent, "released-only", "the Supervisor API is not configured ("
                              + self.unavailable + "): the update applies at the "
                              "Supervisor's next retry")
            else:
                self.log.info("override.requesting", by=record.get("by"),
                              request="POST /v1/update force=true cancel=true")
                self.worker.submit("override")
        elif (self.was_held and not held and agent.override_until is None
              and agent.config.apply_on_release and self.worker is not None):
                self.log.info("update.apply_on_release", request="POST /v1/update cancel=true",
                              when="update pending")
                self.worker.submit("apply-on-release")
        self.was_held = held
        if not held:
            self.held_back_logged = False

    def next_check(self, agent: Agent, now: datetime) -> datetime | None:
        due = [t for t in (self.max_defer_due(agent), self.override_settles_at) if t]
        return min(due) if due else None

    # --- override ---------------------------------------------------------------------------

    def _request_override(self, agent: Agent, now: datetime, by: str, reason: str) -> None:
        record: dict[str, Any] = {"by": by, "reason": reason, "at": status.iso(now),
                                  "instance": self.instance}
        if not agent.config.allow_override:
            self.log.warning("override.refused", by=by, reason=reason,
                             why="UPDATE_LOCK_ALLOW_OVERRIDE is off")
            agent.override = dict(record, outcome="refused",
                                  why="UPDATE_LOCK_ALLOW_OVERRIDE is off", until=None)
            return
        until = now + agent.config.override_grace
        self.log.info("override.received", by=by, reason=reason, released_until=status.iso(until))
        agent.set_override(dict(record, outcome="releasing"), until)
        self.pending_override = record
        self.saw_applying = False
        if self.worker is not None:
            self.worker.watch_apply.set()

    def _outcome(self, agent: Agent, outcome: str, detail: str) -> None:
        if agent.override is None:
            return
        level = self.log.info if outcome in ("requested", "released-only") else self.log.warning
        level("override." + outcome.replace("-", "_"), by=agent.override.get("by"), detail=detail)
        agent.override = dict(agent.override, outcome=outcome, detail=detail)
        agent.save_state_key("override", agent.override)

    def _max_defer(self, agent: Agent, now: datetime) -> None:
        config = agent.config
        held = bool(agent.held)
        if self.device.pending and held:
            if self.pending_since is None:
                self.pending_since = now
                self.defer_fired = False
                agent.save_state_key("pending_since", status.iso(now))
                agent.save_state_key("defer_fired", False)
            if not self.held_back_logged:
                self.held_back_logged = True
                self.log.info("update.held_back", pending_since=status.iso(self.pending_since),
                              reasons=agent.held_reasons)
            if (
                config.max_defer is not None
                and not self.defer_fired
                and agent.override_until is None
                and now - self.pending_since >= config.max_defer
            ):
                self.defer_fired = True
                agent.save_state_key("defer_fired", True)
                self._request_override(agent, now, "max-defer",
                                       "update pending for longer than UPDATE_LOCK_MAX_DEFER")
        elif self.device.pending is False and self.pending_since is not None:
            self.pending_since = None
            self.defer_fired = False
            agent.save_state_key("pending_since", None)
            agent.save_state_key("defer_fired", False)

    def max_defer_due(self, agent: Agent) -> datetime | None:
        if agent.config.max_defer is None or self.pending_since is None or self.defer_fired:
            return None
        return self.pending_since + agent.config.max_defer

    # --- results ----------------------------------------------------------------------------

    def _drain(self, agent: Agent, now: datetime) -> None:
        if self.worker is None:
            return
        while True:
            try:
                result = self.worker.results.get_nowait()
            except queue.Empty:
                return
            self._handle(agent, result, now)

    def _handle(self, agent: Agent, result: Result, now: datetime) -> None:
        if isinstance(result, DeviceState):
            if self.api_error:
                self.log.info("api.reachable")
                self.api_error = ""
            if self.device.pending and result.pending is False:
                self.log.info("update.applied", why="the Supervisor reports no update pending")
            elif result.pending and not self.device.pending and not agent.held:
                self.log.info("update.pending", downloaded=result.downloaded)
            self.device = result
        elif isinstance(result, AppState):
            if result.state == "applying":
                self.saw_applying = True
            elif result.state == "applied" and self.saw_applying and \
                    agent.override_until is not None:
                self.log.info("override.ended", why="apply-finished")
                agent.set_override(dict(agent.override or {}, ended="apply-finished"), None)
                self.saw_applying = False
                if self.worker is not None:
                    self.worker.watch_apply.clear()
                    self.worker.submit("poll")
        elif isinstance(result, UpdateOutcome):
            if result.kind == "override":
                self._outcome(agent, "requested" if result.ok else "failed", result.detail)
            elif result.ok:
                self.log.info("update.apply_requested", detail=result.detail)
            else:
                self.log.warning("update.apply_request_failed", detail=result.detail)
        elif isinstance(result, ApiFailure):
            if result.detail != self.api_error:
                self.log.warning("api.unreachable", request=result.what, error=result.detail)
            self.api_error = result.detail
        if agent.override_until is None and self.worker is not None:
            self.worker.watch_apply.clear()

    def _status(self) -> dict[str, Any]:
        return {
            "update_pending": self.device.pending,
            "update_downloaded": self.device.downloaded,
            "update_failed": self.device.failed,
            "api": {
                "enabled": self.worker is not None,
                "why": self.unavailable or None,
                "error": self.api_error or None,
            },
            "pending_since": status.iso(self.pending_since),
        }


def attach(agent: Agent, env: Mapping[str, str]) -> Link:
    link = Link(env, agent.log)
    agent.instance = link.instance
    agent.hooks.append(link)
    return link

