"""The goal looks ahead: trend, lag and noise; jumps that recur; `idleAfter: Auto`; all of it in status."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api import codec, types
from controller.policy import access, forecast, idle, plan, surges
from controller.policy.inputs import Compute, ComputeState, Observation, Route, Tuning
from controller.policy.lifecycle import Action
from controller.reconciler import status as status_of

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
TICK = timedelta(seconds=2)
TUNING = Tuning()
# The arithmetic below is written for these, whatever the defaults are tuned to.
PLAIN = Tuning(noise_headroom=3.0, noise_floor=0.03, metric_lag=timedelta(seconds=5), shortfall_headroom=0.0)


def reading(
    cpu: float, *, at: datetime = NOW, lag: timedelta | None = None, sessions: int = 1
) -> Observation:
    return Observation(
        time=at,
        observing_since=NOW - timedelta(hours=1),
        client_sessions=sessions,
        cpu_cores=cpu,
        cpu_throttled=0.0,
        memory_working_set_bytes=0,
        memory_cache_bytes=0,
        lag=lag,
    )


def samples(*cores: float, every: float = 10.0, before: float = 5.0) -> tuple[types.LoadSample, ...]:
    """Readings every `every` seconds, the last `before` + `every` seconds before NOW's reading time."""
    newest = NOW - timedelta(seconds=before)
    count = len(cores)
    return tuple(
        types.LoadSample(newest - timedelta(seconds=every * (count - i)), c) for i, c in enumerate(cores)
    )


# -- the forecast: spec (tuning), observation (history, reading, lag), expected --------------------

FORECASTS = [
    # flat at 1.0: no slope; noise at its floor, 0.03 * 1.0; headroom 3 * 0.03 = 0.09
    pytest.param(samples(1.0, 1.0, 1.0, 1.0, 1.0), 1.0, None, 1.0, 0.0, 1.09, id="flat"),
    # rising 0.1 per 10 s = 0.01/s; horizon 5 s lag + 2 s resize + 2 s tick = 9 s:
    # 1.5 + 0.01 * 9 = 1.59, plus 3 * 0.03 * 1.5 = 0.135 -> 1.725
    pytest.param(samples(1.0, 1.1, 1.2, 1.3, 1.4), 1.5, None, 1.59, 0.01, 1.725, id="ramp-local-lag"),
    # the same ramp read through Prometheus, 30 s behind: horizon 34 s, 1.5 + 0.34 = 1.84, + 0.135
    pytest.param(
        samples(1.0, 1.1, 1.2, 1.3, 1.4, before=30), 1.5, 30, 1.84, 0.01, 1.975, id="ramp-prometheus-lag"
    ),
    # a jump is one step among flat ones: the median step is 0, so no trend, and the level is the reading
    pytest.param(samples(0.5, 0.5, 0.5, 0.5, 0.5), 2.0, None, 2.0, 0.0, 2.18, id="jump-is-a-level"),
    # falling: not extrapolated down (the scale-down window waits for the readings instead)
    pytest.param(samples(1.5, 1.4, 1.3, 1.2, 1.1), 1.0, None, 1.0, -0.01, 1.09, id="falling"),
    # too few readings since a start to say anything of a trend: the reading and the noise floor
    pytest.param(samples(1.0, 1.2), 1.4, None, 1.4, 0.0, 1.526, id="too-few-readings"),
]


@pytest.mark.parametrize(("history", "cpu", "lag_s", "expected", "slope", "upper"), FORECASTS)
def test_forecast(
    history: tuple[types.LoadSample, ...],
    cpu: float,
    lag_s: float | None,
    expected: float,
    slope: float,
    upper: float,
) -> None:
    lag = timedelta(seconds=lag_s) if lag_s is not None else None
    got = forecast.forecast(history, reading(cpu, lag=lag), now=NOW, shortfalls=0, tuning=PLAIN)
    assert got is not None
    assert got.slope == pytest.approx(slope)
    assert got.expected == pytest.approx(expected)
    assert got.upper == pytest.approx(upper)


def test_noisy_load_gets_more_headroom_than_flat_and_shortfalls_widen_it() -> None:
    noisy = samples(1.0, 1.2, 0.9, 1.1, 0.8, 1.2)
    flat = forecast.forecast(
        samples(1.0, 1.0, 1.0, 1.0, 1.0), reading(1.0), now=NOW, shortfalls=0, tuning=PLAIN
    )
    rough = forecast.forecast(noisy, reading(1.0), now=NOW, shortfalls=0, tuning=PLAIN)
    widened = forecast.forecast(
        noisy, reading(1.0), now=NOW, shortfalls=2, tuning=replace(PLAIN, shortfall_headroom=0.5)
    )
    assert flat is not None
    assert rough is not None
    assert widened is not None
    assert flat.headroom < rough.headroom
    # two remembered shortfalls at 0.5 each: the headroom doubles
    assert widened.headroom == pytest.approx(2 * rough.headroom)


