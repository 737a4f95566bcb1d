"""One Postgres server on this host: its data directory, its configuration, and its process.

The data directory is the server's (and, through a superuser, a tenant's): the operator reads from it
only through `files.read_untrusted` and never writes there. The configuration lives beside it, in
the operator's own directory (`postgresql.conf` and `pg_hba.conf`, read-only to the server), and
the server runs with `config_file` pointing there. A process is the data directory's postmaster only
when it runs in that directory (its working directory) as its account: the operator signals nothing
else, whatever postmaster.pid says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from controller.api import types
from controller.policy import sizing
from controller.postgres import conf, encryption, identities
from controller.postgres.usage import Usage
from controller.runtime.base import PermanentError, TransientError
from controller.runtime.local import files
from controller.runtime.local.accounts import ServerUser

SERVER_USER = "postgres"
"""The bootstrap superuser initdb makes: the operator's own role."""
READY_POLL_SECONDS = 0.002
"""How often a starting server's pid file is read; pg_ctl's 100 ms would dominate a wake."""
STOP_TIMEOUT_SECONDS = 120.0
LOG_MAX_BYTES = 10 * 1024**2
RESERVED_CONNECTIONS = sizing.RESERVED_CONNECTIONS


class PostgresNotFoundError(PermanentError):
    def __init__(self, message: str) -> None:
        super().__init__(types.Reason.START_FAILED, message)


@dataclass(frozen=True)
class Install:
    """A Postgres installation's binaries."""

    bindir: Path
    major: str

    @classmethod
    def find(cls, version: str = "") -> Install:
        """The installation for a major version ("" for the newest found); raises PostgresNotFoundError."""
        candidates: dict[str, Path] = {}
        for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin")):
            if (bindir / "initdb").exists() and (bindir / "postgres").exists():
                candidates[bindir.parent.name] = bindir
        on_path = shutil.which("initdb")
        if on_path:
            bindir = Path(on_path).resolve().parent
            major = _major_of(bindir)
            if major:
                candidates.setdefault(major, bindir)
        if not candidates:
            raise PostgresNotFoundError("no Postgres server binaries found (install Debian's postgresql)")
        if not version:
            newest = max(candidates, key=int)
            return cls(candidates[newest], newest)
        if version not in candidates:
            found = ", ".join(sorted(candidates, key=int))
            raise PostgresNotFoundError(f"Postgres {version} is not installed on this host (found {found})")
        return cls(candidates[version], version)

    def tool(self, name: str) -> str:
        return str(self.bindir / name)


def _major_of(bindir: Path) -> str:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return match.group(1) if match else ""


@dataclass(frozen=True)
class Settings:
    """The server's whole configuration file, written by the operator before every start."""

    port: int
    shared_buffers: str
    max_connections: int
    max_worker_processes: int
    parameters: Mapping[str, str]
    tls: tuple[Path, Path] | None = None
    """The server's certificate and key files, for TLS; None: plaintext only."""
    client_ca: Path | None = None
    """The CA whose client certificates the server takes (the identity endpoint's, for `cert`)."""

    def render(self, *, hba_file: Path) -> str:
        tls = (
            {
                "ssl": "on",
                "ssl_cert_file": str(self.tls[0]),
                "ssl_key_file": str(self.tls[1]),
                "ssl_min_protocol_version": "TLSv1.2",
                **({"ssl_ca_file": str(self.client_ca)} if self.client_ca else {}),
            }
            if self.tls
            else {}
        )
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "hba_file": str(hba_file),
            "ident_file": str(hba_file.with_name("pg_ident.conf")),
            "shared_buffers": self.shared_buffers,
            "max_connections": str(self.max_connections),
            "superuser_reserved_connections": str(RESERVED_CONNECTIONS),
            "max_worker_processes": str(self.max_worker_processes),
            "password_encryption": "scram-sha-256",
            "logging_collector": "off",
            "log_destination": "stderr",
            "log_line_prefix": "%m [%p] %q%u@%d ",
            **tls,
            **dict(sorted(self.parameters.items())),
        }
        return conf.render(
            settings, header="Managed by the serverless-db operator; rewritten before every start."
        )


