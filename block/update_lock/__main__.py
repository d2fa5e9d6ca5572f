"""``python -m update_lock``: the same as the ``update-lock`` console script."""

from update_lock.cli import main

raise SystemExit(main())
