"""Real components a test runs against: on a laptop without one the test skips, in CI it fails.

CI (`CI=true`) installs every component through `./dev test`; a missing one there is a broken set-up,
and a suite that skipped its way to green would hide it.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

from controller.runtime.local import server


def missing(what: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI runs this test against {what}, which is missing", pytrace=False)
    pytest.skip(f"needs {what}")


def require_postgres() -> server.Install:
    try:
        return server.Install.find()
    except server.PostgresNotFoundError as error:
        missing(f"Postgres server binaries ({error})")


def require_commands(*names: str, package: str) -> None:
    absent = [name for name in names if shutil.which(name) is None]
    if absent:
        missing(f"{' and '.join(absent)} on PATH (Debian's {package}; ./dev test installs it)")


def require_pgbouncer() -> str:
    """PgBouncer's executable, where the local runtime finds it (Debian's is in /usr/sbin)."""
    from controller.runtime.base import PermanentError
    from controller.runtime.local import pooler

    try:
        return pooler.binary()
    except PermanentError as error:
        missing(f"PgBouncer ({error.message}; ./dev test installs it)")
