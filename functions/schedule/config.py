"""Scheduler configuration (`scheduler:` in config.yaml), validated at start."""

from dataclasses import dataclass

from sentinels.domain import duration
from sentinels.domain.errors import ConfigError, InvalidSpec
from sentinels.domain.placement import BEST_EFFORT, STRATEGIES

KEYS = {"strategy", "starvation", "window", "orphan_grace", "reason_window", "concurrency", "tick"}


@dataclass(frozen=True)
class SchedulerConfig:
    strategy: str = BEST_EFFORT
    starvation_seconds: int = 1800  # after this, the first waiting job gets its nodes reserved
    window: int = 2000  # queue heads considered per pass
    orphan_grace_seconds: int = 30  # a queue entry without a record is dropped after this
    reason_window: int = 500  # waiting jobs whose reason is kept up to date
    concurrency: int = 32  # placements applied at once

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
            )
        except (InvalidSpec, TypeError, ValueError) as e:
            raise ConfigError(f"scheduler: {getattr(e, 'message', e)}") from None
        if min(out.window, out.reason_window, out.concurrency) < 1:
            raise ConfigError("scheduler: window, reason_window and concurrency must be at least 1")
        return out
