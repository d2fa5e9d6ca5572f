"""The Supervisor simulator: real HTTP on 127.0.0.1, real lock files, real uids, a real process.

Every wait is on a condition with a deadline (a log line, a simulator state); nothing sleeps to
order events. Each simulator is stopped by a fixture; pytest-timeout bounds every test.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from update_lock.errors import ApiError
from update_lock.logs import Logger
from update_lock.simulator import (
    SUPERVISOR_UID,
    SimulatorServer,
    check_truthy,
    main,
    pretty_ms,
)
from update_lock.supervisor_api import SupervisorClient

KEY = "sim-test-key-7f3a9c"
BLOCK_DIR = Path(__file__).resolve().parent.parent / "block"
TEST_TIMEOUT_S = 20
WAIT_S = 5.0
LOCKED = "Lockfile exists for { appId: 1, service: main }"
IS_ROOT = os.geteuid() == 0

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)


class LineSink(io.StringIO):
    """A Logger stream that wakes waiters on every write."""

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()

    def write(self, text: str) -> int:
        with self._cond:
            written = super().write(text)
            self._cond.notify_all()
            return written

    def text(self) -> str:
        with self._cond:
            return self.getvalue()

    def wait_for(self, needle: str, count: int = 1, timeout_s: float = WAIT_S) -> str:
        """The ``count``-th line containing ``needle``, waiting for it up to ``timeout_s``."""
        with self._cond:

            def matches() -> list[str]:
                return [line for line in self.getvalue().splitlines() if needle in line]

            ok = self._cond.wait_for(lambda: len(matches()) >= count, timeout_s)
            assert ok, f"no {count}x {needle!r} after {timeout_s}s; log:\n{self.getvalue()}"
            return matches()[count - 1]


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    path = tmp_path / "services" / "1" / "main"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def sink() -> LineSink:
    return LineSink()


@pytest.fixture
def make_sim(lock_dir: Path, sink: LineSink) -> Iterator[Callable[..., SimulatorServer]]:
    started: list[SimulatorServer] = []

    def make(**options: object) -> SimulatorServer:
        settings: dict[str, object] = {"apply_s": 0.05, "poll_interval_s": 60.0}
        settings.update(options)
        sim = SimulatorServer(lock_dir, KEY, logger=Logger(stream=sink), **settings)
        started.append(sim)
        return sim.start()

    yield make
    for sim in started:
        sim.stop()


def call(
    sim: SimulatorServer,
    method: str,
    path: str,
    body: object = None,
    *,
    key: str | None = KEY,
    content_type: str | None = "application/json",
) -> tuple[int, bytes]:
    """One request, exactly as given: no header is added but Content-Length and Host."""
    port = int(sim.address.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    headers = {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        if content_type is not None:
            headers["Content-Type"] = content_type
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def user_lock(lock_dir: Path, name: str = "updates.lock") -> Path:
    """A user lock, made the way a holder makes one: an exclusive create (as us, uid != 65534)."""
    path = lock_dir / name
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return path


def identity(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


# ---- blocked by a user lock -------------------------------------------------------------------


def test_user_lock_blocks_the_apply_and_the_log_says_so(make_sim, lock_dir, sink):
    lock = user_lock(lock_dir)
    before = identity(lock)
    sim = make_sim(pending=True, poll_interval_s=2.0)
    line = sink.wait_for("Updates are locked, retrying in")
    assert line == (
        'simulator.locked message="Updates are locked, retrying in 1s. Reason: '
        f'{LOCKED}" retry_in_s=1'
    )
    assert sim.app_state == "applying"
    assert sim.update_pending and sim.update_failed
    status, body = call(sim, "GET", "/v1/device")
    device = json.loads(body)
    assert status == 200
    assert (device["update_pending"], device["update_failed"]) == (True, True)
    assert "commit" not in device
    status, body = call(sim, "GET", "/v2/state/status")
    assert json.loads(body)["appState"] == "applying"
    # A cancel without force asks for an attempt now: still locked, and the backoff doubles.
    assert call(sim, "POST", "/v1/update", {"cancel": True})[0] == 204
    assert "Updates are locked, retrying in 2s. Reason:" in sink.wait_for("simulator.locked", 2)
    assert identity(lock) == before  # untouched


def test_removing_the_lock_lets_the_next_retry_apply(make_sim, lock_dir, sink):
    lock = user_lock(lock_dir)
    sim = make_sim(pending=True, poll_interval_s=0.2)
    sink.wait_for("Updates are locked, retrying in 200ms")
    target = sim.target_commit
    lock.unlink()
    assert sim.wait_until(lambda s: s.app_state == "applied", WAIT_S)
    assert sim.current_commit == target
    assert not sim.update_pending and not sim.update_failed
    assert os.listdir(lock_dir) == []
    assert json.loads(call(sim, "GET", "/v1/device")[1])["commit"] == target


def test_removing_the_lock_then_cancel_applies_at_once(make_sim, lock_dir, sink):
    lock = user_lock(lock_dir)
    sim = make_sim(pending=True, poll_interval_s=60.0)  # the next retry would be far away
    sink.wait_for("Updates are locked, retrying in 1s")
    lock.unlink()
    started = time.monotonic()
    assert call(sim, "POST", "/v1/update", {"cancel": True}) == (204, b"")
    assert sim.wait_until(lambda s: s.app_state == "applied", WAIT_S)
    assert time.monotonic() - started < 1.0  # well before the 1 s backoff
    assert sim.attempts == 0  # reset once applied


# ---- force and override -----------------------------------------------------------------------


def test_force_deletes_user_locks_and_holds_its_own_65534_lock(make_sim, lock_dir, sink):
    user_lock(lock_dir, "updates.lock")
    user_lock(lock_dir, "resin-updates.lock")
    bystanders = {
        name: f"not a lock: {name}" for name in ("updates.lock.old", "keep.txt", "x.lock")
    }
    for name, content in bystanders.items():
        (lock_dir / name).write_text(content)
    sim = make_sim(pending=True, apply_s=0.5)
    sink.wait_for("Updates are locked, retrying in 1s")

    assert call(sim, "POST", "/v1/update", {"force": True, "cancel": True}) == (204, b"")
    sink.wait_for("simulator.apply.started")
    own = os.lstat(lock_dir / "updates.lock")
    if IS_ROOT:
        assert (own.st_uid, own.st_gid) == (SUPERVISOR_UID, SUPERVISOR_UID)
    assert not (lock_dir / "resin-updates.lock").exists()
    assert sim.applying
    assert json.loads(call(sim, "GET", "/v1/device")[1])["status"] == "Installing"
    # A holder trying to lock now finds the Supervisor's file there.
    with pytest.raises(FileExistsError):
        user_lock(lock_dir)

    assert sim.wait_until(lambda s: s.app_state == "applied", WAIT_S)
    assert sorted(os.listdir(lock_dir)) == sorted(bystanders)
    for name, content in bystanders.items():
        assert (lock_dir / name).read_text() == content
    log = sink.text()
    assert f"simulator.lock.deleted path={lock_dir}/updates.lock why=force" in log
    assert f"simulator.lock.deleted path={lock_dir}/resin-updates.lock why=force" in log
    assert f"simulator.lock.released path={lock_dir}/updates.lock" in log


@pytest.mark.skipif(not IS_ROOT, reason="needs root to chown to 65534")
def test_own_lock_is_uid_65534_while_applying(make_sim, lock_dir, sink):
    sim = make_sim(pending=True, apply_s=0.5)
    sink.wait_for("simulator.apply.started")
    assert os.lstat(lock_dir / "updates.lock").st_uid == 65534
    assert f"simulator.lock.taken path={lock_dir}/updates.lock uid=65534" in sink.text()
    assert sim.wait_until(lambda s: s.app_state == "applied", WAIT_S)
    assert not (lock_dir / "updates.lock").exists()


def test_force_without_cancel_is_dropped_when_stuck(make_sim, lock_dir, sink):
    """Supervisor v17.5+ (issue #2541): the 204 comes back, the force does not arrive."""
    lock = user_lock(lock_dir)
    sim = make_sim(pending=True)
    sink.wait_for("Updates are locked, retrying in 1s")
    assert call(sim, "POST", "/v1/update", {"force": True})[0] == 204
    assert "WARNING simulator.update.force-dropped why=stuck-on-lock-without-cancel" in (
        sink.wait_for("simulator.update.force-dropped")
    )
    sink.wait_for("Updates are locked, retrying in 2s")
    assert lock.exists()
    assert sim.app_state == "applying"


def test_override_toggle_deletes_user_locks(make_sim, lock_dir, sink):
    user_lock(lock_dir, "resin-updates.lock")
    sim = make_sim(pending=True)
    sink.wait_for("Updates are locked, retrying in 1s")
    status, body = call(sim, "POST", "/sim/override-lock", {"enabled": True})
    assert (status, json.loads(body)) == (200, {"override_lock": True})
    assert sim.wait_until(lambda s: s.app_state == "applied", WAIT_S)
    assert os.listdir(lock_dir) == []
    assert "why=override" in sink.wait_for("simulator.lock.deleted")
    # Still on: the next release deletes a new lock too.
    user_lock(lock_dir)
    call(sim, "POST", "/sim/release", {"commit": "c2"})
    assert sim.wait_until(lambda s: s.current_commit == "c2", WAIT_S)
    assert os.listdir(lock_dir) == []


def test_without_json_content_type_force_is_ignored(make_sim, lock_dir, sink):
    lock = user_lock(lock_dir)
    before = identity(lock)
    sim = make_sim(pending=True)
    sink.wait_for("Updates are locked, retrying in 1s")
    body = b'{"force": true, "cancel": true}'
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded"):
        assert call(sim, "POST", "/v1/update", body, content_type=content_type)[0] == 204
        status, _ = call(sim, "POST", "/v1/reboot", body, content_type=content_type)
        assert status == 423
    sink.wait_for("simulator.locked", count=4)
    assert "force=false cancel=false" in sink.wait_for("simulator.update.triggered")
    assert identity(lock) == before
    assert sim.app_state == "applying"
    # The same body with the header does force it.
    assert call(sim, "POST", "/v1/update", body)[0] == 204
    assert sim.wait_until(lambda s: s.app_state == "applied", WAIT_S)


# ---- files the simulator must not touch -------------------------------------------------------


def test_a_lock_appearing_before_its_exclusive_create_fails_the_attempt(
    make_sim, lock_dir, sink, monkeypatch
):
    lock = user_lock(lock_dir)
    before = identity(lock)
    # The check ran before the holder's file appeared: only the O_EXCL create sees it.
    monkeypatch.setattr(SimulatorServer, "_user_locks", lambda self: [])
    sim = make_sim(pending=True)
    sink.wait_for("Updates are locked, retrying in 1s")
    assert sim.update_failed and sim.update_pending
    assert identity(lock) == before
    assert os.lstat(lock).st_uid == os.geteuid()
    assert "simulator.lock.taken" not in sink.text()


def test_a_lock_that_replaced_its_own_is_left_alone(make_sim, lock_dir, sink):
    sim = make_sim(pending=True, apply_s=0.5)
    sink.wait_for("simulator.apply.started")
    (lock_dir / "updates.lock").unlink()
    mine = user_lock(lock_dir)
    before = identity(mine)
    assert sim.wait_until(lambda s: s.app_state == "applied", WAIT_S)
    assert identity(mine) == before
    assert f"simulator.lock.gone path={lock_dir}/updates.lock why=replaced" in sink.text()


@pytest.mark.skipif(not IS_ROOT, reason="needs root to chown to 65534")
def test_a_65534_file_is_the_supervisors_own(make_sim, lock_dir, sink):
    leftover = lock_dir / "updates.lock"
    leftover.touch()
    os.chown(leftover, SUPERVISOR_UID, SUPERVISOR_UID)
    sim = make_sim()
    # Not a user lock: a reboot goes through and nothing is deleted.
    status, body = call(sim, "POST", "/v1/reboot", {})
    assert (status, json.loads(body)) == (202, {"Data": "OK", "Error": None})
    assert leftover.exists()
    # An apply takes it over and removes it when done.
    call(sim, "POST", "/sim/release", {})
    assert sim.wait_until(lambda s: s.app_state == "applied", WAIT_S)
    assert f"simulator.lock.adopted path={leftover}" in sink.text()
    assert not leftover.exists()


# ---- reboot, shutdown, stop-service -----------------------------------------------------------


@pytest.mark.parametrize("action", ["reboot", "shutdown"])
def test_reboot_and_shutdown_honour_the_lock(make_sim, lock_dir, action):
    sim = make_sim()
    lock = user_lock(lock_dir, "resin-updates.lock")
    status, body = call(sim, "POST", f"/v1/{action}", {})
    assert status == 423
    assert json.loads(body) == {"Data": "", "Error": LOCKED}
    assert lock.exists()
    assert (sim.reboots, sim.shutdowns) == (0, 0)
    status, body = call(sim, "POST", f"/v1/{action}", {"force": True})
    assert (status, json.loads(body)) == (202, {"Data": "OK", "Error": None})
    assert not lock.exists()
    status, body = call(sim, "POST", f"/v1/{action}")
    assert status == 202
    assert (sim.reboots, sim.shutdowns) == ((2, 0) if action == "reboot" else (0, 2))


def test_stop_service(make_sim):
    sim = make_sim()
    assert call(sim, "POST", "/v2/applications/1/stop-service", {"serviceName": "main"}) == (
        200,
        b"OK",
    )
    assert sim.stopped_services == [("1", "main")]
    status, _ = call(
        sim, "POST", "/v2/applications/1/stop-service", {"serviceName": "main"}, content_type=None
    )
    assert status == 400
    status, _ = call(sim, "POST", "/v2/applications/2/stop-service", {"serviceName": "main"})
    assert status == 401
    assert sim.stopped_services == [("1", "main")]


# ---- authentication and the read endpoints ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/device"),
        ("GET", "/v2/state/status"),
        ("GET", "/v2/version"),
        ("POST", "/v1/update"),
        ("POST", "/v1/reboot"),
        ("POST", "/v2/applications/1/stop-service"),
        ("GET", "/sim/state"),
        ("POST", "/sim/release"),
        ("GET", "/nowhere"),
    ],
)
def test_401_without_or_with_a_wrong_key(make_sim, lock_dir, method, path):
    sim = make_sim(pending=True)
    for key in (None, "wrong", KEY.upper(), f"{KEY}x"):
        assert call(sim, method, path, {}, key=key) == (401, b"Unauthorized")
    assert sim.wait_until(lambda s: s.app_state == "applied", WAIT_S)
    assert sim.reboots == 0


