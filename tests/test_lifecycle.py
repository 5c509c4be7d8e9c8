"""The lifecycle function's logic on real Kubernetes objects (tests/fixtures/kubernetes),
over in-memory ports: transitions, stale and duplicate events, requeue, node loss, crashes.

The fixtures come from real clusters and carry no sentinels labels: `labelled()` adds
`sentinels.io/job-id`, the attempt annotation and our Job name, nothing else. Objects
with no real dump (evicted pod, deleted Job, removed node) are built from the
Kubernetes API reference in the tests that need them.
"""

import asyncio
import copy
from pathlib import Path

import pytest
import yaml

from sentinels.functions.on_job_event.service import LifecycleService, RetryLater
from sentinels.domain.scheduler_config import SchedulerConfig
from sentinels.functions.schedule.service import ScheduleService
from sentinels.functions.submit.service import SubmitService
from sentinels import clock
from sentinels.adapters.memory import MemoryCluster, MemoryHistory, MemoryJobs, MemoryQueue
from sentinels.domain import lifecycle
from sentinels.domain.placement import Node
from sentinels.domain.priority import PriorityConfig
from sentinels.domain.spec import Limits
from sentinels.adapters.memory import MemorySink

FIX = Path(__file__).parent / "fixtures" / "kubernetes"
ADD, UPDATE, DELETE = ("dev.knative.apiserver.resource." + v for v in ("add", "update", "delete"))
ADMIN = {"user": "root", "role": "admin"}
GI = 2**30


def fixture(name):
    return yaml.safe_load((FIX / name).read_text())


def labelled(obj, record, pod_of_job=True):
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    meta.setdefault("labels", {})["sentinels.io/job-id"] = record["id"]
    meta.setdefault("annotations", {})["sentinels.io/attempt"] = str(record["attempts"])
    if obj["kind"] == "Job":
        meta["name"] = record["k8s_job"]
    return obj


class World:
    def __init__(self, nodes=("n1", "n2"), retries=0):
        self.jobs, self.queue, self.history, self.sink = MemoryJobs(), MemoryQueue(), MemoryHistory(), MemorySink()
        self.cluster = MemoryCluster([Node(n, 8000, 32 * GI, 0, 8000, 32 * GI, 0) for n in nodes])
        prio = PriorityConfig.from_dict(None)
        self.submitter = SubmitService(self.jobs, self.queue, self.history, self.sink, prio, Limits(), clock.now_iso)
        self.sched = ScheduleService(self.jobs, self.queue, self.history, self.sink, self.cluster, prio,
                                     SchedulerConfig(), clock.now_iso)
        self.life = LifecycleService(self.jobs, self.queue, self.history, self.sink, self.cluster, clock.now_iso,
                                     lifecycle.Policy(max_attempts=3, image_pull_grace_seconds=300))
        self.retries, self.n, self.timeout = retries, 0, None

    async def running_job(self, cpu=4):
        self.n += 1
        spec = {"image": "python:3.11", "command": ["true"], "name": f"j{self.n}", "retries": self.retries,
                "resources": {"cpu": cpu, "memory": "1Gi"}, **({"timeout": self.timeout} if self.timeout else {})}
        _, rec = await self.submitter.submit({"spec": spec}, ADMIN, "t", f"e{self.n}")
        await self.sched.trigger()
        rec = await self.get(rec["id"])
        assert rec["state"] == "SCHEDULED"
        assert await self.life.handle(UPDATE, labelled(fixture("pod-running.yaml"), rec)) == "running"
        return await self.get(rec["id"])

    async def get(self, job_id):
        return (await self.jobs.get(job_id))[0]

    def events(self, kind):
        return [e for e in self.sink.events if e["type"] == f"io.sentinels.{kind}"]


