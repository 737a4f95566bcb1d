"""The Kubernetes objects for a ServerlessDatabase, as pure functions of the database and a few facts.

Objects per database `<name>` in its namespace:
  StatefulSet   <name>             one Postgres pod `<name>-0` (replicas 1 active, 0 paused), the volume
                                   claim template `data` (PVC `data-<name>-0`), an exporter sidecar
  Service       <name>-headless    the pod's stable DNS name, for the StatefulSet
  Service       <name>             the client endpoint, without a selector
  EndpointSlice <name>-sdb         its only endpoints, owned by the operator: the pod when active,
                                   the activator (on this database's activator port) at rest
  Secret        <name>-credentials the generated password, made once and never rewritten
  Secret        <name>-tls         the server's certificate and key (kubernetes.io/tls), from the
                                   operator's CA or, with cert-manager, a Certificate <name>
  ConfigMap     <name>-config      postgresql.conf, pg_hba.conf and the exporter's queries
And per namespace with databases, the ConfigMap serverless-db-ca: the CA's certificate, for clients.
In the operator's namespace, `<activator>-tls` (the gateway's HTTPS) and `<activator>-client-tls`
(the client certificate the gateway logs in to Postgres with for a token; pg_ident maps its name).
Compute objects are owned by the ServerlessDatabase, so deleting it removes them; the Secret and the
PVC are not, and the operator's finalizer deletes them only when storage.retainOnDelete is false.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller import pki
from controller.api import types, units
from controller.policy import sizing
from controller.postgres import conf, encryption, exporter, identities

MANAGED_BY = "serverless-db-operator"
FIELD_MANAGER = "serverless-db-operator"
POSTGRES_PORT = 5432
EXPORTER_PORT = 9187
DEFAULT_VERSION = "16"
EXPORTER_IMAGE = "quay.io/prometheuscommunity/postgres-exporter:v0.11.1"
"""The release whose flags and per-scrape cost the Prometheus source is calibrated on (Debian 12's)."""
POSTGRES_UID = 999
"""The postgres user of the official image."""
DATA_MOUNT = "/var/lib/postgresql/data"
PGDATA = f"{DATA_MOUNT}/pgdata"
"""A directory below the mount point: a fresh volume's root holds lost+found, which initdb refuses."""
CONFIG_MOUNT = "/etc/sdb"
TLS_MOUNT = "/etc/sdb-tls"
CA_NAME = "serverless-db-ca"
"""The CA's Secret in the operator's namespace, and the ConfigMap of its certificate in every
namespace that has databases (what clients mount as their sslrootcert)."""
CA_KEY = "ca.crt"
CERT_MANAGER_GROUP = "cert-manager.io"
ACTIVATOR_PORTS = (20000, 29999)
"""The range the operator assigns activator ports from; the activator listens on each (the chart's
`--port-range`)."""
DATABASE_LABEL = f"{types.GROUP}/database"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""The label every namespace carries with its own name (Kubernetes sets it)."""


@dataclass(frozen=True)
class Names:
    statefulset: str
    pod: str
    headless: str
    service: str
    endpointslice: str
    secret: str
    """The operator's own credential (the superuser the operator and the exporter sidecar use)."""
    app_secret: str
    """The application role's credential: what clients get."""
    superuser_secret: str
    """The clients' superuser, only while spec.superuserAccess is true."""
    configmap: str
    pvc: str
    networkpolicy: str
    tls_secret: str
    certificate: str
    pooler: str
    """The pooled endpoint's Deployment, Service, NetworkPolicy and configuration Secret."""

    @classmethod
    def of(cls, name: str) -> Names:
        return cls(
            statefulset=name,
            pod=f"{name}-0",
            headless=f"{name}-headless",
            service=name,
            endpointslice=f"{name}-sdb",
            secret=f"{name}-credentials",
            app_secret=f"{name}-app",
            superuser_secret=f"{name}-superuser",
            configmap=f"{name}-config",
            pvc=f"data-{name}-0",
            networkpolicy=name,
            tls_secret=f"{name}-tls",
            certificate=name,
            pooler=f"{name}-pooler",
        )


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int


def labels(db: types.ServerlessDatabase) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "postgres",
        "app.kubernetes.io/instance": db.metadata.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        DATABASE_LABEL: db.metadata.name,
    }