def test_key_in_query_and_open_endpoints(make_sim):
    sim = make_sim()
    assert call(sim, "GET", "/ping", key=None) == (200, b"OK")
    assert call(sim, "GET", "/v1/healthy", key=None) == (200, b"OK")
    assert call(sim, "GET", f"/v2/version?apikey={KEY}", key=None)[0] == 200
    assert call(sim, "GET", "/v2/version?apikey=wrong", key=None)[0] == 401
    assert call(sim, "GET", "/nowhere")[0] == 404


def test_read_endpoints(make_sim):
    sim = make_sim()
    status, body = call(sim, "GET", "/v2/version")
    assert (status, json.loads(body)) == (200, {"status": "success", "version": "19.0.5"})
    device = json.loads(call(sim, "GET", "/v1/device")[1])
    assert set(device) == {
        "update_pending",
        "update_downloaded",
        "update_failed",
        "status",
        "commit",
        "download_progress",
        "os_version",
        "supervisor_version",
        "ip_address",
        "mac_address",
        "api_port",
    }
    assert device["commit"] == sim.current_commit
    assert (device["update_pending"], device["update_failed"]) == (False, False)
    assert device["api_port"] == int(sim.address.rsplit(":", 1)[1])
    status = json.loads(call(sim, "GET", "/v2/state/status")[1])
    assert status == {
        "status": "success",
        "appState": "applied",
        "overallDownloadProgress": None,
        "release": sim.current_commit,
        "containers": [],
        "images": [],
    }


