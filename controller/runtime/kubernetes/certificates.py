"""TLS for every database in a cluster: the operator's CA, each server's certificate, the CA published.

Without cert-manager the operator is the CA: its key pair is the Secret `serverless-db-ca` in the
operator's namespace (made by whichever replica comes first; the others read it), and it issues
each database's `<name>-tls` itself, again when it nears its end or lacks a name. With cert-manager
(`--cert-manager-issuer KIND/NAME`) each database gets a Certificate instead, and cert-manager
writes `<name>-tls`. Either way the CA's certificate is published as the ConfigMap
`serverless-db-ca` in every namespace with databases, for clients' `sslrootcert`. The activator's
gateway (HTTPS) gets a certificate the same way, in the operator's namespace, and so does its client
certificate, which Postgres's `cert` method takes from it for a token's role.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from controller import pki
from controller.api import types, units
from controller.runtime.base import TransientError
from controller.runtime.kubernetes import builders
from controller.runtime.kubernetes import client as kc

log = structlog.get_logger("certificates")
RECHECK_SECONDS = 3600.0
"""How often the gateway's certificate is looked at: renewal starts weeks before its end."""


def _decoded(secret: dict[str, Any] | None, key: str) -> str | None:
    value = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(value).decode() if value else None


class Certificates:
    def __init__(
        self,
        kube: kc.Kube,
        *,
        system_namespace: str,
        issuer: builders.IssuerRef | None = None,
        now: Callable[[], datetime] = units.now_utc,
    ) -> None:
        self.kube = kube
        self.system_namespace = system_namespace
        self.issuer = issuer
        self.now = now
        self.authority: pki.KeyPair | None = None
        self._published: dict[str, str] = {}
        """Namespace to the CA certificate its ConfigMap holds, as last written."""

    async def open(self) -> None:
        if self.issuer is None:
            self.authority = await asyncio.to_thread(self._load_authority)

    def _load_authority(self) -> pki.KeyPair:
        found = self.kube.get(kc.SECRETS, self.system_namespace, builders.CA_NAME)
        certificate, key = _decoded(found, "tls.crt"), _decoded(found, "tls.key")
        if certificate and key:
            return pki.KeyPair(certificate, key)
        made = pki.new_authority(f"serverless-db {self.system_namespace}", now=self.now())
        try:
            self.kube.create(kc.SECRETS, _authority_secret(self.system_namespace, made))
        except kc.ApiError as error:
            if error.status != 409:
                raise
            return self._load_authority()  # another replica made it first: that one is the CA
        log.info(
            "made the operator's certificate authority", secret=f"{self.system_namespace}/{builders.CA_NAME}"
        )
        return made

    async def ensure(self, db: types.ServerlessDatabase) -> None:
        """The server's certificate in `<name>-tls` before its pod needs it, and the CA published."""
        try:
            ca = await asyncio.to_thread(self._ensure, builders.Certified.database(db))
            if ca is not None and self._published.get(db.metadata.namespace) != ca:
                await asyncio.to_thread(
                    self.kube.apply, kc.CONFIGMAPS, builders.ca_configmap(db.metadata.namespace, ca)
                )
                self._published[db.metadata.namespace] = ca
        except kc.ApiError as error:
            raise TransientError(
                types.Reason.START_FAILED, f"could not keep its certificate: {error.message}"
            ) from error

    async def ensure_gateway(self, service: str) -> None:
        """The activator's gateway certificate, `<service>-tls` in the system namespace, which its pods
        mount (they start once it exists); issued and renewed as a database's is."""
        await asyncio.to_thread(self._ensure, builders.Certified.gateway(service, self.system_namespace))
        await asyncio.to_thread(
            self._ensure, builders.Certified.gateway_client(service, self.system_namespace)
        )

    async def keep_gateway(self, service: str, *, every: float = RECHECK_SECONDS) -> None:
        """`ensure_gateway` now and then, for as long as the operator leads: renewal needs no restart."""
        while True:
            try:
                await self.ensure_gateway(service)
            except kc.ApiError as error:
                log.warning("could not keep the gateway's certificate", error=error.message)
            await asyncio.sleep(every)

    def _ensure(self, certified: builders.Certified) -> str | None:
        """The CA certificate to publish (None: cert-manager has not issued one yet)."""
        if self.issuer is not None:
            self.kube.apply(kc.CERTIFICATES, builders.certificate(certified, self.issuer))
            return _decoded(self.kube.get(kc.SECRETS, certified.namespace, certified.secret), builders.CA_KEY)
        if self.authority is None:
            raise RuntimeError("Certificates.open() was not called")
        found = self.kube.get(kc.SECRETS, certified.namespace, certified.secret)
        wanted = list(certified.names)
        certificate, key = _decoded(found, "tls.crt"), _decoded(found, "tls.key")
        current = pki.KeyPair(certificate, key) if certificate and key else None
        issued_here = _decoded(found, builders.CA_KEY) == self.authority.certificate
        served = [] if certified.client else wanted  # a client certificate has only its common name
        if issued_here and not pki.needs_renewal(current, served, now=self.now()):
            return self.authority.certificate
        leaf = pki.issue(
            self.authority, common_name=wanted[1], names=served, client=certified.client, now=self.now()
        )
        body = builders.tls_secret(
            certified, certificate=leaf.certificate, key=leaf.key, ca=self.authority.certificate
        )
        self.kube.apply(kc.SECRETS, body)
        log.info(
            "issued a client certificate" if certified.client else "issued a server certificate",
            secret=f"{certified.namespace}/{certified.secret}",
            not_after=leaf.not_after().isoformat(),
        )
        return self.authority.certificate


def _authority_secret(namespace: str, authority: pki.KeyPair) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": builders.CA_NAME,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": builders.MANAGED_BY},
        },
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(authority.certificate.encode()).decode(),
            "tls.key": base64.b64encode(authority.key.encode()).decode(),
        },
    }
