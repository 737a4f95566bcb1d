"""The policy core: table tests that show their arithmetic, and properties that must always hold."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api import types, units
from controller.policy import access, capacity, plan, schedule, sizing
from controller.policy.inputs import Compute, ComputeState, Observation, ResizeState, Route, Tuning
from controller.policy.lifecycle import Action

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
GIB = 1024**3
TUNING = Tuning()


def spec(min_cu: float = 0.25, max_cu: float = 4.0, **changes: object) -> types.DatabaseSpec:
    return replace(types.DatabaseSpec(capacity=types.CapacitySpec(min_cu, max_cu)), **changes)  # type: ignore[arg-type]


def observation(
    cpu: float = 0.0,
    sessions: int = 0,
    memory: int = 0,
    *,
    at: datetime = NOW,
    since: datetime = NOW - timedelta(hours=1),
    cache: int = 0,
    lag: timedelta | None = None,
) -> Observation:
    return Observation(
        lag=lag,
        time=at,
        observing_since=since,
        client_sessions=sessions,
        cpu_cores=cpu,
        memory_working_set_bytes=memory,
        memory_cache_bytes=cache,
    )


RUNNING = ComputeState(
    storage=True, compute=Compute.RUNNING, route=Route.DIRECT, capacity=1.0, endpoint="e:1"
)


def db(
    the_spec: types.DatabaseSpec | None = None,
    *,
    phase: types.Phase = types.Phase.ACTIVE,
    current: float | None = 1.0,
    last_activity: datetime | None = NOW - timedelta(minutes=1),
    peaks: tuple[types.Peak, ...] = (),
    phase_since: datetime | None = NOW - timedelta(hours=1),
    asked: str = "",
    wake_request: str = "",
    learned: types.Learned | None = None,
    gaps: tuple[int, ...] = (),
) -> types.ServerlessDatabase:
    """`asked`: the newest wake request the store holds; `wake_request`: the one status answered last."""
    the_spec = the_spec or spec()
    return types.ServerlessDatabase(
        metadata=types.ObjectMeta(name="orders", namespace="shop"),
        wake_request=asked,
        spec=the_spec,
        status=types.DatabaseStatus(
            phase=phase,
            phase_since=phase_since,
            capacity=types.CapacityStatus(
                current=current, desired=current, peaks=peaks, learned=learned or types.Learned()
            ),
            # its settings and roles applied, as after a start
            compute=types.ComputeStatus(settings=current, access=access.digest(the_spec)),
            last_activity_time=last_activity,
            wake_request=wake_request,
            auto_pause=types.AutoPauseStatus(gaps=gaps),
        ),
    )


# -- the goal -------------------------------------------------------------------------------------

# spec (min, max, targetCPU), observation (cpu cores, sessions, memory), current, expected goal
GOALS = [
    pytest.param(0.25, 4, 0.9, 0.0, 0, 0, 1.0, 0.25, id="idle-goes-to-floor"),
    # 0.25 * ceil(1.7 / 0.9 / 0.25) = 0.25 * ceil(7.56) = 2.0
    pytest.param(0.25, 4, 0.9, 1.7, 0, 0, 2.0, 2.0, id="cpu-1.7-at-target-0.9"),
    # 0.25 * ceil(1.7 / 0.7 / 0.25) = 0.25 * ceil(9.71) = 2.5
    pytest.param(0.25, 4, 0.7, 1.7, 0, 0, 2.0, 2.5, id="cpu-1.7-at-target-0.7"),
    # pinned at the limit: 0.99 >= 0.99 * 1.0, demand unknown above it, so 3 * 1.0 = 3.0
    pytest.param(0.25, 4, 0.9, 0.99, 0, 0, 1.0, 3.0, id="saturated-triples"),
    # close to the limit is not saturated: 0.9 / 0.9 = 1.0
    pytest.param(0.25, 4, 0.9, 0.9, 0, 0, 1.0, 1.0, id="near-limit-is-not-saturated"),
    # 3.9 / 0.9 = 4.33, clamped to the ceiling 4
    pytest.param(0.25, 4, 0.9, 3.9, 0, 0, 4.0, 4.0, id="clamped-to-max"),
    # 250 sessions / 100 per CU = 2.5
    pytest.param(0.25, 4, 0.9, 0.1, 250, 0, 1.0, 2.5, id="connections"),
    # 5 GiB / (4 GiB * 0.8) = 1.5625, rounded up to 1.75
    pytest.param(0.25, 4, 0.9, 0.1, 0, 5 * GIB, 2.0, 1.75, id="memory"),
    pytest.param(1, 4, 0.9, 0.0, 0, 0, 1.0, 1.0, id="floor-above-quarter"),
]


@pytest.mark.parametrize(
    ("min_cu", "max_cu", "target", "cpu", "sessions", "memory", "current", "expected"), GOALS
)
def test_goal(
    min_cu: float,
    max_cu: float,
    target: float,
    cpu: float,
    sessions: int,
    memory: int,
    current: float,
    expected: float,
) -> None:
    the_spec = spec(min_cu, max_cu, scaling=types.ScalingSpec(target_cpu=target))
    got = capacity.goal(the_spec, observation(cpu, sessions, memory), current=current, tuning=TUNING)
    assert got.capacity == expected


def test_throttling_means_saturated_whatever_the_average() -> None:
    # throttled in 60% of CPU periods while the average is only 0.7 of 1 CU: demand is above the limit
    throttled = replace(observation(0.7, 1), cpu_throttled=0.6)
    assert capacity.goal(spec(), throttled, current=1.0, tuning=TUNING).capacity == 3.0
    briefly = replace(observation(0.7, 1), cpu_throttled=0.2)  # noise brushing the limit: 0.7 / 0.95 -> 0.75
    assert capacity.goal(spec(), briefly, current=1.0, tuning=TUNING).capacity == 0.75


def test_page_cache_counts_a_bounded_share() -> None:
    # 2 GiB working set + min(0.25 * 8 GiB, 0.5 * 2 GiB) = 3 GiB of cache; / (4 GiB * 0.8) = 0.94 -> 1.0
    # (the cache whole: 10 / 3.2 = 3.25 CU); the working set alone: 2 / 3.2 = 0.625 -> 0.75
    got = capacity.goal(spec(), observation(0.1, 0, 2 * GIB, cache=8 * GIB), current=2.0, tuning=TUNING)
    assert (got.capacity, got.cache_capacity, got.driver) == (0.75, 1.0, "memory (page cache)")
    # a small working set keeps little of a big cache: 0.25 GiB + 0.125 GiB -> 0.12 -> the floor
    small = capacity.goal(spec(), observation(0.0, 0, GIB // 4, cache=8 * GIB), current=2.0, tuning=TUNING)
    assert small.cache_capacity == 0.25


def test_a_goal_the_cache_drove_shrinks_more_slowly() -> None:
    the_db = db(spec(0.25, 4, scaling=types.ScalingSpec(scale_down_delay=timedelta(seconds=10))), current=1.0)
    cached = replace(observation(0.1, 1, 2 * GIB, cache=8 * GIB), time=NOW)
    first = plan.decide(db=the_db, compute=RUNNING, observation=cached, now=NOW)
    assert first.capacity == 1.0  # the cache's goal, 1.0 (above)
    later = NOW + timedelta(seconds=30)
    status = replace(
        the_db.status,
        capacity=types.CapacityStatus(1.0, 1.0, first.peaks, learned=first.learned),
    )
    quiet = replace(observation(0.1, 1, GIB // 4, cache=0), time=later)
    held = plan.decide(db=replace(the_db, status=status), compute=RUNNING, observation=quiet, now=later)
    # 30 s on, past the 10 s scaleDownDelay but not the cache's 2 minutes: still 1.0
    assert held.capacity == 1.0
    gone = NOW + timedelta(minutes=3)
    status = replace(status, capacity=replace(status.capacity, peaks=held.peaks, learned=held.learned))
    quiet = replace(quiet, time=gone)
    assert (
        plan.decide(db=replace(the_db, status=status), compute=RUNNING, observation=quiet, now=gone).capacity
        == 0.25
    )


@pytest.mark.parametrize(
    ("delay", "waited"),
    [
        pytest.param(timedelta(seconds=10), timedelta(minutes=2), id="short-delay-the-cache-window"),
        pytest.param(timedelta(minutes=5), timedelta(minutes=5), id="long-delay-the-spec-window"),
    ],
)
def test_a_goal_the_cache_drove_waits_the_slower_of_the_two_windows(
    delay: timedelta, waited: timedelta
) -> None:
    """A user's scaleDownDelay longer than the cache's two minutes holds cache-driven goals as long."""
    the_db = db(spec(0.25, 4, scaling=types.ScalingSpec(scale_down_delay=delay)), current=1.0)
    cached = observation(0.1, 1, 2 * GIB, cache=8 * GIB)
    first = plan.decide(db=the_db, compute=RUNNING, observation=cached, now=NOW)
    status = replace(
        the_db.status, capacity=types.CapacityStatus(1.0, 1.0, first.peaks, learned=first.learned)
    )
    tick = timedelta(seconds=2)
    for step in range(1, 200):
        now = NOW + step * tick
        quiet = observation(0.1, 1, GIB // 4, at=now)
        got = plan.decide(db=replace(the_db, status=status), compute=RUNNING, observation=quiet, now=now)
        if got.capacity != 1.0:
            break
        status = replace(status, capacity=replace(status.capacity, peaks=got.peaks, learned=got.learned))
    assert got.capacity == 0.25
    assert waited <= now - NOW <= waited + tick


@given(
    cpu_low=st.floats(0, 8),
    extra=st.floats(0, 8),
    sessions=st.integers(0, 500),
    memory=st.integers(0, 64 * GIB),
)
def test_goal_is_monotone_in_load(cpu_low: float, extra: float, sessions: int, memory: int) -> None:
    the_spec = spec(0.25, 16)
    low = capacity.goal(the_spec, observation(cpu_low, sessions, memory), current=16.0, tuning=TUNING)
    high = capacity.goal(
        the_spec, observation(cpu_low + extra, sessions, memory), current=16.0, tuning=TUNING
    )
    assert low.capacity <= high.capacity


# -- scale down window ----------------------------------------------------------------------------


def test_record_goal_keeps_only_what_the_window_needs() -> None:
    window = timedelta(minutes=5)
    peaks = capacity.record_goal((), 2.0, NOW, window)
    assert peaks == (types.Peak(2.0),)
    assert capacity.record_goal(peaks, 2.0, NOW + timedelta(seconds=5), window) == peaks  # no churn
    later = NOW + timedelta(minutes=1)
    peaks = capacity.record_goal(peaks, 1.0, later, window)
    assert peaks == (types.Peak(2.0, later), types.Peak(1.0))
    assert capacity.window_max(peaks) == 2.0
    # a higher goal supersedes everything below it
    assert capacity.record_goal(peaks, 3.0, later, window) == (types.Peak(3.0),)
    # the 2.0 peak expires five minutes after it ended
    expired = capacity.record_goal(peaks, 1.0, later + window + timedelta(seconds=1), window)
    assert expired == (types.Peak(1.0),)


def run_ticks(
    the_db: types.ServerlessDatabase, loads: list[float], *, tick: timedelta = timedelta(seconds=5)
) -> list[float]:
    """Drive decide through a series of CPU readings, applying each resize, and return the capacities."""
    return [c for c, _ in run_ticks_with_goals(the_db, loads, tick=tick)]


def run_ticks_with_goals(
    the_db: types.ServerlessDatabase, loads: list[float], *, tick: timedelta = timedelta(seconds=5)
) -> list[tuple[float, float]]:
    """Each tick's capacity after it, and the goal (with the cache's) it decided from."""
    out = []
    current = the_db.status.capacity.current or 0.25
    peaks, learned = the_db.status.capacity.peaks, the_db.status.capacity.learned
    for index, cpu in enumerate(loads):
        now = NOW + tick * index
        state = replace(RUNNING, capacity=current)
        status = replace(
            the_db.status,
            capacity=types.CapacityStatus(current, current, peaks, learned=learned),
            compute=replace(the_db.status.compute, settings=current),
        )
        got = plan.decide(
            db=replace(the_db, status=status), compute=state, observation=observation(cpu, 1, at=now), now=now
        )
        if got.action is Action.RESIZE and got.capacity is not None:
            current = got.capacity
        peaks, learned = got.peaks, got.learned
        assert got.goal is not None
        out.append((current, max(got.goal.capacity, got.goal.cache_capacity)))
    return out


def test_scale_up_is_immediate_and_down_waits_for_the_delay() -> None:
    the_db = db(
        spec(0.25, 4, scaling=types.ScalingSpec(scale_down_delay=timedelta(seconds=30))), current=0.25
    )
    # one tick at 2.7 cores, then idle: (2.7 + the least noise, 0.03 * 2.7) / 0.95 = 2.93 -> 3.0 at
    # once. The 3.0 goal holds until the next reading (t=5 s); 30 s of lower goals later (t=35 s) it
    # goes down to what the window still asks for, the floor.
    capacities = run_ticks(the_db, [2.7] + [0.0] * 20)
    assert capacities[0] == 3.0
    assert capacities[1:7] == [3.0] * 6  # t=5..30 s
    assert capacities[7:] == [0.25] * 14  # t=35 s on


def test_a_renewed_peak_restarts_the_window() -> None:
    the_db = db(
        spec(0.25, 4, scaling=types.ScalingSpec(scale_down_delay=timedelta(seconds=30))), current=0.25
    )
    capacities = run_ticks(the_db, [1.8, 0.0, 0.0, 0.0, 1.8] + [0.0] * 8)
    # (1.8 + 0.054) / 0.95 = 1.95 -> 2.0, asked again at t=20 s and held until t=25 s: nothing lower
    # until 25 + 30 = 55 s (load that comes and goes is noisy, and noise adds headroom above 2.0)
    assert capacities[0] == 2.0
    assert min(capacities[:11]) == 2.0


def test_schedule_floor_raises_capacity_and_prewarms() -> None:
    windows = (types.ScheduleSpec(cron="0 12 * * *", duration=timedelta(hours=2), min=1.5),)
    the_spec = spec(scaling=types.ScalingSpec(schedules=windows))
    assert schedule.active_floor(windows, NOW - timedelta(minutes=3), prewarm=TUNING.prewarm) is None
    assert schedule.active_floor(windows, NOW - timedelta(minutes=1), prewarm=TUNING.prewarm) == 1.5
    assert schedule.active_floor(windows, NOW + timedelta(hours=1, minutes=59), prewarm=TUNING.prewarm) == 1.5
    assert schedule.active_floor(windows, NOW + timedelta(hours=2), prewarm=TUNING.prewarm) is None
    got = plan.decide(
        db=db(the_spec, current=0.25),
        compute=replace(RUNNING, capacity=0.25),
        observation=observation(0.0),
        now=NOW,
    )
    assert (got.action, got.capacity) == (Action.RESIZE, 1.5)


def test_schedule_wakes_a_paused_database_before_the_window() -> None:
    windows = (types.ScheduleSpec(cron="0 12 * * *", duration=timedelta(hours=2), min=1.0),)
    paused = db(spec(scaling=types.ScalingSpec(schedules=windows)), phase=types.Phase.PAUSED, current=None)
    stopped = ComputeState(storage=True, compute=Compute.STOPPED, route=Route.ACTIVATOR)
    early = plan.decide(db=paused, compute=stopped, observation=None, now=NOW - timedelta(minutes=10))
    assert early.action is Action.NONE
    # it looks again when pre-warming starts: 12:00 - 2 min - 11:50 = 8 min
    assert early.requeue_after == timedelta(minutes=8)
    warm = plan.decide(db=paused, compute=stopped, observation=None, now=NOW - timedelta(minutes=1))
    assert (warm.action, warm.capacity) == (Action.START, 1.0)


# -- lifecycle ------------------------------------------------------------------------------------


def test_idle_database_pauses_through_the_activator_and_a_recheck() -> None:
    idle_since = NOW - timedelta(minutes=6)
    the_db = db(last_activity=idle_since)
    first = plan.decide(db=the_db, compute=RUNNING, observation=observation(), now=NOW)
    assert (first.action, first.phase) == (Action.ROUTE_ACTIVATOR, types.Phase.PAUSING)
    held = replace(RUNNING, route=Route.ACTIVATOR)
    pausing = db(phase=types.Phase.PAUSING, phase_since=NOW, last_activity=idle_since)
    # a reading from before the routing switch does not count
    assert (
        plan.decide(
            db=pausing, compute=held, observation=observation(at=NOW - timedelta(seconds=1)), now=NOW
        ).action
        is Action.RECHECK
    )
    later = NOW + timedelta(milliseconds=5)
    stop = plan.decide(db=pausing, compute=held, observation=observation(at=later), now=later)
    assert (stop.action, stop.phase) == (Action.STOP, types.Phase.PAUSING)
    cancel = plan.decide(db=pausing, compute=held, observation=observation(sessions=1, at=later), now=later)
    assert (cancel.action, cancel.phase, cancel.reason) == (
        Action.ROUTE_DIRECT,
        types.Phase.ACTIVE,
        types.Reason.PAUSE_CANCELLED,
    )
    stopped = ComputeState(storage=True, compute=Compute.STOPPED, route=Route.ACTIVATOR)
    done = plan.decide(db=pausing, compute=stopped, observation=None, now=later)
    assert (done.action, done.phase) == (Action.NONE, types.Phase.PAUSED)


def test_a_client_seen_at_the_recheck_but_not_in_postgres_cancels_the_pause() -> None:
    """A client the activator has in hand has no session yet: the reading says it was active."""
    idle_since = NOW - timedelta(minutes=6)
    held = replace(RUNNING, route=Route.ACTIVATOR)
    pausing = db(phase=types.Phase.PAUSING, phase_since=NOW, last_activity=idle_since)
    later = NOW + timedelta(milliseconds=5)
    reading = replace(observation(at=later), last_activity=later)
    cancel = plan.decide(db=pausing, compute=held, observation=reading, now=later)
    assert (cancel.action, cancel.phase, cancel.reason, cancel.message) == (
        Action.ROUTE_DIRECT,
        types.Phase.ACTIVE,
        types.Reason.PAUSE_CANCELLED,
        "pause cancelled: idle for 0s",  # the idle clock started again at the reading
    )


def test_idleness_is_never_assumed_before_observations_began() -> None:
    # last activity long ago, but the operator only watches since 2 minutes ago (it restarted)
    the_db = db(last_activity=NOW - timedelta(days=1))
    got = plan.decide(
        db=the_db, compute=RUNNING, observation=observation(since=NOW - timedelta(minutes=2)), now=NOW
    )
    assert got.phase is types.Phase.ACTIVE


def test_a_client_that_came_and_went_between_readings_is_activity() -> None:
    the_db = db(last_activity=NOW - timedelta(minutes=10))
    seen = replace(observation(), last_activity=NOW - timedelta(seconds=2))
    got = plan.decide(db=the_db, compute=RUNNING, observation=seen, now=NOW)
    assert got.phase is types.Phase.ACTIVE
    assert got.last_activity_time == NOW - timedelta(seconds=2)


def test_open_sessions_leave_the_last_activity_alone_until_the_last_one_ends() -> None:
    """A busy database's status is not rewritten as time goes by: only the session count would move it."""
    opened = NOW - timedelta(hours=2)
    busy = replace(db(last_activity=opened), status=replace(db(last_activity=opened).status, connections=3))
    for minutes in (1, 30, 90):
        later = NOW + timedelta(minutes=minutes)
        got = plan.decide(db=busy, compute=RUNNING, observation=observation(sessions=3, at=later), now=later)
        assert (got.phase, got.last_activity_time, got.connections) == (types.Phase.ACTIVE, opened, 3)
    ended = NOW + timedelta(hours=3)
    got = plan.decide(db=busy, compute=RUNNING, observation=observation(at=ended), now=ended)
    assert got.last_activity_time == ended  # exact where idleness starts


