"""Certificates in a cluster, against the API double: one CA however many replicas race to make it,
each database's `<name>-tls` issued by it (or by cert-manager), renewed before it ends, and the CA
published for clients in each namespace."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubeapi import KubeApiDouble
from support.cluster import SYSTEM, create, eventually, operator, sdb

from controller import pki
from controller.api import codec, types
from controller.runtime.kubernetes import builders, permissions
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes.certificates import Certificates

pytestmark = pytest.mark.kubernetes

START = datetime(2026, 12, 1, tzinfo=UTC)


def orders(kube: KubeApiDouble) -> types.ServerlessDatabase:
    """A database in the API (what it owns is collected once it is gone)."""
    create(kube)
    return codec.decode(sdb(kube))


def decoded(obj: dict[str, Any] | None, key: str) -> str:
    assert obj is not None
    return base64.b64decode(obj["data"][key]).decode()


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def operator_kube(kube: KubeApiDouble) -> kc.Kube:
    return kc.Kube(kube.api_client(), permissions.OPERATOR)


async def test_replicas_that_race_share_one_authority(kube: KubeApiDouble) -> None:
    """Replica B reads no CA, A makes one, then B's own create conflicts: B takes A's."""
    first = Certificates(operator_kube(kube), system_namespace=SYSTEM)

    class Late(kc.Kube):
        def get(
            self, kind: kc.Kind, namespace: str, name: str, *, subresource: str | None = None
        ) -> dict[str, Any] | None:
            found = super().get(kind, namespace, name, subresource=subresource)
            if found is None and first.authority is None:
                asyncio.run(first.open())  # A makes its CA between B's read and B's create
            return found

    second = Certificates(Late(kube.api_client(), permissions.OPERATOR), system_namespace=SYSTEM)
    await second.open()
    assert first.authority is not None
    assert second.authority == first.authority
    assert len(kube.requests_matching(verb="create", resource="secrets", namespace=SYSTEM)) == 2
    assert decoded(kube.get("secrets", builders.CA_NAME, SYSTEM), "tls.crt") == first.authority.certificate


async def test_each_database_gets_a_certificate_for_its_names_and_keeps_it(kube: KubeApiDouble) -> None:
    clock = Clock()
    certificates = Certificates(operator_kube(kube), system_namespace=SYSTEM, now=clock)
    await certificates.open()
    authority = certificates.authority
    assert authority is not None
    db = orders(kube)
    await certificates.ensure(db)

    secret = kube.get("secrets", "orders-tls", "shop")
    assert secret is not None
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == db.metadata.uid
    leaf = x509.load_pem_x509_certificate(decoded(secret, "tls.crt").encode())
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(authority.certificate.encode()))
    assert set(builders.server_names(db)) <= pki.KeyPair(decoded(secret, "tls.crt"), "").names()
    assert "orders.shop.svc" in builders.server_names(db)
    published = kube.get("configmaps", builders.CA_NAME, "shop")
    assert published is not None
    assert published["data"][builders.CA_KEY] == authority.certificate

    # Every start asks again; a certificate that is current is not written again.
    writes = len(kube.requests_matching(writes_only=True))
    clock.now += timedelta(days=200)
    await certificates.ensure(db)
    assert len(kube.requests_matching(writes_only=True)) == writes

    # Near its end it is renewed, by the same authority.
    clock.now = leaf.not_valid_after_utc - timedelta(days=1)
    await certificates.ensure(db)
    renewed = x509.load_pem_x509_certificate(
        decoded(kube.get("secrets", "orders-tls", "shop"), "tls.crt").encode()
    )
    assert renewed.serial_number != leaf.serial_number
    assert renewed.not_valid_after_utc > leaf.not_valid_after_utc


async def test_a_certificate_from_another_authority_is_replaced(kube: KubeApiDouble) -> None:
    """A `<name>-tls` the operator's CA did not sign (left by an older install) would fail clients'
    verify-full: it is issued anew."""
    certificates = Certificates(operator_kube(kube), system_namespace=SYSTEM, now=lambda: START)
    await certificates.open()
    assert certificates.authority is not None
    db = orders(kube)
    stranger = pki.new_authority("someone else", now=START)
    leaf = pki.issue(stranger, common_name="orders", names=builders.server_names(db), now=START)
    kube.create(
        builders.tls_secret(
            builders.Certified.database(db),
            certificate=leaf.certificate,
            key=leaf.key,
            ca=stranger.certificate,
        )
    )
    await certificates.ensure(db)
    assert (
        decoded(kube.get("secrets", "orders-tls", "shop"), builders.CA_KEY)
        == certificates.authority.certificate
    )


CERT_MANAGER_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "certificates.cert-manager.io"},
    "spec": {
        "group": "cert-manager.io",
        "names": {"kind": "Certificate", "plural": "certificates", "singular": "certificate"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


async def test_with_cert_manager_each_database_gets_a_certificate_resource(kube: KubeApiDouble) -> None:
    kube.install_crd(CERT_MANAGER_CRD)
    issuer = builders.IssuerRef.parse("ClusterIssuer/internal")
    certificates = Certificates(operator_kube(kube), system_namespace=SYSTEM, issuer=issuer)
    await certificates.open()
    assert kube.get("secrets", builders.CA_NAME, SYSTEM) is None  # the operator is no CA then
    db = orders(kube)
    await certificates.ensure(db)
    requested = kube.get("certificates", "orders", "shop")
    assert requested is not None
    assert requested["spec"]["secretName"] == "orders-tls"
    assert requested["spec"]["issuerRef"] == {
        "group": "cert-manager.io",
        "kind": "ClusterIssuer",
        "name": "internal",
    }
    assert kube.get("configmaps", builders.CA_NAME, "shop") is None  # nothing issued yet

    # cert-manager writes the Secret, with its CA: that is what clients are then told to trust.
    authority = pki.new_authority("internal", now=START)
    leaf = pki.issue(authority, common_name="orders", names=builders.server_names(db), now=START)
    kube.create(
        builders.tls_secret(
            builders.Certified.database(db),
            certificate=leaf.certificate,
            key=leaf.key,
            ca=authority.certificate,
        )
    )
    await certificates.ensure(db)
    published = kube.get("configmaps", builders.CA_NAME, "shop")
    assert published is not None
    assert published["data"][builders.CA_KEY] == authority.certificate


async def test_the_gateway_gets_a_certificate_for_the_activator_service(kube: KubeApiDouble) -> None:
    """The activator's gateway serves HTTPS from `<service>-tls` in the system namespace, issued by the
    operator's CA for the Service's names, with the CA beside it (the gateway checks databases
    against it); renewed near its end, like a database's."""
    clock = Clock()
    certificates = Certificates(operator_kube(kube), system_namespace=SYSTEM, now=clock)
    await certificates.open()
    authority = certificates.authority
    assert authority is not None
    await certificates.ensure_gateway("sdb-activator")

    secret = kube.get("secrets", builders.gateway_secret("sdb-activator"), SYSTEM)
    assert secret is not None
    assert secret["metadata"]["name"] == "sdb-activator-tls"
    assert secret["type"] == "kubernetes.io/tls"
    assert "ownerReferences" not in secret["metadata"]  # no database's: it outlives every one
    assert decoded(secret, builders.CA_KEY) == authority.certificate
    leaf = x509.load_pem_x509_certificate(decoded(secret, "tls.crt").encode())
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(authority.certificate.encode()))
    assert pki.KeyPair(decoded(secret, "tls.crt"), "").names() >= {
        f"sdb-activator.{SYSTEM}.svc.cluster.local",
        f"sdb-activator.{SYSTEM}.svc",
        f"sdb-activator.{SYSTEM}",
        "sdb-activator",
    }
    assert kube.list("configmaps", SYSTEM) == []  # the gateway's CA is in its own Secret

    writes = len(kube.requests_matching(writes_only=True))
    await certificates.ensure_gateway("sdb-activator")
    assert len(kube.requests_matching(writes_only=True)) == writes
    clock.now = leaf.not_valid_after_utc - timedelta(days=1)
    await certificates.ensure_gateway("sdb-activator")
    renewed = x509.load_pem_x509_certificate(
        decoded(kube.get("secrets", "sdb-activator-tls", SYSTEM), "tls.crt").encode()
    )
    assert renewed.serial_number != leaf.serial_number


