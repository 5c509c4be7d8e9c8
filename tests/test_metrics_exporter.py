"""The metrics exporter against a real nats-server and a known store: its text output is
parsed with prometheus-client's own parser and every value checked against what we put in."""

import asyncio
import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sentinels import clock
from sentinels.adapters import jetstream
from sentinels.adapters.memory import MemoryCluster
from sentinels.adapters.meter import NatsMeter
from sentinels.domain import demand, metrics, states
from sentinels.domain.placement import Node
from sentinels.exporter import Events, Exporter, Mirror, listen_address, listen_counts
from sentinels.settings import Settings

CLASSES = ["critical", "high", "normal", "low"]
GI = 1 << 30


def record(i: int, klass: str, state: str = states.QUEUED, cpu=2000, mem=4 * GI, gpu=0, at="2026-01-01T00:00:00.000Z"):
    job_id = f"{'abcdefghij'[i % 10]}{i:09d}"[:10]
    return {"id": job_id, "state": state, "priority": klass, "submitted_at": at, "updated_at": at,
            "timestamps": {states.QUEUED: at}, "owner": "ada",
            "spec": {"resources": {"cpu_millis": cpu, "memory_bytes": mem, "gpu": gpu}}}


def samples(text: str) -> dict:
    """{(name, frozenset(labels)): value} for every sample, via prometheus-client's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: dict, name: str, **labels):
    return got[(name, frozenset(labels.items()))]


async def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


@pytest.fixture
async def stack(js):
    jobs = await jetstream.JetStreamJobs.open(js)
    queue = jetstream.JetStreamQueue(js)
    old = "2026-01-01T00:00:00.000Z"
    for i in range(3):
        r = record(i, "high", gpu=1, at=old)
        await jobs.create(r)
        await queue.enqueue({"id": r["id"], "class": "high", "submitted": old}, r["id"])
    r = record(7, "normal", cpu=500, mem=GI)
    await jobs.create(r)
    await queue.enqueue({"id": r["id"], "class": "normal", "submitted": clock.now_iso()}, r["id"])
    running = dict(record(8, "low", state=states.RUNNING), node="ws")
    await jobs.create(running)
    await jobs.create(record(9, "low", state=states.SUCCEEDED))
    node = Node("ws", cpu_millis=8000, memory_bytes=32 * GI, gpu=2, free_cpu_millis=6000,
                free_memory_bytes=28 * GI, free_gpu=2, free_pods=3)
    cluster = MemoryCluster([node])
    await cluster.launch(running, {})
    events = Events()
    mirror = Mirror(events)
    watch = asyncio.create_task(mirror.run(js))
    await wait_for(lambda: mirror.ready)
    yield Exporter(js, queue, cluster, CLASSES, events, mirror), jobs
    watch.cancel()


async def test_gauges_from_a_known_store(stack):
    exporter, exporter_jobs = stack
    got = samples((await exporter.render()).decode())
    assert value(got, "sentinels_queue_jobs", **{"class": "high"}) == 3
    assert value(got, "sentinels_queue_jobs", **{"class": "normal"}) == 1
    assert value(got, "sentinels_queue_jobs", **{"class": "critical"}) == 0  # every class has a series
    assert value(got, "sentinels_queue_oldest_wait_seconds", **{"class": "high"}) > 86400  # since 2026-01-01
    assert value(got, "sentinels_queue_oldest_wait_seconds", **{"class": "normal"}) < 60
    assert value(got, "sentinels_jobs", state="queued") == 4
    assert value(got, "sentinels_jobs", state="running") == 1
    assert value(got, "sentinels_jobs", state="succeeded") == 1
    high, normal = {"class": "high", "shape": "gpu"}, {"class": "normal", "shape": "cpu"}
    assert value(got, "sentinels_queued_demand_jobs", **high) == 3
    assert value(got, "sentinels_queued_demand_cpu_cores", **high) == 6
    assert value(got, "sentinels_queued_demand_cpu_cores", **normal) == 0.5
    assert value(got, "sentinels_queued_demand_memory_bytes", **high) + \
        value(got, "sentinels_queued_demand_memory_bytes", **normal) == 13 * GI
    assert value(got, "sentinels_queued_demand_gpus", **high) == 3
    assert value(got, "sentinels_queued_demand_gpus", **normal) == 0
    # the running sums are what domain.demand computes from the whole store
    records = [r for r, _ in [await exporter_jobs.get(k) for k in exporter.mirror.tally.rows]]
    assert sorted((n, tuple(sorted(lb.items())), v) for n, lb, v in demand.samples(demand.waiting(records))) == \
        sorted((n, tuple(sorted(lb)), v) for (n, lb), v in got.items() if n.startswith("sentinels_queued_demand_"))
    assert value(got, "sentinels_capacity_cpu_cores") == 8 and value(got, "sentinels_allocated_cpu_cores") == 2
    assert value(got, "sentinels_capacity_gpus") == 2 and value(got, "sentinels_allocated_gpus") == 0
    assert value(got, "sentinels_capacity_slots") == 3 and value(got, "sentinels_allocated_slots") == 1
    assert value(got, "sentinels_jetstream_up") == 1 and value(got, "sentinels_cluster_up") == 1
    assert value(got, "sentinels_jetstream_storage_bytes") > 0


async def test_transitions_feed_histograms(stack):
    exporter, jobs = stack
    job_id = record(0, "high")["id"]

    def move(to, at):
        def fn(r):
            return states.transition(r, to, now=at)
        return fn

    await jobs.mutate(job_id, move(states.SCHEDULED, "2026-01-01T00:00:30.000Z"))
    await jobs.mutate(job_id, move(states.RUNNING, "2026-01-01T00:01:00.000Z"))
    await jobs.mutate(job_id, move(states.FAILED, "2026-01-01T00:11:00.000Z"))
    new = record(5, "critical")
    await jobs.create(new)
    await wait_for(lambda: exporter.mirror.tally.by_state[states.FAILED] == 1 and new["id"] in exporter.mirror.tally.rows)
    got = samples((await exporter.render()).decode())
    assert value(got, "sentinels_queue_wait_seconds_count", **{"class": "high"}) == 1
    assert value(got, "sentinels_queue_wait_seconds_sum", **{"class": "high"}) == 30
    assert value(got, "sentinels_start_latency_seconds_sum", **{"class": "high"}) == 60
    assert value(got, "sentinels_job_duration_seconds_sum", state="failed") == 600
    assert value(got, "sentinels_job_duration_seconds_bucket", state="failed", le="300.0") == 0
    assert value(got, "sentinels_job_duration_seconds_bucket", state="failed", le="900.0") == 1
    assert value(got, "sentinels_jobs_finished_total", state="failed") == 1
    assert value(got, "sentinels_jobs_finished_total", state="succeeded") == 0  # the loaded one is history
    assert value(got, "sentinels_jobs_submitted_total", **{"class": "critical"}) == 1
    assert value(got, "sentinels_jobs", state="queued") == 4  # one left, one came
    assert value(got, "sentinels_queued_demand_gpus", **{"class": "high", "shape": "gpu"}) == 2


async def test_counts_from_functions_and_dead_letters(stack, nats_url):
    exporter, _ = stack
    nc = await jetstream.connect(nats_url)
    try:
        await listen_counts(nc, exporter.events)
        m = NatsMeter(nc)
        await m.count("handler_error", "on_job_event")
        await m.count("handler_error", "on_job_event")
        await m.count("redelivery", "schedule-on-queued")
        await m.count("slack_sent")
        await m.count("slack_failed")
        await m.count("schedule_pass", "3", 0.02)
        await m.count("no_such_metric", "x")  # ignored, not a crash
        await nc.publish("sentinels.metrics.handler_error.x", b"not json")
        await nc.publish("sentinels.deadletter.alert-on-failed", json.dumps({"id": "e"}).encode())
        await nc.flush()
        await wait_for(lambda: exporter.events.dead_letters.labels("alert-on-failed")._value.get() == 1)
    finally:
        await nc.close()
    got = samples((await exporter.render()).decode())
    assert value(got, "sentinels_handler_errors_total", function="on_job_event") == 2
    assert ("sentinels_handler_errors_total", frozenset({("function", "x")})) not in got
    assert value(got, "sentinels_broker_redeliveries_total", trigger="schedule-on-queued") == 1
    assert value(got, "sentinels_dead_letters_total", trigger="alert-on-failed") == 1
    assert value(got, "sentinels_slack_sends_total") == 1 and value(got, "sentinels_slack_send_failures_total") == 1
    assert value(got, "sentinels_schedule_pass_duration_seconds_count") == 1
    assert value(got, "sentinels_schedule_placed_jobs_sum") == 3


async def test_unreachable_parts_become_gauges_not_errors(stack, nats_url):
    exporter, _ = stack

    class Down:
        async def nodes(self):
            from sentinels.domain.errors import Unavailable
            raise Unavailable("local executor not answering")

    exporter.cluster = Down()
    got = samples((await exporter.render()).decode())
    assert value(got, "sentinels_cluster_up") == 0 and value(got, "sentinels_jetstream_up") == 1
    assert ("sentinels_capacity_cpu_cores", frozenset()) not in got
    assert value(got, "sentinels_queue_jobs", **{"class": "high"}) == 3


def test_tally_and_observations_are_pure():
    t = metrics.Tally()
    a = record(1, "high", gpu=2)
    t.apply(a["id"], a)
    assert t.by_state[states.QUEUED] == 1 and t.demand[("high", "gpu")].gpu == 2
    b = states.transition(a, states.SCHEDULED, now="2026-01-01T00:00:05.000Z")
    old = t.apply(a["id"], b)
    assert old.state == states.QUEUED and t.demand == {}  # no series left for a shape nobody waits for
    assert metrics.observations(old.state, b) == [metrics.Observation("queue_wait", "high", 5.0)]
    assert metrics.observations(states.SCHEDULED, b) == []  # a duplicate delivery observes nothing
    c = states.transition(b, states.CANCELLED, now="2026-01-01T00:00:09.000Z")
    assert metrics.observations(states.SCHEDULED, c) == [metrics.Observation("finished", "cancelled")]  # never ran
    t.apply(a["id"], None)
    assert sum(t.by_state.values()) == 0


def test_listen_address(tmp_path):
    def at(env):
        return Settings(home=tmp_path, url="http://127.0.0.1:9100", env=env)

    assert listen_address(at({})) == ("127.0.0.1", 9104)
    assert listen_address(at({"SENTINELS_METRICS_LISTEN": "0.0.0.0:9464"})) == ("0.0.0.0", 9464)
    from sentinels.domain.errors import ConfigError
    with pytest.raises(ConfigError, match="host:port"):
        listen_address(at({"SENTINELS_METRICS_LISTEN": "nope"}))


async def test_the_mirror_waits_for_the_bucket_the_functions_make(nats_url):
    """The exporter only reads: started before any function made the jobs bucket, it waits for
    it, then loads and follows the records."""
    nc = await jetstream.connect(nats_url)
    js = nc.jetstream(timeout=5)
    mirror = Mirror(Events())
    watch = asyncio.create_task(mirror.run(js))
    try:
        await asyncio.sleep(0.5)
        assert not mirror.ready and not watch.done()  # no bucket yet: waiting, not dead
        await jetstream.ensure(js)
        jobs = await jetstream.JetStreamJobs.open(js)
        await jobs.create(record(1, "high"))
        await wait_for(lambda: mirror.ready and mirror.tally.by_state[states.QUEUED] == 1, 30)
    finally:
        watch.cancel()
        await nc.close()
