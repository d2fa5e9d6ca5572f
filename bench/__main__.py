"""``python -m bench``: run the benchmarks and print their table."""

from bench.cli import main

raise SystemExit(main())
