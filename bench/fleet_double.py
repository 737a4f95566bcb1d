"""The fleet benchmark's API double, in a process of its own, and what the benchmark asks of it.

    fleet_double.py --address HOST:PORT   (the benchmark starts it; the key is in FLEET_DOUBLE_KEY)

The double serves the operator over HTTP as the tests run it. The benchmark's own reads and writes
come over a `multiprocessing.connection` and go to the double's store directly, so they are not in
its request log, and its polling takes no time from the measurement loop's process.

`preload` makes a fleet of any size in seconds: the operator settles a few databases itself (one of
each kind is its template), and every other database is a copy of its kind's template, restored into
the store as an etcd restore would bring it back (uids, status and managedFields as stored). A copy
differs from its template where the operator would have made it differ: names, uids, its activator
port, its server certificate (issued for its own names by the operator's CA), the pod's revision
label. The pod address is the double's kubelet's, and the EndpointSlice follows it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Mapping
from contextlib import suppress
from datetime import UTC, datetime
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

from controller import pki
from controller.api import codec, types
from controller.runtime.kubernetes import builders

SYSTEM = "sdb-system"
NAMESPACE = "fleet"
COPIED = (
    "serverlessdatabases.dbscale.io",
    "statefulsets.apps",
    "pods",
    "persistentvolumeclaims",
    "services",
    "endpointslices.discovery.k8s.io",
    "secrets",
    "configmaps",
    "networkpolicies.networking.k8s.io",
)
"""What a database is made of. The double's controllers make the rest (the headless Service's
EndpointSlice); Events and WakeRequests are history, not state."""
DATABASES = COPIED[0]


class Side:
    """What the benchmark calls, by name, over the connection."""

    def __init__(self, double: Any) -> None:
        self.double = double
        self.store = double.store
        self.rt = double.resource(DATABASES)
        self.want: dict[str, str] = {}

    # -- the fleet's objects ------------------------------------------------------------------------

    def url(self) -> str:
        return str(self.double.url)

    def create(self, obj: dict[str, Any]) -> None:
        self.double.create(obj)

    def get(self, name: str) -> dict[str, Any] | None:
        return self.double.get(DATABASES, name, NAMESPACE)  # type: ignore[no-any-return]

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.store.patch(self.rt, NAMESPACE, name, "application/merge-patch+json", patch, manager="bench")

    def ask_wake(self, name: str) -> str:
        """A WakeRequest for the database, as the activator makes one; its name is what status answers."""
        token = f"{name}-{time.time_ns()}"
        self.double.create(
            {
                "apiVersion": types.API_VERSION,
                "kind": types.WAKE_REQUEST_KIND,
                "metadata": {"name": token, "namespace": NAMESPACE},
                "spec": {"database": name},
            }
        )
        return token

    def answered(self, names: Mapping[str, str]) -> list[str]:
        """Those of `names` (database: WakeRequest) whose status answers the request Active and Ready."""
        done = []
        for name, token in names.items():
            with self.store.lock:
                status = (self.store._peek(self.rt.key, NAMESPACE, name) or {}).get("status") or {}
            ready: dict[str, Any] = next(
                (c for c in status.get("conditions") or [] if c["type"] == "Ready"), {}
            )
            if (
                status.get("wakeRequest") == token
                and status.get("phase") == "Active"
                and ready.get("status") == "True"
            ):
                done.append(name)
        return done

    def has_status(self, name: str) -> bool:
        with self.store.lock:
            return bool((self.store._peek(self.rt.key, NAMESPACE, name) or {}).get("status"))

    def past_creating(self, name: str) -> bool:
        """Whether its status has moved on from Creating: its first pass made its storage, endpoint and
        compute, and said so."""
        with self.store.lock:
            status = (self.store._peek(self.rt.key, NAMESPACE, name) or {}).get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        return ready is not None and ready.get("reason") != "Creating"

    def expect(self, want: dict[str, str]) -> None:
        self.want = want

    def converged(self) -> int:
        """How many of the expected databases have their phase, for their generation."""
        done = 0
        with self.store.lock:
            for obj in self.store.stored(self.rt.key):
                meta, status = obj["metadata"], obj.get("status") or {}
                if status.get("phase") == self.want.get(meta["name"]) and status.get(
                    "observedGeneration"
                ) == meta.get("generation"):
                    done += 1
        return done

    # -- the request log ----------------------------------------------------------------------------

    def traffic(self, since: float, until: float) -> dict[str, int]:
        """The operator's requests between two times: all, writes (but the Lease's), Secret reads."""
        requests = [r for r in self.double.requests if since <= r.time < until]
        return {
            "requests": len(requests),
            "writes": sum(r.is_write and r.resource != "leases.coordination.k8s.io" for r in requests),
            "secret_reads": sum(r.resource == "secrets" and not r.is_write for r in requests),
        }

    def writes_by_resource(self, since: float, until: float) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.double.requests:
            if since <= r.time < until and r.is_write and r.resource != "leases.coordination.k8s.io":
                key = f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}"
                out[key] = out.get(key, 0) + 1
        return out

    def top_writers(self, since: float, until: float, count: int = 5) -> list[tuple[str, int]]:
        """The objects the operator wrote most between two times (a steady state should have none)."""
        out: dict[str, int] = {}
        for r in self.double.requests:
            if since <= r.time < until and r.is_write and r.resource != "leases.coordination.k8s.io":
                out[f"{r.resource}/{r.name}"] = out.get(f"{r.resource}/{r.name}", 0) + 1
        return sorted(out.items(), key=lambda item: -item[1])[:count]

    def first_writes(self, asked: Mapping[str, float]) -> dict[str, float]:
        """For each database, the time of the operator's first successful write of its compute (its
        StatefulSet) after it was asked to wake: when its wake left the queue and was acted on."""
        found: dict[str, float] = {}
        for r in self.double.requests:
            at = asked.get(r.name)
            if (
                at is not None
                and r.is_write
                and r.resource == "statefulsets.apps"
                and r.time > at
                and r.status < 300
            ):
                found[r.name] = min(found.get(r.name, r.time), r.time)
        return found

    def internal_errors(self) -> list[str]:
        return list(self.double.internal_errors)

    # -- the preload --------------------------------------------------------------------------------

    def preload(self, templates: dict[str, str], copies: dict[str, list[str]], first_port: int) -> float:
        """Copies of each template database (by name) under the names given for it; the copy at
        position i of all copies gets activator port first_port + i. Returns the seconds taken, to
        the double's controllers having settled what the copies set off."""
        started = time.monotonic()
        authority = self._authority()
        port = first_port
        # The controllers look at the whole restore once, when it is done, not at every object of it.
        self.double.controllers_enabled = self.double.kubelet_enabled = False
        for template, names in copies.items():
            objects = self._objects_of(templates[template])
            for name in names:
                for obj in self._copy(objects, templates[template], name, port, authority):
                    self.double.restore(obj)
                port += 1
        self.double.controllers_enabled = self.double.kubelet_enabled = True
        self._settle()
        self._follow_pods([name for template, names in copies.items() for name in names])
        self._settle()
        return time.monotonic() - started

    def _authority(self) -> pki.KeyPair:
        secret = self.store._peek("secrets", SYSTEM, builders.CA_NAME)
        data = secret["data"]
        return pki.KeyPair(_text(data["tls.crt"]), _text(data["tls.key"]))

    def _objects_of(self, name: str) -> list[dict[str, Any]]:
        objects = []
        with self.store.lock:
            for key in COPIED:
                for obj in self.store.stored(key):
                    meta = obj["metadata"]
                    if meta.get("namespace") != NAMESPACE:
                        continue
                    if (key == DATABASES and meta["name"] == name) or (meta.get("labels") or {}).get(
                        builders.DATABASE_LABEL
                    ) == name:
                        objects.append(json.loads(json.dumps(obj)))
        return objects

    def _copy(
        self,
        objects: list[dict[str, Any]],
        template: str,
        name: str,
        port: int,
        authority: pki.KeyPair,
    ) -> list[dict[str, Any]]:
        text = json.dumps(objects)
        for obj in objects:
            text = text.replace(obj["metadata"]["uid"], str(uuid.uuid4()))
        copies: list[dict[str, Any]] = json.loads(text.replace(template, name))
        template_port = next(
            ((o.get("status") or {}).get("activatorPort") for o in objects if o["kind"] == types.KIND), None
        )
        revision, db = "", None
        for obj in copies:
            obj["metadata"].pop("resourceVersion", None)
            kind = obj["kind"]
            if kind == types.KIND:
                if template_port is not None:
                    obj["status"]["activatorPort"] = port
                db = codec.decode(obj)
            elif kind == "EndpointSlice":
                for entry in obj.get("ports") or []:
                    if entry.get("port") == template_port:
                        entry["port"] = port
            elif kind == "StatefulSet":
                from kubeapi.controllers import template_hash

                revision = f"{name}-{template_hash(obj['spec'].get('template') or {})}"
                status = obj.get("status") or {}
                for field in ("currentRevision", "updateRevision"):
                    if field in status:
                        status[field] = revision
        for obj in copies:
            if obj["kind"] == "Pod":
                obj["metadata"]["labels"]["controller-revision-hash"] = revision
            elif obj.get("type") == "kubernetes.io/tls" and db is not None:
                names = builders.server_names(db)
                leaf = pki.issue(authority, common_name=names[1], names=names, now=datetime.now(UTC))
                obj["data"]["tls.crt"] = _b64(leaf.certificate)
                obj["data"]["tls.key"] = _b64(leaf.key)
        return copies

    def _settle(self) -> None:
        """Until a pass of the double's controllers and kubelet over everything changes nothing (a
        quiet spell is not enough: one pass over ninety thousand objects can take seconds)."""
        self.double.settle()

    def _follow_pods(self, names: list[str]) -> None:
        """Each running copy's EndpointSlice at its own pod's address (the kubelet gave it a new one)."""
        slices = self.double.resource("endpointslices")
        for name in names:
            pod = self.store._peek("pods", NAMESPACE, f"{name}-0")
            address = ((pod or {}).get("status") or {}).get("podIP")
            if not address:
                continue

            def follow(obj: dict[str, Any], address: str = address) -> None:
                for endpoint in obj.get("endpoints") or []:
                    endpoint["addresses"] = [address]

            self.store.mutate(slices, NAMESPACE, f"{name}-sdb", follow, manager=builders.FIELD_MANAGER)


def _text(data: str) -> str:
    return base64.b64decode(data).decode()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def serve(address: tuple[str, int], key: bytes) -> None:
    from kubeapi import KubeApiDouble
    from support.cluster import CRDS, activator_slice

    capacity = {"cpu": "100000", "memory": "1000000Gi", "pods": "1000000"}
    with KubeApiDouble(history_size=400_000, node_capacity=capacity) as double:
        for crd in CRDS:
            double.install_crd(crd)
        for namespace in (SYSTEM, NAMESPACE):
            double.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        double.create(activator_slice())
        side = Side(double)
        with Client(address, authkey=key) as connection:
            while True:
                try:
                    method, args = connection.recv()
                except EOFError:
                    return
                try:
                    connection.send((True, getattr(side, method)(*args)))
                except Exception:
                    connection.send((False, traceback.format_exc()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", required=True, help="HOST:PORT of the benchmark's listener")
    args = parser.parse_args()
    host, _, port = args.address.rpartition(":")
    with suppress(KeyboardInterrupt):
        serve((host, int(port)), bytes.fromhex(os.environ["FLEET_DOUBLE_KEY"]))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    main()
