"""`decide`: spec, status, observations and the time in; one plan out. No I/O, no clock, no globals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter

from controller.api import types
from controller.policy import capacity, lifecycle, schedule
from controller.policy.capacity import Goal
from controller.policy.inputs import DEFAULT_TUNING, Compute, ComputeState, Observation, Route, Tuning
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
    goal: Goal | None = None
    wake: bool = False
    """True when the plan moves toward Active because a client asked."""


def decide(
    *,
    db: types.ServerlessDatabase,
    compute: ComputeState,
    observation: Observation | None,
    now: datetime,
    tuning: Tuning = DEFAULT_TUNING,
) -> Plan:
    spec, status = db.spec, db.status
    wake_request = db.metadata.annotations.get(types.WAKE_ANNOTATION, "")
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
    move = lifecycle.step(
        want=want, status=status, compute=compute, observation=observation, now=now, spec=spec, tuning=tuning
    )
    floor = capacity.effective_floor(spec, schedule_floor)
    running = compute.compute is Compute.RUNNING and move.phase is Phase.ACTIVE
    last_activity = _last_activity(
        status, observation if fresh else None, now if want.wake else None, spec.auto_pause.idle_after, tuning
    )
    plan_capacity: float | None = None
    peaks: tuple[types.Peak, ...] = ()
    goal: Goal | None = None
    action, reason, message = move.action, move.reason, move.message

    # Woken by a client, a database starts warm: the load is unknown and the client is waiting.
    wake_capacity = capacity.clamp(max(floor, tuning.wake_capacity), spec.capacity)
    if move.action is Action.STOP:
        plan_capacity = wake_capacity  # what the stop prepares the settings for
    elif move.action is Action.START:
        plan_capacity = wake_capacity if want.wake else floor
        # The start size counts as a goal: the first readings after a start see the time it was down.
        peaks = (types.Peak(plan_capacity),)
    elif running:
        current = compute.capacity if compute.capacity is not None else status.capacity.current or floor
        peaks = status.capacity.peaks
        plan_capacity = capacity.clamp(current, spec.capacity)
        if fresh and observation is not None:
            goal = capacity.goal(spec, observation, current=current, tuning=tuning)
            peaks = capacity.record_goal(
                status.capacity.peaks, goal.capacity, now, spec.scaling.scale_down_delay
            )
            high = capacity.window_max(peaks) or goal.capacity
            plan_capacity = capacity.clamp(
                capacity.next_capacity(
                    current=current, goal_capacity=goal.capacity, window_high=high, floor=floor
                ),
                spec.capacity,
            )
        elif floor > current:
            plan_capacity = floor  # a floor applies whatever the metrics say
        if compute.capacity_limit is not None and plan_capacity > current:
            plan_capacity = max(min(plan_capacity, compute.capacity_limit), current)
        if plan_capacity != current and move.action is Action.NONE:
            action = Action.RESIZE
            up = plan_capacity > current
            reason = Reason.SCALED_UP if up else Reason.SCALED_DOWN
            why = goal.driver if goal is not None else "the floor"
            message = f"capacity {current:g} -> {plan_capacity:g} CU ({why})"

    return Plan(
        action=action,
        phase=move.phase,
        reason=reason,
        message=message,
        capacity=plan_capacity,
        peaks=peaks,
        last_activity_time=last_activity,
        connections=observation.client_sessions if fresh and observation and running else 0,
        wake_request=wake_request if want.wake or move.phase is Phase.ACTIVE else status.wake_request,
        degraded=_degraded(compute, fresh, running, observation, starting=_just_started(status, now, tuning)),
        failure_phase=Phase.ACTIVE if action is Action.RESIZE else move.failure_phase or move.phase,
        requeue_after=_requeue_after(action, move.phase, spec, status, now, tuning),
        goal=goal,
        wake=want.wake,
    )


def _last_activity(
    status: types.DatabaseStatus,
    observation: Observation | None,
    woken_at: datetime | None,
    idle_after: timedelta,
    tuning: Tuning,
) -> datetime | None:
    """The last activity, kept to a resolution so a busy database's status is not rewritten every tick.

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
    if stored is None or sessions_ended or woken_at is not None or latest - stored >= resolution:
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
