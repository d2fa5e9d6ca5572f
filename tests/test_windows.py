"""update_lock.windows: parsing, formatting, and evaluation across midnight and DST."""

from __future__ import annotations

import ast
import pickle
import time
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from update_lock import windows as windows_module
from update_lock.windows import (
    WINDOWS_FORM,
    Window,
    WindowSyntaxError,
    format_window,
    format_windows,
    is_open,
    next_change,
    parse_windows,
)

ALL = frozenset(range(7))
MON, TUE, WED, THU, FRI, SAT, SUN = range(7)
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
SYDNEY = ZoneInfo("Australia/Sydney")
KOLKATA = ZoneInfo("Asia/Kolkata")
ST_JOHNS = ZoneInfo("America/St_Johns")


def u(  # noqa: PLR0917 - mirrors datetime()
    year: int, month: int, day: int, hour: int, minute: int, second: int = 0, micro: int = 0
) -> datetime:
    """A UTC instant."""
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def w(days: set[int] | frozenset[int], start: str, end: str) -> Window:
    def minutes(text: str) -> int:
        hours, mins = text.split(":")
        return int(hours) * 60 + int(mins)

    return Window(frozenset(days), minutes(start), minutes(end))


# ---------------------------------------------------------------------------------------------
# Parsing and formatting

VALID = [
    # text, parsed windows, canonical text
    ("", (), ""),
    ("   \t ", (), ""),
    ("02:00-04:00", (w(ALL, "02:00", "04:00"),), "02:00-04:00"),
    (
        "Mon-Fri 02:00-04:00",
        (w({MON, TUE, WED, THU, FRI}, "02:00", "04:00"),),
        "Mon-Fri 02:00-04:00",
    ),
    (
        "Mon-Fri 02:00-04:00; Sat,Sun 00:00-06:00",
        (w({MON, TUE, WED, THU, FRI}, "02:00", "04:00"), w({SAT, SUN}, "00:00", "06:00")),
        "Mon-Fri 02:00-04:00; Sat,Sun 00:00-06:00",
    ),
    ("Monday 01:00-02:00", (w({MON}, "01:00", "02:00"),), "Mon 01:00-02:00"),
    ("SUNDAY 01:00-02:00", (w({SUN}, "01:00", "02:00"),), "Sun 01:00-02:00"),
    ("tUe,thursday 01:00-02:00", (w({TUE, THU}, "01:00", "02:00"),), "Tue,Thu 01:00-02:00"),
    (
        "Mon,Wed-Fri 22:00-02:00",
        (w({MON, WED, THU, FRI}, "22:00", "02:00"),),
        "Mon,Wed-Fri 22:00-02:00",
    ),
    ("Fri-Mon 10:00-11:00", (w({FRI, SAT, SUN, MON}, "10:00", "11:00"),), "Fri-Mon 10:00-11:00"),
    ("Sun-Mon 10:00-11:00", (w({SUN, MON}, "10:00", "11:00"),), "Sun,Mon 10:00-11:00"),
    ("Mon,Sun,Wed 10:00-11:00", (w({MON, WED, SUN}, "10:00", "11:00"),), "Wed,Sun,Mon 10:00-11:00"),
    ("Wed-Wed 10:00-11:00", (w({WED}, "10:00", "11:00"),), "Wed 10:00-11:00"),
    ("Mon,Mon,monday 10:00-11:00", (w({MON}, "10:00", "11:00"),), "Mon 10:00-11:00"),
    ("Mon-Sun 00:00-24:00", (Window(ALL, 0, 1440),), "00:00-24:00"),
    ("Tue-Mon 00:00-24:00", (Window(ALL, 0, 1440),), "00:00-24:00"),
    ("Fri 20:00-24:00", (Window(frozenset({FRI}), 1200, 1440),), "Fri 20:00-24:00"),
    ("Fri 20:00-00:00", (Window(frozenset({FRI}), 1200, 1440),), "Fri 20:00-24:00"),
    ("23:59-00:01", (Window(ALL, 1439, 1),), "23:59-00:01"),
    ("00:00-23:59", (Window(ALL, 0, 1439),), "00:00-23:59"),
    (
        "  mon - fri   02:00 - 04:00 ;\tSat , Sun\t00:00-06:00  ",
        (w({MON, TUE, WED, THU, FRI}, "02:00", "04:00"), w({SAT, SUN}, "00:00", "06:00")),
        "Mon-Fri 02:00-04:00; Sat,Sun 00:00-06:00",
    ),
    ("Mon 02:00-03:00;", (w({MON}, "02:00", "03:00"),), "Mon 02:00-03:00"),
    ("Mon 02:00-03:00 ; ", (w({MON}, "02:00", "03:00"),), "Mon 02:00-03:00"),
    (
        "Mon 02:00-03:00; Mon 02:00-03:00",
        (w({MON}, "02:00", "03:00"), w({MON}, "02:00", "03:00")),
        "Mon 02:00-03:00; Mon 02:00-03:00",
    ),
]


