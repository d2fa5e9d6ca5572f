"""The seven figures of issue 5. Each takes ``quick`` and returns rows for the table.

Every figure works in a fresh :class:`~bench.procs.Workspace` and reaps what it started in a
``finally``, whatever went wrong.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bench import procs
from bench.procs import BenchError, Workspace, now_ns
from bench.report import Row, ms, p99, sample_row, value_row

__all__ = ["FIGURES"]

HOLD_P99_TARGET_NS = 5_000_000
STARTUP_TARGET_NS = 500_000_000
IDLE_TARGET_PERCENT = 0.1
RSS_TARGET_KIB = 16 * 1024
RSS_API_TARGET_KIB = 30 * 1024
API_KEY = "bench-key"  # the simulator's key: a test value, not a secret
CHURN_WORKERS = 8
CHURN_FILES = 500
# supervisord logs this once the agent has outlived startsecs (3 s): start-up is then over.
RUNNING_LINE = "success: agent entered RUNNING state"


@contextlib.contextmanager
def workspace(name: str) -> Iterator[Workspace]:
    ws = Workspace(name)
    try:
        yield ws
    finally:
        ws.cleanup()


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """No collector pauses in this process while it times something."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _ready(ws: Workspace, agent: procs.Process, locked: bool) -> None:
    """The agent has published its first status with ``locked`` and gone back to sleep."""
    def check() -> bool:
        agent.check_alive()
        value = ws.status()
        return value is not None and value.get("locked") is locked
    procs.wait_for(check, f"status.json locked={locked}")
    procs.wait_idle(agent.pid)


