"""How teams share one cluster: quotas, fair share and preemption, read and checked together.

`Sharing.from_dict` parses the three configuration sections against the priority
classes so that a configuration that does not add up is refused at start with its key.
`snapshot()` turns what runs now and the usage ledger into what one scheduling pass
needs: what each quota holder holds, each share key's usage, and the running jobs as
preemption sees them. Pure.
"""

from dataclasses import dataclass, field

from . import fairshare, quota
from .preemption import PreemptionConfig, Running
from .errors import ConfigError


@dataclass(frozen=True)
class Sharing:
    quotas: quota.QuotaConfig = field(default_factory=quota.QuotaConfig)
    fair_share: fairshare.FairShareConfig = field(default_factory=fairshare.FairShareConfig)
    preemption: PreemptionConfig = field(default_factory=PreemptionConfig)

    @classmethod
    def from_dict(cls, quotas, fair_share, preempt, priorities) -> "Sharing":
        q = quota.QuotaConfig.from_dict(quotas)
        if q.teams:  # a rule that routes a team nobody has a quota for is a typo until proven otherwise
            for i, rule in enumerate(priorities.rules):
                team = rule.match.get("team")
                if team and not any(c in team for c in "*?[") and team not in q.teams:
                    raise ConfigError(f"priorities.rules[{i}].team: unknown team {team!r} "
                                      f"(teams with quotas: {', '.join(sorted(q.teams))})", f"priorities.rules[{i}].team")
        return cls(q, fairshare.FairShareConfig.from_dict(fair_share),
                   PreemptionConfig.from_dict(preempt, priorities.ordered()))

    def allows_unpreemptible(self, klass: str) -> bool:
        return klass in self.preemption.protected


@dataclass(frozen=True)
class RunningJob:
    """A running job as the scheduler snapshot reads it (from the record of an active job)."""

    id: str
    node: str
    klass: str
    rank: int
    team: str | None
    user: str | None
    cpu_millis: int
    memory_bytes: int
    gpu: int
    seconds: float
    preemptible: bool = True


@dataclass
class Snapshot:
    held: dict  # (kind, name) -> resource -> amount
    usage: dict  # share key -> usage now
    running: list  # [preemption.Running]


def snapshot(cfg: Sharing, running: list[RunningJob], ledger: dict, now: float) -> Snapshot:
    """What one pass needs; `ledger` already holds the running jobs' usage (`fairshare.accrue`)."""
    held: dict = {}
    for r in running:
        quota.add(held, r.team, r.user, quota.demand(r.cpu_millis, r.memory_bytes, r.gpu), cfg.quotas)
    borrowing = {k for k, amounts in held.items()
                 if (q := (cfg.quotas.teams if k[0] == "team" else cfg.quotas.users).get(k[1])) and q.over_nominal(amounts)}
    victims = [Running(r.id, r.node, r.rank, r.team, r.cpu_millis, r.memory_bytes, r.gpu, r.seconds,
                       r.preemptible, ("team", r.team) in borrowing or ("user", r.user) in borrowing)
               for r in running]
    return Snapshot(held, fairshare.usage(ledger, [], now, cfg.fair_share), victims)


def accrual(cfg: Sharing, running: list[RunningJob], now: float) -> list[tuple]:
    """The running jobs as `fairshare.accrue` charges them: (id, share key, rate, started at)."""
    return [(r.id, cfg.fair_share.key(r.team, r.user), cfg.fair_share.rate(r.cpu_millis, r.gpu), now - r.seconds)
            for r in running]


def within_nominal(cfg: Sharing, team: str | None, user: str | None, need: dict, held: dict) -> bool:
    """Whether starting this job keeps every quota holder it counts against within nominal."""
    holders = cfg.quotas.holders(team, user)
    return bool(holders) and all(held.get((kind, name), {}).get(r, 0) + need.get(r, 0) <= n
                                 for kind, name, q in holders for r, n in q.nominal.items())


# --- `sentinels share`: who holds what, against which quota -------------------------------
def holding(running: list[RunningJob]) -> dict:
    """What every team and user holds now, quota or not: (kind, name) -> resource -> amount."""
    out: dict = {}
    for r in running:
        need = quota.demand(r.cpu_millis, r.memory_bytes, r.gpu)
        for key in (("team", r.team), ("user", r.user)):
            if key[1]:
                bucket = out.setdefault(key, {})
                for resource in quota.RESOURCES:
                    bucket[resource] = bucket.get(resource, 0) + need[resource]
    return out


def holding_to_doc(held: dict) -> dict:
    doc: dict = {"team": {}, "user": {}}
    for (kind, name), amounts in held.items():
        doc[kind][name] = dict(amounts)
    return doc


def holding_from_doc(doc) -> dict:
    doc = doc if isinstance(doc, dict) else {}
    return {(kind, str(name)): {r: int(v) for r, v in amounts.items() if r in quota.RESOURCES and isinstance(v, int)}
            for kind in ("team", "user") if isinstance(doc.get(kind), dict)
            for name, amounts in doc[kind].items() if isinstance(amounts, dict)}


def report(cfg: Sharing, usage: dict, held: dict) -> list[dict]:
    """One row per team (and per user with a quota, or when fair share goes by user): its
    decayed usage and share of all usage, what it holds, its nominal quota, how much it may
    borrow beyond it and how much of what it holds is borrowed now."""
    by = cfg.fair_share.by
    shares = fairshare.shares(usage)
    names: dict = {"team": set(cfg.quotas.teams) | {n for k, n in held if k == "team"},
                   "user": set(cfg.quotas.users)}
    if by in names:
        names[by] |= set(usage)
    rows = []
    for kind in ("team", "user"):
        quotas = cfg.quotas.teams if kind == "team" else cfg.quotas.users
        for name in sorted(names[kind]):
            holds = {r: held.get((kind, name), {}).get(r, 0) for r in quota.RESOURCES}
            q = quotas.get(name)
            share = shares.get(name) if kind == by else None
            rows.append({
                "kind": kind, "name": name,
                "usage": round(share.usage, 3) if share else (0.0 if kind == by else None),
                "share": round(share.fraction, 4) if share else (0.0 if kind == by else None),
                "holds": holds,
                "nominal": dict(q.nominal) if q else None,
                "borrowing_limit": {r: q.borrowing.get(r, 0) for r in q.nominal} if q else None,
                "borrowed": {r: max(0, holds[r] - n) for r, n in q.nominal.items()} if q else None,
            })
    return rows
