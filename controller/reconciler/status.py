"""The status a plan leads to, its conditions, and the events worth telling: pure, no I/O.

Only the reconciler writes conditions, and only through here, so every runtime reports the same way.
A condition keeps its lastTransitionTime while its status stays the same (Kubernetes conventions).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from controller.api import types
from controller.policy import access, metering
from controller.policy.inputs import DEFAULT_TUNING, Compute, ComputeState, ResizeState, Tuning
from controller.policy.lifecycle import Action
from controller.policy.plan import IMMEDIATELY, Plan
from controller.postgres.declared import Report
from controller.runtime.base import EventType, StepError

Phase = types.Phase
Reason = types.Reason
T, F = types.ConditionStatus.TRUE, types.ConditionStatus.FALSE

_AT_ZERO = frozenset({Phase.PAUSED, Phase.PARKING, Phase.PARKED})


@dataclass(frozen=True)
class Outcome:
    """What happened when the reconciler acted on a plan."""

    plan: Plan
    compute: ComputeState
    failure: StepError | None = None
    declared: Report | None = None
    """What a Configure did with the declared roles and databases (None: it did not look at them)."""


@dataclass(frozen=True)
class EventNote:
    type: EventType
    reason: str
    message: str


MAX_STEPS = 12
"""Immediate steps taken in one pass before status is written (a pause is three)."""


@dataclass(frozen=True)
class Advance:
    """One step's result: the database with its new status, the events to tell, whether to go on."""

    db: types.ServerlessDatabase
    notes: list[EventNote]
    more: bool
    """Whether the next step follows at once, in the same pass."""


def advance(
    db: types.ServerlessDatabase, outcome: Outcome, now: datetime, tuning: Tuning = DEFAULT_TUNING
) -> Advance:
    """What one step leaves behind: the reconciler's pass, and the simulator, chain these."""
    status = next_status(db, outcome, now, tuning)
    more = outcome.failure is None and outcome.plan.requeue_after == IMMEDIATELY
    return Advance(replace(db, status=status), events(db, status, outcome), more)


def next_status(
    db: types.ServerlessDatabase, outcome: Outcome, now: datetime, tuning: Tuning = DEFAULT_TUNING
) -> types.DatabaseStatus:
    plan, compute, failure = outcome.plan, outcome.compute, outcome.failure
    old = db.status
    phase = plan.failure_phase if failure else plan.phase
    # A failed wake leaves the database resting; until something is tried again, Ready keeps saying why.
    failed_earlier = (
        failure is None
        and old.failures > 0
        and plan.action is Action.NONE
        and phase in _AT_ZERO
        and phase is old.phase
    )
    running_after = _capacity_after(plan, compute, failure)
    capacity = types.CapacityStatus(
        current=running_after,
        desired=plan.capacity if running_after is not None or plan.action is Action.START else None,
        peaks=plan.peaks if running_after is not None else (),
        last_scale_time=now if plan.action is Action.RESIZE and not failure else old.capacity.last_scale_time,
        learned=plan.learned,
    )
    known = plan.known if failure else plan.compute
    endpoint = compute.endpoint or old.endpoint
    roles, databases = _declared(db, outcome, known)
    # Built once, not replaced field by field: a running database's tick builds one, and a replace of
    # twenty fields costs as much as the rest of this function.
    conditions = _conditions(db, outcome, now, phase=phase, endpoint=endpoint, capacity=capacity)
    if failed_earlier:
        conditions = tuple(
            old.condition(c.type) or c if c.type is types.ConditionType.READY else c for c in conditions
        )
    return replace(
        old,
        phase=phase,
        phase_since=now if phase is not old.phase or old.phase_since is None else old.phase_since,
        capacity=capacity,
        compute=known,
        connections=plan.connections,
        last_activity_time=plan.last_activity_time,
        endpoint=endpoint,
        pooled_endpoint=compute.pooled_endpoint,
        activator_port=compute.activator_port if compute.activator_port is not None else old.activator_port,
        http_endpoint=compute.http_endpoint,
        observed_generation=db.metadata.generation,
        wake_request=plan.wake_request,
        failures=old.failures + 1 if failure else old.failures if failed_earlier else 0,
        # Up to now at the phase and size that held, all of it if the server status names ran throughout.
        usage=metering.accrue_status(old, now, tuning, running=compute.incarnation),
        auto_pause=plan.auto_pause,
        roles=roles,
        databases=databases,
        conditions=conditions,
    )


def _capacity_after(plan: Plan, compute: ComputeState, failure: StepError | None) -> float | None:
    if failure is not None:
        return compute.capacity if compute.compute is Compute.RUNNING else None
    if plan.action in (Action.START, Action.RESIZE):
        return plan.capacity
    if plan.action in (Action.STOP, Action.RELEASE) or compute.compute is not Compute.RUNNING:
        return None
    return compute.capacity