def _create(path: str) -> None:
    """What a service does to ask for the lock: create ``<name>.lock`` (empty)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))


# --- 1, 2: hold and release ------------------------------------------------------------------

@dataclass(frozen=True)
class _Mark:
    agent: tuple[int, int]
    bench: tuple[int, int]
    early: int


@dataclass
class Rounds:
    """Per round: the latency, and what schedstat says about it: how long the agent, and this
    process, were runnable but waiting for a CPU before the latency was taken (other load on
    a shared machine), and the agent's CPU time from the event until it slept again (the
    whole wake, status.json included; schedstat adds CPU time up only when a task leaves the
    CPU, so that is read once the agent is idle again)."""

    pid: int
    probes: bool = False
    latency_ns: list[int] = field(default_factory=list)
    wait_ns: list[int] = field(default_factory=list)
    bench_wait_ns: list[int] = field(default_factory=list)
    run_ns: list[int] = field(default_factory=list)
    early_rounds: int = 0

    def begin(self) -> _Mark:
        procs.wait_idle(self.pid)
        return _Mark(procs.sched(self.pid), procs.sched(os.getpid()), procs.PROBES.early)

    def end(self, mark: _Mark, latency_ns: int) -> None:
        taken, bench = procs.sched(self.pid), procs.sched(os.getpid())
        procs.wait_idle(self.pid)
        after = procs.sched(self.pid)
        self.latency_ns.append(latency_ns)
        self.wait_ns.append(taken[1] - mark.agent[1])
        self.bench_wait_ns.append(bench[1] - mark.bench[1])
        self.run_ns.append(after[0] - mark.agent[0])
        if procs.PROBES.early > mark.early:
            self.early_rounds += 1

    def note(self) -> str:
        def spread(values: list[int]) -> str:
            ordered = sorted(values)
            return f"median {ms(statistics.median(ordered))}, p99 {ms(p99(ordered))}"
        early = (f"; rounds where a probe found the file not yet flocked: {self.early_rounds}"
                 if self.probes else "")
        return (f"waited for a CPU: agent {spread(self.wait_ns)}, benchmark "
                f"{spread(self.bench_wait_ns)}; agent CPU time per wake {spread(self.run_ns)}"
                f"{early}")


def latency(quick: bool) -> list[Row]:
    rounds = 50 if quick else 200
    with workspace("latency") as ws:
        agent = ws.agent()
        _ready(ws, agent, locked=False)
        hold = Rounds(agent.pid, probes=True)
        release = Rounds(agent.pid)
        holder = ws.holder("bench")
        with no_gc():
            for _ in range(rounds):
                mark = hold.begin()
                start = now_ns()
                _create(holder)
                hold.end(mark, procs.until_held(ws.lock, start) - start)
                mark = release.begin()
                start = now_ns()
                os.unlink(holder)
                release.end(mark, procs.until_gone(ws.lock, start) - start)
        agent.check_alive()
        acquired = agent.count("lock.acquired")
    if acquired != rounds:
        raise BenchError(f"latency: {rounds} rounds but {acquired} lock.acquired lines")
    gap = f"{procs.PROBE_GAP_NS / 1000:.0f} us"
    return [
        sample_row("1 hold latency", hold.latency_ns, ms, target="p99 < 5 ms",
                   passes=lambda _m, p: p < HOLD_P99_TARGET_NS,
                   note=f"create <name>.lock -> host check (flock -n -x, read-only fd) fails; "
                   f"first probe {gap} after the file appears; {hold.note()}"),
        sample_row("2 release latency", release.latency_ns, ms, target="p99 < 5 ms",
                   passes=lambda _m, p: p < HOLD_P99_TARGET_NS,
                   note=f"unlink <name>.lock -> updates.lock gone; {release.note()}"),
    ]


# --- 3: re-take after an external unlink -----------------------------------------------------

GRACE = "0s"


def retake(quick: bool) -> list[Row]:
    rounds = 50 if quick else 200
    with workspace("retake") as ws:
        agent = ws.agent(UPDATE_LOCK_ALWAYS="true", UPDATE_LOCK_OVERRIDE_GRACE=GRACE)
        _ready(ws, agent, locked=True)
        samples = Rounds(agent.pid, probes=True)
        with no_gc():
            for _ in range(rounds):
                mark = samples.begin()
                if not procs.host_sees_lock(ws.lock):
                    raise BenchError("retake: the lock is not held before the unlink")
                start = now_ns()
                os.unlink(ws.lock)  # what a forced update does (platform facts §4, §7)
                samples.end(mark, procs.until_held(ws.lock, start) - start)
        agent.check_alive()
        overridden = agent.count("WARNING lock.overridden")
    if overridden != rounds:
        raise BenchError(f"retake: {rounds} unlinks but {overridden} lock.overridden lines")
    return [sample_row(
        "3 re-take after external unlink", samples.latency_ns, ms,
        note=f"UPDATE_LOCK_ALWAYS=true, UPDATE_LOCK_OVERRIDE_GRACE={GRACE} (re-take at once; "
        f"the default 30m stays released on purpose); unlink -> held again; {samples.note()}")]


# --- 4: start-up -------------------------------------------------------------------------------

@dataclass
class Stops:
    """How the SIGTERMs at the end of the start-up rounds went: a stop must release the lock
    (platform facts §6: never leave the file behind when stopping on purpose)."""

    total: int = 0
    left_behind: int = 0
    details: list[str] = field(default_factory=list)


def _startup_rounds(rounds: int, start: Callable[[Workspace], procs.Process], stops: Stops,
                    spawn_ms: list[float] | None = None) -> list[int]:
    """Start, time until the host check sees the lock, stop with SIGTERM; ``rounds`` times.
    With ``spawn_ms``: also how long after supervisord the agent process began (10 ms
    ticks)."""
    samples: list[int] = []
    with workspace("startup") as ws:
        for _ in range(rounds):
            proc = start(ws)
            try:
                samples.append(procs.until_held(ws.lock, proc.started_ns) - proc.started_ns)
            except BenchError:
                raise BenchError(f"start-up: {proc.name} never held the lock:\n"
                                 + proc.output()[-2000:]) from None
            if spawn_ms is not None:
                agent = proc.child("update_lock run")
                ticks = procs.start_ticks(agent) - procs.start_ticks(proc.pid)
                spawn_ms.append(1000 * ticks / procs.CLK_TCK)
            mark = len(proc.output())
            stops.total += 1
            try:
                proc.stop()
            except BenchError as error:
                stops.details.append(str(error))
            proc.kill()  # and the children supervisord left, if any
            if os.path.exists(ws.lock):
                stops.left_behind += 1
                tail = proc.output()[mark:].strip().splitlines()
                stops.details.append(f"{proc.name}: " + " | ".join(tail[-4:]))
                os.unlink(ws.lock)  # the workspace's own lock: the next round starts clean
    return samples


def startup(quick: bool) -> list[Row]:
    python = [sys.executable, "-c", "pass"]
    bare: list[int] = []
    for _ in range(5 if quick else 15):
        begin = now_ns()
        subprocess.run(python, env=procs.base_env(), check=True)
        bare.append(now_ns() - begin)
    stops = Stops()
    alone = _startup_rounds(5 if quick else 15, lambda ws: ws.agent(UPDATE_LOCK_ALWAYS="true"),
                            stops)
    spawn_ms: list[float] = []
    supervised = _startup_rounds(
        3 if quick else 8, lambda ws: ws.supervisord(UPDATE_LOCK_ALWAYS="true"), stops,
        spawn_ms)
    return [
        sample_row("4a start-up: agent alone", alone, ms, target="median < 500 ms",
                   passes=lambda m, _p: m < STARTUP_TARGET_NS,
                   note="Popen(python -m update_lock run, ALWAYS=true) -> host check sees "
                   "the lock"),
        sample_row("4b start-up: supervisord + agent", supervised, ms,
                   target="median < 500 ms", passes=lambda m, _p: m < STARTUP_TARGET_NS,
                   note="Popen(supervisord -c <block/supervisord.conf, this Python>) -> "
                   "host check sees the lock; the agent process began a median "
                   f"{statistics.median(spawn_ms):.0f} ms after supervisord's (its import, "
                   "then its first poll(timeout=1 s) before it spawns programs)"),
        sample_row("   reference: python -c pass", bare, ms,
                   note="the interpreter alone, for scale"),
        value_row("   SIGTERM right after start: lock left", f"{stops.left_behind} of "
                  f"{stops.total}", target="0", met=stops.left_behind == 0,
                  note="; ".join(stops.details)),
    ]


# --- 5: idle cost ------------------------------------------------------------------------------

def _snapshot(pid: int) -> tuple[float, int | None, int]:
    return procs.cpu_s(pid), procs.run_ns(pid), procs.ctx_switches(pid)


def idle(quick: bool) -> list[Row]:
    duration_s = 10.0 if quick else 60.0
    with workspace("idle") as ws:
        sd = ws.supervisord(UPDATE_LOCK_ALWAYS="true")
        procs.until_held(ws.lock, sd.started_ns)
        agent = sd.child("update_lock run")
        listener = sd.child("update_lock.fatal_listener")
        procs.wait_for(lambda: RUNNING_LINE in sd.output(), repr(RUNNING_LINE))
        time.sleep(1.0)
        pids = {"agent": agent, "supervisord": sd.pid, "fatal-listener": listener}
        before = {name: _snapshot(pid) for name, pid in pids.items()}
        begin = time.monotonic()
        time.sleep(duration_s)
        elapsed_s = time.monotonic() - begin
        after = {name: _snapshot(pid) for name, pid in pids.items()}
        sd.check_alive()
        if not procs.host_sees_lock(ws.lock):
            raise BenchError("idle: the lock was not held at the end")
    rows: list[Row] = []
    total_s = 0.0
    label = f"5 idle {duration_s:.0f} s"
    for name in pids:
        cpu = after[name][0] - before[name][0]
        run_before, run_after = before[name][1], after[name][1]
        switches = after[name][2] - before[name][2]
        if name != "fatal-listener":
            total_s += cpu
        precise = ("" if run_before is None or run_after is None
                   else f"; schedstat: {(run_after - run_before) / 1e6:.1f} ms on CPU")
        rows.append(value_row(
            f"{label}: {name} CPU", f"{cpu:.2f} s = {100 * cpu / elapsed_s:.3f} %",
            note=f"/proc/<pid>/stat utime+stime (10 ms ticks){precise}"
            + ("; not in the target (issue 5 counts agent and supervisord)"
               if name == "fatal-listener" else "")))
        rows.append(value_row(f"{label}: {name} ctx switches", str(switches)))
    percent = 100 * total_s / elapsed_s
    rows.insert(0, value_row(f"{label}: agent + supervisord CPU",
                             f"{total_s:.2f} s = {percent:.3f} %",
                             target="< 0.1 % of a core", met=percent < IDLE_TARGET_PERCENT,
                             note="lock held (ALWAYS=true), nothing happening, no API"))
    return rows


# --- 6: memory ---------------------------------------------------------------------------------

@contextlib.contextmanager
def supervisor_api(lock_dir: str) -> Iterator[str]:
    """The Supervisor's API on 127.0.0.1: the project's simulator, in this process (its log
    lines are not ours to print)."""
    from update_lock.logs import Logger  # noqa: PLC0415
    from update_lock.simulator import SimulatorServer  # noqa: PLC0415

    with open(os.devnull, "w", encoding="utf-8") as sink:
        server = SimulatorServer(lock_dir, API_KEY, logger=Logger("error", stream=sink))
        server.start()
        try:
            yield server.address
        finally:
            server.stop()


def _kib(value: int) -> str:
    return f"{value / 1024:.1f} MiB"


def memory(quick: bool) -> list[Row]:
    rows: list[Row] = []
    with workspace("memory") as ws:
        agent = ws.agent(UPDATE_LOCK_ALWAYS="true")
        _ready(ws, agent, locked=True)
        rss, pss = procs.memory_kib(agent.pid)
    rows.append(value_row("6a memory: agent, no API: RSS", _kib(rss), target="< 16 MiB",
                          met=rss < RSS_TARGET_KIB))
    rows.append(value_row("6a memory: agent, no API: PSS", _kib(pss)))

    with workspace("memory-api") as ws, supervisor_api(str(ws.lock_dir)) as address:
        agent = ws.agent(UPDATE_LOCK_ALWAYS="true", BALENA_SUPERVISOR_ADDRESS=address,
                         BALENA_SUPERVISOR_API_KEY=API_KEY)
        def polled() -> bool:
            agent.check_alive()
            value = ws.status()
            return value is not None and value.get("update_pending") is False
        procs.wait_for(polled, "the agent's first GET /v1/device in status.json")
        procs.wait_idle(agent.pid)
        rss, pss = procs.memory_kib(agent.pid)
        count = procs.threads(agent.pid)
    rows.append(value_row("6b memory: agent, API: RSS", _kib(rss), target="< 30 MiB",
                          met=rss < RSS_API_TARGET_KIB,
                          note=f"after its first GET /v1/device (simulator); {count} threads"))
    rows.append(value_row("6b memory: agent, API: PSS", _kib(pss)))

    with workspace("memory-sd") as ws:
        sd = ws.supervisord(UPDATE_LOCK_ALWAYS="true")
        procs.until_held(ws.lock, sd.started_ns)
        child = sd.child("update_lock run")
        listener = sd.child("update_lock.fatal_listener")
        procs.wait_for(lambda: RUNNING_LINE in sd.output(), repr(RUNNING_LINE))
        rss, pss = procs.memory_kib(sd.pid)
        child_rss, _ = procs.memory_kib(child)
        listener_rss, listener_pss = procs.memory_kib(listener)
    rows.append(value_row("6c memory: supervisord: RSS", _kib(rss),
                          note=f"agent under it: RSS {_kib(child_rss)}"))
    rows.append(value_row("6c memory: supervisord: PSS", _kib(pss)))
    rows.append(value_row("   memory: fatal-listener RSS / PSS",
                          f"{_kib(listener_rss)} / {_kib(listener_pss)}"))
    return rows


# --- 7: churn ----------------------------------------------------------------------------------

# Each worker: say ready, wait for the go byte, create and remove its files as fast as it
# can, print its start and end (perf_counter_ns: CLOCK_MONOTONIC, comparable with ours).
WORKER = """
import os, sys, time
directory, index, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.buffer.read(1)
start = time.perf_counter_ns()
for j in range(count):
    path = f"{directory}/c{index}-{j}.lock"
    os.close(os.open(path, flags, 0o644))
    os.unlink(path)
