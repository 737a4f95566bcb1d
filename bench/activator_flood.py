"""Activator flood: idle connections and slow writers at a paused database, while a real client connects.

    .venv/bin/python bench/activator_flood.py [--idle 20000] [--slow 1000] [--seconds 30]

Against a real `sdb up` (run as root, as these machines are, so the nftables fast path is on), on
a paused database: `--idle` connections that never send a byte, and `--slow` writers, half sending
a startup one byte every 3 s, half announcing a 10,004-byte startup and streaming 1 MB of body;
each slow writer reconnects when the activator closes it. Meanwhile a database applied anew must
become Active, and a real `psql` must wake the flooded database and run `select 1`. The operator's
resident memory and descriptors are read from /proc/<pid> throughout.
Last line: held_idle slow psql_ok psql_connect_s new_db_active_s peak_rss_mib peak_fds
(goal: psql_ok=1, new_db_active_s < 10, peak_rss_mib < 300).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from common import Operator, database, report, scratch_operator

from controller.activator import protocol
from controller.api import types
from controller.runtime.local.runtime import free_port, read_endpoint

TRICKLE_EVERY = 3.0
BODY = memoryview(b"x" * (1 << 20))
LONG_STARTUP = struct.pack("!ii", protocol.MAX_PACKET_SIZE, protocol.PROTOCOL_3_0)
"""The header of the largest startup Postgres reads; the 1 MB that follows is no parameter list."""


@dataclass
class Peaks:
    """The operator's resident memory and open descriptors, sampled until stopped."""

    pid: int
    rss_kib: int = 0
    fds: int = 0
    samples: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.sample()

    def sample(self) -> None:
        with contextlib.suppress(OSError):
            self.fds = max(self.fds, len(os.listdir(f"/proc/{self.pid}/fd")))
            self.rss_kib = max(self.rss_kib, status_kib(self.pid, "VmHWM:"))
            self.samples += 1


def status_kib(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name):
                return int(line.split()[1])
    return 0


@dataclass
class Flood:
    port: int
    idle: int
    slow: int
    opened: int = 0
    failed: int = 0
    closed_by_activator: int = 0
    slow_connections: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", self.port)), 30)
        except BaseException:
            sock.close()
            raise
        return sock

    async def hold_idle(self, gate: asyncio.Semaphore, tried: asyncio.Semaphore) -> None:
        """One idle connection, opened again whenever the activator closes it, until the flood ends."""
        first = True
        while not self.stop.is_set():
            try:
                async with gate:
                    sock = await self.connect()
            except (OSError, TimeoutError):
                self.failed += 1
                sock = None
            if first:
                first = False
                tried.release()
            if sock is None:
                await asyncio.sleep(1.0)
                continue
            self.opened += 1
            try:
                await self.until_closed(sock)
            finally:
                sock.close()

    async def until_closed(self, sock: socket.socket) -> None:
        closed = asyncio.ensure_future(asyncio.get_running_loop().sock_recv(sock, 1))
        stopped = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait([closed, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if closed.done():
            closed.exception()  # a reset is a close too
            self.closed_by_activator += 1
        else:
            closed.cancel()

    async def again_and_again(self, write: Callable[[socket.socket], Awaitable[None]], pause: float) -> None:
        """A slow writer: connect, `write`, and when the activator closes it, connect again."""
        while not self.stop.is_set():
            with contextlib.suppress(OSError, TimeoutError):
                sock = await self.connect()
                self.slow_connections += 1
                try:
                    await write(sock)
                finally:
                    sock.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), pause)

    async def trickle(self, sock: socket.socket) -> None:
        """A startup, a byte every few seconds."""
        for byte in protocol.startup_message({"user": "slow", "options": "x" * 9000}):
            await asyncio.get_running_loop().sock_sendall(sock, bytes([byte]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), TRICKLE_EVERY)
            if self.stop.is_set():
                return

    async def bulk(self, sock: socket.socket) -> None:
        """The largest startup header, then 1 MB that is no parameter list."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, LONG_STARTUP)
        await asyncio.wait_for(loop.sock_sendall(sock, BODY), 30)

    async def run(self, ready: threading.Event, done: threading.Event) -> None:
        gate = asyncio.Semaphore(256)  # connects in flight
        tried = asyncio.Semaphore(0)
        flooders = [
            asyncio.ensure_future(self.again_and_again(self.trickle, 0)) for _ in range(self.slow // 2)
        ]
        flooders += [
            asyncio.ensure_future(self.again_and_again(self.bulk, 1.0))
            for _ in range(self.slow - self.slow // 2)
        ]
        flooders += [asyncio.ensure_future(self.hold_idle(gate, tried)) for _ in range(self.idle)]
        for _ in range(self.idle):
            await tried.acquire()
        ready.set()
        await asyncio.to_thread(done.wait)
        self.stop.set()
        await asyncio.gather(*flooders, return_exceptions=True)


def raise_own_descriptor_limit(needed: int) -> None:
    """The client side opens more sockets than a default limit allows (root may raise the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(needed, soft)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))


