"""SupervisorClient and api_settings against real HTTP servers on 127.0.0.1.

Each test starts its own small server (ThreadingHTTPServer in a thread) that answers from a
script and records what it received; a fixture stops it. pytest-timeout bounds every test.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from update_lock.errors import ApiError
from update_lock.logs import Logger
from update_lock.supervisor_api import (
    MALFORMED_JSON_MESSAGE,
    SupervisorClient,
    api_settings,
)

KEY = "s3cr3t-Key-0123456789abcdef"
BLOCK_DIR = Path(__file__).resolve().parent.parent / "block"
TEST_TIMEOUT_S = 20

UNAUTHORISED = (
    "unauthorised: set the label io.balena.features.supervisor-api: '1' on this service, "
    "or check BALENA_SUPERVISOR_API_KEY"
)


# A hard per-test bound (pytest-timeout): a hung server or client fails the test, never CI.
pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)


# ---- a scripted server ------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    hang: bool = False  # never answer (until the test ends)


HANG = Reply(0, hang=True)


class ScriptedServer:
    """Answers with ``replies`` in order (the last one repeats) and records every request."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        self.seen: list[Seen] = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                n = len(outer.seen)
                outer.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
                reply = outer.replies[min(n, len(outer.replies) - 1)]
                if reply.hang:
                    outer.release.wait(TEST_TIMEOUT_S)
                    return
                self.send_response(reply.status)
                if reply.status != 204:
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.status != 204:
                    self.wfile.write(reply.body)

            do_GET = _any
            do_POST = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(*replies: Reply) -> ScriptedServer:
        server = ScriptedServer(list(replies))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def refused_address() -> Iterator[str]:
    """An address where nothing listens: a bound, non-listening socket keeps the port ours."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.fixture
def log_stream() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def client_for(log_stream: io.StringIO) -> Iterator[Callable[..., SupervisorClient]]:
    clients: list[SupervisorClient] = []

    def make(address: str, **options: object) -> SupervisorClient:
        settings: dict[str, object] = {"attempts": 3, "backoff_s": 0.01, "backoff_max_s": 0.05}
        settings.update(options)
        logger = Logger(level="debug", stream=log_stream)
        client = SupervisorClient(address, KEY, logger=logger, **settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def json_reply(status: int, body: object) -> Reply:
    return Reply(status, json.dumps(body).encode())


# ---- the override request, exactly ------------------------------------------------------------


def test_update_sends_the_exact_override_request(serve, client_for, log_stream):
    server = serve(Reply(204))
    status = client_for(server.address).update(force=True, cancel=True)
    assert status == 204
    [seen] = server.seen
    assert seen.method == "POST"
    assert seen.path == "/v1/update"
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.body == b'{"force": true, "cancel": true}'
    assert json.loads(seen.body) == {"force": True, "cancel": True}
    assert log_stream.getvalue() == ""


@pytest.mark.parametrize("status", [200, 202, 204])
def test_any_2xx_is_accepted(serve, client_for, status):
    server = serve(Reply(status))
    assert client_for(server.address).update(force=False, cancel=True) == status
    assert json.loads(server.seen[0].body) == {"cancel": True}


def test_stop_service_request(serve, client_for):
    server = serve(Reply(200, b"OK", "text/plain"))
    assert client_for(server.address).stop_service("1234", "update-lock") is None
    [seen] = server.seen
    assert (seen.method, seen.path) == ("POST", "/v2/applications/1234/stop-service")
    assert seen.headers["Content-Type"] == "application/json"
    assert json.loads(seen.body) == {"serviceName": "update-lock"}


def test_get_calls_parse_json(serve, client_for):
    device = {"update_pending": True, "update_failed": True, "status": "Idle"}
    status = {"status": "success", "appState": "applying", "containers": [], "images": []}
    server = serve(
        json_reply(200, device),
        json_reply(200, status),
        json_reply(200, {"status": "success", "version": "19.0.5"}),
    )
    client = client_for(server.address)
    assert client.device() == device
    assert client.state_status() == status
    assert client.version() == "19.0.5"
    assert [(s.method, s.path) for s in server.seen] == [
        ("GET", "/v1/device"),
        ("GET", "/v2/state/status"),
        ("GET", "/v2/version"),
    ]
    assert all("Content-Type" not in s.headers for s in server.seen)
    assert all(s.headers["Authorization"] == f"Bearer {KEY}" for s in server.seen)


def test_ping(serve, client_for, refused_address):
    server = serve(Reply(200, b"OK", "text/plain"))
    assert client_for(server.address).ping() is True
    assert server.seen[0].path == "/ping"
    assert client_for(refused_address).ping() is False


# ---- retries ----------------------------------------------------------------------------------


def test_connection_refused_is_retried_then_fails(client_for, refused_address, log_stream):
    client = client_for(refused_address, attempts=3)
    with pytest.raises(ApiError) as caught:
        client.update(force=True, cancel=True)
    error = caught.value
    assert (error.method, error.path, error.status) == ("POST", "/v1/update", None)
    assert error.message.startswith("connection-refused: ")
    assert str(error).startswith("POST /v1/update: no response: connection-refused: ")
    assert log_stream.getvalue().splitlines() == [
        "WARNING api.retry method=POST path=/v1/update attempt=2 of=3 why=connection-refused "
        "delay_s=0.01",
        "WARNING api.retry method=POST path=/v1/update attempt=3 of=3 why=connection-refused "
        "delay_s=0.02",
    ]


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_is_retried_with_a_bound(serve, client_for, log_stream, status):
    body = {"status": "failed", "message": "Supervisor busy"}
    server = serve(json_reply(status, body))
    with pytest.raises(ApiError) as caught:
        client_for(server.address, attempts=4).update(force=False, cancel=True)
    assert len(server.seen) == 4
    assert caught.value.status == status
    assert caught.value.message == "Supervisor busy"
    assert str(caught.value) == f"POST /v1/update: HTTP {status}: Supervisor busy"
    lines = log_stream.getvalue().splitlines()
    assert [line.split(" why=")[0] for line in lines] == [
        f"WARNING api.retry method=POST path=/v1/update attempt={n} of=4" for n in (2, 3, 4)
    ]
    assert all(f" why=http-{status} " in line for line in lines)


def test_5xx_then_success(serve, client_for):
    server = serve(Reply(503, b"restarting", "text/plain"), Reply(502), Reply(204))
    assert client_for(server.address, attempts=4).update(force=True, cancel=True) == 204
    assert len(server.seen) == 3
    assert all(s.body == b'{"force": true, "cancel": true}' for s in server.seen)


def test_backoff_is_exponential_and_capped(serve, client_for, log_stream):
    server = serve(Reply(500))
    client = client_for(server.address, attempts=5, backoff_s=0.01, backoff_max_s=0.03)
    with pytest.raises(ApiError):
        client.device()
    delays = [line.rsplit("delay_s=", 1)[1] for line in log_stream.getvalue().splitlines()]
    assert delays == ["0.01", "0.02", "0.03", "0.03"]


def test_read_timeout_is_retried_and_bounded(serve, client_for, log_stream):
    server = serve(HANG)
    client = client_for(server.address, attempts=2, read_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(ApiError) as caught:
        client.update(force=True, cancel=True)
    elapsed_s = time.monotonic() - started
    assert len(server.seen) == 2
    assert caught.value.status is None
    assert caught.value.message.startswith("read-timeout: ")
    # Two read timeouts and one backoff, with room for a slow machine, and nowhere near "hang".
    assert 0.6 <= elapsed_s < 5
    assert log_stream.getvalue().splitlines() == [
        "WARNING api.retry method=POST path=/v1/update attempt=2 of=2 why=read-timeout delay_s=0.01"
    ]


# ---- answers that are not retried -------------------------------------------------------------


def test_malformed_json(serve, client_for, log_stream):
    server = serve(Reply(200, b'{"update_pending": tru'))
    with pytest.raises(ApiError) as caught:
        client_for(server.address).device()
    assert caught.value.message == "malformed JSON from the Supervisor"
    assert caught.value.message == MALFORMED_JSON_MESSAGE
    assert str(caught.value) == "GET /v1/device: HTTP 200: malformed JSON from the Supervisor"
    assert len(server.seen) == 1
    assert log_stream.getvalue() == ""


def test_json_that_is_not_an_object(serve, client_for):
    server = serve(json_reply(200, ["a"]), json_reply(200, {"status": "success"}))
    client = client_for(server.address)
    with pytest.raises(ApiError) as caught:
        client.state_status()
    assert caught.value.message == "unexpected JSON from the Supervisor: expected an object"
    with pytest.raises(ApiError) as caught:
        client.version()
    assert caught.value.message == "unexpected JSON from the Supervisor: no version"


def test_401_message_word_for_word(serve, client_for, log_stream):
    server = serve(Reply(401, b"Unauthorized", "text/plain"))
    with pytest.raises(ApiError) as caught:
        client_for(server.address).update(force=True, cancel=True)
    assert caught.value.status == 401
    assert caught.value.message == UNAUTHORISED
    assert str(caught.value) == f"POST /v1/update: HTTP 401: {UNAUTHORISED}"
    assert len(server.seen) == 1
    assert log_stream.getvalue() == ""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"Data": "", "Error": "Lockfile exists for { appId: 1, service: main }"},
            "Lockfile exists for { appId: 1, service: main }",
        ),
        (
            {"status": "failed", "message": "Updates are locked: lockfile exists"},
            "Updates are locked: lockfile exists",
        ),
    ],
)
def test_423_carries_the_supervisors_message(serve, client_for, body, message):
    server = serve(json_reply(423, body))
    with pytest.raises(ApiError) as caught:
        client_for(server.address).stop_service("1", "main")
    assert caught.value.status == 423
    assert caught.value.message == message
    assert len(server.seen) == 1


def test_other_4xx_is_not_retried(serve, client_for):
    server = serve(Reply(404, b"Not Found", "text/plain"))
    with pytest.raises(ApiError) as caught:
        client_for(server.address).device()
    assert (caught.value.status, caught.value.message) == (404, "Not Found")
    assert len(server.seen) == 1


# ---- the key stays secret ---------------------------------------------------------------------


def _failures(
    serve, refused_address: str
) -> list[tuple[str, str, Callable[[SupervisorClient], object]]]:
    """(name, address, call) for every way a call can fail."""
    echo = f"bad request from key {KEY} via /v1/update?apikey={KEY}"
    return [
        ("refused", refused_address, lambda c: c.update(force=True, cancel=True)),
        # A URL-ish failure whose URL holds the key: requests puts the URL in its message.
        ("key-in-url", f"{refused_address}/{KEY}", lambda c: c.update(force=True, cancel=True)),
        ("invalid-url", f"http://{KEY}:notaport", lambda c: c.device()),
        ("500", serve(Reply(500, echo.encode(), "text/plain")).address, lambda c: c.device()),
        ("400-echo", serve(json_reply(400, {"message": echo})).address, lambda c: c.version()),
        ("423-echo", serve(json_reply(423, {"Error": echo})).address, lambda c: c.device()),
        ("401", serve(Reply(401)).address, lambda c: c.update(force=True, cancel=True)),
        ("malformed", serve(Reply(200, b"{")).address, lambda c: c.device()),
        ("timeout", serve(HANG).address, lambda c: c.state_status()),
    ]


def _chain_text(error: BaseException) -> str:
    parts = []
    seen: BaseException | None = error
    while seen is not None:
        parts.extend([str(seen), repr(seen), repr(seen.args)])
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def test_the_key_is_in_no_log_line_and_no_exception(serve, client_for, refused_address, log_stream):
    for name, address, call in _failures(serve, refused_address):
        client = client_for(address, attempts=2, read_timeout_s=0.2)
        assert KEY not in repr(client)
        with pytest.raises(ApiError) as caught:
            call(client)
        text = _chain_text(caught.value)
        assert KEY not in text, name
        assert KEY not in caught.value.message, name
    logged = log_stream.getvalue()
    assert "api.retry" in logged  # the retries did log something
    assert KEY not in logged


def test_scrubbed_messages_keep_their_meaning(client_for, refused_address):
    client = client_for(f"{refused_address}/{KEY}", attempts=1)
    with pytest.raises(ApiError) as caught:
        client.update(force=True, cancel=True)
    assert "/<redacted>/v1/update" in caught.value.message
    # The requests exception (its text holds the key) is not kept, not even as context.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


# ---- api_settings -----------------------------------------------------------------------------

NO_ADDRESS = (
    "BALENA_SUPERVISOR_ADDRESS is not set: "
    "add the label io.balena.features.supervisor-api: '1' to this service"
)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, NO_ADDRESS),
        ({"BALENA_SUPERVISOR_API_KEY": KEY}, NO_ADDRESS),
        (
            {"BALENA_SUPERVISOR_ADDRESS": "http://127.0.0.1:48484"},
            "BALENA_SUPERVISOR_API_KEY is not set: "
            "add the label io.balena.features.supervisor-api: '1' to this service",
        ),
        (
            {
                "BALENA_SUPERVISOR_ADDRESS": "http://10.114.104.1:48484",
                "BALENA_SUPERVISOR_API_KEY": KEY,
            },
            ("http://10.114.104.1:48484", KEY),
        ),
        (
            {
                "RESIN_SUPERVISOR_ADDRESS": "http://10.114.104.1:48484/",
                "RESIN_SUPERVISOR_API_KEY": KEY,
            },
            ("http://10.114.104.1:48484", KEY),
        ),
        (
            {
                "BALENA_SUPERVISOR_ADDRESS": "http://127.0.0.1:48484",
                "RESIN_SUPERVISOR_ADDRESS": "http://10.0.0.1:1",
                "BALENA_SUPERVISOR_API_KEY": "new",
                "RESIN_SUPERVISOR_API_KEY": "old",
            },
            ("http://127.0.0.1:48484", "new"),
        ),
        (
            {
                "BALENA_SUPERVISOR_HOST": "10.114.104.1",
                "BALENA_SUPERVISOR_PORT": "48484",
                "BALENA_SUPERVISOR_API_KEY": KEY,
            },
            ("http://10.114.104.1:48484", KEY),
        ),
        (
            {
                "BALENA_SUPERVISOR_HOST": "10.114.104.1",
                "BALENA_SUPERVISOR_PORT": "x",
                "BALENA_SUPERVISOR_API_KEY": KEY,
            },
            "BALENA_SUPERVISOR_PORT='x': expected a TCP port, e.g. 48484",
        ),
        (
            {"BALENA_SUPERVISOR_ADDRESS": "10.114.104.1:48484", "BALENA_SUPERVISOR_API_KEY": KEY},
            "BALENA_SUPERVISOR_ADDRESS='10.114.104.1:48484': expected http://HOST:PORT, "
            "e.g. http://127.0.0.1:48484",
        ),
        ({"BALENA_SUPERVISOR_ADDRESS": "", "BALENA_SUPERVISOR_API_KEY": KEY}, NO_ADDRESS),
    ],
)
def test_api_settings(env, expected):
    assert api_settings(env) == expected
    if isinstance(expected, str):
        assert KEY not in expected


def test_importing_api_settings_does_not_import_requests():
    code = (
        "import sys\n"
        "from update_lock.supervisor_api import api_settings\n"
        "assert api_settings({}).startswith('BALENA_SUPERVISOR_ADDRESS is not set')\n"
        "print(sorted(m for m in sys.modules if m == 'requests' or m.startswith('requests.')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(BLOCK_DIR)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=15
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


class BodyServer:
    """A raw socket server on 127.0.0.1: answers each request with 200 and a body that
    ``body(stop, send)`` produces until the test ends; counts the connections."""

    def __init__(self, content_length: int,
                 body: Callable[[threading.Event, Callable[[bytes], None]], None]) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.address = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.stop = threading.Event()
        self.header = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % content_length)
        self.body = body
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            conn.recv(65536)
            try:
                conn.sendall(self.header)
                self.body(self.stop, conn.sendall)
            except OSError:
                pass  # EPIPE/ECONNRESET: the client gave up, which is what is tested
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def test_a_dripping_or_endless_body_is_cut_off_and_retried_with_a_bound() -> None:
    """The read timeout bounds each socket read only: an endless body must still end the
    call (bounded in size, then retried)."""

    def endless(stop: threading.Event, send: Callable[[bytes], None]) -> None:
        while not stop.is_set():
            send(b"x" * 65536)

    server = BodyServer(100_000_000, endless)
    client = SupervisorClient(server.address, "k", logger=Logger(stream=io.StringIO()),
                              read_timeout_s=2.0, attempts=2, backoff_s=0.01)
    start = time.monotonic()
    try:
        with pytest.raises(ApiError) as caught:
            client.device()
    finally:
        server.close()
        client.close()
    assert "response-too-large" in str(caught.value)
    assert server.connections == 2  # retried once, then gave up
    assert time.monotonic() - start < 30


def test_a_body_dripped_a_byte_at_a_time_is_cut_off_by_the_total_deadline() -> None:
    """Each byte arrives well within the read timeout, so only a deadline for the whole body
    ends the call."""

    def drip(stop: threading.Event, send: Callable[[bytes], None]) -> None:
        while not stop.wait(0.2):
            send(b" ")

    server = BodyServer(1000, drip)
    client = SupervisorClient(server.address, "k", logger=Logger(stream=io.StringIO()),
                              read_timeout_s=1.0, attempts=1)
    try:
        with pytest.raises(ApiError) as caught:
            client.device()
    finally:
        server.close()
        client.close()
    assert "response-too-slow" in str(caught.value)
