"""The endpoint's in-kernel fast path: an nftables map from endpoint port to Postgres port.

This is the local twin of switching a Service's EndpointSlice. The activator always listens on
every endpoint port; while a database is active, a map element redirects new loopback connections
to Postgres's own port inside the kernel, so no proxy is in the path. Removing the element sends
new connections to the activator again, while established ones keep their translation (conntrack).
Where nftables is missing or not permitted, the activator relays in user space instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess

_TABLE_PREFIX = "sdb_"


class KernelRedirect:
    """One nftables table per operator (named after its state directory)."""

    def __init__(self, name: str, *, enabled: bool = True) -> None:
        self.table = f"{_TABLE_PREFIX}{name}"
        self.enabled = enabled
        self.available = False
        self.message = "not probed"
        self._nft = shutil.which("nft") or ""

    def open(self) -> None:
        """Create the table afresh (dropping one left by a crashed run); never raises."""
        if not self.enabled:
            self.message = "in-kernel redirect turned off: the activator relays connections in user space"
            return
        if not self._nft:
            self.message = "nftables (nft) is not installed: the activator relays connections in user space"
            return
        _remove_orphans(self._nft)
        script = f"""
            table ip {self.table} {{ comment "pid={os.getpid()}"; }}
            delete table ip {self.table}
            table ip {self.table} {{
                comment "pid={os.getpid()}"
                map endpoints {{ type inet_service : inet_service; }}
                chain output {{
                    type nat hook output priority -100; policy accept;
                    ip daddr 127.0.0.1 meta l4proto tcp redirect to tcp dport map @endpoints
                }}
            }}
        """
        result = subprocess.run(
            [self._nft, "-f", "-"], input=script, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            self.message = (
                f"nftables refused the redirect table ({result.stderr.strip()}): relaying in user space"
            )
            return
        self.available = True
        self.message = "in-kernel redirect (nftables): no proxy in an active database's path"

    async def direct(self, endpoint_port: int, postgres_port: int) -> None:
        """Send new connections on `endpoint_port` to Postgres (replacing any earlier target)."""
        await self._nft_run(
            f"delete element ip {self.table} endpoints {{ {endpoint_port} }}",
            f"add element ip {self.table} endpoints {{ {endpoint_port} : {postgres_port} }}",
            tolerate_first=True,
        )

    async def to_activator(self, endpoint_port: int) -> None:
        await self._nft_run(
            f"delete element ip {self.table} endpoints {{ {endpoint_port} }}", tolerate_first=True
        )

    async def _nft_run(self, *commands: str, tolerate_first: bool = False) -> None:
        if not self.available:
            return
        if tolerate_first:
            # `delete element` fails when absent; nft -f is all-or-nothing, so run it on its own.
            first = await asyncio.create_subprocess_exec(
                self._nft, commands[0], stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            await first.wait()
            commands = commands[1:]
        for command in commands:
            process = await asyncio.create_subprocess_exec(
                self._nft, command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, err = await process.communicate()
            if process.returncode != 0:
                raise OSError(f"nft {command!r} failed: {err.decode().strip()}")

    def close(self) -> None:
        if self.available:
            subprocess.run([self._nft, "delete", "table", "ip", self.table], capture_output=True, check=False)
            self.available = False


def _remove_orphans(nft: str) -> None:
    """Drop tables of operators that died without cleaning up (their pid is gone)."""
    result = subprocess.run([nft, "-j", "list", "tables", "ip"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return
    with contextlib.suppress(ValueError, KeyError, TypeError):
        for item in json.loads(result.stdout)["nftables"]:
            table = item.get("table")
            if not table or not table["name"].startswith(_TABLE_PREFIX):
                continue
            pid = _pid_of(nft, table["name"])
            if pid is not None and not os.path.exists(f"/proc/{pid}"):
                subprocess.run(
                    [nft, "delete", "table", "ip", table["name"]], capture_output=True, check=False
                )


def _pid_of(nft: str, table: str) -> int | None:
    result = subprocess.run([nft, "list", "table", "ip", table], capture_output=True, text=True, check=False)
    for raw in result.stdout.splitlines():
        line = raw.strip()
        if line.startswith('comment "pid='):
            with contextlib.suppress(ValueError):
                return int(line.removeprefix('comment "pid=').rstrip('"'))
    return None
