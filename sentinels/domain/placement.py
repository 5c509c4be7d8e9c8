"""Placement: which waiting jobs start now, on which node, and why the rest wait.

Pure: the caller passes the queue heads (already in queue order), the free capacity per
node and `now`. One pass accounts for what it already placed. Strategies:

* BestEffortFIFO (default): a job that does not fit does not block smaller ones behind it,
  except that once the first waiting job has waited longer than `starvation_seconds`, the
  nodes it could use are reserved for it (nothing behind it may take them).
* StrictFIFO: the first job that does not fit stops the pass.
"""

from dataclasses import dataclass, field

from . import quota
from .quantity import format_cpu, format_memory

BEST_EFFORT, STRICT = "BestEffortFIFO", "StrictFIFO"
# why a job still waits, as a code every reader (CLI, capacity watch, status) uses as it is
NO_ROOM = "no_room"            # it fits the cluster, not the free room now: waiting for room
NEVER_FITS = "never_fits"      # no node as the cluster is now could ever take it
BY_ORDER = "held_by_order"     # StrictFIFO: jobs ahead must start first
RESERVED = "reserved"          # the room it could use is held for a job that has waited longer
LAUNCH_REFUSED = "launch_refused"  # the cluster refused its launch; tried again later
QUOTA = "quota"                # a quota refused its launch; tried again later
CODES = (NO_ROOM, NEVER_FITS, BY_ORDER, RESERVED, LAUNCH_REFUSED, QUOTA)
WAITING_FOR_ROOM = (NO_ROOM, RESERVED)  # what counts towards "the cluster is full"
STRATEGIES = (BEST_EFFORT, STRICT)
GPU_TAINT = "nvidia.com/gpu"  # GPU jobs tolerate it (the manifest adds the toleration)


@dataclass(frozen=True)
class Node:
    """A node's allocatable and free capacity (free = allocatable - requests of live pods)."""

    name: str
    cpu_millis: int
    memory_bytes: int
    gpu: int
    free_cpu_millis: int
    free_memory_bytes: int
    free_gpu: int
    labels: dict = field(default_factory=dict)
    taints: tuple = ()  # ((key, value, effect), ...) with effect NoSchedule / NoExecute
    ready: bool = True
    schedulable: bool = True
    free_pods: int | None = None  # how many more jobs may start here (pod capacity, local slots); None: no limit


@dataclass(frozen=True)
class Waiting:
    """A queue head as the scheduler sees it."""

    id: str
    klass: str
    rank: int  # class value: higher first
    order: int  # submission order within the class
    cpu_millis: int
    memory_bytes: int
    gpu: int
    node_selector: dict = field(default_factory=dict)
    waited_seconds: float = 0.0
    team: str | None = None
    owner: str | None = None
    front: bool = False  # requeued: ahead of its class


@dataclass(frozen=True)
class Wait:
    """Why one job still waits: a code from CODES, the resource that is short (gpu, cpu,
    memory, slots; None when no single one is), and the sentence people read."""

    code: str
    resource: str | None
    text: str

    def to_dict(self) -> dict:
        return {"code": self.code, "resource": self.resource, "text": self.text}


@dataclass
class Decision:
    placements: list = field(default_factory=list)  # [(job id, node name)]
    waits: dict = field(default_factory=dict)  # job id -> Wait

    @property
    def reasons(self) -> dict:
        """job id -> the sentence."""
        return {j: w.text for j, w in self.waits.items()}

    def with_code(self, *codes: str) -> set:
        return {j for j, w in self.waits.items() if w.code in codes}

    @property
    def never_fits(self) -> set:  # ids no node could ever take (as the cluster is now)
        return self.with_code(NEVER_FITS)

    @property
    def by_order(self) -> set:  # ids that wait for jobs ahead (StrictFIFO), not for room
        return self.with_code(BY_ORDER)
    borrowing: set = field(default_factory=set)  # placed ids that take their holder beyond its nominal quota

    @property
    def by_quota(self) -> set:  # ids held back by their team's or user's quota, not by room
        return self.with_code(QUOTA)


def _tolerates(job: Waiting, node: Node) -> bool:
    return all(effect not in ("NoSchedule", "NoExecute") or (key == GPU_TAINT and job.gpu > 0)
               for key, _, effect in node.taints)


def usable(job: Waiting, node: Node) -> bool:
    return node.ready and node.schedulable and _tolerates(job, node) and all(
        node.labels.get(k) == v for k, v in job.node_selector.items())


def _fits_total(job: Waiting, node: Node) -> bool:
    return job.cpu_millis <= node.cpu_millis and job.memory_bytes <= node.memory_bytes and job.gpu <= node.gpu


def _selector_text(sel: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sel.items())


