"""ServiceAccount tokens at the cluster's gateway, end to end against the API double and a real
Postgres with TLS: the operator issues the gateway's client certificate and keeps the pod's
pg_ident map and the identity role's members as the spec's identities say; `sdb activator`'s
identity endpoint checks a bearer token by a TokenReview and logs in to Postgres as the bound role
with that certificate. The server stands in for the database's pod: its pg_hba starts as a pod's
(members of the identity role by certificate only, then everyone trusted from loopback)."""

from __future__ import annotations

import asyncio
import base64
import ssl
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from kubeapi import KubeApiDouble
from kubernetes import client
from support.cluster import (
    SYSTEM,
    Running,
    activator_slice,
    client_pod,
    create,
    eventually,
    operator,
    phase,
    post_sql,
    reading,
    service_account_token,
)
from support.identity import ISSUER, SigningKey, identity_members, jwks
from support.postgres import Server, Tls, running_server

from controller import pki
from controller.activator import protocol
from controller.activator.proxy import Upstream
from controller.api import types
from controller.app.activator import ClusterBackend, GatewayBackend, identity_logins
from controller.gateway import request
from controller.gateway.reach import PostgresTls
from controller.gateway.server import Gateway, listen, tls_context
from controller.identity.tokens import Issuer, Reason, default_audience, refusal_message
from controller.postgres import identities
from controller.runtime.kubernetes import builders, permissions
from controller.runtime.kubernetes import client as kc

pytestmark = pytest.mark.kubernetes

KEY = "shop/orders"
AUDIENCE = default_audience(KEY)
ROLE = "k8s_reader"
DATABASE = "k8s_orders"
AUTHORITY = pki.new_authority("serverless-db sdb-system", now=datetime.now(UTC))
"""The operator's CA, made before the operator starts (it takes the Secret it finds), so the server
standing in for the pod can have a certificate from it."""
SERVICE = "activator"
SIGNER = SigningKey()


@pytest.fixture
def pod() -> Iterator[Server]:
    leaf = pki.issue(AUTHORITY, common_name="127.0.0.1", names=["127.0.0.1"], now=datetime.now(UTC))
    with running_server(
        any_password=True, tls=Tls(leaf.certificate, leaf.key, AUTHORITY.certificate)
    ) as server:
        yield server


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def prepare(kube: KubeApiDouble) -> None:
    kube.create(activator_slice())
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": builders.CA_NAME, "namespace": SYSTEM},
            "data": {"tls.crt": _b64(AUTHORITY.certificate), "tls.key": _b64(AUTHORITY.key)},
        }
    )
    for name in ("api", "web"):
        kube.create(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": "shop"}}
        )


def secret_files(kube: KubeApiDouble, name: str, directory: Path) -> dict[str, Path]:
    """A kubernetes.io/tls Secret written out, as the chart mounts it."""
    found = kube.get("secrets", name, SYSTEM)
    assert found is not None
    directory.mkdir()
    out = {}
    for key, value in found["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))
        out[key] = directory / key
    return out


@dataclass
class Door:
    gateway: Gateway
    backend: ClusterBackend
    peer: str
    """The address of a client pod in the database's namespace."""
    operator: Running

    async def sql(self, query: str, *, token: str, role: str = ROLE) -> tuple[int, Any]:
        """`POST /sql` over HTTPS with a bearer token, as the driver sends `authToken`."""
        context = ssl.create_default_context(cadata=AUTHORITY.certificate)
        context.check_hostname = False  # the gateway's names are its Service's; the chain is checked
        assert self.gateway.port is not None
        return await post_sql(
            self.gateway.port,
            self.peer,
            query,
            connection=f"postgresql://{role}@orders.shop.svc/{DATABASE}",
            headers={request.AUTHORIZATION: f"Bearer {token}"},
            tls=context,
        )

    async def websocket(self, query: str, *, token: str, role: str = ROLE) -> list[tuple[bytes, bytes]]:
        """A session over `wss://` as the driver's Pool opens one (its password pipelined after the
        startup), one simple query, then Terminate: every message the gateway sent back."""
        context = ssl.create_default_context(cadata=AUTHORITY.certificate)
        context.check_hostname = False
        password = token.encode() + b"\0"
        frame = (
            protocol.startup_message({"user": role, "database": DATABASE})
            + b"p"
            + struct.pack("!i", 4 + len(password))
            + password
            + b"Q"
            + struct.pack("!i", 4 + len(query) + 1)
            + query.encode()
            + b"\0"
            + b"X\0\0\0\4"
        )
        connector = aiohttp.TCPConnector(local_addr=(self.peer, 0), ssl=context)
        received = b""
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.ws_connect(f"wss://127.0.0.1:{self.gateway.port}/v2?address=orders.shop.svc:5432") as ws,
        ):
            await ws.send_bytes(frame)
            async for message in ws:
                if message.type is aiohttp.WSMsgType.BINARY:
                    received += message.data
        messages = []
        while received:
            kind, (length,) = received[:1], struct.unpack("!i", received[1:5])
            messages.append((kind, received[5 : 1 + length]))
            received = received[1 + length :]
        return messages


