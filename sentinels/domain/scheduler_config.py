"""Scheduler configuration (`scheduler:` in config.yaml), validated at start.

Pure parsing: `Settings.scheduler()` feeds it the mapping, `sentinels up` checks it
before anything starts, the schedule function and the router's timer use the result.
"""

from dataclasses import dataclass

from . import duration
from .errors import ConfigError, InvalidSpec
from .placement import BEST_EFFORT, STRATEGIES

KEYS = {"strategy", "starvation", "window", "orphan_grace", "reason_window", "concurrency", "tick"}


@dataclass(frozen=True)
class SchedulerConfig:
    strategy: str = BEST_EFFORT
    starvation_seconds: int = 1800  # after this, the first waiting job gets its nodes reserved
    window: int = 2000  # queue heads considered per pass
    orphan_grace_seconds: int = 30  # a queue entry without a record is dropped after this
    reason_window: int = 500  # waiting jobs whose reason is kept up to date
    concurrency: int = 32  # placements applied at once
    launch_backoff_max_seconds: float = 300.0  # a job whose launch the cluster refused waits at most this long
    tick_seconds: float = 10.0  # timer events of the embedded default (SENTINELS_TICK wins)

    @classmethod
    def from_dict(cls, raw: dict) -> "SchedulerConfig":
        unknown = set(raw) - KEYS
        if unknown:
            raise ConfigError(f"scheduler: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(KEYS))})")
        strategy = raw.get("strategy", BEST_EFFORT)
        if strategy not in STRATEGIES:
            raise ConfigError(f"scheduler: strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        try:
            base = cls()
            out = cls(
                strategy=strategy,
                starvation_seconds=duration.seconds(raw["starvation"], "scheduler.starvation") if "starvation" in raw else base.starvation_seconds,
                window=int(raw.get("window", base.window)),
                orphan_grace_seconds=duration.seconds(raw["orphan_grace"], "scheduler.orphan_grace") if "orphan_grace" in raw else base.orphan_grace_seconds,
                reason_window=int(raw.get("reason_window", base.reason_window)),
                concurrency=int(raw.get("concurrency", base.concurrency)),
                tick_seconds=tick(raw["tick"]) if "tick" in raw else base.tick_seconds,
            )
        except (InvalidSpec, TypeError, ValueError) as e:
            raise ConfigError(f"scheduler: {getattr(e, 'message', e)}") from None
        if min(out.window, out.reason_window, out.concurrency) < 1:
            raise ConfigError("scheduler: window, reason_window and concurrency must be at least 1")
        return out


def tick(value, what: str = "scheduler.tick") -> float:
    """Seconds between timer events: a number or a duration (10, 0.5, 30s), more than 0."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return float(duration.seconds(value, what))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidSpec(f"{what}: must be a number of seconds more than 0, got {value!r}", what)
    return float(value)
