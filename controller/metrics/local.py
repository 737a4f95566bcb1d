"""Observations on this host: Postgres statistics (`PostgresSource`) plus CPU and memory from the
database's cgroup, or from its process tree where it has no cgroup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
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
        return _process_usage(runtime.cluster(db).pid_file())

    return PostgresSource(address, usage=usage, own_sessions=runtime.own_sessions, clock=clock)


@dataclass(frozen=True)
class ProcessTree:
    cpu_seconds: float
    private_bytes: int
    shared_bytes: int
    """Shared memory counted once (shared_buffers, mostly), not once per process."""


def process_tree(pid: int) -> ProcessTree | None:
    """CPU seconds and memory of a process and all its descendants; None once it has exited.

    The postmaster reaps its backends, so their CPU time is in its children's counters.
    """
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        cpu = times.user + times.system + times.children_user + times.children_system
        memory = root.memory_info()
        private, shared = memory.rss - memory.shared, memory.shared
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                cpu += child_times.user + child_times.system
                child_memory = child.memory_info()
                private += child_memory.rss - child_memory.shared
                shared = max(shared, child_memory.shared)
    except psutil.Error:
        return None
    return ProcessTree(cpu, private, shared)


def _process_usage(pid_lines: list[str] | None) -> Usage:
    """A server's usage where it has no cgroup: its process tree."""
    tree = process_tree(int(pid_lines[0])) if pid_lines else None
    if tree is None:
        return Usage(None, None)
    return Usage(tree.cpu_seconds, tree.private_bytes + tree.shared_bytes)
