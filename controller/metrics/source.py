"""The interface every metrics source implements: one Observation per database per reading."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from controller.api import types
from controller.policy.inputs import Observation


class MetricsSource(Protocol):
    name: str

    async def observe(self, dbs: Sequence[types.ServerlessDatabase]) -> Mapping[str, Observation]:
        """Observations of the given running databases, by key.

        A database missing from the result had no fresh data: the policy then holds its size and
        does not pause it. One call serves the whole fleet, so a source can batch its queries.
        """

    async def forget(self, key: str) -> None:
        """Drop per-database state (connections, counters): the database stopped or went away."""

    async def close(self) -> None: ...