sys.stdout.write(f"{start} {time.perf_counter_ns()}\\n")
"""


def _churn_once(ws: Workspace, agent: procs.Process) -> tuple[float, int, int]:
    """(agent CPU s, ns from the last removal to the right final state, ns of the burst)."""
    workers = [subprocess.Popen(
        [sys.executable, "-I", "-c", WORKER, str(ws.trigger), str(i), str(CHURN_FILES)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        for i in range(CHURN_WORKERS)]
    try:
        for worker in workers:
            assert worker.stdout is not None
            if worker.stdout.readline() != b"ready\n":
                raise BenchError("churn: a worker did not start")
        procs.wait_idle(agent.pid)
        cpu_before = procs.cpu_s(agent.pid)
        go = now_ns()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(b"g")
            worker.stdin.close()
        ends = []
        for worker in workers:
            assert worker.stdout is not None
            _start, end = worker.stdout.readline().split()
            ends.append(int(end))
            if worker.wait(timeout=procs.DEADLINE_S) != 0:
                raise BenchError("churn: a worker failed")
        last = max(ends)

        def right() -> bool:
            value = ws.status()
            return (not os.path.exists(ws.lock) and value is not None
                    and value.get("locked") is False and value.get("holders") == [])
        procs.wait_for(right, "unlocked, no holders in status.json", pause_s=0.0002)
        settled = now_ns()
        procs.wait_idle(agent.pid)
        cpu = procs.cpu_s(agent.pid) - cpu_before
        agent.check_alive()
        return cpu, max(0, settled - last), last - go
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            for stream in (worker.stdin, worker.stdout):
                if stream is not None and not stream.closed:
                    stream.close()


def churn(quick: bool) -> list[Row]:
    runs = 1 if quick else 3
    cpu: list[float] = []
    settle: list[int] = []
    burst: list[int] = []
    with workspace("churn") as ws:
        agent = ws.agent()
        _ready(ws, agent, locked=False)
        for _ in range(runs):
            c, s, b = _churn_once(ws, agent)
            cpu.append(c)
            settle.append(s)
            burst.append(b)
        added = agent.count("holder.added")
        acquired = agent.count("lock.acquired")
    name = f"7 churn {CHURN_WORKERS}x{CHURN_FILES}"
    return [
        sample_row(f"{name}: agent CPU", cpu, lambda v: f"{v:.2f} s",
                   note=f"per run of {CHURN_WORKERS * CHURN_FILES} create+remove; the burst "
                   f"itself took {ms(statistics.median(burst))} (median); the agent logged "
                   f"{added} holder.added and {acquired} lock.acquired over {runs} run(s)"),
        sample_row(f"{name}: final state right", settle, ms,
                   note="last removal -> updates.lock gone and status.json unlocked, "
                   "holders []"),
    ]


FIGURES: dict[str, Callable[[bool], list[Row]]] = {
    "latency": latency,
    "retake": retake,
    "startup": startup,
    "idle": idle,
    "memory": memory,
    "churn": churn,
}
