"""One PgBouncer on this host for a database with spec.pooling: its files and its process.

Under the database's directory, in `pooler/` (the operator's, mode 0711):
  pgbouncer.ini   the whole configuration (no secret), read-only to the pooler
  users.txt       the logins' SCRAM secrets, 0640 to the pooler's group (0600 without accounts)
  pooler.json     the operator's record of the process (its pid)
  pooler.log      the pooler's log, 0600, written through a descriptor the operator opens
The pooler runs as the database's own account when the operator is root, like its server, and
in its own session, so it outlives neither a clean stop of the operator nor its database's delete,
and a Ctrl-C to the operator does not reach it. Its TLS certificate is the server's: locally both
answer to the same names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from controller.api import types
from controller.postgres import pooler
from controller.runtime.base import PermanentError, TransientError
from controller.runtime.local import files
from controller.runtime.local.accounts import ServerUser

LOG_MAX_BYTES = 10 * 1024**2
READY_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 30.0


def binary() -> str:
    """PgBouncer's executable (Debian's package puts it in /usr/sbin, off a normal user's PATH)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise PermanentError(
            types.Reason.POOLER_FAILED, "pgbouncer is not installed on this host (install Debian's pgbouncer)"
        )
    return found


class Pooler:
    """A database's PgBouncer: the operator writes its files and signals only the process it spawned."""

    def __init__(self, *, directory: Path, user: ServerUser) -> None:
        self.directory = directory
        self.user = user
        self.config = directory / "pgbouncer.ini"
        self.users = directory / "users.txt"
        self.record = directory / "pooler.json"
        self.log = directory / "pooler.log"
        self._process: subprocess.Popen[bytes] | None = None

    # -- files -----------------------------------------------------------------------------------

    def write(self, ini: str, users: str) -> bool:
        """Write the configuration and the logins where they differ; returns whether a running
        pooler must reload them (not for a new pool size: the console sets that)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o711)
        changed = False
        for path, text, mode in ((self.config, ini, 0o644), (self.users, users, 0o640)):
            try:
                before = path.read_text()
            except FileNotFoundError:
                before = ""
            if before == text:
                continue
            files.write_private(path, text, mode=mode if self.user.switches else 0o600)
            changed = changed or path != self.config or pooler.needs_reload(before, text)
        if self.user.switches:
            # Root's file, readable by the pooler's group only: the pooler cannot rewrite its logins.
            os.chown(self.users, 0, self.user.gid, follow_symlinks=False)
        return changed

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- process ---------------------------------------------------------------------------------

    def _recorded_pid(self) -> int | None:
        try:
            pid = json.loads(self.record.read_text()).get("pid")
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return pid if isinstance(pid, int) else None

    def pid(self) -> int | None:
        """The running pooler's pid: the process the operator spawned (recorded, so a restarted
        operator knows it too), while it still runs here as the database's account."""
        pid = self._process.pid if self._process is not None else self._recorded_pid()
        if pid is None:
            return None
        try:
            process = psutil.Process(pid)
            ours = (
                process.status() != psutil.STATUS_ZOMBIE
                and os.path.realpath(process.cwd()) == os.path.realpath(self.directory)
                and process.uids().real == self.user.uid
            )
        except (psutil.Error, OSError):
            return None
        return pid if ours else None

    def exited(self) -> str | None:
        """Why the spawned pooler is gone (its exit code and log's tail), once; None while it runs."""
        process = self._process
        if process is None or process.poll() is None:
            return None
        self._process = None
        return f"pgbouncer exited with code {process.returncode}: {self.log_tail()}"

    async def start(self, *, port: int) -> None:
        """Start the pooler and return once it accepts connections on `port`."""
        if self.pid() is not None:
            return
        self._spawn()
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not await _accepts(port):
            if (why := self.exited()) is not None:
                raise TransientError(types.Reason.POOLER_FAILED, why)
            if time.monotonic() > deadline:
                raise TransientError(
                    types.Reason.POOLER_FAILED, f"pgbouncer not listening after {READY_TIMEOUT_SECONDS:g}s"
                )
            await asyncio.sleep(0.01)

    def _spawn(self) -> None:
        if self.log.exists() and self.log.stat().st_size > LOG_MAX_BYTES:
            self.log.replace(self.log.with_suffix(".log.1"))
        argv = self.user.command([binary(), str(self.config)])
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        self._process = files.spawn_logged(argv, log=self.log, cwd=self.directory, env=env)
        files.write_private(self.record, json.dumps({"pid": self._process.pid}))

    async def stop(self) -> None:
        """SIGINT: PgBouncer's safe shutdown, after the transactions under way."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            while self.pid() is not None:
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                    break
                await asyncio.sleep(0.01)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(5)
            self._process = None
        self.record.unlink(missing_ok=True)

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return "(no log)"
        return " | ".join(text[-lines:])


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