def test_paused_database_parks_after_the_park_delay_and_wakes_on_request() -> None:
    the_spec = spec(auto_park=types.AutoParkSpec(idle_after=timedelta(hours=1)))
    stopped = ComputeState(storage=True, compute=Compute.STOPPED, route=Route.ACTIVATOR)
    paused = db(the_spec, phase=types.Phase.PAUSED, phase_since=NOW - timedelta(minutes=59), current=None)
    waiting = plan.decide(db=paused, compute=stopped, observation=None, now=NOW)
    assert waiting.action is Action.NONE
    assert waiting.requeue_after == timedelta(minutes=1)
    park = plan.decide(db=paused, compute=stopped, observation=None, now=NOW + timedelta(minutes=1))
    assert (park.action, park.phase) == (Action.RELEASE, types.Phase.PARKING)
    absent = ComputeState(storage=True, compute=Compute.ABSENT, route=Route.ACTIVATOR)
    parked = db(the_spec, phase=types.Phase.PARKED, current=None)
    rest = plan.decide(db=parked, compute=absent, observation=None, now=NOW)
    assert (rest.action, rest.phase, rest.requeue_after) == (Action.NONE, types.Phase.PARKED, None)
    woken = replace(parked, wake_request="w1")
    wake = plan.decide(db=woken, compute=absent, observation=None, now=NOW)
    # a client is waiting with a load nobody has measured: it starts warm, at 1 CU, not at the floor
    assert (wake.action, wake.phase, wake.wake, wake.capacity) == (
        Action.START,
        types.Phase.RESUMING,
        True,
        1.0,
    )
    assert wake.failure_phase is types.Phase.PARKED  # a failed wake leaves it parked, not Failed
    answered = replace(woken, status=replace(woken.status, wake_request="w1"))
    assert plan.decide(db=answered, compute=absent, observation=None, now=NOW).action is Action.NONE


