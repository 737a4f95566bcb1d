"""The ServerlessDatabase API as Python types: spec, status, conditions, and the constants they use.

Values here are frozen; a change is a new value (`dataclasses.replace`). Parsing from and writing to
the Kubernetes object form lives in `controller.api.codec`; checking a spec lives in
`controller.api.validation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

GROUP = "dbscale.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ServerlessDatabase"
PLURAL = "serverlessdatabases"
SHORT_NAME = "sdb"
FINALIZER = f"{GROUP}/storage"
"""Held while the operator has storage to keep or delete for a database being deleted."""
WAKE_ANNOTATION = f"{GROUP}/wake-request"
"""The local runtime's way to ask for a wake (`sdb resume`, the in-process activator); the reconciler
answers each new value once. In a cluster a wake is asked for with a WakeRequest object instead."""
WAKE_REQUEST_KIND = "WakeRequest"
WAKE_REQUEST_PLURAL = "wakerequests"
MONITOR_APPLICATION = "sdb-monitor"
"""The application_name of the operator's own sessions, which never count as activity."""


class State(StrEnum):
    """The lifecycle a user asks for in `spec.state`."""

    AUTO = "Auto"
    """The operator pauses and parks on idleness and wakes on connect."""
    ACTIVE = "Active"
    """Always running, never paused (wakes a paused or parked database)."""
    PAUSED = "Paused"
    """Stopped at zero compute, even with sessions open; connections get 57P03 until it changes."""
    PARKED = "Parked"
    """Compute objects released, storage kept; connections get 57P03 until it changes."""


class Phase(StrEnum):
    """Where a database is in its lifecycle, as the operator last observed it."""

    PENDING = "Pending"
    """Storage or the first start is being prepared."""
    ACTIVE = "Active"
    """Running and accepting queries on its endpoint."""
    PAUSING = "Pausing"
    """New connections are held by the activator while the compute stops."""
    PAUSED = "Paused"
    """Compute stopped; connections are held by the activator and wake it."""
    RESUMING = "Resuming"
    """Starting again after a pause or park."""
    PARKING = "Parking"
    """Compute objects are being released."""
    PARKED = "Parked"
    """Only storage and credentials remain; connections still wake it, more slowly."""
    FAILED = "Failed"
    """A step failed; the reason is in the Ready condition and the operator retries."""


class ConditionType(StrEnum):
    READY = "Ready"
    """Accepting queries on the endpoint."""
    SCALING = "Scaling"
    """A resize is in progress, or could not be made."""
    PAUSED = "Paused"
    """Compute is at zero."""
    PARKED = "Parked"
    """Compute objects are released."""
    DEGRADED = "Degraded"
    """Something works less well than asked (stale metrics, advisory limits, a failed wake)."""


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(StrEnum):
    """CamelCase reasons for conditions and events."""

    # lifecycle
    CREATING = "Creating"
    STARTING = "Starting"
    STARTED = "Started"
    RUNNING = "Running"
    IDLE = "Idle"
    PAUSING = "Pausing"
    PAUSED = "Paused"
    PAUSE_CANCELLED = "PauseCancelled"
    PARKING = "Parking"
    PARKED = "Parked"
    RESUMING = "Resuming"
    WAKE_REQUESTED = "WakeRequested"
    WAKE_REFUSED = "WakeRefused"
    WAKE_FAILED = "WakeFailed"
    START_FAILED = "StartFailed"
    STOP_FAILED = "StopFailed"
    MANUAL_OVERRIDE = "ManualOverride"
    NOT_PAUSED = "NotPaused"
    NOT_PARKED = "NotParked"
    OPERATOR_STOPPED = "OperatorStopped"
    DELETING = "Deleting"
    STORAGE_RETAINED = "StorageRetained"
    STORAGE_DELETED = "StorageDeleted"
    # scaling
    SCALED_UP = "ScaledUp"
    SCALED_DOWN = "ScaledDown"
    RESIZING = "Resizing"
    RESIZE_FAILED = "ResizeFailed"
    RESIZE_INFEASIBLE = "ResizeInfeasible"
    RESIZE_DEFERRED = "ResizeDeferred"
    RESIZE_NEEDS_RESTART = "ResizeNeedsRestart"
    STABLE = "Stable"
    # health
    HEALTHY = "Healthy"
    METRICS_STALE = "MetricsStale"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    LIMITS_ADVISORY = "LimitsAdvisory"
    INVALID_SPEC = "InvalidSpec"
    RESOURCE_CONFLICT = "ResourceConflict"
    """An object the database needs exists under its name and is not its own: it is never taken over."""
    SETTINGS_FAILED = "SettingsFailed"
    POOLER_FAILED = "PoolerFailed"
    """The pooled endpoint is asked for (spec.pooling) and does not serve."""
    DECLARED_NOT_APPLIED = "DeclaredNotApplied"
    """A declared role or database could not be made as declared (status.roles, status.databases)."""