def test_update_with_nothing_pending_is_202(make_sim, sink):
    sim = make_sim()
    assert call(sim, "POST", "/v1/update", {"force": True, "cancel": True}) == (202, b"Accepted")
    assert "simulator.update.ignored why=nothing-pending" in sink.text()
    assert sim.attempts == 0


# ---- control endpoints and the record ---------------------------------------------------------


def test_release_state_and_recorded_requests(make_sim, lock_dir):
    sim = make_sim(apply_s=0.05)
    status, body = call(sim, "POST", "/sim/release", {"commit": "abc123"})
    assert (status, json.loads(body)) == (200, {"target": "abc123"})
    assert sim.wait_until(lambda s: s.current_commit == "abc123", WAIT_S)
    state = json.loads(call(sim, "GET", "/sim/state")[1])
    assert state == {
        "commit": "abc123",
        "target": "abc123",
        "update_pending": False,
        "update_failed": False,
        "applying": False,
        "app_state": "applied",
        "attempts": 0,
        "backoff_s": None,
        "override_lock": False,
        "reboots": 0,
        "shutdowns": 0,
    }
    call(sim, "POST", f"/v1/update?apikey={KEY}", {"cancel": True}, key=None)
    call(sim, "POST", "/v1/update", {"force": True, "cancel": True})
    seen = sim.requests_seen
    assert [(r.method, r.path) for r in seen] == [("POST", "/v1/update")] * 2  # no /sim/
    assert seen[1].header("authorization") == f"Bearer {KEY}"
    assert seen[1].header("Content-Type") == "application/json"
    assert seen[1].json() == {"force": True, "cancel": True}
    assert seen[0].query == {"apikey": KEY}
    listed_text = call(sim, "GET", "/sim/requests")[1].decode()
    assert KEY not in listed_text
    listed = json.loads(listed_text)
    assert listed[0]["query"] == {"apikey": "<redacted>"}
    assert listed[1]["headers"]["Authorization"] == "<redacted>"
    assert listed[1]["body"] == '{"force": true, "cancel": true}'


