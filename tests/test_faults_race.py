"""Race with the Supervisor: hundreds of rounds against a real procmail `lockfile -r0` as nobody.

The Supervisor (>= v13.1) takes its lock with procmail's `lockfile -r 0` as uid 65534 in the
same directory the agent locks (platform facts §3). Here a competitor does exactly that at
random moments while one long-lived agent acquires and releases, driven by a holder file that
each round creates and removes. A bounded random delay on each side makes the two meet at
every point of the agent's create/flock/record and inspect/unlink paths.

Invariants, per round:
- never both: when the competitor's `lockfile` succeeded the path is its 65534-owned file;
  when the agent reports `locked`, the path is the agent's own file (its record, its uid);
- the agent never deletes the competitor's file: the competitor finds it, same inode, right
  before removing it itself;
- no stray file: once both have let go, the lock directory is empty (no lock file, no
  procmail hitching-post file).
And over the whole run: every acquisition was released by unlinking the agent's own file
(`unlinked=true`), and the agent never saw its file overridden, a foreign file, a retry or a
crash.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import World, have

NOBODY = 65534
ROUNDS = 300
# procmail's lockfile exits EX_CANTCREAT (73) when it gives up on an existing lock.
LOCKFILE_GAVE_UP = 73

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to run the competitor as nobody)"),
    pytest.mark.skipif(not (have("lockfile") and have("setpriv")),
                       reason="needs procmail's lockfile and util-linux setpriv"),
]


def compete(path: Path) -> int:
    """The Supervisor's own lock attempt, exactly: `lockfile -r 0` as uid/gid 65534."""
    result = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         "lockfile", "-r", "0", str(path)],
        capture_output=True, timeout=10,
    )
    assert result.returncode in (0, LOCKFILE_GAVE_UP), result.stderr
    return result.returncode


def race(first: Callable[[], Any], second: Callable[[], Any], rng: random.Random,
         max_delay_s: float) -> Any:
    """Run ``first`` in a thread and ``second`` here, each after its own random delay.
    Returns what ``first`` returned; re-raises what it raised."""
    result: dict[str, Any] = {}
    go = threading.Event()

    def run_first() -> None:
        go.wait(5)
        time.sleep(delay_first)  # a bounded random delay creates the race; it orders nothing
        try:
            result["value"] = first()
        except BaseException as error:  # handed to the main thread below
            result["error"] = error

    delay_first = rng.uniform(0, max_delay_s / 4)
    delay_second = rng.uniform(0, max_delay_s)
    thread = threading.Thread(target=run_first, daemon=True)
    thread.start()
    go.set()
    time.sleep(delay_second)
    second()
    thread.join(15)
    assert not thread.is_alive(), "the competitor hung"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def nobody_owns(path: Path) -> tuple[int, int]:
    """The competitor's file is at ``path``: 65534-owned. Its (dev, ino)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise AssertionError(f"{path}: the competitor's file is gone") from None
    assert info.st_uid == NOBODY, f"{path} is owned by uid {info.st_uid}, not the competitor"
    return info.st_dev, info.st_ino


def key_of(path: Path) -> tuple[int, int] | None:
    """(dev, ino) of what is at ``path``, or None if nothing is."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def agent_owns(path: Path, pid: int) -> None:
    info = os.lstat(path)
    assert info.st_uid == os.geteuid()
    record = json.loads(path.read_bytes())
    assert record["owner"] == "update-lock" and record["pid"] == pid, record


def test_agent_and_supervisor_lockfile_never_both_hold(world: World) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    holder = world.trigger / "race.lock"
    lock = world.lock
    agent = world.agent()
    world.wait_status(lambda s: s["locked"] is False, "the first status")
    # The competitor needs a few ms to start (setpriv, lockfile), the agent about one to react:
    # delays spread over twice the competitor's start time make each side win often, on a
    # fast machine or a loaded one.
    scratch = world.lock_dir / "calibrate.lock"
    started = time.monotonic()
    for _ in range(5):
        assert compete(scratch) == 0
        scratch.unlink()
    max_delay_s = 2 * (time.monotonic() - started) / 5
    won = {"agent": 0, "competitor": 0, "competitor-after-release": 0}

    for round_no in range(ROUNDS):
        where = f"round {round_no} (seed {seed})"

        # Phase 1: the holder appears while the competitor tries to take the lock.
        rc = race(lambda: compete(lock), lambda: holder.write_bytes(b""), rng,
                  max_delay_s)
        if rc == 0:
            won["competitor"] += 1
            # The competitor's lockfile succeeded: the path is its file, not the agent's.
            key = nobody_owns(lock)
            world.wait_status(
                lambda s: s["holders"] != [] and s["blocked_by_supervisor"]
                and not s["locked"], f"{where}: the agent waits for the Supervisor")
            assert key_of(lock) == key, f"{where}: the competitor's file was deleted or replaced"

            def competitor_lets_go(key: tuple[int, int] = key, where: str = where) -> None:
                # Still there, still the same 65534 file: the agent never deleted it.
                assert key_of(lock) == key, f"{where}: the competitor's file was deleted"
                lock.unlink()

            # Phase 2: the competitor lets go and the holder goes, in a random order.
            race(competitor_lets_go, holder.unlink, rng, max_delay_s)
        else:
            won["agent"] += 1
            status = world.wait_status(
                lambda s: s["locked"] and s["holders"] != [], f"{where}: the agent holds")
            assert status["paths"] == [str(lock)]
            agent_owns(lock, agent.pid)

            # Phase 2: the holder goes while the competitor tries again.
            rc = race(lambda: compete(lock), holder.unlink, rng, max_delay_s)
            if rc == 0:
                won["competitor-after-release"] += 1
                key = nobody_owns(lock)
                world.wait_status(lambda s: s["holders"] == [] and not s["locked"],
                                  f"{where}: released")
                assert key_of(lock) == key, f"{where}: the agent touched the competitor's file"
                lock.unlink()

        # End of round: both let go; the agent has seen it all; nothing is left behind.
        status = world.wait_status(
            lambda s: s["holders"] == [] and not s["locked"] and not s["blocked_by_supervisor"],
            f"{where}: both released")
        assert status["paths"] == [] and status["foreign_lock"] is None
        leftovers = sorted(os.listdir(world.lock_dir))
        assert leftovers == [], f"{where}: stray files {leftovers}"

    assert agent.popen.poll() is None, agent.output()
    acquired = agent.find(r"^lock\.acquired ")
    released = agent.find(r"^lock\.released ")
    assert len(released) == len(acquired) > 0, won
    assert all(line.endswith("unlinked=true") for line in released), released
    for bad in (r"lock\.overridden", r"lock\.foreign", r"agent\.retry", r"agent\.crashed",
                r"Traceback"):
        assert agent.find(bad) == [], agent.find(bad)
    # The race really raced: each side won a fair share of the acquisitions.
    assert won["agent"] >= ROUNDS // 20 and won["competitor"] >= ROUNDS // 20, won
