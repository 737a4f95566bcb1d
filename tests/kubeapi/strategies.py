"""Per-type behaviour of the real registry: defaulting, initial status, validation and immutability.

These are the parts of the API server's type strategies that operators notice: pods get defaults
and a Pending status, a pod's spec may not be changed except through `/resize` (and the image),
StatefulSet specs are mostly immutable, a selector must match the template's labels, quantities are
canonicalised, Secrets' `stringData` turns into `data`, custom resources are pruned, defaulted and
validated against their CRD's schema. Each function works in place on a fresh copy of the object.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Callable
from typing import Any

from . import quantity, schema
from .errors import ApiError, invalid
from .registry import ResourceType
from .schema import Cause
from .selectors import selector_from_label_selector

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# Resources whose names must be DNS labels (63 chars, no dots); the rest take DNS subdomains.
_LABEL_NAMED = {"namespaces", "services"}
_QUANTITY_MAPS = {"limits", "requests", "capacity", "allocatable", "allocatedResources"}
# Types whose maps above hold resource quantities (elsewhere, "capacity" may mean anything).
_QUANTITY_TYPES = {
    "pods",
    "statefulsets.apps",
    "deployments.apps",
    "replicasets.apps",
    "persistentvolumeclaims",
    "persistentvolumes",
    "nodes",
}


def fail(rt: ResourceType, name: str, causes: list[Cause]) -> ApiError:
    return invalid(rt.kind, rt.group, name, causes)


# -- shared helpers ---------------------------------------------------------------------------------


def qos_class(pod_spec: dict[str, Any]) -> str:
    """Guaranteed, Burstable or BestEffort, computed as the kubelet does (cpu and memory only)."""
    containers = (pod_spec.get("containers") or []) + (pod_spec.get("initContainers") or [])
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        for name in ("cpu", "memory"):
            if name in req or name in lim:
                any_set = True
            if name not in lim or quantity.value(req.get(name, lim[name])) != quantity.value(lim[name]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _canonical_quantities(value: Any, path: str, causes: list[Cause]) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            sub = f"{path}.{k}" if path else k
            if k in _QUANTITY_MAPS and isinstance(v, dict):
                canon = {}
                for rk, rv in v.items():
                    try:
                        canon[rk] = quantity.canonical(rv)
                    except quantity.QuantityError as e:
                        causes.append(("FieldValueInvalid", f"{sub}[{rk}]", f"Invalid value: {rv!r}: {e}"))
                        canon[rk] = rv
                out[k] = canon
            else:
                out[k] = _canonical_quantities(v, sub, causes)
        return out
    if isinstance(value, list):
        return [_canonical_quantities(v, f"{path}[{i}]", causes) for i, v in enumerate(value)]
    return value


def _validate_metadata(rt: ResourceType, obj: dict[str, Any]) -> list[Cause]:
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    causes: list[Cause] = []
    pattern, limit = (_DNS_LABEL, 63) if rt.plural in _LABEL_NAMED else (_DNS_SUBDOMAIN, 253)
    if rt.plural == "customresourcedefinitions":
        pass  # checked against spec below
    elif not pattern.match(name) or len(name) > limit:
        what = "RFC 1123 label" if limit == 63 else "RFC 1123 subdomain"
        causes.append(
            (
                "FieldValueInvalid",
                "metadata.name",
                f'Invalid value: "{name}": a lowercase {what} must consist of lower case alphanumeric '
                "characters, "
                "'-' or '.', and must start and end with an alphanumeric character",
            )
        )
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, label = key.rpartition("/")
        if not _LABEL_NAME.match(label) or len(label) > 63 or (prefix and not _DNS_SUBDOMAIN.match(prefix)):
            causes.append(
                ("FieldValueInvalid", "metadata.labels", f'Invalid value: "{key}": name part must be valid')
            )
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(
                (
                    "FieldValueInvalid",
                    "metadata.labels",
                    f'Invalid value: "{value}": a valid label must be an empty string or consist of '
                    "alphanumeric "
                    "characters, '-', '_' or '.', and must start and end with an alphanumeric character "
                    "(must be no more than 63 characters)",
                )
            )
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        for f in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(f):
                causes.append(("FieldValueRequired", f"metadata.ownerReferences[{i}].{f}", "Required value"))
    if sum(1 for r in meta.get("ownerReferences") or [] if r.get("controller")) > 1:
        causes.append(
            (
                "FieldValueInvalid",
                "metadata.ownerReferences",
                "Only one reference can have Controller set to true",
            )
        )
    return causes


# -- pods and pod templates -----------------------------------------------------------------------


def _image_pull_policy(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    tag = last.split(":", 1)[1] if ":" in last else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    for kind in ("containers", "initContainers"):
        for c in spec.get(kind) or []:
            if "image" in c:
                c.setdefault("imagePullPolicy", _image_pull_policy(str(c["image"])))
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("resources", {})
            res = c["resources"]
            # Requests default to limits for resources that only have a limit.
            if res.get("limits"):
                req = res.setdefault("requests", {})
                for k, v in res["limits"].items():
                    req.setdefault(k, v)
            for p in c.get("ports") or []:
                p.setdefault("protocol", "TCP")
            for e in c.get("env") or []:
                vf = (e.get("valueFrom") or {}).get("fieldRef")
                if vf is not None:
                    vf.setdefault("apiVersion", "v1")
    for v in spec.get("volumes") or []:
        for src in ("secret", "configMap"):
            if isinstance(v.get(src), dict):
                v[src].setdefault("defaultMode", 420)


def _validate_pod_spec(spec: dict[str, Any], path: str, extra_volumes: tuple[str, ...] = ()) -> list[Cause]:
    causes: list[Cause] = []
    containers = spec.get("containers") or []
    if not containers:
        causes.append(("FieldValueRequired", f"{path}.containers", "Required value"))
    seen: set[str] = set()
    for kind in ("containers", "initContainers"):
        for i, c in enumerate(spec.get(kind) or []):
            name = c.get("name", "")
            if not name:
                causes.append(("FieldValueRequired", f"{path}.{kind}[{i}].name", "Required value"))
            elif not _DNS_LABEL.match(name):
                causes.append(
                    (
                        "FieldValueInvalid",
                        f"{path}.{kind}[{i}].name",
                        f'Invalid value: "{name}": must be a DNS label',
                    )
                )
            elif name in seen:
                causes.append(
                    ("FieldValueDuplicate", f"{path}.{kind}[{i}].name", f'Duplicate value: "{name}"')
                )
            seen.add(name)
            if not c.get("image"):
                causes.append(("FieldValueRequired", f"{path}.{kind}[{i}].image", "Required value"))
            res = c.get("resources") or {}
            for rname, lim in (res.get("limits") or {}).items():
                req = (res.get("requests") or {}).get(rname)
                try:
                    if req is not None and quantity.value(req) > quantity.value(lim):
                        causes.append(
                            (
                                "FieldValueInvalid",
                                f"{path}.{kind}[{i}].resources.requests",
                                f'Invalid value: "{req}": must be less than or equal to '
                                f"{rname} limit of {lim}",
                            )
                        )
                except quantity.QuantityError:
                    pass
    volume_names = {v.get("name") for v in spec.get("volumes") or []} | set(extra_volumes)
    for kind in ("containers", "initContainers"):
        for i, c in enumerate(spec.get(kind) or []):
            for j, m in enumerate(c.get("volumeMounts") or []):
                if m.get("name") not in volume_names:
                    causes.append(
                        (
                            "FieldValueNotFound",
                            f"{path}.{kind}[{i}].volumeMounts[{j}].name",
                            f'Not found: "{m.get("name")}"',
                        )
                    )
    return causes


_POD_MUTABLE_MSG = (
    "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to "
    "existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
    "previously negative)"
)


def _pod_spec_masked(spec: dict[str, Any]) -> dict[str, Any]:
    masked = copy.deepcopy(spec)
    for kind in ("containers", "initContainers"):
        for c in masked.get(kind) or []:
            c.pop("image", None)
    for f in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "schedulingGates"):
        masked.pop(f, None)
    return masked


def resize_projection(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What a write to `pods/<name>/resize` keeps: only containers' resources and resizePolicy."""
    result = copy.deepcopy(old)
    wanted = {c.get("name"): c for c in (new.get("spec") or {}).get("containers") or []}
    for c in result.get("spec", {}).get("containers") or []:
        src = wanted.get(c.get("name"))
        if src is None:
            continue
        for f in ("resources", "resizePolicy"):
            if f in src:
                c[f] = copy.deepcopy(src[f])
            else:
                c.pop(f, None)
    result.setdefault("metadata", {})["resourceVersion"] = (new.get("metadata") or {}).get(
        "resourceVersion", (old.get("metadata") or {}).get("resourceVersion")
    )
    if "managedFields" in (new.get("metadata") or {}):
        result["metadata"]["managedFields"] = new["metadata"]["managedFields"]
    return result


