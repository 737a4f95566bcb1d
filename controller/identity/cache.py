"""Tokens already verified, kept by their hash until they expire: a reconnect costs no signature
check and no TokenReview. Only what verified is kept; a refusal is checked afresh every time.

Without I/O: the time is handed in. Bounded: the entry closest to its expiry makes room.
"""

from __future__ import annotations

import hashlib
import heapq
from datetime import datetime

from controller.identity.tokens import Verified

MAX_ENTRIES = 10_000


def digest(token: str) -> bytes:
    """What the cache keeps instead of the token: nothing that could be used as a password."""
    return hashlib.sha256(token.encode()).digest()


class VerifiedTokens:
    def __init__(self, *, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[str, bytes], Verified] = {}
        self._expiries: list[tuple[datetime, str, bytes]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, token: str, *, now: datetime) -> Verified | None:
        """The verification of this token under `key` (a database and its identities as they were),
        while it has not expired."""
        self._expire(now)
        return self._entries.get((key, digest(token)))

    def put(self, key: str, token: str, verified: Verified, *, now: datetime) -> None:
        if verified.expires <= now:
            return
        self._expire(now)
        entry = (key, digest(token))
        if entry not in self._entries:
            heapq.heappush(self._expiries, (verified.expires, *entry))
        self._entries[entry] = verified
        while len(self._entries) > self.max_entries:
            _, key_, hashed = heapq.heappop(self._expiries)
            self._entries.pop((key_, hashed), None)

    def _expire(self, now: datetime) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            _, key, hashed = heapq.heappop(self._expiries)
            self._entries.pop((key, hashed), None)