def recorded(loads: list[float]) -> tuple[tuple[types.LoadSample, ...], int]:
    """The kept samples after readings every 2 s, and how many of the readings changed them."""
    load: tuple[types.LoadSample, ...] = ()
    changes = 0
    for index, cpu in enumerate(loads):
        after = forecast.record_load(load, reading(cpu, at=NOW + TICK * index), TUNING)
        changes += after != load
        load = after
    return load, changes


def test_a_steady_load_is_kept_once_however_long_it_lasts() -> None:
    # ten minutes at 1.0 core, 2% apart reading to reading: the same load, one change of status
    _, changes = recorded([1.0 + 0.01 * (-1) ** index for index in range(300)])
    assert changes == 1
    # ten minutes idle but for the operator's own monitoring queries
    _, changes = recorded([0.001 * (index % 3) for index in range(300)])
    assert changes == 1


def test_a_moving_load_is_kept_once_per_interval_and_bounded() -> None:
    # four minutes of a ramp, 0.01 cores a second: one kept per 10 s, 24 changes of status, not 120
    load, changes = recorded(RAMP)
    assert changes == 24
    # the window's samples, and the one it starts with
    assert len(load) <= TUNING.trend_window / TUNING.sample_every + 2


def test_a_kept_sample_holds_until_the_next() -> None:
    """Held at 0.2 for minutes, then one reading of 0.3: the window's usual load is still 0.2."""
    load = (
        types.LoadSample(NOW - timedelta(minutes=10), 0.2),
        types.LoadSample(NOW - timedelta(seconds=6), 0.3),
    )
    assert forecast.baseline(load, reading(1.0), TUNING) == 0.2


# -- the goal through decide ----------------------------------------------------------------------


def database(
    *, current: float = 1.0, learned: types.Learned | None = None, **spec: object
) -> types.ServerlessDatabase:
    the_spec = replace(types.DatabaseSpec(capacity=types.CapacitySpec(0.25, 4.0)), **spec)  # type: ignore[arg-type]
    return types.ServerlessDatabase(
        metadata=types.ObjectMeta(name="orders", namespace="shop"),
        spec=the_spec,
        status=types.DatabaseStatus(
            phase=types.Phase.ACTIVE,
            phase_since=NOW - timedelta(hours=1),
            capacity=types.CapacityStatus(current, current, learned=learned or types.Learned()),
            compute=applied(current, the_spec),
            last_activity_time=NOW,
            connections=1,
        ),
    )


def applied(capacity: float, the_spec: types.DatabaseSpec) -> types.ComputeStatus:
    """The settings of its size and the spec's roles applied, as after a start."""
    return types.ComputeStatus(settings=capacity, access=access.digest(the_spec))


def running(capacity: float) -> ComputeState:
    return ComputeState(storage=True, compute=Compute.RUNNING, route=Route.DIRECT, capacity=capacity)


def drive(
    db: types.ServerlessDatabase,
    loads: list[float],
    *,
    lag: timedelta | None = None,
    restart_at: int | None = None,
    tuning: Tuning = TUNING,
) -> list[tuple[Action, float | None]]:
    """Run decide as the reconciler does, tick by tick; at `restart_at` status is all a new operator has."""
    decided = []
    current = db.status.capacity.current or 0.25
    for index, cpu in enumerate(loads):
        now = NOW + TICK * index
        if index == restart_at:
            stored = json.loads(json.dumps(codec.encode_status(db.status)))
            db = replace(db, status=codec.decode_status(stored))
        compute = running(current)
        got = plan.decide(
            db=db, compute=compute, observation=reading(cpu, at=now, lag=lag), now=now, tuning=tuning
        )
        db = replace(db, status=status_of.next_status(db, status_of.Outcome(got, compute), now))
        if got.action is Action.RESIZE and got.capacity is not None:
            current = got.capacity
        decided.append((got.action, got.capacity))
    return decided


RAMP = [0.3 + 0.01 * second for second in range(0, 240, 2)]
"""From 0.3 cores up 0.01 a second for four minutes: 0.6 CU a minute."""