def test_new_database_creates_storage_then_starts_at_the_floor() -> None:
    new = db(spec(1, 4), phase=types.Phase.PENDING, current=None, last_activity=None)
    nothing = ComputeState(storage=False, compute=Compute.ABSENT, route=Route.ACTIVATOR)
    assert plan.decide(db=new, compute=nothing, observation=None, now=NOW).action is Action.CREATE_STORAGE
    made = replace(nothing, storage=True)
    start = plan.decide(db=new, compute=made, observation=None, now=NOW)
    assert (start.action, start.phase, start.capacity) == (Action.START, types.Phase.PENDING, 1.0)
    ready = ComputeState(storage=True, compute=Compute.RUNNING, route=Route.ACTIVATOR, capacity=1.0)
    # the settings of its size before any client reaches it directly
    configure = plan.decide(db=new, compute=ready, observation=None, now=NOW)
    assert (configure.action, configure.capacity) == (Action.CONFIGURE, 1.0)
    assert configure.compute.settings == 1.0
    configured = replace(new, status=replace(new.status, compute=configure.compute))
    assert plan.decide(db=configured, compute=ready, observation=None, now=NOW).action is Action.ROUTE_DIRECT


@pytest.mark.parametrize(
    ("state", "resting", "then"),
    [
        (types.State.PAUSED, types.Phase.PAUSING, Action.PROVISION),
        (types.State.PARKED, types.Phase.PARKING, Action.NONE),
    ],
)
def test_a_database_made_at_rest_gets_storage_and_an_endpoint_to_wake_by(
    state: types.State, resting: types.Phase, then: Action
) -> None:
    new = db(spec(state=state), phase=types.Phase.PENDING, current=None, last_activity=None)
    nothing = ComputeState(storage=False, compute=Compute.ABSENT, route=Route.ACTIVATOR)
    first = plan.decide(db=new, compute=nothing, observation=None, now=NOW)
    assert (first.action, first.phase) == (Action.CREATE_STORAGE, resting)
    made = plan.decide(db=new, compute=replace(nothing, storage=True), observation=None, now=NOW)
    assert made.action is then


