"""The decision: should the lock be held now, why, and when to look again. Pure.

Theory of operation. The agent is level-triggered: on every wake it observes everything
(holder files, ``allow-until``, uptime, override state) and calls :func:`decide` with the
configuration and the wall clock. The decision names the reasons to hold; the lock is held
exactly when there is at least one. Rules, in order:

1. ``UPDATE_LOCK_DISABLE``: nothing is held.
2. After an override (ours or the Supervisor's), nothing is held until the override ends.
3. The baseline: ``always`` and ``window-closed`` (windows configured, none open now). An
   ``allow-until`` in the future and the boot window lift the baseline (they are openings).
4. Holders add to the baseline: each live holder is a reason ``holder:<name>``. A holder is
   live while its file's mtime is younger than the TTL (no TTL: always), or while some
   process holds an flock on it.

This module does no I/O: the clock, the files and the uptime come in as values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from update_lock.config import Config
from update_lock.windows import is_open, next_change

__all__ = ["Decision", "Holder", "Observation", "decide"]


@dataclass(frozen=True)
class Holder:
    """A holder file as observed: its name, reason, heartbeat, and whether it is flocked."""

    name: str
    reason: str
    mtime: datetime
    # Some process holds an flock on the holder file: live whatever its age.
    flocked: bool = False


@dataclass(frozen=True)
class Observation:
    holders: tuple[Holder, ...] = ()
    allow_until: datetime | None = None
    uptime: timedelta | None = None
    override_until: datetime | None = None


@dataclass(frozen=True)
class Decision:
    lock: bool
    reasons: tuple[str, ...]
    # Why the baseline is lifted or everything is suspended, for the log and the status.
    openings: tuple[str, ...]
    live_holders: tuple[str, ...]
    stale_holders: tuple[str, ...]
    window_open: bool | None
    window_next_change: datetime | None
    next_check: datetime | None


def _earliest(*times: datetime | None) -> datetime | None:
    present = [t for t in times if t is not None]
    return min(present) if present else None


def decide(config: Config, now: datetime, observation: Observation) -> Decision:
    """What the lock should be at ``now`` (an aware datetime)."""
    window_open: bool | None = None
    window_change: datetime | None = None
    if config.windows:
        window_open = is_open(config.windows, config.tz, now)
        window_change = next_change(config.windows, config.tz, now)

    live: list[str] = []
    stale: list[str] = []
    ttl_expiry: datetime | None = None
    for holder in observation.holders:
        expires = holder.mtime + config.holder_ttl if config.holder_ttl else None
        if expires is None or holder.flocked or now <= expires:
            live.append(holder.name)
            if expires is not None and not holder.flocked:
                ttl_expiry = _earliest(ttl_expiry, expires)
        else:
            stale.append(holder.name)

    override_until = observation.override_until
    if override_until is not None and now >= override_until:
        override_until = None

    if config.disable:
        return Decision(False, (), ("disabled",), tuple(live), tuple(stale),
                        window_open, window_change, None)
    if override_until is not None:
        return Decision(False, (), ("override",), tuple(live), tuple(stale),
                        window_open, window_change, _earliest(override_until, window_change))

    baseline: list[str] = []
    if config.always:
        baseline.append("always")
    if window_open is False:
        baseline.append("window-closed")

    openings: list[str] = []
    boot_end: datetime | None = None
    if config.boot_window and observation.uptime is not None:
        remaining = config.boot_window - observation.uptime
        if remaining > timedelta(0):
            openings.append("boot-window")
            boot_end = now + remaining
    allow_until = observation.allow_until
    if allow_until is not None and now < allow_until:
        openings.append("allow-until")
    else:
        allow_until = None
    if openings:
        baseline = []

    reasons = tuple(baseline) + tuple(f"holder:{name}" for name in live)
    next_check = _earliest(window_change, ttl_expiry, boot_end, allow_until)
    return Decision(bool(reasons), reasons, tuple(openings), tuple(live), tuple(stale),
                    window_open, window_change, next_check)
