"""The operator's certificate authority, and the server certificates it issues for every endpoint.

Pure: keys and certificates in, keys and certificates out, as PEM text; where they are kept (files
locally, Secrets in a cluster) is each runtime's business. Times are handed in, never read here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = timedelta(days=3650)
SERVER_VALIDITY = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)
"""A server certificate this close to its end is issued again at the next start."""
BACKDATE = timedelta(minutes=5)
"""Certificates start a little before they are made: clocks across a cluster are never quite equal."""


@dataclass(frozen=True)
class KeyPair:
    certificate: str
    """PEM."""
    key: str = field(repr=False)
    """PEM (PKCS#8, unencrypted): a secret, never logged."""

    def not_after(self) -> datetime:
        return x509.load_pem_x509_certificate(self.certificate.encode()).not_valid_after_utc

    def names(self) -> frozenset[str]:
        """The DNS names and addresses the certificate is for."""
        cert = x509.load_pem_x509_certificate(self.certificate.encode())
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return frozenset()
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        return frozenset([*dns, *ips])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def new_authority(name: str, *, now: datetime) -> KeyPair:
    """A self-signed CA that may sign server and client certificates, and nothing below them."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(_pem(cert), _pem_key(key))


def issue(
    authority: KeyPair,
    *,
    common_name: str,
    names: Sequence[str] = (),
    client: bool = False,
    now: datetime,
    validity: timedelta = SERVER_VALIDITY,
) -> KeyPair:
    """A leaf certificate: for a server at `names` (DNS names or IP addresses), or for a client whose
    name is `common_name` (Postgres's `cert` authentication reads the CN)."""
    ca_cert = x509.load_pem_x509_certificate(authority.certificate.encode())
    ca_key = serialization.load_pem_private_key(authority.key.encode(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if alternatives:
        builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
    return KeyPair(_pem(builder.sign(ca_key, hashes.SHA256())), _pem_key(key))


def needs_renewal(pair: KeyPair | None, names: Sequence[str], *, now: datetime) -> bool:
    """Whether a server certificate is missing, ends soon, or is not for every name it must serve."""
    return pair is None or pair.not_after() - now < RENEW_BEFORE or not set(names) <= pair.names()
