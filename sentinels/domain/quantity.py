"""Kubernetes resource quantities ("500m", "16Gi", "1e3") as exact integers.

CPU is kept in millicores and memory in bytes so comparisons in placement are exact.
"""

import re
from decimal import Decimal, InvalidOperation

from .errors import InvalidSpec

_SUFFIX = {
    "": Decimal(1), "m": Decimal("0.001"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}
MAX_TEXT = 40  # no real quantity is longer; 5,000-digit numbers are refused before any arithmetic
MAX_EXPONENT = 30
_RE = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][+-]?[0-9]+)|([A-Za-z]*))$")


def parse(value, field: str) -> Decimal:
    """Parse a quantity (string or number) into a Decimal of base units; reject junk."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidSpec(f"{field}: expected a quantity such as 2, 500m or 16Gi, got {type(value).__name__}", field)
    text = str(value).strip()
    if len(text) > MAX_TEXT:
        raise InvalidSpec(f"{field}: {len(text)} characters is too long for a quantity (at most {MAX_TEXT})", field)
    m = _RE.match(text)
    if not m:
        raise InvalidSpec(f"{field}: {text!r} is not a Kubernetes quantity (e.g. 2, 500m, 16Gi)", field)
    number, exponent, suffix = m.group(1), m.group(2), m.group(3) or ""
    if suffix not in _SUFFIX:
        raise InvalidSpec(f"{field}: unknown unit {suffix!r} in {text!r} (use m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei)", field)
    if exponent and abs(int(exponent[1:])) > MAX_EXPONENT:
        raise InvalidSpec(f"{field}: the exponent in {text!r} is out of range (at most e{MAX_EXPONENT})", field)
    try:
        amount = Decimal(number) * (Decimal(10) ** int(exponent[1:]) if exponent else _SUFFIX[suffix])
    except (InvalidOperation, ValueError, OverflowError):
        raise InvalidSpec(f"{field}: {text!r} is not a number", field) from None
    if amount < 0:
        raise InvalidSpec(f"{field}: must not be negative, got {text!r}", field)
    return amount


def cpu_millis(value, field: str = "resources.cpu") -> int:
    amount = parse(value, field) * 1000
    if amount != amount.to_integral_value():
        raise InvalidSpec(f"{field}: finer than 1m (one millicore): {value!r}", field)
    return int(amount)


def memory_bytes(value, field: str = "resources.memory") -> int:
    amount = parse(value, field)
    if amount != amount.to_integral_value():
        raise InvalidSpec(f"{field}: not a whole number of bytes: {value!r}", field)
    return int(amount)


def format_cpu(millis: int) -> str:
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_memory(n: int) -> str:
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIX[suffix])
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)
