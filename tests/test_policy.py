"""update_lock.policy.decide: what the lock should be, why, and when to look again.

Every case is one row: an environment, an aware instant, an observation, and the whole
Decision expected. 2024-06-03 is a Monday; Berlin is UTC+2 in June.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from update_lock.config import Config, load
from update_lock.holders import Holder
from update_lock.policy import Decision, Observation, decide

BERLIN = ZoneInfo("Europe/Berlin")
MIN = timedelta(minutes=1)
SEC = timedelta(seconds=1)
MICRO = timedelta(microseconds=1)


def b(month: int, day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A Berlin wall-clock instant in 2024."""
    return datetime(2024, month, day, hour, minute, second, tzinfo=BERLIN)


def u(month: int, day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A UTC instant in 2024."""
    return datetime(2024, month, day, hour, minute, second, tzinfo=UTC)


NOW = b(6, 3, 10)  # Monday 10:00 in Berlin
WEEKDAYS = {"UPDATE_LOCK_WINDOWS": "Mon-Fri 02:00-04:00", "UPDATE_LOCK_TIMEZONE": "Europe/Berlin"}


def cfg(**env: str) -> Config:
    return load({f"UPDATE_LOCK_{name.upper()}": value for name, value in env.items()})


def weekdays(**env: str) -> Config:
    return load(WEEKDAYS | {f"UPDATE_LOCK_{name.upper()}": value for name, value in env.items()})


def holder(name: str, age: timedelta = timedelta(0), *, flocked: bool = False) -> Holder:
    return Holder(name=name, reason="", mtime=NOW - age, flocked=flocked)


def d(  # noqa: PLR0917 - mirrors Decision
    lock: bool = False,
    reasons: tuple[str, ...] = (),
    openings: tuple[str, ...] = (),
    live: tuple[str, ...] = (),
    stale: tuple[str, ...] = (),
    window_open: bool | None = None,
    window_next_change: datetime | None = None,
    next_check: datetime | None = None,
) -> Decision:
    return Decision(lock, reasons, openings, live, stale, window_open, window_next_change,
                    next_check)


@dataclass(frozen=True)
class Case:
    id: str
    config: Config
    now: datetime
    observation: Observation
    expected: Decision


def case(
    id: str,
    config: Config,
    now: datetime,
    expected: Decision,
    *,
    holders: tuple[Holder, ...] = (),
    allow_until: datetime | None = None,
    uptime: timedelta | None = None,
    override_until: datetime | None = None,
) -> Case:
    observation = Observation(holders, allow_until, uptime, override_until)
    return Case(id, config, now, observation, expected)


CASES = [
    # --- nothing configured
    case("defaults", Config(), NOW, d()),
    case("defaults-with-uptime", Config(), NOW, d(), uptime=MIN),
    # --- disable: nothing is held, whatever else asks
    case("disable", cfg(disable="1"), NOW, d(openings=("disabled",))),
    case("disable-beats-always-and-holders", cfg(disable="on", always="on"), NOW,
         d(openings=("disabled",), live=("backup",)), holders=(holder("backup"),)),
    case("disable-still-reports-the-window", weekdays(disable="yes"), NOW,
         d(openings=("disabled",), window_open=False, window_next_change=b(6, 4, 2))),
    case("disable-beats-override", cfg(disable="1", always="1"), NOW,
         d(openings=("disabled",)), override_until=NOW + MIN),
    # --- always
    case("always", cfg(always="true"), NOW, d(True, ("always",))),
    # --- windows (Mon-Fri 02:00-04:00 Berlin)
    case("window-closed", weekdays(), NOW,
         d(True, ("window-closed",), window_open=False, window_next_change=b(6, 4, 2),
           next_check=b(6, 4, 2))),
    case("window-open", weekdays(), b(6, 3, 3),
         d(window_open=True, window_next_change=b(6, 3, 4), next_check=b(6, 3, 4))),
    case("window-opens-at-its-start", weekdays(), b(6, 3, 2),
         d(window_open=True, window_next_change=b(6, 3, 4), next_check=b(6, 3, 4))),
    case("window-closed-a-second-before-start", weekdays(), b(6, 3, 1, 59, 59),
         d(True, ("window-closed",), window_open=False, window_next_change=b(6, 3, 2),
           next_check=b(6, 3, 2))),
    case("window-open-a-second-before-end", weekdays(), b(6, 3, 3, 59, 59),
         d(window_open=True, window_next_change=b(6, 3, 4), next_check=b(6, 3, 4))),
    case("window-closed-at-its-end", weekdays(), b(6, 3, 4),
         d(True, ("window-closed",), window_open=False, window_next_change=b(6, 4, 2),
           next_check=b(6, 4, 2))),
    case("window-closed-over-the-weekend", weekdays(), b(6, 8, 3),  # Saturday
         d(True, ("window-closed",), window_open=False, window_next_change=b(6, 10, 2),
           next_check=b(6, 10, 2))),
    case("window-next-change-is-utc", weekdays(), u(6, 3, 1),  # 03:00 in Berlin
         d(window_open=True, window_next_change=u(6, 3, 2), next_check=u(6, 3, 2))),
    case("window-across-midnight", cfg(windows="Mon 22:00-02:00", timezone="Europe/Berlin"),
         b(6, 4, 1, 30),  # Tuesday 01:30 belongs to Monday's window
         d(window_open=True, window_next_change=b(6, 4, 2), next_check=b(6, 4, 2))),
    case("window-in-the-spring-forward-gap-does-not-occur",
         cfg(windows="02:00-03:00", timezone="Europe/Berlin"), u(3, 31, 0, 59, 59),
         d(True, ("window-closed",), window_open=False, window_next_change=u(4, 1, 0),
           next_check=u(4, 1, 0))),
    case("window-in-the-fall-back-hour-is-open-both-times",
         cfg(windows="02:00-03:00", timezone="Europe/Berlin"), u(10, 27, 0, 30),
         d(window_open=True, window_next_change=u(10, 27, 2), next_check=u(10, 27, 2))),
    case("always-and-window-closed", weekdays(always="1"), NOW,
         d(True, ("always", "window-closed"), window_open=False, window_next_change=b(6, 4, 2),
           next_check=b(6, 4, 2))),
    case("always-holds-inside-an-open-window", weekdays(always="1"), b(6, 3, 3),
         d(True, ("always",), window_open=True, window_next_change=b(6, 3, 4),
           next_check=b(6, 3, 4))),
    # --- boot window (10 minutes)
    case("boot-window-open", cfg(always="1", boot_window="10m"), NOW,
         d(openings=("boot-window",), next_check=NOW + 6 * MIN), uptime=4 * MIN),
    case("boot-window-a-microsecond-left", cfg(always="1", boot_window="10m"), NOW,
         d(openings=("boot-window",), next_check=NOW + MICRO), uptime=10 * MIN - MICRO),
    case("boot-window-over-at-its-end", cfg(always="1", boot_window="10m"), NOW,
         d(True, ("always",)), uptime=10 * MIN),
    case("boot-window-over", cfg(always="1", boot_window="10m"), NOW,
         d(True, ("always",)), uptime=3 * timedelta(days=1)),
    case("boot-window-unknown-uptime", cfg(always="1", boot_window="10m"), NOW,
         d(True, ("always",))),
    case("boot-window-off", cfg(always="1", boot_window="off"), NOW,
         d(True, ("always",)), uptime=SEC),
    case("boot-window-lifts-a-closed-window", weekdays(boot_window="10m"), NOW,
         d(openings=("boot-window",), window_open=False, window_next_change=b(6, 4, 2),
           next_check=NOW + 9 * MIN), uptime=MIN),
    case("boot-window-next-check-is-the-earlier-window-edge", weekdays(boot_window="1h"),
         b(6, 3, 3, 50),
         d(openings=("boot-window",), window_open=True, window_next_change=b(6, 3, 4),
           next_check=b(6, 3, 4)), uptime=MIN),
    # --- allow-until
    case("allow-until-future", cfg(always="1"), NOW,
         d(openings=("allow-until",), next_check=NOW + timedelta(hours=1)),
         allow_until=NOW + timedelta(hours=1)),
    case("allow-until-now-is-over", cfg(always="1"), NOW, d(True, ("always",)), allow_until=NOW),
    case("allow-until-past", cfg(always="1"), NOW, d(True, ("always",)), allow_until=NOW - SEC),
    case("allow-until-lifts-a-closed-window", weekdays(), NOW,
         d(openings=("allow-until",), window_open=False, window_next_change=b(6, 4, 2),
           next_check=NOW + 2 * MIN), allow_until=NOW + 2 * MIN),
    case("allow-until-in-another-zone", cfg(always="1"), NOW,
         d(openings=("allow-until",), next_check=u(6, 3, 8, 30)), allow_until=u(6, 3, 8, 30)),
    case("boot-window-and-allow-until", cfg(always="1", boot_window="10m"), NOW,
         d(openings=("boot-window", "allow-until"), next_check=NOW + 5 * MIN),
         uptime=5 * MIN, allow_until=NOW + timedelta(hours=1)),
    # --- holders
    case("holder", Config(), NOW, d(True, ("holder:backup",), live=("backup",)),
         holders=(holder("backup"),)),
    case("holders-in-name-order", Config(), NOW,
         d(True, ("holder:alpha", "holder:backup", "holder:db-dump"),
           live=("alpha", "backup", "db-dump")),
         holders=(holder("alpha"), holder("backup"), holder("db-dump"))),
    case("holder-and-always", cfg(always="1"), NOW,
         d(True, ("always", "holder:backup"), live=("backup",)), holders=(holder("backup"),)),
    case("holder-and-window-closed", weekdays(), NOW,
         d(True, ("window-closed", "holder:backup"), live=("backup",), window_open=False,
           window_next_change=b(6, 4, 2), next_check=b(6, 4, 2)),
         holders=(holder("backup"),)),
    case("holder-holds-inside-an-open-window", weekdays(), b(6, 3, 3),
         d(True, ("holder:backup",), live=("backup",), window_open=True,
           window_next_change=b(6, 3, 4), next_check=b(6, 3, 4)),
         holders=(holder("backup"),)),
    case("holder-holds-with-allow-until", cfg(always="1"), NOW,
         d(True, ("holder:backup",), ("allow-until",), ("backup",),
           next_check=NOW + timedelta(hours=1)),
         holders=(holder("backup"),), allow_until=NOW + timedelta(hours=1)),
    case("holder-holds-in-the-boot-window", cfg(always="1", boot_window="10m"), NOW,
         d(True, ("holder:backup",), ("boot-window",), ("backup",), next_check=NOW + 9 * MIN),
         holders=(holder("backup"),), uptime=MIN),
    case("holder-without-ttl-never-goes-stale", Config(), NOW,
         d(True, ("holder:old",), live=("old",)), holders=(holder("old", timedelta(days=365)),)),
    # --- holder TTL (10 minutes): mtime is the heartbeat
    case("ttl-live", cfg(holder_ttl="10m"), NOW,
         d(True, ("holder:backup",), live=("backup",), next_check=NOW + 6 * MIN),
         holders=(holder("backup", 4 * MIN),)),
    case("ttl-live-at-exactly-the-ttl", cfg(holder_ttl="10m"), NOW,
         d(True, ("holder:backup",), live=("backup",), next_check=NOW),
         holders=(holder("backup", 10 * MIN),)),
    case("ttl-stale", cfg(holder_ttl="10m"), NOW, d(stale=("backup",)),
         holders=(holder("backup", 10 * MIN + MICRO),)),
    case("ttl-stale-but-flocked-is-live", cfg(holder_ttl="10m"), NOW,
         d(True, ("holder:backup",), live=("backup",)),
         holders=(holder("backup", timedelta(days=2), flocked=True),)),
    case("ttl-fresh-and-flocked-has-no-expiry", cfg(holder_ttl="10m"), NOW,
         d(True, ("holder:backup",), live=("backup",)),
         holders=(holder("backup", flocked=True),)),
    case("ttl-next-check-is-the-earliest-expiry", cfg(holder_ttl="10m"), NOW,
         d(True, ("holder:a", "holder:b", "holder:c"), live=("a", "b", "c"),
           next_check=NOW + 2 * MIN),
         holders=(holder("a", 1 * MIN), holder("b", 8 * MIN), holder("c", 3 * MIN))),
    case("ttl-live-and-stale", cfg(holder_ttl="10m"), NOW,
         d(True, ("holder:b",), live=("b",), stale=("a", "c"), next_check=NOW + 9 * MIN),
         holders=(holder("a", timedelta(hours=1)), holder("b", MIN),
                  holder("c", timedelta(days=1)))),
    case("ttl-stale-holder-leaves-the-window-to-decide", weekdays(holder_ttl="10m"), NOW,
         d(True, ("window-closed",), stale=("backup",), window_open=False,
           window_next_change=b(6, 4, 2), next_check=b(6, 4, 2)),
         holders=(holder("backup", timedelta(hours=1)),)),
    case("ttl-next-check-before-the-window-edge", weekdays(holder_ttl="10m"), b(6, 3, 3, 55),
         d(True, ("holder:backup",), live=("backup",), window_open=True,
           window_next_change=b(6, 3, 4), next_check=b(6, 3, 3, 56)),
         holders=(Holder("backup", "", b(6, 3, 3, 46)),)),
    case("ttl-mtime-in-the-future-is-live", cfg(holder_ttl="10m"), NOW,
         d(True, ("holder:backup",), live=("backup",), next_check=NOW + 15 * MIN),
         holders=(holder("backup", -5 * MIN),)),  # the clock jumped back (NTP on a Pi)
    # --- override: everything suspended until it ends
    case("override", cfg(always="1"), NOW,
         d(openings=("override",), live=("backup",), next_check=NOW + 10 * MIN),
         holders=(holder("backup"),), override_until=NOW + 10 * MIN),
    case("override-beats-windows-and-reports-them", weekdays(), NOW,
         d(openings=("override",), window_open=False, window_next_change=b(6, 4, 2),
           next_check=NOW + 10 * MIN), override_until=NOW + 10 * MIN),
    case("override-next-check-is-the-earlier-window-edge", weekdays(), b(6, 3, 3, 55),
         d(openings=("override",), window_open=True, window_next_change=b(6, 3, 4),
           next_check=b(6, 3, 4)), override_until=b(6, 3, 5)),
    case("override-beats-boot-window-and-allow-until", cfg(always="1", boot_window="1h"), NOW,
         d(openings=("override",), next_check=NOW + MIN),
         uptime=MIN, allow_until=NOW + timedelta(hours=1), override_until=NOW + MIN),
    case("override-reports-stale-holders", cfg(holder_ttl="10m"), NOW,
         d(openings=("override",), live=("b",), stale=("a",), next_check=NOW + SEC),
         holders=(holder("a", timedelta(hours=1)), holder("b")), override_until=NOW + SEC),
    case("override-over-at-its-end", cfg(always="1"), NOW,
         d(True, ("always", "holder:backup"), live=("backup",)),
         holders=(holder("backup"),), override_until=NOW),
    case("override-over", cfg(always="1"), NOW, d(True, ("always",)),
         override_until=NOW - timedelta(days=1)),
]


@pytest.mark.parametrize("row", CASES, ids=[c.id for c in CASES])
def test_decide(row: Case) -> None:
    assert decide(row.config, row.now, row.observation) == row.expected


def test_case_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)


def test_override_expiry_resumes() -> None:
    config = cfg(always="1")
    until = NOW + 10 * MIN
    observation = Observation(holders=(holder("backup"),), override_until=until)
    during = decide(config, until - MICRO, observation)
    after = decide(config, until, observation)
    assert (during.lock, during.openings, during.next_check) == (False, ("override",), until)
    assert (after.lock, after.reasons, after.openings) == (True, ("always", "holder:backup"), ())


def test_ttl_expiry_is_seen_at_next_check() -> None:
    # Waking at next_check and a moment later must show the holder going stale.
    config = cfg(holder_ttl="10m")
    observation = Observation(holders=(holder("backup"),))
    first = decide(config, NOW, observation)
    assert first.next_check == NOW + 10 * MIN
    assert decide(config, first.next_check, observation).lock is True
    later = decide(config, first.next_check + MICRO, observation)
    assert (later.lock, later.stale_holders, later.next_check) == (False, ("backup",), None)


def test_walking_next_check_follows_the_window() -> None:
    # Following next_check from Monday 10:00 visits every edge of the week's windows in order.
    config = weekdays()
    now, seen = NOW, []
    for _ in range(10):
        decision = decide(config, now, Observation())
        assert decision.next_check is not None
        seen.append((decision.lock, decision.next_check.astimezone(BERLIN)))
        now = decision.next_check
    assert seen == [
        (True, b(6, 4, 2)), (False, b(6, 4, 4)),
        (True, b(6, 5, 2)), (False, b(6, 5, 4)),
        (True, b(6, 6, 2)), (False, b(6, 6, 4)),
        (True, b(6, 7, 2)), (False, b(6, 7, 4)),
        (True, b(6, 10, 2)), (False, b(6, 10, 4)),
    ]


def test_naive_now_is_refused_when_windows_are_configured() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(weekdays(), datetime(2024, 6, 3, 10), Observation())


def test_decide_does_not_change_its_inputs() -> None:
    config = weekdays(holder_ttl="10m")
    observation = Observation(holders=(holder("a"), holder("b", timedelta(hours=1))))
    before = (config, observation)
    decide(config, NOW, observation)
    assert (config, observation) == before
