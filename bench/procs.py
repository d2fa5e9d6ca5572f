"""Processes and oracles for the benchmarks: the agent, supervisord, /proc, the host's check.

Ideas from tests/harness.py (own process groups, deadlines, a reaper), with two differences
that timing needs: output goes to a file (no reader thread to take the GIL from a polling
loop), and where the wait is the measurement it looks every 50 us (:class:`Poll`) instead of
every few milliseconds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import update_lock

DEADLINE_S = 10.0
# The host check takes the flock for an instant. Probing a file the agent created a few
# microseconds ago would make the agent's own flock() fail and sleep 2 ms (lockfile.py
# FLOCK_RETRY_S): the benchmark would measure itself. So existence is polled with stat()
# (invisible to the agent) and the host check runs only PROBE_GAP_NS after that, then at the
# same spacing: it bounds the error of the hold and re-take figures by this much.
PROBE_GAP_NS = 200_000


@dataclass
class Poll:
    """How the latency loops wait between two looks. Spinning takes one of this machine's
    two cores away from the agent (and from everything else); a 50 us sleep does not, and
    costs about that much resolution. ``--spin`` chooses the tight loop."""

    spin: bool = False
    pause_s: float = 50e-6


POLL = Poll()


@dataclass
class Probes:
    """Host checks that found the file there but not yet flocked. Each such probe held the
    flock for an instant, and an agent calling flock() in that instant waits 2 ms (lockfile.py
    FLOCK_RETRY_S): rounds with one are counted, so any such interference is visible."""

    early: int = 0


PROBES = Probes()
CLK_TCK = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")


class BenchError(Exception):
    """A benchmark could not measure what it set out to (a deadline passed, a process died)."""


def block_dir() -> Path:
    """The ``block/`` directory of the update_lock package this process imports: the agents
    run the same code (so ``PYTHONPATH=/tmp/copy/block python -m bench`` measures a copy)."""
    return Path(update_lock.__file__).resolve().parent.parent


def now_ns() -> int:
    return time.perf_counter_ns()


# --- the oracles ---------------------------------------------------------------------------

def host_sees_lock(path: str) -> bool:
    """The host OS (HUP) check, platform facts §7: open read-only WITHOUT creating, ask for a
    non-blocking exclusive flock; busy means held. Our own flock, if we got it, goes with the
    close."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def wait_for(condition: Callable[[], T | None], what: str, timeout_s: float = DEADLINE_S,
             pause_s: float = 0.001) -> T:
    """Poll ``condition`` (sleeping ``pause_s`` between looks) until it is truthy."""
    end = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise BenchError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(pause_s)


def _pause(until_ns: int) -> None:
    """Between two looks: spin (``POLL.spin``) or sleep ``POLL.pause_s``."""
    if POLL.spin:
        while now_ns() < until_ns:
            pass
    else:
        time.sleep(POLL.pause_s)


def until_held(path: str, start_ns: int, timeout_s: float = DEADLINE_S) -> int:
    """Poll until the host check sees ``path`` locked; the perf_counter_ns it first did."""
    end_ns = start_ns + int(timeout_s * 1e9)
    exists = os.path.exists
    while True:
        if exists(path):
            # Leave the agent PROBE_GAP_NS to flock the file it just created (see above).
            gap_end = now_ns() + PROBE_GAP_NS
            while now_ns() < gap_end:
                _pause(gap_end)
            if host_sees_lock(path):
                return now_ns()
            PROBES.early += 1
        else:
            _pause(now_ns() + int(POLL.pause_s * 1e9))
        if now_ns() > end_ns:
            raise BenchError(f"timed out after {timeout_s}s waiting for {path} to be held")


def until_gone(path: str, start_ns: int, timeout_s: float = DEADLINE_S) -> int:
    end_ns = start_ns + int(timeout_s * 1e9)
    exists = os.path.exists
    while exists(path):
        if now_ns() > end_ns:
            raise BenchError(f"timed out after {timeout_s}s waiting for {path} to go")
        _pause(now_ns() + int(POLL.pause_s * 1e9))
    return now_ns()


# --- /proc ---------------------------------------------------------------------------------

