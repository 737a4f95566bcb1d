"""What a pass over declared roles costs: the first pass that makes them, and the resync pass that finds
nothing to do (what every running database with declared roles pays every --catalog-resync).

    .venv/bin/python bench/declared_roles.py --roles 64 --passes 30

Against a fresh real server: `--roles` roles with passwords and memberships, one database with an
extension per eight roles. Last line: first_pass_s noop_pass_p50_ms noop_pass_p99_ms sessions_per_noop_pass.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from common import percentile, report
from support.postgres import running_server

from controller.api import types
from controller.postgres import declared
from controller.postgres.sessions import Address, OperatorSessions

KEY = "bench/roles"


def spec(count: int) -> types.DatabaseSpec:
    roles = tuple(
        types.RoleSpec(f"r{i}", login=True, in_roles=("pg_read_all_data",), password_secret=f"s{i}")
        for i in range(count)
    )
    databases = tuple(
        types.DeclaredDatabase(f"d{i}", f"r{i}", extensions=("pgcrypto",)) for i in range(0, count, 8)
    )
    return types.DatabaseSpec(roles=roles, databases=databases)


def measure(count: int, passes: int) -> dict[str, float]:
    with running_server() as server:
        sessions = OperatorSessions()
        address = Address("127.0.0.1", server.port, server.password)
        the_spec = spec(count)
        credentials = {f"s{i}": declared.Credential(f"r{i}", f"password-{i}") for i in range(count)}
        wanted = declared.desired(the_spec, credentials)
        started = time.perf_counter()
        first = asyncio.run(declared.apply(sessions, KEY, address, wanted, salt=b"\x00" * 16))
        first_pass = time.perf_counter() - started
        assert all(o.state is types.Applied.APPLIED for o in first.roles + first.databases), first
        verified = declared.Verified()  # as each runtime keeps one
        noop: list[float] = []
        opened = sessions.opened(KEY)
        for _ in range(passes):
            started = time.perf_counter()
            asyncio.run(declared.apply(sessions, KEY, address, wanted, salt=b"\x01" * 16, verified=verified))
            noop.append(time.perf_counter() - started)
        per_pass = (sessions.opened(KEY) - opened) / passes
    return {
        "first_pass_s": first_pass,
        "noop_pass_p50_ms": percentile(noop, 0.5) * 1000,
        "noop_pass_p99_ms": percentile(noop, 0.99) * 1000,
        "sessions_per_noop_pass": per_pass,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--roles", type=int, default=64)
    parser.add_argument("--passes", type=int, default=30)
    args = parser.parse_args()
    figures = measure(args.roles, args.passes)
    report("declared_roles", figures, {"roles": args.roles, "databases": len(range(0, args.roles, 8))})


if __name__ == "__main__":
    main()
