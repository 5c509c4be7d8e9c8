"""Durations such as "90s", "30m", "2h", "1h30m", "1d" or a number of seconds."""

import re

from .errors import InvalidSpec

_PART = re.compile(r"(\d+)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(value, field: str = "timeout") -> int:
    if isinstance(value, bool):
        raise InvalidSpec(f"{field}: expected a duration such as 30m or 2h, got a boolean", field)
    if isinstance(value, int):
        total = value
    elif isinstance(value, str) and value.strip().isdigit():
        total = int(value)
    elif isinstance(value, str) and (text := value.strip().lower()) and _PART.sub("", text) == "":
        total = sum(int(n) * _UNIT[u] for n, u in _PART.findall(text))
    else:
        raise InvalidSpec(f"{field}: {value!r} is not a duration (e.g. 90s, 30m, 2h, 1h30m, 1d)", field)
    if total <= 0:
        raise InvalidSpec(f"{field}: must be positive, got {value!r}", field)
    return total


def human(total: float) -> str:
    total = int(total)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"
