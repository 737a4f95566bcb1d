"""Check a ServerlessDatabase as a user wrote it, and name every problem by its field path.

The CRD's schema and CEL rules refuse the same objects at `kubectl apply`; this is the second line,
for the local runtime (which has no API server) and for anything that slipped past an old CRD.
A test keeps the two in agreement.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from croniter import croniter

from controller.api import parameters as allowed
from controller.api import types, units

NAME_MAX_LENGTH = 50
"""Room for the suffixes of the objects the operator names after a database (e.g. `-headless`)."""
CAPACITY_MAX = 64.0
# Matched whole (fullmatch): `$` would let a trailing newline through.
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_GUC_NAME = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?")
_VERSION = re.compile(r"[0-9]{2}")
ANNOTATIONS_MAX_BYTES = 256 * 1024
"""The API server's limit on all of an object's annotations together."""

MANAGED_PARAMETERS = frozenset(
    {
        "shared_buffers",
        "max_connections",
        "max_worker_processes",
        "work_mem",
        "maintenance_work_mem",
        "effective_cache_size",
        "max_parallel_workers",
        "max_parallel_workers_per_gather",
        "max_parallel_maintenance_workers",
    }
)
"""Settings the operator derives from capacity: refused with a message that says so."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidSpecError(ValueError):
    """A ServerlessDatabase that cannot be accepted; `errors` names every problem."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


_FIELDS: dict[str, frozenset[str]] = {
    "": frozenset({"apiVersion", "kind", "metadata", "spec", "status"}),
    "spec": frozenset(
        {
            "postgres",
            "storage",
            "capacity",
            "scaling",
            "autoPause",
            "autoPark",
            "state",
            "superuserAccess",
            "access",
            "tls",
            "pooling",
            "roles",
            "databases",
        }
    ),
    "spec.roles[]": frozenset(
        {
            "name",
            "ensure",
            "login",
            "createdb",
            "inherit",
            "connectionLimit",
            "inRoles",
            "validUntil",
            "passwordSecret",
            "superuser",
            "replication",
        }
    ),
    "spec.roles[].passwordSecret": frozenset({"name"}),
    "spec.databases[]": frozenset({"name", "owner", "extensions", "ensure", "dropWithData"}),
    "spec.tls": frozenset({"required"}),
    "spec.pooling": frozenset({"enabled", "mode", "maxClientConnections"}),
    "spec.access": frozenset({"allowedNamespaces", "identities"}),
    "spec.access.identities[]": frozenset({"role", "serviceAccount", "issuer", "subject", "audience"}),
    "spec.access.identities[].serviceAccount": frozenset({"namespace", "name"}),
    "spec.postgres": frozenset({"version", "image", "parameters"}),
    "spec.storage": frozenset({"size", "storageClassName", "retainOnDelete"}),
    "spec.capacity": frozenset({"min", "max"}),
    "spec.scaling": frozenset({"targetCPU", "targetMemory", "scaleDownDelay", "allowRestart", "schedules"}),
    "spec.scaling.schedules[]": frozenset({"cron", "duration", "min"}),
    "spec.autoPause": frozenset({"enabled", "idleAfter", "ignoredApplications"}),
    "spec.autoPark": frozenset({"enabled", "idleAfter"}),
}


class _Checker:
    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    def mapping(self, value: Any, path: str, schema_key: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, f"must be an object (got {_show(value)})")
            return {}
        for key in value:
            if key not in _FIELDS[schema_key]:
                self.fail(f"{path}.{key}" if path else key, "unknown field")
        return value

    def number(self, value: Any, path: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.fail(path, f"must be a number (got {_show(value)})")
            return None
        return float(value)

    def string_map(self, value: Any, path: str) -> Mapping[str, str]:
        """A map of strings to strings (labels, annotations); {} when absent or refused."""
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            self.fail(path, "must be a map of strings to strings")
            return {}
        return value

    def boolean(self, value: Any, path: str) -> None:
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false (got {_show(value)})")

    def string(self, value: Any, path: str) -> str | None:
        if not isinstance(value, str):
            self.fail(path, f"must be a string (got {_show(value)})")
            return None
        return value

    def parsed(self, value: Any, path: str, parse: Callable[[str], _T]) -> _T | None:
        text = self.string(value, path)
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as error:
            self.fail(path, str(error))
            return None


AUTO = "Auto"
"""`autoPause.idleAfter: Auto`: the wait is chosen from the database's own idle gaps."""


