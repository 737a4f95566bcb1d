"""`autoPause.idleAfter: Auto`: an idle wait chosen from the database's own recent idle gaps.

A fixed wait W is the ski-rental answer to not knowing how long a gap will last: keep paying the
floor for W, then pause. It implies that a wake is worth W at the floor (the client's wait, a cold
cache, a warm start). Knowing the recent gaps, the wait can be chosen instead: the one that would
have cost least over them, counting each gap's time at the floor up to the wait plus W for every
wake it causes; and never one that would have woken the database more often than W itself.
So a database whose gaps are either seconds or hours pauses sooner, and one whose visits have
pauses just longer than W stops pausing in the middle of them. Gaps are kept in status, a bounded
number, so a restarted operator chooses the same.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from controller.api import types
from controller.policy.inputs import Tuning


def idle_after(spec: types.AutoPauseSpec, gaps: tuple[int, ...], tuning: Tuning) -> timedelta:
    """The wait to pause after: the spec's, or for Auto the cheapest over the recent gaps."""
    fixed = spec.idle_after
    if not spec.idle_after_auto or len(gaps) < tuning.idle_min_gaps:
        return fixed
    worth = fixed.total_seconds()

    def wakes(wait: float) -> int:
        return sum(1 for gap in gaps if gap > wait)

    def cost(wait: float) -> float:
        return sum(min(gap, wait) for gap in gaps) + worth * wakes(wait)

    allowed = [c for c in tuning.idle_choices if wakes(c.total_seconds()) <= wakes(worth)]
    # At the same cost, fewer wakes; then the shorter wait, which costs less on a longer gap to come.
    return min(
        [*allowed, fixed],
        key=lambda c: (cost(c.total_seconds()), wakes(c.total_seconds()), c.total_seconds()),
    )


def record_gap(
    gaps: tuple[int, ...],
    *,
    idle_since: datetime | None,
    active_again: datetime | None,
    tuning: Tuning,
) -> tuple[int, ...]:
    """Add the gap that ended at `active_again`; gaps shorter than every choice change no choice."""
    if idle_since is None or active_again is None:
        return gaps
    gap = (active_again - idle_since).total_seconds()
    if gap < min(tuning.idle_choices).total_seconds():
        return gaps
    return (*gaps, round(gap))[-tuning.idle_gaps :]
