"""Usage you can bill: compute-unit hours and the time in each phase, accounted in status.

`accrue` is the accounting: the usage before, the phase and capacity that held since it was
accounted, and the time now give the usage now. It is exact across operator restarts because of one
invariant the reconciler keeps: the phase and capacity in status change only in a status write, and
every status write accounts usage up to its own moment first. So whatever lies between
`accountedUntil` and now was spent at the phase and capacity status shows, whether an operator
watched or not.

So usage need not be written on a timer: a running database's status can go unwritten for hours
while its load is steady, and `accountedUntil` with it. The live figure is `accrue` from the status
to now (the operator's metric, `sdb get` and `sdb describe` show that).

What the status alone cannot tell is whether the compute kept running all that time: nothing but the
operator starts, grows or pauses it, but a crash can stop it. When the server status records is the
one running now (its incarnation, a pod's uid or the postmaster's pid and start time, is unchanged),
it ran throughout and the whole interval is billed. Otherwise the first `gap_limit` of it is billed
at the recorded capacity (a restart or a leader's failover is shorter); the rest is counted apart,
as unmetered, so it is neither billed unseen nor lost.

The billing period is the calendar month in UTC; an interval that spans months is split at each
month's first instant. A clock that goes back accrues nothing until it passes `accountedUntil`
again: no usage is ever negative or counted twice.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta

from controller.api import types
from controller.policy.inputs import Tuning

SECONDS_PRECISION = 6
"""Phase seconds are kept to the microsecond, the resolution of the times they come from."""
HOURS_PRECISION = 9
"""Compute-unit hours are kept to 1e-9 (3.6 ms at one CU), short enough for a printer column and
small enough to bill by: each write rounds away at most 5e-10 CU-hour, 0.01 in a year of writes
every 2 s tick."""


def period_start(when: datetime) -> datetime:
    """The first instant of the calendar month (UTC) that `when` falls in."""
    return when.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_period(start: datetime) -> datetime:
    """The first instant of the month after the one starting at `start`."""
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def begin(now: datetime) -> types.UsageStatus:
    """Usage of a database whose accounting starts now: nothing used yet."""
    return types.UsageStatus(
        accounted_until=now, period=types.UsageSpan(period_start(now)), total=types.UsageSpan(now)
    )


def accrue(
    usage: types.UsageStatus | None,
    *,
    phase: types.Phase,
    capacity: float | None,
    now: datetime,
    gap_limit: timedelta,
    ran_throughout: bool = False,
) -> types.UsageStatus:
    """Usage up to `now`, the database having been in `phase` at `capacity` (None: no compute)
    since `usage.accounted_until`; `ran_throughout`: the compute is known to have run all that time
    (the same server runs now), so no part of it is set apart as unmetered."""
    if usage is None:
        return begin(now)
    since = usage.accounted_until
    if now <= since:
        return usage
    size = capacity or 0.0
    metered_until = min(now, since + gap_limit) if size > 0 and not ran_throughout else now
    period, previous, total = usage.period, usage.previous_period, usage.total
    cursor = since
    while cursor < now:
        month = period_start(cursor)
        if month != period.start:
            period, previous = types.UsageSpan(month), period
        end = min(now, next_period(month))
        metered = max(min(end, metered_until) - cursor, timedelta(0))
        period = _add(period, phase=phase, size=size, elapsed=end - cursor, metered=metered)
        total = _add(total, phase=phase, size=size, elapsed=end - cursor, metered=metered)
        cursor = end
    if period_start(now) != period.start:  # ended on a month's first instant: that month has begun
        period, previous = types.UsageSpan(period_start(now)), period
    return types.UsageStatus(accounted_until=now, period=period, total=total, previous_period=previous)


def _add(
    span: types.UsageSpan, *, phase: types.Phase, size: float, elapsed: timedelta, metered: timedelta
) -> types.UsageSpan:
    seconds = dict(span.phase_seconds)
    known = phase in seconds
    seconds[phase] = round(seconds.get(phase, 0.0) + elapsed.total_seconds(), SECONDS_PRECISION)
    if not known:  # in the order of the phases; a phase already there keeps its place
        seconds = {p: seconds[p] for p in types.Phase if p in seconds}
    unmetered = (elapsed - metered).total_seconds()
    return types.UsageSpan(
        start=span.start,
        compute_unit_hours=_hours(span.compute_unit_hours, size * metered.total_seconds()),
        phase_seconds=seconds,
        unmetered_compute_unit_hours=_hours(span.unmetered_compute_unit_hours, size * unmetered),
    )


def _hours(hours: float, cu_seconds: float) -> float:
    return round(hours + cu_seconds / 3600, HOURS_PRECISION) if cu_seconds else hours


def accrue_status(
    status: types.DatabaseStatus, now: datetime, tuning: Tuning, *, running: str = ""
) -> types.UsageStatus:
    """`accrue` over the phase and capacity `status` records: what held since it was written.
    `running`: the incarnation of the server observed running now ("" when none is, or none was
    looked at); when it is the one status records, it ran throughout."""
    return accrue(
        status.usage,
        phase=status.phase,
        capacity=status.capacity.current,
        now=now,
        gap_limit=tuning.usage_gap_limit,
        ran_throughout=running != "" and running == status.compute.incarnation,
    )


def live(status: types.DatabaseStatus, now: datetime) -> types.UsageStatus | None:
    """The usage `status` shows, carried to `now` at the phase and capacity it records: the figure to
    read between writes, as a running operator keeps the invariant. (What it bills after an absence
    may set part of the gap apart, if the server did not run throughout.)"""
    if status.usage is None:
        return None
    return accrue(
        status.usage,
        phase=status.phase,
        capacity=status.capacity.current,
        now=now,
        gap_limit=timedelta(0),
        ran_throughout=True,
    )


def to_write(stored: types.DatabaseStatus, new: types.DatabaseStatus) -> types.DatabaseStatus:
    """The status a pass writes: `new`, or `new` with the stored usage when only usage changed and
    need not be written yet.

    Usage rides along with every write that happens anyway, and on its own is written only when a
    new billing period began. Not on a timer: the stored usage plus the phase and capacity status
    records give the usage at any moment since (`live`), and a restarted operator goes on from it
    exactly (`accrue_status`). So a running database with a steady load writes nothing.
    """
    before, after = stored.usage, new.usage
    if before is None or after is None or after.period.start != before.period.start:
        return new
    same = all(getattr(new, name) == getattr(stored, name) for name in _ALL_BUT_USAGE)
    return stored if same else new


_ALL_BUT_USAGE = tuple(f.name for f in fields(types.DatabaseStatus) if f.name != "usage")
"""What `to_write` compares, field by field: a copy of the status to compare whole would cost more."""