def _duration_or_auto(text: str) -> timedelta:
    try:
        return units.parse_duration(text)
    except ValueError:
        raise ValueError(f"must be Auto or a duration such as 90s, 5m or 168h (got {text!r})") from None


def _show(value: Any) -> str:
    return (
        repr(value)
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def validate(obj: Any) -> list[FieldError]:
    """Every problem with a ServerlessDatabase object (as a parsed YAML/JSON mapping); empty when valid."""
    check = _Checker()
    if not isinstance(obj, Mapping):
        return [FieldError("(object)", f"must be a mapping (got {_show(obj)})")]
    check.mapping(obj, "", "")
    if obj.get("apiVersion") != types.API_VERSION:
        check.fail("apiVersion", f"must be {types.API_VERSION} (got {_show(obj.get('apiVersion'))})")
    if obj.get("kind") != types.KIND:
        check.fail("kind", f"must be {types.KIND} (got {_show(obj.get('kind'))})")
    _validate_metadata(check, obj.get("metadata"))
    spec = check.mapping(obj.get("spec"), "spec", "spec")
    _validate_postgres(check, check.mapping(spec.get("postgres"), "spec.postgres", "spec.postgres"))
    _validate_storage(check, check.mapping(spec.get("storage"), "spec.storage", "spec.storage"))
    capacity = _validate_capacity(
        check, check.mapping(spec.get("capacity"), "spec.capacity", "spec.capacity")
    )
    _validate_scaling(check, check.mapping(spec.get("scaling"), "spec.scaling", "spec.scaling"), capacity)
    for section in ("autoPause", "autoPark"):
        block = check.mapping(spec.get(section), f"spec.{section}", f"spec.{section}")
        _validate_idle(check, block, f"spec.{section}", auto=section == "autoPause")
    if "superuserAccess" in spec:
        check.boolean(spec["superuserAccess"], "spec.superuserAccess")
    _validate_access(check, check.mapping(spec.get("access"), "spec.access", "spec.access"))
    _validate_declared(check, spec.get("roles"), spec.get("databases"))
    tls = check.mapping(spec.get("tls"), "spec.tls", "spec.tls")
    if "required" in tls:
        check.boolean(tls["required"], "spec.tls.required")
    _validate_pooling(check, check.mapping(spec.get("pooling"), "spec.pooling", "spec.pooling"))
    if "state" in spec and spec["state"] not in {s.value for s in types.State}:
        allowed = ", ".join(s.value for s in types.State)
        check.fail("spec.state", f"must be one of {allowed} (got {_show(spec['state'])})")
    return check.errors


def _validate_metadata(check: _Checker, metadata: Any) -> None:
    """The metadata fields a user writes, within the API server's own limits (nothing else is read)."""
    if not isinstance(metadata, Mapping):
        check.fail("metadata", "must be an object with a name")
        return
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        check.fail("metadata.name", "is required")
    elif len(name) > NAME_MAX_LENGTH or not _NAME.fullmatch(name):
        check.fail(
            "metadata.name",
            f"must be at most {NAME_MAX_LENGTH} lower-case letters, digits and '-', "
            f"starting with a letter and ending with a letter or digit (got {_show(name[:80])})",
        )
    namespace = metadata.get("namespace", "default")
    if not isinstance(namespace, str) or len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        check.fail("metadata.namespace", f"must be a DNS label (got {_show(_short(namespace))})")
    labels = check.string_map(metadata.get("labels"), "metadata.labels")
    for key, value in labels.items():
        _validate_qualified_name(check, key, f"metadata.labels.{_short(key)}")
        if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            check.fail(
                f"metadata.labels.{_short(key)}",
                "must be at most 63 letters, digits, '-', '_' or '.', beginning and ending with a "
                f"letter or digit (got {_show(_short(value))})",
            )
    annotations = check.string_map(metadata.get("annotations"), "metadata.annotations")
    for key in annotations:
        _validate_qualified_name(check, key, f"metadata.annotations.{_short(key)}")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > ANNOTATIONS_MAX_BYTES:
        check.fail("metadata.annotations", f"must total at most 256 KiB (got {size} bytes)")
    for field in ("generation",):
        if field in metadata and (isinstance(metadata[field], bool) or not isinstance(metadata[field], int)):
            check.fail(f"metadata.{field}", f"must be an integer (got {_show(_short(metadata[field]))})")
    for field in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"):
        if field in metadata and metadata[field] is not None and not isinstance(metadata[field], str):
            check.fail(f"metadata.{field}", f"must be a string (got {_show(_short(metadata[field]))})")
    finalizers = metadata.get("finalizers")
    if finalizers is not None and (
        not isinstance(finalizers, list) or not all(isinstance(f, str) and len(f) <= 253 for f in finalizers)
    ):
        check.fail("metadata.finalizers", "must be a list of names")


def _validate_qualified_name(check: _Checker, key: str, path: str) -> None:
    """A label or annotation key: an optional DNS-subdomain prefix and '/', then a name of 63 at most."""
    prefix, _, name = key.rpartition("/")
    if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix))) or (
        len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name)
    ):
        check.fail(
            path,
            "is not a valid key: an optional DNS prefix and '/', then at most 63 letters, digits, "
            "'-', '_' or '.'",
        )