def _conditions(
    db: types.ServerlessDatabase,
    outcome: Outcome,
    now: datetime,
    *,
    phase: Phase,
    endpoint: str,
    capacity: types.CapacityStatus,
) -> tuple[types.Condition, ...]:
    plan, compute, failure = outcome.plan, outcome.compute, outcome.failure
    generation = db.metadata.generation
    if failure is not None:
        ready = (F, failure.reason.value, failure.message)
    elif phase is Phase.ACTIVE:
        ready = (T, Reason.RUNNING.value, f"accepting connections at {endpoint}")
    else:
        ready = (F, plan.reason.value, plan.message or phase.value)
    paused = (
        (T, Reason.PAUSED.value, "compute is at zero; a connection wakes it")
        if phase in _AT_ZERO
        else (F, Reason.PAUSING.value if phase is Phase.PAUSING else Reason.NOT_PAUSED.value, "")
    )
    parked = (
        (T, Reason.PARKED.value, "compute released; storage and credentials kept")
        if phase is Phase.PARKED
        else (F, Reason.NOT_PARKED.value, "")
    )
    degraded = (
        (T, plan.degraded[0].value, plan.degraded[1]) if plan.degraded else (F, Reason.HEALTHY.value, "")
    )
    wanted: list[tuple[types.ConditionType, tuple[types.ConditionStatus, str, str]]] = [
        (types.ConditionType.READY, ready),
        (types.ConditionType.SCALING, _scaling(capacity, compute, plan, failure)),
        (types.ConditionType.PAUSED, paused),
        (types.ConditionType.PARKED, parked),
        (types.ConditionType.DEGRADED, degraded),
    ]
    held = {c.type: c for c in db.status.conditions}
    out = []
    for kind, (state, reason, message) in wanted:
        before = held.get(kind)
        since = before.last_transition_time if before is not None and before.status is state else now
        out.append(types.Condition(kind, state, reason, message, since, generation))
    return tuple(out)


def _scaling(
    capacity: types.CapacityStatus, compute: ComputeState, plan: Plan, failure: StepError | None
) -> tuple[types.ConditionStatus, str, str]:
    if failure is not None and plan.action is Action.RESIZE:
        return F, failure.reason.value, f"kept {capacity.current} CU: {failure.message}"
    if plan.resize_blocked is not None:
        reason, message = plan.resize_blocked
        return F, reason.value, message
    if compute.resize is ResizeState.IN_PROGRESS:
        return T, Reason.RESIZING.value, compute.resize_message or f"moving to {capacity.desired} CU"
    if plan.action is Action.RESIZE:
        return T, plan.reason.value, plan.message
    if plan.known.limit is not None:  # refused earlier: the size stays below what the node refused
        return F, Reason.RESIZE_INFEASIBLE.value, plan.known.limit_message
    return F, Reason.STABLE.value, ""


def _declared(
    db: types.ServerlessDatabase, outcome: Outcome, compute: types.ComputeStatus
) -> tuple[tuple[types.ObjectStatus, ...], tuple[types.ObjectStatus, ...]]:
    """What status says of the declared roles and databases: the report of the pass that applied them;
    else the last report while the spec is still the one it applied; else Pending, until the server
    runs (a resting database is not woken for them)."""
    report, old = outcome.declared, db.status
    if report is not None and outcome.failure is None:
        return report.roles, report.databases
    if compute.access == access.digest(db.spec):
        return old.roles, old.databases

    def pending(
        entries: tuple[types.RoleSpec, ...] | tuple[types.DeclaredDatabase, ...],
    ) -> tuple[types.ObjectStatus, ...]:
        return tuple(types.ObjectStatus(e.name, types.Applied.PENDING) for e in entries)

    return pending(db.spec.roles), pending(db.spec.databases)


def events(db: types.ServerlessDatabase, status: types.DatabaseStatus, outcome: Outcome) -> list[EventNote]:
    """The events one step is worth: transitions, resizes, failures."""
    plan, failure = outcome.plan, outcome.failure
    notes: list[EventNote] = []
    if failure is not None:
        notes.append(EventNote(EventType.WARNING, failure.reason.value, failure.message))
    elif plan.action is Action.RESIZE:
        notes.append(EventNote(EventType.NORMAL, plan.reason.value, plan.message))
    if plan.reason is Reason.PAUSE_CANCELLED and failure is None:
        notes.append(EventNote(EventType.NORMAL, plan.reason.value, plan.message))
    if status.phase is not db.status.phase:
        message = f"{db.status.phase.value} -> {status.phase.value}"
        detail = plan.message if failure is None else failure.message
        reason = _PHASE_REASONS.get(status.phase, plan.reason)
        notes.append(EventNote(EventType.NORMAL, reason.value, f"{message}: {detail}" if detail else message))
    before = db.status.condition(types.ConditionType.DEGRADED)
    after = status.condition(types.ConditionType.DEGRADED)
    degraded_now = after is not None and after.status is T
    was_same = (
        before is not None and before.status is T and after is not None and before.reason == after.reason
    )
    if degraded_now and not was_same and after is not None:
        notes.append(EventNote(EventType.WARNING, after.reason, after.message))
    # A declared object that newly fails, or fails otherwise than it did: told once, not every pass.
    for kind, before_entries, after_entries in (
        ("role", db.status.roles, status.roles),
        ("database", db.status.databases, status.databases),
    ):
        known = {(e.name, e.error) for e in before_entries if e.state is types.Applied.FAILED}
        for entry in after_entries:
            if entry.state is types.Applied.FAILED and (entry.name, entry.error) not in known:
                message = f"{kind} {entry.name} not as declared: {entry.error}"
                notes.append(EventNote(EventType.WARNING, Reason.DECLARED_NOT_APPLIED.value, message))
    return notes


_PHASE_REASONS = {
    Phase.ACTIVE: Reason.STARTED,
    Phase.PAUSING: Reason.PAUSING,
    Phase.PAUSED: Reason.PAUSED,
    Phase.PARKING: Reason.PARKING,
    Phase.PARKED: Reason.PARKED,
    Phase.RESUMING: Reason.RESUMING,
    Phase.PENDING: Reason.CREATING,
}
