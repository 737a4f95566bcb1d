"""Every manifest the builders produce is valid for Kubernetes 1.33 (strict), in every phase."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from controller import pki
from controller.api import codec, types
from controller.app import cli
from controller.runtime.kubernetes import builders
from controller.runtime.kubernetes.render import PASSWORD_PLACEHOLDER

pytestmark = pytest.mark.kubernetes

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "manifests/samples").glob("*.yaml"))
PHASES = [types.Phase.ACTIVE, types.Phase.PAUSED, types.Phase.PARKED]


def database(path: Path) -> types.ServerlessDatabase:
    db = codec.decode(yaml.safe_load(path.read_text()))
    return types.ServerlessDatabase(
        metadata=types.ObjectMeta(name=db.metadata.name, namespace=db.metadata.namespace, uid="d5c6a9e0-1"),
        spec=db.spec,
    )


AUTHORITY = pki.new_authority("test CA", now=datetime(2026, 1, 1, tzinfo=UTC))


def rendered(db: types.ServerlessDatabase, phase: types.Phase) -> list[dict[str, Any]]:
    leaf = pki.issue(
        AUTHORITY, common_name="orders", names=builders.server_names(db), now=datetime(2026, 1, 1, tzinfo=UTC)
    )
    return builders.render(
        db,
        phase,
        password="s3cret",
        tls=leaf,
        ca=AUTHORITY.certificate,
        endpoints=[builders.Endpoint("10.1.2.3", 5432)],
        capacity=2.0,
    )


@pytest.mark.parametrize("phase", PHASES, ids=lambda p: p.value)
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_every_manifest_is_valid_for_kubernetes_1_33(sample: Path, phase: types.Phase) -> None:
    for obj in rendered(database(sample), phase):
        kubernetes_validate.validate(obj, "1.33.0", strict=True)


def test_objects_per_phase() -> None:
    db = database(ROOT / "manifests/samples/full.yaml")
    kinds = {p: sorted((o["kind"], o["metadata"]["name"]) for o in rendered(db, p)) for p in PHASES}
    assert kinds[types.Phase.PARKED] == [
        ("ConfigMap", builders.CA_NAME),
        ("EndpointSlice", "orders-sdb"),
        ("NetworkPolicy", "orders"),
        ("Secret", "orders-app"),
        ("Secret", "orders-credentials"),
        ("Secret", "orders-tls"),
        ("Service", "orders"),
    ]
    assert ("StatefulSet", "orders") in kinds[types.Phase.PAUSED]
    replicas = {
        p: next(o for o in rendered(db, p) if o["kind"] == "StatefulSet")["spec"]["replicas"]
        for p in (types.Phase.ACTIVE, types.Phase.PAUSED)
    }
    assert replicas == {types.Phase.ACTIVE: 1, types.Phase.PAUSED: 0}


def test_the_statefulset_is_what_the_issue_asks() -> None:
    db = database(ROOT / "manifests/samples/full.yaml")
    sts = builders.statefulset(db, replicas=1, capacity=1.5)
    spec = sts["spec"]
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    assert spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    postgres = spec["template"]["spec"]["containers"][0]
    assert postgres["resources"]["limits"] == {"cpu": "1500m", "memory": "6Gi"}
    assert (
        postgres["resources"]["requests"] == postgres["resources"]["limits"]
    )  # Guaranteed, kept by a resize
    assert {p["resourceName"]: p["restartPolicy"] for p in postgres["resizePolicy"]} == {
        "cpu": "NotRequired",
        "memory": "NotRequired",
    }
    assert "pg_isready" in postgres["readinessProbe"]["exec"]["command"]
    for container in spec["template"]["spec"]["containers"]:
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sts["metadata"]["ownerReferences"][0]["kind"] == types.KIND


def test_the_configuration_escapes_what_postgres_would_read_as_an_escape() -> None:
    db = database(ROOT / "manifests/samples/minimal.yaml")
    db = replace(
        db, spec=replace(db.spec, postgres=replace(db.spec.postgres, parameters={"search_path": "a\\n', b"}))
    )
    config = builders.configmap(db)["data"]["postgresql.conf"]
    # a backslash is doubled and a quote is doubled, so the value reads back as written
    assert "search_path = 'a\\\\n'', b'" in config


def test_the_client_service_has_no_selector_and_the_secret_no_owner() -> None:
    db = database(ROOT / "manifests/samples/minimal.yaml")
    assert "selector" not in builders.client_service(db)["spec"]
    assert "ownerReferences" not in builders.secret(db, "x", username="app", password="p")["metadata"]
    config = builders.configmap(db)["data"]["postgresql.conf"]
    assert "max_connections = '1802'" in config
    assert "shared_buffers = '128MB'" in config


def test_sdb_render_prints_a_valid_yaml_stream() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["render", "-f", str(ROOT / "manifests/samples/full.yaml"), "--phase", "Paused"]) == 0
    objects = list(yaml.safe_load_all(out.getvalue()))
    assert [o["kind"] for o in objects] == [
        "NetworkPolicy",
        "Secret",
        "Secret",
        "Secret",
        "ConfigMap",
        "Service",
        "EndpointSlice",
        "ConfigMap",
        "Service",
        "StatefulSet",
    ]
    assert objects[1]["stringData"]["password"] == PASSWORD_PLACEHOLDER
    exporter_queries = objects[7]["data"]["exporter-queries.yaml"]
    assert "pgbouncer" in exporter_queries
    assert "sdb-monitor" in exporter_queries
    for obj in objects:
        kubernetes_validate.validate(obj, "1.33.0", strict=True)


def test_postgres_serves_tls_from_the_mounted_secret_and_hba_takes_plaintext_only_by_membership() -> None:
    db = database(ROOT / "manifests/samples/full.yaml")
    config = builders.configmap(db)["data"]
    assert "ssl = 'on'" in config["postgresql.conf"]
    assert f"ssl_key_file = '{builders.TLS_MOUNT}/tls.key'" in config["postgresql.conf"]
    assert f"hba_file = '{builders.CONFIG_MOUNT}/pg_hba.conf'" in config["postgresql.conf"]
    assert config["pg_hba.conf"].splitlines()[1:] == [
        "local   all all peer",
        "hostssl all all all scram-sha-256",
        "host    all +sdb_plaintext all scram-sha-256",
    ]
    pod = builders.statefulset(db, replicas=1, capacity=1)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "orders-tls"
    assert volume["secret"]["defaultMode"] == 0o640  # root's, group-readable: what Postgres accepts
    exporter = next(c for c in pod["containers"] if c["name"] == "exporter")
    assert "sslmode=require" in exporter["env"][0]["value"]


def test_the_server_certificate_is_for_every_name_clients_use() -> None:
    db = database(ROOT / "manifests/samples/full.yaml")
    assert builders.server_names(db) == [
        "orders.shop.svc.cluster.local",
        "orders.shop.svc",
        "orders.shop",
        "orders",
        "orders-0.orders-headless.shop.svc",
    ]
    issuer = builders.IssuerRef.parse("ClusterIssuer/internal-ca")
    certificate = builders.certificate(db, issuer)
    assert certificate["spec"]["secretName"] == "orders-tls"
    assert certificate["spec"]["dnsNames"] == builders.server_names(db)
    assert certificate["spec"]["issuerRef"] == {
        "group": "cert-manager.io",
        "kind": "ClusterIssuer",
        "name": "internal-ca",
    }
    with pytest.raises(ValueError, match="Issuer/NAME or ClusterIssuer/NAME"):
        builders.IssuerRef.parse("internal-ca")
