"""What an anonymous client can make the activator hold."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    startup_deadline: float = 10.0
    """Seconds from accept to a complete, valid StartupMessage (Postgres gives authentication_timeout)."""