@dataclass(frozen=True)
class PostgresSpec:
    version: str = ""
    """Major version; empty means the runtime's default (the newest installed locally)."""
    image: str = ""
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StorageSpec:
    size: str = "10Gi"
    storage_class_name: str = ""
    retain_on_delete: bool = True


@dataclass(frozen=True)
class CapacitySpec:
    min: float = 0.25
    max: float = 4.0


@dataclass(frozen=True)
class ScheduleSpec:
    cron: str
    duration: timedelta
    min: float


@dataclass(frozen=True)
class ScalingSpec:
    target_cpu: float = 0.95
    target_memory: float = 0.8
    scale_down_delay: timedelta = timedelta(seconds=10)
    allow_restart: bool = False
    schedules: tuple[ScheduleSpec, ...] = ()


@dataclass(frozen=True)
class AutoPauseSpec:
    enabled: bool = True
    idle_after: timedelta = timedelta(minutes=5)
    """The idle wait; with `idle_after_auto`, the wait until gaps are known, and what a wake is worth."""
    ignored_applications: tuple[str, ...] = ("postgres_exporter", "pgbouncer")
    idle_after_auto: bool = False
    """`idleAfter: Auto`: the wait is chosen from the database's own recent idle gaps (status.autoPause)."""


@dataclass(frozen=True)
class AutoParkSpec:
    enabled: bool = True
    idle_after: timedelta = timedelta(hours=168)


@dataclass(frozen=True)
class TlsSpec:
    required: bool = False
    """Refuse clients that do not use TLS (every endpoint serves it either way)."""


class PoolMode(StrEnum):
    """When a pooled client gives its server connection back (PgBouncer's pool_mode)."""

    TRANSACTION = "transaction"
    """After each transaction: many clients share few server connections; session state does not last."""
    SESSION = "session"
    """When the client disconnects: every session feature works, and each client holds a connection."""


MAX_CLIENT_CONNECTIONS_LIMIT = 100_000
"""The most pooled clients a spec may ask for (each costs the pooler a descriptor and a little memory)."""


@dataclass(frozen=True)
class PoolingSpec:
    enabled: bool = False
    """Run a pooler (PgBouncer) in front of the database: a port of its own on the local runtime, the
    Service `<name>-pooler` in a cluster."""
    mode: PoolMode = PoolMode.TRANSACTION
    max_client_connections: int = 10_000
    """Clients the pooler holds at once; each beyond it is refused."""


@dataclass(frozen=True)
class ServiceAccountRef:
    namespace: str
    name: str


@dataclass(frozen=True)
class IdentitySpec:
    """Who may log in as `role` with a token for a password: a ServiceAccount (checked by a
    TokenReview) or an OIDC issuer's subject (checked against the issuer's keys)."""

    role: str
    service_account: ServiceAccountRef | None = None
    issuer: str = ""
    subject: str = ""
    audience: str = ""
    """The audience the token must carry; empty: the database's own, `dbscale.io/NAMESPACE/NAME`."""


@dataclass(frozen=True)
class AccessSpec:
    allowed_namespaces: tuple[str, ...] = ()
    """Namespaces whose pods may connect (in a cluster); empty: the database's own namespace only."""
    identities: tuple[IdentitySpec, ...] = ()


class Ensure(StrEnum):
    PRESENT = "present"
    ABSENT = "absent"
    """Dropped by the operator; an entry merely removed from the spec is left alone."""