def test_a_release_during_an_apply_is_applied_next(make_sim, sink):
    sim = make_sim(pending=True, apply_s=0.3)
    sink.wait_for("simulator.apply.started")
    sim.release("next")
    assert sim.wait_until(lambda s: s.current_commit == "next", WAIT_S)
    assert sink.text().count("simulator.apply.done") == 2


def test_the_client_against_the_simulator(make_sim, lock_dir):
    user_lock(lock_dir)
    sim = make_sim(pending=True)
    client = SupervisorClient(sim.address, KEY, logger=Logger(stream=io.StringIO()))
    try:
        assert client.ping()
        assert client.version() == "19.0.5"
        assert sim.wait_until(lambda s: s.update_failed, WAIT_S)
        device = client.device()
        assert device["update_pending"] is True and device["update_failed"] is True
        assert client.update(force=True, cancel=True) == 204
        assert sim.wait_until(lambda s: s.app_state == "applied", WAIT_S)
        assert client.state_status()["appState"] == "applied"
        client.stop_service("1", "main")
        assert sim.stopped_services == [("1", "main")]
    finally:
        client.close()
    wrong = SupervisorClient(sim.address, "nope", logger=Logger(stream=io.StringIO()))
    try:
        with pytest.raises(ApiError) as caught:
            wrong.update(force=True, cancel=True)
        assert caught.value.status == 401
    finally:
        wrong.close()


