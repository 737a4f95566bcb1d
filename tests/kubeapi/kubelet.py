"""A pretend node: the scheduler's binding and the kubelet's pod lifecycle and in-place resize.

One node (`node-1` by default, with configurable capacity) is registered as a Node object. Pods are
bound to it when their requests fit (otherwise they stay Pending with an `Unschedulable` condition),
then, after `ready_delay` seconds, reported Running and Ready with container statuses, a pod IP and
the resources actually applied. Tests can make a pod stay unready, crash or fail.

Resizes follow the 1.33 kubelet: a change of `spec.containers[*].resources` (through `/resize`) is
either admitted (allocatedResources updated at once, a `PodResizeInProgress` condition for
`resize_delay` seconds, then the container status shows the new resources, with no restart unless
the container's resizePolicy says `RestartContainer`), or not: `PodResizePending` with reason
`Infeasible` (the node could never fit it) or `Deferred` (it does not fit now), leaving the running
resources unchanged. Deferred resizes are retried as capacity frees up.

Pod IPs default to 127.244.0.0/16: loopback addresses, so a test that does dial a "pod" reaches a
local process and never the network.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import ipaddress
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import quantity
from .errors import ApiError
from .registry import Registry
from .store import Changes, Obj, Store, now_rfc3339

PODS = "pods"
_SWITCHES = frozenset(
    {
        "node_capacity",
        "ready_delay",
        "resize_delay",
        "termination_delay",
        "resize_outcome",
        "default_behaviour",
    }
)
"""The public switches tests set: after one changes, every pod is looked at again."""

MANAGER = "kubelet"


class PodBehaviour(enum.Enum):
    """What the pretend kubelet does with a pod."""

    READY = "ready"  # starts, becomes Ready
    NOT_READY = "not-ready"  # runs, but its readiness never passes
    PENDING = "pending"  # never starts (like an image that cannot be pulled)
    CRASH = "crash"  # starts, then crash-loops (restartCount grows)
    FAIL = "fail"  # phase Failed, containers terminated with exit code 1
    SUCCEED = "succeed"  # phase Succeeded, containers exited 0


@dataclass
class _PodState:
    uid: str
    ip: str
    seen: float
    started: str = ""
    running_since: float | None = None
    container_ids: dict[str, str] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    allocated: dict[str, dict[str, Any]] = field(default_factory=dict)  # container -> resources admitted
    actual: dict[str, dict[str, Any]] = field(default_factory=dict)  # container -> resources applied
    resize_started: float | None = None
    resize_started_at: str = ""
    transitions: dict[str, tuple[str, str]] = field(default_factory=dict)  # condition -> (status, time)
    crashed_behaviour: PodBehaviour | None = None
    pending: tuple[str, str] | None = None  # (reason, message) of a resize that is not admitted
    deleting_since: float | None = None


def _requests(resources: dict[str, Any] | None) -> dict[str, Any]:
    return dict((resources or {}).get("requests") or {})


class Kubelet:
    """Runs inside the double's control loop; every public attribute is a switch for tests."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        node_name: str = "node-1",
        capacity: dict[str, str] | None = None,
        pod_cidr: str = "127.244.0.0/16",
    ) -> None:
        self.store = store
        self.registry = registry
        self.node_name = node_name
        self.node_capacity: dict[str, str] = dict(capacity or {"cpu": "4", "memory": "16Gi", "pods": "110"})
        self.ready_delay = 0.0
        self.resize_delay = 0.0
        self.termination_delay = 0.0
        # Force every resize to this outcome ("Infeasible" or "Deferred"), whatever the capacity says.
        self.resize_outcome: str | None = None
        self.default_behaviour = PodBehaviour.READY
        self._behaviours: dict[tuple[str, str], PodBehaviour] = {}
        self._pods: dict[str, _PodState] = {}
        self._network = ipaddress.ip_network(pod_cidr)
        self._next_ip = 2
        self._lock = threading.Lock()
        self._pods_rt = registry.by_key(PODS)
        self._nodes_rt = registry.by_key("nodes")
        self._due: dict[str, float] = {}
        """A pod's own next timer (start, resize, graceful deletion), by uid."""
        self._reconsider = True
        """A switch was thrown since the last pass: the next one looks at every pod."""

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _SWITCHES:
            super().__setattr__("_reconsider", True)

    def reconsider(self) -> None:
        """Have the next pass look at every pod (a switch changed what they should do)."""
        self._reconsider = True

    # -- switches -----------------------------------------------------------------------------------

    def set_behaviour(self, namespace: str, name: str, behaviour: PodBehaviour | str) -> None:
        """Decide what happens to pod `name` (now, or whenever a pod of that name appears)."""
        with self._lock:
            self._behaviours[(namespace, name)] = PodBehaviour(behaviour)
        self.reconsider()

    def clear_behaviour(self, namespace: str, name: str) -> None:
        with self._lock:
            self._behaviours.pop((namespace, name), None)
        self.reconsider()

    def behaviour(self, namespace: str, name: str) -> PodBehaviour:
        with self._lock:
            return self._behaviours.get((namespace, name), self.default_behaviour)

    @property
    def graceful_termination(self) -> bool:
        return self.store.graceful_pod_deletion

    @graceful_termination.setter
    def graceful_termination(self, on: bool) -> None:
        """When on, deleting a running pod sets deletionTimestamp and the kubelet removes it later."""
        self.store.graceful_pod_deletion = on

    # -- the loop -----------------------------------------------------------------------------------

    def sync(self, changes: Changes | None = None) -> float | None:
        """One pass over the pods that need one; returns when (monotonic time) it next needs to run,
        if ever. Without `changes`, or after a switch was thrown, that is every pod. Otherwise it is
        the changed pods, those whose timer is due, and, when any pod changed, those waiting for room
        on the node: a kubelet acts on its watch and its own timers, and a pass over every pod at
        every write would cost the double more than the operator it serves."""
        self._register_node()
        everything, self._reconsider = changes is None or self._reconsider, False
        touched = changes.of(PODS) if changes is not None else set()
        room_changed = bool(touched) or (changes is not None and changes.deleted)
        pods = self.store.stored(PODS)
        live = {p["metadata"]["uid"] for p in pods}
        for uid in [uid for uid in self._pods if uid not in live]:
            del self._pods[uid]
        for uid in [uid for uid in self._due if uid not in live]:
            del self._due[uid]
        now = time.monotonic()
        for pod in pods:
            meta = pod["metadata"]
            uid = meta["uid"]
            due = self._due.get(uid)
            if not (
                everything
                or (meta["namespace"], meta["name"]) in touched
                or (due is not None and due <= now)
                or (room_changed and self._waits_for_room(pod))
            ):
                continue
            try:
                when = self._sync_pod(pod, pods)
            except ApiError:
                when = time.monotonic() + 0.05  # raced with a client write: try again shortly
            if when is None:
                self._due.pop(uid, None)
            else:
                self._due[uid] = when
        return min(self._due.values(), default=None)

    def _waits_for_room(self, pod: Obj) -> bool:
        """Not yet scheduled, or a resize not admitted: what another pod's change can let through."""
        state = self._pods.get(pod["metadata"]["uid"])
        return not (pod.get("spec") or {}).get("nodeName") or (
            state is not None and state.pending is not None
        )

    def _register_node(self) -> None:
        """Keep the Node object in line with the configured capacity (heartbeats are not simulated)."""
        node = self.store.try_get(self._nodes_rt, "", self.node_name)
        if node is None:
            labels = {
                "kubernetes.io/hostname": self.node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            }
            try:
                node = self.store.create(
                    self._nodes_rt,
                    "",
                    {"metadata": {"name": self.node_name, "labels": labels}},
                    manager=MANAGER,
                )
            except ApiError:
                return
        conditions: list[dict[str, Any]] = (node.get("status") or {}).get("conditions") or [{}]
        since = conditions[0].get("lastTransitionTime")
        capacity = {k: quantity.canonical(v) for k, v in self.node_capacity.items()}
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": since or now_rfc3339(),
            "lastTransitionTime": since or now_rfc3339(),
        }
        status = {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [ready],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
            "nodeInfo": {
                "kubeletVersion": self.registry.git_version,
                "kubeProxyVersion": self.registry.git_version,
                "containerRuntimeVersion": "containerd://2.0.0",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "kubeapi double",
                "kernelVersion": "6.0.0",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        self.store.mutate(
            self._nodes_rt,
            "",
            self.node_name,
            lambda n: n.__setitem__("status", status),
            subresource="status",
            manager=MANAGER,
        )

    def _allocate_ip(self) -> str:
        ip = self._network.network_address + self._next_ip
        self._next_ip += 1
        return str(ip)

    def _fits(self, extra: dict[str, Any], others: list[Obj], exclude_uid: str) -> tuple[bool, bool, str]:
        """(fits the node at all, fits now, message) for extra requests on top of other pods' allocations."""
        used: dict[str, Any] = {}
        for p in others:
            if p["metadata"]["uid"] == exclude_uid or (p.get("spec") or {}).get("nodeName") != self.node_name:
                continue
            if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            state = self._pods.get(p["metadata"]["uid"])
            for c in (p.get("spec") or {}).get("containers") or []:
                reqs = (
                    state.allocated.get(c["name"], {}).get("requests", {})
                    if state and c["name"] in state.allocated
                    else _requests(c.get("resources"))
                )
                for r, v in reqs.items():
                    used[r] = used.get(r, 0) + quantity.value(v)
        for r in ("cpu", "memory"):
            want = quantity.value(extra.get(r, "0"))
            cap = quantity.value(self.node_capacity.get(r, "0"))
            if want > cap:
                scale = 1000 if r == "cpu" else 1
                return (
                    False,
                    False,
                    f"Node didn't have enough capacity: {r}, requested: {int(want * scale)}, "
                    f"capacity: {int(cap * scale)}",
                )
            if want + used.get(r, 0) > cap:
                scale = 1000 if r == "cpu" else 1
                return (
                    True,
                    False,
                    (
                        f"Node didn't have enough resource: {r}, requested: {int(want * scale)}, "
                        f"used: {int(used.get(r, 0) * scale)}, capacity: {int(cap * scale)}"
                    ),
                )
        return True, True, ""

    @staticmethod
    def _pod_requests(spec: dict[str, Any]) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for c in spec.get("containers") or []:
            for r, v in _requests(c.get("resources")).items():
                total[r] = total.get(r, 0) + quantity.value(v)
        return {k: str(v) if v.denominator == 1 else f"{float(v)}" for k, v in total.items()}

    def _sync_pod(self, pod: Obj, pods: list[Obj]) -> float | None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        now = time.monotonic()
        if meta.get("deletionTimestamp"):
            state = self._pods.get(uid)
            if meta.get("deletionGracePeriodSeconds") and not meta.get("finalizers"):
                if state is None:
                    state = self._pods[uid] = _PodState(uid, "", now)
                if state.deleting_since is None:
                    state.deleting_since = now
                if now - state.deleting_since >= self.termination_delay:
                    self.store.delete(self._pods_rt, ns, name, grace_period=0)
                    return None
                return state.deleting_since + self.termination_delay
            return None
        node = spec.get("nodeName")
        if not node:
            return self._schedule(pod, pods)
        if node != self.node_name:
            return None
        phase = (pod.get("status") or {}).get("phase")
        state = self._pods.get(uid)
        if state is None:
            state = self._pods[uid] = _PodState(uid, self._allocate_ip(), now, started=now_rfc3339())
            for c in spec.get("containers") or []:
                res = copy.deepcopy(c.get("resources") or {})
                state.allocated[c["name"]] = res
                state.actual[c["name"]] = copy.deepcopy(res)
                state.restarts[c["name"]] = 0
                state.container_ids[c["name"]] = (
                    "containerd://" + hashlib.sha256(f"{uid}/{c['name']}".encode()).hexdigest()
                )
        if phase in ("Succeeded", "Failed"):
            return None
        behaviour = self.behaviour(ns, name)
        wake: float | None = None
        started = behaviour != PodBehaviour.PENDING and now - state.seen >= self.ready_delay
        if behaviour != PodBehaviour.PENDING and not started:
            wake = state.seen + self.ready_delay
        if started and state.running_since is None:
            state.running_since = now
        resize_wake = self._resize(pod, state, pods, now) if started else None
        if resize_wake is not None:
            wake = resize_wake if wake is None else min(wake, resize_wake)
        if behaviour == PodBehaviour.CRASH and state.crashed_behaviour != PodBehaviour.CRASH:
            for c in state.restarts:
                state.restarts[c] += 1
        state.crashed_behaviour = behaviour
        status = self._status(pod, state, behaviour, started)
        if status != pod.get("status"):  # most passes find nothing new to report
            self.store.mutate(
                self._pods_rt,
                ns,
                name,
                lambda p: p.__setitem__("status", status),
                subresource="status",
                manager=MANAGER,
            )
        return wake

    def _schedule(self, pod: Obj, pods: list[Obj]) -> float | None:
        meta = pod["metadata"]
        if (pod.get("spec") or {}).get("schedulingGates"):
            return None
        fits, fits_now, message = self._fits(self._pod_requests(pod.get("spec") or {}), pods, meta["uid"])
        if fits and fits_now:
            self.store.mutate(
                self._pods_rt,
                meta["namespace"],
                meta["name"],
                lambda p: p["spec"].__setitem__("nodeName", self.node_name),
                subresource="binding",
                manager="kube-scheduler",
            )
            return time.monotonic()
        resource = message.split(":")[1].split(",")[0].strip() if ":" in message else "resources"
        reason = (
            f"0/1 nodes are available: 1 Insufficient {resource}. preemption: 0/1 nodes are available: "
            "1 No preemption victims found for incoming pod."
        )

        def unschedulable(p: Obj) -> None:
            status = p.setdefault("status", {})
            conds = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
            old = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
            since = old["lastTransitionTime"] if old and old.get("status") == "False" else now_rfc3339()
            conds.append(
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": reason,
                    "lastProbeTime": None,
                    "lastTransitionTime": since,
                }
            )
            status["conditions"] = conds
            status["phase"] = "Pending"

        self.store.mutate(
            self._pods_rt,
            meta["namespace"],
            meta["name"],
            unschedulable,
            subresource="status",
            manager="kube-scheduler",
        )
        return None

    # -- resize ------------------------------------------------------------------------------------

    def _resize(self, pod: Obj, state: _PodState, pods: list[Obj], now: float) -> float | None:
        spec = pod.get("spec") or {}
        desired = {c["name"]: c.get("resources") or {} for c in spec.get("containers") or []}
        state.pending = None
        if any(_norm(desired.get(c)) != _norm(state.allocated.get(c)) for c in desired):
            total = self._pod_requests(spec)
            fits, fits_now, message = self._fits(total, pods, pod["metadata"]["uid"])
            if self.resize_outcome == "Infeasible":
                fits, message = False, message or "Node didn't have enough capacity"
            elif self.resize_outcome == "Deferred":
                fits_now, message = False, message or "Node didn't have enough resource"
            if not fits:
                state.pending = ("Infeasible", message)
            elif not fits_now:
                state.pending = ("Deferred", message)
            else:
                policies = {
                    c["name"]: {
                        p["resourceName"]: p.get("restartPolicy", "NotRequired")
                        for p in c.get("resizePolicy") or []
                    }
                    for c in spec.get("containers") or []
                }
                for c, res in desired.items():
                    before = state.allocated.get(c) or {}
                    if _norm(res) == _norm(before):
                        continue
                    changed = {
                        r
                        for section in ("requests", "limits")
                        for r in set(res.get(section) or {}) | set(before.get(section) or {})
                        if (res.get(section) or {}).get(r) != (before.get(section) or {}).get(r)
                    }
                    if any(policies.get(c, {}).get(r) == "RestartContainer" for r in changed):
                        state.restarts[c] = state.restarts.get(c, 0) + 1
                    state.allocated[c] = copy.deepcopy(res)
                state.resize_started = now
                state.resize_started_at = now_rfc3339()
        if state.resize_started is not None and any(
            _norm(state.allocated.get(c)) != _norm(state.actual.get(c)) for c in state.allocated
        ):
            if now - state.resize_started >= self.resize_delay:
                state.actual = copy.deepcopy(state.allocated)
                state.resize_started = None
                return None
            return state.resize_started + self.resize_delay
        return None

    # -- status ------------------------------------------------------------------------------------

    def _condition(
        self, state: _PodState, ctype: str, status: str, reason: str = "", message: str = ""
    ) -> dict[str, Any]:
        previous = state.transitions.get(ctype)
        if previous is None or previous[0] != status:
            state.transitions[ctype] = (status, now_rfc3339())
        cond: dict[str, Any] = {
            "type": ctype,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": state.transitions[ctype][1],
        }
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        return cond

    def _status(self, pod: Obj, state: _PodState, behaviour: PodBehaviour, started: bool) -> dict[str, Any]:
        spec = pod.get("spec") or {}
        unready = (
            f"containers with unready status: [{' '.join(c['name'] for c in spec.get('containers') or [])}]"
        )
        failed = behaviour == PodBehaviour.FAIL
        succeeded = behaviour == PodBehaviour.SUCCEED
        ready = started and behaviour == PodBehaviour.READY
        running = started and behaviour in (PodBehaviour.READY, PodBehaviour.NOT_READY)
        phase = (
            "Failed"
            if failed and started
            else "Succeeded"
            if succeeded and started
            else "Running"
            if started
            else "Pending"
        )
        statuses = []
        for c in spec.get("containers") or []:
            cname = c["name"]
            cs: dict[str, Any] = {
                "name": cname,
                "image": c.get("image", ""),
                "imageID": "docker.io/library/"
                + str(c.get("image", "")).split("/")[-1]
                + "@sha256:"
                + hashlib.sha256(str(c.get("image")).encode()).hexdigest(),
                "ready": ready,
                "restartCount": state.restarts.get(cname, 0),
                "started": running,
            }
            if started:
                cs["containerID"] = state.container_ids.get(cname, "")
            if running:
                cs["state"] = {"running": {"startedAt": state.started}}
            elif failed and started:
                cs["state"] = {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "startedAt": state.started,
                        "finishedAt": now_rfc3339(),
                        "containerID": state.container_ids.get(cname, ""),
                    }
                }
            elif succeeded and started:
                cs["state"] = {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": state.started,
                        "finishedAt": now_rfc3339(),
                        "containerID": state.container_ids.get(cname, ""),
                    }
                }
            elif behaviour == PodBehaviour.CRASH and started:
                cs["state"] = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off restarting failed container {cname}",
                    }
                }
                cs["lastState"] = {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "startedAt": state.started,
                        "finishedAt": state.started,
                        "containerID": state.container_ids.get(cname, ""),
                    }
                }
            else:
                cs["state"] = {"waiting": {"reason": "ContainerCreating"}}
            if started:
                alloc = state.allocated.get(cname) or {}
                cs["allocatedResources"] = dict(alloc.get("requests") or {})
                cs["resources"] = copy.deepcopy(state.actual.get(cname) or {})
            statuses.append(cs)
        conditions = [
            self._condition(state, "PodReadyToStartContainers", "True" if started else "False"),
            self._condition(state, "Initialized", "True"),
            self._condition(
                state,
                "Ready",
                "True" if ready else "False",
                "" if ready else ("PodFailed" if failed else "ContainersNotReady"),
                "" if ready else unready,
            ),
            self._condition(
                state,
                "ContainersReady",
                "True" if ready else "False",
                "" if ready else "ContainersNotReady",
                "" if ready else unready,
            ),
            self._condition(state, "PodScheduled", "True"),
        ]
        pending = state.pending
        if pending is not None:
            conditions.append(self._condition(state, "PodResizePending", "True", pending[0], pending[1]))
        else:
            state.transitions.pop("PodResizePending", None)
        if state.resize_started is not None:
            conditions.append(self._condition(state, "PodResizeInProgress", "True"))
        else:
            state.transitions.pop("PodResizeInProgress", None)
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": state.started,
            "containerStatuses": statuses,
            "qosClass": (pod.get("status") or {}).get("qosClass", "BestEffort"),
        }
        if started:
            status["podIP"] = state.ip
            status["podIPs"] = [{"ip": state.ip}]
        return status


def _norm(resources: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    res = resources or {}
    return {
        section: {k: quantity.value(v) for k, v in (res.get(section) or {}).items()}
        for section in ("requests", "limits")
    }
