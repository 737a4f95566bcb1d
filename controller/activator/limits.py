"""What an anonymous client can make the activator hold, and the bookkeeping that enforces it.

Two kinds of connection cost the activator a descriptor and memory before any database is awake:
those still negotiating their startup (bounded by count and by a deadline; at the cap the oldest
goes, since a real client finishes in milliseconds and only junk lingers), and held ones, whose
valid startup waits for a wake (bounded globally and per database, each refused with 53300). The
caps are sized to the process's descriptor limit, so that the rest of the process (the operator's
watch, its Postgres sessions, the relays) always has descriptors left.
"""

from __future__ import annotations

import dataclasses
import resource
from collections import Counter
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    startup_deadline: float = 60.0
    """Seconds from accept to a complete, valid StartupMessage: Postgres's own authentication_timeout,
    since the activator answers in the postmaster's place and a client on a loaded machine (a TLS
    handshake among hundreds of threads took 10 s) gets as long here as there. A flood of slow
    connections is bounded by the `negotiating` cap, not by this."""
    negotiating: int = 4096
    held: int = 4096
    held_per_database: int = 1000
    reserve: int = 1000
    """Descriptors the caps leave to the rest of the process."""

    def within(self, descriptors: int) -> Limits:
        """These caps, shrunk in proportion where they could take the process's last `reserve` descriptors.

        A held connection counts twice: it becomes a relay, with a connection to Postgres too.
        """
        reserve = min(self.reserve, descriptors // 2)
        budget = descriptors - reserve
        wanted = self.negotiating + 2 * self.held
        if wanted <= budget:
            return self
        negotiating = max(1, self.negotiating * budget // wanted)
        held = max(1, (budget - negotiating) // 2)
        return dataclasses.replace(
            self,
            negotiating=negotiating,
            held=held,
            held_per_database=min(self.held_per_database, held),
        )


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one where the system allows; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and resource.RLIM_INFINITY not in (soft, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # a container may refuse; the caps are then sized to the lower limit
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class Occupancy(Generic[T]):
    """Who occupies the activator now: connections negotiating (oldest first), held ones per database."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._negotiating: dict[T, str] = {}
        """Each negotiating connection and the database it came for."""
        self._negotiating_for: Counter[str] = Counter()
        self._held: Counter[str] = Counter()

    @property
    def negotiating(self) -> int:
        return len(self._negotiating)

    @property
    def held(self) -> int:
        return self._held.total()

    def in_hand(self, key: str) -> int:
        """Connections for database `key` negotiating or held here: clients Postgres cannot see yet."""
        return self._negotiating_for[key] + self._held[key]

    def arrive(self, connection: T, key: str) -> T | None:
        """Count a new connection for database `key` as negotiating; returns the one it displaces at
        the cap, if any."""
        evicted = None
        if len(self._negotiating) >= self.limits.negotiating:
            evicted = next(iter(self._negotiating))
            self.leave(evicted)
        self._negotiating[connection] = key
        self._negotiating_for[key] += 1
        return evicted

    def leave(self, connection: T) -> None:
        """It stopped negotiating: it was decided, or it ended."""
        key = self._negotiating.pop(connection, None)
        if key is not None:
            _decrement(self._negotiating_for, key)

    def hold(self, key: str) -> str | None:
        """Count a held connection for database `key`, or say which cap refuses it."""
        if self.held >= self.limits.held:
            return f"sorry, too many clients already: {self.limits.held} are waiting for a wake here"
        if self._held[key] >= self.limits.held_per_database:
            return (
                f"sorry, too many clients already: {self.limits.held_per_database} are waiting for "
                "this database to wake"
            )
        self._held[key] += 1
        return None

    def release(self, key: str) -> None:
        _decrement(self._held, key)


def _decrement(counts: Counter[str], key: str) -> None:
    """One fewer for `key`, dropping it at zero so a counter holds only databases with connections."""
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]
