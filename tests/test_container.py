"""The block as its container runs it: entry.sh, supervisord, the agent, park, the listener.

There is no Docker engine here, so each test reproduces the container with the kernel's own
pieces: ``unshare`` gives a mount namespace, in which a temp directory is bound onto the real
``/tmp/balena`` (so the agent uses its real default lock path, as the Supervisor's bind mount
does on a device), and a PID namespace, in which the container's command is PID 1 exactly as
in the image (``entry.sh`` execs ``supervisord``, or ``update-lock park``). The commands are
the image's: ``entry.sh`` run by ``sh``, ``supervisord -c block/supervisord.conf`` (through
``SUPERVISORD_CONF``), and ``update-lock`` (a two-line stand-in for the console script that
pip installs in the image: it execs ``python -m update_lock``).

Every wait has a deadline and waits for a log line, a file or a status field, never a sleep;
every container has a hard timeout (a watchdog SIGKILLs it) and dies with its test
(``unshare --kill-child``: killing ``unshare`` kills the namespace's PID 1, which kills every
process in the namespace).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness import (
    ROOT,
    Proc,
    base_env,
    host_sees_lock,
    read_status,
    stat_key,
    supervisor_sees_lock,
    wait_for,
)
from update_lock import fatal_listener
from update_lock.config import BOOL_FORM
from update_lock.inotify import (
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    Inotify,
)
from update_lock.logs import Logger, format_line

ENTRY = ROOT / "entry.sh"
SUPERVISORD_CONF = ROOT / "block" / "supervisord.conf"
JOB = ROOT / "examples" / "fleet" / "critical-job" / "job.sh"
DEFAULT_LOCK = "/tmp/balena/updates.lock"  # the platform's path, bound to a temp dir per test
HARD_TIMEOUT_S = 90.0
DEADLINE_S = 20.0
API_KEY = "s3cr3t-key-0123456789"

# unshare execs this with $1 = the directory to bind on /tmp/balena, then the command.
NAMESPACE_SCRIPT = 'mount --bind "$1" /tmp/balena && shift && exec "$@"'


# --- the container ------------------------------------------------------------------------------


def _ppids() -> dict[int, int]:
    """pid -> parent pid, for every process (from /proc/<pid>/stat)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _descendants(root: int) -> list[int]:
    parents = _ppids()
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found.extend(children)
        todo.extend(children)
    return found


def finished(proc: Proc, timeout_s: float) -> int:
    """Wait for ``proc`` to exit, then for its reader to reach EOF: all its lines are in."""
    code = proc.wait_exit(timeout_s=timeout_s)
    # The reader thread lags the process by a few lines at most; without this, an assertion
    # that a line is absent (or last) could run before the line has been read.
    proc._reader.join(timeout=DEADLINE_S)
    assert not proc._reader.is_alive(), "stdout still open: a child outlived the process"
    return code


def _is_agent(argv: list[str]) -> bool:
    return any(argv[i : i + 3] == ["-m", "update_lock", "run"] for i in range(len(argv)))