def error_fields(body: bytes) -> dict[str, str]:
    return {f[:1].decode(): f[1:].decode() for f in body.split(b"\0") if f}


@pytest.fixture
async def door(kube: KubeApiDouble, pod: Server, tmp_path: Path) -> AsyncIterator[Door]:
    prepare(kube)
    async with operator(kube, pod) as running:
        await eventually(
            lambda: kube.get("secrets", builders.gateway_client_secret(SERVICE), SYSTEM) is not None,
            what="the gateway's client certificate",
        )
        client = secret_files(kube, builders.gateway_client_secret(SERVICE), tmp_path / "client")
        serving = secret_files(kube, builders.gateway_secret(SERVICE), tmp_path / "gateway")
        kube_activator = kc.Kube(kube.api_client(), permissions.ACTIVATOR)
        backend = ClusterBackend(kube_activator, address=lambda db: Upstream("127.0.0.1", pod.port))
        logins = identity_logins(
            kube_activator,
            backend,
            ca=client["ca.crt"],
            certificate=client["tls.crt"],
            key=client["tls.key"],
            issuers=[Issuer(ISSUER, jwks(SIGNER))],
        )
        gateway = Gateway(
            GatewayBackend(backend),
            postgres_tls=PostgresTls(ca=serving["ca.crt"]),
            identity=logins.endpoint,
            identity_tls=logins.checked,
        )
        await gateway.start(
            listen("127.0.0.1", 0, tls=True), ssl_context=tls_context(serving["tls.crt"], serving["tls.key"])
        )
        stop = asyncio.Event()
        watching = asyncio.create_task(backend.run(stop))
        try:
            yield Door(gateway, backend, await client_pod(kube, "shop"), running)
        finally:
            await gateway.close()
            stop.set()
            await watching


def ident_map(pod: Server) -> frozenset[tuple[str, ...]]:
    return identities.mappings((pod.cluster.pgdata / "pg_ident.conf").read_text())


BOUND: dict[str, Any] = {
    "roles": [{"name": ROLE, "login": True}],
    "databases": [{"name": DATABASE, "owner": ROLE}],
    "access": {
        "identities": [
            {"serviceAccount": {"namespace": "shop", "name": "api"}, "role": ROLE},
            {"issuer": ISSUER, "subject": "reporting", "role": ROLE},
        ]
    },
}
WHO = "SELECT current_user, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


