"""Times as the records hold them (ISO-8601, UTC, `Z`) and the one reading of a job's times.

Every part that parses a timestamp or tells how long a job waited or ran comes here, so
Slack, MLflow and the CLI cannot disagree. Pure: `now` is passed in.

A requeued job keeps only the last timestamp per state, so both durations are those of
its last attempt: time in queue from its last entry into the queue (`QUEUED`) to the
scheduler placing it (`SCHEDULED`, else `RUNNING`); run time from `RUNNING` to its end
(the terminal state's time, or `now` while it runs): a job that never ran has none.
"""

from datetime import datetime, timezone

from .states import QUEUED, RUNNING, SCHEDULED, TERMINAL


def parse(text: str) -> float:
    """Seconds since the epoch; raises ValueError for text that is not ISO-8601."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def seconds(text: object) -> float | None:
    """Like `parse`, but None for a missing, malformed or zone-less value."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def iso(t: float, timespec: str = "milliseconds") -> str:
    """The record format: 2026-12-01T08:30:00.000Z."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def job_times(record: dict, now: float | None = None) -> tuple[float | None, float | None]:
    """(time in queue, run time) in seconds of the job's last attempt; None where unknown.

    `now` ends the run time of a job that has not finished (None: no run time for it).
    """
    ts = record.get("timestamps") or {}
    state = record.get("state")
    end = seconds(ts.get(state)) if state in TERMINAL else None
    if end is None:
        end = now
    queued = seconds(ts.get(QUEUED)) or seconds(record.get("submitted_at"))
    limit = end if end is not None else float("inf")
    started = [t for t in (seconds(ts.get(RUNNING)), seconds(ts.get(SCHEDULED)))
               if t is not None and (queued is None or t >= queued) and t <= limit]
    left_queue = min(started) if started else end
    in_queue = max(0.0, left_queue - queued) if queued is not None and left_queue is not None else None
    running = seconds(ts.get(RUNNING))
    ran = running is not None and (queued is None or running >= queued) and running <= limit
    run = max(0.0, end - running) if ran and running is not None and end is not None else None
    return in_queue, run


def since_iso(value: str, now: float) -> str:
    """`logs --since`: a duration back from `now` (`10m`, `2h`) or an ISO time, as an ISO time
    (zone-less ISO times are UTC). Raises InvalidSpec for anything else."""
    from . import duration
    from .errors import InvalidSpec

    try:
        return iso(now - duration.seconds(value, "since"))
    except InvalidSpec:
        pass
    except (OverflowError, ValueError, OSError):  # further back than a calendar reaches
        return iso(0)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return iso((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp())
    except (OverflowError, ValueError, OSError):
        raise InvalidSpec(f"since: {value[:40]!r} is neither a duration such as 10m or 2h nor an ISO time",
                          "since") from None
