"""A real PgBouncer standing in for a database's pooler pod on the API double.

The double's pods run nothing. This runs the files the operator wrote into the Secret `<name>-pooler`
(and the certificate of `<name>-tls`), as the pod mounts them, in Debian's PgBouncer, with what only
a cluster has moved to this host: the mount paths, the listening address, and the server (the
database's Service) replaced by the test's Postgres. Debian 12's PgBouncer is 1.18, which does not
know max_prepared_statements, so that one line is left out; everything else is read as written.
"""

from __future__ import annotations

import base64
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from controller.runtime.kubernetes import pooler as pooled
from controller.runtime.local import files
from controller.runtime.local.accounts import ServerUser
from controller.runtime.local.pooler import Pooler

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _decoded(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


class PoolerPod:
    def __init__(self, *, user: ServerUser, server_port: int) -> None:
        # Under /tmp itself: the pooler's account must be able to reach its files.
        self.root = Path(tempfile.mkdtemp(prefix="sdb-pooler-pod-", dir="/tmp"))
        self.root.chmod(0o711)
        self.user = user
        self.server_port = server_port
        self.port = _free_port()
        self.pooler = Pooler(directory=self.root / "pgbouncer", user=user)
        self.ini = ""

    def files(self, config: dict[str, Any], tls: dict[str, Any]) -> tuple[str, str]:
        """The pod's pgbouncer.ini and users.txt, moved to this host."""
        certificates = self.root / "tls"
        certificates.mkdir(mode=0o711, exist_ok=True)
        for key in ("tls.crt", "tls.key", "ca.crt"):
            path = certificates / key
            files.write_private(path, _decoded(tls, key), mode=0o600)
            self.user.own(path)
        ini = _decoded(config, "pgbouncer.ini")
        ini = ini.replace(f"{pooled.TLS_MOUNT}/", f"{certificates}/")
        ini = ini.replace(f"{pooled.CONFIG_MOUNT}/", f"{self.pooler.directory}/")
        ini = re.sub(r"host=\S+ port=\d+", f"host={HOST} port={self.server_port}", ini)
        ini = re.sub(r"(?m)^listen_addr = .*$", f"listen_addr = {HOST}", ini)
        ini = re.sub(r"(?m)^listen_port = .*$", f"listen_port = {self.port}", ini)
        # The test's server has no certificate for the Service's name.
        ini = re.sub(r"(?m)^server_tls_sslmode = .*$", "server_tls_sslmode = prefer", ini)
        ini = re.sub(r"(?m)^(server_tls_ca_file|max_prepared_statements) = .*\n", "", ini)
        return ini, _decoded(config, "users.txt")

    async def start(self, config: dict[str, Any], tls: dict[str, Any]) -> None:
        self.ini, users = self.files(config, tls)
        self.pooler.write(self.ini, users)
        await self.pooler.start(port=self.port)

    async def stop(self) -> None:
        await self.pooler.stop()
        shutil.rmtree(self.root, ignore_errors=True)