def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def _stat_fields(pid: int) -> list[str]:
    text = _read(f"/proc/{pid}/stat")
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def cpu_s(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_ns(pid: int) -> int | None:
    """Time on a CPU, summed over threads, from schedstat (ns resolution; None if absent)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            total += int(_read(f"/proc/{pid}/task/{tid}/schedstat").split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total


def sched(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for a CPU) of the main thread, from schedstat."""
    run, wait = _read(f"/proc/{pid}/schedstat").split()[:2]
    return int(run), int(wait)


def ctx_switches(pid: int) -> int:
    """voluntary + nonvoluntary context switches, summed over the process's threads
    (/proc/<pid>/status counts the main thread only)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # ENOENT: the thread just exited
            for line in _read(f"/proc/{pid}/task/{tid}/status").splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    total += int(line.split()[1])
    return total


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB from smaps_rollup."""
    values: dict[str, int] = {}
    for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("Rss:", "Pss:"):
            values[parts[0]] = int(parts[1])
    return values["Rss:"], values["Pss:"]


def start_ticks(pid: int) -> int:
    """When the process started, in clock ticks since boot (identifies it against pid reuse)."""
    return int(_stat_fields(pid)[19])


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def idle(pid: int) -> bool:
    """The process's main thread is asleep in its event loop (epoll/poll/select)."""
    try:
        state = _stat_fields(pid)[0]
        wchan = _read(f"/proc/{pid}/wchan")
    except OSError:
        return False
    if wchan.strip() in ("", "0"):
        return state == "S"  # a kernel that hides wchan: asleep is the best we can tell
    return state == "S" and any(w in wchan for w in ("epoll", "poll", "select"))


def wait_idle(pid: int, timeout_s: float = DEADLINE_S) -> None:
    """Until the process has been asleep in its loop at two looks 0.5 ms apart: whatever it
    was doing (a status write, the wake its own write caused) is over."""
    end = time.monotonic() + timeout_s
    while True:
        if idle(pid):
            time.sleep(0.0005)
            if idle(pid):
                return
        if time.monotonic() > end:
            raise BenchError(f"pid {pid} did not go idle within {timeout_s}s")
        time.sleep(0.0002)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in _read(f"/proc/{pid}/task/{pid}/children").split()]
    except OSError:
        return []


def cmdline(pid: int) -> str:
    try:
        return _read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()
    except OSError:
        return ""


# --- a workspace and its processes -----------------------------------------------------------

def base_env(**extra: str) -> dict[str, str]:
    """Our environment less anything that configures the agent, plus the package's path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UPDATE_LOCK_", "BALENA_", "RESIN_", "PYTHON"))}
    env.pop("TZ", None)
    env.update(PYTHONPATH=str(block_dir()), PYTHONUNBUFFERED="1")  # as the image sets it
    env.update(extra)
    return env


def fs_type(path: str) -> str:
    """The filesystem type under ``path`` (the longest mount point that contains it)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, fields[2]
    return kind


def tmpfs_dir() -> str | None:
    """Where a lock directory can live as it does on a device: the host's /tmp is a tmpfs
    (platform facts §2). None when there is no writable tmpfs."""
    for candidate in ("/dev/shm", "/run"):
        if os.access(candidate, os.W_OK) and fs_type(candidate) == "tmpfs":
            return candidate
    return None


class Workspace:
    """A temp lock directory (on a tmpfs, mode 1777, as on a device) and trigger directory
    (on the disk, as a named volume is)."""

    def __init__(self, name: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"update-lock-bench-{name}-"))
        self.lock_parent = Path(tempfile.mkdtemp(prefix=f"update-lock-bench-{name}-",
                                                 dir=tmpfs_dir() or self.root))
        self.lock_dir = self.lock_parent / "balena"
        self.lock_dir.mkdir()
        os.chmod(self.lock_dir, 0o1777)  # noqa: S103  # the Supervisor's mode (platform facts §3)
        self.trigger = self.root / "update-lock"
        self.trigger.mkdir()
        self.tmp = self.root / "tmp"
        self.tmp.mkdir()
        self.procs: list[Process] = []

    @property
    def lock(self) -> str:
        return str(self.lock_dir / "updates.lock")

    def holder(self, name: str) -> str:
        return str(self.trigger / f"{name}.lock")

    def env(self, **extra: str) -> dict[str, str]:
        env = base_env(
            UPDATE_LOCK_PATH=self.lock,
            UPDATE_LOCK_DIR=str(self.trigger),
            TMPDIR=str(self.tmp),
        )
        env.update(extra)
        return env

    def status(self) -> dict[str, Any] | None:
        try:
            value = json.loads((self.trigger / "status.json").read_bytes())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> Process:
        proc = Process(name, argv, env, self.root / f"{name}.log")
        self.procs.append(proc)
        return proc

    def agent(self, **extra: str) -> Process:
        return self.start("agent", [sys.executable, "-m", "update_lock", "run"],
                          self.env(**extra))

    def supervisord(self, **extra: str) -> Process:
        conf = self.root / "supervisord.conf"
        conf.write_text(supervisord_conf(self.root / "supervisord.pid"))
        return self.start("supervisord", [*supervisord_argv(), "-c", str(conf)],
                          self.env(**extra))

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            proc.kill()
        shutil.rmtree(self.lock_parent, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)


