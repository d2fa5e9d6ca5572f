"""``python -m bench [--quick] [--only NAME[,NAME]]``: run the figures, print one table."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from bench import procs
from bench.figures import FIGURES
from bench.report import Row, busy_line, cpu_ticks, load_line, machine_line, table

__all__ = ["main"]

ALIASES = {"hold": "latency", "release": "latency", "start-up": "startup", "mem": "memory"}


def _names(text: str) -> list[str]:
    names = []
    for word in text.split(","):
        name = ALIASES.get(word.strip(), word.strip())
        if name not in FIGURES:
            raise argparse.ArgumentTypeError(
                f"{word!r}: expected one of {', '.join(FIGURES)} (or {', '.join(ALIASES)})")
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds and a 10 s idle window: a smoke run")
    parser.add_argument("--only", type=_names, action="extend", default=[],
                        metavar="NAME[,NAME]",
                        help=f"run only these figures: {', '.join(FIGURES)}")
    parser.add_argument("--spin", action="store_true",
                        help="poll in a tight loop instead of sleeping 50 us between looks")
    args = parser.parse_args(argv)
    selected = [n for n in FIGURES if not args.only or n in args.only]
    procs.POLL.spin = args.spin

    lock_fs = procs.tmpfs_dir()
    trigger_fs = tempfile.gettempdir()
    print(machine_line())
    print(f"files: lock dir on {procs.fs_type(lock_fs or trigger_fs)} ({lock_fs or trigger_fs}), "
          f"trigger dir on {procs.fs_type(trigger_fs)} ({trigger_fs}); "
          f"polling: {'tight spin' if args.spin else 'sleep 50 us between looks'}")
    print(f"run: python -m bench{' --quick' if args.quick else ''}"
          f"{' --spin' if args.spin else ''}"
          f"{' --only ' + ','.join(selected) if args.only else ''}; {load_line()} at start",
          flush=True)
    rows: list[Row] = []
    failed: list[tuple[str, str]] = []
    begin = time.monotonic()
    ticks = cpu_ticks()
    for name in selected:
        print(f"  {name} ...", end="", flush=True, file=sys.stderr)
        started = time.monotonic()
        try:
            rows += FIGURES[name](args.quick)
        except Exception as error:  # any failure: report it, go on to the next
            failed.append((name, f"{type(error).__name__}: {error}"))
            print(" FAILED", file=sys.stderr)
            continue
        print(f" {time.monotonic() - started:.1f} s", file=sys.stderr)
    print(f"  total {time.monotonic() - begin:.0f} s", file=sys.stderr)
    print(f"{load_line()} at the end; {busy_line(ticks, cpu_ticks())}")
    print()
    print(table(rows))
    for name, message in failed:
        print(f"\nFAILED to measure {name}: {message}")
    if failed:
        return 1
    return 0
