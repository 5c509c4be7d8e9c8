"""In-memory twins of the ports, for unit tests of the functions' logic.

Same contracts as the JetStream adapters (compare-and-set, queue order by class then
sequence with requeued entries first, message ids deduplicated for the streams'
duplicate window, idempotent cluster calls); no persistence.
`tests/test_ports_contract.py` runs one set of assertions against both.
"""

import copy
import itertools
import time
from typing import Callable

from ..domain.job import undeclared
from ..domain.names import DUPLICATE_WINDOW
from ..domain.placement import Node
from ..domain.states import TERMINAL
from ..ports import Conflict


class _Dedupe:
    """Message ids seen within the last `window` seconds, like a stream's duplicate window."""

    def __init__(self, window: float, clock: Callable[[], float]):
        self.window, self.clock = window, clock
        self.ids: dict[str, tuple[float, object]] = {}  # msg id -> (when, what it produced)

    def get(self, msg_id: str):
        now = self.clock()
        for old in [k for k, (at, _) in self.ids.items() if now - at >= self.window]:
            del self.ids[old]
        got = self.ids.get(msg_id)
        return got[1] if got else None

    def put(self, msg_id: str, value: object) -> None:
        self.ids[msg_id] = (self.clock(), value)


class MemoryJobs:
    """Records plus the same three lists as the JetStream index (active, done, sweep).

    Refuses records with fields `domain.job.JobRecord` does not declare (keeps the shape honest).
    """

    def __init__(self, strict: bool = True):
        self.data: dict[str, tuple[dict, int]] = {}
        self._rev = itertools.count(1)
        self.strict = strict
        self._seq = itertools.count(1)
        self.lists: dict[tuple, dict[str, int]] = {}  # (kind, team, owner | sweep) -> id -> sequence

    def _list(self, kind, record):
        if kind == "sweep":
            return self.lists.setdefault(("sweep", record["sweep"]["id"]), {})
        return self.lists.setdefault((kind, record.get("team"), record.get("owner")), {})

    def _check(self, record):
        bad = undeclared(record) if self.strict else []
        if bad:
            raise ValueError(f"job record field(s) {', '.join(bad)} not declared in domain.job.JobRecord")

    async def get(self, job_id):
        got = self.data.get(job_id)
        return (copy.deepcopy(got[0]), got[1]) if got else None

    async def create(self, record):
        self._check(record)
        if record["id"] in self.data:
            raise Conflict(record["id"])
        rev = next(self._rev)
        self.data[record["id"]] = (copy.deepcopy(record), rev)
        self._list("active", record).setdefault(record["id"], next(self._seq))
        if record.get("sweep"):
            self._list("sweep", record).setdefault(record["id"], next(self._seq))
        return rev

    async def update(self, record, revision):
        self._check(record)
        if self.data.get(record["id"], (None, None))[1] != revision:
            raise Conflict(record["id"])
        rev = next(self._rev)
        self.data[record["id"]] = (copy.deepcopy(record), rev)
        if record.get("state") in TERMINAL:
            self._list("active", record).pop(record["id"], None)
            self._list("done", record).setdefault(record["id"], next(self._seq))
        return rev

    async def listing(self, kind, owner=None, team=None, sweep=None, before=None, limit=50):
        rows = []
        for key, members in self.lists.items():
            if key[0] != kind:
                continue
            if (kind == "sweep" and key[1] == sweep) or (kind != "sweep" and team in (None, key[1])
                                                          and owner in (None, key[2])):
                rows += [(seq, i) for i, seq in members.items() if before is None or seq < before]
        rows.sort(reverse=True)
        page = rows[:limit]
        return [i for _, i in page], (page[-1][0] if len(rows) > limit else None), len(rows)

    async def active(self):
        return [copy.deepcopy(r) for r, _ in self.data.values() if r.get("state") not in TERMINAL]

    async def mutate(self, job_id, fn, known=None):
        while True:  # like the JetStream store: retry on a lost compare-and-set
            got = (copy.deepcopy(known[0]), known[1]) if known is not None else await self.get(job_id)
            known = None
            if got is None:
                return None
            after = fn(copy.deepcopy(got[0]))
            if after is None:
                return None
            try:
                await self.update(after, got[1])
                return got[0], after
            except Conflict:
                continue

    async def all(self):
        return [copy.deepcopy(r) for r, _ in self.data.values()]


