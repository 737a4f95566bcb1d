"""The operator's CA: what it signs, for which names, and when a certificate is issued again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller import pki

NOW = datetime(2026, 1, 1, tzinfo=UTC)
AUTHORITY = pki.new_authority("test CA", now=NOW)


def load(pair: pki.KeyPair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pair.certificate.encode())


def test_a_server_certificate_is_for_its_names_and_verifies_against_the_authority() -> None:
    leaf = pki.issue(AUTHORITY, common_name="db.default", names=["127.0.0.1", "db.default"], now=NOW)
    assert leaf.names() == {"127.0.0.1", "db.default"}
    load(leaf).verify_directly_issued_by(load(AUTHORITY))
    usage = load(leaf).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not load(leaf).extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_client_certificate_carries_the_role_as_its_common_name() -> None:
    leaf = pki.issue(AUTHORITY, common_name="gateway", client=True, now=NOW)
    name = load(leaf).subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert name == "gateway"
    usage = load(leaf).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_a_certificate_never_outlives_its_authority() -> None:
    leaf = pki.issue(AUTHORITY, common_name="x", now=NOW + pki.CA_VALIDITY - timedelta(days=10))
    assert leaf.not_after() == load(AUTHORITY).not_valid_after_utc


def test_renewal_when_missing_ending_soon_or_missing_a_name() -> None:
    leaf = pki.issue(AUTHORITY, common_name="db", names=["db"], now=NOW)
    assert pki.needs_renewal(None, ["db"], now=NOW)
    assert not pki.needs_renewal(leaf, ["db"], now=NOW)
    assert pki.needs_renewal(leaf, ["db", "db-pooler"], now=NOW)
    renew_at = NOW + pki.SERVER_VALIDITY - pki.RENEW_BEFORE
    assert not pki.needs_renewal(leaf, ["db"], now=renew_at - timedelta(days=1))
    assert pki.needs_renewal(leaf, ["db"], now=renew_at + timedelta(days=1))


def test_the_key_is_not_in_the_repr() -> None:
    assert "PRIVATE" not in repr(AUTHORITY)
