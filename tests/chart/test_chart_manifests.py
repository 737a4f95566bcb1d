"""Every rendered object is one the API server accepts, and one kubectl parses.

Built-in kinds are checked against the Kubernetes 1.33 OpenAPI schemas (kubernetes-validate, strict:
an unknown field is an error). ServiceMonitor and PodMonitor belong to the prometheus-operator's
CRDs, which those schemas lack; they are checked here against a structural schema of the fields the
chart can render, with the upstream CRDs' types, enums and patterns (MONITOR_SCHEMAS below).

`kubectl apply --dry-run=client` is not offline: it maps each kind through the server's discovery
and GETs each object to choose between create and patch. So the test gives it a kubeconfig that
points at a stub on 127.0.0.1 (DiscoveryStub) that serves discovery for the kinds the chart renders
and answers 404 to everything else; kubectl then parses every object and reports it "created (dry
run)" without any cluster.
"""

from __future__ import annotations

import copy
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from helmchart import (
    ALL_FEATURES,
    KUBECTL,
    Obj,
    Rendered,
    all_features_objects,
    default_objects,
    deployment,
    find,
    one,
    require_kubectl,
    selects,
    template,
)

from controller.api import codec
from controller.runtime.kubernetes import builders

pytestmark = pytest.mark.helm

KUBERNETES = "1.33"
MONITORING = "monitoring.coreos.com/v1"

# -- the Kubernetes schemas -------------------------------------------------------------------------


@pytest.mark.parametrize("objects", [default_objects, all_features_objects], ids=["defaults", "all-features"])
def test_every_builtin_object_is_valid_for_kubernetes_1_33(objects: Rendered) -> None:
    checked, problems = 0, []
    for obj in objects():
        if obj["apiVersion"] == MONITORING:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}")
        checked += 1
    assert problems == []
    assert checked >= 13


def test_the_schema_check_can_fail() -> None:
    """A control: the same check refuses a Deployment with an unknown or mistyped field."""
    deploy = copy.deepcopy(deployment(default_objects(), "operator"))
    deploy["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, KUBERNETES, strict=True)


# -- the prometheus-operator kinds, structurally ----------------------------------------------------

DURATION = "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABEL_NAME = "^[a-zA-Z_][a-zA-Z0-9_]*$"
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_RELABELINGS = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": LABEL_NAME}},
            "separator": {"type": "string"},
            "targetLabel": {"type": "string"},
            "regex": {"type": "string"},
            "modulus": {"type": "integer", "minimum": 0},
            "replacement": {"type": "string"},
            "action": {
                "enum": [
                    "replace",
                    "Replace",
                    "keep",
                    "Keep",
                    "drop",
                    "Drop",
                    "hashmod",
                    "HashMod",
                    "labelmap",
                    "LabelMap",
                    "labeldrop",
                    "LabelDrop",
                    "labelkeep",
                    "LabelKeep",
                    "lowercase",
                    "Lowercase",
                    "uppercase",
                    "Uppercase",
                    "keepequal",
                    "KeepEqual",
                    "dropequal",
                    "DropEqual",
                ]
            },
        },
    },
}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STRINGS,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_NAMESPACES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": {"type": "string", "minLength": 1},
        "path": {"type": "string"},
        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
        "honorLabels": {"type": "boolean"},
        "interval": {"type": "string", "pattern": DURATION},
        "scrapeTimeout": {"type": "string", "pattern": DURATION},
        "relabelings": _RELABELINGS,
        "metricRelabelings": _RELABELINGS,
    },
}


def _monitor(kind: str, endpoints: str) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": MONITORING},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name", "namespace"],
                "additionalProperties": False,
                "properties": {
                    "name": {
                        "type": "string",
                        "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                        "maxLength": 253,
                    },
                    "namespace": {"type": "string", "minLength": 1},
                    "labels": _STRINGS,
                    "annotations": _STRINGS,
                },
            },
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints],
                "properties": {
                    "jobLabel": {"type": "string"},
                    "selector": _SELECTOR,
                    "namespaceSelector": _NAMESPACES,
                    endpoints: {"type": "array", "minItems": 1, "items": _ENDPOINT},
                },
            },
        },
    }


