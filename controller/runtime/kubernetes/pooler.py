"""The pooled endpoint in a cluster: a database's PgBouncer objects, as pure functions of it and its size.

Objects per database `<name>` with spec.pooling.enabled, all owned by the ServerlessDatabase:
  Secret        <name>-pooler  pgbouncer.ini and users.txt (the roles' SCRAM secrets, no password),
                               which the pooler mounts, and admin-password, the operator's own
                               login to its console, which the pooler does not mount
  Deployment    <name>-pooler  one PgBouncer pod from a pinned image (1.21 or later, so that
                               protocol-level prepared statements work in transaction mode)
  Service       <name>-pooler  the pooled endpoint, port 5432
  NetworkPolicy <name>-pooler  pooled clients from the namespaces the database allows, and the
                               operator's namespace (the console)
The configuration is the one `controller.postgres.pooler` renders for the local runtime too; only
the layout differs. The pooler's server connections go to the database's own Service, so a pooled
client's first query wakes a paused database through the activator, as a direct client's does.

A resize changes the pool on the console (as locally) and in the Secret, for the next start; the pod
template carries a digest of the rest of the configuration, so any other change rolls the pooler
(a new pod first), since the kubelet brings a changed Secret to a running pod only a minute or so
later, too late for a RELOAD told at once.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

from controller.api import types
from controller.postgres import pooler, roles
from controller.runtime.kubernetes import builders

IMAGE = (
    "ghcr.io/cloudnative-pg/pgbouncer:1.25.1-trixie"
    "@sha256:e6ddfe22d845e603825e235dd8334b21ecd125abea2a2172478f556b8dee2bb8"
)
"""CloudNativePG's PgBouncer image (Debian with PgBouncer 1.25.1), by tag and digest; the chart's
`pooler.image` and the operator's --pooler-image say which one runs."""
PORT = builders.POSTGRES_PORT
"""The pooler listens where Postgres does, so the same NetworkPolicy ports reach either."""
CONFIG_MOUNT = "/etc/pgbouncer"
TLS_MOUNT = "/etc/pgbouncer-tls"
PGBOUNCER_UID = 998
PGBOUNCER_GID = 996
"""The pgbouncer user and group of that image."""
PREPARED_STATEMENTS = 200
"""Protocol-level prepared statements PgBouncer keeps per server connection in transaction mode."""
CONFIG_ANNOTATION = f"{types.GROUP}/pooler-config"
"""On the pod template: a digest of the configuration other than the pool size."""
ADMIN_PASSWORD_KEY = "admin-password"


@dataclass(frozen=True)
class Files:
    """What the pooler reads: its configuration and its logins."""

    ini: str
    users: str = field(repr=False)

    @property
    def digest(self) -> str:
        """The same for two configurations that differ at most in the pool size."""
        return hashlib.sha256(f"{pooler.shape(self.ini)}\0{self.users}".encode()).hexdigest()[:16]


def layout(db: types.ServerlessDatabase) -> pooler.Layout:
    names = builders.Names.of(db.metadata.name)
    ca = f"{TLS_MOUNT}/{builders.CA_KEY}"
    return pooler.Layout(
        listen_address="*",
        listen_port=PORT,
        server_host=f"{names.service}.{db.metadata.namespace}.svc",
        server_port=builders.POSTGRES_PORT,
        auth_file=f"{CONFIG_MOUNT}/users.txt",
        tls=pooler.Tls(f"{TLS_MOUNT}/tls.crt", f"{TLS_MOUNT}/tls.key", ca),
        # Across the network: the server is checked against the operator's CA, by the Service's name.
        server_tls_sslmode="verify-full",
        server_tls_ca_file=ca,
        prepared_statements=PREPARED_STATEMENTS,
    )


def files(
    db: types.ServerlessDatabase,
    capacity: float,
    *,
    app_password: str,
    superuser_password: str | None,
    admin_password: str,
) -> Files:
    verifiers = {roles.APP_ROLE: roles.role_verifier(app_password)}
    if superuser_password is not None:
        verifiers[roles.SUPERUSER_ROLE] = roles.role_verifier(superuser_password)
    users = pooler.auth_file(pooler.Secrets(verifiers, admin_password))
    return Files(pooler.render(db.spec, capacity, layout(db)), users)


