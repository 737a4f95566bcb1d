"""Every manifest the builders produce is valid for Kubernetes 1.33 (strict), in every phase."""

from __future__ import annotations

import base64
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
from controller.runtime.kubernetes import pooler as pooled
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
    # Roles bound to identities: the gateway's client certificate (checked against the CA), never a password.
    assert f"ssl_ca_file = '{builders.TLS_MOUNT}/ca.crt'" in config["postgresql.conf"]
    assert f"ident_file = '{builders.PGDATA}/pg_ident.conf'" in config["postgresql.conf"]
    assert config["pg_hba.conf"].splitlines()[1:] == [
        "local   all all peer",
        "hostssl all +sdb_identity all cert map=identities",
        "host    all +sdb_identity all reject",
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
        "orders-pooler.shop.svc.cluster.local",
        "orders-pooler.shop.svc",
        "orders-pooler.shop",
        "orders-pooler",
    ]
    issuer = builders.IssuerRef.parse("ClusterIssuer/internal-ca")
    certificate = builders.certificate(builders.Certified.database(db), issuer)
    assert certificate["spec"]["secretName"] == "orders-tls"
    assert certificate["spec"]["dnsNames"] == builders.server_names(db)
    assert certificate["spec"]["issuerRef"] == {
        "group": "cert-manager.io",
        "kind": "ClusterIssuer",
        "name": "internal-ca",
    }
    with pytest.raises(ValueError, match="Issuer/NAME or ClusterIssuer/NAME"):
        builders.IssuerRef.parse("internal-ca")


def pooled_database(**pooling: Any) -> types.ServerlessDatabase:
    db = database(ROOT / "manifests/samples/full.yaml")
    spec = replace(db.spec, pooling=replace(db.spec.pooling, enabled=True, **pooling))
    return replace(db, spec=spec)


def pooler_objects(db: types.ServerlessDatabase, capacity: float = 1.0) -> dict[str, dict[str, Any]]:
    files = pooled.files(
        db, capacity, app_password="app-pw", superuser_password="su-pw", admin_password="adm"
    )
    objects = pooled.objects(db, files, admin_password="adm", system_namespace="sdb-system")
    return {o["kind"]: o for o in objects}


@pytest.mark.parametrize("mode", list(types.PoolMode), ids=lambda m: m.value)
def test_the_pooler_objects_are_valid_for_kubernetes_1_33_and_owned(mode: types.PoolMode) -> None:
    objects = pooler_objects(pooled_database(mode=mode))
    assert sorted(objects) == ["Deployment", "NetworkPolicy", "Secret", "Service"]
    for obj in objects.values():
        kubernetes_validate.validate(obj, "1.33.0", strict=True)
        assert obj["metadata"]["name"] == "orders-pooler"
        assert obj["metadata"]["ownerReferences"][0]["kind"] == types.KIND
        assert obj["metadata"]["labels"][builders.DATABASE_LABEL] == "orders"


def test_the_pooler_runs_a_pinned_pgbouncer_with_prepared_statements_hardened() -> None:
    objects = pooler_objects(pooled_database(mode=types.PoolMode.TRANSACTION))
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == pooled.IMAGE
    tag = pooled.IMAGE.split(":", 1)[1].split("@")[0]
    assert tuple(int(p) for p in tag.split("-")[0].split(".")[:2]) >= (1, 21)
    assert "@sha256:" in pooled.IMAGE
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    mounted = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"]}
    assert mounted == {"config": "orders-pooler", "tls": "orders-tls"}
    config_items = next(v for v in pod["volumes"] if v["name"] == "config")["secret"]["items"]
    assert [i["key"] for i in config_items] == ["pgbouncer.ini", "users.txt"]  # not the console's password
    ini = base64.b64decode(objects["Secret"]["data"]["pgbouncer.ini"]).decode()
    assert "pool_mode = transaction" in ini
    assert f"max_prepared_statements = {pooled.PREPARED_STATEMENTS}" in ini
    # Server connections go to the database's own Service (the activator while it rests), checked by name.
    assert "app = host=orders.shop.svc port=5432 dbname=app" in ini
    assert "server_tls_sslmode = verify-full" in ini
    assert "min_pool_size = 0" in ini
    assert "server_idle_timeout = " in ini
    users = base64.b64decode(objects["Secret"]["data"]["users.txt"]).decode()
    assert "app-pw" not in users
    assert "SCRAM-SHA-256$" in users


def test_no_selector_of_the_database_picks_a_pooler_pod() -> None:
    db = pooled_database()
    pooler_pod = pooler_objects(db)["Deployment"]["spec"]["template"]["metadata"]["labels"]
    database_pod = builders.statefulset(db, replicas=1, capacity=1)["spec"]["template"]["metadata"]["labels"]
    for selector in (
        builders.headless_service(db)["spec"]["selector"],
        builders.network_policy(db, system_namespace="sdb-system")["spec"]["podSelector"]["matchLabels"],
    ):
        assert selector.items() <= database_pod.items()
        assert not selector.items() <= pooler_pod.items()
    assert pooler_objects(db)["Service"]["spec"]["selector"] == pooler_pod


def test_the_database_lets_its_pooler_in_only_while_pooling_is_on() -> None:
    db = pooled_database()
    pooler_pod = pooler_objects(db)["Deployment"]["spec"]["template"]["metadata"]["labels"]

    def peers(db_: types.ServerlessDatabase) -> list[dict[str, Any]]:
        ingress = builders.network_policy(db_, system_namespace="sdb-system")["spec"]["ingress"]
        return [
            p["podSelector"]["matchLabels"]
            for rule in ingress
            for p in rule.get("from", [])
            if "podSelector" in p
        ]

    assert peers(db) == [pooler_pod]
    assert peers(replace(db, spec=replace(db.spec, pooling=types.PoolingSpec()))) == []


def test_a_resize_changes_the_pool_in_the_secret_and_not_the_pod_template() -> None:
    db = pooled_database()
    small, large = pooler_objects(db, 0.25), pooler_objects(db, 4.0)
    ini = {
        n: base64.b64decode(o["Secret"]["data"]["pgbouncer.ini"]).decode()
        for n, o in (("s", small), ("l", large))
    }
    assert ini["s"] != ini["l"]
    assert small["Deployment"] == large["Deployment"]  # no rollout: the console takes the new size
    other_mode = pooler_objects(pooled_database(mode=types.PoolMode.SESSION), 0.25)
    annotation = pooled.CONFIG_ANNOTATION
    template = other_mode["Deployment"]["spec"]["template"]["metadata"]["annotations"][annotation]
    assert template != small["Deployment"]["spec"]["template"]["metadata"]["annotations"][annotation]


def test_sdb_render_shows_the_pooler_with_pooling_on(tmp_path: Path) -> None:
    manifest = yaml.safe_load((ROOT / "manifests/samples/full.yaml").read_text())
    manifest["spec"]["pooling"] = {"enabled": True}
    path = tmp_path / "pooled.yaml"
    path.write_text(yaml.safe_dump(manifest))
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["render", "-f", str(path), "--phase", "Paused"]) == 0
    objects = list(yaml.safe_load_all(out.getvalue()))
    assert [o["kind"] for o in objects if o["metadata"]["name"] == "orders-pooler"] == [
        "Secret",
        "NetworkPolicy",
        "Service",
        "Deployment",
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.33.0", strict=True)