def _short_reason(job: Waiting, usable: list[Node], free: dict) -> tuple[str | None, str]:
    """(resource, sentence): the resource that is short on the best candidate node."""
    checks = [
        ("gpu", job.gpu, lambda n: free[n.name][2], lambda v: f"{v} GPU{'s' if v != 1 else ''}"),
        ("cpu", job.cpu_millis, lambda n: free[n.name][0], lambda v: f"{format_cpu(v)} CPU"),
        ("memory", job.memory_bytes, lambda n: free[n.name][1], lambda v: f"{format_memory(v)} memory"),
    ]
    for resource, need, get, fmt in checks:
        if need and all(get(n) < need for n in usable):
            best = max(get(n) for n in usable)
            return resource, f"needs {fmt(need)} on one node; the largest free is {fmt(max(best, 0))}"
    if all(free[n.name][3] <= 0 for n in usable):
        return "slots", "every job slot is busy (node pod capacity / local slots)"
    return None, "no single node has room for all of cpu, memory and GPUs together right now"


def _never_reason(job: Waiting, nodes: list[Node]) -> tuple[str | None, str]:
    live = [n for n in nodes if n.ready and n.schedulable]
    if not live:
        return "nodes", "no Ready, schedulable node in the cluster"
    matching = [n for n in live if all(n.labels.get(k) == v for k, v in job.node_selector.items())]
    if not matching:
        return "node_selector", f"no node matches {_selector_text(job.node_selector)}"
    tolerated = [n for n in matching if _tolerates(job, n)]
    if not tolerated:
        return "taints", "every matching node has a taint this job does not tolerate"
    for resource, need, get, fmt in (
            ("gpu", job.gpu, lambda n: n.gpu, lambda v: f"{v} GPU{'s' if v != 1 else ''}"),
            ("cpu", job.cpu_millis, lambda n: n.cpu_millis, lambda v: f"{format_cpu(v)} CPU"),
            ("memory", job.memory_bytes, lambda n: n.memory_bytes, lambda v: f"{format_memory(v)} memory")):
        largest = max(get(n) for n in tolerated)
        if need > largest:
            return resource, (f"can never fit as the cluster is now: needs {fmt(need)} on one node; "
                              f"the largest node has {fmt(largest)}")
    return None, "can never fit as the cluster is now: no node is large enough for all of it"


