"""The activator as its own Deployment in a cluster: `sdb activator`.

How it knows which database a connection is for: each ServerlessDatabase gets a port on the
activator (`status.activatorPort`, assigned once by the operator). The activator listens on every
such port; while a database rests, the operator points its client Service's EndpointSlice at the
activator's pods on that port, so a connection's local port names the database.

Who may wake one: a client whose pod is in a namespace the database allows (the same namespaces as
its NetworkPolicy), or the database's own pooler (which checks its clients' namespaces itself, by
its NetworkPolicy). Anyone else is refused (28000) before any wake is asked for.

How it wakes one: it creates a WakeRequest (an API write, so it needs no port into the operator)
and waits, on its watch of ServerlessDatabases, for the status to answer that request: Active and
Ready, or a failure whose message each held client then reads. A TLS client's handshake passes
through to Postgres, which holds the certificate: the activator holds no key of a database's.

Tokens (the gateway's bearer tokens, and a WebSocket login as a role bound to an identity) are
checked by the identity endpoint, as locally: ServiceAccount tokens by a TokenReview, OIDC tokens by
a configured issuer's keys. Per database with identities it listens on loopback only, for the
gateway, behind a certificate made at start for that hop alone, and logs in to Postgres as the
mapped role with the gateway's client certificate (`--gateway-client-certificate`, from the
operator's CA), which the pod's pg_ident lets become exactly the roles bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from controller import pki
from controller.activator.proxy import Activator, Upstream, WakeError
from controller.api import codec, types
from controller.app import process
from controller.app.wakes import Wakes
from controller.gateway import server
from controller.gateway.reach import Limits, PostgresTls
from controller.gateway.server import Gateway
from controller.identity import tokens
from controller.identity.authenticate import Authenticator, Reviewer
from controller.identity.endpoint import IdentityEndpoint
from controller.metrics.exposition import OperatorMetrics
from controller.runtime.kubernetes import builders, permissions, projection
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes.informer import Informer
from controller.runtime.kubernetes.store import KubeStore

log = structlog.get_logger("activator.cluster")
NAMESPACE_CACHE_SECONDS = 30.0
"""A pod address is reused only after its pod is gone, which takes longer than this."""
NAMESPACE_CACHE_SIZE = 10_000
METRICS_PORT = 9466
GATEWAY_PORT = 9443
HEALTH_PORT = 8082
LOOPBACK = "127.0.0.1"


def token_reviewer(kube: kc.Kube) -> Reviewer:
    """TokenReviews through the API server, for the identity check of a ServiceAccount's token."""

    async def review(request: Mapping[str, Any]) -> Mapping[str, Any]:
        created = await asyncio.to_thread(kube.create, kc.TOKEN_REVIEWS, dict(request))
        status: Mapping[str, Any] = created.get("status") or {}
        return status

    return review


def pod_address(db: types.ServerlessDatabase) -> Upstream:
    """The database pod's stable DNS name (resolvable once it is Ready: the headless Service's record)."""
    names = builders.Names.of(db.metadata.name)
    return Upstream(f"{names.pod}.{names.headless}.{db.metadata.namespace}.svc", builders.POSTGRES_PORT)


@dataclass(frozen=True)
class _Peer:
    """What the activator knows of a client's pod."""

    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> _Peer:
        meta = pod.get("metadata") or {}
        return cls(str(meta.get("namespace")), dict(meta.get("labels") or {}))

    def pools(self, db: types.ServerlessDatabase) -> bool:
        """Whether this is the database's own pooler (its namespace, the labels its pods get)."""
        wanted = builders.pooler_labels(db)
        return self.namespace == db.metadata.namespace and wanted.items() <= self.labels.items()


