"""Team and user quotas with borrowing: how much of the cluster each may hold.

Configuration (`quotas:` in config.yaml), parsed once at start so a quota that does not
add up is refused with its key named:

    quotas:
      teams:
        vision: {gpu: 8, cpu: 64, memory: 512Gi, jobs: 20, borrowing: {gpu: 4}}
      users:
        alice: {gpu: 2}

A team (or user) may hold its nominal amount of each named resource; beyond it, it may
borrow idle capacity up to `borrowing` more (Kueue's borrowingLimit). A resource a quota
does not name is not limited; a resource with no borrowing entry may not be borrowed.
Borrowed capacity is the first to be reclaimed (see `preemption`). Pure: the caller
passes what each team and user holds now.
"""

from dataclasses import dataclass, field

from . import quantity
from .errors import ConfigError, InvalidSpec

RESOURCES = ("cpu_millis", "memory_bytes", "gpu", "jobs")
_KEYS = {"cpu": "cpu_millis", "memory": "memory_bytes", "gpu": "gpu", "jobs": "jobs"}
_LABELS = {"cpu_millis": "CPU", "memory_bytes": "memory", "gpu": "GPUs", "jobs": "running jobs"}


def _amount(resource: str, value, where: str) -> int:
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{where}: expected an amount, got {value!r}", where)
    try:
        if resource == "cpu_millis":
            return quantity.cpu_millis(value, where)
        if resource == "memory_bytes":
            return quantity.memory_bytes(value, where)
        amount = quantity.parse(value, where)
    except InvalidSpec as e:
        raise ConfigError(e.message, where) from None
    if amount != amount.to_integral_value():
        raise ConfigError(f"{where}: must be a whole number, got {value!r}", where)
    return int(amount)


def _amounts(raw, where: str, allowed: tuple) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(allowed)}", where)
    unknown = [str(k) for k in raw if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(allowed)})", where)
    return {_KEYS[k]: _amount(_KEYS[k], v, f"{where}.{k}") for k, v in raw.items()}


@dataclass(frozen=True)
class Quota:
    """Nominal amounts (absent: unlimited) and how much more may be borrowed (absent: none)."""

    nominal: dict
    borrowing: dict = field(default_factory=dict)

    def limit(self, resource: str) -> int | None:
        if resource not in self.nominal:
            return None
        return self.nominal[resource] + self.borrowing.get(resource, 0)

    def over_nominal(self, held: dict) -> bool:
        """Whether what `held` holds is partly borrowed."""
        return any(held.get(r, 0) > n for r, n in self.nominal.items())


def _quota(raw, where: str) -> Quota:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{gpu: 8, cpu: 64, memory: 512Gi, jobs: 20}}", where)
    body = {k: v for k, v in raw.items() if k != "borrowing"}
    nominal = _amounts(body, where, tuple(_KEYS))
    borrowing = _amounts(raw.get("borrowing") or {}, f"{where}.borrowing", tuple(_KEYS))
    for resource in borrowing:
        if resource not in nominal:
            key = next(k for k, v in _KEYS.items() if v == resource)
            raise ConfigError(f"{where}.borrowing.{key}: borrowing needs a nominal {key} to borrow beyond", f"{where}.borrowing.{key}")
    return Quota(nominal, borrowing)


@dataclass(frozen=True)
class QuotaConfig:
    teams: dict = field(default_factory=dict)  # team -> Quota
    users: dict = field(default_factory=dict)  # user -> Quota

    @classmethod
    def from_dict(cls, raw) -> "QuotaConfig":
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError("quotas: expected a mapping with teams and/or users", "quotas")
        unknown = [str(k) for k in raw if k not in ("teams", "users")]
        if unknown:
            raise ConfigError(f"quotas: unknown key(s) {', '.join(sorted(unknown))} (known: teams, users)", "quotas")
        out = {}
        for section in ("teams", "users"):
            entries = raw.get(section) or {}
            if not isinstance(entries, dict):
                raise ConfigError(f"quotas.{section}: expected a mapping of name: quota", f"quotas.{section}")
            out[section] = {str(name): _quota(q, f"quotas.{section}.{name}") for name, q in entries.items()}
        return cls(out["teams"], out["users"])

    def __bool__(self) -> bool:
        return bool(self.teams or self.users)

    def holders(self, team: str | None, user: str | None) -> list[tuple[str, str, Quota]]:
        """The quotas a job of this team and user counts against: (kind, name, quota)."""
        out = []
        if team and team in self.teams:
            out.append(("team", team, self.teams[team]))
        if user and user in self.users:
            out.append(("user", user, self.users[user]))
        return out


def demand(cpu_millis: int, memory_bytes: int, gpu: int) -> dict:
    """What one job counts against a quota."""
    return {"cpu_millis": cpu_millis, "memory_bytes": memory_bytes, "gpu": gpu, "jobs": 1}


def _fmt(resource: str, n: int) -> str:
    if resource == "cpu_millis":
        return quantity.format_cpu(n)
    if resource == "memory_bytes":
        return quantity.format_memory(n)
    return str(n)


@dataclass(frozen=True)
class Verdict:
    """Whether a job may start under its quotas now, and if not whether it ever could."""

    ok: bool
    borrows: bool = False  # starting it takes its holder beyond nominal
    never: bool = False  # larger than nominal + borrowing: it can never start as configured
    resource: str = ""  # the resource that is short
    reason: str = ""


def check(quotas: QuotaConfig, team: str | None, user: str | None, need: dict, held: dict) -> Verdict:
    """May a job needing `need` start, given what each holder already holds (`held[(kind, name)]`)?"""
    borrows = False
    for kind, name, quota in quotas.holders(team, user):
        now = held.get((kind, name), {})
        for resource, nominal in quota.nominal.items():
            want = now.get(resource, 0) + need.get(resource, 0)
            limit = nominal + quota.borrowing.get(resource, 0)
            label = _LABELS[resource]
            if need.get(resource, 0) > limit:
                return Verdict(False, never=True, resource=resource,
                               reason=f"needs {_fmt(resource, need[resource])} {label}; {kind} {name} may hold at most "
                                      f"{_fmt(resource, limit)} ({_fmt(resource, nominal)} nominal"
                                      f" + {_fmt(resource, limit - nominal)} borrowing)")
            if want > limit:
                used = f"{kind} {name} uses {_fmt(resource, now.get(resource, 0))} of its {_fmt(resource, nominal)} {label}"
                tail = "borrowing limit reached" if limit > nominal else "no borrowing allowed"
                return Verdict(False, resource=resource, reason=f"{used}; {tail}")
            if want > nominal:
                borrows = True
    return Verdict(True, borrows=borrows)


def add(held: dict, team: str | None, user: str | None, need: dict, quotas: QuotaConfig, sign: int = 1) -> None:
    """Count a job against its holders in `held` (in place): the bookkeeping of one pass."""
    for kind, name, _ in quotas.holders(team, user):
        bucket = held.setdefault((kind, name), {})
        for resource in RESOURCES:
            bucket[resource] = bucket.get(resource, 0) + sign * need.get(resource, 0)