def pooler_labels(db: types.ServerlessDatabase) -> dict[str, str]:
    """The pooler's: the database's and the operator's, but not the pod's name, so no selector of the
    database's pod (its Services, its NetworkPolicy, the StatefulSet) ever picks a pooler pod."""
    return {
        "app.kubernetes.io/name": "pgbouncer",
        "app.kubernetes.io/instance": db.metadata.name,
        "app.kubernetes.io/component": "pooler",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        DATABASE_LABEL: db.metadata.name,
    }


def _metadata(
    db: types.ServerlessDatabase, name: str, *, owned: bool = True, labelled: dict[str, str] | None = None
) -> dict[str, Any]:
    """`labelled`: labels other than the database pod's (those of its pooler)."""
    meta: dict[str, Any] = {"name": name, "namespace": db.metadata.namespace}
    meta["labels"] = labelled or labels(db)
    if owned:
        meta["ownerReferences"] = [
            {
                "apiVersion": types.API_VERSION,
                "kind": types.KIND,
                "name": db.metadata.name,
                "uid": db.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def image(db: types.ServerlessDatabase) -> str:
    return db.spec.postgres.image or f"postgres:{db.spec.postgres.version or DEFAULT_VERSION}"


def resources(capacity: float) -> dict[str, dict[str, str]]:
    """Requests equal limits (Guaranteed QoS), which an in-place resize must keep."""
    amounts = {
        "cpu": units.format_cpu(capacity * units.CPU_PER_CU),
        "memory": units.format_bytes(int(capacity * units.MEMORY_PER_CU)),
    }
    return {"requests": dict(amounts), "limits": dict(amounts)}


def capacity_of(resources_: dict[str, Any] | None) -> float | None:
    """Compute units from a container's CPU limit (or request)."""
    if not resources_:
        return None
    cpu = (resources_.get("limits") or {}).get("cpu") or (resources_.get("requests") or {}).get("cpu")
    if cpu is None:
        return None
    text = str(cpu)
    cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return round(cores / units.CPU_PER_CU / units.CU_STEP) * units.CU_STEP


def server_names(db: types.ServerlessDatabase) -> list[str]:
    """What clients call the database by (its Service, in each form), the pod's own name, and its
    pooled endpoint's Service (the pooler serves the same certificate)."""
    names, namespace = Names.of(db.metadata.name), db.metadata.namespace
    service = [f"{names.service}.{namespace}.svc.cluster.local", f"{names.service}.{namespace}.svc"]
    return [
        *service,
        f"{names.service}.{namespace}",
        names.service,
        f"{names.pod}.{names.headless}.{namespace}.svc",
        f"{names.pooler}.{namespace}.svc.cluster.local",
        f"{names.pooler}.{namespace}.svc",
        f"{names.pooler}.{namespace}",
        names.pooler,
    ]


GATEWAY_CLIENT_NAME = "serverless-db-gateway"
"""The common name of the gateway's client certificate: what pg_ident lets become the roles bound to
identities."""


def _hba() -> str:
    lines = encryption.hba_rules("all", local_peer=True).splitlines()
    first_tcp = next(at for at, line in enumerate(lines) if line.startswith("host"))
    return "\n".join([*lines[:first_tcp], *identities.hba_rules(), *lines[first_tcp:]]) + "\n"


HBA = _hba()
"""The image's init scripts use the Unix socket (peer); roles bound to identities log in by the
gateway's certificate only; the rest of TCP is SCRAM, plaintext as `encryption` allows."""
IDENT_FILE = f"{PGDATA}/pg_ident.conf"
"""Where the server reads pg_ident.conf: in the data directory, which the operator's session writes
to (`identities.apply`) as the spec's identities change."""


def postgresql_conf(db: types.ServerlessDatabase) -> str:
    settings = {
        "listen_addresses": "*",
        "port": str(POSTGRES_PORT),
        "unix_socket_directories": "/var/run/postgresql",
        "password_encryption": "scram-sha-256",
        "hba_file": f"{CONFIG_MOUNT}/pg_hba.conf",
        "ssl": "on",
        "ssl_cert_file": f"{TLS_MOUNT}/tls.crt",
        "ssl_key_file": f"{TLS_MOUNT}/tls.key",
        "ssl_ca_file": f"{TLS_MOUNT}/{CA_KEY}",
        "ident_file": IDENT_FILE,
        "ssl_min_protocol_version": "TLSv1.2",
        **sizing.restart_settings(db.spec),
        **sizing.reloadable_settings(db.spec.capacity.min),
        **db.spec.postgres.parameters,
    }
    return conf.render(
        settings, header="Managed by the serverless-db operator from the ServerlessDatabase's spec."
    )


def configmap(db: types.ServerlessDatabase) -> dict[str, Any]:
    names = Names.of(db.metadata.name)
    queries = exporter.queries(db.spec.auto_pause.ignored_applications)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(db, names.configmap),
        "data": {
            "postgresql.conf": postgresql_conf(db),
            "pg_hba.conf": HBA,
            "exporter-queries.yaml": queries,
        },
    }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass(frozen=True)
class Certified:
    """A server the operator keeps a certificate for: a database, or the activator's gateway. Its
    Secret (and, with cert-manager, its Certificate) carry this metadata."""

    secret: str
    certificate: str
    names: tuple[str, ...]
    """What clients call the server by; the second is the certificate's common name."""
    namespace: str
    labels: dict[str, str]
    owner: types.ServerlessDatabase | None = None
    """Deleted with this database (a gateway's certificate is no database's)."""
    client: bool = False
    """A client's certificate (names[1] is its common name, which Postgres's `cert` reads)."""

    @classmethod
    def database(cls, db: types.ServerlessDatabase) -> Certified:
        names = Names.of(db.metadata.name)
        return cls(
            secret=names.tls_secret,
            certificate=names.certificate,
            names=tuple(server_names(db)),
            namespace=db.metadata.namespace,
            labels=labels(db),
            owner=db,
        )

    @classmethod
    def gateway(cls, service: str, namespace: str) -> Certified:
        """The activator's HTTPS (SQL over HTTP, WebSocket), for its Service's names, in the system
        namespace; its Secret also holds the CA, which the gateway checks databases against."""
        return cls(
            secret=gateway_secret(service),
            certificate=service,
            names=(
                f"{service}.{namespace}.svc.cluster.local",
                f"{service}.{namespace}.svc",
                f"{service}.{namespace}",
                service,
            ),
            namespace=namespace,
            labels={"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/component": "gateway"},
        )

    @classmethod
    def gateway_client(cls, service: str, namespace: str) -> Certified:
        """The gateway's client certificate, with which it logs in to Postgres for a token's role."""
        return cls(
            secret=gateway_client_secret(service),
            certificate=f"{service}-client",
            names=(GATEWAY_CLIENT_NAME, GATEWAY_CLIENT_NAME),
            namespace=namespace,
            labels={"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/component": "gateway"},
            client=True,
        )

    def metadata(self, name: str) -> dict[str, Any]:
        if self.owner is not None:
            return _metadata(self.owner, name)
        return {"name": name, "namespace": self.namespace, "labels": dict(self.labels)}


def gateway_secret(service: str) -> str:
    """The gateway's certificate Secret, named after the activator's Service (the chart mounts it)."""
    return f"{service}-tls"


def gateway_client_secret(service: str) -> str:
    """The gateway's client certificate Secret (the chart mounts it too)."""
    return f"{service}-client-tls"


def tls_secret(certified: Certified, *, certificate: str, key: str, ca: str) -> dict[str, Any]:
    """A server's certificate; a database's is owned by it (re-issued at will, so deleted with it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": certified.metadata(certified.secret),
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": _b64(certificate),
            "tls.key": _b64(key),
            CA_KEY: _b64(ca),
        },
    }


def certificate(certified: Certified, issuer: IssuerRef) -> dict[str, Any]:
    """A cert-manager Certificate whose Secret is the one the server (or the client) mounts."""
    usage = "client auth" if certified.client else "server auth"
    names = {} if certified.client else {"dnsNames": list(certified.names)}
    return {
        "apiVersion": f"{CERT_MANAGER_GROUP}/v1",
        "kind": "Certificate",
        "metadata": certified.metadata(certified.certificate),
        "spec": {
            "secretName": certified.secret,
            "commonName": certified.names[1],
            **names,
            "usages": [usage, "digital signature", "key encipherment"],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "issuerRef": {"group": CERT_MANAGER_GROUP, "kind": issuer.kind, "name": issuer.name},
            "secretTemplate": {"labels": dict(certified.labels)},
        },
    }


@dataclass(frozen=True)
class IssuerRef:
    """A cert-manager issuer: `Issuer` (in each database's namespace) or `ClusterIssuer`."""

    kind: str
    name: str

    @classmethod
    def parse(cls, text: str) -> IssuerRef:
        """KIND/NAME, as the operator's --cert-manager-issuer takes it."""
        kind, _, name = text.partition("/")
        if kind not in ("Issuer", "ClusterIssuer") or not name:
            raise ValueError(f"a cert-manager issuer is Issuer/NAME or ClusterIssuer/NAME (got {text!r})")
        return cls(kind, name)


def ca_configmap(namespace: str, ca: str) -> dict[str, Any]:
    """The CA's certificate for the clients of one namespace; no database owns it."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CA_NAME,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY},
        },
        "data": {CA_KEY: ca},
    }


def secret(db: types.ServerlessDatabase, name: str, *, username: str, password: str) -> dict[str, Any]:
    """A credential as Kubernetes' basic-auth Secret; made once, never rewritten, kept like the PVC."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(db, name, owned=False),
        "type": "kubernetes.io/basic-auth",
        "stringData": {"username": username, "password": password},
    }


def headless_service(db: types.ServerlessDatabase) -> dict[str, Any]:
    names = Names.of(db.metadata.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(db, names.headless),
        "spec": {
            "clusterIP": "None",
            "selector": labels(db),
            "ports": [
                {"name": "postgres", "port": POSTGRES_PORT, "targetPort": POSTGRES_PORT, "protocol": "TCP"}
            ],
            "publishNotReadyAddresses": False,
        },
    }


def network_policy(db: types.ServerlessDatabase, *, system_namespace: str) -> dict[str, Any]:
    """Who may reach the database's pod: Postgres from the namespaces the spec allows (its own by
    default), from the operator's (the operator, the activator) and from its pooler; the exporter's
    metrics from any."""
    names = Names.of(db.metadata.name)
    allowed = sorted(set(db.spec.access.allowed_namespaces) or {db.metadata.namespace})
    postgres_port = [{"protocol": "TCP", "port": POSTGRES_PORT}]
    # Its pooler's server connections, whichever namespaces its clients come from.
    pooler_rule = (
        [{"from": [{"podSelector": {"matchLabels": pooler_labels(db)}}], "ports": postgres_port}]
        if db.spec.pooling.enabled
        else []
    )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(db, names.networkpolicy),
        "spec": {
            "podSelector": {"matchLabels": labels(db)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchExpressions": [
                                    {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": allowed}
                                ]
                            }
                        }
                    ],
                    "ports": postgres_port,
                },
                {
                    "from": [
                        {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: system_namespace}}}
                    ],
                    "ports": postgres_port,
                },
                *pooler_rule,
                {"ports": [{"protocol": "TCP", "port": EXPORTER_PORT}]},
            ],
        },
    }