async def test_the_gateway_gets_a_client_certificate_for_token_logins(kube: KubeApiDouble) -> None:
    """`<service>-client-tls`: a client certificate (client auth only) whose common name is what the
    pods' pg_ident maps to the roles bound to identities; kept, not rewritten, until it nears its end."""
    certificates = Certificates(operator_kube(kube), system_namespace=SYSTEM)
    await certificates.open()
    assert certificates.authority is not None
    await certificates.ensure_gateway("sdb-activator")
    secret = kube.get("secrets", builders.gateway_client_secret("sdb-activator"), SYSTEM)
    assert secret is not None
    assert secret["type"] == "kubernetes.io/tls"
    assert decoded(secret, builders.CA_KEY) == certificates.authority.certificate
    leaf = x509.load_pem_x509_certificate(decoded(secret, "tls.crt").encode())
    leaf.verify_directly_issued_by(
        x509.load_pem_x509_certificate(certificates.authority.certificate.encode())
    )
    common_name = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == builders.GATEWAY_CLIENT_NAME
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    writes = len(kube.requests_matching(writes_only=True))
    await certificates.ensure_gateway("sdb-activator")
    assert len(kube.requests_matching(writes_only=True)) == writes


async def test_with_cert_manager_the_gateway_gets_a_certificate_resource(kube: KubeApiDouble) -> None:
    kube.install_crd(CERT_MANAGER_CRD)
    issuer = builders.IssuerRef.parse("ClusterIssuer/internal")
    certificates = Certificates(operator_kube(kube), system_namespace=SYSTEM, issuer=issuer)
    await certificates.open()
    await certificates.ensure_gateway("sdb-activator")
    requested = kube.get("certificates", "sdb-activator", SYSTEM)
    assert requested is not None
    assert requested["spec"]["secretName"] == "sdb-activator-tls"
    assert (
        requested["spec"]["dnsNames"][1] == requested["spec"]["commonName"] == f"sdb-activator.{SYSTEM}.svc"
    )
    assert requested["spec"]["issuerRef"]["name"] == "internal"
    assert kube.get("secrets", "sdb-activator-tls", SYSTEM) is None  # cert-manager's to write
    client = kube.get("certificates", "sdb-activator-client", SYSTEM)
    assert client is not None
    assert client["spec"]["secretName"] == builders.gateway_client_secret("sdb-activator")
    assert client["spec"]["commonName"] == builders.GATEWAY_CLIENT_NAME
    assert "dnsNames" not in client["spec"]
    assert client["spec"]["usages"][0] == "client auth"


async def test_the_leading_operator_issues_the_gateway_certificate(kube: KubeApiDouble, pods: Any) -> None:
    async with operator(kube, pods):
        await eventually(
            lambda: kube.get("secrets", builders.gateway_secret("activator"), SYSTEM) is not None,
            what="the gateway's certificate",
        )
