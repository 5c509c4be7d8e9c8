"""Preemption: which running jobs a waiting job may evict, and the fewest it needs to.

Off by default. Configuration (`preemption:` in config.yaml):

    preemption:
      classes: [critical]          # jobs of these classes may evict jobs of lower classes
      protected: [critical, high]  # jobs of these classes may declare `preemptible: false`

Victims are stopped as a cancel stops them: SIGTERM, then SIGKILL after the grace period
(the local executor's `stop_grace`, the pod's terminationGracePeriodSeconds on Kubernetes).

A job may also reclaim its team's nominal quota from teams that borrow beyond theirs:
borrowed capacity is taken back first, whatever the borrower's class. Victims are
requeued at the front of their class with attempts + 1 (never counted as a failure).

Choice: per node where the job could fit, victims in order of preference (borrowed
first, then lowest class, then least work lost), taken until the job fits, then any victim
not needed after all is spared; the node with the fewest victims, then the least lost
work, wins. Pure: the caller passes nodes, running jobs and what each holder holds.
"""

from dataclasses import dataclass, field

from .errors import ConfigError


@dataclass(frozen=True)
class PreemptionConfig:
    classes: frozenset = frozenset()
    protected: frozenset = frozenset()

    @classmethod
    def from_dict(cls, raw, known_classes) -> "PreemptionConfig":
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError("preemption: expected a mapping with classes, protected", "preemption")
        unknown = [str(k) for k in raw if k not in ("classes", "protected")]
        if unknown:
            raise ConfigError(f"preemption: unknown key(s) {', '.join(sorted(unknown))} (known: classes, protected)", "preemption")
        sets = {}
        for key in ("classes", "protected"):
            value = raw.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"preemption.{key}: a list of class names", f"preemption.{key}")
            bad = [v for v in value if v not in known_classes]
            if bad:
                raise ConfigError(f"preemption.{key}: unknown class(es) {', '.join(bad)} (classes: {', '.join(known_classes)})",
                                  f"preemption.{key}")
            sets[key] = frozenset(value)
        return cls(sets["classes"], sets["protected"])

    @property
    def enabled(self) -> bool:
        return bool(self.classes)


@dataclass(frozen=True)
class Running:
    """A running job as preemption sees it."""

    id: str
    node: str
    rank: int  # its class value
    team: str | None
    cpu_millis: int
    memory_bytes: int
    gpu: int
    seconds: float  # how long it has run (work lost if evicted)
    preemptible: bool = True
    borrowed: bool = False  # its holder holds more than its nominal quota


@dataclass(frozen=True)
class Candidate:
    """The job that wants room."""

    id: str
    rank: int
    team: str | None
    cpu_millis: int
    memory_bytes: int
    gpu: int
    may_preempt: bool  # its class may evict lower classes
    within_nominal: bool  # its team would stay within its nominal quota (may reclaim borrowed capacity)


@dataclass(frozen=True)
class Plan:
    job: str
    node: str
    victims: tuple  # Running, in the order they were chosen
    lost_seconds: float = 0.0

    def reason(self) -> str:
        names = ", ".join(v.id for v in self.victims)
        return f"preempting {len(self.victims)} job{'s' if len(self.victims) != 1 else ''} on {self.node} ({names})"


@dataclass(frozen=True)
class NodeRoom:
    """A node's free room now (after this pass's placements) and whether the job may use it at all."""

    name: str
    free_cpu_millis: int
    free_memory_bytes: int
    free_gpu: int
    usable: bool = True
    free_pods: int | None = None


def _eligible(job: Candidate, victim: Running) -> bool:
    if not victim.preemptible or victim.id == job.id:
        return False
    if victim.borrowed and job.within_nominal and victim.team != job.team:
        return True  # reclaim: borrowed capacity is taken back first, whatever its class
    return job.may_preempt and victim.rank < job.rank


def _fits(job: Candidate, room: list) -> bool:
    return room[0] >= job.cpu_millis and room[1] >= job.memory_bytes and room[2] >= job.gpu and room[3] > 0


def _work(v: Running) -> float:
    return v.seconds * (1 + v.gpu + v.cpu_millis / 1000.0)


def plan(job: Candidate, nodes: list[NodeRoom], running: list[Running]) -> Plan | None:
    """The cheapest set of victims on one node that makes room for `job`, or None."""
    by_node: dict[str, list[Running]] = {}
    totals: dict[str, list[int]] = {}  # node -> what all its eligible victims hold together
    for v in running:
        if _eligible(job, v):
            by_node.setdefault(v.node, []).append(v)
            t = totals.get(v.node)
            if t is None:
                totals[v.node] = [v.cpu_millis, v.memory_bytes, v.gpu, 1]
            else:
                t[0] += v.cpu_millis
                t[1] += v.memory_bytes
                t[2] += v.gpu
                t[3] += 1
    best: Plan | None = None
    best_key: tuple = ()
    for node in nodes:
        candidates = by_node.get(node.name)
        if not node.usable or not candidates:
            continue
        room = [node.free_cpu_millis, node.free_memory_bytes, node.free_gpu,
                1 if node.free_pods is None else node.free_pods]
        if _fits(job, room):
            continue  # it fits without preemption: placement handles it
        t = totals[node.name]
        if not _fits(job, [room[0] + t[0], room[1] + t[1], room[2] + t[2], room[3] + t[3]]):
            continue  # not even with every candidate gone
        candidates.sort(key=lambda v: (not v.borrowed, v.rank, _work(v)))
        chosen = []
        for v in candidates:
            chosen.append(v)
            room = [room[0] + v.cpu_millis, room[1] + v.memory_bytes, room[2] + v.gpu, room[3] + 1]
            if _fits(job, room):
                break
        else:
            continue
        for v in reversed(chosen[:-1]):  # spare whoever is not needed after all
            without = [room[0] - v.cpu_millis, room[1] - v.memory_bytes, room[2] - v.gpu, room[3] - 1]
            if _fits(job, without):
                chosen.remove(v)
                room = without
        lost = sum(_work(v) for v in chosen)
        key = (len(chosen), lost)
        if best is None or key < best_key:
            best, best_key = Plan(job.id, node.name, tuple(chosen), lost), key
    return best


@dataclass
class Pending:
    """Preemptions in flight (victims asked to stop, not yet gone): job id -> victim ids."""

    by_job: dict = field(default_factory=dict)

    def victims(self) -> set:
        return {v for vs in self.by_job.values() for v in vs}