def psql(operator: Operator, name: str) -> tuple[bool, float]:
    started = time.perf_counter()
    result = subprocess.run(
        ["psql", operator.dsn(name), "-XAtc", "select 1"],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "PGCONNECT_TIMEOUT": "60"},
        check=False,
    )
    return result.returncode == 0 and result.stdout.strip() == "1", time.perf_counter() - started


def time_to_active(operator: Operator, name: str) -> float:
    applied = time.monotonic()
    operator.apply(database(name, autoPause={"enabled": False}))
    operator.wait_phase(name, types.Phase.ACTIVE, timeout=60)
    return time.monotonic() - applied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=int, default=20_000)
    parser.add_argument("--slow", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the flood lasts at least")
    args = parser.parse_args()

    operator = scratch_operator(tick=0.5, metrics_port=free_port())
    operator.start()  # before our own limit goes up: the operator keeps the limits it would have
    assert operator.process is not None
    peaks = Peaks(operator.process.pid)
    sampler = threading.Thread(target=peaks.run, daemon=True)
    try:
        operator.apply(database("flood", autoPause={"idleAfter": "1s"}, autoPark={"enabled": False}))
        operator.wait_phase("flood", types.Phase.ACTIVE)
        operator.wait_phase("flood", types.Phase.PAUSED, timeout=60)
        endpoint = read_endpoint(operator.state_dir, "default/flood")
        assert endpoint is not None
        port = endpoint.port
        baseline_active_s = time_to_active(operator, "calm")  # the same, with no flood
        raise_own_descriptor_limit(args.idle + args.slow + 1_000)
        rss_before = status_kib(peaks.pid, "VmRSS:")
        sampler.start()

        flood = Flood(port, args.idle, args.slow)
        ready, done = threading.Event(), threading.Event()
        flooding = threading.Thread(target=lambda: asyncio.run(flood.run(ready, done)), daemon=True)
        started = time.monotonic()
        flooding.start()
        ready.wait(600)
        opened_s = time.monotonic() - started
        time.sleep(max(0.0, args.seconds / 3 - opened_s))  # slow writers at work for a while
        junk_woke = operator.get("flood").status.phase is not types.Phase.PAUSED

        new_db_active_s = time_to_active(operator, "fresh")

        psql_ok, psql_connect_s = psql(operator, "flood")
        time.sleep(max(0.0, args.seconds - (time.monotonic() - started)))
        done.set()
        flooding.join(120)
        peaks.sample()
    finally:
        peaks.stop.set()
        operator.stop()

    figures = {
        "held_idle": float(args.idle),
        "slow": float(args.slow),
        "psql_ok": float(psql_ok),
        "psql_connect_s": psql_connect_s,
        "new_db_active_s": new_db_active_s,
        "peak_rss_mib": peaks.rss_kib / 1024,
        "peak_fds": float(peaks.fds),
    }
    report(
        "activator_flood",
        figures,
        {
            "idle_connections_made": flood.opened,
            "idle_failed": flood.failed,
            "idle_closed_by_activator": flood.closed_by_activator,
            "slow_writer_connections": flood.slow_connections,
            "junk_woke_the_database": junk_woke,
            "idle_opened_in_s": round(opened_s, 2),
            "new_db_active_without_flood_s": round(baseline_active_s, 2),
            "rss_before_mib": round(rss_before / 1024, 1),
            "samples": peaks.samples,
        },
    )


if __name__ == "__main__":
    main()