# ---- small pure helpers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay_s", "text"),
    [(0.2, "200ms"), (1, "1s"), (2, "2s"), (4, "4s"), (64, "1m"), (900, "15m"), (7200, "2h")],
)
def test_pretty_ms(delay_s, text):
    assert pretty_ms(delay_s) == text


@pytest.mark.parametrize(
    ("value", "truthy"),
    [
        (True, True),
        (1, True),
        ("1", True),
        ("true", True),
        ("On", True),
        ("TRUE", True),
        (False, False),
        (0, False),
        ("false", False),
        ("yes", False),
        (None, False),
        (2, False),
    ],
)
def test_check_truthy(value, truthy):
    assert check_truthy(value) is truthy


# ---- the command, as a process ----------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_main_serves_and_exits_0_on_signal(lock_dir, sig):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BALENA_", "RESIN_"))}
    env["PYTHONPATH"] = str(BLOCK_DIR)
    argv = [
        sys.executable,
        "-m",
        "update_lock.simulator",
        "--port",
        "0",
        "--lock-dir",
        str(lock_dir),
        "--pending",
        "--apply-s",
        "0.05",
        "--poll-interval-s",
        "1",
    ]
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []

    def wait_line(needle: str) -> str:
        deadline = time.monotonic() + WAIT_S
        while True:
            for line in seen:
                if needle in line:
                    return line
            left = deadline - time.monotonic()
            assert left > 0, f"no {needle!r}; output:\n" + "\n".join(seen)
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=left))

    try:
        listening = wait_line("simulator.listening address=")
        match = re.match(r"simulator\.listening address=http://127\.0\.0\.1:(\d+) ", listening)
        assert match, listening
        port = int(match.group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
        conn.request("GET", "/v1/device", headers={"Authorization": "Bearer simulator-key"})
        response = conn.getresponse()
        assert response.status == 200
        response.read()
        conn.close()
        wait_line("simulator.apply.done")
        proc.send_signal(sig)
        assert proc.wait(timeout=WAIT_S) == 0
        reader.join(WAIT_S)
        while not lines.empty():
            seen.append(lines.get_nowait())
        assert seen[0] == "simulator.api-key source=default"
        assert f"simulator.stopping signal={sig.name}" in seen
        assert not any("simulator-key" in line for line in seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT_S)
        if proc.stdout is not None:
            proc.stdout.close()


def test_main_rejects_a_missing_lock_dir(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--lock-dir", str(tmp_path / "absent")])
    assert caught.value.code == 2
    assert "--lock-dir" in capsys.readouterr().err
