"""Crash storm: SIGKILL the agent (and separately supervisord) at random points while holders
come and go; every restart converges, and an acknowledged holder is never left unprotected.

"Acknowledged" is what a service waits for before its critical section (README): its holder
listed live in a status.json that says ``locked: true``. From then until the holder file goes,
the lock file must never disappear, across any number of crashes (SIGKILL leaves the file; the
next start adopts it). A watcher thread checks exactly that:

- a churn thread is the only writer of holder files and keeps a registry of them, each
  creation a new generation; it unregisters a holder *before* unlinking it, so "registered"
  always implies "the file exists";
- the watcher reads status.json: a holder is acknowledged by a status that lists it live with
  ``locked: true`` and was written after the holder's creation (status mtime strictly later
  than the holder's: both on the kernel's one clock, so no unit or skew between them);
- the watcher watches the lock directory with inotify; the kernel queues every unlink of the
  lock path in order. A deletion drained now happened after the previous drain, hence after
  every acknowledgement made before that drain: if such a holder is still registered now, it
  existed at the moment the lock path vanished. That is the violation recorded.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import random
import select
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import BLOCK, Proc, World, base_env, flock_busy, have, wait_for
from update_lock.inotify import (
    IN_DELETE,
    IN_MOVED_FROM,
    IN_Q_OVERFLOW,
    Inotify,
)

KILLS = 30
SUPERVISORD_KILLS = 5
NAMES = ("h0", "h1", "h2", "h3")
CONVERGE_S = 10.0


# The host OS check, in process: open read-only (never create), `flock -n -x`.
host_flock_held = flock_busy


class Churn:
    """Creates and removes holder files at random; the registry says what exists."""

    def __init__(self, trigger: Path, rng: random.Random) -> None:
        self.trigger = trigger
        self.rng = rng
        self.registry: dict[str, tuple[int, int]] = {}  # name -> (generation, mtime_ns)
        self.registry_lock = threading.Lock()
        self.mutate = threading.Lock()  # held by the main thread to pause the churn
        self.generation = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        with self.registry_lock:
            return dict(self.registry)

    def names(self) -> list[str]:
        return sorted(self.snapshot())

    def add(self, name: str) -> None:
        path = self.trigger / f"{name}.lock"
        path.write_text(f"churn {name}\n")
        mtime_ns = os.stat(path).st_mtime_ns
        with self.registry_lock:
            self.generation += 1
            self.registry[name] = (self.generation, mtime_ns)

    def remove(self, name: str) -> None:
        with self.registry_lock:
            del self.registry[name]  # first: "registered" must imply "exists"
        (self.trigger / f"{name}.lock").unlink()

    def _run(self) -> None:
        while not self.stop.is_set():
            time.sleep(self.rng.uniform(0, 0.01))  # a random pace; orders nothing
            with self.mutate:
                if self.stop.is_set():
                    return
                name = self.rng.choice(NAMES)
                if name in self.snapshot():
                    self.remove(name)
                else:
                    self.add(name)


class Watcher:
    """Records every moment the lock path vanished while an acknowledged holder existed."""

    def __init__(self, lock: Path, trigger: Path, churn: Churn) -> None:
        self.lock = lock
        self.status_path = trigger / "status.json"
        self.churn = churn
        self.inotify = Inotify()
        self.inotify.add_watch(str(lock.parent), IN_DELETE | IN_MOVED_FROM)
        self.acked: set[tuple[str, int]] = set()
        self.acks_made = 0
        self.deletions = 0
        self.violations: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.inotify.close()

    def _read_status(self) -> tuple[dict[str, Any], int] | None:
        try:
            fd = os.open(self.status_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            mtime_ns = os.fstat(fd).st_mtime_ns
            data = b""
            while chunk := os.read(fd, 65536):
                data += chunk
        finally:
            os.close(fd)
        return json.loads(data), mtime_ns

    def _run(self) -> None:
        name = self.lock.name
        while not self.stop.is_set():
            previous = set(self.acked)
            select.select([self.inotify.fd], [], [], 0.002)
            events = self.inotify.read()
            if any(e.mask & IN_Q_OVERFLOW for e in events):
                self.violations.append("watcher inotify overflow: cannot vouch for this run")
            registry = self.churn.snapshot()
            alive = {(n, g) for n, (g, _) in registry.items()}
            for event in events:
                if event.name != name:
                    continue
                self.deletions += 1
                unprotected = sorted(previous & alive)
                if unprotected:
                    self.violations.append(
                        f"lock path removed while acknowledged holders existed: {unprotected}")
            # Acknowledgements still standing, plus any new ones.
            self.acked &= alive
            read = self._read_status()
            if read is None:
                continue
            status, status_mtime_ns = read
            if not status.get("locked"):
                continue
            for holder in status.get("holders") or []:
                entry = registry.get(holder.get("name"))
                if holder.get("live") and entry is not None and entry[1] < status_mtime_ns:
                    ack = (holder["name"], entry[0])
                    if ack not in self.acked:
                        self.acked.add(ack)
                        self.acks_made += 1


@contextlib.contextmanager
def storm(world: World, seed: int) -> Iterator[tuple[Churn, Watcher]]:
    churn = Churn(world.trigger, random.Random(seed))
    watcher = Watcher(world.lock, world.trigger, churn)
    watcher.start()
    churn.start()
    try:
        yield churn, watcher
    finally:
        churn.close()
        watcher.close()


def converged(world: World, agent: Proc | None, pid: int, expected: list[str]) -> dict[str, Any]:
    """status.json from ``pid`` shows exactly ``expected`` and the lock matches it."""
    try:
        status = world.wait_status(
            lambda s: s.get("pid") == pid and [h["name"] for h in s["holders"]] == expected
            and s["locked"] is bool(expected),
            f"status of pid {pid} with holders {expected}", timeout_s=CONVERGE_S)
    except AssertionError as error:
        files = sorted(p.name for p in world.trigger.iterdir())
        output = agent.output() if agent is not None else ""
        raise AssertionError(f"{error}\ntrigger dir: {files}\nagent output:\n{output}") from None
    if expected:
        record = json.loads(world.lock.read_bytes())
        assert record["owner"] == "update-lock" and record["pid"] == pid, record
        assert host_flock_held(world.lock), "the host OS check must see the lock"
        assert all(h["live"] for h in status["holders"])
    else:
        assert not world.lock.exists(), "nothing asks: no lock file"
    return status


def test_crash_storm_sigkill_agent(world: World) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed ^ 0x5EED)
    agents: list[Proc] = []
    with storm(world, seed) as (churn, watcher):
        agent = world.agent()
        agents.append(agent)
        for kill_no in range(KILLS):
            time.sleep(rng.uniform(0, 0.3))  # a random moment to crash at; orders nothing
            agent.signal(signal.SIGKILL)
            assert agent.wait_exit() == -signal.SIGKILL
            assert not agent.find(r"agent\.crashed|Traceback"), agent.output()
            agent = world.agent()
            agents.append(agent)
            if kill_no % 2:
                time.sleep(rng.uniform(0, 0.2))  # let the churn go on while it starts, or not
            # Hold the churn still: the new agent converges on what is there.
            with churn.mutate:
                converged(world, agent, agent.pid, churn.names())
        with churn.mutate:
            churn.stop.set()
            final = churn.names()
            converged(world, agent, agent.pid, final)
    for name in final:
        (world.trigger / f"{name}.lock").unlink()
    converged(world, agent, agent.pid, [])
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    assert not world.lock.exists()

    where = f"(seed {seed})"
    assert watcher.violations == [], f"{where}: {watcher.violations}"
    assert watcher.acks_made >= KILLS, f"{where}: the storm acknowledged too few holders"
    assert watcher.deletions > 0, f"{where}: the agent never released: nothing was tested"
    adopted = [line for a in agents for line in a.find(r"^lock\.adopted ")]
    assert len(adopted) >= KILLS // 3, f"{where}: only {len(adopted)} adoptions"
    for proc in agents:
        for bad in (r"lock\.foreign", r"lock\.overridden", r"agent\.crashed", r"Traceback",
                    r"agent\.retry"):
            assert proc.find(bad) == [], f"{where}: {proc.find(bad)}"


@pytest.mark.skipif(not have("strace"), reason="needs strace to hold the agent in flock()")
def test_a_crash_while_waiting_for_the_flock_leaves_an_adoptable_lock(world: World) -> None:
    """The agent creates its lock file, then takes the flock, waiting up to a second when a
    host probe has it for an instant. A crash in that wait must leave a file the next start
    recognises as its own: an empty file is anyone's, so it would stay forever, as foreign.
    strace holds the agent's first flock() for a while: the slow probe, made deterministic."""
    argv = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=flock",
            "-e", "inject=flock:delay_enter=10000000:when=1",
            sys.executable, "-m", "update_lock", "run"]
    agent = Proc(argv, world.env())
    world.procs.append(agent)
    world.wait_status(lambda s: not s["locked"], "started")
    world.hold("job")
    wait_for(world.lock.exists, "the lock file created")
    # The agent is in (or about to enter) its held flock(): its record must already be there.
    wait_for(lambda: world.lock.stat().st_size > 0, "the record, written before the flock",
             timeout_s=2)
    record = json.loads(world.lock.read_bytes())
    assert record["owner"] == "update-lock"
    agent.kill()  # strace and the agent: one process group, SIGKILL
    second = world.agent()
    second.wait_line(rf"^lock\.adopted path={world.lock} previous_pid={record['pid']} ")
    world.wait_status(lambda s: s["locked"] and s["pid"] == second.pid, "adopted and held")
    assert host_flock_held(world.lock)
    assert not second.find(r"lock\.foreign")


