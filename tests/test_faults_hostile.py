"""A hostile trigger directory and a hostile file system: the agent never blocks, never follows
a link, reads a few hundred bytes at most of any file, and converges on what is really there.

The trigger directory is a named volume shared with other services, any of which may be
careless or worse. Whatever they leave in it, the agent must keep the lock exactly right.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from harness import Proc, World, have, wait_for

REACT_S = 3.0  # "reacts" means well under RETRY_SLEEP (5 s) and MAX_SLEEP (60 s)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def names(status: dict[str, Any]) -> list[str]:
    return [h["name"] for h in status["holders"]]


def no_trouble(agent: Proc) -> None:
    assert agent.popen.poll() is None, agent.output()
    for bad in (r"agent\.crashed", r"Traceback", r"agent\.retry"):
        assert agent.find(bad) == [], agent.output()


def rchar(pid: int) -> int:
    """Bytes the process has read with read(2) and friends, ever (/proc/PID/io)."""
    with open(f"/proc/{pid}/io", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar")


def queue_limit() -> int:
    with open("/proc/sys/fs/inotify/max_queued_events", encoding="ascii") as handle:
        return int(handle.read())


def burst(directory: Path, events: int) -> None:
    """Create and delete holder files until more than ``events`` inotify events are queued
    (each file: IN_CREATE, IN_CLOSE_WRITE, IN_DELETE)."""
    base = os.fsencode(directory)
    for i in range(events // 3 + 1000):
        path = base + b"/burst%d.lock" % i
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        os.unlink(path)


@contextlib.contextmanager
def stopped(agent: Proc) -> Iterator[None]:
    agent.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        agent.signal(signal.SIGCONT)


# --- inotify overflow and lost watches ----------------------------------------------------------

def test_event_overflow_rescans_and_converges(world: World) -> None:
    agent = world.agent()
    world.hold("keep")
    world.wait_status(lambda s: s["locked"] and names(s) == ["keep"], "locked by keep")
    with stopped(agent):
        burst(world.trigger, queue_limit())
        (world.trigger / "keep.lock").unlink()
        world.hold("final-a", "first")
        world.hold("final-b")
        assert world.lock.exists(), "a stopped agent keeps its lock"
    line = agent.wait_line(r"^WARNING watch\.overflow ")
    assert line == 'WARNING watch.overflow why="inotify queue overflowed: rescanning"'
    status = world.wait_status(lambda s: names(s) == ["final-a", "final-b"] and s["locked"],
                               "the final set after the rescan", timeout_s=REACT_S)
    assert status["reasons"] == ["holder:final-a", "holder:final-b"]
    assert agent.find(r"^holder\.added name=burst") == [], "rescanned, not replayed"
    # And it keeps reacting to single events afterwards.
    for name in ("final-a", "final-b"):
        (world.trigger / f"{name}.lock").unlink()
    world.wait_status(lambda s: not s["locked"] and s["holders"] == [], "released",
                      timeout_s=REACT_S)
    assert not world.lock.exists()
    no_trouble(agent)


def test_overflow_that_swallowed_a_recreated_directory_still_rearms(world: World) -> None:
    """The queue is full, so the deleted directory's IN_IGNORED is dropped with everything
    else: the agent must not keep trusting a watch on a directory that is gone."""
    agent = world.agent()
    world.wait_status(lambda s: not s["locked"], "started")
    with stopped(agent):
        burst(world.trigger, queue_limit())
        shutil.rmtree(world.trigger)
        world.trigger.mkdir()
        world.hold("after")
    agent.wait_line(r"^WARNING watch\.overflow ")
    world.wait_status(lambda s: s["locked"] and names(s) == ["after"], "locked by after",
                      timeout_s=REACT_S)
    (world.trigger / "after.lock").unlink()
    world.wait_status(lambda s: not s["locked"] and s["holders"] == [],
                      "released: the new directory is watched", timeout_s=REACT_S)
    world.hold("again")
    world.wait_status(lambda s: s["locked"] and names(s) == ["again"], "locked again",
                      timeout_s=REACT_S)
    no_trouble(agent)


def test_trigger_dir_moved_away_is_replaced_and_watched(world: World) -> None:
    """A watch follows its inode, not its path: after `mv`, the old watch sees the moved
    directory. The agent must watch the new directory at the configured path."""
    agent = world.agent()
    world.hold("a")
    world.wait_status(lambda s: s["locked"], "locked by a")
    moved = world.tmp / "moved-away"
    world.trigger.rename(moved)
    agent.wait_line(rf"^dir\.created dir={world.trigger}$")
    world.wait_status(lambda s: not s["locked"] and s["holders"] == [],
                      "released: its holder left with the old directory", timeout_s=REACT_S)
    world.hold("b")
    world.wait_status(lambda s: s["locked"] and names(s) == ["b"],
                      "a holder in the new directory", timeout_s=REACT_S)
    (moved / "ghost.lock").write_text("")
    (world.trigger / "b.lock").unlink()
    world.wait_status(lambda s: not s["locked"] and s["holders"] == [], "released",
                      timeout_s=REACT_S)
    no_trouble(agent)


# --- names and contents -------------------------------------------------------------------------

HOSTILE_NAMES: dict[bytes, str] = {
    b"has space.lock": "invalid-holder-name",
    "ünïcödé.lock".encode(): "invalid-holder-name",
    "名前.lock".encode(): "invalid-holder-name",
    b".hidden.lock": "invalid-holder-name",
    b"..lock": "invalid-holder-name",
    b".lock": "invalid-holder-name",
    b"bad\xff\xfe.lock": "invalid-holder-name",
    b"evil\nlock.acquired path=x.lock": "invalid-holder-name",
    b"\x1b[2Jclear.lock": "invalid-holder-name",
    b"tab\there.lock": "invalid-holder-name",
    b"a" * 65 + b".lock": "invalid-holder-name",
    b"b" * 250 + b".lock": "invalid-holder-name",  # 255 bytes: NAME_MAX
    b"no-suffix": "not-a-holder-name",
    b"x.lock.bak": "not-a-holder-name",
}


def test_hostile_names_binary_and_huge_files(world: World) -> None:
    # 300 characters cannot even be a name (NAME_MAX is 255 bytes): the file system says so.
    for name in ("c" * 300 + ".lock", "é" * 300 + ".lock"):
        with pytest.raises(OSError) as refused:
            (world.trigger / name).write_text("")
        assert refused.value.errno == errno.ENAMETOOLONG
    trigger = os.fsencode(world.trigger)
    for name in HOSTILE_NAMES:
        with open(trigger + b"/" + name, "wb") as handle:
            handle.write(b"hostile\n")
    world.hold("a" * 64, "longest valid name")
    agent = world.agent()
    world.wait_status(lambda s: names(s) == ["a" * 64], "the valid one only")
    before = rchar(agent.pid)

    (world.trigger / "bin.lock").write_bytes(
        b"\x1b[31m\x00\x07evil\rre\x7fason\xff\xfe\x9b" + bytes(random.randrange(256)
                                                                 for _ in range(300)))
    huge = world.trigger / "huge.lock"
    huge.write_bytes(b"huge reason\n")
    os.truncate(huge, 4 << 30)  # 4 GiB, sparse
    (world.trigger / "long-line.lock").write_bytes(b"x" * (4 << 20))  # 4 MiB, no newline
    expected = ["a" * 64, "bin", "huge", "long-line"]
    status = world.wait_status(
        lambda s: names(s) == expected and s["locked"] and s["holders"][2]["reason"] != ""
        and s["holders"][3]["reason"] != "", "all holders, written")
    read = rchar(agent.pid) - before
    assert read < 1 << 20, f"the agent read {read} bytes to scan a 4 GiB and a 4 MiB file"

    reasons = {h["name"]: h["reason"] for h in status["holders"]}
    assert reasons["huge"] == "huge reason"
    assert reasons["long-line"] == "x" * 200
    assert reasons["a" * 64] == "longest valid name"
    assert len(reasons["bin"]) <= 200 and reasons["bin"].isprintable(), reasons["bin"]
    assert "\x1b" not in agent.output() and "\x07" not in agent.output()

    ignored = agent.find(r"^WARNING trigger\.ignored ")
    assert len(ignored) == len(HOSTILE_NAMES), "each reported once:\n" + "\n".join(ignored)
    for name, why in HOSTILE_NAMES.items():
        shown = name.decode("utf-8", "replace")  # as the harness decodes the agent's output
        hits = [line for line in ignored if line.endswith(f" why={why}") and (
            f"entry={shown} " in line or f"entry={json.dumps(shown, ensure_ascii=False)} "
            in line)]
        assert len(hits) == 1, (name, ignored)
    # One event per line: a name with a newline cannot forge a log line.
    assert not [line for line in agent.lines if line.startswith("lock.acquired path=x")]
    no_trouble(agent)


# --- links: never followed, never read ------------------------------------------------------------

_OPEN = re.compile(r'^openat\(AT_FDCWD, "((?:\\x[0-9a-f]{2})*)", ([A-Z_|]+)(?:, \d+)?\) = (-?\d+)')
_READ = re.compile(r"^(?:read|pread64)\((\d+), .*, (\d+)(?:, \d+)?\) = (-?\d+)")
_CLOSE = re.compile(r"^close\((\d+)\)")


def _unhex(text: str) -> str:
    return os.fsdecode(bytes(int(h, 16) for h in re.findall(r"\\x([0-9a-f]{2})", text)))


@pytest.mark.skipif(not have("strace"), reason="needs strace to see every open and read")
def test_the_agent_follows_no_link_and_reads_a_few_hundred_bytes(world: World) -> None:
    outside = world.tmp / "outside"
    outside.mkdir()
    target = outside / "target.lock"
    target.write_text("SECRET-TARGET-CONTENT\n")
    os.mkfifo(outside / "fifo")
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    (outside / "allow").write_text(future + "\n")
    (outside / "override").write_text("SECRET-OVERRIDE\n")
    links = {
        "shadow.lock": "/etc/shadow",
        "dangling.lock": "/nonexistent/nothing",
        "loop-a.lock": "loop-b.lock",
        "loop-b.lock": "loop-a.lock",
        "self.lock": "self.lock",
        "elsewhere.lock": str(target),
        "fifo-target.lock": str(outside / "fifo"),
        "dirlink.lock": str(outside),
        "allow-until": str(outside / "allow"),
        "override": str(outside / "override"),
    }
    for name, where in links.items():
        (world.trigger / name).symlink_to(where)
    huge = world.trigger / "huge.lock"
    huge.write_bytes(b"huge\n")
    os.truncate(huge, 8 << 30)
    (world.trigger / "long.lock").write_bytes(b"y" * (1 << 20))

    trace = world.tmp / "strace.txt"
    agent = Proc(["strace", "-qq", "-xx", "-s", "600", "-o", str(trace),
                  "-e", "trace=openat,read,pread64,close",
                  sys.executable, "-m", "update_lock", "run"],
                 world.env(UPDATE_LOCK_ALWAYS="true"))
    world.procs.append(agent)
    status = world.wait_status(lambda s: s["locked"] and names(s) == ["huge", "long"],
                               "locked, the two real holders only", timeout_s=20)
    assert status["allow_until"] is None, "a symlinked allow-until must not count"
    assert status["reasons"] == ["always", "holder:huge", "holder:long"]
    assert status["override"] is None, "a symlinked override must not count"
    world.hold("real")  # the agent is not stuck on anything: it still reacts
    world.wait_status(lambda s: names(s) == ["huge", "long", "real"], "a new holder")
    # SIGTERM to the agent itself (strace would detach and leave it running); strace exits
    # with its tracee.
    pid = int(agent.wait_line(r"^agent\.started pid=").split()[1].split("=")[1])
    os.kill(pid, signal.SIGTERM)
    assert agent.wait_exit(timeout_s=20) == 0

    trigger = str(world.trigger)
    own = ("status.json", ".status.json.", ".update-lock")
    fds: dict[int, str] = {}
    opened: list[tuple[str, str]] = []
    read_from: dict[str, int] = {}
    for line in trace.read_text().splitlines():
        if match := _OPEN.match(line):
            path, flags, result = _unhex(match[1]), match[2], int(match[3])
            opened.append((path, flags))
            if result >= 0:
                fds[result] = path
        elif match := _READ.match(line):
            path = fds.get(int(match[1]), "")
            if path.startswith(trigger + "/"):
                assert int(match[2]) <= 256, f"asked for {match[2]} bytes of {path}"
                read_from[path] = read_from.get(path, 0) + max(int(match[3]), 0)
        elif match := _CLOSE.match(line):
            fds.pop(int(match[1]), None)
    assert opened, "strace saw nothing"
    for path, flags in opened:
        assert not path.startswith((str(outside), "/etc/shadow", "/nonexistent")), path
        name = path[len(trigger) + 1:] if path.startswith(trigger + "/") else None
        if name is None or name.startswith(own):
            continue
        assert name not in links, f"opened the symlink {name}"
        assert "O_NOFOLLOW" in flags and "O_NONBLOCK" in flags, (path, flags)
    assert set(read_from) >= {f"{trigger}/huge.lock", f"{trigger}/long.lock"}
    assert os.lstat(world.trigger / "override").st_mode & stat.S_IFLNK, "left alone"
    output = agent.output()
    assert "SECRET" not in output and "SECRET" not in (world.trigger / "status.json").read_text()


# --- FIFOs, sockets, devices, directories ------------------------------------------------------

def test_fifos_sockets_devices_and_directories_never_block_the_agent(world: World) -> None:
    trigger = world.trigger
    for name in ("fifo.lock", "allow-until", "override", ".update-lock-state.json"):
        os.mkfifo(trigger / name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(trigger / "sock.lock"))
    sock.listen(1)
    (trigger / "dir.lock").mkdir()
    (trigger / "dir.lock" / "inner.lock").write_text("")
    expected_ignored = {"fifo.lock", "allow-until", "override", "sock.lock", "dir.lock"}
    with contextlib.suppress(PermissionError):  # no CAP_MKNOD: the device case is skipped
        os.mknod(trigger / "null.lock", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        expected_ignored.add("null.lock")
    try:
        agent = world.agent()
        world.wait_status(lambda s: s["holders"] == [] and not s["locked"], "started, unblocked",
                          timeout_s=REACT_S)
        # A FIFO planted at the agent's status temp name (its pid is public) blocks nothing.
        pid = world.status()["pid"]  # type: ignore[index]
        os.mkfifo(trigger / f".status.json.{pid}.tmp")
        world.hold("real")
        world.wait_status(lambda s: s["locked"] and names(s) == ["real"], "reacts to a holder",
                          timeout_s=REACT_S)
        ignored = {re.search(r"entry=(\S+)", line)[1]  # type: ignore[index]
                   for line in agent.find(r"^WARNING trigger\.ignored ")}
        assert ignored == expected_ignored
        assert agent.find(r"^WARNING state\.unreadable ") == [
            f"WARNING state.unreadable path={trigger}/.update-lock-state.json "
            'error="not a regular file"']
        # A holder swapped for a FIFO at the same name is no holder any more.
        os.mkfifo(trigger / ".swap")
        os.rename(trigger / ".swap", trigger / "real.lock")
        world.wait_status(lambda s: not s["locked"] and s["holders"] == [],
                          "a FIFO is no holder", timeout_s=REACT_S)
        world.hold("again")
        world.wait_status(lambda s: s["locked"] and names(s) == ["again"], "still reacting",
                          timeout_s=REACT_S)
        no_trouble(agent)
        assert stat.S_ISFIFO(os.lstat(trigger / "override").st_mode), "left alone"
    finally:
        sock.close()


# --- churn: entries vanish and change type mid-scan -------------------------------------------

def test_entries_vanishing_and_changing_type_mid_scan(world: World) -> None:
    agent = world.agent()
    world.wait_status(lambda s: True, "started")
    stop = threading.Event()
    errors: list[BaseException] = []
    rng = random.Random()
    pool = [world.trigger / f"v{i}.lock" for i in range(12)]

    def clear(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    def churn() -> None:
        try:
            while not stop.is_set():
                path = rng.choice(pool)
                clear(path)
                kind = rng.randrange(6)
                # The other thread may have put anything at any name meanwhile.
                with contextlib.suppress(FileExistsError, FileNotFoundError, IsADirectoryError,
                                         NotADirectoryError):
                    if kind == 0:
                        # O_EXCL|O_NOFOLLOW: never through a link to a FIFO (it would block).
                        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, 0o644)
                        os.write(fd, b"vanishing\n")
                        os.close(fd)
                    elif kind == 1:
                        path.mkdir()
                    elif kind == 2:
                        path.symlink_to(rng.choice(pool))
                    elif kind == 3:
                        os.mkfifo(path)
                    elif kind == 4:
                        tmp = world.trigger / f".tmp{rng.randrange(1000)}"
                        tmp.write_text("renamed in\n")
                        os.rename(tmp, path)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=churn, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(agent.find(r"^holder\.added name=v")) >= 20,
                 "the agent scanning through the churn")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert errors == []
    assert not any(thread.is_alive() for thread in threads), "a churn thread hung"
    for path in pool:
        clear(path)
    for leftover in world.trigger.glob(".tmp*"):
        leftover.unlink()
    world.hold("stay")
    world.wait_status(lambda s: s["locked"] and names(s) == ["stay"], "converged on stay",
                      timeout_s=REACT_S)
    no_trouble(agent)


# --- the directory itself: deleted, recreated, replaced by a file ---------------------------------

def remove_tree(path: Path) -> None:
    """rm -rf, racing the agent, which may write its status or re-create the directory."""
    for _ in range(100):
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.ENOTEMPTY:
                raise
            continue  # the agent wrote into it meanwhile: again
        return
    raise AssertionError(f"could not remove {path}")


def test_trigger_dir_deleted_recreated_and_replaced_by_a_file(world: World) -> None:
    agent = world.agent()
    world.hold("first")
    world.wait_status(lambda s: s["locked"], "locked")
    for i in range(8):
        remove_tree(world.trigger)
        with contextlib.suppress(FileExistsError):  # the agent may re-create it first
            world.trigger.mkdir()
        world.hold(f"r{i}")
        world.wait_status(lambda s, i=i: s["locked"] and names(s) == [f"r{i}"],
                          f"round {i}: a holder in the recreated directory", timeout_s=REACT_S)
    # A careless service puts a file where the directory was.
    impostor = world.tmp / "impostor"
    impostor.write_text("not a directory\n")
    while not world.trigger.is_file():
        remove_tree(world.trigger)
        with contextlib.suppress(IsADirectoryError, FileExistsError):  # re-created meanwhile
            os.rename(impostor, world.trigger)
    agent.wait_line(r"^WARNING status\.unwritable .*error=ENOTDIR")
    wait_for(lambda: not world.lock.exists(), "released: no trigger directory, no holders")
    world.trigger.unlink()
    wait_for(world.trigger.is_dir, "the agent re-creates its directory", timeout_s=REACT_S)
    world.hold("back")
    world.wait_status(lambda s: s["locked"] and names(s) == ["back"], "back to normal",
                      timeout_s=REACT_S)
    agent.wait_line(r"^status\.writable ")
    assert agent.popen.poll() is None
    assert agent.find(r"agent\.crashed|Traceback") == []


def test_status_json_comes_back_when_deleted_or_its_directory_is_recreated(world: World) -> None:
    """Other services wait on status.json and the health check reads it: if it goes (a careless
    `rm`, a re-created volume) the agent writes it again at once, not at its next change."""
    agent = world.agent()
    world.hold("job")
    world.wait_status(lambda s: s["locked"], "locked")
    (world.trigger / "status.json").unlink()
    world.wait_status(lambda s: s["locked"] and names(s) == ["job"], "status.json written again",
                      timeout_s=REACT_S)
    # The directory re-created empty, then the same holder put back before the agent looks:
    # nothing about the lock changed, but the new directory needs its status.json.
    with stopped(agent):
        remove_tree(world.trigger)
        world.trigger.mkdir()
        world.hold("job")
    world.wait_status(lambda s: s["locked"] and names(s) == ["job"],
                      "status.json in the re-created directory", timeout_s=REACT_S)
    result = world.cli("health")
    assert result.returncode == 0, result.stderr
    no_trouble(agent)


# --- full volumes (a tiny tmpfs in a mount namespace) -----------------------------------------

def fill(directory: Path) -> Path:
    """Write a file until the file system is full."""
    path = directory / "zz-fill"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        chunk = b"\0" * 4096
        while True:
            try:
                os.write(fd, chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC
                return path
    finally:
        os.close(fd)


def record(lock: Path) -> dict[str, Any] | None:
    """The agent's record in its lock file, or None while there is none."""
    try:
        value = json.loads(lock.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_status(directory: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((directory / "status.json").read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def agent_on_tmpfs(world: World, size: str, **env: str) -> tuple[Proc, Path, Path]:
    """The agent with both directories on a tmpfs of ``size``, mounted in its own mount
    namespace (the host never sees it). Returns it, and its trigger directory and lock path
    as the test reaches them: through /proc/PID/root."""
    script = (f'mount -t tmpfs -o size={size} tmpfs "$1" && '
              f'mount -t tmpfs -o size={size},mode=1777 tmpfs "$2" && '
              'exec "$3" -m update_lock run')
    agent = Proc(["unshare", "-m", "sh", "-c", script, "sh", str(world.trigger),
                  str(world.lock_dir), sys.executable], world.env(**env))
    world.procs.append(agent)
    agent.wait_line(r"^agent\.started ")
    root = Path(f"/proc/{agent.pid}/root")
    return agent, root / world.trigger.relative_to("/"), root / world.lock.relative_to("/")


needs_unshare = pytest.mark.skipif(os.geteuid() != 0 or not have("unshare"),
                                   reason="needs root and util-linux unshare")


@needs_unshare
def test_full_volumes(world: World) -> None:
    """Both directories on a 64 KiB tmpfs, filled up in turn."""
    agent, trigger, lock = agent_on_tmpfs(world, "64k")

    def status_is(predicate: Any, what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            value = read_status(trigger)
            return value if value is not None and predicate(value) else None
        return wait_for(check, what, timeout_s=REACT_S)  # type: ignore[no-any-return]

    status_is(lambda s: not s["locked"], "started on the tmpfs")
    assert not (world.trigger / "status.json").exists(), "the tmpfs is the agent's alone"

    # The trigger volume is full: status cannot be written; the lock still follows holders.
    filler = fill(trigger)
    start = agent.mark()
    (trigger / "job.lock").write_bytes(b"")  # an empty file needs no block
    agent.wait_line(rf"^WARNING status\.unwritable dir={world.trigger} error=ENOSPC$",
                    start=start)
    wait_for(lambda: (record(lock) or {}).get("pid") == agent.pid,
             "locked although status.json is stale")
    (trigger / "job.lock").unlink()
    wait_for(lambda: not lock.exists(), "released although status.json is stale",
             timeout_s=REACT_S)
    (trigger / "job.lock").write_bytes(b"")
    wait_for(lock.exists, "locked again", timeout_s=REACT_S)
    filler.unlink()
    agent.wait_line(rf"^status\.writable dir={world.trigger}$", start=start, timeout_s=REACT_S)
    status_is(lambda s: s["locked"] and names(s) == ["job"], "status caught up")
    assert sorted(p.name for p in trigger.iterdir()) == ["job.lock", "status.json"], \
        "no temp file left behind"

    # The lock volume is full: no half-made lock file, nothing claimed, taken when space frees.
    (trigger / "job.lock").unlink()
    status_is(lambda s: not s["locked"], "released")
    filler = fill(lock.parent)
    start = agent.mark()
    (trigger / "job.lock").write_bytes(b"")
    line = agent.wait_line(r"^WARNING agent\.retry ", start=start)
    assert "ENOSPC" in line, line
    status_is(lambda s: not s["locked"], "not claiming a lock")
    assert not lock.exists(), "no empty or half-written lock file left"
    # Retried on the timer, not in a tight loop woken by its own create-and-clean-up events.
    time.sleep(1.0)  # an observation window for counting, not an ordering
    retries = agent.find(r"^WARNING agent\.retry ", start=start)
    assert len(retries) <= 2, f"{len(retries)} retries in about a second"
    filler.unlink()
    status_is(lambda s: s["locked"] and names(s) == ["job"], "locked once space is free")
    assert json.loads(lock.read_bytes())["pid"] == agent.pid
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    assert agent.find(r"agent\.crashed|Traceback") == []


# --- times at the edge of the calendar ---------------------------------------------------------

def test_times_out_of_range_in_the_trigger_dir_never_crash_the_agent(world: World) -> None:
    """allow-until and the agent's own state file are in the shared directory: a time that
    UTC cannot hold, or a naive one where an aware one belongs, is ignored, never fatal."""
    (world.trigger / "allow-until").write_text("9999-12-31T23:59:59-12:00\n")
    state = world.trigger / ".update-lock-state.json"
    state.write_text(json.dumps({"pending_since": "2020-01-01T00:00:00"}))
    api = {"UPDATE_LOCK_ALWAYS": "true", "UPDATE_LOCK_MAX_DEFER": "1h",
           "BALENA_SUPERVISOR_ADDRESS": "http://127.0.0.1:9", "BALENA_SUPERVISOR_API_KEY": "k"}
    agent = world.agent(**api)
    line = agent.wait_line(r"^WARNING trigger\.ignored entry=allow-until ")
    assert line == ('WARNING trigger.ignored entry=allow-until why="out of range" '
                    "value=9999-12-31T23:59:59-12:00")
    world.wait_status(lambda s: s["locked"] and s["allow_until"] is None, "locked (always)")
    (world.trigger / "allow-until").write_text("0001-01-01T00:00:00+14:00\n")
    agent.wait_line(r"^WARNING trigger\.ignored entry=allow-until why=\"out of range\" "
                    r"value=0001-01-01T00:00:00\+14:00$")
    world.hold("job")
    world.wait_status(lambda s: s["locked"] and names(s) == ["job"], "still working")
    assert world.status()["pending_since"] is None  # type: ignore[index]
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    # An aware pending-since near the end of time: ignored as well.
    state.write_text(json.dumps({"pending_since": "9999-12-31T23:00:00+00:00"}))
    agent = world.agent(**api)
    world.wait_status(lambda s: s["locked"] and s["pid"] == agent.pid, "started again")
    world.hold("job2")
    world.wait_status(lambda s: names(s) == ["job", "job2"], "still working")
    assert agent.find(r"agent\.crashed|Traceback") == [], agent.output()


@needs_unshare
def test_a_holder_touched_past_year_9999_never_crashes_the_agent(world: World) -> None:
    """ext4 clamps timestamps (year 2446), tmpfs keeps whatever `touch -d` says."""
    agent, trigger, lock = agent_on_tmpfs(world, "1m", UPDATE_LOCK_HOLDER_TTL="1h")
    future = trigger / "future.lock"
    future.write_text("from the future\n")
    os.utime(future, (1, 300_000_000_000))  # about year 11500
    ancient = trigger / "ancient.lock"
    ancient.write_text("")
    os.utime(ancient, (1, -100_000_000_000))  # before year 1
    wait_for(lambda: (record(lock) or {}).get("reasons") == ["holder:future"],
             "locked by the holder from the future (live until then); the ancient one stale",
             timeout_s=REACT_S)
    future.unlink()
    wait_for(lambda: not lock.exists(), "released", timeout_s=REACT_S)
    assert agent.popen.poll() is None
    assert agent.find(r"agent\.crashed|Traceback") == [], agent.output()