def test_a_ramp_is_met_ahead_of_the_readings_and_further_ahead_when_they_lag() -> None:
    def capacity_at_end(lag: timedelta | None) -> float:
        capacity = drive(database(current=0.5), RAMP, lag=lag)[-1][1]
        assert capacity is not None
        return capacity

    # Four minutes in, the reading says about 2.7 cores; a goal without a trend would be ~3.0 CU.
    local, prometheus = capacity_at_end(None), capacity_at_end(timedelta(seconds=30))
    assert local >= RAMP[-1] + 0.01 * 9  # 9 s ahead: lag, resize, tick
    assert prometheus > local  # 34 s ahead along the same trend


def test_a_steady_database_learns_nothing_new() -> None:
    """Ten minutes at half a core, wobbling: after the first minute its capacity status never changes."""
    db = database(current=1.0)
    current, seen = 1.0, []
    for index in range(300):
        now = NOW + TICK * index
        compute = running(current)
        observation = reading(0.5 + 0.005 * (-1) ** index, at=now)
        got = plan.decide(db=db, compute=compute, observation=observation, now=now)
        db = replace(db, status=status_of.next_status(db, status_of.Outcome(got, compute), now))
        current = got.capacity if got.action is Action.RESIZE and got.capacity is not None else current
        seen.append(db.status.capacity)
    assert current == 0.75
    assert len(set(seen[30:])) == 1


@pytest.mark.parametrize("restart_at", [10, 37, 61, 90])
def test_a_restart_in_the_middle_of_a_ramp_decides_the_same(restart_at: int) -> None:
    db = database(current=0.5)
    assert drive(db, RAMP, restart_at=restart_at) == drive(db, RAMP)


def test_status_alone_carries_what_the_trend_needs() -> None:
    """Every tick a restart: the same decisions as one operator that never stopped."""
    db = database(current=0.5)
    plain = drive(db, RAMP)
    for tick in range(0, len(RAMP), 7):
        assert drive(db, RAMP, restart_at=tick) == plain


def test_readings_from_before_a_start_do_not_shrink_it() -> None:
    woke = database(current=1.0)
    woke = replace(woke, status=replace(woke.status, phase_since=NOW))
    # 3 s after the start, a reading 30 s behind describes the time it was stopped: no load at all
    later = NOW + timedelta(seconds=3)
    got = plan.decide(
        db=woke,
        compute=running(1.0),
        observation=reading(0.0, at=later, lag=timedelta(seconds=30)),
        now=later,
    )
    assert got.capacity == 1.0
    assert got.learned.load == ()  # and it is not learned from


@pytest.mark.parametrize(
    "lag",
    [
        pytest.param(None, id="lag-unsaid"),  # taken as Tuning.metric_lag, 5 s: longer than the run so far
        pytest.param(timedelta(milliseconds=500), id="lag-half-a-tick"),  # the local source's, at a 1 s tick
    ],
)
def test_load_met_at_a_start_grows_it_within_two_readings(lag: timedelta | None) -> None:
    """pgbench a second after the start: the floor's CPU pinned from the first reading on."""
    tuning = replace(TUNING, tick=timedelta(seconds=1))
    db = database(current=0.25)
    db = replace(db, status=replace(db.status, phase_since=NOW))
    current, sizes = 0.25, []
    for second in range(1, 6):
        now = NOW + timedelta(seconds=second)
        compute = running(current)
        got = plan.decide(
            db=db, compute=compute, observation=reading(0.25, at=now, lag=lag), now=now, tuning=tuning
        )
        db = replace(db, status=status_of.next_status(db, status_of.Outcome(got, compute), now))
        current = got.capacity if got.action is Action.RESIZE and got.capacity is not None else current
        sizes.append(current)
    assert sizes[1] > 0.25, sizes


def test_a_saturated_reading_from_before_the_last_growth_does_not_grow_it_again() -> None:
    grown = NOW - timedelta(seconds=1)
    db = database(current=3.0, learned=types.Learned(grown_at=grown))
    pinned = replace(reading(1.0), cpu_throttled=0.9)  # saw 1 CU, before the growth to 3 landed
    got = plan.decide(db=db, compute=running(3.0), observation=pinned, now=NOW)
    assert got.capacity == 3.0
    # once a reading has seen the new size, saturation there grows it again: 3 * 3 -> the ceiling 4
    seen = NOW + timedelta(seconds=20)
    at_three = replace(reading(2.99, at=seen), cpu_throttled=0.9)
    assert plan.decide(db=db, compute=running(3.0), observation=at_three, now=seen).capacity == 4.0