@dataclass(frozen=True)
class RoleSpec:
    """A role declared in `spec.roles`: made, kept as declared (drift is reverted), or dropped."""

    name: str
    ensure: Ensure = Ensure.PRESENT
    login: bool = False
    createdb: bool = False
    inherit: bool = True
    connection_limit: int = -1
    """-1: no limit (Postgres's own default)."""
    in_roles: tuple[str, ...] = ()
    """The roles it is a member of, exactly: declared roles, `app`, or predefined roles (pg_*)."""
    valid_until: datetime | None = None
    password_secret: str = ""
    """The Secret (kubernetes.io/basic-auth; locally `<state>/secrets/<namespace>/<name>/`) holding its
    password; empty: the role has no password (one that logs in by other means, or not at all)."""


@dataclass(frozen=True)
class DeclaredDatabase:
    """A database declared in `spec.databases`."""

    name: str
    owner: str
    extensions: tuple[str, ...] = ()
    ensure: Ensure = Ensure.PRESENT
    drop_with_data: bool = False
    """With `ensure: absent`, drop it even when it holds tables; otherwise only an empty one is dropped."""


@dataclass(frozen=True)
class DatabaseSpec:
    postgres: PostgresSpec = field(default_factory=PostgresSpec)
    storage: StorageSpec = field(default_factory=StorageSpec)
    capacity: CapacitySpec = field(default_factory=CapacitySpec)
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    auto_pause: AutoPauseSpec = field(default_factory=AutoPauseSpec)
    auto_park: AutoParkSpec = field(default_factory=AutoParkSpec)
    state: State = State.AUTO
    superuser_access: bool = False
    """Whether a client may have the superuser (from its own Secret, or `sdb dsn --superuser`)."""
    access: AccessSpec = field(default_factory=AccessSpec)
    tls: TlsSpec = field(default_factory=TlsSpec)
    pooling: PoolingSpec = field(default_factory=PoolingSpec)
    roles: tuple[RoleSpec, ...] = ()
    databases: tuple[DeclaredDatabase, ...] = ()


def split_key(key: str) -> tuple[str, str]:
    """A database's key, `namespace/name`, as (namespace, name)."""
    namespace, _, name = key.partition("/")
    return namespace, name


@dataclass(frozen=True)
class ObjectMeta:
    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int = 1
    resource_version: str = ""
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    finalizers: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Condition:
    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str
    last_transition_time: datetime
    observed_generation: int = 0


@dataclass(frozen=True)
class Peak:
    """A capacity goal of at least `capacity` was recommended until `until` (None: it still is)."""

    capacity: float
    until: datetime | None = None


@dataclass(frozen=True)
class LoadSample:
    """CPU (cores) at `time`: a reading's, at the middle of what it averaged; or a jump's, from when
    a reading first showed it, the most it reached."""

    time: datetime
    cores: float


@dataclass(frozen=True)
class Learned:
    """What the policy learned of a database's load: bounded, in status, so a restart decides the same."""

    load: tuple[LoadSample, ...] = ()
    """Recent CPU readings where the load moved (each holds until the next), at most one per sampling
    interval, oldest first: the trend and noise come from them."""
    shortfalls: tuple[datetime, ...] = ()
    """When recent readings found demand above capacity: each widens the headroom for a while."""
    cache_peaks: tuple[Peak, ...] = ()
    """The scale-down window of goals the page cache drove, which shrink more slowly than the others."""
    surges: tuple[LoadSample, ...] = ()
    """Recent jumps in load, oldest first: recurring ones are held for, periodic ones pre-warmed for."""
    grown_at: datetime | None = None
    """When capacity last grew because CPU was saturated: readings from before it landed saw the old size.
    Cleared once it shrinks."""


@dataclass(frozen=True)
class CapacityStatus:
    current: float | None = None
    """The capacity the compute runs at now (None while it has none)."""
    desired: float | None = None
    """The capacity the operator is moving to."""
    peaks: tuple[Peak, ...] = ()
    """Recent goals above the current one, newest last: the scale-down window, kept across restarts."""
    last_scale_time: datetime | None = None
    learned: Learned = field(default_factory=Learned)


@dataclass(frozen=True)
class AutoPauseStatus:
    """What `idleAfter: Auto` has learned: the database's recent idle gaps, and the wait they give."""

    gaps: tuple[int, ...] = ()
    """Recent idle gaps (seconds from the last activity to the next), oldest first."""
    idle_after: timedelta | None = None
    """The wait chosen from the gaps (None: not Auto)."""


