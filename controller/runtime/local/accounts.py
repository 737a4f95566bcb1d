"""The accounts Postgres servers run as on this host.

Postgres refuses to run as root. An operator running as root gives each database an unprivileged
system account of its own (`sdb-<hash>`), so one database's server can read nothing of another's;
all of them belong to the group `sdb`, which alone may traverse the directories above their data. An
operator running as a normal user runs every server as itself (one developer, one laptop: nothing
to keep apart).
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GROUP = "sdb"
"""The group of every database's account: the one allowed to traverse the state directory."""
NAME_PREFIX = "sdb-"


@dataclass(frozen=True)
class ServerUser:
    """The account a server runs as: this process's own, or a database's own when this is root."""

    uid: int
    gid: int
    name: str
    groups: tuple[int, ...] = ()
    """Supplementary groups the server keeps (the `sdb` group)."""

    @property
    def switches(self) -> bool:
        return self.uid != os.geteuid()

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run as this user."""
        if not self.switches:
            return list(argv)
        groups = ",".join(str(g) for g in self.groups)
        keep = [f"--groups={groups}"] if groups else ["--clear-groups"]
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", *keep, "--", *argv]

    def own(self, path: Path) -> None:
        if self.switches:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)

    @classmethod
    def of(cls, name: str) -> ServerUser:
        entry = pwd.getpwnam(name)
        groups = tuple(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name, groups)

    @classmethod
    def current(cls) -> ServerUser:
        entry = pwd.getpwuid(os.geteuid())
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name)


def isolating() -> bool:
    """Whether each database gets an account of its own (only root can make them)."""
    return os.geteuid() == 0


def account_name(state_dir: Path, key: str) -> str:
    """A database's account: stable for its state directory and key, within useradd's 32 characters."""
    digest = hashlib.sha256(f"{state_dir.resolve()}\0{key}".encode()).hexdigest()[:12]
    return f"{NAME_PREFIX}{digest}"


def _comment(state_dir: Path) -> str:
    """The accounts' comment names their state directory (by digest), so they can all be found again."""
    return "serverless-db " + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]


def ensure_group() -> int:
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True, capture_output=True)
        return grp.getgrnam(GROUP).gr_gid


def for_database(state_dir: Path, key: str) -> ServerUser:
    """The account a database's server runs as, made on first use when this process is root."""
    if not isolating():
        return ServerUser.current()
    name = account_name(state_dir, key)
    try:
        pwd.getpwnam(name)
    except KeyError:
        ensure_group()
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--groups",
                GROUP,
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                _comment(state_dir),
                name,
            ],
            check=True,
            capture_output=True,
        )
    return ServerUser.of(name)


def remove(state_dir: Path, key: str) -> None:
    """The account goes with the database's storage (never while the storage stays)."""
    if isolating():
        with contextlib.suppress(KeyError, subprocess.CalledProcessError):
            pwd.getpwnam(account_name(state_dir, key))
            subprocess.run(["userdel", account_name(state_dir, key)], check=True, capture_output=True)


def remove_all(state_dir: Path) -> list[str]:
    """Every account made for a state directory's databases (its storage is gone): returns their names."""
    if not isolating():
        return []
    comment = _comment(state_dir)
    names = [e.pw_name for e in pwd.getpwall() if e.pw_name.startswith(NAME_PREFIX) and e.pw_gecos == comment]
    for name in names:
        subprocess.run(["userdel", name], check=False, capture_output=True)
    return names


def grant_traverse(path: Path) -> list[Path]:
    """Let the `sdb` group traverse every directory down to `path` (execute only); returns those changed.

    A state directory under /root is otherwise out of the servers' reach. An ACL entry for the group
    is preferred; without `setfacl`, the directory gets others' execute bit (no listing).
    """
    if not isolating():
        return []
    gid = ensure_group()
    changed: list[Path] = []
    for directory in reversed([path, *path.parents]):
        info = directory.stat()
        if info.st_mode & 0o001 or (info.st_gid == gid and info.st_mode & 0o010):
            continue
        setfacl = shutil.which("setfacl")
        if setfacl:
            result = subprocess.run(
                [setfacl, "-m", f"g:{GROUP}:x", str(directory)], capture_output=True, check=False
            )
            if result.returncode == 0:
                changed.append(directory)
                continue
        directory.chmod(info.st_mode | 0o001)
        changed.append(directory)
    return changed