async def test_a_pod_that_is_only_starting_reads_no_record_and_changes_nothing():
    w = World()
    spec = {"image": "python:3.11", "command": ["true"], "name": "starting", "resources": {"cpu": 1, "memory": "1Gi"}}
    _, rec = await w.submitter.submit({"spec": spec}, ADMIN, "t", "e-start")
    await w.sched.trigger()
    rec = await w.get(rec["id"])
    reads, get = [], w.jobs.get

    async def counted(job_id):
        reads.append(job_id)
        return await get(job_id)

    w.jobs.get = counted
    pending = labelled(fixture("pod-pending-unschedulable.yaml"), rec)
    pending["status"] = {"phase": "Pending"}  # just created: no condition, no container status yet
    assert await w.life.handle(ADD, pending) == "stale" and reads == []
    pulling = labelled(fixture("pod-errimagepull.yaml"), rec)  # pending with a problem: that one is read
    assert await w.life.handle(UPDATE, pulling) == "noted" and reads == [rec["id"]]
    assert (await w.get(rec["id"]))["state"] == "SCHEDULED"


async def test_running_then_succeeded_from_real_objects():
    w = World()
    rec = await w.running_job()
    assert rec["state"] == "RUNNING" and len(w.events("job.started")) == 1
    assert await w.life.handle(UPDATE, labelled(fixture("job-succeeded.yaml"), rec)) == "succeeded"
    done = await w.get(rec["id"])
    assert done["state"] == "SUCCEEDED" and done["reason"] == "completed"
    assert len(w.events("job.succeeded")) == 1 and len(w.events("capacity.changed")) == 1
    assert [e["to"] for e in await w.history.of(rec["id"])] == ["QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED"]


@pytest.mark.parametrize("name,words", [
    ("pod-failed-exitcode.yaml", "exit code 42"),
    ("pod-oomkilled.yaml", "OOMKilled (exit 137)"),
    ("job-failed-backofflimit.yaml", "BackoffLimitExceeded"),
])
async def test_failures_carry_the_reason_and_the_last_log_lines(name, words):
    w = World()
    rec = await w.running_job()
    assert await w.life.handle(UPDATE, labelled(fixture(name), rec)) == "failed"
    done = await w.get(rec["id"])
    assert done["state"] == "FAILED" and words in done["reason"]
    assert done["log_tail"] == ["log line 0", "log line 1", "log line 2"]
    assert len(w.events("job.failed")) == 1


async def test_pod_failure_with_retries_left_waits_for_the_job_verdict():
    w = World(retries=2)
    rec = await w.running_job()
    assert await w.life.handle(UPDATE, labelled(fixture("pod-failed-exitcode.yaml"), rec)) == "noted"
    assert (await w.get(rec["id"]))["state"] == "RUNNING"
    assert await w.life.handle(UPDATE, labelled(fixture("job-failed-backofflimit.yaml"), rec)) == "failed"


async def test_backoff_limit_verdict_names_the_last_pods_cause():
    """The Job's BackoffLimitExceeded may come before its pod's OOMKilled: the pod is read then."""
    w = World()
    rec = await w.running_job()
    w.cluster.ends[rec["id"]] = {"reason": "OOMKilled (exit 137)", "exit_code": 137}
    assert await w.life.handle(UPDATE, labelled(fixture("job-failed-backofflimit.yaml"), rec)) == "failed"
    done = await w.get(rec["id"])
    assert (done["reason"], done["exit_code"]) == ("OOMKilled (exit 137)", 137)
    assert "OOMKilled" in w.events("job.failed")[0]["data"]["reason"]
    # the pod's own event, late, changes nothing
    assert await w.life.handle(UPDATE, labelled(fixture("pod-oomkilled.yaml"), rec)) == "stale"


async def test_deadline_exceeded_job():
    # no real dump of a Job failed on its deadline: condition built from the API reference
    w = World()
    rec = await w.running_job()
    obj = labelled(fixture("job-failed-backofflimit.yaml"), rec)
    obj["status"]["conditions"] = [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                    "message": "Job was active longer than specified deadline"}]
    await w.life.handle(UPDATE, obj)
    assert (await w.get(rec["id"]))["reason"] == "timed out: deadline exceeded (activeDeadlineSeconds)"