class ClusterBackend:
    """Ports and readiness from status, wakes by WakeRequest; one wake per database at a time."""

    def __init__(
        self,
        kube: kc.Kube,
        *,
        namespace: str | None = None,
        address: Callable[[types.ServerlessDatabase], Upstream] = pod_address,
        listen_host: str = "0.0.0.0",
        port_range: tuple[int, int] = builders.ACTIVATOR_PORTS,
        wake_timeout: float = 30.0,
    ) -> None:
        self.kube = kube
        self.address = address
        self.listen_host = listen_host
        self.port_range = port_range
        self.databases = Informer(
            kube, kc.DATABASES, namespace=namespace, on_change=self._changed, project=projection.database
        )
        self.store = KubeStore(kube, self.databases)
        self.activator = Activator(self, wake_timeout=wake_timeout, admit=self.admits, tls=True)
        self._wakes: Wakes[Upstream] = Wakes()
        self._tokens: dict[str, str] = {}
        """Per database, the wake request in flight: only a status that answers it settles the wake."""
        self._ports: dict[str, int] = {}
        self._namespaces: dict[str, tuple[_Peer, float]] = {}
        """Client address to (its pod, until when that is trusted)."""
        self._pending: set[asyncio.Task[None]] = set()
        self.identities: Identities | None = None
        """Where a database with identities is listened for, for the gateway's token logins."""
        self._decoded: dict[str, tuple[dict[str, Any], types.ServerlessDatabase | None]] = {}
        """Per database, the informer's object last decoded and what it decoded to."""

    async def admits(self, key: str, peer: tuple[str, int]) -> bool:
        """Whether a client may reach this database: its pod is in a namespace the spec allows (the
        database's own unless `spec.access.allowedNamespaces` names others), as its NetworkPolicy says."""
        db = self.database(key)
        if db is None:
            return False
        allowed = set(db.spec.access.allowed_namespaces) or {db.metadata.namespace}
        client = await self._peer(peer[0])
        return client.pools(db) or client.namespace in allowed

    async def _peer(self, address: str) -> _Peer:
        """The pod with this address (no namespace: no pod has it), for a short while remembered."""
        now = time.monotonic()
        known = self._namespaces.get(address)
        if known is not None and known[1] > now:
            return known[0]
        try:
            pods, _ = await asyncio.to_thread(
                self.kube.list, kc.PODS, field_selector=f"status.podIP={address}"
            )
        except kc.ApiError as error:
            log.warning("cannot tell which namespace a client is in", address=address, error=error.message)
            return _Peer()
        peer = next((_Peer.of(p) for p in pods), _Peer())
        self._namespaces[address] = (peer, now + NAMESPACE_CACHE_SECONDS)
        while len(self._namespaces) > NAMESPACE_CACHE_SIZE:
            self._namespaces.pop(next(iter(self._namespaces)))
        return peer

    def database(self, key: str) -> types.ServerlessDatabase | None:
        """The database as the watch last saw it, decoded once per version: a `/sql` request asks
        for it several times (exists, admits, awake, upstream)."""
        raw = self.databases.get(*types.split_key(key))
        if raw is None:
            self._decoded.pop(key, None)
            return None
        known = self._decoded.get(key)
        if known is not None and known[0] is raw:  # the informer stores a new object for each change
            return known[1]
        try:
            db: types.ServerlessDatabase | None = codec.decode(raw)
        except ValueError:
            db = None
        self._decoded[key] = (raw, db)
        return db

    async def exists(self, key: str) -> bool:
        return self.database(key) is not None

    def awake(self, key: str) -> bool:
        """Active and Ready by the last status seen: the gateway's kept sessions may go on being used
        (a new session still asks for a wake, as every connection does)."""
        db = self.database(key)
        ready = db.status.condition(types.ConditionType.READY) if db is not None else None
        return (
            db is not None
            and db.status.phase is types.Phase.ACTIVE
            and ready is not None
            and ready.status is types.ConditionStatus.TRUE
        )

    async def upstream(self, key: str) -> Upstream | None:
        """Never a shortcut: a connection only reaches the activator when the operator routed it here,
        and a status that still says Active may be one write behind a pause. Every connection asks."""
        return None

    async def wake(self, key: str) -> Upstream:
        if not self._wakes.waiting(key):
            db = self.database(key)
            if db is None:
                raise WakeError(f"database {key} does not exist")
            if db.spec.state in (types.State.PAUSED, types.State.PARKED):
                raise WakeError(
                    f"database {key} is {db.spec.state.value.lower()} by its spec.state; "
                    "set it to Auto or Active to connect"
                )
        return await asyncio.shield(self._wakes.join(key, lambda: self._request(key)))

    async def _request(self, key: str) -> None:
        self._tokens.pop(key, None)
        try:
            self._tokens[key] = await self.store.request_wake(key)
        except kc.ApiError as error:
            raise WakeError(f"could not ask for a wake: {error.message}") from error
        self._check(key)

    def _check(self, key: str) -> None:
        """Settle a pending wake from the database's status, if the operator has answered it."""
        token = self._tokens.get(key)
        db = self.database(key)
        if not token or db is None or db.status.wake_request != token:
            return  # not answered yet (an Active status from before the request proves nothing)
        ready = db.status.condition(types.ConditionType.READY)
        if (
            db.status.phase is types.Phase.ACTIVE
            and ready is not None
            and ready.status is types.ConditionStatus.TRUE
        ):
            del self._tokens[key]
            self._wakes.succeed(key, self.address(db))
        elif (
            db.status.phase in (types.Phase.PAUSED, types.Phase.PARKED, types.Phase.FAILED)
            and ready is not None
        ):
            del self._tokens[key]
            self._wakes.fail(key, f"the database could not be woken: {ready.message}")

    def _changed(self, key: str, obj: dict[str, Any], deleted: bool) -> None:
        if self.identities is not None:
            db = None if deleted else self.database(key)
            self._spawn(self.identities.follow(key, db.spec.access.identities if db is not None else ()))
        # The port is in status, which only the operator writes: a spec author cannot claim another's.
        port = (obj.get("status") or {}).get("activatorPort")
        if deleted:
            self._decoded.pop(key, None)
        if deleted or not isinstance(port, int):
            if key in self._ports:
                self._spawn(self._unlisten(key))
            if deleted:
                self._tokens.pop(key, None)
                self._wakes.fail(key, f"database {key} was deleted")
            return
        if self._ports.get(key) != port:
            self._spawn(self._listen(key, port))
        self._check(key)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _listen(self, key: str, port: int) -> None:
        low, high = self.port_range
        if not low <= port <= high:
            log.warning("activator port outside the range", database=key, port=port)
            return
        holder = next((k for k, p in self._ports.items() if p == port and k != key), None)
        if holder is not None:  # the operator moves the younger claimant; until then the first keeps it
            log.warning("activator port claimed twice", database=key, port=port, holder=holder)
            return
        if key in self._ports:
            await self.activator.unlisten(key)
        try:
            await self.activator.listen(key, self.listen_host, port)
        except OSError as error:
            log.warning("cannot listen for a database", database=key, port=port, error=str(error))
            return
        self._ports[key] = port

    async def _unlisten(self, key: str) -> None:
        self._ports.pop(key, None)
        await self.activator.unlisten(key)

    async def run(self, stop: asyncio.Event) -> None:
        task = asyncio.create_task(self.databases.run())
        try:
            await stop.wait()
        finally:
            self.databases.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.activator.close()
            if self.identities is not None:
                await self.identities.endpoint.close()

    def ready(self) -> bool:
        return self.databases.synced.is_set()


