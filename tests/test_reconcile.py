"""No job stays SCHEDULED or RUNNING forever: the lifecycle converges from the cluster's state.

Three ways a job used to stay stuck, each replayed deterministically over the in-memory
ports: (a) the scheduler dies between its launch and its compare-and-set; (b) the job
ends before that compare-and-set lands; (c) the lifecycle function is down longer than
the broker's retries, so the job's events are never delivered.
"""

import pytest

from sentinels.functions.on_job_event import service as lifecycle_service
from sentinels.functions.on_job_event.service import RetryLater
from sentinels.domain import states
from tests.test_lifecycle import ADMIN, UPDATE, World, fixture, labelled


async def submitted(w: World) -> dict:
    w.n += 1
    _, rec = await w.submitter.submit({"spec": {"image": "python:3.11", "command": ["true"], "name": f"j{w.n}"}},
                                      ADMIN, "t", f"e{w.n}")
    return rec


def history_states(entries):
    return [e["to"] for e in entries]


async def test_a_scheduler_dies_between_launch_and_compare_and_set():
    w = World()
    rec = await submitted(w)
    await w.cluster.launch(dict(rec, node="n1"), {})  # the scheduler launched, then was killed -9
    w.cluster.finish(rec["id"])  # the job ran and ended meanwhile
    done = labelled(fixture("job-succeeded.yaml"), rec)
    with pytest.raises(RetryLater):  # too early: kept for redelivery, never acked as stale
        await w.life.handle(UPDATE, done)
    # the router gave up on it (dead letter); a restarted scheduler places the job again
    await w.sched.trigger()
    assert w.cluster.launches == [rec["id"]]  # launching an ended run again is a no-op
    assert (await w.get(rec["id"]))["state"] == states.SCHEDULED
    assert await w.life.reconcile() == 1
    final = await w.get(rec["id"])
    assert final["state"] == states.SUCCEEDED
    assert history_states(await w.history.of(rec["id"])) == ["QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED"]
    assert await w.life.reconcile() == 0  # nothing left to repair
    assert len(w.events("job.succeeded")) == 1


async def test_b_job_ends_before_the_compare_and_set_lands_no_crash():
    w = World()
    rec = await submitted(w)
    done = labelled(fixture("job-succeeded.yaml"), rec)
    real_launch = w.cluster.launch

    async def launch_then_end(record, env):  # the job ends 84 ms before the scheduler's CAS
        await real_launch(record, env)
        w.cluster.finish(record["id"])
        with pytest.raises(RetryLater):
            await w.life.handle(UPDATE, done)

    w.cluster.launch = launch_then_end
    await w.sched.trigger()
    assert (await w.get(rec["id"]))["state"] == states.SCHEDULED
    assert await w.life.handle(UPDATE, done) == "succeeded"  # the broker's redelivery now applies
    assert history_states(await w.history.of(rec["id"])) == ["QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED"]
    assert await w.life.reconcile() == 0


async def test_b_without_redelivery_the_reconcile_applies_the_end():
    w = World()
    rec = await submitted(w)
    real_launch = w.cluster.launch

    async def launch_then_fail(record, env):
        await real_launch(record, env)
        w.cluster.finish(record["id"], "Failed")

    w.cluster.launch = launch_then_fail
    await w.sched.trigger()
    assert await w.life.reconcile() == 1
    final = await w.get(rec["id"])
    assert final["state"] == states.FAILED and "BackoffLimitExceeded" in final["reason"]


async def test_c_lifecycle_down_longer_than_the_retries_events_never_arrive():
    w = World()
    first = await w.running_job()
    second = await submitted(w)
    await w.sched.trigger()
    assert (await w.get(second["id"]))["state"] == states.SCHEDULED
    w.cluster.finish(first["id"])
    w.cluster.finish(second["id"], "Failed")  # no event reaches the lifecycle function
    assert await w.life.reconcile() == 2
    assert (await w.get(first["id"]))["state"] == states.SUCCEEDED
    assert (await w.get(second["id"]))["state"] == states.FAILED
    # the old events, delivered late from the dead letters, change nothing
    assert await w.life.handle(UPDATE, labelled(fixture("job-succeeded.yaml"), first)) in ("stale", "redelivered")
    assert len(w.events("job.succeeded")) == 1 and len(w.events("job.failed")) == 1