def failed_pod(rec, code, uid):
    pod = labelled(fixture("pod-failed-exitcode.yaml"), rec)
    pod["metadata"]["uid"] = uid
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = code
    return pod


async def test_a_timeout_reads_as_timed_out_with_its_deadline_not_as_exit_code_143():
    w = World(retries=2)
    w.timeout = "5s"
    rec = await w.running_job()
    pod = failed_pod(rec, 143, "p-deadline")
    pod["status"].update(reason="DeadlineExceeded", message="Pod was active on the node longer than the specified deadline")
    assert await w.life.handle(UPDATE, pod) == "failed"  # a deadline is never retried
    done = await w.get(rec["id"])
    assert done["reason"] == "timed out: deadline of 5s exceeded" and done["exit_code"] == 143


async def test_every_retry_is_in_history_with_its_exit_code_and_the_end_names_the_last():
    w = World(retries=1)
    rec = await w.running_job()
    assert await w.life.handle(UPDATE, failed_pod(rec, 3, "p-run-1")) == "noted"
    assert await w.life.handle(UPDATE, failed_pod(rec, 3, "p-run-1")) == "redelivered"  # recorded once
    mid = await w.get(rec["id"])
    assert mid["state"] == "RUNNING" and "attempt 1 failed (exit code 3)" in mid["reason"]
    job = labelled(fixture("job-failed-backofflimit.yaml"), rec)
    job["status"]["failed"] = 2
    job["status"]["conditions"][0]["lastTransitionTime"] = clock.now_iso()
    with pytest.raises(RetryLater):  # the verdict before the last run's end: wait for that end
        await w.life.handle(UPDATE, job)
    assert await w.life.handle(UPDATE, failed_pod(rec, 4, "p-run-2")) == "failed"
    done = await w.get(rec["id"])
    assert done["reason"] == "exit code 4 (attempt 2 of 2)" and done["exit_code"] == 4
    history = await w.history.of(rec["id"])
    runs = [(h["attempts"], h.get("exit_code")) for h in history if h.get("exit_code") is not None]
    assert runs == [(1, 3), (2, 4)]
    assert await w.life.handle(UPDATE, job) == "stale"


async def test_same_event_three_times_moves_once_and_stale_events_never_move_back():
    w = World()
    rec = await w.running_job()
    done = labelled(fixture("job-succeeded.yaml"), rec)
    outcomes = [await w.life.handle(UPDATE, done) for _ in range(3)]
    assert outcomes[0] == "succeeded" and set(outcomes[1:]) <= {"redelivered", "stale"}
    assert len(w.events("job.succeeded")) == 1
    assert await w.life.handle(UPDATE, labelled(fixture("pod-running.yaml"), rec)) == "stale"  # late Running
    assert (await w.get(rec["id"]))["state"] == "SUCCEEDED"


async def test_unknown_job_foreign_object_and_bad_label_are_ignored():
    w = World()
    assert await w.life.handle(UPDATE, fixture("pod-running.yaml")) == "ignored"  # no sentinels label
    fake = {"id": "zzzzzzzzzz", "attempts": 1, "k8s_job": "sentinels-zzzzzzzzzz"}
    assert await w.life.handle(UPDATE, labelled(fixture("pod-running.yaml"), fake)) == "unknown-job"
    bad = labelled(fixture("pod-running.yaml"), fake)
    bad["metadata"]["labels"]["sentinels.io/job-id"] = "../../etc"
    assert await w.life.handle(UPDATE, bad) == "ignored"
    assert await w.life.handle(UPDATE, {"kind": "Pod"}) == "ignored"  # malformed