@pytest.mark.parametrize(("text", "expected", "canonical"), VALID)
def test_parse_valid(text: str, expected: tuple[Window, ...], canonical: str) -> None:
    parsed = parse_windows(text)
    assert parsed == expected
    assert format_windows(parsed) == canonical
    assert parse_windows(canonical) == parsed


_BAD_TIME = "is not a time HH:MM (00:00-23:59, or 24:00 as an end)"

INVALID = [
    ("25:00-03:00", f"entry 1 '25:00-03:00': '25:00' {_BAD_TIME}"),
    ("Mon 02:00-25:00", f"entry 1 'Mon 02:00-25:00': '25:00' {_BAD_TIME}"),
    ("02:60-03:00", f"entry 1 '02:60-03:00': '02:60' {_BAD_TIME}"),
    ("02:00-24:01", f"entry 1 '02:00-24:01': '24:01' {_BAD_TIME}"),
    ("24:00-02:00", "entry 1 '24:00-02:00': '24:00' is only allowed as an end time"),
    ("2:00-03:00", f"entry 1 '2:00-03:00': '2:00' {_BAD_TIME}"),
    ("02:00-3:00", f"entry 1 '02:00-3:00': '3:00' {_BAD_TIME}"),
    ("0200-0300", f"entry 1 '0200-0300': '0200' {_BAD_TIME}"),
    ("02:00-", f"entry 1 '02:00-': '' {_BAD_TIME}"),
    ("02:00", "entry 1 '02:00': '02:00' is not a time range HH:MM-HH:MM"),
    (
        "02:00-03:00-04:00",
        "entry 1 '02:00-03:00-04:00': '02:00-03:00-04:00' is not a time range HH:MM-HH:MM",
    ),
    ("Mon 02:00-03:00 Tue", f"entry 1 'Mon 02:00-03:00 Tue': '03:00 Tue' {_BAD_TIME}"),
    ("Mon-Fri", "entry 1 'Mon-Fri': missing the time range HH:MM-HH:MM"),
    (
        "Funday 02:00-03:00",
        "entry 1 'Funday 02:00-03:00': 'Funday' is not a day name (Mon..Sun or Monday..Sunday)",
    ),
    (
        "Tues 02:00-03:00",
        "entry 1 'Tues 02:00-03:00': 'Tues' is not a day name (Mon..Sun or Monday..Sunday)",
    ),
    (
        "Mon-Funday 02:00-03:00",
        "entry 1 'Mon-Funday 02:00-03:00': 'Funday' is not a day name (Mon..Sun or Monday..Sunday)",
    ),
    ("Mon- 02:00-03:00", "entry 1 'Mon- 02:00-03:00': 'Mon-' is not a day range like Mon-Fri"),
    (
        "Mon-Tue-Wed 02:00-03:00",
        "entry 1 'Mon-Tue-Wed 02:00-03:00': 'Mon-Tue-Wed' is not a day range like Mon-Fri",
    ),
    ("Mon,,Tue 02:00-03:00", "entry 1 'Mon,,Tue 02:00-03:00': empty day in 'Mon,,Tue'"),
    ("Mon, 02:00-03:00", "entry 1 'Mon, 02:00-03:00': empty day in 'Mon,'"),
    ("Mon Tue 02:00-03:00", "entry 1 'Mon Tue 02:00-03:00': 'Mon Tue': separate days with ','"),
    (
        "Mon02:00-03:00",
        "entry 1 'Mon02:00-03:00': expected whitespace between the days and the time range",
    ),
    ("02:00-02:00", "entry 1 '02:00-02:00': empty window: start and end are both '02:00'"),
    ("00:00-00:00", "entry 1 '00:00-00:00': empty window: start and end are both '00:00'"),
    (";;", "entry 1 '': empty entry (entries are separated by ';')"),
    (";", "entry 1 '': empty entry (entries are separated by ';')"),
    ("; Mon 02:00-03:00", "entry 1 '': empty entry (entries are separated by ';')"),
    ("Mon 02:00-03:00;;", "entry 2 '': empty entry (entries are separated by ';')"),
    ("Mon 02:00-03:00; ;Tue 02:00-03:00", "entry 2 '': empty entry (entries are separated by ';')"),
    (
        "Mon 02:00-03:00; Tue 02:00-02:00",
        "entry 2 'Tue 02:00-02:00': empty window: start and end are both '02:00'",
    ),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_parse_invalid(text: str, message: str) -> None:
    with pytest.raises(WindowSyntaxError) as caught:
        parse_windows(text)
    assert str(caught.value) == message
    assert issubclass(WindowSyntaxError, ValueError)
    assert message == f"entry {caught.value.index} {caught.value.entry!r}: {caught.value.problem}"


def test_syntax_error_problem_and_pickle() -> None:
    with pytest.raises(WindowSyntaxError) as caught:
        parse_windows("Sat 00:00-06:00; Mon 25:00-03:00")
    error = caught.value
    assert (error.index, error.entry) == (2, "Mon 25:00-03:00")
    assert error.problem == f"'25:00' {_BAD_TIME}"
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object
    assert str(copy) == str(error)
    assert copy.problem == error.problem


def test_windows_form() -> None:
    assert WINDOWS_FORM == (
        "[DAYS ]HH:MM-HH:MM entries separated by ';', e.g. Mon-Fri 02:00-04:00; Sat,Sun 00:00-06:00"
    )
    example = WINDOWS_FORM.split("e.g. ", 1)[1]
    assert format_windows(parse_windows(example)) == example


@pytest.mark.parametrize(
    ("days", "start", "end"),
    [
        (frozenset(), 0, 60),
        (frozenset({7}), 0, 60),
        (frozenset({-1}), 0, 60),
        (ALL, -1, 60),
        (ALL, 1440, 60),
        (ALL, 0, 0),
        (ALL, 0, 1441),
        (ALL, 60, 60),
    ],
)
def test_window_rejects_invalid_fields(days: frozenset[int], start: int, end: int) -> None:
    with pytest.raises(ValueError, match=r"must be|empty window"):
        Window(days, start, end)


def test_format_window_examples() -> None:
    assert format_window(Window(ALL, 0, 1440)) == "00:00-24:00"
    assert format_window(Window(frozenset({MON, WED, THU, FRI}), 1320, 120)) == (
        "Mon,Wed-Fri 22:00-02:00"
    )
    assert format_window(Window(frozenset({SAT, SUN, MON, TUE}), 0, 5)) == "Sat-Tue 00:00-00:05"
    assert format_window(Window(frozenset(range(6)), 0, 5)) == "Mon-Sat 00:00-00:05"
    assert format_window(Window(frozenset({MON, WED, FRI, SUN}), 0, 5)) == (
        "Wed,Fri,Sun,Mon 00:00-00:05"
    )
    assert format_windows(()) == ""


# ---------------------------------------------------------------------------------------------
# is_open / next_change: tables

IS_OPEN = [
    # windows, zone, instant, expected
    # midnight wrap belongs to the start day
    ("Mon 22:00-02:00", UTC, u(2026, 3, 2, 21, 59, 59), False),  # 2026-03-02 is a Monday
    ("Mon 22:00-02:00", UTC, u(2026, 3, 2, 22, 0), True),
    ("Mon 22:00-02:00", UTC, u(2026, 3, 3, 1, 59, 59, 999999), True),
    ("Mon 22:00-02:00", UTC, u(2026, 3, 3, 2, 0), False),
    ("Mon 22:00-02:00", UTC, u(2026, 3, 2, 1, 0), False),  # Sunday night is not Monday's
    ("Mon 22:00-02:00", UTC, u(2026, 3, 1, 23, 0), False),
    ("Mon 22:00-02:00", UTC, u(2026, 3, 3, 22, 0), False),
    ("Sun 22:00-02:00", UTC, u(2026, 3, 2, 1, 0), True),  # wraps the week too
    ("Sun 22:00-02:00", UTC, u(2026, 3, 1, 1, 0), False),
    # 24:00
    ("Fri 20:00-24:00", UTC, u(2026, 3, 6, 19, 59, 59), False),
    ("Fri 20:00-24:00", UTC, u(2026, 3, 6, 20, 0), True),
    ("Fri 20:00-24:00", UTC, u(2026, 3, 6, 23, 59, 59, 999999), True),
    ("Fri 20:00-24:00", UTC, u(2026, 3, 7, 0, 0), False),
    ("00:00-24:00", UTC, u(2026, 3, 7, 0, 0), True),
    ("", UTC, u(2026, 3, 7, 0, 0), False),
    # wrapping day ranges
    ("Fri-Mon 10:00-11:00", UTC, u(2026, 3, 1, 10, 30), True),  # Sunday
    ("Fri-Mon 10:00-11:00", UTC, u(2026, 3, 2, 10, 30), True),  # Monday
    ("Fri-Mon 10:00-11:00", UTC, u(2026, 3, 3, 10, 30), False),  # Tuesday
    ("Fri-Mon 10:00-11:00", UTC, u(2026, 3, 5, 10, 30), False),  # Thursday
    ("Fri-Mon 10:00-11:00", UTC, u(2026, 3, 6, 10, 59, 59), True),  # Friday
    ("Fri-Mon 10:00-11:00", UTC, u(2026, 3, 6, 11, 0), False),
    # local time, not UTC
    ("Mon 22:00-02:00", KOLKATA, u(2026, 3, 2, 16, 29, 59), False),  # 21:59:59 IST
    ("Mon 22:00-02:00", KOLKATA, u(2026, 3, 2, 16, 30), True),
    ("Mon 22:00-02:00", timezone(timedelta(hours=5, minutes=30)), u(2026, 3, 2, 16, 30), True),
    ("Mon 22:00-02:00", KOLKATA, u(2026, 3, 2, 20, 29, 59), True),  # Tue 01:59:59 IST
    ("Mon 22:00-02:00", KOLKATA, u(2026, 3, 2, 20, 30), False),
    # Berlin spring forward 2026-03-29: 02:00 CET -> 03:00 CEST at 01:00 UTC
    ("02:00-04:00", BERLIN, u(2026, 3, 29, 0, 59, 59), False),  # 01:59:59 CET
    ("02:00-04:00", BERLIN, u(2026, 3, 29, 1, 0), True),  # 03:00 CEST
    ("02:00-02:30", BERLIN, u(2026, 3, 29, 0, 59, 59), False),
    ("02:00-02:30", BERLIN, u(2026, 3, 29, 1, 0), False),
    ("02:00-02:30", BERLIN, u(2026, 3, 29, 1, 15), False),
    # Berlin fall back 2026-10-25: 03:00 CEST -> 02:00 CET at 01:00 UTC
    ("02:15-02:45", BERLIN, u(2026, 10, 25, 0, 30), True),  # 02:30 CEST
    ("02:15-02:45", BERLIN, u(2026, 10, 25, 0, 59, 59), False),  # 02:59:59 CEST
    ("02:15-02:45", BERLIN, u(2026, 10, 25, 1, 0), False),  # 02:00 CET
    ("02:15-02:45", BERLIN, u(2026, 10, 25, 1, 30), True),  # 02:30 CET
    # New York fall back 2026-11-01: 02:00 EDT -> 01:00 EST at 06:00 UTC
    ("01:00-01:30", NEW_YORK, u(2026, 11, 1, 5, 15), True),  # 01:15 EDT
    ("01:00-01:30", NEW_YORK, u(2026, 11, 1, 5, 45), False),  # 01:45 EDT
    ("01:00-01:30", NEW_YORK, u(2026, 11, 1, 6, 15), True),  # 01:15 EST
    ("01:00-01:30", NEW_YORK, u(2026, 11, 1, 6, 30), False),
    # New York spring forward 2026-03-08: 02:00 EST -> 03:00 EDT at 07:00 UTC
    ("02:00-03:00", NEW_YORK, u(2026, 3, 8, 6, 59, 59), False),
    ("02:00-03:00", NEW_YORK, u(2026, 3, 8, 7, 0), False),
    ("01:00-02:30", NEW_YORK, u(2026, 3, 8, 6, 59, 59), True),
    ("01:00-02:30", NEW_YORK, u(2026, 3, 8, 7, 0), False),
    # Sydney fall back 2026-04-05: 03:00 AEDT -> 02:00 AEST at 16:00 UTC on the 4th
    ("Sun 02:00-02:30", SYDNEY, u(2026, 4, 4, 15, 10), True),  # 02:10 AEDT
    ("Sun 02:00-02:30", SYDNEY, u(2026, 4, 4, 15, 40), False),  # 02:40 AEDT
    ("Sun 02:00-02:30", SYDNEY, u(2026, 4, 4, 16, 10), True),  # 02:10 AEST
    # Sydney spring forward 2026-10-04: 02:00 AEST -> 03:00 AEDT at 16:00 UTC on the 3rd
    ("Sun 02:00-03:00", SYDNEY, u(2026, 10, 3, 15, 59, 59), False),
    ("Sun 02:00-03:00", SYDNEY, u(2026, 10, 3, 16, 0), False),
]


@pytest.mark.parametrize(("text", "tz", "at", "expected"), IS_OPEN)
def test_is_open(text: str, tz: tzinfo, at: datetime, expected: bool) -> None:
    assert is_open(parse_windows(text), tz, at) is expected
    # the zone `at` is expressed in does not matter, only the instant
    assert is_open(parse_windows(text), tz, at.astimezone(BERLIN)) is expected


NEXT_CHANGE = [
    # windows, zone, at, expected next change (UTC) or None
    ("", UTC, u(2026, 3, 2, 12, 0), None),
    ("00:00-24:00", UTC, u(2026, 3, 2, 12, 0), None),
    ("00:00-24:00", BERLIN, u(2026, 3, 29, 0, 30), None),
    ("Mon-Sun 00:00-24:00; Mon 02:00-03:00", NEW_YORK, u(2026, 11, 1, 5, 30), None),
    ("22:00-00:00; 00:00-22:00", SYDNEY, u(2026, 4, 4, 15, 0), None),
    # midnight wrap and day boundaries
    ("Mon 22:00-02:00", UTC, u(2026, 3, 2, 21, 59, 59), u(2026, 3, 2, 22, 0)),
    ("Mon 22:00-02:00", UTC, u(2026, 3, 2, 21, 59, 59, 999999), u(2026, 3, 2, 22, 0)),
    ("Mon 22:00-02:00", UTC, u(2026, 3, 2, 22, 0), u(2026, 3, 3, 2, 0)),
    ("Mon 22:00-02:00", UTC, u(2026, 3, 3, 2, 0), u(2026, 3, 9, 22, 0)),
    ("Mon 22:00-02:00", UTC, u(2026, 3, 3, 1, 59, 59), u(2026, 3, 3, 2, 0)),
    ("Mon 00:00-24:00", UTC, u(2026, 3, 2, 12, 0), u(2026, 3, 3, 0, 0)),
    ("Mon 00:00-24:00", UTC, u(2026, 3, 1, 23, 59, 59), u(2026, 3, 2, 0, 0)),
    ("Fri 20:00-24:00; Sat 00:00-01:00", UTC, u(2026, 3, 6, 21, 0), u(2026, 3, 7, 1, 0)),
    ("Fri 20:00-00:00", UTC, u(2026, 3, 6, 21, 0), u(2026, 3, 7, 0, 0)),
    ("Mon,Tue 00:00-24:00", UTC, u(2026, 3, 2, 21, 0), u(2026, 3, 4, 0, 0)),
    ("Sat,Sun 22:00-02:00", UTC, u(2026, 3, 7, 23, 0), u(2026, 3, 8, 2, 0)),
    ("Sat,Sun 22:00-02:00", UTC, u(2026, 3, 8, 2, 0), u(2026, 3, 8, 22, 0)),
    ("Sat,Sun 22:00-02:00", UTC, u(2026, 3, 8, 22, 0), u(2026, 3, 9, 2, 0)),
    ("Mon-Fri 02:00-04:00; 03:00-05:00", UTC, u(2026, 3, 2, 2, 30), u(2026, 3, 2, 5, 0)),
    ("Mon 22:00-02:00", KOLKATA, u(2026, 3, 2, 16, 0), u(2026, 3, 2, 16, 30)),
    ("Mon 22:00-02:00", KOLKATA, u(2026, 3, 2, 16, 30), u(2026, 3, 2, 20, 30)),
    # Berlin spring forward: the 02:00-04:00 window opens at the first instant after the gap
    ("02:00-04:00", BERLIN, u(2026, 3, 29, 0, 30), u(2026, 3, 29, 1, 0)),
    ("02:00-04:00", BERLIN, u(2026, 3, 29, 1, 0), u(2026, 3, 29, 2, 0)),
    ("02:00-04:00", BERLIN, u(2026, 3, 28, 3, 0), u(2026, 3, 29, 1, 0)),  # Sat 04:00 CET
    # ... and a window inside the gap does not occur that day
    ("02:00-02:30", BERLIN, u(2026, 3, 28, 23, 0), u(2026, 3, 30, 0, 0)),
    ("Sun 02:00-02:30", BERLIN, u(2026, 3, 28, 23, 0), u(2026, 4, 5, 0, 0)),
    # Berlin fall back: a window in the repeated hour is open in both passes
    ("02:15-02:45", BERLIN, u(2026, 10, 25, 0, 0), u(2026, 10, 25, 0, 15)),
    ("02:15-02:45", BERLIN, u(2026, 10, 25, 0, 15), u(2026, 10, 25, 0, 45)),
    ("02:15-02:45", BERLIN, u(2026, 10, 25, 0, 45), u(2026, 10, 25, 1, 15)),
    ("02:15-02:45", BERLIN, u(2026, 10, 25, 1, 15), u(2026, 10, 25, 1, 45)),
    # a crossing window ending in the repeated hour closes, then reopens for the second pass
    ("Sat 23:00-02:30", BERLIN, u(2026, 10, 24, 21, 0), u(2026, 10, 25, 0, 30)),
    ("Sat 23:00-02:30", BERLIN, u(2026, 10, 25, 0, 30), u(2026, 10, 25, 1, 0)),
    ("Sat 23:00-02:30", BERLIN, u(2026, 10, 25, 1, 0), u(2026, 10, 25, 1, 30)),
    ("Sat 23:00-02:30", BERLIN, u(2026, 10, 25, 1, 30), u(2026, 10, 31, 22, 0)),
    # New York spring forward: the end lies in the gap, so the jump closes the window
    ("01:00-02:30", NEW_YORK, u(2026, 3, 8, 6, 0), u(2026, 3, 8, 7, 0)),
    ("02:00-02:30", NEW_YORK, u(2026, 3, 8, 6, 0), u(2026, 3, 9, 6, 0)),
    # New York fall back
    ("01:00-01:30", NEW_YORK, u(2026, 11, 1, 4, 0), u(2026, 11, 1, 5, 0)),
    ("01:00-01:30", NEW_YORK, u(2026, 11, 1, 5, 0), u(2026, 11, 1, 5, 30)),
    ("01:00-01:30", NEW_YORK, u(2026, 11, 1, 5, 30), u(2026, 11, 1, 6, 0)),
    ("01:00-01:30", NEW_YORK, u(2026, 11, 1, 6, 0), u(2026, 11, 1, 6, 30)),
    ("01:00-01:30", NEW_YORK, u(2026, 11, 1, 6, 30), u(2026, 11, 2, 6, 0)),
    ("01:30-03:00", NEW_YORK, u(2026, 11, 1, 5, 30), u(2026, 11, 1, 6, 0)),  # back to 01:00
    ("01:30-03:00", NEW_YORK, u(2026, 11, 1, 6, 0), u(2026, 11, 1, 6, 30)),
    ("01:30-03:00", NEW_YORK, u(2026, 11, 1, 6, 30), u(2026, 11, 1, 8, 0)),
    ("00:00-02:30", NEW_YORK, u(2026, 11, 1, 4, 0), u(2026, 11, 1, 7, 30)),
    # Sydney (southern hemisphere: DST ends in April, starts in October)
    ("Sun 02:00-02:30", SYDNEY, u(2026, 4, 4, 14, 0), u(2026, 4, 4, 15, 0)),
    ("Sun 02:00-02:30", SYDNEY, u(2026, 4, 4, 15, 0), u(2026, 4, 4, 15, 30)),
    ("Sun 02:00-02:30", SYDNEY, u(2026, 4, 4, 15, 30), u(2026, 4, 4, 16, 0)),
    ("Sun 02:00-02:30", SYDNEY, u(2026, 4, 4, 16, 0), u(2026, 4, 4, 16, 30)),
    ("Sun 02:00-03:00", SYDNEY, u(2026, 10, 3, 12, 0), u(2026, 10, 10, 15, 0)),
    ("Sat 23:00-02:30", SYDNEY, u(2026, 10, 3, 12, 0), u(2026, 10, 3, 13, 0)),
    ("Sat 23:00-02:30", SYDNEY, u(2026, 10, 3, 13, 0), u(2026, 10, 3, 16, 0)),
    # St. John's: half-hour offsets, transition at 02:00 local = 05:30 UTC
    ("02:00-04:00", ST_JOHNS, u(2026, 3, 8, 5, 0), u(2026, 3, 8, 5, 30)),
    ("02:00-04:00", ST_JOHNS, u(2026, 3, 8, 5, 30), u(2026, 3, 8, 6, 30)),
]


@pytest.mark.parametrize(("text", "tz", "at", "expected"), NEXT_CHANGE)
def test_next_change(text: str, tz: tzinfo, at: datetime, expected: datetime | None) -> None:
    windows = parse_windows(text)
    got = next_change(windows, tz, at)
    assert got == expected
    if got is not None:
        assert got.tzinfo is UTC
        assert is_open(windows, tz, got) != is_open(windows, tz, at)
        assert is_open(windows, tz, got - timedelta(microseconds=1)) == is_open(windows, tz, at)
    # same instant expressed in another zone: same answer
    assert next_change(windows, tz, at.astimezone(SYDNEY)) == expected


def test_next_change_horizon() -> None:
    windows = parse_windows("Mon 02:00-03:00")
    tuesday = u(2026, 3, 3, 0, 0)
    assert next_change(windows, UTC, tuesday, timedelta(days=1)) is None
    assert next_change(windows, UTC, tuesday, timedelta(days=6, hours=2)) == u(2026, 3, 9, 2, 0)
    assert next_change(windows, UTC, tuesday, timedelta(days=6, hours=1)) is None
    assert next_change(windows, UTC, tuesday, timedelta(0)) is None
    assert next_change(windows, UTC, tuesday) == u(2026, 3, 9, 2, 0)


def test_naive_datetime_rejected() -> None:
    windows = parse_windows("02:00-04:00")
    with pytest.raises(ValueError, match="timezone-aware"):
        is_open(windows, BERLIN, datetime(2026, 3, 29, 2, 30))
    with pytest.raises(ValueError, match="timezone-aware"):
        next_change(windows, BERLIN, datetime(2026, 3, 29, 2, 30))


def test_next_change_is_fast() -> None:
    windows = parse_windows("Mon-Fri 02:00-04:00; Sat,Sun 00:00-06:00; Wed 22:00-01:00")
    at = u(2026, 3, 25, 12, 0)
    next_change(windows, BERLIN, at)  # warm the transition cache
    started = time.perf_counter()
    for i in range(100):
        next_change(windows, BERLIN, at + timedelta(minutes=7 * i))
    assert (time.perf_counter() - started) / 100 < 0.02  # typically ~0.3 ms


# ---------------------------------------------------------------------------------------------
# Hypothesis: round trip

_days = st.frozensets(st.integers(0, 6), min_size=1)
_INTERESTING = [0, 1, 30, 59, 60, 90, 120, 150, 179, 180, 210, 240, 1380, 1410, 1439]
_start = st.one_of(st.sampled_from(_INTERESTING), st.integers(0, 1439))
_end = st.one_of(st.sampled_from([*_INTERESTING[1:], 1440]), st.integers(1, 1440))


@st.composite
def _window(draw: st.DrawFn) -> Window:
    start = draw(_start)
    end = draw(_end.filter(lambda e: e != start))
    return Window(draw(_days), start, end)


_windows = st.lists(_window(), max_size=4).map(tuple)


@settings(max_examples=300, deadline=None)
@given(_windows)
def test_round_trip(ws: tuple[Window, ...]) -> None:
    text = format_windows(ws)
    assert parse_windows(text) == ws
    assert parse_windows(text.lower()) == ws
    if ws:
        assert parse_windows(text + ";") == ws
    for one in ws:
        assert parse_windows(format_window(one)) == (one,)


# ---------------------------------------------------------------------------------------------
# Hypothesis: brute force against a naive reference


def _reference_open_minutes(ws: tuple[Window, ...]) -> frozenset[tuple[int, int]]:
    """Every (weekday, minute of day) of local wall-clock time that is inside a window."""
    minutes: set[tuple[int, int]] = set()
    for one in ws:
        for day in one.days:
            if one.start_min < one.end_min:
                minutes.update((day, m) for m in range(one.start_min, one.end_min))
            else:
                minutes.update((day, m) for m in range(one.start_min, 1440))
                minutes.update(((day + 1) % 7, m) for m in range(one.end_min))
    return frozenset(minutes)


def _reference_is_open(open_minutes: frozenset[tuple[int, int]], tz: tzinfo, at: datetime) -> bool:
    local = at.astimezone(tz)
    return (local.weekday(), local.hour * 60 + local.minute) in open_minutes


BRUTE_ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "UTC",
    "America/St_Johns",
]


