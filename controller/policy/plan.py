"""`decide`: spec, status, observations and the time in; one plan out. No I/O, no clock, no globals."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from croniter import croniter

from controller.api import types, units
from controller.policy import access, capacity, idle, lifecycle, schedule
from controller.policy.capacity import Goal
from controller.policy.inputs import (
    DEFAULT_TUNING,
    Compute,
    ComputeState,
    Observation,
    ResizeState,
    Route,
    Tuning,
)
from controller.policy.lifecycle import Action

Phase = types.Phase
Reason = types.Reason

IMMEDIATELY = timedelta(0)
SOON = timedelta(milliseconds=100)


@dataclass(frozen=True)
class Plan:
    action: Action
    phase: Phase
    reason: Reason
    message: str
    capacity: float | None
    """The capacity to run at: what a Start or Resize applies, and status.capacity.desired; for a
    Stop, the size a wake will start at, whose settings the stop leaves in place."""
    peaks: tuple[types.Peak, ...]
    last_activity_time: datetime | None
    connections: int
    wake_request: str
    """The wake request this plan answers (recorded in status so each is answered once)."""
    degraded: tuple[Reason, str] | None
    failure_phase: Phase
    requeue_after: timedelta | None
    """When to look again; None: only when something changes (a parked database costs nothing)."""
    compute: types.ComputeStatus = field(default_factory=types.ComputeStatus)
    """What status.compute says once the action is done."""
    known: types.ComputeStatus = field(default_factory=types.ComputeStatus)
    """What status.compute says if the action fails: what is known of the running server now."""
    resize_blocked: tuple[Reason, str] | None = None
    """Why the node holds a resize back (deferred) or refused one (the limit in `known`)."""
    configure_access: bool = False
    """For a Configure: whether the roles must follow the spec too (not only the settings)."""
    goal: Goal | None = None
    wake: bool = False
    """True when the plan moves toward Active because a client asked."""
    learned: types.Learned = field(default_factory=types.Learned)
    """What status keeps of the load for the next decision (status.capacity.learned)."""
    auto_pause: types.AutoPauseStatus = field(default_factory=types.AutoPauseStatus)
    """The idle gaps `idleAfter: Auto` learns from, and the wait they gave (status.autoPause)."""


def decide(
    *,
    db: types.ServerlessDatabase,
    compute: ComputeState,
    observation: Observation | None,
    now: datetime,
    tuning: Tuning = DEFAULT_TUNING,
) -> Plan:
    status = db.status
    spec = _with_idle_wait(db.spec, status.auto_pause.gaps, tuning)
    wake_request = db.wake_request
    fresh = lifecycle.is_fresh(observation, now, tuning)
    schedule_floor = schedule.active_floor(spec.scaling.schedules, now, prewarm=tuning.prewarm)
    want = lifecycle.target(
        spec=spec,
        status=status,
        compute=compute,
        observation=observation,
        wake_request=wake_request,
        schedule_open=schedule_floor is not None,
        now=now,
        tuning=tuning,
    )
    known = _known(status.compute, compute, now, tuning)
    wanted_access = access.digest(spec)
    catalog_due = access.declares(spec) and (
        known.access_time is None or now - known.access_time >= tuning.catalog_resync
    )
    configure_access = compute.compute is Compute.RUNNING and (known.access != wanted_access or catalog_due)
    configured = _configured(spec, compute, known) and not configure_access
    running_compute = compute.compute is Compute.RUNNING
    move = lifecycle.step(
        want=want,
        status=status,
        compute=compute,
        observation=observation,
        now=now,
        spec=spec,
        tuning=tuning,
        configured=configured,
    )
    floor = capacity.effective_floor(spec, schedule_floor)
    running = running_compute and move.phase is Phase.ACTIVE
    last_activity = _last_activity(
        status, observation if fresh else None, now if want.wake else None, spec.auto_pause.idle_after, tuning
    )
    plan_capacity: float | None = None
    peaks: tuple[types.Peak, ...] = ()
    goal: Goal | None = None
    # Load learned while running says nothing of the next run; shortfalls are remembered across it.
    learned = types.Learned(
        shortfalls=status.capacity.learned.shortfalls, surges=status.capacity.learned.surges
    )
    action, reason, message = move.action, move.reason, move.message

    # Woken by a client, a database starts warm: the load is unknown and the client is waiting.
    wake_capacity = capacity.clamp(
        max(floor, tuning.wake_capacity, capacity.jump_capacity(spec, status.capacity.learned, tuning)),
        spec.capacity,
    )
    if move.action is Action.STOP:
        plan_capacity = wake_capacity  # what the stop prepares the settings for
    elif move.action is Action.START:
        plan_capacity = wake_capacity if want.wake else floor
        # The start size counts as a goal: the first readings after a start see the time it was down.
        peaks = (types.Peak(plan_capacity),)
    elif move.action is Action.CONFIGURE:
        plan_capacity = compute.capacity  # the settings follow the size the server has
        peaks, learned = status.capacity.peaks, status.capacity.learned
    elif running:
        current = compute.capacity if compute.capacity is not None else status.capacity.current or floor
        peaks = status.capacity.peaks
        learned = status.capacity.learned
        plan_capacity = capacity.clamp(current, spec.capacity)
        if fresh and observation is not None:
            sized = capacity.size(
                spec, status, observation, current=current, floor=floor, now=now, tuning=tuning
            )
            goal, plan_capacity, peaks, learned = sized.goal, sized.capacity, sized.peaks, sized.learned
        elif floor > current:
            plan_capacity = floor  # a floor applies whatever the metrics say
        if known.limit is not None and plan_capacity > current:
            plan_capacity = max(min(plan_capacity, known.limit), current)
        if plan_capacity == current and move.action is Action.NONE and not configured:
            # It grew, or the settings were never applied here: they follow the size it has now.
            action, message = Action.CONFIGURE, f"applying the settings of {current:g} CU"
        if plan_capacity != current and move.action is Action.NONE:
            action = Action.RESIZE
            up = plan_capacity > current
            reason = Reason.SCALED_UP if up else Reason.SCALED_DOWN
            why = goal.driver if goal is not None else "the floor"
            message = f"capacity {current:g} -> {plan_capacity:g} CU ({why})"

    return Plan(
        compute=_compute_after(
            action,
            plan_capacity,
            known,
            compute.capacity,
            access=wanted_access if configure_access else None,
            now=now,
        ),
        configure_access=configure_access,
        known=known,
        resize_blocked=_resize_blocked(compute, known),
        action=action,
        phase=move.phase,
        reason=reason,
        message=message,
        capacity=plan_capacity,
        peaks=peaks,
        last_activity_time=last_activity,
        connections=observation.client_sessions if fresh and observation and running else 0,
        # A request is answered once, by the pass that acts on it (or finds the database active); the
        # answer stays in status after the request itself is gone.
        wake_request=wake_request
        if wake_request and (want.wake or move.phase is Phase.ACTIVE)
        else status.wake_request,
        degraded=_degraded(compute, fresh, running, observation, starting=_just_started(status, now, tuning)),
        failure_phase=Phase.ACTIVE if action is Action.RESIZE else move.failure_phase or move.phase,
        requeue_after=tuning.tick
        if action is Action.CONFIGURE and running
        else _requeue_after(action, move.phase, spec, status, now, tuning),
        goal=goal,
        wake=want.wake,
        learned=learned,
        auto_pause=_auto_pause(db, last_activity, tuning),
    )


def _with_idle_wait(spec: types.DatabaseSpec, gaps: tuple[int, ...], tuning: Tuning) -> types.DatabaseSpec:
    """The spec with the idle wait in force: for `idleAfter: Auto`, the one the recent gaps chose."""
    waited = idle.idle_after(spec.auto_pause, gaps, tuning)
    if waited == spec.auto_pause.idle_after:
        return spec
    return replace(spec, auto_pause=replace(spec.auto_pause, idle_after=waited))


def _auto_pause(
    db: types.ServerlessDatabase, last_activity: datetime | None, tuning: Tuning
) -> types.AutoPauseStatus:
    """For `idleAfter: Auto`: the gap that just ended, if one did, and the wait in force."""
    if not db.spec.auto_pause.idle_after_auto:
        return types.AutoPauseStatus()
    status = db.status
    gaps = status.auto_pause.gaps
    if status.connections == 0 and last_activity != status.last_activity_time:
        # No session at the last reading, and activity since: an idle gap ended.
        gaps = idle.record_gap(
            gaps, idle_since=status.last_activity_time, active_again=last_activity, tuning=tuning
        )
    return types.AutoPauseStatus(gaps=gaps, idle_after=idle.idle_after(db.spec.auto_pause, gaps, tuning))


def _known(
    recorded: types.ComputeStatus, compute: ComputeState, now: datetime, tuning: Tuning
) -> types.ComputeStatus:
    """What is known of the server running now: what status recorded for it (not for an earlier one),
    and a resize its node refuses (Infeasible, or Deferred for too long), which caps its size.

    A stop records the settings it leaves for the next server (no incarnation yet): a server that
    starts on that data directory runs with them.
    """
    pending = recorded.incarnation == ""
    carried = types.ComputeStatus(
        settings=recorded.settings if pending else None,
        access=recorded.access,
        access_time=recorded.access_time,
    )
    if compute.compute is not Compute.RUNNING:
        return carried
    known = (
        recorded
        if recorded.incarnation == compute.incarnation
        else replace(carried, incarnation=compute.incarnation)
    )
    deferred_too_long = (
        compute.resize is ResizeState.DEFERRED
        and compute.resize_pending_since is not None
        and now - compute.resize_pending_since > tuning.resize_deferred_limit
    )
    wanted = compute.resize_wanted
    if wanted is None or not (compute.resize is ResizeState.INFEASIBLE or deferred_too_long):
        return known
    why = compute.resize_message or "the node cannot fit it"
    if deferred_too_long:
        why = f"deferred for more than {_seconds(tuning.resize_deferred_limit)}: {why}"
    limit = wanted - units.CU_STEP
    if known.limit is not None and known.limit <= limit:
        return known
    return replace(known, limit=limit, limit_message=f"the node cannot fit {wanted:g} CU: {why}")


def _configured(spec: types.DatabaseSpec, compute: ComputeState, known: types.ComputeStatus) -> bool:
    """Whether a running server has the settings of its size, or has no size they could follow yet.

    One whose size is unknown, or outside the spec's bounds, gets a resize instead: the resize sets
    limits and settings together, in the order that keeps the settings within the limits.
    """
    size = compute.capacity
    if compute.compute is not Compute.RUNNING or size is None:
        return True
    return known.settings == size or not spec.capacity.min <= size <= spec.capacity.max


def _compute_after(
    action: Action,
    capacity_: float | None,
    known: types.ComputeStatus,
    current: float | None,
    *,
    access: str | None,
    now: datetime,
) -> types.ComputeStatus:
    """What is known of the server once the action is done (`access`: the digest a Configure applies).

    A resize down applies the smaller settings before the smaller limits; a resize up applies the
    larger ones only once the larger limits hold, which the server's reported size then shows. A stop
    leaves the settings of the size a wake starts at, for whichever server starts next.
    """
    if action is Action.CONFIGURE and access is not None:
        return replace(known, settings=capacity_, access=access, access_time=now)
    if action is Action.CONFIGURE:
        return replace(known, settings=capacity_)
    if action is Action.RESIZE and capacity_ is not None and current is not None and capacity_ < current:
        return replace(known, settings=capacity_)
    if action is Action.STOP:
        return types.ComputeStatus(settings=capacity_, access=known.access, access_time=known.access_time)
    return known


def _resize_blocked(compute: ComputeState, known: types.ComputeStatus) -> tuple[Reason, str] | None:
    """Why the node holds back the resize asked for now: refused (the limit), or deferred for a while."""
    refused = compute.resize is ResizeState.INFEASIBLE or (
        compute.resize is ResizeState.DEFERRED
        and known.limit is not None
        and known.limit < (compute.resize_wanted or 0)
    )
    if refused and known.limit is not None:
        return Reason.RESIZE_INFEASIBLE, known.limit_message
    if compute.resize is ResizeState.DEFERRED:
        wanted = f"{compute.resize_wanted:g} CU" if compute.resize_wanted is not None else "a resize"
        return Reason.RESIZE_DEFERRED, f"the node deferred {wanted}: {compute.resize_message}"
    return None


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g}s"


def _last_activity(
    status: types.DatabaseStatus,
    observation: Observation | None,
    woken_at: datetime | None,
    idle_after: timedelta,
    tuning: Tuning,
) -> datetime | None:
    """The last activity, kept to a resolution so a busy database's status is not rewritten every tick,
    and not moved at all while the sessions status counts stay open (they say it is in use now).

    Precision matters only where idleness starts: when the last session ends, the time is exact.
    """
    stored = status.last_activity_time
    seen = [t for t in (woken_at,) if t is not None]
    if observation is not None:
        if observation.client_sessions > 0 or status.connections > 0:
            seen.append(observation.time)  # sessions now, or they ended since the last reading
        if observation.last_activity is not None:
            seen.append(observation.last_activity)
    latest = max(seen, default=None)
    if latest is None or (stored is not None and latest <= stored):
        return stored
    resolution = min(tuning.activity_resolution, idle_after / 10)
    sessions_ended = observation is not None and observation.client_sessions == 0 and status.connections > 0
    still_open = observation is not None and observation.client_sessions > 0 and status.connections > 0
    if stored is None or sessions_ended or woken_at is not None:
        return latest
    if not still_open and latest - stored >= resolution:
        return latest
    return stored


def _just_started(status: types.DatabaseStatus, now: datetime, tuning: Tuning) -> bool:
    """Within the first reading's reach of becoming active: no observation yet is expected, not a fault."""
    return (
        status.phase is not Phase.ACTIVE
        or status.phase_since is None
        or now - status.phase_since < tuning.stale_after
    )


