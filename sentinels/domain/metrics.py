"""What the metrics exporter counts, as pure functions of job records (no I/O, no clock).

The exporter mirrors the job store; for every record change it asks `Tally.apply` what
changed: jobs per state and the resources waiting jobs ask for are kept as running sums
(a scrape reads them in O(1), whatever the queue length), and a transition yields the
observations for the histograms (time in queue, submit to start, duration by end state).
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

from .demand import Demand, shape
from .states import QUEUED, RUNNING, SCHEDULED, STATES, TERMINAL

# histogram buckets (seconds): from a busy-free queue (sub-second) to a day of waiting
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400)
DURATION_BUCKETS = (1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 259200)
PASS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
PLACED_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250)


def seconds_between(start: Optional[str], end: Optional[str]) -> Optional[float]:
    """end - start for two ISO times, None when either is missing or malformed."""
    try:
        a = datetime.fromisoformat(str(start).replace("Z", "+00:00")).timestamp()
        b = datetime.fromisoformat(str(end).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return max(0.0, b - a)


@dataclass(frozen=True)
class Row:
    """What the tally keeps per job: its state, class and resources."""

    state: str
    klass: str
    cpu_millis: int = 0
    memory_bytes: int = 0
    gpu: int = 0
    shape: str = "cpu"  # the node shape it needs (`demand.shape`)


def row_of(record: dict) -> Row:
    res = (record.get("spec") or {}).get("resources") or {}

    def num(key):
        v = res.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else 0

    spec = record.get("spec") or {}
    try:
        kind = shape(spec) if record.get("state") == QUEUED else "cpu"
    except (TypeError, ValueError, AttributeError):  # a malformed record still counts, as a CPU job
        kind = "cpu"
    return Row(str(record.get("state")), str(record.get("priority") or ""), num("cpu_millis"),
               num("memory_bytes"), num("gpu"), kind)


@dataclass(frozen=True)
class Observation:
    metric: str  # "queue_wait" | "start_latency" | "duration" | "submitted" | "finished"
    label: str  # class for waits and latency, lower-case end state for durations and ends
    seconds: float = 0.0


def observations(old: Optional[str], after: dict) -> list[Observation]:
    """The observations one record change implies; `old` is the previous state (None: a new job)."""
    new = after.get("state")
    if old is None:
        return [Observation("submitted", str(after.get("priority") or ""))] if new == QUEUED else []
    if old == new:
        return []
    ts, klass = after.get("timestamps") or {}, str(after.get("priority") or "")
    out = []
    if old == QUEUED and new in (SCHEDULED, RUNNING):
        wait = seconds_between(ts.get(QUEUED), ts.get(new))
        if wait is not None:
            out.append(Observation("queue_wait", klass, wait))
    if new == RUNNING:
        latency = seconds_between(after.get("submitted_at"), ts.get(RUNNING))
        if latency is not None:
            out.append(Observation("start_latency", klass, latency))
    if new in TERMINAL and old not in TERMINAL:
        end = new.lower()
        out.append(Observation("finished", end))
        took = seconds_between(ts.get(RUNNING), ts.get(new)) if RUNNING in ts else None
        if took is not None:
            out.append(Observation("duration", end, took))
    return out


@dataclass
class Tally:
    """Jobs per state and the demand of waiting jobs per (class, node shape), the same sums
    as `demand.waiting`, kept up to date one change at a time."""

    rows: dict = field(default_factory=dict)  # job id -> Row
    by_state: dict = field(default_factory=lambda: {s: 0 for s in STATES})
    demand: dict = field(default_factory=dict)  # (class, shape) -> demand.Demand of QUEUED jobs

    def _count(self, row: Row, sign: int) -> None:
        self.by_state[row.state] = self.by_state.get(row.state, 0) + sign
        if row.state == QUEUED:
            key = (row.klass, row.shape)
            d = self.demand.setdefault(key, Demand())
            d.jobs += sign
            d.cpu_millis += sign * row.cpu_millis
            d.memory_bytes += sign * row.memory_bytes
            d.gpu += sign * row.gpu
            if d.jobs <= 0:
                del self.demand[key]

    def apply(self, job_id: str, record: Optional[dict]) -> Optional[Row]:
        """Take the record's new version (None: deleted); return the previous row."""
        old = self.rows.pop(job_id, None)
        if old is not None:
            self._count(old, -1)
        if record is not None:
            new = row_of(record)
            self.rows[job_id] = new
            self._count(new, +1)
        return old
