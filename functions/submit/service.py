"""What the submit function does with an authenticated request, over the ports only.

Submit is made retry-safe by order: queue message first (deduplicated by job id), then
the record by create-if-absent, then history and the queued event (both deduplicated).
A retry after a crash anywhere completes the missing steps and repeats none.
"""

import asyncio
from dataclasses import dataclass, field
from typing import Callable

from sentinels.domain import build, events, job, runtime, states, sweep
from sentinels.domain.errors import Conflict as Refused, Forbidden, InvalidSpec, NotFound
from sentinels.domain.priority import PriorityConfig
from sentinels.domain.registries import Registries
from sentinels.domain.sharing import Sharing
from sentinels.domain.spec import Limits, job_config, validate, with_params
from sentinels.ports import Conflict, EventSink, History, JobQueue, JobStore
from sentinels.transitions import announce

SOURCE = "sentinels/submit"


@dataclass
class SubmitService:
    jobs: JobStore
    queue: JobQueue
    history: History
    sink: EventSink
    priorities: PriorityConfig
    limits: Limits
    clock: Callable[[], str]
    runtime: str | None = None  # the embedded default's local runtime (process, podman, docker)
    sharing: Sharing = field(default_factory=Sharing)
    sweep_max: int = 1000
    registries: Registries = field(default_factory=Registries)  # credentials kept to teams refuse others here

    # --- submit ---------------------------------------------------------------------
    async def submit(self, data, who: dict, source: str, event_id: str) -> tuple[int, dict]:
        raw = data.get("spec") if isinstance(data, dict) and "spec" in data else data
        if isinstance(data, dict) and data.get("build") is not None:
            return await self._submit_build(raw, build.validate(data["build"]), who, source, event_id)
        members = sweep.members(data, self.sweep_max)
        if members is not None:
            return await self._submit_sweep(raw, members, who, source, event_id)
        return await self._submit_one(self._prepare(raw, who), who, source, event_id, raw=raw)

    def _prepare(self, raw, who: dict) -> dict:
        """The validated spec with its class resolved; refused here, before anything is written."""
        spec = validate(raw, self.limits)
        refusal = self.registries.refusal(spec["image"], who.get("team"))
        if refusal:  # it would run without credentials and fail its pull: say why now
            raise Forbidden(f"{refusal}; your team is {who.get('team') or 'none'}")
        spec["priority"] = self.priorities.resolve(spec["priority"], who, spec)
        if not spec.get("preemptible", True) and not self.sharing.allows_unpreemptible(spec["priority"]):
            raise InvalidSpec(f"preemptible: class {spec['priority']!r} may not declare preemptible: false", "preemptible")
        return spec

    async def _submit_one(self, spec: dict, who: dict, source: str, event_id: str,
                          member: dict | None = None, raw=None, announce: bool = True) -> tuple[int, dict]:
        job_id = job.job_id_for(who["user"], source, event_id)
        now = self.clock()
        entry = job.queue_entry(job_id=job_id, spec=spec, klass=spec["priority"], submitted_at=now,
                                owner=who["user"], team=who.get("team"))
        seq = await self.queue.enqueue(entry, msg_id=job_id)
        record = job.new_record(job_id=job_id, spec=spec, who=who, klass=spec["priority"], now=now,
                                queue_seq=seq)
        self._runtime_fields(record)
        if isinstance(raw, dict):  # what the job reads at SENTINELS_CONFIG (sweep members: their spec)
            record["config"] = job_config(raw, spec)
        if member:
            record["sweep"] = member
        # The record, its history entry and the queued event go out together: the latter two
        # carry deterministic ids, so a retry repeats nothing, and an event that beats its
        # record is harmless (the scheduler waits for records; see orphan_grace).
        created, _ = await asyncio.gather(self._create(record),
                                          self._announce(None, record, events.JOB_QUEUED if announce else None))
        if created:
            return 201, record
        record = await self._current(job_id)  # a retry of a submit that already made its record
        if seq != record.get("queue_seq"):
            await self.queue.remove(seq)  # retried after the dedupe window: drop the copy
        return 200, record

    async def _submit_build(self, raw, wanted: dict, who: dict, source: str, event_id: str) -> tuple[int, dict]:
        """A Dockerfile submit: the record starts BUILDING, outside the queue, until its image exists."""
        if not isinstance(raw, dict):
            raise InvalidSpec("the job spec must be a mapping of fields", "spec")
        spec = validate({**raw, "image": raw.get("image") or build.placeholder_image(raw.get("name"))}, self.limits)
        spec["priority"] = self.priorities.resolve(spec["priority"], who, spec)
        job_id = job.job_id_for(who["user"], source, event_id)
        spec["image"] = build.local_image(spec["name"], job_id)  # what the build will tag
        now = self.clock()
        record = job.new_record(job_id=job_id, spec=spec, who=who, klass=spec["priority"], now=now, queue_seq=None)
        record.update(state=states.BUILDING, timestamps={states.BUILDING: now}, reason="waiting for a builder",
                      build=wanted, build_job=build.build_job_name(job_id), order=None)
        self._runtime_fields(record)
        created, _ = await asyncio.gather(self._create(record), self._announce(None, record, events.JOB_BUILDING))
        if created:
            return 201, record
        return 200, await self._current(job_id)

    def _runtime_fields(self, record: dict) -> None:
        """Which local runtime the job gets; the process runtime says its image is not used."""
        if self.runtime:
            record["runtime"] = self.runtime
            note = runtime.note(self.runtime, record["spec"]["image"])
            if note:
                record["runtime_note"] = note
    async def _submit_sweep(self, raw, members: list[dict], who: dict, source: str, event_id: str):
        """Every member validated first (a bad one refuses the whole request), then written;
        member i has CloudEvent id `<id>#<i>`, so a retried request creates nothing twice."""
        sweep_id = sweep.SWEEP_PREFIX + job.job_id_for(who["user"], source, event_id)
        base = self._prepare(raw, who)  # validated once; members differ only in params, name and env
        specs = []
        for m in members:
            spec = with_params(base, sweep.member_spec(raw, m)["params"]) if m["values"] else dict(base)
            spec["name"] = sweep.member_name(spec["name"], m["index"])
            spec["env"] = dict(spec.get("env") or {}, SENTINELS_SWEEP_ID=sweep_id)
            if m["array_index"] is not None:
                spec["env"]["SENTINELS_ARRAY_INDEX"] = str(m["array_index"])
            specs.append(spec)
        gate = asyncio.Semaphore(256)

        async def one(spec, m):
            async with gate:
                meta = {"id": sweep_id, "index": m["index"], "size": len(members), "values": m["values"]}
                if m["array_index"] is not None:
                    meta["array_index"] = m["array_index"]
                return await self._submit_one(spec, who, source, f"{event_id}#{m['index']}", meta, announce=False)

        done = await asyncio.gather(*(one(s, m) for s, m in zip(specs, members)))
        created = any(status == 201 for status, _ in done)
        # one queued event for the whole sweep (each member has its history entry): it only
        # tells the scheduler to look at the queue, a thousand would tell it the same
        last = done[-1][1]
        await self.sink.emit(events.envelope(events.JOB_QUEUED, SOURCE, f"{sweep_id}:queued",
                                             {"job": last["id"], "sweep": sweep_id, "size": len(members),
                                              "class": last["priority"], "owner": last["owner"], "state": "QUEUED",
                                              "reason": last.get("reason", "")},
                                             last["updated_at"], subject=sweep_id))
        return (201 if created else 200), {"sweep": sweep_id, "size": len(members),
                                           "jobs": [r["id"] for _, r in done]}

    async def _create(self, record: dict) -> bool:
        try:
            await self.jobs.create(record)
            return True
        except Conflict:
            return False

    async def _announce(self, before, after, event_type, tag=None) -> None:
        await announce(self.history, self.sink, SOURCE, before, after, event_type, tag=tag)

    async def _current(self, job_id: str) -> dict:
        got = await self.jobs.get(job_id)
        if got is None:
            raise NotFound(f"job {job_id} not found")
        return got[0]

    # --- cancel / reprioritize ------------------------------------------------------
    async def _owned(self, data, who) -> tuple[dict, int]:
        job_id = data.get("job") if isinstance(data, dict) else None
        if not job.is_job_id(job_id):
            raise InvalidSpec(f"job: {job_id!r} is not a job id", "job")
        got = await self.jobs.get(job_id)
        if got is None:
            raise NotFound(f"job {job_id} not found", "job")
        record, rev = got
        if record["owner"] != who["user"] and who.get("role") != "admin":
            raise Forbidden(f"job {job_id} belongs to {record['owner']}; only its owner or an admin may change it")
        return record, rev

    async def cancel(self, data, who: dict) -> tuple[int, dict]:
        if isinstance(data, dict) and data.get("sweep") is not None:
            return await self.cancel_sweep(data["sweep"], who)
        record, _ = await self._owned(data, who)
        reason = f"cancelled by {who['user']}"

        def decide(r):
            if r["state"] == states.QUEUED:
                return states.transition(r, states.CANCELLED, now=self.clock(), reason=reason)
            if (r["state"] in states.ACTIVE or r["state"] == states.BUILDING) and not r.get("cancel_requested"):
                out = dict(r, cancel_requested=True, reason=f"cancel requested by {who['user']}", updated_at=self.clock())
                return out
            return None

        done = await self.jobs.mutate(record["id"], decide)
        if done is None:
            current = await self._current(record["id"])
            if current["state"] in states.TERMINAL and current["state"] != states.CANCELLED:
                raise Refused(f"job {current['id']} already ended ({current['state']}); nothing to cancel")
            return 200, current  # already cancelled or cancel already requested
        before, after = done
        if after["state"] == states.CANCELLED:
            await self.queue.remove(before["queue_seq"])
            await self._announce(before, after, events.JOB_CANCELLED)
        else:
            await self.sink.emit(events.envelope(events.JOB_CANCEL_REQUESTED, SOURCE, f"{after['id']}:cancel", {"job": after["id"]},
                                                 after["updated_at"], subject=after["id"]))
        return 200, after

    async def cancel_sweep(self, sweep_id, who: dict) -> tuple[int, dict]:
        """Cancel every member of a sweep that has not ended (the owner's or an admin's)."""
        if not isinstance(sweep_id, str) or not sweep_id.startswith(sweep.SWEEP_PREFIX) \
                or not job.is_job_id(sweep_id[len(sweep.SWEEP_PREFIX):]):
            raise InvalidSpec(f"sweep: {sweep_id!r} is not a sweep id", "sweep")
        ids, cursor = [], None
        while True:
            page, cursor, _ = await self.jobs.listing("sweep", sweep=sweep_id, before=cursor, limit=1000)
            ids += page
            if cursor is None:
                break
        if not ids:
            raise NotFound(f"sweep {sweep_id} not found", "sweep")
        gate = asyncio.Semaphore(64)

        async def one(job_id):
            async with gate:
                try:
                    return (await self.cancel({"job": job_id}, who))[1]
                except Refused:
                    return None  # already ended

        done = [r for r in await asyncio.gather(*(one(i) for i in ids)) if r]
        return 200, {"sweep": sweep_id, "jobs": [{"id": r["id"], "state": r["state"]} for r in done]}

    async def reprioritize(self, data, who: dict) -> tuple[int, dict]:
        record, _ = await self._owned(data, who)
        klass = data.get("priority") or data.get("class")
        if not isinstance(klass, str):
            raise InvalidSpec("priority: required (a class name)", "priority")
        self.priorities.check_allowed(klass, who)
        if record["state"] != states.QUEUED:
            raise Refused(f"job {record['id']} is {record['state']}; only a queued job can change priority")
        if record["priority"] == klass:
            return 200, record
        old_seq = record["queue_seq"]
        entry = job.queue_entry(job_id=record["id"], spec=record["spec"], klass=klass, submitted_at=record["submitted_at"],
                                owner=record["owner"], team=record.get("team"))
        seq = await self.queue.enqueue(entry, msg_id=f"{record['id']}:{klass}:{old_seq}")
        now = self.clock()

        def decide(r):
            if r["state"] != states.QUEUED or r["queue_seq"] != old_seq:
                return None
            spec = dict(r["spec"], priority=klass)
            return dict(r, priority=klass, spec=spec, queue_seq=seq, queue_front=False, updated_at=now,
                        reason=f"priority {r['priority']} -> {klass} by {who['user']}")

        done = await self.jobs.mutate(record["id"], decide)
        if done is None:
            current = await self._current(record["id"])
            if current.get("queue_seq") == seq:  # the same request made twice at once: the other did it
                return 200, current
            await self.queue.remove(seq)
            raise Refused(f"job {record['id']} changed while reprioritizing (now {current['state']}); try again")
        before, after = done
        await self.queue.remove(old_seq)
        await self._announce(before, after, events.JOB_QUEUED, tag=f"prio:{klass}:{old_seq}")
        return 200, after
