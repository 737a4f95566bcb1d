"""SQL over HTTP against the wire: `select 1` round trips through the gateway's `/sql` (HTTPS, with
keep-alive) and on a wire connection held open to the same database's endpoint (TLS, verify-full).

    .venv/bin/python bench/http_sql.py [--requests 2000] [--clients 16] [--seconds 5] [--rounds 3]

Latency: one client, one request after the other, `--requests` of each (after a warm-up), p50 and
p99 per round. Throughput: `--clients` clients at once for `--seconds`, each on its own keep-alive
HTTP connection or its own wire connection. Each round measures both, alternating; the figures are
medians over the rounds. Clients and the operator share the machine's cores.
Last line: p50_http_ms p50_wire_ms added_p50_ms rps_http rps_wire ratio
(goals: added_p50_ms <= 1, ratio >= 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable

import aiohttp
import psycopg
from common import database, median, percentile, report, scratch_operator

from controller.api import types

QUERY = "select 1"
WARM_UP = 200


def _settings(out: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in out.splitlines())


class Http:
    """A client as @neondatabase/serverless's HTTP mode is: POST /sql, the same headers and body."""

    def __init__(self, endpoint: str, connection_string: str, trust: ssl.SSLContext) -> None:
        self.endpoint = endpoint
        self.headers = {
            "Neon-Connection-String": connection_string,
            "Neon-Raw-Text-Output": "true",
            "Neon-Array-Mode": "true",
            "Content-Type": "text/plain;charset=UTF-8",
        }
        self.body = json.dumps({"query": QUERY, "params": []})
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust, limit=0))

    async def query(self) -> None:
        async with self.session.post(self.endpoint, data=self.body, headers=self.headers) as response:
            document = await response.json(content_type=None)
            if response.status != 200 or document["rows"] != [["1"]]:
                raise RuntimeError(f"/sql answered {response.status}: {document}")

    async def close(self) -> None:
        await self.session.close()


async def latencies(query: Callable[[], Awaitable[None]], count: int) -> list[float]:
    for _ in range(WARM_UP):
        await query()
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        await query()
        seconds.append(time.perf_counter() - started)
    return seconds


async def throughput(queries: list[Callable[[], Awaitable[None]]], seconds: float) -> float:
    """Round trips per second with every client busy for `seconds`."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(query: Callable[[], Awaitable[None]]) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await query()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(q) for q in queries))
    return done / (time.perf_counter() - started)


async def measure(args: argparse.Namespace, http: dict[str, str], wire_dsn: str) -> dict[str, list[float]]:
    trust = ssl.create_default_context(cafile=http["caCertificate"])
    figures: dict[str, list[float]] = {
        k: [] for k in ("http50", "http99", "wire50", "wire99", "rps_http", "rps_wire")
    }
    one = Http(http["fetchEndpoint"], http["connectionString"], trust)
    wire = await psycopg.AsyncConnection.connect(wire_dsn, autocommit=True)
    many = [Http(http["fetchEndpoint"], http["connectionString"], trust) for _ in range(args.clients)]
    wires = [await psycopg.AsyncConnection.connect(wire_dsn, autocommit=True) for _ in range(args.clients)]

    def on(connection: psycopg.AsyncConnection[tuple[object, ...]]) -> Callable[[], Awaitable[None]]:
        async def query() -> None:
            await connection.execute(QUERY)

        return query

    try:
        for _ in range(args.rounds):
            seconds = await latencies(one.query, args.requests)
            figures["http50"].append(percentile(seconds, 0.5) * 1000)
            figures["http99"].append(percentile(seconds, 0.99) * 1000)
            seconds = await latencies(on(wire), args.requests)
            figures["wire50"].append(percentile(seconds, 0.5) * 1000)
            figures["wire99"].append(percentile(seconds, 0.99) * 1000)
            figures["rps_http"].append(await throughput([c.query for c in many], args.seconds))
            figures["rps_wire"].append(await throughput([on(c) for c in wires], args.seconds))
    finally:
        for client in [one, *many]:
            await client.close()
        for connection in [wire, *wires]:
            await connection.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    operator = scratch_operator(tick=1.0)
    operator.start()
    try:
        # A fixed size (2 CU), always on: the comparison is about the path, not the autoscaler.
        operator.apply(database("bench", capacity={"min": 2, "max": 2}, autoPause={"enabled": False}))
        operator.wait_phase("bench", types.Phase.ACTIVE)
        http = _settings(operator.sdb("dsn", "bench", "--http", "--show-password")[1])
        wire_dsn = operator.sdb("dsn", "bench", "--verify", "--show-password")[1].strip()
        figures = asyncio.run(measure(args, http, wire_dsn))
    finally:
        operator.stop()
    p50_http, p50_wire = median(figures["http50"]), median(figures["wire50"])
    rps_http, rps_wire = median(figures["rps_http"]), median(figures["rps_wire"])
    report(
        "http_sql",
        {
            "p50_http_ms": p50_http,
            "p50_wire_ms": p50_wire,
            "added_p50_ms": p50_http - p50_wire,
            "rps_http": rps_http,
            "rps_wire": rps_wire,
            "ratio": rps_http / rps_wire,
        },
        {
            "clients": args.clients,
            "requests_per_round": args.requests,
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "p99_http_ms": round(median(figures["http99"]), 3),
            "p99_wire_ms": round(median(figures["wire99"]), 3),
            **{name: [round(v, 3) for v in values] for name, values in figures.items()},
        },
    )


if __name__ == "__main__":
    main()
