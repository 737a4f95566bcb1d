"""The Helm chart, rendered by the real helm: what it installs, how its pods run, and its options."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml
from helmchart import (
    ALL_FEATURES,
    CHART,
    NAMESPACE,
    RELEASE,
    ROOT,
    Obj,
    Rendered,
    all_features_objects,
    container,
    default_objects,
    deployment,
    find,
    helm,
    one,
    render,
    selects,
    template,
)
from support import crd_schema

from controller.runtime.kubernetes import pooler as pooled

pytestmark = pytest.mark.helm

FULLNAME = RELEASE  # the release is named after the chart, so the full name is the release's name
RECOMMENDED_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
)
CLUSTER_SCOPED = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Namespace"}


def test_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]


@pytest.mark.parametrize("values", [None, ALL_FEATURES], ids=["defaults", "all-features"])
def test_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    result = helm(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_default_install_is_operator_activator_and_rbac() -> None:
    objects = default_objects()
    rendered = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert rendered == sorted(
        [
            ("CustomResourceDefinition", "serverlessdatabases.dbscale.io"),
            ("CustomResourceDefinition", "wakerequests.dbscale.io"),
            ("ServiceAccount", FULLNAME),
            ("ServiceAccount", f"{FULLNAME}-activator"),
            ("ClusterRole", FULLNAME),
            ("ClusterRole", f"{FULLNAME}-activator"),
            ("ClusterRole", f"{FULLNAME}-edit"),
            ("ClusterRole", f"{FULLNAME}-view"),
            ("ClusterRoleBinding", FULLNAME),
            ("ClusterRoleBinding", f"{FULLNAME}-activator"),
            ("Service", f"{FULLNAME}-metrics"),
            ("Service", f"{FULLNAME}-activator"),
            ("Deployment", FULLNAME),
            ("Deployment", f"{FULLNAME}-activator"),
            ("PodDisruptionBudget", f"{FULLNAME}-activator"),
            # one ConfigMap per dashboard the chart ships (none while dashboards/ is empty)
            *(("ConfigMap", f"{FULLNAME}-dashboard-{_slug(p)}") for p in _dashboards()),
        ]
    )


def _dashboards(chart: Path = CHART) -> list[Path]:
    return sorted((chart / "dashboards").glob("*.json"))


def _slug(path: Path) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", path.stem.lower()).strip("-")


@pytest.mark.parametrize("objects", [default_objects, all_features_objects], ids=["defaults", "all-features"])
def test_every_object_is_labelled_and_placed(objects: Rendered) -> None:
    for obj in objects():
        if obj["kind"] == "CustomResourceDefinition":
            continue  # crds/ is installed as it is, without templating
        labels = obj["metadata"]["labels"]
        missing = [label for label in RECOMMENDED_LABELS if label not in labels]
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"].get("namespace"), (
                f"{obj['kind']}/{obj['metadata']['name']} has no namespace"
            )
        assert len(obj["metadata"]["name"]) <= (253 if obj["kind"] == "ConfigMap" else 63)


def test_operator_runs_sdb_up_with_leader_election() -> None:
    deploy = deployment(default_objects(), "operator")
    main = container(deploy)
    assert deploy["spec"]["replicas"] == 1
    assert main["args"] == [
        "up",
        "--runtime",
        "kubernetes",
        "--leader-elect",
        "--lease-name",
        FULLNAME,
        "--lease-namespace",
        "$(POD_NAMESPACE)",
        "--metrics-address",
        "0.0.0.0",
        "--metrics-port",
        "9465",
        "--health-port",
        "8081",
        "--activator-service",
        f"{FULLNAME}-activator",
        "--log-format",
        "json",
        "--pooler-image",
        pooled.IMAGE,
        "--gateway-endpoint",
        f"https://{FULLNAME}-activator.{NAMESPACE}.svc/sql",
    ]
    assert "command" not in main  # the image's entrypoint is `sdb`
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in main["env"]}
    assert env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
    _assert_probes(main, port=8081)
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {"metrics": 9465, "health": 8081}


def test_activator_runs_sdb_activator() -> None:
    deploy = deployment(default_objects(), "activator")
    main = container(deploy)
    assert deploy["spec"]["replicas"] == 2
    assert main["args"] == [
        "activator",
        "--metrics-address",
        "0.0.0.0",
        "--metrics-port",
        "9466",
        "--health-port",
        "8082",
        "--wake-timeout",
        "30",
        "--port-range",
        "20000-29999",
        "--log-format",
        "json",
        "--gateway-port",
        "9443",
        "--gateway-certificate",
        "/etc/sdb-gateway/tls.crt",
        "--gateway-key",
        "/etc/sdb-gateway/tls.key",
        "--gateway-ca",
        "/etc/sdb-gateway/ca.crt",
        "--gateway-client-certificate",
        "/etc/sdb-gateway-client/tls.crt",
        "--gateway-client-key",
        "/etc/sdb-gateway-client/tls.key",
    ]
    _assert_probes(main, port=8082)
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {
        "metrics": 9466,
        "health": 8082,
        "gateway": 9443,
    }


def test_the_gateway_serves_https_from_the_certificate_the_operator_issues() -> None:
    """The activator mounts the Secret the operator writes for its Service (named by --activator-service),
    serves it on the Service's HTTPS port, and checks databases against the CA in it."""
    from controller.runtime.kubernetes import builders

    objects = default_objects()
    service_name = _arg(container(deployment(objects, "operator")), "--activator-service")
    pod = deployment(objects, "activator")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "gateway-tls")
    assert volume["secret"] == {"secretName": builders.gateway_secret(service_name), "defaultMode": 0o440}
    mount = next(
        m for m in container(deployment(objects, "activator"))["volumeMounts"] if m["name"] == "gateway-tls"
    )
    assert mount == {"name": "gateway-tls", "mountPath": "/etc/sdb-gateway", "readOnly": True}
    main = container(deployment(objects, "activator"))
    for flag, key in (
        ("--gateway-certificate", "tls.crt"),
        ("--gateway-key", "tls.key"),
        ("--gateway-ca", "ca.crt"),
    ):
        assert _arg(main, flag) == f"/etc/sdb-gateway/{key}"
    # Its client certificate, for a token's role at Postgres (the Secret the operator writes beside it).
    client = next(v for v in pod["volumes"] if v["name"] == "gateway-client-tls")
    assert client["secret"] == {
        "secretName": builders.gateway_client_secret(service_name),
        "defaultMode": 0o440,
    }
    mount = next(m for m in main["volumeMounts"] if m["name"] == "gateway-client-tls")
    assert mount == {"name": "gateway-client-tls", "mountPath": "/etc/sdb-gateway-client", "readOnly": True}
    assert _arg(main, "--gateway-client-certificate") == "/etc/sdb-gateway-client/tls.crt"
    assert _arg(main, "--gateway-client-key") == "/etc/sdb-gateway-client/tls.key"
    gateway = next(
        p for p in one(objects, "Service", service_name)["spec"]["ports"] if p["name"] == "gateway"
    )
    assert gateway == {
        "name": "gateway",
        "port": 443,
        "targetPort": "gateway",
        "protocol": "TCP",
        "appProtocol": "https",
    }
    # The operator tells each database's status where that is.
    assert _arg(container(deployment(objects, "operator")), "--gateway-endpoint") == (
        f"https://{service_name}.{NAMESPACE}.svc/sql"
    )
    moved = render(values={"activator": {"gateway": {"servicePort": 8443}}})
    assert _arg(container(deployment(moved, "operator")), "--gateway-endpoint") == (
        f"https://{service_name}.{NAMESPACE}.svc:8443/sql"
    )
    # An OIDC issuer: its URL and the keys mounted from the user's ConfigMap (none by default).
    assert "--oidc-issuer" not in main["args"]
    features = container(deployment(all_features_objects(), "activator"))
    assert _arg(features, "--oidc-issuer") == "https://issuer.example.com"
    assert _arg(features, "--oidc-jwks") == "/etc/sdb-oidc/jwks.json"
    jwks = next(
        v
        for v in deployment(all_features_objects(), "activator")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "oidc-jwks"
    )
    assert jwks["configMap"] == {
        "name": "sdb-oidc-jwks",
        "items": [{"key": "jwks.json", "path": "jwks.json"}],
    }
    refused = template(values={"activator": {"gateway": {"oidc": {"issuer": "https://x"}}}}, check=False)
    assert refused.returncode != 0
    assert "jwksConfigMap is required" in refused.stderr
    # Off: no port, no mount, no flag (and so no Secret the pod waits for).
    off = render(values={"activator": {"gateway": {"enabled": False}}, "networkPolicy": {"enabled": True}})
    main = container(deployment(off, "activator"))
    assert "--gateway-port" not in main["args"]
    assert "--gateway-client-certificate" not in main["args"]
    assert "--gateway-endpoint" not in container(deployment(off, "operator"))["args"]
    assert [v["name"] for v in deployment(off, "activator")["spec"]["template"]["spec"]["volumes"]] == ["tmp"]
    assert [p["name"] for p in one(off, "Service", service_name)["spec"]["ports"]] == ["metrics"]
    assert len(one(off, "NetworkPolicy", f"{FULLNAME}-activator")["spec"]["ingress"]) == 2


