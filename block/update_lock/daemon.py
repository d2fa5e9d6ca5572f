"""The agent's level-triggered shell around the pure :func:`~update_lock.policy.decide`.

Every wake (an inotify event or overflow, a timer, a signal) observes everything again,
decides, and applies the difference; every action is safe to repeat. At start-up the agent
reconciles what it finds on disk, its own leftover lock included (adopted, never deleted and
re-made, so protection does not lapse across a restart).

Only an intentional stop (SIGTERM, SIGINT) releases the lock. A crash keeps the file on disk
(the Supervisor stays held off) and the restarted agent adopts it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import signal
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from update_lock import __version__, holders, lockfile, status
from update_lock.config import Config, format_duration
from update_lock.errors import UpdateLockError
from update_lock.inotify import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
)
from update_lock.logs import Logger
from update_lock.policy import Decision, Observation, decide

__all__ = ["MAX_SLEEP", "Agent"]

# A Pi has no real-time clock: its time jumps when NTP syncs. Waking at least this often
# re-reads the clock, so a window edge is never missed by more than this.
MAX_SLEEP = timedelta(seconds=60)
# When something failed (a full disk, a missing directory), try again this soon.
RETRY_SLEEP = timedelta(seconds=5)
FLOCK_RETRY = timedelta(milliseconds=100)

_DIR_MASK = (
    IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE | IN_ATTRIB
    | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)
_PARENT_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ONLYDIR


def _now() -> datetime:
    return datetime.now(UTC)


def _errno_name(error: OSError) -> str:
    return errno.errorcode.get(error.errno or 0, str(error.errno))


def read_uptime() -> timedelta | None:
    """The host's uptime: /proc/uptime is not namespaced, so a container sees the device's."""
    try:
        with open("/proc/uptime", "rb") as handle:
            return timedelta(seconds=float(handle.read(64).split()[0]))
    except (OSError, ValueError, IndexError):
        return None


class Agent:
    def __init__(
        self,
        config: Config,
        log: Logger,
        *,
        clock: Callable[[], datetime] = _now,
        uptime: Callable[[], timedelta | None] = read_uptime,
    ) -> None:
        self.config = config
        self.log = log
        self.clock = clock
        self.uptime = uptime
        self.pid = os.getpid()
        # os.urandom, not secrets: `secrets` imports hmac and OpenSSL (~4 MiB) for 8 bytes.
        self.token = os.urandom(8).hex()
        self.stopping = False
        self.stop_signal: int | None = None
        self.held: dict[str, lockfile.Held] = {}
        self.held_reasons: tuple[str, ...] = ()
        self.held_since: datetime | None = None
        # Who is in the way, per path: ("supervisor" | "foreign", details), logged once.
        self.blocked: dict[str, lockfile.Occupant] = {}
        self.override: dict[str, Any] | None = None
        self.override_until: datetime | None = None
        self.first_seen: dict[str, datetime] = {}
        self.reported: set[tuple[str, str]] = set()
        self.stale_reported: set[str] = set()
        self.allow_until: datetime | None = None
        self.last_status: dict[str, Any] | None = None
        self.last_status_at = 0.0
        self.status_error = ""
        self.retry_soon = False
        self.step_failed = False
        self.last_decision: Decision | None = None
        self.watch_dirs: dict[int, str] = {}
        self.want_watch: dict[str, int] = {}
        self.inotify = Inotify()
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.extra_status: dict[str, Any] = {}
        self.instance: str | None = None
        self.holders: tuple[holders.Holder, ...] = ()
        self.saved_state: dict[str, Any] = {}
        self.hooks: list[AgentHook] = []

    # --- life cycle -------------------------------------------------------------------------

    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        # Only flags: the handler may run while the main thread is inside the logger (which
        # holds a non-reentrant lock), so logging here could deadlock the stop. The loop
        # logs it; set_wakeup_fd has already woken it.
        self.stop_signal = signum
        self.stopping = True

    def wake(self) -> None:
        """Wake the loop from another thread (the API worker)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_w, b"\0")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.selector.register(self.inotify.fd, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        config = self.config
        self.log.info(
            "agent.started",
            pid=self.pid,
            version=__version__,
            path=",".join(config.lock_paths),
            dir=config.trigger_dir,
            host_os=config.host_os,
            always=config.always,
            windows=len(config.windows),
            timezone=config.timezone,
        )
        if config.disable:
            self.log.info("agent.disabled", why="UPDATE_LOCK_DISABLE is on: holding nothing")
        self._load_state()
        for hook in self.hooks:
            hook.start(self)
        try:
            while not self.stopping:
                timeout = self.step()
                if self.stopping:
                    break
                self._wait(timeout)
        except Exception as error:
            # Keep the lock file: the Supervisor stays held off, and our restart adopts it.
            self.log.error("agent.crashed", error=f"{type(error).__name__}: {error}")
            raise
        finally:
            for hook in self.hooks:
                hook.stop()
        if self.stop_signal is not None:
            self.log.info("agent.stopping", signal=signal.Signals(self.stop_signal).name)
        self._shutdown()
        return 0

    def step(self) -> float:
        """One wake: observe, decide, apply, publish. Returns seconds until the next look."""
        self.retry_soon = False
        self.step_failed = False
        now = self.clock()
        try:
            self._arm_watches()
            observation = self._observe(now)
            decision = decide(self.config, now, observation)
            self._apply(decision, now)
            for hook in self.hooks:
                hook.after_apply(self, decision, now)
            self.last_decision = decision
            self._publish(decision, now)
        except (OSError, UpdateLockError) as error:
            self.log.warning("agent.retry", error=str(error), in_s=RETRY_SLEEP.seconds)
            self.retry_soon = True
            self.step_failed = True
            decision = self.last_decision or Decision(False, (), (), (), (), None, None, None)
        return self._timeout(decision, now)

    def _shutdown(self) -> None:
        for path in list(self.held):
            self._release(path, "stopping")
        if self.last_decision is not None:
            with contextlib.suppress(OSError):
                self._publish(self.last_decision, self.clock(), force=True)
        self.log.info("agent.stopped", pid=self.pid)
        self.selector.close()
        self.inotify.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    # --- waiting ----------------------------------------------------------------------------

    def _timeout(self, decision: Decision, now: datetime) -> float:
        limit = MAX_SLEEP
        if self.retry_soon or self.status_error or len(self.watch_dirs) < len(self.want_watch):
            limit = RETRY_SLEEP
        if self.config.host_os and any(not h.flocked for h in self.held.values()):
            limit = min(limit, FLOCK_RETRY)  # a busy probe outlasted our wait: try again soon
        if decision.next_check is not None:
            limit = min(limit, max(decision.next_check - now, timedelta(0)))
        for hook in self.hooks:
            hook_next = hook.next_check(self, now)
            if hook_next is not None:
                limit = min(limit, max(hook_next - now, timedelta(0)))
        # A timer firing a hair early would find the edge not yet reached: add a margin.
        return limit.total_seconds() + 0.001

    def _wait(self, timeout_s: float) -> None:
        """Block until an event that matters, a wake-up or the timeout."""
        deadline = time.monotonic() + timeout_s
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            ready = self.selector.select(remaining)
            relevant = False
            for key, _ in ready:
                if key.fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 4096):
                            pass
                    relevant = True
                else:
                    relevant = self._drain_inotify() or relevant
            if relevant:
                return

    def _drain_inotify(self) -> bool:
        relevant = False
        for event in self.inotify.read():
            if event.mask & IN_Q_OVERFLOW:
                self.log.warning("watch.overflow", why="inotify queue overflowed: rescanning")
                return True
            directory = self.watch_dirs.get(event.wd)
            if event.mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                if directory is not None and event.mask & IN_IGNORED:
                    del self.watch_dirs[event.wd]
                    self.log.warning("watch.lost", dir=directory)
                relevant = True
                continue
            if directory is None:
                continue
            if directory == self.config.trigger_dir and holders.is_own_file(event.name):
                # Our own writes never wake us; someone removing status.json does (it is
                # written again at once: services and the health check read it).
                if event.name == holders.STATUS_FILE and event.mask & (IN_DELETE | IN_MOVED_FROM):
                    relevant = True
                continue
            if self.step_failed and directory == self._lock_dir() and \
                    os.path.join(directory, event.name) in self.config.lock_paths:
                # Our own failed create and its clean-up (a full disk): retried on the timer
                # (RETRY_SLEEP) or another event, not in a tight loop of our own events.
                continue
            is_parent = directory not in (self.config.trigger_dir, self._lock_dir())
            if is_parent and os.path.join(directory, event.name) not in self.want_watch:
                continue  # a parent: only the watched directories' own names matter
            relevant = True
        return relevant

    def _lock_dir(self) -> str:
        return os.path.dirname(self.config.lock_path)

    def _arm_watches(self) -> None:
        """Watch both directories and their parents; re-arm what was lost (a deleted and
        recreated directory silently kills its watch)."""
        wanted = [self.config.trigger_dir, self._lock_dir()]
        for directory in wanted:
            if not os.path.isdir(directory):
                self._make_dir(directory)
        targets: dict[str, int] = {}
        for directory in wanted:
            targets[directory] = _DIR_MASK
            targets.setdefault(os.path.dirname(directory) or "/", _PARENT_MASK)
        self.want_watch = targets
        for directory, mask in targets.items():
            # Asked on every wake, not only when a watch looks lost: a watch follows its inode,
            # so a directory moved away (IN_MOVE_SELF), or deleted and re-created while a queue
            # overflow dropped its IN_IGNORED, would leave us watching the wrong inode. For
            # the same inode the kernel hands back the same wd: nothing changes then.
            try:
                wd = self.inotify.add_watch(directory, mask)
            except UpdateLockError:
                wd = -1  # missing for now: retried on the next wake (RETRY_SLEEP)
            for old, name in list(self.watch_dirs.items()):
                if name == directory and old != wd:
                    del self.watch_dirs[old]
                    self.inotify.rm_watch(old)  # EINVAL (already gone) is ignored there
                    self.log.warning("watch.lost", dir=directory)
            if wd >= 0:
                self.watch_dirs[wd] = directory

    def _make_dir(self, directory: str) -> None:
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as error:
            key = ("mkdir:" + directory, _errno_name(error))
            if key not in self.reported:
                self.reported.add(key)
                self.log.warning("dir.unavailable", dir=directory, error=_errno_name(error))
            return
        self.log.info("dir.created", dir=directory)

    # --- observing --------------------------------------------------------------------------

    def _observe(self, now: datetime) -> Observation:
        for path, held in list(self.held.items()):
            if not lockfile.check(held):
                self._overridden(path, held, now)
        config = self.config
        stale_before = None
        if config.holder_ttl is not None:
            stale_before = (now - config.holder_ttl).timestamp()
        scan = holders.scan(config.trigger_dir, stale_before=stale_before)
        if scan.missing:
            self.retry_soon = True
            key = ("scan:" + config.trigger_dir, scan.error or "ENOENT")
            if scan.error and key not in self.reported:
                self.log.warning("trigger.unreadable", dir=config.trigger_dir, error=scan.error)
            self.reported.add(key)
        self._report_ignored(scan)
        self.allow_until = self._parse_allow(scan.allow_until)
        for hook in self.hooks:
            hook.observe(self, scan, now)
        seen = {h.name for h in scan.holders}
        for name in list(self.first_seen):
            if name not in seen:
                del self.first_seen[name]
                self.stale_reported.discard(name)
                self.log.info("holder.removed", name=name)
        for holder in scan.holders:
            if holder.name not in self.first_seen:
                self.first_seen[holder.name] = now
                self.log.info("holder.added", name=holder.name, reason=holder.reason or None)
        self.holders = scan.holders
        return Observation(
            holders=scan.holders,
            allow_until=self.allow_until,
            uptime=self.uptime() if config.boot_window else None,
            override_until=self.override_until,
        )

    def _report_ignored(self, scan: holders.Scan) -> None:
        current = {(i.entry, i.why) for i in scan.ignored}
        for entry, why in sorted(current - self.reported):
            self.log.warning("trigger.ignored", entry=entry, why=why)
        # Forget what is gone, so it is reported again if it comes back; keep other keys.
        self.reported = {k for k in self.reported
                         if k in current or k[0].startswith(("mkdir:", "scan:"))}
        self.reported |= current

    def _parse_allow(self, text: str | None) -> datetime | None:
        if text is None:
            return None
        try:
            value = datetime.fromisoformat(text)
            if value.tzinfo is None:
                value = value.replace(tzinfo=self.config.tz)  # a wall time in the block's zone
            return value.astimezone(UTC)
        except (ValueError, OverflowError) as error:
            # OverflowError: a time at the calendar's edge that UTC cannot hold
            # (9999-12-31T23:59-12:00): written by anyone, so ignored, never fatal.
            key = (holders.ALLOW_FILE, "bad-time:" + text)
            if key not in self.reported:
                self.log.warning(
                    "trigger.ignored",
                    entry=holders.ALLOW_FILE,
                    why="out of range" if isinstance(error, OverflowError)
                    else "not an ISO 8601 time",
                    value=text,
                )
            self.reported.add(key)
            return None

    def _overridden(self, path: str, held: lockfile.Held, now: datetime) -> None:
        """Someone unlinked or replaced our lock: a forced update or the dashboard toggle."""
        lockfile.drop(held)
        del self.held[path]
        until = now + self.config.override_grace
        self.log.warning(
            "lock.overridden",
            path=path,
            by="external",
            released_until=status.iso(until),
            why="lock file removed by someone else (forced update or override toggle)",
        )
        self.set_override({"by": "external", "at": status.iso(now), "path": path}, until)
        # Drop the other path too: holding half a lock protects nothing the override allowed.
        for other in list(self.held):
            self._release(other, "override")

    def set_override(self, record: dict[str, Any], until: datetime | None) -> None:
        self.override_until = until
        self.override = dict(record, until=status.iso(until))
        if self.instance is not None:
            self.override.setdefault("instance", self.instance)
        self._save_state()

    # --- applying ---------------------------------------------------------------------------

    def _record(self, reasons: tuple[str, ...]) -> bytes:
        since = status.iso(self.held_since or self.clock()) or ""
        return lockfile.encode_record(self.pid, self.token, since, reasons)

    def _apply(self, decision: Decision, now: datetime) -> None:
        config = self.config
        if decision.lock:
            if not self.held:
                self.held_since = now
            record = self._record(decision.reasons)
            for path in config.lock_paths:
                if path not in self.held:
                    self._acquire(path, record, decision)
                    if path not in self.held:
                        break  # the legacy name only ever goes with the main lock
                elif decision.reasons != self.held_reasons:
                    lockfile.rewrite(self.held[path], record)
                    self.log.info("lock.reasons", path=path, reasons=decision.reasons)
                if path in self.held and config.host_os and not self.held[path].flocked:
                    lockfile.ensure_flock(self.held[path])
            self.held_reasons = decision.reasons
            return
        for path in list(self.held):
            self._release(path, ",".join(decision.openings) or "nothing-asks")
        self.held_since = None
        self.held_reasons = ()
        # A lock file our previous run left behind, that nothing asks for any more.
        for path in config.lock_paths:
            occupant = lockfile.inspect(path)
            if occupant.kind != "supervisor" or path not in self.blocked:
                # Only what stands in our way is reported: a Supervisor lock that appears
                # while we want nothing is the Supervisor's business, not a blockage.
                self.blocked.pop(path, None)
            if occupant.kind == "ours":
                adopted = lockfile.adopt(path, occupant, self._record(()), use_flock=True)
                if adopted is not None:
                    lockfile.release(adopted)
                    self.log.info("lock.released", path=path, why="leftover-from-previous-run",
                                  previous_pid=occupant.pid)
                    self.blocked.pop(path, None)

    def _acquire(self, path: str, record: bytes, decision: Decision) -> None:
        use_flock = self.config.host_os
        for _ in range(3):  # "exists" then "gone" is a race with its owner: look again
            result = lockfile.create(path, record, use_flock=use_flock)
            if isinstance(result, lockfile.Held):
                self.held[path] = result
                self.blocked.pop(path, None)
                self.log.info("lock.acquired", path=path, reasons=decision.reasons,
                              host_os=result.flocked)
                self._flock_warning(result)
                return
            if result.kind == "ours":
                adopted = lockfile.adopt(path, result, record, use_flock=use_flock)
                if adopted is not None:
                    self.held[path] = adopted
                    self.blocked.pop(path, None)
                    self.log.info("lock.adopted", path=path, previous_pid=result.pid,
                                  reasons=decision.reasons)
                    return
                result = lockfile.Occupant("foreign", result.uid, result.dev, result.ino,
                                           result.record, "held by another live agent")
            if result.kind != "absent":
                self._note_occupant(path, result)
                return

    def _flock_warning(self, held: lockfile.Held) -> None:
        if self.config.host_os and not held.flocked:
            self.log.warning("lock.flock_pending", path=held.path,
                             why="flock busy: host OS updates not yet held, retrying")

    def _note_occupant(self, path: str, occupant: lockfile.Occupant) -> None:
        """Report, once per change, who is in the way at a path we do not hold."""
        if occupant.kind in ("absent", "ours"):
            if path in self.blocked:
                self.log.info("lock.unblocked", path=path)
                del self.blocked[path]
            return
        previous = self.blocked.get(path)
        self.blocked[path] = occupant
        if previous is not None and (previous.kind, previous.ino) == (occupant.kind, occupant.ino):
            return
        if occupant.kind == "supervisor":
            self.log.info("lock.blocked", path=path, by="supervisor", uid=occupant.uid,
                          why="the Supervisor is applying an update: waiting for its lock to go")
        else:
            self.log.warning("lock.foreign", path=path, uid=occupant.uid, pid=occupant.pid,
                             why=occupant.detail or "a lock file this agent did not create: "
                             "left alone")

    def _release(self, path: str, why: str) -> None:
        held = self.held.pop(path)
        unlinked = lockfile.release(held)
        self.log.info("lock.released", path=path, why=why, unlinked=unlinked)

    # --- publishing -------------------------------------------------------------------------

    def status_dict(self, decision: Decision, now: datetime) -> dict[str, Any]:
        config = self.config
        live = set(decision.live_holders)
        for name in decision.stale_holders:
            if name not in self.stale_reported:
                self.stale_reported.add(name)
                self.log.warning("holder.stale", name=name, ttl=format_duration(
                    config.holder_ttl or timedelta(0)))
        for name in live:
            self.stale_reported.discard(name)
        foreign = next((
            {"path": p, "uid": o.uid, "pid": o.pid}
            for p, o in self.blocked.items() if o.kind == "foreign"), None)
        held_paths = [p for p in config.lock_paths if p in self.held]
        value: dict[str, Any] = {
            "locked": config.lock_path in self.held,
            "paths": held_paths,
            "host_os": bool(held_paths) and all(self.held[p].flocked for p in held_paths),
            "reasons": list(decision.reasons) if held_paths else [],
            "openings": list(decision.openings),
            "holders": [
                {
                    "name": h.name,
                    "reason": h.reason,
                    "since": status.iso(self.first_seen.get(h.name)),
                    "live": h.name in live,
                }
                for h in self.holders
            ],
            "window": None if decision.window_open is None else {
                "open": decision.window_open,
                "next_change": status.iso(decision.window_next_change),
            },
            "allow_until": status.iso(self.allow_until) if self.allow_until and
            self.allow_until > now else None,
            "blocked_by_supervisor": any(o.kind == "supervisor" for o in self.blocked.values()),
            "foreign_lock": foreign,
            "override": self.override,
            "disabled": config.disable,
            "pid": self.pid,
            "version": __version__,
        }
        value.update(self.extra_status)
        return value

    def _publish(self, decision: Decision, now: datetime, *, force: bool = False) -> None:
        value = self.status_dict(decision, now)
        if self.stopping:
            value["stopping"] = True
        fresh = time.monotonic() - self.last_status_at < status.HEARTBEAT.total_seconds()
        if value == self.last_status and fresh and not force and not self.status_error and \
                os.path.exists(os.path.join(self.config.trigger_dir, holders.STATUS_FILE)):
            return  # unchanged and still there (a deleted or re-created directory loses it)
        try:
            status.write(self.config.trigger_dir, dict(value, updated_at=status.iso(now)))
        except OSError as error:
            if self.status_error != _errno_name(error):
                self.log.warning("status.unwritable", dir=self.config.trigger_dir,
                                 error=_errno_name(error))
            self.status_error = _errno_name(error)
            return
        if self.status_error:
            self.log.info("status.writable", dir=self.config.trigger_dir)
        self.status_error = ""
        self.last_status = value
        self.last_status_at = time.monotonic()

    # --- state that survives a restart ------------------------------------------------------

    def _state_path(self) -> str:
        return os.path.join(self.config.trigger_dir, holders.STATE_FILE)

    def _load_state(self) -> None:
        try:
            # The trigger directory is shared: follow no link, never block on a FIFO.
            fd = os.open(self._state_path(), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as error:
            self.log.warning("state.unreadable", path=self._state_path(),
                             error=_errno_name(error))
            return
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError("not a regular file")
            state = json.loads(os.read(fd, 1 << 16))
        except (OSError, ValueError) as error:
            self.log.warning("state.unreadable", path=self._state_path(), error=str(error))
            return
        finally:
            os.close(fd)
        if not isinstance(state, dict):
            return
        self.saved_state = state
        override = state.get("override")
        if isinstance(override, dict) and isinstance(override.get("until"), str):
            try:
                until = datetime.fromisoformat(override["until"])
            except ValueError:
                return
            if until.tzinfo is not None and until > self.clock():
                self.override = override
                self.override_until = until
                self.log.info("override.resumed", until=override["until"])

    def _save_state(self) -> None:
        state = dict(self.saved_state, override=self.override)
        self.saved_state = state
        path = self._state_path()
        try:
            status.replace_file(path, json.dumps(state).encode(),
                                f"{holders.STATE_FILE}.{self.pid}.tmp")
        except OSError as error:
            self.log.warning("state.unwritable", path=path, error=_errno_name(error))

    def save_state_key(self, key: str, value: object) -> None:
        self.saved_state = dict(self.saved_state, **{key: value})
        self._save_state()


class AgentHook:
    """Extension points the Supervisor API link plugs into (does nothing by default)."""

    def start(self, agent: Agent) -> None:
        return None

    def stop(self) -> None:
        return None

    def observe(self, agent: Agent, scan: holders.Scan, now: datetime) -> None:
        return None

    def after_apply(self, agent: Agent, decision: Decision, now: datetime) -> None:
        return None

    def next_check(self, agent: Agent, now: datetime) -> datetime | None:
        return None
