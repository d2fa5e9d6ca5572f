"""Shared fixtures: a temp world (lock dir + trigger dir) whose processes die with the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.cleanup()
