"""Who may connect, as far as the decisions need it: a digest of the spec's access, so the policy knows
whether the roles in the data directory still follow the spec (status.compute.access)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref

from controller.api import types

ACCESS_VERSION = 3
"""Bumped when the roles the operator makes change shape, so every database gets them again
(2: plaintext as a role membership; 3: each role's SCRAM secret is the one the pooler holds too)."""


_digests: dict[int, tuple[weakref.ref[types.DatabaseSpec], str]] = {}
"""Each live spec object's digest, by identity: a running database's spec is decoded once per version
and its digest asked for twice a tick. An entry goes with its spec, so the memo holds no more than the
specs alive anyway."""


def digest(spec: types.DatabaseSpec) -> str:
    """The same for two specs exactly when they ask for the same roles and grants."""
    key = id(spec)
    kept = _digests.get(key)
    if kept is not None and kept[0]() is spec:
        return kept[1]
    value = _digest(spec)

    def gone(ref: weakref.ref[types.DatabaseSpec]) -> None:
        if _digests.get(key, (None, ""))[0] is ref:
            del _digests[key]

    _digests[key] = (weakref.ref(spec, gone), value)
    return value


def _digest(spec: types.DatabaseSpec) -> str:
    wanted = {
        "version": ACCESS_VERSION,
        "superuserAccess": spec.superuser_access,
        "allowedNamespaces": sorted(spec.access.allowed_namespaces),
        "tlsRequired": spec.tls.required,
    }
    if spec.access.identities:  # absent when empty: the digest of every database without them stays
        wanted["identityRoles"] = sorted({i.role for i in spec.access.identities})
    # Declared roles and databases change the digest only when declared: older digests stay valid.
    if spec.roles or spec.databases:
        wanted["roles"] = [dataclasses.asdict(r) for r in spec.roles]
        wanted["databases"] = [dataclasses.asdict(d) for d in spec.databases]
    return hashlib.sha256(json.dumps(wanted, sort_keys=True, default=str).encode()).hexdigest()[:16]


def declares(spec: types.DatabaseSpec) -> bool:
    """Whether the spec declares roles or databases, which are looked at again now and then for drift."""
    return bool(spec.roles or spec.databases)