# --- supervisord ----------------------------------------------------------------------------

def supervisord_bin() -> str | None:
    candidate = Path(sys.executable).parent / "supervisord"
    return str(candidate) if candidate.exists() else shutil.which("supervisord")


def supervisord_conf(world: World, env: dict[str, str]) -> Path:
    """block/supervisord.conf, with this interpreter and this world's environment."""
    config = configparser.RawConfigParser()
    config.read(BLOCK / "supervisord.conf")
    config["supervisord"]["pidfile"] = str(world.tmp / "supervisord.pid")
    environment = ",".join(f'{k}="{v}"' for k, v in env.items()
                           if k.startswith(("UPDATE_LOCK_", "PYTHON", "TMPDIR")))
    config["program:agent"]["command"] = f"{sys.executable} -m update_lock run"
    config["program:agent"]["environment"] = environment
    listener = config["eventlistener:fatal-listener"]
    listener["command"] = f"{sys.executable} -m update_lock.fatal_listener"
    listener["environment"] = environment
    path = world.tmp / "supervisord.conf"
    with open(path, "w", encoding="utf-8") as handle:
        config.write(handle)
    return path


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def kill_tree(proc: Proc) -> None:
    """SIGKILL supervisord's process group and the groups of its children (supervisord puts
    every program in a group of its own), all at once: nothing gets to clean up."""
    children = children_of(proc.pid)
    groups = {proc.pid}
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(child))
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    proc.wait_exit()
    # Orphans now, reaped by init in its own time; dead (zombie) is what matters: their files,
    # and so their flocks, are closed by then.
    wait_for(lambda: not any(_running(pid) for pid in children), "supervisord's children dead")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(supervisord_bin() is None, reason="supervisord is not installed")