# -- what is known of the running server (status.compute) ----------------------------------------


def test_a_server_gets_the_settings_of_its_size_before_clients_reach_it_and_after_it_grows() -> None:
    started = replace(RUNNING, route=Route.ACTIVATOR, incarnation="pod-a", capacity=2.0)
    resuming = db(phase=types.Phase.RESUMING, current=2.0)
    unknown = replace(resuming, status=replace(resuming.status, compute=types.ComputeStatus()))
    configure = plan.decide(db=unknown, compute=started, observation=None, now=NOW)
    assert (configure.action, configure.capacity) == (Action.CONFIGURE, 2.0)
    # ... and the roles the spec asks for (the data never had them)
    assert configure.configure_access
    assert configure.compute == types.ComputeStatus(
        "pod-a", settings=2.0, access=access.digest(unknown.spec), access_time=NOW
    )
    # Active, it grew to 3 CU (the kubelet reports the new size): its settings follow, a tick later.
    grown = replace(RUNNING, incarnation="pod-a", capacity=3.0)
    active = db(current=3.0, peaks=(types.Peak(3.0),))
    active = replace(
        active,
        status=replace(
            active.status, compute=replace(active.status.compute, incarnation="pod-a", settings=2.0)
        ),
    )
    follow = plan.decide(db=active, compute=grown, observation=observation(2.6, 1), now=NOW)  # 2.6 / 0.9 -> 3
    assert (follow.action, follow.capacity, follow.requeue_after) == (Action.CONFIGURE, 3.0, TUNING.tick)


