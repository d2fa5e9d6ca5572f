"""Configuration fuzz (issue 5): any text in any variable loads, or raises the ConfigError
that names that variable; never another exception, and never a problem for another variable.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from update_lock.config import KNOWN, Config, load
from update_lock.errors import ConfigError

# Every variable load() reads: ours, and the platform's defaults for the zone and the path.
VARIABLES = [*sorted(KNOWN), "TZ", "BALENA_APP_LOCK_PATH", "RESIN_APP_LOCK_PATH"]

# Texts that random generation rarely reaches but that have broken parsers before.
NASTY = [
    "", " ", "\x00", "a\x00b", "\t\n\r\x0b\x0c", "\x1b[31m", "\u2028", "\ufeff", "\udc80",
    "\U0001f512", "٣", "²", "9" * 400, "9" * 400 + "d", "9" * 5000, "9" * 5000 + "s",
    "1e999", "-1e999", "1e-999", "inf", "-inf", "nan", "0x10", "-0", "+0", "1_0", "0.0000001",
    "3650d", "3651d", "315360000", "315360000.5", "1d" * 50, ":", "::", ":/", "/", "//", "/.",
    "/..", ".", "..", "../../etc/passwd", "/etc/localtime", "Europe", "Europe/", "Europe//Berlin",
    "Europe/./Berlin", "zone.tab", "tzdata.zi", "posixrules", "__init__.py", "__pycache__",
    "CET-1CEST,M3.5.0,M10.5.0/3", ":Europe/Berlin", "Etc/GMT+14", "Etc/GMT-15", "a" * 300,
    "a/" * 300, "%s%n%x", "{0}", "$(reboot)", "`id`", ";", ";;", "Mon-Fri", "24:00-24:00",
    "Mon-Fri 02:00-04:00;", "Mon 22:00-02:00; Sat,Sun 00:00-06:00", "00:00-24:00",
    "Mon--Fri 02:00-04:00", "99:99-99:99", "02:00-", "-02:00", "Mon,,Tue 02:00-03:00",
    "TRUE", "yes\x00", "on ", "1h30m", "1H30M", "90 s",
]

TEXT = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    st.text(alphabet="0123456789dhms.: -+e/", max_size=20),
    st.text(alphabet="MonTuesWdhurFiSatS ,-;0123456789:", max_size=40),
    st.sampled_from(NASTY),
    st.builds(lambda a, b: a + b, st.sampled_from(NASTY), st.text(max_size=5)),
)


def check(env: dict[str, str]) -> None:
    """load() either succeeds or reports only variables that are in ``env``."""
    try:
        config = load(env)
    except ConfigError as error:
        assert error.problems, "a ConfigError without problems"
        for problem in error.problems:
            assert problem.name in env, f"{problem.name} reported but not set"
            assert problem.value == env[problem.name]
            assert problem.expected
            assert str(problem).startswith(f"{problem.name}={env[problem.name]!r}: expected ")
        assert str(error) == "; ".join(str(p) for p in error.problems)
    else:
        assert isinstance(config, Config)
        assert config.lock_path.startswith("/")
        assert config.trigger_dir.startswith("/")
        assert config.tz.key == config.timezone


# 200 examples for each of 19 variables, 300 for the mixes: about 6 s on this 2-core machine.
@pytest.mark.parametrize("name", VARIABLES)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXT)
@example(text="9" * 400)
@example(text="1e999")
@example(text="\x00")
def test_any_text_in_one_variable(name: str, text: str) -> None:
    env = {name: text}
    try:
        load(env)
    except ConfigError as error:
        assert [p.name for p in error.problems] == [name]
    check(env)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(env=st.dictionaries(st.sampled_from(VARIABLES), TEXT, max_size=len(VARIABLES)))
def test_any_texts_in_many_variables(env: dict[str, str]) -> None:
    check(env)


@settings(max_examples=100, deadline=None)
@given(
    env=st.dictionaries(st.sampled_from(VARIABLES), TEXT, max_size=6),
    noise=st.dictionaries(st.text(max_size=30), st.text(max_size=30), max_size=6),
)
def test_other_variables_are_never_reported(env: dict[str, str], noise: dict[str, str]) -> None:
    # Names that are not ours (including UPDATE_LOCK_* typos) never make load() fail.
    noise = {k: v for k, v in noise.items() if k not in VARIABLES}
    check(noise | env)
    try:
        load(noise)
    except ConfigError as error:  # pragma: no cover - the failure message
        pytest.fail(f"unrelated variables reported: {error}")
