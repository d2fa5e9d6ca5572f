"""update_lock.config: every variable's valid forms, defaults, and every problem word for word.

The expected forms are spelled out here as literals, not imported from the module, so that a
change to what a fleet owner reads is a deliberate change to this file too.
"""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from update_lock import config as config_module
from update_lock.config import (
    DEFAULT_LOCK_PATH,
    DEFAULT_TRIGGER_DIR,
    KNOWN,
    Config,
    format_duration,
    load,
    parse_bool,
    parse_duration,
    unknown_variables,
)
from update_lock.errors import EX_CONFIG, ConfigError, ConfigProblem, exit_code_for
from update_lock.windows import Window

ALL = frozenset(range(7))

BOOL = "a boolean: 1/true/yes/on or 0/false/no/off"
DURATION = "a duration like 90s, 15m, 2h, 1d, 1h30m or plain seconds"
OPTIONAL_DURATION = "a duration like 90s, 15m, 2h, 1d, 1h30m or plain seconds, or off/0"
POSITIVE_DURATION = "a duration like 90s, 15m, 2h, 1d, 1h30m or plain seconds, above 0"
PATH = "an absolute path"
ZONE = "an IANA time zone such as Europe/Berlin or UTC"
TZ_ZONE = "an IANA time zone such as Europe/Berlin or UTC (or set UPDATE_LOCK_TIMEZONE)"
LEVEL = "one of debug, info, warning, error"
WINDOWS = (
    "[DAYS ]HH:MM-HH:MM entries separated by ';', e.g. Mon-Fri 02:00-04:00; Sat,Sun 00:00-06:00"
)

BOOLEANS = [
    "UPDATE_LOCK_ALWAYS",
    "UPDATE_LOCK_HOST_OS",
    "UPDATE_LOCK_LEGACY",
    "UPDATE_LOCK_DISABLE",
    "UPDATE_LOCK_ALLOW_OVERRIDE",
    "UPDATE_LOCK_APPLY_ON_RELEASE",
]
OPTIONAL_DURATIONS = ["UPDATE_LOCK_BOOT_WINDOW", "UPDATE_LOCK_HOLDER_TTL", "UPDATE_LOCK_MAX_DEFER"]
FIELD = {
    "UPDATE_LOCK_ALWAYS": "always",
    "UPDATE_LOCK_WINDOWS": "windows",
    "UPDATE_LOCK_TIMEZONE": "timezone",
    "UPDATE_LOCK_BOOT_WINDOW": "boot_window",
    "UPDATE_LOCK_PATH": "lock_path",
    "UPDATE_LOCK_HOST_OS": "host_os",
    "UPDATE_LOCK_LEGACY": "legacy",
    "UPDATE_LOCK_DIR": "trigger_dir",
    "UPDATE_LOCK_HOLDER_TTL": "holder_ttl",
    "UPDATE_LOCK_OVERRIDE_GRACE": "override_grace",
    "UPDATE_LOCK_DISABLE": "disable",
    "UPDATE_LOCK_LOG_LEVEL": "log_level",
    "UPDATE_LOCK_ALLOW_OVERRIDE": "allow_override",
    "UPDATE_LOCK_MAX_DEFER": "max_defer",
    "UPDATE_LOCK_APPLY_ON_RELEASE": "apply_on_release",
    "UPDATE_LOCK_POLL_INTERVAL": "poll_interval",
}


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


# ---------------------------------------------------------------------------------------------
# Defaults


def test_defaults_are_an_empty_environment() -> None:
    assert load({}) == Config()
    assert load({}).tz == ZoneInfo("UTC")


DEFAULTS = [
    ("always", False),
    ("windows", ()),
    ("timezone", "UTC"),
    ("boot_window", None),
    ("lock_path", "/tmp/balena/updates.lock"),
    ("host_os", True),
    ("legacy", False),
    ("trigger_dir", "/update-lock"),
    ("holder_ttl", None),
    ("override_grace", timedelta(minutes=30)),
    ("disable", False),
    ("log_level", "info"),
    ("allow_override", True),
    ("max_defer", None),
    ("apply_on_release", True),
    ("poll_interval", timedelta(seconds=60)),
]


@pytest.mark.parametrize(("field", "value"), DEFAULTS)
def test_default_of_each_field(field: str, value: object) -> None:
    assert getattr(load({}), field) == value


