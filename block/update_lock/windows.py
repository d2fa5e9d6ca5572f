"""Maintenance windows: the local wall-clock spans in which updates are allowed.

Pure: parsing, formatting and evaluation only, no I/O. The zone is passed in by the caller.

Syntax of ``UPDATE_LOCK_WINDOWS`` (see :data:`WINDOWS_FORM`)::

    Mon-Fri 02:00-04:00; Sat,Sun 00:00-06:00

* Entries are separated by ``;``; whitespace around entries is ignored. A blank string means
  no windows. An empty entry (``;;``, a leading ``;``) is an error, except that ONE trailing
  ``;`` after the last entry is allowed (``Mon 02:00-03:00;``).
* An entry is ``[DAYS ]HH:MM-HH:MM``. DAYS is a comma list of day names or ranges, case
  insensitive, three-letter (``Mon``) or full (``Monday``); ranges may wrap (``Fri-Mon`` is
  Fri, Sat, Sun, Mon; ``Mon-Mon`` is just Mon). No DAYS means every day. Whitespace around
  ``,`` and ``-`` is tolerated; DAYS and the time range are separated by whitespace.
* Times are ``00:00``..``23:59`` with two-digit hours and minutes; ``24:00`` is allowed as an
  end only. An end before the start crosses midnight and belongs to the START day
  (``Mon 22:00-02:00`` is open from Monday 22:00 to Tuesday 02:00). An end of ``00:00`` is
  the same as ``24:00`` and is stored as 1440. Start equal to end is an error.

Evaluation: an instant is inside a window iff its local wall-clock time (``at.astimezone(tz)``)
is within [start, end) on a matching day; for a window crossing midnight, iff the day matches
and the time is >= start, or the previous day matches and the time is < end. Across DST this
means a window (or the part of it) lying in a spring-forward gap does not occur, and a window
in a repeated fall-back hour is open during both passes.

Canonical text (:func:`format_window`): days omitted when all seven; otherwise maximal runs of
consecutive days (wrapping Sun->Mon), ordered by their first day, each written as one name
(``Wed``), two names (``Sat,Sun``) or a range for three or more (``Fri-Mon``), e.g.
``Mon,Wed-Fri 22:00-02:00``; an end at midnight is written ``24:00``. For every valid tuple
``ws``, ``parse_windows(format_windows(ws)) == ws``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo

__all__ = [
    "WINDOWS_FORM",
    "Window",
    "WindowSyntaxError",
    "format_window",
    "format_windows",
    "is_open",
    "next_change",
    "parse_windows",
]

WINDOWS_FORM = (
    "[DAYS ]HH:MM-HH:MM entries separated by ';', e.g. Mon-Fri 02:00-04:00; Sat,Sun 00:00-06:00"
)

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_LOOKUP = {name.lower(): i for i, name in enumerate(_DAY_NAMES)} | {
    name: i for i, name in enumerate(_FULL_NAMES)
}
_ALL_DAYS = frozenset(range(7))
_MINUTES_PER_DAY = 1440

_TIME_RE = re.compile(r"([0-9]{2}):([0-9]{2})")
_DIGIT_RE = re.compile(r"[0-9]")

_UTC = UTC
_HOUR = timedelta(hours=1)


class WindowSyntaxError(ValueError):
    """One bad entry of a windows string.

    ``str(error)`` is ``entry N 'ENTRY': PROBLEM``; ``problem`` alone is the specific problem,
    e.g. ``'25:00' is not a time HH:MM (00:00-23:59, or 24:00 as an end)``. ``index`` is
    1-based.
    """

    def __init__(self, index: int, entry: str, problem: str) -> None:
        self.index = index
        self.entry = entry
        self.problem = problem
        super().__init__(f"entry {index} {entry!r}: {problem}")

    def __reduce__(self) -> tuple[type[WindowSyntaxError], tuple[int, str, str]]:
        return (type(self), (self.index, self.entry, self.problem))


@dataclass(frozen=True, order=True)
class Window:
    """One window: days it starts on (0=Monday..6=Sunday) and minutes since local midnight.

    ``end_min < start_min`` means the window crosses midnight into the next day;
    ``end_min == 1440`` means it ends at midnight (24:00).
    """

    days: frozenset[int]
    start_min: int
    end_min: int

    def __post_init__(self) -> None:
        if not self.days or not self.days <= _ALL_DAYS:
            raise ValueError(f"days must be a non-empty subset of 0..6, got {sorted(self.days)}")
        if not 0 <= self.start_min < _MINUTES_PER_DAY:
            raise ValueError(f"start_min must be in 0..1439, got {self.start_min}")
        if not 0 < self.end_min <= _MINUTES_PER_DAY:
            raise ValueError(f"end_min must be in 1..1440, got {self.end_min}")
        if self.start_min == self.end_min:
            raise ValueError("empty window: start_min == end_min")

    @property
    def crosses_midnight(self) -> bool:
        return self.end_min < self.start_min


# ---------------------------------------------------------------------------------------------
# Parsing


class _Problem(Exception):
    """Internal: a problem within one entry, wrapped into WindowSyntaxError by the caller."""


def _parse_time(text: str, *, end: bool) -> int:
    match = _TIME_RE.fullmatch(text)
    if match is None:
        raise _Problem(f"{text!r} is not a time HH:MM (00:00-23:59, or 24:00 as an end)")
    hours, minutes = int(match[1]), int(match[2])
    if (hours, minutes) == (24, 0):
        if not end:
            raise _Problem("'24:00' is only allowed as an end time")
        return _MINUTES_PER_DAY
    if hours > 23 or minutes > 59:
        raise _Problem(f"{text!r} is not a time HH:MM (00:00-23:59, or 24:00 as an end)")
    return hours * 60 + minutes


def _parse_day(text: str) -> int:
    day = _DAY_LOOKUP.get(text.lower())
    if day is None:
        raise _Problem(f"{text!r} is not a day name (Mon..Sun or Monday..Sunday)")
    return day


def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise _Problem(f"empty day in {text!r}")
        if any(len(part.split()) > 1 for part in item.split("-")):
            raise _Problem(f"{item!r}: separate days with ','")
        if "-" in item:
            ends = [part.strip() for part in item.split("-")]
            if len(ends) != 2 or not all(ends):
                raise _Problem(f"{item!r} is not a day range like Mon-Fri")
            first, last = _parse_day(ends[0]), _parse_day(ends[1])
            days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
        else:
            days.add(_parse_day(item))
    return frozenset(days)


def _parse_entry(entry: str) -> Window:
    digit = _DIGIT_RE.search(entry)
    if digit is None:
        raise _Problem("missing the time range HH:MM-HH:MM")
    days_text, times_text = entry[: digit.start()], entry[digit.start() :]
    if days_text and not days_text[-1].isspace():
        raise _Problem("expected whitespace between the days and the time range")
    days = _parse_days(days_text.strip()) if days_text.strip() else _ALL_DAYS
    times = [part.strip() for part in times_text.split("-")]
    if len(times) != 2:
        raise _Problem(f"{times_text!r} is not a time range HH:MM-HH:MM")
    start = _parse_time(times[0], end=False)
    end = _parse_time(times[1], end=True)
    if start == end:
        raise _Problem(f"empty window: start and end are both {times[0]!r}")
    return Window(days=days, start_min=start, end_min=end or _MINUTES_PER_DAY)


def parse_windows(text: str) -> tuple[Window, ...]:
    """Parse ``UPDATE_LOCK_WINDOWS``; a blank string is no windows.

    Raises :class:`WindowSyntaxError` naming the first bad entry (see the module docstring
    for the syntax, including the one trailing ``;`` that is allowed).
    """
    if not text.strip():
        return ()
    parts = text.split(";")
    if len(parts) > 1 and not parts[-1].strip() and parts[-2].strip():
        parts.pop()  # one trailing ';'
    windows: list[Window] = []
    for index, raw in enumerate(parts, start=1):
        entry = raw.strip()
        try:
            if not entry:
                raise _Problem("empty entry (entries are separated by ';')")
            windows.append(_parse_entry(entry))
        except _Problem as problem:
            raise WindowSyntaxError(index, entry, str(problem)) from None
    return tuple(windows)


# ---------------------------------------------------------------------------------------------
# Formatting


def _format_days(days: frozenset[int]) -> str:
    first_missing = min(_ALL_DAYS - days)
    runs: list[list[int]] = []
    previous_in = False
    for step in range(1, 8):
        day = (first_missing + step) % 7
        if day in days:
            if previous_in:
                runs[-1].append(day)
            else:
                runs.append([day])
        previous_in = day in days
    runs.sort(key=lambda run: run[0])
    items: list[str] = []
    for run in runs:
        if len(run) >= 3:
            items.append(f"{_DAY_NAMES[run[0]]}-{_DAY_NAMES[run[-1]]}")
        else:
            items.extend(_DAY_NAMES[day] for day in run)
    return ",".join(items)


def _format_time(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def format_window(w: Window) -> str:
    """Canonical text of one window, e.g. ``Mon,Wed-Fri 22:00-02:00`` or ``00:00-24:00``."""
    times = f"{_format_time(w.start_min)}-{_format_time(w.end_min)}"
    if w.days == _ALL_DAYS:
        return times
    return f"{_format_days(w.days)} {times}"


def format_windows(ws: tuple[Window, ...]) -> str:
    """Canonical text of a windows tuple; ``parse_windows`` gives ``ws`` back."""
    return "; ".join(format_window(w) for w in ws)


# ---------------------------------------------------------------------------------------------
# Evaluation


def _require_aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"datetime must be timezone-aware, got naive {at.isoformat()}")


def _open_at_local(windows: tuple[Window, ...], local: datetime) -> bool:
    weekday = local.weekday()
    yesterday = (weekday - 1) % 7
    minute = local.hour * 60 + local.minute  # bounds are whole minutes: seconds never matter
    for w in windows:
        if w.end_min > w.start_min:
            if weekday in w.days and w.start_min <= minute < w.end_min:
                return True
        elif (weekday in w.days and minute >= w.start_min) or (
            yesterday in w.days and minute < w.end_min
        ):
            return True
    return False


def is_open(windows: tuple[Window, ...], tz: tzinfo, at: datetime) -> bool:
    """Whether the aware instant ``at`` lies inside one of ``windows`` in zone ``tz``."""
    _require_aware(at)
    return _open_at_local(windows, at.astimezone(tz))


# (tz, proleptic ordinal of a UTC day) -> offset transitions in (day 00:00, next day 00:00] UTC
_TRANSITIONS: dict[tuple[tzinfo, int], tuple[datetime, ...]] = {}
_TRANSITIONS_MAX = 4096


def _offset(tz: tzinfo, utc: datetime) -> timedelta | None:
    return utc.astimezone(tz).utcoffset()


def _day_transitions(tz: tzinfo, ordinal: int) -> tuple[datetime, ...]:
    key = (tz, ordinal)
    cached = _TRANSITIONS.get(key)
    if cached is not None:
        return cached
    base = datetime.fromordinal(ordinal).replace(tzinfo=_UTC)
    found: list[datetime] = []
    previous = _offset(tz, base)
    for hour in range(1, 25):
        current = _offset(tz, base + hour * _HOUR)
        if current != previous:
            # Offset `previous` at lo seconds, changed at hi seconds: bisect to the second.
            lo_point = base + (hour - 1) * _HOUR
            lo, hi = 0, 3600
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(tz, lo_point + timedelta(seconds=mid)) == previous:
                    lo = mid
                else:
                    hi = mid
            found.append(lo_point + timedelta(seconds=hi))
            previous = current
    result = tuple(found)
    if len(_TRANSITIONS) >= _TRANSITIONS_MAX:
        _TRANSITIONS.clear()
    _TRANSITIONS[key] = result
    return result


def _transitions(tz: tzinfo, after: datetime, until: datetime) -> list[datetime]:
    """UTC-offset transitions of ``tz`` in (after, until] (both aware, UTC)."""
    if isinstance(tz, timezone):
        return []
    out: list[datetime] = []
    for ordinal in range(after.toordinal(), until.toordinal() + 1):
        out.extend(t for t in _day_transitions(tz, ordinal) if after < t <= until)
    return out


def _wall_instants(tz: tzinfo, day: date, minute: int) -> tuple[datetime, datetime]:
    """Both UTC readings (fold 0 and 1) of wall time ``minute`` after local midnight of ``day``."""
    wall = datetime(day.year, day.month, day.day, tzinfo=tz) + timedelta(minutes=minute)
    return (
        wall.replace(fold=0).astimezone(_UTC),
        wall.replace(fold=1).astimezone(_UTC),
    )


def next_change(
    windows: tuple[Window, ...],
    tz: tzinfo,
    at: datetime,
    horizon: timedelta = timedelta(days=9),
) -> datetime | None:
    """The first instant after ``at`` at which :func:`is_open` flips, in UTC.

    Exact to the microsecond, DST included. ``None`` when nothing changes within
    ``(at, at + horizon]`` (no windows, or windows covering all time).
    """
    _require_aware(at)
    if not windows or horizon <= timedelta(0):
        return None
    at_utc = at.astimezone(_UTC)
    deadline = at_utc + horizon
    state = _open_at_local(windows, at_utc.astimezone(tz))

    # Every instant where the state can flip: a window edge reached by the wall clock (both
    # readings of an ambiguous or skipped wall time), or a jump of the wall clock itself.
    candidates: set[datetime] = set(_transitions(tz, at_utc, deadline))
    first_day = at_utc.astimezone(tz).date() - timedelta(days=1)
    for offset in range(horizon.days + 3):
        day = first_day + timedelta(days=offset)
        weekday = day.weekday()
        for w in windows:
            if weekday not in w.days:
                continue
            end = w.end_min + (_MINUTES_PER_DAY if w.crosses_midnight else 0)
            candidates.update(_wall_instants(tz, day, w.start_min))
            candidates.update(_wall_instants(tz, day, end))

    for candidate in sorted(c for c in candidates if at_utc < c <= deadline):
        if _open_at_local(windows, candidate.astimezone(tz)) != state:
            return candidate
    return None