def test_a_stop_leaves_the_wakes_settings_for_the_next_server() -> None:
    running = db(current=1.0, last_activity=NOW - timedelta(hours=1), phase=types.Phase.PAUSING)
    running = replace(
        running,
        status=replace(
            running.status, compute=replace(running.status.compute, incarnation="pod-a", settings=2.0)
        ),
    )
    held = replace(RUNNING, route=Route.ACTIVATOR, incarnation="pod-a", capacity=1.0)
    stop = plan.decide(db=running, compute=held, observation=observation(0.0, at=NOW), now=NOW)
    assert stop.action is Action.STOP
    # 1 CU is where a wake starts (Tuning.wake_capacity); the next server finds those settings
    assert stop.compute == types.ComputeStatus(settings=stop.capacity, access=running.status.compute.access)
    paused = replace(running, status=replace(running.status, phase=types.Phase.PAUSED, compute=stop.compute))
    woken = replace(paused, wake_request="w")
    stopped = ComputeState(storage=True, compute=Compute.STOPPED, route=Route.ACTIVATOR)
    start = plan.decide(db=woken, compute=stopped, observation=None, now=NOW)
    assert (start.action, start.capacity) == (Action.START, stop.capacity)
    after = replace(woken, status=replace(woken.status, phase=types.Phase.RESUMING, compute=start.compute))
    ready = replace(held, incarnation="pod-b", capacity=start.capacity)
    assert plan.decide(db=after, compute=ready, observation=None, now=NOW).action is Action.ROUTE_DIRECT


