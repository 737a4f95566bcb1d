"""Wake latency: connect + `select 1` on a paused database, against a bare `pg_ctl start -w` of the same data.

    .venv/bin/python bench/wake_latency.py --cycles 20

The wake is measured through the endpoint, from a client's connect to the answer of `select 1`,
while the operator runs. The floor is measured afterwards on the same data directory with the
operator stopped: `pg_ctl start -w`, connect + `select 1` to Postgres's own port, `pg_ctl stop`.
Both clients use TLS with `sslmode=verify-full` against the operator's CA: through a wake the
handshake passes through the activator to the same server certificate.
Last line: wake_p50_s wake_p99_s floor_p50_s ratio_p50 (goal: ratio_p50 <= 1.2).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import psycopg
import psycopg.conninfo
from common import database, percentile, report, scratch_operator, wait_for

from controller.api import types
from controller.runtime.local import accounts
from controller.runtime.local.runtime import free_port
from controller.runtime.local.server import Install


def query_once(dsn: str) -> None:
    with psycopg.connect(dsn, connect_timeout=60) as conn:
        conn.execute("select 1").fetchone()


def measure_wakes(cycles: int) -> tuple[list[float], str, accounts.ServerUser, str]:
    operator = scratch_operator(tick=0.1, metrics_port=free_port())
    operator.start()
    try:
        operator.apply(database("wake", autoPause={"idleAfter": "1s"}, autoPark={"enabled": False}))
        operator.wait_phase("wake", types.Phase.ACTIVE)
        _, printed, _ = operator.sdb("dsn", "wake", "--verify", "--show-password")
        dsn = printed.strip()
        wakes: list[float] = []
        for cycle in range(cycles):
            pauses = operator.metric("sdb_pauses_total", database="wake")
            wait_for(
                lambda p=pauses: operator.metric("sdb_pauses_total", database="wake") > p,  # type: ignore[misc]
                timeout=60,
                what=f"pause {cycle}",
            )
            wait_for(lambda: operator.get("wake").status.phase is types.Phase.PAUSED, timeout=10)
            started = time.perf_counter()
            query_once(dsn)
            wakes.append(time.perf_counter() - started)
        pgdata = str(operator.pgdata("wake"))
        user = accounts.for_database(operator.state_dir, "default/wake")
    finally:
        operator.stop()
    return wakes, pgdata, user, dsn


def measure_floor(pgdata: str, user: accounts.ServerUser, cycles: int, wake_dsn: str) -> list[float]:
    """The same data directory started bare, with the configuration the operator wrote beside it, and
    the client's own TLS settings."""
    install = Install.find()
    port = free_port()
    config = Path(pgdata).parent / "postgresql.conf"
    dsn = psycopg.conninfo.make_conninfo(wake_dsn, port=port)
    floors: list[float] = []
    for _ in range(cycles):
        started = time.perf_counter()
        subprocess.run(
            user.command(
                [
                    install.tool("pg_ctl"),
                    "start",
                    "-w",
                    "-D",
                    pgdata,
                    "-l",
                    "/dev/null",
                    "-o",
                    f"-c config_file={config} -c port={port}",
                ]
            ),
            check=True,
            capture_output=True,
        )
        query_once(dsn)
        floors.append(time.perf_counter() - started)
        subprocess.run(
            user.command([install.tool("pg_ctl"), "stop", "-m", "fast", "-w", "-D", pgdata]),
            check=True,
            capture_output=True,
        )
    return floors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args()
    wakes, pgdata, user, dsn = measure_wakes(args.cycles)
    floors = measure_floor(pgdata, user, args.cycles, dsn)
    figures = {
        "wake_p50_s": percentile(wakes, 0.5),
        "wake_p99_s": percentile(wakes, 0.99),
        "floor_p50_s": percentile(floors, 0.5),
        "ratio_p50": percentile(wakes, 0.5) / percentile(floors, 0.5),
    }
    report(
        "wake_latency",
        figures,
        {
            "cycles": args.cycles,
            "wake_min_s": round(min(wakes), 4),
            "wake_max_s": round(max(wakes), 4),
            "floor_min_s": round(min(floors), 4),
            "floor_max_s": round(max(floors), 4),
            "wakes_s": [round(w, 4) for w in wakes],
            "floors_s": [round(f, 4) for f in floors],
        },
    )


if __name__ == "__main__":
    main()
