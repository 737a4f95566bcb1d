"""A faithful, stateful Kubernetes API server double for tests, driven through the real client.

Start with `KubeApiDouble` (double.py):

    from kubernetes import client
    from kubeapi import KubeApiDouble

    with KubeApiDouble(version="v1.33.1") as kube:          # HTTP server on 127.0.0.1:<free port>
        apps = client.AppsV1Api(kube.api_client())
        apps.create_namespaced_stateful_set("default", statefulset)
        kube.wait_for(lambda: kube.pod_ready("db-0"))          # controllers and kubelet run in a thread
        kube.set_node_capacity(cpu="2")                        # a later resize will be Infeasible
        assert kube.writes("statefulsets", "db") == 1          # request log

The other modules, from the bottom up:

* errors       - `ApiError` and the real server's `Status` reasons and messages
* quantity     - resource quantities: parsing, comparison and the canonical form the server stores
* selectors    - label and field selectors
* registry     - served resource types (built-in and from CRDs) and discovery documents
* schema       - list/map semantics for patches and apply; CRD pruning, defaulting, validation
* patch        - JSON merge patch, JSON patch, strategic merge patch
* apply        - server-side apply and managedFields
* strategies   - per-type defaulting, initial status, validation and immutability
* store        - storage, resourceVersions, watch history, the write pipeline, deletion and GC
* server       - HTTP routing, verbs, watch streaming, request log, injected faults
* kubelet      - the pretend node: binding, pod lifecycle, in-place resize
* controllers  - StatefulSet, Deployment/ReplicaSet, EndpointSlice, PVC binder, garbage collector
* crds         - building CustomResourceDefinitions for tests
"""

from .double import KubeApiDouble
from .errors import ApiError
from .kubelet import PodBehaviour
from .server import RequestRecord

__all__ = ["ApiError", "KubeApiDouble", "PodBehaviour", "RequestRecord"]
