"""The lifecycle: observations of Jobs, Pods and Nodes move job records.

snapshot (record) -> decide (pure `lifecycle.decide`) -> apply (CAS, then effects).
Effects are idempotent (deduplicated queue entry, history and event ids), and the
record remembers the last observation it applied, so a redelivery after a crash between
the CAS and the effects finishes the effects once more without a second transition.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from sentinels.domain.times import parse as parse_iso
from sentinels.domain import events, job, lifecycle, local_objects, observe, states, times, tracking
from sentinels.domain.errors import SentinelsError, Unavailable
from sentinels.domain.names import MLFLOW_OWED_KEY
from sentinels.ports import Board, Cluster, EventSink, History, JobQueue, JobStore, PeakUsage, Tracker
from sentinels.transitions import announce

log = logging.getLogger("sentinels.on_job_event")
SOURCE = "sentinels/on_job_event"
EVENT_FOR = {states.RUNNING: events.JOB_STARTED, states.SUCCEEDED: events.JOB_SUCCEEDED,
             states.FAILED: events.JOB_FAILED, states.CANCELLED: events.JOB_CANCELLED,
             states.QUEUED: events.JOB_REQUEUED}


PASSED_THROUGH = "running (its start was seen after its end)"
RACE_RETRIES = 10
EARLY = (observe.RUNNING, observe.SUCCEEDED, observe.FAILED)  # observations that need a SCHEDULED record
FULL_SCAN_EVERY = 10
RECONCILE_CONCURRENCY = 16  # records repaired at once (each a few store round trips)
RECONCILE_GRACE = 60.0  # seconds a SCHEDULED/RUNNING record may have no Job before it counts as deleted
# A Job gone from the cluster counts as deleted only while this function keeps up with the
# cluster's events: when the last one it handled was sent more than this long before, the
# Job's own end may still wait in the broker (a loaded machine: 459 jobs of a burst whose
# Jobs had ended and expired were requeued and ran twice). A lag older than LAG_MEMORY
# seconds (nothing came since) no longer holds the reconcile back.
LAG_TOLERATED = 10.0
LAG_MEMORY = 60.0
VERDICT_WAIT_SECONDS = 20.0


class RetryLater(Exception):
    """The event came before the state it needs (e.g. pod running before SCHEDULED); redeliver."""


@dataclass
class LifecycleService:
    jobs: JobStore
    queue: JobQueue
    history: History
    sink: EventSink
    cluster: Cluster
    clock: Callable[[], str]
    policy: lifecycle.Policy = lifecycle.Policy()
    tracker: Optional[Tracker] = None
    outputs_dir: Optional[Callable[[dict], Optional[str]]] = None  # record -> directory holding its outputs
    log_lines: int = 20
    _node_states: dict = field(default_factory=dict)
    owed_mlflow: set = field(default_factory=set)
    board: Optional[Board] = None  # where the owed set survives restarts
    _reconciles: int = 0
    _lag: tuple = (0.0, float("-inf"))  # (seconds the last cluster event waited, time.monotonic() then)
    peaks: Optional[PeakUsage] = None  # a finished job's peaks for MLflow (Kubernetes); None: not here

    async def handle(self, event_type: str, obj: dict, event_id: str = "", sent_at: Optional[str] = None) -> str:
        """Apply one ApiServerSource-shaped event; returns a word for logs and tests.

        `sent_at`: the event's `time`, to know how far behind the cluster's events this is."""
        if sent_at:
            try:
                self._lag = (max(0.0, parse_iso(self.clock()) - parse_iso(sent_at)), time.monotonic())
            except (ValueError, TypeError):
                pass
        name = (obj.get("metadata") or {}).get("name") if isinstance(obj, dict) else None
        obs = observe.observe(event_type, obj, self._node_states.get(name))
        if obs is None:
            return "ignored"
        if obs.kind == "Node":
            return await self._node(obs)
        if obs.job_id is None:
            log.info("ignoring %s %s: no valid sentinels.io/job-id label", obs.kind, obs.name)
            return "ignored"
        if not lifecycle.needs_record(obs):
            return "stale"  # what decide() would say, without reading the record
        return await self._job(obs)

    async def _job(self, obs: observe.Observation) -> str:
        """Decide on the current record; if another event changed it meanwhile, decide again."""
        for _ in range(RACE_RETRIES):
            outcome = await self._job_once(obs)
            if outcome != "raced":
                return outcome
        raise RetryLater(f"job {obs.job_id}: changed under {RACE_RETRIES} attempts in a row")

    async def _job_once(self, obs: observe.Observation) -> str:
        got = await self.jobs.get(obs.job_id or "")
        if got is None:
            log.info("ignoring %s %s: job %s unknown", obs.kind, obs.name, obs.job_id)
            return "unknown-job"
        record = got[0]
        key = f"{obs.uid}:{obs.resource_version}:{obs.what}"
        if record.get("last_observation") == key:  # redelivery after the CAS: finish the effects
            await self._effects(None, record, self._last_step(record), replay=True)
            return "redelivered"
        if record["state"] == states.QUEUED and obs.what in EARLY and obs.attempt in (None, record.get("attempts")) \
                and (obs.kind != "Job" or obs.name in (None, record.get("k8s_job"))):
            # the scheduler's compare-and-set has not landed yet (or it crashed before it):
            # keep the event; the reconcile on the timer repairs it if it never lands
            raise RetryLater(f"job {obs.job_id} {obs.what} but is not recorded as scheduled yet")
        now = parse_iso(self.clock())
        if (obs.kind == "Job" and obs.what == observe.FAILED and not obs.deadline and record["state"] in states.ACTIVE
                and obs.failed_pods is not None and len(lifecycle.runs_of(record)) < obs.failed_pods
                <= int(record["spec"].get("retries") or 0) + 1 and obs.since is not None
                and now - obs.since < VERDICT_WAIT_SECONDS):
            # the Job's verdict came before its last pod's end, which names the exit code: wait
            # for it a little (the router redelivers), then take the verdict as it is
            raise RetryLater(f"job {obs.job_id}: its Job failed before the end of its last run was recorded")
        sched = record.get("timestamps", {}).get(states.SCHEDULED)
        step = lifecycle.decide(record, obs, now, self.policy, parse_iso(sched) if sched else None)
        if step is None:
            return "stale"
        return await self.apply(record, step, key, revision=got[1])

    async def apply(self, record: dict, step: lifecycle.Step, key: str, revision: int | None = None) -> str:
        """`revision`: the one `record` was read at, so the compare-and-set needs no second read."""
        changes, reason = dict(step.changes), step.reason
        if lifecycle.STOP in step.effects:
            changes["previous_job"] = record.get("k8s_job")
        if lifecycle.LOGS in step.effects:
            changes["log_tail"] = await self._log_tail(record)
        if step.to == states.FAILED and reason == lifecycle.BACKOFF_LIMIT:  # say why the last pod failed
            end = await self._last_end(record)
            if end:
                reason = end["reason"]
                if end.get("exit_code") is not None:
                    changes["exit_code"] = end["exit_code"]
        seq = None
        # An entry's message id names the revision the step was decided on: steps decided on
        # one revision share one entry (the winner's), and a step decided again after losing
        # its race (its entry dropped below) gets a new one: the same id would be deduplicated
        # by the stream to the dropped entry's sequence, leaving the record QUEUED with no entry.
        tag = revision
        if tag is None and (lifecycle.ENQUEUE in step.effects or lifecycle.REQUEUE in step.effects):
            got = await self.jobs.get(record["id"])
            tag = got[1] if got else 0
        if lifecycle.ENQUEUE in step.effects:  # built: it joins the queue with its image
            entry = job.queue_entry(job_id=record["id"], spec=step.changes["spec"], klass=record["priority"],
                                    submitted_at=record["submitted_at"])
            seq = await self.queue.enqueue(entry, msg_id=f"{record['id']}:built:{tag}")
            changes.update(queue_seq=seq, order=seq)
        if lifecycle.REQUEUE in step.effects:
            entry = job.queue_entry(job_id=record["id"], spec=record["spec"], klass=record["priority"],
                                    submitted_at=record["submitted_at"], order=record.get("order"),
                                    owner=record.get("owner"), team=record.get("team"))
            entry["front"] = True
            seq = await self.queue.enqueue(entry, msg_id=f"{record['id']}:requeue:{record.get('attempts', 1)}:{tag}",
                                           front=True)
            changes.update(queue_seq=seq, queue_front=True)
        expected = record["state"]
        now = self.clock()
        step_data = {"to": step.to, "effects": list(step.effects), "through": step.through}

        def decide(r):
            # the step was decided for this attempt: a record that moved on to another one
            # (requeued meanwhile) is not this step's to change
            if r["state"] != expected or r.get("last_observation") == key or r.get("attempts") != record.get("attempts"):
                return None
            if step.to is None:
                return dict(r, reason=reason, updated_at=now, last_observation=key, **changes)
            if step.through:
                r = states.transition(r, step.through, now=now, reason=PASSED_THROUGH)
            return states.transition(r, step.to, now=now, reason=reason, last_observation=key,
                                     last_step=step_data, **changes)

        done = await self.jobs.mutate(record["id"], decide, known=None if revision is None else (record, revision))
        if done is None:
            if seq is not None:
                # Two observations of one disruption (the Node's deletion, its pod failed by PodGC)
                # enqueue the same deduplicated entry: if the other one won with it, it stays.
                current = await self.jobs.get(record["id"])
                if current is None or current[0].get("queue_seq") != seq:
                    log.info("job %s: queue entry %d of a step that lost the race dropped (the record has %s)",
                             record["id"], seq, current[0].get("queue_seq") if current else None)
                    await self.queue.remove(seq)
            return "raced"
        before, after = done
        if step.to is None and lifecycle.HISTORY in step.effects:  # one run of several ended
            run = after["runs"][-1]
            entry = dict(states.history_entry(before, after), attempts=run["run"], exit_code=run.get("exit_code"))
            await self.history.append(entry, msg_id=f"{after['id']}:run:{run['generation']}:{run['run']}")
        await self._effects(before, after, step_data if step.to else None)
        return after["state"].lower() if step.to else "noted"

    @staticmethod
    def _last_step(record: dict) -> dict | None:
        return record.get("last_step")

    async def _effects(self, before: dict | None, after: dict, step: dict | None, replay: bool = False) -> None:
        if not step:
            return
        if lifecycle.STOP in step["effects"]:
            await self._stop(dict(after, k8s_job=after.get("previous_job") or after.get("k8s_job")))
        if step.get("through"):  # record and announce the state it passed on the way
            mid = dict(after, state=step["through"], reason=PASSED_THROUGH,
                       updated_at=after["timestamps"][step["through"]])
            await announce(self.history, self.sink, SOURCE, dict(after, state=states.SCHEDULED), mid,
                           EVENT_FOR.get(mid["state"]), replay=replay)
            before = mid
        built = lifecycle.ENQUEUE in step["effects"]  # a new job for the scheduler, not a requeue
        await announce(self.history, self.sink, SOURCE, before, after,
                       events.JOB_QUEUED if built else EVENT_FOR.get(after["state"]), replay=replay)
        if lifecycle.CAPACITY in step["effects"]:
            await self._capacity_changed(f"capacity:{after['id']}:{after['state']}:{after.get('attempts', 1)}",
                                         f"job {after['id']} {after['state'].lower()}")
        await self.sync_mlflow(after)

    async def _stop(self, record: dict) -> None:
        try:
            await self.cluster.stop(record)
        except SentinelsError as e:  # it is retried: the old Job still carries the old attempt
            log.warning("job %s: stopping %s failed: %s", record["id"], record.get("k8s_job"), e.message)

    async def _log_tail(self, record: dict) -> list[str]:
        try:
            return (await self.cluster.logs(record, self.log_lines))[-self.log_lines:]
        except Exception as e:  # logs are a courtesy; the transition must not wait on them
            log.info("job %s: no logs (%s)", record["id"], type(e).__name__)
            return []

    async def _last_end(self, record: dict) -> dict | None:
        try:
            return await self.cluster.last_end(record)
        except Exception as e:  # a courtesy like the logs: the verdict stands without it
            log.info("job %s: last pod not read (%s)", record["id"], type(e).__name__)
            return None

    async def _capacity_changed(self, event_id: str, why: str) -> None:
        await self.sink.emit(events.envelope(events.CAPACITY_CHANGED, SOURCE, event_id, {"why": why}, self.clock()))

    async def _node(self, obs: observe.Observation) -> str:
        if obs.node_state:
            self._node_states[obs.name] = obs.node_state
        if obs.what == observe.NODE_REMOVED:
            self._node_states.pop(obs.name, None)
            for listed in lifecycle.jobs_on_lost_node(await self.jobs.active(), obs.name or ""):
                # decided on the record as it is now: the listing may be older than a requeue
                # (and a placement of the next attempt) that another observation already made
                got = await self.jobs.get(listed["id"])
                if got is None or not lifecycle.jobs_on_lost_node([got[0]], obs.name or ""):
                    continue
                step = lifecycle.requeue_or_fail(got[0], f"node {obs.name} was removed", self.policy, False)
                await self.apply(got[0], step, f"node-removed:{obs.name}:{obs.uid}", revision=got[1])
        await self._capacity_changed(f"node:{obs.name}:{obs.uid}:{obs.resource_version}:{obs.what}",
                                     f"node {obs.name}: {obs.what}")
        return obs.what

    # --- reconcile ------------------------------------------------------------------
    async def reconcile(self) -> int:
        """Converge from the cluster's state: apply what the events of SCHEDULED/RUNNING jobs missed.

        Events can be lost for good (the lifecycle function down longer than the broker's
        retries) or come too early (a job that ended before the scheduler recorded it as
        SCHEDULED). On the timer, every active record is compared with its Job as the
        cluster shows it now; a finished Job moves the record exactly as its event would
        have, a Job that is gone (for longer than a grace period) counts as deleted.
        """
        self._reconciles += 1
        # the active index, not a scan of every record; every FULL_SCAN_EVERY-th time a scan
        # as well, so a record whose index entry a crash lost is still repaired
        scan = self._reconciles % FULL_SCAN_EVERY == 1
        active = [r for r in await (self.jobs.all() if scan else self.jobs.active()) if r["state"] in states.ACTIVE]
        if not active:
            return 0
        current = await self.cluster.jobs([r["id"] for r in active])
        now = parse_iso(self.clock())
        lag, seen = self._lag
        caught_up = lag < LAG_TOLERATED or time.monotonic() - seen > LAG_MEMORY
        if not caught_up:
            log.info("reconcile: the cluster's events arrive %.0f s late; no Job is taken as deleted now", lag)
        gate = asyncio.Semaphore(RECONCILE_CONCURRENCY)

        async def repair(record: dict) -> bool:
            obj = current.get(record["id"])
            if obj is not None:
                obs = observe.observe(events.APISERVER_UPDATE, obj)
            elif now - parse_iso(record.get("updated_at") or self.clock()) >= RECONCILE_GRACE and caught_up:
                obs = observe.Observation(kind="Job", what=observe.DELETED, name=record.get("k8s_job"),
                                          job_id=record["id"], uid="reconcile", deleted=True,
                                          resource_version=record.get("updated_at"), attempt=record.get("attempts"),
                                          reason="its Job is gone")
            else:
                return False
            if obs is None or obs.what not in (observe.SUCCEEDED, observe.FAILED, observe.DELETED):
                return False
            async with gate:
                try:
                    outcome = await self._job(obs)
                except (RetryLater, SentinelsError) as e:
                    log.warning("reconcile: job %s: %s", record["id"], e)
                    return False
            if outcome in ("stale", "unknown-job", "redelivered"):
                return False
            log.info("reconcile: job %s %s -> %s (from the cluster's state)", record["id"], record["state"], outcome)
            return True

        return sum(await asyncio.gather(*(repair(r) for r in active)))

    # --- cancel and MLflow ------------------------------------------------------------
    async def cancel(self, job_id: str) -> str:
        """Carry out a cancel the submit function recorded on a SCHEDULED/RUNNING job."""
        got = await self.jobs.get(job_id) if job.is_job_id(job_id) else None
        if got is None:
            return "unknown-job"
        record = got[0]
        building = record["state"] == states.BUILDING
        if (record["state"] not in states.ACTIVE and not building) or not record.get("cancel_requested"):
            return "nothing-to-do"
        # raises Unavailable: redelivered; a build is stopped like a run (its own Job)
        await self.cluster.stop(dict(record, k8s_job=record.get("build_job")) if building else record)
        ended = None if building else await self._ended_meanwhile(record)
        if ended is not None:  # it finished before the stop reached it: that result stands
            return await self._job(ended)
        step = lifecycle.Step(states.CANCELLED, record.get("reason") or "cancelled", (lifecycle.CAPACITY,))
        outcome = await self.apply(record, step, f"cancel:{record.get('attempts', 1)}")
        if outcome == "raced":  # its state moved meanwhile (started, ended): look again
            return await self.cancel(job_id)
        return outcome

    async def preempt(self, job_id: str) -> str:
        """Carry out a preemption the scheduler recorded on a running job: stop it, requeue it."""
        got = await self.jobs.get(job_id) if job.is_job_id(job_id) else None
        if got is None:
            return "unknown-job"
        record = got[0]
        step = lifecycle.preempted(record)
        if step is None:
            return "nothing-to-do"
        # raises Unavailable: redelivered; the job is told why before SIGTERM (file / DisruptionTarget)
        await self.cluster.stop(record, record.get("preempted_note") or f"preempted by {record['preempted_by']}")
        outcome = await self.apply(record, step, f"preempt:{record.get('attempts', 1)}", revision=got[1])
        if outcome == "raced":
            return await self.preempt(job_id)
        return outcome

    async def _ended_meanwhile(self, record: dict) -> observe.Observation | None:
        """The Job's own end (success or failure) if the cluster shows one for this attempt."""
        obj = (await self.cluster.jobs([record["id"]])).get(record["id"])
        obs = observe.observe(events.APISERVER_UPDATE, obj) if obj else None
        if obs is None or obs.what not in (observe.SUCCEEDED, observe.FAILED) or obs.attempt not in \
                (None, record.get("attempts")):
            return None
        if obs.what == observe.FAILED and obs.reason.startswith(local_objects.STOPPED_REASON):
            return None  # that failure is our own stop: the cancel records it
        return obs

    async def sync_mlflow(self, record: dict) -> None:
        """Bring MLflow up to date; when it does not answer, remember the job and try on the next tick."""
        owed = False
        try:
            if self.tracker is None or not tracking.pending_ops(record):
                return
            record = await self._with_peaks(record)
            outputs = self.outputs_dir(record) if self.outputs_dir else None
            try:
                updated = await asyncio.to_thread(self.tracker.sync, record, outputs)
            except Unavailable as e:
                owed = True
                log.warning("job %s: MLflow not reachable (%s); will catch up", record["id"], e.message)
                return
            except SentinelsError as e:  # MLflow refused (e.g. the run was deleted): the job's state stands
                log.warning("job %s: MLflow refused the update: %s", record["id"], e.message)
                return
            if updated is not None:
                keep = {k: updated[k] for k in ("mlflow", "mlflow_run_id", "links") if k in updated}
                await self.jobs.mutate(record["id"], lambda r: dict(r, **keep))
        finally:
            await self._owe(record["id"], owed)

    async def _with_peaks(self, record: dict) -> dict:
        """Before the run is finished in MLflow: the job's peaks, once (best effort)."""
        if self.peaks is None or "usage" in record or record["state"] not in states.TERMINAL:
            return record
        if not any(op["op"] == "finish" for op in tracking.pending_ops(record)):
            return record
        _, run = times.job_times(record)
        if run is None:
            return record  # it never ran: nothing used
        try:
            found = await self.peaks.peaks(record["id"], run)
        except SentinelsError as e:  # Prometheus away: the run is finished without them
            log.warning("job %s: peak usage not read (%s)", record["id"], e.message)
            found = {}
        gpus = int((record.get("spec") or {}).get("resources", {}).get("gpu") or 0)
        found = {**found, "gpu_seconds": round(gpus * run, 3)} if found else {}
        changed = await self.jobs.mutate(record["id"], lambda r: None if "usage" in r else dict(r, usage=found))
        return changed[1] if changed else record

    async def _owe(self, job_id: str, owed: bool) -> None:
        """Keep the set of jobs MLflow still owes, in memory and (when it changes) in the Board,
        so a restart of this function during an MLflow outage forgets none."""
        if owed == (job_id in self.owed_mlflow):
            return
        (self.owed_mlflow.add if owed else self.owed_mlflow.discard)(job_id)
        if self.board is not None:
            await self.board.put(MLFLOW_OWED_KEY, {"jobs": sorted(self.owed_mlflow)})

    async def catch_up(self) -> int:
        """On the timer: retry MLflow for jobs that still owe it something."""
        if self.board is not None:
            self.owed_mlflow |= set(((await self.board.get(MLFLOW_OWED_KEY)) or {}).get("jobs") or [])
        done = 0
        for job_id in list(self.owed_mlflow):
            got = await self.jobs.get(job_id)
            if got is None:
                await self._owe(job_id, False)
                continue
            await self.sync_mlflow(got[0])
            done += job_id not in self.owed_mlflow
        return done
