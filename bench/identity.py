"""Identity authentication: token-authenticated connects per second, and pgbench -S TPS through an
identity-authenticated connection against a password connection going direct to Postgres.

    .venv/bin/python bench/identity.py [--clients 8] [--seconds 10] [--rounds 3]

One warm database (2 CU, always on), an OIDC issuer whose RS256 key signs the tokens. Connects:
`pgbench -C -S` (a new connection, TLS handshake and token check for every transaction) through
the identity endpoint, against the same with a password straight to Postgres over TLS. Throughput:
`pgbench -S -M prepared` over kept connections, identity endpoint against direct, both over TLS
(the endpoint takes only TLS); direct in plaintext is printed too. Targets alternate within each
round; figures are medians over the rounds. Where the time goes: the CPU the operator process
(where the endpoint's relay runs) spends per transaction.
Over the gateway: `POST /sql` (`select 1`, what the driver sends, one kept HTTPS connection per
client) with a bearer token (the driver's `authToken`) against the same with the connection
string's password, in the same round.
Last line: connects_per_s, connects_vs_password (against password connects straight to Postgres over
TLS, which bound what any door can reach on the machine), tps_identity, tps_direct, ratio (goals:
>= 500 connects/s; ratio >= 0.8), http_token_rps, http_token_vs_password.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import psutil
from common import database, median, report, scratch_operator
from support.identity import ISSUER, SigningKey, write_jwks

from controller.api import types
from controller.identity.tokens import default_audience
from controller.runtime.local.runtime import CA_CERTIFICATE, read_endpoint

ROLE = "bench_reader"


def pgbench(port: int, user: str, password: str, ca: Path | None, *args: str) -> str:
    binary = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password
    if ca is None:
        env["PGSSLMODE"] = "disable"
    else:
        env.update(PGSSLMODE="verify-full", PGSSLROOTCERT=str(ca))
    result = subprocess.run(
        [binary, "-h", "127.0.0.1", "-p", str(port), "-U", user, *args, "app"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{result.stderr[-2000:]}")
    return result.stdout


def tps(output: str, *, with_connections: bool = False) -> float:
    which = "including" if with_connections else "without"
    match = re.search(rf"tps = ([0-9.]+) \({which} initial connection time\)", output)
    if match is None:
        match = re.search(r"tps = ([0-9.]+)", output)
    if match is None:
        raise RuntimeError(f"no tps in pgbench output:\n{output}")
    return float(match.group(1))


async def http_rps(endpoint: str, headers: dict[str, str], ca: Path, clients: int, seconds: float) -> float:
    """`POST /sql` round trips per second, `clients` at once, each on its kept HTTPS connection."""
    body = json.dumps({"query": "select 1", "params": []})
    trust = ssl.create_default_context(cafile=str(ca))
    headers = {"Neon-Raw-Text-Output": "true", "Neon-Array-Mode": "true", **headers}
    done = 0

    async def client(session: aiohttp.ClientSession, until: float) -> None:
        nonlocal done
        while time.perf_counter() < until:
            async with session.post(endpoint, data=body, headers=headers) as response:
                document = await response.json(content_type=None)
                if response.status != 200:
                    raise RuntimeError(f"/sql answered {response.status}: {document}")
            done += 1

    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) for _ in range(clients)]
    try:
        await asyncio.gather(*(client(s, time.perf_counter() + 1) for s in sessions))  # warm-up
        done = 0
        started = time.perf_counter()
        await asyncio.gather(*(client(s, started + seconds) for s in sessions))
        return done / (time.perf_counter() - started)
    finally:
        for session in sessions:
            await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=10)
    args = parser.parse_args()
    signer = SigningKey()
    operator = scratch_operator(tick=1.0)
    jwks = write_jwks(operator.state_dir.parent / "jwks.json", signer)
    operator.options = ("--oidc-issuer", ISSUER, "--oidc-jwks", str(jwks))
    operator.start()
    try:
        identities = [{"issuer": ISSUER, "subject": "bench", "role": ROLE}]
        operator.apply(
            database(
                "bench",
                capacity={"min": 2, "max": 2},
                autoPause={"enabled": False},
                superuserAccess=True,
                access={"identities": identities},
            )
        )
        operator.wait_phase("bench", types.Phase.ACTIVE)
        app = read_endpoint(operator.state_dir, "default/bench")
        superuser = read_endpoint(operator.state_dir, "default/bench", superuser=True)
        if app is None or superuser is None or app.identity_port is None:
            raise RuntimeError("the database has no endpoints")
        _, direct_dsn, _ = operator.sdb("dsn", "bench", "--direct")
        direct_port = int(direct_dsn.strip().rsplit(":", 1)[1].split("/")[0])
        ca = operator.state_dir / CA_CERTIFICATE
        pgbench(direct_port, app.user, app.password, ca, "-i", "-q", "-s", str(args.scale))
        subprocess.run(
            [
                "psql",
                f"postgresql://{superuser.user}:{superuser.password}@127.0.0.1:{direct_port}/app",
                "-c",
                f"CREATE ROLE {ROLE} LOGIN; GRANT CONNECT ON DATABASE app TO {ROLE}; "
                f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        token = signer.mint("bench", default_audience("default/bench"), lifetime=3600)
        identity_port = app.identity_port
        common = [
            "-S",
            "-n",
            "-c",
            str(args.clients),
            "-j",
            str(min(args.clients, 2)),
            "-T",
            str(args.seconds),
        ]
        kept = [*common, "-M", "prepared"]
        _, http, _ = operator.sdb("dsn", "bench", "--http", "--show-password")
        settings = dict(line.split(": ", 1) for line in http.splitlines())
        by_password = {"Neon-Connection-String": settings["connectionString"]}
        by_token = {
            "Neon-Connection-String": f"postgresql://{ROLE}@bench.default/app",
            "Authorization": f"Bearer {token}",
        }
        operator_process = psutil.Process(operator.process.pid if operator.process else 0)
        results: dict[str, list[float]] = {
            k: []
            for k in (
                "connects_identity",
                "connects_direct",
                "identity",
                "direct",
                "direct_plain",
                "http_token",
                "http_password",
            )
        }
        cpu_per_tx: list[float] = []
        for _ in range(args.rounds):
            results["connects_identity"].append(
                tps(pgbench(identity_port, ROLE, token, ca, "-C", *common), with_connections=True)
            )
            results["connects_direct"].append(
                tps(pgbench(direct_port, app.user, app.password, ca, "-C", *common), with_connections=True)
            )
            before = sum(operator_process.cpu_times()[:2])
            output = pgbench(identity_port, ROLE, token, ca, *kept)
            spent = sum(operator_process.cpu_times()[:2]) - before
            results["identity"].append(tps(output))
            processed = re.search(r"number of transactions actually processed: (\d+)", output)
            transactions = int(processed[1]) if processed else 0
            cpu_per_tx.append(spent / max(1, transactions) * 1e6)
            results["direct"].append(tps(pgbench(direct_port, app.user, app.password, ca, *kept)))
            results["direct_plain"].append(tps(pgbench(direct_port, app.user, app.password, None, *kept)))
            for name, headers in (("http_token", by_token), ("http_password", by_password)):
                load = http_rps(settings["fetchEndpoint"], headers, ca, args.clients, args.seconds)
                results[name].append(asyncio.run(load))
    finally:
        operator.stop()
    figures = {
        "connects_per_s": median(results["connects_identity"]),
        "connects_vs_password": median(results["connects_identity"]) / median(results["connects_direct"]),
        "tps_identity": median(results["identity"]),
        "tps_direct": median(results["direct"]),
        "ratio": median(results["identity"]) / median(results["direct"]),
        "http_token_rps": median(results["http_token"]),
        "http_token_vs_password": median(results["http_token"]) / median(results["http_password"]),
    }
    report(
        "identity",
        figures,
        {
            "clients": args.clients,
            "seconds_per_run": args.seconds,
            "rounds": args.rounds,
            "password_connects_per_s_direct_tls": round(median(results["connects_direct"])),
            "tps_direct_plaintext": round(median(results["direct_plain"])),
            "http_password_rps": round(median(results["http_password"])),
            "operator_cpu_us_per_identity_tx": round(median(cpu_per_tx), 1),
            **{f"{k}_per_round": [round(v) for v in values] for k, values in results.items()},
        },
    )


if __name__ == "__main__":
    main()
