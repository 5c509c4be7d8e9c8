"""The schedule function's pass over in-memory ports: order, races, faults, repair."""

import asyncio
import time

import pytest

from sentinels.domain.scheduler_config import SchedulerConfig
from sentinels.functions.schedule.service import ScheduleService
from sentinels.functions.submit.service import SubmitService
from sentinels import clock
from sentinels.adapters.memory import MemoryBoard, MemoryCluster, MemoryHistory, MemoryJobs, MemoryQueue
from sentinels.domain.errors import ConfigError
from sentinels.domain.placement import Node
from sentinels.domain.priority import PriorityConfig
from sentinels.domain.spec import Limits
from sentinels.adapters.memory import MemorySink

GI = 2**30
ADMIN = {"user": "root", "role": "admin"}


class World:
    def __init__(self, nodes, **cfg):
        self.jobs, self.queue, self.history, self.sink = MemoryJobs(), MemoryQueue(), MemoryHistory(), MemorySink()
        self.cluster = MemoryCluster(nodes)
        prio = PriorityConfig.from_dict(None)
        self.submitter = SubmitService(self.jobs, self.queue, self.history, self.sink, prio, Limits(), clock.now_iso)
        self.sched = ScheduleService(self.jobs, self.queue, self.history, self.sink, self.cluster, prio,
                                     SchedulerConfig.from_dict(cfg), clock.now_iso, board=MemoryBoard())
        self.n = 0

    async def submit(self, cpu=1, gpu=0, priority="normal", name=None):
        self.n += 1
        spec = {"image": "python:3.11", "command": ["true"], "priority": priority, "name": name or f"j{self.n}",
                "resources": {"cpu": cpu, "memory": "1Gi", "gpu": gpu}}
        _, rec = await self.submitter.submit({"spec": spec}, ADMIN, "tests", f"ev{self.n}")
        return rec["id"]

    async def state(self, job_id):
        return (await self.jobs.get(job_id))[0]

    async def reason(self, job_id):
        return ((await self.sched.board.get("waiting")) or {}).get("reasons", {}).get(job_id)


def node(name, cpu=4, gpu=0):
    return Node(name, cpu * 1000, 64 * GI, gpu, cpu * 1000, 64 * GI, gpu)


async def test_highest_priority_first_and_reasons_for_the_rest():
    w = World([node("a", cpu=2)])
    low = await w.submit(priority="low")
    normal = await w.submit()
    high = await w.submit(priority="high")
    critical = await w.submit(cpu=2, priority="critical")
    result = await w.sched.trigger()
    assert result["placed"] == 1 and w.cluster.launches == [critical]
    assert (await w.state(critical))["state"] == "SCHEDULED"
    assert await w.reason(high) == "needs 1 CPU on one node; the largest free is 0 CPU"
    writes = w.sched.board.writes
    await w.sched.trigger()  # nothing changed: the reasons are not written again
    assert w.sched.board.writes == writes
    assert sum((await w.queue.counts()).values()) == 3
    w.cluster.finish(critical)
    await w.sched.trigger()
    assert w.cluster.launches == [critical, high, normal]
    assert (await w.state(low))["state"] == "QUEUED"
    assert [e["to"] for e in await w.history.of(high)] == ["QUEUED", "SCHEDULED"]
    assert sum(1 for e in w.sink.events if e["type"] == "io.sentinels.job.scheduled") == 3


async def test_concurrent_passes_and_duplicate_events_start_each_job_once():
    w = World([node("a", cpu=64)])
    ids = [await w.submit() for _ in range(20)]

    other = ScheduleService(w.jobs, w.queue, w.history, w.sink, w.cluster, w.sched.priorities, w.sched.cfg, clock.now_iso)
    await asyncio.gather(w.sched.trigger(), w.sched.trigger(), other.trigger(), other.run_pass())
    assert sorted(w.cluster.launches) == sorted(ids)  # each launched once
    for j in ids:
        assert [e["to"] for e in await w.history.of(j)] == ["QUEUED", "SCHEDULED"]
    assert await w.queue.counts() == {}


def later(seconds):
    from datetime import datetime, timezone

    return lambda: datetime.fromtimestamp(time.time() + seconds, timezone.utc).isoformat().replace("+00:00", "Z")


