"""`Meter` adapters: counts published on core NATS for the exporter, and an in-memory twin.

Subject `sentinels.metrics.<what>.<label>`, body `{"value": v}`; no stream keeps them
(the exporter's counters start at its own start, like any Prometheus counter). Publishing
never raises: metrics must not fail the work they describe.
"""

import json
import logging

from ..domain.names import METRICS_SUBJECT, METRICS_SUBJECTS

log = logging.getLogger("sentinels.meter")
WILDCARD = METRICS_SUBJECTS
WHATS = ("handler_error", "redelivery", "slack_sent", "slack_failed", "schedule_pass")


def subject(what: str, label: str) -> str:
    token = "".join(c if c.isalnum() or c in "-_" else "_" for c in (label or "none"))
    return METRICS_SUBJECT.format(what, token)


def parse(subject_name: str, data: bytes) -> tuple[str, str, float] | None:
    """(what, label, value) from a published count; None for anything malformed."""
    parts = subject_name.split(".")
    if len(parts) != 4 or parts[2] not in WHATS:
        return None
    try:
        value = float(json.loads(data or b"{}").get("value", 1.0))
    except (ValueError, AttributeError, TypeError):
        return None
    return parts[2], parts[3], value


class NatsMeter:
    def __init__(self, nc):
        self.nc = nc

    async def count(self, what: str, label: str = "", value: float = 1.0) -> None:
        try:
            await self.nc.publish(subject(what, label), json.dumps({"value": value}).encode())
        except Exception as e:  # a closed or reconnecting connection: drop the count
            log.debug("meter: %s %s not sent (%s)", what, label, type(e).__name__)


class MemoryMeter:
    def __init__(self):
        self.counts: list[tuple[str, str, float]] = []

    async def count(self, what: str, label: str = "", value: float = 1.0) -> None:
        self.counts.append((what, label, value))