MONITOR_SCHEMAS = {
    "ServiceMonitor": _monitor("ServiceMonitor", "endpoints"),
    "PodMonitor": _monitor("PodMonitor", "podMetricsEndpoints"),
}


def _monitor_problems(obj: Obj) -> list[str]:
    validator = jsonschema.Draft202012Validator(MONITOR_SCHEMAS[obj["kind"]])
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]


def test_monitors_are_structurally_valid() -> None:
    monitors = [o for o in all_features_objects() if o["apiVersion"] == MONITORING]
    assert sorted(o["kind"] for o in monitors) == ["PodMonitor", "ServiceMonitor"]
    for monitor in monitors:
        assert _monitor_problems(monitor) == []


def test_the_monitor_check_can_fail() -> None:
    monitor = copy.deepcopy(one(all_features_objects(), "PodMonitor"))
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"
    monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = "rename"
    monitor["spec"]["podMetricEndpoints"] = []
    assert len(_monitor_problems(monitor)) == 3


# -- the chart against what the Kubernetes runtime makes --------------------------------------------


def _database_pod() -> Obj:
    db = codec.decode(
        {
            "apiVersion": "dbscale.io/v1alpha1",
            "kind": "ServerlessDatabase",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "0000"},
            "spec": {},
        }
    )
    template_: Obj = builders.statefulset(db, replicas=1, capacity=0.25)["spec"]["template"]
    return template_


def test_pod_monitor_finds_the_exporter_the_runtime_runs() -> None:
    pod = _database_pod()
    spec = one(all_features_objects(), "PodMonitor")["spec"]
    assert selects(spec["selector"]["matchLabels"], pod["metadata"]["labels"])
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert spec["podMetricsEndpoints"][0]["port"] in ports
    # Prometheus's meta label for the pod label that names the database
    source = spec["podMetricsEndpoints"][0]["relabelings"][0]["sourceLabels"][0]
    label = builders.DATABASE_LABEL.replace(".", "_").replace("/", "_").replace("-", "_")
    assert source == f"__meta_kubernetes_pod_label_{label}"
    assert pod["metadata"]["labels"][builders.DATABASE_LABEL] == "orders"


def test_network_policy_lets_both_components_reach_postgres() -> None:
    pod = _database_pod()
    postgres_ports = {
        p["containerPort"] for c in pod["spec"]["containers"] if c["name"] == "postgres" for p in c["ports"]
    }
    for policy in find(all_features_objects(), "NetworkPolicy"):
        rules = [
            rule
            for rule in policy["spec"]["egress"]
            for peer in rule.get("to", [])
            if "podSelector" in peer
            and selects(peer["podSelector"]["matchLabels"], pod["metadata"]["labels"])
        ]
        assert rules, policy["metadata"]["name"]
        assert postgres_ports <= {p["port"] for rule in rules for p in rule["ports"]}


# -- kubectl ------------------------------------------------------------------------------------------