async def test_api_5xx_marks_nothing_and_the_job_is_retried_after_its_back_off():
    w = World([node("a", cpu=1)])
    j = await w.submit()
    w.cluster.fail_launch = True
    assert (await w.sched.trigger())["placed"] == 0
    assert (await w.state(j))["state"] == "QUEUED" and await w.queue.counts() == {"normal": 1}
    assert await w.reason(j) == "launch refused: cluster API answered 503 (try 1; next in 2s)"
    other = await w.submit()
    w.cluster.fail_launch = False
    assert (await w.sched.trigger())["placed"] == 1 and w.cluster.launches == [other]  # its room went to another
    w.cluster.finish(other)
    w.sched.clock = later(3)
    assert (await w.sched.trigger())["placed"] == 1
    assert (await w.state(j))["state"] == "SCHEDULED"


async def test_a_launch_refused_for_good_fails_the_job_with_the_clusters_message():
    from sentinels.domain.errors import LaunchRefused

    w = World([node("a", cpu=1)])
    j = await w.submit()
    w.cluster.fail_launch = LaunchRefused('admission webhook "policy.example" denied the request: no latest tags')
    await w.sched.trigger()
    rec = await w.state(j)
    assert rec["state"] == "FAILED"
    assert rec["reason"] == 'launch refused: admission webhook "policy.example" denied the request: no latest tags'
    assert await w.queue.counts() == {} and [e["to"] for e in await w.history.of(j)] == ["QUEUED", "FAILED"]
    assert [e["type"] for e in w.sink.events][-1] == "io.sentinels.job.failed"
    w.cluster.fail_launch = False
    nxt = await w.submit()
    await w.sched.trigger()
    assert (await w.state(nxt))["state"] == "SCHEDULED"  # the room was not kept


async def test_a_quota_refusal_backs_off_per_job_with_code_quota():
    from sentinels.domain.errors import QuotaExceeded

    w = World([node("a", cpu=4)])
    j = await w.submit()
    w.cluster.fail_launch = QuotaExceeded('Kubernetes refused creating Job: exceeded quota: compute, requested: '
                                          'requests.cpu=1, used: requests.cpu=8, limited: requests.cpu=8')
    await w.sched.trigger()
    doc = await w.sched.board.get("waiting")
    assert doc["codes"][j] == ["quota", None] and "exceeded quota: compute" in doc["reasons"][j]
    w.sched.clock = later(3)
    await w.sched.trigger()
    assert "(try 2; next in 4s)" in (await w.reason(j))


async def test_crash_between_launch_and_record_is_repaired():
    w = World([node("a")])
    j = await w.submit()
    rec = await w.state(j)
    await w.cluster.launch(dict(rec, node="a"), {})  # launched, then the scheduler died
    assert await w.sched.reconcile() == 1
    assert (await w.state(j))["state"] == "SCHEDULED" and await w.queue.counts() == {}
    assert w.cluster.launches == [j]


async def test_a_pass_stops_starting_launches_after_its_time_and_the_next_pass_places_the_rest(monkeypatch):
    from sentinels.functions.schedule import service

    monkeypatch.setattr(service, "APPLY_SECONDS", 0.0)  # every launch after the first is over time
    w = World([node("a", cpu=8)], concurrency=1)
    ids = [await w.submit() for _ in range(3)]
    result = await w.sched.trigger()  # one call: the pass goes again until nothing is deferred
    assert result["deferred"] == 0 and w.cluster.launches == ids
    assert [(await w.state(j))["state"] for j in ids] == ["SCHEDULED"] * 3 and await w.queue.counts() == {}


async def test_a_reconcile_asked_for_during_a_pass_runs_before_the_next_pass_without_waiting():
    """A ping during a long run of passes must not wait for the lock (the router's delivery
    would time out) and must still reconcile soon: a launch whose answer was lost may have
    made a Job that ends and goes before the passes stop."""
    from sentinels.domain.errors import Unavailable

    w = World([node("a", cpu=8)])
    launch, gate = w.cluster.launch, asyncio.Event()

    async def answer_lost(record, env):
        await launch(record, env)
        raise Unavailable("Kubernetes API unreachable while creating Job: ReadTimeoutError")

    w.cluster.launch = answer_lost
    lost = await w.submit()
    await w.sched.trigger()  # launched, but the pass could not know: it backs off
    assert (await w.state(lost))["state"] == "QUEUED" and w.sched.launches_in_doubt

    async def slow_launch(record, env):
        await gate.wait()
        await launch(record, env)

    w.cluster.launch = slow_launch
    other = await w.submit()
    passes = asyncio.create_task(w.sched.trigger())
    await asyncio.sleep(0.05)
    assert await asyncio.wait_for(w.sched.trigger(reconcile=True), 1) is None  # answered at once
    assert (await w.state(lost))["state"] == "QUEUED"
    gate.set()
    await passes
    assert (await w.state(other))["state"] == "SCHEDULED"
    repaired = await w.state(lost)
    assert repaired["state"] == "SCHEDULED" and repaired["reason"].startswith("found running in the cluster")
    assert not w.sched.launches_in_doubt and await w.queue.counts() == {}