def test_every_known_variable_has_a_field_and_a_default_test() -> None:
    assert set(KNOWN) == set(FIELD)
    assert {field for field, _ in DEFAULTS} == set(FIELD.values())
    assert (DEFAULT_LOCK_PATH, DEFAULT_TRIGGER_DIR) == ("/tmp/balena/updates.lock", "/update-lock")


@pytest.mark.parametrize(
    "name", [n for n in KNOWN if n not in ("UPDATE_LOCK_TIMEZONE", "UPDATE_LOCK_PATH")]
)
def test_documented_default_loads_as_the_default(name: str) -> None:
    # KNOWN is what check-config and the README show; it must say what load() does.
    assert load({name: KNOWN[name]}) == Config()


def test_documented_defaults_of_the_derived_variables() -> None:
    assert KNOWN["UPDATE_LOCK_TIMEZONE"] == "TZ, else UTC"
    assert KNOWN["UPDATE_LOCK_PATH"] == "BALENA_APP_LOCK_PATH, else /tmp/balena/updates.lock"


# ---------------------------------------------------------------------------------------------
# Valid forms, variable by variable

TRUE_FORMS = [
    "1", "true", "TRUE", "True", "yes", "YES", "Yes", "on", "ON", "On", " true ", "\ttrue\n"
]
FALSE_FORMS = ["0", "false", "FALSE", "False", "no", "NO", "No", "off", "OFF", "Off", " off "]


@pytest.mark.parametrize("name", BOOLEANS)
@pytest.mark.parametrize(
    ("text", "value"), [(t, True) for t in TRUE_FORMS] + [(t, False) for t in FALSE_FORMS]
)
def test_boolean_forms(name: str, text: str, value: bool) -> None:
    assert getattr(load({name: text}), FIELD[name]) is value
    assert parse_bool(text) is value


DURATIONS = [
    ("90s", s(90)),
    ("15m", s(15 * 60)),
    ("2h", s(2 * 3600)),
    ("1d", s(86400)),
    ("1h30m", s(5400)),
    ("1d2h3m4s", s(86400 + 2 * 3600 + 3 * 60 + 4)),
    ("1d30m", s(86400 + 1800)),
    ("2H", s(7200)),
    ("1H30M", s(5400)),
    ("90S", s(90)),
    (" 15m ", s(900)),
    ("90", s(90)),
    ("0", s(0)),
    ("0s", s(0)),
    ("0d0h0m0s", s(0)),
    ("0.5", s(0.5)),
    ("1.25", s(1.25)),
    ("007m", s(420)),
    ("3650d", timedelta(days=3650)),  # the bound itself is allowed
    ("315360000", timedelta(days=3650)),
]


