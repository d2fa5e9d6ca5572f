"""The agent end to end: real subprocesses, real files, real flock, real peer tools."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harness import (
    Proc,
    World,
    as_uid_argv,
    base_env,
    have,
    holding_flock,
    host_sees_lock,
    npm_lockfile_sees_lock,
    readable_package,
    stat_key,
    supervisor_sees_lock,
    wait_for,
)
from update_lock import cli

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown to 65534)")


def test_holder_file_takes_the_lock_and_its_removal_releases_it(world: World) -> None:
    agent = world.agent()
    agent.wait_line(r"^agent\.started ")
    world.wait_status(lambda s: s["locked"] is False, "the first status")
    assert not world.lock.exists()

    world.hold("backup", "nightly backup")
    agent.wait_line(r"^holder\.added name=backup reason=\"nightly backup\"$")
    line = agent.wait_line(r"^lock\.acquired ")
    assert line == f"lock.acquired path={world.lock} reasons=holder:backup host_os=true"
    status = world.wait_status(lambda s: s["locked"], "locked")
    assert status["reasons"] == ["holder:backup"]
    assert status["paths"] == [str(world.lock)]
    assert status["host_os"] is True
    assert [(h["name"], h["reason"], h["live"]) for h in status["holders"]] == [
        ("backup", "nightly backup", True)]
    record = json.loads(world.lock.read_text())
    assert record["owner"] == "update-lock"
    assert record["pid"] == agent.pid
    assert record["reasons"] == ["holder:backup"]

    (world.trigger / "backup.lock").unlink()
    agent.wait_line(r"^holder\.removed name=backup$")
    line = agent.wait_line(r"^lock\.released ")
    assert line == f"lock.released path={world.lock} why=nothing-asks unlinked=true"
    assert not world.lock.exists()
    world.wait_status(lambda s: not s["locked"] and s["holders"] == [], "released")


@pytest.mark.skipif(not have("lockfile"), reason="procmail's lockfile is not installed")
def test_host_and_supervisor_checks_see_the_lock_exactly_while_held(world: World) -> None:
    agent = world.agent()
    agent.wait_line(r"^agent\.started ")
    world.wait_status(lambda s: not s["locked"], "started")
    assert not host_sees_lock(world.lock)
    assert not supervisor_sees_lock(world.lock, as_uid=65534 if os.geteuid() == 0 else None)

    world.hold("job")
    world.wait_status(lambda s: s["locked"], "locked")
    assert host_sees_lock(world.lock)
    assert supervisor_sees_lock(world.lock)
    assert npm_lockfile_sees_lock(world.lock)
    assert world.lock.exists(), "a peer's failed check must leave our file alone"

    (world.trigger / "job.lock").unlink()
    world.wait_status(lambda s: not s["locked"], "released")
    assert not host_sees_lock(world.lock)
    assert not supervisor_sees_lock(world.lock)
    assert not npm_lockfile_sees_lock(world.lock)


def test_always_holds_from_the_start_and_sigterm_releases_and_exits_0(world: World) -> None:
    agent = world.agent(UPDATE_LOCK_ALWAYS="true")
    agent.wait_line(r"^lock\.acquired .*reasons=always")
    assert host_sees_lock(world.lock)
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(timeout_s=5) == 0
    assert agent.find(r"^agent\.stopping signal=SIGTERM$")
    assert agent.find(rf"^lock\.released path={world.lock} why=stopping unlinked=true$")
    assert agent.find(r"^agent\.stopped pid=\d+$")
    assert not world.lock.exists()
    final = world.status()
    assert final is not None and final["locked"] is False and final["stopping"] is True


def test_sigint_releases_too(world: World) -> None:
    agent = world.agent(UPDATE_LOCK_ALWAYS="1")
    agent.wait_line(r"^lock\.acquired ")
    agent.signal(signal.SIGINT)
    assert agent.wait_exit(timeout_s=5) == 0
    assert not world.lock.exists()


def test_sigkill_keeps_the_file_and_the_next_start_adopts_it(world: World) -> None:
    first = world.agent(UPDATE_LOCK_ALWAYS="yes")
    first.wait_line(r"^lock\.acquired ")
    key = stat_key(world.lock)
    first.kill()
    assert world.lock.exists(), "SIGKILL must leave the lock file: protection kept"
    assert stat_key(world.lock) == key

    second = world.agent(UPDATE_LOCK_ALWAYS="yes")
    line = second.wait_line(r"^lock\.adopted ")
    assert line == f"lock.adopted path={world.lock} previous_pid={first.pid} reasons=always"
    assert not second.find(r"^lock\.(released|acquired)")
    assert stat_key(world.lock) == key, "adopted, never deleted and re-made"
    record = json.loads(world.lock.read_text())
    assert record["pid"] == second.pid
    assert host_sees_lock(world.lock)


def test_a_leftover_lock_nothing_asks_for_is_adopted_then_released(world: World) -> None:
    first = world.agent()
    world.hold("job")
    first.wait_line(r"^lock\.acquired ")
    first.kill()
    (world.trigger / "job.lock").unlink()
    second = world.agent()
    line = second.wait_line(r"^lock\.released ")
    assert line == (f"lock.released path={world.lock} why=leftover-from-previous-run "
                    f"previous_pid={first.pid}")
    assert not world.lock.exists()


@needs_root
def test_a_supervisor_lock_is_never_deleted_and_is_waited_for(world: World) -> None:
    world.lock.write_text("")
    os.chown(world.lock, 65534, 65534)
    key = stat_key(world.lock)
    agent = world.agent(UPDATE_LOCK_ALWAYS="true")
    line = agent.wait_line(r"^lock\.blocked ")
    assert line == (f"lock.blocked path={world.lock} by=supervisor uid=65534 "
                    "why=\"the Supervisor is applying an update: waiting for its lock to go\"")
    status = world.wait_status(lambda s: s["blocked_by_supervisor"], "blocked_by_supervisor")
    assert status["locked"] is False
    # A holder arriving does not change that: the file is the Supervisor's.
    world.hold("job")
    agent.wait_line(r"^holder\.added name=job")
    world.wait_status(lambda s: [h["name"] for h in s["holders"]] == ["job"], "holder seen")
    assert stat_key(world.lock) == key and os.lstat(world.lock).st_uid == 65534
    # The Supervisor finishes its apply and removes its file: the agent takes the lock.
    world.lock.unlink()
    agent.wait_line(r"^lock\.acquired ")
    status = world.wait_status(lambda s: s["locked"], "locked after the Supervisor")
    assert status["blocked_by_supervisor"] is False
    assert os.lstat(world.lock).st_uid == os.geteuid()


@needs_root
def test_a_supervisor_lock_taken_by_procmail_as_nobody_is_respected(world: World) -> None:
    assert not supervisor_sees_lock(world.lock, as_uid=65534)  # free: it can take it
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "lockfile", "-r", "0", str(world.lock)], capture_output=True)
    assert result.returncode == 0, result.stderr
    agent = world.agent(UPDATE_LOCK_ALWAYS="true")
    agent.wait_line(r"^lock\.blocked .*by=supervisor")
    assert os.lstat(world.lock).st_uid == 65534
    world.lock.unlink()
    agent.wait_line(r"^lock\.acquired ")


def test_a_foreign_file_is_left_alone_and_reported(world: World) -> None:
    world.lock.write_text("some other process's lock\n")
    agent = world.agent(UPDATE_LOCK_ALWAYS="true")
    line = agent.wait_line(r"^WARNING lock\.foreign ")
    assert line == (f"WARNING lock.foreign path={world.lock} uid={os.geteuid()} pid=- "
                    "why=\"a lock file this agent did not create: left alone\"")
    status = world.wait_status(lambda s: s["foreign_lock"] is not None, "foreign_lock")
    assert status["foreign_lock"] == {"path": str(world.lock), "uid": os.geteuid(), "pid": None}
    assert status["locked"] is False
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    assert world.lock.read_text() == "some other process's lock\n"


def test_another_live_agents_file_is_not_adopted(world: World) -> None:
    first = world.agent(UPDATE_LOCK_ALWAYS="true")
    first.wait_line(r"^lock\.acquired ")
    other_trigger = world.tmp / "other"
    second = world.agent(UPDATE_LOCK_ALWAYS="true", UPDATE_LOCK_DIR=str(other_trigger))
    second.wait_line(r"^WARNING lock\.foreign .*held by another live agent")
    assert json.loads(world.lock.read_text())["pid"] == first.pid


def test_external_unlink_is_an_override_and_the_lock_is_retaken_after_grace(
        world: World) -> None:
    agent = world.agent(UPDATE_LOCK_ALWAYS="true", UPDATE_LOCK_OVERRIDE_GRACE="2s")
    agent.wait_line(r"^lock\.acquired ")
    start = agent.mark()
    world.lock.unlink()  # what a forced update or the override toggle does
    line = agent.wait_line(r"^WARNING lock\.overridden ", start=start, timeout_s=1.0)
    assert line.startswith(f"WARNING lock.overridden path={world.lock} by=external "
                           "released_until=")
    assert line.endswith("why=\"lock file removed by someone else (forced update or "
                         "override toggle)\"")
    status = world.wait_status(lambda s: s["override"] is not None, "override in status")
    assert status["locked"] is False
    assert status["override"]["by"] == "external"
    assert status["openings"] == ["override"]
    assert not world.lock.exists(), "no re-take during the grace period"
    agent.wait_line(r"^lock\.acquired ", start=start)
    world.wait_status(lambda s: s["locked"], "re-taken after grace")
    assert host_sees_lock(world.lock)


def test_replacing_the_file_is_an_override_and_the_new_file_is_not_ours(world: World) -> None:
    agent = world.agent(UPDATE_LOCK_ALWAYS="true", UPDATE_LOCK_OVERRIDE_GRACE="30m")
    agent.wait_line(r"^lock\.acquired ")
    tmp = world.lock_dir / "replacement"
    tmp.write_text("someone else\n")
    tmp.replace(world.lock)
    agent.wait_line(r"^WARNING lock\.overridden ")
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    assert world.lock.read_text() == "someone else\n", "never delete a file we did not create"


def test_holder_ttl_expires_unless_the_holder_is_flocked(world: World) -> None:
    agent = world.agent(UPDATE_LOCK_HOLDER_TTL="1s")
    holder = world.hold("heartbeat")
    agent.wait_line(r"^lock\.acquired ")
    line = agent.wait_line(r"^WARNING holder\.stale ")
    assert line == "WARNING holder.stale name=heartbeat ttl=1s"
    agent.wait_line(r"^lock\.released ")
    status = world.wait_status(lambda s: not s["locked"], "released on TTL")
    assert status["holders"][0]["live"] is False
    # A heartbeat (touch) brings it back.
    start = agent.mark()
    os.utime(holder)
    agent.wait_line(r"^lock\.acquired ", start=start)
    # An flock on the holder file keeps it live whatever its age.
    with holding_flock(holder):
        old = datetime.now(UTC).timestamp() - 3600
        os.utime(holder, (old, old))
        world.wait_status(lambda s: s["locked"] and s["holders"][0]["live"], "flocked = live")
        # Still live once the TTL has surely passed for the mtime (it is an hour old).
        assert agent.find(r"^lock\.released ", start=start) == []
    # The flock is gone and the mtime is old: stale at the next look. The holder's own close
    # may already have woken the agent, so the line may come before "other" does: wait from
    # before the flock ended.
    world.hold("other")
    agent.wait_line(r"^WARNING holder\.stale name=heartbeat", start=start)
    world.wait_status(lambda s: [h["live"] for h in s["holders"] if h["name"] == "heartbeat"]
                      == [False], "heartbeat stale in status")


def test_allow_until_lifts_the_baseline_but_not_holders(world: World) -> None:
    agent = world.agent(UPDATE_LOCK_ALWAYS="true")
    agent.wait_line(r"^lock\.acquired ")
    result = world.cli("allow", "1h")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("updates allowed until ")
    line = agent.wait_line(r"^lock\.released ")
    assert line == f"lock.released path={world.lock} why=allow-until unlinked=true"
    status = world.wait_status(lambda s: s["allow_until"] is not None, "allow_until")
    assert status["openings"] == ["allow-until"]
    world.hold("job")
    world.wait_status(lambda s: s["locked"] and s["reasons"] == ["holder:job"], "holder holds")
    (world.trigger / "job.lock").unlink()
    world.wait_status(lambda s: not s["locked"], "released again")
    start = agent.mark()
    (world.trigger / "allow-until").unlink()
    agent.wait_line(r"^lock\.acquired .*reasons=always", start=start)


def test_allow_until_in_the_past_or_malformed_changes_nothing(world: World) -> None:
    (world.trigger / "allow-until").write_text("yesterday-ish\n")
    agent = world.agent(UPDATE_LOCK_ALWAYS="true")
    line = agent.wait_line(r"^WARNING trigger\.ignored entry=allow-until")
    assert line == ('WARNING trigger.ignored entry=allow-until why="not an ISO 8601 time" '
                    "value=yesterday-ish")
    agent.wait_line(r"^lock\.acquired ")
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    (world.trigger / "allow-until").write_text(past + "\n")
    world.wait_status(lambda s: s["locked"] and s["allow_until"] is None, "still locked")


def test_windows_open_now_release_and_closed_now_hold(world: World) -> None:
    now = datetime.now(UTC)
    start = (now - timedelta(minutes=5)).strftime("%H:%M")
    end = (now + timedelta(minutes=10)).strftime("%H:%M")
    agent = world.agent(UPDATE_LOCK_WINDOWS=f"{start}-{end}", UPDATE_LOCK_TIMEZONE="UTC")
    status = world.wait_status(lambda s: s["window"] is not None, "window in status")
    assert status["window"]["open"] is True and status["locked"] is False
    agent.signal(signal.SIGTERM)
    agent.wait_exit()

    later, later_end = now + timedelta(hours=2), now + timedelta(hours=3)
    closed = f"{later.strftime('%H:%M')}-{later_end.strftime('%H:%M')}"
    agent = world.agent(UPDATE_LOCK_WINDOWS=closed, TZ="UTC")
    line = agent.wait_line(r"^lock\.acquired ")
    assert "reasons=window-closed" in line
    status = world.wait_status(lambda s: s["locked"], "locked outside the window")
    assert status["window"]["open"] is False
    assert status["window"]["next_change"] is not None


def test_boot_window_opens_after_boot(world: World) -> None:
    # The host has been up for longer than a second: the boot window is over.
    agent = world.agent(UPDATE_LOCK_ALWAYS="true", UPDATE_LOCK_BOOT_WINDOW="1s")
    agent.wait_line(r"^lock\.acquired .*reasons=always")
    agent.signal(signal.SIGTERM)
    agent.wait_exit()
    # A boot window longer than the uptime: still open, nothing held.
    agent = world.agent(UPDATE_LOCK_ALWAYS="true", UPDATE_LOCK_BOOT_WINDOW="3650d")
    status = world.wait_status(lambda s: "boot-window" in s["openings"], "boot window open")
    assert status["locked"] is False


def test_legacy_takes_both_names_the_same_way(world: World) -> None:
    legacy = world.lock_dir / "resin-updates.lock"
    agent = world.agent(UPDATE_LOCK_ALWAYS="true", UPDATE_LOCK_LEGACY="true")
    agent.wait_line(rf"^lock\.acquired path={legacy} ")
    status = world.wait_status(lambda s: len(s["paths"]) == 2, "both paths")
    assert status["paths"] == [str(world.lock), str(legacy)]
    assert host_sees_lock(world.lock) and host_sees_lock(legacy)
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    assert not world.lock.exists() and not legacy.exists()


def test_host_os_off_creates_the_file_without_flock(world: World) -> None:
    agent = world.agent(UPDATE_LOCK_ALWAYS="true", UPDATE_LOCK_HOST_OS="false")
    agent.wait_line(r"^lock\.acquired .*host_os=false")
    assert world.lock.exists()
    assert not host_sees_lock(world.lock), "HUP reboots are not held with UPDATE_LOCK_HOST_OS off"


def test_disable_holds_nothing_and_says_so(world: World) -> None:
    agent = world.agent(UPDATE_LOCK_ALWAYS="true", UPDATE_LOCK_DISABLE="on")
    line = agent.wait_line(r"^agent\.disabled ")
    assert line == 'agent.disabled why="UPDATE_LOCK_DISABLE is on: holding nothing"'
    world.hold("job")
    status = world.wait_status(lambda s: s["holders"] != [], "holder seen")
    assert status["locked"] is False and status["disabled"] is True
    assert not world.lock.exists()


def test_every_bad_variable_is_reported_at_once_and_nothing_is_touched(world: World) -> None:
    agent = world.agent(UPDATE_LOCK_ALWAYS="maybe", UPDATE_LOCK_WINDOWS="25:00-26:00",
                        UPDATE_LOCK_HOLDER_TTL="soon", UPDATE_LOCK_TIMEZONE="Mars/Olympus",
                        UPDATE_LOCK_ALLWAYS="true")
    assert agent.wait_exit() == 78
    out = agent.output().splitlines()
    assert out[0] == ("WARNING config.unknown_variable variable=UPDATE_LOCK_ALLWAYS "
                      "why=\"not a known UPDATE_LOCK_ variable: a typo?\"")
    assert out[1] == ('ERROR config.invalid variable=UPDATE_LOCK_ALWAYS value=maybe '
                      'expected="a boolean: 1/true/yes/on or 0/false/no/off"')
    assert out[2].startswith("ERROR config.invalid variable=UPDATE_LOCK_WINDOWS "
                             "value=25:00-26:00 expected=")
    assert out[3] == ("ERROR config.invalid variable=UPDATE_LOCK_TIMEZONE value=Mars/Olympus "
                      'expected="an IANA time zone such as Europe/Berlin or UTC"')
    assert out[4] == ('ERROR config.invalid variable=UPDATE_LOCK_HOLDER_TTL value=soon '
                      'expected="a duration like 90s, 15m, 2h, 1d, 1h30m or plain seconds, or '
                      'off/0"')
    assert len(out) == 5
    assert not world.lock.exists()
    assert list(world.trigger.iterdir()) == []


def test_check_config(world: World) -> None:
    ok = world.cli("check-config", UPDATE_LOCK_WINDOWS="Mon-Fri 02:00-04:00")
    assert ok.returncode == 0
    assert ok.stdout == f"config.ok path={world.lock} dir={world.trigger}\n"
    bad = world.cli("check-config", UPDATE_LOCK_OVERRIDE_GRACE="-5m")
    assert bad.returncode == 78
    assert bad.stdout == ('ERROR config.invalid variable=UPDATE_LOCK_OVERRIDE_GRACE value=-5m '
                          'expected="a duration like 90s, 15m, 2h, 1d, 1h30m or plain seconds"\n')


@needs_root
def test_refuses_to_run_as_the_supervisors_uid(world: World) -> None:
    os.chmod(world.tmp, 0o755)  # noqa: S103  # let uid 65534 reach the test's files
    env = world.env(UPDATE_LOCK_ALWAYS="1", PYTHONPATH=readable_package())
    proc = Proc([*as_uid_argv(65534), sys.executable, "-m", "update_lock", "run"], env)
    world.procs.append(proc)
    assert proc.wait_exit() == 78
    assert proc.output() == (
        "ERROR agent.refused uid=65534 why=\"uid 65534 is the balena Supervisor's own: a lock "
        "file it owns is ignored and deleted by the Supervisor; run as root (or any other uid)\"")
    assert not world.lock.exists()


def test_odd_trigger_entries_are_reported_once_and_ignored(world: World) -> None:
    (world.trigger / "dir.lock").mkdir()
    (world.trigger / "link.lock").symlink_to("/etc/shadow")
    (world.trigger / ".hidden.lock").write_text("")
    (world.trigger / "notes.txt").write_text("")
    (world.trigger / "has space.lock").write_text("")
    os.mkfifo(world.trigger / "fifo.lock")
    agent = world.agent()
    world.wait_status(lambda s: True, "a status")
    ignored = sorted(agent.find(r"^WARNING trigger\.ignored "))
    assert ignored == sorted([
        "WARNING trigger.ignored entry=.hidden.lock why=invalid-holder-name",
        "WARNING trigger.ignored entry=dir.lock why=not-a-regular-file",
        "WARNING trigger.ignored entry=fifo.lock why=not-a-regular-file",
        'WARNING trigger.ignored entry="has space.lock" why=invalid-holder-name',
        "WARNING trigger.ignored entry=link.lock why=symlink",
        "WARNING trigger.ignored entry=notes.txt why=not-a-holder-name",
    ])
    start = agent.mark()
    world.hold("real")
    world.wait_status(lambda s: s["locked"], "a real holder still works")
    assert agent.find(r"trigger\.ignored", start=start) == [], "reported once"


def test_trigger_dir_deleted_and_recreated_is_watched_again(world: World) -> None:
    agent = world.agent()
    world.wait_status(lambda s: True, "a status")
    for child in world.trigger.iterdir():
        child.unlink()
    world.trigger.rmdir()
    agent.wait_line(r"^WARNING watch\.lost dir=")
    wait_for(world.trigger.is_dir, "the agent re-creates its trigger directory")
    world.hold("after")
    world.wait_status(lambda s: s["locked"], "a holder in the new directory")


def test_missing_trigger_dir_is_created(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.trigger.rmdir()
    try:
        agent = world.agent()
        agent.wait_line(rf"^dir\.created dir={world.trigger}$")
        world.hold("x")
        world.wait_status(lambda s: s["locked"], "locked")
    finally:
        world.cleanup()


def test_cli_hold_wait_status_release(world: World) -> None:
    world.agent()
    held = world.cli("hold", "deploy", "--reason", "db migration")
    assert held.returncode == 0 and held.stdout.startswith("holding deploy: ")
    waited = world.cli("wait", "deploy", "--timeout", "10s")
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout == "deploy acknowledged: the lock is held\n"
    summary = world.cli("status")
    assert summary.returncode == 0
    assert summary.stdout.splitlines()[:2] == ["locked: holder:deploy",
                                               "  holder deploy (live): db migration"]
    as_json = json.loads(world.cli("status", "--json").stdout)
    assert as_json["locked"] is True
    released = world.cli("release", "deploy")
    assert released.returncode == 0 and released.stdout == "released deploy\n"
    world.wait_status(lambda s: not s["locked"], "released")
    again = world.cli("release", "deploy")
    assert again.returncode == 1
    bad = world.cli("hold", ".x")
    assert bad.returncode != 0 and "is not a holder name" in bad.stderr


def test_cli_wait_times_out_with_a_message(world: World) -> None:
    result = world.cli("wait", "nobody", "--timeout", "0.2")
    assert result.returncode == 1
    assert result.stderr == (f"update-lock: timed out after 0.2s waiting for nobody to be "
                             f"acknowledged in {world.trigger}/status.json\n")


def test_status_without_an_agent_says_so(world: World) -> None:
    result = world.cli("status")
    assert result.returncode == 1
    assert result.stderr == f"no status in {world.trigger}: is the agent running?\n"


def test_health(world: World) -> None:
    assert world.cli("health").returncode == 1
    agent = world.agent()
    world.wait_status(lambda s: True, "a status")
    result = world.cli("health")
    assert result.returncode == 0 and result.stdout == "healthy\n"
    agent.signal(signal.SIGKILL)
    agent.wait_exit()
    dead = world.cli("health")
    assert dead.returncode == 1 and "is not running" in dead.stderr


def test_status_json_is_never_seen_half_written(world: World) -> None:
    agent = world.agent()
    world.wait_status(lambda s: True, "a status")
    seen = 0
    for i in range(40):
        path = world.hold(f"h{i}")
        text = (world.trigger / "status.json").read_text()
        json.loads(text)
        seen += 1
        path.unlink()
    assert seen == 40
    assert agent.popen.poll() is None


def test_a_module_run_matches_the_console_script(world: World) -> None:
    env = base_env()
    result = subprocess.run([sys.executable, "-m", "update_lock", "--version"], env=env,
                            capture_output=True, text=True, timeout=10)
    assert result.stdout.strip() == "0.1.0"


def test_sigterm_while_blocked_writing_a_log_line_still_releases(world: World) -> None:
    """Regression: the SIGTERM handler used to log, and deadlocked when the signal landed
    while the main thread held the logger's lock (found by the benchmarks)."""
    env = world.env(UPDATE_LOCK_ALWAYS="true")
    agent = subprocess.Popen([sys.executable, "-m", "update_lock", "run"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    assert agent.stdout is not None
    try:
        wait_for(lambda: world.status() is not None, "a first status")
        # Nobody reads the agent's stdout: holder churn fills the pipe until it blocks.
        count = 0

        def blocked_in_write() -> bool:
            nonlocal count
            for _ in range(200):
                holder = world.trigger / f"h{count % 50}.lock"
                holder.write_text("")
                holder.unlink()
                count += 1
            with open(f"/proc/{agent.pid}/wchan") as handle:
                return "pipe" in handle.read()

        wait_for(blocked_in_write, "the agent to block writing to a full stdout", 60)
        agent.send_signal(signal.SIGTERM)
        os.set_blocking(agent.stdout.fileno(), False)

        def drained_and_exited() -> bool:
            try:
                while agent.stdout is not None and agent.stdout.read(65536):
                    pass
            except BlockingIOError:
                pass
            return agent.poll() is not None

        wait_for(drained_and_exited, "the agent to exit after SIGTERM", 20)
        assert agent.returncode == 0
        assert not world.lock.exists()
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
        agent.stdout.close()


@needs_root
def test_a_lock_directory_it_may_not_write_is_reported_and_retried(world: World) -> None:
    os.chmod(world.lock_dir, 0o755)  # noqa: S103  # root's, not writable by the agent's uid
    os.chmod(world.tmp, 0o755)  # noqa: S103
    os.chown(world.trigger, 1000, 1000)
    env = world.env(UPDATE_LOCK_ALWAYS="true", PYTHONPATH=readable_package())
    proc = Proc([*as_uid_argv(1000), sys.executable, "-m", "update_lock", "run"], env)
    world.procs.append(proc)
    line = proc.wait_line(r"^WARNING agent\.retry ")
    assert line == (f'WARNING agent.retry error="cannot create {world.lock}: EACCES '
                    '(Permission denied)" in_s=5')
    assert proc.popen.poll() is None, "reported and retried, not a crash"
    os.chmod(world.lock_dir, 0o1777)  # noqa: S103
    proc.wait_line(r"^lock\.acquired ")


def test_cli_trigger_files_follow_no_planted_link(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The trigger directory is shared: a link planted at the CLI's temp name (its pid is
    guessable) must not make it write elsewhere."""
    trigger = tmp_path / "trigger"
    trigger.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    (trigger / f".update-lock-cli.{os.getpid()}.tmp").symlink_to(victim)
    monkeypatch.setenv("UPDATE_LOCK_DIR", str(trigger))
    assert cli.main(["hold", "job", "--reason", "planted"]) == 0
    assert victim.read_text() == "untouched\n"
    assert (trigger / "job.lock").read_text() == "planted\n"
    assert not (trigger / "job.lock").is_symlink()
