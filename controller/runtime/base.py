"""The interfaces the reconciler drives: where databases are declared (`Store`), where they run (`Runtime`).

Each has a local implementation (files and Postgres processes on this host) and a Kubernetes one
(the API server, StatefulSets, Services). Constructors do no I/O; `open` and `close` do.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Protocol

import psycopg

from controller.api import types
from controller.policy import metering
from controller.policy.inputs import DEFAULT_TUNING, ComputeState, Route
from controller.postgres.declared import Report


class StepError(Exception):
    """A step failed. `transient` failures are retried with back-off; others need a change of spec or host."""

    transient = True

    def __init__(self, reason: types.Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class TransientError(StepError):
    transient = True


class PermanentError(StepError):
    transient = False


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str
    first_time: datetime
    last_time: datetime
    count: int = 1


class Store(Protocol):
    """ServerlessDatabase objects: read them, watch them, write their status and events."""

    async def list(self) -> Sequence[types.ServerlessDatabase]: ...

    async def all_keys(self) -> Sequence[str]:
        """Every stored database's key, none of them decoded (what a resync needs)."""

    async def get(self, key: str) -> types.ServerlessDatabase | None: ...

    async def write_status(self, db: types.ServerlessDatabase, status: types.DatabaseStatus) -> None:
        """Replace the status (one write); a no-op when it equals what is stored."""

    async def record_event(
        self, db: types.ServerlessDatabase, type: EventType, reason: str, message: str
    ) -> None: ...

    async def request_wake(self, key: str) -> str:
        """Ask for a wake (the activator's way in); returns the request's token."""

    async def set_finalizer(self, db: types.ServerlessDatabase, present: bool) -> None: ...

    async def mark_invalid(self, key: str, message: str, now: datetime) -> None:
        """Say in status why an object cannot be acted on (it slipped past the CRD's validation)."""

    def changes(self) -> AsyncIterator[tuple[str, types.ServerlessDatabase | None]]:
        """Databases whose object changed (spec, metadata or deletion), or one of its compute objects,
        as they change: the key and the object as last seen (None: gone, or unreadable)."""


class Runtime(Protocol):
    """Runs Postgres for databases. Every method is idempotent: called twice, it does the work once."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None:
        """The operator is stopping (local: stop servers cleanly; Kubernetes: nothing, they keep running)."""

    async def observe(self, db: types.ServerlessDatabase) -> ComputeState: ...

    async def create_storage(self, db: types.ServerlessDatabase) -> None: ...

    async def start(self, db: types.ServerlessDatabase, capacity: float) -> None:
        """Start the compute at `capacity`; may return before it is ready (then observe says Starting)."""

    async def provision(self, db: types.ServerlessDatabase) -> None:
        """Create compute objects without running anything (a parked database asked to be paused)."""

    async def route(self, db: types.ServerlessDatabase, route: Route) -> None: ...

    async def stop(self, db: types.ServerlessDatabase, *, resume_at: float) -> None:
        """Stop Postgres cleanly: a fast shutdown with a checkpoint, so the next start needs no recovery.

        The settings for `resume_at` (the size a wake starts at) are left in place on the way down,
        so the wake itself needs no ALTER SYSTEM.
        """

    async def release(self, db: types.ServerlessDatabase) -> None:
        """Remove compute objects; storage and credentials stay."""

    async def configure(
        self, db: types.ServerlessDatabase, capacity: float, *, access: bool
    ) -> Report | None:
        """Put `capacity`'s reloadable settings in force on the running server, and with `access` the
        roles the spec asks for (policy.access) and those it declares, whose report it returns."""

    async def resize(self, db: types.ServerlessDatabase, capacity: float) -> None:
        """Move the running server to `capacity`: its limits and its settings, in the order that keeps
        the settings within the limits."""

    async def delete(self, db: types.ServerlessDatabase, *, keep_storage: bool) -> None:
        """Remove everything of a deleted database; its storage only when `keep_storage` is false."""


@contextlib.asynccontextmanager
async def settings_step() -> AsyncIterator[None]:
    """Any failure of the operator's SQL means the settings did not change: a step to retry."""
    try:
        yield
    except (psycopg.Error, OSError) as error:
        raise TransientError(types.Reason.SETTINGS_FAILED, f"could not apply settings: {error}") from error


def invalid_status(status: types.DatabaseStatus, message: str, now: datetime) -> types.DatabaseStatus:
    """The status of an object the operator refuses to act on: Failed, with the problems in Ready.

    Usage is accounted up to `now` first, as at every change of phase: what ran until now ran in the
    phase before."""
    ready = types.Condition(
        types.ConditionType.READY, types.ConditionStatus.FALSE, types.Reason.INVALID_SPEC.value, message, now
    )
    conditions = tuple(c for c in status.conditions if c.type is not types.ConditionType.READY)
    usage = metering.accrue_status(status, now, DEFAULT_TUNING)
    return replace(status, phase=types.Phase.FAILED, conditions=(ready, *conditions), usage=usage)