@dataclass(frozen=True)
class ComputeStatus:
    """What the operator did to the running server: it applies to one incarnation, not the next."""

    incarnation: str = ""
    """The server the rest applies to (a pod's uid; locally the postmaster's pid and start time)."""
    settings: float | None = None
    """The capacity whose reloadable settings the server runs with."""
    limit: float | None = None
    """The most this server can be given: its node refused a larger resize."""
    limit_message: str = ""
    access: str = ""
    """The digest of the spec's access (roles) last applied; unlike the rest it is the data's, and
    outlives the server (policy.access.digest)."""
    access_time: datetime | None = None
    """When the declared roles and databases were last applied: drift and new passwords are looked
    for again once this is older than the policy's catalog resync."""


class Applied(StrEnum):
    APPLIED = "Applied"
    """The object is as declared (made, altered, or dropped for `ensure: absent`)."""
    FAILED = "Failed"
    """Some of it could not be applied; `error` says why (a Postgres error with its SQLSTATE)."""
    PENDING = "Pending"
    """Declared while the database rests: applied when it next runs, before its first client."""


@dataclass(frozen=True)
class ObjectStatus:
    """What the last pass over a declared role or database did."""

    name: str
    state: Applied
    error: str = ""


@dataclass(frozen=True)
class UsageSpan:
    """What a database used from `start` to its usage's `accounted_until`."""

    start: datetime
    compute_unit_hours: float = 0.0
    """The capacity in force (status.capacity.current; nothing while at zero) integrated over time."""
    phase_seconds: dict[Phase, float] = field(default_factory=dict)
    """Seconds spent in each phase, as status recorded it; together they cover the whole span."""
    unmetered_compute_unit_hours: float = 0.0
    """What the last recorded capacity would have added over operator absences beyond the gap limit:
    left out of `compute_unit_hours`, since nobody saw whether the compute ran on (Tuning.usage_gap_limit)."""


@dataclass(frozen=True)
class UsageStatus:
    """Usage you can bill, accounted in status so it outlives the operator (policy.metering)."""

    accounted_until: datetime
    """Usage is accounted up to this moment; from it on, the status's phase and capacity apply."""
    period: UsageSpan
    """The current billing period: a calendar month in UTC, from its first instant."""
    total: UsageSpan
    """Since accounting began (the database's first reconcile)."""
    previous_period: UsageSpan | None = None
    """The month before `period`, kept whole for billing after the month turns."""


@dataclass(frozen=True)
class DatabaseStatus:
    phase: Phase = Phase.PENDING
    phase_since: datetime | None = None
    """When the phase last changed: how long a pause has lasted, since when new connections are held."""
    capacity: CapacityStatus = field(default_factory=CapacityStatus)
    compute: ComputeStatus = field(default_factory=ComputeStatus)
    connections: int = 0
    last_activity_time: datetime | None = None
    endpoint: str = ""
    pooled_endpoint: str = ""
    """Where pooled clients connect (spec.pooling), in a cluster; empty without a pooler."""
    conditions: tuple[Condition, ...] = ()
    observed_generation: int = 0
    wake_request: str = ""
    """The last wake request (its token) this status has answered."""
    activator_port: int | None = None
    """The database's port on the activator in a cluster, assigned by the operator (nobody else
    writes status, so no spec author can claim another database's port)."""
    http_endpoint: str = ""
    """In a cluster, the gateway's `/sql` URL (SQL over HTTP; WebSocket on the same host): a driver
    is given it with a connection string whose host is the database's Service name."""
    failures: int = 0
    """Consecutive failed attempts at the current step, for back-off."""
    usage: UsageStatus | None = None
    """Compute-unit hours and time in each phase; None until the first reconcile starts accounting."""
    auto_pause: AutoPauseStatus = field(default_factory=AutoPauseStatus)
    roles: tuple[ObjectStatus, ...] = ()
    """The declared roles, as the last pass on a running server left them (one entry per spec entry)."""
    databases: tuple[ObjectStatus, ...] = ()

    def condition(self, kind: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


@dataclass(frozen=True)
class ServerlessDatabase:
    metadata: ObjectMeta
    spec: DatabaseSpec = field(default_factory=DatabaseSpec)
    status: DatabaseStatus = field(default_factory=DatabaseStatus)
    wake_request: str = ""
    """The newest wake request the store holds for the database (its token; empty: none), as a store
    reads it: the annotation locally, the newest WakeRequest object in a cluster."""

    @property
    def key(self) -> str:
        return self.metadata.key