def test_saturation_after_a_shrink_grows_it_again_however_soon() -> None:
    """A short scaleDownDelay can take the growth back within a lag of it: the next saturation is news."""
    quick = types.ScalingSpec(scale_down_delay=timedelta(seconds=2))
    db = database(current=0.25, scaling=quick)
    saturated = [replace(reading(0.25, at=NOW + TICK * i), cpu_throttled=0.9) for i in range(8)]
    idle = [reading(0.05, at=NOW + TICK * i) for i in range(8)]
    current, sizes = 0.25, []
    for i, observation in enumerate([saturated[0], *idle[1:4], *saturated[4:8]]):
        now = NOW + TICK * i
        got = plan.decide(db=db, compute=running(current), observation=observation, now=now)
        db = replace(db, status=status_of.next_status(db, status_of.Outcome(got, running(current)), now))
        current = got.capacity if got.action is Action.RESIZE and got.capacity is not None else current
        sizes.append(current)
    assert sizes[0] == 0.75  # saturated at 0.25: three times that at once
    shrunk = sizes.index(0.25, 1)
    assert shrunk < 4  # the load went, and the short window gave it back
    # saturated at 0.25 again: three times that at once, not held as old news of the first growth,
    # and then held while the readings still describe the size before it
    assert sizes[4:] == [0.75] * 4


# -- jumps that recur -----------------------------------------------------------------------------


def jumps(*minutes: float, cores: float = 2.0) -> tuple[types.LoadSample, ...]:
    return tuple(types.LoadSample(NOW + timedelta(minutes=m), cores) for m in minutes)


def test_periodic_jumps_are_expected_and_prepared_for() -> None:
    every_ten = jumps(0, 10, 20, 30)
    assert surges.period(every_ten, TUNING) == timedelta(minutes=10)
    assert surges.period(jumps(0, 10, 17, 30), TUNING) is None  # intervals that disagree
    due = NOW + timedelta(minutes=40)
    # 10 s before it is due (lead: 2 s resize + 2 s tick + 15 s tolerance) the 2 cores are expected...
    soon = due - timedelta(seconds=10)
    assert (
        surges.expected_cores(every_ten, now=soon, read_at=soon - timedelta(seconds=5), tuning=TUNING) == 2.0
    )
    # ...not in between...
    between = NOW + timedelta(minutes=35)
    assert surges.expected_cores(every_ten, now=between, read_at=between, tuning=TUNING) == 0.0
    # ...and after readings show the due time passed without one, no longer (until the next is due)
    gone = due + timedelta(seconds=40)
    assert (
        surges.expected_cores(every_ten, now=gone, read_at=gone - timedelta(seconds=5), tuning=TUNING) == 0.0
    )


def test_a_database_with_a_cron_job_is_ready_for_it() -> None:
    learned = types.Learned(surges=jumps(-40, -30, -20, -10), load=samples(0.2, 0.2, 0.2, 0.2, 0.2))
    before = NOW - timedelta(seconds=5)
    db = database(current=0.25, learned=learned)
    got = plan.decide(db=db, compute=running(0.25), observation=reading(0.2, at=before), now=before)
    # due at NOW: 2 cores at targetCPU 0.9 is 2.22, so 2.25 CU, before any reading shows the job
    assert (got.action, got.capacity) == (Action.RESIZE, 2.25)


def test_a_jump_is_remembered_once_and_raised_while_it_lasts() -> None:
    base = samples(0.2, 0.2, 0.2, 0.2, 0.2)
    first = surges.record((), at=NOW, cores=1.0, baseline=0.2, short=False, tuning=TUNING)
    assert first == (types.LoadSample(NOW, 1.0),)
    later = NOW + timedelta(seconds=20)
    assert surges.record(first, at=later, cores=1.6, baseline=0.2, short=False, tuning=TUNING) == (
        types.LoadSample(NOW, 1.6),
    )
    assert forecast.baseline(base, reading(0.2), TUNING) == 0.2
    many: tuple[types.LoadSample, ...] = ()
    for index in range(20):
        many = surges.record(
            many, at=NOW + timedelta(minutes=5 * index), cores=1.0, baseline=0.1, short=True, tuning=TUNING
        )
    assert len(many) == TUNING.surge_limit


# -- idleAfter: Auto ------------------------------------------------------------------------------

MINUTE = 60
HOURS_2 = 7200

