"""The one place that reads the wall clock, so the domain can stay pure.

Parsing lives in `domain.times` (the one ISO parser); `parse_iso` is that parser, named
here too because callers reach for it next to `now_iso`.
"""

import time

from .domain import times
from .domain.times import parse as parse_iso  # noqa: F401  (the same function, not a second parser)


def now_iso() -> str:
    return times.iso(time.time())


class Every:
    """True at most once per `seconds` (monotonic): throttles work done on the timer."""

    def __init__(self, seconds: float):
        import time

        self.seconds, self._mono, self._last = seconds, time.monotonic, float("-inf")

    def due(self) -> bool:
        now = self._mono()
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True
