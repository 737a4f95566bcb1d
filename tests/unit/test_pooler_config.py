"""PgBouncer's configuration as a function of spec and size, and its console's readings."""

from __future__ import annotations

from controller.api import codec, types
from controller.policy import sizing
from controller.postgres import pooler, roles

LAYOUT = pooler.Layout(
    listen_address="127.0.0.1",
    listen_port=6432,
    server_host="127.0.0.1",
    server_port=5433,
    auth_file="/state/pooler/users.txt",
    tls=pooler.Tls("/state/server.crt", "/state/server.key", "/state/ca.crt"),
)


def spec(**raw: object) -> types.DatabaseSpec:
    return codec.decode_spec({"pooling": {"enabled": True}, **raw})


def settings(ini: str) -> dict[str, str]:
    return dict(line.split(" = ", 1) for line in ini.splitlines() if " = " in line)


def test_the_pool_is_ninety_percent_of_what_the_size_allows_and_never_above_the_server() -> None:
    assert sizing.pool_size(spec(), 0.25) == int(sizing.connections_for(0.25) * 0.9)
    assert sizing.pool_size(spec(), 1.0) == int(sizing.connections_for(1.0) * 0.9)
    # A small ceiling caps max_connections; the pool stays below it, with the reserved slots free.
    ceiling = spec(capacity={"min": 0.25, "max": 0.25})
    server = sizing.connections_for(0.25)
    assert sizing.pool_size(ceiling, 4.0) <= server - sizing.RESERVED_CONNECTIONS


def test_the_file_points_at_the_endpoint_and_holds_no_secret() -> None:
    ini = pooler.render(spec(), 1.0, LAYOUT)
    values = settings(ini)
    assert values["app"] == "host=127.0.0.1 port=5433 dbname=app"
    assert values["auth_type"] == "scram-sha-256"
    assert values["pool_mode"] == "transaction"
    assert values["max_client_conn"] == "10000"
    assert values["default_pool_size"] == str(sizing.pool_size(spec(), 1.0))
    assert values["min_pool_size"] == "0"
    assert values["client_tls_sslmode"] == "allow"
    assert "postgres" not in values  # no superuser database without spec.superuserAccess
    assert "password" not in ini.lower()


def test_tls_required_and_superuser_access_show_in_the_file() -> None:
    values = settings(pooler.render(spec(tls={"required": True}, superuserAccess=True), 0.25, LAYOUT))
    assert values["client_tls_sslmode"] == "require"
    assert values["postgres"].endswith(f"pool_size={pooler.SUPERUSER_POOL_SIZE} max_db_connections=5")


def test_idle_server_connections_close_within_a_tenth_of_the_idle_time() -> None:
    assert pooler.server_idle_timeout(spec(autoPause={"idleAfter": "5m"})) == 30
    assert pooler.server_idle_timeout(spec(autoPause={"idleAfter": "2s"})) == 1
    assert pooler.server_idle_timeout(spec(autoPause={"idleAfter": "60s"})) == 6
    assert pooler.server_idle_timeout(spec(autoPause={"enabled": False})) == 600


def test_a_resize_alone_needs_no_reload_any_other_change_does() -> None:
    small = pooler.render(spec(), 0.25, LAYOUT)
    large = pooler.render(spec(), 2.0, LAYOUT)
    assert small != large
    assert not pooler.needs_reload(small, large)
    assert pooler.needs_reload(
        small, pooler.render(spec(pooling={"enabled": True, "mode": "session"}), 0.25, LAYOUT)
    )
    assert pooler.needs_reload("", small)


def test_the_auth_file_holds_the_roles_secrets_as_the_server_stores_them() -> None:
    verifier = roles.role_verifier("app password")
    text = pooler.auth_file(pooler.Secrets({roles.APP_ROLE: verifier}, "console password"))
    lines = text.splitlines()
    assert f'"{roles.APP_ROLE}" "{verifier}"' in lines
    assert any(line.startswith(f'"{pooler.ADMIN_USER}" "SCRAM-SHA-256$') for line in lines)
    assert "app password" not in text
    assert "console password" not in text
    # The same file for the same passwords: a pass that finds nothing new reloads nothing.
    assert text == pooler.auth_file(pooler.Secrets({roles.APP_ROLE: verifier}, "console password"))
    assert "console password" not in repr(pooler.Secrets({}, "console password"))


def test_the_role_verifier_is_the_same_wherever_it_is_computed_and_differs_per_password() -> None:
    assert roles.role_verifier("a") == roles.role_verifier("a")
    assert roles.role_verifier("a") != roles.role_verifier("b")
    assert roles.role_verifier("a").startswith("SCRAM-SHA-256$4096:")


def test_stats_sum_the_client_pools_and_leave_the_console_out() -> None:
    pools = [
        {"database": "app", "user": "app", "cl_active": 3, "cl_waiting": 2, "sv_active": 2, "sv_idle": 1,
         "sv_used": 1, "sv_tested": 0, "sv_login": 0, "maxwait": 1, "maxwait_us": 500_000},
        {"database": "pgbouncer", "user": "pgbouncer", "cl_active": 1, "cl_waiting": 0, "sv_active": 0,
         "sv_idle": 0, "sv_used": 0, "sv_tested": 0, "sv_login": 0, "maxwait": 0, "maxwait_us": 0},
    ]  # fmt: skip
    totals = [
        {"database": "app", "total_xact_count": 10, "total_query_count": 12, "total_xact_time": 2_000_000,
         "total_query_time": 1_000_000, "total_wait_time": 3_000_000},
        {"database": "pgbouncer", "total_xact_count": 5, "total_query_count": 5, "total_xact_time": 0,
         "total_query_time": 0, "total_wait_time": 0},
    ]  # fmt: skip
    stats = pooler.parse_stats(pools, totals)
    assert stats == pooler.Stats(
        clients_active=3,
        clients_waiting=2,
        servers_active=2,
        servers_idle=2,
        max_wait_seconds=1.5,
        transactions=10,
        queries=12,
        transaction_seconds=2.0,
        query_seconds=1.0,
        wait_seconds=3.0,
    )
