"""Rows of the table: statistics over samples, units, targets, and the plain-text table."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "Row",
    "busy_line",
    "cpu_ticks",
    "load_line",
    "machine_line",
    "sample_row",
    "table",
    "value_row",
]


@dataclass(frozen=True)
class Row:
    figure: str
    n: str
    min: str
    median: str
    p99: str
    max: str
    target: str = "-"
    # "yes" / "NO" / "-" (no target)
    met: str = "-"
    note: str = ""


def p99(sorted_values: Sequence[float]) -> float:
    """Nearest-rank 99th percentile (with 200 samples: the second largest)."""
    return sorted_values[max(0, math.ceil(0.99 * len(sorted_values)) - 1)]


def sample_row(
    figure: str,
    values: Sequence[float],
    fmt: Callable[[float], str],
    *,
    target: str = "-",
    passes: Callable[[float, float], bool] | None = None,
    note: str = "",
) -> Row:
    """A row over samples. ``passes(median, p99)`` judges the target."""
    ordered = sorted(values)
    med = statistics.median(ordered)
    high = p99(ordered)
    met = "-" if passes is None else ("yes" if passes(med, high) else "NO")
    return Row(figure, str(len(ordered)), fmt(ordered[0]), fmt(med), fmt(high), fmt(ordered[-1]),
               target, met, note)


def value_row(figure: str, value: str, *, target: str = "-", met: bool | None = None,
              note: str = "") -> Row:
    """A row with one measured value (shown in the median column)."""
    return Row(figure, "1", "-", value, "-", "-", target,
               "-" if met is None else ("yes" if met else "NO"), note)


def ms(value_ns: float) -> str:
    return f"{value_ns / 1e6:.2f} ms"


def table(rows: Sequence[Row]) -> str:
    header = Row("figure", "n", "min", "median", "p99", "max", "target", "met", "")
    cells = [[r.figure, r.n, r.min, r.median, r.p99, r.max, r.target, r.met] for r in
             [header, *rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = []
    for number, cell in enumerate(cells):
        lines.append("  ".join(
            c.ljust(w) if i in (0, 6, 7) else c.rjust(w) for i, (c, w) in
            enumerate(zip(cell, widths, strict=True))).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {r.figure}: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def machine_line() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0))
    return (f"machine: {os.cpu_count()} cores ({usable} usable){', ' + model if model else ''}; "
            f"Linux {platform.release()}; Python {platform.python_version()} "
            f"({sys.executable})")


def cpu_ticks() -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat: user nice system idle iowait irq softirq
    steal ..., in clock ticks."""
    with open("/proc/stat", encoding="utf-8") as handle:
        return [int(v) for v in handle.readline().split()[1:]]


def busy_line(before: Sequence[int], after: Sequence[int]) -> str:
    """How busy the machine was between two :func:`cpu_ticks`, and how much the hypervisor
    took (steal: time our vCPUs wanted to run and did not; the agent's schedstat cannot see
    it)."""
    delta = [b - a for a, b in zip(before, after, strict=False)]
    total = sum(delta[:8]) or 1
    idle = delta[3] + delta[4]
    steal = delta[7] if len(delta) > 7 else 0
    return (f"during the run: CPUs {100 * (total - idle - steal) / total:.0f} % busy, "
            f"{100 * steal / total:.1f} % stolen by the hypervisor")


def load_line() -> str:
    """The load average: this is a shared machine, and other work skews the tails."""
    with open("/proc/loadavg", encoding="utf-8") as handle:
        one, five, fifteen = handle.read().split()[:3]
    return f"load average {one} {five} {fifteen}"