async def test_an_earlier_attempt_still_running_is_not_taken_for_the_requeued_one():
    """Found by the simulated cluster: a requeued job (attempt 2, Job sentinels-<id>-a2) whose
    attempt-1 Job was not deleted yet must stay queued, not be "repaired" to SCHEDULED."""
    w = World([node("a")])
    j = await w.submit()
    rec = await w.state(j)
    await w.cluster.launch(dict(rec, node="a"), {})  # attempt 1's Job, k8s_job sentinels-<id>
    await w.jobs.mutate(j, lambda r: dict(r, attempts=2, k8s_job=f"sentinels-{j}-a2"))
    assert await w.sched.reconcile() == 0
    assert (await w.state(j))["state"] == "QUEUED"


async def test_cancelled_job_still_running_is_stopped_on_reconcile():
    w = World([node("a")])
    j = await w.submit()
    await w.sched.trigger()
    await w.jobs.mutate(j, lambda r: dict(r, state="CANCELLED"))
    await w.sched.reconcile()
    assert w.cluster.stops == [j]


async def test_stale_queue_entries_are_removed_not_started():
    w = World([node("a")], orphan_grace="1s")
    done = await w.submit()
    await w.jobs.mutate(done, lambda r: dict(r, state="CANCELLED"))  # its queue entry lingered
    await w.queue.enqueue({"id": "orphan0000", "class": "normal", "submitted": "2020-01-01T00:00:00Z",
                           "cpu_millis": 1000, "memory_bytes": GI, "gpu": 0}, "orphan")
    await w.sched.trigger()
    assert w.cluster.launches == [] and await w.queue.counts() == {}


async def test_job_that_never_fits_waits_with_a_reason_until_a_bigger_node_comes():
    w = World([node("a", gpu=2)])
    j = await w.submit(gpu=4)
    await w.sched.trigger()
    rec, why = await w.state(j), await w.reason(j)
    assert rec["state"] == "QUEUED" and "can never fit" in why and "largest node has 2 GPUs" in why
    w.cluster.base["b"] = node("b", gpu=8)
    await w.sched.trigger()
    assert (await w.state(j))["state"] == "SCHEDULED" and (await w.state(j))["node"] == "b"


async def test_cancel_during_launch_undoes_the_launch():
    w = World([node("a")])
    j = await w.submit()
    real_launch = w.cluster.launch

    async def launch_then_cancel(record, env):
        await real_launch(record, env)
        await w.submitter.cancel({"job": j}, ADMIN)

    w.cluster.launch = launch_then_cancel
    await w.sched.trigger()
    assert (await w.state(j))["state"] == "CANCELLED" and w.cluster.stops == [j]


@pytest.mark.parametrize("raw,words", [
    ({"strategy": "Random"}, "strategy must be one of"),
    ({"starvation": "soon"}, "not a duration"),
    ({"window": 0}, "at least 1"),
    ({"colour": 1}, "unknown key"),
])
def test_bad_scheduler_config_fails_at_start(raw, words):
    with pytest.raises(ConfigError, match=words):
        SchedulerConfig.from_dict(raw)


async def test_a_requeue_in_flight_keeps_its_queue_entry():
    """Found by the simulated cluster: on_job_event writes the requeue entry, then marks the
    record QUEUED; a pass in between must not take the new entry for a stale copy."""
    w = World([node("a")])
    j = await w.submit()
    await w.sched.trigger()
    rec = await w.state(j)
    from sentinels.domain.job import queue_entry

    seq = await w.queue.enqueue(queue_entry(job_id=j, spec=rec["spec"], klass=rec["priority"],
                                            submitted_at=rec["submitted_at"]), msg_id=f"{j}:requeue:1", front=True)
    await w.sched.trigger()
    assert [s for s, _ in await w.queue.heads(["critical", "high", "normal", "low"], 5)] == [seq]