def place(heads: list[Waiting], nodes: list[Node], strategy: str = BEST_EFFORT,
          starvation_seconds: float = 1800.0, quotas: quota.QuotaConfig | None = None,
          held: dict | None = None) -> Decision:
    """Decide one scheduling pass. `heads` must be in queue order.

    With `quotas`, `held` is what each quota holder holds now (`quota.add` bookkeeping); a
    job over its quota waits with the quota's reason and blocks nobody (other teams go on);
    a job that would borrow beyond its nominal quota is placed after every job within its own.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    decision = Decision()
    free = {n.name: [n.free_cpu_millis, n.free_memory_bytes, n.free_gpu,
                     n.free_pods if n.free_pods is not None else len(heads)] for n in nodes}
    # only nodes that can still take a job (every job asks for some CPU); full ones leave the lists
    open_nodes = [n for n in nodes if n.ready and n.schedulable and free[n.name][0] > 0 and free[n.name][3] > 0]
    cpu_nodes = [n for n in open_nodes if n.gpu == 0]
    gpu_nodes = sorted((n for n in open_nodes if n.gpu > 0), key=lambda n: n.free_gpu)
    gpu_first, cpu_first = gpu_nodes + cpu_nodes, cpu_nodes + gpu_nodes  # keep GPU nodes for GPU jobs
    failed_shapes: dict[tuple, set[tuple]] = {}  # selector -> the smallest shapes that found no room this pass
    blocked: dict[tuple, set[tuple]] = {}  # selector -> shapes known to be no smaller than a failed one
    usable_for: dict[tuple, list[Node]] = {}  # (selector, needs GPUs) -> nodes such a job may use at all
    reserved: set[str] = set()
    held_for: Waiting | None = None  # the starving job the reserved nodes are held for
    why: dict[tuple, tuple[str | None, str, set]] = {}
    held_fits: dict[tuple, bool] = {}  # (selector, shape) -> would fit the reserved room now
    waiting_ahead = 0
    held = {k: dict(v) for k, v in (held or {}).items()}
    order, second_round = list(heads), set()
    verdicts: dict[tuple, quota.Verdict] = {}  # one check per holder, shape and what the holder holds
    changes: dict[tuple | None, int] = {}  # holder -> how many placements this pass changed what it holds
    no_quota = quota.Verdict(True)
    for job in order:  # jobs that would borrow go round again after every job within its quota
        verdict = no_quota
        if quotas:
            team = ("team", job.team) if job.team in quotas.teams else None
            user = ("user", job.owner) if job.owner in quotas.users else None
            if team or user:
                key = (team, user, job.cpu_millis, job.memory_bytes, job.gpu, changes.get(team), changes.get(user))
                verdict = verdicts.get(key) or verdicts.setdefault(key, quota.check(
                    quotas, job.team, job.owner, quota.demand(job.cpu_millis, job.memory_bytes, job.gpu), held))
            if not verdict.ok:
                decision.waits[job.id] = Wait(NEVER_FITS if verdict.never else QUOTA, "quota", verdict.reason)
                continue
            if verdict.borrows and job.id not in second_round:
                second_round.add(job.id)
                order.append(job)
                continue
        sel_key = tuple(sorted(job.node_selector.items())) if job.node_selector else ()
        shape = (job.cpu_millis, job.memory_bytes, job.gpu)
        if strategy == STRICT and waiting_ahead:
            decision.waits[job.id] = Wait(BY_ORDER, None, f"{waiting_ahead} job{'s' if waiting_ahead > 1 else ''} "
                                                          "ahead must start first (StrictFIFO)")
            waiting_ahead += 1
            continue
        node = None
        fails = failed_shapes.get(sel_key)
        if fails:  # a shape at least as large as one that found no room finds none either (room only shrinks)
            seen = blocked.setdefault(sel_key, set())
            if shape not in seen and any(all(s <= f for s, f in zip(prev, shape)) for prev in fails):
                seen.add(shape)
        if not fails or shape not in blocked[sel_key]:
            for n in gpu_first if job.gpu else cpu_first:
                room = free[n.name]
                if (room[3] > 0 and room[2] >= job.gpu and room[0] >= job.cpu_millis and room[1] >= job.memory_bytes
                        and n.name not in reserved and usable(job, n)):
                    node = n
                    break
        if node is not None:
            room = free[node.name]
            room[0] -= job.cpu_millis
            room[1] -= job.memory_bytes
            room[2] -= job.gpu
            room[3] -= 1
            if room[0] <= 0 or room[3] <= 0:
                gpu_first.remove(node)
                cpu_first.remove(node)
            decision.placements.append((job.id, node.name))
            if quotas:
                if verdict.borrows:
                    decision.borrowing.add(job.id)
                quota.add(held, job.team, job.owner, quota.demand(job.cpu_millis, job.memory_bytes, job.gpu), quotas)
                for holder in (("team", job.team), ("user", job.owner)):
                    changes[holder] = changes.get(holder, 0) + 1
            continue
        if not fails or shape not in blocked[sel_key]:  # keep only the smallest failing shapes
            failed_shapes[sel_key] = {p for p in fails or () if not all(s <= f for s, f in zip(shape, p))} | {shape}
        cached = why.get((sel_key, shape))
        if cached is None:  # one O(nodes) look per distinct request shape and selector
            usable_key = (sel_key, job.gpu > 0)  # what decides `usable`: the selector, and the GPU taint
            candidates = usable_for.get(usable_key)
            if candidates is None:
                candidates = usable_for[usable_key] = [n for n in nodes if usable(job, n)]
            possible = [n for n in candidates if _fits_total(job, n)]
            resource, reason = _short_reason(job, possible, free) if possible else _never_reason(job, nodes)
            cached = why[(sel_key, shape)] = (resource, reason, {n.name for n in possible})
        resource, reason, possible_names = cached
        if not possible_names:
            decision.waits[job.id] = Wait(NEVER_FITS, resource, reason)
            continue  # it cannot block anyone: nothing could ever start it as things are
        code = NO_ROOM
        if held_for is not None and reserved & possible_names:
            held_text = (f"nodes held for job {held_for.id}, which has waited longer "
                         f"({int(held_for.waited_seconds // 60)} min)")
            # reserved is set once per pass and nothing starts on it afterwards, so whether a
            # shape would fit there now is the same for every job of that shape: asked once
            fits = held_fits.get((sel_key, shape))
            if fits is None:
                held_nodes = reserved & possible_names
                fits = held_fits[(sel_key, shape)] = _fits_now(job, [n for n in nodes if n.name in held_nodes], free)
            if fits:
                code, resource, reason = RESERVED, resource, held_text  # the room is there, but held
            else:
                reason += "; " + held_text
        decision.waits[job.id] = Wait(code, resource, reason)
        if waiting_ahead == 0 and job.waited_seconds >= starvation_seconds and strategy == BEST_EFFORT:
            reserved |= possible_names
            held_for = job
        waiting_ahead += 1
    return decision


def _fits_now(job: Waiting, candidates: list[Node], free: dict) -> bool:
    return any(free[n.name][3] > 0 and free[n.name][2] >= job.gpu and free[n.name][0] >= job.cpu_millis
               and free[n.name][1] >= job.memory_bytes and usable(job, n) for n in candidates)
