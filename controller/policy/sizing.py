"""Postgres settings for a capacity: pure arithmetic shared by every runtime.

Settings that need a restart are fixed from the spec at start: `shared_buffers` from the floor (a
scale-down to the floor can never run out of memory), `max_connections` from the ceiling (as Aurora
derives it from max ACU). Reloadable ones follow every resize; the page cache does the rest.
"""

from __future__ import annotations

import math

from controller.api import types, units

CONNECTIONS_PER_GIB = 1024**3 / 9_531_392
"""Aurora's max_connections rule (memory / 9531392 bytes): 450 per compute unit, as Neon's."""
MAX_CONNECTIONS_LIMIT = 5000
RESERVED_CONNECTIONS = 3
"""Connection slots only a superuser may take: the operator's monitor, its settings, a pause's recheck."""
KIB = 1024
MIB = 1024**2


def pg_memory(value_bytes: float) -> str:
    """A memory size as Postgres prints it: the largest unit that divides it exactly (kB, MB, GB, TB)."""
    kib = max(int(value_bytes // KIB), 64)
    for unit, factor in (("TB", 1024**3), ("GB", 1024**2), ("MB", 1024)):
        if kib % factor == 0:
            return f"{kib // factor}{unit}"
    return f"{kib}kB"


def _mib(value_bytes: float) -> int:
    return int(value_bytes // MIB) * MIB


def restart_settings(spec: types.DatabaseSpec) -> dict[str, str]:
    floor_memory = spec.capacity.min * units.MEMORY_PER_CU
    ceiling_memory = spec.capacity.max * units.MEMORY_PER_CU
    max_connections = min(int(ceiling_memory / 1024**3 * CONNECTIONS_PER_GIB), MAX_CONNECTIONS_LIMIT)
    return {
        "shared_buffers": pg_memory(_mib(floor_memory / 8)),
        "max_connections": str(max(max_connections, 25)),
        "max_worker_processes": str(max(8, math.ceil(spec.capacity.max * units.CPU_PER_CU) + 4)),
    }


def reloadable_settings(capacity: float) -> dict[str, str]:
    memory = capacity * units.MEMORY_PER_CU
    cores = capacity * units.CPU_PER_CU
    return {
        "work_mem": pg_memory(_mib(min(max(memory / 256, 4 * MIB), 256 * MIB))),
        "maintenance_work_mem": pg_memory(_mib(min(max(memory / 16, 64 * MIB), 2048 * MIB))),
        "effective_cache_size": pg_memory(_mib(memory * 3 / 4)),
        "max_parallel_workers": str(int(cores)),
        "max_parallel_workers_per_gather": str(min(int(cores // 2), 4)),
        "max_parallel_maintenance_workers": str(min(int(cores // 2), 4)),
    }


POOL_SHARE = 0.9
"""The share of a size's connections the pooler may hold (Neon's rule); the rest stay for direct clients."""


def connections_for(capacity: float) -> int:
    """The connections a size allows by the max_connections rule (the server's own is the ceiling's)."""
    return min(int(capacity * units.MEMORY_PER_CU / 1024**3 * CONNECTIONS_PER_GIB), MAX_CONNECTIONS_LIMIT)


def pool_size(spec: types.DatabaseSpec, capacity: float) -> int:
    """The pooler's server connections at `capacity`: 90% of what the current size allows, never more
    than the server accepts from clients (its max_connections less the operator's reserved slots)."""
    server_limit = int(restart_settings(spec)["max_connections"]) - RESERVED_CONNECTIONS
    return max(1, min(int(connections_for(capacity) * POOL_SHARE), server_limit))
