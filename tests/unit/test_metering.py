"""Usage accounting: intervals, pauses, resizes, month boundaries, operator gaps and clocks that go back.

`accrue` is pure, so each case is a value in and a value out, with the arithmetic in a comment. The
reconciler's part (usage in each status write, on changes only) is tested over the fakes at the end.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import crd_schema
from support.fakes import FakeMetrics, FakeRuntime, MemoryStore

from controller.api import codec, types
from controller.metrics.exposition import OperatorMetrics
from controller.policy import metering
from controller.policy.inputs import Observation, Tuning
from controller.reconciler.loop import Reconciler
from controller.runtime.base import invalid_status

Phase = types.Phase
START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
GAP = timedelta(minutes=15)
TUNING = Tuning()


def at(**offset: float) -> datetime:
    return START + timedelta(**offset)


def accrue(
    usage: types.UsageStatus | None,
    until: datetime,
    capacity: float | None,
    phase: Phase = Phase.ACTIVE,
    *,
    gap_limit: timedelta = timedelta(days=400),
) -> types.UsageStatus:
    """Accrual with no gap limit to speak of, unless a test is about the limit."""
    return metering.accrue(usage, phase=phase, capacity=capacity, now=until, gap_limit=gap_limit)


def hours(usage: types.UsageStatus) -> tuple[float, float]:
    return usage.period.compute_unit_hours, usage.total.compute_unit_hours


# -- intervals -----------------------------------------------------------------------------------


def test_accounting_starts_at_the_first_pass_with_nothing_used() -> None:
    usage = accrue(None, START, 1.0)
    assert usage.accounted_until == START
    assert usage.period == types.UsageSpan(datetime(2026, 11, 1, tzinfo=UTC))
    assert usage.total == types.UsageSpan(START)
    assert usage.previous_period is None


def test_an_interval_adds_its_capacity_times_its_length() -> None:
    usage = accrue(accrue(None, START, 0.5), at(minutes=30), 0.5)
    assert hours(usage) == (0.25, 0.25)  # 0.5 CU * 0.5 h
    assert usage.total.phase_seconds == {Phase.ACTIVE: 1800.0}
    assert usage.accounted_until == at(minutes=30)


def test_a_resize_mid_way_bills_each_size_for_its_own_stretch() -> None:
    usage = accrue(None, START, 1.0)
    usage = accrue(usage, at(minutes=10), 1.0)  # the old size held until the resize's write
    usage = accrue(usage, at(minutes=40), 3.0)  # then the new one
    # 1 CU * 10 min + 3 CU * 30 min = 1/6 + 3/2 h
    assert hours(usage) == pytest.approx((5 / 3, 5 / 3), abs=1e-9)


def test_a_pause_accrues_time_in_each_phase_and_no_compute_at_zero() -> None:
    usage = accrue(None, START, 2.0)
    usage = accrue(usage, at(minutes=6), 2.0)  # Active, 2 CU: 0.2 CU-h
    usage = accrue(usage, at(minutes=6, seconds=1), 2.0, Phase.PAUSING)  # still running while it pauses
    usage = accrue(usage, at(hours=5), None, Phase.PAUSED)  # at zero
    usage = accrue(usage, at(hours=5, seconds=3), 1.0, Phase.RESUMING)
    assert usage.total.compute_unit_hours == pytest.approx(0.2 + 2.0 / 3600 + 1.0 * 3 / 3600, abs=1e-9)
    assert usage.total.phase_seconds == {
        Phase.ACTIVE: 360.0,
        Phase.PAUSING: 1.0,
        Phase.PAUSED: 5 * 3600 - 361.0,
        Phase.RESUMING: 3.0,
    }
    assert sum(usage.total.phase_seconds.values()) == 5 * 3600 + 3  # the phases cover the whole span


def test_a_paused_database_at_zero_bills_nothing_whatever_the_gap() -> None:
    usage = accrue(accrue(None, START, None, Phase.PAUSED), at(days=3), None, Phase.PAUSED)
    assert hours(usage) == (0.0, 0.0)
    assert usage.total.phase_seconds == {Phase.PAUSED: 3 * 86400.0}
    assert usage.total.unmetered_compute_unit_hours == 0.0


# -- the billing period ----------------------------------------------------------------------------


def test_an_interval_across_the_month_boundary_is_split() -> None:
    before = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
    usage = accrue(None, before, 1.0)
    # 1 h in November, 30 min in December
    usage = accrue(usage, datetime(2026, 12, 1, 0, 30, tzinfo=UTC), 1.0)
    assert usage.previous_period is not None
    assert usage.previous_period.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert usage.previous_period.compute_unit_hours == 1.0
    assert usage.period.start == datetime(2026, 12, 1, tzinfo=UTC)
    assert usage.period.compute_unit_hours == 0.5
    assert usage.period.phase_seconds == {Phase.ACTIVE: 1800.0}
    assert usage.total.compute_unit_hours == 1.5


def test_the_year_turns_too() -> None:
    usage = accrue(None, datetime(2026, 12, 31, 23, 45, tzinfo=UTC), 4.0)
    usage = accrue(usage, datetime(2027, 1, 1, 0, 15, tzinfo=UTC), 4.0)
    assert usage.period.start == datetime(2027, 1, 1, tzinfo=UTC)
    assert usage.previous_period is not None
    assert usage.previous_period.start == datetime(2026, 12, 1, tzinfo=UTC)
    assert (usage.previous_period.compute_unit_hours, usage.period.compute_unit_hours) == (1.0, 1.0)


def test_an_interval_ending_on_the_first_instant_of_a_month_opens_that_month() -> None:
    usage = accrue(None, datetime(2026, 11, 30, 23, 0, tzinfo=UTC), 1.0)
    usage = accrue(usage, datetime(2026, 12, 1, tzinfo=UTC), 1.0)
    assert usage.period == types.UsageSpan(datetime(2026, 12, 1, tzinfo=UTC))
    assert usage.previous_period is not None
    assert usage.previous_period.compute_unit_hours == 1.0


def test_months_parked_in_between_leave_the_last_whole_month_as_the_previous_one() -> None:
    usage = accrue(None, datetime(2026, 9, 30, 12, 0, tzinfo=UTC), 1.0)
    usage = accrue(usage, datetime(2026, 9, 30, 18, 0, tzinfo=UTC), 1.0)  # 6 CU-h in September
    usage = accrue(usage, datetime(2026, 12, 3, tzinfo=UTC), None, Phase.PARKED)  # parked since
    assert usage.period.start == datetime(2026, 12, 1, tzinfo=UTC)
    assert usage.previous_period is not None
    assert usage.previous_period.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert usage.previous_period.phase_seconds == {Phase.PARKED: 30 * 86400.0}
    assert usage.total.compute_unit_hours == 6.0
    # from 18:00 on 30 September to 3 December
    assert usage.total.phase_seconds[Phase.PARKED] == 6 * 3600 + (31 + 30 + 2) * 86400


# -- operator gaps and clocks ------------------------------------------------------------------


def test_a_short_operator_absence_is_billed_at_the_recorded_size() -> None:
    """Nothing but the operator changes the size: what status recorded ran on while it restarted."""
    usage = accrue(accrue(None, START, 2.0), at(minutes=10), 2.0, gap_limit=GAP)
    assert usage.total.compute_unit_hours == pytest.approx(2 * 10 / 60, abs=1e-9)
    assert usage.total.unmetered_compute_unit_hours == 0.0


def test_beyond_the_gap_limit_compute_is_set_apart_as_unmetered() -> None:
    usage = accrue(accrue(None, START, 2.0), at(hours=3), 2.0, gap_limit=GAP)
    assert usage.total.compute_unit_hours == 0.5  # 2 CU * the first 15 min
    assert usage.total.unmetered_compute_unit_hours == 5.5  # 2 CU * the other 2 h 45 min
    # the phase was the recorded one throughout
    assert usage.total.phase_seconds == {Phase.ACTIVE: 3 * 3600.0}


def test_the_server_status_names_still_running_ran_throughout_and_is_billed_whole() -> None:
    """Status goes unwritten while nothing changes: hours later, the same pod (or postmaster) running
    says the compute ran all along, so nothing is set apart."""
    stored = running(accrue(None, START, 2.0), current=2.0)
    stored = replace(stored, compute=types.ComputeStatus(incarnation="pod-uid-1"))
    same = metering.accrue_status(stored, at(hours=3), TUNING, running="pod-uid-1")
    assert same.total.compute_unit_hours == 6.0  # 2 CU * 3 h
    assert same.total.unmetered_compute_unit_hours == 0.0
    for other in ("pod-uid-2", ""):  # another server runs now, or none does: it may have stopped unseen
        unsure = metering.accrue_status(stored, at(hours=3), TUNING, running=other)
        assert unsure.total.compute_unit_hours == 0.5  # 2 CU * the first 15 min
        assert unsure.total.unmetered_compute_unit_hours == 5.5


def test_the_live_figure_carries_status_to_now_at_the_size_it_records() -> None:
    stored = running(accrue(None, START, 1.5), current=1.5)
    shown = metering.live(stored, at(hours=2))
    assert shown is not None
    assert shown.accounted_until == at(hours=2)
    assert shown.period.compute_unit_hours == 3.0  # 1.5 CU * 2 h, from status alone
    assert metering.live(types.DatabaseStatus(), at(hours=2)) is None


def test_a_gap_across_a_month_boundary_bills_only_its_first_minutes_on_each_side_as_they_fall() -> None:
    usage = accrue(None, datetime(2026, 11, 30, 23, 50, tzinfo=UTC), 6.0)
    usage = accrue(usage, datetime(2026, 12, 1, 2, 0, tzinfo=UTC), 6.0, gap_limit=GAP)
    assert usage.previous_period is not None
    assert usage.previous_period.compute_unit_hours == 1.0  # 6 CU * 10 min in November
    assert usage.period.compute_unit_hours == 0.5  # 6 CU * the 5 min left of the limit in December
    assert usage.period.unmetered_compute_unit_hours == 11.5  # 6 CU * 1 h 55 min
    assert usage.total.compute_unit_hours == 1.5


def test_a_clock_that_goes_back_accrues_nothing_and_counts_nothing_twice() -> None:
    usage = accrue(accrue(None, START, 1.0), at(hours=1), 1.0)
    assert accrue(usage, at(minutes=30), 1.0) == usage  # back by half an hour: unchanged
    assert accrue(usage, at(hours=1), 1.0) == usage  # standing still too
    later = accrue(usage, at(hours=2), 1.0)  # once it passes the accounted moment again
    assert hours(later) == (2.0, 2.0)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(min_value=-3600, max_value=40 * 86400),  # seconds: back, forward, weeks at once
            st.sampled_from([None, 0.25, 1.0, 4.0]),
            st.sampled_from(list(Phase)),
        ),
        max_size=30,
    )
)
def test_usage_never_decreases_and_the_phases_cover_the_accounted_time(
    steps: list[tuple[int, float | None, Phase]],
) -> None:
    usage = accrue(None, START, None)
    now = START
    for seconds, size, phase in steps:
        now += timedelta(seconds=seconds)
        after = accrue(usage, now, size, phase, gap_limit=GAP)
        assert after.total.compute_unit_hours >= usage.total.compute_unit_hours
        assert after.accounted_until >= usage.accounted_until
        assert after.period.start == metering.period_start(after.accounted_until)
        usage = after
    covered = sum(usage.total.phase_seconds.values())
    assert covered == pytest.approx((usage.accounted_until - START).total_seconds(), abs=1e-3)
    assert usage.period.compute_unit_hours <= usage.total.compute_unit_hours + 1e-9


def test_usage_round_trips_through_status() -> None:
    usage = accrue(None, datetime(2026, 11, 30, 23, 0, 0, 123456, tzinfo=UTC), 0.25)
    usage = accrue(usage, datetime(2026, 12, 1, 0, 0, 7, 654321, tzinfo=UTC), 0.25, Phase.PAUSING)
    status = types.DatabaseStatus(phase=Phase.PAUSED, usage=usage)
    encoded = codec.encode_status(status)
    assert encoded["usage"]["period"]["phaseSeconds"] == {"Pausing": 7.654321}  # since December began
    assert encoded["usage"]["previousPeriod"]["phaseSeconds"] == {"Pausing": 3599.876544}
    assert codec.decode_status(encoded) == status
    assert codec.decode_status({"phase": "Active"}).usage is None  # from an operator before usage


def test_the_crd_keeps_usage_and_its_printer_columns_find_it() -> None:
    usage = accrue(None, datetime(2026, 11, 30, 23, 0, tzinfo=UTC), 1.5)
    usage = accrue(usage, datetime(2026, 12, 1, 1, 0, tzinfo=UTC), 1.5)
    status = codec.encode_status(types.DatabaseStatus(phase=Phase.ACTIVE, usage=usage))
    obj = {"apiVersion": types.API_VERSION, "kind": types.KIND, "metadata": {"name": "orders"}, "spec": {}}
    obj["status"] = status
    assert crd_schema.validate(obj) == []
    partial = {"usage": {"period": status["usage"]["period"]}}
    assert crd_schema.validate({**obj, "status": partial})  # without accountedUntil and total: refused
    columns = crd_schema.load_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    shown = {}
    for column in columns:
        if column["jsonPath"].startswith(".status.usage."):
            value: object = obj
            for part in column["jsonPath"].split(".")[1:]:
                assert isinstance(value, dict)
                value = value[part]
            shown[column["name"]] = value
    assert shown == {"CU-Hours": 1.5, "Period": "2026-12-01T00:00:00.000000Z"}  # December's hour at 1.5 CU


# -- what a pass writes ------------------------------------------------------------------------


def running(usage: types.UsageStatus, current: float | None = 1.0) -> types.DatabaseStatus:
    return types.DatabaseStatus(
        phase=Phase.ACTIVE, capacity=types.CapacityStatus(current=current, desired=current), usage=usage
    )


def test_usage_alone_is_not_written_while_compute_runs_however_long() -> None:
    stored = running(accrue(None, START, 1.0))
    days = replace(stored, usage=accrue(stored.usage, at(days=3), 1.0))
    assert metering.to_write(stored, days) == stored  # status plus the time since gives it


def test_a_running_database_writes_usage_alone_for_a_new_period() -> None:
    stored = running(accrue(None, START, 1.0))
    month = replace(stored, usage=accrue(stored.usage, at(days=5), 1.0))  # into December
    assert metering.to_write(stored, month) == month


def test_usage_rides_along_with_any_other_change() -> None:
    stored = running(accrue(None, START, 1.0))
    resized = replace(
        stored,
        capacity=types.CapacityStatus(current=2.0, desired=2.0),
        usage=accrue(stored.usage, at(seconds=1), 1.0),
    )
    assert metering.to_write(stored, resized) == resized


def test_a_resting_database_writes_usage_only_for_a_new_period() -> None:
    paused = types.DatabaseStatus(phase=Phase.PAUSED, usage=accrue(None, START, None, Phase.PAUSED))
    days = replace(paused, usage=accrue(paused.usage, at(days=3), None, Phase.PAUSED))
    assert metering.to_write(paused, days) == paused
    month = replace(paused, usage=accrue(paused.usage, at(days=5), None, Phase.PAUSED))  # into December
    assert metering.to_write(paused, month) == month


def test_a_spec_found_invalid_bills_what_ran_before_in_the_phase_it_ran_in() -> None:
    stored = running(accrue(None, START, 1.0))
    failed = invalid_status(stored, "spec.capacity.min: must be a number", at(minutes=6))
    assert failed.phase is Phase.FAILED
    assert failed.usage == accrue(stored.usage, at(minutes=6), 1.0)  # 6 minutes Active at 1 CU
    assert failed.usage is not None
    assert failed.usage.total.phase_seconds == {Phase.ACTIVE: 360.0}


# -- the reconciler over the fakes ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def database() -> types.ServerlessDatabase:
    spec = types.DatabaseSpec(
        capacity=types.CapacitySpec(min=0.5, max=0.5), auto_pause=types.AutoPauseSpec(enabled=False)
    )
    return types.ServerlessDatabase(
        metadata=types.ObjectMeta(name="orders", namespace="shop", finalizers=(types.FINALIZER,)), spec=spec
    )


async def test_the_reconciler_accounts_each_pass_writes_on_changes_only_and_serves_the_live_total() -> None:
    store, runtime, clock = MemoryStore(), FakeRuntime(), Clock()
    metrics = FakeMetrics(clock)
    exposition = OperatorMetrics()
    reconciler = Reconciler(store=store, runtime=runtime, metrics=metrics, exposition=exposition, clock=clock)
    store.put(database())
    key = "shop/orders"
    await reconciler.reconcile(key)  # created and started: accounting begins
    assert store.objects[key].status.usage == metering.begin(START)
    writes = store.status_writes[key]
    # No CPU figure: what the policy learns of the load (a write per 10 s at most) is tested with it.
    metrics.readings[key] = Observation(time=START, observing_since=START, client_sessions=1)
    for second in range(1, 61):  # a pass a second, as ticks would
        clock.now = at(seconds=second)
        reconciler.observations[key] = replace(metrics.readings[key], time=clock.now)
        await reconciler.reconcile(key)
    usage = store.objects[key].status.usage
    assert usage is not None
    # Written at 1 s (the first session: connections and lastActivityTime change), then never: the
    # session stays open, so nothing a user reads changes, and usage waits for the next change.
    assert store.status_writes[key] - writes == 1
    assert usage.accounted_until == at(seconds=1)
    assert usage.total.compute_unit_hours == pytest.approx(0.5 * 1 / 3600, abs=1e-9)
    served = exposition.registry.get_sample_value(
        "sdb_compute_unit_seconds_total", {"namespace": "shop", "database": "orders"}
    )
    assert served == pytest.approx(0.5 * 60, abs=1e-5)  # to the 1e-9 CU-hour status keeps

    # A new operator process: it reads status and goes on from it, billing the 10 s nobody watched.
    clock.now = at(seconds=70)
    fresh = OperatorMetrics()
    again = Reconciler(store=store, runtime=runtime, metrics=metrics, exposition=fresh, clock=clock)
    await again.reconcile(key)
    served = fresh.registry.get_sample_value(
        "sdb_compute_unit_seconds_total", {"namespace": "shop", "database": "orders"}
    )
    assert served == pytest.approx(0.5 * 70, abs=1e-5)