def test_a_refused_resize_caps_the_size_for_that_server_only() -> None:
    busy = db(current=1.0)
    busy = replace(
        busy,
        status=replace(busy.status, compute=replace(busy.status.compute, incarnation="pod-a", settings=1.0)),
    )
    refused = replace(
        RUNNING,
        incarnation="pod-a",
        resize=ResizeState.INFEASIBLE,
        resize_wanted=3.5,
        resize_message="Node didn't have enough capacity: cpu",
    )
    got = plan.decide(db=busy, compute=refused, observation=observation(3.0, 1), now=NOW)  # 3 / 0.9 -> 3.5
    # the limit is one step below what the node refused: 3.5 - 0.25 = 3.25
    assert (got.known.limit, got.capacity) == (3.25, 3.25)
    assert got.resize_blocked is not None
    assert got.resize_blocked[0] is types.Reason.RESIZE_INFEASIBLE
    remembered = replace(busy, status=replace(busy.status, compute=got.known))
    calm = replace(refused, resize=ResizeState.NONE, resize_wanted=None)
    assert plan.decide(db=remembered, compute=calm, observation=observation(3.5, 1), now=NOW).capacity == 3.25
    # another server (a new pod, perhaps on another node) is not bound by it
    other = replace(calm, incarnation="pod-b")
    assert plan.decide(db=remembered, compute=other, observation=observation(3.5, 1), now=NOW).capacity == 4.0


def test_a_resize_deferred_for_too_long_counts_as_refused() -> None:
    busy = db(current=1.0)
    busy = replace(
        busy,
        status=replace(busy.status, compute=replace(busy.status.compute, incarnation="pod-a", settings=1.0)),
    )

    def deferred(for_: timedelta) -> ComputeState:
        return replace(
            RUNNING,
            incarnation="pod-a",
            resize=ResizeState.DEFERRED,
            resize_wanted=2.0,
            resize_pending_since=NOW - for_,
        )

    waiting = plan.decide(
        db=busy, compute=deferred(timedelta(seconds=30)), observation=observation(1.7, 1), now=NOW
    )
    assert waiting.known.limit is None
    assert waiting.resize_blocked is not None
    assert waiting.resize_blocked[0] is types.Reason.RESIZE_DEFERRED
    given_up = plan.decide(
        db=busy, compute=deferred(timedelta(seconds=61)), observation=observation(1.7, 1), now=NOW
    )
    assert given_up.known.limit == 1.75  # 2.0 - 0.25
    assert given_up.resize_blocked is not None
    assert given_up.resize_blocked[0] is types.Reason.RESIZE_INFEASIBLE


def test_stale_observation_holds_size_never_pauses_and_degrades() -> None:
    old = observation(0.0, at=NOW - timedelta(minutes=2))
    the_db = db(last_activity=NOW - timedelta(hours=1), current=2.0)
    got = plan.decide(db=the_db, compute=replace(RUNNING, capacity=2.0), observation=old, now=NOW)
    assert (got.action, got.phase, got.capacity) == (Action.NONE, types.Phase.ACTIVE, 2.0)
    assert got.degraded is not None
    assert got.degraded[0] is types.Reason.METRICS_STALE


def test_advisory_limits_are_reported() -> None:
    compute = replace(RUNNING, limits_enforced=False, limits_message="cgroup v2 is read-only")
    got = plan.decide(db=db(), compute=compute, observation=observation(0.5, 1), now=NOW)
    assert got.degraded == (types.Reason.LIMITS_ADVISORY, "cgroup v2 is read-only")


# -- properties -----------------------------------------------------------------------------------

steps = st.integers(1, 64).map(lambda n: n * units.CU_STEP)


@st.composite
def specs(draw: st.DrawFn) -> types.DatabaseSpec:
    low = draw(steps.filter(lambda v: v <= 16))
    high = draw(steps.filter(lambda v: v >= low))
    state = draw(st.sampled_from(types.State))
    return spec(
        low,
        high,
        state=state,
        scaling=types.ScalingSpec(
            target_cpu=draw(st.floats(0.1, 1.0)),
            scale_down_delay=timedelta(seconds=draw(st.integers(0, 600))),
        ),
        auto_pause=types.AutoPauseSpec(
            enabled=draw(st.booleans()),
            idle_after=timedelta(seconds=draw(st.integers(1, 900))),
            idle_after_auto=draw(st.booleans()),
        ),
    )


ago = st.integers(0, 3600).map(lambda s: NOW - timedelta(seconds=s))


@st.composite
def learned_states(draw: st.DrawFn) -> types.Learned:
    """Anything a status may hold of what was learned: the properties hold whatever it says."""
    return types.Learned(
        load=tuple(
            sorted(
                draw(st.lists(st.builds(types.LoadSample, ago, st.floats(0, 70)), max_size=14)),
                key=lambda s: s.time,
            )
        ),
        shortfalls=tuple(sorted(draw(st.lists(ago, max_size=8)))),
        cache_peaks=tuple(draw(st.lists(st.builds(types.Peak, steps, st.none() | ago), max_size=3))),
        surges=tuple(
            sorted(
                draw(st.lists(st.builds(types.LoadSample, ago, st.floats(0, 70)), max_size=8)),
                key=lambda s: s.time,
            )
        ),
        grown_at=draw(st.none() | ago),
    )