def client_service(db: types.ServerlessDatabase) -> dict[str, Any]:
    """The endpoint clients use; no selector, so the operator alone decides where it leads."""
    names = Names.of(db.metadata.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(db, names.service),
        "spec": {
            "type": "ClusterIP",
            "ports": [
                {"name": "postgres", "port": POSTGRES_PORT, "targetPort": POSTGRES_PORT, "protocol": "TCP"}
            ],
        },
    }


def endpoint_slice(db: types.ServerlessDatabase, endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """The client Service's endpoints: the pod, or the activator's pods on this database's port."""
    names = Names.of(db.metadata.name)
    meta = _metadata(db, names.endpointslice)
    meta["labels"] = {
        **meta["labels"],
        "kubernetes.io/service-name": names.service,
        "endpointslice.kubernetes.io/managed-by": f"{MANAGED_BY}.{types.GROUP}",
    }
    ports = sorted({e.port for e in endpoints}) or [POSTGRES_PORT]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [e.address], "conditions": {"ready": True}}
            for e in sorted(endpoints, key=lambda e: e.address)
        ],
        # One port per slice: every endpoint here listens on the same one.
        "ports": [{"name": "postgres", "port": ports[0], "protocol": "TCP"}],
    }


def _security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": POSTGRES_UID,
        "runAsGroup": POSTGRES_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_hardening(*, group: int) -> dict[str, Any]:
    """What every pod the operator makes has: no API token, no service links, a minute to stop,
    non-root with the runtime's seccomp profile, its volumes the group's."""
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": {
            "runAsNonRoot": True,
            "fsGroup": group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def statefulset(db: types.ServerlessDatabase, *, replicas: int, capacity: float) -> dict[str, Any]:
    names = Names.of(db.metadata.name)
    secret_ref = {"name": names.secret, "key": "password"}
    postgres = {
        "name": "postgres",
        "image": image(db),
        "args": ["-c", f"config_file={CONFIG_MOUNT}/postgresql.conf"],
        "env": [
            {"name": "PGDATA", "value": PGDATA},
            {"name": "POSTGRES_USER", "value": "postgres"},
            {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": secret_ref}},
            {"name": "POSTGRES_INITDB_ARGS", "value": "--auth-host=scram-sha-256 --auth-local=peer"},
        ],
        "ports": [{"name": "postgres", "containerPort": POSTGRES_PORT, "protocol": "TCP"}],
        "resources": resources(capacity),
        "resizePolicy": [
            {"resourceName": "cpu", "restartPolicy": "NotRequired"},
            {"resourceName": "memory", "restartPolicy": "NotRequired"},
        ],
        # Ready means it accepts connections to the postgres database, not merely that the port is open.
        "readinessProbe": {
            "exec": {
                "command": [
                    "pg_isready",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(POSTGRES_PORT),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ]
            },
            "periodSeconds": 1,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-p", str(POSTGRES_PORT)]},
            "initialDelaySeconds": 30,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "securityContext": _security_context(),
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_MOUNT},
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True},
            {"name": "run", "mountPath": "/var/run/postgresql"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    sidecar = {
        "name": "exporter",
        "image": EXPORTER_IMAGE,
        "args": [f"--extend.query-path={CONFIG_MOUNT}/exporter-queries.yaml", *exporter.ARGS],
        "env": [
            # Tagged as the operator's own, so the sidecar's session never counts as a client.
            {
                "name": "DATA_SOURCE_URI",
                "value": f"127.0.0.1:{POSTGRES_PORT}/postgres?sslmode=require"
                f"&application_name={exporter.APPLICATION}",
            },
            {"name": "DATA_SOURCE_USER", "value": "postgres"},
            {"name": "DATA_SOURCE_PASS", "valueFrom": {"secretKeyRef": secret_ref}},
        ],
        "ports": [{"name": "exporter", "containerPort": EXPORTER_PORT, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": {**_security_context(), "runAsUser": 65534, "runAsGroup": 65534},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}],
    }
    claim: dict[str, Any] = {
        "metadata": {"name": "data", "labels": labels(db)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": db.spec.storage.size}},
        },
    }
    if db.spec.storage.storage_class_name:
        claim["spec"]["storageClassName"] = db.spec.storage.storage_class_name
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(db, names.statefulset),
        "spec": {
            "replicas": replicas,
            "serviceName": names.headless,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels(db)},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "template": {
                "metadata": {"labels": labels(db)},
                "spec": {
                    **pod_hardening(group=POSTGRES_UID),
                    "containers": [postgres, sidecar],
                    "volumes": [
                        {"name": "config", "configMap": {"name": names.configmap}},
                        # Root's with the pod's group (fsGroup), 0640: as Postgres takes a key file.
                        {
                            "name": "tls",
                            "secret": {
                                "secretName": names.tls_secret,
                                "defaultMode": 0o640,
                                "items": [
                                    {"key": "tls.crt", "path": "tls.crt"},
                                    {"key": "tls.key", "path": "tls.key"},
                                ],
                            },
                        },
                        {"name": "run", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
            "volumeClaimTemplates": [claim],
        },
    }


def render(
    db: types.ServerlessDatabase,
    phase: types.Phase,
    *,
    password: str,
    tls: pki.KeyPair,
    ca: str,
    system_namespace: str = "sdb-system",
    endpoints: Sequence[Endpoint] = (),
    capacity: float | None = None,
) -> list[dict[str, Any]]:
    """Every object the runtime keeps for a database in a phase (Active, Paused or Parked)."""
    names = Names.of(db.metadata.name)
    objects = [
        network_policy(db, system_namespace=system_namespace),
        secret(db, names.secret, username="postgres", password=password),
        secret(db, names.app_secret, username="app", password=password),
        tls_secret(Certified.database(db), certificate=tls.certificate, key=tls.key, ca=ca),
        ca_configmap(db.metadata.namespace, ca),
        client_service(db),
        endpoint_slice(db, endpoints),
    ]
    if phase is types.Phase.PARKED:
        return objects
    replicas = 1 if phase is types.Phase.ACTIVE else 0
    return [
        *objects,
        configmap(db),
        headless_service(db),
        statefulset(db, replicas=replicas, capacity=capacity or db.spec.capacity.min),
    ]
