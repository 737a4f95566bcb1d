"""Where a database should be (Active, Paused, Parked) and the next step to get there.

The target comes from `spec.state` when a user set one, else from idleness, wake requests and
schedules. The step is one move of a small state machine over what the runtime observes, so an
operator that died halfway through a pause or a park picks up where the world is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from controller.api import types
from controller.policy.inputs import Compute, ComputeState, Observation, Route, Tuning

Reason = types.Reason
Phase = types.Phase
State = types.State

_RESTING = frozenset({Phase.PAUSED, Phase.PARKING, Phase.PARKED})
"""Phases in which the database was put to rest on purpose and stays so until a wake."""


class Action(StrEnum):
    """One step the reconciler asks the runtime to take."""

    NONE = "None"
    CREATE_STORAGE = "CreateStorage"
    """Create and initialize storage and credentials."""
    START = "Start"
    """Start the compute at the plan's capacity (creating compute objects if needed)."""
    PROVISION = "Provision"
    """Create compute objects without starting them (a parked database asked to be paused)."""
    ROUTE_DIRECT = "RouteDirect"
    """Send new connections straight to Postgres."""
    ROUTE_ACTIVATOR = "RouteActivator"
    """Send new connections to the activator, which holds them."""
    RECHECK = "Recheck"
    """Read sessions again now that new connections are held: a pause goes on only if there are none."""
    STOP = "Stop"
    """Stop Postgres cleanly (a checkpoint, so the next start needs no recovery)."""
    RELEASE = "Release"
    """Remove compute objects, keeping storage and credentials."""
    CONFIGURE = "Configure"
    """Put the reloadable settings of the running size in force (a server that started, or whose
    settings the operator has not applied yet)."""
    RESIZE = "Resize"
    WAIT = "Wait"
    """Something is in progress; look again soon."""


@dataclass(frozen=True)
class Intent:
    """Where a database should be, and why."""

    state: State
    reason: Reason
    message: str
    wake: bool = False
    """True when the target is Active because of a wake request not yet answered."""


@dataclass(frozen=True)
class Step:
    action: Action
    phase: Phase
    reason: Reason
    message: str
    failure_phase: Phase | None = None
    """The phase to record if the action fails (None: the step's own; a half-done pause stays Pausing)."""


def idle_since(status: types.DatabaseStatus, observation: Observation) -> datetime:
    """The start of the current idle stretch: never before observations began, never before activity."""
    candidates = [observation.observing_since]
    if status.last_activity_time is not None:
        candidates.append(status.last_activity_time)
    if observation.last_activity is not None:
        candidates.append(observation.last_activity)
    return max(candidates)


def is_fresh(observation: Observation | None, now: datetime, tuning: Tuning) -> bool:
    return observation is not None and now - observation.time <= tuning.stale_after


def target(
    *,
    spec: types.DatabaseSpec,
    status: types.DatabaseStatus,
    compute: ComputeState,
    observation: Observation | None,
    wake_request: str,
    schedule_open: bool,
    now: datetime,
    tuning: Tuning,
) -> Intent:
    if spec.state is not State.AUTO:
        return Intent(spec.state, Reason.MANUAL_OVERRIDE, f"spec.state is {spec.state.value}")
    if wake_request and wake_request != status.wake_request:
        return Intent(State.ACTIVE, Reason.WAKE_REQUESTED, "a client connected", wake=True)
    if schedule_open:
        return Intent(State.ACTIVE, Reason.RUNNING, "a scaling schedule's window is open")
    # At rest on purpose, and nothing has started it since: it stays so until a wake.
    at_zero = compute.compute in (Compute.STOPPED, Compute.ABSENT, Compute.STOPPING)
    if at_zero and (status.phase in _RESTING or status.phase is Phase.PAUSING):
        return _resting_target(spec, status, now)
    if compute.compute is not Compute.RUNNING or not spec.auto_pause.enabled:
        return Intent(State.ACTIVE, Reason.RUNNING, "")
    if not is_fresh(observation, now, tuning):
        return Intent(State.ACTIVE, Reason.METRICS_STALE, "no fresh observation: not pausing")
    assert observation is not None
    if observation.client_sessions > 0:
        return Intent(State.ACTIVE, Reason.RUNNING, f"{observation.client_sessions} client session(s)")
    idle_for = now - idle_since(status, observation)
    if idle_for >= spec.auto_pause.idle_after:
        return Intent(State.PAUSED, Reason.IDLE, f"no client session for {_seconds(idle_for)}")
    return Intent(State.ACTIVE, Reason.RUNNING, f"idle for {_seconds(idle_for)}")


def _resting_target(spec: types.DatabaseSpec, status: types.DatabaseStatus, now: datetime) -> Intent:
    if status.phase in (Phase.PARKING, Phase.PARKED):
        return Intent(State.PARKED, Reason.PARKED, "parked after a long idle time")
    paused_for = now - (status.phase_since or now)
    if spec.auto_park.enabled and paused_for >= spec.auto_park.idle_after:
        return Intent(State.PARKED, Reason.IDLE, f"paused for {_seconds(paused_for)}")
    return Intent(State.PAUSED, Reason.PAUSED, "paused while idle; a connection wakes it")


