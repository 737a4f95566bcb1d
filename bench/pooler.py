"""The pooled endpoint: pgbench -S through PgBouncer against the database's endpoint, then crowds of
clients above max_connections.

    .venv/bin/python bench/pooler.py [--clients 8] [--seconds 10] [--rounds 3] [--crowd 1000] [--flood 10000]

One 0.25 CU database (max_connections 112 at that size), always on, spec.pooling in transaction
mode. Three parts:
  - throughput: pgbench -S -M extended, `--clients` clients, alternating pooled and direct, median
    over the rounds (extended, not prepared: PgBouncer 1.18 keeps no prepared statement in
    transaction mode; both paths are measured the same way, TLS as libpq's default `prefer` gives);
  - crowd: `--crowd` clients connect at once, each holding its connection until all have tried,
    then each runs a query: served and refused counts, pooled and direct;
  - flood: `--flood` clients held at once on the pooled endpoint, each answered while all are held.
Crowds connect without TLS (the client here is one Python process; the handshakes would measure it,
not the pooler) and at most `--connecting` at a time, as a listen backlog would allow.
Last line: tps_pooled tps_direct ratio (goal >= 0.8), crowd served/refused on each path (goal: every
pooled client served while direct refuses some), flood_served of flood_clients (goal: all).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

import psycopg
from common import database, median, pgbench, report, scratch_operator, tps

from controller.api import types
from controller.runtime.local.runtime import Endpoint, read_endpoint


@dataclass
class Crowd:
    served: int = 0
    refused: int = 0
    seconds: float = 0.0
    errors: dict[str, int] | None = None


async def crowd(port: int, endpoint: Endpoint, clients: int, connecting: int) -> Crowd:
    """`clients` connections held at once; once every one has tried, each connected one runs a query."""
    gate = asyncio.Semaphore(connecting)
    everyone_tried = asyncio.Event()
    tried = 0
    result = Crowd(errors={})
    assert result.errors is not None
    errors = result.errors

    async def client(index: int) -> None:
        nonlocal tried
        conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        try:
            async with gate:
                conn = await psycopg.AsyncConnection.connect(
                    host="127.0.0.1",
                    port=port,
                    user=endpoint.user,
                    password=endpoint.password,
                    dbname=endpoint.database,
                    sslmode="disable",
                    autocommit=True,
                    prepare_threshold=None,
                    connect_timeout=120,
                )
        except psycopg.Error as error:
            key = str(error).rsplit("FATAL:", 1)[-1].strip()[:80]
            errors[key] = errors.get(key, 0) + 1
        finally:
            tried += 1
            if tried == clients:
                everyone_tried.set()
        if conn is None:
            result.refused += 1
            return
        try:
            await everyone_tried.wait()
            cursor = await conn.execute("select %s::int", [index])
            if await cursor.fetchone() == (index,):
                result.served += 1
        except psycopg.Error as error:
            result.refused += 1
            key = str(error).rsplit("FATAL:", 1)[-1].strip()[:80]
            errors[key] = errors.get(key, 0) + 1
        finally:
            await conn.close()

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    result.seconds = time.monotonic() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--crowd", type=int, default=1000)
    parser.add_argument("--flood", type=int, default=10_000)
    parser.add_argument("--connecting", type=int, default=100)
    args = parser.parse_args()
    operator = scratch_operator(tick=1.0)
    operator.start()
    try:
        operator.apply(
            database(
                "bench",
                capacity={"min": 0.25, "max": 0.25},
                autoPause={"enabled": False},
                pooling={"enabled": True, "mode": "transaction", "maxClientConnections": args.flood},
            )
        )
        operator.wait_phase("bench", types.Phase.ACTIVE)
        endpoint = read_endpoint(operator.state_dir, "default/bench")
        pooled = read_endpoint(operator.state_dir, "default/bench", pooled=True)
        assert endpoint is not None
        assert pooled is not None
        pgbench(endpoint.port, endpoint, "-i", "-q", "-s", str(args.scale))
        run = ["-S", "-n", "-M", "extended", "-c", str(args.clients), "-j", "2", "-T", str(args.seconds)]
        pooled_tps: list[float] = []
        direct_tps: list[float] = []
        for _ in range(args.rounds):
            pooled_tps.append(tps(pgbench(pooled.port, endpoint, *run)))
            direct_tps.append(tps(pgbench(endpoint.port, endpoint, *run)))
        crowd_pooled = asyncio.run(crowd(pooled.port, endpoint, args.crowd, args.connecting))
        crowd_direct = asyncio.run(crowd(endpoint.port, endpoint, args.crowd, args.connecting))
        flood = asyncio.run(crowd(pooled.port, endpoint, args.flood, args.connecting))
    finally:
        operator.stop()
    figures = {
        "tps_pooled": median(pooled_tps),
        "tps_direct": median(direct_tps),
        "ratio": median(pooled_tps) / median(direct_tps),
        "crowd_clients": args.crowd,
        "crowd_pooled_served": crowd_pooled.served,
        "crowd_pooled_refused": crowd_pooled.refused,
        "crowd_direct_served": crowd_direct.served,
        "crowd_direct_refused": crowd_direct.refused,
        "flood_clients": args.flood,
        "flood_served": flood.served,
    }
    report(
        "pooler",
        figures,
        {
            "pgbench_clients": args.clients,
            "seconds_per_run": args.seconds,
            "rounds": args.rounds,
            "pooled_tps": [round(t) for t in pooled_tps],
            "direct_tps": [round(t) for t in direct_tps],
            "crowd_pooled_errors": crowd_pooled.errors,
            "crowd_direct_errors": crowd_direct.errors,
            "flood_errors": flood.errors,
            "flood_seconds": round(flood.seconds, 1),
        },
    )


if __name__ == "__main__":
    main()
