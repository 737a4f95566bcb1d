"""Which resources the double serves, and the discovery documents that describe them.

A `ResourceType` is one (group, version, plural). Built-in types are fixed; creating a
CustomResourceDefinition registers one type per served version (all sharing one storage key, as
the real server stores a single version and converts). Discovery (`/api`, `/apis`, `/apis/<g>/<v>`)
is computed from the registry, so it changes as CRDs come and go and as `pods/resize` is switched.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Subresource:
    name: str
    kind: str
    verbs: tuple[str, ...]
    group: str | None = None  # set when the subresource's kind lives in another group (Scale, Eviction)
    version: str | None = None


_STATUS = Subresource("status", "", ("get", "patch", "update"))


@dataclass(frozen=True)
class ScalePaths:
    """Where a custom resource keeps what `/scale` reads and writes (CRD `subresources.scale`)."""

    spec_replicas: str = ".spec.replicas"
    status_replicas: str = ".status.replicas"
    label_selector: str | None = ".status.selector"


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[Subresource, ...] = ()
    # For custom resources: the version's openAPIV3Schema, or None (then anything is kept).
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    custom: bool = False
    # The real delete handler answers with the object for these, and with a Status for the rest.
    return_deleted_object: bool = False
    scale: ScalePaths | None = None
    selectable_fields: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """Storage key, the same for every version of a resource: "pods", "statefulsets.apps"."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    def has_subresource(self, name: str) -> bool:
        return any(s.name == name for s in self.subresources)

    @property
    def has_status(self) -> bool:
        return self.has_subresource("status")


def _sub(
    name: str, kind: str, verbs: tuple[str, ...], group: str | None = None, version: str | None = None
) -> Subresource:
    return Subresource(name, kind, verbs, group, version)


_SCALE = _sub("scale", "Scale", ("get", "patch", "update"), "autoscaling", "v1")

POD_SUBRESOURCES = (
    _sub("attach", "PodAttachOptions", ("create", "get")),
    _sub("binding", "Binding", ("create",)),
    _sub("ephemeralcontainers", "Pod", ("get", "patch", "update")),
    _sub("eviction", "Eviction", ("create",), "policy", "v1"),
    _sub("exec", "PodExecOptions", ("create", "get")),
    _sub("log", "Pod", ("get",)),
    _sub("portforward", "PodPortForwardOptions", ("create", "get")),
    _sub("proxy", "PodProxyOptions", ("create", "delete", "get", "patch", "update")),
    _sub("resize", "Pod", ("get", "patch", "update")),
    _STATUS,
)


def builtin_types() -> list[ResourceType]:
    """The built-in resources the double serves (a subset of a real cluster's)."""
    r = ResourceType
    return [
        r(
            "",
            "v1",
            "namespaces",
            "namespace",
            "Namespace",
            False,
            ("ns",),
            (),
            (_sub("finalize", "Namespace", ("update",)), _STATUS),
            return_deleted_object=True,
        ),
        r(
            "",
            "v1",
            "nodes",
            "node",
            "Node",
            False,
            ("no",),
            (),
            (_sub("proxy", "NodeProxyOptions", ("create", "delete", "get", "patch", "update")), _STATUS),
        ),
        r(
            "",
            "v1",
            "pods",
            "pod",
            "Pod",
            True,
            ("po",),
            ("all",),
            POD_SUBRESOURCES,
            return_deleted_object=True,
        ),
        r(
            "",
            "v1",
            "services",
            "service",
            "Service",
            True,
            ("svc",),
            ("all",),
            (_sub("proxy", "ServiceProxyOptions", ("create", "delete", "get", "patch", "update")), _STATUS),
            return_deleted_object=True,
        ),
        r("", "v1", "endpoints", "endpoints", "Endpoints", True, ("ep",)),
        r("", "v1", "secrets", "secret", "Secret", True),
        r("", "v1", "configmaps", "configmap", "ConfigMap", True, ("cm",)),
        r(
            "",
            "v1",
            "persistentvolumeclaims",
            "persistentvolumeclaim",
            "PersistentVolumeClaim",
            True,
            ("pvc",),
            (),
            (_STATUS,),
        ),
        r(
            "",
            "v1",
            "persistentvolumes",
            "persistentvolume",
            "PersistentVolume",
            False,
            ("pv",),
            (),
            (_STATUS,),
        ),
        r("", "v1", "events", "event", "Event", True, ("ev",)),
        r("authentication.k8s.io", "v1", "tokenreviews", "tokenreview", "TokenReview", False),
        r(
            "",
            "v1",
            "serviceaccounts",
            "serviceaccount",
            "ServiceAccount",
            True,
            ("sa",),
            (),
            (_sub("token", "TokenRequest", ("create",), "authentication.k8s.io", "v1"),),
        ),
        r(
            "apps",
            "v1",
            "statefulsets",
            "statefulset",
            "StatefulSet",
            True,
            ("sts",),
            ("all",),
            (_SCALE, _STATUS),
            scale=ScalePaths(label_selector=None),
        ),
        r(
            "apps",
            "v1",
            "deployments",
            "deployment",
            "Deployment",
            True,
            ("deploy",),
            ("all",),
            (_SCALE, _STATUS),
            scale=ScalePaths(label_selector=None),
        ),
        r(
            "apps",
            "v1",
            "replicasets",
            "replicaset",
            "ReplicaSet",
            True,
            ("rs",),
            ("all",),
            (_SCALE, _STATUS),
            scale=ScalePaths(label_selector=None),
        ),
        r("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", True),
        r("networking.k8s.io", "v1", "networkpolicies", "networkpolicy", "NetworkPolicy", True, ("netpol",)),
        r("coordination.k8s.io", "v1", "leases", "lease", "Lease", True),
        r("events.k8s.io", "v1", "events", "event", "Event", True, ("ev",)),
        r(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "poddisruptionbudget",
            "PodDisruptionBudget",
            True,
            ("pdb",),
            (),
            (_STATUS,),
        ),
        r(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "customresourcedefinition",
            "CustomResourceDefinition",
            False,
            ("crd", "crds"),
            (),
            (_STATUS,),
        ),
    ]