# The kinds the chart can render: (group, version, kind, plural, namespaced).
KINDS = [
    ("", "v1", "Namespace", "namespaces", False),
    ("", "v1", "ServiceAccount", "serviceaccounts", True),
    ("", "v1", "Service", "services", True),
    ("", "v1", "ConfigMap", "configmaps", True),
    ("apps", "v1", "Deployment", "deployments", True),
    ("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", True),
    ("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", True),
    ("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False),
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", False),
    ("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", False),
    ("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors", True),
    ("monitoring.coreos.com", "v1", "PodMonitor", "podmonitors", True),
]


class DiscoveryStub(ThreadingHTTPServer):
    """An API server that knows the kinds above and holds no objects; it records every request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _StubHandler(BaseHTTPRequestHandler):
    server: DiscoveryStub

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.requests.append(("GET", path))
        body = _discovery(path)
        if body is None:
            self._send(
                404,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "NotFound",
                    "code": 404,
                    "message": f"{path} not found",
                },
            )
        else:
            self._send(200, body)

    def do_POST(self) -> None:  # a dry run must not write
        self.server.requests.append(("POST", self.path))
        self._send(405, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 405})

    def do_PUT(self) -> None:
        self.do_POST()

    def do_PATCH(self) -> None:
        self.do_POST()

    def do_DELETE(self) -> None:
        self.do_POST()

    def _send(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _discovery(path: str) -> Obj | None:
    groups: dict[str, list[tuple[str, str, str, bool]]] = {}
    for group, version, kind, plural, namespaced in KINDS:
        groups.setdefault(f"{group}/{version}" if group else version, []).append(
            (group, kind, plural, namespaced)
        )
    if path == "/version":
        return {"major": "1", "minor": "33", "gitVersion": "v1.33.0"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        named = sorted({g.split("/")[0] for g in groups if "/" in g})
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": name,
                    "versions": [{"groupVersion": f"{name}/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": f"{name}/v1", "version": "v1"},
                }
                for name in named
            ],
        }
    group_version = path.removeprefix("/apis/").removeprefix("/api/")
    if path.startswith(("/api/", "/apis/")) and group_version in groups:
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": [
                {
                    "name": plural,
                    "singularName": kind.lower(),
                    "namespaced": namespaced,
                    "kind": kind,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                }
                for _, kind, plural, namespaced in groups[group_version]
            ],
        }
    return None


@pytest.fixture
def stub() -> Iterator[DiscoveryStub]:
    server = DiscoveryStub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _kubeconfig(directory: Path, server: str) -> Path:
    path = directory / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stub", "cluster": {"server": server}}],
        # a token, else kubectl asks for a user name on the terminal
        "users": [{"name": "stub", "user": {"token": "offline"}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}],
        "current-context": "stub",
    }
    path.write_text(json.dumps(config))
    return path


def _path(obj: Obj) -> str:
    group, version = obj["apiVersion"].rpartition("/")[::2]
    plural = next(p for g, v, k, p, _ in KINDS if (g, v, k) == (group, version, obj["kind"]))
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    namespace = obj["metadata"].get("namespace")
    return (
        f"{base}/namespaces/{namespace}/{plural}/{obj['metadata']['name']}"
        if namespace
        else f"{base}/{plural}/{obj['metadata']['name']}"
    )


def _kubectl_apply(text: str, stub: DiscoveryStub, directory: Path) -> subprocess.CompletedProcess[str]:
    """`kubectl apply --dry-run=client --validate=false -f -` against the stub, offline."""
    require_kubectl()
    config = _kubeconfig(directory, stub.url)
    return subprocess.run(
        [
            *(str(KUBECTL), "apply", "--dry-run=client", "--validate=false", "-f", "-"),
            *("--kubeconfig", str(config), "--cache-dir", str(directory / "cache")),
        ],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("values", [[], [ALL_FEATURES]], ids=["defaults", "all-features"])
def test_kubectl_apply_dry_run_parses_every_object(
    values: list[Path], stub: DiscoveryStub, tmp_path: Path
) -> None:
    rendered = template(files=values, crds=True).stdout
    objects = list(all_features_objects() if values else default_objects())
    result = _kubectl_apply(rendered, stub, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(objects)
    assert all(line.endswith(" created (dry run)") for line in lines), lines
    # kubectl mapped each object to its resource, name and namespace: it asked for each by path
    asked = {path for method, path in stub.requests if method == "GET"}
    for obj in objects:
        assert _path(obj) in asked, f"kubectl never looked up {obj['kind']}/{obj['metadata']['name']}"
    assert not [r for r in stub.requests if r[0] != "GET"], "a client dry run writes nothing"


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        # a namespace YAML reads as a boolean, which kubectl cannot decode
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: yes}\n", "cannot unmarshal bool"),
        # a kind the cluster does not serve
        ("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: a, namespace: b}\n", "Widget"),
    ],
    ids=["undecodable", "unknown-kind"],
)
def test_kubectl_check_can_fail(document: str, complaint: str, stub: DiscoveryStub, tmp_path: Path) -> None:
    """A control: the same kubectl run refuses what a cluster's kubectl would."""
    rendered = template().stdout
    result = _kubectl_apply(rendered + "---\n" + document, stub, tmp_path)
    assert result.returncode != 0
    assert complaint in result.stderr