class Container:
    """The image's process tree: PID 1 is ``argv``; /tmp/balena is ``lock_dir``."""

    def __init__(self, tmp: Path, argv: list[str], **env: str) -> None:
        self.lock_dir = tmp / "balena"
        self.lock_dir.mkdir()
        self.trigger = tmp / "update-lock"
        self.trigger.mkdir()
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        # What pip's console script does in the image, without installing the package.
        wrapper = bin_dir / "update-lock"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m update_lock "$@"\n')
        wrapper.chmod(0o755)
        environment = base_env(
            # The wrapper, then this Python's bin (supervisord, and python3 for the listener).
            PATH=os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable),
                                  os.environ.get("PATH", "/usr/bin:/bin")]),
            SUPERVISORD_CONF=str(SUPERVISORD_CONF),
            UPDATE_LOCK_DIR=str(self.trigger),
        )
        environment.update(env)
        self.proc = Proc(
            ["unshare", "--mount", "--propagation", "private", "--pid", "--mount-proc",
             "--kill-child", "sh", "-c", NAMESPACE_SCRIPT, "sh", str(self.lock_dir), *argv],
            environment,
        )
        self._watchdog = threading.Timer(HARD_TIMEOUT_S, self._kill)
        self._watchdog.daemon = True
        self._watchdog.start()

    @property
    def lock(self) -> Path:
        """/tmp/balena/updates.lock as seen from outside the namespace."""
        return self.lock_dir / "updates.lock"

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # ESRCH: already gone
            os.killpg(self.proc.pid, signal.SIGKILL)

    def init_pid(self) -> int:
        """The host pid of the namespace's PID 1 (unshare's only child)."""
        def child() -> int | None:
            children = [pid for pid, parent in _ppids().items() if parent == self.proc.pid]
            return children[0] if children else None

        pid: int = wait_for(child, "the container's PID 1", DEADLINE_S)
        return pid

    def agent_pids(self) -> list[int]:
        return [pid for pid in _descendants(self.init_pid()) if _is_agent(_cmdline(pid))]

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """What `docker stop` does: a signal to PID 1."""
        os.kill(self.init_pid(), signum)

    def wait_line(self, pattern: str, start: int = 0, timeout_s: float = DEADLINE_S) -> str:
        return self.proc.wait_line(pattern, timeout_s=timeout_s, start=start)

    def status(self) -> dict[str, Any] | None:
        return read_status(self.trigger)

    def cleanup(self) -> None:
        self._watchdog.cancel()
        self.proc.kill()


@pytest.fixture(scope="module")
def tmp_balena() -> Iterator[None]:
    """The mount point /tmp/balena must exist on the host to bind onto it in a namespace."""
    mount_point = Path("/tmp/balena")
    created = not mount_point.exists()
    mount_point.mkdir(exist_ok=True)
    try:
        yield
    finally:
        if created:
            # ENOTEMPTY/EBUSY: something else uses it now; leave it.
            with contextlib.suppress(OSError):
                mount_point.rmdir()


@pytest.fixture
def container(tmp_path: Path, tmp_balena: None) -> Iterator[Callable[..., Container]]:
    started: list[Container] = []

    def start(*argv: str, **env: str) -> Container:
        box = Container(tmp_path, list(argv) or ["sh", str(ENTRY)], **env)
        started.append(box)
        return box

    try:
        yield start
    finally:
        for box in started:
            box.cleanup()


def _no_secret(text: str) -> None:
    assert API_KEY not in text, "the API key leaked into the log"


# --- supervisord and the agent ------------------------------------------------------------------


def test_the_agent_starts_under_supervisord_and_locks_the_real_default_path(
    container: Callable[..., Container],
) -> None:
    box = container(UPDATE_LOCK_ALWAYS="true")
    box.wait_line(r" INFO spawned: 'agent' with pid \d+$")
    assert box.wait_line(r"^lock\.acquired ") == (
        f"lock.acquired path={DEFAULT_LOCK} reasons=always host_os=true"
    )
    started = box.proc.find(r"^agent\.started ")
    assert started and f" path={DEFAULT_LOCK} " in started[0]
    # Both of balena's checks see it: the Supervisor's (O_EXCL create) and the host's (flock).
    assert supervisor_sees_lock(box.lock)
    assert host_sees_lock(box.lock)
    status = wait_for(lambda: (s := box.status()) and s.get("locked") and s, "status locked")
    assert status["paths"] == [DEFAULT_LOCK]
    assert status["reasons"] == ["always"]
    # Nothing but supervisord, the agent and the listener: no control server to secure.
    assert not box.proc.find(r"(?i)http_server|unix socket|running as root")
    assert not box.proc.find(r"Illegal seek|CRIT")