def _validate_resize(rt: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    if qos_class(old_spec) != qos_class(new_spec):
        causes.append(
            (
                "FieldValueInvalid",
                "spec",
                f'Invalid value: "{qos_class(new_spec)}": '
                "Pod QOS Class may not change as a result of resizing",
            )
        )
    for i, c in enumerate(new_spec.get("containers") or []):
        before: dict[str, Any] = next(
            (o for o in old_spec.get("containers") or [] if o.get("name") == c.get("name")), {}
        )
        for section in ("requests", "limits"):
            had = set((before.get("resources") or {}).get(section) or {})
            has = set((c.get("resources") or {}).get(section) or {})
            for r in had - has:
                causes.append(
                    (
                        "FieldValueForbidden",
                        f"spec.containers[{i}].resources.{section}[{r}]",
                        "Forbidden: resource removal is not supported",
                    )
                )
        for r in ((c.get("resources") or {}).get("limits") or {}) | (
            (c.get("resources") or {}).get("requests") or {}
        ):
            if r not in ("cpu", "memory"):
                old_res = before.get("resources") or {}
                if (c.get("resources") or {}).get("limits", {}).get(r) != (old_res.get("limits") or {}).get(
                    r
                ) or (c.get("resources") or {}).get("requests", {}).get(r) != (
                    old_res.get("requests") or {}
                ).get(r):
                    causes.append(
                        (
                            "FieldValueForbidden",
                            f"spec.containers[{i}].resources",
                            "Forbidden: only cpu and memory resources are mutable",
                        )
                    )
    return causes


# -- defaulting ----------------------------------------------------------------------------------------


class Context:
    """What strategies need from the store: time, and the cluster-IP allocator."""

    def __init__(self, now: Callable[[], str], allocate_ip: Callable[[], str]) -> None:
        self.now = now
        self.allocate_ip = allocate_ip


Obj = dict[str, Any]
Preparer = Callable[[Obj, Obj | None, Context], None]


def _default_workload(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    template = spec.setdefault("template", {})
    template.setdefault("metadata", {})
    default_pod_spec(template.setdefault("spec", {}))


def _prepare_pod(obj: Obj, old: Obj | None, ctx: Context) -> None:
    default_pod_spec(obj.setdefault("spec", {}))
    if old is None:
        obj["status"] = {"phase": "Pending", "qosClass": qos_class(obj["spec"])}


def _prepare_statefulset(obj: Obj, old: Obj | None, ctx: Context) -> None:
    _default_workload(obj)
    spec = obj["spec"]
    spec.setdefault("podManagementPolicy", "OrderedReady")
    strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
    if strategy.get("type", "RollingUpdate") == "RollingUpdate":
        strategy.setdefault("type", "RollingUpdate")
        strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
    retention = spec.setdefault("persistentVolumeClaimRetentionPolicy", {})
    retention.setdefault("whenDeleted", "Retain")
    retention.setdefault("whenScaled", "Retain")
    for t in spec.get("volumeClaimTemplates") or []:
        t.setdefault("apiVersion", "v1")
        t.setdefault("kind", "PersistentVolumeClaim")
        t.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
        t.setdefault("status", {"phase": "Pending"})
    if old is None:
        obj["status"] = {"replicas": 0, "availableReplicas": 0}


def _prepare_deployment(obj: Obj, old: Obj | None, ctx: Context) -> None:
    _default_workload(obj)
    strategy = obj["spec"].setdefault("strategy", {"type": "RollingUpdate"})
    if strategy.get("type") == "RollingUpdate":
        strategy.setdefault("rollingUpdate", {"maxUnavailable": "25%", "maxSurge": "25%"})
    obj["spec"].setdefault("progressDeadlineSeconds", 600)


def _prepare_replicaset(obj: Obj, old: Obj | None, ctx: Context) -> None:
    _default_workload(obj)
    if old is None:
        obj["status"] = {"replicas": 0}


def _prepare_service(obj: Obj, old: Obj | None, ctx: Context) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for p in spec.get("ports") or []:
        p.setdefault("protocol", "TCP")
        p.setdefault("targetPort", p.get("port"))
    if spec["type"] != "ExternalName":
        old_ip = ((old or {}).get("spec") or {}).get("clusterIP")
        if not spec.get("clusterIP"):
            spec["clusterIP"] = old_ip or ctx.allocate_ip()
        spec["clusterIPs"] = [spec["clusterIP"]]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if old is None:
        obj["status"] = {"loadBalancer": {}}


def _prepare_secret(obj: Obj, old: Obj | None, ctx: Context) -> None:
    obj.setdefault("type", "Opaque")
    # stringData is write-only: the server folds it into data (base64), as the real one does.
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.setdefault("data", {})
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()


def _prepare_claim(obj: Obj, old: Obj | None, ctx: Context) -> None:
    obj.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
    if old is None:
        obj["status"] = {"phase": "Pending"}


def _prepare_namespace(obj: Obj, old: Obj | None, ctx: Context) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    meta = obj.setdefault("metadata", {})
    meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    if old is None:
        obj["status"] = {"phase": "Active"}


_NAME_FIELDS = ("kind", "listKind", "plural", "singular", "shortNames", "categories")


def _prepare_crd(obj: Obj, old: Obj | None, ctx: Context) -> None:
    spec = obj.setdefault("spec", {})
    names = spec.setdefault("names", {})
    if names.get("kind"):
        names.setdefault("singular", str(names["kind"]).lower())
        names.setdefault("listKind", f"{names['kind']}List")
    spec.setdefault("conversion", {"strategy": "None"})
    finalizers = obj.setdefault("metadata", {}).setdefault("finalizers", [])
    # The real CRD finalizer controller adds this; deleting a CRD first deletes all its objects.
    if old is None and "customresourcecleanup.apiextensions.k8s.io" not in finalizers:
        finalizers.append("customresourcecleanup.apiextensions.k8s.io")
    old_status = (old or {}).get("status") or {}
    stored = list(old_status.get("storedVersions") or [])
    for v in spec.get("versions") or []:
        if v.get("storage") and v["name"] not in stored:
            stored.append(v["name"])
    now = ctx.now()
    conditions = old_status.get("conditions") or [
        {
            "type": "NamesAccepted",
            "status": "True",
            "reason": "NoConflicts",
            "message": "no conflicts found",
            "lastTransitionTime": now,
        },
        {
            "type": "Established",
            "status": "True",
            "reason": "InitialNamesAccepted",
            "message": "the initial names have been accepted",
            "lastTransitionTime": now,
        },
    ]
    obj["status"] = {
        "acceptedNames": {k: v for k, v in names.items() if k in _NAME_FIELDS},
        "conditions": conditions,
        "storedVersions": stored,
    }


_PREPARERS: dict[str, Preparer] = {
    "pods": _prepare_pod,
    "statefulsets.apps": _prepare_statefulset,
    "deployments.apps": _prepare_deployment,
    "replicasets.apps": _prepare_replicaset,
    "services": _prepare_service,
    "secrets": _prepare_secret,
    "persistentvolumeclaims": _prepare_claim,
    "namespaces": _prepare_namespace,
    "customresourcedefinitions.apiextensions.k8s.io": _prepare_crd,
}


def prepare(rt: ResourceType, obj: Obj, old: Obj | None, ctx: Context) -> Obj:
    """Defaulting and derived fields, on create (old is None) and on update. Returns the object."""
    if rt.custom:
        if rt.schema is not None:
            obj = schema.prune(obj, rt.schema, root=True)
            obj = schema.apply_defaults(obj, rt.schema)
        return obj
    causes: list[Cause] = []
    if rt.key in _QUANTITY_TYPES:
        obj = _canonical_quantities(obj, "", causes)
    if causes:
        raise fail(rt, (obj.get("metadata") or {}).get("name", ""), causes)
    preparer = _PREPARERS.get(rt.key)
    if preparer is not None:
        preparer(obj, old, ctx)
    return obj


# -- validation ----------------------------------------------------------------------------------------

Validator = Callable[[Obj, Obj | None], list[Cause]]


def _selector_matches_template(obj: Obj) -> list[Cause]:
    spec = obj.get("spec") or {}
    selector = spec.get("selector")
    if not selector:
        return [("FieldValueRequired", "spec.selector", "Required value")]
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not selector_from_label_selector(selector).matches(labels):
        shown = "map[string]string{" + ", ".join(f'"{k}":"{v}"' for k, v in labels.items()) + "}"
        return [
            (
                "FieldValueInvalid",
                "spec.template.metadata.labels",
                f"Invalid value: {shown}: `selector` does not match template `labels`",
            )
        ]
    return []


def _validate_pod(obj: Obj, old: Obj | None) -> list[Cause]:
    spec = obj.get("spec") or {}
    causes = _validate_pod_spec(spec, "spec")
    if old is not None and _pod_spec_masked(spec) != _pod_spec_masked(old.get("spec") or {}):
        causes.append(("FieldValueForbidden", "spec", _POD_MUTABLE_MSG))
    return causes


_STS_MUTABLE = (
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
    "revisionHistoryLimit",
)
_STS_FORBIDDEN = (
    "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', "
    "'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' "
    "are forbidden"
)


def _validate_workload(obj: Obj, old: Obj | None) -> list[Cause]:
    spec = obj.get("spec") or {}
    causes = _selector_matches_template(obj)
    # A StatefulSet's claim templates are volumes of its pods too.
    claims = tuple(str((t.get("metadata") or {}).get("name")) for t in spec.get("volumeClaimTemplates") or [])
    causes += _validate_pod_spec((spec.get("template") or {}).get("spec") or {}, "spec.template.spec", claims)
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        causes.append(
            (
                "FieldValueInvalid",
                "spec.replicas",
                f"Invalid value: {replicas}: must be greater than or equal to 0",
            )
        )
    if old is not None and obj.get("kind") == "StatefulSet":
        old_spec = old.get("spec") or {}
        if {k: v for k, v in spec.items() if k not in _STS_MUTABLE} != {
            k: v for k, v in old_spec.items() if k not in _STS_MUTABLE
        }:
            causes.append(("FieldValueForbidden", "spec", _STS_FORBIDDEN))
    elif old is not None and spec.get("selector") != (old.get("spec") or {}).get("selector"):
        causes.append(("FieldValueInvalid", "spec.selector", "Invalid value: field is immutable"))
    return causes


def _validate_service(obj: Obj, old: Obj | None) -> list[Cause]:
    before = ((old or {}).get("spec") or {}).get("clusterIP")
    if before and (obj.get("spec") or {}).get("clusterIP") != before:
        return [("FieldValueInvalid", "spec.clusterIPs[0]", "Invalid value: may not change once set")]
    return []


def _validate_claim(obj: Obj, old: Obj | None) -> list[Cause]:
    if old is None:
        return []
    spec, old_spec = obj.get("spec") or {}, old.get("spec") or {}

    def masked(s: Obj) -> Obj:
        return {
            k: v for k, v in s.items() if k not in ("resources", "volumeAttributesClassName", "volumeName")
        }

    causes: list[Cause] = []
    if masked(spec) != masked(old_spec):
        causes.append(
            (
                "FieldValueForbidden",
                "spec",
                "Forbidden: spec is immutable after creation except resources.requests and "
                "volumeAttributesClassName for bound claims",
            )
        )
    before = ((old_spec.get("resources") or {}).get("requests") or {}).get("storage")
    after = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    try:
        if before and after and quantity.value(after) < quantity.value(before):
            causes.append(
                (
                    "FieldValueForbidden",
                    "spec.resources.requests.storage",
                    "Forbidden: field can not be less than status.capacity",
                )
            )
    except quantity.QuantityError:
        pass
    return causes


def _validate_immutable_data(obj: Obj, old: Obj | None) -> list[Cause]:
    if old is None or not old.get("immutable"):
        return []
    return [
        ("FieldValueForbidden", f, "Forbidden: field is immutable when `immutable` is set")
        for f in ("data", "binaryData", "type", "immutable")
        if obj.get(f) != old.get(f)
    ]


def _validate_crd(obj: Obj, old: Obj | None) -> list[Cause]:
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    causes: list[Cause] = [
        ("FieldValueRequired", f"spec.names.{f}", "Required value")
        for f in ("plural", "kind")
        if not names.get(f)
    ]
    if not spec.get("group"):
        causes.append(("FieldValueRequired", "spec.group", "Required value"))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(
            (
                "FieldValueNotSupported",
                "spec.scope",
                'Unsupported value: supported values: "Cluster", "Namespaced"',
            )
        )
    name = obj["metadata"].get("name")
    if name != f"{names.get('plural')}.{spec.get('group')}":
        causes.append(
            (
                "FieldValueInvalid",
                "metadata.name",
                f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group',
            )
        )
    versions = spec.get("versions") or []
    if not versions:
        causes.append(("FieldValueRequired", "spec.versions", "Required value"))
    elif sum(1 for v in versions if v.get("storage")) != 1:
        causes.append(
            (
                "FieldValueInvalid",
                "spec.versions",
                "Invalid value: must have exactly one version marked as storage version",
            )
        )
    if old is not None and spec.get("group") != (old.get("spec") or {}).get("group"):
        causes.append(("FieldValueInvalid", "spec.group", "Invalid value: field is immutable"))
    return causes


_VALIDATORS: dict[str, Validator] = {
    "pods": _validate_pod,
    "statefulsets.apps": _validate_workload,
    "deployments.apps": _validate_workload,
    "replicasets.apps": _validate_workload,
    "services": _validate_service,
    "persistentvolumeclaims": _validate_claim,
    "secrets": _validate_immutable_data,
    "configmaps": _validate_immutable_data,
    "customresourcedefinitions.apiextensions.k8s.io": _validate_crd,
}


def validate(rt: ResourceType, obj: Obj, old: Obj | None, subresource: str) -> None:
    """Raise 422 Invalid when the object (or the change from `old`) is not allowed."""
    name = (obj.get("metadata") or {}).get("name", "")
    causes: list[Cause] = []
    if subresource == "resize":
        causes = _validate_resize(rt, old, obj) if old is not None else []
    elif rt.custom:
        # Custom resources are checked against their schema on every write, status included.
        causes = schema.validate(obj, rt.schema)
        if subresource != "status":
            causes += _validate_metadata(rt, obj)
    elif subresource not in ("status", "binding"):
        causes = _validate_metadata(rt, obj)
        validator = _VALIDATORS.get(rt.key)
        if validator is not None:
            causes += validator(obj, old)
    if causes:
        raise fail(rt, name, causes)