@pytest.mark.parametrize(("text", "value"), DURATIONS)
def test_parse_duration(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize(("text", "value"), DURATIONS)
def test_override_grace_takes_every_duration_form(text: str, value: timedelta) -> None:
    assert load({"UPDATE_LOCK_OVERRIDE_GRACE": text}).override_grace == value


@pytest.mark.parametrize(("text", "value"), [d for d in DURATIONS if d[1] > timedelta(0)])
@pytest.mark.parametrize("name", [*OPTIONAL_DURATIONS, "UPDATE_LOCK_POLL_INTERVAL"])
def test_other_durations_take_every_positive_form(name: str, text: str, value: timedelta) -> None:
    assert getattr(load({name: text}), FIELD[name]) == value


OFF_FORMS = ["off", "OFF", "Off", "0", "0s", "0m", "0d0h0m0s", "false", "no", "none", "None", "",
             "  "]


@pytest.mark.parametrize("name", OPTIONAL_DURATIONS)
@pytest.mark.parametrize("text", OFF_FORMS)
def test_optional_durations_turn_off(name: str, text: str) -> None:
    assert getattr(load({name: text}), FIELD[name]) is None


def test_override_grace_may_be_zero() -> None:
    assert load({"UPDATE_LOCK_OVERRIDE_GRACE": "0"}).override_grace == timedelta(0)


def test_windows() -> None:
    config = load({"UPDATE_LOCK_WINDOWS": "Mon-Fri 02:00-04:00; Sat,Sun 00:00-06:00"})
    assert config.windows == (
        Window(frozenset(range(5)), 120, 240),
        Window(frozenset({5, 6}), 0, 360),
    )


@pytest.mark.parametrize("text", ["", "   ", "\t"])
def test_blank_windows_are_no_windows(text: str) -> None:
    assert load({"UPDATE_LOCK_WINDOWS": text}).windows == ()


@pytest.mark.parametrize(
    ("text", "value"),
    [("debug", "debug"), ("info", "info"), ("WARNING", "warning"), (" Error ", "error")],
)
def test_log_level(text: str, value: str) -> None:
    assert load({"UPDATE_LOCK_LOG_LEVEL": text}).log_level == value


# ---------------------------------------------------------------------------------------------
# Time zone: UPDATE_LOCK_TIMEZONE, else TZ, else UTC

ZONES = [
    ({}, "UTC"),
    ({"TZ": "Europe/Berlin"}, "Europe/Berlin"),
    ({"TZ": ":Europe/Berlin"}, "Europe/Berlin"),  # POSIX: a leading ':' names a zone file
    ({"TZ": " America/New_York "}, "America/New_York"),
    ({"TZ": ""}, "UTC"),
    ({"TZ": "   "}, "UTC"),
    ({"UPDATE_LOCK_TIMEZONE": "Asia/Tokyo"}, "Asia/Tokyo"),
    ({"UPDATE_LOCK_TIMEZONE": "Asia/Tokyo", "TZ": "Europe/Berlin"}, "Asia/Tokyo"),
    # The block's own variable wins: a TZ it does not need is not even looked at.
    ({"UPDATE_LOCK_TIMEZONE": "Asia/Tokyo", "TZ": "Not/AZone"}, "Asia/Tokyo"),
    ({"UPDATE_LOCK_TIMEZONE": "UTC", "TZ": "Europe/Berlin"}, "UTC"),
    ({"UPDATE_LOCK_TIMEZONE": "Etc/GMT+5"}, "Etc/GMT+5"),
    ({"UPDATE_LOCK_TIMEZONE": "Australia/Lord_Howe"}, "Australia/Lord_Howe"),
]


@pytest.mark.parametrize(("env", "zone"), ZONES)
def test_timezone(env: dict[str, str], zone: str) -> None:
    config = load(env)
    assert config.timezone == zone
    assert config.tz == ZoneInfo(zone)


# ---------------------------------------------------------------------------------------------
# Lock path: UPDATE_LOCK_PATH, else BALENA_APP_LOCK_PATH (RESIN_APP_LOCK_PATH), else default

LOCK_PATHS = [
    ({}, "/tmp/balena/updates.lock"),
    ({"BALENA_APP_LOCK_PATH": "/run/locks/updates.lock"}, "/run/locks/updates.lock"),
    ({"BALENA_APP_LOCK_PATH": ""}, "/tmp/balena/updates.lock"),
    ({"RESIN_APP_LOCK_PATH": "/old/updates.lock"}, "/old/updates.lock"),
    ({"BALENA_APP_LOCK_PATH": "/new/updates.lock", "RESIN_APP_LOCK_PATH": "/old/updates.lock"},
     "/new/updates.lock"),
    ({"BALENA_APP_LOCK_PATH": "", "RESIN_APP_LOCK_PATH": "/old/updates.lock"},
     "/old/updates.lock"),
    ({"UPDATE_LOCK_PATH": "/data/u.lock"}, "/data/u.lock"),
    ({"UPDATE_LOCK_PATH": "/data/u.lock", "BALENA_APP_LOCK_PATH": "/run/locks/updates.lock"},
     "/data/u.lock"),
    ({"UPDATE_LOCK_PATH": " /data//x/./u.lock "}, "/data/x/u.lock"),
]


@pytest.mark.parametrize(("env", "path"), LOCK_PATHS)
def test_lock_path(env: dict[str, str], path: str) -> None:
    assert load(env).lock_path == path


@pytest.mark.parametrize(
    ("env", "paths"),
    [
        ({}, ("/tmp/balena/updates.lock",)),
        ({"UPDATE_LOCK_LEGACY": "yes"},
         ("/tmp/balena/updates.lock", "/tmp/balena/resin-updates.lock")),
        ({"UPDATE_LOCK_LEGACY": "on", "BALENA_APP_LOCK_PATH": "/run/x/updates.lock"},
         ("/run/x/updates.lock", "/run/x/resin-updates.lock")),
    ],
)
def test_lock_paths_with_legacy(env: dict[str, str], paths: tuple[str, ...]) -> None:
    assert load(env).lock_paths == paths


def test_trigger_dir() -> None:
    assert load({"UPDATE_LOCK_DIR": "/data/triggers"}).trigger_dir == "/data/triggers"
    assert load({"UPDATE_LOCK_DIR": "/data//triggers"}).trigger_dir == "/data/triggers"


# ---------------------------------------------------------------------------------------------
# Invalid input: the problem (name, value, expected) and its message, word for word

INVALID = [
    # name, value, expected, str(problem)
    ("UPDATE_LOCK_ALWAYS", "maybe", BOOL,
     "UPDATE_LOCK_ALWAYS='maybe': expected a boolean: 1/true/yes/on or 0/false/no/off"),
    ("UPDATE_LOCK_ALWAYS", "", BOOL,
     "UPDATE_LOCK_ALWAYS='': expected a boolean: 1/true/yes/on or 0/false/no/off"),
    ("UPDATE_LOCK_ALWAYS", "2", BOOL,
     "UPDATE_LOCK_ALWAYS='2': expected a boolean: 1/true/yes/on or 0/false/no/off"),
    ("UPDATE_LOCK_ALWAYS", "y", BOOL,
     "UPDATE_LOCK_ALWAYS='y': expected a boolean: 1/true/yes/on or 0/false/no/off"),
    ("UPDATE_LOCK_ALWAYS", "t\x00", BOOL,
     "UPDATE_LOCK_ALWAYS='t\\x00': expected a boolean: 1/true/yes/on or 0/false/no/off"),
    ("UPDATE_LOCK_HOST_OS", "enabled", BOOL,
     "UPDATE_LOCK_HOST_OS='enabled': expected a boolean: 1/true/yes/on or 0/false/no/off"),
    ("UPDATE_LOCK_LEGACY", "tru", BOOL,
     "UPDATE_LOCK_LEGACY='tru': expected a boolean: 1/true/yes/on or 0/false/no/off"),
    ("UPDATE_LOCK_DISABLE", "disable", BOOL,
     "UPDATE_LOCK_DISABLE='disable': expected a boolean: 1/true/yes/on or 0/false/no/off"),
    ("UPDATE_LOCK_ALLOW_OVERRIDE", "none", BOOL,
     "UPDATE_LOCK_ALLOW_OVERRIDE='none': expected a boolean: 1/true/yes/on or 0/false/no/off"),
    ("UPDATE_LOCK_APPLY_ON_RELEASE", "-1", BOOL,
     "UPDATE_LOCK_APPLY_ON_RELEASE='-1': expected a boolean: 1/true/yes/on or 0/false/no/off"),
    ("UPDATE_LOCK_WINDOWS", "25:00-26:00",
     WINDOWS + " (entry 1 '25:00-26:00': '25:00' is not a time HH:MM"
     " (00:00-23:59, or 24:00 as an end))",
     "UPDATE_LOCK_WINDOWS='25:00-26:00': expected [DAYS ]HH:MM-HH:MM entries separated by ';',"
     " e.g. Mon-Fri 02:00-04:00; Sat,Sun 00:00-06:00 (entry 1 '25:00-26:00': '25:00' is not a"
     " time HH:MM (00:00-23:59, or 24:00 as an end))"),
    ("UPDATE_LOCK_WINDOWS", "Mon-Fri 02:00-04:00;;",
     WINDOWS + " (entry 2 '': empty entry (entries are separated by ';'))",
     "UPDATE_LOCK_WINDOWS='Mon-Fri 02:00-04:00;;': expected [DAYS ]HH:MM-HH:MM entries separated"
     " by ';', e.g. Mon-Fri 02:00-04:00; Sat,Sun 00:00-06:00 (entry 2 '': empty entry (entries"
     " are separated by ';'))"),
    ("UPDATE_LOCK_WINDOWS", "Funday 02:00-03:00",
     WINDOWS + " (entry 1 'Funday 02:00-03:00': 'Funday' is not a day name"
     " (Mon..Sun or Monday..Sunday))",
     "UPDATE_LOCK_WINDOWS='Funday 02:00-03:00': expected [DAYS ]HH:MM-HH:MM entries separated by"
     " ';', e.g. Mon-Fri 02:00-04:00; Sat,Sun 00:00-06:00 (entry 1 'Funday 02:00-03:00':"
     " 'Funday' is not a day name (Mon..Sun or Monday..Sunday))"),
    ("UPDATE_LOCK_WINDOWS", "02:00-02:00",
     WINDOWS + " (entry 1 '02:00-02:00': empty window: start and end are both '02:00')",
     "UPDATE_LOCK_WINDOWS='02:00-02:00': expected [DAYS ]HH:MM-HH:MM entries separated by ';',"
     " e.g. Mon-Fri 02:00-04:00; Sat,Sun 00:00-06:00 (entry 1 '02:00-02:00': empty window:"
     " start and end are both '02:00')"),
    ("UPDATE_LOCK_TIMEZONE", "Mars/Olympus", ZONE,
     "UPDATE_LOCK_TIMEZONE='Mars/Olympus': expected an IANA time zone such as Europe/Berlin or"
     " UTC"),
    ("UPDATE_LOCK_TIMEZONE", "", ZONE,
     "UPDATE_LOCK_TIMEZONE='': expected an IANA time zone such as Europe/Berlin or UTC"),
    ("UPDATE_LOCK_TIMEZONE", "/etc/localtime", ZONE,
     "UPDATE_LOCK_TIMEZONE='/etc/localtime': expected an IANA time zone such as Europe/Berlin"
     " or UTC"),
    ("UPDATE_LOCK_TIMEZONE", "../../etc/passwd", ZONE,
     "UPDATE_LOCK_TIMEZONE='../../etc/passwd': expected an IANA time zone such as"
     " Europe/Berlin or UTC"),
    ("UPDATE_LOCK_TIMEZONE", "Europe", ZONE,  # a directory of the tz database
     "UPDATE_LOCK_TIMEZONE='Europe': expected an IANA time zone such as Europe/Berlin or UTC"),
    ("UPDATE_LOCK_TIMEZONE", "zone.tab", ZONE,  # a file of the tz database, not a zone
     "UPDATE_LOCK_TIMEZONE='zone.tab': expected an IANA time zone such as Europe/Berlin or"
     " UTC"),
    ("UPDATE_LOCK_TIMEZONE", "Europe/Berlin\x00", ZONE,
     "UPDATE_LOCK_TIMEZONE='Europe/Berlin\\x00': expected an IANA time zone such as"
     " Europe/Berlin or UTC"),
    ("UPDATE_LOCK_TIMEZONE", "CET-1CEST,M3.5.0,M10.5.0/3", ZONE,  # POSIX TZ rules: not a name
     "UPDATE_LOCK_TIMEZONE='CET-1CEST,M3.5.0,M10.5.0/3': expected an IANA time zone such as"
     " Europe/Berlin or UTC"),
    ("TZ", "Mars/Olympus", TZ_ZONE,
     "TZ='Mars/Olympus': expected an IANA time zone such as Europe/Berlin or UTC (or set"
     " UPDATE_LOCK_TIMEZONE)"),
    ("TZ", ":", TZ_ZONE,
     "TZ=':': expected an IANA time zone such as Europe/Berlin or UTC (or set"
     " UPDATE_LOCK_TIMEZONE)"),
    ("UPDATE_LOCK_BOOT_WINDOW", "soon", OPTIONAL_DURATION,
     "UPDATE_LOCK_BOOT_WINDOW='soon': expected a duration like 90s, 15m, 2h, 1d, 1h30m or plain"
     " seconds, or off/0"),
    ("UPDATE_LOCK_BOOT_WINDOW", "1.5h", OPTIONAL_DURATION,
     "UPDATE_LOCK_BOOT_WINDOW='1.5h': expected a duration like 90s, 15m, 2h, 1d, 1h30m or plain"
     " seconds, or off/0"),
    ("UPDATE_LOCK_HOLDER_TTL", "-5m", OPTIONAL_DURATION,
     "UPDATE_LOCK_HOLDER_TTL='-5m': expected a duration like 90s, 15m, 2h, 1d, 1h30m or plain"
     " seconds, or off/0"),
    ("UPDATE_LOCK_HOLDER_TTL", "3651d", OPTIONAL_DURATION,
     "UPDATE_LOCK_HOLDER_TTL='3651d': expected a duration like 90s, 15m, 2h, 1d, 1h30m or plain"
     " seconds, or off/0"),
    ("UPDATE_LOCK_MAX_DEFER", "never", OPTIONAL_DURATION,
     "UPDATE_LOCK_MAX_DEFER='never': expected a duration like 90s, 15m, 2h, 1d, 1h30m or plain"
     " seconds, or off/0"),
    ("UPDATE_LOCK_OVERRIDE_GRACE", "off", DURATION,
     "UPDATE_LOCK_OVERRIDE_GRACE='off': expected a duration like 90s, 15m, 2h, 1d, 1h30m or"
     " plain seconds"),
    ("UPDATE_LOCK_OVERRIDE_GRACE", "", DURATION,
     "UPDATE_LOCK_OVERRIDE_GRACE='': expected a duration like 90s, 15m, 2h, 1d, 1h30m or plain"
     " seconds"),
    ("UPDATE_LOCK_OVERRIDE_GRACE", "30 m", DURATION,
     "UPDATE_LOCK_OVERRIDE_GRACE='30 m': expected a duration like 90s, 15m, 2h, 1d, 1h30m or"
     " plain seconds"),
    ("UPDATE_LOCK_OVERRIDE_GRACE", "30m1h", DURATION,  # units largest first
     "UPDATE_LOCK_OVERRIDE_GRACE='30m1h': expected a duration like 90s, 15m, 2h, 1d, 1h30m or"
     " plain seconds"),
    ("UPDATE_LOCK_OVERRIDE_GRACE", "1e3", DURATION,
     "UPDATE_LOCK_OVERRIDE_GRACE='1e3': expected a duration like 90s, 15m, 2h, 1d, 1h30m or"
     " plain seconds"),
    ("UPDATE_LOCK_OVERRIDE_GRACE", "315360001", DURATION,
     "UPDATE_LOCK_OVERRIDE_GRACE='315360001': expected a duration like 90s, 15m, 2h, 1d, 1h30m"
     " or plain seconds"),
    ("UPDATE_LOCK_OVERRIDE_GRACE", "inf", DURATION,
     "UPDATE_LOCK_OVERRIDE_GRACE='inf': expected a duration like 90s, 15m, 2h, 1d, 1h30m or"
     " plain seconds"),
    ("UPDATE_LOCK_POLL_INTERVAL", "0", POSITIVE_DURATION,
     "UPDATE_LOCK_POLL_INTERVAL='0': expected a duration like 90s, 15m, 2h, 1d, 1h30m or plain"
     " seconds, above 0"),
    ("UPDATE_LOCK_POLL_INTERVAL", "0.0000001", POSITIVE_DURATION,  # rounds to 0 microseconds
     "UPDATE_LOCK_POLL_INTERVAL='0.0000001': expected a duration like 90s, 15m, 2h, 1d, 1h30m"
     " or plain seconds, above 0"),
    ("UPDATE_LOCK_POLL_INTERVAL", "off", POSITIVE_DURATION,
     "UPDATE_LOCK_POLL_INTERVAL='off': expected a duration like 90s, 15m, 2h, 1d, 1h30m or"
     " plain seconds, above 0"),
    ("UPDATE_LOCK_LOG_LEVEL", "verbose", LEVEL,
     "UPDATE_LOCK_LOG_LEVEL='verbose': expected one of debug, info, warning, error"),
    ("UPDATE_LOCK_LOG_LEVEL", "warn", LEVEL,
     "UPDATE_LOCK_LOG_LEVEL='warn': expected one of debug, info, warning, error"),
    ("UPDATE_LOCK_PATH", "tmp/balena/updates.lock", PATH,
     "UPDATE_LOCK_PATH='tmp/balena/updates.lock': expected an absolute path"),
    ("UPDATE_LOCK_PATH", "", PATH, "UPDATE_LOCK_PATH='': expected an absolute path"),
    ("UPDATE_LOCK_PATH", "/tmp/balena/", PATH,
     "UPDATE_LOCK_PATH='/tmp/balena/': expected an absolute path"),
    ("UPDATE_LOCK_PATH", "/tmp/bal\x00ena/updates.lock", PATH,
     "UPDATE_LOCK_PATH='/tmp/bal\\x00ena/updates.lock': expected an absolute path"),
    ("BALENA_APP_LOCK_PATH", "updates.lock", PATH,
     "BALENA_APP_LOCK_PATH='updates.lock': expected an absolute path"),
    ("RESIN_APP_LOCK_PATH", "updates.lock", PATH,
     "RESIN_APP_LOCK_PATH='updates.lock': expected an absolute path"),
    ("UPDATE_LOCK_DIR", "update-lock", PATH,
     "UPDATE_LOCK_DIR='update-lock': expected an absolute path"),
    ("UPDATE_LOCK_DIR", "/", PATH, "UPDATE_LOCK_DIR='/': expected an absolute path"),
    ("UPDATE_LOCK_DIR", "/tmp/balena", "a directory apart from the lock file's directory "
     "(/tmp/balena)", "UPDATE_LOCK_DIR='/tmp/balena': expected a directory apart from the lock"
     " file's directory (/tmp/balena)"),
]


@pytest.mark.parametrize(("name", "value", "expected", "message"), INVALID)
def test_invalid_variable(name: str, value: str, expected: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load({name: value})
    assert caught.value.problems == [ConfigProblem(name, value, expected)]
    assert str(caught.value.problems[0]) == message
    assert str(caught.value) == message
    assert exit_code_for(caught.value) == EX_CONFIG == 78


def test_house_style_example_message() -> None:
    problem = ConfigProblem("UPDATE_LOCK_ALWAYS", "maybe", BOOL)
    assert str(problem) == (
        "UPDATE_LOCK_ALWAYS='maybe': expected a boolean: 1/true/yes/on or 0/false/no/off"
    )


@pytest.mark.parametrize("text", ["maybe", "", "2", "truee", "o n", "\x00"])
def test_parse_bool_rejects(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_bool(text)
    assert caught.value.args == (text,)


@pytest.mark.parametrize(
    "text",
    ["", " ", "h", "1.5h", "-5", "-5m", "+5", "5 m", "1h 30m", "30m1h", "1h1h", "1.", ".5", "1,5",
     "0x10", "1_000", "1e3", "1e999", "inf", "nan", "9" * 400, "9" * 400 + "d", "9" * 5000 + "s",
     "3651d", "315360001", "87601h"],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
    with pytest.raises(ConfigError) as caught:
        load({"UPDATE_LOCK_OVERRIDE_GRACE": text})
    assert caught.value.problems == [ConfigProblem("UPDATE_LOCK_OVERRIDE_GRACE", text, DURATION)]


def test_every_invalid_variable_is_reported_at_once() -> None:
    env = {
        "UPDATE_LOCK_POLL_INTERVAL": "0",
        "UPDATE_LOCK_ALWAYS": "maybe",
        "UPDATE_LOCK_WINDOWS": "25:00-26:00",
        "UPDATE_LOCK_TIMEZONE": "Mars/Olympus",
        "UPDATE_LOCK_PATH": "relative.lock",
        "UPDATE_LOCK_HOLDER_TTL": "soon",
        "UPDATE_LOCK_LOG_LEVEL": "loud",
        "UPDATE_LOCK_HOST_OS": "",
        "UPDATE_LOCK_LEGACY": "true",  # valid ones are not reported
        "UPDATE_LOCK_ALLWAYS": "1",  # a typo is a warning (unknown_variables), not a problem
    }
    with pytest.raises(ConfigError) as caught:
        load(env)
    wind = (" (entry 1 '25:00-26:00': '25:00' is not a time HH:MM (00:00-23:59, or 24:00 as an"
            " end))")
    # In the order the variables are documented, whatever the order of the environment.
    assert caught.value.problems == [
        ConfigProblem("UPDATE_LOCK_ALWAYS", "maybe", BOOL),
        ConfigProblem("UPDATE_LOCK_WINDOWS", "25:00-26:00", WINDOWS + wind),
        ConfigProblem("UPDATE_LOCK_TIMEZONE", "Mars/Olympus", ZONE),
        ConfigProblem("UPDATE_LOCK_PATH", "relative.lock", PATH),
        ConfigProblem("UPDATE_LOCK_HOST_OS", "", BOOL),
        ConfigProblem("UPDATE_LOCK_HOLDER_TTL", "soon", OPTIONAL_DURATION),
        ConfigProblem("UPDATE_LOCK_LOG_LEVEL", "loud", LEVEL),
        ConfigProblem("UPDATE_LOCK_POLL_INTERVAL", "0", POSITIVE_DURATION),
    ]
    assert str(caught.value) == (
        "UPDATE_LOCK_ALWAYS='maybe': expected a boolean: 1/true/yes/on or 0/false/no/off; "
        "UPDATE_LOCK_WINDOWS='25:00-26:00': expected [DAYS ]HH:MM-HH:MM entries separated by"
        " ';', e.g. Mon-Fri 02:00-04:00; Sat,Sun 00:00-06:00 (entry 1 '25:00-26:00': '25:00' is"
        " not a time HH:MM (00:00-23:59, or 24:00 as an end)); "
        "UPDATE_LOCK_TIMEZONE='Mars/Olympus': expected an IANA time zone such as Europe/Berlin"
        " or UTC; "
        "UPDATE_LOCK_PATH='relative.lock': expected an absolute path; "
        "UPDATE_LOCK_HOST_OS='': expected a boolean: 1/true/yes/on or 0/false/no/off; "
        "UPDATE_LOCK_HOLDER_TTL='soon': expected a duration like 90s, 15m, 2h, 1d, 1h30m or"
        " plain seconds, or off/0; "
        "UPDATE_LOCK_LOG_LEVEL='loud': expected one of debug, info, warning, error; "
        "UPDATE_LOCK_POLL_INTERVAL='0': expected a duration like 90s, 15m, 2h, 1d, 1h30m or"
        " plain seconds, above 0"
    )


def test_lock_directory_and_trigger_directory_must_differ() -> None:
    env = {"UPDATE_LOCK_PATH": "/shared/updates.lock", "UPDATE_LOCK_DIR": "/shared"}
    with pytest.raises(ConfigError) as caught:
        load(env)
    assert caught.value.problems == [
        ConfigProblem("UPDATE_LOCK_DIR", "/shared",
                      "a directory apart from the lock file's directory (/shared)"),
    ]


def test_lock_path_inside_the_default_trigger_directory_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load({"UPDATE_LOCK_PATH": "/update-lock/updates.lock"})
    assert {p.name for p in caught.value.problems} <= {"UPDATE_LOCK_PATH", "UPDATE_LOCK_DIR"}


@pytest.mark.parametrize("text", ["/.", "/tmp/..", "/tmp/balena/../.."])
def test_lock_path_that_normalises_to_the_root_is_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        load({"UPDATE_LOCK_PATH": text})


def test_invalid_dir_is_reported_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load({"UPDATE_LOCK_DIR": "relative", "UPDATE_LOCK_PATH": "/update-lock/u.lock"})
    assert caught.value.problems == [ConfigProblem("UPDATE_LOCK_DIR", "relative", PATH)]


# ---------------------------------------------------------------------------------------------
# Unknown variables: likely typos, warned about, never an error


def test_unknown_variables_are_listed_sorted() -> None:
    env = {
        "UPDATE_LOCK_WINDOW": "02:00-04:00",
        "UPDATE_LOCK_ALLWAYS": "1",
        "UPDATE_LOCK_ALWAYS": "1",
        "UPDATE_LOCK_always": "1",
        "UPDATE_LOCK_": "x",
        "update_lock_always": "1",  # not our prefix: someone else's business
        "TZ": "UTC",
        "BALENA_APP_LOCK_PATH": "/tmp/balena/updates.lock",
        "PATH": "/usr/bin",
    }
    assert unknown_variables(env) == [
        "UPDATE_LOCK_",
        "UPDATE_LOCK_ALLWAYS",
        "UPDATE_LOCK_WINDOW",
        "UPDATE_LOCK_always",
    ]
    assert load(env).always is True  # typos do not stop the block


def test_no_unknown_variables() -> None:
    assert unknown_variables({}) == []
    assert unknown_variables(dict.fromkeys(KNOWN, "")) == []


# ---------------------------------------------------------------------------------------------
# format_duration


FORMATS = [
    (s(0), "0s"),
    (s(1), "1s"),
    (s(59), "59s"),
    (s(60), "1m"),
    (s(90), "1m30s"),
    (s(900), "15m"),
    (s(3600), "1h"),
    (s(5400), "1h30m"),
    (s(86400), "1d"),
    (s(86401), "1d1s"),
    (s(86400 + 2 * 3600 + 3 * 60 + 4), "1d2h3m4s"),
    (timedelta(days=3650), "3650d"),
]


@pytest.mark.parametrize(("value", "text"), FORMATS)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


# Fractional seconds are left out here: see test_fractional_durations_round_trip.
@pytest.mark.parametrize("value", [v for _, v in DURATIONS if v.microseconds == 0])
def test_format_of_a_parsed_duration_parses_back(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=int(config_module.MAX_DURATION.total_seconds())))
def test_whole_seconds_round_trip(seconds: int) -> None:
    value = s(seconds)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize(
    "value", [s(0.5), s(90.5), timedelta(microseconds=1), s(1234567.5), s(125.345678)]
)
def test_fractional_durations_round_trip(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value