def _short(value: Any) -> Any:
    """A value cut to a length fit for a message: a refusal must not echo megabytes back."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _validate_postgres(check: _Checker, postgres: Mapping[str, Any]) -> None:
    version = postgres.get("version", "")
    if check.string(version, "spec.postgres.version") and not _VERSION.fullmatch(version):
        check.fail("spec.postgres.version", f'must be a major version such as "16" (got {version!r})')
    if "image" in postgres:
        check.string(postgres["image"], "spec.postgres.image")
    parameters = postgres.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        check.fail("spec.postgres.parameters", f"must be a map of setting to value (got {_show(parameters)})")
        return
    if len(parameters) > allowed.MAX_PARAMETERS:
        check.fail("spec.postgres.parameters", f"may set at most {allowed.MAX_PARAMETERS} settings")
    for name, value in parameters.items():
        path = f"spec.postgres.parameters.{_short(name)}"
        if not isinstance(name, str) or not _GUC_NAME.fullmatch(name):
            check.fail(path, "is not a valid Postgres setting name")
        elif name in MANAGED_PARAMETERS:
            check.fail(path, "is managed by the operator (it follows capacity) and cannot be set")
        elif name not in allowed.ALLOWED:
            check.fail(
                path, "is not a setting a spec may set (see the parameter allowlist in docs/security.md)"
            )
        if not isinstance(value, str) or "\n" in value or "\r" in value or "\0" in value:
            check.fail(path, f"must be a single-line string (got {_show(_short(value))})")
        elif len(value) > allowed.MAX_VALUE_LENGTH:
            check.fail(path, f"must be at most {allowed.MAX_VALUE_LENGTH} characters")
        elif name == "shared_preload_libraries" and (problem := allowed.preload_problem(value)):
            check.fail(path, problem)


def _validate_access(check: _Checker, access: Mapping[str, Any]) -> None:
    _validate_identities(check, access.get("identities"))
    namespaces = access.get("allowedNamespaces")
    if namespaces is None:
        return
    if not isinstance(namespaces, list) or len(namespaces) > 64:
        check.fail("spec.access.allowedNamespaces", "must be a list of at most 64 namespaces")
        return
    for index, namespace in enumerate(namespaces):
        if not isinstance(namespace, str) or len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
            check.fail(
                f"spec.access.allowedNamespaces[{index}]",
                f"must be a namespace name (got {_show(_short(namespace))})",
            )


MAX_IDENTITIES = 64
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
RESERVED_ROLES = frozenset({"postgres", "superuser"})
"""The operator's own role and the clients' superuser: no token may become either."""


def _validate_identities(check: _Checker, identities: Any) -> None:
    where = "spec.access.identities"
    if identities is None:
        return
    if not isinstance(identities, list) or len(identities) > MAX_IDENTITIES:
        check.fail(where, f"must be a list of at most {MAX_IDENTITIES} identities")
        return
    for index, raw in enumerate(identities):
        path = f"{where}[{index}]"
        entry = check.mapping(raw, path, "spec.access.identities[]")
        role = entry.get("role")
        if not isinstance(role, str) or not _ROLE_NAME.fullmatch(role) or role.startswith("pg_"):
            check.fail(
                f"{path}.role", f"must be a role name: lower case, digits, _ (got {_show(_short(role))})"
            )
        elif role in RESERVED_ROLES:
            check.fail(f"{path}.role", f"{role} is the operator's; no identity may log in as it")
        for name in ("issuer", "subject", "audience"):
            if name in entry and (
                not isinstance(entry[name], str) or not entry[name] or len(entry[name]) > 512
            ):
                check.fail(f"{path}.{name}", "must be a non-empty string of at most 512 characters")
        account = entry.get("serviceAccount")
        if account is not None:
            if "issuer" in entry or "subject" in entry:
                check.fail(path, "has either serviceAccount or issuer and subject, not both")
            ref = check.mapping(account, f"{path}.serviceAccount", "spec.access.identities[].serviceAccount")
            for name, pattern in (("namespace", _DNS_LABEL), ("name", _DNS_SUBDOMAIN)):
                value = ref.get(name)
                if not isinstance(value, str) or len(value) > 253 or not pattern.fullmatch(value):
                    check.fail(
                        f"{path}.serviceAccount.{name}",
                        f"must be a Kubernetes name (got {_show(_short(value))})",
                    )
        elif "issuer" not in entry or "subject" not in entry:
            check.fail(path, "needs serviceAccount, or both issuer and subject")


def _validate_pooling(check: _Checker, pooling: Mapping[str, Any]) -> None:
    if "enabled" in pooling:
        check.boolean(pooling["enabled"], "spec.pooling.enabled")
    if "mode" in pooling and pooling["mode"] not in {m.value for m in types.PoolMode}:
        modes = " or ".join(m.value for m in types.PoolMode)
        check.fail("spec.pooling.mode", f"must be {modes} (got {_show(_short(pooling['mode']))})")
    if "maxClientConnections" in pooling:
        count = pooling["maxClientConnections"]
        if isinstance(count, bool) or not isinstance(count, int):
            check.fail(
                "spec.pooling.maxClientConnections", f"must be an integer (got {_show(_short(count))})"
            )
        elif not 1 <= count <= types.MAX_CLIENT_CONNECTIONS_LIMIT:
            check.fail(
                "spec.pooling.maxClientConnections",
                f"must be between 1 and {types.MAX_CLIENT_CONNECTIONS_LIMIT} (got {count})",
            )


MAX_DECLARED = 64
"""Roles (and databases) a spec may declare: each has an entry in status, which must stay bounded."""
RESERVED_ROLES = frozenset({"postgres", "app", "superuser", "public"})
"""The operator's own roles (and PUBLIC): a spec cannot declare them."""
RESERVED_PREFIXES = ("pg_", "sdb_")
"""Postgres's predefined roles, and the operator's own groups (sdb_plaintext: who may skip TLS)."""
RESERVED_DATABASES = frozenset({"postgres", "template0", "template1"})
GRANTABLE_PREDEFINED = (
    "pg_checkpoint",
    "pg_monitor",
    "pg_read_all_data",
    "pg_read_all_settings",
    "pg_read_all_stats",
    "pg_signal_backend",
    "pg_stat_scan_tables",
    "pg_write_all_data",
)
"""Predefined roles a declared role may be a member of. The others read or write the server's files or
run programs as its account (pg_read_server_files, pg_write_server_files, pg_execute_server_program):
out of a tenant's reach, as a superuser is."""
_SQL_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_EXTENSION = re.compile(r"[a-z0-9_][-a-z0-9_]{0,62}")