def _assert_probes(main: Obj, *, port: int) -> None:
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = main[probe]["httpGet"]
        assert get["path"] == path
        assert ports[get["port"]] == port


def test_the_operator_finds_the_activators_through_their_service() -> None:
    """--activator-service names a Service whose selector picks the activator's pods, and only them."""
    objects = default_objects()
    service_name = _arg(container(deployment(objects, "operator")), "--activator-service")
    service = one(objects, "Service", service_name)
    activator = deployment(objects, "activator")["spec"]["template"]["metadata"]["labels"]
    operator = deployment(objects, "operator")["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], activator)
    assert not selects(service["spec"]["selector"], operator)
    assert service["spec"]["ports"][0] == {
        "name": "metrics",
        "port": 9466,
        "targetPort": "metrics",
        "protocol": "TCP",
    }
    metrics = one(objects, "Service", f"{FULLNAME}-metrics")
    assert selects(metrics["spec"]["selector"], operator)
    assert not selects(metrics["spec"]["selector"], activator)


def _arg(main: Obj, flag: str) -> str:
    args: list[str] = main["args"]
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("component", ["operator", "activator"])
@pytest.mark.parametrize("objects", [default_objects, all_features_objects], ids=["defaults", "all-features"])
def test_pods_meet_the_restricted_pod_security_standard(component: str, objects: Rendered) -> None:
    spec = deployment(objects(), component)["spec"]["template"]["spec"]
    main = container({"spec": {"template": {"spec": spec}}})
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == 65532
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    security = main["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security.get("privileged") is False
    assert "hostNetwork" not in spec
    assert "hostPID" not in spec
    # a writable /tmp on an emptyDir, since the root filesystem is read-only
    tmp = next(m for m in main["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in spec["volumes"] if v["name"] == tmp["name"])
    assert "emptyDir" in volume
    assert main["resources"]["requests"]["cpu"]
    assert main["resources"]["requests"]["memory"]
    assert main["resources"]["limits"]["memory"]


def test_image_defaults_to_the_app_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for component in ("operator", "activator"):
        image = container(deployment(default_objects(), component))["image"]
        assert image == f"ghcr.io/dbscale/serverless-db-operator:{chart['appVersion']}"


def test_all_features_reach_the_pods() -> None:
    objects = all_features_objects()
    operator = deployment(objects, "operator")
    activator = deployment(objects, "activator")
    digest = "sha256:" + "0123456789abcdef" * 4
    for deploy in (operator, activator):
        main = container(deploy)
        assert main["image"] == f"registry.example.com/sdb/operator@{digest}"
        assert main["imagePullPolicy"] == "Always"
        assert deploy["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
        assert deploy["metadata"]["labels"]["team"] == "platform"
        assert deploy["spec"]["template"]["spec"]["priorityClassName"] == "system-cluster-critical"
    assert operator["spec"]["replicas"] == 2
    assert activator["spec"]["replicas"] == 3
    op = container(operator)
    assert op["args"][-6:] == [
        "--prometheus-url",
        "http://prometheus-operated.monitoring:9090",
        "--cert-manager-issuer",
        "ClusterIssuer/internal-ca",
        "--tick",
        "10",
    ]
    assert {"name": "TZ", "value": "UTC"} in op["env"]
    assert op["resources"] == {
        "requests": {"cpu": "200m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    pod = operator["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "sdb-operator"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod["affinity"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert operator["spec"]["template"]["metadata"]["annotations"] == {"example.com/owner": "platform"}
    assert operator["spec"]["template"]["metadata"]["labels"]["tier"] == "control"
    act = container(activator)
    assert _arg(act, "--wake-timeout") == "45.5"
    assert _arg(act, "--port-range") == "20000-29999"
    assert act["args"][-2:] == ["--log-level", "debug"]
    assert activator["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90
    assert activator["spec"]["template"]["spec"]["serviceAccountName"] == "sdb-activator"
    assert _arg(op, "--activator-service") == "sdb-activator"
    assert _arg(op, "--lease-name") == "sdb"
    sa = one(objects, "ServiceAccount", "sdb-operator")
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/sdb"
    }


def test_activator_disruption_budget_only_with_spare_replicas() -> None:
    assert one(default_objects(), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert find(render(values={"activator": {"replicas": 1}}), "PodDisruptionBudget") == []
    off = {"activator": {"podDisruptionBudget": {"enabled": False}}}
    assert find(render(values=off), "PodDisruptionBudget") == []


def test_network_policies() -> None:
    assert find(default_objects(), "NetworkPolicy") == []
    objects = all_features_objects()
    operator = one(objects, "NetworkPolicy", "sdb")["spec"]
    activator = one(objects, "NetworkPolicy", "sdb-activator")["spec"]
    operator_pods = deployment(objects, "operator")["spec"]["template"]["metadata"]["labels"]
    activator_pods = deployment(objects, "activator")["spec"]["template"]["metadata"]["labels"]
    assert selects(operator["podSelector"]["matchLabels"], operator_pods)
    assert not selects(operator["podSelector"]["matchLabels"], activator_pods)
    assert selects(activator["podSelector"]["matchLabels"], activator_pods)
    for spec in (operator, activator):
        assert spec["policyTypes"] == ["Ingress", "Egress"]
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    # in: metrics from the configured peers; clients of paused databases on the whole port range
    assert operator["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": monitoring,
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                }
            ],
            "ports": [{"protocol": "TCP", "port": 9465}],
        }
    ]
    clients, metrics, gateway = activator["ingress"]
    assert clients == {
        "from": [{"namespaceSelector": {"matchLabels": {"sdb-clients": "true"}}}],
        "ports": [{"protocol": "TCP", "port": 20000, "endPort": 29999}],
    }
    assert metrics["ports"] == [{"protocol": "TCP", "port": 9466}]
    assert gateway == {
        "from": [{"namespaceSelector": {"matchLabels": {"sdb-gateway-clients": "true"}}}],
        "ports": [{"protocol": "TCP", "port": 9443}],
    }
    # out: DNS, the API server, the databases, and (the operator only) Prometheus
    for spec in (operator, activator):
        egress = spec["egress"]
        assert {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]} in egress
        assert {
            "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}, {"ipBlock": {"cidr": "172.18.0.0/16"}}],
            "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
        } in egress
        assert {
            "to": [
                {
                    "namespaceSelector": {},
                    "podSelector": {
                        "matchLabels": {"app.kubernetes.io/managed-by": "serverless-db-operator"}
                    },
                }
            ],
            "ports": [{"protocol": "TCP", "port": 5432}],
        } in egress
    prometheus = {"to": [{"namespaceSelector": monitoring}], "ports": [{"protocol": "TCP", "port": 9090}]}
    assert prometheus in operator["egress"]
    assert prometheus not in activator["egress"]
    assert operator["egress"][-1]["ports"] == [{"port": 8200, "protocol": "TCP"}]
    assert activator["egress"][-1] == {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}


def test_network_policy_defaults_open_to_the_cluster() -> None:
    """Without peers configured: the port range and metrics from any pod; no Prometheus rule."""
    objects = render(values={"networkPolicy": {"enabled": True}})
    activator = one(objects, "NetworkPolicy", f"{FULLNAME}-activator")["spec"]
    operator = one(objects, "NetworkPolicy", FULLNAME)["spec"]
    assert activator["ingress"][0] == {
        "from": [{"namespaceSelector": {}}],
        "ports": [{"protocol": "TCP", "port": 20000, "endPort": 29999}],
    }
    assert activator["ingress"][2] == {
        "from": [{"namespaceSelector": {}}],
        "ports": [{"protocol": "TCP", "port": 9443}],
    }
    assert operator["ingress"][0]["from"] == [{"namespaceSelector": {}}]
    assert len(operator["egress"]) == 3  # DNS, API server, databases


def test_service_monitor_scrapes_both_components() -> None:
    assert find(default_objects(), "ServiceMonitor") == []
    objects = all_features_objects()
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    selected = [s for s in find(objects, "Service") if _matches(spec["selector"], s["metadata"]["labels"])]
    assert sorted(s["metadata"]["name"] for s in selected) == ["sdb-activator", "sdb-metrics"]
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "metrics"
    # sdb_* series label each database with its own namespace; the scrape must keep that label
    assert endpoint["honorLabels"] is True
    assert endpoint["interval"] == "15s"
    assert endpoint["scrapeTimeout"] == "10s"
    for service in selected:
        assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["metricRelabelings"] == [
        {"action": "drop", "regex": "sdb_reconcile_.*", "sourceLabels": ["__name__"]}
    ]


def _matches(selector: Obj, labels: dict[str, str]) -> bool:
    if not selects(selector.get("matchLabels", {}), labels):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_pod_monitor_scrapes_the_database_exporters() -> None:
    assert find(default_objects(), "PodMonitor") == []
    objects = all_features_objects()
    spec = one(objects, "PodMonitor")["spec"]
    # the pods the Kubernetes runtime labels, and not the chart's own
    assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/managed-by": "serverless-db-operator"}}
    for component in ("operator", "activator"):
        labels = deployment(objects, component)["spec"]["template"]["metadata"]["labels"]
        assert not selects(spec["selector"]["matchLabels"], labels)
    # a list of namespaces replaces "any", rather than merging with it
    assert spec["namespaceSelector"] == {"matchNames": ["shop", "billing"]}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == "exporter"
    assert endpoint["relabelings"][0] == {
        "sourceLabels": ["__meta_kubernetes_pod_label_dbscale_io_database"],
        "targetLabel": "database",
        "action": "replace",
    }
    assert endpoint["relabelings"][1]["targetLabel"] == "node"
    default = one(render(values={"podMonitor": {"enabled": True}}), "PodMonitor")["spec"]
    assert default["namespaceSelector"] == {"any": True}


def test_dashboards_become_one_configmap_each(tmp_path: Path) -> None:
    chart = tmp_path / "serverless-db-operator"
    shutil.copytree(CHART, chart)
    shutil.rmtree(chart / "dashboards", ignore_errors=True)
    (chart / "dashboards").mkdir()
    dashboards = {
        "Fleet_Overview.json": json.dumps(
            {"title": "Fleet", "panels": [{"title": "a | b: c", "id": 1}]}, indent=2
        ),
        "database.json": json.dumps({"title": "One database", "uid": "sdb-db", "panels": []}) + "\n",
    }
    for name, text in dashboards.items():
        (chart / "dashboards" / name).write_text(text)
    (chart / "dashboards" / "README.md").write_text("not a dashboard")

    objects = render(chart=chart)
    maps = {m["metadata"]["name"]: m for m in find(objects, "ConfigMap")}
    assert sorted(maps) == [f"{FULLNAME}-dashboard-database", f"{FULLNAME}-dashboard-fleet-overview"]
    for name, text in dashboards.items():
        found = [m for m in maps.values() if name in m["data"]]
        assert len(found) == 1
        assert found[0]["data"] == {name: text}, "the dashboard's JSON reaches Grafana byte for byte"
        assert found[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert found[0]["metadata"]["namespace"] == NAMESPACE

    custom = {
        "dashboards": {
            "label": "grafana.example.com/dashboard",
            "labelValue": "yes",
            "namespace": "grafana",
            "annotations": {"grafana_folder": "Databases"},
        }
    }
    for cm in find(render(chart=chart, values=custom), "ConfigMap"):
        assert cm["metadata"]["labels"]["grafana.example.com/dashboard"] == "yes"
        assert "grafana_dashboard" not in cm["metadata"]["labels"]
        assert cm["metadata"]["namespace"] == "grafana"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Databases"}
    assert find(render(chart=chart, values={"dashboards": {"enabled": False}}), "ConfigMap") == []


def test_the_chart_ships_every_dashboard_it_has() -> None:
    shipped = {name for m in find(default_objects(), "ConfigMap") for name in m["data"]}
    assert shipped == {p.name for p in _dashboards()}
    for path in _dashboards():
        json.loads(path.read_text())  # each is valid JSON


def test_service_accounts_can_be_brought() -> None:
    values = {
        "operator": {"serviceAccount": {"create": False, "name": "mine"}},
        "activator": {"serviceAccount": {"create": False, "name": "theirs"}},
    }
    objects = render(values=values)
    assert find(objects, "ServiceAccount") == []
    assert deployment(objects, "operator")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"
    binding = one(objects, "ClusterRoleBinding", f"{FULLNAME}-activator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "theirs", "namespace": NAMESPACE}]
    missing = template(values={"operator": {"serviceAccount": {"create": False}}}, check=False)
    assert missing.returncode != 0
    assert "operator.serviceAccount.name must name an existing ServiceAccount" in missing.stderr


def test_long_release_names_still_make_valid_names() -> None:
    release = ("a-long-release-name-" * 3)[:53]  # helm's own limit is 53 characters
    result = helm("template", release, str(CHART), "--namespace", NAMESPACE)
    names = [obj["metadata"]["name"] for obj in yaml.safe_load_all(result.stdout) if obj is not None]
    assert f"{release[:52]}-activator" in names  # the full name is cut to 52, leaving room for the suffix
    for obj in yaml.safe_load_all(result.stdout):
        if obj is None:
            continue
        name = obj["metadata"]["name"]
        # Services (DNS labels) and everything else at 63; ConfigMaps may be DNS subdomains (253).
        assert len(name) <= (253 if obj["kind"] == "ConfigMap" else 63), name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), name


def test_notes_show_a_first_database_that_the_crd_accepts() -> None:
    result = helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        "--kubeconfig",
        "/dev/null",
    )
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"namespace {NAMESPACE}" in notes
    assert "kubectl apply" in notes
    assert "kubectl --namespace demo get sdb hello" in notes
    sample = re.search(r"<<'YAML'.*?\n(.*?)\n\s*YAML\n", notes, re.S)
    assert sample, notes
    database = yaml.safe_load(textwrap.dedent(sample.group(1)))
    assert database["kind"] == "ServerlessDatabase"
    assert crd_schema.validate(database) == []
    assert "hello-credentials" in notes  # the Secret the Kubernetes runtime makes for `hello`


@pytest.mark.parametrize("objects", [default_objects, all_features_objects], ids=["defaults", "all-features"])
def test_the_cli_accepts_the_charts_arguments(objects: Rendered) -> None:
    """The args the chart gives each container parse with `sdb`'s own parser, to what the chart means."""
    from controller.app import cli

    rendered = objects()
    for component, command in (("operator", "up"), ("activator", "activator")):
        args = [
            a.replace("$(POD_NAMESPACE)", NAMESPACE)
            for a in container(deployment(rendered, component))["args"]
        ]
        parsed = cli._parser().parse_args(args)
        assert parsed.command == command
        assert parsed.log_format == "json"
        if command == "up":
            assert parsed.runtime == "kubernetes"
            assert parsed.leader_elect is True
            assert parsed.lease_namespace == NAMESPACE
            assert (parsed.metrics_address, parsed.metrics_port, parsed.health_port) == (
                "0.0.0.0",
                9465,
                8081,
            )
        else:
            assert (parsed.metrics_address, parsed.metrics_port, parsed.health_port) == (
                "0.0.0.0",
                9466,
                8082,
            )
            assert (parsed.gateway_address, parsed.gateway_port, parsed.gateway_plaintext) == (
                "0.0.0.0",
                9443,
                False,
            )
            assert str(parsed.gateway_ca) == "/etc/sdb-gateway/ca.crt"
            assert str(parsed.gateway_client_key) == "/etc/sdb-gateway-client/tls.key"


def test_activator_listens_where_the_operator_assigns_ports() -> None:
    """The operator gives each paused database a port from its own range; the activator must listen there."""
    from controller.runtime.kubernetes import builders

    low, high = builders.ACTIVATOR_PORTS
    assert _arg(container(deployment(default_objects(), "activator")), "--port-range") == f"{low}-{high}"