async def test_pod_event_before_the_job_is_recorded_as_scheduled_is_retried():
    w = World()
    _, rec = await w.submitter.submit({"spec": {"image": "python:3.11", "command": ["true"]}}, ADMIN, "t", "early")
    with pytest.raises(RetryLater):
        await w.life.handle(UPDATE, labelled(fixture("pod-running.yaml"), rec))
    await w.sched.trigger()
    assert await w.life.handle(UPDATE, labelled(fixture("pod-running.yaml"), rec)) == "running"


async def test_eviction_requeues_at_the_front_and_counts_an_attempt():
    w = World()
    rec = await w.running_job()
    other = await w.submitter.submit({"spec": {"image": "python:3.11", "name": "later", "resources": {"cpu": 8}}},
                                     ADMIN, "t", "later")
    evicted = labelled(fixture("pod-running.yaml"), rec)  # built from the API reference: no real dump
    evicted["status"]["phase"] = "Failed"
    evicted["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                                            "message": "Eviction API: evicting"})
    assert await w.life.handle(UPDATE, evicted) == "queued"
    again = await w.get(rec["id"])
    assert again["attempts"] == 2 and again["k8s_job"].endswith("-a2") and again["queue_front"]
    assert again["reason"].startswith("requeued after: evicted")
    assert [e["id"] for _, e in await w.queue.heads(["critical", "high", "normal", "low"], 5)][0] == rec["id"]
    assert rec["id"] in w.cluster.stops and len(w.events("job.requeued")) == 1
    # the old attempt's late events are stale now
    assert await w.life.handle(DELETE, labelled(fixture("job-failed-backofflimit.yaml"), rec)) == "stale"
    assert other[1]["state"] == "QUEUED"


async def test_a_requeued_job_moved_to_another_class_waits_in_its_plain_subject():
    """Reprioritize enqueues on the class's plain subject; the record used to keep
    queue_front from its requeue, so its position was counted on the wrong subject."""
    w = World()
    rec = await w.running_job()
    evicted = labelled(fixture("pod-running.yaml"), rec)
    evicted["status"]["phase"] = "Failed"
    evicted["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                                            "message": "Eviction API: evicting"})
    assert await w.life.handle(UPDATE, evicted) == "queued"
    assert (await w.get(rec["id"]))["queue_front"]
    klass = "low" if rec["priority"] != "low" else "normal"
    status, body = await w.submitter.reprioritize({"job": rec["id"], "class": klass}, ADMIN)
    assert status == 200 and body["priority"] == klass and body["queue_front"] is False


async def test_node_removed_while_two_jobs_run_both_run_again_and_succeed():
    w = World(nodes=("n1", "n2"))
    a = await w.running_job(cpu=4)
    b = await w.running_job(cpu=4)
    assert {a["node"], b["node"]} == {"n1"}  # first fit puts both on n1
    node = fixture("node-gpu.yaml")
    node["metadata"]["name"] = "n1"
    del w.cluster.base["n1"]
    for r in (a, b):
        w.cluster.finish(r["id"])
    assert await w.life.handle(DELETE, node) == "node-removed"
    for r in (a, b):
        rec = await w.get(r["id"])
        assert rec["state"] == "QUEUED" and rec["attempts"] == 2 and "node n1 was removed" in rec["reason"]
    await w.sched.trigger()
    for r in (a, b):
        rec = await w.get(r["id"])
        assert rec["state"] == "SCHEDULED" and rec["node"] == "n2"
        await w.life.handle(UPDATE, labelled(fixture("pod-running.yaml"), rec))
        assert await w.life.handle(UPDATE, labelled(fixture("job-succeeded.yaml"), rec)) == "succeeded"
        assert (await w.get(r["id"]))["attempts"] == 2


async def test_two_observations_of_one_node_loss_keep_the_queue_entry():
    """The Node's deletion and its pod failed by PodGC both requeue the same attempt: the same
    (deduplicated) queue entry. The one that loses the race must not remove the winner's entry."""
    w = World()
    rec = await w.running_job()
    node_gone = lifecycle.requeue_or_fail(rec, "node n1 was removed", w.life.policy, False)
    pod_gone = lifecycle.requeue_or_fail(rec, "node lost: DeletionByPodGC", w.life.policy, False)
    assert await w.life.apply(rec, node_gone, "node-removed:n1") == "queued"
    assert await w.life.apply(rec, pod_gone, "pod:uid:7:disrupted") == "raced"  # decided on the same RUNNING record
    again = await w.get(rec["id"])
    assert again["state"] == "QUEUED" and again["attempts"] == 2
    heads = await w.queue.heads(["critical", "high", "normal", "low"], 5)
    assert [(seq, e["id"]) for seq, e in heads] == [(again["queue_seq"], rec["id"])]


async def test_a_step_decided_on_an_older_attempt_changes_nothing():
    """A node loss seen through an old listing (the job's first attempt on n1) after the job
    was requeued and placed on n1 again: the stale step must not requeue the new attempt with
    the first requeue's (already used) queue entry, which left the record QUEUED with no
    entry on the simulated cluster."""
    w = World(nodes=("n1",))
    first = await w.running_job()
    requeue = lifecycle.requeue_or_fail(first, "node lost: DeletionByPodGC", w.life.policy, False)
    assert await w.life.apply(first, requeue, "pod:uid:1:disrupted") == "queued"
    await w.sched.trigger()
    second = await w.get(first["id"])
    assert second["state"] == "SCHEDULED" and second["attempts"] == 2 and second["node"] == "n1"
    assert await w.life.handle(UPDATE, labelled(fixture("pod-running.yaml"), second)) == "running"
    stale = lifecycle.requeue_or_fail(first, "node n1 was removed", w.life.policy, False)  # both RUNNING
    assert await w.life.apply(first, stale, "node-removed:n1:u1") == "raced"
    assert (await w.get(first["id"]))["state"] == "RUNNING"
    node = fixture("node-gpu.yaml")
    node["metadata"]["name"] = "n1"
    assert await w.life.handle(DELETE, node) == "node-removed"  # decided on the record as it is now
    third = await w.get(first["id"])
    assert third["state"] == "QUEUED" and third["attempts"] == 3 and third["k8s_job"].endswith("-a3")
    heads = await w.queue.heads(["critical", "high", "normal", "low"], 5)
    assert [(seq, e["id"]) for seq, e in heads] == [(third["queue_seq"], first["id"])]


async def test_a_requeue_decided_again_after_losing_its_race_still_has_its_queue_entry():
    """An eviction decided on the SCHEDULED record loses its compare-and-set to the pod's
    running event and drops its queue entry; decided again on the RUNNING record, it must not
    get the dropped entry back from the stream's deduplication (the simulated cluster showed
    records QUEUED with no entry: never scheduled again)."""
    w = World()
    _, rec = await w.submitter.submit({"spec": {"image": "python:3.11", "command": ["true"], "name": "race",
                                                "resources": {"cpu": 1, "memory": "1Gi"}}}, ADMIN, "t", "race")
    await w.sched.trigger()
    scheduled, revision = await w.jobs.get(rec["id"])
    assert scheduled["state"] == "SCHEDULED"
    assert await w.life.handle(UPDATE, labelled(fixture("pod-running.yaml"), scheduled)) == "running"
    evicted = lifecycle.requeue_or_fail(scheduled, "evicted: EvictionByEvictionAPI", w.life.policy, False)
    assert await w.life.apply(scheduled, evicted, "pod:uid:7:disrupted", revision=revision) == "raced"
    running, revision = await w.jobs.get(rec["id"])
    assert running["state"] == "RUNNING" and not [s for s, e in await w.queue.heads(["normal"], 5)]
    again = lifecycle.requeue_or_fail(running, "evicted: EvictionByEvictionAPI", w.life.policy, False)
    assert await w.life.apply(running, again, "pod:uid:7:disrupted", revision=revision) == "queued"
    queued = await w.get(rec["id"])
    heads = await w.queue.heads(["critical", "high", "normal", "low"], 5)
    assert [(seq, e["id"]) for seq, e in heads] == [(queued["queue_seq"], rec["id"])]
    await w.sched.trigger()
    assert (await w.get(rec["id"]))["state"] == "SCHEDULED"


async def test_the_same_reprioritize_twice_at_once_keeps_the_queue_entry():
    w = World()
    _, rec = await w.submitter.submit({"spec": {"image": "python:3.11", "command": ["true"], "name": "twice",
                                                "resources": {"cpu": 64, "memory": "1Gi"}}}, ADMIN, "t", "twice")
    enqueue = w.queue.enqueue

    async def interleaved(*args, **kwargs):  # both requests read the record before either writes
        await asyncio.sleep(0)
        return await enqueue(*args, **kwargs)

    w.queue.enqueue = interleaved
    answers = await asyncio.gather(*(w.submitter.reprioritize({"job": rec["id"], "class": "high"}, ADMIN)
                                     for _ in range(2)))
    assert [status for status, _ in answers] == [200, 200]
    now = await w.get(rec["id"])
    heads = await w.queue.heads(["critical", "high", "normal", "low"], 5)
    assert now["priority"] == "high" and [(seq, e["id"]) for seq, e in heads] == [(now["queue_seq"], rec["id"])]


async def test_too_many_infrastructure_failures_fail_the_job():
    w = World()
    rec = await w.running_job()
    for attempt in range(3):
        rec = await w.get(rec["id"])
        if rec["state"] == "QUEUED":
            await w.sched.trigger()
            rec = await w.get(rec["id"])
            await w.life.handle(UPDATE, labelled(fixture("pod-running.yaml"), rec))
            rec = await w.get(rec["id"])
        deleted = labelled(fixture("job-succeeded.yaml"), rec)
        deleted["status"] = {"active": 1}  # deleted while running, by someone else
        await w.life.handle(DELETE, deleted)
    final = await w.get(rec["id"])
    assert final["state"] == "FAILED" and "gave up after 3 attempts" in final["reason"]


async def test_crash_after_the_transition_is_completed_by_redelivery():
    w = World()
    rec = await w.running_job()
    real = w.history.append
    calls = {"n": 0}

    async def crash_once(entry, msg_id):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("killed")
        await real(entry, msg_id)

    w.history.append = crash_once
    done = labelled(fixture("job-succeeded.yaml"), rec)
    with pytest.raises(RuntimeError):
        await w.life.handle(UPDATE, done)
    assert (await w.get(rec["id"]))["state"] == "SUCCEEDED"
    assert [e["to"] for e in await w.history.of(rec["id"])][-1] == "RUNNING"  # the crash lost the history entry
    assert await w.life.handle(UPDATE, done) == "redelivered"
    assert len(w.events("job.succeeded")) == 1
    assert [e["to"] for e in await w.history.of(rec["id"])][-1] == "SUCCEEDED"


async def test_image_pull_error_fails_only_after_the_grace_period():
    w = World()
    rec = await w.running_job()
    await w.jobs.mutate(rec["id"], lambda r: dict(r, state="SCHEDULED"))
    pull = labelled(fixture("pod-errimagepull.yaml"), rec)
    assert await w.life.handle(UPDATE, pull) == "noted"
    assert "fails after 300s" in (await w.get(rec["id"]))["reason"]
    await w.jobs.mutate(rec["id"], lambda r: dict(r, timestamps={**r["timestamps"], "SCHEDULED": "2020-01-01T00:00:00Z"}))
    pull["metadata"]["resourceVersion"] = "999999"
    assert await w.life.handle(UPDATE, pull) == "failed"
    assert "image pull failed" in (await w.get(rec["id"]))["reason"]


async def test_the_pulls_own_error_outlives_the_back_off_that_follows_it():
    """A kubelet's ImagePullBackOff says only "Back-off pulling image": the reason keeps the
    ErrImagePull message seen before it (why the pull failed), up to the job's failure."""
    w = World()
    rec = await w.running_job()
    await w.jobs.mutate(rec["id"], lambda r: dict(r, state="SCHEDULED"))
    pull = labelled(fixture("pod-errimagepull.yaml"), rec)
    why = pull["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert await w.life.handle(UPDATE, pull) == "noted"
    backoff = labelled(fixture("pod-imagepullbackoff.yaml"), rec)
    backoff["metadata"]["resourceVersion"] = "999998"
    assert "Back-off" in backoff["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    await w.life.handle(UPDATE, backoff)
    reason = (await w.get(rec["id"]))["reason"]
    assert reason.startswith("image pull failed: ErrImagePull") and why in reason and "fails after 300s" in reason
    await w.jobs.mutate(rec["id"], lambda r: dict(r, timestamps={**r["timestamps"], "SCHEDULED": "2020-01-01T00:00:00Z"}))
    backoff["metadata"]["resourceVersion"] = "999999"
    assert await w.life.handle(UPDATE, backoff) == "failed"
    reason = (await w.get(rec["id"]))["reason"]
    assert reason.startswith("image pull failed: ErrImagePull") and why in reason and "fails after" not in reason


async def test_cancel_of_a_running_job_stops_it():
    w = World()
    rec = await w.running_job()
    await w.submitter.cancel({"job": rec["id"]}, ADMIN)
    assert (await w.get(rec["id"]))["cancel_requested"]
    assert await w.life.cancel(rec["id"]) == "cancelled"
    assert rec["id"] in w.cluster.stops and (await w.get(rec["id"]))["state"] == "CANCELLED"
    assert await w.life.cancel(rec["id"]) == "nothing-to-do"


async def test_an_end_seen_before_the_start_still_records_running():
    w = World()
    _, rec = await w.submitter.submit({"spec": {"image": "python:3.11", "command": ["true"]}}, ADMIN, "t", "fast")
    await w.sched.trigger()
    rec = await w.get(rec["id"])
    assert await w.life.handle(UPDATE, labelled(fixture("job-succeeded.yaml"), rec)) == "succeeded"
    assert await w.life.handle(UPDATE, labelled(fixture("pod-running.yaml"), rec)) == "stale"  # came late
    assert [e["to"] for e in await w.history.of(rec["id"])] == ["QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED"]
    assert len(w.events("job.started")) == 1 and len(w.events("job.succeeded")) == 1
    assert "RUNNING" in (await w.get(rec["id"]))["timestamps"]


async def test_two_events_racing_on_one_job_both_count():
    """The pod's Running and the Job's Complete handled at the same time: the loser of the
    compare-and-set decides again on the fresh record instead of being dropped."""
    import asyncio

    w = World()
    _, rec = await w.submitter.submit({"spec": {"image": "python:3.11", "command": ["true"]}}, ADMIN, "t", "race")
    await w.sched.trigger()
    rec = await w.get(rec["id"])
    real_get = w.jobs.get
    gate = asyncio.Event()
    seen = {"n": 0}

    async def slow_get(job_id):  # both handlers read the SCHEDULED record before either writes
        got = await real_get(job_id)
        seen["n"] += 1
        if seen["n"] == 2:
            gate.set()
        await asyncio.wait_for(gate.wait(), 1)
        return got

    w.jobs.get = slow_get
    outcomes = await asyncio.gather(w.life.handle(UPDATE, labelled(fixture("pod-running.yaml"), rec)),
                                    w.life.handle(UPDATE, labelled(fixture("job-succeeded.yaml"), rec)))
    w.jobs.get = real_get
    assert (await w.get(rec["id"]))["state"] == "SUCCEEDED", outcomes
    assert [e["to"] for e in await w.history.of(rec["id"])] == ["QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED"]
