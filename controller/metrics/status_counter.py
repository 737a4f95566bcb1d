"""A Prometheus counter whose values are kept in status, not counted by the process that serves it."""

from __future__ import annotations

from controller.metrics.series import Counter


class StatusCounter(Counter):
    """A counter whose values are kept in status, not counted by this process.

    prometheus-client's Counter starts at zero with the process. This one serves, for each label
    set, the value last handed to `set` and the time counting began (`_created`), so a restarted
    operator goes on from where status says, and the series agrees with status.
    """

    def set(self, labels: tuple[str, ...], value: float, *, created: float) -> None:
        """The value for `labels`; never lower than the one served before (a counter only rises)."""
        with self._lock:
            before = self._values.get(labels)
            self._values[labels] = max(value, before) if before is not None else value
            self._created[labels] = created