class GatewayBackend:
    """The cluster backend as the gateway asks it. A gateway request comes whatever the database's
    state, unlike a connection the operator routed to the activator: one whose status says Active and
    Ready goes straight to its pod, asking for no wake; only a resting one is woken (and held)."""

    def __init__(self, cluster: ClusterBackend) -> None:
        self.cluster = cluster

    async def upstream(self, key: str) -> Upstream | None:
        db = self.cluster.database(key)
        return self.cluster.address(db) if db is not None and self.cluster.awake(key) else None

    async def wake(self, key: str) -> Upstream:
        return await self.cluster.wake(key)

    async def exists(self, key: str) -> bool:
        return await self.cluster.exists(key)

    def awake(self, key: str) -> bool:
        return self.cluster.awake(key)

    async def admits(self, key: str, peer: tuple[str, int]) -> bool:
        return await self.cluster.admits(key, peer)

    async def identities(self, key: str) -> Sequence[types.IdentitySpec] | None:
        db = self.cluster.database(key)
        return db.spec.access.identities if db is not None else None


@dataclass
class Identities:
    """The identity endpoint of every database with identities, on loopback, for the gateway."""

    endpoint: IdentityEndpoint
    hop: ssl.SSLContext
    """The endpoint's side of the hop from the gateway."""
    checked: PostgresTls
    """The gateway's side: how it checks the endpoint's certificate."""
    client_tls: ssl.SSLContext
    """The endpoint's TLS to Postgres, with the gateway's client certificate (reloaded when renewed)."""

    async def follow(self, key: str, identities: Sequence[types.IdentitySpec]) -> None:
        """Listen for a database that has identities, and stop for one that has none (or is gone)."""
        if identities:
            await self.endpoint.listen(key, LOOPBACK, 0, self.hop)
        else:
            await self.endpoint.unlisten(key)


def loopback_tls(directory: Path, *, now: datetime) -> tuple[ssl.SSLContext, PostgresTls]:
    """TLS for the hop from the gateway to the identity endpoint, both in this process: a certificate
    for 127.0.0.1 from a CA made now and trusted by nothing else (its key is never written), and how
    the gateway checks it (its certificate, written to `directory`)."""
    authority = pki.new_authority("serverless-db activator loopback", now=now)
    leaf = pki.issue(authority, common_name=LOOPBACK, names=[LOOPBACK], now=now)
    ca = directory / "loopback-ca.crt"
    ca.write_text(authority.certificate)
    with tempfile.TemporaryDirectory() as scratch:  # load_cert_chain reads files; the key goes at once
        certificate, key = Path(scratch) / "tls.crt", Path(scratch) / "tls.key"
        certificate.write_text(leaf.certificate)
        key.touch(mode=0o600)
        key.write_text(leaf.key)
        context = server.tls_context(certificate, key)
    return context, PostgresTls(ca=ca)


