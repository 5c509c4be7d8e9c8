"""In-memory twins of the ports, for unit tests of the functions' logic.

Same contracts as the JetStream adapters (compare-and-set, queue order by class then
sequence with requeued entries first, idempotent cluster calls); no persistence.
"""

import copy
import itertools

from ..domain.placement import Node
from ..ports import Conflict


class MemoryJobs:
    def __init__(self):
        self.data: dict[str, tuple[dict, int]] = {}
        self._rev = itertools.count(1)

    async def get(self, job_id):
        got = self.data.get(job_id)
        return (copy.deepcopy(got[0]), got[1]) if got else None

    async def create(self, record):
        if record["id"] in self.data:
            raise Conflict(record["id"])
        rev = next(self._rev)
        self.data[record["id"]] = (copy.deepcopy(record), rev)
        return rev

    async def update(self, record, revision):
        if self.data.get(record["id"], (None, None))[1] != revision:
            raise Conflict(record["id"])
        rev = next(self._rev)
        self.data[record["id"]] = (copy.deepcopy(record), rev)
        return rev

    async def mutate(self, job_id, fn):
        while True:  # like the JetStream store: retry on a lost compare-and-set
            got = await self.get(job_id)
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
    def __init__(self):
        self.entries: dict[int, tuple[str, bool, dict]] = {}  # seq -> (class, front, entry)
        self.seen: dict[str, int] = {}
        self._seq = itertools.count(1)

    async def enqueue(self, entry, msg_id, front=False):
        if msg_id in self.seen:
            return self.seen[msg_id]
        seq = self.seen[msg_id] = next(self._seq)
        self.entries[seq] = (entry["class"], front, copy.deepcopy(entry))
        return seq

    async def remove(self, seq):
        return self.entries.pop(seq, None) is not None

    async def counts(self):
        out: dict[str, int] = {}
        for klass, _, _ in self.entries.values():
            out[klass] = out.get(klass, 0) + 1
        return out

    def _ordered(self, classes):
        rank = {k: i for i, k in enumerate(classes)}
        return sorted(self.entries.items(), key=lambda kv: (rank.get(kv[1][0], len(classes)), not kv[1][1], kv[0]))

    async def heads(self, classes, limit):
        return [(seq, copy.deepcopy(e)) for seq, (_, _, e) in self._ordered(classes)[:limit]]

    async def position(self, classes, klass, seq, front=False):
        for i, (s, _) in enumerate(self._ordered(classes), start=1):
            if s == seq:
                return i
        return None


class MemoryHistory:
    def __init__(self):
        self.entries: dict[str, dict] = {}

    async def append(self, entry, msg_id):
        self.entries.setdefault(msg_id, copy.deepcopy(entry))

    async def of(self, job_id):
        return sorted((e for e in self.entries.values() if e["job"] == job_id), key=lambda e: e.get("at") or "")


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
        self.keys: set[str] = set()

    async def seen(self, key):
        return key in self.keys

    async def mark(self, key):
        self.keys.add(key)


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
        self.launches: list[str] = []
        self.stops: list[str] = []
        self.builds: list[str] = []  # job ids whose build was started
        self.fail_launch = False

    async def nodes(self):
        out = []
        for n in self.base.values():
            used = [r for r in self.running.values() if r.get("node") == n.name]
            res = [r["spec"]["resources"] for r in used]
            out.append(Node(n.name, n.cpu_millis, n.memory_bytes, n.gpu,
                            n.cpu_millis - sum(r["cpu_millis"] for r in res),
                            n.memory_bytes - sum(r["memory_bytes"] for r in res),
                            n.gpu - sum(r["gpu"] for r in res), n.labels, n.taints, n.ready, n.schedulable))
        return out

    async def launch(self, record, extra_env):
        from ..domain.errors import Unavailable

        if self.fail_launch:
            raise Unavailable("cluster API answered 503")
        if record["id"] not in self.running:
            self.launches.append(record["id"])
            self.running[record["id"]] = copy.deepcopy(record)

    async def stop(self, record):
        self.stops.append(record["id"])
        self.running.pop(record["id"], None)

    async def active(self):
        return {j: r.get("k8s_job") for j, r in self.running.items()}

    async def logs(self, record, tail=None):
        return [f"log line {i}" for i in range(3)]

    async def build(self, record):
        if record["id"] not in self.builds:
            self.builds.append(record["id"])

    def finish(self, job_id):
        self.running.pop(job_id, None)
