"""One Postgres cluster on this host: initdb, configure, start, stop, and its live settings.

Postgres refuses to run as root. When the operator is root, every server command runs as the
unprivileged `postgres` system user (created if missing) through `setpriv`, and the files the
server needs are owned by that user.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
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
from controller.postgres import conf
from controller.postgres.usage import Usage
from controller.runtime.base import PermanentError, TransientError

SERVER_USER = "postgres"
READY_POLL_SECONDS = 0.002
"""How often a starting server's pid file is read; pg_ctl's 100 ms would dominate a wake."""
STOP_TIMEOUT_SECONDS = 120.0
LOG_MAX_BYTES = 10 * 1024**2


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
class ServerUser:
    """The account Postgres runs as: this process's own, or `postgres` when this process is root."""

    uid: int
    gid: int
    name: str

    @property
    def switches(self) -> bool:
        return self.uid != os.geteuid()

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run as this user."""
        if not self.switches:
            return list(argv)
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--", *argv]

    def own(self, path: Path) -> None:
        if self.switches:
            os.chown(path, self.uid, self.gid)

    @classmethod
    def for_this_process(cls) -> ServerUser:
        if os.geteuid() != 0:
            entry = pwd.getpwuid(os.geteuid())
            return cls(entry.pw_uid, entry.pw_gid, entry.pw_name)
        try:
            entry = pwd.getpwnam(SERVER_USER)
        except KeyError:
            _create_system_user(SERVER_USER)
            entry = pwd.getpwnam(SERVER_USER)
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name)


def _create_system_user(name: str) -> None:
    try:
        grp.getgrnam(name)
        group = ["--gid", name]
    except KeyError:
        group = ["--user-group"]
    subprocess.run(
        ["useradd", "--system", *group, "--home-dir", "/var/lib/postgresql", "--shell", "/bin/bash", name],
        check=True,
    )


def grant_traverse(path: Path, user: ServerUser) -> list[Path]:
    """Make every directory above `path` traversable by `user` (execute only); returns those changed.

    A state directory under /root is otherwise out of the server's reach. An ACL entry for that one
    user is preferred; without `setfacl`, the directory gets others' execute bit (no listing).
    """
    changed: list[Path] = []
    if not user.switches:
        return changed
    for directory in reversed([path, *path.parents]):
        info = directory.stat()
        if info.st_mode & 0o001 or (info.st_uid == user.uid and info.st_mode & 0o100):
            continue
        if info.st_gid == user.gid and info.st_mode & 0o010:
            continue
        setfacl = shutil.which("setfacl")
        if setfacl:
            result = subprocess.run(
                [setfacl, "-m", f"u:{user.name}:x", str(directory)], capture_output=True, check=False
            )
            if result.returncode == 0:
                changed.append(directory)
                continue
        directory.chmod(info.st_mode | 0o001)
        changed.append(directory)
    return changed


@dataclass(frozen=True)
class Settings:
    """Settings written to the cluster's managed configuration file, read at start."""

    port: int
    shared_buffers: str
    max_connections: int
    max_worker_processes: int
    parameters: Mapping[str, str]

    def render(self) -> str:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "shared_buffers": self.shared_buffers,
            "max_connections": str(self.max_connections),
            "max_worker_processes": str(self.max_worker_processes),
            "password_encryption": "scram-sha-256",
            "logging_collector": "off",
            "log_destination": "stderr",
            "log_line_prefix": "%m [%p] %q%u@%d ",
            **dict(sorted(self.parameters.items())),
        }
        return conf.render(
            settings, header="Managed by the serverless-db operator; rewritten before every start."
        )