def test_crash_storm_sigkill_supervisord(world: World) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    env = world.env()
    conf = supervisord_conf(world, env)
    argv = [str(supervisord_bin()), "-n", "-c", str(conf)]
    procs: list[Proc] = []

    def start() -> tuple[Proc, int]:
        proc = Proc(argv, base_env(TMPDIR=str(world.tmp)), cwd=str(world.tmp))
        world.procs.append(proc)
        procs.append(proc)
        line = proc.wait_line(r"^agent\.started pid=\d+ ", timeout_s=CONVERGE_S)
        return proc, int(line.split()[1].split("=")[1])

    try:
        with storm(world, seed) as (churn, watcher):
            # One holder stays throughout: the lock must be held across every kill.
            with churn.mutate:
                churn.add("steady")
            supervisord, pid = start()
            converged_ok = False
            for _ in range(SUPERVISORD_KILLS):
                world.wait_status(lambda s, p=pid: s["pid"] == p and s["locked"],
                                  "the agent under supervisord holds", timeout_s=CONVERGE_S)
                time.sleep(rng.uniform(0, 0.3))  # a random moment to crash at
                kill_tree(supervisord)
                assert world.lock.exists(), "SIGKILL keeps the lock file"
                supervisord, pid = start()
                supervisord.wait_line(rf"^lock\.adopted path={world.lock} previous_pid=\d+ ",
                                      timeout_s=CONVERGE_S)
            with churn.mutate:
                converged(world, supervisord, pid, churn.names())
                converged_ok = True
        assert converged_ok
        assert watcher.violations == [], f"(seed {seed}) {watcher.violations}"
        assert watcher.acks_made > 0
        # A clean stop still releases: SIGTERM to supervisord stops the agent, which unlinks.
        supervisord.signal(signal.SIGTERM)
        assert supervisord.wait_exit() == 0
        assert supervisord.find(rf"^lock\.released path={world.lock} why=stopping")
        assert not world.lock.exists()
    finally:
        for proc in procs:
            if proc.popen.poll() is None:
                kill_tree(proc)
    for proc in procs:
        assert proc.find(r"agent\.crashed|Traceback|lock\.foreign") == [], proc.output()
