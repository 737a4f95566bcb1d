"""A capacity's reloadable settings on a running server, the order a resize applies them in, and what a
stop leaves for the next wake: the same for every runtime.

Settings that need a restart are fixed when Postgres starts (`policy.sizing.restart_settings`); the
reloadable ones (`work_mem`, `effective_cache_size`, parallel workers) follow the capacity through
ALTER SYSTEM and a reload.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import psycopg
import structlog

from controller.policy import sizing
from controller.postgres.sessions import Address, OperatorSessions

log = structlog.get_logger("postgres.settings")

Apply = Callable[[float], Awaitable[None]]


async def configure(
    sessions: OperatorSessions, key: str, address: Address, capacity: float
) -> dict[str, str]:
    """Put `capacity`'s reloadable settings in force now; returns those that changed."""
    return await sessions.alter_system(key, address, sizing.reloadable_settings(capacity), reload=True)


async def prepare_wake(sessions: OperatorSessions, key: str, address: Address, resume_at: float) -> None:
    """Before a stop: leave the settings of the size a wake starts at, so the wake needs no ALTER SYSTEM.

    A stop never fails for want of this: the wake applies them itself when they are not there.
    """
    try:
        await sessions.alter_system(key, address, sizing.reloadable_settings(resume_at), reload=False)
    except (psycopg.Error, OSError) as error:
        log.info("could not leave the wake's settings before stopping", database=key, error=str(error))


async def resize(
    *, previous: float | None, capacity: float, limits: Callable[[float], Awaitable[bool]], settings: Apply
) -> None:
    """Limits grow before the settings that use them and shrink after them, so settings never exceed
    the limits: a larger work_mem under the old memory limit could be killed by it.

    `limits` says whether the new limits are in force when it returns. Where they follow later (a
    kubelet resizes a pod in its own time), a growing server's settings wait for them: the operator
    applies them once the server reports its new size.
    """
    if previous is None or capacity >= previous:
        if await limits(capacity):
            await settings(capacity)
    else:
        await settings(capacity)
        await limits(capacity)