def _degraded(
    compute: ComputeState, fresh: bool, running: bool, observation: Observation | None, *, starting: bool
) -> tuple[Reason, str] | None:
    if running and not fresh and not (starting and observation is None):
        if observation is None:
            return Reason.METRICS_UNAVAILABLE, "no observation of load yet: holding size, not pausing"
        return (
            Reason.METRICS_STALE,
            f"last observation at {observation.time.isoformat()}: holding size, not pausing",
        )
    if compute.pooler_message:
        return Reason.POOLER_FAILED, compute.pooler_message
    if compute.compute is not Compute.ABSENT and not compute.limits_enforced:
        return (
            Reason.LIMITS_ADVISORY,
            compute.limits_message or "CPU and memory limits are advisory on this host",
        )
    return None


def _requeue_after(
    action: Action,
    phase: Phase,
    spec: types.DatabaseSpec,
    status: types.DatabaseStatus,
    now: datetime,
    tuning: Tuning,
) -> timedelta | None:
    if action is Action.WAIT:
        return SOON
    if action not in (Action.NONE, Action.RESIZE):
        return IMMEDIATELY  # the step is done when the runtime returns; the next can follow at once
    if phase in (Phase.PAUSED, Phase.PARKED):
        deadlines = [_next_window(spec, now, tuning)]
        if phase is Phase.PAUSED and spec.state is types.State.AUTO and spec.auto_park.enabled:
            deadlines.append((status.phase_since or now) + spec.auto_park.idle_after - now)
        waits = [d for d in deadlines if d is not None]
        return max(min(waits), SOON) if waits else None
    return tuning.tick


def _next_window(spec: types.DatabaseSpec, now: datetime, tuning: Tuning) -> timedelta | None:
    """Time until the next schedule window starts pre-warming, for a database at rest."""
    if not spec.scaling.schedules or spec.state is not types.State.AUTO:
        return None
    starts: list[datetime] = [
        croniter(s.cron, now + tuning.prewarm).get_next(datetime) for s in spec.scaling.schedules
    ]
    return min(starts) - tuning.prewarm - now


def backoff(failures: int, tuning: Tuning = DEFAULT_TUNING) -> timedelta:
    """Exponential back-off after consecutive failures: 1 s, 2 s, 4 s, ... up to the maximum."""
    return min(timedelta(seconds=2 ** min(max(failures - 1, 0), 30)), tuning.max_backoff)


__all__ = ["Action", "ComputeState", "Observation", "Plan", "Route", "Tuning", "backoff", "decide"]