async def test_a_job_the_cluster_no_longer_has_is_requeued_after_a_grace(monkeypatch):
    w = World()
    rec = await w.running_job()
    w.cluster.running.pop(rec["id"])  # its Job vanished (deleted by hand, TTL) and the event was lost
    assert await w.life.reconcile() == 0  # within the grace period: a launch may still be landing
    monkeypatch.setattr(lifecycle_service, "RECONCILE_GRACE", 0.0)
    assert await w.life.reconcile() == 1
    again = await w.get(rec["id"])
    assert again["state"] == states.QUEUED and again["attempts"] == 2


async def test_a_job_gone_from_the_cluster_is_not_requeued_while_the_clusters_events_arrive_late(monkeypatch):
    """On a loaded machine the lifecycle fell a minute behind the cluster's events: a job that
    had succeeded and whose Job had expired (TTL) was taken as deleted and ran again. While
    the events it handles were sent long ago, a missing Job proves nothing."""
    from datetime import datetime, timedelta, timezone

    w = World()
    rec = await w.running_job()
    w.cluster.finish(rec["id"])
    w.cluster.ended.pop(rec["id"])  # its Job ended and expired; its end waits in the broker
    monkeypatch.setattr(lifecycle_service, "RECONCILE_GRACE", 0.0)
    late = (datetime.now(timezone.utc) - timedelta(seconds=45)).isoformat()
    pending = labelled(fixture("pod-pending-unschedulable.yaml"), rec)  # any cluster event, sent 45 s ago
    await w.life.handle(UPDATE, pending, "ev-late", late)
    assert await w.life.reconcile() == 0 and (await w.get(rec["id"]))["state"] == states.RUNNING
    done = labelled(fixture("pod-succeeded.yaml"), rec)  # the end arrives after all
    assert await w.life.handle(UPDATE, done, "ev-end", datetime.now(timezone.utc).isoformat()) == "succeeded"
    assert (await w.get(rec["id"]))["attempts"] == 1

    other = await w.running_job()  # caught up again: a Job that is gone is gone
    w.cluster.running.pop(other["id"])
    assert await w.life.reconcile() == 1 and (await w.get(other["id"]))["state"] == states.QUEUED
    monkeypatch.setattr(lifecycle_service, "LAG_MEMORY", 0.0)  # and a late event long ago holds nothing back
    w.life._lag = (45.0, 0.0)
    third = await w.running_job()
    w.cluster.running.pop(third["id"])
    assert await w.life.reconcile() == 1


async def test_a_running_job_is_left_alone():
    w = World()
    rec = await w.running_job()
    assert await w.life.reconcile() == 0
    assert (await w.get(rec["id"]))["state"] == states.RUNNING


async def test_a_record_the_active_index_lost_is_still_repaired_by_the_periodic_scan():
    # a crash between the record's write and its index entry: the index does not list it
    w = World()
    rec = await w.running_job()
    w.cluster.finish(rec["id"])
    real_active = w.jobs.active

    async def index_without_it():
        return [r for r in await real_active() if r["id"] != rec["id"]]

    w.jobs.active = index_without_it
    assert await w.life.reconcile() == 1  # the first reconcile after a start also scans
    lost = await w.running_job()
    w.cluster.finish(lost["id"])
    w.jobs.active = lambda: index_without_scan(real_active, lost["id"])
    repaired = [await w.life.reconcile() for _ in range(lifecycle_service.FULL_SCAN_EVERY)]
    assert sorted(repaired) == [0] * (lifecycle_service.FULL_SCAN_EVERY - 1) + [1]
    assert (await w.get(lost["id"]))["state"] == states.SUCCEEDED


async def index_without_scan(real_active, job_id):
    return [r for r in await real_active() if r["id"] != job_id]