def _metadata(db: types.ServerlessDatabase) -> dict[str, Any]:
    names = builders.Names.of(db.metadata.name)
    return builders._metadata(db, names.pooler, labelled=builders.pooler_labels(db))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(db: types.ServerlessDatabase, files_: Files, *, admin_password: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(db),
        "type": "Opaque",
        "data": {
            "pgbouncer.ini": _b64(files_.ini),
            "users.txt": _b64(files_.users),
            ADMIN_PASSWORD_KEY: _b64(admin_password),
        },
    }


def _secret_volume(name: str, secret_name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """Only these keys of the Secret, readable by the pod's group (fsGroup) and no one else."""
    items = [{"key": key, "path": key} for key in keys]
    return {"name": name, "secret": {"secretName": secret_name, "defaultMode": 0o440, "items": items}}


def deployment(db: types.ServerlessDatabase, files_: Files, *, image: str = IMAGE) -> dict[str, Any]:
    names = builders.Names.of(db.metadata.name)
    selector = builders.pooler_labels(db)
    probe = {"tcpSocket": {"port": "pgbouncer"}}
    container = {
        "name": "pgbouncer",
        "image": image,
        "command": ["pgbouncer", f"{CONFIG_MOUNT}/pgbouncer.ini"],
        "ports": [{"name": "pgbouncer", "containerPort": PORT, "protocol": "TCP"}],
        # A client costs PgBouncer a few kilobytes: 10,000 of them fit in the limit.
        "resources": {
            "requests": {"cpu": "50m", "memory": "32Mi"},
            "limits": {"cpu": "1", "memory": "256Mi"},
        },
        "readinessProbe": {**probe, "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3},
        "livenessProbe": {**probe, "initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 6},
        "securityContext": {
            **builders._security_context(),
            "runAsUser": PGBOUNCER_UID,
            "runAsGroup": PGBOUNCER_GID,
        },
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(db),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            # The new pod serves before the old one stops; PgBouncer's SIGTERM lets its clients finish.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": selector, "annotations": {CONFIG_ANNOTATION: files_.digest}},
                "spec": {
                    **builders.pod_hardening(group=PGBOUNCER_GID),
                    "containers": [container],
                    "volumes": [
                        _secret_volume("config", names.pooler, ("pgbouncer.ini", "users.txt")),
                        _secret_volume("tls", names.tls_secret, ("tls.crt", "tls.key", builders.CA_KEY)),
                    ],
                },
            },
        },
    }


def service(db: types.ServerlessDatabase) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(db),
        "spec": {
            "type": "ClusterIP",
            "selector": builders.pooler_labels(db),
            "ports": [{"name": "postgres", "port": PORT, "targetPort": "pgbouncer", "protocol": "TCP"}],
        },
    }


def network_policy(db: types.ServerlessDatabase, *, system_namespace: str) -> dict[str, Any]:
    """Pooled clients from the namespaces the database allows (its own by default), as its own
    NetworkPolicy lets direct ones; the operator, for the console, from its namespace."""
    allowed = sorted(set(db.spec.access.allowed_namespaces) or {db.metadata.namespace})
    port = [{"protocol": "TCP", "port": PORT}]

    def namespaces(values: list[str]) -> dict[str, Any]:
        expression = {"key": builders.NAMESPACE_NAME_LABEL, "operator": "In", "values": values}
        return {"namespaceSelector": {"matchExpressions": [expression]}}

    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(db),
        "spec": {
            "podSelector": {"matchLabels": builders.pooler_labels(db)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [namespaces(allowed)], "ports": port},
                {"from": [namespaces([system_namespace])], "ports": port},
            ],
        },
    }


def endpoint(db: types.ServerlessDatabase) -> str:
    """The pooled endpoint, as status reports it."""
    names = builders.Names.of(db.metadata.name)
    return f"{names.pooler}.{db.metadata.namespace}.svc:{PORT}"


def objects(
    db: types.ServerlessDatabase,
    files_: Files,
    *,
    admin_password: str,
    system_namespace: str,
    image: str = IMAGE,
) -> list[dict[str, Any]]:
    """Every pooler object, the Deployment last: it mounts the Secret."""
    return [
        secret(db, files_, admin_password=admin_password),
        network_policy(db, system_namespace=system_namespace),
        service(db),
        deployment(db, files_, image=image),
    ]
