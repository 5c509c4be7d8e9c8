"""The one place that reads the wall clock, so the domain can stay pure (parsing: `domain.times`)."""

import time

from .domain import times


def now_iso() -> str:
    return times.iso(time.time())