# spec (fixed idleAfter 5m, what a wake is worth), observation (recent gaps, seconds), expected wait
IDLE_WAITS = [
    # every gap is hours: any wait wakes it 8 times; the shortest costs least (8 * 60 s at the floor)
    pytest.param((HOURS_2,) * 8, timedelta(minutes=1), id="hours-apart-pause-soon"),
    # 90 s pauses for thought: a 1 minute wait would wake it 8 times, 5m 4 times; 2m wakes it 4 times
    # and costs 4 * 90 + 4 * 120 + 4 * 300 = 2040 s, against 5m's 4 * 90 + 4 * 300 + 4 * 300 = 2760 s
    pytest.param((90, HOURS_2) * 4, timedelta(minutes=2), id="short-pauses-not-woken"),
    # gaps just over 5m: 5m pauses every one (8 * (300 + 300) = 4800 s); 10m none (8 * 320 = 2560 s)
    pytest.param((320,) * 8, timedelta(minutes=10), id="just-over-the-wait-no-pointless-wakes"),
    # too few gaps known: the spec's wait
    pytest.param((HOURS_2,) * 3, timedelta(minutes=5), id="too-few-gaps"),
]


@pytest.mark.parametrize(("gaps", "expected"), IDLE_WAITS)
def test_auto_idle_wait(gaps: tuple[int, ...], expected: timedelta) -> None:
    auto = types.AutoPauseSpec(idle_after_auto=True)
    assert idle.idle_after(auto, gaps, TUNING) == expected
    assert idle.idle_after(types.AutoPauseSpec(), gaps, TUNING) == timedelta(minutes=5)  # not Auto


@given(st.lists(st.integers(60, 10 * 86_400), min_size=4, max_size=32))
def test_auto_never_wakes_more_often_than_the_fixed_wait(gaps: list[int]) -> None:
    auto = types.AutoPauseSpec(idle_after_auto=True)
    wait = idle.idle_after(auto, tuple(gaps), TUNING).total_seconds()
    assert sum(g > wait for g in gaps) <= sum(g > 300 for g in gaps)


def test_gaps_are_learned_from_activity_bounded_and_kept_in_status() -> None:
    the_spec = replace(types.DatabaseSpec(), auto_pause=types.AutoPauseSpec(idle_after_auto=True))
    db = types.ServerlessDatabase(
        metadata=types.ObjectMeta(name="orders", namespace="shop"),
        spec=the_spec,
        status=types.DatabaseStatus(
            phase=types.Phase.ACTIVE,
            phase_since=NOW - timedelta(hours=1),
            capacity=types.CapacityStatus(0.25, 0.25),
            last_activity_time=NOW - timedelta(minutes=10),
            connections=0,
            auto_pause=types.AutoPauseStatus(gaps=(HOURS_2,) * 32),
        ),
    )
    # no session at the last reading, one now: a 10 minute gap ended
    got = plan.decide(db=db, compute=running(0.25), observation=reading(0.1, sessions=1), now=NOW)
    assert got.auto_pause.gaps[-1] == 600
    assert len(got.auto_pause.gaps) == TUNING.idle_gaps
    assert got.auto_pause.idle_after == timedelta(minutes=1)
    # a gap is not counted while sessions stay open (connections at the last reading)
    busy = replace(db, status=replace(db.status, connections=1, auto_pause=types.AutoPauseStatus()))
    assert (
        plan.decide(db=busy, compute=running(0.25), observation=reading(0.1), now=NOW).auto_pause.gaps == ()
    )


def test_auto_pauses_after_the_wait_it_chose() -> None:
    the_spec = replace(types.DatabaseSpec(), auto_pause=types.AutoPauseSpec(idle_after_auto=True))
    status = types.DatabaseStatus(
        phase=types.Phase.ACTIVE,
        phase_since=NOW - timedelta(hours=1),
        capacity=types.CapacityStatus(0.25, 0.25),
        compute=applied(0.25, the_spec),
        last_activity_time=NOW - timedelta(seconds=90),
        auto_pause=types.AutoPauseStatus(gaps=(HOURS_2,) * 8),
    )
    db = types.ServerlessDatabase(types.ObjectMeta(name="orders", namespace="shop"), the_spec, status)
    got = plan.decide(db=db, compute=running(0.25), observation=reading(0.0, sessions=0), now=NOW)
    assert got.action is Action.ROUTE_ACTIVATOR  # idle 90 s, past the 1 minute Auto chose; 5m would wait
    fixed = replace(db, spec=types.DatabaseSpec())
    assert (
        plan.decide(db=fixed, compute=running(0.25), observation=reading(0.0, sessions=0), now=NOW).action
        is Action.NONE
    )


@settings(max_examples=200)
@given(st.lists(st.floats(0, 4), min_size=5, max_size=80), st.integers(0, 79))
def test_any_restart_decides_the_same(loads: list[float], restart_at: int) -> None:
    db = database(current=0.5)
    assert drive(db, loads, restart_at=restart_at) == drive(db, loads)