@st.composite
def situations(
    draw: st.DrawFn,
) -> tuple[types.ServerlessDatabase, ComputeState, Observation | None, datetime]:
    the_spec = draw(specs())
    compute = ComputeState(
        storage=draw(st.booleans()),
        compute=draw(st.sampled_from(Compute)),
        route=draw(st.sampled_from(Route)),
        capacity=draw(st.none() | steps),
        limits_enforced=draw(st.booleans()),
    )
    phase = draw(st.sampled_from(types.Phase))
    peaks = tuple(
        types.Peak(c, NOW - timedelta(seconds=s) if s else None)
        for c, s in draw(st.lists(st.tuples(steps, st.integers(0, 900)), max_size=4))
    )
    the_db = db(
        the_spec,
        phase=phase,
        current=draw(st.none() | steps),
        peaks=peaks,
        last_activity=draw(st.none() | st.just(NOW - timedelta(seconds=draw(st.integers(0, 4000))))),
        phase_since=NOW - timedelta(seconds=draw(st.integers(0, 4000))),
        asked=draw(st.sampled_from(["", "w1"])),
        wake_request=draw(st.sampled_from(["", "w1"])),
        learned=draw(learned_states()),
        gaps=tuple(draw(st.lists(st.integers(60, 86_400), max_size=32))),
    )
    reading = draw(
        st.none()
        | st.builds(
            observation,
            cpu=st.floats(0, 70),
            sessions=st.integers(0, 3),
            memory=st.integers(0, 300 * GIB),
            at=st.integers(0, 120).map(lambda s: NOW - timedelta(seconds=s)),
            since=st.integers(0, 4000).map(lambda s: NOW - timedelta(seconds=s)),
            lag=st.none() | st.integers(0, 60).map(lambda s: timedelta(seconds=s)),
        )
    )
    return the_db, compute, reading, NOW


@settings(max_examples=600)
@given(situations())
def test_capacity_stays_within_bounds_and_on_steps(
    situation: tuple[types.ServerlessDatabase, ComputeState, Observation | None, datetime],
) -> None:
    the_db, compute, reading, now = situation
    got = plan.decide(db=the_db, compute=compute, observation=reading, now=now)
    if got.capacity is not None:
        assert the_db.spec.capacity.min <= got.capacity <= the_db.spec.capacity.max
        assert units.is_cu_step(got.capacity)


@settings(max_examples=600)
@given(situations())
def test_a_database_with_a_client_session_is_never_paused(
    situation: tuple[types.ServerlessDatabase, ComputeState, Observation | None, datetime],
) -> None:
    the_db, compute, reading, now = situation
    auto = replace(the_db, spec=replace(the_db.spec, state=types.State.AUTO))
    got = plan.decide(db=auto, compute=compute, observation=reading, now=now)
    if reading is not None and reading.client_sessions > 0 and compute.compute is Compute.RUNNING:
        assert got.action not in (Action.STOP, Action.RELEASE)
        if auto.status.phase is types.Phase.ACTIVE:
            assert got.action is not Action.ROUTE_ACTIVATOR


@settings(max_examples=600)
@given(situations(), st.sampled_from([types.State.ACTIVE, types.State.PAUSED, types.State.PARKED]))
def test_the_manual_override_always_wins(
    situation: tuple[types.ServerlessDatabase, ComputeState, Observation | None, datetime],
    state: types.State,
) -> None:
    the_db, compute, reading, now = situation
    manual = replace(the_db, spec=replace(the_db.spec, state=state))
    got = plan.decide(db=manual, compute=compute, observation=reading, now=now)
    if state is types.State.ACTIVE:
        assert got.action not in (Action.ROUTE_ACTIVATOR, Action.STOP, Action.RELEASE, Action.RECHECK)
        assert got.phase in (types.Phase.PENDING, types.Phase.RESUMING, types.Phase.ACTIVE)
    else:
        assert got.action not in (Action.START, Action.ROUTE_DIRECT, Action.RESIZE, Action.RECHECK)
        resting = {
            types.State.PAUSED: (types.Phase.PAUSING, types.Phase.PAUSED),
            types.State.PARKED: (types.Phase.PARKING, types.Phase.PARKED),
        }
        assert got.phase in resting[state]


@settings(max_examples=300)
@given(situations())
def test_the_same_inputs_give_the_same_plan(
    situation: tuple[types.ServerlessDatabase, ComputeState, Observation | None, datetime],
) -> None:
    the_db, compute, reading, now = situation
    assert plan.decide(db=the_db, compute=compute, observation=reading, now=now) == plan.decide(
        db=the_db, compute=compute, observation=reading, now=now
    )


@settings(max_examples=400)
@given(situations())
def test_never_acts_on_stale_data(
    situation: tuple[types.ServerlessDatabase, ComputeState, Observation | None, datetime],
) -> None:
    the_db, compute, reading, now = situation
    auto = replace(
        the_db,
        spec=replace(the_db.spec, state=types.State.AUTO),
        status=replace(the_db.status, phase=types.Phase.ACTIVE),
    )
    stale = (
        None if reading is None else replace(reading, time=now - TUNING.stale_after - timedelta(seconds=1))
    )
    running = replace(compute, compute=Compute.RUNNING, route=Route.DIRECT, storage=True)
    got = plan.decide(db=auto, compute=running, observation=stale, now=now)
    assert got.action is not Action.ROUTE_ACTIVATOR
    current = running.capacity if running.capacity is not None else auto.status.capacity.current
    if got.action is Action.RESIZE and got.capacity is not None and current is not None:
        # only the bounds move it: up to a floor, or down to a lowered ceiling
        assert got.capacity > current or got.capacity == auto.spec.capacity.max


