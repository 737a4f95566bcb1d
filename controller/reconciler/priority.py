"""How urgent a look at a database is: the work queue serves the most urgent first. Pure: the object in,
a priority out.

A client waiting on a wake comes first, then what a user changed (a new object, a spec change, a
deletion), then the ticks of running databases and their own timers, and last the periodic resync,
so a look at the whole fleet never delays a wake or a new database.
"""

from __future__ import annotations

from enum import IntEnum

from controller.api import types


class Priority(IntEnum):
    """Lower is served first."""

    WAKE = 0
    """A client is held (or a wake request is unanswered, or a wake is under way)."""
    CHANGE = 1
    """A new object, a change of its spec or metadata, a deletion, a change of its compute objects."""
    TICK = 2
    """A running database's sampling tick, or a database's own timer (a back-off, a park due)."""
    RESYNC = 3
    """The periodic look at every database, and the first look after a start."""

    @property
    def label(self) -> str:
        return self.name.capitalize()


def of(db: types.ServerlessDatabase, *, otherwise: Priority) -> Priority:
    """What the object itself says is urgent; `otherwise` when nothing is (the reason for the look)."""
    if wake_pending(db) or db.status.phase is types.Phase.RESUMING:
        return Priority.WAKE
    if (
        db.metadata.deletion_timestamp is not None
        or db.status.observed_generation != db.metadata.generation
        or db.status.phase is types.Phase.PENDING
    ):
        return min(Priority.CHANGE, otherwise)
    return otherwise


def wake_pending(db: types.ServerlessDatabase) -> bool:
    """A wake request the status has not answered yet, on a database the spec lets clients wake."""
    request = db.wake_request
    return bool(request) and request != db.status.wake_request and db.spec.state is types.State.AUTO
