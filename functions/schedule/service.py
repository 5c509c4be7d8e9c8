"""One scheduling pass: snapshot -> place (pure) -> apply.

Apply order makes every crash and race harmless: launch first (idempotent: the Job name
is the job id), then QUEUED -> SCHEDULED by compare-and-set, then drop the queue entry.
If the launch fails nothing is marked; if the record changed meanwhile (cancelled) the
launch is undone; if we crash after launching, `reconcile()` finds the running job and
records it. Passes in one process are serialised and coalesced.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Optional

from sentinels.domain import events, fairshare, placement, preemption, quota, sharing, states
from sentinels.domain.times import parse as parse_iso
from sentinels.domain.errors import InvalidSpec, LaunchRefused, QuotaExceeded, SentinelsError
from sentinels.domain.names import WAITING_KEY
from sentinels.domain.priority import PriorityConfig
from sentinels.domain.scheduler_config import SchedulerConfig
from sentinels.ports import Board, Cluster, Conflict, EventSink, History, JobQueue, JobStore, Meter, Tracker
from sentinels.transitions import announce

from sentinels.functions.schedule.holdings import Holdings

log = logging.getLogger("sentinels.schedule")
SOURCE = "sentinels/schedule"
PREEMPTED_ENV = "SENTINELS_PREEMPTED"  # a run after a preemption: who preempted the last one, and when
PREEMPT_LOOKS = 16  # waiting jobs a pass considers for preemption at most (the rest: next pass)
# A pass starts launches for at most this long; the placements it did not start go to the next
# pass, which follows at once. Between two passes the reconcile gets its turn: a launch whose
# answer was lost is found while its Job still exists, however long the queue (one pass placing
# 2,000 jobs ran 48 s, during which such a Job ended and went, and its retry created it again)
APPLY_SECONDS = 5.0


def to_waiting(entry: dict, rank: int, order: int, now: float) -> placement.Waiting:
    return placement.Waiting(
        id=entry["id"], klass=entry["class"], rank=rank, order=order, cpu_millis=int(entry["cpu_millis"]),
        memory_bytes=int(entry["memory_bytes"]), gpu=int(entry["gpu"]), node_selector=entry.get("node_selector") or {},
        waited_seconds=max(0.0, now - parse_iso(entry["submitted"])), team=entry.get("team"), owner=entry.get("owner"),
        front=bool(entry.get("front")))


@dataclass
class ScheduleService:
    jobs: JobStore
    queue: JobQueue
    history: History
    sink: EventSink
    cluster: Cluster
    priorities: PriorityConfig
    cfg: SchedulerConfig
    clock: Callable[[], str]  # -> iso string
    tracker: Optional[Tracker] = None
    env_for_run: Optional[Callable[[dict, Optional[dict]], dict]] = None  # (record, run info) -> container env
    after_pass: Optional[Callable[..., Awaitable[None]]] = None  # hook(decision, nodes, heads, now): capacity alerts
    board: Optional[Board] = None  # where the waiting reasons go
    holdings: Optional[Holdings] = None  # who holds what (quotas, fair share, preemption); None: plain order
    meter: Optional[Meter] = None  # pass duration and jobs placed, for the exporter
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _dirty: bool = False
    _reconcile_due: bool = False  # asked for while a pass ran: done before the next one
    _reasons: dict = field(default_factory=dict)
    _refused: dict = field(default_factory=dict)  # job id -> (retry at, count, placement.Wait): per-job back-off
    _tried_on: dict = field(default_factory=dict)  # job id -> node of a launch that answered with an error (it may run)
    last: dict = field(default_factory=dict)

    async def trigger(self, reconcile: bool = False) -> dict | None:
        """Run a pass now, or ask the running one to go again (events coalesce).

        `reconcile`: repair from the cluster first; while passes run, between two of them
        (never waiting for the lock: a busy scheduler would hold its caller for minutes)."""
        self._reconcile_due = self._reconcile_due or reconcile
        if self._lock.locked():
            self._dirty = True
            return None
        async with self._lock:
            self._dirty = True
            while self._dirty:
                self._dirty = False
                if self._reconcile_due:
                    self._reconcile_due = False
                    repaired = await self._reconcile()
                    if repaired:
                        log.info("reconcile repaired %d job(s)", repaired)
                self.last = await self.run_pass()
                if self.last["decided"]:  # every placing pass, with its times (bench/simcluster.py reads them)
                    log.info("pass: %s", self.last)
                if self.last["deferred"]:
                    self._dirty = True
            return self.last

    @property
    def launches_in_doubt(self) -> bool:
        """A launch failed without a clear answer (timeout, 5xx) and backs off: its Job may
        exist anyway, which only the reconcile finds (before the Job ends and is gone)."""
        return bool(self._refused)

    async def run_pass(self) -> dict:
        t0 = time.perf_counter()
        now = parse_iso(self.clock())
        classes = self.priorities.ordered()
        nodes, heads = await asyncio.gather(self.cluster.nodes(), self.queue.heads(classes, self.cfg.window))
        t1 = time.perf_counter()
        by_id, waiting = {}, []
        for seq, entry in heads:
            if entry["id"] in by_id:  # a stale second copy (reprioritized or retried): keep the first
                continue
            by_id[entry["id"]] = (seq, entry)
            waiting.append(to_waiting(entry, self.priorities.classes.get(entry["class"], 0), entry.get("order", seq), now))
        snap = running = None
        if self.holdings is not None:
            snap, running = await self.holdings.read(now)
            fair = self.holdings.cfg.fair_share
            waiting = fairshare.order(waiting, lambda w: fair.key(w.team, w.owner), snap.usage)
        quotas = self.holdings.cfg.quotas if self.holdings is not None else None
        backing_off = {j: r[2] for j, r in self._refused.items() if r[0] > now and j in by_id}
        decision = placement.place([w for w in waiting if w.id not in backing_off], nodes, self.cfg.strategy, self.cfg.starvation_seconds,
                                   quotas=quotas or None, held=snap.held if snap else None)
        decision.waits.update(backing_off)  # a refused launch holds no room while it backs off
        if snap is not None and running is not None:
            await self._preempt(decision, waiting, nodes, snap, running)
        t2 = time.perf_counter()
        sem = asyncio.Semaphore(self.cfg.concurrency)
        deferred: list = []
        begun = [0]

        async def start(job_id, node):
            async with sem:
                if begun[0] and time.perf_counter() - t2 > APPLY_SECONDS:
                    deferred.append(job_id)  # the next pass places it (after a reconcile, if one is due)
                    return False
                begun[0] += 1
                return await self._start(*by_id[job_id], node, now)

        started = await asyncio.gather(*(start(j, n) for j, n in decision.placements))
        for (job_id, _), ok in zip(decision.placements, started):
            refused = self._refused.get(job_id)
            if refused and refused[0] > now:  # refused in this very pass: say so, not "placed"
                decision.waits[job_id] = refused[2]
        await self._record_reasons(decision.waits)
        t3 = time.perf_counter()
        if self.after_pass:
            await self.after_pass(decision, nodes, waiting, now)
        if self.meter is not None:
            await self.meter.count("schedule_pass", str(sum(started)), time.perf_counter() - t0)
        return {"queued_seen": len(waiting), "placed": sum(started), "decided": len(decision.placements),
                "deferred": len(deferred), "snapshot_s": t1 - t0, "decide_s": t2 - t1, "apply_s": t3 - t2}

    async def _start(self, seq: int, entry: dict, node: str, now: float) -> bool:
        job_id = entry["id"]
        got = await self.jobs.get(job_id)
        if got is None:
            if now - parse_iso(entry["submitted"]) > self.cfg.orphan_grace_seconds:
                await self.queue.remove(seq)  # its submit never completed
            return False
        record, revision = got
        if record["state"] != states.QUEUED or record.get("queue_seq") != seq:
            if record["state"] in states.ACTIVE and seq > int(record.get("queue_seq") or 0):
                return False  # a requeue in flight (entry written, record not yet QUEUED): leave it
            log.info("job %s: queue entry %d dropped (the record is %s with entry %s)", job_id, seq,
                     record["state"], record.get("queue_seq"))
            await self.queue.remove(seq)  # cancelled, already placed, or a stale copy
            return False
        run = await self._tracking(record)
        try:
            env = dict(self.env_for_run(record, run)) if self.env_for_run else {}
            if record.get("preemptions") and record.get("preempted_note"):  # this run follows a preemption
                env[PREEMPTED_ENV] = record["preempted_note"]
            await self.cluster.launch(dict(record, node=node), env)
        except (InvalidSpec, LaunchRefused) as e:  # for good: the job fails with the cluster's words
            self._refused.pop(job_id, None)
            await self._fail_refused(seq, record, revision, e.message)
            return False
        except SentinelsError as e:  # for now: this job backs off; its room goes to others meanwhile
            self._back_off(job_id, now, e)
            self._tried_on[job_id] = node  # a timeout may hide a launch that happened: reconcile needs the node
            return False
        self._refused.pop(job_id, None)
        self._tried_on.pop(job_id, None)
        extra: dict = {"node": node}
        if run:
            extra.update(mlflow_run_id=run.get("run_id"), mlflow=run, links={**record.get("links", {}), "mlflow": run.get("url")})

        def decide(r):
            if r["state"] != states.QUEUED or r.get("queue_seq") != seq:
                return None
            return states.transition(r, states.SCHEDULED, now=self.clock(), reason=f"scheduled on {node}", **extra)

        done = await self._cas(record, revision, decide)
        if done is None:  # cancelled (or placed by another pass) while we launched
            current = await self.jobs.get(job_id)
            if current is None or current[0]["state"] not in states.ACTIVE:
                await self.cluster.stop(record)
            return False
        before, after = done
        if self.holdings is not None:
            self.holdings.forget(job_id, after)  # it holds its room from now on
        await self.queue.remove(seq)
        await announce(self.history, self.sink, SOURCE, before, after, events.JOB_SCHEDULED,
                       data={"job": job_id, "node": node, "class": after["priority"], "owner": after["owner"]})
        return True

    async def _preempt(self, decision, waiting: list, nodes: list, snap, running: dict) -> None:
        """Waiting jobs that may evict (a preempting class, or reclaiming their nominal quota) get
        the cheapest victims; the victims are marked and the lifecycle function stops and requeues them."""
        if self.holdings is None:
            return
        cfg = self.holdings.cfg
        if not cfg.preemption.enabled and not cfg.quotas:
            return
        placed = dict(decision.placements)
        room = {n.name: [n.free_cpu_millis, n.free_memory_bytes, n.free_gpu, n.free_pods] for n in nodes}
        by_id = {w.id: w for w in waiting}
        for job_id, node in decision.placements:
            w, r = by_id[job_id], room[node]
            r[0] -= w.cpu_millis
            r[1] -= w.memory_bytes
            r[2] -= w.gpu
            if r[3] is not None:
                r[3] -= 1
        stopping: dict = {}
        for rec in running.values():
            if rec.get("preempted_by"):
                stopping.setdefault(rec["preempted_by"], []).append(rec["id"])
        taken = {v for vs in stopping.values() for v in vs}
        looked = 0
        for w in waiting:
            if (w.id in placed or w.id in decision.never_fits or w.id in decision.by_order
                    or w.id in decision.by_quota):
                continue
            if w.id in stopping:
                n = len(stopping[w.id])
                decision.waits[w.id] = placement.Wait(placement.NO_ROOM, None, f"waiting for {n} preempted job{'s' if n != 1 else ''} "
                                                      f"to stop ({', '.join(stopping[w.id])})")
                continue
            need = quota.demand(w.cpu_millis, w.memory_bytes, w.gpu)
            may = w.klass in cfg.preemption.classes
            within = bool(cfg.quotas) and sharing.within_nominal(cfg, w.team, w.owner, need, snap.held)
            if not (may or within):
                continue
            looked += 1
            if looked > PREEMPT_LOOKS:
                break
            rooms = [preemption.NodeRoom(n.name, room[n.name][0], room[n.name][1], room[n.name][2],
                                         usable=placement.usable(w, n), free_pods=room[n.name][3])
                     for n in nodes]
            plan = preemption.plan(preemption.Candidate(w.id, w.rank, w.team, w.cpu_millis, w.memory_bytes, w.gpu,
                                                        may, within),
                                   rooms, [v for v in snap.running if v.id not in taken])
            if plan is None:
                continue
            taken.update(v.id for v in plan.victims)
            decision.waits[w.id] = placement.Wait(placement.NO_ROOM, None, plan.reason())
            for victim in plan.victims:
                await self._mark_preempted(victim.id, w)

    async def _mark_preempted(self, victim_id: str, by: placement.Waiting) -> None:
        def decide(r):
            if r["state"] not in states.ACTIVE or r.get("preempted_by") or r.get("cancel_requested"):
                return None
            now = self.clock()
            return dict(r, preempted_by=by.id, updated_at=now,
                        preempted_note=f"preempted by {by.id} ({by.klass}, {by.owner or 'unknown'}) at {now}")

        done = await self.jobs.mutate(victim_id, decide)
        if done is None:
            return
        after = done[1]
        if self.holdings is not None:
            self.holdings.forget(victim_id, after)
        await self.sink.emit(events.envelope(events.JOB_PREEMPT_REQUESTED, SOURCE, f"{victim_id}:preempt:{after.get('attempts', 1)}",
                                             {"job": victim_id, "by": by.id, "class": by.klass, "owner": by.owner},
                                             after["updated_at"], subject=victim_id))

    def _back_off(self, job_id: str, now: float, e: SentinelsError) -> None:
        count = (self._refused.get(job_id) or (0, 0, None))[1] + 1
        delay = min(self.cfg.launch_backoff_max_seconds, 2.0 * 2 ** (count - 1))
        code = placement.QUOTA if isinstance(e, QuotaExceeded) else placement.LAUNCH_REFUSED
        text = f"launch refused: {e.message} (try {count}; next in {delay:g}s)"
        self._refused[job_id] = (now + delay, count, placement.Wait(code, None, text))
        log.warning("job %s: %s", job_id, text)

    async def _fail_refused(self, seq: int, record: dict, revision: int, message: str) -> None:
        reason = f"launch refused: {message}"
        log.warning("job %s: %s; the job fails", record["id"], reason)

        def decide(r):
            if r["state"] != states.QUEUED or r.get("queue_seq") != seq:
                return None
            return states.transition(r, states.FAILED, now=self.clock(), reason=reason)

        done = await self._cas(record, revision, decide)
        if done is None:
            return
        await self.queue.remove(seq)
        before, after = done
        await announce(self.history, self.sink, SOURCE, before, after, events.JOB_FAILED)

    async def _cas(self, record: dict, revision: int, decide) -> tuple[dict, dict] | None:
        """Compare-and-set from the revision already read; re-read only if someone wrote meanwhile."""
        after = decide(record)
        if after is None:
            return None
        try:
            await self.jobs.update(after, revision)
            return record, after
        except Conflict:
            return await self.jobs.mutate(record["id"], decide)

    async def _tracking(self, record: dict) -> dict | None:
        """Create the MLflow run before launch so the container can log into it; MLflow down is not fatal."""
        if self.tracker is None:
            return None
        try:
            return await asyncio.to_thread(self.tracker.start_run, record)
        except Exception as e:  # the lifecycle function brings MLflow up to date later
            log.warning("job %s: MLflow run not created now (%s); will catch up", record["id"], type(e).__name__)
            return None

    async def _record_reasons(self, waits: dict) -> None:
        """Publish why each waiting job waits, as one document per pass (only when it changed).

        One write per pass instead of one per waiting job: `sentinels status`, `ls` and
        `queue` read it next to the record (`domain.reasons`): the text and the code with
        the resource that is short.
        """
        if self.board is None:
            return
        snapshot = dict(list(waits.items())[: self.cfg.reason_window])
        if snapshot != self._reasons:
            await self.board.put(WAITING_KEY, {"at": self.clock(),
                                               "reasons": {j: w.text for j, w in snapshot.items()},
                                               "codes": {j: [w.code, w.resource] for j, w in snapshot.items()}})
            self._reasons = snapshot

    async def start_build(self, job_id: str) -> str:
        """Hand a BUILDING job to the cluster's builder once (the builder is idempotent too)."""
        got = await self.jobs.get(job_id) if isinstance(job_id, str) else None
        if got is None:
            return "unknown-job"
        record = got[0]
        if record["state"] != states.BUILDING or record.get("build_started") or record.get("cancel_requested"):
            return "nothing-to-do"
        await self.cluster.build(record)  # Unavailable: the event is redelivered

        def decide(r):
            if r["state"] != states.BUILDING or r.get("build_started"):
                return None
            return dict(r, build_started=True, reason="building the image", updated_at=self.clock())

        await self.jobs.mutate(job_id, decide)
        return "building"

    async def reconcile(self) -> int:
        """Repair what a crash left: jobs the cluster runs that the store does not know as running.

        Never during a pass: a job the pass has just launched is running but still QUEUED
        until the pass records it (with its node, which quotas and preemption need)."""
        async with self._lock:
            return await self._reconcile()

    async def _reconcile(self) -> int:
        repaired = 0
        for job_id, name in (await self.cluster.active()).items():
            got = await self.jobs.get(job_id)
            if got is None:
                continue
            record = got[0]
            if record["state"] in states.TERMINAL:
                await self.cluster.stop(record)
                repaired += 1
            elif record["state"] == states.QUEUED and name == record.get("k8s_job"):
                # (a requeued job's earlier attempt, still being deleted, proves nothing about this one)
                seq = record.get("queue_seq")
                # the node its launch was tried on; else the lifecycle records it from the pod
                extra = {"node": self._tried_on[job_id]} if job_id in self._tried_on else {}

                def decide(r):
                    if r["state"] != states.QUEUED:
                        return None
                    return states.transition(r, states.SCHEDULED, now=self.clock(),
                                             reason="found running in the cluster; record repaired", **extra)

                done = await self.jobs.mutate(job_id, decide)
                if done:
                    self._refused.pop(job_id, None)
                    self._tried_on.pop(job_id, None)
                    if seq is not None:
                        await self.queue.remove(seq)
                    await announce(self.history, self.sink, SOURCE, done[0], done[1], events.JOB_SCHEDULED)
                    repaired += 1
        return repaired