@settings(max_examples=200)
@given(st.lists(st.floats(0, 5), min_size=2, max_size=60), st.integers(5, 120))
def test_never_scales_down_before_the_delay(loads: list[float], delay_s: int) -> None:
    delay = timedelta(seconds=delay_s)
    the_db = db(spec(0.25, 8, scaling=types.ScalingSpec(scale_down_delay=delay)), current=0.25)
    tick = timedelta(seconds=5)
    ticks = run_ticks_with_goals(the_db, loads, tick=tick)
    capacities = [c for c, _ in ticks]
    for index in range(1, len(capacities)):
        if capacities[index] < capacities[index - 1]:
            # every goal within the window before this tick was below the capacity it left...
            window = [i for i in range(index + 1) if (index - i) * tick < delay]
            goals = [ticks[i][1] for i in window]
            assert max(goals) < capacities[index - 1]
            # ...and it goes no lower than the highest of them
            assert capacities[index] >= max(goals)


def test_sizing_follows_floor_and_ceiling() -> None:
    restart = sizing.restart_settings(spec(0.25, 4))
    # shared_buffers from the floor: 0.25 * 4 GiB / 8 = 128 MB; max_connections from the ceiling: 4 * 450
    assert restart["shared_buffers"] == "128MB"
    assert restart["max_connections"] == "1802"
    assert sizing.reloadable_settings(1.0)["work_mem"] == "16MB"
    assert sizing.reloadable_settings(0.25)["work_mem"] == "4MB"
    assert sizing.reloadable_settings(2.0)["effective_cache_size"] == "6GB"
    assert sizing.reloadable_settings(4.0)["max_parallel_workers_per_gather"] == "2"


# -- declared roles and databases -------------------------------------------------------------------

DECLARING = spec(roles=(types.RoleSpec("alice", login=True, password_secret="alice-pw"),))


def applied_at(database: types.ServerlessDatabase, when: datetime) -> types.ServerlessDatabase:
    compute = replace(database.status.compute, access_time=when)
    return replace(database, status=replace(database.status, compute=compute))


def test_declared_roles_are_applied_again_once_a_resync_has_passed() -> None:
    fresh = applied_at(db(DECLARING), NOW - TUNING.catalog_resync + timedelta(seconds=1))
    reading = observation(0.85, 1)  # a goal of 1 CU, the size it has
    assert plan.decide(db=fresh, compute=RUNNING, observation=reading, now=NOW).action is Action.NONE
    due = applied_at(db(DECLARING), NOW - TUNING.catalog_resync)
    again = plan.decide(db=due, compute=RUNNING, observation=reading, now=NOW)
    assert (again.action, again.configure_access, again.compute.access_time) == (Action.CONFIGURE, True, NOW)
    # a spec that declares nothing has nothing to drift: no pass over the catalog on a timer
    plain = applied_at(db(), NOW - timedelta(days=1))
    assert plan.decide(db=plain, compute=RUNNING, observation=reading, now=NOW).action is Action.NONE


def test_a_role_change_never_wakes_a_resting_database_and_is_applied_before_its_clients() -> None:
    absent = ComputeState(storage=True, compute=Compute.ABSENT, route=Route.ACTIVATOR)
    stopped = replace(absent, compute=Compute.STOPPED)
    for resting, compute in ((types.Phase.PARKED, absent), (types.Phase.PAUSED, stopped)):
        before = applied_at(db(phase=resting, current=None, phase_since=NOW), NOW - timedelta(days=3))
        changed = replace(before, spec=DECLARING)  # the digest in status is the old spec's
        rest = plan.decide(db=changed, compute=compute, observation=None, now=NOW)
        assert (rest.action, rest.phase) == (Action.NONE, resting)
        assert rest.compute.access == before.status.compute.access  # still owed, kept for the wake
        woken = replace(changed, wake_request="w1")
        assert plan.decide(db=woken, compute=compute, observation=None, now=NOW).action is Action.START
        # started, still behind the activator: the roles go in first, then the clients
        up = ComputeState(storage=True, compute=Compute.RUNNING, route=Route.ACTIVATOR, capacity=1.0)
        resuming = replace(woken, status=replace(woken.status, phase=types.Phase.RESUMING, wake_request="w1"))
        configure = plan.decide(db=resuming, compute=up, observation=None, now=NOW)
        assert (configure.action, configure.configure_access) == (Action.CONFIGURE, True)
        configured = replace(resuming, status=replace(resuming.status, compute=configure.compute))
        route = plan.decide(db=configured, compute=up, observation=None, now=NOW)
        assert route.action is Action.ROUTE_DIRECT


def test_a_wake_applies_declared_roles_again_when_they_are_older_than_a_resync() -> None:
    """The Secret may hold a new password, or the catalog have drifted, while it rested."""
    up = ComputeState(storage=True, compute=Compute.RUNNING, route=Route.ACTIVATOR, capacity=1.0)
    resuming = applied_at(db(DECLARING, phase=types.Phase.RESUMING), NOW - timedelta(hours=2))
    configure = plan.decide(db=resuming, compute=up, observation=None, now=NOW)
    assert (configure.action, configure.configure_access) == (Action.CONFIGURE, True)


def test_the_access_digest_follows_the_spec_it_is_asked_of_not_the_object() -> None:
    first = types.DatabaseSpec(access=types.AccessSpec(allowed_namespaces=("web",)))
    digest = access.digest(first)
    assert access.digest(first) == digest
    assert access.digest(replace(first)) == digest  # an equal spec decoded again: the same roles
    del first  # its memory may hold the next spec: that one gets its own digest
    for namespaces in [("web", "jobs"), ("web",), ()] * 100:
        spec = types.DatabaseSpec(access=types.AccessSpec(allowed_namespaces=namespaces))
        assert (access.digest(spec) == digest) == (namespaces == ("web",))
