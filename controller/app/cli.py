"""`sdb`: run the operator, and apply, inspect, pause, resume, park and delete databases.

Every command honours `--state-dir` and SDB_STATE_DIR (default: $XDG_DATA_HOME/sdb, or
~/.local/share/sdb). Commands other than `up` work whether or not an operator is running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from controller.api import codec, manifests, types, units
from controller.api.validation import InvalidSpecError
from controller.app import logs
from controller.policy import metering
from controller.policy.inputs import DEFAULT_TUNING
from controller.runtime.local.store import FileStore


def default_state_dir() -> Path:
    env = os.environ.get("SDB_STATE_DIR")
    if env:
        return Path(env)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "sdb"


class CliError(Exception):
    """A user-facing failure: printed without a traceback, exit status 1."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        result: int = args.func(args)
        return result
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except InvalidSpecError as error:
        print("error: the ServerlessDatabase is invalid:", file=sys.stderr)
        for problem in error.errors:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir", type=Path, default=None, help="where databases live (default: %(default)s)"
    )
    common.add_argument("-n", "--namespace", default="default", help="the namespace (default: %(default)s)")

    parser = argparse.ArgumentParser(
        prog="sdb", description="Serverless Postgres: the operator and its tools."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _operator_commands(sub, common)
    _database_commands(sub, common)
    return parser


Subparsers = argparse._SubParsersAction  # argparse's own name for what add_subparsers returns


def _operator_commands(sub: Subparsers[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    up = sub.add_parser("up", parents=[common], help="run the operator in the foreground")
    up.add_argument("--runtime", choices=["local", "kubernetes"], default="local")
    up.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics here (default: 9465, or a free port if that is taken); 0: any; -1: none",
    )
    up.add_argument("--metrics-address", default="127.0.0.1")
    _gateway_flags(up, port="9443, or a free port if that is taken", address="127.0.0.1")
    up.add_argument(
        "--wake-timeout", type=float, default=30.0, help="seconds a held connection waits for a wake"
    )
    _oidc_flags(up)
    up.add_argument(
        "--tick",
        type=float,
        default=DEFAULT_TUNING.tick.total_seconds(),
        help="seconds between readings of a running database (default: %(default)s)",
    )
    up.add_argument(
        "--catalog-resync",
        type=float,
        default=DEFAULT_TUNING.catalog_resync.total_seconds(),
        help="seconds between passes over a running database's declared roles and databases, which "
        "revert drift (default: %(default)s)",
    )
    up.add_argument(
        "--endpoints",
        choices=["auto", "userspace"],
        default="auto",
        help="auto: redirect active databases' endpoints in the kernel where nftables allows; "
        "userspace: always relay through the activator",
    )
    cluster = up.add_argument_group("kubernetes runtime")
    cluster.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hold a Lease so only one replica acts (default: on)",
    )
    cluster.add_argument("--lease-name", default="serverless-db-operator")
    cluster.add_argument("--lease-namespace", default="", help="default: $POD_NAMESPACE")
    cluster.add_argument("--watch-namespace", default="", help="only this namespace (default: all)")
    cluster.add_argument(
        "--activator-service",
        default="serverless-db-operator-activator",
        help="the Service whose EndpointSlices list the activator's pods",
    )
    cluster.add_argument("--prometheus-url", default="", help="read CPU and memory from this Prometheus")
    cluster.add_argument(
        "--gateway-endpoint",
        default="",
        metavar="URL",
        help="the activator gateway's /sql URL, which each database's status.httpEndpoint tells",
    )
    cluster.add_argument(
        "--cert-manager-issuer",
        type=_issuer,
        default=None,
        metavar="KIND/NAME",
        help="servers' certificates from cert-manager (Issuer/NAME or ClusterIssuer/NAME); "
        "default: the operator's own CA",
    )
    cluster.add_argument(
        "--pooler-image",
        default=None,
        metavar="IMAGE",
        help="the PgBouncer image (1.21 or later) of pooled endpoints (default: the pinned "
        "CloudNativePG image)",
    )
    cluster.add_argument(
        "--kube-qps",
        type=float,
        default=50.0,
        help="API requests a second, on average (default: %(default)s); 0 or less: no client-side limit",
    )
    cluster.add_argument(
        "--kube-burst", type=int, default=100, help="API requests at once (default: %(default)s)"
    )
    cluster.add_argument(
        "--health-port", type=int, default=None, help="/healthz and /readyz (default: 8081); -1 to disable"
    )
    _logging_flags(up)
    up.set_defaults(func=_cmd_up)

    activator = sub.add_parser("activator", help="run the activator (its own Deployment in a cluster)")
    activator.add_argument("--metrics-port", type=int, default=None, help="default: 9466; -1 to disable")
    activator.add_argument("--metrics-address", default="0.0.0.0")
    _gateway_flags(activator, port="none", address="0.0.0.0")
    activator.add_argument(
        "--gateway-certificate",
        type=Path,
        help="the gateway's TLS certificate (PEM, from the operator's CA), with --gateway-key",
    )
    activator.add_argument("--gateway-key", type=Path, help="the key of --gateway-certificate (PEM)")
    activator.add_argument(
        "--gateway-ca",
        type=Path,
        help="the CA the gateway checks databases' certificates against (PEM, the operator's CA)",
    )
    activator.add_argument(
        "--gateway-client-certificate",
        type=Path,
        help="the client certificate (PEM, from the operator's CA) the gateway logs in to Postgres with "
        "for a token's role, with --gateway-client-key; without it tokens are not taken",
    )
    activator.add_argument("--gateway-client-key", type=Path, help="the key of --gateway-client-certificate")
    _oidc_flags(activator)
    activator.add_argument("--health-port", type=int, default=None, help="default: 8082; -1 to disable")
    activator.add_argument("--wake-timeout", type=float, default=30.0)
    activator.add_argument("--port-range", default="20000-29999", help="the per-database ports (low-high)")
    activator.add_argument("--watch-namespace", default="")
    _logging_flags(activator)
    activator.set_defaults(func=_cmd_activator)

    render = sub.add_parser("render", help="print the Kubernetes objects the runtime keeps for a database")
    render.add_argument("-f", "--filename", required=True)
    render.add_argument("--phase", choices=["Active", "Paused", "Parked"], default="Active")
    render.set_defaults(func=_cmd_render)


def _database_commands(sub: Subparsers[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    apply = sub.add_parser(
        "apply", parents=[common], help="validate and store ServerlessDatabases from a file"
    )
    apply.add_argument("-f", "--filename", required=True, help="a YAML file (one or more documents), or -")
    apply.set_defaults(func=_cmd_apply)

    get = sub.add_parser("get", parents=[common], help="list databases, or show one")
    get.add_argument("name", nargs="?")
    get.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml"], default="table")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.set_defaults(func=_cmd_get)

    describe = sub.add_parser("describe", parents=[common], help="spec, status, conditions and recent events")
    describe.add_argument("name")
    describe.set_defaults(func=_cmd_describe)

    dsn = sub.add_parser("dsn", parents=[common], help="a libpq URI for the database's endpoint")
    dsn.add_argument("name")
    dsn.add_argument("--direct", action="store_true", help="Postgres's own port, bypassing the endpoint")
    dsn.add_argument(
        "--pooled", action="store_true", help="the pooled endpoint (PgBouncer, with spec.pooling.enabled)"
    )
    dsn.add_argument(
        "--show-password",
        action="store_true",
        help="the password in the URI itself (for drivers configured by a string), not in the passfile",
    )
    dsn.add_argument(
        "--superuser", action="store_true", help="the clients' superuser (only with spec.superuserAccess)"
    )
    dsn.add_argument(
        "--verify",
        action="store_true",
        help="TLS with the server's certificate checked against the operator's CA (sslmode=verify-full)",
    )
    driver = dsn.add_mutually_exclusive_group()
    driver.add_argument(
        "--http",
        action="store_true",
        help="for @neondatabase/serverless over HTTP: its fetchEndpoint and connection string",
    )
    driver.add_argument(
        "--ws",
        action="store_true",
        help="for @neondatabase/serverless's Pool and Client: its wsProxy and connection string",
    )
    dsn.add_argument(
        "--identity",
        metavar="ROLE",
        default=None,
        help="the identity endpoint, as ROLE: a token is the password (PGPASSWORD), over verified TLS",
    )
    dsn.set_defaults(func=_cmd_dsn)

    delete = sub.add_parser(
        "delete", parents=[common], help="delete a database (its storage is kept by default)"
    )
    delete.add_argument("name")
    delete.add_argument("--timeout", type=float, default=120.0)
    delete.set_defaults(func=_cmd_delete)

    for verb, help_text in (
        ("pause", "pause now and keep it paused (spec.state: Paused)"),
        ("park", "park now and keep it parked (spec.state: Parked)"),
        ("resume", "wake it and return to the automatic lifecycle (spec.state: Auto)"),
    ):
        command = sub.add_parser(verb, parents=[common], help=help_text)
        command.add_argument("name")
        if verb == "resume":
            command.add_argument(
                "--pin", action="store_true", help="keep it active, never auto-pause (Active)"
            )
        command.set_defaults(func=_cmd_state, verb=verb)


def _issuer(text: str) -> Any:
    from controller.runtime.kubernetes.builders import IssuerRef

    try:
        return IssuerRef.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _oidc_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--oidc-issuer",
        default=None,
        help="an OIDC issuer (its tokens' iss) whose tokens are taken as passwords",
    )
    parser.add_argument(
        "--oidc-jwks", type=Path, default=None, help="the issuer's keys, a JWKS file (with --oidc-issuer)"
    )


def _gateway_flags(parser: argparse.ArgumentParser, *, port: str, address: str) -> None:
    gateway = parser.add_argument_group(
        "SQL over HTTP and Postgres over WebSocket (@neondatabase/serverless), on one port"
    )
    gateway.add_argument(
        "--gateway-port",
        type=int,
        default=None if port != "none" else -1,
        help=f"serve /sql and WebSockets here (default: {port}); 0: any free port; -1: none",
    )
    gateway.add_argument("--gateway-address", default=address, help="(default: %(default)s)")
    gateway.add_argument(
        "--gateway-plaintext",
        action="store_true",
        help="plain HTTP and ws:// instead of HTTPS and wss://, on a loopback address only (every "
        "request carries its password)",
    )


def _logging_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")


def _configure_logs(args: argparse.Namespace) -> None:
    logs.configure(
        level=args.log_level, json=None if args.log_format == "auto" else args.log_format == "json"
    )


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else default_state_dir()


def _store(args: argparse.Namespace) -> FileStore:
    return FileStore(_state_dir(args))


def _key(args: argparse.Namespace) -> str:
    return f"{args.namespace}/{args.name}"


def _require(store: FileStore, key: str) -> types.ServerlessDatabase:
    db = store.read(key)
    if db is None:
        raise CliError(f'serverlessdatabase "{key}" not found')
    return db


# -- up -------------------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    _configure_logs(args)
    from controller.app import local, process
    from controller.gateway import server
    from controller.policy.inputs import Tuning

    try:
        if args.runtime == "kubernetes":
            from controller.app import cluster

            return cluster.run(args)

        state_dir = _state_dir(args)
        tuning = Tuning(
            tick=timedelta(seconds=args.tick), catalog_resync=timedelta(seconds=args.catalog_resync)
        )
        issuers = _issuers(args)
        with local.exclusive(state_dir):
            built = local.build(
                state_dir,
                wake_timeout=args.wake_timeout,
                tuning=tuning,
                kernel_redirect=args.endpoints == "auto",
                issuers=issuers,
            )
            local.run(built, args)
    except (local.AlreadyRunningError, process.PortInUseError, server.PlaintextError) as error:
        raise CliError(str(error)) from error
    return 0


def _issuers(args: argparse.Namespace) -> list[Any]:
    """The OIDC issuer of `--oidc-issuer` and `--oidc-jwks`, its keys read and checked now."""
    import jwt

    from controller.identity import tokens

    if (args.oidc_issuer is None) != (args.oidc_jwks is None):
        raise CliError("--oidc-issuer and --oidc-jwks go together")
    if args.oidc_issuer is None:
        return []
    try:
        document = json.loads(args.oidc_jwks.read_text())
        jwt.PyJWKSet.from_dict(document)
    except (OSError, ValueError, jwt.PyJWTError) as error:
        raise CliError(f"--oidc-jwks {args.oidc_jwks}: not a JWKS file ({error})") from error
    return [tokens.Issuer(args.oidc_issuer, document)]


def _cmd_activator(args: argparse.Namespace) -> int:
    from controller.app import activator, process
    from controller.gateway import server

    low, _, high = args.port_range.partition("-")
    try:
        port_range = (int(low), int(high))
    except ValueError as error:
        raise CliError(f"--port-range must be LOW-HIGH (got {args.port_range!r})") from error
    if (args.gateway_client_certificate is None) != (args.gateway_client_key is None):
        raise CliError("--gateway-client-certificate and --gateway-client-key go together")
    issuers = _issuers(args)
    _configure_logs(args)  # once the flags are known good: a bad one is a CLI error, not a log line
    try:
        return activator.run(args, port_range, issuers)
    except (process.PortInUseError, server.PlaintextError) as error:
        raise CliError(str(error)) from error


def _cmd_render(args: argparse.Namespace) -> int:
    from controller.runtime.kubernetes import render

    documents = _documents(args.filename)
    out = []
    for document in documents:
        db = codec.decode(document)
        out += render.objects(db, types.Phase(args.phase))
    print(yaml.safe_dump_all(out, sort_keys=False), end="")
    return 0


# -- apply ----------------------------------------------------------------------------------------


def _cmd_apply(args: argparse.Namespace) -> int:
    documents = _documents(args.filename)
    if not documents:
        raise CliError(f"{args.filename} holds no objects")
    store = _store(args)
    failed = False
    for document in documents:
        if isinstance(document, dict):
            document.setdefault("metadata", {})
            if isinstance(document["metadata"], dict):
                document["metadata"].setdefault("namespace", args.namespace)
        try:
            db, result = store.apply(document)
        except InvalidSpecError as error:
            failed = True
            name = _document_name(document)
            print(f"error: serverlessdatabase {name} is invalid:", file=sys.stderr)
            for problem in error.errors:
                print(f"  {problem}", file=sys.stderr)
            continue
        print(f"serverlessdatabase.{types.GROUP}/{db.metadata.name} {result}")
    return 1 if failed else 0


def _documents(filename: str) -> list[Any]:
    """The manifest's documents: a file (or - for stdin) read within the manifest limits."""
    try:
        if filename == "-":
            text = sys.stdin.read(manifests.MAX_BYTES + 1)
        else:
            with open(filename) as source:
                text = source.read(manifests.MAX_BYTES + 1)
    except OSError as error:
        raise CliError(f"cannot read {filename}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise CliError(f"{filename} is not UTF-8 text ({error.reason})") from error
    try:
        return manifests.load_all(text, source=filename)
    except manifests.ManifestError as error:
        raise CliError(str(error)) from error


def _document_name(document: Any) -> str:
    if isinstance(document, dict) and isinstance(document.get("metadata"), dict):
        return f'"{document["metadata"].get("name", "?")}"'
    return "(unnamed)"


# -- get / describe -------------------------------------------------------------------------------


def _cmd_get(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.name:
        dbs = [_require(store, _key(args))]
    else:
        dbs = store.read_all(None if args.all_namespaces else args.namespace)
    if args.output in ("json", "yaml"):
        items = [codec.encode(db) for db in dbs]
        doc: Any = items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}
        if args.output == "json":
            print(json.dumps(doc, indent=2))
        else:
            print(yaml.safe_dump(doc, sort_keys=False), end="")
        return 0
    if not dbs:
        where = "any namespace" if args.all_namespaces else f"{args.namespace} namespace"
        print(f"No resources found in {where}.", file=sys.stderr)
        return 0
    rows = [_row(db, wide=args.output == "wide", namespace=args.all_namespaces) for db in dbs]
    header = ["NAME", "PHASE", "CAPACITY", "MIN", "MAX", "CONNECTIONS", "AGE"]
    if args.output == "wide":
        header += ["DESIRED", "READY", "ENDPOINT", "LAST-ACTIVITY", "CU-HOURS", "PERIOD"]
    if args.all_namespaces:
        header = ["NAMESPACE", *header]
    _table([header, *rows])
    return 0


def _row(db: types.ServerlessDatabase, *, wide: bool, namespace: bool) -> list[str]:
    status = db.status
    row = [
        db.metadata.name,
        status.phase.value,
        _cu(status.capacity.current),
        _cu(db.spec.capacity.min),
        _cu(db.spec.capacity.max),
        str(status.connections),
        _age(db.metadata.creation_timestamp),
    ]
    if wide:
        ready = status.condition(types.ConditionType.READY)
        usage = metering.live(status, units.now_utc())  # status is written on changes, not on a timer
        row += [
            _cu(status.capacity.desired),
            ready.status.value if ready else "Unknown",
            status.endpoint or "<none>",
            _age(status.last_activity_time) + " ago" if status.last_activity_time else "<none>",
            f"{usage.period.compute_unit_hours:.3f}" if usage else "<none>",
            usage.period.start.strftime("%Y-%m") if usage else "<none>",
        ]
    return [db.metadata.namespace, *row] if namespace else row


def _cu(value: float | None) -> str:
    return "0" if value is None else f"{value:g}"


def _age(when: datetime | None) -> str:
    if when is None:
        return "<unknown>"
    seconds = int((units.now_utc() - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _usage(status: types.DatabaseStatus) -> str:
    """The usage as of now: status's, carried from its accountedUntil at the capacity it records."""
    usage = metering.live(status, units.now_utc())
    if usage is None:
        return "<none>"
    month = f"{usage.period.compute_unit_hours:.3f} CU-hours in {usage.period.start:%Y-%m}"
    before = usage.previous_period
    if before is not None:
        month += f" ({before.compute_unit_hours:.3f} in {before.start:%Y-%m})"
    return f"{month}, {usage.total.compute_unit_hours:.3f} since {_when(usage.total.start)}"


def _cmd_describe(args: argparse.Namespace) -> int:
    store = _store(args)
    db = _require(store, _key(args))
    status = db.status
    print(f"Name:         {db.metadata.name}")
    print(f"Namespace:    {db.metadata.namespace}")
    print(f"API Version:  {types.API_VERSION}")
    print(f"Kind:         {types.KIND}")
    print(f"Created:      {_when(db.metadata.creation_timestamp)}")
    print(f"Generation:   {db.metadata.generation} (observed {status.observed_generation})")
    print("Spec:")
    print(_indent(yaml.safe_dump(codec.encode_spec(db.spec), sort_keys=False), 2))
    print("Status:")
    print(f"  Phase:            {status.phase.value} (since {_when(status.phase_since)})")
    print(f"  Capacity:         {_cu(status.capacity.current)} CU (desired {_cu(status.capacity.desired)})")
    print(f"  Connections:      {status.connections}")
    print(f"  Endpoint:         {status.endpoint or '<none>'}")
    print(f"  Last Activity:    {_when(status.last_activity_time)}")
    print(f"  Usage:            {_usage(status)}")
    print("Conditions:")
    _table(
        [["  TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]]
        + [
            ["  " + c.type.value, c.status.value, c.reason, _age(c.last_transition_time), c.message or "-"]
            for c in status.conditions
        ]
    )
    declared = [("role", o) for o in status.roles] + [("database", o) for o in status.databases]
    if declared:
        print("Declared:")
        _table(
            [["  KIND", "NAME", "STATE", "ERROR"]]
            + [["  " + kind, o.name, o.state.value, o.error or "-"] for kind, o in declared]
        )
    events = store.events(db.key)
    print("Events:")
    if not events:
        print("  <none>")
        return 0
    _table(
        [["  TYPE", "REASON", "AGE", "FROM", "MESSAGE"]]
        + [
            [
                "  " + e.type.value,
                e.reason,
                _age(e.last_time) + (f" (x{e.count} over {_age(e.first_time)})" if e.count > 1 else ""),
                "sdb-operator",
                e.message,
            ]
            for e in events[-20:]
        ]
    )
    return 0


def _when(value: datetime | None) -> str:
    return f"{units.format_time(value)} ({_age(value)} ago)" if value else "<none>"


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.rstrip().splitlines())


# -- dsn ------------------------------------------------------------------------------------------


def _cmd_dsn(args: argparse.Namespace) -> int:
    """A libpq URI for the application role; its password stays in a 0600 passfile the CLI keeps, so
    the URI can be on a command line without showing it to every user of the host."""
    from urllib.parse import quote

    from controller.runtime.local import runtime

    store = _store(args)
    db = _require(store, _key(args))
    if args.superuser and not db.spec.superuser_access:
        raise CliError(
            f"superuser access is off for {db.key}: clients get the application role; "
            "set spec.superuserAccess: true to have a superuser as well"
        )
    if args.pooled and (args.direct or args.http or args.ws):
        raise CliError("--pooled is an endpoint of its own: not with --direct, --http or --ws")
    if args.pooled and not db.spec.pooling.enabled:
        raise CliError(f"{db.key} has no pooled endpoint: set spec.pooling.enabled: true to have one")
    endpoint = runtime.read_endpoint(_state_dir(args), db.key, superuser=args.superuser, pooled=args.pooled)
    if endpoint is None:
        which = "pooled endpoint" if args.pooled else "endpoint"
        raise CliError(f"{db.key} has no {which} yet (phase {db.status.phase.value}); is `sdb up` running?")
    if args.http or args.ws:
        return _driver_settings(args, db, endpoint)
    if args.identity is not None:
        return _identity_dsn(args, endpoint, args.identity)
    port = endpoint.port
    if args.direct:
        direct = runtime.read_direct_port(_state_dir(args), db.key)
        if direct is None:
            raise CliError(f"{db.key} is not running, so it has no direct port")
        port = direct
    where = f"{runtime.HOST}:{port}/{endpoint.database}"
    options = []
    if args.verify:
        ca = _state_dir(args) / runtime.CA_CERTIFICATE
        options += ["sslmode=verify-full", f"sslrootcert={quote(str(ca), safe='/')}"]
    if args.show_password:
        user = f"{endpoint.user}:{quote(endpoint.password, safe='')}"
    else:
        user = endpoint.user
        passfile = runtime.remember_password(_state_dir(args), port=port, endpoint=endpoint)
        options.append(f"passfile={quote(str(passfile), safe='/')}")
    print(f"postgresql://{user}@{where}" + (f"?{'&'.join(options)}" if options else ""))
    return 0


def _driver_settings(args: argparse.Namespace, db: types.ServerlessDatabase, endpoint: Any) -> int:
    """What `@neondatabase/serverless` is configured with to reach this database through the gateway,
    one `name: value` line each, named as the driver names them."""
    from urllib.parse import quote

    from controller.app import local
    from controller.runtime.local import runtime

    gateway = local.read_gateway(_state_dir(args))
    if gateway is None:
        raise CliError("no gateway is serving: is `sdb up` running (without --gateway-port -1)?")
    secret = f":{quote(endpoint.password, safe='')}" if args.show_password else ""
    host = f"{db.metadata.name}.{db.metadata.namespace}"
    if args.http:
        print(f"fetchEndpoint: {gateway.url('http', '/sql')}")
    else:
        print(f"wsProxy: {gateway.host}:{gateway.port}/v2")
        print(f"useSecureWebSocket: {str(gateway.tls).lower()}")
        print("pipelineConnect: false")
    user = quote(endpoint.user, safe="")
    print(f"connectionString: postgresql://{user}{secret}@{host}/{endpoint.database}")
    if gateway.tls:  # Node trusts it when started with NODE_EXTRA_CA_CERTS set to this file
        print(f"caCertificate: {_state_dir(args) / runtime.CA_CERTIFICATE}")
    if not args.show_password:
        print("the driver needs the password in the connection string: add --show-password", file=sys.stderr)
    return 0


def _identity_dsn(args: argparse.Namespace, endpoint: Any, role: str) -> int:
    from urllib.parse import quote

    from controller.runtime.local import runtime

    if endpoint.identity_port is None:
        raise CliError("the database has no identity endpoint yet; is `sdb up` running?")
    ca = quote(str(_state_dir(args) / runtime.CA_CERTIFICATE), safe="/")
    where = f"{runtime.HOST}:{endpoint.identity_port}/{endpoint.database}"
    print(f"postgresql://{quote(role, safe='')}@{where}?sslmode=verify-full&sslrootcert={ca}")
    return 0


# -- state changes and delete ---------------------------------------------------------------------


def _cmd_state(args: argparse.Namespace) -> int:
    store = _store(args)
    key = _key(args)
    _require(store, key)
    state = {
        "pause": types.State.PAUSED,
        "park": types.State.PARKED,
        "resume": types.State.ACTIVE if getattr(args, "pin", False) else types.State.AUTO,
    }[args.verb]
    store.set_state(key, state)
    if args.verb == "resume":
        asyncio.run(store.request_wake(key))
    print(f"serverlessdatabase.{types.GROUP}/{args.name} {args.verb}d (spec.state: {state.value})")
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    from controller.app import local

    store = _store(args)
    key = _key(args)
    db = _require(store, key)
    store.mark_deleted(key)
    keep = db.spec.storage.retain_on_delete
    if local.running(_state_dir(args)):
        deadline = time.monotonic() + args.timeout
        while store.read(key) is not None:
            if time.monotonic() > deadline:
                raise CliError(
                    f"{key} is marked for deletion; the operator has not finished after {args.timeout:g}s"
                )
            time.sleep(0.1)
    else:
        asyncio.run(local.delete_offline(_state_dir(args), db, keep_storage=keep))
        store.remove(key)
    kept = " (storage kept; delete it with retainOnDelete: false)" if keep else " (storage deleted)"
    print(f'serverlessdatabase.{types.GROUP} "{args.name}" deleted{kept}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