def _validate_declared(check: _Checker, roles: Any, databases: Any) -> None:
    declared: set[str] = set()
    for index, role in enumerate(_entries(check, roles, "spec.roles")):
        path = f"spec.roles[{index}]"
        name = _validate_sql_name(check, role.get("name"), f"{path}.name", declared)
        if name in RESERVED_ROLES or (name or "").startswith(RESERVED_PREFIXES):
            check.fail(
                f"{path}.name", f"is reserved (the operator's roles, PUBLIC, pg_* and sdb_*): {name!r}"
            )
        for attribute in ("superuser", "replication"):
            if role.get(attribute, False) is not False:
                check.fail(f"{path}.{attribute}", "is refused: the operator makes no such role")
        for attribute in ("login", "createdb", "inherit"):
            if attribute in role:
                check.boolean(role[attribute], f"{path}.{attribute}")
        _validate_ensure(check, role, path)
        limit = role.get("connectionLimit", -1)
        if isinstance(limit, bool) or not isinstance(limit, int) or not -1 <= limit <= 10_000:
            check.fail(f"{path}.connectionLimit", f"must be an integer from -1 to 10000 (got {_show(limit)})")
        if "validUntil" in role:
            check.parsed(role["validUntil"], f"{path}.validUntil", units.parse_time)
        secret = check.mapping(
            role.get("passwordSecret"), f"{path}.passwordSecret", "spec.roles[].passwordSecret"
        )
        if "passwordSecret" in role:
            secret_name = check.string(secret.get("name"), f"{path}.passwordSecret.name")
            if secret_name is not None and (
                len(secret_name) > 253 or not _DNS_SUBDOMAIN.fullmatch(secret_name)
            ):
                check.fail(
                    f"{path}.passwordSecret.name", f"must name a Secret (got {_show(_short(secret_name))})"
                )
        in_roles = role.get("inRoles") or []
        if not isinstance(in_roles, list) or len(in_roles) > MAX_DECLARED:
            check.fail(f"{path}.inRoles", f"must be a list of at most {MAX_DECLARED} role names")
            continue
        for at, member_of in enumerate(in_roles):
            if not isinstance(member_of, str) or not _SQL_NAME.fullmatch(member_of):
                check.fail(f"{path}.inRoles[{at}]", f"must be a role name (got {_show(_short(member_of))})")
            elif (
                member_of in ("postgres", "superuser", "public")
                or member_of.startswith("sdb_")
                or (member_of.startswith("pg_") and member_of not in GRANTABLE_PREDEFINED)
            ):
                check.fail(
                    f"{path}.inRoles[{at}]",
                    f"may not be {member_of!r}: only declared roles, app, and "
                    + ", ".join(GRANTABLE_PREDEFINED),
                )
    present_roles = {
        r.get("name")
        for r in (roles if isinstance(roles, list) else [])
        if isinstance(r, Mapping) and r.get("ensure", "present") == "present"
    } | {"app"}
    names: set[str] = set()
    for index, database in enumerate(_entries(check, databases, "spec.databases")):
        path = f"spec.databases[{index}]"
        name = _validate_sql_name(check, database.get("name"), f"{path}.name", names)
        if name in RESERVED_DATABASES:
            check.fail(f"{path}.name", f"is reserved: {name!r}")
        owner = check.string(database.get("owner"), f"{path}.owner")
        if owner is not None and owner not in present_roles:
            check.fail(
                f"{path}.owner",
                f"must be app or a role in spec.roles that is present (got {_show(_short(owner))})",
            )
        elif name == "app" and owner != "app":
            check.fail(f"{path}.owner", "of the application database is app")
        ensure = _validate_ensure(check, database, path)
        if name == "app" and ensure == "absent":
            check.fail(f"{path}.ensure", "the application database cannot be dropped")
        if "dropWithData" in database:
            check.boolean(database["dropWithData"], f"{path}.dropWithData")
        extensions = database.get("extensions") or []
        if not isinstance(extensions, list) or len(extensions) > MAX_DECLARED:
            check.fail(f"{path}.extensions", f"must be a list of at most {MAX_DECLARED} extension names")
            continue
        for at, extension in enumerate(extensions):
            if not isinstance(extension, str) or not _EXTENSION.fullmatch(extension):
                check.fail(
                    f"{path}.extensions[{at}]", f"must be an extension name (got {_show(_short(extension))})"
                )


