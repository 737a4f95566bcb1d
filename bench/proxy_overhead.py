"""Endpoint overhead: pgbench -S through the database's endpoint against directly to Postgres's own port.

    .venv/bin/python bench/proxy_overhead.py [--clients 8] [--seconds 10] [--rounds 3] [--endpoints auto]

Both targets are measured in the same run, alternating, with the same client count; the figure for
each is the median over the rounds. `--endpoints userspace` measures the activator's user-space
relay instead of the in-kernel redirect an active database normally gets.
Last line: tps_endpoint tps_direct ratio (goal: ratio >= 0.9).
"""

from __future__ import annotations

import argparse

from common import database, median, pgbench, report, scratch_operator, tps

from controller.api import types
from controller.runtime.local.runtime import read_endpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--endpoints", choices=["auto", "userspace"], default="auto")
    args = parser.parse_args()
    operator = scratch_operator(tick=1.0)
    operator.start("--endpoints", args.endpoints)
    try:
        # A fixed size (2 CU), always on: the comparison is about the path, not the autoscaler.
        operator.apply(database("bench", capacity={"min": 2, "max": 2}, autoPause={"enabled": False}))
        operator.wait_phase("bench", types.Phase.ACTIVE)
        endpoint = read_endpoint(operator.state_dir, "default/bench")
        assert endpoint is not None
        endpoint_port = endpoint.port
        _, direct_dsn, _ = operator.sdb("dsn", "bench", "--direct")
        direct_port = int(direct_dsn.strip().rsplit(":", 1)[1].split("/")[0])
        pgbench(endpoint_port, endpoint, "-i", "-q", "-s", str(args.scale))
        run = [
            "-S",
            "-n",
            "-M",
            "prepared",
            "-c",
            str(args.clients),
            "-j",
            str(min(args.clients, 2)),
            "-T",
            str(args.seconds),
        ]
        endpoint_tps: list[float] = []
        direct_tps: list[float] = []
        for _ in range(args.rounds):
            endpoint_tps.append(tps(pgbench(endpoint_port, endpoint, *run)))
            direct_tps.append(tps(pgbench(direct_port, endpoint, *run)))
        routing = operator.log.read_text().split('"endpoints": "', 1)[1].split('"', 1)[0]
    finally:
        operator.stop()
    figures = {
        "tps_endpoint": median(endpoint_tps),
        "tps_direct": median(direct_tps),
        "ratio": median(endpoint_tps) / median(direct_tps),
    }
    report(
        "proxy_overhead" if args.endpoints == "auto" else "proxy_overhead_userspace",
        figures,
        {
            "endpoint_routing": routing,
            "clients": args.clients,
            "seconds_per_run": args.seconds,
            "rounds": args.rounds,
            "endpoint_tps": [round(t) for t in endpoint_tps],
            "direct_tps": [round(t) for t in direct_tps],
        },
    )


if __name__ == "__main__":
    main()
