"""Log lines about turned-away connections, a few per reason per interval, then a count.

Anyone who can reach a port decides how often a connection is refused; the log must not grow with
them (a flood once wrote 20 MB of tracebacks in a minute). Each reason gets `burst` lines per
`interval`; the rest are counted and told in one line when the interval ends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import structlog


@dataclass
class _Window:
    logged: int = 0
    suppressed: int = 0


class RefusalLog:
    def __init__(self, *, burst: int = 3, interval: float = 10.0, logger: Any = None) -> None:
        self.burst = burst
        self.interval = interval
        self.log = logger or structlog.get_logger("activator")
        self._windows: dict[str, _Window] = {}

    def refused(self, reason: str, **fields: Any) -> None:
        window = self._windows.get(reason)
        if window is None:
            window = self._windows[reason] = _Window()
            asyncio.get_running_loop().call_later(self.interval, self._close, reason)
        if window.logged < self.burst:
            window.logged += 1
            self.log.warning("connection refused", reason=reason, **fields)
        else:
            window.suppressed += 1

    def _close(self, reason: str) -> None:
        window = self._windows.pop(reason)
        if window.suppressed:
            self.log.warning(
                "connections refused, lines suppressed",
                reason=reason,
                suppressed=window.suppressed,
                interval_s=self.interval,
            )
