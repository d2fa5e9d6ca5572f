"""Supervisor API faults: the agent against small local servers that misbehave.

Whatever the Supervisor does (refuse, reset, hang past the timeout, answer garbage, 5xx
storms, 401), the lock must stay exactly right and prompt (HTTP runs on a worker thread, never
on the agent's loop), retries stay bounded, nothing crashes, and the API key appears in no log
line and no file, even when the server echoes it back in its error messages. An override
against a failing Supervisor ends visibly failed; a burst of releases against a slow one sends
one apply request, not a backlog of them.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from harness import Proc, World

KEY = "sekrit-KEY-123"
REACT_S = 2.0  # a holder is acknowledged, and a release seen, within this whatever HTTP does
WINDOW_S = 2.5  # how long requests are counted for the retry bound
HANG_S = 60.0  # longer than the client's timeouts (3 s connect, 10 s read)
UNAUTHORISED = ("unauthorised: set the label io.balena.features.supervisor-api: '1' on this "
                "service, or check BALENA_SUPERVISOR_API_KEY")


@dataclass(frozen=True)
class Seen:
    at: float
    method: str
    path: str
    authorization: str


class Misbehaving:
    """A Supervisor that answers every request the same bad way, and counts them."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                auth = self.headers.get("Authorization") or ""
                with outer.lock:
                    outer.seen.append(Seen(time.monotonic(), self.command, self.path, auth))
                outer.answer(self, auth)

            do_GET = _any
            do_POST = _any

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                return  # a reset or abandoned connection is the point of these servers

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, handler: BaseHTTPRequestHandler, auth: str) -> None:
        mode = self.mode
        if mode == "reset":
            # SO_LINGER 0: close sends RST instead of FIN: "connection reset by peer".
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
            handler.connection.close()
            handler.close_connection = True
            return
        if mode == "hang":
            self.release.wait(HANG_S)
            handler.close_connection = True
            return
        if mode == "slow":
            # Healthy but slow: an update is pending, and every apply request is accepted.
            self.release.wait(0.3)
            if handler.command == "POST":
                handler.send_response(204)
                handler.end_headers()
                return
            status, body = 200, b'{"update_pending": true, "update_downloaded": true}'
        elif mode == "malformed":
            status, body = 200, b'{"update_pending": tru'
        elif mode in ("500", "503"):
            # A careless server that quotes the credentials it was sent.
            status = int(mode)
            body = json.dumps({"status": "failed",
                               "message": f"overloaded, you sent {auth}"}).encode()
        elif mode == "401":
            status, body = 401, f"Unauthorized: {auth} is not a key".encode()
        else:
            raise AssertionError(mode)
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def count(self, since: float) -> int:
        with self.lock:
            return sum(1 for s in self.seen if s.at >= since)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def supervisor() -> Iterator[Callable[[str], str]]:
    """Start a misbehaving Supervisor; returns its address. "refused": a bound socket that
    does not listen, so the port stays ours and every connect is refused."""
    servers: list[Misbehaving] = []
    sockets: list[socket.socket] = []

    def start(mode: str) -> str:
        if mode == "refused":
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            return f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = Misbehaving(mode)
        servers.append(server)
        return server.address

    start.servers = servers  # type: ignore[attr-defined]
    yield start
    for server in servers:
        server.close()
    for sock in sockets:
        sock.close()


def api_agent(world: World, address: str, **extra: str) -> Proc:
    agent = world.agent(BALENA_SUPERVISOR_ADDRESS=address, BALENA_SUPERVISOR_API_KEY=KEY,
                        UPDATE_LOCK_POLL_INTERVAL="1s", **extra)
    agent.wait_line(r"^api\.enabled ")
    return agent


def key_nowhere(world: World, agent: Proc) -> None:
    """The key in no output line and no file the agent wrote (trigger dir, lock file)."""
    assert KEY not in agent.output()
    files = [p for p in world.trigger.rglob("*") if p.is_file()]
    files += [p for p in world.lock_dir.iterdir() if p.is_file()]
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path


def holder_cycle(world: World, name: str) -> None:
    """A holder is acknowledged and its removal seen promptly: HTTP blocks nothing."""
    world.hold(name)
    world.wait_status(lambda s: s["locked"] and [h["name"] for h in s["holders"]] == [name],
                      f"{name} acknowledged", timeout_s=REACT_S)
    assert world.lock.exists()
    (world.trigger / f"{name}.lock").unlink()
    world.wait_status(lambda s: not s["locked"] and s["holders"] == [], f"{name} released",
                      timeout_s=REACT_S)
    assert not world.lock.exists()