class MemoryQueue:
    def __init__(self, window: float = DUPLICATE_WINDOW, clock: Callable[[], float] = time.monotonic):
        self.entries: dict[int, tuple[str, bool, dict]] = {}  # seq -> (class, front, entry)
        self.seen = _Dedupe(window, clock)
        self._seq = itertools.count(1)

    async def enqueue(self, entry, msg_id, front=False):
        seen = self.seen.get(msg_id)
        if seen is not None:
            return seen
        seq = next(self._seq)
        self.seen.put(msg_id, seq)
        self.entries[seq] = (entry["class"], front, copy.deepcopy(entry))
        return seq

    async def remove(self, seq):
        return self.entries.pop(seq, None) is not None

    async def counts(self):
        out: dict[str, int] = {}
        for klass, _, _ in self.entries.values():
            out[klass] = out.get(klass, 0) + 1
        return out

    async def oldest(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for klass, _, entry in self.entries.values():
            if klass not in out or entry["submitted"] < out[klass]:
                out[klass] = entry["submitted"]
        return out

    def _ordered(self, classes):
        """Entries of the given classes (highest first), requeued ones ahead of their class."""
        rank = {k: i for i, k in enumerate(classes)}
        mine = [kv for kv in self.entries.items() if kv[1][0] in rank]
        return sorted(mine, key=lambda kv: (rank[kv[1][0]], not kv[1][1], kv[0]))

    async def heads(self, classes, limit):
        return [(seq, copy.deepcopy(e)) for seq, (_, _, e) in self._ordered(classes)[:limit]]

    async def position(self, classes, klass, seq, front=False):
        for i, (s, _) in enumerate(self._ordered(classes), start=1):
            if s == seq:
                return i
        return None


class MemoryHistory:
    """Like the stream: a repeated message id is dropped only within the dedupe window."""

    def __init__(self, window: float = DUPLICATE_WINDOW, clock: Callable[[], float] = time.monotonic):
        self.entries: list[dict] = []
        self.window, self.clock = window, clock
        self.seen = _Dedupe(window, clock)

    async def append(self, entry, msg_id, first=False):
        if first and any(e["job"] == entry["job"] for e in self.entries):
            return  # the stream's expected-last-subject-sequence 0 check
        if self.seen.get(msg_id) is None:
            self.seen.put(msg_id, True)
            self.entries.append(copy.deepcopy(entry))

    def window_passed(self) -> None:
        """The dedupe window is over: only our own checks prevent duplicates now."""
        self.seen = _Dedupe(self.window, self.clock)

    async def of(self, job_id):
        return sorted((e for e in self.entries if e["job"] == job_id), key=lambda e: e.get("at") or "")


class MemoryBoard:
    def __init__(self):
        self.docs: dict[str, dict] = {}
        self.revs: dict[str, int] = {}
        self.writes = 0
        self._rev = itertools.count(1)

    async def get(self, key):
        return copy.deepcopy(self.docs.get(key))

    async def put(self, key, value):
        self.writes += 1
        self.docs[key] = copy.deepcopy(value)
        self.revs[key] = next(self._rev)

    async def read(self, key):
        return copy.deepcopy(self.docs.get(key)), self.revs.get(key)

    async def swap(self, key, value, revision):
        if self.revs.get(key) != revision:
            return False
        await self.put(key, value)
        return True


class MemorySentLog:
    def __init__(self):
        self.keys: dict[str, str] = {}

    async def claim(self, key):
        if key in self.keys:
            return False
        self.keys[key] = "sending"
        return True

    async def done(self, key):
        self.keys[key] = "sent"

    async def release(self, key):
        self.keys.pop(key, None)


class MemorySink:
    """Keeps the events given, deduplicated by id like the real sinks."""

    def __init__(self):
        self.events: list[dict] = []
        self._ids: set[str] = set()

    async def emit(self, event):
        if event["id"] not in self._ids:
            self._ids.add(event["id"])
            self.events.append(event)


class MemoryCluster:
    """Nodes with fixed allocatable; launched jobs use their requests until stopped or finished."""

    def __init__(self, nodes: list[Node]):
        self.base = {n.name: n for n in nodes}
        self.running: dict[str, dict] = {}  # job id -> record (with node)
        self.ended: dict[str, tuple[dict, str]] = {}  # job id -> (record, "Complete" | "Failed")
        self.launches: list[str] = []
        self.stops: list[str] = []
        self.told: dict[str, str] = {}  # job id -> why it was stopped (a preemption)
        self.envs: dict[str, dict] = {}  # job id -> the extra env of its last launch
        self.builds: list[str] = []  # job ids whose build was started
        self.fail_launch: bool | Exception = False  # True: a 503; an error: raised as it is
        self.ends: dict[str, dict] = {}  # job id -> how its newest pod failed (last_end)

    async def nodes(self):
        out = []
        for n in self.base.values():
            used = [r for r in self.running.values() if r.get("node") == n.name]
            res = [r["spec"]["resources"] for r in used]
            out.append(Node(n.name, n.cpu_millis, n.memory_bytes, n.gpu,
                            n.cpu_millis - sum(r["cpu_millis"] for r in res),
                            n.memory_bytes - sum(r["memory_bytes"] for r in res),
                            n.gpu - sum(r["gpu"] for r in res), n.labels, n.taints, n.ready, n.schedulable,
                            None if n.free_pods is None else n.free_pods - len(used)))
        return out

    async def launch(self, record, extra_env):
        from ..domain.errors import Unavailable

        if isinstance(self.fail_launch, Exception):
            raise self.fail_launch
        if self.fail_launch:
            raise Unavailable("cluster API answered 503")
        done = self.ended.get(record["id"])
        if done is not None and int(done[0].get("attempts") or 0) >= int(record.get("attempts") or 0):
            return  # this run already ran: launching it again is a no-op, as with a Job's name
        if record["id"] not in self.running:
            self.ended.pop(record["id"], None)
            self.launches.append(record["id"])
            self.envs[record["id"]] = dict(extra_env or {})
            self.running[record["id"]] = copy.deepcopy(record)

    async def stop(self, record, why=None):
        self.stops.append(record["id"])
        if why:
            self.told[record["id"]] = why
        self.running.pop(record["id"], None)

    async def active(self):
        return {j: r.get("k8s_job") for j, r in self.running.items()}

    async def logs(self, record, tail=None):
        return [f"log line {i}" for i in range(3)]

    async def build(self, record):
        if record["id"] not in self.builds:
            self.builds.append(record["id"])

    async def last_end(self, record):
        return self.ends.get(record["id"])

    async def jobs(self, job_ids):
        from ..domain.local_objects import job_object

        out = {}
        for job_id in job_ids:
            info: dict[str, object]
            if job_id in self.running:
                record, info = self.running[job_id], {"active": 1, "ready": 1}
            elif job_id in self.ended:
                record, outcome = self.ended[job_id]
                info = {"outcome": outcome, "finished": "2026-01-01T00:00:00Z", "reason": None if outcome == "Complete"
                        else "BackoffLimitExceeded", "message": None}
            else:
                continue
            out[job_id] = job_object(record, {"generation": int(record.get("attempts") or 0), "resource_version": 1,
                                              "created": "2026-01-01T00:00:00Z", **info})
        return out

    def finish(self, job_id, outcome: str = "Complete"):
        """The job's run ended (its Job is Complete or Failed); nothing is reported."""
        record = self.running.pop(job_id, None)
        if record is not None:
            self.ended[job_id] = (record, outcome)


class MemoryPlaceholders:
    """The placeholder Deployments, kept by name (the twin of `kube_placeholders`)."""

    def __init__(self):
        self.deployments: dict[str, dict] = {}

    async def sync(self, wanted):
        names = {d["metadata"]["name"]: d for d in wanted}
        counts = {"created": sum(1 for n in names if n not in self.deployments),
                  "updated": sum(1 for n, d in names.items() if n in self.deployments and self.deployments[n] != d),
                  "deleted": sum(1 for n in self.deployments if n not in names)}
        self.deployments = dict(names)
        return counts