class Cluster:
    """A data directory and the server that runs on it."""

    MANAGED_CONF = "sdb.conf"

    def __init__(self, *, install: Install, user: ServerUser, pgdata: Path, log: Path) -> None:
        self.install = install
        self.user = user
        self.pgdata = pgdata
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None

    # -- storage ---------------------------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists() and (self.pgdata / self.MANAGED_CONF).exists()

    @property
    def data_version(self) -> str:
        version = self.pgdata / "PG_VERSION"
        return version.read_text().strip() if version.exists() else ""

    async def initdb(self, password: str) -> None:
        """Create the cluster; a directory left half-made by an earlier attempt is made again."""
        if self.pgdata.exists():
            if self.initialized:
                return
            # No managed config means initdb never finished: nothing of a user's is in there.
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir(mode=0o700, parents=True)
        self.user.own(self.pgdata)
        pwfile = self.pgdata.parent / ".initdb-password"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
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
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude = '{self.MANAGED_CONF}'\n")
        self.write_settings(
            Settings(
                port=0, shared_buffers="128MB", max_connections=100, max_worker_processes=8, parameters={}
            )
        )

    def write_settings(self, settings: Settings) -> None:
        path = self.pgdata / self.MANAGED_CONF
        tmp = path.with_suffix(".tmp")
        tmp.write_text(settings.render())
        tmp.chmod(0o600)
        self.user.own(tmp)
        tmp.replace(path)

    # -- process ---------------------------------------------------------------------------------

    def pid_file(self) -> list[str] | None:
        return live_pid_file(self.pgdata)

    def running_port(self) -> int | None:
        return running_port(self.pgdata)

    def incarnation(self) -> str:
        """The running server's pid and start time (postmaster.pid's first and third lines): a new
        value for every start, so what was done to one server is not taken as done to the next."""
        lines = self.pid_file()
        return f"{lines[0].strip()}@{lines[2].strip()}" if lines else ""

    def ready(self) -> bool:
        lines = self.pid_file()
        return lines is not None and len(lines) > 7 and lines[7].strip() == "ready"

    async def start(self, *, cgroup_procs: Sequence[Path] = (), timeout: float = 60.0) -> None:
        """Start the server and return once it accepts connections; raise with the log's tail if it cannot."""
        if self.ready():
            return
        if self.pid_file() is None:
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
        argv = self.user.command([self.install.tool("postgres"), "-D", str(self.pgdata)])
        if cgroup_procs:
            # Join the database's cgroups before exec, so every server process is born inside them.
            joins = " && ".join(f'echo $$ > "{p}"' for p in cgroup_procs)
            argv = ["/bin/sh", "-c", f'{joins} && exec "$@"', "sh", *argv]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.pgdata,
                env=env,
                start_new_session=True,  # a Ctrl-C to the operator must not reach the server
            )

    async def stop(self, *, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Fast shutdown: sessions end, a checkpoint is written, the next start needs no recovery."""
        lines = self.pid_file()
        if lines is None:
            self._reap()
            return
        pid = int(lines[0])
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
        """What ALTER SYSTEM left in postgresql.auto.conf (read only; Postgres owns the file)."""
        settings: dict[str, str] = {}
        try:
            text = (self.pgdata / "postgresql.auto.conf").read_text()
        except FileNotFoundError:
            return settings
        for line in text.splitlines():
            match = re.match(r"^\s*([a-z_.]+)\s*=\s*'((?:[^']|'')*)'\s*$", line)
            if match:
                settings[match.group(1)] = match.group(2).replace("''", "'")
        return settings

    def process_usage(self) -> Usage | None:
        """CPU and memory of the server's process tree, where it has no cgroup to read; None when stopped."""
        lines = self.pid_file()
        tree = process_tree(int(lines[0])) if lines else None
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


def live_pid_file(pgdata: Path) -> list[str] | None:
    """postmaster.pid's lines when a live server owns the data directory (not one left by a crash)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().split("\n")
    except (FileNotFoundError, PermissionError):
        return None
    if len(lines) < 4 or not lines[0].strip().isdigit():
        return None
    if not _alive(int(lines[0])):
        return None
    return lines


def running_port(pgdata: Path) -> int | None:
    """The port a live server on the data directory listens on."""
    lines = live_pid_file(pgdata)
    return int(lines[3]) if lines and lines[3].strip().isdigit() else None


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