def client_tls(ca: Path, certificate: Path, key: Path) -> ssl.SSLContext:
    """The identity endpoint's TLS to Postgres: the database's certificate checked against the CA, the
    gateway's client certificate presented."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    return context


def identity_logins(
    kube: kc.Kube,
    backend: ClusterBackend,
    *,
    ca: Path,
    certificate: Path,
    key: Path,
    issuers: Sequence[tokens.Issuer] = (),
    observer: OperatorMetrics | None = None,
    wake_timeout: float = 30.0,
) -> Identities:
    """The gateway's identity endpoint, following the databases' identities. `ca`: the operator's CA;
    `certificate` and `key`: the gateway's client certificate."""
    endpoint = IdentityEndpoint(
        GatewayBackend(backend),
        Authenticator(issuers=issuers, reviewer=token_reviewer(kube), observer=observer),
        wake_timeout=wake_timeout,
    )
    endpoint.client_tls = client_tls(ca, certificate, key)
    hop, checked = loopback_tls(Path(tempfile.mkdtemp(prefix="sdb-activator-")), now=datetime.now(UTC))
    backend.identities = Identities(endpoint, hop, checked, endpoint.client_tls)
    return backend.identities


def postgres_tls(args: argparse.Namespace) -> PostgresTls:
    """The gateway's own connections to Postgres: each database's certificate checked against the CA
    (`--gateway-ca`, mounted with the gateway's certificate), for the pod's name. Unchecked only with
    `--gateway-plaintext`, which serves on loopback alone (for trying it out)."""
    if args.gateway_ca is not None:
        return PostgresTls(ca=args.gateway_ca)
    if args.gateway_plaintext:
        return PostgresTls()
    raise server.PlaintextError(
        "the gateway checks each database's certificate: give it --gateway-ca (the operator's CA)"
    )


def gateway_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """HTTPS from the mounted certificate, or plain HTTP when asked for (loopback only)."""
    if args.gateway_plaintext:
        return None
    if args.gateway_certificate is None or args.gateway_key is None:
        raise server.PlaintextError(
            "the gateway serves HTTPS: give it --gateway-certificate and --gateway-key "
            "(or --gateway-plaintext, on loopback only)"
        )
    return server.tls_context(args.gateway_certificate, args.gateway_key)


def run(args: argparse.Namespace, port_range: tuple[int, int], issuers: Sequence[tokens.Issuer] = ()) -> int:
    """`sdb activator`: hold connections to resting databases and wake them through the API.
    `issuers`: OIDC issuers whose tokens the gateway takes, beside ServiceAccounts' (TokenReview)."""

    async def main() -> None:
        kube = kc.Kube(process.api_client(), permissions.ACTIVATOR)
        backend = ClusterBackend(
            kube,
            namespace=args.watch_namespace or None,
            port_range=port_range,
            wake_timeout=args.wake_timeout,
        )
        exposition = OperatorMetrics()
        backend.activator.observer = exposition
        process.serve_metrics(exposition, args, default=METRICS_PORT)
        listening = process.gateway_socket(args, default=GATEWAY_PORT)
        gateway: Gateway | None = None
        reloading: list[asyncio.Task[None]] = []
        if listening is not None:
            logins: Identities | None = None
            if args.gateway_client_certificate is not None and args.gateway_ca is not None:
                logins = identity_logins(
                    kube,
                    backend,
                    ca=args.gateway_ca,
                    certificate=args.gateway_client_certificate,
                    key=args.gateway_client_key,
                    issuers=issuers,
                    observer=exposition,
                    wake_timeout=args.wake_timeout,
                )
                reloading.append(
                    asyncio.create_task(
                        server.reload_periodically(
                            logins.client_tls,
                            args.gateway_client_certificate,
                            args.gateway_client_key,
                        )
                    )
                )
            gateway = Gateway(
                GatewayBackend(backend),
                limits=Limits(wake_timeout=args.wake_timeout),
                observer=exposition,
                postgres_tls=postgres_tls(args),
                identity=logins.endpoint if logins else None,
                identity_tls=logins.checked if logins else None,
            )
            context = gateway_tls(args)
            await gateway.start(listening, ssl_context=context)
            if context is not None:
                reloading.append(
                    asyncio.create_task(
                        server.reload_periodically(context, args.gateway_certificate, args.gateway_key)
                    )
                )
        try:
            with process.probes(args, default=HEALTH_PORT, ready=backend.ready):
                await process.until_signalled(backend.run)
        finally:
            for task in reloading:
                task.cancel()
            if gateway is not None:
                await gateway.close()

    asyncio.run(main())
    return 0
