"""Kubernetes resource quantities: parsing, comparison and the server's canonical form.

The real API server stores quantities canonicalised ("0.5" becomes "500m", "2048Mi" becomes "2Gi"),
which is a classic source of "desired != actual" loops in operators, so the double does the same.
Values are kept as exact `Fraction`s.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction
from typing import Any

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {v: k for k, v in _DECIMAL.items()}
_BINARY_SUFFIX = {v: k for k, v in _BINARY.items()}
_RE = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(.*)$")
# The smallest unit a quantity keeps; anything finer is rounded up, as the real parser does.
_NANO = Fraction(1, 10**9)


class QuantityError(ValueError):
    """The string is not a Kubernetes quantity."""


def parse(value: Any) -> tuple[Fraction, str]:
    """Parse a quantity; returns (value, format) with format "BinarySI", "DecimalSI" or "DecimalExponent"."""
    if isinstance(value, str):
        return _parse_text(value)  # the same few strings, over and over: parsed once
    return _parse(value)


@functools.lru_cache(maxsize=4096)
def _parse_text(value: str) -> tuple[Fraction, str]:
    return _parse(value)


def _parse(value: Any) -> tuple[Fraction, str]:
    if isinstance(value, bool):
        raise QuantityError(f"quantities must match the regular expression: {value!r}")
    if isinstance(value, int | float):
        value = repr(value) if isinstance(value, float) else str(value)
    if not isinstance(value, str):
        raise QuantityError(f"quantities must be strings or numbers, not {type(value).__name__}")
    m = _RE.match(value.strip())
    if not m:
        raise QuantityError(
            "quantities must match the regular expression "
            f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {value!r}"
        )
    number = Fraction(m.group(1))
    suffix = m.group(2)
    if suffix in _BINARY:
        result, fmt = number * (1024 ** _BINARY[suffix]), "BinarySI"
    elif suffix in _DECIMAL:
        result, fmt = number * Fraction(10) ** _DECIMAL[suffix], "DecimalSI"
    elif re.fullmatch(r"[eE][+-]?\d+", suffix):
        result, fmt = number * Fraction(10) ** int(suffix[1:]), "DecimalExponent"
    else:
        raise QuantityError(f"unable to parse quantity's suffix: {value!r}")
    # Round up to nano precision, as resource.ParseQuantity does.
    scaled = result / _NANO
    if scaled.denominator != 1:
        result = Fraction(-((-scaled.numerator) // scaled.denominator)) * _NANO
    return result, fmt


def value(quantity: Any) -> Fraction:
    """The exact numeric value of a quantity ("500m" -> 1/2, "1Gi" -> 1073741824)."""
    return parse(quantity)[0]


def _decimal(v: Fraction, exponent_format: bool) -> str:
    # Largest exponent (multiple of 3, at least -9) that still leaves an integer mantissa.
    sign = "-" if v < 0 else ""
    v = abs(v)
    if v == 0:
        return "0"
    exp = -9
    mantissa = v * 10**9
    while mantissa.denominator == 1 and mantissa % 1000 == 0 and exp < 18:
        mantissa /= 1000
        exp += 3
    number = str(int(mantissa))
    if exponent_format:
        return sign + number + (f"e{exp}" if exp else "")
    return sign + number + _DECIMAL_SUFFIX[exp]


def canonical(quantity: Any) -> str:
    """The string the real API server stores for a quantity."""
    v, fmt = parse(quantity)
    if fmt == "BinarySI" and (abs(v) < 1024 or v.denominator != 1):
        # Small or fractional binary values are shown in decimal rather than rounded.
        fmt = "DecimalSI"
    if fmt == "BinarySI":
        sign = "-" if v < 0 else ""
        n = abs(int(v))
        exp = 0
        while n % 1024 == 0 and exp < 6:
            n //= 1024
            exp += 1
        return f"{sign}{n}{_BINARY_SUFFIX.get(exp, '')}"
    return _decimal(v, fmt == "DecimalExponent")
