"""The gateway's sans-I/O parts: what a client sends to /sql, and the answer's shape."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from controller import pki
from controller.app import activator
from controller.gateway import request, results, server
from controller.gateway.pool import Role
from controller.gateway.request import Batch, Query, RequestError

# -- which database ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("orders.shop", "shop/orders"),  # locally
        ("orders.shop.svc", "shop/orders"),  # the Service name in a cluster
        ("orders.shop.svc.cluster.local", "shop/orders"),
        ("Orders.Shop.", "shop/orders"),  # DNS is case-blind; a trailing dot is the root
        ("orders", None),  # no namespace
        ("orders.shop.example.com", None),  # not a Service name
        ("127.0.0.1", None),
        ("-orders.shop", None),
        ("orders.sh_op", None),
        ("", None),
    ],
)
def test_the_host_names_the_database(host: str, key: str | None) -> None:
    assert request.database_key(host) == key


def test_a_connection_string_is_read_percent_decoded() -> None:
    given = request.credentials(
        "postgresql://app%40x:p%3Ass%2Fw0rd@orders.shop:5432/my%20db"
        "?sslmode=require&application_name=pkg%3Anpm%2F%40neondatabase%2Fserverless%401.2.0"
    )
    assert given == request.Credentials(
        key="shop/orders",
        user="app@x",
        database="my db",
        password="p:ss/w0rd",
        application_name="pkg:npm/@neondatabase/serverless@1.2.0",
    )
    assert "p:ss/w0rd" not in repr(given)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "header is missing"),
        ("mysql://app:s3cret@orders.shop/app", "postgres:// or postgresql://"),
        ("postgresql://app:s3cret@127.0.0.1/app", "host must name a database"),
        ("postgresql://:s3cret@orders.shop/app", "no user"),
        ("postgresql://app:s3cret@orders.shop", "no database name"),
        ("postgresql://app:s3cret@[orders.shop/app", "not a valid URL"),
    ],
)
def test_a_bad_connection_string_is_refused_without_repeating_it(value: str | None, says: str) -> None:
    with pytest.raises(RequestError) as refused:
        request.credentials(value)
    assert says in refused.value.message
    assert refused.value.status == 400
    assert "s3cret" not in refused.value.message


# -- the body and headers ---------------------------------------------------------------------------


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def test_a_single_query_and_a_batch_with_its_transaction_options() -> None:
    assert request.work(body({"query": "SELECT $1", "params": ["x", None]}), {}) == Query(
        "SELECT $1", ("x", None)
    )
    assert request.work(body({"query": "SELECT 1"}), {}) == Query("SELECT 1")  # params may be left out
    batch = request.work(
        body({"queries": [{"query": "SELECT 1", "params": []}, {"query": "SELECT 2", "arrayMode": False}]}),
        {
            request.BATCH_ISOLATION_LEVEL: "RepeatableRead",
            request.BATCH_READ_ONLY: "true",
            request.BATCH_DEFERRABLE: "True",  # only exactly "true" is on
        },
    )
    assert batch == Batch(
        (Query("SELECT 1"), Query("SELECT 2", array_mode=False)),
        isolation_level="RepeatableRead",
        read_only=True,
    )
    assert isinstance(batch, Batch)
    assert batch.begin() == "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    assert Batch((Query("SELECT 1"),)).begin() == "BEGIN"


@pytest.mark.parametrize(
    ("raw", "headers", "says"),
    [
        (b"\xff", {}, "not JSON"),
        (b"[1]", {}, "JSON object"),
        (body({"query": 1}), {}, "`query` string"),
        (body({"query": "SELECT 1", "params": "x"}), {}, "`params` must be an array"),
        (body({"queries": []}), {}, "non-empty array"),
        (
            body({"queries": [{"query": "SELECT 1"}]}),
            {request.BATCH_ISOLATION_LEVEL: "Chaos"},
            "isolation level",
        ),
        (body({"queries": [{"query": "SELECT 1"}] * (request.MAX_QUERIES + 1)}), {}, "at most 1000"),
    ],
)
def test_a_bad_body_is_refused(raw: bytes, headers: dict[str, str], says: str) -> None:
    with pytest.raises(RequestError, match=says):
        request.work(raw, headers)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("x", "x"),
        (None, None),
        (True, "true"),
        (42, "42"),
        (1.5, "1.5"),
        ({"k": "v"}, '{"k":"v"}'),
        (
            [1, "a", None, [2, 3], 'say "hi"'],
            '{"1","a",NULL,{"2","3"},"say \\"hi\\""}',
        ),  # as the driver writes arrays
    ],
)
def test_parameters_become_postgres_text(value: Any, text: str | None) -> None:
    assert request.parameter(value) == text


# -- the answer -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "command"),
    [
        ("SELECT 2", ("SELECT", 2)),
        ("INSERT 0 5", ("INSERT", 5)),
        ("CREATE TABLE", ("CREATE", None)),
        ("", ("", None)),
    ],
)
def test_the_command_tag_gives_the_verb_and_the_count(tag: str, command: tuple[str, int | None]) -> None:
    assert results.command(tag) == command


FIELDS = [
    results.Field("ok", 16, 0, 0, 1, -1),
    results.Field("n", 23, 16385, 2, 4, -1),
    results.Field("j", 3802, 0, 0, -1, -1),
]
RESULT = results.Result(FIELDS, [["t", "7", '{"a": 1}'], [None, None, None]], "SELECT 2")


def test_a_result_in_raw_text_and_array_mode_is_what_the_driver_parses() -> None:
    assert results.encode(RESULT, array_mode=True, raw_text=True) == {
        "command": "SELECT",
        "rowCount": 2,
        "rows": [["t", "7", '{"a": 1}'], [None, None, None]],
        "fields": [
            {
                "name": "ok",
                "dataTypeID": 16,
                "tableID": 0,
                "columnID": 0,
                "dataTypeSize": 1,
                "dataTypeModifier": -1,
                "format": "text",
            },
            {
                "name": "n",
                "dataTypeID": 23,
                "tableID": 16385,
                "columnID": 2,
                "dataTypeSize": 4,
                "dataTypeModifier": -1,
                "format": "text",
            },
            {
                "name": "j",
                "dataTypeID": 3802,
                "tableID": 0,
                "columnID": 0,
                "dataTypeSize": -1,
                "dataTypeModifier": -1,
                "format": "text",
            },
        ],
        "rowAsArray": True,
    }


def test_without_raw_text_some_types_become_json_and_rows_objects() -> None:
    encoded = results.encode(RESULT, array_mode=False, raw_text=False)
    assert encoded["rows"] == [{"ok": True, "n": 7, "j": {"a": 1}}, {"ok": None, "n": None, "j": None}]
    assert encoded["rowAsArray"] is False


def test_an_error_carries_every_field_the_driver_copies() -> None:
    document = results.error('relation "nope" does not exist', {"code": "42P01", "position": "15"})
    assert document["message"] == 'relation "nope" does not exist'
    assert (document["code"], document["position"], document["hint"]) == ("42P01", "15", None)
    assert set(document) == {"message", *results.ERROR_FIELDS}


# -- who the request says it is, and where it is served ---------------------------------------------


def test_a_request_is_authenticated_by_its_password_or_its_bearer_token() -> None:
    headers = {request.CONNECTION_STRING: "postgresql://app:s3cret@orders.shop/app"}
    by_password = request.authenticate(headers)
    assert (by_password.password, by_password.token, by_password.secret) == ("s3cret", "", "s3cret")
    # What the driver sends for `authToken`: the token is the credential, a password is not used.
    by_token = request.authenticate({**headers, request.AUTHORIZATION: "Bearer abc.def.ghi"})
    assert (by_token.user, by_token.password, by_token.token) == ("app", "", "abc.def.ghi")
    assert "abc.def.ghi" not in repr(by_token)
    assert Role.of(by_token) != Role.of(dataclasses.replace(by_password, password="abc.def.ghi"))


@pytest.mark.parametrize("value", ["Basic YXBwOnMzY3JldA==", "Bearer", "Bearer  ", "abc.def.ghi"])
def test_an_authorization_other_than_a_bearer_token_is_refused_without_repeating_it(value: str) -> None:
    headers = {request.CONNECTION_STRING: "postgresql://app@orders.shop/app", request.AUTHORIZATION: value}
    with pytest.raises(RequestError) as refused:
        request.authenticate(headers)
    assert (refused.value.status, refused.value.code) == (400, "28000")
    assert all(word not in refused.value.message for word in value.split() if word != "Bearer")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "::", "gateway.example"])
def test_plain_http_is_refused_off_loopback(host: str) -> None:
    with pytest.raises(server.PlaintextError, match="loopback only"):
        server.listen(host, 0, tls=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_are_loopback(host: str) -> None:
    assert server.loopback(host)


def test_the_cluster_gateway_serves_https_from_its_certificate_or_plain_http_when_asked(
    tmp_path: Path,
) -> None:
    def args(**given: Any) -> argparse.Namespace:
        return argparse.Namespace(
            **{"gateway_plaintext": False, "gateway_certificate": None, "gateway_key": None, **given}
        )

    with pytest.raises(server.PlaintextError, match="--gateway-certificate and --gateway-key"):
        activator.gateway_tls(args())
    assert activator.gateway_tls(args(gateway_plaintext=True)) is None
    now = datetime.now(UTC)
    authority = pki.new_authority("test", now=now)
    issued = pki.issue(authority, common_name="gateway", names=["gateway.sdb-system.svc"], now=now)
    (tmp_path / "tls.crt").write_text(issued.certificate)
    (tmp_path / "tls.key").write_text(issued.key)
    context = activator.gateway_tls(
        args(gateway_certificate=tmp_path / "tls.crt", gateway_key=tmp_path / "tls.key")
    )
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2


def test_the_cluster_gateway_checks_databases_against_the_ca_it_is_given(tmp_path: Path) -> None:
    def args(**given: Any) -> argparse.Namespace:
        return argparse.Namespace(**{"gateway_plaintext": False, "gateway_ca": None, **given})

    with pytest.raises(server.PlaintextError, match="--gateway-ca"):
        activator.postgres_tls(args())
    checked = activator.postgres_tls(args(gateway_ca=tmp_path / "ca.crt"))
    assert "sslmode=verify-full" in checked.conninfo()
    assert f"sslrootcert={tmp_path / 'ca.crt'}" in checked.conninfo()
    assert "sslmode=prefer" in activator.postgres_tls(args(gateway_plaintext=True)).conninfo()


async def test_a_renewed_gateway_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    authority = pki.new_authority("test", now=now)
    first = pki.issue(authority, common_name="gateway", names=["gateway.sdb-system.svc"], now=now)
    (tmp_path / "tls.crt").write_text(first.certificate)
    (tmp_path / "tls.key").write_text(first.key)
    context = server.tls_context(tmp_path / "tls.crt", tmp_path / "tls.key")
    sock = server.listen("127.0.0.1", 0, tls=True)
    port = sock.getsockname()[1]
    handshakes = await asyncio.start_server(lambda r, w: w.close(), sock=sock, ssl=context)
    trust = ssl.create_default_context(cadata=authority.certificate)

    async def served() -> str:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=trust, server_hostname="gateway.sdb-system.svc"
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return ssl.DER_cert_to_PEM_cert(der)

    def serial(pem: str) -> int:
        return x509.load_pem_x509_certificate(pem.encode()).serial_number

    try:
        assert serial(await served()) == serial(first.certificate)
        (tmp_path / "tls.key").write_text("half-written")  # kept: the old pair goes on being served
        server.reload(context, tmp_path / "tls.crt", tmp_path / "tls.key")
        assert serial(await served()) == serial(first.certificate)
        renewed = pki.issue(authority, common_name="gateway", names=["gateway.sdb-system.svc"], now=now)
        (tmp_path / "tls.crt").write_text(renewed.certificate)
        (tmp_path / "tls.key").write_text(renewed.key)
        server.reload(context, tmp_path / "tls.crt", tmp_path / "tls.key")
        assert serial(await served()) == serial(renewed.certificate)
    finally:
        handshakes.close()