def step(
    *,
    want: Intent,
    status: types.DatabaseStatus,
    compute: ComputeState,
    observation: Observation | None,
    now: datetime,
    spec: types.DatabaseSpec,
    tuning: Tuning,
    configured: bool = True,
) -> Step:
    """The next move toward `want`, from what is observed.

    `configured` says whether a running server has the settings of its size in force: one that is
    not gets them before clients reach it directly (once they do, the plan's sizing applies them).
    """
    if want.state is State.ACTIVE:
        return _toward_active(want, status, compute, configured=configured)
    resting = Phase.PAUSING if want.state is State.PAUSED else Phase.PARKING
    if compute.compute is Compute.STOPPING:
        return Step(Action.WAIT, resting, Reason.PAUSING, "waiting for Postgres to shut down")
    if compute.compute in (Compute.RUNNING, Compute.STARTING):
        if compute.route is Route.DIRECT:
            return Step(
                Action.ROUTE_ACTIVATOR, resting, Reason.PAUSING, f"holding new connections: {want.message}"
            )
        if want.reason is Reason.MANUAL_OVERRIDE:
            return Step(Action.STOP, resting, Reason.PAUSING, f"stopping Postgres: {want.message}")
        return _after_recheck(want, status, observation, now, spec, tuning, resting)
    if not compute.storage:  # made at rest: it still needs its volume's Secret and an endpoint to wake by
        return Step(Action.CREATE_STORAGE, resting, Reason.CREATING, "creating storage and the endpoint")
    if want.state is State.PAUSED:
        if compute.compute is Compute.ABSENT:
            return Step(
                Action.PROVISION, Phase.PAUSING, Reason.PAUSING, "recreating compute objects, stopped"
            )
        return Step(Action.NONE, Phase.PAUSED, Reason.PAUSED, want.message)
    if compute.compute is Compute.STOPPED:
        return Step(Action.RELEASE, Phase.PARKING, Reason.PARKING, f"releasing compute: {want.message}")
    return Step(Action.NONE, Phase.PARKED, Reason.PARKED, want.message)


def _after_recheck(
    want: Intent,
    status: types.DatabaseStatus,
    observation: Observation | None,
    now: datetime,
    spec: types.DatabaseSpec,
    tuning: Tuning,
    resting: Phase,
) -> Step:
    """New connections are held; a pause goes on only if a reading taken since then shows nobody."""
    held_since = status.phase_since if status.phase is resting else None
    if (
        observation is None
        or held_since is None
        or observation.time <= held_since
        or not is_fresh(observation, now, tuning)
    ):
        return Step(Action.RECHECK, resting, Reason.PAUSING, "checking sessions again before stopping")
    idle_for = now - idle_since(status, observation)
    if observation.client_sessions > 0 or idle_for < spec.auto_pause.idle_after:
        return Step(
            Action.ROUTE_DIRECT,
            Phase.ACTIVE,
            Reason.PAUSE_CANCELLED,
            f"{observation.client_sessions} client session(s) appeared while pausing",
        )
    return Step(Action.STOP, resting, Reason.PAUSING, f"stopping Postgres: {want.message}")


def _toward_active(
    want: Intent, status: types.DatabaseStatus, compute: ComputeState, *, configured: bool
) -> Step:
    first_time = status.capacity.current is None and status.phase in (Phase.PENDING, Phase.FAILED)
    starting_phase = Phase.PENDING if first_time else Phase.RESUMING
    # A failed wake leaves the database where it rested; any other failure is a Failed phase.
    failure_phase = status.phase if want.wake and status.phase in _RESTING else Phase.FAILED
    if not compute.storage:
        return Step(Action.CREATE_STORAGE, Phase.PENDING, Reason.CREATING, "creating storage", failure_phase)
    if compute.compute in (Compute.ABSENT, Compute.STOPPED):
        reason = Reason.RESUMING if want.wake or not first_time else Reason.STARTING
        return Step(Action.START, starting_phase, reason, want.message or "starting Postgres", failure_phase)
    if compute.compute is Compute.STOPPING:
        return Step(Action.WAIT, Phase.RESUMING, Reason.STARTING, "waiting for the last shutdown to finish")
    if compute.compute is Compute.STARTING:
        phase = status.phase if status.phase in (Phase.PENDING, Phase.RESUMING) else starting_phase
        return Step(
            Action.WAIT, phase, Reason.STARTING, "waiting for Postgres to accept connections", failure_phase
        )
    if compute.route is Route.ACTIVATOR and not configured:
        phase = (
            status.phase if status.phase in (Phase.PENDING, Phase.RESUMING, Phase.ACTIVE) else starting_phase
        )
        return Step(
            Action.CONFIGURE,
            phase,
            Reason.RUNNING if phase is Phase.ACTIVE else Reason.STARTING,
            "applying the settings of its size",
            phase if phase is Phase.ACTIVE else failure_phase,
        )
    if compute.route is Route.ACTIVATOR:
        if status.phase is Phase.PAUSING:
            return Step(
                Action.ROUTE_DIRECT,
                Phase.ACTIVE,
                Reason.PAUSE_CANCELLED,
                f"pause cancelled: {want.message}",
                status.phase,
            )
        return Step(Action.ROUTE_DIRECT, Phase.ACTIVE, Reason.STARTED, "Postgres is ready", failure_phase)
    return Step(Action.NONE, Phase.ACTIVE, Reason.RUNNING, want.message)


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():.0f}s"