@pytest.mark.parametrize("mode", ["refused", "reset", "hang", "malformed", "500", "503", "401"])
def test_a_misbehaving_supervisor_never_disturbs_the_lock(
        world: World, supervisor: Callable[[str], str], mode: str) -> None:
    address = supervisor(mode)
    agent = api_agent(world, address)
    world.wait_status(lambda s: s["api"]["enabled"], "started with the API")
    start = agent.mark()
    window_start = time.monotonic()
    cycles = 0
    while time.monotonic() - window_start < WINDOW_S:
        holder_cycle(world, f"job{cycles}")  # each release also asks to apply (more HTTP)
        cycles += 1
    window_s = time.monotonic() - window_start
    assert cycles >= 3

    # Bounded: one poll a second, each failure retried at most 4 times with backoff from
    # 0.5 s, one worker at a time; the releases add one call each. Never a tight loop.
    bound = 2 * window_s + cycles + 4
    retries = agent.find(r"^WARNING api\.retry ", start=start)
    for line in retries:
        attempt, of = (int(part.split("=")[1]) for part in line.split()
                       if part.startswith(("attempt=", "of=")))
        assert attempt <= of == 4, line
    servers: list[Misbehaving] = supervisor.servers  # type: ignore[attr-defined]
    if servers:
        seen = servers[0].count(window_start)
        assert seen <= bound, f"{seen} requests in {window_s:.1f}s"
        assert {s.authorization for s in servers[0].seen} == {f"Bearer {KEY}"}
        if mode in ("500", "503"):
            assert retries, "5xx is transient: retried"
        if mode in ("malformed", "401"):
            assert retries == [], "an answer, not an accident: not retried"
    else:
        assert len(retries) <= bound
    if mode == "hang":
        # The first poll is still waiting for its answer (10 s read timeout): nothing more.
        assert 1 <= servers[0].count(0) <= 2, "a hung request is not piled on"
    else:
        agent.wait_line(r"^WARNING api\.unreachable ", timeout_s=10)
        world.wait_status(lambda s: s["api"]["error"], "the API error in status")
    assert agent.popen.poll() is None, agent.output()
    for bad in (r"agent\.crashed", r"Traceback", r"agent\.retry"):
        assert agent.find(bad) == [], agent.output()
    # A stop is prompt even with a request in flight.
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(timeout_s=3) == 0
    key_nowhere(world, agent)


@pytest.mark.parametrize(("mode", "detail"), [
    ("503", "POST /v1/update: HTTP 503: overloaded, you sent Bearer <redacted>"),
    ("401", f"POST /v1/update: HTTP 401: {UNAUTHORISED}"),
])
def test_an_override_request_against_a_failing_supervisor_fails_visibly(
        world: World, supervisor: Callable[[str], str], mode: str, detail: str) -> None:
    address = supervisor(mode)
    agent = api_agent(world, address, UPDATE_LOCK_ALWAYS="true")
    world.wait_status(lambda s: s["locked"], "locked (always)")
    result = world.cli("override", "--reason", "urgent fix")
    assert result.returncode == 0, result.stderr
    agent.wait_line(r"^override\.received by=request reason=\"urgent fix\" ")
    # Released at once, before the request is even made: the Supervisor may delete nothing.
    world.wait_status(lambda s: not s["locked"] and s["override"] is not None, "released",
                      timeout_s=REACT_S)
    assert not world.lock.exists()
    status = world.wait_status(
        lambda s: (s["override"] or {}).get("outcome") == "failed", "the override failed",
        timeout_s=15)
    assert status["override"]["detail"] == detail
    line = agent.wait_line(r"^WARNING override\.failed ")
    assert line == f"WARNING override.failed by=request detail={json.dumps(detail)}"
    # Failed, yet the agent stays released for the grace period: a retried apply may come.
    assert status["locked"] is False and not world.lock.exists()
    assert not (world.trigger / "override").exists(), "the request is consumed"
    state = json.loads((world.trigger / ".update-lock-state.json").read_text())
    assert state["override"]["outcome"] == "failed"
    assert agent.find(r"agent\.crashed|Traceback") == []
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(timeout_s=3) == 0
    key_nowhere(world, agent)


def test_a_release_storm_sends_one_apply_request_not_one_per_release(
        world: World, supervisor: Callable[[str], str]) -> None:
    """Each release asks the Supervisor to apply now (``cancel: true``). While the worker is
    busy with a slow Supervisor, releases must not pile up requests that all go out later:
    each ``cancel`` would restart an apply already under way."""
    address = supervisor("slow")
    server: Misbehaving = supervisor.servers[0]  # type: ignore[attr-defined]
    agent = api_agent(world, address)
    world.wait_status(lambda s: s["update_pending"] is True, "the pending update seen")
    for i in range(10):
        holder_cycle(world, f"burst{i}")
    # Long enough for a backlog of ten (0.3 s GET, 0.3 s POST each) to drain: an observation
    # window for counting, not an ordering.
    time.sleep(4)
    posts = [s for s in server.seen if s.method == "POST"]
    assert posts and all(s.path == "/v1/update" for s in posts)
    assert len(posts) <= 2, f"{len(posts)} apply requests for one burst of releases"
    assert agent.find(r"agent\.crashed|Traceback") == []
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(timeout_s=3) == 0
    key_nowhere(world, agent)