def _storage_hash(rt: ResourceType) -> str:
    # Real servers publish a hash of the storage version; clients only compare it for changes.
    digest = hashlib.sha256(f"{rt.group}/{rt.version}/{rt.kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def crd_types(crd: dict[str, Any]) -> list[ResourceType]:
    """The resource types a CustomResourceDefinition serves (one per served version)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    out = []
    for ver in spec.get("versions") or []:
        if not ver.get("served", True):
            continue
        subs: list[Subresource] = []
        declared = ver.get("subresources") or spec.get("subresources") or {}
        scale = None
        if "scale" in declared:
            sc = declared["scale"] or {}
            scale = ScalePaths(
                sc.get("specReplicasPath", ".spec.replicas"),
                sc.get("statusReplicasPath", ".status.replicas"),
                sc.get("labelSelectorPath"),
            )
            subs.append(_SCALE)
        if "status" in declared:
            subs.append(_STATUS)
        schema = (ver.get("schema") or spec.get("validation") or {}).get("openAPIV3Schema")
        out.append(
            ResourceType(
                group=spec["group"],
                version=ver["name"],
                plural=names["plural"],
                singular=names.get("singular") or names["kind"].lower(),
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=tuple(subs),
                schema=schema,
                custom=True,
                return_deleted_object=True,
                scale=scale,
                selectable_fields=tuple(
                    f["jsonPath"].lstrip(".") for f in ver.get("selectableFields") or [] if "jsonPath" in f
                ),
            )
        )
    return out


class Registry:
    """Thread-safe map of served resource types, plus discovery documents."""

    def __init__(self, *, git_version: str, pod_resize: bool) -> None:
        self._lock = threading.RLock()
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._crd_types: dict[str, list[ResourceType]] = {}  # CRD name -> its types
        self.git_version = git_version
        self.pod_resize = pod_resize
        for t in builtin_types():
            self._types[(t.group, t.version, t.plural)] = t

    # -- lookup -----------------------------------------------------------------------------------

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        with self._lock:
            return self._types.get((group, version, plural))

    def by_key(self, key: str) -> ResourceType:
        """Resolve "pods", "statefulsets.apps", "serverlessdatabases.dbscale.io", a kind or a short name."""
        with self._lock:
            candidates = list(self._types.values())
        plural, _, group = key.partition(".")
        for t in candidates:
            if t.plural == plural and t.group == group:
                return t
        for t in candidates:
            named = key in (t.kind, t.singular) or key in t.short_names
            # A kind in both the core group and another (Event) means the core one.
            if named and (t.group == "" or not any(c.group == "" and c.kind == t.kind for c in candidates)):
                return t
        for t in candidates:
            if t.plural == key:
                return t
        raise KeyError(f"no resource type {key!r}")

    def for_object(self, obj: dict[str, Any]) -> ResourceType:
        api_version = obj.get("apiVersion", "")
        group, _, version = api_version.rpartition("/")
        with self._lock:
            for t in self._types.values():
                if t.group == group and t.version == version and t.kind == obj.get("kind"):
                    return t
        raise KeyError(f"no resource type for {api_version} {obj.get('kind')}")

    def versions_of(self, key: str) -> list[ResourceType]:
        with self._lock:
            return [t for t in self._types.values() if t.key == key]

    def all_types(self) -> list[ResourceType]:
        with self._lock:
            return list(self._types.values())

    # -- CRDs -------------------------------------------------------------------------------------

    def register_crd(self, crd: dict[str, Any]) -> list[ResourceType]:
        types = crd_types(crd)
        with self._lock:
            self.unregister_crd(crd["metadata"]["name"])
            for t in types:
                existing = self._types.get((t.group, t.version, t.plural))
                if existing is not None and not existing.custom:
                    raise ApiError(422, "Invalid", f"{t.plural}.{t.group} collides with a built-in resource")
                self._types[(t.group, t.version, t.plural)] = t
            self._crd_types[crd["metadata"]["name"]] = types
        return types

    def unregister_crd(self, name: str) -> None:
        with self._lock:
            for t in self._crd_types.pop(name, []):
                self._types.pop((t.group, t.version, t.plural), None)

    # -- discovery --------------------------------------------------------------------------------

    def _served(self, t: ResourceType) -> Iterable[Subresource]:
        for s in t.subresources:
            if s.name == "resize" and not self.pod_resize:
                continue
            yield s

    def version_info(self) -> dict[str, Any]:
        core = self.git_version.lstrip("v").split("-")[0].split("+")[0]
        major, minor, *_ = [*core.split("."), "0", "0"]
        return {
            "major": major,
            "minor": minor,
            "emulationMajor": major,
            "emulationMinor": minor,
            "minCompatibilityMajor": major,
            "minCompatibilityMinor": str(max(int(minor) - 1, 0)) if minor.isdigit() else minor,
            "gitVersion": self.git_version,
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def core_versions(self, server_address: str) -> dict[str, Any]:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        }

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        with self._lock:
            for t in self._types.values():
                if t.group:
                    versions = groups.setdefault(t.group, [])
                    if t.version not in versions:
                        versions.append(t.version)
        for versions in groups.values():
            versions.sort(key=_version_priority)
        return groups

    def group(self, name: str) -> dict[str, Any] | None:
        versions = self._groups().get(name)
        if not versions:
            return None
        gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": name,
            "versions": gvs,
            "preferredVersion": gvs[0],
        }

    def group_list(self) -> dict[str, Any]:
        groups = [g for name in sorted(self._groups()) if (g := self.group(name)) is not None]
        for g in groups:
            del g["kind"], g["apiVersion"]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        with self._lock:
            types = sorted(
                (t for t in self._types.values() if t.group == group and t.version == version),
                key=lambda t: t.plural,
            )
        if not types:
            return None
        resources: list[dict[str, Any]] = []
        for t in types:
            entry: dict[str, Any] = {
                "name": t.plural,
                "singularName": t.singular,
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": list(ALL_VERBS),
                "storageVersionHash": _storage_hash(t),
            }
            if t.short_names:
                entry["shortNames"] = list(t.short_names)
            if t.categories:
                entry["categories"] = list(t.categories)
            resources.append(entry)
            for s in self._served(t):
                sub: dict[str, Any] = {
                    "name": f"{t.plural}/{s.name}",
                    "singularName": "",
                    "namespaced": t.namespaced,
                    "kind": s.kind or t.kind,
                    "verbs": list(s.verbs),
                }
                if s.group is not None:
                    sub["group"], sub["version"] = s.group, s.version
                resources.append(sub)
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }


def _version_priority(version: str) -> tuple[int, int, int]:
    # Kubernetes orders versions GA > beta > alpha, then by number, newest first.
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0)
    stage = {"": 0, "beta": 1, "alpha": 2}[m.group(2) or ""]
    return (stage, -int(m.group(1)), -int(m.group(3) or 0))
