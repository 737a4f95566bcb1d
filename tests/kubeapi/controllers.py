"""The kube-controller-manager part: StatefulSet, Deployment and ReplicaSet, EndpointSlice, a PVC
binder and the garbage collector for orphaned dependents, plus the loop that runs them with the
kubelet in a background thread.

The StatefulSet controller follows the real one where operators can tell the difference: pods are
`<sts>-<ordinal>`, OrderedReady creates them one at a time (each waits for the previous to be Ready)
and removes them highest first, PVCs `<template>-<sts>-<ordinal>` are created from
`volumeClaimTemplates`, and `persistentVolumeClaimRetentionPolicy` is honoured the way Kubernetes
does it, through owner references (a claim owned by the set goes with it, a claim of a condemned
pod is owned by that pod and goes with it), so deletion is done by the garbage collector. Rolling
updates replace pods whose `controller-revision-hash` is stale, highest ordinal first, honouring
`partition`. Status counts replicas, ready, available, current and updated pods.

The loop runs the controllers on what changed since their last pass (read from the watch history,
as an informer-driven controller would see it): a StatefulSet is synced when it, one of its pods or
one of its claims changed, a Service's EndpointSlice when it or a pod it selects (or selected)
changed, and a controller none of whose kinds changed does not run. A double holding ten thousand
databases then costs what changes, not what exists; `settle()` still runs everything.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from . import quantity
from .errors import ApiError
from .kubelet import Kubelet
from .registry import Registry, ResourceType
from .selectors import selector_from_label_selector
from .store import Changes, Obj, Store, now_rfc3339

MANAGER = "kube-controller-manager"
PODS, CLAIMS, SETS, SERVICES = "pods", "persistentvolumeclaims", "statefulsets.apps", "services"
DEPLOYMENTS, REPLICASETS = "deployments.apps", "replicasets.apps"


def _owner_ref(owner: Obj, *, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def _owned_by(obj: Obj, owner: Obj) -> bool:
    return any(r.get("uid") == owner["metadata"]["uid"] for r in obj["metadata"].get("ownerReferences") or [])


def _is_ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )


def _terminating(obj: Obj) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


class Controllers:
    """All controllers; `sync()` runs each once."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self.statefulsets = True
        self.deployments = True
        self.endpointslices = True
        self.volumes = True
        self.garbage_collector = True
        self._selects: dict[tuple[str, str], set[tuple[str, str]]] = {}
        """Per Service, the pods it selected at its last sync; and the reverse, per pod."""
        self._selected_by: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._rt = {
            k: registry.by_key(k)
            for k in (
                "pods",
                "persistentvolumeclaims",
                "statefulsets.apps",
                "deployments.apps",
                "replicasets.apps",
                "services",
                "endpointslices.discovery.k8s.io",
            )
        }

    def sync(self, changes: Changes | None = None) -> None:
        """Run each controller once: on everything, or (with `changes`) on what changed."""
        full = changes is None

        def touched(*keys: str) -> bool:
            return changes is None or changes.any(*keys)

        steps: list[tuple[bool, Callable[[], None]]] = [
            (self.garbage_collector and (full or bool(changes and changes.deleted)), self._collect_garbage),
            (self.volumes and touched(CLAIMS), lambda: self._bind_claims(changes)),
            (self.statefulsets and touched(SETS, PODS, CLAIMS), lambda: self._sync_statefulsets(changes)),
            (self.deployments and touched(DEPLOYMENTS, REPLICASETS, PODS), self._sync_deployments),
            (self.deployments and touched(REPLICASETS, PODS), self._sync_replicasets),
            (self.endpointslices and touched(SERVICES, PODS), lambda: self._sync_endpointslices(changes)),
        ]
        for enabled, step in steps:
            if enabled:
                step()

    # -- helpers -----------------------------------------------------------------------------------

    def _create(self, key: str, namespace: str, obj: Obj) -> Obj | None:
        try:
            return self.store.create(self._rt[key], namespace, obj, manager=MANAGER)
        except ApiError as e:
            if e.code in (404, 403, 409):  # namespace going away, or someone was faster
                return None
            raise

    def _delete(self, key: str, obj: Obj, **kwargs: Any) -> None:
        try:
            self.store.delete(
                self._rt[key], obj["metadata"].get("namespace"), obj["metadata"]["name"], **kwargs
            )
        except ApiError as e:
            if e.code != 404:
                raise

    def _set_status(self, key: str, obj: Obj, status: dict[str, Any]) -> None:
        if obj.get("status") != status:
            self.store.mutate(
                self._rt[key],
                obj["metadata"].get("namespace"),
                obj["metadata"]["name"],
                lambda o: o.__setitem__("status", status),
                subresource="status",
                manager=MANAGER,
            )

    def _pods_of(self, owner: Obj, pods: list[Obj]) -> list[Obj]:
        ns = owner["metadata"]["namespace"]
        return [p for p in pods if p["metadata"].get("namespace") == ns and _owned_by(p, owner)]

    # -- garbage collector -------------------------------------------------------------------------

    def _collect_garbage(self) -> None:
        for key, obj in self.store.dangling():
            rt = self.registry.versions_of(key)
            if rt:
                with contextlib.suppress(ApiError):
                    self.store.delete(rt[0], obj["metadata"].get("namespace"), obj["metadata"]["name"])

    # -- volumes -----------------------------------------------------------------------------------

    def _bind_claims(self, changes: Changes | None = None) -> None:
        """Pretend dynamic provisioning: every claim binds at once, and expansion completes at once."""
        dirty = changes.of(CLAIMS) if changes is not None else None
        for pvc in self.store.stored(CLAIMS):
            if _terminating(pvc):
                continue
            if dirty is not None and (pvc["metadata"]["namespace"], pvc["metadata"]["name"]) not in dirty:
                continue
            spec, status = pvc.get("spec") or {}, pvc.get("status") or {}
            want = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
            have = (status.get("capacity") or {}).get("storage")
            if status.get("phase") == "Bound" and (
                not want or (have and quantity.value(have) >= quantity.value(want))
            ):
                continue
            ns, name = pvc["metadata"]["namespace"], pvc["metadata"]["name"]
            if not spec.get("volumeName"):
                volume = "pvc-" + pvc["metadata"]["uid"]

                def set_volume(o: Obj, v: str = volume) -> None:
                    o["spec"]["volumeName"] = v

                self.store.mutate(self._rt["persistentvolumeclaims"], ns, name, set_volume, manager=MANAGER)
            new_status = {
                "phase": "Bound",
                "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
                "capacity": {"storage": want or "1Gi"},
            }

            def set_status(o: Obj, s: dict[str, Any] = new_status) -> None:
                o["status"] = s

            self.store.mutate(
                self._rt["persistentvolumeclaims"],
                ns,
                name,
                set_status,
                subresource="status",
                manager=MANAGER,
            )

    # -- StatefulSets ------------------------------------------------------------------------------

    def _sync_statefulsets(self, changes: Changes | None = None) -> None:
        sets = self.store.stored(SETS)
        wanted = None if changes is None else _touched_sets(changes, {_ns_name(s) for s in sets})
        claims = {_ns_name(c): c for c in self.store.stored(CLAIMS)}
        by_owner: dict[str, list[Obj]] = {}
        for pod in self.store.stored(PODS):
            for ref in pod["metadata"].get("ownerReferences") or []:
                by_owner.setdefault(ref.get("uid", ""), []).append(pod)
        for sts in sets:
            if not _terminating(sts) and (wanted is None or _ns_name(sts) in wanted):
                self._sync_statefulset(
                    sts, self._pods_of(sts, by_owner.get(sts["metadata"]["uid"], [])), claims
                )

    @staticmethod
    def _ordinal(sts: Obj, pod: Obj) -> int | None:
        prefix = sts["metadata"]["name"] + "-"
        name = pod["metadata"]["name"]
        suffix = name[len(prefix) :] if name.startswith(prefix) else ""
        return int(suffix) if suffix.isdigit() else None

    def _claim_name(self, sts: Obj, template: dict[str, Any], ordinal: int) -> str:
        return f"{template['metadata']['name']}-{sts['metadata']['name']}-{ordinal}"

    def _new_pod(self, sts: Obj, ordinal: int, revision: str) -> Obj:
        spec = sts["spec"]
        name = f"{sts['metadata']['name']}-{ordinal}"
        template = copy.deepcopy(spec.get("template") or {})
        meta = template.get("metadata") or {}
        labels = dict(meta.get("labels") or {})
        labels.update(
            {
                "controller-revision-hash": revision,
                "statefulset.kubernetes.io/pod-name": name,
                "apps.kubernetes.io/pod-index": str(ordinal),
            }
        )
        pod_spec = template.get("spec") or {}
        pod_spec["hostname"] = name
        if spec.get("serviceName"):
            pod_spec["subdomain"] = spec["serviceName"]
        volumes = list(pod_spec.get("volumes") or [])
        for claim in spec.get("volumeClaimTemplates") or []:
            volumes = [v for v in volumes if v.get("name") != claim["metadata"]["name"]]
            volumes.append(
                {
                    "name": claim["metadata"]["name"],
                    "persistentVolumeClaim": {"claimName": self._claim_name(sts, claim, ordinal)},
                }
            )
        if volumes:
            pod_spec["volumes"] = volumes
        pod_meta: dict[str, Any] = {"name": name, "labels": labels, "ownerReferences": [_owner_ref(sts)]}
        if meta.get("annotations"):
            pod_meta["annotations"] = dict(meta["annotations"])
        return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": pod_spec}

    def _claim_refs(
        self, sts: Obj, pod: Obj | None, condemned: bool, refs: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Owner references a claim should carry under the retention policy (as the real controller sets)."""
        policy = sts["spec"].get("persistentVolumeClaimRetentionPolicy") or {}
        when_deleted = policy.get("whenDeleted", "Retain")
        when_scaled = policy.get("whenScaled", "Retain")
        sts_uid = sts["metadata"]["uid"]
        pod_uid = pod["metadata"]["uid"] if pod else None
        out = [r for r in refs if r.get("uid") not in (sts_uid, pod_uid)]
        own_set = when_deleted == "Delete" and not (when_scaled == "Delete" and condemned)
        if own_set:
            out.append(_owner_ref(sts, controller=True))
        if when_scaled == "Delete" and condemned and pod is not None:
            out.append(_owner_ref(pod, controller=False))
        return out

    def _ensure_claims(
        self, sts: Obj, ordinal: int, pod: Obj | None, condemned: bool, claims: dict[tuple[str, str], Obj]
    ) -> None:
        ns = sts["metadata"]["namespace"]
        selector_labels = (sts["spec"].get("selector") or {}).get("matchLabels") or {}
        for template in sts["spec"].get("volumeClaimTemplates") or []:
            name = self._claim_name(sts, template, ordinal)
            existing = claims.get((ns, name))
            if existing is None:
                if condemned:
                    continue
                meta = copy.deepcopy(template.get("metadata") or {})
                meta["name"] = name
                meta["labels"] = {**(meta.get("labels") or {}), **selector_labels}
                refs = self._claim_refs(sts, pod, condemned, [])
                if refs:
                    meta["ownerReferences"] = refs
                self._create(
                    "persistentvolumeclaims",
                    ns,
                    {"metadata": meta, "spec": copy.deepcopy(template.get("spec") or {})},
                )
                continue
            if _terminating(existing):
                continue
            refs = existing["metadata"].get("ownerReferences") or []
            want = self._claim_refs(sts, pod, condemned, refs)
            if sorted(json.dumps(r, sort_keys=True) for r in want) != sorted(
                json.dumps(r, sort_keys=True) for r in refs
            ):

                def set_refs(o: Obj, w: list[dict[str, Any]] = want) -> None:
                    if w:
                        o["metadata"]["ownerReferences"] = w
                    else:
                        o["metadata"].pop("ownerReferences", None)

                self.store.mutate(self._rt["persistentvolumeclaims"], ns, name, set_refs, manager=MANAGER)

    def _sync_statefulset(self, sts: Obj, pods: list[Obj], claims: dict[tuple[str, str], Obj]) -> None:
        spec = sts["spec"]
        ns = sts["metadata"]["namespace"]
        replicas = int(spec.get("replicas", 1))
        start = int((spec.get("ordinals") or {}).get("start", 0))
        wanted = range(start, start + replicas)
        revision = f"{sts['metadata']['name']}-{template_hash(spec.get('template') or {})}"
        parallel = spec.get("podManagementPolicy") == "Parallel"
        by_ordinal: dict[int, Obj] = {}
        for p in pods:
            o = self._ordinal(sts, p)
            if o is not None:
                by_ordinal[o] = p
        # Failed pods are deleted and recreated, as the real controller does.
        for p in list(by_ordinal.values()):
            if (p.get("status") or {}).get("phase") == "Failed" and not _terminating(p):
                self._delete("pods", p)
                return
        for o in sorted(by_ordinal):
            self._ensure_claims(sts, o, by_ordinal[o], o not in wanted, claims)
        busy = any(_terminating(p) for p in by_ordinal.values())
        # Scale up: lowest missing ordinal first; OrderedReady waits for every lower pod to be Ready.
        for o in wanted:
            if o in by_ordinal:
                if not parallel and (not _is_ready(by_ordinal[o]) or _terminating(by_ordinal[o])):
                    break
                continue
            if not parallel and busy:
                break
            self._ensure_claims(sts, o, None, False, claims)
            created = self._create("pods", ns, self._new_pod(sts, o, revision))
            if created is not None:
                by_ordinal[o] = created
            if not parallel:
                break
        # Scale down: highest ordinal first; OrderedReady one at a time, with the rest healthy.
        condemned = sorted((o for o in by_ordinal if o not in wanted), reverse=True)
        healthy = all(_is_ready(by_ordinal[o]) for o in wanted if o in by_ordinal)
        for o in condemned:
            pod = by_ordinal[o]
            if _terminating(pod):
                if not parallel:
                    break
                continue
            if not parallel and (busy or not healthy):
                break
            self._ensure_claims(sts, o, pod, True, {_ns_name(c): c for c in self.store.stored(CLAIMS)})
            self._delete("pods", pod)
            if not parallel:
                break
        # Rolling update: replace the highest stale pod at or above the partition, one at a time.
        strategy = spec.get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") == "RollingUpdate" and not busy and not condemned:
            partition = int((strategy.get("rollingUpdate") or {}).get("partition", 0))
            current = [by_ordinal.get(o) for o in wanted]
            if all(p is not None and _is_ready(p) for p in current):
                for o in sorted(wanted, reverse=True):
                    p = by_ordinal[o]
                    if (
                        o >= partition
                        and p["metadata"].get("labels", {}).get("controller-revision-hash") != revision
                    ):
                        self._delete("pods", p)
                        break
        self._statefulset_status(sts, revision)

    def _statefulset_status(self, sts: Obj, revision: str) -> None:
        ns = sts["metadata"]["namespace"]
        prefix = sts["metadata"]["name"] + "-"
        mine = [p for p in self.store.stored(PODS) if p["metadata"]["name"].startswith(prefix)]
        pods = self._pods_of(sts, [p for p in mine if p["metadata"].get("namespace") == ns])
        old = sts.get("status") or {}
        current_revision = old.get("currentRevision") or revision
        updated = [
            p for p in pods if p["metadata"].get("labels", {}).get("controller-revision-hash") == revision
        ]
        ready = [p for p in pods if _is_ready(p)]
        replicas = int(sts["spec"].get("replicas", 1))
        if len(updated) == replicas and len(pods) == replicas and len(ready) == replicas:
            current_revision = revision
        current = [
            p
            for p in pods
            if p["metadata"].get("labels", {}).get("controller-revision-hash") == current_revision
        ]
        status: dict[str, Any] = {
            "observedGeneration": sts["metadata"].get("generation", 1),
            "replicas": len(pods),
            "readyReplicas": len(ready),
            "availableReplicas": len(ready),
            "currentReplicas": len(current),
            "updatedReplicas": len(updated),
            "currentRevision": current_revision,
            "updateRevision": revision,
            "collisionCount": 0,
        }
        if not ready:
            del status["readyReplicas"]  # omitted when zero, as the real API serialises it
        self._set_status("statefulsets.apps", sts, status)

    # -- Deployments and ReplicaSets ---------------------------------------------------------------

    def _sync_deployments(self) -> None:
        deployments = self.store.stored(DEPLOYMENTS)
        if not deployments:
            return
        replicasets = self.store.stored(REPLICASETS)
        pods = self.store.stored(PODS)
        for d in deployments:
            if _terminating(d):
                continue
            ns = d["metadata"]["namespace"]
            spec = d["spec"]
            template = copy.deepcopy(spec.get("template") or {})
            h = template_hash(template)
            owned = [rs for rs in replicasets if rs["metadata"]["namespace"] == ns and _owned_by(rs, d)]
            new_rs = next(
                (rs for rs in owned if rs["metadata"].get("labels", {}).get("pod-template-hash") == h), None
            )
            desired = int(spec.get("replicas", 1))
            old_rs = [rs for rs in owned if rs is not new_rs]
            recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
            old_pods = [p for rs in old_rs for p in self._pods_of(rs, pods)]
            new_target = desired if not (recreate and old_pods) else 0
            if new_rs is None:
                template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = h
                selector = copy.deepcopy(spec.get("selector") or {})
                selector.setdefault("matchLabels", {})["pod-template-hash"] = h
                new_rs = self._create(
                    "replicasets.apps",
                    ns,
                    {
                        "metadata": {
                            "name": f"{d['metadata']['name']}-{h}",
                            "labels": dict(template["metadata"]["labels"]),
                            "ownerReferences": [_owner_ref(d)],
                        },
                        "spec": {"replicas": new_target, "selector": selector, "template": template},
                    },
                )
                if new_rs is None:
                    continue
            elif new_rs["spec"].get("replicas") != new_target:
                self._scale(new_rs, new_target)
            new_pods = self._pods_of(new_rs, pods)
            new_ready = [p for p in new_pods if _is_ready(p)]
            for rs in old_rs:
                if rs["spec"].get("replicas", 0) and (recreate or len(new_ready) >= desired):
                    self._scale(rs, 0)
            all_pods = new_pods + old_pods
            ready = [p for p in all_pods if _is_ready(p)]
            done = len(new_ready) >= desired and not old_pods
            now = now_rfc3339()
            previous = {c["type"]: c for c in (d.get("status") or {}).get("conditions") or []}

            def cond(
                ctype: str,
                status: str,
                reason: str,
                message: str,
                prev: dict[str, Any] = previous,
                at: str = now,
            ) -> dict[str, Any]:
                old = prev.get(ctype)
                same = old is not None and old.get("status") == status and old.get("reason") == reason
                return {
                    "type": ctype,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastUpdateTime": old["lastUpdateTime"] if same and old else at,
                    "lastTransitionTime": old["lastTransitionTime"]
                    if old and old.get("status") == status
                    else at,
                }

            status: dict[str, Any] = {
                "observedGeneration": d["metadata"].get("generation", 1),
                "replicas": len(all_pods),
                "updatedReplicas": len(new_pods),
                "readyReplicas": len(ready),
                "availableReplicas": len(ready),
                "conditions": [
                    cond(
                        "Available",
                        "True" if len(ready) >= desired else "False",
                        "MinimumReplicasAvailable" if len(ready) >= desired else "MinimumReplicasUnavailable",
                        "Deployment has minimum availability."
                        if len(ready) >= desired
                        else "Deployment does not have minimum availability.",
                    ),
                    cond(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
                        f'ReplicaSet "{new_rs["metadata"]["name"]}" has successfully progressed.'
                        if done
                        else f'ReplicaSet "{new_rs["metadata"]["name"]}" is progressing.',
                    ),
                ],
            }
            if len(all_pods) - len(ready) > 0:
                status["unavailableReplicas"] = len(all_pods) - len(ready)
            for k in ("readyReplicas", "availableReplicas", "updatedReplicas", "replicas"):
                if not status[k]:
                    del status[k]
            self._set_status("deployments.apps", d, status)

    def _scale(self, rs: Obj, replicas: int) -> None:
        self.store.mutate(
            self._rt["replicasets.apps"],
            rs["metadata"]["namespace"],
            rs["metadata"]["name"],
            lambda o: o["spec"].__setitem__("replicas", replicas),
            manager=MANAGER,
        )

    def _sync_replicasets(self) -> None:
        replicasets = self.store.stored(REPLICASETS)
        if not replicasets:
            return
        pods = self.store.stored(PODS)
        for rs in replicasets:
            if _terminating(rs):
                continue
            ns = rs["metadata"]["namespace"]
            mine = [p for p in self._pods_of(rs, pods) if not _terminating(p)]
            for p in mine:
                if (p.get("status") or {}).get("phase") == "Failed":
                    self._delete("pods", p)
            mine = [p for p in mine if (p.get("status") or {}).get("phase") != "Failed"]
            want = int(rs["spec"].get("replicas", 1))
            template = copy.deepcopy(rs["spec"].get("template") or {})
            for _ in range(want - len(mine)):
                meta = copy.deepcopy(template.get("metadata") or {})
                meta["generateName"] = rs["metadata"]["name"] + "-"
                meta["ownerReferences"] = [_owner_ref(rs)]
                self._create(
                    "pods", ns, {"metadata": meta, "spec": copy.deepcopy(template.get("spec") or {})}
                )
            if len(mine) > want:
                # Unready pods go first, then the newest, as the real ReplicaSet controller prefers.
                victims = sorted(mine, key=lambda p: str(p["metadata"]["creationTimestamp"]), reverse=True)
                victims.sort(key=_is_ready)  # stable: unready first, newest first within each group
                for p in victims[: len(mine) - want]:
                    self._delete("pods", p)
            current = [p for p in self._pods_of(rs, self.store.objects("pods")) if not _terminating(p)]
            ready = [p for p in current if _is_ready(p)]
            status: dict[str, Any] = {
                "replicas": len(current),
                "fullyLabeledReplicas": len(current),
                "readyReplicas": len(ready),
                "availableReplicas": len(ready),
                "observedGeneration": rs["metadata"].get("generation", 1),
            }
            for k in ("readyReplicas", "availableReplicas", "fullyLabeledReplicas"):
                if not status[k]:
                    del status[k]
            self._set_status("replicasets.apps", rs, status)

    # -- EndpointSlices ----------------------------------------------------------------------------

    def _services_to_sync(self, changes: Changes | None, services: list[Obj], pods: list[Obj]) -> set[Any]:
        """Services whose endpoints may have moved: changed ones, and those selecting (or that last
        selected) a changed pod."""
        if changes is None:
            return {_ns_name(svc) for svc in services}
        dirty_pods = changes.of(PODS)
        wanted = set(changes.of(SERVICES))
        for pod_key in dirty_pods:
            wanted |= self._selected_by.get(pod_key, set())
        changed = [p for p in pods if _ns_name(p) in dirty_pods]
        for svc in services:
            selector = (svc.get("spec") or {}).get("selector")
            if selector and any(
                p["metadata"]["namespace"] == svc["metadata"]["namespace"]
                and selector_from_label_selector({"matchLabels": selector}).matches(
                    p["metadata"].get("labels")
                )
                for p in changed
            ):
                wanted.add(_ns_name(svc))
        return wanted

    def _sync_endpointslices(self, changes: Changes | None = None) -> None:
        pods = self.store.stored(PODS)
        services = self.store.stored(SERVICES)
        wanted = self._services_to_sync(changes, services, pods)
        slices = {_ns_name(s): s for s in self.store.stored("endpointslices.discovery.k8s.io")}
        rt: ResourceType = self._rt["endpointslices.discovery.k8s.io"]
        for svc in services:
            selector = (svc.get("spec") or {}).get("selector")
            if not selector or _terminating(svc) or _ns_name(svc) not in wanted:
                continue
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            match = selector_from_label_selector({"matchLabels": selector})
            selected = {
                _ns_name(p)
                for p in pods
                if p["metadata"].get("namespace") == ns and match.matches(p["metadata"].get("labels"))
            }
            for pod_key in self._selects.pop((ns, name), set()) - selected:
                self._selected_by.get(pod_key, set()).discard((ns, name))
            self._selects[(ns, name)] = selected
            for pod_key in selected:
                self._selected_by.setdefault(pod_key, set()).add((ns, name))
            endpoints = []
            for p in pods:
                if p["metadata"].get("namespace") != ns or not match.matches(p["metadata"].get("labels")):
                    continue
                ip = (p.get("status") or {}).get("podIP")
                if not ip:
                    continue
                ready = _is_ready(p) and not _terminating(p)
                endpoints.append(
                    {
                        "addresses": [ip],
                        "conditions": {
                            "ready": ready,
                            "serving": _is_ready(p),
                            "terminating": _terminating(p),
                        },
                        "targetRef": {
                            "kind": "Pod",
                            "namespace": ns,
                            "name": p["metadata"]["name"],
                            "uid": p["metadata"]["uid"],
                        },
                        "nodeName": (p.get("spec") or {}).get("nodeName"),
                    }
                )
            ports = []
            for port in svc["spec"].get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                if isinstance(target, str):
                    target = next(
                        (
                            cp.get("containerPort")
                            for p in pods
                            if match.matches(p["metadata"].get("labels"))
                            for c in (p.get("spec") or {}).get("containers") or []
                            for cp in c.get("ports") or []
                            if cp.get("name") == target
                        ),
                        None,
                    )
                entry: dict[str, Any] = {
                    "name": port.get("name", ""),
                    "port": target,
                    "protocol": port.get("protocol", "TCP"),
                }
                ports.append(entry)
            slice_name = f"{name}-{svc['metadata']['uid'][:5]}"
            body = {
                "metadata": {
                    "name": slice_name,
                    "labels": {
                        "kubernetes.io/service-name": name,
                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                    },
                    "ownerReferences": [_owner_ref(svc)],
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": ports,
            }
            existing = slices.get((ns, slice_name))
            if existing is None:
                self._create("endpointslices.discovery.k8s.io", ns, body)
            elif existing.get("endpoints") != endpoints or existing.get("ports") != ports:

                def update(o: Obj, e: list[Any] = endpoints, p: list[Any] = ports) -> None:
                    o["endpoints"], o["ports"] = e, p

                self.store.mutate(rt, ns, slice_name, update, manager=MANAGER)


def _ns_name(obj: Obj) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _touched_sets(changes: Changes, sets: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The StatefulSets a stretch of changes concerns: changed ones, and the owners of changed pods
    (`<set>-<ordinal>`) and claims (`<template>-<set>-<ordinal>`), found by name as the real
    controller's names make them."""
    out = {key for key in changes.of(SETS) if key in sets}
    for ns, name in changes.of(PODS):
        out.add((ns, name.rsplit("-", 1)[0]))
    for ns, name in changes.of(CLAIMS):
        base = name.rsplit("-", 1)[0]
        out |= {(ns, base[i + 1 :]) for i, ch in enumerate(base) if ch == "-"}
    return out & sets


class ControlLoop:
    """Runs the controllers and the kubelet whenever the store changes (or a timer is due)."""

    def __init__(self, store: Store, controllers: Controllers, kubelet: Kubelet) -> None:
        self.store = store
        self.controllers = controllers
        self.kubelet = kubelet
        self._controllers_enabled = True
        self._kubelet_enabled = True
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._step_lock = threading.Lock()
        self._seen: int | None = None
        """The resourceVersion the controllers have seen up to (None: they must look at everything)."""

    @property
    def controllers_enabled(self) -> bool:
        return self._controllers_enabled

    @controllers_enabled.setter
    def controllers_enabled(self, on: bool) -> None:
        self._controllers_enabled = on
        self._seen = None  # what changed while they were off is not in their view: look at everything

    @property
    def kubelet_enabled(self) -> bool:
        return self._kubelet_enabled

    @kubelet_enabled.setter
    def kubelet_enabled(self, on: bool) -> None:
        self._kubelet_enabled = on
        self.kubelet.reconsider()  # nor in the kubelet's

    def step(self, *, everything: bool = False) -> float | None:
        """One pass of everything enabled, on what changed since the last (or on everything);
        returns the next timer deadline (monotonic), if any."""
        with self._step_lock:
            wake: float | None = None
            seen = None if everything else self._seen
            changes, self._seen = (
                self.store.changes_after(seen) if seen is not None else (None, self.store.resource_version)
            )
            try:
                if self.controllers_enabled:
                    self.controllers.sync(changes)
                if self.kubelet_enabled:
                    wake = self.kubelet.sync(changes)
            except ApiError:
                wake = time.monotonic() + 0.05  # lost a race with a client; the next pass will redo it
                self._seen = seen
            except Exception:
                self._seen = seen
                self.errors.append(traceback.format_exc())
                wake = time.monotonic() + 0.5
            return wake

    def settle(self, max_passes: int = 100) -> None:
        """Run passes until nothing changes any more (for tests that drive the loop by hand)."""
        for _ in range(max_passes):
            before = self.store.resource_version
            self.step(everything=True)
            if self.store.resource_version == before:
                return

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kubeapi-controllers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.store.wake_watchers()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            rv = self.store.resource_version
            wake = self.step()
            if self.store.resource_version != rv:
                continue  # our own writes may need follow-up work at once
            timeout = 0.2
            if wake is not None:
                timeout = max(0.0, min(timeout, wake - time.monotonic()))
            self.store.wait_for_change(rv, timeout)
