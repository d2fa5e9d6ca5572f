"""The agent and the Supervisor API end to end: a real agent subprocess against the simulator
(a real HTTP server on 127.0.0.1 that applies updates with the real lock rules)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Proc, World, wait_for
from update_lock.simulator import SimulatorServer

KEY = "sekrit-link-KEY-42"


@pytest.fixture
def sim(world: World) -> Iterator[SimulatorServer]:
    # Nothing pending at first: each test makes a release pending once the agent holds.
    server = SimulatorServer(world.lock_dir, KEY, pending=False, apply_s=0.5,
                             poll_interval_s=900.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def api_agent(world: World, sim: SimulatorServer, **extra: str) -> Proc:
    env = {"BALENA_SUPERVISOR_ADDRESS": sim.address, "BALENA_SUPERVISOR_API_KEY": KEY,
           "UPDATE_LOCK_POLL_INTERVAL": "1s"}
    env.update(extra)
    return world.agent(**env)


def updates_posted(sim: SimulatorServer) -> list[dict[str, object]]:
    bodies = []
    for request in sim.requests_seen:
        if request.method == "POST" and request.path == "/v1/update":
            body = request.json()
            assert isinstance(body, dict)
            bodies.append(body)
    return bodies


def assert_key_nowhere(world: World, *procs: Proc) -> None:
    for proc in procs:
        assert KEY not in proc.output()
    for path in world.trigger.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_a_holder_holds_the_update_back_and_release_applies_it_at_once(
        world: World, sim: SimulatorServer) -> None:
    world.hold("job")
    agent = api_agent(world, sim)
    agent.wait_line(r"^lock\.acquired ")
    sim.release()
    # The simulated Supervisor tries, finds the user lock, and backs off.
    assert sim.wait_until(lambda s: s.update_failed, 10)
    status = world.wait_status(lambda s: s["update_pending"] is True, "update_pending")
    assert status["locked"] is True
    agent.wait_line(r"^update\.held_back ")
    assert sim.current_commit != sim.target_commit

    (world.trigger / "job.lock").unlink()
    agent.wait_line(r"^lock\.released ")
    line = agent.wait_line(r"^update\.apply_on_release ")
    assert line == ('update.apply_on_release request="POST /v1/update cancel=true" '
                    'when="update pending"')
    # Applied now, not after the Supervisor's backoff (up to its 900 s poll interval here).
    assert sim.wait_until(lambda s: not s.update_pending, 10)
    assert updates_posted(sim) == [{"cancel": True}]
    world.wait_status(lambda s: s["update_pending"] is False, "update applied")
    agent.wait_line(r"^update\.applied ")
    assert_key_nowhere(world, agent)


def test_the_override_request_is_exact_and_the_update_applies(
        world: World, sim: SimulatorServer) -> None:
    agent = api_agent(world, sim, UPDATE_LOCK_ALWAYS="true")
    agent.wait_line(r"^lock\.acquired ")
    sim.release()
    assert sim.wait_until(lambda s: s.update_failed, 10)
    start = agent.mark()
    result = world.cli("override", "--reason", "hotfix now")
    assert result.returncode == 0, result.stderr
    agent.wait_line(r"^override\.received by=request reason=\"hotfix now\" released_until=",
                    start=start)
    agent.wait_line(r"^lock\.released .*why=override", start=start)
    agent.wait_line(r"^override\.requested ", start=start)
    forced = [r for r in sim.requests_seen if r.path == "/v1/update"]
    assert len(forced) == 1
    request = forced[0]
    assert request.method == "POST"
    assert request.header("Authorization") == f"Bearer {KEY}"
    assert request.header("Content-Type") == "application/json"
    assert json.loads(request.body) == {"force": True, "cancel": True}
    assert "apikey" not in request.query
    assert not (world.trigger / "override").exists(), "the request is consumed"
    # The simulated Supervisor applies (with its own uid-65534 lock), then the agent, whose
    # policy says always, takes the lock again once the apply is reported finished.
    assert sim.wait_until(lambda s: not s.update_pending, 10)
    agent.wait_line(r"^override\.ended why=apply-finished$", start=start)
    agent.wait_line(r"^lock\.acquired .*reasons=always", start=start)
    status = world.wait_status(lambda s: s["locked"] and s["override"]["outcome"] == "requested",
                               "re-locked with the outcome recorded")
    assert status["override"]["by"] == "request"
    assert status["override"]["reason"] == "hotfix now"
    assert status["override"]["ended"] == "apply-finished"
    assert_key_nowhere(world, agent)


def test_max_defer_forces_once_per_pending_episode(world: World, sim: SimulatorServer) -> None:
    agent = api_agent(world, sim, UPDATE_LOCK_ALWAYS="true", UPDATE_LOCK_MAX_DEFER="1s")
    agent.wait_line(r"^lock\.acquired ")
    sim.release()
    agent.wait_line(r"^override\.received by=max-defer ")
    assert sim.wait_until(lambda s: not s.update_pending, 10)
    start = agent.mark()
    agent.wait_line(r"^lock\.acquired ", start=start)
    world.wait_status(lambda s: s["locked"] and s["pending_since"] is None, "episode over")
    assert [b for b in updates_posted(sim) if b.get("force")] == [{"force": True,
                                                                     "cancel": True}]
    # A new release is a new episode: forced once more, and only once.
    sim.release()
    agent.wait_line(r"^override\.received by=max-defer ", start=start)
    assert sim.wait_until(lambda s: not s.update_pending, 10)
    agent.wait_line(r"^override\.ended ", start=start)
    world.wait_status(lambda s: s["locked"] and s["pending_since"] is None, "episode 2 over")
    assert len([b for b in updates_posted(sim) if b.get("force")]) == 2


def test_pending_since_survives_an_agent_restart(world: World, sim: SimulatorServer) -> None:
    first = api_agent(world, sim, UPDATE_LOCK_ALWAYS="true")
    first.wait_line(r"^lock\.acquired ")
    sim.release()
    status = world.wait_status(lambda s: s["pending_since"] is not None, "pending_since")
    since = status["pending_since"]
    first.signal(signal.SIGKILL)
    first.wait_exit()
    second = api_agent(world, sim, UPDATE_LOCK_ALWAYS="true")
    second.wait_line(r"^lock\.adopted ")
    world.wait_status(lambda s: s["pid"] == second.pid and s["update_pending"] is True,
                      "the new agent's status")
    assert world.status()["pending_since"] == since  # type: ignore[index]


def test_grace_expiry_relocks_when_no_apply_follows(world: World, tmp_path: Path) -> None:
    # A Supervisor with nothing pending: the forced update does nothing, yet succeeds.
    server = SimulatorServer(world.lock_dir, KEY, pending=False).start()
    try:
        agent = api_agent(world, server, UPDATE_LOCK_ALWAYS="true",
                          UPDATE_LOCK_OVERRIDE_GRACE="2s")
        agent.wait_line(r"^lock\.acquired ")
        start = agent.mark()
        world.cli("override")
        agent.wait_line(r"^override\.requested ", start=start)
        agent.wait_line(r"^lock\.acquired ", start=start)
        assert not agent.find(r"^override\.ended", start=start)
        status = world.wait_status(lambda s: s["locked"], "re-locked after grace")
        assert status["override"]["outcome"] == "requested"
    finally:
        server.stop()


def test_a_supervisor_lock_during_the_apply_is_respected(world: World) -> None:
    server = SimulatorServer(world.lock_dir, KEY, pending=False, apply_s=3.0).start()
    try:
        agent = api_agent(world, server, UPDATE_LOCK_ALWAYS="true",
                          UPDATE_LOCK_OVERRIDE_GRACE="1s")
        agent.wait_line(r"^lock\.acquired ")
        server.release()
        start = agent.mark()
        world.cli("override")
        # The grace is shorter than the apply: the agent wants the lock back while the
        # Supervisor's own (uid 65534) lock is there, and must wait for it, never delete it.
        assert server.wait_until(lambda s: s.applying, 10)
        assert os.lstat(world.lock).st_uid == 65534
        agent.wait_line(r"^lock\.blocked .*by=supervisor", start=start)
        world.wait_status(lambda s: s["blocked_by_supervisor"], "blocked_by_supervisor")
        assert server.wait_until(lambda s: not s.update_pending, 10)
        agent.wait_line(r"^lock\.acquired ", start=start)
        assert os.lstat(world.lock).st_uid == os.geteuid()
    finally:
        server.stop()


def test_override_refused_when_not_allowed(world: World, sim: SimulatorServer) -> None:
    agent = api_agent(world, sim, UPDATE_LOCK_ALWAYS="true", UPDATE_LOCK_ALLOW_OVERRIDE="no")
    agent.wait_line(r"^lock\.acquired ")
    (world.trigger / "override").write_text("please\n")
    line = agent.wait_line(r"^WARNING override\.refused ")
    assert line == ("WARNING override.refused by=request reason=please "
                    "why=\"UPDATE_LOCK_ALLOW_OVERRIDE is off\"")
    status = world.wait_status(lambda s: s["override"] is not None, "refusal in status")
    assert status["override"]["outcome"] == "refused"
    assert status["locked"] is True
    wait_for(lambda: not (world.trigger / "override").exists(), "the request removed")
    assert [b for b in updates_posted(sim) if b.get("force")] == []


def test_without_the_api_the_agent_locks_and_says_what_is_off(world: World) -> None:
    agent = world.agent(UPDATE_LOCK_ALWAYS="true")
    line = agent.wait_line(r"^api\.disabled ")
    assert line == ("api.disabled why=\"BALENA_SUPERVISOR_ADDRESS is not set: add the label "
                    "io.balena.features.supervisor-api: '1' to this service\" "
                    "off=override-request,apply-on-release,update-awareness,max-defer")
    agent.wait_line(r"^lock\.acquired ")
    status = world.wait_status(lambda s: s["locked"], "locked")
    assert status["update_pending"] is None and status["api"]["enabled"] is False
    world.cli("override")
    agent.wait_line(r"^override\.released_only ")
    status = world.wait_status(lambda s: (s["override"] or {}).get("outcome") == "released-only",
                               "released-only")
    assert status["locked"] is False


def test_a_wrong_key_says_what_to_fix_and_never_shows_the_key(world: World,
                                                             sim: SimulatorServer) -> None:
    agent = world.agent(BALENA_SUPERVISOR_ADDRESS=sim.address,
                        BALENA_SUPERVISOR_API_KEY="wrong-" + KEY, UPDATE_LOCK_ALWAYS="true")
    line = agent.wait_line(r"^WARNING api\.unreachable ")
    assert "unauthorised: set the label io.balena.features.supervisor-api: '1' on this " \
           "service, or check BALENA_SUPERVISOR_API_KEY" in line
    world.wait_status(lambda s: s["locked"] and s["api"]["error"], "the error in status")
    assert "wrong-" + KEY not in agent.output()
    for path in world.trigger.rglob("*"):
        assert ("wrong-" + KEY).encode() not in path.read_bytes()


def test_an_override_file_gets_its_reason_even_if_written_in_two_steps(world: World) -> None:
    """`echo reason > override` creates the file, then writes: the request is consumed when
    acted on, so an empty one waits a moment for its reason; a plain `touch` still works."""
    agent = world.agent(UPDATE_LOCK_ALWAYS="true")
    agent.wait_line(r"^lock\.acquired ")
    # Created, then written: the agent, woken by the creation, may read it empty first.
    with open(world.trigger / "override", "w") as request:
        request.flush()
        request.write("two steps\n")
    agent.wait_line(r'^override\.received by=request reason="two steps" ')
    start = agent.mark()
    (world.trigger / "override").touch()
    agent.wait_line(r'^override\.received by=request reason="override file" ', start=start)