def _entries(check: _Checker, value: Any, path: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_DECLARED:
        check.fail(path, f"must be a list of at most {MAX_DECLARED} entries")
        return []
    return [check.mapping(entry, f"{path}[{i}]", f"{path}[]") for i, entry in enumerate(value)]


def _validate_sql_name(check: _Checker, value: Any, path: str, seen: set[str]) -> str | None:
    name = check.string(value, path)
    if name is None:
        return None
    if not _SQL_NAME.fullmatch(name):
        check.fail(
            path,
            "must be at most 63 lower-case letters, digits and '_', starting with a letter or '_' "
            f"(got {_show(_short(name))})",
        )
        return None
    if name in seen:
        check.fail(path, f"is declared twice: {name!r}")
    seen.add(name)
    return name


def _validate_ensure(check: _Checker, entry: Mapping[str, Any], path: str) -> str:
    ensure = entry.get("ensure", types.Ensure.PRESENT.value)
    if ensure not in {e.value for e in types.Ensure}:
        check.fail(f"{path}.ensure", f"must be present or absent (got {_show(_short(ensure))})")
    return str(ensure)


def _validate_storage(check: _Checker, storage: Mapping[str, Any]) -> None:
    if "size" in storage:
        check.parsed(storage["size"], "spec.storage.size", units.parse_bytes)
    if "storageClassName" in storage:
        check.string(storage["storageClassName"], "spec.storage.storageClassName")
    if "retainOnDelete" in storage:
        check.boolean(storage["retainOnDelete"], "spec.storage.retainOnDelete")


def _validate_cu(check: _Checker, value: Any, path: str) -> float | None:
    number = check.number(value, path)
    if number is None:
        return None
    if not units.CU_STEP <= number <= CAPACITY_MAX:
        check.fail(
            path, f"must be between {units.CU_STEP} and {CAPACITY_MAX:g} compute units (got {number:g})"
        )
        return None
    if not units.is_cu_step(number):
        check.fail(path, f"must be a multiple of {units.CU_STEP} compute units (got {number:g})")
        return None
    return number


def _validate_capacity(check: _Checker, capacity: Mapping[str, Any]) -> tuple[float, float]:
    defaults = types.CapacitySpec()
    low = _validate_cu(check, capacity.get("min", defaults.min), "spec.capacity.min")
    high = _validate_cu(check, capacity.get("max", defaults.max), "spec.capacity.max")
    if low is not None and high is not None and low > high:
        check.fail("spec.capacity.min", f"must be <= spec.capacity.max (got {low:g} > {high:g})")
    return (low or defaults.min, high or defaults.max)


def _validate_scaling(check: _Checker, scaling: Mapping[str, Any], capacity: tuple[float, float]) -> None:
    for key in ("targetCPU", "targetMemory"):
        if key in scaling:
            target = check.number(scaling[key], f"spec.scaling.{key}")
            if target is not None and not 0.1 <= target <= 1.0:
                check.fail(f"spec.scaling.{key}", f"must be between 0.1 and 1.0 (got {target:g})")
    if "scaleDownDelay" in scaling:
        check.parsed(scaling["scaleDownDelay"], "spec.scaling.scaleDownDelay", units.parse_duration)
    if "allowRestart" in scaling:
        check.boolean(scaling["allowRestart"], "spec.scaling.allowRestart")
    schedules = scaling.get("schedules") or []
    if not isinstance(schedules, list):
        check.fail("spec.scaling.schedules", f"must be a list (got {_show(schedules)})")
        return
    for index, raw in enumerate(schedules):
        path = f"spec.scaling.schedules[{index}]"
        schedule = check.mapping(raw, path, "spec.scaling.schedules[]")
        cron = check.string(schedule.get("cron"), f"{path}.cron")
        if cron is not None and (len(cron.split()) != 5 or not croniter.is_valid(cron)):
            check.fail(
                f"{path}.cron", f"must be a five-field cron expression such as '0 8 * * 1-5' (got {cron!r})"
            )
        duration = check.parsed(schedule.get("duration"), f"{path}.duration", units.parse_duration)
        if duration is not None and duration.total_seconds() <= 0:
            check.fail(f"{path}.duration", "must be longer than zero")
        floor = _validate_cu(check, schedule.get("min"), f"{path}.min")
        if floor is not None and not capacity[0] <= floor <= capacity[1]:
            check.fail(
                f"{path}.min",
                f"must be within spec.capacity [{capacity[0]:g}, {capacity[1]:g}] (got {floor:g})",
            )


def _validate_idle(check: _Checker, block: Mapping[str, Any], path: str, *, auto: bool = False) -> None:
    if "enabled" in block:
        check.boolean(block["enabled"], f"{path}.enabled")
    if "idleAfter" in block and not (auto and block["idleAfter"] == AUTO):
        parse = _duration_or_auto if auto else units.parse_duration
        idle = check.parsed(block["idleAfter"], f"{path}.idleAfter", parse)
        if idle is not None and idle.total_seconds() < 1:
            check.fail(f"{path}.idleAfter", f"must be at least 1s (got {block['idleAfter']!r})")
    if "ignoredApplications" in block:
        apps = block["ignoredApplications"]
        if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
            check.fail(f"{path}.ignoredApplications", f"must be a list of strings (got {_show(apps)})")
