"""Fair share within a priority class: the team that used least lately goes first.

As Slurm's fair-share factor: each team (or user) carries a usage figure, charged when its
jobs run (CPU-seconds and GPU-seconds, weighted) and halved every `half_life`. Among jobs
of the same class, lower usage goes first; equal usage keeps submission order. Classes
keep their order, and requeued jobs keep their place at the front of their class.

Configuration (`fair_share:` in config.yaml):

    fair_share: {by: team, half_life: 7d, weights: {cpu: 1, gpu: 10}}

Pure: the caller passes the ledger (what was charged, and when), the running jobs and now.
"""

from dataclasses import dataclass

from . import duration
from .errors import ConfigError, InvalidSpec

BY = ("team", "user", "off")


@dataclass(frozen=True)
class FairShareConfig:
    by: str = "team"
    half_life_seconds: float = 7 * 86400.0
    cpu_weight: float = 1.0  # per core-second
    gpu_weight: float = 10.0  # per GPU-second

    @classmethod
    def from_dict(cls, raw) -> "FairShareConfig":
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError("fair_share: expected a mapping with by, half_life, weights", "fair_share")
        unknown = [str(k) for k in raw if k not in ("by", "half_life", "weights")]
        if unknown:
            raise ConfigError(f"fair_share: unknown key(s) {', '.join(sorted(unknown))} (known: by, half_life, weights)", "fair_share")
        by = raw.get("by", "team")
        if by not in BY:
            raise ConfigError(f"fair_share.by: one of {', '.join(BY)}, got {by!r}", "fair_share.by")
        try:
            half_life = duration.seconds(raw.get("half_life", "7d"), "fair_share.half_life")
        except InvalidSpec as e:  # the same words, as a configuration error
            raise ConfigError(e.message, "fair_share.half_life") from None
        weights = raw.get("weights") or {}
        if not isinstance(weights, dict) or set(weights) - {"cpu", "gpu"}:
            raise ConfigError("fair_share.weights: a mapping with cpu and/or gpu", "fair_share.weights")
        for k, v in weights.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"fair_share.weights.{k}: a number >= 0, got {v!r}", f"fair_share.weights.{k}")
        return cls(by, float(half_life), float(weights.get("cpu", 1.0)), float(weights.get("gpu", 10.0)))

    def key(self, team: str | None, user: str | None) -> str | None:
        """Whose share a job counts against (None: fair share is off or the job has no team)."""
        if self.by == "off":
            return None
        return team if self.by == "team" else user

    def rate(self, cpu_millis: int, gpu: int) -> float:
        """Usage charged per second of running."""
        return cpu_millis / 1000.0 * self.cpu_weight + gpu * self.gpu_weight


def decay(value: float, elapsed: float, half_life: float) -> float:
    return value * 0.5 ** (max(elapsed, 0.0) / half_life)


@dataclass(frozen=True)
class Charge:
    """A ledger entry: the usage figure as it was at `at` (epoch seconds)."""

    usage: float
    at: float


def charge(ledger: dict, key: str, amount: float, now: float, cfg: FairShareConfig) -> dict:
    """A new ledger with `amount` added to `key`'s usage (older usage decayed to now)."""
    old = ledger.get(key)
    base = decay(old.usage, now - old.at, cfg.half_life_seconds) if old else 0.0
    return {**ledger, key: Charge(base + amount, now)}


@dataclass(frozen=True)
class Active:
    """A running job as fair share sees it: whose it is, its rate and how long it has run."""

    key: str
    rate: float
    seconds: float


def usage(ledger: dict, running: list[Active], now: float, cfg: FairShareConfig) -> dict:
    """Each key's usage now: its decayed ledger plus what its running jobs have used so far."""
    out = {k: decay(c.usage, now - c.at, cfg.half_life_seconds) for k, c in ledger.items()}
    for a in running:
        out[a.key] = out.get(a.key, 0.0) + a.rate * a.seconds
    return out


def accrue(ledger: dict, marks: dict, running: list, now: float, cfg: FairShareConfig) -> tuple[dict, dict]:
    """Charge running jobs for the time since they were last charged.

    `running` holds (job id, share key, rate per second, started at); `marks` maps job id
    to when it was last charged. Returns the new ledger and marks (jobs that stopped
    running drop out of the marks: they were charged up to the pass that last saw them).
    """
    new_marks = {}
    for job_id, key, rate, started in running:
        since = max(marks.get(job_id, started), started)
        if key is not None and now > since:
            ledger = charge(ledger, key, rate * (now - since), now, cfg)
        new_marks[job_id] = max(now, since)
    return ledger, new_marks


@dataclass(frozen=True)
class Share:
    """One key's standing, for `sentinels share` and the queue listing."""

    key: str
    usage: float
    fraction: float  # of all usage (0 when nobody used anything)


def shares(current: dict) -> dict:
    total = sum(current.values())
    return {k: Share(k, v, (v / total) if total else 0.0) for k, v in current.items()}


def order(heads: list, key_of, current: dict) -> list:
    """Reorder queue heads: class first (rank), requeued first, then lowest usage, then submission order.

    `heads` items need `rank`, `order` and `front` (requeued); `key_of(item)` names its share key.
    """
    return sorted(heads, key=lambda h: sort_key(h.rank, h.front, current.get(key_of(h), 0.0), h.order))


def sort_key(rank: int, front: bool, usage: float, order: int) -> tuple:
    """Where a queued job stands: class first, requeued first, then lowest usage, then submission."""
    return -rank, not front, usage, order


def from_doc(doc) -> tuple[dict, dict]:
    """The ledger and marks from their stored document ({"usage": {key: [usage, at]}, "marks": {...}})."""
    doc = doc if isinstance(doc, dict) else {}
    ledger = {str(k): Charge(float(v[0]), float(v[1])) for k, v in (doc.get("usage") or {}).items()
              if isinstance(v, (list, tuple)) and len(v) == 2}
    marks = {str(k): float(v) for k, v in (doc.get("marks") or {}).items() if isinstance(v, (int, float))}
    return ledger, marks


def to_doc(ledger: dict, marks: dict) -> dict:
    return {"usage": {k: [c.usage, c.at] for k, c in ledger.items()}, "marks": marks}
