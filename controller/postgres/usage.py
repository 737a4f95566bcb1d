"""A server's CPU and memory as the runtime that runs it can read them (a cgroup, or its process tree),
for the metrics source to turn into rates."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float | None
    """CPU time used so far (a counter); the rate between readings is the CPU used."""
    working_set_bytes: int | None
    """Memory that cannot be reclaimed: in use minus inactive page cache (the kubelet's working set)."""
    cache_bytes: int | None = None
    cpu_periods: int | None = None
    """Scheduler periods so far, and of them those throttled at the limit (counters)."""
    cpu_throttled_periods: int | None = None
