"""Who holds what right now, for quotas, fair share and preemption.

The running jobs come from the cluster (`Cluster.active()`: what really runs) joined with
their records, read once per job and kept while it runs. On Kubernetes `active()` lists
every sentinels Job, which grows with the cluster's Jobs: with `refresh_seconds` the list is
read at most that often, and in between the scheduler keeps the set itself (a job it
placed is added, a job whose end or requeue event it got is dropped). The fair-share ledger lives on
the Board (key `usage`): each pass charges running jobs for the time since they were
last charged, and the document is written when the set of running jobs changed or every
`SAVE_EVERY` seconds, so a restart loses at most that much usage. The same document
says what each team and user holds, which the read API shows (`sentinels share`).
"""

import asyncio
import time
from dataclasses import dataclass, field
from typing import Optional

from sentinels.domain.times import parse as parse_iso
from sentinels.domain import fairshare, sharing, states
from sentinels.domain.names import USAGE_KEY
from sentinels.ports import Board, Cluster, JobStore

SAVE_EVERY = 10.0


def running_job(record: dict, ranks: dict, now: float) -> Optional[sharing.RunningJob]:
    """The record of an active job as a running job, or None while it has no node yet."""
    if not record.get("node") or record["state"] not in states.ACTIVE:
        return None
    stamps = record.get("timestamps") or {}
    started = stamps.get(states.RUNNING) or stamps.get(states.SCHEDULED) or record["updated_at"]
    res = record["spec"]["resources"]
    return sharing.RunningJob(
        record["id"], record["node"], record["priority"], ranks.get(record["priority"], 0), record.get("team"),
        record.get("owner"), int(res["cpu_millis"]), int(res["memory_bytes"]), int(res["gpu"]),
        max(0.0, now - parse_iso(started)), bool(record["spec"].get("preemptible", True)))


@dataclass
class Holdings:
    jobs: JobStore
    cluster: Cluster
    board: Optional[Board]
    cfg: sharing.Sharing
    ranks: dict  # class -> value
    records: dict = field(default_factory=dict)  # job id -> record of a running job
    refresh_seconds: float = 0.0  # how often the cluster's list of active jobs is read (0: every pass)
    _listed_at: float = float("-inf")  # monotonic time of the last list
    _ledger: Optional[dict] = None
    _marks: dict = field(default_factory=dict)
    _saved_at: float = 0.0

    async def read(self, now: float) -> tuple[sharing.Snapshot, dict]:
        """The snapshot for this pass and the records of the running jobs (by id)."""
        if time.monotonic() - self._listed_at >= self.refresh_seconds:
            self._listed_at = time.monotonic()
            active = await self.cluster.active()
            for gone in set(self.records) - set(active):
                del self.records[gone]
            missing = [i for i in active if i not in self.records]
            for job_id, got in zip(missing, await asyncio.gather(*(self.jobs.get(i) for i in missing))):
                if got is not None and running_job(got[0], self.ranks, now) is not None:
                    self.records[job_id] = got[0]
        running = [r for r in (running_job(rec, self.ranks, now) for rec in self.records.values()) if r]
        await self._accrue(running, now)
        return sharing.snapshot(self.cfg, running, self._ledger or {}, now), self.records

    def forget(self, job_id: str, record: Optional[dict] = None) -> None:
        """A record this process changed (placed it, marked it preempted): keep the new one; or
        drop it (it ended or went back to the queue)."""
        if record is None:
            self.records.pop(job_id, None)
        else:
            self.records[job_id] = record

    async def _accrue(self, running: list, now: float) -> None:
        if self._ledger is None:
            doc = await self.board.get(USAGE_KEY) if self.board else None
            self._ledger, self._marks = fairshare.from_doc(doc)
        before = set(self._marks)
        self._ledger, self._marks = fairshare.accrue(self._ledger, self._marks, sharing.accrual(self.cfg, running, now),
                                                     now, self.cfg.fair_share)
        if self.board and (set(self._marks) != before or now - self._saved_at >= SAVE_EVERY):
            doc = fairshare.to_doc(self._ledger, self._marks)  # + what each holds, for `sentinels share`
            await self.board.put(USAGE_KEY, dict(doc, held=sharing.holding_to_doc(sharing.holding(running))))
            self._saved_at = now
