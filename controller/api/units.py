"""Units the API speaks: compute units, Kubernetes quantities, Go-style durations, API timestamps."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

CU_STEP = 0.25
"""Capacity moves in steps of a quarter compute unit."""
CPU_PER_CU = 1.0
"""Cores in one compute unit."""
MEMORY_PER_CU = 4 * 1024**3
"""Bytes of memory in one compute unit."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def is_cu_step(value: float) -> bool:
    """Whether `value` is a whole number of 0.25 CU steps."""
    steps = value / CU_STEP
    return math.isclose(steps, round(steps), abs_tol=1e-9)


def round_up_to_step(value: float) -> float:
    """The smallest multiple of 0.25 that is >= value (tolerating float noise)."""
    return math.ceil(value / CU_STEP - 1e-9) * CU_STEP


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration as Kubernetes writes them: "90s", "5m", "1h30m", "168h".

    Raises ValueError with a message fit for a user.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"must be a duration such as 90s, 5m or 168h (got {text!r})")
    position = 0
    seconds = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text):
        raise ValueError(f"must be a duration such as 90s, 5m or 168h (got {text!r})")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The inverse of parse_duration, in the shortest exact form ("5m", "1h30m", "1.5s")."""
    total = value.total_seconds()
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{int(hours)}h"
    if minutes:
        out += f"{int(minutes)}m"
    if seconds or not out:
        out += f"{seconds:g}s"
    return out


def parse_bytes(text: str) -> int:
    """Parse a Kubernetes quantity of bytes ("10Gi", "500M"); raises ValueError."""
    # Imported here: the client package costs a fifth of a second at every CLI call.
    from kubernetes.utils.quantity import parse_quantity  # noqa: PLC0415

    try:
        value: Decimal = parse_quantity(text)
    except (ValueError, InvalidOperation, TypeError) as error:
        raise ValueError(f"must be a quantity such as 10Gi (got {text!r})") from error
    if value <= 0:
        raise ValueError(f"must be greater than zero (got {text!r})")
    return int(value.to_integral_value(rounding="ROUND_CEILING"))


def format_bytes(value: int) -> str:
    """Bytes as the largest exact binary unit Kubernetes accepts ("4Gi", "1536Mi")."""
    for suffix, factor in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if value % factor == 0:
            return f"{value // factor}{suffix}"
    return str(value)


def format_cpu(cores: float) -> str:
    """Cores as a Kubernetes CPU quantity in millicores ("250m", "2")."""
    millis = int(Decimal(str(cores)) * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def now_utc() -> datetime:
    """The wall clock, for the shell only; the policy is always handed the time."""
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds, as Kubernetes' MicroTime."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
