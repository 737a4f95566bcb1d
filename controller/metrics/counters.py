"""Rates from counters, the same for every source: Postgres's statistics read twice, or Prometheus's
samples of cAdvisor's and the exporter's series.

A counter only grows, except when what keeps it restarts: a value lower than the one before is a
reset, and the increase across it counts from zero.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

Sample = tuple[float, float]
"""(unix time in seconds, value)."""


def increases(samples: Sequence[Sample]) -> list[Sample]:
    """(time, increase since the sample before) for every sample after the first."""
    return [
        (time, after - before if after >= before else after)
        for (_, before), (time, after) in itertools.pairwise(samples)
    ]


def rate(samples: Sequence[Sample], *, own_per_interval: float = 0.0) -> float | None:
    """The increase per second over the samples, less what the operator adds itself in each interval
    (its own statements, say); None with fewer than two samples."""
    steps = increases(samples)
    if not steps:
        return None
    total = sum(increase for _, increase in steps) - own_per_interval * len(steps)
    return max(total, 0.0) / max(samples[-1][0] - samples[0][0], 1e-6)


def share(part: Sequence[Sample], whole: Sequence[Sample]) -> float | None:
    """One counter's increase as a share of another's over the same samples (throttled periods of all
    periods), 0 to 1; None with fewer than two samples of either."""
    hit, ran = increases(part), increases(whole)
    if not hit or not ran:
        return None
    total = sum(increase for _, increase in ran)
    return min(sum(increase for _, increase in hit) / total, 1.0) if total > 0 else 0.0