def test_sigterm_to_supervisord_releases_the_lock_and_exits_0_in_time(
    container: Callable[..., Container],
) -> None:
    box = container(UPDATE_LOCK_ALWAYS="true")
    box.wait_line(r"^lock\.acquired ")
    assert box.lock.exists()
    mark = box.proc.mark()
    began = time.monotonic()
    box.stop(signal.SIGTERM)
    code = finished(box.proc, 10)  # Docker's grace period before SIGKILL
    elapsed_s = time.monotonic() - began
    assert code == 0, box.proc.output()
    assert elapsed_s < 5, f"supervisord took {elapsed_s:.1f}s to exit"
    assert box.proc.find(r" WARN received SIGTERM indicating exit request$", start=mark)
    assert box.proc.find(
        rf"^lock\.released path={re.escape(DEFAULT_LOCK)} why=stopping unlinked=true$", start=mark
    )
    assert box.proc.find(r"^agent\.stopped pid=\d+$", start=mark)
    assert box.proc.find(r" INFO stopped: agent \(exit status 0\)$", start=mark)
    assert not box.lock.exists()
    final = box.status()
    assert final is not None and final["locked"] is False


def test_a_killed_agent_is_restarted_and_adopts_the_lock_that_never_lapsed(
    container: Callable[..., Container],
) -> None:
    box = container(UPDATE_LOCK_ALWAYS="true")
    box.wait_line(r"^lock\.acquired ")
    # A crash of an agent that had been running (a crash while it starts is a start failure,
    # retried after a backoff and counted towards FATAL).
    box.wait_line(r" INFO success: agent entered RUNNING state, process has stayed up for ")
    (first,) = wait_for(box.agent_pids, "the agent's pid")
    key = stat_key(box.lock)
    record = json.loads(box.lock.read_text())

    # Every change to the directory's entries is queued by the kernel from here on: a
    # deletion or re-creation of the lock file, however brief, cannot go unseen.
    watch = Inotify()
    try:
        watch.add_watch(
            str(box.lock_dir),
            IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF,
        )
        mark = box.proc.mark()
        os.kill(first, signal.SIGKILL)
        box.wait_line(r" WARN exited: agent \(terminated by SIGKILL; not expected\)$", mark)
        box.wait_line(r" INFO spawned: 'agent' with pid \d+$", mark)
        adopted = box.wait_line(r"^lock\.adopted ", mark)
        events = watch.read()
    finally:
        watch.close()

    assert adopted == (
        f"lock.adopted path={DEFAULT_LOCK} previous_pid={record['pid']} reasons=always"
    )
    touched = [e for e in events if e.name == "updates.lock" or e.mask & IN_Q_OVERFLOW]
    assert touched == [], "the lock file was removed or replaced during the restart"
    assert stat_key(box.lock) == key, "adopted in place, never deleted and re-made"
    assert not box.proc.find(r"^lock\.(released|acquired) ", start=mark)
    (second,) = wait_for(box.agent_pids, "the new agent's pid")
    assert second != first
    assert host_sees_lock(box.lock), "the new agent holds the flock again"
    wait_for(lambda: (s := box.status()) and s.get("locked") and s.get("pid") != record["pid"],
             "status.json from the new agent")


def test_a_fatal_agent_ends_supervisord(container: Callable[..., Container]) -> None:
    # entry.sh would park on this configuration; started without it, the agent exits 78 at
    # every start, supervisord marks it FATAL, and the listener ends supervisord.
    box = container("supervisord", "-c", str(SUPERVISORD_CONF), UPDATE_LOCK_ALWAYS="maybe")
    box.wait_line(r" INFO gave up: agent entered FATAL state, too many start retries too quickly$",
                  timeout_s=40)
    code = finished(box.proc, DEADLINE_S)
    output = box.proc.output()
    assert code == 0, output
    fatal = box.proc.find(r"^ERROR process\.fatal ")
    assert fatal == ["ERROR process.fatal name=agent from_state=BACKOFF"], output
    # supervisord is PID 1 in the namespace, as in the container.
    assert box.proc.find(r"^WARNING supervisord\.stopping ") == [
        "WARNING supervisord.stopping pid=1 signal=SIGTERM why=process-fatal"
    ]
    assert box.proc.find(r" WARN received SIGTERM indicating exit request$")
    assert len(box.proc.find(r" INFO spawned: 'agent' with pid ")) == 4  # 1 + startretries
    assert not box.lock.exists()


# --- entry.sh on bad configuration: park --------------------------------------------------------


def _config_invalid_line() -> str:
    return format_line("config.invalid", "error", [
        ("variable", "UPDATE_LOCK_ALWAYS"), ("value", "maybe"), ("expected", BOOL_FORM)])


