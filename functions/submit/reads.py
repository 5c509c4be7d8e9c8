"""The read API's answers, over the ports only: one job, listings, the queue, history, logs,
and how teams share the cluster (usage, quotas, borrowing).

Listings walk the store's indexes (never every record) and check each entry against
its record, so a stale index entry is skipped rather than shown. What another user's
job reveals is decided by `domain.reads.ReadRules`.
"""

import asyncio
from dataclasses import dataclass, field
from typing import Callable, Optional

from sentinels import clock as clocks
from sentinels.domain import fairshare
from sentinels.domain import job as jobmod
from sentinels.domain import reads, states
from sentinels.domain.errors import InvalidSpec, NotFound
from sentinels.domain.names import USAGE_KEY, WAITING_KEY
from sentinels.domain.sharing import Sharing, holding_from_doc, report
from sentinels.domain.times import parse as parse_iso
from sentinels.domain.notify import NotifyConfig, job_links
from sentinels.domain.priority import PriorityConfig
from sentinels.ports import Board, History, JobQueue, JobStore, LogSource, UsageSource

MAX_INDEX_PAGES = 10  # a filtered listing reads at most this many index pages per request
FOLLOW_EVERY = 0.25   # seconds between looks at a followed job (server side; the client holds one stream)


@dataclass
class ReadService:
    jobs: JobStore
    queue: JobQueue
    history: History
    board: Board
    logs: LogSource
    priorities: PriorityConfig
    rules: reads.ReadRules
    notify: NotifyConfig
    usage_source: Optional[UsageSource] = None  # `sentinels top`: the executor's samples or Prometheus
    sharing: Sharing = field(default_factory=Sharing)
    clock: Callable[[], str] = clocks.now_iso

    async def _record(self, job_id: str) -> dict:
        got = await self.jobs.get(job_id) if jobmod.is_job_id(job_id) else None
        if got is None:
            raise NotFound(f"job {job_id} not found", "id")
        return got[0]

    async def _waiting(self) -> dict:
        """The last scheduling pass's reasons and codes (one board read per request)."""
        return (await self.board.get(WAITING_KEY)) or {}

    async def job(self, job_id: str, who: dict) -> dict:
        record = await self._record(job_id)
        if record["state"] == states.QUEUED:
            waiting, position = await asyncio.gather(
                self._waiting(),
                self.queue.position(self.priorities.ordered(), record["priority"], record["queue_seq"],
                                    record.get("queue_front", False)))
            record.update(states.reason_now(record, waiting))
            record["position"] = position
        out = self.rules.view(who, record)
        out["links"] = dict(job_links(record, self.notify))
        return out

    async def listing(self, *, owner=None, team=None, state=None, sweep=None, limit=50, cursor=None) -> dict:
        kinds = reads.lists_for(state, sweep)
        before = None
        if cursor:
            kind, seq = cursor
            if kind not in kinds:
                raise InvalidSpec("cursor: it belongs to a different listing (keep the same filters when paging)",
                                  "cursor")
            kinds, before = kinds[kinds.index(kind):], seq or None
        rows: list[dict] = []
        pages = 0
        waiting = await self._waiting()  # queued rows say what queue and status say
        for i, kind in enumerate(kinds):
            while len(rows) < limit and pages < MAX_INDEX_PAGES:
                pages += 1
                ids, before, _ = await self.jobs.listing(kind, owner=owner, team=team, sweep=sweep, before=before,
                                                         limit=limit - len(rows))
                got = await asyncio.gather(*(self.jobs.get(j) for j in ids))
                for g in got:
                    if g is None:
                        continue  # expired or not yet written
                    r = g[0]
                    live = r["state"] not in states.TERMINAL
                    if (kind == "active" and not live) or (kind == "done" and live) or not reads.matches(r, state):
                        continue
                    rows.append(dict(reads.row(r), **states.reason_now(r, waiting)))
                if before is None:
                    break
            if before is not None:
                return {"jobs": rows, "next": reads.make_cursor(kind, before)}
            if len(rows) >= limit or pages >= MAX_INDEX_PAGES:
                more = kinds[i + 1:]
                return {"jobs": rows, "next": reads.make_cursor(more[0], 0) if more else None}
        return {"jobs": rows, "next": None}

    async def queue_view(self, limit: int = 50, klass: str | None = None) -> dict:
        order = self.priorities.ordered()
        if klass is not None and klass not in order:
            raise InvalidSpec(f"class: {klass!r} is not a priority class (classes: {', '.join(order)})", "class")
        classes = [klass] if klass else order
        heads, counts, waiting, (usage, _) = await asyncio.gather(
            self.queue.heads(classes, limit), self.queue.counts(), self._waiting(), self._usage())
        got = await asyncio.gather(*(self.jobs.get(e["id"]) for _, e in heads))
        ahead = sum(counts.get(k, 0) for k in order[: order.index(klass)]) if klass else 0
        fair, shares = self.sharing.fair_share, fairshare.shares(usage)
        ranked: list[tuple] = []
        for (seq, entry), rec in zip(heads, got):
            record = rec[0] if rec else None
            if record is None or record["state"] != states.QUEUED or record.get("queue_seq") != seq:
                continue  # being scheduled or cancelled right now, or a stale copy
            res = record["spec"].get("resources", {})
            key = fair.key(record.get("team"), record.get("owner"))
            share = shares.get(key) if key is not None else None
            row = {"id": entry["id"], "name": record["name"], "class": entry["class"], "owner": record["owner"],
                   "team": record.get("team"), "submitted_at": entry["submitted"],
                   "resources": {k: res.get(k) for k in ("cpu", "memory", "gpu")},
                   **states.reason_now(record, waiting),
                   "share": None if key is None else {"by": fair.by, "key": key,
                                                      "usage": round(share.usage, 3) if share else 0.0,
                                                      "fraction": round(share.fraction, 4) if share else 0.0}}
            # the scheduler's order: class, requeued first, then the share that used least, then submission
            ranked.append((fairshare.sort_key(self.priorities.classes.get(entry["class"], 0), bool(entry.get("front")),
                                              share.usage if share else 0.0, int(entry.get("order", seq))), row))
        ranked.sort(key=lambda kr: kr[0])
        rows = [dict(row, position=ahead + i + 1) for i, (_, row) in enumerate(ranked)]
        return {"total": sum(counts.values()), "by_class": counts, "jobs": rows}

    async def _usage(self) -> tuple[dict, dict]:
        """Each share key's decayed usage now, and what each team and user holds (the scheduler's ledger)."""
        doc = await self.board.get(USAGE_KEY)
        ledger, _ = fairshare.from_doc(doc)
        now = parse_iso(self.clock())
        return fairshare.usage(ledger, [], now, self.sharing.fair_share), holding_from_doc((doc or {}).get("held"))

    async def share(self) -> dict:
        """`sentinels share`: each team's (and user's) usage, quota, borrowing limit and borrowed amounts."""
        usage, held = await self._usage()
        q = self.sharing.quotas
        return {"fair_share": {"by": self.sharing.fair_share.by, "half_life_seconds": self.sharing.fair_share.half_life_seconds},
                "quotas": bool(q), "preemption": sorted(self.sharing.preemption.classes),
                "rows": report(self.sharing, usage, held)}

    async def history_of(self, job_id: str) -> list[dict]:
        entries = await self.history.of(job_id) if jobmod.is_job_id(job_id) else []
        if not entries:
            await self._record(job_id)  # 404 for an unknown job
        return entries

    async def follow_history(self, job_id: str):
        """Each transition as it happens, until the job ends (the stream behind `--wait`)."""
        await self._record(job_id)
        sent = 0
        while True:
            record = (await self.jobs.get(job_id) or ({"state": states.CANCELLED},))[0]
            entries = await self.history.of(job_id)
            for e in entries[sent:]:
                yield e
            sent = max(sent, len(entries))
            if record["state"] in states.TERMINAL and any(e.get("to") == record["state"] for e in entries):
                return
            await asyncio.sleep(FOLLOW_EVERY)

    async def log_stream(self, job_id: str, who: dict, tail: int | None, follow: bool, build: bool = False,
                         attempt: int | None = None, since: str | None = None):
        """(notes, lines): the job's output (or its image build's, or one attempt's), line by
        line; with `follow`, until it ends (an earlier attempt has ended: it is printed, not
        followed). Bad requests raise here, before any line; `notes` are remarks for the reader
        (a fallback taken, a filter not applied, no output yet)."""
        record = await self._record(job_id)
        self.rules.check_details(who, record, "logs")
        if build and attempt is not None:
            raise InvalidSpec("attempt: a build has one log (no attempts)", "attempt")
        if build and not record.get("build"):
            raise InvalidSpec(f"job {job_id} was not built from a Dockerfile: it has no build log", "build")
        if build:  # the build's own log file / Job
            record = dict(record, log_file="build.log", k8s_job=record.get("build_job"))
        if attempt is not None:
            made = states.runs_made(record)
            if attempt > made:
                raise InvalidSpec(f"attempt: job {job_id} has made {made} attempt(s) so far"
                                  + (f" (1 to {made})" if made else ""), "attempt")
            follow = follow and attempt == made
            record = dict(record, log_file=f"attempt-{attempt}.log", log_attempt=attempt,
                          log_generation=_generation(record, attempt))
        notes: list[str] = []
        lines, position = await self.logs.lines(record, tail, since, notes)
        if not lines:
            notes.append(_nothing(record, follow, attempt))
        return notes, self._rest(record, lines, position, tail is None, follow, build)

    async def _rest(self, record: dict, lines: list[str], position, paged: bool, follow: bool, build: bool):
        for line in lines:
            yield line
        while paged or follow:  # the rest of a paged source, then what is written next
            more, position = await self.logs.more(record, position)
            for line in more:
                yield line
            if more:
                continue
            if not follow:
                return
            got = await self.jobs.get(record["id"])
            if got is None or got[0]["state"] in states.TERMINAL or (build and got[0]["state"] != states.BUILDING):
                more, position = await self.logs.more(record, position)  # the last lines
                for line in more:
                    yield line
                return
            await asyncio.sleep(FOLLOW_EVERY)

    async def log_lines(self, job_id: str, who: dict, tail: int | None, follow: bool, build: bool = False,
                        attempt: int | None = None, since: str | None = None):
        """The lines of `log_stream`, without its notes."""
        _, lines = await self.log_stream(job_id, who, tail, follow, build, attempt, since)
        async for line in lines:
            yield line

    async def usage(self, job_id: Optional[str]) -> dict:
        """CPU, memory and GPU use of running jobs (or of one job, also after it ended)."""
        if job_id is not None:
            await self._record(job_id)  # 404 for an unknown job
        if self.usage_source is None:
            raise InvalidSpec("this deployment reports no usage", "usage")
        return {"jobs": await self.usage_source.usage(job_id)}


def _generation(record: dict, n: int) -> int:
    """Which Kubernetes Job (`attempts` value) run `n` belonged to: what Fluent Bit lifts from
    the pod's `sentinels.io/attempt` annotation, so Elasticsearch can keep one run's lines
    (retries inside one Job share it)."""
    for r in record.get("runs") or []:
        if isinstance(r, dict) and r.get("run") == n and isinstance(r.get("generation"), int):
            return r["generation"]
    return int(record.get("attempts") or 1)


def _nothing(record: dict, follow: bool, attempt: Optional[int]) -> str:
    what = f"attempt {attempt} of job {record['id']}" if attempt else f"job {record['id']}"
    if record["state"] in states.TERMINAL:
        text = f"{what} is {record['state']} and left no output"
    else:
        text = f"no output yet: {what} is {record['state']}" + (
            " (it has not started)" if record["state"] in (states.QUEUED, states.BUILDING) else "")
    return text + ("; waiting for its first lines" if follow and record["state"] not in states.TERMINAL else "")
