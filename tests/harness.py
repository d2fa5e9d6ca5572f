"""Process-level test helpers: real agent subprocesses, real peers, waits with deadlines.

Nothing here sleeps to order events: every wait polls a condition (a log line, a file, a
status field) until a deadline, and fails with what it saw. Every process is started in its
own process group and killed at cleanup.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BLOCK = ROOT / "block"
PEERS = ROOT / "tests" / "peers"
DEADLINE_S = 10.0


_READABLE_PACKAGE: list[str] = []


def readable_package() -> str:
    """A PYTHONPATH with a copy of the package that any uid can read.

    Tests that run the agent as another uid (65534, 1000) cannot rely on the checkout: a
    clone made in `mktemp -d` is private to root. The agent without the API needs only the
    standard library, so the package alone is enough. One copy per test session.
    """
    if not _READABLE_PACKAGE:
        root = tempfile.mkdtemp(prefix="update-lock-pkg-", dir="/tmp")
        os.chmod(root, 0o755)  # noqa: S103  # readable by the uids the tests switch to
        shutil.copytree(BLOCK / "update_lock", os.path.join(root, "update_lock"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _READABLE_PACKAGE.append(root)
    return _READABLE_PACKAGE[0]


def as_uid_argv(uid: int) -> list[str]:
    """The argv prefix that runs a command as ``uid`` (util-linux setpriv)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.005)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UPDATE_LOCK_", "BALENA_", "RESIN_"))}
    env.pop("TZ", None)
    env["PYTHONPATH"] = str(BLOCK)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def read_status(trigger: Path) -> dict[str, Any] | None:
    """The agent's status.json in ``trigger``, or None while there is none (or it is odd)."""
    try:
        value = json.loads((trigger / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class Proc:
    """A subprocess whose stdout+stderr lines are collected by a thread."""

    def __init__(self, argv: list[str], env: Mapping[str, str], cwd: str | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(
            argv, env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509  # only ever a tiny async-signal-safe call
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            with self._lock:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def find(self, pattern: str, start: int = 0) -> list[str]:
        regex = re.compile(pattern)
        with self._lock:
            return [line for line in self.lines[start:] if regex.search(line)]

    def mark(self) -> int:
        with self._lock:
            return len(self.lines)

    def wait_line(self, pattern: str, timeout_s: float = DEADLINE_S, start: int = 0) -> str:
        try:
            found: list[str] = wait_for(lambda: self.find(pattern, start), repr(pattern),
                                        timeout_s)
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- output of {self.argv}:\n{self.output()}") from None
        return found[0]

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait_exit(self, timeout_s: float = DEADLINE_S) -> int:
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.argv} did not exit within {timeout_s}s\n"
                                 f"{self.output()}") from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)
        self._reader.join(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


class World:
    """A temp lock directory and trigger directory, and the processes started on them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        # The lock directory as the Supervisor leaves it: mode 1777, reachable by uid 65534
        # (pytest's own temp tree is private to root), so peers can run as nobody.
        self.lock_dir = Path(tempfile.mkdtemp(prefix="balena-", dir="/tmp"))
        os.chmod(self.lock_dir, 0o1777)  # noqa: S103  # exactly the Supervisor's mode
        self.trigger = tmp / "update-lock"
        self.trigger.mkdir()
        self.procs: list[Proc] = []

    @property
    def lock(self) -> Path:
        return self.lock_dir / "updates.lock"

    def env(self, **extra: str) -> dict[str, str]:
        return base_env(UPDATE_LOCK_PATH=str(self.lock), UPDATE_LOCK_DIR=str(self.trigger),
                        TMPDIR=str(self.tmp), **extra)

    def agent(self, **extra: str) -> Proc:
        env = self.env()
        env.update(extra)
        proc = Proc([sys.executable, "-m", "update_lock", "run"], env)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str, timeout_s: float = DEADLINE_S,
            **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "update_lock", *args], env=self.env(**extra),
                              capture_output=True, text=True, timeout=timeout_s)

    def status(self) -> dict[str, Any] | None:
        return read_status(self.trigger)

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], what: str,
                    timeout_s: float = DEADLINE_S) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            value = self.status()
            return value if value is not None and predicate(value) else None
        try:
            result: dict[str, Any] = wait_for(check, what, timeout_s)
        except AssertionError as error:
            raise AssertionError(f"{error}; last status: {self.status()}") from None
        return result

    def hold(self, name: str, reason: str = "") -> Path:
        path = self.trigger / f"{name}.lock"
        path.write_text(reason + "\n" if reason else "")
        return path

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.kill()
        shutil.rmtree(self.lock_dir, ignore_errors=True)


# --- the oracles (platform facts §7) -----------------------------------------------------------

def host_sees_lock(path: Path) -> bool:
    """The host OS (HUP) check: open read-only without creating, `flock -n -x` on that fd."""
    if not path.exists():
        return False
    result = subprocess.run(["sh", "-c", 'flock -n -x 9 9<"$1"', "sh", str(path)],
                            capture_output=True, timeout=10)
    if result.returncode not in (0, 1):
        # flock exits 1 when the lock is busy; the open may also fail if the file vanished.
        return False
    return result.returncode == 1


def supervisor_sees_lock(path: Path, as_uid: int | None = None) -> bool:
    """The Supervisor's check: procmail `lockfile -r 0` (an O_EXCL create). When it succeeds,
    it created the file: remove it again (it is ours, the test's)."""
    argv = ["lockfile", "-r", "0", str(path)]
    if as_uid is not None:
        argv = [*as_uid_argv(as_uid), *argv]
    result = subprocess.run(argv, capture_output=True, timeout=10)
    if result.returncode == 0:
        path.unlink()
        return False
    return True


def npm_lockfile_sees_lock(path: Path) -> bool:
    """The pre-v13.1 Supervisor's check: the npm `lockfile` package's lockSync (open 'wx')."""
    script = (
        "const lf = require('lockfile');"
        "try { lf.lockSync(process.argv[1]); lf.unlockSync(process.argv[1]); process.exit(0); }"
        "catch (e) { if (e.code === 'EEXIST') process.exit(1); throw e; }"
    )
    result = subprocess.run(["node", "-e", script, str(path)], cwd=PEERS, capture_output=True,
                            timeout=20)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 1


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


@contextmanager
def holding_flock(path: Path) -> Iterator[Proc]:
    """util-linux `flock` holding an exclusive flock on ``path`` (a live holder)."""
    proc = Proc(["flock", "-x", str(path), "sh", "-c", "echo held; exec sleep 600"], base_env())
    try:
        proc.wait_line("^held$")
        yield proc
    finally:
        proc.kill()
        # The group's SIGKILL lands on each process on its own time: wait until the flock is
        # really gone, so the caller's next step does not race a dying holder.
        wait_for(lambda: not flock_busy(path), f"the flock on {path} to be released")


def flock_busy(path: Path) -> bool:
    """Someone holds an flock on ``path`` (probed like the host does: read-only, no create)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def stat_key(path: Path) -> tuple[int, int]:
    info = os.lstat(path)
    return info.st_dev, info.st_ino
