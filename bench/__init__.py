"""Benchmarks of the update-lock agent (issue 5): ``python -m bench``, or ``./dev bench``.

Not part of the pass/fail suite: it measures and prints one table (latencies, start-up, idle
cost, memory, churn) beside the targets the issue sets. Every figure comes from real
processes on real files: the agent as ``python -m update_lock run`` (and under supervisord
with a config generated from ``block/supervisord.conf``), the host OS oracle as ``flock -n
-x`` on a read-only fd, CPU and memory from ``/proc``.

Timing is in-process with tight polling and ``time.perf_counter_ns`` (CLOCK_MONOTONIC, so
times taken in worker processes compare with ours). The agent's stdout goes to a file, not a
pipe: a reader thread in this process would compete with the polling loop for the GIL.
"""
