"""Files the local runtime reads and writes, by whom they can be written.

The operator's own files (configuration, passwords, its records) live in directories only it can
write, and are replaced atomically. Files in a data directory are the server's: a tenant's superuser
can write them (COPY ... TO), so the operator reads them without following a link, only if they are
regular files, and only so much of them; it never writes there, and never follows a link there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
from pathlib import Path

UNTRUSTED_READ_LIMIT = 64 * 1024
"""The most the operator reads of a file a tenant may have written (postmaster.pid, PG_VERSION, ...)."""


def read_untrusted(path: Path, *, limit: int = UNTRUSTED_READ_LIMIT) -> str | None:
    """A file from a data directory as text; None when absent, a link, a FIFO or anything not regular."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.ENXIO):
            return None
        raise
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            return None
        return file.read(limit).decode(errors="replace")


def write_private(path: Path, text: str, *, mode: int = 0o600) -> None:
    """Write one of the operator's own files: a fresh temporary file beside it, then a rename.

    `O_EXCL | O_NOFOLLOW` on the temporary name: an existing file or link there is never written through.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, mode)  # the umask may have taken bits a shared configuration file needs
    os.replace(tmp, path)


def adopt_tree(root: Path, uid: int, gid: int) -> int:
    """Give a data directory to its server's user, links and all, without following a link.

    A data directory made under another account (an older release ran every server as `postgres`)
    must belong to the account its server now runs as. Returns how many entries changed owner.
    """
    changed = 0
    for directory, names, files in os.walk(root, followlinks=False):
        for entry in [directory, *(os.path.join(directory, n) for n in (*names, *files))]:
            info = os.lstat(entry)
            if (info.st_uid, info.st_gid) != (uid, gid):
                os.chown(entry, uid, gid, follow_symlinks=False)
                changed += 1
    return changed


def spawn_logged(argv: list[str], *, log: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a daemon in a session of its own (a Ctrl-C to the operator must not reach it), its output
    appended to `log`: the operator's file, readable by nobody else, opened without following a link
    and written by the child through the descriptor it inherits."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