def test_a_config_error_parks_with_the_message_and_holds_no_lock(
    container: Callable[..., Container],
) -> None:
    box = container(UPDATE_LOCK_ALWAYS="maybe")
    box.wait_line(r"^park\.sleeping ")
    lines = box.proc.output().splitlines()
    assert lines == [
        _config_invalid_line(),
        "ERROR entry.config-invalid action=park",
        "WARNING park.no-api why=\"BALENA_SUPERVISOR_ADDRESS is not set: add the label "
        "io.balena.features.supervisor-api: '1' to this service\"",
        "park.sleeping why=no-api",
    ]
    assert box.proc.popen.poll() is None, "parked, not exited (no crash loop)"
    assert list(box.lock_dir.iterdir()) == [], "a parked block holds no lock"
    # PID 1 of the namespace ignores signals it has no handler for; park has one.
    box.stop(signal.SIGTERM)
    assert finished(box.proc, 5) == 0
    assert box.proc.output().splitlines()[-1] == "park.stopped signal=SIGTERM"
    assert list(box.lock_dir.iterdir()) == []


class FakeSupervisor:
    """A Supervisor API on 127.0.0.1 with its rules (platform facts §5): Bearer key, JSON
    content type; records every request. ``answers`` gives the status codes to send, in turn
    (the last one repeats)."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers = list(answers or [200])
        self.seen = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server calls
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                fake.requests.append({
                    "method": "POST", "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "content_type": self.headers.get("Content-Type"),
                    "body": body,
                })
                status = fake.answers.pop(0) if len(fake.answers) > 1 else fake.answers[0]
                if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                    status = 401
                elif self.headers.get("Content-Type") != "application/json":
                    status = 400
                text = {200: b"OK", 401: b"Unauthorized"}.get(status, b'{"status":"failed",'
                                                              b'"message":"try later"}')
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)
                fake.seen.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test asserts on self.requests

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def env(self) -> dict[str, str]:
        return {
            "BALENA_SUPERVISOR_ADDRESS": self.address,
            "BALENA_SUPERVISOR_API_KEY": API_KEY,
            "BALENA_APP_ID": "1234567",
            "BALENA_SERVICE_NAME": "update-lock",
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def supervisor_api() -> Iterator[Callable[..., FakeSupervisor]]:
    made: list[FakeSupervisor] = []

    def make(answers: list[int] | None = None) -> FakeSupervisor:
        made.append(FakeSupervisor(answers))
        return made[-1]

    try:
        yield make
    finally:
        for fake in made:
            fake.close()


def test_a_config_error_asks_the_supervisor_to_stop_this_service(
    container: Callable[..., Container], supervisor_api: Callable[..., FakeSupervisor],
) -> None:
    api = supervisor_api()
    box = container(UPDATE_LOCK_ALWAYS="maybe", **api.env())
    box.wait_line(r"^park\.sleeping ")
    assert api.requests == [{
        "method": "POST",
        "path": "/v2/applications/1234567/stop-service",
        "authorization": f"Bearer {API_KEY}",
        "content_type": "application/json",
        "body": b'{"serviceName": "update-lock"}',
    }]
    assert box.proc.output().splitlines() == [
        _config_invalid_line(),
        "ERROR entry.config-invalid action=park",
        "park.stopping-service app_id=1234567 service=update-lock",
        "park.stop-requested app_id=1234567 service=update-lock",
        "park.sleeping why=stop-requested",
    ]
    assert list(box.lock_dir.iterdir()) == []
    # The Supervisor then stops the container: SIGTERM to PID 1.
    box.stop(signal.SIGTERM)
    assert finished(box.proc, 5) == 0
    _no_secret(box.proc.output())


def _park(api: FakeSupervisor) -> Proc:
    env = base_env(**api.env())
    return Proc([sys.executable, "-m", "update_lock.park"], env)


def test_park_says_why_the_stop_request_failed_and_still_parks(
    supervisor_api: Callable[..., FakeSupervisor],
) -> None:
    api = supervisor_api([401])
    park = _park(api)
    try:
        park.wait_line(r"^park\.sleeping ", timeout_s=DEADLINE_S)
        assert park.output().splitlines() == [
            "park.stopping-service app_id=1234567 service=update-lock",
            "ERROR park.stop-failed status=401 message=\"unauthorised: set the label "
            "io.balena.features.supervisor-api: '1' on this service, or check "
            "BALENA_SUPERVISOR_API_KEY\"",
            "park.sleeping why=stop-failed",
        ]
        park.signal(signal.SIGINT)
        assert finished(park, 5) == 0
        assert park.output().splitlines()[-1] == "park.stopped signal=SIGINT"
        _no_secret(park.output())
    finally:
        park.kill()


def test_park_retries_while_the_supervisor_restarts(
    supervisor_api: Callable[..., FakeSupervisor],
) -> None:
    api = supervisor_api([503, 200])
    park = _park(api)
    try:
        park.wait_line(r"^park\.sleeping ", timeout_s=DEADLINE_S)
        assert [r["path"] for r in api.requests] == ["/v2/applications/1234567/stop-service"] * 2
        assert park.find(r"^WARNING api\.retry ") == [
            "WARNING api.retry method=POST path=/v2/applications/1234567/stop-service attempt=2 "
            "of=6 why=http-503 delay_s=0.5"
        ]
        assert park.output().splitlines()[-1] == "park.sleeping why=stop-requested"
        park.signal(signal.SIGTERM)
        assert finished(park, 5) == 0
        _no_secret(park.output())
    finally:
        park.kill()


def test_park_takes_no_arguments() -> None:
    from update_lock import park  # noqa: PLC0415

    assert park.main(["--now"], env={}) == 64


def test_entry_exits_with_check_configs_status_when_it_is_not_a_config_error(
    tmp_path: Path,
) -> None:
    # A broken install (check-config crashing) must not hide behind a park.
    fake = tmp_path / "update-lock"
    fake.write_text("#!/bin/sh\necho \"fake update-lock $*\"\nexit 3\n")
    fake.chmod(0o755)
    env = base_env(PATH=f"{tmp_path}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    proc = Proc(["sh", str(ENTRY)], env)
    try:
        assert finished(proc, DEADLINE_S) == 3
        assert proc.output().splitlines() == [
            "fake update-lock check-config",
            "ERROR entry.check-config-failed status=3",
        ]
    finally:
        proc.kill()


# --- the FATAL listener's protocol, in-process --------------------------------------------------


def _event(name: str, payload: str, serial: int = 1) -> bytes:
    data = payload.encode()
    header = (f"ver:3.0 server:supervisor serial:{serial} pool:fatal-listener poolserial:{serial} "
              f"eventname:{name} len:{len(data)}\n")
    return header.encode() + data


def test_the_listener_stops_supervisord_on_fatal_only() -> None:
    stdin = io.BytesIO(
        _event("PROCESS_STATE_BACKOFF", "processname:agent groupname:agent from_state:STARTING "
               "tries:1", 1)
        + _event("PROCESS_STATE_FATAL", "processname:agent groupname:agent from_state:BACKOFF", 2)
    )
    stdout = io.BytesIO()
    log_stream = io.StringIO()
    stops: list[bool] = []
    code = fatal_listener.serve(stdin, stdout, Logger(stream=log_stream),
                                lambda: stops.append(True))
    assert code == 0  # stdin closed: supervisord went away
    assert stops == [True]
    assert stdout.getvalue() == b"READY\nRESULT 2\nOKREADY\nRESULT 2\nOKREADY\n"
    assert log_stream.getvalue() == "ERROR process.fatal name=agent from_state=BACKOFF\n"


def test_the_listener_rejects_a_broken_header() -> None:
    log_stream = io.StringIO()
    code = fatal_listener.serve(io.BytesIO(b"garbage\n"), io.BytesIO(),
                                Logger(stream=log_stream), lambda: None)
    assert code == 70
    assert log_stream.getvalue() == "ERROR listener.bad-header header=garbage\n"


def test_the_listener_refuses_to_run_outside_supervisord() -> None:
    # Its parent would be a shell or this test runner: it must never signal it.
    assert fatal_listener.main([], env={}) == 64


# --- the fleet example's critical job, against the real agent -----------------------------------


class JobWorld:
    def __init__(self, tmp: Path) -> None:
        self.lock = tmp / "lockdir" / "updates.lock"
        self.lock.parent.mkdir()
        self.trigger = tmp / "update-lock"
        self.trigger.mkdir()
        self.holder = self.trigger / "critical-job.lock"
        self.procs: list[Proc] = []

    def agent(self) -> Proc:
        env = base_env(UPDATE_LOCK_PATH=str(self.lock), UPDATE_LOCK_DIR=str(self.trigger))
        proc = Proc([sys.executable, "-m", "update_lock", "run"], env)
        self.procs.append(proc)
        proc.wait_line(r"^agent\.started ", timeout_s=DEADLINE_S)
        return proc

    def job(self, **env: str) -> Proc:
        # The example's image runs it with busybox sh; here /bin/sh (dash), also POSIX.
        proc = Proc(["sh", str(JOB)], base_env(UPDATE_LOCK_DIR=str(self.trigger), **env))
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.kill()


@pytest.fixture
def job_world(tmp_path: Path) -> Iterator[JobWorld]:
    world = JobWorld(tmp_path)
    try:
        yield world
    finally:
        world.cleanup()


def test_the_example_job_holds_the_lock_while_it_works(job_world: JobWorld) -> None:
    agent = job_world.agent()
    job = job_world.job(JOB_DURATION_S="600", JOB_REASON="nightly backup")
    job.wait_line(r"^job\.started ", timeout_s=DEADLINE_S)
    # The job only starts once the agent acknowledged it, so the lock is held now.
    assert agent.wait_line(r"^lock\.acquired ") == (
        f"lock.acquired path={job_world.lock} reasons=holder:critical-job host_os=true"
    )
    assert host_sees_lock(job_world.lock)
    assert job_world.holder.read_text() == "nightly backup\n"
    status = json.loads((job_world.trigger / "status.json").read_text())
    assert status["locked"] is True
    assert [(h["name"], h["reason"], h["live"]) for h in status["holders"]] == [
        ("critical-job", "nightly backup", True)]
    # Stopped mid-job (the container stopped): it removes its holder; the agent releases.
    job.signal(signal.SIGTERM)
    assert finished(job, 5) == 0
    assert job.output().splitlines() == [
        f"job.waiting name=critical-job holder={job_world.holder} timeout_s=60",
        "job.started name=critical-job duration_s=600",
        "job.released name=critical-job",
        "job.stopped name=critical-job",
    ]
    assert not job_world.holder.exists()
    agent.wait_line(r"^lock\.released ", timeout_s=DEADLINE_S)
    assert not job_world.lock.exists()


def test_the_example_job_runs_to_the_end_and_lets_go(job_world: JobWorld) -> None:
    agent = job_world.agent()
    job = job_world.job(JOB_DURATION_S="0", JOB_RUNS="1")
    assert finished(job, DEADLINE_S) == 0
    assert job.output().splitlines() == [
        f"job.waiting name=critical-job holder={job_world.holder} timeout_s=60",
        "job.started name=critical-job duration_s=0",
        "job.finished name=critical-job",
        "job.released name=critical-job",
    ]
    assert not job_world.holder.exists()
    agent.wait_line(r"^lock\.acquired .*reasons=holder:critical-job", timeout_s=DEADLINE_S)
    agent.wait_line(r"^lock\.released ", timeout_s=DEADLINE_S)
    assert not job_world.lock.exists()


def test_the_example_job_never_works_unacknowledged(job_world: JobWorld) -> None:
    # No agent: nothing acknowledges the holder, so the critical section never starts.
    job = job_world.job(ACK_TIMEOUT_S="1", JOB_RUNS="1")
    assert finished(job, DEADLINE_S) == 0
    trigger = job_world.trigger
    assert job.output().splitlines() == [
        f"job.waiting name=critical-job holder={job_world.holder} timeout_s=1",
        "ERROR job.not-acknowledged name=critical-job waited_s=1 why=\"no live holder with "
        f"locked=true in {trigger}/status.json: is the update-lock block running?\"",
        "job.released name=critical-job",
    ]
    assert not job_world.holder.exists()
