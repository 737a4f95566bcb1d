"""Between the Kubernetes object form (camelCase mappings) and the typed API.

`decode` expects an object that `validation.validate` accepted; it fills every default, as the
API server does from the CRD's defaults. `encode` writes every field, so a stored object shows
the full spec a database runs with.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from controller.api import types, units
from controller.api.validation import AUTO, InvalidSpecError, validate


def _time(value: Any) -> datetime | None:
    return units.parse_time(value) if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _time_text(value: datetime | None) -> str | None:
    return units.format_time(value) if value is not None else None


def decode_spec(raw: Mapping[str, Any] | None) -> types.DatabaseSpec:
    raw = raw or {}
    postgres = raw.get("postgres") or {}
    storage = raw.get("storage") or {}
    capacity = raw.get("capacity") or {}
    scaling = raw.get("scaling") or {}
    pause = raw.get("autoPause") or {}
    park = raw.get("autoPark") or {}
    pooling = raw.get("pooling") or {}
    d = types.DatabaseSpec()
    return types.DatabaseSpec(
        postgres=types.PostgresSpec(
            version=str(postgres.get("version", d.postgres.version)),
            image=str(postgres.get("image", d.postgres.image)),
            parameters={str(k): str(v) for k, v in (postgres.get("parameters") or {}).items()},
        ),
        storage=types.StorageSpec(
            size=str(storage.get("size", d.storage.size)),
            storage_class_name=str(storage.get("storageClassName", d.storage.storage_class_name)),
            retain_on_delete=bool(storage.get("retainOnDelete", d.storage.retain_on_delete)),
        ),
        capacity=types.CapacitySpec(
            min=float(capacity.get("min", d.capacity.min)), max=float(capacity.get("max", d.capacity.max))
        ),
        scaling=types.ScalingSpec(
            target_cpu=float(scaling.get("targetCPU", d.scaling.target_cpu)),
            target_memory=float(scaling.get("targetMemory", d.scaling.target_memory)),
            scale_down_delay=units.parse_duration(scaling["scaleDownDelay"])
            if "scaleDownDelay" in scaling
            else d.scaling.scale_down_delay,
            allow_restart=bool(scaling.get("allowRestart", d.scaling.allow_restart)),
            schedules=tuple(
                types.ScheduleSpec(
                    cron=s["cron"], duration=units.parse_duration(s["duration"]), min=float(s["min"])
                )
                for s in scaling.get("schedules") or []
            ),
        ),
        auto_pause=types.AutoPauseSpec(
            enabled=bool(pause.get("enabled", d.auto_pause.enabled)),
            idle_after=units.parse_duration(pause["idleAfter"])
            if pause.get("idleAfter", AUTO) != AUTO
            else d.auto_pause.idle_after,
            idle_after_auto=pause.get("idleAfter") == AUTO,
            ignored_applications=tuple(pause.get("ignoredApplications", d.auto_pause.ignored_applications)),
        ),
        auto_park=types.AutoParkSpec(
            enabled=bool(park.get("enabled", d.auto_park.enabled)),
            idle_after=units.parse_duration(park["idleAfter"])
            if "idleAfter" in park
            else d.auto_park.idle_after,
        ),
        state=types.State(raw.get("state", d.state.value)),
        superuser_access=bool(raw.get("superuserAccess", d.superuser_access)),
        access=types.AccessSpec(
            allowed_namespaces=tuple((raw.get("access") or {}).get("allowedNamespaces") or ()),
            identities=tuple(decode_identity(i) for i in (raw.get("access") or {}).get("identities") or ()),
        ),
        tls=types.TlsSpec(required=bool((raw.get("tls") or {}).get("required", d.tls.required))),
        pooling=types.PoolingSpec(
            enabled=bool(pooling.get("enabled", d.pooling.enabled)),
            mode=types.PoolMode(pooling.get("mode", d.pooling.mode.value)),
            max_client_connections=int(pooling.get("maxClientConnections", d.pooling.max_client_connections)),
        ),
        roles=tuple(_decode_role(r) for r in raw.get("roles") or ()),
        databases=tuple(_decode_database(x) for x in raw.get("databases") or ()),
    )


def decode_identity(raw: Mapping[str, Any]) -> types.IdentitySpec:
    account = raw.get("serviceAccount")
    return types.IdentitySpec(
        role=str(raw["role"]),
        service_account=types.ServiceAccountRef(str(account["namespace"]), str(account["name"]))
        if account
        else None,
        issuer=str(raw.get("issuer", "")),
        subject=str(raw.get("subject", "")),
        audience=str(raw.get("audience", "")),
    )


def encode_identity(identity: types.IdentitySpec) -> dict[str, Any]:
    out: dict[str, Any] = {"role": identity.role}
    if identity.service_account is not None:
        account = identity.service_account
        out["serviceAccount"] = {"namespace": account.namespace, "name": account.name}
    else:
        out["issuer"], out["subject"] = identity.issuer, identity.subject
    if identity.audience:
        out["audience"] = identity.audience
    return out


def _encode_access(access: types.AccessSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"allowedNamespaces": list(access.allowed_namespaces)}
    if access.identities:
        out["identities"] = [encode_identity(i) for i in access.identities]
    return out


def _decode_role(raw: Mapping[str, Any]) -> types.RoleSpec:
    d = types.RoleSpec(name="")
    return types.RoleSpec(
        name=str(raw["name"]),
        ensure=types.Ensure(raw.get("ensure", d.ensure.value)),
        login=bool(raw.get("login", d.login)),
        createdb=bool(raw.get("createdb", d.createdb)),
        inherit=bool(raw.get("inherit", d.inherit)),
        connection_limit=int(raw.get("connectionLimit", d.connection_limit)),
        in_roles=tuple(str(r) for r in raw.get("inRoles") or ()),
        valid_until=_time(raw.get("validUntil")),
        password_secret=str((raw.get("passwordSecret") or {}).get("name") or ""),
    )


def _encode_role(role: types.RoleSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": role.name,
        "ensure": role.ensure.value,
        "login": role.login,
        "createdb": role.createdb,
        "inherit": role.inherit,
        "connectionLimit": role.connection_limit,
        "inRoles": list(role.in_roles),
    }
    if role.valid_until is not None:
        out["validUntil"] = _time_text(role.valid_until)
    if role.password_secret:
        out["passwordSecret"] = {"name": role.password_secret}
    return out


def _decode_database(raw: Mapping[str, Any]) -> types.DeclaredDatabase:
    return types.DeclaredDatabase(
        name=str(raw["name"]),
        owner=str(raw["owner"]),
        extensions=tuple(str(e) for e in raw.get("extensions") or ()),
        ensure=types.Ensure(raw.get("ensure", types.Ensure.PRESENT.value)),
        drop_with_data=bool(raw.get("dropWithData", False)),
    )


def _encode_database(database: types.DeclaredDatabase) -> dict[str, Any]:
    return {
        "name": database.name,
        "owner": database.owner,
        "extensions": list(database.extensions),
        "ensure": database.ensure.value,
        "dropWithData": database.drop_with_data,
    }


def _decode_objects(raw: Any) -> tuple[types.ObjectStatus, ...]:
    out = []
    for entry in raw if isinstance(raw, list) else []:
        try:
            out.append(
                types.ObjectStatus(
                    str(entry["name"]), types.Applied(entry["state"]), str(entry.get("error") or "")
                )
            )
        except (KeyError, TypeError, ValueError):
            continue  # written by another release of the operator; the next pass writes it again
    return tuple(out)


def _encode_objects(objects: tuple[types.ObjectStatus, ...]) -> list[dict[str, Any]]:
    return [
        {"name": o.name, "state": o.state.value, **({"error": o.error} if o.error else {})} for o in objects
    ]


def encode_spec(spec: types.DatabaseSpec) -> dict[str, Any]:
    postgres: dict[str, Any] = {"parameters": dict(spec.postgres.parameters)}
    if spec.postgres.version:
        postgres["version"] = spec.postgres.version
    if spec.postgres.image:
        postgres["image"] = spec.postgres.image
    storage: dict[str, Any] = {"size": spec.storage.size, "retainOnDelete": spec.storage.retain_on_delete}
    if spec.storage.storage_class_name:
        storage["storageClassName"] = spec.storage.storage_class_name
    return {
        "postgres": postgres,
        "storage": storage,
        "capacity": {"min": spec.capacity.min, "max": spec.capacity.max},
        "scaling": {
            "targetCPU": spec.scaling.target_cpu,
            "targetMemory": spec.scaling.target_memory,
            "scaleDownDelay": units.format_duration(spec.scaling.scale_down_delay),
            "allowRestart": spec.scaling.allow_restart,
            "schedules": [
                {"cron": s.cron, "duration": units.format_duration(s.duration), "min": s.min}
                for s in spec.scaling.schedules
            ],
        },
        "autoPause": {
            "enabled": spec.auto_pause.enabled,
            "idleAfter": AUTO
            if spec.auto_pause.idle_after_auto
            else units.format_duration(spec.auto_pause.idle_after),
            "ignoredApplications": list(spec.auto_pause.ignored_applications),
        },
        "autoPark": {
            "enabled": spec.auto_park.enabled,
            "idleAfter": units.format_duration(spec.auto_park.idle_after),
        },
        "state": spec.state.value,
        "superuserAccess": spec.superuser_access,
        "access": _encode_access(spec.access),
        "tls": {"required": spec.tls.required},
        "pooling": {
            "enabled": spec.pooling.enabled,
            "mode": spec.pooling.mode.value,
            "maxClientConnections": spec.pooling.max_client_connections,
        },
        **({"roles": [_encode_role(r) for r in spec.roles]} if spec.roles else {}),
        **({"databases": [_encode_database(x) for x in spec.databases]} if spec.databases else {}),
    }


def decode_metadata(raw: Mapping[str, Any]) -> types.ObjectMeta:
    return types.ObjectMeta(
        name=str(raw["name"]),
        namespace=str(raw.get("namespace") or "default"),
        uid=str(raw.get("uid") or ""),
        generation=int(raw.get("generation") or 1),
        resource_version=str(raw.get("resourceVersion") or ""),
        creation_timestamp=_time(raw.get("creationTimestamp")),
        deletion_timestamp=_time(raw.get("deletionTimestamp")),
        labels=dict(raw.get("labels") or {}),
        annotations=dict(raw.get("annotations") or {}),
        finalizers=tuple(raw.get("finalizers") or ()),
    )


def encode_metadata(meta: types.ObjectMeta) -> dict[str, Any]:
    out: dict[str, Any] = {"name": meta.name, "namespace": meta.namespace}
    optional: dict[str, Any] = {
        "uid": meta.uid,
        "generation": meta.generation,
        "resourceVersion": meta.resource_version,
        "creationTimestamp": _time_text(meta.creation_timestamp),
        "deletionTimestamp": _time_text(meta.deletion_timestamp),
        "labels": dict(meta.labels),
        "annotations": dict(meta.annotations),
        "finalizers": list(meta.finalizers),
    }
    out.update({k: v for k, v in optional.items() if v})
    return out


def _decode_span(raw: Any) -> types.UsageSpan | None:
    start = _time(raw.get("start")) if isinstance(raw, Mapping) else None
    if start is None:
        return None
    seconds = raw.get("phaseSeconds") or {}
    return types.UsageSpan(
        start=start,
        compute_unit_hours=_number(raw.get("computeUnitHours")) or 0.0,
        # a phase from another version of the operator is not ours to count
        phase_seconds={
            p: float(seconds[p.value]) for p in types.Phase if _number(seconds.get(p.value)) is not None
        },
        unmetered_compute_unit_hours=_number(raw.get("unmeteredComputeUnitHours")) or 0.0,
    )


def _decode_usage(raw: Any) -> types.UsageStatus | None:
    if not isinstance(raw, Mapping):
        return None
    until = _time(raw.get("accountedUntil"))
    period, total = _decode_span(raw.get("period")), _decode_span(raw.get("total"))
    if until is None or period is None or total is None:
        return None
    return types.UsageStatus(
        accounted_until=until,
        period=period,
        total=total,
        previous_period=_decode_span(raw.get("previousPeriod")),
    )


def _encode_span(span: types.UsageSpan) -> dict[str, Any]:
    return {
        "start": _time_text(span.start),
        "computeUnitHours": span.compute_unit_hours,
        "phaseSeconds": {p.value: span.phase_seconds[p] for p in types.Phase if p in span.phase_seconds},
        "unmeteredComputeUnitHours": span.unmetered_compute_unit_hours,
    }


def _encode_usage(usage: types.UsageStatus) -> dict[str, Any]:
    out = {
        "accountedUntil": _time_text(usage.accounted_until),
        "period": _encode_span(usage.period),
        "total": _encode_span(usage.total),
    }
    if usage.previous_period is not None:
        out["previousPeriod"] = _encode_span(usage.previous_period)
    return out


def decode_status(raw: Mapping[str, Any] | None) -> types.DatabaseStatus:
    """Status is written by the operator; anything unreadable falls back to the default."""
    raw = raw or {}
    capacity = raw.get("capacity") or {}
    compute = raw.get("compute") or {}
    pause = raw.get("autoPause") or {}
    conditions = []
    for c in raw.get("conditions") or []:
        try:
            kind = types.ConditionType(c["type"])
        except (KeyError, ValueError):
            continue  # a condition from a newer or older operator; not ours to interpret
        conditions.append(
            types.Condition(
                type=kind,
                status=types.ConditionStatus(c.get("status", "Unknown")),
                reason=str(c.get("reason", "")),
                message=str(c.get("message", "")),
                last_transition_time=_time(c.get("lastTransitionTime"))
                or units.parse_time("1970-01-01T00:00:00Z"),
                observed_generation=int(c.get("observedGeneration") or 0),
            )
        )
    return types.DatabaseStatus(
        phase=types.Phase(raw.get("phase", types.Phase.PENDING.value)),
        phase_since=_time(raw.get("phaseTransitionTime")),
        capacity=types.CapacityStatus(
            current=capacity.get("current"),
            desired=capacity.get("desired"),
            peaks=_decode_peaks(capacity.get("peaks")),
            last_scale_time=_time(capacity.get("lastScaleTime")),
            learned=_decode_learned(capacity.get("learned") or {}),
        ),
        compute=types.ComputeStatus(
            incarnation=str(compute.get("incarnation") or ""),
            settings=_number(compute.get("settings")),
            limit=_number(compute.get("limit")),
            limit_message=str(compute.get("limitMessage") or ""),
            access=str(compute.get("access") or ""),
            access_time=_time(compute.get("accessTime")),
        ),
        connections=int(raw.get("connections") or 0),
        last_activity_time=_time(raw.get("lastActivityTime")),
        endpoint=str(raw.get("endpoint") or ""),
        pooled_endpoint=str(raw.get("pooledEndpoint") or ""),
        conditions=tuple(conditions),
        observed_generation=int(raw.get("observedGeneration") or 0),
        wake_request=str(raw.get("wakeRequest") or ""),
        activator_port=raw.get("activatorPort") if isinstance(raw.get("activatorPort"), int) else None,
        http_endpoint=str(raw.get("httpEndpoint") or ""),
        failures=int(raw.get("failures") or 0),
        usage=_decode_usage(raw.get("usage")),
        auto_pause=types.AutoPauseStatus(
            gaps=tuple(int(g) for g in pause.get("gaps") or ()),
            idle_after=units.parse_duration(pause["idleAfter"]) if pause.get("idleAfter") else None,
        ),
        roles=_decode_objects(raw.get("roles")),
        databases=_decode_objects(raw.get("databases")),
    )


def _decode_learned(raw: Mapping[str, Any]) -> types.Learned:
    def samples(key: str) -> tuple[types.LoadSample, ...]:
        return tuple(
            types.LoadSample(t, float(s["cores"]))
            for s in raw.get(key) or ()
            if (t := _time(s.get("time"))) is not None
        )

    return types.Learned(
        load=samples("load"),
        shortfalls=tuple(t for s in raw.get("shortfalls") or () if (t := _time(s)) is not None),
        cache_peaks=_decode_peaks(raw.get("cachePeaks")),
        surges=samples("surges"),
        grown_at=_time(raw.get("grownAt")),
    )


def _decode_peaks(raw: Any) -> tuple[types.Peak, ...]:
    return tuple(types.Peak(capacity=float(p["capacity"]), until=_time(p.get("until"))) for p in raw or [])


def _encode_peaks(peaks: tuple[types.Peak, ...]) -> list[dict[str, Any]]:
    return [{"capacity": p.capacity, **({"until": _time_text(p.until)} if p.until else {})} for p in peaks]


def _encode_samples(samples: tuple[types.LoadSample, ...]) -> list[dict[str, Any]]:
    return [{"time": _time_text(s.time), "cores": s.cores} for s in samples]


def _encode_learned(learned: types.Learned) -> dict[str, Any]:
    out: dict[str, Any] = {
        "load": _encode_samples(learned.load),
        "shortfalls": [_time_text(t) for t in learned.shortfalls],
        "cachePeaks": _encode_peaks(learned.cache_peaks),
        "surges": _encode_samples(learned.surges),
    }
    if learned.grown_at is not None:
        out["grownAt"] = _time_text(learned.grown_at)
    return {key: value for key, value in out.items() if value}


def encode_status(status: types.DatabaseStatus) -> dict[str, Any]:
    capacity: dict[str, Any] = {
        "current": status.capacity.current,
        "desired": status.capacity.desired,
        "peaks": _encode_peaks(status.capacity.peaks),
    }
    if learned := _encode_learned(status.capacity.learned):
        capacity["learned"] = learned
    if status.capacity.last_scale_time:
        capacity["lastScaleTime"] = _time_text(status.capacity.last_scale_time)
    out: dict[str, Any] = {
        "phase": status.phase.value,
        "capacity": capacity,
        "connections": status.connections,
        "endpoint": status.endpoint,
        **({"pooledEndpoint": status.pooled_endpoint} if status.pooled_endpoint else {}),
        "conditions": [
            {
                "type": c.type.value,
                "status": c.status.value,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": _time_text(c.last_transition_time),
                "observedGeneration": c.observed_generation,
            }
            for c in status.conditions
        ],
        "observedGeneration": status.observed_generation,
        "failures": status.failures,
    }
    compute = {
        "incarnation": status.compute.incarnation,
        "settings": status.compute.settings,
        "limit": status.compute.limit,
        "limitMessage": status.compute.limit_message,
        "access": status.compute.access,
        "accessTime": _time_text(status.compute.access_time),
    }
    if any(compute.values()):
        out["compute"] = {k: v for k, v in compute.items() if v}
    if status.phase_since:
        out["phaseTransitionTime"] = _time_text(status.phase_since)
    if status.last_activity_time:
        out["lastActivityTime"] = _time_text(status.last_activity_time)
    if status.wake_request:
        out["wakeRequest"] = status.wake_request
    if status.activator_port is not None:
        out["activatorPort"] = status.activator_port
    if status.http_endpoint:
        out["httpEndpoint"] = status.http_endpoint
    if status.usage is not None:
        out["usage"] = _encode_usage(status.usage)
    if status.auto_pause.gaps or status.auto_pause.idle_after is not None:
        out["autoPause"] = {"gaps": list(status.auto_pause.gaps)}
        if status.auto_pause.idle_after is not None:
            out["autoPause"]["idleAfter"] = units.format_duration(status.auto_pause.idle_after)
    if status.roles:
        out["roles"] = _encode_objects(status.roles)
    if status.databases:
        out["databases"] = _encode_objects(status.databases)
    return out


def decode(raw: Mapping[str, Any]) -> types.ServerlessDatabase:
    """A validated object to its typed form; raises InvalidSpecError naming every problem."""
    errors = validate({k: v for k, v in raw.items() if k != "status"})
    if errors:
        raise InvalidSpecError(errors)
    metadata = decode_metadata(raw["metadata"])
    return types.ServerlessDatabase(
        metadata=metadata,
        spec=decode_spec(raw.get("spec")),
        status=decode_status(raw.get("status")),
        wake_request=metadata.annotations.get(types.WAKE_ANNOTATION, ""),
    )


def encode(db: types.ServerlessDatabase, *, with_status: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": types.API_VERSION,
        "kind": types.KIND,
        "metadata": encode_metadata(db.metadata),
        "spec": encode_spec(db.spec),
    }
    if with_status:
        out["status"] = encode_status(db.status)
    return out