class Process:
    """A process in its own session, stdout+stderr appended to a log file."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        # O_APPEND: supervisord reopens /dev/stdout (this file) for the agent's lines.
        with open(log, "ab") as out:
            self.started_ns = now_ns()
            self.popen = subprocess.Popen(argv, env=dict(env), stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        # pid -> start time of every child seen, so a reused pid is never signalled.
        self.known_children: dict[int, int] = {}

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def count(self, prefix: str) -> int:
        return sum(1 for line in self.output().splitlines() if line.startswith(prefix))

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n"
                             + self.output()[-2000:])

    def _note_children(self) -> None:
        for pid in children(self.pid):
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.known_children.setdefault(pid, start_ticks(pid))

    def child(self, needle: str, timeout_s: float = DEADLINE_S) -> int:
        """The pid of a child whose command line contains ``needle`` (supervisord's
        programs run in process groups of their own: remembered, to be reaped by pid)."""
        def find() -> int | None:
            self._note_children()
            for pid in children(self.pid):
                if needle in cmdline(pid):
                    return pid
            return None
        return wait_for(find, f"{self.name}'s child {needle!r}", timeout_s)

    def stop(self, timeout_s: float = DEADLINE_S) -> int:
        """SIGTERM, the way supervisord and the engine stop it; wait for the exit."""
        if self.alive():
            self._note_children()
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"{self.name} did not stop within {timeout_s}s") from None

    def kill(self) -> None:
        """SIGKILL the process group and every child seen; idempotent."""
        if self.alive():
            self._note_children()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)
        for pid, started in self.known_children.items():
            try:
                if start_ticks(pid) != started:
                    continue  # the pid now belongs to someone else
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError, IndexError) as error:
                # ESRCH/ENOENT: it is gone already, which is all we wanted.
                if isinstance(error, OSError) and error.errno not in (errno.ESRCH, errno.ENOENT):
                    raise
        self.known_children.clear()


# --- supervisord ---------------------------------------------------------------------------

def supervisord_argv() -> list[str]:
    script = Path(sys.executable).parent / "supervisord"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from supervisor.supervisord import main; main()"]


@dataclass(frozen=True)
class _Rewrite:
    prefix: str
    replace: Callable[[str], str]


def supervisord_conf(pidfile: Path) -> str:
    """block/supervisord.conf with only what must differ outside the image: the programs run
    with this Python (``update-lock run`` is its console script) and the pidfile is ours."""
    python = shlex.quote(sys.executable)
    rewrites = [
        _Rewrite("command=update-lock ", lambda rest: f"command={python} -m update_lock {rest}"),
        _Rewrite("command=python3 ", lambda rest: f"command={python} {rest}"),
        _Rewrite("pidfile=", lambda _rest: f"pidfile={pidfile}"),
    ]
    source = block_dir() / "supervisord.conf"
    lines = []
    done = set()
    for original in source.read_text().splitlines():
        line = original
        for rewrite in rewrites:
            if line.startswith(rewrite.prefix):
                line = rewrite.replace(line[len(rewrite.prefix):])
                done.add(rewrite.prefix)
        lines.append(line)
    missing = [r.prefix for r in rewrites if r.prefix not in done]
    if missing:
        raise BenchError(f"{source} changed: no line starting with {missing}; update "
                         "bench/procs.py supervisord_conf")
    return "\n".join(lines) + "\n"
