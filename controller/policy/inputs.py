"""What the policy reads besides spec and status: one observation of load, one of the compute, and tuning.

Each is a frozen value, so a test builds one and a recorded trace replays it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


@dataclass(frozen=True)
class Observation:
    """The load on one database, read at `time` by a metrics source."""

    time: datetime
    """When the values were read (not when they were handed over)."""
    observing_since: datetime
    """Start of the unbroken run of observations this one belongs to: idleness is never assumed before it."""
    client_sessions: int
    """Sessions that count as activity (not the operator's own, not idle exporter or pooler sessions)."""
    cpu_cores: float | None = None
    """CPU used, in cores, averaged since the previous reading."""
    memory_working_set_bytes: int | None = None
    """Memory that cannot be reclaimed (resident, excluding page cache)."""
    memory_cache_bytes: int | None = None
    """Page cache charged to the database: counted only partly, since it is reclaimable."""
    cpu_throttled: float | None = None
    """The share of CPU periods in which the database hit its limit (cgroup throttling), 0 to 1."""
    waiting_sessions: int = 0
    """Sessions waiting on locks or I/O."""
    transactions_per_second: float | None = None
    last_activity: datetime | None = None
    """The latest moment a client was seen, including sessions that came and went between readings."""
    lag: timedelta | None = None
    """How far the load figures trail `time`: a rate describes the middle of the window it averages.
    None: the source does not say, and the policy assumes `Tuning.metric_lag`."""


class Compute(StrEnum):
    """The state of a database's compute, as the runtime observes it."""

    ABSENT = "Absent"
    """No compute objects (never made, or released by a park)."""
    STOPPED = "Stopped"
    """Compute objects exist; nothing runs (paused)."""
    STARTING = "Starting"
    """Running but not accepting queries yet."""
    STOPPING = "Stopping"
    """Shutting down (a pod terminating); nothing to do but wait."""
    RUNNING = "Running"
    """Accepting queries."""


class Route(StrEnum):
    """Where the endpoint sends a new connection."""

    DIRECT = "Direct"
    """Straight to Postgres: nothing in the path."""
    ACTIVATOR = "Activator"
    """To the activator, which holds it and asks for a wake."""


class ResizeState(StrEnum):
    NONE = "None"
    IN_PROGRESS = "InProgress"
    DEFERRED = "Deferred"
    """The node cannot fit the new size now, and may later."""
    INFEASIBLE = "Infeasible"
    """The node can never fit the new size."""


@dataclass(frozen=True)
class ComputeState:
    storage: bool
    """Whether the database's storage exists and is initialized."""
    compute: Compute
    route: Route
    capacity: float | None = None
    """The capacity applied to the running compute."""
    incarnation: str = ""
    """Names the running server, and changes with every start (a pod's uid; locally the postmaster's
    pid and start time): what the operator did to one server says nothing of the next."""
    resize: ResizeState = ResizeState.NONE
    resize_message: str = ""
    resize_wanted: float | None = None
    """The capacity a resize that is not done yet asks for."""
    resize_pending_since: datetime | None = None
    """Since when the node has held that resize back (Deferred)."""
    limits_enforced: bool = True
    """False where the runtime can only advise limits (no writable cgroup)."""
    limits_message: str = ""
    endpoint: str = ""
    pooler_message: str = ""
    pooled_endpoint: str = ""
    """Where pooled clients connect (host:port), while spec.pooling asks for a pooler."""
    """Why the pooled endpoint (spec.pooling) does not serve, when it is asked for and does not."""
    activator_port: int | None = None
    """In a cluster, the database's port on the activator: the one status records, or the free one the
    runtime assigns it (status records it from this)."""
    http_endpoint: str = ""
    """Where SQL over HTTP reaches the database (the gateway's `/sql`), where the runtime knows it."""


@dataclass(frozen=True)
class Tuning:
    """Constants of the policy; the defaults are what the operator runs with."""

    stale_after: timedelta = timedelta(seconds=30)
    """An observation older than this is not acted on: hold the size, do not pause."""
    tick: timedelta = timedelta(seconds=2)
    """How often a running database is looked at."""
    prewarm: timedelta = timedelta(minutes=2)
    """How long before a schedule's window opens its floor applies."""
    sessions_per_cu: float = 100.0
    """Client sessions one compute unit serves (each may hold tens of MiB of work memory)."""
    cache_weight: float = 0.25
    """The share of page cache counted as memory demand: cache is reclaimable, but a hot cache is not free."""
    saturation: float = 0.99
    """CPU use at or above this share of capacity means demand is unknown and above capacity."""
    throttled: float = 0.5
    """Throttled in this share of CPU periods: saturated, whatever the average says."""
    saturation_growth: float = 3.0
    """How much a saturated database grows in one tick (at least; more when the goal says so)."""
    wake_capacity: float = 1.0
    """The least a woken database starts at (within its floor and ceiling): its clients are waiting
    with a load nobody has measured yet, and starting short costs them more than a minute of headroom."""
    resize_deferred_limit: timedelta = timedelta(seconds=60)
    """A resize the node defers for longer is taken as refused: the old size stays."""
    metric_lag: timedelta = timedelta(seconds=5)
    """How far a reading's load figures trail its time when its source does not say (both sources do)."""
    resize_latency: timedelta = timedelta(seconds=2)
    """From asking for a size to having it (in place): part of how far ahead a goal must look."""
    trend_window: timedelta = timedelta(minutes=2)
    """How far back readings count toward the load's trend and noise."""
    sample_every: timedelta = timedelta(seconds=10)
    """One reading per this long is kept in status: enough for a trend, and a busy database's status
    is not rewritten at every reading."""
    steady_cores: float = 0.02
    """A reading this close to the kept load (or within `noise_floor` of it) is the same load: not kept."""
    trend_readings: int = 4
    """Kept readings the window needs (since a start) before they say anything of trend or noise."""
    noise_headroom: float = 1.0
    """Headroom above the expected load, in standard deviations of the readings about their trend."""
    noise_floor: float = 0.03
    """The least noise assumed, as a share of the load: a few readings can look flatter than load is."""
    shortfall_memory: timedelta = timedelta(minutes=10)
    """How long a reading that found demand above capacity widens the headroom."""
    shortfall_headroom: float = 0.5
    """How much each remembered shortfall widens the noise headroom (a share of it)."""
    shortfall_limit: int = 8
    """The most shortfalls remembered."""
    shortfall_throttled: float = 0.1
    """Throttled in this share of CPU periods: the reading found the database short."""
    scale_down_step: float | None = None
    """The most one reading scales down by once the window allows; None: down to what the window
    still asks for, since the goal carries its own headroom."""
    surge_ratio: float = 2.0
    """A reading this many times the window's median load is a jump..."""
    surge_min_cores: float = 0.25
    """...and so is one at least this many cores above it."""
    surge_limit: int = 8
    """The most jumps remembered."""
    surge_periods: int = 3
    """Jumps this many intervals in a row at one period make the next one expected."""
    surge_tolerance: timedelta = timedelta(seconds=15)
    """How far an interval may stray from the period, and how early a due jump is prepared for."""
    surge_min_period: timedelta = timedelta(minutes=2)
    """Jumps closer than this are one busy stretch, not a schedule."""
    surge_missed: int = 2
    """Due jumps that may fail to come before the period is no longer trusted."""
    wake_for_jumps: bool = True
    """A woken database starts big enough for the jumps it remembers (their median)."""
    cache_share: float = 0.5
    """Page cache counts at most this share of the working set: what work keeps hot grows with the work."""
    cache_scale_down_delay: timedelta = timedelta(minutes=2)
    """Goals the page cache drove wait at least this long to shrink: a shrink evicts what a rise re-reads."""
    idle_gaps: int = 32
    """How many recent idle gaps `idleAfter: Auto` keeps in status."""
    idle_min_gaps: int = 4
    """Fewer gaps than this known: `idleAfter: Auto` waits the spec's idle_after."""
    idle_choices: tuple[timedelta, ...] = tuple(
        timedelta(minutes=m) for m in (1, 2, 3, 5, 10, 15, 20, 30, 60)
    )
    """The waits `idleAfter: Auto` chooses among."""
    max_backoff: timedelta = timedelta(minutes=5)
    activity_resolution: timedelta = timedelta(seconds=30)
    """How stale status.lastActivityTime may be while clients are active (at most idleAfter / 10)."""
    usage_gap_limit: timedelta = timedelta(minutes=15)
    """How much of an interval since status.usage was written is billed at the size status records
    when the server it names is not the one running now (a restart or a leader's failover takes
    less): beyond it the compute may have stopped unseen, and the rest is set apart as unmetered
    instead of billed. The server that still runs ran throughout, and all of it is billed."""
    catalog_resync: timedelta = timedelta(seconds=30)
    """How often a running database's declared roles and databases are applied again, which reverts
    drift and picks up a changed password; a wake applies them first when they are older."""


DEFAULT_TUNING = Tuning()
