"""`sdb render`: the objects the Kubernetes runtime would keep for a database in a phase, without a cluster.

Values only the cluster knows are shown as such: the password is generated at creation and the
certificates are issued by the operator (both rendered as placeholders), and the EndpointSlice's
addresses (the pod's, or the activator's) are filled in by the operator, so it renders without
endpoints. With spec.pooling.enabled the pooler's objects follow, sized for the database's floor.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controller import pki
from controller.api import types
from controller.runtime.kubernetes import builders
from controller.runtime.kubernetes import pooler as pooled

PASSWORD_PLACEHOLDER = "<generated-at-creation>"
CERTIFICATE_PLACEHOLDER = "<issued-by-the-operator>"
UID_PLACEHOLDER = "<assigned-by-the-api-server>"


def objects(db: types.ServerlessDatabase, phase: types.Phase) -> list[dict[str, Any]]:
    if not db.metadata.uid:
        db = replace(db, metadata=replace(db.metadata, uid=UID_PLACEHOLDER))
    objects_ = builders.render(
        db,
        phase,
        password=PASSWORD_PLACEHOLDER,
        tls=pki.KeyPair(CERTIFICATE_PLACEHOLDER, CERTIFICATE_PLACEHOLDER),
        ca=CERTIFICATE_PLACEHOLDER,
    )
    if not db.spec.pooling.enabled:
        return objects_
    files = pooled.files(
        db,
        db.spec.capacity.min,
        app_password=PASSWORD_PLACEHOLDER,
        superuser_password=PASSWORD_PLACEHOLDER if db.spec.superuser_access else None,
        admin_password=PASSWORD_PLACEHOLDER,
    )
    return [
        *objects_,
        *pooled.objects(db, files, admin_password=PASSWORD_PLACEHOLDER, system_namespace="sdb-system"),
    ]