HBA = encryption.hba_rules("127.0.0.1/32")
"""TCP on loopback only, passwords by SCRAM; plaintext as `encryption` allows."""
IDENTITY_SOURCE = "127.0.0.2"
"""The loopback address the identity endpoint connects from: for it alone, a client certificate
(the `cert` method, mapped by pg_ident) logs in instead of a password."""
IDENTITY_HBA = f"hostssl all all {IDENTITY_SOURCE}/32 cert map={identities.MAP}"


def with_identities(hba: str) -> str:
    """pg_hba.conf with the identity endpoint's line first after the header: which roles its
    certificate may become is pg_ident's business, so this file does not change with the spec."""
    header, _, rest = hba.partition("\n")
    return f"{header}\n{IDENTITY_HBA}\n{rest}"


class Cluster:
    """A data directory, the configuration beside it, and the server that runs on it."""

    def __init__(self, *, install: Install, user: ServerUser, pgdata: Path, log: Path) -> None:
        self.install = install
        self.user = user
        self.pgdata = pgdata
        self.log = log
        self.config = pgdata.parent / "postgresql.conf"
        self.hba = pgdata.parent / "pg_hba.conf"
        self.record = pgdata.parent / "server.json"
        """The operator's record of the server: the port it was configured on, how far initdb got."""
        self._process: subprocess.Popen[bytes] | None = None

    # -- storage ---------------------------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        """Whether storage exists: any data directory with PG_VERSION is the database's, and stays."""
        return files.read_untrusted(self.pgdata / "PG_VERSION") is not None

    @property
    def data_version(self) -> str:
        return (files.read_untrusted(self.pgdata / "PG_VERSION") or "").strip()

    def _read_record(self) -> dict[str, object]:
        try:
            loaded = json.loads(self.record.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def _write_record(self, **changes: object) -> None:
        files.write_private(self.record, json.dumps({**self._read_record(), **changes}))

    async def initdb(self, password: str) -> None:
        """Create the data directory; one left half-made by this operator's earlier attempt is made again.

        A data directory is never removed when it holds PG_VERSION (it is a database, whatever else is
        true), nor when the operator did not start making it: a missing record means look again.
        """
        if self.initialized:
            return
        if self.pgdata.exists():
            if self._read_record().get("initdb") != "started":
                raise PermanentError(
                    types.Reason.CREATING,
                    f"{self.pgdata} exists, is not a database and was not made by this operator; "
                    "it is left as it is (remove it to let the operator make the database)",
                )
            shutil.rmtree(self.pgdata)  # our own interrupted initdb: nothing of anyone's is in there
        self._write_record(initdb="started")
        self.pgdata.mkdir(mode=0o700, parents=True)
        self.user.own(self.pgdata)
        pwfile = self.pgdata.parent / ".initdb-password"
        files.write_private(pwfile, password + "\n")
        self.user.own(pwfile)
        try:
            await _run(
                self.user.command(
                    [
                        self.install.tool("initdb"),
                        f"--pgdata={self.pgdata}",
                        f"--username={SERVER_USER}",
                        f"--pwfile={pwfile}",
                        "--auth=scram-sha-256",
                        "--encoding=UTF8",
                        "--locale=C.UTF-8",
                        "--no-instructions",
                    ]
                ),
                what="initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self._write_record(initdb="done")

    def adopt(self) -> None:
        """A data directory of another account (made by an older release) becomes its server's."""
        if self.user.switches and self.pgdata.stat().st_uid != self.user.uid:
            files.adopt_tree(self.pgdata, self.user.uid, self.user.gid)

    def write_settings(self, settings: Settings, *, hba: str = HBA, ident: str = "") -> None:
        files.write_private(self.config, settings.render(hba_file=self.hba), mode=0o644)
        files.write_private(self.hba, hba, mode=0o644)
        self.write_ident(ident)
        self._write_record(port=settings.port)

    def write_ident(self, ident: str) -> bool:
        """Write pg_ident.conf when it differs; returns whether it changed (a reload then reads it)."""
        path = self.hba.with_name("pg_ident.conf")
        with contextlib.suppress(FileNotFoundError):
            if path.read_text() == ident:
                return False
        files.write_private(path, ident, mode=0o644)
        return True

    # -- process ---------------------------------------------------------------------------------

    def postmaster(self) -> int | None:
        """The pid of this data directory's running server, as the operator started it.

        Not postmaster.pid's: a tenant's superuser can write that file. The pid is the one the operator
        spawned (recorded, so a restarted operator knows it too), and it counts only while that process
        still runs in this data directory as its account.
        """
        pid = self._process.pid if self._process is not None else self._read_record().get("pid")
        return pid if isinstance(pid, int) and _alive(pid) and self._owns(pid) else None

    def _status(self) -> str:
        """The server's own word on where it is (postmaster.pid's last line: starting, ready, ...)."""
        lines = (files.read_untrusted(self.pgdata / "postmaster.pid") or "").split("\n")
        return lines[7].strip() if len(lines) > 7 else ""

    def _owns(self, pid: int) -> bool:
        """Whether `pid` runs in this data directory as its account: postmaster.pid alone is not proof."""
        try:
            process = psutil.Process(pid)
            in_directory = os.path.realpath(process.cwd()) == os.path.realpath(self.pgdata)
            return in_directory and process.uids().real == self.user.uid
        except (psutil.Error, OSError):
            return False

    def running_port(self) -> int | None:
        """The port the operator configured, while this data directory's server runs."""
        port = self._read_record().get("port")
        return port if isinstance(port, int) and port > 0 and self.postmaster() is not None else None

    def incarnation(self) -> str:
        """The running server's pid and start time: a new value for every start, so what was done to
        one server is not taken as done to the next."""
        pid = self.postmaster()
        if pid is None:
            return ""
        with contextlib.suppress(psutil.Error):
            return f"{pid}@{psutil.Process(pid).create_time():.2f}"
        return ""

    def ready(self) -> bool:
        return self.postmaster() is not None and self._status() == "ready"

    async def start(self, *, cgroup_procs: Sequence[Path] = (), timeout: float = 60.0) -> None:
        """Start the server and return once it accepts connections; raise with the log's tail if it cannot."""
        if self.ready():
            return
        if self.postmaster() is None:
            self._spawn(cgroup_procs)
        deadline = time.monotonic() + timeout
        while not self.ready():
            process = self._process
            if process is not None and process.poll() is not None:
                self._process = None
                raise TransientError(
                    types.Reason.START_FAILED,
                    f"Postgres exited with code {process.returncode}: {self.log_tail()}",
                )
            if time.monotonic() > deadline:
                raise TransientError(types.Reason.START_FAILED, f"Postgres not ready after {timeout:g}s")
            await asyncio.sleep(READY_POLL_SECONDS)

    def _spawn(self, cgroup_procs: Sequence[Path]) -> None:
        if self.log.exists() and self.log.stat().st_size > LOG_MAX_BYTES:
            self.log.replace(self.log.with_suffix(".log.1"))
        argv = self.user.command(
            [self.install.tool("postgres"), "-D", str(self.pgdata), "-c", f"config_file={self.config}"]
        )
        if cgroup_procs:
            # Join the database's cgroups before exec, so every server process is born inside them.
            joins = " && ".join(f'echo $$ > "{p}"' for p in cgroup_procs)
            argv = ["/bin/sh", "-c", f'{joins} && exec "$@"', "sh", *argv]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        self._process = files.spawn_logged(argv, log=self.log, cwd=self.pgdata, env=env)
        # setpriv and the shell exec the server in place: the child's pid is the postmaster's.
        self._write_record(pid=self._process.pid)

    async def stop(self, *, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Fast shutdown: sessions end, a checkpoint is written, the next start needs no recovery."""
        pid = self.postmaster()
        if pid is None:
            self._reap()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            self._reap()
            if time.monotonic() > deadline:
                raise TransientError(
                    types.Reason.STOP_FAILED, f"Postgres (pid {pid}) still running after {timeout:g}s"
                )
            await asyncio.sleep(0.005)
        self._reap()

    def _reap(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._process = None

    def persisted_settings(self) -> dict[str, str]:
        """What ALTER SYSTEM left in postgresql.auto.conf (read as a tenant's file: no link, bounded)."""
        settings: dict[str, str] = {}
        for line in (files.read_untrusted(self.pgdata / "postgresql.auto.conf") or "").splitlines():
            match = re.fullmatch(r"\s*([a-z_.]+)\s*=\s*'((?:[^']|'')*)'\s*", line)
            if match:
                settings[match.group(1)] = match.group(2).replace("''", "'")
        return settings

    def process_usage(self) -> Usage | None:
        """CPU and memory of the server's process tree, where it has no cgroup to read; None when stopped."""
        pid = self.postmaster()
        tree = process_tree(pid) if pid is not None else None
        return Usage(tree.cpu_seconds, tree.private_bytes + tree.shared_bytes) if tree else None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return "(no log)"
        return " | ".join(text[-lines:])

    async def clean_shutdown(self) -> bool:
        """Whether the control file says the last stop was clean (no recovery needed at start)."""
        out = await _run(
            self.user.command([self.install.tool("pg_controldata"), str(self.pgdata)]), what="pg_controldata"
        )
        return bool(re.search(r"Database cluster state:\s+shut down\s*$", out, re.MULTILINE))


@dataclass(frozen=True)
class ProcessTree:
    cpu_seconds: float
    private_bytes: int
    shared_bytes: int
    """Shared memory counted once (shared_buffers, mostly), not once per process."""


class ProcessTable:
    """Which process is whose child, read from the system once for a whole reading of the fleet (a
    tick reads every server's tree within moments) instead of once per server."""

    def __init__(self, max_age: float = 1.0) -> None:
        self.max_age = max_age
        self._read_at = -max_age
        self._children: dict[int, list[int]] = {}

    def descendants(self, pid: int) -> list[int]:
        now = time.monotonic()
        if now - self._read_at >= self.max_age:
            children: dict[int, list[int]] = {}
            for process in psutil.process_iter(["ppid"]):
                children.setdefault(process.info["ppid"], []).append(process.pid)
            self._children, self._read_at = children, now
        out, todo = [], list(self._children.get(pid, []))
        while todo:
            child = todo.pop()
            out.append(child)
            todo += self._children.get(child, [])
        return out


PROCESSES = ProcessTable()


def process_tree(pid: int, table: ProcessTable = PROCESSES) -> ProcessTree | None:
    """CPU seconds and memory of a process and all its descendants; None once it has exited.

    The postmaster reaps its backends, so their CPU time is in its children's counters.
    """
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        cpu = times.user + times.system + times.children_user + times.children_system
        memory = root.memory_info()
        private, shared = memory.rss - memory.shared, memory.shared
        for child_pid in table.descendants(pid):
            with contextlib.suppress(psutil.Error):
                child = psutil.Process(child_pid)
                child_times = child.cpu_times()
                cpu += child_times.user + child_times.system
                child_memory = child.memory_info()
                private += child_memory.rss - child_memory.shared
                shared = max(shared, child_memory.shared)
    except psutil.Error:
        return None
    return ProcessTree(cpu, private, shared)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (an exited child not yet reaped) is not a running server.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


async def _run(argv: list[str], *, what: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd="/",
    )
    out, _ = await process.communicate()
    text = out.decode(errors="replace")
    if process.returncode != 0:
        raise TransientError(
            types.Reason.START_FAILED, f"{what} failed ({process.returncode}): {text.strip()[-500:]}"
        )
    return text
