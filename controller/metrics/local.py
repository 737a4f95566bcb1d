"""Observations on this host: Postgres statistics (`PostgresSource`) plus CPU and memory from the
database's cgroup, or from its process tree where it has no cgroup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime

import psutil

from controller.api import types, units
from controller.metrics.postgres import Address, PostgresSource, Usage
from controller.runtime.local.runtime import HOST, LocalRuntime


def source(runtime: LocalRuntime, *, clock: Callable[[], datetime] = units.now_utc) -> PostgresSource:
    def address(db: types.ServerlessDatabase) -> Address | None:
        info = runtime.connection_info(db)
        return Address(HOST, info[0], info[1]) if info else None

    def usage(db: types.ServerlessDatabase) -> Usage:
        counted = runtime.cgroups.usage(runtime.cgroup_name(db))
        if counted is not None:
            return Usage(
                counted.cpu_seconds,
                counted.memory_working_set,
                counted.memory_cache,
                counted.cpu_periods,
                counted.cpu_throttled_periods,
            )
        return _process_tree(runtime.cluster(db).pid_file())

    return PostgresSource(address, usage=usage, own_sessions=runtime.own_sessions, clock=clock)


def _process_tree(pid_lines: list[str] | None) -> Usage:
    """CPU seconds and resident memory of a server's process tree, where it has no cgroup.

    The postmaster reaps its backends, so their CPU time is in its children's counters.
    Shared memory is counted once, not once per process.
    """
    if not pid_lines:
        return Usage(None, None)
    try:
        postmaster = psutil.Process(int(pid_lines[0]))
        times = postmaster.cpu_times()
        cpu = times.user + times.system + times.children_user + times.children_system
        memory = postmaster.memory_info()
        private = memory.rss - memory.shared
        shared = memory.shared
        for child in postmaster.children():
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                cpu += child_times.user + child_times.system
                child_memory = child.memory_info()
                private += child_memory.rss - child_memory.shared
                shared = max(shared, child_memory.shared)
    except psutil.Error:
        return Usage(None, None)
    return Usage(cpu, private + shared)
