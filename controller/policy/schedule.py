"""Schedule floors: cron windows that raise the minimum capacity, starting a little early to pre-warm."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from croniter import croniter

from controller.api import types


def active_floor(
    schedules: Iterable[types.ScheduleSpec], now: datetime, *, prewarm: timedelta
) -> float | None:
    """The highest floor among windows open at `now` (or opening within `prewarm`); None when none is."""
    floors = [s.min for s in schedules if _window_open(s, now + prewarm, now)]
    return max(floors) if floors else None


def _window_open(schedule: types.ScheduleSpec, horizon: datetime, now: datetime) -> bool:
    """Whether a window of `schedule` starts at or before `horizon` and ends after `now` (times in UTC)."""
    # The latest start at or before the horizon is the only window that can still be open.
    start: datetime = croniter(schedule.cron, horizon).get_prev(datetime)
    if croniter.match(schedule.cron, horizon):
        start = horizon.replace(second=0, microsecond=0)
    return start + schedule.duration > now