@cache
def _transitions_near(zone: str) -> tuple[datetime, ...]:
    """Hours (UTC) in 2026-2027 at which the zone's offset has just changed; fallback: two dates."""
    tz = ZoneInfo(zone)
    found: list[datetime] = []
    t = u(2026, 1, 1, 0, 0)
    previous = t.astimezone(tz).utcoffset()
    while t < u(2028, 1, 1, 0, 0):
        t += timedelta(hours=1)
        offset = t.astimezone(tz).utcoffset()
        if offset != previous:
            found.append(t)
            previous = offset
    return tuple(found) or (u(2026, 1, 1, 0, 0), u(2027, 6, 30, 12, 0))


@settings(max_examples=120, deadline=None)
@given(
    ws=st.lists(_window(), min_size=1, max_size=3).map(tuple),
    zone=st.sampled_from(BRUTE_ZONES),
    which=st.integers(0, 3),
    shift=st.integers(-2 * 86400, 86400),
    micro=st.one_of(st.just(0), st.integers(0, 999_999)),
)
def test_brute_force(ws: tuple[Window, ...], zone: str, which: int, shift: int, micro: int) -> None:
    tz = ZoneInfo(zone)
    near = _transitions_near(zone)
    at = near[which % len(near)] + timedelta(seconds=shift, microseconds=micro)
    reference = _reference_open_minutes(ws)

    state = _reference_is_open(reference, tz, at)
    assert is_open(ws, tz, at) is state

    first_minute = at.replace(second=0, microsecond=0) + timedelta(minutes=1)  # first > at
    first_flip: datetime | None = None
    for k in range(3 * 1440):
        minute = first_minute + timedelta(minutes=k)
        expected = _reference_is_open(reference, tz, minute)
        assert is_open(ws, tz, minute) is expected, minute
        if first_flip is None and expected != state:
            first_flip = minute

    got = next_change(ws, tz, at)
    if first_flip is None:
        assert got is None or got > first_minute + timedelta(days=3)
    else:
        assert got is not None
        assert first_flip - timedelta(minutes=1) < got <= first_flip
        assert got.tzinfo is UTC
        assert is_open(ws, tz, got) is not state
        assert is_open(ws, tz, got - timedelta(microseconds=1)) is state


# ---------------------------------------------------------------------------------------------
# Purity


def test_windows_imports_no_io_modules() -> None:
    allowed = {"__future__", "dataclasses", "datetime", "zoneinfo", "re", "typing"}
    tree = ast.parse(Path(windows_module.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            assert node.module is not None
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in {"__import__", "open", "eval", "exec"}
    assert imported
    assert imported <= allowed, imported - allowed