async def test_a_service_account_token_reaches_postgres_as_its_role_by_the_gateways_certificate(
    kube: KubeApiDouble, pod: Server, door: Door, capsys: pytest.CaptureFixture[str]
) -> None:
    create(kube, autoPause={"enabled": False}, **BOUND)
    await eventually(lambda: phase(kube) == "Active", what="Active")
    await eventually(lambda: ROLE in identity_members(pod), what="the bound role in the identity group")
    assert ident_map(pod) == {(identities.MAP, builders.GATEWAY_CLIENT_NAME, ROLE)}
    await eventually(
        lambda: door.backend.awake(KEY) and door.gateway is not None, what="the activator to see it"
    )
    await eventually(lambda: door.backend.identities.endpoint.listening(KEY), what="the identity endpoint")  # type: ignore[union-attr]

    used: list[str] = []

    def token(account: str, audience: str = AUDIENCE) -> str:
        used.append(service_account_token(kube, account, audience))
        return used[-1]

    status, body = await door.sql(WHO, token=token("api"))
    assert (status, body.get("rows")) == (200, [[ROLE, f"/CN={builders.GATEWAY_CLIENT_NAME}"]]), body

    # Refused, each with Postgres's code and why; nothing reaches Postgres.
    forged = token("api")[:-4] + "AAAA"
    for given, code, reason in (
        (token("web"), "28000", Reason.NOT_BOUND),
        (token("api", "dbscale.io/shop/other"), "28P01", Reason.WRONG_AUDIENCE),
        (forged, "28P01", Reason.BAD_SIGNATURE),
    ):
        status, body = await door.sql(WHO, token=given)
        assert (status, body["code"], body["message"]) == (400, code, refusal_message(reason, ROLE))
    status, body = await door.sql(WHO, token=token("api"), role="postgres")
    assert (body["code"], body["message"]) == ("28000", refusal_message(Reason.NOT_BOUND_TO_ROLE, "postgres"))

    # Over WebSocket the token is the password (the driver's Pool has no authToken).
    replies = await door.websocket("SELECT current_user", token=token("api"))
    assert (b"R", struct.pack("!i", 0)) in replies  # AuthenticationOk, from Postgres
    rows = [body for kind, body in replies if kind == b"D"]
    assert rows == [struct.pack("!hi", 1, len(ROLE)) + ROLE.encode()]
    replies = await door.websocket("SELECT 1", token=token("web"))
    error = error_fields(next(body for kind, body in replies if kind == b"E"))
    assert (error["C"], error["M"]) == ("28000", refusal_message(Reason.NOT_BOUND, ROLE))

    # Each refusal is logged with who and why (rate-limited: the first of each kind); no token is in
    # the gateway's log nor in Postgres's.
    logged = capsys.readouterr().out
    for who, why in (
        ("system:serviceaccount:shop:web", "not_bound"),
        ("", "wrong_audience"),
        ("", "bad_signature"),
    ):
        assert any(who in line and why in line for line in logged.splitlines()), why
    postgres_log = pod.cluster.log.read_text()
    for given in used:
        signature = given.rsplit(".", 1)[1]
        assert signature not in logged
        assert signature not in postgres_log

    # An OIDC subject of the issuer the activator trusts, checked against its JWKS.
    status, body = await door.sql(WHO, token=SIGNER.mint("reporting", AUDIENCE))
    assert (status, body.get("rows")) == (200, [[ROLE, f"/CN={builders.GATEWAY_CLIENT_NAME}"]]), body
    status, body = await door.sql(WHO, token=SIGNER.mint("reporting", AUDIENCE, lifetime=-120))
    assert (body["code"], body["message"]) == ("28P01", refusal_message(Reason.EXPIRED, ROLE))

    # The bound role has no other way in: without the certificate, Postgres refuses it.
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        psycopg.connect(host="127.0.0.1", port=pod.port, user=ROLE, dbname=DATABASE, sslmode="require")


async def test_an_identity_removed_from_the_spec_no_longer_logs_in(
    kube: KubeApiDouble, pod: Server, door: Door
) -> None:
    create(kube, autoPause={"enabled": False}, **BOUND)
    await eventually(lambda: ROLE in identity_members(pod), what="the bound role in the identity group")
    await eventually(lambda: door.backend.identities.endpoint.listening(KEY), what="the identity endpoint")  # type: ignore[union-attr]
    status, _ = await door.sql(WHO, token=service_account_token(kube, "api", AUDIENCE))
    assert status == 200

    client.CustomObjectsApi(kube.api_client()).patch_namespaced_custom_object(
        types.GROUP, types.VERSION, "shop", types.PLURAL, "orders", {"spec": {"access": {"identities": []}}}
    )
    # The membership goes first, then the map: each alone already keeps the role out.
    await eventually(lambda: not ident_map(pod), what="the map to let the certificate become no role")
    assert ROLE not in identity_members(pod)
    await eventually(
        lambda: not door.backend.identities.endpoint.listening(KEY),  # type: ignore[union-attr]
        what="the endpoint to stop",
    )
    status, body = await door.sql(WHO, token=service_account_token(kube, "api", AUDIENCE))
    assert (status, body["code"]) == (400, "28000")


async def test_a_token_wakes_a_paused_database_once(kube: KubeApiDouble, pod: Server, door: Door) -> None:
    create(kube, autoPause={"idleAfter": "2s"}, **BOUND)
    await eventually(lambda: ROLE in identity_members(pod), what="the bound role in the identity group")
    door.operator.readings[KEY] = reading(last_activity=datetime.now(UTC) - timedelta(minutes=1))
    await eventually(lambda: phase(kube) == "Paused", what="Paused")
    del door.operator.readings[KEY]
    await eventually(lambda: not door.backend.awake(KEY), what="the activator to see it rest")

    status, body = await door.sql(WHO, token=service_account_token(kube, "api", AUDIENCE))
    assert (status, body.get("rows")) == (200, [[ROLE, f"/CN={builders.GATEWAY_CLIENT_NAME}"]]), body
    assert len(kube.requests_matching(verb="create", resource="wakerequests")) == 1
    assert phase(kube) == "Active"
